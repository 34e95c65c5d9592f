//! How a channel ends (scenarios 28, 29, 32): its connection task dies, its last handle
//! goes, a host change drains the old connection, a close during a drain.

use std::io;
use std::time::Duration;

use futures::future::join_all;
use socketchannel::{Channel, Config, Kind, Order, State};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder, Framed};
use tower::load::Load;
use tower::{Service, ServiceExt};

use crate::common::{
    STEP, assert_ns, builder, finish, joined, ms, settle_sockets, spawn, spawn_fixed, whole,
};
use crate::support::channel::{Mode as Md, msg, spawn_request};
use crate::support::codec::{Msg, MsgCodec, TestProto};
use crate::support::proxy::Proxy;
use crate::support::server::{Behaviour, Gate, TestServer};
use crate::support::{eventually, timeout};

/// A codec that panics when it encodes a frame whose body is `panic`.
#[derive(Debug, Clone, Default)]
struct PanicCodec(MsgCodec);

impl Encoder<Msg> for PanicCodec {
    type Error = io::Error;
    fn encode(&mut self, msg: Msg, dst: &mut bytes::BytesMut) -> io::Result<()> {
        assert!(msg.text() != "panic", "the codec panics (on purpose)");
        self.0.encode(msg, dst)
    }
}

impl Decoder for PanicCodec {
    type Item = Msg;
    type Error = io::Error;
    fn decode(&mut self, src: &mut bytes::BytesMut) -> io::Result<Option<Msg>> {
        self.0.decode(src)
    }
}

/// Scenario 28: The connection task is aborted, or panics (in the user's codec), with calls
/// in flight and queued: every call resolves at once with `Kind::Closed`, later calls fail
/// fast, and the socket is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s28_aborted_or_panicking_connection_task_fails_every_call() {
    whole(async {
        for panics in [false, true] {
            let gate = Gate::new();
            let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
            let stream = TcpStream::connect(server.addr()).await.unwrap();
            let transport = Framed::new(stream, PanicCodec::default());
            let config = Config::default().max_in_flight(3);
            let (ch, conn) = Channel::pair(transport, Order::new(TestProto), config);
            let task = tokio::spawn(conn);
            let first = spawn_request(&ch, "c0");
            eventually(STEP, "c0 first", || server.stats().frames() == 1).await;
            let in_flight: Vec<_> = (1..3)
                .map(|i| spawn_request(&ch, format!("c{i}")))
                .collect();
            eventually(STEP, "3 in flight", || server.stats().frames() == 3).await;
            // Queued: "panic" first, then two more.
            let boom = spawn_request(&ch, "panic");
            eventually(STEP, "queued", || ch.load() == 4).await;
            let queued: Vec<_> = (3..5)
                .map(|i| spawn_request(&ch, format!("c{i}")))
                .collect();
            eventually(STEP, "queued", || ch.load() == 6).await;
            if panics {
                // c0's reply frees a slot: "panic" is encoded, and the codec panics.
                gate.release(1);
                // The connection future catches the panic and ends, closing the
                // channel (a panic escaping it would do as well here).
                if let Err(e) = timeout(STEP, task).await {
                    assert!(e.is_panic(), "{e}");
                }
                assert_eq!(joined(first).await.unwrap().text(), "c0");
            } else {
                task.abort();
                let out = timeout(STEP, task).await;
                assert!(out.expect_err("aborted").is_cancelled());
                assert_eq!(joined(first).await.expect_err("gone").kind(), Kind::Closed);
            }
            for call in in_flight.into_iter().chain([boom]).chain(queued) {
                let err = joined(call).await.expect_err("the task is gone");
                assert_eq!(err.kind(), Kind::Closed, "{err:?}");
            }
            let t = Instant::now();
            let err = timeout(STEP, ch.request(msg("later")))
                .await
                .expect_err("gone");
            assert_ns(&err, Kind::Closed);
            assert!(t.elapsed() < ms(500));
            // The gate would hold the server's side of the connection open.
            gate.open();
            eventually(STEP, "the socket is closed", || server.stats().open() == 0).await;
            drop(ch);
        }
    })
    .await;
}

/// Scenario 28: The calls that were written when the connection task died may have been
/// executed: they must say so (`may_have_executed`), or a retry policy that trusts
/// `is_not_sent` would execute them twice (Contract 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s28_written_calls_lost_with_the_task_may_have_executed() {
    whole(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let config = Config::default().max_in_flight(3);
        let (ch, task) = spawn_fixed(server.addr(), Order::new(TestProto), config).await;
        let calls: Vec<_> = (0..3)
            .map(|i| spawn_request(&ch, format!("c{i}")))
            .collect();
        eventually(STEP, "3 at the server", || server.stats().frames() == 3).await;
        task.abort();
        for call in calls {
            let err = joined(call).await.expect_err("the task is gone");
            assert!(
                err.may_have_executed(),
                "a written call lost with its connection task reports not-sent: {err:?}"
            );
        }
        gate.open();
        eventually(STEP, "the socket is closed", || server.stats().open() == 0).await;
        drop(ch);
    })
    .await;
}

/// Scenario 29: The last handle is dropped with 10 calls in flight (made through
/// `Service::call`, whose futures own what they need): they all complete, then the
/// connection is closed, the task ends, and no socket is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s29_last_handle_dropped_with_calls_in_flight() {
    whole(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let proxy = Proxy::start(server.addr(), 29).await;
        let (mut ch, task) = spawn(Md::Session, builder(proxy.addr()));
        let mut futs = Vec::new();
        for i in 0..10 {
            futs.push(ch.ready().await.expect("ready").call(msg(format!("f{i}"))));
        }
        eventually(STEP, "all at the server", || server.stats().frames() == 10).await;
        let mut state = ch.state();
        drop(ch);
        tokio::time::sleep(ms(100)).await;
        assert_eq!(server.stats().eofs(), 0, "closed with calls in flight");
        gate.open();
        let replies = timeout(STEP, join_all(futs)).await;
        for (i, reply) in replies.into_iter().enumerate() {
            assert_eq!(reply.expect("completes").text(), format!("f{i}"));
        }
        timeout(STEP, task).await.expect("the task ends");
        assert_eq!(*state.borrow_and_update(), State::Closed);
        settle_sockets(&[server.stats()], &[proxy.stats()]).await;
        assert_eq!(server.stats().eofs(), 1);
    })
    .await;
}

/// Scenario 32: `change_host` with calls in flight on the old host: new calls go to the new
/// host at once while the old ones finish on the old connection, which then closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s32_change_host_drains_the_old_connection() {
    whole(async {
        let gate = Gate::new();
        let old = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let new = TestServer::start(Behaviour::echo()).await;
        let bld = builder(old.addr()).drain_timeout(Duration::from_secs(3));
        let (ch, task) = spawn(Md::Order, bld);
        let draining: Vec<_> = (0..5)
            .map(|i| spawn_request(&ch, format!("old{i}")))
            .collect();
        eventually(STEP, "5 at the old host", || old.stats().frames() == 5).await;
        ch.change_host(new.addr().to_string()).unwrap();
        for i in 0..5 {
            let body = format!("new{i}");
            assert_eq!(
                timeout(STEP, ch.request(msg(&*body))).await.unwrap().text(),
                body
            );
        }
        assert_eq!(old.stats().frames(), 5, "nothing new on the old connection");
        gate.open();
        for (i, call) in draining.into_iter().enumerate() {
            assert_eq!(joined(call).await.unwrap().text(), format!("old{i}"));
        }
        eventually(STEP, "the drained connection is closed", || {
            old.stats().open() == 0
        })
        .await;
        finish(ch, task, &[old.stats(), new.stats()], &[]).await;
    })
    .await;
}

/// Scenario 32: Calls the old host never answers fail at the drain deadline (*may have
/// executed*), and the channel's bookkeeping forgets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s32_drain_deadline_fails_what_the_old_host_never_answers() {
    whole(async {
        let old = TestServer::start(Behaviour::silent()).await;
        let new = TestServer::start(Behaviour::echo()).await;
        let bld = builder(old.addr()).drain_timeout(ms(300));
        let (ch, task) = spawn(Md::Order, bld);
        let stuck: Vec<_> = (0..3)
            .map(|i| spawn_request(&ch, format!("s{i}")))
            .collect();
        eventually(STEP, "3 at the old host", || old.stats().frames() == 3).await;
        let t = Instant::now();
        ch.change_host(new.addr().to_string()).unwrap();
        for call in stuck {
            let err = joined(call).await.expect_err("never answered");
            assert_eq!(err.kind(), Kind::ConnectionLost, "{err:?}");
            assert!(err.may_have_executed());
        }
        assert!(t.elapsed() >= ms(290), "{:?}", t.elapsed());
        finish(ch, task, &[old.stats(), new.stats()], &[]).await;
    })
    .await;
}

/// Scenario 32: `close()` during a drain ends everything at once, without a hang: the
/// draining calls fail `Kind::Closed` (*may have executed*).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s32_close_during_a_drain_does_not_hang() {
    whole(async {
        let old = TestServer::start(Behaviour::silent()).await;
        let new = TestServer::start(Behaviour::echo()).await;
        let (ch, task) = spawn(Md::Order, builder(old.addr()));
        let stuck: Vec<_> = (0..3)
            .map(|i| spawn_request(&ch, format!("c{i}")))
            .collect();
        eventually(STEP, "3 at the old host", || old.stats().frames() == 3).await;
        ch.change_host(new.addr().to_string()).unwrap();
        let fresh = spawn_request(&ch, "fresh");
        ch.close();
        for call in stuck {
            let err = joined(call).await.expect_err("closed");
            assert_eq!(err.kind(), Kind::Closed, "{err:?}");
            assert!(err.may_have_executed());
        }
        match joined(fresh).await {
            Ok(reply) => assert_eq!(reply.text(), "fresh"),
            Err(err) => assert_eq!(err.kind(), Kind::Closed, "{err:?}"),
        }
        finish(ch, task, &[old.stats(), new.stats()], &[]).await;
    })
    .await;
}
