//! Frames on the wire (scenarios 18-21): malformed and oversized frames, frames split at
//! every byte with would-block, parts never interleaved, big frames through a tiny pipe.

use futures::future::join_all;
use socketchannel::{Channel, Config, ConnectionErrorKind, Order, Session, TcpConnector};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::common::{STEP, assert_mx, builder, finish, joined, ms, spawn, spawn_with, whole};
use crate::one_byte::{OneByte, assert_parts_contiguous, echo_peer, mixed_calls};
use crate::support::channel::{Mode as Md, msg};
use crate::support::codec::{Msg, MsgCodec, TestProto};
use crate::support::proxy::{Fault, Proxy};
use crate::support::script::{group_echo_peer, numbered_body};
use crate::support::server::{Behaviour, TestServer};
use crate::support::timeout;

use ConnectionErrorKind::Read;

/// Scenario 18: Garbage (a length prefix of 4 GiB) fails the call at once as a read error
/// (*may have executed*), without waiting for or buffering the announced bytes; a reply
/// longer than the codec's limit is refused the same way. The next connection works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18_malformed_and_oversized_frames_fail_the_connection_promptly() {
    whole(async {
        let server = TestServer::start_with(|i| match i {
            0 => Behaviour::garbage(),
            _ => Behaviour::echo(),
        })
        .await;
        let (ch, task) = spawn(Md::Order, builder(server.addr()));
        let t = Instant::now();
        let err = timeout(STEP, ch.request(msg("x")))
            .await
            .expect_err("garbage");
        assert!(t.elapsed() < ms(1000), "{:?}", t.elapsed());
        assert_mx(&err, &[Read]);
        assert_eq!(
            timeout(STEP, ch.request(msg("y"))).await.unwrap().text(),
            "y"
        );
        finish(ch, task, &[server.stats()], &[]).await;

        // A codec limit of 64 bytes: a 113-byte reply is refused.
        let server = TestServer::start(Behaviour::echo()).await;
        let tcp = TcpConnector::new(MsgCodec { max_len: 64 });
        let (ch, task) = spawn_with(builder(server.addr()), tcp, Order::new(TestProto));
        let err = timeout(STEP, ch.request(msg("z".repeat(100))))
            .await
            .expect_err("too long");
        assert_mx(&err, &[Read]);
        assert_eq!(
            timeout(STEP, ch.request(msg("short")))
                .await
                .unwrap()
                .text(),
            "short"
        );
        finish(ch, task, &[server.stats()], &[]).await;
    })
    .await;
}

/// 19, 20. Over an in-memory transport that moves one byte per read or write and would
/// block before each: every frame is decoded the same, every request is flushed, the
/// parts of a multi-part request are never interleaved with another request's frames.
async fn one_byte_case(md: Md) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer = echo_peer(server);
    let transport = Framed::new(OneByte::new(client), MsgCodec::default());
    let (ch, conn) = match md {
        Md::Order => Channel::pair(transport, Order::new(TestProto), Config::default()),
        Md::Session => Channel::pair(transport, Session::new(TestProto), Config::default()),
    };
    let task = tokio::spawn(conn);
    mixed_calls(&ch, 48).await;
    finish(ch, task, &[], &[]).await;
    let log = joined(peer).await;
    assert_eq!(log.len(), 16 * 3 + 32);
    assert_parts_contiguous(&log, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_s20_one_byte_reads_and_writes_with_would_block_order() {
    whole(one_byte_case(Md::Order)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_s20_one_byte_reads_and_writes_with_would_block_session() {
    whole(one_byte_case(Md::Session)).await;
}

/// 19, 20. The same over TCP: the proxy forwards one byte per write, both ways.
async fn sliced_tcp_case(md: Md) {
    let server = TestServer::start(Behaviour::echo()).await;
    let proxy = Proxy::start(server.addr(), 19).await;
    proxy.set_both(Fault::Slice);
    let (ch, task) = spawn(md, builder(proxy.addr()));
    mixed_calls(&ch, 36).await;
    assert_parts_contiguous(&server.stats().received(), 3);
    assert_eq!(server.stats().frames(), 12 * 3 + 24);
    assert_eq!(ch.counters().reconnects, 0);
    finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_s20_one_byte_tcp_segments_order() {
    whole(sliced_tcp_case(Md::Order)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_s20_one_byte_tcp_segments_session() {
    whole(sliced_tcp_case(Md::Session)).await;
}

/// 21 (session mode; order mode: `order::writes`). 32 requests of 64 KiB through a 256-byte
/// pipe, against a peer that reads 8 requests, then writes their replies (in reverse
/// order) before it reads anything more: the channel keeps reading while its writes are
/// blocked, so this completes. Current thread: no other worker can hide a deadlock.
#[tokio::test(flavor = "current_thread")]
async fn s21_big_frames_through_a_tiny_pipe_do_not_deadlock_session() {
    whole(async {
        const N: usize = 32;
        const SIZE: usize = 64 * 1024;
        const GROUP: usize = 8;
        let (client, server) = tokio::io::duplex(256);
        let peer = group_echo_peer(server, N, GROUP, true);
        let (ch, conn) = Channel::pair(
            Framed::new(client, MsgCodec::default()),
            Session::new(TestProto),
            Config::default(),
        );
        let task = tokio::spawn(conn);
        let calls = (0..N).map(|i| {
            let ch = ch.clone();
            async move {
                let body = numbered_body(i as u64, SIZE);
                let reply = ch.request(Msg::new(body.clone())).await.expect("big call");
                assert!(reply.body == body, "big reply {i} mismatched");
            }
        });
        join_all(calls).await;
        assert_eq!(joined(peer).await, N);
        finish(ch, task, &[], &[]).await;
    })
    .await;
}
