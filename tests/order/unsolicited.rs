//! Unsolicited frames: a frame with nothing waiting is a desync, a greeting read queued
//! before the task runs is the read's reply, push frames never take a reply.

use std::pin::pin;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Channel, Config, ConnectionErrorKind, Kind, Order, State};
use tokio_util::codec::Framed;
use tower::{Service, ServiceExt};

use crate::common::{Chan, SHORT, channel, why};
use crate::support;
use crate::support::channel::into_channel_error;
use crate::support::codec::{Kind as MsgKind, Msg, MsgCodec, TestProto};
use crate::support::server::{Behaviour, TestServer};
use crate::support::{bounded, eventually, timeout};

/// A frame that is not a push, with nothing waiting (a greeting nobody reads), is a
/// desync: the connection closes and later calls fail at once as closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_frame_with_nothing_waiting_closes_the_channel() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo().greeting(Msg::new("hello"))).await;
        let ch = channel(&server, Config::default()).await;

        let mut state = ch.state();
        timeout(SHORT, state.wait_for(|s| *s == State::Closed))
            .await
            .expect("state");
        assert!(ch.is_closed());

        let started = tokio::time::Instant::now();
        let mut err = timeout(SHORT, ch.request(Msg::new("late")))
            .await
            .expect_err("closed");
        assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
        assert!(err.is_closed(), "{err:?}");
        assert!(err.is_not_sent(), "{err:?}");
        assert_eq!(err.take_request::<Msg>(), Some(Msg::new("late")));
        assert!(server.stats().bodies().is_empty(), "nothing was written");
    })
    .await;
}

/// The way `Channel::read`'s docs give to read a greeting over a transport of one's own:
/// `pair`, poll the read once (it takes the first FIFO slot), then spawn the task. The
/// greeting is already in the socket when the task first runs, on a multi-threaded
/// runtime, and is still the read's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_read_queued_before_the_task_runs() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo().greeting(Msg::new("hello"))).await;
        let transport = support::connect(server.addr()).await;
        // Let the greeting arrive first: the read must not depend on winning a race.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (ch, connection) = Channel::pair(transport, Order::new(TestProto), Config::default());
        let mut read = pin!(ch.read());
        assert!(
            futures::poll!(read.as_mut()).is_pending(),
            "queued, not answered"
        );
        tokio::spawn(connection);

        let greeting = timeout(SHORT, read).await.expect("greeting");
        assert_eq!(greeting, Msg::new("hello"));
        let reply = timeout(SHORT, ch.request(Msg::new("after"))).await;
        assert_eq!(reply.expect("echo").body, "after");
    })
    .await;
}

/// The cause is named: a call still queued when the unsolicited frame arrives fails as
/// *not sent* with [`ConnectionErrorKind::Desync`]. A scripted peer makes the timing
/// exact: it answers the one call in flight and adds an extra frame in the same write.
#[tokio::test(flavor = "current_thread")]
async fn unsolicited_frame_is_a_desync() {
    bounded(async {
        let (client, server) = tokio::io::duplex(4096);
        let peer = tokio::spawn(async move {
            let mut framed = Framed::new(server, MsgCodec::default());
            let req = framed.next().await.expect("request").expect("decode");
            framed.feed(req).await.expect("reply");
            framed.feed(Msg::new("extra")).await.expect("extra");
            framed.flush().await.expect("flush");
            // Whatever else comes is read and dropped, until the client goes away.
            for _ in 0..100 {
                if framed.next().await.is_none() {
                    break;
                }
            }
        });

        let mut ch: Chan = Channel::with_config(
            Framed::new(client, MsgCodec::default()),
            Order::new(TestProto),
            Config::default().max_in_flight(1),
        );
        let a = ch.ready().await.expect("ready").call(Msg::new("a"));
        let b = ch.ready().await.expect("ready").call(Msg::new("b"));

        assert_eq!(a.await.expect("a").text(), "a");
        let mut err = into_channel_error(b.await.expect_err("the desync ends the connection"));
        assert_eq!(err.kind(), Kind::ConnectionLost, "{err:?}");
        assert_eq!(why(&err), ConnectionErrorKind::Desync, "{err:?}");
        assert!(err.is_not_sent(), "b was queued, never written: {err:?}");
        assert_eq!(err.take_request::<Msg>(), Some(Msg::new("b")));

        assert!(ch.is_closed());
        let err = timeout(SHORT, ch.request(Msg::new("c")))
            .await
            .expect_err("closed");
        assert!(err.is_closed(), "{err:?}");
        timeout(SHORT, peer).await.expect("peer");
    })
    .await;
}

/// Push frames never take a waiting call's reply, before or after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_frames_never_take_a_reply() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo().push_before().push_after()).await;
        let ch = channel(&server, Config::default()).await;
        let mut pushes = ch.pushes().expect("push receiver");

        let calls = (0..20u64).map(|i| {
            let ch = ch.clone();
            async move {
                let req = Msg::with_id(i, format!("p{i}"));
                assert_eq!(ch.request(req.clone()).await.expect("request"), req);
            }
        });
        futures::future::join_all(calls).await;
        for _ in 0..40 {
            let push = timeout(SHORT, pushes.recv()).await.expect("a push");
            assert_eq!(push.kind, MsgKind::Push);
        }
        assert!(!ch.is_closed());
        eventually(SHORT, "40 pushes counted", || ch.counters().pushes == 40).await;
    })
    .await;
}
