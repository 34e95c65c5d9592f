//! The connection ends under the calls (scenarios 1-4): a FIN with calls in flight and
//! queued, a reset or cut mid-frame, an idle connection's death, a restart at the same
//! address.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use socketchannel::{Backoff, Config, ConnectionErrorKind, Kind, Order, Reconnect, State};
use tokio::time::Instant;

use crate::common::{
    STEP, assert_mx, assert_ns, builder, finish, joined, ms, record_states, spawn, spawn_fixed,
    whole, why,
};
use crate::support::channel::{Mode as Md, msg, spawn_request};
use crate::support::codec::{Msg, TestProto};
use crate::support::proxy::{Dir, Fault, Proxy};
use crate::support::server::{Behaviour, Gate, TestServer};
use crate::support::{eventually, timeout};

use ConnectionErrorKind::{Eof, Read};

/// Scenario 1: FIN with 3 calls in flight and 2 queued, over a fixed transport: the 3
/// written fail *may have executed* (EOF); the 2 queued fail *not sent* and hand their
/// request back.
///
/// One thread: all five calls are queued before the connection task first runs. On two
/// threads the server could close before the last calls are queued, and those would
/// (rightly) fail as `Closed`: the channel has no reconnect.
#[tokio::test(flavor = "current_thread")]
async fn s01_fin_with_three_in_flight_and_two_queued_fixed_transport() {
    whole(async {
        let server = TestServer::start(Behaviour::silent().close_after(3)).await;
        let config = Config::default().max_in_flight(3);
        let (ch, task) = spawn_fixed(server.addr(), Order::new(TestProto), config).await;

        let reqs: Vec<Msg> = (0..5).map(|i| Msg::with_id(i, format!("q{i}"))).collect();
        let outcomes = timeout(STEP, join_all(reqs.iter().map(|r| ch.request(r.clone())))).await;
        for (i, (outcome, req)) in outcomes.into_iter().zip(&reqs).enumerate() {
            let mut err = outcome.expect_err("the connection was lost");
            if i < 3 {
                assert_mx(&err, &[Eof]);
                assert_eq!(err.take_request::<Msg>(), None);
            } else {
                assert_ns(&err, Kind::ConnectionLost);
                assert_eq!(why(&err), Some(Eof));
                assert_eq!(err.take_request::<Msg>().as_ref(), Some(req));
            }
        }
        assert_eq!(server.stats().bodies(), ["q0", "q1", "q2"]);
        finish(ch, task, &[server.stats()], &[]).await;
    })
    .await;
}

/// Scenario 1: The same on a reconnecting channel: the 3 written fail *may have executed*;
/// the 2 queued are written once, on the next connection, and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_fin_with_three_in_flight_and_two_queued_reconnecting() {
    whole(async {
        let server = TestServer::start_with(|i| match i {
            0 => Behaviour::silent().close_after(3),
            _ => Behaviour::echo(),
        })
        .await;
        let b = builder(server.addr()).config(Config::default().max_in_flight(3));
        let (ch, task) = spawn(Md::Order, b);

        let reqs: Vec<Msg> = (0..5).map(|i| Msg::with_id(i, format!("q{i}"))).collect();
        let outcomes = timeout(STEP, join_all(reqs.iter().map(|r| ch.request(r.clone())))).await;
        for (i, (outcome, req)) in outcomes.into_iter().zip(&reqs).enumerate() {
            if i < 3 {
                assert_mx(
                    &outcome.expect_err("written on the lost connection"),
                    &[Eof],
                );
            } else {
                assert_eq!(&outcome.expect("replayed"), req);
            }
        }
        let texts = |c| -> Vec<String> {
            server
                .stats()
                .received_on(c)
                .iter()
                .map(|m| m.text().to_string())
                .collect()
        };
        assert_eq!(texts(0), ["q0", "q1", "q2"]);
        assert_eq!(texts(1), ["q3", "q4"]);
        finish(ch, task, &[server.stats()], &[]).await;
    })
    .await;
}

/// Scenario 2: A reply reset after 7 of its bytes, a reply cut (FIN) after 20, a request
/// cut after 10: each call fails *may have executed*, the partial frame is never delivered,
/// and the next connection decodes from a fresh start (the next calls get exactly their own
/// replies).
async fn mid_frame_case(md: Md) {
    let server = TestServer::start(Behaviour::echo()).await;
    let proxy = Proxy::start(server.addr(), 2).await;
    let (ch, task) = spawn(md, builder(proxy.addr()));
    let body = |c: char| c.to_string().repeat(12);

    let a = timeout(STEP, ch.request(msg(body('a')))).await.unwrap();
    assert_eq!(a.text(), body('a'));

    proxy.set(Dir::Down, Fault::Reset(7));
    let err = timeout(STEP, ch.request(msg(body('b'))))
        .await
        .expect_err("reset mid-frame");
    assert_mx(&err, &[Read, Eof]);
    proxy.heal();
    let c = timeout(STEP, ch.request(msg(body('c')))).await.unwrap();
    assert_eq!(c.text(), body('c'));

    proxy.set(Dir::Down, Fault::Cut(20));
    let err = timeout(STEP, ch.request(msg(body('d'))))
        .await
        .expect_err("cut mid-frame");
    assert_mx(&err, &[Read, Eof]);
    proxy.heal();

    proxy.set(Dir::Up, Fault::Cut(10));
    let err = timeout(STEP, ch.request(msg(body('e'))))
        .await
        .expect_err("request cut mid-frame");
    assert_mx(&err, &[Read, Eof]);
    proxy.heal();
    let f = timeout(STEP, ch.request(msg(body('f')))).await.unwrap();
    assert_eq!(f.text(), body('f'));

    // Only whole frames were ever read: the replies to a, c and f. (The counter is
    // bumped after the reply is handed over: wait for it.)
    eventually(STEP, "3 frames received", || ch.counters().received == 3).await;
    tokio::time::sleep(ms(50)).await;
    assert_eq!(ch.counters().received, 3);
    let want: Vec<String> = "abcdf".chars().map(body).collect();
    assert_eq!(
        server.stats().bodies(),
        want,
        "the cut request never decoded"
    );
    finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_reset_and_cut_mid_frame_order() {
    whole(mid_frame_case(Md::Order)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_reset_and_cut_mid_frame_session() {
    whole(mid_frame_case(Md::Session)).await;
}

/// Scenario 3: An idle connection closed (FIN), then reset (RST), by the other side: each
/// death is seen at once (one move to `Idle`), nothing reconnects while idle
/// (`Reconnect::Once`), and the next call reconnects once and succeeds.
///
/// One thread: the state recorder is woken by each change and runs before anything the
/// change leads to, so it sees every state. On two threads it could wait in a preempted
/// worker while the reply, the kill and the move to `Idle` happened on the other one: the
/// state watch keeps only the latest value, and the recorder missed a `Ready`.
#[tokio::test(flavor = "current_thread")]
async fn s03_idle_death_is_detected_and_the_next_call_reconnects() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let proxy = Proxy::start(server.addr(), 3).await;
        let (ch, task) = spawn(Md::Order, builder(proxy.addr()));
        let states = record_states(&ch);
        let idle = || *ch.state().borrow() == State::Idle;

        assert_eq!(
            timeout(STEP, ch.request(msg("one"))).await.unwrap().text(),
            "one"
        );
        // The counter is bumped after the reply is handed over: a kill racing it is
        // `s03_reply_read_with_the_connection_end_still_counts`.
        eventually(STEP, "counted", || ch.counters().received == 1).await;
        for (round, kill) in [
            (1, &Proxy::kill_all as &dyn Fn(&Proxy)),
            (2, &Proxy::reset_all),
        ] {
            kill(&proxy);
            eventually(STEP, "the death is seen", idle).await;
            tokio::time::sleep(ms(200)).await;
            assert_eq!(proxy.stats().accepted(), round, "no reconnect while idle");
            assert!(idle());
            let reply = timeout(STEP, ch.request(msg("again"))).await.unwrap();
            assert_eq!(reply.text(), "again");
            eventually(STEP, "counted", || {
                ch.counters().received == round as u64 + 1
            })
            .await;
            assert_eq!(proxy.stats().accepted(), round + 1);
            assert_eq!(ch.counters().reconnects, round as u64);
        }
        finish(ch, task, &[server.stats()], &[proxy.stats()]).await;

        let states: Vec<State> = joined(states)
            .await
            .into_iter()
            .filter(|s| *s != State::Connecting)
            .collect();
        use State::{Closed, Idle, Ready};
        assert_eq!(states, [Idle, Ready, Idle, Ready, Idle, Ready, Closed]);
    })
    .await;
}

/// Scenario 3: A reply read in the same poll as the connection's end (the server answers
/// and closes at once) still counts: `counters().received` includes it, and since the
/// connection did answer, the channel (`Reconnect::Persistent`) reconnects at once rather than
/// backing off as from a host that dies without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_reply_read_with_the_connection_end_still_counts() {
    whole(async {
        let server = TestServer::start(Behaviour::echo().close_after(1)).await;
        let bld = builder(server.addr())
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(
                Duration::from_secs(2),
                Duration::from_secs(4),
            ));
        let (ch, task) = spawn(Md::Order, bld);
        let states = record_states(&ch);
        for round in 1..=3u64 {
            let body = format!("call {round}");
            assert_eq!(
                timeout(STEP, ch.request(msg(&*body))).await.unwrap().text(),
                body
            );
            eventually(STEP, "the reply is counted", || {
                ch.counters().received == round
            })
            .await;
            // Answered, then lost: reconnected at once, not after a 2 s backoff.
            eventually(ms(1000), "reconnected at once", || {
                server.stats().accepted() == round as usize + 1
            })
            .await;
        }
        finish(ch, task, &[server.stats()], &[]).await;
        let states = joined(states).await;
        assert!(!states.contains(&State::BackingOff), "{states:?}");
    })
    .await;
}

/// Scenario 4: The address goes down (listener closed, connections killed) with 4 calls in
/// flight and 3 queued, then comes back: only what was written fails *may have executed*;
/// the queued calls fail *not sent* (`Kind::ConnectFailed`, the pass failed) and never reach the
/// server; calls while down fail fast; after the restart calls succeed within a few backoff
/// steps, on one new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_restart_at_the_same_address() {
    whole(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let proxy = Proxy::start(server.addr(), 4).await;
        let b = builder(proxy.addr())
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(ms(20), ms(100)))
            .config(Config::default().max_in_flight(4));
        let (ch, task) = spawn(Md::Order, b);

        let calls: Vec<_> = (0..7)
            .map(|i| spawn_request(&ch, format!("r{i}")))
            .collect();
        eventually(STEP, "4 calls at the server", || {
            server.stats().frames() == 4
        })
        .await;
        tokio::time::sleep(ms(50)).await;
        assert_eq!(server.stats().frames(), 4, "the in-flight limit holds");
        let written: HashSet<String> = server.stats().bodies().into_iter().collect();

        proxy.refuse().await;
        proxy.kill_all();
        for (i, call) in calls.into_iter().enumerate() {
            let err = joined(call).await.expect_err("the address went down");
            if written.contains(&format!("r{i}")) {
                assert_mx(&err, &[Eof, Read]);
            } else {
                assert_ns(&err, Kind::ConnectFailed);
            }
        }
        // While down, calls fail fast.
        let t = Instant::now();
        let err = timeout(STEP, ch.request(msg("while down")))
            .await
            .expect_err("down");
        assert_ns(&err, Kind::ConnectFailed);
        assert!(t.elapsed() < ms(1000), "failed fast: {:?}", t.elapsed());

        gate.open();
        let before = proxy.stats().accepted();
        proxy.resume().await.expect("listen again");
        let t = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries < 500, "no success after the restart");
            match timeout(STEP, ch.request(msg("after"))).await {
                Ok(reply) => {
                    assert_eq!(reply.text(), "after");
                    break;
                }
                Err(err) => assert_ns(&err, Kind::ConnectFailed),
            }
            tokio::time::sleep(ms(5)).await;
        }
        assert!(t.elapsed() < ms(2000), "recovered in {:?}", t.elapsed());
        for i in 0..10 {
            let reply = timeout(STEP, ch.request(msg(format!("later {i}"))))
                .await
                .unwrap();
            assert_eq!(reply.text(), format!("later {i}"));
        }
        assert_eq!(proxy.stats().accepted(), before + 1, "one new connection");
        // Nothing executed twice, nothing queued ever executed.
        let bodies = server.stats().bodies();
        let unique: HashSet<&String> = bodies.iter().collect();
        assert_eq!(unique.len(), bodies.len(), "{bodies:?}");
        for b in &bodies {
            assert!(
                written.contains(b) || b == "after" || b.starts_with("later"),
                "{b}"
            );
        }
        finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
    })
    .await;
}
