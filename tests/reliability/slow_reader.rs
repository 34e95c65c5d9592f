//! A large request to a server that reads it slowly (Contract 6: "a large transfer on a
//! slow link is never a stall"), and to one that stopped reading (a stall).
//!
//! Over loopback the kernel takes megabytes of a request into the socket's send queue at
//! once, and wakes the writer again only when a good part of the queue has drained: for
//! hundreds of milliseconds the engine sees no byte move, though the server is reading.
//! The stall timer reads the send queue (`TIOCOUTQ`) before it gives up: a queue that
//! shrank is the peer taking the request in.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use socketchannel::{
    Builder, Config, ConnectionErrorKind, Endpoint, Metered, MeteredFramed, Order, Session,
    socket_send_queue,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};

use crate::common::{STEP, assert_mx, builder, finish, ms, spawn, spawn_with, whole};
use crate::support::channel::{Ch, Mode as Md, msg};
use crate::support::codec::{Msg, MsgCodec, TestProto};
use crate::support::timeout;

/// The request: 8 MiB, over a second and a half at the slow reader's pace.
const BIG: usize = 8 * 1024 * 1024;

/// A server on loopback that reads `step` bytes every 10 ms (none at all with `0`) and
/// answers each request with its length.
async fn reader(step: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let (mut codec, mut buf, mut out) = (MsgCodec::default(), BytesMut::new(), BytesMut::new());
        let mut chunk = vec![0; step.max(1)];
        loop {
            tokio::time::sleep(ms(10)).await;
            if step == 0 {
                continue;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while let Ok(Some(req)) = codec.decode(&mut buf) {
                let reply = Msg::with_id(req.id, req.body.len().to_string());
                codec.encode(reply, &mut out).expect("encode");
                if stream.write_all(&out.split()).await.is_err() {
                    return;
                }
            }
        }
    });
    (addr, server)
}

fn stalls_at(limit: Duration) -> Config {
    Config::default().stall_timeout(Some(limit))
}

/// 8 MiB to a server reading 64 KiB every 10 ms, with a 300 ms stall timeout: the
/// request is taken in (over about 1.3 s) and answered, on one connection. Before the
/// timer read the send queue, it failed `Stalled` at about 300 ms with a megabyte read.
async fn slow_reader_case(md: Md) {
    slow_reader_answered(md, |builder| spawn(md, builder)).await;
}

/// The slow reader's case over the channel `connect` makes from a builder (300 ms
/// stall timeout): the request is answered, on one connection.
async fn slow_reader_answered(
    md: Md,
    connect: impl FnOnce(Builder<Msg, Msg>) -> (Ch, JoinHandle<()>),
) {
    let (addr, server) = reader(64 * 1024).await;
    let (ch, task) = connect(builder(addr).config(stalls_at(ms(300))));
    let t = Instant::now();
    let reply = timeout(STEP, ch.request(msg("x".repeat(BIG))))
        .await
        .unwrap_or_else(|e| panic!("{md:?}: failed after {:?}: {e:?}", t.elapsed()));
    assert_eq!(reply.text(), BIG.to_string(), "{md:?}");
    assert_eq!(ch.counters().reconnects, 0, "{md:?}");
    finish(ch, task, &[], &[]).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_to_a_slow_reader_never_stalls_order() {
    whole(slow_reader_case(Md::Order)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_to_a_slow_reader_never_stalls_session() {
    whole(slow_reader_case(Md::Session)).await;
}

/// 8 MiB to a server that reads nothing: the send queue fills and stays full, so the
/// call fails `Stalled`, *may have executed*, within a bound of the timeout.
async fn no_reader_case(md: Md) {
    let (addr, server) = reader(0).await;
    let (ch, task) = spawn(md, builder(addr).config(stalls_at(ms(300))));
    let t = Instant::now();
    let err = timeout(STEP, ch.request(msg("x".repeat(BIG))))
        .await
        .expect_err("a server that reads nothing stalls");
    let took = t.elapsed();
    assert_mx(&err, &[ConnectionErrorKind::Stalled]);
    assert!(
        took >= ms(290) && took < ms(2000),
        "{md:?}: stalled after {took:?}"
    );
    server.abort();
    finish(ch, task, &[], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_to_a_server_that_reads_nothing_stalls_order() {
    whole(no_reader_case(Md::Order)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_to_a_server_that_reads_nothing_stalls_session() {
    whole(no_reader_case(Md::Session)).await;
}

/// A connector of the user's own: plain TCP, its socket metered `exact` and read by
/// [`socket_send_queue`] through [`Metered::send_queue`], as the crate's connectors do.
async fn own_connect(endpoint: Endpoint) -> std::io::Result<MeteredFramed<TcpStream, MsgCodec>> {
    let stream = TcpStream::connect((endpoint.host(), endpoint.port())).await?;
    stream.set_nodelay(true)?;
    Ok(tokio_util::codec::Framed::new(
        Metered::exact(stream).send_queue(socket_send_queue),
        Metered::new(MsgCodec::default()),
    ))
}

/// The slow reader again, through a connector of the user's own that opts in to the
/// send-queue reading: taken in and answered. Without `send_queue` it fails `Stalled`
/// at about 300 ms, as the crate's connectors did before they read the queue.
async fn own_connector_case(md: Md) {
    slow_reader_answered(md, |builder| {
        let connector = tower::service_fn(own_connect);
        match md {
            Md::Order => spawn_with(builder, connector, Order::new(TestProto)),
            Md::Session => spawn_with(builder, connector, Session::new(TestProto)),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_of_ones_own_that_reads_the_send_queue_never_stalls_order() {
    whole(own_connector_case(Md::Order)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_of_ones_own_that_reads_the_send_queue_never_stalls_session() {
    whole(own_connector_case(Md::Session)).await;
}
