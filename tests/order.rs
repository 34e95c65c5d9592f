//! Order mode (pipelining, FIFO): matching, batching, failure semantics, cancellation,
//! backpressure (issue #2).
//!
//! Every test is bounded in time ([`support::bounded`]); real sockets only ever run on
//! real time.

mod support;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use futures::task::AtomicWaker;
use futures::{Sink, SinkExt, Stream, StreamExt};
use proptest::prelude::*;
use socketchannel::{Channel, Config, ConnectionErrorKind, Error, Kind, Order, State};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_test::{assert_pending, assert_ready_ok};
use tokio_util::codec::{Decoder, Encoder, Framed};
use tower::load::Load;
use tower::{Service, ServiceExt};

use support::channel::into_channel_error;
use support::codec::{Kind as MsgKind, Msg, MsgCodec, ServerSaid, TestProto};
use support::script::{group_echo_peer, numbered_body};
use support::server::{Behaviour, Gate, TestServer, replies_to};
use support::{bounded, eventually, timeout};

type Chan = Channel<Msg, Msg>;

/// A channel in order mode over a fresh connection to `server`.
async fn channel(server: &TestServer, config: Config) -> Chan {
    Channel::with_config(
        support::connect(server.addr()).await,
        Order::new(TestProto),
        config,
    )
}

/// The kind of the lost connection behind `err`.
fn why(err: &Error) -> ConnectionErrorKind {
    err.connection_error()
        .unwrap_or_else(|| panic!("no connection error behind {err:?}"))
        .kind()
}

const SHORT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// FIFO matching
// ---------------------------------------------------------------------------------------

/// 256 concurrent callers, 16 requests each, over one connection: every reply is its
/// own request's echo (id and body).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifo_256_concurrent_callers_each_get_their_own_reply() {
    bounded(async {
        const CALLERS: u64 = 256;
        const ROUNDS: u64 = 16;
        let server = TestServer::start(Behaviour::echo()).await;
        let ch = channel(&server, Config::default()).await;

        let mut tasks = Vec::new();
        for c in 0..CALLERS {
            let ch = ch.clone();
            tasks.push(tokio::spawn(async move {
                for r in 0..ROUNDS {
                    let req = Msg::with_id(c * 1000 + r, format!("caller {c} round {r}"));
                    let resp = ch.request(req.clone()).await.expect("request");
                    assert_eq!(resp, req, "caller {c} got another caller's reply");
                }
            }));
        }
        for t in tasks {
            t.await.expect("caller task");
        }

        let total = (CALLERS * ROUNDS) as usize;
        assert_eq!(server.stats().frames(), total);
        let bodies: HashSet<String> = server.stats().bodies().into_iter().collect();
        assert_eq!(bodies.len(), total, "every request reached the server once");
        // Counters are written by the connection task right after it hands out replies.
        let want = (total as u64, total as u64, 0, 0);
        eventually(SHORT, "counters settle", || {
            let c = ch.counters();
            (c.sent, c.received, c.in_flight, c.skipped) == want
        })
        .await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Write batching
// ---------------------------------------------------------------------------------------

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
        if let Poll::Ready(Ok(n)) = &res {
            if *n > 0 {
                self.counts.writes.fetch_add(1, Ordering::SeqCst);
            }
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

// ---------------------------------------------------------------------------------------
// Connection loss: written calls may have executed, queued calls are not sent
// ---------------------------------------------------------------------------------------

/// Five calls queued in order with `max_in_flight(2)`; the server reads two and then
/// closes (FIN) or resets (RST). The two written calls fail as *may have executed*; the
/// three queued ones as *not sent*, each handing back exactly its own request.
async fn connection_loss_with_calls_in_flight_and_queued(
    behaviour: Behaviour,
    expected: ConnectionErrorKind,
) {
    let server = TestServer::start(behaviour).await;
    let mut ch = channel(&server, Config::default().max_in_flight(2)).await;

    let reqs: Vec<Msg> = (0..5)
        .map(|i| Msg::with_id(i, format!("lost {i}")))
        .collect();
    let mut futs = Vec::new();
    for req in &reqs {
        // In order, and all five before the connection task runs (the runtime has one
        // thread and `ready()` resolves at once): nothing can close in between.
        futs.push(ch.ready().await.expect("ready").call(req.clone()));
    }
    let outcomes = futures::future::join_all(futs).await;

    for (i, (outcome, req)) in outcomes.into_iter().zip(&reqs).enumerate() {
        let mut err = into_channel_error(outcome.expect_err("the connection was lost"));
        assert_eq!(err.kind(), Kind::Connection, "call {i}: {err:?}");
        assert_eq!(why(&err), expected, "call {i}: {err:?}");
        if i < 2 {
            assert!(err.may_have_executed(), "written call {i}: {err:?}");
            assert!(!err.is_not_sent(), "written call {i}: {err:?}");
            assert_eq!(err.take_request::<Msg>(), None, "written call {i}");
        } else {
            assert!(err.is_not_sent(), "queued call {i}: {err:?}");
            assert!(!err.may_have_executed(), "queued call {i}: {err:?}");
            assert_eq!(
                err.take_request::<Msg>().as_ref(),
                Some(req),
                "queued call {i}"
            );
        }
    }
    assert_eq!(server.stats().bodies(), ["lost 0", "lost 1"]);

    // The channel has no reconnect: later calls fail at once.
    assert!(ch.is_closed());
    let err = timeout(SHORT, ch.request(Msg::new("after")))
        .await
        .expect_err("closed");
    assert!(err.is_closed() && err.is_not_sent(), "{err:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn eof_fails_written_as_may_have_executed_and_queued_as_not_sent() {
    bounded(connection_loss_with_calls_in_flight_and_queued(
        Behaviour::silent().close_after(2),
        ConnectionErrorKind::Eof,
    ))
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn reset_fails_written_as_may_have_executed_and_queued_as_not_sent() {
    bounded(connection_loss_with_calls_in_flight_and_queued(
        Behaviour::silent().reset_after(2),
        ConnectionErrorKind::Read,
    ))
    .await;
}

/// Garbage on the wire (a frame length beyond any limit) is a read error: every call in
/// flight fails as *may have executed*, the connection is gone.
#[tokio::test(flavor = "current_thread")]
async fn decode_error_fails_in_flight_calls_as_read_error() {
    bounded(async {
        let server = TestServer::start(Behaviour::garbage()).await;
        let mut ch = channel(&server, Config::default()).await;

        // All three are queued before the connection task runs (current thread), so
        // all three are written in its first batch.
        let mut futs = Vec::new();
        for i in 0..3 {
            futs.push(
                ch.ready()
                    .await
                    .expect("ready")
                    .call(Msg::new(format!("g{i}"))),
            );
        }
        for (i, outcome) in futures::future::join_all(futs)
            .await
            .into_iter()
            .enumerate()
        {
            let err = into_channel_error(outcome.expect_err("garbage kills the connection"));
            assert_eq!(err.kind(), Kind::Connection, "call {i}: {err:?}");
            assert!(err.may_have_executed(), "call {i}: {err:?}");
            assert_eq!(why(&err), ConnectionErrorKind::Read, "call {i}: {err:?}");
        }
        assert!(ch.is_closed());
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Error replies
// ---------------------------------------------------------------------------------------

/// A reply the protocol marks as an error fails its own call only; the calls around it
/// and after it succeed on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_reply_fails_that_call_only() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let ch = channel(&server, Config::default()).await;

        let (a, e, b) = tokio::join!(
            ch.request(Msg::new("a")),
            ch.request(Msg::new("err boom")),
            ch.request(Msg::new("b")),
        );
        assert_eq!(a.expect("a").text(), "a");
        assert_eq!(b.expect("b").text(), "b");

        let err = e.expect_err("an error reply");
        assert!(err.is_server(), "{err:?}");
        assert_eq!(err.kind(), Kind::Server);
        assert!(err.may_have_executed(), "the server did see it: {err:?}");
        let said = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<ServerSaid>())
            .unwrap_or_else(|| panic!("source is not ServerSaid: {err:?}"));
        assert_eq!(said.0, "err boom");

        // Still the same healthy connection.
        assert!(!ch.is_closed());
        for i in 0..10 {
            let body = format!("after {i}");
            assert_eq!(
                ch.request(Msg::new(body.clone()))
                    .await
                    .expect("after")
                    .text(),
                body
            );
        }
        assert_eq!(server.stats().accepted(), 1);
        eventually(SHORT, "nothing in flight", || ch.counters().in_flight == 0).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------

/// A call dropped while queued behind the in-flight limit is never written: the server
/// never sees it, and the next call gets its own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_dropped_before_write_never_reaches_the_server() {
    bounded(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let ch = channel(&server, Config::default().max_in_flight(1)).await;

        // `a` is written and held by the server: the one slot is taken.
        let first = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.request(Msg::new("a")).await })
        };
        eventually(SHORT, "server read a", || server.stats().frames() == 1).await;

        // `b` is queued (one poll: into the intake), then dropped.
        let mut b = tokio_test::task::spawn(ch.request(Msg::new("b")));
        assert_pending!(b.poll());
        drop(b);

        gate.open();
        assert_eq!(first.await.expect("task").expect("a").text(), "a");
        assert_eq!(
            timeout(SHORT, ch.request(Msg::new("c")))
                .await
                .expect("c")
                .text(),
            "c"
        );

        assert_eq!(
            server.stats().bodies(),
            ["a", "c"],
            "b must never be written"
        );
        let counters = ch.counters();
        assert_eq!(counters.skipped, 1);
        assert_eq!(counters.sent, 2);
    })
    .await;
}

/// One step of a random caller script.
#[derive(Debug, Clone)]
enum Step {
    /// A request; `Some(k)`: its caller polls it `k` times (yielding in between) and then
    /// drops it unless it completed. `Some(0)` never queues it at all.
    Call(Option<u8>),
    /// A fire-and-forget request (the server never answers `noreply...`).
    Send,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::option::of(0u8..8).prop_map(Step::Call),
            1 => Just(Step::Send),
        ],
        1..48,
    )
}

/// What became of one step.
#[derive(Debug, PartialEq)]
enum Outcome {
    Answered,
    Dropped,
    Sent,
}

/// Runs `steps` as concurrent callers over an in-memory pipe of `pipe` bytes against an
/// echoing peer that flushes every `flush_every` replies (or when it has nothing more
/// to read), and checks that no caller ever gets a reply that is not its own.
async fn run_script(steps: Vec<Step>, pipe: usize, flush_every: usize, in_flight: usize) {
    let (client, server) = tokio::io::duplex(pipe);
    let seen = Arc::new(Mutex::new(Vec::<Msg>::new()));
    let peer = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut framed = Framed::new(server, MsgCodec::default());
            let mut unflushed = 0;
            for _ in 0..100_000 {
                let Some(Ok(req)) = framed.next().await else {
                    break;
                };
                seen.lock().unwrap().push(req.clone());
                for reply in replies_to(&req) {
                    framed.feed(reply).await.expect("peer write");
                }
                unflushed += 1;
                if unflushed >= flush_every || framed.read_buffer().is_empty() {
                    framed.flush().await.expect("peer flush");
                    unflushed = 0;
                }
            }
        })
    };

    let config = Config::default().max_in_flight(in_flight);
    let ch: Chan = Channel::with_config(
        Framed::new(client, MsgCodec::default()),
        Order::new(TestProto),
        config,
    );

    let mut queued = 0u64;
    let mut tasks = Vec::new();
    for (i, step) in steps.iter().cloned().enumerate() {
        let ch = ch.clone();
        let id = i as u64 + 1;
        if !matches!(step, Step::Call(Some(0))) {
            queued += 1;
        }
        tasks.push(tokio::spawn(async move {
            match step {
                Step::Send => {
                    ch.send(Msg::with_id(id, format!("noreply {i}")))
                        .await
                        .expect("fire-and-forget");
                    Outcome::Sent
                }
                Step::Call(polls) => {
                    let req = Msg::with_id(id, format!("call {i}"));
                    let mut fut = pin!(ch.request(req.clone()));
                    let Some(polls) = polls else {
                        let resp = fut.await.expect("a call nobody dropped succeeds");
                        assert_eq!(resp, req, "call {i} got another call's reply");
                        return Outcome::Answered;
                    };
                    for _ in 0..polls {
                        if let Poll::Ready(resp) = futures::poll!(fut.as_mut()) {
                            let resp = resp.expect("call succeeds");
                            assert_eq!(resp, req, "call {i} got another call's reply");
                            return Outcome::Answered;
                        }
                        tokio::task::yield_now().await;
                    }
                    Outcome::Dropped
                }
            }
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("caller panicked"));
    }

    // Whatever was dropped where, the next call gets its own reply...
    let last = Msg::with_id(u64::MAX, "last");
    assert_eq!(ch.request(last.clone()).await.expect("last"), last);
    queued += 1;

    // ...every queued call was either written or skipped, and the server saw exactly
    // the written ones, each once.
    eventually(SHORT, "nothing in flight", || ch.counters().in_flight == 0).await;
    let counters = ch.counters();
    assert_eq!(counters.sent + counters.skipped, queued, "{counters:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len() as u64, counters.sent, "{counters:?}");
    let distinct: HashSet<_> = seen.iter().map(|m| m.body.clone()).collect();
    assert_eq!(distinct.len(), seen.len(), "a request was written twice");
    for (step, outcome) in steps.iter().zip(&outcomes) {
        match step {
            Step::Call(None) => assert_eq!(outcome, &Outcome::Answered),
            Step::Send => assert_eq!(outcome, &Outcome::Sent),
            Step::Call(Some(_)) => {}
        }
    }
    let sends = steps.iter().filter(|s| matches!(s, Step::Send)).count();
    assert_eq!(
        seen.iter()
            .filter(|m| m.text().starts_with("noreply"))
            .count(),
        sends,
        "fire-and-forget requests are never skipped"
    );

    drop(ch);
    peer.await.expect("peer");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random callers, fire-and-forget sends and cancellations at random points never
    /// hand any caller a reply that is not its own.
    #[test]
    fn random_sends_and_cancellations_never_misroute_a_reply(
        steps in steps(),
        pipe in 16usize..1024,
        flush_every in 1usize..6,
        in_flight in 1usize..6,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(bounded(run_script(steps, pipe, flush_every, in_flight)));
    }
}

// ---------------------------------------------------------------------------------------
// No TCP deadlock
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Fire-and-forget
// ---------------------------------------------------------------------------------------

/// `send` resolves once written, takes no reply slot, and the requests around it are
/// still matched right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_is_written_and_waits_for_nothing() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let ch = channel(&server, Config::default()).await;

        timeout(SHORT, ch.send(Msg::new("noreply first")))
            .await
            .expect("send");
        assert_eq!(ch.counters().in_flight, 0, "a send waits for no reply");
        eventually(SHORT, "server saw the send", || {
            server.stats().frames() == 1
        })
        .await;

        // Interleaved with requests, from many callers at once.
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let ch = ch.clone();
                tokio::spawn(async move {
                    if i % 3 == 0 {
                        ch.send(Msg::with_id(i, format!("noreply {i}")))
                            .await
                            .expect("send");
                    } else {
                        let req = Msg::with_id(i, format!("req {i}"));
                        assert_eq!(ch.request(req.clone()).await.expect("request"), req);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("caller");
        }
        let last = Msg::new("last");
        assert_eq!(ch.request(last.clone()).await.expect("last"), last);

        let bodies = server.stats().bodies();
        let sends = bodies.iter().filter(|b| b.starts_with("noreply")).count();
        assert_eq!(sends, 1 + 22, "every send reached the server: {bodies:?}");
        assert_eq!(bodies.len(), 1 + 64 + 1, "{bodies:?}");
        eventually(SHORT, "nothing in flight", || ch.counters().in_flight == 0).await;
        assert_eq!(ch.counters().skipped, 0);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Reply shape depending on the request (Contract 10)
// ---------------------------------------------------------------------------------------

/// A memcached-text-like request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mc {
    Get(String),
    Set(String, String),
}

/// Its reply: the shape depends on the request, not on the bytes alone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum McReply {
    Value(Option<String>),
    Stored,
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Get,
    Set,
}

/// Records the shape of every request it encodes and decodes each reply by the shape of
/// the oldest request not yet answered (Contract 10). It also logs what it encoded.
#[derive(Debug, Clone, Default)]
struct McCodec {
    expect: Arc<Mutex<VecDeque<Shape>>>,
    encoded: Arc<Mutex<Vec<Mc>>>,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The first line of `src` (without its CRLF), if complete, and its length with CRLF.
fn line(src: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let at = src[from..].windows(2).position(|w| w == b"\r\n")?;
    Some((&src[from..from + at], at + 2))
}

impl Encoder<Mc> for McCodec {
    type Error = io::Error;

    fn encode(&mut self, req: Mc, dst: &mut BytesMut) -> io::Result<()> {
        let shape = match &req {
            Mc::Get(key) => {
                dst.put_slice(format!("get {key}\r\n").as_bytes());
                Shape::Get
            }
            Mc::Set(key, value) => {
                dst.put_slice(format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()).as_bytes());
                Shape::Set
            }
        };
        self.expect.lock().unwrap().push_back(shape);
        self.encoded.lock().unwrap().push(req);
        Ok(())
    }
}

impl Decoder for McCodec {
    type Item = McReply;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<McReply>> {
        if src.is_empty() {
            return Ok(None);
        }
        let Some(shape) = self.expect.lock().unwrap().front().copied() else {
            return Err(bad("a reply with no request encoded"));
        };
        let Some((first, first_len)) = line(src, 0) else {
            return Ok(None);
        };
        let (reply, used) = match shape {
            Shape::Set if first == b"STORED" => (McReply::Stored, first_len),
            Shape::Set => return Err(bad("a set reply that is not STORED")),
            Shape::Get if first == b"END" => (McReply::Value(None), first_len),
            Shape::Get => {
                // VALUE <key> <flags> <bytes>\r\n<data>\r\nEND\r\n
                let header = std::str::from_utf8(first).map_err(|_| bad("header"))?;
                let parts: Vec<&str> = header.split(' ').collect();
                let ["VALUE", _key, _flags, len] = parts[..] else {
                    return Err(bad("a get reply that is neither VALUE nor END"));
                };
                let len: usize = len.parse().map_err(|_| bad("length"))?;
                let need = first_len + len + 2 + 5;
                if src.len() < need {
                    return Ok(None);
                }
                if &src[first_len + len..need] != b"\r\nEND\r\n" {
                    return Err(bad("a VALUE not followed by END"));
                }
                let data = String::from_utf8(src[first_len..first_len + len].to_vec())
                    .map_err(|_| bad("data"))?;
                (McReply::Value(Some(data)), need)
            }
        };
        src.advance(used);
        self.expect.lock().unwrap().pop_front();
        Ok(Some(reply))
    }
}

/// A memcached-text-like server over `io`: `get`/`set` on a map. It logs every command
/// it reads, and holds its first reply until `hold` fires.
async fn mc_server(
    io: tokio::io::DuplexStream,
    log: Arc<Mutex<Vec<String>>>,
    hold: oneshot::Receiver<()>,
) {
    let (read, mut write) = tokio::io::split(io);
    let mut read = BufReader::new(read);
    let mut map = HashMap::<String, String>::new();
    let mut hold = Some(hold);
    for _ in 0..10_000 {
        let mut cmd = String::new();
        if read.read_line(&mut cmd).await.expect("mc read") == 0 {
            return;
        }
        let cmd = cmd.trim_end().to_string();
        let words: Vec<&str> = cmd.split(' ').collect();
        let reply = match words[..] {
            ["get", key] => {
                log.lock().unwrap().push(cmd.clone());
                match map.get(key) {
                    Some(v) => format!("VALUE {key} 0 {}\r\n{v}\r\nEND\r\n", v.len()),
                    None => "END\r\n".to_string(),
                }
            }
            ["set", key, _, _, len] => {
                let len: usize = len.parse().expect("set length");
                let mut data = vec![0; len + 2];
                read.read_exact(&mut data).await.expect("set data");
                let value = String::from_utf8(data[..len].to_vec()).expect("utf-8");
                log.lock().unwrap().push(format!("set {key} {value}"));
                map.insert(key.to_string(), value);
                "STORED\r\n".to_string()
            }
            _ => panic!("unknown command {cmd:?}"),
        };
        if let Some(hold) = hold.take() {
            let _ = hold.await;
        }
        write.write_all(reply.as_bytes()).await.expect("mc write");
    }
}

/// `get` and `set` replies have different shapes and the codec parses each by the
/// request it encoded. A request dropped before it is written is never encoded, so the
/// codec's record stays in step with the replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_shape_can_depend_on_the_request_the_codec_encoded() {
    bounded(async {
        let (client, server) = tokio::io::duplex(4096);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (release, hold) = oneshot::channel();
        let peer = tokio::spawn(mc_server(server, log.clone(), hold));

        let codec = McCodec::default();
        let encoded = codec.encoded.clone();
        let ch: Channel<Mc, McReply> = Channel::with_config(
            Framed::new(client, codec),
            Order::new(socketchannel::Plain),
            Config::default().max_in_flight(1),
        );

        // The first call is written and its reply held: the one slot is taken.
        let first = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.request(Mc::Set("a".into(), "1".into())).await })
        };
        eventually(SHORT, "server read the first set", || {
            log.lock().unwrap().len() == 1
        })
        .await;

        // A get queued behind it and dropped: never written, hence never encoded.
        let mut dropped = tokio_test::task::spawn(ch.request(Mc::Get("dropped".into())));
        assert_pending!(dropped.poll());
        drop(dropped);

        release.send(()).expect("release");
        assert_eq!(first.await.expect("task").expect("set a"), McReply::Stored);

        let get = |k: &str| ch.request(Mc::Get(k.into()));
        let set = |k: &str, v: &str| ch.request(Mc::Set(k.into(), v.into()));
        assert_eq!(
            get("a").await.expect("get a"),
            McReply::Value(Some("1".into()))
        );
        assert_eq!(get("nope").await.expect("get nope"), McReply::Value(None));
        assert_eq!(set("b", "two words").await.expect("set b"), McReply::Stored);
        assert_eq!(
            get("b").await.expect("get b"),
            McReply::Value(Some("two words".into()))
        );
        assert_eq!(ch.counters().skipped, 1);

        // A burst of mixed shapes, pipelined.
        let many = (0..40).map(|i| {
            let ch = ch.clone();
            async move {
                if i % 2 == 0 {
                    let r = ch.request(Mc::Set(format!("k{i}"), format!("v{i}"))).await;
                    assert_eq!(r.expect("set"), McReply::Stored);
                } else {
                    let r = ch.request(Mc::Get("a".into())).await;
                    assert_eq!(r.expect("get"), McReply::Value(Some("1".into())));
                }
            }
        });
        futures::future::join_all(many).await;

        let encoded = encoded.lock().unwrap().clone();
        assert!(
            !encoded.contains(&Mc::Get("dropped".into())),
            "the dropped request was encoded: {encoded:?}"
        );
        assert_eq!(encoded.len(), 5 + 40);
        assert!(!log.lock().unwrap().iter().any(|c| c.contains("dropped")));

        drop(ch);
        timeout(SHORT, peer).await.expect("peer");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The last handle goes away
// ---------------------------------------------------------------------------------------

/// Calls made through `Service::call` outlive the handle: with the last handle dropped
/// they still complete, and then the connection closes (the server reads end of stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_handle_dropped_with_calls_in_flight_completes_them_then_closes() {
    bounded(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let mut ch = channel(&server, Config::default()).await;

        let reqs: Vec<Msg> = (0..3)
            .map(|i| Msg::with_id(i, format!("in flight {i}")))
            .collect();
        let mut futs = Vec::new();
        for req in &reqs {
            futs.push(ch.ready().await.expect("ready").call(req.clone()));
        }
        eventually(SHORT, "server read all three", || {
            server.stats().frames() == 3
        })
        .await;
        drop(ch);
        assert_eq!(
            server.stats().eofs(),
            0,
            "closed while calls were in flight"
        );

        gate.open();
        let replies = futures::future::join_all(futs).await;
        for (reply, req) in replies.into_iter().zip(&reqs) {
            assert_eq!(&reply.expect("in-flight call completes"), req);
        }
        eventually(SHORT, "server saw end of stream", || {
            server.stats().eofs() == 1
        })
        .await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Unsolicited frames
// ---------------------------------------------------------------------------------------

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

/// `connect()` cannot reopen a channel over a fixed transport: once its connection has
/// ended it fails as closed, and the channel stays closed (`is_closed`, and calls fail
/// at once as *not sent*).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_does_not_reopen_an_ended_fixed_transport_channel() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let ch = channel(&server, Config::default()).await;
        ch.close();
        let mut state = ch.state();
        timeout(SHORT, state.wait_for(|s| *s == State::Closed))
            .await
            .expect("state");

        let err = timeout(SHORT, ch.connect()).await.expect_err("closed");
        assert!(err.is_closed(), "{err:?}");
        assert!(ch.is_closed(), "still closed after connect()");
        let err = timeout(SHORT, ch.request(Msg::new("late")))
            .await
            .expect_err("closed");
        assert!(err.is_closed() && err.is_not_sent(), "{err:?}");
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
        assert_eq!(err.kind(), Kind::Connection, "{err:?}");
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

// ---------------------------------------------------------------------------------------
// Backpressure
// ---------------------------------------------------------------------------------------

/// With `queue(1).max_in_flight(1)`, one call in flight and one queued, `poll_ready` is
/// `Pending`; it becomes ready once a reply frees the slot and the queued call moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_ready_is_pending_while_queue_and_in_flight_are_full() {
    bounded(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let mut ch = channel(&server, Config::default().queue(1).max_in_flight(1)).await;

        let a = ch.ready().await.expect("ready").call(Msg::new("a"));
        eventually(SHORT, "a written", || server.stats().frames() == 1).await;
        let b = ch.ready().await.expect("ready").call(Msg::new("b"));

        {
            let mut ready = tokio_test::task::spawn(poll_fn(|cx| ch.poll_ready(cx)));
            assert_pending!(ready.poll());
            assert_pending!(ready.poll());

            gate.release(1);
            assert_eq!(a.await.expect("a").text(), "a");
            eventually(SHORT, "poll_ready woken", || ready.is_woken()).await;
            assert_ready_ok!(ready.poll());
        }
        let c = ch.call(Msg::new("c"));

        gate.open();
        assert_eq!(b.await.expect("b").text(), "b");
        assert_eq!(c.await.expect("c").text(), "c");
        assert_eq!(server.stats().bodies(), ["a", "b", "c"]);
    })
    .await;
}

/// Room reserved by `poll_ready` while the connection was up, used by `call` after it
/// ended (the connection task gone): the call must fail at once as *not sent*, not wait
/// forever for a connection task that no longer exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_after_the_connection_ended_on_a_reserved_slot_fails_fast() {
    bounded(async {
        let server = TestServer::start(Behaviour::silent().close_after(1)).await;
        let ch = channel(&server, Config::default()).await;

        reserved_slot_used_after_the_end_fails_fast(&ch, async {
            let err = timeout(SHORT, ch.request(Msg::new("a")))
                .await
                .expect_err("server closes");
            assert!(err.may_have_executed(), "{err:?}");
        })
        .await;
    })
    .await;
}

/// Reserves a slot on a clone of `ch`, runs `end` (which ends the channel), waits
/// until it is closed, then uses the slot: the call fails at once, closed and *not
/// sent*, its request handed back.
async fn reserved_slot_used_after_the_end_fails_fast(ch: &Chan, end: impl Future<Output = ()>) {
    let mut svc = ch.clone();
    poll_fn(|cx| svc.poll_ready(cx))
        .await
        .expect("ready while connected");
    end.await;
    let mut state = ch.state();
    timeout(SHORT, state.wait_for(|s| *s == State::Closed))
        .await
        .expect("state");
    // Let the finished connection task be dropped.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let outcome = timeout(SHORT, svc.call(Msg::new("b"))).await;
    let mut err = into_channel_error(outcome.expect_err("the channel is closed"));
    assert!(err.is_closed(), "{err:?}");
    assert!(err.is_not_sent(), "{err:?}");
    assert_eq!(err.take_request::<Msg>(), Some(Msg::new("b")));
}

/// The same after `close()`: a slot reserved before it, used after it, fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_after_close_on_a_reserved_slot_fails_fast() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let ch = channel(&server, Config::default()).await;

        reserved_slot_used_after_the_end_fails_fast(&ch, async { ch.close() }).await;
        assert!(server.stats().bodies().is_empty());
    })
    .await;
}

/// The same with a reconnecting channel from the builder: a slot reserved before
/// `close()`, used after it, fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_channel_call_after_close_on_a_reserved_slot_fails_fast() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let ch: Chan = Channel::builder()
            .host(&server.addr().to_string())
            .order(MsgCodec::default(), TestProto)
            .expect("builder");
        let hello = Msg::new("hello");
        assert_eq!(
            timeout(SHORT, ch.request(hello.clone()))
                .await
                .expect("hello"),
            hello
        );

        reserved_slot_used_after_the_end_fails_fast(&ch, async { ch.close() }).await;
        assert_eq!(server.stats().bodies(), ["hello"]);
    })
    .await;
}

/// The test server's own behaviours, which the other suites rely on.
mod test_server {
    use super::*;
    use support::connect;
    use support::server::{GARBAGE, push_frame};

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
                TestServer::start(Behaviour::reverse_batches().delay(Duration::from_millis(20)))
                    .await;
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
}
