//! The write path: requests queued together are written in batches, and big frames
//! through a tiny pipe do not deadlock a peer that writes before it reads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use futures::{Sink, Stream};
use socketchannel::{Channel, Order};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tower::load::Load;

use crate::common::{Chan, SHORT};
use crate::support::codec::{Msg, MsgCodec, TestProto};
use crate::support::script::{group_echo_peer, numbered_body};
use crate::support::server::{Behaviour, TestServer};
use crate::support::{bounded, eventually};

/// What a [`Counting`] transport and a [`CountingIo`] stream saw, and a switch that
/// makes the transport look busy.
#[derive(Debug, Default)]
struct IoCounts {
    /// `Sink::start_send` calls.
    sends: AtomicUsize,
    /// `Sink::poll_flush` calls that completed.
    flushes: AtomicUsize,
    /// `AsyncWrite::poll_write` calls that wrote something (write syscalls).
    writes: AtomicUsize,
    /// While set, `Sink::poll_ready` is `Pending`: the socket is busy.
    busy: AtomicBool,
    busy_waker: AtomicWaker,
}

impl IoCounts {
    fn get(&self) -> (usize, usize, usize) {
        (
            self.sends.load(Ordering::SeqCst),
            self.flushes.load(Ordering::SeqCst),
            self.writes.load(Ordering::SeqCst),
        )
    }

    fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::SeqCst);
        if !busy {
            self.busy_waker.wake();
        }
    }
}

/// A transport that counts `start_send` and completed `poll_flush` calls, and can be
/// made busy ([`IoCounts::set_busy`]).
struct Counting<T> {
    inner: T,
    counts: Arc<IoCounts>,
}

impl<T: Sink<Msg> + Unpin> Sink<Msg> for Counting<T> {
    type Error = T::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), T::Error>> {
        self.counts.busy_waker.register(cx.waker());
        if self.counts.busy.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Msg) -> Result<(), T::Error> {
        self.counts.sends.fetch_add(1, Ordering::SeqCst);
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), T::Error>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        if res.is_ready() {
            self.counts.flushes.fetch_add(1, Ordering::SeqCst);
        }
        res
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), T::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl<T: Stream + Unpin> Stream for Counting<T> {
    type Item = T::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// A byte stream that counts the writes that wrote something.
struct CountingIo<S> {
    inner: S,
    counts: Arc<IoCounts>,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountingIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountingIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res
            && *n > 0
        {
            self.counts.writes.fetch_add(1, Ordering::SeqCst);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type CountingTransport = Counting<Framed<CountingIo<TcpStream>, MsgCodec>>;

async fn counting_transport(server: &TestServer) -> (CountingTransport, Arc<IoCounts>) {
    let counts = Arc::new(IoCounts::default());
    let stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let io = CountingIo {
        inner: stream,
        counts: counts.clone(),
    };
    let transport = Counting {
        inner: Framed::new(io, MsgCodec::default()),
        counts: counts.clone(),
    };
    (transport, counts)
}

/// `n` callers, each making one request and checking its reply.
fn spawn_callers(ch: &Chan, n: u64) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let ch = ch.clone();
            tokio::spawn(async move {
                let req = Msg::with_id(i, format!("batch {i}"));
                assert_eq!(ch.request(req.clone()).await.expect("request"), req);
            })
        })
        .collect()
}

/// 256 callers queue at once: the connection task writes them all and flushes once or
/// a few times, not 256 times. On a current-thread runtime the schedule is fixed: every
/// caller queues before the connection task runs again.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_requests_are_written_in_batches() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let (transport, counts) = counting_transport(&server).await;
        let ch: Chan = Channel::new(transport, Order::new(TestProto));

        for t in spawn_callers(&ch, 256) {
            t.await.expect("caller");
        }

        let (sends, flushes, writes) = counts.get();
        assert_eq!(sends, 256);
        assert!(flushes <= 4, "256 queued requests took {flushes} flushes");
        assert!(
            writes <= 8,
            "256 queued requests took {writes} socket writes"
        );
    })
    .await;
}

/// Multi-thread: 256 callers queue while the socket is busy (its `poll_ready` is
/// `Pending`); once it is free they go out together, in a flush or a few, not one
/// flush each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_queued_behind_a_busy_socket_share_flushes() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let (transport, counts) = counting_transport(&server).await;
        let ch: Chan = Channel::new(transport, Order::new(TestProto));

        // Warm up: one round trip, so the connection task is known to be running.
        let hello = Msg::new("hello");
        assert_eq!(ch.request(hello.clone()).await.expect("hello"), hello);
        let (_, before, _) = counts.get();

        counts.set_busy(true);
        let callers = spawn_callers(&ch, 256);
        eventually(SHORT, "256 calls queued", || Load::load(&ch) == 256).await;
        assert_eq!(
            counts.get().0,
            1,
            "nothing written while the socket is busy"
        );
        counts.set_busy(false);
        for t in callers {
            t.await.expect("caller");
        }

        let (sends, after, _) = counts.get();
        assert_eq!(sends, 257);
        let flushes = after - before;
        assert!(
            flushes <= 4,
            "256 requests queued behind a busy socket took {flushes} flushes"
        );
    })
    .await;
}

/// 32 requests of 64 KiB through a 256-byte pipe, against a peer that reads a group of
/// requests and then writes all their 64 KiB replies before it reads anything else. A
/// client that stopped reading while its writes are blocked would deadlock; this one
/// must finish. Current thread: a deadlock cannot hide behind another worker.
#[tokio::test(flavor = "current_thread")]
async fn large_frames_through_a_tiny_pipe_do_not_deadlock() {
    bounded(async {
        const N: usize = 32;
        const SIZE: usize = 64 * 1024;
        const GROUP: usize = 8;
        let (client, server) = tokio::io::duplex(256);
        let peer = group_echo_peer(server, N, GROUP, false);

        let ch: Chan = Channel::new(
            Framed::new(client, MsgCodec::default()),
            Order::new(TestProto),
        );
        let calls = (0..N).map(|i| {
            let ch = ch.clone();
            async move {
                let req = Msg::with_id(i as u64, numbered_body(i as u64, SIZE));
                let resp = ch.request(req.clone()).await.expect("big request");
                assert!(resp == req, "big reply {i} mismatched");
            }
        });
        futures::future::join_all(calls).await;
        assert_eq!(peer.await.expect("peer"), N);
    })
    .await;
}
