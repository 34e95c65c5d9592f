//! A fault-injecting TCP proxy on `127.0.0.1`, put between a channel and a test server.
//!
//! ```ignore
//! let server = TestServer::start(Behaviour::echo()).await;
//! let proxy = Proxy::start(server.addr(), seed).await;
//! // ... a channel connects to proxy.addr() ...
//! proxy.set(Dir::Down, Fault::Cut(7));      // the next reply is cut after 7 bytes
//! proxy.set_both(Fault::Slice);             // one byte per write, both ways
//! proxy.set(Dir::Up, Fault::Stall);         // hold requests, keep the connection
//! proxy.set_accept(Accept::Reset);          // new connections are reset on accept
//! proxy.refuse().await;                     // nothing listens: connecting is refused
//! proxy.resume().await?;                    // listening again, same port
//! ```
//!
//! # Faults
//!
//! Each direction ([`Dir::Up`]: client to server, [`Dir::Down`]: server to client) has a
//! [`Fault`], switchable at any time while traffic flows: every open connection applies
//! the new fault to the next bytes it forwards. A [`Fault::Cut`] or [`Fault::Reset`]
//! counts its bytes from the moment it was set (or from the connection's start for
//! connections opened later). New connections meet the [`Accept`] mode.
//!
//! A connection reads each direction into a bounded queue (so a stalled direction holds
//! what it read, then pushes back on its sender through TCP) and forwards from it by the
//! current fault. End of stream is forwarded as end of stream (after what is held); a
//! reset on one side resets the other.
//!
//! # Determinism
//!
//! The random faults ([`Fault::Chunks`], [`Fault::Jitter`]) draw from a small xorshift
//! generator ([`Rng`]) seeded from the proxy's seed, the connection's index and the
//! direction: the same seed and the same traffic give the same pieces and delays.
//!
//! # Bounds
//!
//! Every loop is bounded (connections, chunks per direction, bytes per chunk), nothing
//! but `127.0.0.1` is touched, and dropping the [`Proxy`] aborts every task it started
//! (the sockets close with them).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::loopback::{Conns, listen};

/// Connections one listener accepts, at most.
const MAX_CONNECTIONS: usize = 4096;
/// Chunks one direction of one connection forwards, at most.
const MAX_CHUNKS: usize = 1 << 24;
/// Bytes one read takes, at most.
const CHUNK: usize = 16 * 1024;
/// Chunks read and not yet forwarded, per direction, at most (then TCP pushes back).
const QUEUE: usize = 64;
/// How long connecting to the upstream may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// A small deterministic random number generator (xorshift64*), for seeded faults and
/// seeded tests. Not for anything but tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; mixed so that nearby seeds differ).
    pub fn new(seed: u64) -> Rng {
        let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((x ^ (x >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    /// True with probability `p` (0.0 to 1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A duration in `lo..=hi`, to the microsecond.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo_us, hi_us) = (lo.as_micros() as u64, hi.as_micros() as u64);
        Duration::from_micros(self.range(lo_us, hi_us.max(lo_us)))
    }
}

/// A direction of traffic through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to server: requests.
    Up,
    /// Server to client: replies.
    Down,
}

/// What one direction does to the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards everything as it comes.
    Pass,
    /// Forwards nothing: holds what it reads (then TCP pushes back on the sender) and
    /// keeps the connection open, until the fault changes.
    Stall,
    /// Forwards each chunk this long after it was read (order kept).
    Latency(Duration),
    /// Forwards each chunk after a random delay in `lo..=hi` after it was read (seeded;
    /// order kept: a chunk never overtakes the one before).
    Jitter(Duration, Duration),
    /// Forwards one byte per write, yielding to the scheduler between writes.
    Slice,
    /// Forwards in random pieces of 1 to `max` bytes (seeded), yielding between them.
    Chunks(usize),
    /// Forwards this many more bytes (counted from when the fault was set), then closes
    /// both sides orderly (FIN): a cut in the middle of a frame if the count says so.
    Cut(usize),
    /// Forwards this many more bytes, then resets both sides (RST, `SO_LINGER` 0).
    Reset(usize),
}

/// What the proxy does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Connects to the upstream and forwards (by the faults).
    Forward,
    /// Accepts, then closes at once (FIN); the upstream is never contacted.
    Close,
    /// Accepts, then resets at once (RST); the upstream is never contacted.
    Reset,
}

/// How a proxied connection is ended by force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Fin,
    Reset,
}

/// What the proxy did. Read it any time.
#[derive(Debug, Default)]
pub struct ProxyStats {
    accepted: AtomicUsize,
    forwarded: AtomicUsize,
    open: AtomicUsize,
    dropped_on_accept: AtomicUsize,
    upstream_failures: AtomicUsize,
    cuts: AtomicUsize,
    resets: AtomicUsize,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl ProxyStats {
    /// Connections accepted (whatever became of them).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections forwarded to the upstream.
    pub fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// Proxied connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Connections closed or reset on accept ([`Accept::Close`], [`Accept::Reset`]).
    pub fn dropped_on_accept(&self) -> usize {
        self.dropped_on_accept.load(Ordering::SeqCst)
    }

    /// Connections reset because the upstream could not be reached.
    pub fn upstream_failures(&self) -> usize {
        self.upstream_failures.load(Ordering::SeqCst)
    }

    /// Connections ended by a [`Fault::Cut`] or [`Proxy::kill_all`].
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    /// Connections ended by a [`Fault::Reset`], [`Proxy::reset_all`] or a reset from
    /// either side.
    pub fn resets(&self) -> usize {
        self.resets.load(Ordering::SeqCst)
    }

    /// Bytes forwarded in `dir`.
    pub fn bytes(&self, dir: Dir) -> u64 {
        match dir {
            Dir::Up => self.bytes_up.load(Ordering::SeqCst),
            Dir::Down => self.bytes_down.load(Ordering::SeqCst),
        }
    }
}

struct Shared {
    upstream: SocketAddr,
    seed: u64,
    up: watch::Sender<Fault>,
    down: watch::Sender<Fault>,
    accept: watch::Sender<Accept>,
    kill: broadcast::Sender<End>,
    stats: Arc<ProxyStats>,
    conns: Conns,
}

/// A running proxy. Stops (every task aborted, every socket closed) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("stats", &self.shared.stats)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy on `127.0.0.1` (a free port) in front of `upstream` (a loopback address),
    /// forwarding everything; `seed` seeds the random faults.
    pub async fn start(upstream: SocketAddr, seed: u64) -> Proxy {
        assert!(
            upstream.ip().is_loopback(),
            "the proxy only forwards to loopback"
        );
        let listener = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), "the proxy")
            .expect("bind a proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("local_addr");
        let (kill, _) = broadcast::channel(16);
        let shared = Arc::new(Shared {
            upstream,
            seed,
            up: watch::Sender::new(Fault::Pass),
            down: watch::Sender::new(Fault::Pass),
            accept: watch::Sender::new(Accept::Forward),
            kill,
            stats: Arc::new(ProxyStats::default()),
            conns: Conns::default(),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy {
            addr,
            shared,
            listener: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Where it listens (also after [`resume`](Proxy::resume)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it did so far.
    pub fn stats(&self) -> &ProxyStats {
        &self.shared.stats
    }

    /// What it did, as a handle that outlives the proxy.
    pub fn stats_handle(&self) -> Arc<ProxyStats> {
        self.shared.stats.clone()
    }

    /// Sets the fault of one direction, for every open connection and every new one.
    pub fn set(&self, dir: Dir, fault: Fault) {
        match dir {
            Dir::Up => self.shared.up.send_replace(fault),
            Dir::Down => self.shared.down.send_replace(fault),
        };
    }

    /// Sets the fault of both directions.
    pub fn set_both(&self, fault: Fault) {
        self.set(Dir::Up, fault);
        self.set(Dir::Down, fault);
    }

    /// Both directions forward everything again.
    pub fn heal(&self) {
        self.set_both(Fault::Pass);
    }

    /// The fault of one direction now.
    pub fn fault(&self, dir: Dir) -> Fault {
        match dir {
            Dir::Up => *self.shared.up.borrow(),
            Dir::Down => *self.shared.down.borrow(),
        }
    }

    /// What new connections meet.
    pub fn set_accept(&self, accept: Accept) {
        self.shared.accept.send_replace(accept);
    }

    /// Closes every open connection orderly (FIN to both sides). Asynchronous: watch
    /// [`ProxyStats::open`].
    pub fn kill_all(&self) {
        let _ = self.shared.kill.send(End::Fin);
    }

    /// Resets every open connection (RST to both sides).
    pub fn reset_all(&self) {
        let _ = self.shared.kill.send(End::Reset);
    }

    /// Stops listening: connecting is refused from when this returns. Open connections
    /// go on.
    pub async fn refuse(&self) {
        let task = self.listener.lock().await.take();
        if let Some(task) = task {
            task.abort();
            // The listener is closed once the task is gone.
            let _ = task.await;
        }
    }

    /// Listens again on the same port (a no-op if listening). Retries for up to a
    /// second while the port is released.
    pub async fn resume(&self) -> io::Result<()> {
        let mut listener = self.listener.lock().await;
        if listener.is_some() {
            return Ok(());
        }
        let mut last = None;
        for _ in 0..100 {
            match listen(self.addr, "the proxy") {
                Ok(l) => {
                    *listener = Some(tokio::spawn(accept_loop(l, self.shared.clone())));
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(last.unwrap_or_else(|| io::Error::other("resume failed")))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().take() {
            task.abort();
        }
        self.shared.conns.abort_all();
    }
}

/// Counts a connection open until dropped (also when its task is aborted).
struct OpenGuard(Arc<ProxyStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for _ in 0..MAX_CONNECTIONS {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let index = shared.stats.accepted.fetch_add(1, Ordering::SeqCst);
        let accept = *shared.accept.borrow();
        match accept {
            Accept::Forward => {}
            Accept::Close => {
                shared
                    .stats
                    .dropped_on_accept
                    .fetch_add(1, Ordering::SeqCst);
                let mut client = client;
                let _ = client.shutdown().await;
                continue;
            }
            Accept::Reset => {
                shared
                    .stats
                    .dropped_on_accept
                    .fetch_add(1, Ordering::SeqCst);
                let _ = client.set_zero_linger();
                continue;
            }
        }
        shared.stats.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(shared.stats.clone());
        let kill = shared.kill.subscribe();
        let task = tokio::spawn(serve(client, index, shared.clone(), kill, guard));
        shared.conns.add(&task);
    }
}

/// One proxied connection: both directions in one task, so that ending it can close
/// both sockets the way the fault says.
async fn serve(
    mut client: TcpStream,
    index: usize,
    shared: Arc<Shared>,
    mut kill: broadcast::Receiver<End>,
    _open: OpenGuard,
) {
    let stats = &shared.stats;
    let mut upstream =
        match tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(shared.upstream)).await {
            Ok(Ok(upstream)) => upstream,
            _ => {
                stats.upstream_failures.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_zero_linger();
                return;
            }
        };
    stats.forwarded.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let seed = shared.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let end = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let up = pipe(
            client_read,
            upstream_write,
            shared.up.subscribe(),
            Rng::new(seed),
            &stats.bytes_up,
        );
        let down = pipe(
            upstream_read,
            client_write,
            shared.down.subscribe(),
            Rng::new(seed ^ 1),
            &stats.bytes_down,
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                end = &mut up, if !up_done => match end {
                    Some(end) => break Some(end),
                    None => up_done = true,
                },
                end = &mut down, if !down_done => match end {
                    Some(end) => break Some(end),
                    None => down_done = true,
                },
                end = kill.recv() => break Some(end.unwrap_or(End::Fin)),
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    match end {
        Some(End::Reset) => {
            stats.resets.fetch_add(1, Ordering::SeqCst);
            let _ = client.set_zero_linger();
            let _ = upstream.set_zero_linger();
        }
        Some(End::Fin) => {
            stats.cuts.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        }
        None => {}
    }
}

/// One direction: reads from `src` into a bounded queue, forwards to `dst` by the
/// current fault. Returns `None` once `src` ended and everything read was forwarded
/// (with end of stream passed on), or how to end the whole connection.
async fn pipe(
    mut src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    mut fault: watch::Receiver<Fault>,
    mut rng: Rng,
    forwarded: &AtomicU64,
) -> Option<End> {
    let (tx, mut rx) = mpsc::channel::<(Bytes, Instant)>(QUEUE);
    let reader = async move {
        let mut buf = BytesMut::new();
        for _ in 0..MAX_CHUNKS {
            buf.reserve(CHUNK);
            match src.read_buf(&mut buf).await {
                Ok(0) => return None,
                Ok(_) => {
                    let chunk = buf.split().freeze();
                    if tx.send((chunk, Instant::now())).await.is_err() {
                        return None;
                    }
                }
                Err(_) => return Some(End::Reset),
            }
        }
        None
    };
    let writer = async move {
        // Bytes forwarded since the fault last changed (what `Cut` and `Reset` count).
        let mut since = 0usize;
        // When the last delayed chunk went out: a later chunk never overtakes it.
        let mut last_at = Instant::now();
        fault.borrow_and_update();
        for _ in 0..MAX_CHUNKS {
            let Some((mut chunk, read_at)) = rx.recv().await else {
                // The source ended: pass end of stream on, unless stalled (then hold it).
                while *fault.borrow_and_update() == Fault::Stall {
                    if fault.changed().await.is_err() {
                        return None;
                    }
                }
                let _ = dst.shutdown().await;
                return None;
            };
            // Bounded: each round forwards at least one byte or waits for a change.
            while !chunk.is_empty() {
                if fault.has_changed().unwrap_or(false) {
                    since = 0;
                }
                let current = *fault.borrow_and_update();
                let n = match current {
                    Fault::Pass => chunk.len(),
                    Fault::Stall => {
                        if fault.changed().await.is_err() {
                            return None;
                        }
                        // A new fault counts its bytes from now.
                        since = 0;
                        continue;
                    }
                    Fault::Latency(d) => {
                        let at = (read_at + d).max(last_at);
                        tokio::time::sleep_until(at).await;
                        last_at = at;
                        chunk.len()
                    }
                    Fault::Jitter(lo, hi) => {
                        let at = (read_at + rng.duration(lo, hi)).max(last_at);
                        tokio::time::sleep_until(at).await;
                        last_at = at;
                        chunk.len()
                    }
                    Fault::Slice => 1,
                    Fault::Chunks(max) => 1 + rng.below(max.max(1) as u64) as usize,
                    Fault::Cut(limit) | Fault::Reset(limit) => {
                        let left = limit.saturating_sub(since);
                        if left == 0 {
                            return Some(if matches!(current, Fault::Cut(_)) {
                                End::Fin
                            } else {
                                End::Reset
                            });
                        }
                        left
                    }
                };
                let n = n.min(chunk.len());
                if dst.write_all(&chunk[..n]).await.is_err() {
                    return Some(End::Reset);
                }
                chunk.advance(n);
                since += n;
                forwarded.fetch_add(n as u64, Ordering::SeqCst);
                if matches!(current, Fault::Slice | Fault::Chunks(_)) {
                    tokio::task::yield_now().await;
                }
                if let Fault::Cut(limit) | Fault::Reset(limit) = current
                    && since >= limit
                {
                    return Some(if matches!(current, Fault::Cut(_)) {
                        End::Fin
                    } else {
                        End::Reset
                    });
                }
            }
        }
        None
    };
    tokio::pin!(reader, writer);
    let mut reader_done = false;
    loop {
        tokio::select! {
            end = &mut reader, if !reader_done => match end {
                Some(end) => return Some(end),
                // The writer forwards what is queued, then the end of stream.
                None => reader_done = true,
            },
            end = &mut writer => return end,
        }
    }
}

/// A loopback address whose connects never complete (the listen queue is full and the
/// listener never accepts, so the kernel drops every new SYN): a blackholed host, for
/// connect timeouts. Dropping it refuses connects again.
pub struct Blackhole {
    addr: SocketAddr,
    _listener: TcpListener,
    _held: Vec<TcpStream>,
}

impl std::fmt::Debug for Blackhole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blackhole")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Blackhole {
    /// A blackholed address on `127.0.0.1`. Checks that a connect to it hangs.
    pub async fn start() -> Blackhole {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("bind a blackhole on 127.0.0.1");
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().expect("local_addr");
        let mut held = Vec::new();
        // Fill the listen queue (a backlog of 0 holds one connection, or a few).
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => held.push(stream),
                Ok(Err(e)) => panic!("blackhole probe failed: {e}"),
                // A connect that hangs: the queue is full.
                Err(_) => {
                    return Blackhole {
                        addr,
                        _listener: listener,
                        _held: held,
                    };
                }
            }
        }
        panic!("could not fill the listen queue of {addr}");
    }

    /// The address whose connects hang.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
