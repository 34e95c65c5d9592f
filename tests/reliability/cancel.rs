//! Callers that give up (scenarios 11, 12, 13, 14, 27, 30): dropped callers never shift
//! replies, a call dropped before its write is never written, a timed-out call's late
//! reply is discarded, the in-flight limit's slots are freed by replies and deaths only,
//! and a small soak with cancels and ignored requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socketchannel::{Config, ConnectionErrorKind, Order, Reconnect};
use tower::load::Load;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::common::{STEP, assert_mx, builder, finish, joined, ms, spawn, spawn_fixed, whole};
use crate::support::channel::{Mode as Md, msg, spawn_request};
use crate::support::codec::{Msg, TestProto};
use crate::support::proxy::{Dir, Fault, Proxy, Rng};
use crate::support::server::{Behaviour, Gate, TestServer};
use crate::support::{eventually, timeout};

use ConnectionErrorKind::{Eof, Read, Stalled};

/// 11 (order) and 14 (session). 16 callers, 40 calls each, through a proxy that delays
/// and splits at random (seeded); about a third of the calls are dropped after a random
/// wait (before or after they are written). Every call that completes gets its own
/// reply; nothing is left waiting; every call was either written or skipped, and the
/// server read exactly the written ones.
async fn random_cancel_case(md: Md, seed: u64) {
    println!("seed {seed:#x}");
    let server = TestServer::start(Behaviour::echo()).await;
    let proxy = Proxy::start(server.addr(), seed).await;
    proxy.set(Dir::Up, Fault::Chunks(7));
    proxy.set(Dir::Down, Fault::Jitter(ms(0), ms(3)));
    let (ch, task) = spawn(md, builder(proxy.addr()));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let callers = (0..16u64).map(|t| {
        let ch = ch.clone();
        let cancelled = cancelled.clone();
        tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ t);
            for i in 0..40u64 {
                let req = Msg::with_id(0, format!("n{t}:{i}:{}", rng.next_u64()));
                if rng.chance(0.33) {
                    let wait = rng.duration(ms(0), ms(3));
                    match tokio::time::timeout(wait, ch.request(req.clone())).await {
                        Err(_) => {
                            cancelled.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(reply) => assert_eq!(reply.expect("reply").body, req.body),
                    }
                } else {
                    let reply = timeout(STEP, ch.request(req.clone())).await;
                    assert_eq!(reply.expect("reply").body, req.body, "misrouted reply");
                }
            }
        })
    });
    for caller in callers.collect::<Vec<_>>() {
        joined(caller).await;
    }
    println!("{} calls dropped", cancelled.load(Ordering::SeqCst));
    eventually(STEP, "every late reply read", || {
        ch.counters().in_flight == 0
    })
    .await;
    let c = ch.counters();
    assert_eq!(c.sent + c.skipped, 16 * 40, "{c:?}");
    eventually(STEP, "the server read every written call", || {
        server.stats().frames() as u64 == c.sent
    })
    .await;
    assert_eq!(c.unknown, 0);
    assert_eq!(c.reconnects, 0);
    finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_dropped_callers_never_shift_fifo_replies() {
    whole(random_cancel_case(Md::Order, 0x5eed_0011)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_dropped_callers_never_shift_session_replies() {
    whole(random_cancel_case(Md::Session, 0x5eed_0014)).await;
}

/// Scenario 12: Calls dropped while queued behind the in-flight limit are never written:
/// the server never sees them, they are counted as skipped, and the next call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_call_dropped_before_write_is_never_written() {
    whole(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let config = Config::default().max_in_flight(1);
        let (ch, task) = spawn_fixed(server.addr(), Order::new(TestProto), config).await;
        let first = spawn_request(&ch, "A");
        eventually(STEP, "A at the server", || server.stats().frames() == 1).await;
        let queued: Vec<_> = (0..5)
            .map(|i| spawn_request(&ch, format!("B{i}")))
            .collect();
        eventually(STEP, "five calls queued", || ch.load() == 6).await;
        for q in &queued {
            q.abort();
        }
        for q in queued {
            assert!(timeout(STEP, q).await.unwrap_err().is_cancelled());
        }
        gate.open();
        assert_eq!(joined(first).await.unwrap().text(), "A");
        assert_eq!(
            timeout(STEP, ch.request(msg("Z"))).await.unwrap().text(),
            "Z"
        );
        assert_eq!(server.stats().bodies(), ["A", "Z"]);
        let c = ch.counters();
        assert_eq!((c.sent, c.skipped), (2, 5), "{c:?}");
        finish(ch, task, &[server.stats()], &[]).await;
    })
    .await;
}

/// Scenario 13: A `tower` timeout gives up on a call: its late reply is discarded and the
/// next caller gets its own reply, in both modes.
async fn late_reply_case(md: Md) {
    let gate = Gate::new();
    let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
    let (ch, task) = spawn(md, builder(server.addr()));
    let mut svc = ServiceBuilder::new().timeout(ms(100)).service(ch.clone());
    let err = timeout(STEP, svc.ready().await.expect("ready").call(msg("A")))
        .await
        .expect_err("timed out");
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    drop(svc);
    let b = spawn_request(&ch, "B");
    eventually(STEP, "B at the server", || server.stats().frames() == 2).await;
    gate.open();
    assert_eq!(joined(b).await.unwrap().text(), "B");
    let c = ch.counters();
    assert_eq!((c.received, c.unknown, c.reconnects), (2, 0, 0), "{c:?}");
    finish(ch, task, &[server.stats()], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_timed_out_call_late_reply_is_discarded_order() {
    whole(late_reply_case(Md::Order)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_timed_out_call_late_reply_is_discarded_session() {
    whole(late_reply_case(Md::Session)).await;
}

/// Scenario 27: `max_in_flight(2)`, `queue(1)`: with two calls in flight and one queued,
/// `poll_ready` waits; a timeout on an in-flight call frees nothing; its (late) reply frees
/// a slot and the queued call is written; a connection's death frees the rest and the
/// queued call is replayed on the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s27_in_flight_limit_slots_are_freed_by_replies_and_death_only() {
    whole(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let bld = builder(server.addr()).config(Config::default().max_in_flight(2).queue(1));
        let (ch, task) = spawn(Md::Order, bld);
        let mut svc = ServiceBuilder::new().timeout(ms(150)).service(ch.clone());
        let a = {
            let fut = svc.ready().await.expect("ready").call(msg("A"));
            tokio::spawn(fut)
        };
        // A is written first, so the gate's first pass is A's reply.
        eventually(STEP, "A at the server", || server.stats().frames() == 1).await;
        let b = spawn_request(&ch, "B");
        eventually(STEP, "A and B at the server", || {
            server.stats().frames() == 2
        })
        .await;
        let c = spawn_request(&ch, "C");
        eventually(STEP, "C queued", || ch.load() == 3).await;
        let mut probe = ch.clone();
        let mut ready = tokio_test::task::spawn(async move { probe.ready().await.map(|_| ()) });
        assert!(ready.poll().is_pending(), "full: poll_ready waits");

        // A times out: nothing is freed.
        let err = joined(a).await.expect_err("timed out");
        assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
        tokio::time::sleep(ms(100)).await;
        assert_eq!(server.stats().frames(), 2, "a timeout frees no slot");
        assert!(ready.poll().is_pending());

        // A's late reply frees its slot: C goes out.
        gate.release(1);
        eventually(STEP, "C written", || server.stats().frames() == 3).await;
        timeout(STEP, &mut ready).await.expect("room again");
        drop(ready);

        // The connection dies with B and C in flight and D queued behind them.
        let d = spawn_request(&ch, "D");
        eventually(STEP, "D queued", || ch.load() == 3).await;
        server.kill_connections();
        assert_mx(&joined(b).await.expect_err("killed"), &[Eof, Read]);
        assert_mx(&joined(c).await.expect_err("killed"), &[Eof, Read]);
        gate.open();
        assert_eq!(joined(d).await.unwrap().text(), "D");
        drop(svc);
        finish(ch, task, &[server.stats()], &[]).await;
    })
    .await;
}

/// 30 (small; the long one is `tests/soak.rs`). 4,000 calls from 32 callers through a
/// jittering proxy in session mode; 30% are dropped by a timeout, and 1% are requests
/// the server never answers (then the stall timeout ends the connection and the calls
/// on it fail *may have executed*). Every completed call has its own reply; at the end
/// nothing is in flight and every call was written or skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s30_small_soak_with_cancels_and_ignored_requests() {
    whole(async {
        let seed = 0x5eed_0030;
        let server = TestServer::start(Behaviour::echo()).await;
        let proxy = Proxy::start(server.addr(), seed).await;
        proxy.set(Dir::Down, Fault::Jitter(ms(0), ms(2)));
        let bld = builder(proxy.addr())
            .reconnect(Reconnect::Persistent)
            .config(Config::default().stall_timeout(Some(ms(200))));
        let (ch, task) = spawn(Md::Session, bld);
        let tally = Arc::new(Mutex::new(HashMap::<&'static str, usize>::new()));
        let callers = (0..32u64).map(|t| {
            let ch = ch.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut rng = Rng::new(seed ^ t);
                for i in 0..125 {
                    let ignored = rng.chance(0.01);
                    let body = if ignored {
                        format!("noreply {t}:{i}")
                    } else {
                        format!("{t}:{i}:{}", rng.next_u64())
                    };
                    let limit = if rng.chance(0.3) {
                        rng.duration(ms(0), ms(3))
                    } else {
                        STEP
                    };
                    let what = match tokio::time::timeout(limit, ch.request(msg(&*body))).await {
                        Err(_) => {
                            assert!(limit < STEP, "a call without a timeout hung: {body}");
                            "dropped"
                        }
                        Ok(Ok(reply)) => {
                            assert_eq!(reply.text(), body, "misrouted");
                            "ok"
                        }
                        Ok(Err(err)) if err.is_not_sent() => "not sent",
                        Ok(Err(err)) => {
                            assert_mx(&err, &[Stalled, Eof, Read]);
                            "may have executed"
                        }
                    };
                    *tally.lock().unwrap().entry(what).or_insert(0) += 1;
                }
            })
        });
        for caller in callers.collect::<Vec<_>>() {
            timeout(Duration::from_secs(30), caller).await.unwrap();
        }
        println!("{:?}", tally.lock().unwrap());
        eventually(STEP, "nothing in flight", || ch.counters().in_flight == 0).await;
        let c = ch.counters();
        {
            let tally = tally.lock().unwrap();
            let not_sent = tally.get("not sent").copied().unwrap_or(0) as u64;
            assert_eq!(c.sent + c.skipped + not_sent, 4000, "{c:?} {tally:?}");
        }
        finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
    })
    .await;
}
