//! The test server's own behaviours, which the other suites rely on.

use std::io;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::common::SHORT;
use crate::support::codec::{Kind as MsgKind, Msg, MsgCodec};
use crate::support::connect;
use crate::support::server::{Behaviour, TestServer};
use crate::support::server::{GARBAGE, push_frame};
use crate::support::{bounded, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_rules_greeting_and_extra_frames() {
    bounded(async {
        let server = TestServer::start(
            Behaviour::echo()
                .greeting(Msg::new("hi"))
                .after_each(Msg::new("extra")),
        )
        .await;
        let mut c = connect(server.addr()).await;
        let greeting = c.next().await.expect("frame").expect("decode");
        assert_eq!(greeting, Msg::new("hi"));

        c.send(Msg::with_id(7, "plain")).await.expect("send");
        c.send(Msg::with_id(8, "err nope")).await.expect("send");
        c.send(Msg::with_id(9, "noreply")).await.expect("send");
        c.send(Msg::with_id(10, "parts:3:x")).await.expect("send");
        let mut got = Vec::new();
        for _ in 0..(2 + 2 + 1 + 4) {
            got.push(c.next().await.expect("frame").expect("decode"));
        }
        let extra = Msg::new("extra");
        assert_eq!(
            got,
            [
                Msg::with_id(7, "plain"),
                extra.clone(),
                Msg::with_id(8, "err nope").kind(MsgKind::Error),
                extra.clone(),
                extra.clone(),
                Msg::with_id(10, "parts:3:x#0").kind(MsgKind::More),
                Msg::with_id(10, "parts:3:x#1").kind(MsgKind::More),
                Msg::with_id(10, "parts:3:x#2"),
                extra,
            ]
        );
        assert_eq!(
            server.stats().bodies(),
            ["plain", "err nope", "noreply", "parts:3:x"]
        );
        assert_eq!(push_frame().kind, MsgKind::Push);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_batches_and_delay() {
    bounded(async {
        let server =
            TestServer::start(Behaviour::reverse_batches().delay(Duration::from_millis(20))).await;
        let mut c = connect(server.addr()).await;
        // One write: the server reads the three frames as one batch.
        for i in 1..=3u64 {
            c.feed(Msg::with_id(i, format!("r{i}")))
                .await
                .expect("feed");
        }
        let started = tokio::time::Instant::now();
        c.flush().await.expect("flush");
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(c.next().await.expect("frame").expect("decode").id);
        }
        assert_eq!(ids, [3, 2, 1]);
        assert!(started.elapsed() >= Duration::from_millis(60), "delayed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_kill_reset_stop_and_restart() {
    bounded(async {
        let server = TestServer::start_with(|n| match n {
            0 => Behaviour::garbage(),
            _ => Behaviour::echo(),
        })
        .await;

        // Connection 0 answers with garbage.
        let mut raw = TcpStream::connect(server.addr()).await.expect("connect");
        let mut framed = Framed::new(&mut raw, MsgCodec::default());
        framed.send(Msg::new("x")).await.expect("send");
        let mut buf = [0u8; 16];
        framed
            .get_mut()
            .read_exact(&mut buf)
            .await
            .expect("garbage");
        assert_eq!(&buf[..], GARBAGE);

        // Connections 1 and 2 echo; kill closes one orderly, reset aborts the other.
        let mut a = connect(server.addr()).await;
        a.send(Msg::new("a")).await.expect("send");
        assert_eq!(a.next().await.expect("a").expect("a").text(), "a");
        server.kill_connections();
        assert!(a.next().await.is_none(), "killed: end of stream");

        let mut b = connect(server.addr()).await;
        b.send(Msg::new("b")).await.expect("send");
        assert_eq!(b.next().await.expect("b").expect("b").text(), "b");
        server.reset_connections();
        let err = b.next().await.expect("an error").expect_err("reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        eventually(SHORT, "all closed", || server.stats().open() <= 1).await;

        // Stop accepting: refused. Restart: same port, counting goes on.
        server.stop_accepting();
        eventually(SHORT, "listener closed", || {
            std::net::TcpStream::connect(server.addr()).is_err()
        })
        .await;
        server.restart().await.expect("restart");
        let mut c = connect(server.addr()).await;
        c.send(Msg::new("c")).await.expect("send");
        assert_eq!(c.next().await.expect("c").expect("c").text(), "c");
        assert_eq!(server.stats().accepted(), 4);
        assert_eq!(server.stats().received_on(3), [Msg::new("c")]);
    })
    .await;
}
