//! A second skeptical review of `Pool`: the connect turns and shared backoff
//! (`reconnect/turns.rs`), leases against calls routed while every connection was
//! down, and a pool that shrinks. In memory, under paused time like `tests/pool.rs`.

mod support;

use std::time::Duration;

use socketchannel::{Order, State};
use tower::{Service, ServiceExt};

use support::channel::msg;
use support::codec::TestProto;
use support::memory::Net;
use support::pool::{HOST, build, builder, fixed, member, ready};
use support::{bounded, eventually};

const OTHER: &str = "b:1";

fn net() -> Net {
    support::pool::hold_net()
}

/// `connect()` "connects if it is not" and restarts the backoff (a plain channel dials
/// at once). A pool's member asked to `connect()` right after a failed pass follows
/// the pool's recorded failure, its own included: it fails at once with
/// `SiblingFailed`, without a dial, until that backoff runs out, though the host is up.
#[tokio::test(start_paused = true)]
async fn connect_after_a_failed_pass_dials_again() {
    bounded(async {
        let net = net();
        net.down(HOST, true);
        let pool = build(&net, builder(fixed(Duration::from_secs(10))), 1);
        assert!(pool.connect().await.is_err(), "the host is down");
        net.down(HOST, false);
        let before = net.connects();
        let again = pool.connect().await;
        assert!(
            again.is_ok(),
            "connect() with the host up: {again:?} ({} dials)",
            net.connects() - before
        );
    })
    .await;
}

/// The same with a plain channel, for comparison (passes).
#[tokio::test(start_paused = true)]
async fn a_plain_channel_connect_after_a_failed_pass_dials_again() {
    bounded(async {
        let net = net();
        net.down(HOST, true);
        let channel = builder(fixed(Duration::from_secs(10)))
            .connector(net.connector(), Order::new(TestProto))
            .unwrap();
        assert!(channel.connect().await.is_err());
        net.down(HOST, false);
        channel.connect().await.expect("dials again");
    })
    .await;
}

/// `change_host` (contract 8): "new calls go to the new host now, not after a backoff
/// that the old host's failures earned". Moving every member of a pool off a dead host
/// leaves them following the dead host's recorded failure: the new host is not dialed
/// until the old backoff runs out.
#[tokio::test(start_paused = true)]
async fn change_host_is_not_held_back_by_the_old_hosts_failure() {
    bounded(async {
        let net = net();
        net.down(HOST, true);
        let pool = build(&net, builder(fixed(Duration::from_secs(30))), 2);
        assert!(pool.connect().await.is_err(), "the host is down");
        for c in pool.channels() {
            c.change_host(OTHER).unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            pool.channels().all(|c| ready(&c)),
            "moved to a host that is up, 2 s later: {:?}; {} dials of {OTHER}",
            pool.channels()
                .map(|c| *c.state().borrow())
                .collect::<Vec<_>>(),
            net.count(OTHER)
        );
    })
    .await;
}

/// "One dead host sees one pass per backoff step": with `max_attempts`, the pass that
/// gives up records no wait (`Idle`), so at the last step every member dials in turn,
/// K passes instead of one.
#[tokio::test(start_paused = true)]
async fn max_attempts_gives_up_with_one_pass_in_the_last_step() {
    bounded(async {
        let net = net();
        net.down(HOST, true);
        let pool = build(
            &net,
            builder(fixed(Duration::from_secs(1)).max_attempts(3)),
            4,
        );
        let _ = pool.connect().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            pool.channels().all(|c| *c.state().borrow() == State::Idle),
            "every member gave up"
        );
        let dials = net.connects();
        assert!(
            dials <= 4,
            "{dials} dials for 3 attempts: one pass per step, K at the last one"
        );
    })
    .await;
}

/// Turns are given back by a pass that is closed while it dials: the sibling behind
/// it connects (passes).
#[tokio::test(start_paused = true)]
async fn closing_the_member_that_holds_the_turn_lets_the_others_connect() {
    bounded(async {
        let net = net();
        let pool = build(&net, builder(fixed(Duration::from_secs(1))), 2);
        let (m0, m1) = (member(&pool, 0), member(&pool, 1));
        net.hang(HOST);
        let c0 = tokio::spawn({
            let m0 = m0.clone();
            async move { m0.connect().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let c1 = tokio::spawn({
            let m1 = m1.clone();
            async move { m1.connect().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(net.connects(), 1, "member 1 waits for the turn");
        m0.close();
        assert!(c0.await.unwrap().is_err());
        // Member 1 now has the turn, and dials (it hangs too: no timeout set).
        eventually(Duration::from_secs(1), "member 1 dials", || {
            net.connects() == 2
        })
        .await;
        m1.close();
        assert!(c1.await.unwrap().is_err());
    })
    .await;
}

/// A pass whose handshake times out gives back its turn with a failure: the siblings
/// follow it (one pass per step), and all are back once the handshake answers
/// (passes).
#[tokio::test(start_paused = true)]
async fn a_handshake_timeout_gives_back_the_turn() {
    support::timeout(Duration::from_secs(60), async {
        let net = net();
        let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let hook = slow.clone();
        let pool = build(
            &net,
            builder(fixed(Duration::from_secs(1)))
                .handshake_timeout(Duration::from_millis(100))
                .handshake(move |_conn, _endpoint| {
                    let slow = hook.load(std::sync::atomic::Ordering::SeqCst);
                    async move {
                        if slow {
                            std::future::pending::<()>().await;
                        }
                        Ok(socketchannel::Handshake::Ready)
                    }
                }),
            3,
        );
        let _ = pool.connect().await;
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert!(net.connects() <= 4, "{} dials in 3.5 s", net.connects());
        slow.store(false, std::sync::atomic::Ordering::SeqCst);
        eventually(Duration::from_secs(5), "all back", || {
            pool.channels().all(|c| ready(&c))
        })
        .await;
    })
    .await;
}

/// `Lease` says no other caller's call goes to the leased connection. A handle whose
/// `poll_ready` found every connection down routes its next call straight to a down
/// slot's channel (`Route::Down`), without the lease check: if that connection came
/// back and was leased meanwhile, the call goes to the lease's connection.
#[tokio::test(start_paused = true)]
async fn a_call_routed_while_all_were_down_does_not_reach_a_lease() {
    bounded(async {
        let net = net();
        net.down(HOST, true);
        let pool = build(&net, builder(fixed(Duration::from_secs(1))), 1);
        assert!(pool.connect().await.is_err());
        let mut handle = pool.clone();
        handle.ready().await.unwrap(); // every connection down: routed to fail fast
        net.down(HOST, false);
        eventually(Duration::from_secs(5), "reconnects", || {
            ready(&member(&pool, 0))
        })
        .await;
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

/// A pool that shrinks takes out "the least busy usable" connection. When the other
/// connection is down (backing off: the host takes no new connections), that is the
/// only one that works: the pool is left with none that takes calls.
#[tokio::test(start_paused = true)]
async fn shrinking_does_not_take_out_the_only_usable_connection() {
    support::timeout(Duration::from_secs(120), async {
        let net = net();
        // Four calls held for a second: the pool grows to two.
        let (pool, held) = support::pool::grown(&net, Duration::from_secs(60)).await;
        // The host takes no new connection: the new member fails its pass.
        net.down(HOST, true);
        let fresh = pool
            .channels()
            .find(|c| !ready(c))
            .expect("the new member is not connected");
        let _ = fresh.request(msg("x")).await;
        assert_eq!(*fresh.state().borrow(), State::BackingOff);
        for h in held {
            h.await.unwrap().unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let states: Vec<_> = pool.channels().map(|c| *c.state().borrow()).collect();
        let reply = pool.request(msg("after")).await;
        assert!(
            reply.is_ok(),
            "the pool shrank to {states:?} and fails calls: {reply:?}"
        );
    })
    .await;
}

/// A call's deadline bounds it "at any phase of the channel: connecting, backing off,
/// waiting for room" (a `Channel` method fails it `Timeout`, not sent). A pool's
/// method waits in `pick()` for a connection to become usable with no deadline: while
/// every connection is connecting, the call outlives its deadline by the whole
/// connect timeout (and for ever without one).
#[tokio::test(start_paused = true)]
async fn a_pool_call_deadline_bounds_the_wait_for_a_connecting_connection() {
    bounded(async {
        let net = net();
        net.hang(HOST);
        let pool = build(
            &net,
            builder(fixed(Duration::from_secs(1))).connect_timeout(Duration::from_secs(5)),
            1,
        );
        // The connection's pass runs (its dial hangs) before the call is made.
        let m0 = member(&pool, 0);
        tokio::spawn(async move { m0.connect().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(*member(&pool, 0).state().borrow(), State::Connecting);
        let start = tokio::time::Instant::now();
        let call = socketchannel::Call::new(msg("x")).timeout(Duration::from_millis(100));
        let err = pool
            .request(call)
            .await
            .expect_err("the host never answers");
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(1) && err.kind() == socketchannel::Kind::Timeout,
            "a 100 ms deadline: failed {:?} after {took:?}",
            err.kind()
        );
    })
    .await;
}

/// The same while the only connection is leased: a pool method's deadline is not
/// looked at while it waits for the lease to end.
#[tokio::test(start_paused = true)]
async fn a_pool_call_deadline_bounds_the_wait_for_a_leased_connection() {
    bounded(async {
        let net = net();
        let pool = build(&net, builder(fixed(Duration::from_secs(1))), 1);
        pool.connect().await.unwrap();
        let _lease = pool.lease().await.unwrap();
        let call = socketchannel::Call::new(msg("x")).timeout(Duration::from_millis(100));
        let out = tokio::time::timeout(Duration::from_secs(5), pool.request(call)).await;
        match out {
            Ok(Err(e)) => assert_eq!(e.kind(), socketchannel::Kind::Timeout),
            Ok(Ok(_)) => panic!("answered on the leased connection"),
            Err(_) => panic!("a 100 ms deadline: still waiting after 5 s"),
        }
    })
    .await;
}

/// A connection retired at its maximum age is replaced by a new pass (the old one
/// drains). If a sibling's pass failed just before, the new pass follows it: the
/// member that had a working connection fails new calls fast for the sibling's whole
/// backoff, though the host is up.
#[tokio::test(start_paused = true)]
async fn a_retired_connection_is_not_replaced_by_a_follow() {
    support::timeout(Duration::from_secs(120), async {
        let net = net();
        let pool = build(
            &net,
            builder(fixed(Duration::from_secs(20))).max_connection_age(Duration::from_secs(10)),
            2,
        );
        pool.connect().await.unwrap();
        let (m0, m1) = (member(&pool, 0), member(&pool, 1));
        // Member 1 loses its connection while the host refuses new ones: its pass
        // fails, and the pool's backoff runs until t ≈ 20 s.
        tokio::time::sleep(Duration::from_secs(5)).await;
        m1.request(msg("hi")).await.expect("member 1 answers once");
        net.down(HOST, true);
        let _ = m1.request(msg("quit")).await;
        eventually(Duration::from_secs(2), "member 1 backs off", || {
            *m1.state().borrow() == State::BackingOff
        })
        .await;
        net.down(HOST, false);
        // Member 0 reaches its maximum age at t = 10 s.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            ready(&m0),
            "member 0, retired at its age with the host up: {:?}",
            *m0.state().borrow()
        );
    })
    .await;
}

/// A handshake hook that panics when called (not in its future) fails its host like an
/// error: the turn it held is given back with that failure, and every member connects
/// at the next step (passes).
#[tokio::test(start_paused = true)]
async fn a_handshake_hook_panicking_gives_back_the_turn() {
    support::timeout(Duration::from_secs(60), async {
        let net = net();
        let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let pool = build(
            &net,
            builder(fixed(Duration::from_secs(1))).handshake(move |_conn, _endpoint| {
                if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    panic!("the hook panics once");
                }
                async { Ok(socketchannel::Handshake::Ready) }
            }),
            3,
        );
        let _ = pool.connect().await;
        eventually(Duration::from_secs(5), "all connect", || {
            pool.channels().all(|c| ready(&c))
        })
        .await;
    })
    .await;
}

/// A call whose deadline passes while it waits for room in a full intake fails
/// `Timeout` through a `Channel` method. Through a pool's, the room's timeout is
/// dropped and the call is handed to the channel anyway, without room: it fails
/// `Overloaded` (or, if room came in the same instant, is queued past its deadline).
#[tokio::test(start_paused = true)]
async fn a_pool_call_that_times_out_waiting_for_room_fails_timeout() {
    bounded(async {
        let net = net();
        let config = socketchannel::Config::default().max_in_flight(1).queue(1);
        let plain = builder(fixed(Duration::from_secs(1)))
            .config(config.clone())
            .connector(net.connector(), Order::new(TestProto))
            .unwrap();
        let pool = builder(fixed(Duration::from_secs(1)))
            .config(config)
            .pool(1)
            .connector(net.connector(), Order::new(TestProto))
            .unwrap();
        plain.connect().await.unwrap();
        pool.connect().await.unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            let (p, c) = (pool.clone(), plain.clone());
            held.push(tokio::spawn(async move { p.request(msg("hold")).await }));
            held.push(tokio::spawn(async move { c.request(msg("hold")).await }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let call = || socketchannel::Call::new(msg("x")).timeout(Duration::from_millis(100));
        let plain_err = plain.request(call()).await.expect_err("no room");
        let pool_err = pool.request(call()).await.expect_err("no room");
        assert_eq!(
            plain_err.kind(),
            socketchannel::Kind::Timeout,
            "{plain_err}"
        );
        assert_eq!(
            pool_err.kind(),
            plain_err.kind(),
            "pool: {pool_err}; channel: {plain_err}"
        );
    })
    .await;
}

/// A growable pool built outside a runtime keeps its size and works on the first
/// runtime that uses it (passes).
#[test]
fn a_growable_pool_built_outside_a_runtime_works_at_its_size() {
    let net = net();
    let pool = builder(fixed(Duration::from_secs(1)))
        .pool(2)
        .grow_to(4)
        .connector(net.connector(), Order::new(TestProto))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(bounded(async {
        for _ in 0..8 {
            pool.request(msg("x")).await.unwrap();
        }
        assert_eq!(pool.size(), 2);
    }));
}

/// `Pushes` takes the receivers of connections added later, and goes on when one is
/// taken out (passes).
#[tokio::test(start_paused = true)]
async fn pushes_follow_members_added_and_removed() {
    support::timeout(Duration::from_secs(60), async {
        let net = net();
        let pool = support::pool::growable(&net, Duration::from_secs(1)).await;
        let mut pushes = pool.pushes().expect("the receiver");
        let held = support::pool::grow(&pool).await;
        let fresh = pool.channels().nth(1).unwrap();
        fresh.request(msg("push")).await.unwrap();
        let got = support::timeout(Duration::from_secs(1), pushes.recv()).await;
        assert_eq!(got.map(|m| m.text().to_string()).as_deref(), Some("pushed"));
        for h in held {
            h.await.unwrap().unwrap();
        }
        eventually(Duration::from_secs(5), "shrinks", || pool.size() == 1).await;
        let left = pool.channels().next().unwrap();
        left.request(msg("push")).await.unwrap();
        let got = support::timeout(Duration::from_secs(5), pushes.recv()).await;
        assert_eq!(got.map(|m| m.text().to_string()).as_deref(), Some("pushed"));
    })
    .await;
}
