//! Helper-58's hunt for failure-path defects where two features meet: a `Discover`
//! key inserted again, a `Discover` that panics, a pool's call deadline before any
//! connection, a leased connection closed, the push receiver taken before any
//! connection, and the idle ping at a shutdown and after the last handle. Each test
//! failed before its fix.

#![cfg(all(feature = "testing", feature = "pool"))]

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Channel, Endpoint, State};
use tower::discover::Change;

use support::bounded;
use support::channel::msg;
use support::codec::Msg;
use support::memory::{Io, Net};
use support::pool::{discovered, feed};
use support::script::settle;

/// Every server answers each request with the endpoint it is.
fn named_net() -> Net {
    Net::new(|ep: Endpoint, mut io: Io| async move {
        while let Some(Ok(_req)) = io.next().await {
            if io.send(Msg::new(ep.to_string())).await.is_err() {
                break;
            }
        }
    })
}

/// A `Discover` that inserts a key again (tower: the new service replaces the old)
/// must leave one group for that key, and a later removal of the key must take it out.
#[tokio::test(start_paused = true)]
async fn d1_a_key_inserted_again_replaces_its_endpoint() {
    bounded(async {
        let net = named_net();
        let (changes, discover) = feed();
        let pool = discovered(&net, Channel::builder(), 1, discover);
        changes
            .send(Change::Insert("k", Endpoint::new("a", 1)))
            .unwrap();
        assert_eq!(pool.request(msg("x")).await.unwrap().text(), "a:1");
        // The key's endpoint moves to b:2.
        changes
            .send(Change::Insert("k", Endpoint::new("b", 2)))
            .unwrap();
        settle().await;
        let mut answered = Vec::new();
        for _ in 0..8 {
            answered.push(pool.request(msg("x")).await.unwrap().text().to_string());
        }
        let size_after_replace = pool.size();
        // The key goes away: nothing should be left.
        changes.send(Change::Remove("k")).unwrap();
        settle().await;
        let size_after_remove = pool.size();
        let after = pool.request(msg("x")).await.map(|m| m.text().to_string());
        assert_eq!(
            (
                size_after_replace,
                answered[0].as_str(),
                size_after_remove,
                after.is_err()
            ),
            (1, "b:2", 0, true),
            "(size after re-insert, who answered, size after remove, call failed); \
             answered {answered:?}, after the removal {after:?}"
        );
    })
    .await;
}

/// A key inserted again with the same endpoint (a source that lists all it knows anew)
/// changes nothing: no connection is made again (helper-59's review).
#[tokio::test(start_paused = true)]
async fn d1_the_same_endpoint_inserted_again_makes_no_new_connection() {
    bounded(async {
        let net = named_net();
        let (changes, discover) = feed();
        let pool = discovered(&net, Channel::builder(), 1, discover);
        changes
            .send(Change::Insert("k", Endpoint::new("a", 1)))
            .unwrap();
        assert_eq!(pool.request(msg("x")).await.unwrap().text(), "a:1");
        for _ in 0..3 {
            changes
                .send(Change::Insert("k", Endpoint::new("a", 1)))
                .unwrap();
            settle().await;
            assert_eq!(pool.request(msg("x")).await.unwrap().text(), "a:1");
        }
        assert_eq!((pool.size(), net.connects()), (1, 1), "(size, connects)");
    })
    .await;
}

/// The lease docs say: end a transaction (or close the connection) before dropping the
/// lease. A connection closed that way must not take the pool down for good.
#[tokio::test(start_paused = true)]
async fn l1_a_leased_connection_closed_before_its_return_is_not_lost_to_the_pool() {
    bounded(async {
        let net = named_net();
        let pool = support::pool::pool(&net, 1, Duration::from_millis(100));
        pool.connect().await.unwrap();
        {
            let lease = pool.lease().await.unwrap();
            lease.request(msg("MULTI")).await.unwrap();
            // Abandon the transaction the way the docs suggest.
            lease.close();
        }
        settle().await;
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            outcomes.push(pool.request(msg("after")).await.map(|m| m.text().to_string()));
        }
        assert!(
            outcomes.iter().all(|o| o.is_ok()),
            "the pool stays dead after a lease closed its connection: {outcomes:?} (pool closed: {})",
            pool.is_closed()
        );
    })
    .await;
}

/// The pool's own close while a lease is held is not undone when the lease returns its
/// (closed) connection.
#[tokio::test(start_paused = true)]
async fn l1_a_pool_closed_while_a_lease_is_held_stays_closed() {
    bounded(async {
        let net = named_net();
        let pool = support::pool::pool(&net, 1, Duration::from_millis(100));
        pool.connect().await.unwrap();
        let lease = pool.lease().await.unwrap();
        lease.request(msg("MULTI")).await.unwrap();
        pool.close();
        drop(lease);
        settle().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = pool.request(msg("after")).await;
        assert!(after.is_err(), "a closed pool answered: {after:?}");
        assert!(pool.is_closed());
    })
    .await;
}

/// `Pool::pushes` gives the first caller the merged receiver: over a `Discover`, asked
/// before the first endpoint came, it was `None` for good. (Helper-58's suspicion,
/// confirmed.)
#[tokio::test(start_paused = true)]
async fn p2_the_push_receiver_taken_before_the_first_endpoint_gets_their_pushes() {
    bounded(async {
        let net = Net::new(|_: Endpoint, mut io: Io| async move {
            while let Some(Ok(req)) = io.next().await {
                if req.text() == "push" {
                    let push = Msg::new("pushed").kind(support::codec::Kind::Push);
                    if io.send(push).await.is_err() {
                        return;
                    }
                }
                if io.send(req).await.is_err() {
                    return;
                }
            }
        });
        let (changes, discover) = feed();
        let pool = discovered(&net, Channel::builder(), 1, discover);
        let mut pushes = pool.pushes().expect("the first caller gets it");
        assert!(pool.pushes().is_none(), "one receiver");
        changes
            .send(Change::Insert("k", Endpoint::new("a", 1)))
            .unwrap();
        pool.request(msg("push")).await.unwrap();
        let pushed = tokio::time::timeout(Duration::from_secs(1), pushes.recv()).await;
        assert_eq!(pushed.expect("a push").expect("open").text(), "pushed");
    })
    .await;
}

/// A server that answers every call but the idle ping ("PING"), which it never answers.
fn mute_ping_net() -> Net {
    Net::new(|_ep: Endpoint, mut io: Io| async move {
        while let Some(Ok(req)) = io.next().await {
            if req.text() == "PING" {
                continue;
            }
            if io.send(req).await.is_err() {
                break;
            }
        }
    })
}

/// A shutdown ends as soon as nothing it waits for is left (Contract 8). The idle ping
/// is the channel's own call: no caller waits for it, so it must not hold a shutdown
/// to its deadline.
#[tokio::test(start_paused = true)]
async fn s1_an_unanswered_idle_ping_does_not_hold_a_shutdown() {
    bounded(async {
        let net = mute_ping_net();
        let ch = net.channel(
            support::channel::Mode::Order,
            Channel::builder()
                .host("a:1")
                .idle_ping(Duration::from_millis(100), || msg("PING")),
        );
        assert_eq!(ch.request(msg("x")).await.unwrap().text(), "x");
        // Idle for a while: a ping goes out and is left unanswered.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let in_flight = ch.counters().in_flight;
        let started = tokio::time::Instant::now();
        ch.shutdown(Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "the shutdown waited {took:?} for the idle ping (in flight before: {in_flight})"
        );
    })
    .await;
}

/// A user's `Discover` that panics before it yields any endpoint: the pool's calls must
/// still fail (no connection) instead of waiting for endpoints that can never come.
#[tokio::test(start_paused = true)]
async fn p1_a_discover_that_panics_before_any_endpoint_does_not_hang_the_pool() {
    bounded(async {
        let net = named_net();
        let discover = futures::stream::poll_fn(
            |_cx| -> std::task::Poll<
                Option<Result<Change<&'static str, Endpoint>, std::convert::Infallible>>,
            > { panic!("the user's discovery panicked") },
        );
        let pool = discovered(
            &net,
            Channel::builder().connect_timeout(Duration::from_millis(500)),
            1,
            discover,
        );
        let out = tokio::time::timeout(Duration::from_secs(8), pool.request(msg("x"))).await;
        let out = out.expect("the pool's call hangs: the first endpoints are awaited for ever");
        assert!(out.expect_err("no endpoint").is_not_sent());
    })
    .await;
}

/// A pool's default call deadline (`call_timeout`) bounds the wait for its first
/// endpoints too: it was read from a connection, and there is none yet.
#[tokio::test(start_paused = true)]
async fn p1_the_call_timeout_bounds_the_wait_for_the_first_endpoints() {
    bounded(async {
        let net = named_net();
        let (_changes, discover) = feed();
        let pool = discovered(
            &net,
            Channel::builder()
                .connect_timeout(Duration::from_secs(10))
                .call_timeout(Duration::from_secs(1)),
            1,
            discover,
        );
        let started = tokio::time::Instant::now();
        let err = pool.request(msg("x")).await.expect_err("no endpoint");
        let took = started.elapsed();
        assert!(err.is_not_sent(), "{err:?}");
        assert_eq!(
            err.kind(),
            socketchannel::Kind::Timeout,
            "{err:?} after {took:?}"
        );
        assert!(took <= Duration::from_millis(1100), "failed after {took:?}");
    })
    .await;
}

/// What the server does with a call it never answers.
#[derive(Clone, Copy)]
enum Unanswered {
    /// None: every call is answered.
    None,
    /// The idle ping ("PING").
    Ping,
    /// A user call ("HOLD") whose caller then leaves.
    Left,
}

/// Drops the channel's last handle after a call that is never answered, with no stall
/// timer, and says whether the connection was closed within ten minutes.
async fn closed_after_the_last_handle(unanswered: Unanswered) -> bool {
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ended.clone();
    let net = Net::new(move |_ep: Endpoint, mut io: Io| {
        let flag = flag.clone();
        async move {
            while let Some(Ok(req)) = io.next().await {
                if req.text() == "PING" || req.text() == "HOLD" {
                    continue;
                }
                if io.send(req).await.is_err() {
                    break;
                }
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let mut builder = Channel::builder()
        .host("a:1")
        .config(socketchannel::Config::default().stall_timeout(None));
    if let Unanswered::Ping = unanswered {
        builder = builder.idle_ping(Duration::from_millis(100), || msg("PING"));
    }
    let ch = net.channel(support::channel::Mode::Order, builder);
    assert_eq!(ch.request(msg("x")).await.unwrap().text(), "x");
    if let Unanswered::Left = unanswered {
        let left = tokio::time::timeout(Duration::from_millis(50), ch.request(msg("HOLD"))).await;
        assert!(left.is_err(), "never answered");
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    drop(ch);
    tokio::time::sleep(Duration::from_secs(600)).await;
    ended.load(std::sync::atomic::Ordering::SeqCst)
}

/// Every handle dropped and every call answered: the transport is closed (reliability
/// row 29). An unanswered idle ping kept the connection and its task alive for ever
/// (no stall timer here to end it): nobody waits for it once every handle is gone. A
/// call whose caller left is closed by the orphan rule (a guard, not a finding).
#[tokio::test(start_paused = true)]
async fn s2_a_call_nobody_waits_for_keeps_no_connection_open_after_the_last_handle() {
    support::timeout(Duration::from_secs(3 * 700), async {
        assert!(
            closed_after_the_last_handle(Unanswered::None).await,
            "all answered"
        );
        assert!(
            closed_after_the_last_handle(Unanswered::Ping).await,
            "the idle ping"
        );
        assert!(
            closed_after_the_last_handle(Unanswered::Left).await,
            "a caller that left"
        );
    })
    .await;
}

// Helper-59's review of the lease's reopening (the `l2_*` tests).

/// The lease docs: close the connection before returning it, "the pool then reopens
/// it". A call made right after the lease is dropped failed `Closed`: the pool saw the
/// connection down before its task took the reopening in.
#[tokio::test(start_paused = true)]
async fn l2_a_call_right_after_a_closed_lease_is_returned_is_answered() {
    bounded(async {
        let net = named_net();
        let pool = support::pool::pool(&net, 1, Duration::from_millis(100));
        pool.connect().await.unwrap();
        let lease = pool.lease().await.unwrap();
        lease.request(msg("MULTI")).await.unwrap();
        lease.close();
        drop(lease);
        let after = pool.request(msg("after")).await;
        assert!(after.is_ok(), "a call after the lease's return: {after:?}");
    })
    .await;
}

/// A pool call that waited for the lease (pool of one) while its holder closed it.
#[tokio::test(start_paused = true)]
async fn l2_a_call_waiting_for_a_lease_closed_by_its_holder_is_answered() {
    bounded(async {
        let net = named_net();
        let pool = support::pool::pool(&net, 1, Duration::from_millis(100));
        pool.connect().await.unwrap();
        let lease = pool.lease().await.unwrap();
        let p2 = pool.clone();
        let waiting = tokio::spawn(async move { p2.request(msg("waiting")).await });
        settle().await;
        assert!(!waiting.is_finished(), "waits for the lease");
        lease.close();
        drop(lease);
        let out = waiting.await.unwrap();
        assert!(out.is_ok(), "the call that waited for the lease: {out:?}");
    })
    .await;
}

/// pool.close() racing Lease::drop on a multi-thread runtime: a closed pool ends with
/// every connection closed.
#[test]
fn l2_pool_close_racing_a_closed_lease_drop_leaves_nothing_open() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut bad = Vec::new();
        for round in 0..50 {
            let net = named_net();
            let pool = support::pool::pool(&net, 1, Duration::from_millis(10));
            support::timeout(Duration::from_secs(5), pool.connect())
                .await
                .unwrap();
            let lease = pool.lease().await.unwrap();
            lease.close();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let b2 = barrier.clone();
            let p2 = pool.clone();
            let closer = std::thread::spawn(move || {
                b2.wait();
                p2.close();
            });
            barrier.wait();
            drop(lease);
            closer.join().unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let states: Vec<_> = pool
                .channels()
                .map(|c| (c.is_closed(), *c.state().borrow()))
                .collect();
            if states
                .iter()
                .any(|&(closed, st)| !closed || st != State::Closed)
            {
                bad.push((round, states));
            }
        }
        assert!(bad.is_empty(), "open after pool.close(): {bad:?}");
    });
}

/// The holder started a shutdown it did not await to its end (a call of its own still
/// waits) and dropped the lease: the reopening waits for that shutdown. The pool's own
/// shutdown then joined it, and when it ended the channel reopened: a shut-down pool
/// with a live connection. A later shutdown now wins over an earlier reopening.
#[tokio::test(start_paused = true)]
async fn l2_a_pool_shutdown_after_a_lease_returned_mid_shutdown_stays_shut() {
    bounded(async {
        let net = support::pool::hold_net();
        let pool = support::pool::pool(&net, 1, Duration::from_millis(100));
        pool.connect().await.unwrap();
        let lease = pool.lease().await.unwrap();
        let ch = lease.channel().clone();
        let mute = tokio::spawn(async move { ch.request(msg("mute")).await });
        settle().await;
        // Started, not awaited to its end.
        let _ = tokio::time::timeout(Duration::from_millis(10), lease.shutdown(Duration::from_secs(5))).await;
        drop(lease);
        pool.shutdown(Duration::from_secs(1)).await;
        let closed_at_once = pool.is_closed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = mute.await;
        let states: Vec<_> = pool
            .channels()
            .map(|c| (c.is_closed(), *c.state().borrow()))
            .collect();
        let after = pool.request(msg("after")).await;
        assert!(
            closed_at_once && states.iter().all(|&(closed, st)| closed && st == State::Closed) && after.is_err(),
            "after pool.shutdown(): closed at once {closed_at_once}, connections {states:?}, a call: {after:?}"
        );
    })
    .await;
}
