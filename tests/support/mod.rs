//! Shared by the integration test suites: the test protocol ([`codec`]), an in-process
//! TCP test server ([`server`]), a fault-injecting TCP proxy ([`proxy`]) and what those
//! and the suites' own servers share ([`loopback`]), channels of the test protocol and
//! their calls ([`channel`]), an in-memory network of scripted servers for reconnecting
//! channels ([`memory`]), scripted peers on an in-memory pipe ([`script`]), a server of
//! reply bursts ([`burst`]), the peak of calls in flight under a load ([`peak`]), and
//! small helpers that keep every test bounded in time.
//!
//! Each suite includes it with `mod support;`; a suite uses only part of it, hence the
//! `dead_code` allowance.

#![allow(dead_code)]

pub mod burst;
pub mod channel;
pub mod codec;
pub mod loopback;
pub mod memory;
pub mod peak;
#[cfg(feature = "pool")]
pub mod pool;
pub mod proxy;
pub mod script;
pub mod server;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::panic::Location;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use self::codec::MsgCodec;

/// The default bound on a whole test: no test may hang.
pub const BOUND: Duration = Duration::from_secs(10);

/// Awaits `fut`, panicking with the caller's location if it takes longer than `limit`.
///
/// ```ignore
/// let reply = timeout(Duration::from_secs(2), channel.request(msg)).await;
/// ```
#[track_caller]
pub fn timeout<F: IntoFuture>(limit: Duration, fut: F) -> impl Future<Output = F::Output> {
    let at = Location::caller();
    let fut = fut.into_future();
    async move {
        match tokio::time::timeout(limit, fut).await {
            Ok(out) => out,
            Err(_) => panic!("timed out after {limit:?} (awaited at {at})"),
        }
    }
}

/// [`timeout`] with the default bound, [`BOUND`]: wrap a whole test body in it.
#[track_caller]
pub fn bounded<F: IntoFuture>(fut: F) -> impl Future<Output = F::Output> {
    timeout(BOUND, fut)
}

/// Runs `f`, failing the test if it takes longer than `secs` (of the runtime's clock);
/// the panic names `what`.
pub async fn within<F: Future>(secs: u64, what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs} s: {what}"))
}

/// Runs `test` on a paused current-thread runtime in a thread of its own, and fails
/// (naming `what`) if it has not finished within `limit` of real time. For tests of "no
/// busy loop": a task that wakes itself for ever keeps paused time from advancing, so
/// inside the runtime no timer could catch it. A panic in `test` is the test's own.
pub fn on_paused_thread<F, Fut>(limit: Duration, what: &str, test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (done, finished) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(test());
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("not finished within {limit:?} of real time: {what}")
        }
    }
}

/// Waits until `cond` holds, checking every few milliseconds; panics (with the caller's
/// location and `what`) if it does not within `limit`.
#[track_caller]
pub fn eventually(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> impl Future<Output = ()> {
    let at = Location::caller();
    let what = what.to_string();
    async move {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if cond() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met after {limit:?}: {what} (awaited at {at})"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A framed client connection to `addr` speaking the test protocol (nodelay on).
pub async fn connect(addr: SocketAddr) -> Framed<TcpStream, MsgCodec> {
    let stream = timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).expect("set_nodelay");
    Framed::new(stream, MsgCodec::default())
}

/// A loopback address free now, for a test that listens on it later; until then connects
/// to it are refused, but the kernel may hand the port to someone else meanwhile.
pub async fn free_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("local_addr")
}

/// A loopback address with nothing listening on it (connects are refused), distinct from
/// every other one this process is given.
///
/// The port stays bound, without a listen, until the process ends: a port merely bound
/// and closed goes back to the kernel, which may hand it out again at once (two calls
/// once returned the same port in CI), and a bound socket that does not listen answers
/// a connect with a reset all the same.
pub async fn refused_addr() -> SocketAddr {
    static HELD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let addr = socket.local_addr().expect("local_addr");
    HELD.lock().expect("not poisoned").push(socket);
    addr
}
