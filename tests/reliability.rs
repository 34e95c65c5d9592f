//! The reliability catalogue (`docs/reliability.md` maps every scenario to its tests):
//! named tests `sNN_...` for the scenarios, most of them over real loopback sockets, with
//! the fault-injecting proxy ([`support::proxy`]) where a fault is on the wire (a cut
//! mid-frame, one-byte writes, a stalled peer, latency). Scenario 31 is `tests/chaos.rs`.
//!
//! Every test checks, besides its own point (the scenario 28 tests, whose connection task
//! is killed, check what is left of this):
//!
//! * every call resolves, once, within a bound, with its own reply or the right typed
//!   error (`is_not_sent` / `may_have_executed` / `kind` / the connection error's kind);
//! * the channel's bookkeeping is back to empty (`counters().in_flight == 0`);
//! * no task is left behind: `close()` reaches `State::Closed` and, once the last handle
//!   is dropped, the connection task (spawned by the test from `pair`) ends;
//! * no socket is left behind: the servers and proxies have no connection open.
//!
//! Real sockets always run on real time; every wait is bounded.

mod support;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use socketchannel::{
    Backoff, Builder, Call, Channel, Config, ConnectionErrorKind, Endpoint, Error, Handshake, Kind,
    Metered, Mode, Order, Policy, Session, State, TcpConnector,
};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder, Framed};
use tower::load::Load;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use support::channel::{Ch, Mode as Md, connect_error, joined_within, msg, spawn_request};
use support::codec::{Msg, MsgCodec, TestProto, TestProto16};
use support::loopback::spawn_accept_loop;
use support::proxy::{Accept, Blackhole, Dir, Fault, Proxy, ProxyStats, Rng};
use support::script::{group_echo_peer, numbered_body};
use support::server::{Behaviour, Gate, ServerStats, TestServer, replies_to};
use support::{eventually, refused_addr, timeout};

use ConnectionErrorKind::{Eof, Read, Stalled};

/// The bound on one step of a test: a call, a wait for a condition.
const STEP: Duration = Duration::from_secs(5);
/// The bound on a whole test.
const WHOLE: Duration = Duration::from_secs(40);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs a whole test body within [`WHOLE`].
#[track_caller]
fn whole<F: Future>(f: F) -> impl Future<Output = F::Output> {
    timeout(WHOLE, f)
}

// ---------------------------------------------------------------------------------------
// Channels and the end-of-test checks
// ---------------------------------------------------------------------------------------

/// A reconnecting channel's builder for `host`: backoff 10 to 50 ms, connect and
/// handshake timeouts 2 s, `Policy::Once`.
fn builder(host: SocketAddr) -> Builder<Msg, Msg> {
    Channel::builder()
        .host(&host.to_string())
        .backoff(Backoff::exponential(ms(10), ms(50)))
        .connect_timeout(Duration::from_secs(2))
        .handshake_timeout(Duration::from_secs(2))
}

/// A channel from `builder` over TCP with `connector`, and its connection task.
fn spawn_with<K, M>(builder: Builder<Msg, Msg>, connector: K, mode: M) -> (Ch, JoinHandle<()>)
where
    K: Service<Endpoint, Response = Framed<Metered<TcpStream>, MsgCodec>> + Clone + Send + 'static,
    K::Error: Into<BoxError>,
    K::Future: Send,
    M: Mode<Msg, Msg> + Clone,
{
    let (ch, conn) = builder.pair(connector, mode).expect("valid hosts");
    (ch, tokio::spawn(conn))
}

/// A reconnecting channel over TCP in mode `md`, and its connection task.
fn spawn(md: Md, builder: Builder<Msg, Msg>) -> (Ch, JoinHandle<()>) {
    let tcp = TcpConnector::new(MsgCodec::default());
    match md {
        Md::Order => spawn_with(builder, tcp, Order::new(TestProto)),
        Md::Session => spawn_with(builder, tcp, Session::new(TestProto)),
    }
}

/// A channel over one TCP connection to `addr` (no reconnect), and its connection task.
async fn spawn_fixed<M: Mode<Msg, Msg>>(
    addr: SocketAddr,
    mode: M,
    config: Config,
) -> (Ch, JoinHandle<()>) {
    let (ch, conn) = Channel::pair(support::connect(addr).await, mode, config);
    (ch, tokio::spawn(conn))
}

/// What every test ends with: nothing in flight, `close()` reaches `Closed`, dropping
/// the last handle ends the connection task, and no socket stays open at the servers
/// or the proxies.
async fn finish(ch: Ch, task: JoinHandle<()>, servers: &[&dyn Open], proxies: &[&ProxyStats]) {
    eventually(STEP, "nothing in flight", || ch.counters().in_flight == 0).await;
    ch.close();
    let mut state = ch.state();
    timeout(STEP, state.wait_for(|s| *s == State::Closed))
        .await
        .expect("the state watch is open while a handle lives");
    drop(state);
    drop(ch);
    timeout(STEP, task)
        .await
        .expect("the connection task ends without panicking");
    settle_sockets(servers, proxies).await;
}

async fn settle_sockets(servers: &[&dyn Open], proxies: &[&ProxyStats]) {
    eventually(STEP, "no connection open at a server", || {
        servers.iter().all(|s| s.open_now() == 0)
    })
    .await;
    eventually(STEP, "no connection open at a proxy", || {
        proxies.iter().all(|p| p.open() == 0)
    })
    .await;
}

/// A server whose open connections can be counted.
trait Open {
    fn open_now(&self) -> usize;
}

impl Open for ServerStats {
    fn open_now(&self) -> usize {
        self.open()
    }
}

impl Open for Scripted {
    fn open_now(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// The lost connection's kind behind `err`.
fn why(err: &Error) -> Option<ConnectionErrorKind> {
    err.connection_error().map(|c| c.kind())
}

/// `err` is a lost connection, *may have executed*, caused by one of `causes`.
#[track_caller]
fn assert_mx(err: &Error, causes: &[ConnectionErrorKind]) {
    assert_eq!(err.kind(), Kind::Connection, "{err:?}");
    assert!(
        err.may_have_executed() && !err.is_not_sent(),
        "expected may-have-executed: {err:?}"
    );
    let why = why(err).unwrap_or_else(|| panic!("no connection error behind {err:?}"));
    assert!(
        causes.contains(&why),
        "cause {why:?}, expected one of {causes:?}"
    );
}

/// `err` is a *not sent* failure of `kind`.
#[track_caller]
fn assert_ns(err: &Error, kind: Kind) {
    assert_eq!(err.kind(), kind, "{err:?}");
    assert!(
        err.is_not_sent() && !err.may_have_executed(),
        "expected not-sent: {err:?}"
    );
}

/// Awaits a spawned call within [`STEP`].
#[track_caller]
fn joined<T>(h: JoinHandle<T>) -> impl Future<Output = T> {
    joined_within(STEP, h)
}

/// Records every state the channel's watch shows (consecutive duplicates merged) until
/// the channel is gone.
fn record_states(ch: &Ch) -> JoinHandle<Vec<State>> {
    let mut rx = ch.state();
    let mut seen = vec![*rx.borrow_and_update()];
    tokio::spawn(async move {
        for _ in 0..100_000 {
            if rx.changed().await.is_err() {
                break;
            }
            let s = *rx.borrow_and_update();
            if seen.last() != Some(&s) {
                seen.push(s);
            }
        }
        seen
    })
}

// ---------------------------------------------------------------------------------------
// A connector that records its attempts
// ---------------------------------------------------------------------------------------

/// Every connect attempt (endpoint, when), and how many ran at once at most.
#[derive(Debug, Clone, Default)]
struct Attempts {
    log: Arc<Mutex<Vec<(String, Instant)>>>,
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Attempts {
    fn hosts(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(h, _)| h.clone())
            .collect()
    }
    fn times(&self) -> Vec<Instant> {
        self.log.lock().unwrap().iter().map(|(_, t)| *t).collect()
    }
    fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Counts an attempt as running until dropped (finished or abandoned on timeout).
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The TCP connector, recording each attempt.
#[derive(Clone)]
struct Recording {
    tcp: TcpConnector<MsgCodec>,
    attempts: Attempts,
}

impl Recording {
    fn new() -> (Recording, Attempts) {
        let attempts = Attempts::default();
        let me = Recording {
            tcp: TcpConnector::new(MsgCodec::default()),
            attempts: attempts.clone(),
        };
        (me, attempts)
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = io::Result<Framed<Metered<TcpStream>, MsgCodec>>> + Send>>;

impl Service<Endpoint> for Recording {
    type Response = Framed<Metered<TcpStream>, MsgCodec>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_ready(cx)
    }

    fn call(&mut self, endpoint: Endpoint) -> ConnectFuture {
        let a = &self.attempts;
        a.log
            .lock()
            .unwrap()
            .push((endpoint.to_string(), Instant::now()));
        let n = a.now.fetch_add(1, Ordering::SeqCst) + 1;
        a.peak.fetch_max(n, Ordering::SeqCst);
        let running = Running(a.now.clone());
        let attempt = self.tcp.call(endpoint);
        Box::pin(async move {
            let out = attempt.await;
            drop(running);
            out
        })
    }
}

// ---------------------------------------------------------------------------------------
// A scripted loopback server: per request, frames after delays
// ---------------------------------------------------------------------------------------

type Script = fn(&Msg) -> Vec<(Duration, Msg)>;

/// A loopback server that answers each request with `script(request)`: frames, each
/// after its delay. `fifo`: the answers go out in request order, each waiting for the
/// one before (a pipelining server); otherwise each answer goes out on its own clock
/// (a multiplexing server: answers overtake each other).
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    frames: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(script: Script, fifo: bool) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let frames = Arc::new(AtomicUsize::new(0));
        let (a, o, f) = (accepted.clone(), open.clone(), frames.clone());
        let task = spawn_accept_loop(listener, 100_000, move |stream| {
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let guard = Running(o.clone());
            serve_scripted(stream, script, fifo, f.clone(), guard)
        });
        Scripted {
            addr,
            accepted,
            open,
            frames,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn frames(&self) -> usize {
        self.frames.load(Ordering::SeqCst)
    }
}

async fn serve_scripted(
    stream: TcpStream,
    script: Script,
    fifo: bool,
    frames: Arc<AtomicUsize>,
    _open: Running,
) {
    let _ = stream.set_nodelay(true);
    let (mut sink, mut reqs) = Framed::new(stream, MsgCodec::default()).split();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Duration, Msg)>();
    let writer = async move {
        for _ in 0..10_000_000 {
            let Some((delay, frame)) = rx.recv().await else {
                return;
            };
            if fifo && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if sink.send(frame).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut delayed = tokio::task::JoinSet::new();
        for _ in 0..10_000_000 {
            let Some(Ok(req)) = reqs.next().await else {
                return;
            };
            frames.fetch_add(1, Ordering::SeqCst);
            for (delay, frame) in script(&req) {
                if fifo || delay.is_zero() {
                    let _ = tx.send((delay, frame));
                } else {
                    let tx = tx.clone();
                    delayed.spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send((Duration::ZERO, frame));
                    });
                }
            }
        }
    };
    // The client closing its side ends the connection.
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
}

// ---------------------------------------------------------------------------------------
// In-memory transports: one byte at a time, with would-block
// ---------------------------------------------------------------------------------------

/// An I/O object that returns `Pending` (waking itself at once) before every read and
/// every write, and then moves a single byte: every frame is split at every byte, both
/// ways, and every write would block once.
struct OneByte<T> {
    io: T,
    read_turn: bool,
    write_turn: bool,
}

impl<T> OneByte<T> {
    fn new(io: T) -> Self {
        OneByte {
            io,
            read_turn: false,
            write_turn: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for OneByte<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !self.read_turn {
            self.read_turn = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut one = [0u8; 1];
        let mut small = ReadBuf::new(&mut one);
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut small);
        if let Poll::Ready(Ok(())) = polled {
            buf.put_slice(small.filled());
            self.read_turn = false;
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for OneByte<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Pin::new(&mut self.io).poll_write(cx, data);
        }
        if !self.write_turn {
            self.write_turn = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = Pin::new(&mut self.io).poll_write(cx, &data[..1]);
        if let Poll::Ready(Ok(_)) = polled {
            self.write_turn = false;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A peer over `io` that answers every frame as the test server does ([`replies_to`]),
/// in order; returns the frames it read, in order.
fn echo_peer(io: DuplexStream) -> JoinHandle<Vec<Msg>> {
    tokio::spawn(async move {
        let mut framed = Framed::new(io, MsgCodec::default());
        let mut log = Vec::new();
        for _ in 0..1_000_000 {
            let Some(Ok(req)) = framed.next().await else {
                break;
            };
            for reply in replies_to(&req) {
                if framed.feed(reply).await.is_err() {
                    return log;
                }
            }
            if framed.flush().await.is_err() {
                return log;
            }
            log.push(req);
        }
        log
    })
}

/// Checks that the parts of every multi-part request (bodies `mp:C:I`) arrived back to
/// back and in order, with nothing between them.
#[track_caller]
fn assert_parts_contiguous(frames: &[Msg], parts: usize) {
    let bodies: Vec<&str> = frames.iter().map(|m| m.text()).collect();
    let mut i = 0;
    while i < bodies.len() {
        if let Some(rest) = bodies[i].strip_prefix("mp:") {
            let call = rest.split(':').next().expect("call");
            for k in 0..parts {
                let want = format!("mp:{call}:{k}");
                assert_eq!(
                    bodies.get(i + k).copied(),
                    Some(want.as_str()),
                    "parts of call {call} interleaved or out of order: {bodies:?}"
                );
            }
            i += parts;
        } else {
            i += 1;
        }
    }
}

/// `n` calls of both kinds, concurrently: single requests `one:C` and three-part
/// requests `mp:C:0..3` (each part echoed, so three replies); each checks its replies.
async fn mixed_calls(ch: &Ch, n: usize) {
    let calls = (0..n).map(|c| async move {
        if c % 3 == 0 {
            let parts: Vec<Msg> = (0..3).map(|k| msg(format!("mp:{c}:{k}"))).collect();
            let replies = timeout(STEP, ch.request_n(Call::parts(parts), 3))
                .await
                .unwrap_or_else(|e| panic!("multi-part call {c}: {e:?}"));
            let bodies: Vec<&str> = replies.iter().map(|m| m.text()).collect();
            let want: Vec<String> = (0..3).map(|k| format!("mp:{c}:{k}")).collect();
            assert_eq!(bodies, want, "multi-part call {c}");
        } else {
            let body = format!("one:{c}");
            let reply = timeout(STEP, ch.request(msg(&*body)))
                .await
                .unwrap_or_else(|e| panic!("call {c}: {e:?}"));
            assert_eq!(reply.text(), body, "call {c}");
        }
    });
    join_all(calls).await;
}

// ---------------------------------------------------------------------------------------
// The proxy itself
// ---------------------------------------------------------------------------------------

/// Raw bytes through the proxy: each fault does what it says, switched at runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_faults_do_what_they_say() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let proxy = Proxy::start(server.addr(), 1).await;
        let mut frame = bytes::BytesMut::new();
        MsgCodec::default()
            .encode(msg("0123456789"), &mut frame)
            .unwrap();
        let frame = frame.freeze();
        let len = frame.len();

        // Pass: the echo comes back whole.
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(&frame).await.unwrap();
        let mut back = vec![0u8; len];
        timeout(STEP, s.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, frame);

        // Stall up: the server reads nothing; switched back, it gets the frame.
        proxy.set(Dir::Up, Fault::Stall);
        s.write_all(&frame).await.unwrap();
        tokio::time::sleep(ms(100)).await;
        assert_eq!(server.stats().frames(), 1);
        proxy.set(Dir::Up, Fault::Pass);
        timeout(STEP, s.read_exact(&mut back)).await.unwrap();
        assert_eq!(server.stats().frames(), 2);

        // Latency down: the echo takes at least that long.
        proxy.set(Dir::Down, Fault::Latency(ms(150)));
        let t = Instant::now();
        s.write_all(&frame).await.unwrap();
        timeout(STEP, s.read_exact(&mut back)).await.unwrap();
        assert!(t.elapsed() >= ms(150), "{:?}", t.elapsed());

        // Slice down: the frame arrives whole, one byte per write.
        proxy.set(Dir::Down, Fault::Slice);
        s.write_all(&frame).await.unwrap();
        timeout(STEP, s.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, frame);

        // Cut down after 5 bytes: 5 bytes, then end of stream.
        proxy.set(Dir::Down, Fault::Cut(5));
        s.write_all(&frame).await.unwrap();
        let mut got = Vec::new();
        timeout(STEP, s.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, frame[..5]);
        proxy.heal();

        // Reset down after 0 bytes: a connection reset.
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set(Dir::Down, Fault::Reset(0));
        s.write_all(&frame).await.unwrap();
        let mut got = Vec::new();
        let err = timeout(STEP, s.read_to_end(&mut got))
            .await
            .expect_err("reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        proxy.heal();

        // Accept modes, refusing and resuming.
        proxy.set_accept(Accept::Close);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(timeout(STEP, s.read(&mut back)).await.unwrap(), 0);
        proxy.set_accept(Accept::Reset);
        // The reset may come before the connect completes, or after.
        let err = match TcpStream::connect(proxy.addr()).await {
            Ok(mut s) => timeout(STEP, s.read(&mut back)).await.expect_err("reset"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        proxy.set_accept(Accept::Forward);
        proxy.refuse().await;
        let err = TcpStream::connect(proxy.addr()).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        proxy.resume().await.unwrap();
        let s = TcpStream::connect(proxy.addr()).await.unwrap();
        drop(s);
        assert_eq!(proxy.stats().dropped_on_accept(), 2);
        settle_sockets(&[server.stats()], &[proxy.stats()]).await;

        // A blackhole: connects hang.
        let hole = Blackhole::start().await;
        let hung = tokio::time::timeout(ms(200), TcpStream::connect(hole.addr())).await;
        assert!(hung.is_err(), "a connect to the blackhole completed");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 1. FIN with calls in flight and queued
// ---------------------------------------------------------------------------------------

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
                assert_ns(&err, Kind::Connection);
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

// ---------------------------------------------------------------------------------------
// 2. Reset or cut mid-frame
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 3. Idle death
// ---------------------------------------------------------------------------------------

/// Scenario 3: An idle connection closed (FIN), then reset (RST), by the other side: each
/// death is seen at once (one move to `Idle`), nothing reconnects while idle
/// (`Policy::Once`), and the next call reconnects once and succeeds.
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
/// connection did answer, the channel (`Policy::Persistent`) reconnects at once rather than
/// backing off as from a host that dies without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_reply_read_with_the_connection_end_still_counts() {
    whole(async {
        let server = TestServer::start(Behaviour::echo().close_after(1)).await;
        let bld = builder(server.addr())
            .policy(Policy::Persistent)
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

// ---------------------------------------------------------------------------------------
// 4. Restart at the same address
// ---------------------------------------------------------------------------------------

/// Scenario 4: The address goes down (listener closed, connections killed) with 4 calls in
/// flight and 3 queued, then comes back: only what was written fails *may have executed*;
/// the queued calls fail *not sent* (`Kind::Connect`, the pass failed) and never reach the
/// server; calls while down fail fast; after the restart calls succeed within a few backoff
/// steps, on one new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_restart_at_the_same_address() {
    whole(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let proxy = Proxy::start(server.addr(), 4).await;
        let b = builder(proxy.addr())
            .policy(Policy::Persistent)
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
                assert_ns(&err, Kind::Connect);
            }
        }
        // While down, calls fail fast.
        let t = Instant::now();
        let err = timeout(STEP, ch.request(msg("while down")))
            .await
            .expect_err("down");
        assert_ns(&err, Kind::Connect);
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
                Err(err) => assert_ns(&err, Kind::Connect),
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

// ---------------------------------------------------------------------------------------
// 5, 6. Refused and blackholed hosts
// ---------------------------------------------------------------------------------------

/// Scenario 5: Primary and first backup refuse connections: the backups are tried in order and
/// the call succeeds on the second backup. With every host refusing, the call fails
/// *not sent* (`Kind::Connect`) quickly, and the error names each host with its own
/// failure, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_refused_primary_fails_over_to_backups_in_order() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let (a, b) = (refused_addr().await, refused_addr().await);
        let (rec, attempts) = Recording::new();
        let bld = builder(a)
            .backup(&b.to_string())
            .backup(&server.addr().to_string());
        let (ch, task) = spawn_with(bld, rec, Order::new(TestProto));
        assert_eq!(
            timeout(STEP, ch.request(msg("hi"))).await.unwrap().text(),
            "hi"
        );
        let want = [a.to_string(), b.to_string(), server.addr().to_string()];
        assert_eq!(attempts.hosts(), want);
        assert_eq!(
            timeout(STEP, ch.request(msg("again")))
                .await
                .unwrap()
                .text(),
            "again"
        );
        assert_eq!(attempts.count(), 3, "no new attempt while connected");
        finish(ch, task, &[server.stats()], &[]).await;

        // Every host refuses.
        let (rec, attempts) = Recording::new();
        let (ch, task) = spawn_with(
            builder(a).backup(&b.to_string()),
            rec,
            Order::new(TestProto),
        );
        let t = Instant::now();
        let err = timeout(STEP, ch.request(msg("nobody")))
            .await
            .expect_err("every host refuses");
        assert!(t.elapsed() < ms(1000), "took {:?}", t.elapsed());
        assert_ns(&err, Kind::Connect);
        let failures: Vec<(String, io::ErrorKind)> = connect_error(&err)
            .failures()
            .map(|(e, why)| {
                let io = why.downcast_ref::<io::Error>().expect("an io::Error");
                (e.to_string(), io.kind())
            })
            .collect();
        let refused = io::ErrorKind::ConnectionRefused;
        assert_eq!(
            failures,
            [(a.to_string(), refused), (b.to_string(), refused)]
        );
        assert_eq!(attempts.count(), 2);
        finish(ch, task, &[], &[]).await;
    })
    .await;
}

/// Scenario 6: A blackholed primary (its connects never complete): the connect timeout
/// gives up on it and the backup is tried. With only blackholed hosts, the call fails *not
/// sent* after the timeout, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_blackholed_connect_times_out_and_the_backup_is_tried() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let hole = Blackhole::start().await;
        let (rec, attempts) = Recording::new();
        let bld = builder(hole.addr())
            .backup(&server.addr().to_string())
            .connect_timeout(ms(300));
        let (ch, task) = spawn_with(bld, rec, Order::new(TestProto));
        let t = Instant::now();
        assert_eq!(
            timeout(STEP, ch.request(msg("hi"))).await.unwrap().text(),
            "hi"
        );
        assert!(t.elapsed() >= ms(290), "gave up early: {:?}", t.elapsed());
        assert_eq!(
            attempts.hosts(),
            [hole.addr().to_string(), server.addr().to_string()]
        );
        finish(ch, task, &[server.stats()], &[]).await;

        let (ch, task) = spawn(Md::Order, builder(hole.addr()).connect_timeout(ms(200)));
        let t = Instant::now();
        let err = timeout(STEP, ch.request(msg("nobody")))
            .await
            .expect_err("blackholed");
        assert!(t.elapsed() >= ms(190), "gave up early: {:?}", t.elapsed());
        assert_ns(&err, Kind::Connect);
        assert!(
            connect_error(&err)
                .to_string()
                .contains("connect timed out"),
            "{err}"
        );
        finish(ch, task, &[], &[]).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 7-10. Handshakes
// ---------------------------------------------------------------------------------------

/// Scenario 7: The server rejects the handshake (a wrong password): the queued calls fail
/// promptly, *not sent*, with the handshake's failure as the cause; no user request is ever
/// written; and under `Policy::Persistent` the retries are paced by the backoff (no hot
/// loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_rejected_handshake_fails_queued_calls_without_a_hot_loop() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let hook_runs = runs.clone();
        let bld = builder(server.addr())
            .backoff(Backoff::exponential(ms(100), ms(400)))
            .handshake(move |conn: Ch, _| {
                hook_runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    conn.request(msg("err wrong password")).await?;
                    Ok(Handshake::Ready)
                }
            });
        let (ch, task) = spawn(Md::Order, bld);
        let t = Instant::now();
        let outcomes = timeout(
            STEP,
            join_all((0..5).map(|i| ch.request(msg(format!("user {i}"))))),
        )
        .await;
        assert!(t.elapsed() < ms(1000), "prompt: {:?}", t.elapsed());
        for outcome in outcomes {
            let err = outcome.expect_err("the handshake failed");
            assert_ns(&err, Kind::Connect);
            let text = connect_error(&err).to_string();
            assert!(
                text.contains("handshake failed") && text.contains("wrong password"),
                "{text}"
            );
        }
        // Backing off: the next call fails fast, without a new attempt.
        let err = timeout(STEP, ch.request(msg("soon")))
            .await
            .expect_err("backing off");
        assert_ns(&err, Kind::Connect);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(
            server.stats().bodies().iter().all(|b| b.starts_with("err")),
            "a user request was written: {:?}",
            server.stats().bodies()
        );
        finish(ch, task, &[server.stats()], &[]).await;

        // Persistent: over 1.2 s with a 100-400 ms backoff, a bounded number of tries.
        let server = TestServer::start(Behaviour::echo()).await;
        let bld = builder(server.addr())
            .policy(Policy::Persistent)
            .backoff(Backoff::exponential(ms(100), ms(400)))
            .eager()
            .handshake(|conn: Ch, _| async move {
                conn.request(msg("err wrong password")).await?;
                Ok(Handshake::Ready)
            });
        let (ch, task) = spawn(Md::Order, bld);
        tokio::time::sleep(ms(1200)).await;
        let tries = server.stats().accepted();
        assert!((2..=13).contains(&tries), "{tries} handshakes in 1.2 s");
        finish(ch, task, &[server.stats()], &[]).await;
    })
    .await;
}

/// Scenario 8: The first host never answers the handshake: the handshake timeout gives up
/// on it (its connection is closed, not leaked) and the backup serves the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_unanswered_handshake_times_out_and_the_next_host_serves() {
    whole(async {
        let silent = TestServer::start(Behaviour::silent()).await;
        let good = TestServer::start(Behaviour::echo()).await;
        let bld = builder(silent.addr())
            .backup(&good.addr().to_string())
            .handshake_timeout(ms(300))
            .handshake(|conn: Ch, _| async move {
                conn.request(msg("auth")).await?;
                Ok(Handshake::Ready)
            });
        let (ch, task) = spawn(Md::Session, bld);
        let t = Instant::now();
        assert_eq!(
            timeout(STEP, ch.request(msg("user"))).await.unwrap().text(),
            "user"
        );
        assert!(t.elapsed() >= ms(290), "{:?}", t.elapsed());
        assert_eq!(silent.stats().bodies(), ["auth"]);
        assert_eq!(good.stats().bodies(), ["auth", "user"]);
        eventually(STEP, "the abandoned connection is closed", || {
            silent.stats().open() == 0
        })
        .await;
        finish(ch, task, &[silent.stats(), good.stats()], &[]).await;
    })
    .await;
}

/// Scenario 9: Reconnect with a handshake while 40 user calls are queued: on every
/// connection the handshake's request is the first frame, and comes once; no user request
/// is executed twice; the calls written on the lost connection fail *may have executed*,
/// the others are replayed and succeed.
async fn handshake_first_case(md: Md) {
    let server = TestServer::start_with(|i| match i {
        0 => Behaviour::echo().close_after(6),
        _ => Behaviour::echo(),
    })
    .await;
    let bld = builder(server.addr())
        .config(Config::default().max_in_flight(4))
        .handshake(|conn: Ch, _| async move {
            conn.request(msg("auth")).await?;
            Ok(Handshake::Ready)
        });
    let (ch, task) = spawn(md, bld);
    let outcomes = timeout(
        STEP,
        join_all((0..40).map(|i| ch.request(msg(format!("u{i}"))))),
    )
    .await;
    let log = server.stats().log();
    let conns = server.stats().accepted();
    assert!(conns >= 2, "the connection was lost and remade");
    for c in 0..conns {
        let frames = server.stats().received_on(c);
        if frames.is_empty() {
            continue;
        }
        assert_eq!(frames[0].text(), "auth", "connection {c}: {frames:?}");
        let auths = frames.iter().filter(|m| m.text() == "auth").count();
        assert_eq!(auths, 1, "connection {c}");
    }
    let mut seen = HashMap::new();
    for (_, m) in &log {
        *seen.entry(m.text().to_string()).or_insert(0) += 1;
    }
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let body = format!("u{i}");
        let times = seen.get(&body).copied().unwrap_or(0);
        assert!(times <= 1, "{body} executed {times} times");
        match outcome {
            Ok(reply) => {
                assert_eq!(reply.text(), body);
                assert_eq!(times, 1);
            }
            Err(err) => assert_mx(&err, &[Eof, Read]),
        }
    }
    finish(ch, task, &[server.stats()], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_no_user_frame_before_the_handshake_on_reconnect_order() {
    whole(handshake_first_case(Md::Order)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_no_user_frame_before_the_handshake_on_reconnect_session() {
    whole(handshake_first_case(Md::Session)).await;
}

/// Scenario 10: The connection closes after the handshake's request was answered and before
/// the first user request was written (the hook is still finishing): that request was never
/// sent, stays queued, and is written exactly once, on the next host's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_close_between_handshake_and_first_request_replays_it_once() {
    whole(async {
        let server = TestServer::start_with(|i| match i {
            0 => Behaviour::echo().close_after(1),
            _ => Behaviour::echo(),
        })
        .await;
        // A second address for the same server: the backup.
        let proxy = Proxy::start(server.addr(), 10).await;
        let bld = builder(server.addr())
            .backup(&proxy.addr().to_string())
            .handshake(|conn: Ch, _| async move {
                conn.request(msg("auth")).await?;
                tokio::time::sleep(ms(200)).await;
                Ok(Handshake::Ready)
            });
        let (ch, task) = spawn(Md::Order, bld);
        let reply = timeout(STEP, ch.request(msg("user"))).await.unwrap();
        assert_eq!(reply.text(), "user");
        let texts = |c| -> Vec<String> {
            server
                .stats()
                .received_on(c)
                .iter()
                .map(|m| m.text().to_string())
                .collect()
        };
        assert_eq!(texts(0), ["auth"]);
        assert_eq!(texts(1), ["auth", "user"]);
        assert_eq!(server.stats().accepted(), 2);
        finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 11-15. Cancellation, timeouts and ids
// ---------------------------------------------------------------------------------------

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

/// 13, 22. The server goes silent (the proxy holds its replies, the connection stays
/// up): the stall timeout closes the connection within its bound, the calls in flight
/// fail *may have executed* (`Stalled`), and (`Policy::Persistent`) the channel
/// reconnects; once the path heals calls succeed.
async fn stall_case(md: Md) {
    let server = TestServer::start(Behaviour::echo()).await;
    let proxy = Proxy::start(server.addr(), 13).await;
    let bld = builder(proxy.addr())
        .policy(Policy::Persistent)
        .config(Config::default().stall_timeout(Some(ms(300))));
    let (ch, task) = spawn(md, bld);
    assert_eq!(
        timeout(STEP, ch.request(msg("warm"))).await.unwrap().text(),
        "warm"
    );

    proxy.set(Dir::Down, Fault::Stall);
    let t = Instant::now();
    let outcomes = timeout(
        STEP,
        join_all((0..3).map(|i| ch.request(msg(format!("s{i}"))))),
    )
    .await;
    let took = t.elapsed();
    assert!(
        took >= ms(290) && took < ms(3000),
        "detected after {took:?}"
    );
    for outcome in outcomes {
        assert_mx(&outcome.expect_err("stalled"), &[Stalled]);
    }
    eventually(STEP, "reconnected", || proxy.stats().accepted() >= 2).await;
    proxy.heal();
    assert_eq!(
        timeout(STEP, ch.request(msg("after")))
            .await
            .unwrap()
            .text(),
        "after"
    );
    assert!(ch.counters().reconnects >= 1);
    finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_s22_silent_server_stall_timeout_fails_in_flight_and_reconnects_order() {
    whole(stall_case(Md::Order)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_silent_server_stall_timeout_fails_in_flight_and_reconnects_session() {
    whole(stall_case(Md::Session)).await;
}

/// Scenario 22: An idle connection whose peer goes silent is found by the idle ping and the
/// stall timeout, without any user call, and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_idle_ping_finds_a_silent_peer() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let proxy = Proxy::start(server.addr(), 22).await;
        let bld = builder(proxy.addr())
            .policy(Policy::Persistent)
            .idle_ping(ms(100), || msg("ping"))
            .config(Config::default().stall_timeout(Some(ms(300))))
            .eager();
        let (ch, task) = spawn(Md::Order, bld);
        eventually(STEP, "pinged", || {
            server.stats().bodies().iter().any(|b| b == "ping")
        })
        .await;
        proxy.set(Dir::Down, Fault::Stall);
        let t = Instant::now();
        eventually(STEP, "the silent peer was replaced", || {
            proxy.stats().accepted() >= 2
        })
        .await;
        let took = t.elapsed();
        assert!(took < ms(2000), "took {took:?}");
        proxy.heal();
        assert_eq!(
            timeout(STEP, ch.request(msg("user"))).await.unwrap().text(),
            "user"
        );
        finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
    })
    .await;
}

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
            builder(server.addr()).config(Config::default().max_orphans(None)),
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

// ---------------------------------------------------------------------------------------
// 16, 17. Unsolicited, unknown and duplicate replies
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 18. Malformed frames
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 19-21. Partial reads and writes, big frames
// ---------------------------------------------------------------------------------------

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

/// 21 (session mode; order mode: `order.rs`). 32 requests of 64 KiB through a 256-byte
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

// ---------------------------------------------------------------------------------------
// 23, 24. Latency and head-of-line blocking
// ---------------------------------------------------------------------------------------

/// Scenario 23: 20 to 60 ms of latency each way (seeded jitter), below a 1 s stall timeout,
/// with idle pings between bursts: no spurious reconnect, every call answered right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s23_latency_below_the_timeout_causes_no_reconnect() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let proxy = Proxy::start(server.addr(), 23).await;
        proxy.set_both(Fault::Jitter(ms(20), ms(60)));
        let bld = builder(proxy.addr())
            .policy(Policy::Persistent)
            .idle_ping(ms(100), || msg("ping"))
            .config(Config::default().stall_timeout(Some(ms(1000))));
        let (ch, task) = spawn(Md::Order, bld);
        for round in 0..6 {
            let calls = (0..16).map(|i| {
                let body = format!("{round}:{i}");
                let ch = &ch;
                async move {
                    let reply = timeout(STEP, ch.request(msg(&*body))).await.unwrap();
                    assert_eq!(reply.text(), body);
                }
            });
            join_all(calls).await;
            tokio::time::sleep(ms(250)).await;
        }
        assert_eq!(ch.counters().reconnects, 0);
        assert_eq!(proxy.stats().accepted(), 1);
        assert!(server.stats().bodies().iter().any(|b| b == "ping"));
        finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
    })
    .await;
}

fn slow_head(m: &Msg) -> Vec<(Duration, Msg)> {
    let delay = if m.text().starts_with("slow") {
        ms(800)
    } else {
        Duration::ZERO
    };
    vec![(delay, m.clone())]
}

/// Scenario 24: A slow reply (800 ms) at the head: in order mode (a pipelining server) the
/// calls behind it wait for it and every reply stays in order; in session mode (a
/// multiplexing server) the fast calls complete while the slow one is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s24_head_of_line_order_waits_session_does_not() {
    whole(async {
        for md in [Md::Order, Md::Session] {
            let server = Scripted::start(slow_head, md == Md::Order).await;
            let (ch, task) = spawn(md, builder(server.addr));
            // Connected first, so the clock measures only the replies.
            assert_eq!(
                timeout(STEP, ch.request(msg("warm"))).await.unwrap().text(),
                "warm"
            );
            let t = Instant::now();
            let calls = ["slow A", "B", "C"].into_iter().map(|body| {
                let ch = &ch;
                async move {
                    let reply = timeout(STEP, ch.request(msg(body))).await.unwrap();
                    assert_eq!(reply.text(), body);
                    t.elapsed()
                }
            });
            let took = join_all(calls).await;
            let (a, b, c) = (took[0], took[1], took[2]);
            assert!(a >= ms(790), "{md:?}: slow A took {a:?}");
            match md {
                Md::Order => assert!(b >= ms(790) && c >= ms(790), "{md:?}: {b:?} {c:?}"),
                Md::Session => assert!(b < ms(500) && c < ms(500), "{md:?}: {b:?} {c:?}"),
            }
            assert_eq!(server.frames(), 4);
            finish(ch, task, &[&server], &[]).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 25-27. Single flight, backoff, the in-flight limit
// ---------------------------------------------------------------------------------------

/// Scenario 25: 1,000 callers on a lazy channel share one connect attempt and all get their
/// reply; 1,000 callers in flight when the connection dies all fail *may have executed* and
/// the next 1,000 share one reconnect; 1,000 callers on a dead host all fail *not sent*
/// after one attempt. Never two attempts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s25_a_thousand_callers_share_one_connect_attempt() {
    whole(async {
        let gate = Gate::new();
        gate.open();
        let server = TestServer::start(Behaviour::echo()).await;
        let (rec, attempts) = Recording::new();
        let (ch, task) = spawn_with(builder(server.addr()), rec, Order::new(TestProto));
        let calls: Vec<_> = (0..1000)
            .map(|i| spawn_request(&ch, format!("a{i}")))
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(joined(call).await.unwrap().text(), format!("a{i}"));
        }
        assert_eq!(attempts.count(), 1);
        finish(ch, task, &[server.stats()], &[]).await;

        // In flight at a disconnect, then a reconnect.
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let (rec, attempts) = Recording::new();
        let (ch, task) = spawn_with(builder(server.addr()), rec, Order::new(TestProto));
        let calls: Vec<_> = (0..1000)
            .map(|i| spawn_request(&ch, format!("b{i}")))
            .collect();
        eventually(STEP, "all in flight", || server.stats().frames() == 1000).await;
        server.kill_connections();
        for call in calls {
            assert_mx(&joined(call).await.expect_err("killed"), &[Eof, Read]);
        }
        gate.open();
        let calls: Vec<_> = (0..1000)
            .map(|i| spawn_request(&ch, format!("c{i}")))
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(joined(call).await.unwrap().text(), format!("c{i}"));
        }
        assert_eq!(attempts.count(), 2, "one reconnect for 1000 callers");
        assert_eq!(attempts.peak(), 1);
        finish(ch, task, &[server.stats()], &[]).await;

        // A dead host. The backoff after the failed pass outlasts the test: callers whose
        // task runs only after the pass failed (1,000 spawned tasks take a while on a
        // loaded machine) fail fast while it lasts, as *not sent*, and make no second
        // attempt. With the 10 to 50 ms of `builder` such a late caller could find the
        // channel idle again and start a pass of its own.
        let (rec, attempts) = Recording::new();
        let dead = builder(refused_addr().await).backoff(Backoff::exponential(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ));
        let (ch, task) = spawn_with(dead, rec, Order::new(TestProto));
        let calls: Vec<_> = (0..1000)
            .map(|i| spawn_request(&ch, format!("d{i}")))
            .collect();
        for call in calls {
            assert_ns(&joined(call).await.expect_err("dead"), Kind::Connect);
        }
        assert_eq!(attempts.count(), 1);
        finish(ch, task, &[], &[]).await;
    })
    .await;
}

/// Scenario 26: Backoff over real time (the delay function's bounds and growth are property
/// tests in `src/reconnect/backoff.rs`): against a refusing host under
/// `Policy::Persistent`, with 20 to 160 ms of backoff, attempts are at least the minimum
/// apart, at most the maximum (plus scheduling slack), jittered, and bounded in number;
/// `max_attempts(3)` stops after three passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s26_backoff_paces_attempts_with_jitter_and_stops_at_max_attempts() {
    whole(async {
        let dead = refused_addr().await;
        let (rec, attempts) = Recording::new();
        let bld = builder(dead)
            .policy(Policy::Persistent)
            .backoff(Backoff::exponential(ms(20), ms(160)))
            .eager();
        let (ch, task) = spawn_with(bld, rec, Order::new(TestProto));
        tokio::time::sleep(ms(1500)).await;
        let times = attempts.times();
        let n = times.len();
        assert!((5..=76).contains(&n), "{n} attempts in 1.5 s");
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        for g in &gaps {
            assert!(*g >= ms(19), "a gap below the minimum: {gaps:?}");
            assert!(*g <= ms(160 + 400), "a gap far above the maximum: {gaps:?}");
        }
        let distinct: HashSet<u128> = gaps.iter().map(|g| g.as_millis()).collect();
        assert!(distinct.len() >= 3, "no jitter: {gaps:?}");
        finish(ch, task, &[], &[]).await;

        let (rec, attempts) = Recording::new();
        let bld = builder(dead)
            .policy(Policy::Persistent)
            .backoff(Backoff::exponential(ms(10), ms(20)).max_attempts(3))
            .eager();
        let (ch, task) = spawn_with(bld, rec, Order::new(TestProto));
        eventually(STEP, "gave up", || *ch.state().borrow() == State::Idle).await;
        tokio::time::sleep(ms(200)).await;
        assert_eq!(attempts.count(), 3);
        finish(ch, task, &[], &[]).await;
    })
    .await;
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

// ---------------------------------------------------------------------------------------
// 28, 29. The connection task dies; the last handle goes
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 30. A small soak
// ---------------------------------------------------------------------------------------

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
            .policy(Policy::Persistent)
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

// ---------------------------------------------------------------------------------------
// 32, 33. Drain and crash loops
// ---------------------------------------------------------------------------------------

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
        ch.change_host(&new.addr().to_string()).unwrap();
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
        ch.change_host(&new.addr().to_string()).unwrap();
        for call in stuck {
            let err = joined(call).await.expect_err("never answered");
            assert_eq!(err.kind(), Kind::Connection, "{err:?}");
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
        ch.change_host(&new.addr().to_string()).unwrap();
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

/// Scenario 33: A crash-looping primary (accepts, then closes or resets at once, before any
/// reply) with a working backup, and no handshake: the primary is retried with backoff, not
/// in a hot loop, and the calls fail over to the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s33_crash_looping_host_backs_off_and_fails_over() {
    whole(async {
        for accept in [Accept::Close, Accept::Reset] {
            let server = TestServer::start(Behaviour::echo()).await;
            let crashing = Proxy::start(server.addr(), 33).await;
            crashing.set_accept(accept);
            let bld = builder(crashing.addr())
                .backup(&server.addr().to_string())
                .backoff(Backoff::exponential(ms(50), ms(200)));
            let (ch, task) = spawn(Md::Order, bld);
            let t = Instant::now();
            let mut served = false;
            while t.elapsed() < Duration::from_secs(3) {
                match timeout(STEP, ch.request(msg("hi"))).await {
                    Ok(reply) => {
                        assert_eq!(reply.text(), "hi");
                        served = true;
                        break;
                    }
                    Err(err) => assert!(err.kind() == Kind::Connection || err.is_not_sent()),
                }
                tokio::time::sleep(ms(10)).await;
            }
            let tries = crashing.stats().accepted();
            assert!(
                tries <= 3000 / 50 + 2,
                "{accept:?}: hot loop, {tries} tries"
            );
            assert!(
                served,
                "{accept:?}: no failover to the backup in 3 s ({tries} crashes)"
            );
            finish(ch, task, &[server.stats()], &[crashing.stats()]).await;
        }
    })
    .await;
}

/// 33 with a handshake: the crash is seen during the handshake, which fails that host,
/// so the backup is tried at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s33_crash_looping_host_with_a_handshake_fails_over() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let crashing = Proxy::start(server.addr(), 33).await;
        crashing.set_accept(Accept::Close);
        let bld = builder(crashing.addr())
            .backup(&server.addr().to_string())
            .handshake(|conn: Ch, _| async move {
                conn.request(msg("auth")).await?;
                Ok(Handshake::Ready)
            });
        let (ch, task) = spawn(Md::Order, bld);
        assert_eq!(
            timeout(STEP, ch.request(msg("hi"))).await.unwrap().text(),
            "hi"
        );
        assert_eq!(crashing.stats().accepted(), 1);
        assert_eq!(server.stats().bodies(), ["auth", "hi"]);
        finish(ch, task, &[server.stats()], &[crashing.stats()]).await;
    })
    .await;
}
