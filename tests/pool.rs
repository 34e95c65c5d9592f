//! `Pool`: several connections to one endpoint behind tower's `p2c`, in memory and
//! under paused time. Which connection takes a call, what happens when connections
//! are down, how a dead host is dialed, leases, merged pushes, and the pool as a
//! `Service`.

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Call, Channel, Endpoint, Kind, Order, Reconnect, Replies, State};
use tower::load::Load;
use tower::{Service, ServiceExt};

use support::channel::msg;
use support::codec::{Kind as MsgKind, Msg, TestProto};
use support::memory::{Io, Net};
use support::pool::{HOST, P, discovered, feed, held_intake, pool};
use support::{bounded, eventually};

/// Echoes every request; `quit` drops the connection unanswered, `push` sends a push
/// frame before the reply.
fn net() -> Net {
    Net::new(|_: Endpoint, mut io: Io| async move {
        while let Some(Ok(req)) = io.next().await {
            match req.text() {
                "quit" => return,
                "push" => {
                    let push = Msg::new("pushed").kind(MsgKind::Push);
                    if io.send(push).await.is_err() {
                        return;
                    }
                }
                _ => {}
            }
            if io.send(req).await.is_err() {
                return;
            }
        }
    })
}

fn sent(pool: &P) -> Vec<u64> {
    pool.channels().map(|c| c.counters().sent).collect()
}

#[tokio::test(start_paused = true)]
async fn calls_spread_over_every_connection_and_the_counters_sum() {
    bounded(async {
        let net = net();
        let pool = pool(&net, 4, Duration::from_millis(100));
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let mut handle = pool.clone();
                tokio::spawn(async move {
                    let mut replies = Vec::new();
                    for i in 0..50 {
                        let body = format!("{t}.{i}");
                        let call = handle.ready().await.unwrap().call(msg(body.clone()));
                        replies.push(tokio::spawn(call));
                    }
                    for (i, reply) in replies.into_iter().enumerate() {
                        let reply = reply.await.unwrap().expect("answered");
                        assert_eq!(reply.text(), format!("{t}.{i}"));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let per = sent(&pool);
        assert!(
            per.iter().all(|&n| n > 0),
            "every connection took calls: {per:?}"
        );
        assert_eq!(pool.counters().sent, 400);
        assert_eq!(pool.state(), State::Ready);
        assert_eq!(net.connects(), 4, "one connection each");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_first_calls_wait_for_connections_being_made_and_none_fails() {
    bounded(async {
        let net = net();
        net.delay(Duration::from_millis(50));
        let pool = pool(&net, 4, Duration::from_millis(100));
        // Lazy: the first calls find every connection idle or connecting, dialing one
        // at a time; none may fail fast for that.
        let calls: Vec<_> = (0..64)
            .map(|i| {
                let mut handle = pool.clone();
                tokio::spawn(async move { handle.ready().await?.call(msg(format!("{i}"))).await })
            })
            .collect();
        for call in calls {
            call.await
                .unwrap()
                .expect("no call fails while connections are made");
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn connections_backing_off_are_held_out_while_another_serves() {
    bounded(async {
        let net = net();
        let mut pool = pool(&net, 3, Duration::from_secs(30));
        pool.connect().await.expect("all connect");
        // Two connections answer, then lose their connection and cannot make another.
        // (p2c draws two of three: held out or not, a draw of both would fail a call.)
        let (a, b) = (pool.lease().await.unwrap(), pool.lease().await.unwrap());
        a.request(msg("hello")).await.unwrap();
        b.request(msg("hello")).await.unwrap();
        net.down(HOST, true);
        let _ = a.request(msg("quit")).await;
        let _ = b.request(msg("quit")).await;
        let lost = [a.channel().clone(), b.channel().clone()];
        drop((a, b));
        eventually(Duration::from_secs(5), "the lost ones back off", || {
            lost.iter()
                .all(|c| *c.state().borrow() == State::BackingOff)
        })
        .await;
        let before: Vec<u64> = lost.iter().map(|c| c.counters().sent).collect();
        for i in 0..100 {
            let reply = pool.ready().await.unwrap().call(msg(format!("{i}"))).await;
            assert_eq!(
                reply.expect("the live connection answers").text(),
                i.to_string()
            );
            let reply = pool.request(msg("m")).await;
            assert_eq!(reply.expect("the live connection answers").text(), "m");
        }
        let after: Vec<u64> = lost.iter().map(|c| c.counters().sent).collect();
        assert_eq!(after, before, "none went to a connection backing off");
        assert_eq!(pool.state(), State::Ready);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn when_every_connection_is_down_calls_fail_fast_not_sent() {
    bounded(async {
        let net = net();
        net.down(HOST, true);
        let mut pool = pool(&net, 3, Duration::from_secs(30));
        let _ = pool.connect().await;
        eventually(Duration::from_secs(5), "every connection backs off", || {
            pool.state() == State::BackingOff
        })
        .await;
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            let err = pool
                .ready()
                .await
                .unwrap()
                .call(msg("x"))
                .await
                .unwrap_err();
            let err = support::channel::into_channel_error(err);
            assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
            assert!(err.is_not_sent(), "not sent: {err}");
        }
        let err = pool.request(msg("y")).await.unwrap_err();
        assert_eq!(err.kind(), Kind::ConnectFailed);
        assert!(pool.lease().await.is_err(), "nothing to lease");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "fast, not after a backoff"
        );
        assert_eq!(pool.load(), usize::MAX);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_host_is_dialed_by_one_connection_per_backoff_step() {
    support::timeout(Duration::from_secs(60), async {
        let net = net();
        net.down(HOST, true);
        let pool = pool(&net, 4, Duration::from_secs(1));
        let _ = pool.connect().await;
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        // One channel alone dials 11 times in 10.5 s (at 0, 1, ..., 10 s); four
        // without a gate would dial 44 times.
        let dials = net.connects();
        assert!(dials <= 13, "{dials} dials: the pool stormed the dead host");
        // The host comes back: every connection gets there.
        net.down(HOST, false);
        eventually(Duration::from_secs(5), "every connection connects", || {
            pool.channels().all(|c| *c.state().borrow() == State::Ready)
        })
        .await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_is_exclusive_and_returned_on_drop() {
    bounded(async {
        let net = net();
        let mut pool = pool(&net, 2, Duration::from_millis(100));
        pool.connect().await.unwrap();
        let lease = pool.lease().await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), pool.lease())
                .await
                .unwrap()
                .is_ok(),
            "the other connection is free"
        );
        let before = lease.counters().sent;
        for i in 0..20 {
            pool.ready()
                .await
                .unwrap()
                .call(msg(format!("{i}")))
                .await
                .unwrap();
            pool.request(msg("m")).await.unwrap();
        }
        assert_eq!(
            lease.counters().sent,
            before,
            "no other call went to the lease"
        );
        lease.request(msg("mine")).await.unwrap();

        // One connection, leased: the pool's callers wait until it is returned.
        let single = self::pool(&net, 1, Duration::from_millis(100));
        let lease = single.lease().await.unwrap();
        let mut handle = single.clone();
        let waiting = tokio::spawn(async move { handle.ready().await?.call(msg("after")).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !waiting.is_finished(),
            "waits while the only connection is leased"
        );
        drop(lease);
        assert_eq!(waiting.await.unwrap().unwrap().text(), "after");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn pushes_of_every_connection_come_through_one_receiver() {
    bounded(async {
        let net = net();
        let pool = pool(&net, 2, Duration::from_millis(100));
        let mut pushes = pool.pushes().expect("the first caller gets it");
        assert!(pool.pushes().is_none(), "one receiver");
        let a = pool.lease().await.unwrap();
        let b = pool.lease().await.unwrap();
        a.request(msg("push")).await.unwrap();
        b.request(msg("push")).await.unwrap();
        for _ in 0..2 {
            assert_eq!(pushes.recv().await.unwrap().text(), "pushed");
        }
        assert_eq!(pool.counters().pushes, 2);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_call_without_poll_ready_is_taken_or_fails_but_never_panics() {
    bounded(async {
        let net = net();
        let mut pool = pool(&net, 2, Duration::from_millis(100));
        pool.connect().await.unwrap();
        let reply = pool.call(msg("unready")).await.expect("room: taken");
        assert_eq!(reply.text(), "unready");
        pool.close();
        assert!(pool.is_closed());
        let err = pool
            .ready()
            .await
            .unwrap()
            .call(msg("x"))
            .await
            .unwrap_err();
        let err = support::channel::into_channel_error(err);
        assert_eq!(err.kind(), Kind::Closed);
        assert!(err.is_not_sent());
    })
    .await;
}

#[test]
fn a_pool_is_a_clone_send_sync_service() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<P>();
    check::<socketchannel::PoolCalls<Msg, Msg>>();
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<socketchannel::Lease<Msg, Msg>>();
}

#[tokio::test(start_paused = true)]
async fn every_call_shape_goes_through_the_pool_and_stays_on_one_connection() {
    bounded(async {
        // Answers `n:BODY` with n frames, the last one final.
        let net = Net::new(|_: Endpoint, mut io: Io| async move {
            while let Some(Ok(req)) = io.next().await {
                let text = req.text().to_string();
                let (n, body) = text.split_once(':').unwrap_or(("1", &text));
                let n: usize = n.parse().unwrap_or(1);
                for k in 1..=n {
                    let kind = if k < n {
                        MsgKind::More
                    } else {
                        MsgKind::Normal
                    };
                    if io
                        .send(Msg::new(format!("{body}{k}")).kind(kind))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        let pool = pool(&net, 3, Duration::from_millis(100));
        let mut calls = pool.calls();
        for round in 0..30 {
            let call = Call::new(msg(format!("3:r{round}."))).replies(Replies::Count(3));
            let reply = calls.ready().await.unwrap().call(call).await.unwrap();
            let frames: Vec<String> = reply
                .into_many()
                .unwrap()
                .iter()
                .map(|m| m.text().to_string())
                .collect();
            assert_eq!(frames, [1, 2, 3].map(|k| format!("r{round}.{k}")));
            let call = Call::new(msg("2:s")).stream(Replies::UntilFinal);
            let reply = calls.ready().await.unwrap().call(call).await.unwrap();
            let mut stream = reply.into_stream().unwrap();
            assert_eq!(stream.next().await.unwrap().unwrap().text(), "s1");
            assert_eq!(stream.next().await.unwrap().unwrap().text(), "s2");
            assert!(stream.next().await.is_none());
            let many = pool.request_until_final(msg("2:u")).await.unwrap();
            assert_eq!(many.len(), 2);
        }
        let per = sent(&pool);
        assert!(
            per.iter().filter(|&&n| n > 0).count() >= 2,
            "spread: {per:?}"
        );
    })
    .await;
}

/// Answers every request after `latency`, each on its own task (any order is fine for
/// session mode; order mode needs order, so this one keeps it: one at a time per
/// connection, pipelined by the client).
fn slow_net(latency: Duration) -> Net {
    Net::new(move |_: Endpoint, mut io: Io| async move {
        while let Some(Ok(req)) = io.next().await {
            tokio::time::sleep(latency).await;
            if io.send(req).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_growing_pool_settles_under_a_steady_load_and_shrinks_without_losing_a_call() {
    support::timeout(Duration::from_secs(300), async {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        // Replies pipelined 1 ms apart per connection: one connection carries 1000
        // calls/s, so 64 callers keep about 64 calls in flight whatever the size; with
        // a target of 20 per connection the pool must settle at 4 (16 each) and stay:
        // 3 would be 21 each, so a pool that shrank below the target would flap.
        let net = slow_net(Duration::from_millis(1));
        let pool = Channel::builder()
            .host(HOST)
            .reconnect(Reconnect::Persistent)
            .pool(1)
            .grow_to(8)
            .dwell(Duration::from_secs(1))
            .target_load(20)
            .connector(net.connector(), Order::new(TestProto))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let callers = |n: usize| -> Vec<tokio::task::JoinHandle<()>> {
            (0..n)
                .map(|_| {
                    let (mut handle, stop, failed) = (pool.clone(), stop.clone(), failed.clone());
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let call = async { handle.ready().await?.call(msg("x")).await };
                            if call.await.is_err() {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect()
        };
        let busy = callers(64);
        let mut sizes = Vec::new();
        for _ in 0..120 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            sizes.push(pool.size());
        }
        // 30 s: settled by 15 s, and never changed after.
        let settled = &sizes[60..];
        assert!(
            settled.iter().all(|&n| n == settled[0]),
            "it flapped: {sizes:?}"
        );
        assert_eq!(settled[0], 4, "settled at {}: {sizes:?}", settled[0]);
        // The load drops to 4 callers: it shrinks to 1, one step per dwell time, and the
        // calls on the connections taken out finish.
        stop.store(true, Ordering::Relaxed);
        for task in busy {
            task.await.unwrap();
        }
        stop.store(false, Ordering::Relaxed);
        let light = callers(4);
        support::eventually(Duration::from_secs(30), "it shrinks to 1", || {
            pool.size() == 1
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        for task in light {
            task.await.unwrap();
        }
        assert_eq!(
            failed.load(Ordering::Relaxed),
            0,
            "no call failed, growing or shrinking"
        );
        let c = pool.counters();
        assert_eq!(c.in_flight, 0);
    })
    .await;
}

/// `Lease` says no call of any other caller goes to the leased connection. A handle
/// whose `poll_ready` chose that connection before the lease was taken still sends its
/// call there.
#[tokio::test(start_paused = true)]
async fn a_lease_is_exclusive_against_a_handle_ready_before_it() {
    bounded(async {
        let net = net();
        let pool = pool(&net, 1, Duration::from_millis(100));
        pool.connect().await.unwrap();
        let mut handle = pool.clone();
        handle.ready().await.unwrap();
        let lease = pool.lease().await.unwrap();
        let before = lease.counters().sent;
        let call = handle.call(msg("not mine"));
        let _ = tokio::time::timeout(Duration::from_millis(100), call).await;
        assert_eq!(
            lease.counters().sent,
            before,
            "another caller's call went to the leased connection"
        );
    })
    .await;
}

/// Same with K = 2 and a handle whose balance holds both connections ready: the lease
/// takes one, the handle's call may still go to it.
#[tokio::test(start_paused = true)]
async fn a_lease_is_exclusive_against_handles_that_made_calls_before() {
    bounded(async {
        let net = net();
        let pool = pool(&net, 2, Duration::from_millis(100));
        pool.connect().await.unwrap();
        // Many handles, each ready (its balance holds both connections ready).
        let mut handles: Vec<P> = (0..32).map(|_| pool.clone()).collect();
        for h in &mut handles {
            h.ready().await.unwrap();
        }
        let lease = pool.lease().await.unwrap();
        let before = lease.counters().sent;
        for h in &mut handles {
            let _ = tokio::time::timeout(Duration::from_millis(100), h.call(msg("x"))).await;
        }
        assert_eq!(
            lease.counters().sent,
            before,
            "other callers' calls went to the leased connection"
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_pool_follows_a_changing_set_of_endpoints_and_drains_those_removed() {
    bounded(async {
        use tower::discover::Change;
        let net = slow_net(Duration::from_millis(100));
        let (changes, discover) = feed();
        let pool = discovered(&net, Channel::builder(), 2, discover);
        // Calls made before any endpoint is known wait for one.
        let early = {
            let mut handle = pool.clone();
            tokio::spawn(async move { handle.ready().await?.call(msg("early")).await })
        };
        let by_method = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.request(msg("method")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        changes
            .send(Change::Insert("a", Endpoint::new("a", 1)))
            .unwrap();
        changes
            .send(Change::Insert("b", Endpoint::new("b", 2)))
            .unwrap();
        assert_eq!(early.await.unwrap().unwrap().text(), "early");
        assert_eq!(by_method.await.unwrap().unwrap().text(), "method");
        support::eventually(Duration::from_secs(5), "four connections", || {
            pool.size() == 4
        })
        .await;
        // 40 calls in flight over both endpoints, then "a" goes: its calls finish.
        let calls: Vec<_> = (0..40)
            .map(|i| {
                let mut handle = pool.clone();
                tokio::spawn(async move { handle.ready().await?.call(msg(format!("{i}"))).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let a_before = net.count("a:1");
        changes.send(Change::Remove("a")).unwrap();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(
                call.await.unwrap().expect("no call lost or failed").text(),
                i.to_string()
            );
        }
        support::eventually(Duration::from_secs(10), "only b's", || pool.size() == 2).await;
        for i in 0..20 {
            pool.request(msg(format!("after {i}"))).await.unwrap();
        }
        assert_eq!(
            net.count("a:1"),
            a_before,
            "nothing dials the removed endpoint"
        );
        assert!(
            pool.channels()
                .all(|c| c.counters().sent > 0 || c.counters().in_flight == 0)
        );
        // Every endpoint removed: calls fail fast, not sent.
        changes.send(Change::Remove("b")).unwrap();
        support::eventually(Duration::from_secs(10), "none left", || pool.size() == 0).await;
        let err = pool.request(msg("nowhere")).await.unwrap_err();
        assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
        assert!(err.is_not_sent());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_dns_name_is_followed_as_its_addresses_change() {
    bounded(async {
        use std::net::SocketAddr;
        use std::sync::{Arc, Mutex};
        use tower::discover::Change;
        let answers: Arc<Mutex<Vec<std::io::Result<Vec<SocketAddr>>>>> =
            Arc::new(Mutex::new(vec![
                Ok(vec![
                    "10.0.0.1:6379".parse().unwrap(),
                    "10.0.0.2:6379".parse().unwrap(),
                ]),
                Err(std::io::Error::other("SERVFAIL")),
                Ok(vec![
                    "10.0.0.2:6379".parse().unwrap(),
                    "10.0.0.3:6379".parse().unwrap(),
                ]),
            ]));
        let asked = answers.clone();
        let mut dns = socketchannel::DnsDiscover::with_resolver(
            "redis.local",
            6379,
            Duration::from_secs(1),
            move |target| {
                assert_eq!(target, "redis.local:6379");
                let answer = asked.lock().unwrap().remove(0);
                async move { answer }
            },
        );
        let mut seen = Vec::new();
        for _ in 0..4 {
            match dns.next().await.unwrap().unwrap() {
                Change::Insert(addr, endpoint) => seen.push(format!("+{addr} {endpoint}")),
                Change::Remove(addr) => seen.push(format!("-{addr}")),
            }
        }
        assert_eq!(
            seen,
            [
                "+10.0.0.1:6379 10.0.0.1:6379",
                "+10.0.0.2:6379 10.0.0.2:6379",
                // the failed lookup changed nothing
                "-10.0.0.1:6379",
                "+10.0.0.3:6379 10.0.0.3:6379",
            ]
        );
    })
    .await;
}

/// The connections two pools of three chose, call by call, for 40 calls one at a time
/// (every connection equally loaded, so each choice is the balance's random draw).
async fn choices(seed: Option<u64>) -> Vec<usize> {
    let net = net();
    let mut b = support::pool::builder(support::pool::fixed(Duration::from_millis(100))).pool(3);
    if let Some(seed) = seed {
        b = b.balance_seed(seed);
    }
    let mut pool = b
        .connector(net.connector(), Order::new(TestProto))
        .expect("valid host");
    pool.connect().await.expect("connected");
    let mut chosen = Vec::new();
    for i in 0..40 {
        let before = sent(&pool);
        let reply = pool.ready().await.unwrap().call(msg(format!("{i}"))).await;
        assert_eq!(reply.expect("answered").text(), format!("{i}"));
        let after = sent(&pool);
        chosen.push((0..3).find(|&k| after[k] > before[k]).expect("one took it"));
    }
    chosen
}

/// `balance_seed` replays the balance's choices, for a pool of one endpoint as for
/// one over a `Discover` (it was only applied to the latter).
#[tokio::test(start_paused = true)]
async fn a_balance_seed_replays_the_choices() {
    bounded(async {
        let a = choices(Some(7)).await;
        assert_eq!(a, choices(Some(7)).await, "the same seed, the same choices");
        assert!(a.iter().any(|&k| k != a[0]), "the draws vary: {a:?}");
        assert_ne!(a, choices(Some(8)).await, "another seed, other choices");
    })
    .await;
}

/// `state_change` wakes on any connection's change of state: the first connect, the
/// host going away (every connection backs off), the close.
#[tokio::test(start_paused = true)]
async fn the_pools_state_changes_can_be_awaited() {
    bounded(async {
        let net = net();
        let pool = pool(&net, 2, Duration::from_secs(30));
        assert_eq!(pool.state(), State::Idle);
        let p = pool.clone();
        let first = tokio::spawn(async move { p.state_change(State::Idle).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!first.is_finished(), "nothing changed yet");
        pool.connect().await.expect("connected");
        assert_ne!(first.await.unwrap(), State::Idle);
        assert_eq!(pool.state(), State::Ready);
        assert_eq!(
            pool.state_change(State::Idle).await,
            State::Ready,
            "at once"
        );

        net.down(HOST, true);
        net.kill(HOST);
        let mut seen = vec![State::Ready];
        while seen.last() != Some(&State::BackingOff) {
            assert!(seen.len() < 10, "no end to the changes: {seen:?}");
            let last = *seen.last().unwrap();
            seen.push(pool.state_change(last).await);
        }
        pool.close();
        assert_eq!(pool.state_change(State::BackingOff).await, State::Closed);
    })
    .await;
}

/// A call a method makes waits for room on the connection it chose. When that
/// connection is taken out of the pool meanwhile (its endpoint removed; a shrink), the
/// call chooses again: it does not wait on slots a handle's balance reserved there and
/// holds, nor fail `Closed` when the drain ends (simulation seed 0x1da0a13).
#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_room_on_a_connection_taken_out_goes_to_another() {
    bounded(async {
        use tower::discover::Change;
        let net = net();
        // A handle ready for its next call holds the only slot of a's intake.
        let (pool, changes, holder) = held_intake(&net).await;
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.request(msg("moved")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "it waits for room on a");
        changes
            .send(Change::Insert("b", Endpoint::new("b", 2)))
            .unwrap();
        changes.send(Change::Remove("a")).unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("it chose again, and did not wait for the slot the holder keeps")
            .unwrap()
            .expect("not failed by a's drain");
        assert_eq!(reply.text(), "moved");
        assert_eq!(net.count("b:2"), 1);
        drop(holder);
    })
    .await;
}
