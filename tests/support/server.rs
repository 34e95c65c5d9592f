//! An in-process TCP test server on `127.0.0.1` speaking the test protocol
//! ([`Msg`] / [`MsgCodec`]), whose behaviour is chosen per connection.
//!
//! ```ignore
//! let server = TestServer::start(Behaviour::echo()).await;
//! let stream = TcpStream::connect(server.addr()).await?;
//! // ...
//! assert_eq!(server.stats().bodies(), ["a", "b"]);
//! ```
//!
//! # What a connection does
//!
//! A [`Behaviour`] says how a connection answers what it reads:
//!
//! * [`Reply`]: echo in order, echo each read batch in reverse order (for session mode),
//!   stay silent (read and drop), or answer the first frame with garbage bytes.
//! * Body rules, for the echoing replies ([`replies_to`]): a body starting with
//!   `noreply` gets no answer (fire-and-forget), one starting with `err` gets a
//!   [`Kind::Error`] frame, `parts:N:...` gets `N` frames (`N - 1` of [`Kind::More`],
//!   then a normal one); anything else is echoed with its id and body.
//! * Options: a delay before each answer, a [`Gate`] that withholds answers until the
//!   test releases them, a greeting frame on accept, a frame before and/or after each
//!   answer (a push frame, or an unsolicited normal frame), and closing (FIN or RST) after
//!   `N` frames.
//!
//! The server records every frame it reads ([`ServerStats`]): a counter, and the frames in
//! arrival order with the index of the connection they came on, so a test can assert what
//! reached the server (and what never did).
//!
//! # Control
//!
//! [`TestServer::kill_connections`] / [`TestServer::reset_connections`] close every open
//! connection (FIN / RST); [`TestServer::stop_accepting`] closes the listener;
//! [`TestServer::restart`] listens again on the same port. Dropping the [`TestServer`]
//! aborts every task it started.
//!
//! Every loop is bounded (connections accepted, frames per connection, frames per batch),
//! and nothing but `127.0.0.1` is ever touched.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::AbortHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::codec::{Kind, Msg, MsgCodec};
use super::loopback::{Conns, listen};

/// Connections one listener accepts, at most.
const MAX_CONNECTIONS: usize = 4096;
/// Frames one connection reads, at most; then it closes.
const MAX_FRAMES: usize = 1 << 24;
/// Frames taken as one read batch, at most.
const MAX_BATCH: usize = 4096;

/// Bytes that do not decode as a frame: the length prefix is far beyond any limit.
pub const GARBAGE: &[u8] = &[0xff; 16];

/// How a connection answers each frame it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// One answer per frame, in arrival order ([`replies_to`]).
    Echo,
    /// The answers to each batch of frames read together (what one read brought), in
    /// reverse order: out of order, for session mode. A batch of one is answered as is.
    ReverseBatch,
    /// Read and drop: never answer.
    Silent,
    /// Answer the first frame with [`GARBAGE`], then read and drop.
    Garbage,
}

/// How the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// An orderly close: the peer reads end of stream.
    Fin,
    /// An abortive close (`SO_LINGER` 0): the peer gets a connection reset.
    Reset,
}

/// What one connection does. Build it from [`Behaviour::echo`] (or `reverse_batches`,
/// `silent`, `garbage`) and the option methods.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// How frames are answered.
    pub reply: Reply,
    /// Waited before each answer.
    pub delay: Option<Duration>,
    /// Each answer waits for the gate to let it through.
    pub gate: Option<Gate>,
    /// Written as soon as the connection is accepted.
    pub greeting: Option<Msg>,
    /// Written before each answer (even an empty one, as for a `noreply` body).
    pub before_each: Option<Msg>,
    /// Written after each answer (even an empty one).
    pub after_each: Option<Msg>,
    /// Close after this many frames were read (answers to them already queued are
    /// written first).
    pub close_after: Option<(usize, Close)>,
}

impl Behaviour {
    fn of(reply: Reply) -> Behaviour {
        Behaviour {
            reply,
            delay: None,
            gate: None,
            greeting: None,
            before_each: None,
            after_each: None,
            close_after: None,
        }
    }

    /// Echo every frame in order.
    pub fn echo() -> Behaviour {
        Behaviour::of(Reply::Echo)
    }

    /// Echo each read batch in reverse order.
    pub fn reverse_batches() -> Behaviour {
        Behaviour::of(Reply::ReverseBatch)
    }

    /// Never answer.
    pub fn silent() -> Behaviour {
        Behaviour::of(Reply::Silent)
    }

    /// Answer the first frame with garbage bytes.
    pub fn garbage() -> Behaviour {
        Behaviour::of(Reply::Garbage)
    }

    /// Wait `delay` before each answer.
    pub fn delay(mut self, delay: Duration) -> Behaviour {
        self.delay = Some(delay);
        self
    }

    /// Withhold each answer until `gate` lets it through.
    pub fn gated(mut self, gate: &Gate) -> Behaviour {
        self.gate = Some(gate.clone());
        self
    }

    /// Write `msg` on accept.
    pub fn greeting(mut self, msg: Msg) -> Behaviour {
        self.greeting = Some(msg);
        self
    }

    /// Write `msg` before each answer.
    pub fn before_each(mut self, msg: Msg) -> Behaviour {
        self.before_each = Some(msg);
        self
    }

    /// Write `msg` after each answer.
    pub fn after_each(mut self, msg: Msg) -> Behaviour {
        self.after_each = Some(msg);
        self
    }

    /// A push frame before each answer.
    pub fn push_before(self) -> Behaviour {
        self.before_each(push_frame())
    }

    /// A push frame after each answer.
    pub fn push_after(self) -> Behaviour {
        self.after_each(push_frame())
    }

    /// Close orderly (FIN) after `n` frames were read.
    pub fn close_after(mut self, n: usize) -> Behaviour {
        self.close_after = Some((n, Close::Fin));
        self
    }

    /// Reset (RST) after `n` frames were read.
    pub fn reset_after(mut self, n: usize) -> Behaviour {
        self.close_after = Some((n, Close::Reset));
        self
    }
}

/// The push frame [`Behaviour::push_before`] and [`Behaviour::push_after`] write.
pub fn push_frame() -> Msg {
    Msg::new("push").kind(Kind::Push)
}

/// The frames an echoing connection answers `req` with (before any `before_each` /
/// `after_each` frame):
///
/// * body `noreply...`: none;
/// * body `err...`: the request's id and body in a [`Kind::Error`] frame;
/// * body `parts:N:...`: `N` frames with the request's id and bodies `<body>#0` ..
///   `<body>#N-1`, all of [`Kind::More`] but the last (`N` of 0 counts as 1);
/// * anything else: the request's id and body.
pub fn replies_to(req: &Msg) -> Vec<Msg> {
    let body = &req.body[..];
    if body.starts_with(b"noreply") {
        return Vec::new();
    }
    if body.starts_with(b"err") {
        return vec![Msg::with_id(req.id, req.body.clone()).kind(Kind::Error)];
    }
    if let Some(n) = parts_count(body) {
        let n = n.max(1);
        return (0..n)
            .map(|i| {
                let part = Msg::with_id(req.id, format!("{}#{i}", req.text()));
                if i + 1 < n {
                    part.kind(Kind::More)
                } else {
                    part
                }
            })
            .collect();
    }
    vec![Msg::with_id(req.id, req.body.clone())]
}

/// `N` from a body `parts:N:...`.
fn parts_count(body: &[u8]) -> Option<usize> {
    let rest = body.strip_prefix(b"parts:")?;
    let end = rest.iter().position(|&b| b == b':')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Withholds answers until the test lets them through: each answer takes one pass, in
/// the order the answers reach the gate. Shared by every connection it is given to.
///
/// An answer waiting at the gate when its connection is killed keeps its pass.
#[derive(Debug, Clone)]
pub struct Gate(Arc<GateInner>);

#[derive(Debug)]
struct GateInner {
    /// Passes released so far.
    allowed: watch::Sender<u64>,
    /// Passes taken so far (granted or waiting).
    taken: AtomicU64,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate(Arc::new(GateInner {
            allowed: watch::Sender::new(0),
            taken: AtomicU64::new(0),
        }))
    }

    /// Lets `n` more answers through.
    pub fn release(&self, n: u64) {
        self.0.allowed.send_modify(|a| *a = a.saturating_add(n));
    }

    /// Lets every answer through, now and from now on.
    pub fn open(&self) {
        self.0.allowed.send_replace(u64::MAX);
    }

    /// Answers that reached the gate so far (let through or waiting).
    pub fn arrived(&self) -> u64 {
        self.0.taken.load(Ordering::SeqCst)
    }

    async fn pass(&self) {
        let ticket = self.0.taken.fetch_add(1, Ordering::SeqCst);
        let mut allowed = self.0.allowed.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = allowed.wait_for(|a| *a > ticket).await;
    }
}

/// What the server saw. Shared with the connection tasks; read it any time.
#[derive(Debug, Default)]
pub struct ServerStats {
    frames: AtomicUsize,
    /// Every frame read, with the index of its connection, in arrival order.
    log: Mutex<Vec<(usize, Msg)>>,
    accepted: AtomicUsize,
    open: AtomicUsize,
    eofs: AtomicUsize,
    read_errors: AtomicUsize,
}

impl ServerStats {
    fn record(&self, conn: usize, msg: &Msg) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((conn, msg.clone()));
        self.frames.fetch_add(1, Ordering::SeqCst);
    }

    /// Frames read, on every connection.
    pub fn frames(&self) -> usize {
        self.frames.load(Ordering::SeqCst)
    }

    /// Frames read, in arrival order, with the index of the connection (0 for the first
    /// one accepted) they came on.
    pub fn log(&self) -> Vec<(usize, Msg)> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Frames read, in arrival order.
    pub fn received(&self) -> Vec<Msg> {
        self.log().into_iter().map(|(_, m)| m).collect()
    }

    /// Frames read on connection `conn`, in arrival order.
    pub fn received_on(&self, conn: usize) -> Vec<Msg> {
        let log = self.log();
        log.into_iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, m)| m)
            .collect()
    }

    /// Bodies of the frames read, in arrival order, as text.
    pub fn bodies(&self) -> Vec<String> {
        let log = self.log();
        log.iter().map(|(_, m)| m.text().to_string()).collect()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Connections whose peer closed its side (the server read end of stream).
    pub fn eofs(&self) -> usize {
        self.eofs.load(Ordering::SeqCst)
    }

    /// Connections that ended with a read error (a reset, an undecodable frame).
    pub fn read_errors(&self) -> usize {
        self.read_errors.load(Ordering::SeqCst)
    }
}

type Choose = dyn Fn(usize) -> Behaviour + Send + Sync;

struct Shared {
    choose: Box<Choose>,
    stats: Arc<ServerStats>,
    kill: broadcast::Sender<Close>,
    conns: Conns,
}

/// A running test server. Stops (every task aborted) when dropped.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Mutex<Option<AbortHandle>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("stats", &self.shared.stats)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// A server on `127.0.0.1` (a free port) whose every connection behaves as `b`.
    pub async fn start(b: Behaviour) -> TestServer {
        TestServer::start_with(move |_| b.clone()).await
    }

    /// A server on `127.0.0.1` (a free port) whose `n`-th connection (0 for the first
    /// one accepted, counted over restarts) behaves as `choose(n)`.
    pub async fn start_with(
        choose: impl Fn(usize) -> Behaviour + Send + Sync + 'static,
    ) -> TestServer {
        let listener = listen(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            "the test server",
        )
        .expect("bind a test server on 127.0.0.1");
        let addr = listener.local_addr().expect("local_addr");
        let (kill, _) = broadcast::channel(16);
        let shared = Arc::new(Shared {
            choose: Box::new(choose),
            stats: Arc::new(ServerStats::default()),
            kill,
            conns: Conns::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone())).abort_handle();
        TestServer {
            addr,
            shared,
            accept: Mutex::new(Some(accept)),
        }
    }

    /// Where it listens (also after a [`restart`](TestServer::restart)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it saw so far.
    pub fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    /// What it saw, as a handle that outlives the server.
    pub fn stats_handle(&self) -> Arc<ServerStats> {
        self.shared.stats.clone()
    }

    /// Closes every open connection orderly (FIN). Asynchronous: the connections end
    /// shortly after (watch [`ServerStats::open`]). Answers not written yet are dropped.
    pub fn kill_connections(&self) {
        let _ = self.shared.kill.send(Close::Fin);
    }

    /// Resets every open connection (RST), like [`kill_connections`](Self::kill_connections).
    pub fn reset_connections(&self) {
        let _ = self.shared.kill.send(Close::Reset);
    }

    /// Stops accepting: the listener is closed (connecting is refused); open connections
    /// go on.
    pub fn stop_accepting(&self) {
        if let Some(accept) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            accept.abort();
        }
    }

    /// Stops accepting and kills every open connection (FIN).
    pub fn stop(&self) {
        self.stop_accepting();
        self.kill_connections();
    }

    /// Listens again on the same address (stopping the current listener first, if any).
    /// Retries for up to a second while the old listener's port is released.
    pub async fn restart(&self) -> io::Result<()> {
        self.stop_accepting();
        let mut last = None;
        for _ in 0..100 {
            match listen(self.addr, "the test server") {
                Ok(listener) => {
                    let task = tokio::spawn(accept_loop(listener, self.shared.clone()));
                    *self.accept.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(task.abort_handle());
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(last.unwrap_or_else(|| io::Error::other("restart failed")))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_accepting();
        self.shared.conns.abort_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for _ in 0..MAX_CONNECTIONS {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let index = shared.stats.accepted.fetch_add(1, Ordering::SeqCst);
        let behaviour = (shared.choose)(index);
        let kill = (shared.kill.subscribe(), shared.kill.subscribe());
        let stats = shared.stats.clone();
        stats.open.fetch_add(1, Ordering::SeqCst);
        let task = tokio::spawn(async move {
            serve(stream, index, behaviour, kill, &stats).await;
            stats.open.fetch_sub(1, Ordering::SeqCst);
        });
        shared.conns.add(&task);
    }
}

/// What the reading side asks of the writing side.
enum Action {
    /// The frames answering one request (possibly none), written together.
    Answer(Vec<Msg>),
    /// Raw bytes.
    Raw(Bytes),
    /// Close the connection once everything before is written.
    Close(Close),
}

/// One connection: a reader and a writer, joined in one task so that reading never
/// waits for writing (nor the reverse).
async fn serve(
    mut stream: TcpStream,
    index: usize,
    b: Behaviour,
    (kill_reader, kill_writer): (broadcast::Receiver<Close>, broadcast::Receiver<Close>),
    stats: &ServerStats,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (read, write) = stream.split();
    let reader = read_loop(read, index, &b, kill_reader, tx, stats);
    let writer = write_loop(write, &b, kill_writer, rx);
    let ((), close) = tokio::join!(reader, writer);
    match close {
        Some(Close::Reset) => {
            let _ = stream.set_zero_linger();
        }
        Some(Close::Fin) => {
            let _ = stream.shutdown().await;
        }
        None => {}
    }
    drop(stream);
}

async fn read_loop(
    read: ReadHalf<'_>,
    index: usize,
    b: &Behaviour,
    mut kill: broadcast::Receiver<Close>,
    tx: mpsc::UnboundedSender<Action>,
    stats: &ServerStats,
) {
    let mut frames = FramedRead::new(read, MsgCodec::default());
    let mut count = 0usize;
    let mut garbage_sent = false;
    let limit = b.close_after.map_or(MAX_FRAMES, |(n, _)| n.min(MAX_FRAMES));
    while count < limit {
        let first = tokio::select! {
            biased;
            _ = kill.recv() => return,
            next = frames.next() => next,
        };
        let mut batch = Vec::new();
        let mut end = false;
        for next in std::iter::once(Some(first))
            .chain(std::iter::repeat_with(|| frames.next().now_or_never()))
        {
            match next {
                Some(Some(Ok(msg))) => batch.push(msg),
                Some(Some(Err(_))) => {
                    stats.read_errors.fetch_add(1, Ordering::SeqCst);
                    end = true;
                    break;
                }
                Some(None) => {
                    stats.eofs.fetch_add(1, Ordering::SeqCst);
                    end = true;
                    break;
                }
                // Nothing more ready now: the batch is complete.
                None => break,
            }
            if batch.len() >= MAX_BATCH || count + batch.len() >= limit {
                break;
            }
        }
        count += batch.len();
        let mut answers = Vec::with_capacity(batch.len());
        for msg in &batch {
            stats.record(index, msg);
            match b.reply {
                Reply::Garbage if !garbage_sent => {
                    garbage_sent = true;
                    let _ = tx.send(Action::Raw(Bytes::from_static(GARBAGE)));
                }
                Reply::Garbage | Reply::Silent => {}
                Reply::Echo | Reply::ReverseBatch => answers.push(answer(b, msg)),
            }
        }
        if b.reply == Reply::ReverseBatch {
            answers.reverse();
        }
        for a in answers {
            let _ = tx.send(Action::Answer(a));
        }
        if end {
            return;
        }
    }
    if let Some((_, close)) = b.close_after {
        let _ = tx.send(Action::Close(close));
    }
}

/// Every frame one request gets, `before_each` and `after_each` included.
fn answer(b: &Behaviour, req: &Msg) -> Vec<Msg> {
    let mut out = Vec::new();
    out.extend(b.before_each.clone());
    out.extend(replies_to(req));
    out.extend(b.after_each.clone());
    out
}

/// Writes what the reader asks for; returns how to close the connection, if not by
/// simply dropping it.
async fn write_loop(
    write: WriteHalf<'_>,
    b: &Behaviour,
    mut kill: broadcast::Receiver<Close>,
    mut rx: mpsc::UnboundedReceiver<Action>,
) -> Option<Close> {
    let mut out = FramedWrite::new(write, MsgCodec::default());
    if let Some(greeting) = &b.greeting {
        out.send(greeting.clone()).await.ok()?;
    }
    for _ in 0..MAX_FRAMES {
        let action = tokio::select! {
            biased;
            close = kill.recv() => return Some(close.unwrap_or(Close::Fin)),
            action = rx.recv() => action?,
        };
        match action {
            Action::Answer(frames) if frames.is_empty() => {}
            Action::Answer(frames) => {
                if b.gate.is_some() || b.delay.is_some() {
                    // Nothing already answered waits behind this answer's wait.
                    out.flush().await.ok()?;
                    let wait = async {
                        if let Some(gate) = &b.gate {
                            gate.pass().await;
                        }
                        if let Some(delay) = b.delay {
                            tokio::time::sleep(delay).await;
                        }
                    };
                    tokio::select! {
                        biased;
                        close = kill.recv() => return Some(close.unwrap_or(Close::Fin)),
                        () = wait => {}
                    }
                }
                for frame in frames {
                    out.feed(frame).await.ok()?;
                }
            }
            Action::Raw(bytes) => {
                out.flush().await.ok()?;
                out.get_mut().write_all(&bytes).await.ok()?;
            }
            Action::Close(close) => {
                out.flush().await.ok()?;
                return Some(close);
            }
        }
        // Batch: flush once nothing more is ready to write.
        if rx.is_empty() {
            out.flush().await.ok()?;
        }
    }
    None
}
