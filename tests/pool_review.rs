//! What a skeptical review of `Pool` found, each now a regression test (its two lease
//! races are in `tests/pool.rs`): members never shut out of a host that is up, the
//! wait for a turn outside the connect timeout, a host failing every handshake dialed
//! once per backoff step, a pool's connections back in one step and separate channels
//! not in lockstep, and the methods' allocations. In memory, under paused time like `tests/pool.rs`.

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Backoff, Channel, Endpoint, Order};

use support::channel::msg;
use support::codec::{Msg, TestProto};
use support::memory::{Io, Net};
use support::pool::{HOST, build, builder, fixed, member, ready};
use support::{bounded, eventually};

const BACKUP: &str = "b:1";

/// Echoes every request; `quit` drops the connection unanswered.
fn net() -> Net {
    Net::new(|_: Endpoint, mut io: Io| async move {
        while let Some(Ok(req)) = io.next().await {
            if req.text() == "quit" {
                return;
            }
            if io.send(req).await.is_err() {
                return;
            }
        }
    })
}

/// The gate's record of a failed dial names the member that failed, and only that
/// member's next successful dial clears it. When that member stops dialing the host
/// (it is closed, or it sits on a backup), its siblings are shielded from the host
/// for good, though the host is up again.
#[tokio::test(start_paused = true)]
async fn a_member_is_not_shielded_forever_by_a_closed_siblings_failure() {
    bounded(async {
        let net = net();
        net.down(HOST, true);
        let pool = build(&net, builder(fixed(Duration::from_secs(1))), 2);
        let (m0, m1) = (member(&pool, 0), member(&pool, 1));
        assert!(m0.connect().await.is_err(), "member 0 dials and fails");
        // A channel's own `connect()` dials, whatever its sibling's pass did
        // (`pool_review2::connect_after_a_failed_pass_dials_again`); its passes after
        // follow member 0's.
        assert!(m1.connect().await.is_err(), "member 1 dials and fails too");
        // Member 0 is closed (through `channels()`, or a lease's `close()`); the host
        // comes back.
        m0.close();
        net.down(HOST, false);
        let before = net.connects();
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(
            ready(&m1),
            "member 1 reconnects to the host that is up again; state {:?}, {} dials in 8 s",
            *m1.state().borrow(),
            net.connects() - before
        );
    })
    .await;
}

/// The same, with backups: member 0 fails the primary and settles on the backup, so it
/// never dials the primary again; member 1, later losing its connection while the
/// backup refuses new ones, never dials the primary (up again) either.
#[tokio::test(start_paused = true)]
async fn a_member_is_not_shielded_forever_by_a_sibling_on_a_backup() {
    support::timeout(Duration::from_secs(60), async {
        let net = net();
        net.down(HOST, true);
        let pool = build(
            &net,
            builder(fixed(Duration::from_secs(1))).backup(BACKUP),
            2,
        );
        let (m0, m1) = (member(&pool, 0), member(&pool, 1));
        m0.connect()
            .await
            .expect("member 0 fails the primary, takes the backup");
        m1.connect().await.expect("member 1 follows to the backup");
        // Each member's own pass tries the primary once (a pass that connected on a
        // backup shields no host).
        assert!(
            net.count(HOST) <= 2,
            "one dial of the dead primary per member"
        );
        // The primary is back; the backup takes no new connections; member 1 loses
        // its connection (member 0 keeps its own).
        net.down(HOST, false);
        net.down(BACKUP, true);
        let _ = m1.request(msg("quit")).await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(ready(&m0));
        assert!(
            ready(&m1),
            "member 1 reaches the primary that is up; state {:?}, primary dialed {} times",
            *m1.state().borrow(),
            net.count(HOST)
        );
    })
    .await;
}

/// The gate's turn is taken inside the connect timeout: a member queued behind its
/// siblings' dials spends its timeout waiting for the turn, and fails a host that
/// answers every dial in well under the timeout. (A dial dropped by that timeout is
/// then recorded as failed, and the members after it are shielded.)
#[tokio::test(start_paused = true)]
async fn waiting_for_the_gate_does_not_count_against_the_connect_timeout() {
    bounded(async {
        let net = net();
        net.delay(Duration::from_millis(40));
        let pool = build(
            &net,
            builder(fixed(Duration::from_secs(1))).connect_timeout(Duration::from_millis(100)),
            4,
        );
        let connected = pool.connect().await;
        assert!(
            connected.is_ok(),
            "every dial takes 40 ms against a 100 ms timeout: {connected:?}"
        );
    })
    .await;
}

/// The gate shields siblings from a host that refused a dial, not from one that takes
/// the dial and fails the handshake (a wrong password, a server still loading): then
/// every member dials and handshakes on every backoff step, K connects per step. The
/// issue asks: one dead host is not K connect storms.
#[tokio::test(start_paused = true)]
async fn a_host_failing_the_handshake_is_not_dialed_by_every_connection() {
    support::timeout(Duration::from_secs(60), async {
        let net = net();
        let pool = build(
            &net,
            builder(fixed(Duration::from_secs(1)))
                .handshake(|_conn, _endpoint| async { Err("WRONGPASS".into()) }),
            4,
        );
        let _ = pool.connect().await;
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        let dials = net.connects();
        assert!(
            dials <= 13,
            "{dials} dials in 10.5 s: a channel alone makes 11, the pool made one per member"
        );
    })
    .await;
}

/// "Members share one backoff": once one member reaches the host again, the others
/// must follow at once, not on a backoff of their own that kept growing while they
/// followed (the pool would then run on one connection for up to the backoff's `max`).
#[tokio::test(start_paused = true)]
async fn followers_come_back_soon_after_the_first_member_reaches_the_host() {
    support::timeout(Duration::from_secs(30), async {
        let net = net();
        net.down(HOST, true);
        let pool = build(
            &net,
            builder(Backoff::exponential(
                Duration::from_millis(10),
                Duration::from_secs(3),
            )),
            4,
        );
        let _ = pool.connect().await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        net.down(HOST, false);
        eventually(Duration::from_secs(10), "one member reconnects", || {
            pool.channels().any(|c| ready(&c))
        })
        .await;
        let first = tokio::time::Instant::now();
        eventually(Duration::from_secs(10), "every member reconnects", || {
            pool.channels().all(|c| ready(&c))
        })
        .await;
        let lag = first.elapsed();
        // With no call to answer, the first connection proves the host up by living
        // for a second (`reconnect/turns.rs`, `Proving`); then the others connect.
        assert!(
            lag < Duration::from_millis(1_300),
            "the others followed {lag:?} after the first reached the host"
        );
    })
    .await;
}

/// Under paused time (a test, or any two channels seeded in the same nanosecond), the
/// backoff jitter of channels to one dead host was the same: their timers fired
/// together, every step. A pool's connections share one backoff on purpose (they come
/// back in the same step); separate channels must not run in lockstep.
#[tokio::test(start_paused = true)]
async fn separate_channels_back_off_on_different_jitter() {
    support::timeout(Duration::from_secs(600), async {
        let net = net();
        net.down(HOST, true);
        let channels: Vec<Channel<Msg, Msg>> = (0..4)
            .map(|_| {
                builder(Backoff::exponential(
                    Duration::from_millis(100),
                    Duration::from_secs(60),
                ))
                .connector(net.connector(), Order::new(TestProto))
                .unwrap()
            })
            .collect();
        for c in &channels {
            let _ = c.connect().await;
        }
        tokio::time::sleep(Duration::from_secs(300)).await;
        net.down(HOST, false);
        let mut seen = Vec::new();
        for _ in 0..20_000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = channels.iter().filter(|c| ready(c)).count();
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            if now == 4 {
                break;
            }
        }
        assert_ne!(
            seen,
            vec![0, 4],
            "every channel reconnected in the same 10 ms: their backoffs run in lockstep"
        );
    })
    .await;
}

/// A pool's connections share one backoff: once the host is back, they all reconnect
/// in the same step (a follower waits for nobody's longer schedule).
#[tokio::test(start_paused = true)]
async fn a_pools_connections_come_back_in_the_same_step() {
    support::timeout(Duration::from_secs(600), async {
        let net = net();
        net.down(HOST, true);
        let pool = build(
            &net,
            builder(Backoff::exponential(
                Duration::from_millis(100),
                Duration::from_secs(60),
            )),
            4,
        );
        let _ = pool.connect().await;
        tokio::time::sleep(Duration::from_secs(300)).await;
        let dials = net.connects();
        net.down(HOST, false);
        support::eventually(Duration::from_secs(61), "all four back", || {
            pool.channels().filter(ready).count() == 4
        })
        .await;
        let first = pool.channels().filter(ready).count();
        assert_eq!(first, 4);
        // 300 s at up to 60 s a step: a few dozen passes, not four times that.
        assert!(dials <= 40, "{dials} dials while the host was down");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Allocations per call: a counting allocator, per thread (so other tests do not count)
// ---------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    static ALLOCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and
// only counts on the side.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded as is.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded as is.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(std::cell::Cell::get)
}

/// The design allows two heap allocations per request on the hot path, and the issue
/// asks K = 1 within 0.95x of a plain `Channel`. A pool's `request` (every method call)
/// first builds `Members::changed()`: a `Vec` and K + 1 boxed futures, made and dropped
/// even when a connection is usable at once.
#[tokio::test(start_paused = true)]
async fn a_pool_request_allocates_no_more_than_a_channel_request() {
    bounded(async {
        const N: u64 = 200;
        let net = net();
        let channel = net.channel(
            support::channel::Mode::Order,
            builder(fixed(Duration::from_millis(100))),
        );
        let pool1 = build(&net, builder(fixed(Duration::from_millis(100))), 1);
        let pool4 = build(&net, builder(fixed(Duration::from_millis(100))), 4);
        for _ in 0..20 {
            channel.request(msg("warm")).await.unwrap();
            pool1.request(msg("warm")).await.unwrap();
            pool4.request(msg("warm")).await.unwrap();
        }
        let start = allocs();
        for _ in 0..N {
            channel.request(msg("x")).await.unwrap();
        }
        let plain = (allocs() - start) as f64 / N as f64;
        let start = allocs();
        for _ in 0..N {
            pool1.request(msg("x")).await.unwrap();
        }
        let one = (allocs() - start) as f64 / N as f64;
        let start = allocs();
        for _ in 0..N {
            pool4.request(msg("x")).await.unwrap();
        }
        let four = (allocs() - start) as f64 / N as f64;
        eprintln!("allocations per request: channel {plain}, pool K=1 {one}, pool K=4 {four}");
        assert!(
            one <= plain + 0.5 && four <= plain + 0.5,
            "allocations per request: channel {plain}, pool K=1 {one}, pool K=4 {four}"
        );
    })
    .await;
}
