//! Session ids and replies that match no call (scenarios 14-17): ids held until the
//! reply, wraparound and exhaustion, an extra FIFO reply, unknown and duplicate ids.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use socketchannel::{Config, Session, TcpConnector};
use tower::load::Load;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::common::{STEP, builder, finish, joined, ms, spawn, spawn_with, whole};
use crate::scripted::Scripted;
use crate::support::channel::{Mode as Md, msg, spawn_request};
use crate::support::codec::{Msg, MsgCodec, TestProto, TestProto16};
use crate::support::server::{Behaviour, Gate, TestServer};
use crate::support::{eventually, timeout};

/// Scenario 14: Session ids 1 and 2 only, both held by calls a timeout gave up on: the next
/// call waits (is not written) until a late reply frees an id, which it then reuses; the
/// late replies reach nobody. (Retiring a connection full of orphans is off here: this is
/// the rule on one connection; `lifecycle::orphans` has the retirement.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_cancelled_calls_keep_their_ids_until_the_reply() {
    whole(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let mode = Session::new(TestProto).ids(1u64..=2);
        let (ch, task) = spawn_with(
            builder(server.addr()).config(Config::default().max_orphans(None).orphan_age(None)),
            TcpConnector::new(MsgCodec::default()),
            mode,
        );
        let mut svc = ServiceBuilder::new().timeout(ms(100)).service(ch.clone());
        for body in ["A", "B"] {
            let err = timeout(STEP, svc.ready().await.expect("ready").call(msg(body)))
                .await
                .expect_err("timed out");
            assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
        }
        drop(svc);
        let c = spawn_request(&ch, "C");
        tokio::time::sleep(ms(200)).await;
        assert_eq!(server.stats().frames(), 2, "C waits for a free id");
        gate.release(2);
        eventually(STEP, "C written once an id is free", || {
            server.stats().frames() == 3
        })
        .await;
        gate.open();
        assert_eq!(joined(c).await.unwrap().text(), "C");
        let ids: Vec<u64> = server.stats().received().iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2, 1]);
        assert_eq!(
            ch.counters().unknown,
            0,
            "late replies matched their reserved ids"
        );
        finish(ch, task, &[server.stats()], &[]).await;
    })
    .await;
}

/// Scenario 15: Ids near the top of a 16-bit space (65530 to 65535), answered out of order:
/// they wrap round and round without a reply ever reaching the wrong caller. With every id
/// held, the next call is not written and, the intake full, `poll_ready` waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_ids_wrap_near_the_maximum_and_exhaustion_waits() {
    whole(async {
        let server = TestServer::start(Behaviour::reverse_batches()).await;
        let mode = Session::new(TestProto16).ids(65_530u16..=u16::MAX);
        let tcp = TcpConnector::new(MsgCodec::default());
        let (ch, task) = spawn_with(builder(server.addr()), tcp, mode.clone());
        let callers = (0..16).map(|t| {
            let ch = ch.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let body = format!("{t}:{i}");
                    let reply = timeout(STEP, ch.request(msg(&*body))).await.unwrap();
                    assert_eq!(reply.text(), body, "misrouted");
                }
            })
        });
        for caller in callers.collect::<Vec<_>>() {
            joined(caller).await;
        }
        let mut uses: HashMap<u64, usize> = HashMap::new();
        for m in server.stats().received() {
            *uses.entry(m.id).or_insert(0) += 1;
        }
        assert!(
            uses.keys().all(|id| (65_530..=65_535).contains(id)),
            "{uses:?}"
        );
        assert_eq!(uses.len(), 6, "every id used: {uses:?}");
        assert!(uses.values().all(|n| *n >= 2), "wrapped: {uses:?}");
        finish(ch, task, &[server.stats()], &[]).await;

        // Exhaustion.
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let tcp = TcpConnector::new(MsgCodec::default());
        let bld = builder(server.addr()).config(Config::default().queue(1));
        let (ch, task) = spawn_with(bld, tcp, mode);
        let calls: Vec<_> = (0..7)
            .map(|i| spawn_request(&ch, format!("x{i}")))
            .collect();
        eventually(STEP, "six at the server", || server.stats().frames() == 6).await;
        eventually(STEP, "the seventh queued", || ch.load() == 7).await;
        let mut probe = ch.clone();
        let mut ready = tokio_test::task::spawn(async move { probe.ready().await.map(|_| ()) });
        tokio::time::sleep(ms(100)).await;
        assert!(ready.poll().is_pending(), "poll_ready waits for room");
        assert_eq!(server.stats().frames(), 6, "no id, no write");
        gate.open();
        for call in calls {
            joined(call).await.expect("answered");
        }
        timeout(STEP, ready).await.expect("ready once ids are free");
        let ids: HashSet<u64> = server.stats().received().iter().map(|m| m.id).collect();
        assert!(ids.iter().all(|id| (65_530..=65_535).contains(id)));
        finish(ch, task, &[server.stats()], &[]).await;
    })
    .await;
}

/// Scenario 16: Order mode: a frame after each reply, with nothing waiting and not a push,
/// is a desync: the connection is dropped (not trusted), and the next call gets its own
/// reply on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_extra_fifo_reply_is_a_desync_that_drops_the_connection() {
    whole(async {
        let server = TestServer::start(Behaviour::echo().after_each(msg("extra"))).await;
        let (ch, task) = spawn(Md::Order, builder(server.addr()));
        for round in 1..=3 {
            let body = format!("call {round}");
            assert_eq!(
                timeout(STEP, ch.request(msg(&*body))).await.unwrap().text(),
                body
            );
            eventually(STEP, "the desynced connection is dropped", || {
                server.stats().eofs() == round
            })
            .await;
        }
        assert_eq!(server.stats().accepted(), 3);
        assert_eq!(ch.counters().reconnects, 2);
        finish(ch, task, &[server.stats()], &[]).await;
    })
    .await;
}

/// Scenario 16: Session mode: a frame for an id nobody waits for is dropped and counted;
/// the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_unknown_session_id_is_dropped_and_counted() {
    whole(async {
        let stray = Msg::with_id(987_654_321, "stray");
        let server = TestServer::start(Behaviour::echo().after_each(stray)).await;
        let (ch, task) = spawn(Md::Session, builder(server.addr()));
        for i in 0..10 {
            let body = format!("call {i}");
            assert_eq!(
                timeout(STEP, ch.request(msg(&*body))).await.unwrap().text(),
                body
            );
        }
        eventually(STEP, "every stray counted", || ch.counters().unknown == 10).await;
        assert_eq!(server.stats().accepted(), 1, "the connection stays");
        finish(ch, task, &[server.stats()], &[]).await;
    })
    .await;
}

/// Scenario 17: Session mode: every reply comes twice. The first goes to its caller, the
/// second finds its id free and is dropped and counted; concurrent callers never get a
/// duplicate meant for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s17_duplicate_replies_are_dropped_and_counted() {
    whole(async {
        let server = Scripted::start(
            |m| vec![(Duration::ZERO, m.clone()), (Duration::ZERO, m.clone())],
            false,
        )
        .await;
        let (ch, task) = spawn(Md::Session, builder(server.addr));
        let callers = (0..8).map(|t| {
            let ch = ch.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let body = format!("{t}:{i}");
                    let reply = timeout(STEP, ch.request(msg(&*body))).await.unwrap();
                    assert_eq!(reply.text(), body);
                }
            })
        });
        for caller in callers.collect::<Vec<_>>() {
            joined(caller).await;
        }
        eventually(STEP, "every duplicate counted", || {
            ch.counters().unknown == 200
        })
        .await;
        assert_eq!(server.accepted(), 1, "the connection stays");
        finish(ch, task, &[&server], &[]).await;
    })
    .await;
}
