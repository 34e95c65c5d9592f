//! Review of 8af50df (`Deadline::After`, resolved when the channel takes the call in)
//! and 2c9c5e2 (`Engine::absorb` takes every intake call; the handles' gate on
//! `Shared::held`: `poll_reserve` / `enqueue` wait, `submit` fails `Overloaded`).
//!
//! The sections F1-F4 are the review's findings, fixed with it: each test there failed on
//! the reviewed code. The tests under "What holds" check a property the review looked at
//! and found to hold. All in virtual time but the one marked otherwise.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use socketchannel::{Backoff, Call, Channel, Config, Endpoint, Kind, Reconnect};
use tokio::time::Instant;
use tower::load::Load;
use tower::{Service, ServiceExt};

use support::channel::{Ch, Mode, joined, msg, spawn_request};
use support::memory::{Io, Net, Seen, echo_after};
use support::on_paused_thread;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A server that reads and records every request and never answers.
fn silent(seen: &Seen) -> Net {
    let seen = seen.clone();
    Net::new(move |_ep: Endpoint, mut io: Io| {
        let seen = seen.clone();
        async move {
            while let Some(Ok(req)) = io.next().await {
                seen.lock().unwrap().push(req.text().to_string());
            }
        }
    })
}

/// queue(2), one call in flight at most: a written call blocks the connection, and the
/// task holds the calls behind it (once deadlines are in use).
fn blocked_channel(net: &Net) -> Ch {
    net.channel(
        Mode::Order,
        Channel::builder().host("a:1").config(
            Config::default()
                .max_in_flight(1)
                .queue(2)
                .stall_timeout(None),
        ),
    )
}

/// Connects, writes "first" (in flight, the connection now has no room), then makes
/// two method calls with deadlines that the task takes in to time (held = queue = 2:
/// the gate is closed).
async fn fill_held(
    ch: &Ch,
) -> Vec<tokio::task::JoinHandle<Result<support::codec::Msg, socketchannel::Error>>> {
    ch.connect().await.expect("connected");
    let first = spawn_request(ch, Call::new(msg("first")).timeout(Duration::from_secs(60)));
    tokio::time::sleep(ms(1)).await;
    let mut calls = vec![first];
    for i in 1..=2 {
        calls.push(spawn_request(
            ch,
            Call::new(msg(format!("h{i}"))).timeout(Duration::from_secs(60)),
        ));
    }
    tokio::time::sleep(ms(1)).await;
    assert_eq!(ch.load(), 3, "one in flight, two held");
    calls
}

// ---------------------------------------------------------------------------------
// F1: a call made after a successful `poll_ready` fails `Overloaded` when the task's
// held calls reached `queue` between `poll_ready` and `call`.
// ---------------------------------------------------------------------------------

type CallTask = tokio::task::JoinHandle<Result<support::codec::Msg, socketchannel::Error>>;

/// A connected `blocked_channel` with "first" written (answered a second later): the
/// connection has no room, so the calls made next are held.
async fn one_in_flight(seen: &Seen) -> (Ch, CallTask) {
    let ch = blocked_channel(&echo_after(ms(1000), seen));
    ch.connect().await.expect("connected");
    let first = spawn_request(
        &ch,
        Call::new(msg("first")).timeout(Duration::from_secs(60)),
    );
    tokio::time::sleep(ms(1)).await;
    (ch, first)
}

/// Two calls with deadlines, which the task takes in to time: held = queue = 2.
async fn hold_two(ch: &Ch) -> Vec<CallTask> {
    let held = (1..=2)
        .map(|i| spawn_request(ch, Call::new(msg(format!("h{i}"))).timeout(ms(5000))))
        .collect();
    tokio::time::sleep(ms(1)).await;
    held
}

/// A call made after `poll_ready` returned `Ready` was taken and answered.
#[track_caller]
fn taken(out: &Result<support::codec::Msg, socketchannel::BoxError>, what: &str) {
    match out {
        Ok(reply) => assert_eq!(reply.text(), "readied"),
        Err(err) => {
            let err = support::channel::channel_error(err).expect("the channel's");
            panic!(
                "a {what} made after poll_ready returned Ready failed {:?} (not sent: {})",
                err.kind(),
                err.is_not_sent()
            );
        }
    }
}

/// `Service<Req>`: `ready()` reserved a slot while held was 0; two calls are then
/// taken in (held = 2 = queue); the readied `call` must be taken (the permit is this
/// handle's), not failed `Overloaded`. (`submit` checked `held_full()` even when it
/// had the permit `poll_ready` reserved.)
#[tokio::test(start_paused = true)]
async fn a_call_readied_by_poll_ready_is_not_failed_when_held_fills() {
    let seen = Seen::default();
    let (ch, first) = one_in_flight(&seen).await;
    // Readied while the task holds nothing.
    let mut svc = ch.clone();
    ServiceExt::<support::codec::Msg>::ready(&mut svc)
        .await
        .expect("ready");
    let held = hold_two(&ch).await;
    let out = support::timeout(Duration::from_secs(30), svc.call(msg("readied"))).await;
    taken(&out, "call");
    joined(first).await.expect("answered");
    for h in held {
        joined(h).await.expect("answered");
    }
}

/// The same through `Channel::calls()` (what a `Buffer` worker, `p2c` ready cache or a
/// pool member do: they ready the service long before the call).
#[tokio::test(start_paused = true)]
async fn a_call_readied_through_calls_is_not_failed_when_held_fills() {
    let seen = Seen::default();
    let (ch, first) = one_in_flight(&seen).await;
    let mut calls = ch.calls();
    calls.ready().await.expect("ready");
    let held = hold_two(&ch).await;
    let out = support::timeout(
        Duration::from_secs(30),
        calls.call(Call::new(msg("readied"))),
    )
    .await
    .map(|reply| reply.into_one().expect("one frame"));
    taken(&out, "call through calls()");
    joined(first).await.expect("answered");
    for h in held {
        joined(h).await.expect("answered");
    }
}

// ---------------------------------------------------------------------------------
// F2: `held` is not bounded by about twice `queue`: method calls that passed the
// gate while held < queue and then waited in `tx.reserve()` are sent as the task
// frees intake room, with no second look at the gate.
// ---------------------------------------------------------------------------------

/// 20 method calls made at once while held is 0 and the intake fills: each passes the
/// `held_full()` check in `enqueue` before waiting in `tx.reserve()`, and is sent as
/// soon as `absorb` frees a slot. The task ends up holding all 20 (queue = 2), where
/// the docs (Config::queue, architecture.md) say "about twice this many can wait".
#[tokio::test(start_paused = true)]
async fn held_stays_bounded_however_many_callers_wait() {
    let seen = Seen::default();
    let net = echo_after(ms(1000), &seen);
    let ch = blocked_channel(&net);
    ch.connect().await.expect("connected");
    let first = spawn_request(
        &ch,
        Call::new(msg("first")).timeout(Duration::from_secs(600)),
    );
    tokio::time::sleep(ms(1)).await;
    assert_eq!(ch.load(), 1);
    let flood: Vec<_> = (0..20)
        .map(|i| spawn_request(&ch, format!("f{i}")))
        .collect();
    tokio::time::sleep(ms(10)).await;
    let load = ch.load();
    // 1 in flight + at most about 2 * queue waiting.
    assert!(
        load <= 1 + 2 * 2,
        "{} calls wait in the task's held queue with queue(2) (load {load})",
        load - 1
    );
    drop(flood);
    drop(first);
}

// ---------------------------------------------------------------------------------
// F3: `shutdown` does not wake the handles waiting in the gate: they wait until the
// held count crosses below queue or the shutdown ends (its deadline), instead of
// failing at once as every other call after the shutdown does.
// ---------------------------------------------------------------------------------

/// A method call waiting for room among the held calls, and a `poll_ready` waiting at
/// the gate, when another handle starts a `shutdown(10 s)`: calls made after the
/// shutdown fail `Closed` *not sent* at once; these two should too (before 2c9c5e2
/// they waited in `tx.reserve()`, which the shutdown's take-in freed at once). Here
/// the server never answers, so they wait the full 10 s.
#[tokio::test(start_paused = true)]
async fn gate_waiters_are_woken_by_a_shutdown() {
    let seen = Seen::default();
    let net = silent(&seen);
    let ch = blocked_channel(&net);
    let _calls = fill_held(&ch).await;
    let start = Instant::now();
    let method = {
        let ch = ch.clone();
        tokio::spawn(async move { (ch.request(msg("m")).await, Instant::now()) })
    };
    let readied = {
        let mut ch = ch.clone();
        tokio::spawn(async move {
            let out = ServiceExt::<support::codec::Msg>::ready(&mut ch)
                .await
                .map(|_| ());
            (out, Instant::now())
        })
    };
    tokio::time::sleep(ms(10)).await;
    assert!(!method.is_finished(), "the method waits at the gate");
    assert!(!readied.is_finished(), "poll_ready waits at the gate");
    let shutdown = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.shutdown(Duration::from_secs(10)).await })
    };
    tokio::time::sleep(ms(1)).await;
    // A call made now fails at once.
    let after = ch.request(msg("after")).await.expect_err("shut down");
    assert_eq!(after.kind(), Kind::Closed);
    let (out, ended) = joined(method).await;
    let err = out.expect_err("refused");
    assert_eq!(err.kind(), Kind::Closed);
    assert!(err.is_not_sent());
    let (ready, ready_at) = joined(readied).await;
    assert!(ready.is_err(), "poll_ready fails after the shutdown");
    joined(shutdown).await;
    assert!(
        ended - start <= ms(100) && ready_at - start <= ms(100),
        "the gate's waiters resolved {:?} (method) and {:?} (poll_ready) after the wait \
         began; the shutdown started at 10 ms",
        ended - start,
        ready_at - start
    );
    assert!(!seen.lock().unwrap().contains(&"m".to_string()));
}

// ---------------------------------------------------------------------------------
// What holds.
// ---------------------------------------------------------------------------------

/// `close()` wakes the gate's waiters at once (the task fails the held calls, held
/// crosses below queue, `notify_waiters`), and they fail `Closed` *not sent*.
#[tokio::test(start_paused = true)]
async fn gate_waiters_are_woken_by_close() {
    let seen = Seen::default();
    let net = silent(&seen);
    let ch = blocked_channel(&net);
    let calls = fill_held(&ch).await;
    let start = Instant::now();
    let method = spawn_request(&ch, "m");
    let readied = {
        let mut ch = ch.clone();
        tokio::spawn(async move {
            ServiceExt::<support::codec::Msg>::ready(&mut ch)
                .await
                .map(|_| ())
        })
    };
    tokio::time::sleep(ms(10)).await;
    assert!(!method.is_finished() && !readied.is_finished());
    ch.close();
    let err = joined(method).await.expect_err("closed");
    assert_eq!(err.kind(), Kind::Closed);
    assert!(err.is_not_sent());
    assert!(
        joined(readied).await.is_err(),
        "poll_ready: Err after close"
    );
    assert!(Instant::now() - start <= ms(11));
    let mut results = Vec::new();
    for c in calls {
        results.push(joined(c).await.expect_err("closed"));
    }
    assert!(
        !results[0].is_not_sent(),
        "the written one may have executed"
    );
    assert!(results[1].is_not_sent() && results[2].is_not_sent());
    assert_eq!(*seen.lock().unwrap(), ["first"]);
}

/// The connection task ending (dropped) wakes the gate's waiters: `Engine::drop`.
#[tokio::test(start_paused = true)]
async fn gate_waiters_are_woken_when_the_task_is_dropped() {
    let seen = Seen::default();
    let net = silent(&seen);
    let (ch, connection) = Channel::builder()
        .host("a:1")
        .config(
            Config::default()
                .max_in_flight(1)
                .queue(2)
                .stall_timeout(None),
        )
        .pair(
            net.connector(),
            socketchannel::Order::new(support::codec::TestProto),
        )
        .expect("valid");
    let task = tokio::spawn(connection);
    let _calls = fill_held(&ch).await;
    let method = spawn_request(&ch, "m");
    tokio::time::sleep(ms(10)).await;
    assert!(!method.is_finished());
    task.abort();
    let err = joined(method).await.expect_err("task gone");
    assert!(err.is_not_sent(), "never queued: {err:?}");
}

/// A call taken in to be timed while the channel connects (200 ms), then written,
/// times out `timeout` after it was taken in, not after it was written: its
/// `Deadline::After` is resolved once (in `hold`), not again by `write_call`.
#[tokio::test(start_paused = true)]
async fn a_held_then_written_call_times_out_from_when_it_was_taken_in() {
    let seen = Seen::default();
    let net = echo_after(Duration::from_secs(10), &seen);
    net.delay(ms(200));
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
    let start = Instant::now();
    let mut calls = ch.calls();
    let reply = calls
        .ready()
        .await
        .unwrap()
        .call(Call::new(msg("x")).timeout(ms(300)));
    let err = support::timeout(Duration::from_secs(5), reply)
        .await
        .expect_err("timed out");
    let err = support::channel::into_channel_error(err);
    assert_eq!(err.kind(), Kind::Timeout);
    assert!(!err.is_not_sent(), "written at 200 ms");
    let ended = Instant::now();
    assert!(
        ended >= start + ms(300) && ended <= start + ms(301),
        "timed out {:?} after the call",
        ended - start
    );
    assert_eq!(*seen.lock().unwrap(), ["x"]);
}

/// A call held while a connection is lost and a new one made: the deadline still
/// counts from when it was first taken in (not reset on the new connection).
#[tokio::test(start_paused = true)]
async fn a_call_carried_over_a_reconnect_keeps_its_deadline() {
    let seen = Seen::default();
    let net = silent(&seen);
    let ch = blocked_channel(&net);
    ch.connect().await.expect("connected");
    let first = spawn_request(
        &ch,
        Call::new(msg("first")).timeout(Duration::from_secs(60)),
    );
    tokio::time::sleep(ms(1)).await;
    let start = Instant::now();
    let mut calls = ch.calls();
    let reply = calls
        .ready()
        .await
        .unwrap()
        .call(Call::new(msg("carried")).timeout(ms(500)));
    tokio::time::sleep(ms(100)).await;
    // The connection dies; the next connect takes 300 ms.
    net.delay(ms(300));
    net.kill("a:1");
    net.down("a:1", false);
    let err = support::timeout(Duration::from_secs(5), reply)
        .await
        .expect_err("timed out");
    let err = support::channel::into_channel_error(err);
    assert_eq!(err.kind(), Kind::Timeout);
    let ended = Instant::now();
    assert!(
        ended <= start + ms(501),
        "timed out {:?} after the call",
        ended - start
    );
    assert!(ended >= start + ms(500));
    assert!(joined(first).await.is_err());
}

/// Backoff fail-fast with deadlines in use: `poll_ready` is `Ready` (Contract 2), calls
/// fail `ConnectFailed` *not sent* at once, the gate never closes (the held calls are
/// failed in the same poll), nothing reaches the server.
#[tokio::test(start_paused = true)]
async fn backoff_fail_fast_with_deadlines_stays_ready_and_not_sent() {
    let seen = Seen::default();
    let net = echo_after(Duration::ZERO, &seen);
    net.down("a:1", true);
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(
                Duration::from_secs(5),
                Duration::from_secs(5),
            ))
            .config(
                Config::default()
                    .queue(2)
                    .call_timeout(Duration::from_secs(1)),
            ),
    );
    let err = ch.request(msg("x")).await.expect_err("down");
    assert_eq!(err.kind(), Kind::ConnectFailed);
    let start = Instant::now();
    for round in 0..5 {
        let mut svcs: Vec<Ch> = (0..8).map(|_| ch.clone()).collect();
        let mut futs = Vec::new();
        for s in &mut svcs {
            support::timeout(ms(10), ServiceExt::<support::codec::Msg>::ready(&mut *s))
                .await
                .expect("Ready while backing off");
            futs.push(s.call(msg(format!("r{round}"))));
        }
        for f in futs {
            let err = support::timeout(ms(10), f).await.expect_err("fails fast");
            let err = support::channel::into_channel_error(err);
            assert!(err.is_not_sent(), "{err:?}");
            assert!(
                matches!(err.kind(), Kind::ConnectFailed),
                "{:?}",
                err.kind()
            );
        }
        tokio::time::sleep(ms(100)).await;
    }
    assert!(
        Instant::now() - start < Duration::from_secs(5),
        "within one backoff"
    );
    assert!(seen.lock().unwrap().is_empty());
}

/// No busy loop while the gate is closed for a long time with many waiters and held
/// full: virtual time passes (a task that woke itself forever would keep the paused
/// clock from auto-advancing, and this test would hang in real time). Run on a thread
/// with a real-time guard.
#[test]
fn no_spin_while_held_is_full_for_long() {
    let what = "virtual time did not pass: something spins";
    on_paused_thread(Duration::from_secs(20), what, || async {
        let seen = Seen::default();
        let net = silent(&seen);
        let ch = blocked_channel(&net);
        let _calls = fill_held(&ch).await;
        let waiters: Vec<_> = (0..50)
            .map(|i| spawn_request(&ch, format!("w{i}")))
            .collect();
        let mut readies = Vec::new();
        for _ in 0..20 {
            let mut c = ch.clone();
            readies.push(tokio::spawn(async move {
                let _ = ServiceExt::<support::codec::Msg>::ready(&mut c).await;
            }));
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        assert_eq!(ch.load(), 3);
        ch.close();
        for w in waiters {
            assert!(joined(w).await.is_err());
        }
    });
}

/// The same through a pool's `Service<Req>` (one connection: its member's
/// `poll_ready` reserves the slot; `p2c`'s ready cache keeps members readied the same
/// way across calls).
#[cfg(feature = "pool")]
#[tokio::test(start_paused = true)]
async fn a_pool_call_readied_by_poll_ready_is_not_failed_when_held_fills() {
    let seen = Seen::default();
    let net = echo_after(ms(1000), &seen);
    let pool = support::pool::build(
        &net,
        support::pool::builder(support::pool::fixed(ms(100))).config(
            Config::default()
                .max_in_flight(1)
                .queue(2)
                .stall_timeout(None),
        ),
        1,
    );
    pool.connect().await.expect("connected");
    let first = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.request(Call::new(msg("first")).timeout(Duration::from_secs(60)))
                .await
        })
    };
    tokio::time::sleep(ms(1)).await;
    let mut svc = pool.clone();
    ServiceExt::<support::codec::Msg>::ready(&mut svc)
        .await
        .expect("ready");
    let held: Vec<_> = (1..=2)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.request(Call::new(msg(format!("h{i}"))).timeout(ms(5000)))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(ms(1)).await;
    let out = support::timeout(Duration::from_secs(30), svc.call(msg("readied"))).await;
    taken(&out, "pool call");
    joined(first).await.expect("answered");
    for h in held {
        joined(h).await.expect("answered");
    }
}

// ---------------------------------------------------------------------------------
// F4 (a race, so this test is probabilistic, on real time and two threads): in
// `poll_waits` the gate is entered on `held_full()` but `wait_held_below` also ends on
// `is_closed()`. A handle that passed `refuses()` just before another handle's
// `shutdown()` set the channel closed, while the task keeps holding `queue` calls
// (a shutdown serves them), loops in `poll_waits` (new wait, returns at once, still
// full, new wait, ...) without returning, until held falls below queue: here the
// shutdown's deadline, 300 ms of one thread at 100% inside one `poll_ready`.
// ---------------------------------------------------------------------------------

#[test]
fn poll_ready_does_not_spin_when_a_shutdown_races_the_gate() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut longest = Duration::ZERO;
    let mut hits = 0;
    for _trial in 0..10 {
        let seen = Seen::default();
        let net = silent(&seen);
        let ch = rt.block_on(async {
            let ch = blocked_channel(&net);
            let _calls = fill_held(&ch).await;
            std::mem::forget(_calls);
            ch
        });
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (ch, stop) = (ch.clone(), stop.clone());
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                let _enter = handle.enter();
                let waker = futures::task::noop_waker();
                let mut cx = Context::from_waker(&waker);
                let mut longest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let mut h = ch.clone();
                    let t = std::time::Instant::now();
                    let polled = Service::<support::codec::Msg>::poll_ready(&mut h, &mut cx);
                    longest = longest.max(t.elapsed());
                    if let Poll::Ready(Err(_)) = polled {
                        break;
                    }
                }
                longest
            })
        };
        std::thread::sleep(Duration::from_millis(2));
        let sd = {
            let ch = ch.clone();
            rt.spawn(async move { ch.shutdown(Duration::from_millis(300)).await })
        };
        rt.block_on(sd).unwrap();
        stop.store(true, Ordering::Relaxed);
        let l = poller.join().unwrap();
        if l > Duration::from_millis(150) {
            hits += 1;
        }
        longest = longest.max(l);
        if hits >= 1 {
            break;
        }
    }
    assert!(
        longest < Duration::from_millis(150),
        "one poll_ready call ran for {longest:?} ({hits} trial(s) spun)"
    );
}

/// The same after the gate opened once: 20 method calls wait at the closed gate (as in
/// `deadline::no_call_waits_untimed_behind_as_many_held_calls_as_the_task_times`);
/// when the first reply lets one held call be written, held falls to 1 and
/// `notify_waiters` wakes all 20, which go through `enqueue` without a second look at
/// the gate: the task then holds about 20 (queue = 2).
#[tokio::test(start_paused = true)]
async fn when_the_gate_opens_only_as_many_waiters_as_there_is_room_for_go_through() {
    let seen = Seen::default();
    let net = echo_after(ms(1000), &seen);
    let ch = blocked_channel(&net);
    let calls = fill_held(&ch).await;
    let flood: Vec<_> = (0..20)
        .map(|i| spawn_request(&ch, format!("f{i}")))
        .collect();
    tokio::time::sleep(ms(10)).await;
    assert_eq!(ch.load(), 3, "the flood waits at the gate");
    // "first" is answered at ~1000 ms; h1 is written.
    tokio::time::sleep(ms(1000)).await;
    let load = ch.load();
    assert!(
        load <= 1 + 2 * 2,
        "after the gate opened once: load {load} with queue(2)"
    );
    drop((calls, flood));
}

/// Method calls waiting at the gate while a pass runs (held = queue, connect hangs,
/// 1 s connect timeout): when the pass fails the held calls fail `ConnectFailed` *not
/// sent*, held falls to 0, the waiters are woken and fail fast *not sent* too (the
/// channel backs off); none waits on, nothing is written.
#[tokio::test(start_paused = true)]
async fn gate_waiters_fail_fast_not_sent_when_the_pass_fails() {
    let seen = Seen::default();
    let net = echo_after(Duration::ZERO, &seen);
    net.hang("a:1");
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .connect_timeout(Duration::from_secs(1))
            .config(Config::default().queue(2)),
    );
    let start = Instant::now();
    let held: Vec<_> = (0..2)
        .map(|i| spawn_request(&ch, Call::new(msg(format!("h{i}"))).timeout(ms(10_000))))
        .collect();
    tokio::time::sleep(ms(1)).await;
    let waiters: Vec<_> = (0..5)
        .map(|i| spawn_request(&ch, format!("w{i}")))
        .collect();
    tokio::time::sleep(ms(10)).await;
    assert!(waiters.iter().all(|w| !w.is_finished()));
    for c in held.into_iter().chain(waiters) {
        let err = joined(c).await.expect_err("the pass failed");
        assert!(err.is_not_sent(), "{err:?}");
        assert_eq!(err.kind(), Kind::ConnectFailed);
    }
    assert!(Instant::now() - start <= ms(1001));
    assert!(seen.lock().unwrap().is_empty());
}
