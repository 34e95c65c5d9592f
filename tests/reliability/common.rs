//! The channels every test builds and the checks every test ends with: bounds on a
//! step and on a whole test, the builder and the spawned connection task, [`finish`],
//! and the typed-error assertions.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use socketchannel::{
    Backoff, Builder, Channel, Config, ConnectionErrorKind, Endpoint, Error, Kind, MeteredFramed,
    Mode, Order, Session, State, TcpConnector,
};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tower::{BoxError, Service};

use crate::support;
use crate::support::channel::{Ch, Mode as Md, joined_within};
use crate::support::codec::{Msg, MsgCodec, TestProto};
use crate::support::proxy::ProxyStats;
use crate::support::server::ServerStats;
use crate::support::{eventually, timeout};

/// The bound on one step of a test: a call, a wait for a condition.
pub(crate) const STEP: Duration = Duration::from_secs(5);
/// The bound on a whole test.
pub(crate) const WHOLE: Duration = Duration::from_secs(40);

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs a whole test body within [`WHOLE`].
#[track_caller]
pub(crate) fn whole<F: Future>(f: F) -> impl Future<Output = F::Output> {
    timeout(WHOLE, f)
}

/// A reconnecting channel's builder for `host`: backoff 10 to 50 ms, connect and
/// handshake timeouts 2 s, `Reconnect::Once`.
pub(crate) fn builder(host: SocketAddr) -> Builder<Msg, Msg> {
    Channel::builder()
        .host(host.to_string())
        .backoff(Backoff::exponential(ms(10), ms(50)))
        .connect_timeout(Duration::from_secs(2))
        .handshake_timeout(Duration::from_secs(2))
}

/// A channel from `builder` over TCP with `connector`, and its connection task.
pub(crate) fn spawn_with<K, M>(
    builder: Builder<Msg, Msg>,
    connector: K,
    mode: M,
) -> (Ch, JoinHandle<()>)
where
    K: Service<Endpoint, Response = MeteredFramed<TcpStream, MsgCodec>> + Clone + Send + 'static,
    K::Error: Into<BoxError>,
    K::Future: Send,
    M: Mode<Msg, Msg> + Clone,
{
    let (ch, conn) = builder.pair(connector, mode).expect("valid hosts");
    (ch, tokio::spawn(conn))
}

/// A reconnecting channel over TCP in mode `md`, and its connection task.
pub(crate) fn spawn(md: Md, builder: Builder<Msg, Msg>) -> (Ch, JoinHandle<()>) {
    let tcp = TcpConnector::new(MsgCodec::default());
    match md {
        Md::Order => spawn_with(builder, tcp, Order::new(TestProto)),
        Md::Session => spawn_with(builder, tcp, Session::new(TestProto)),
    }
}

/// A channel over one TCP connection to `addr` (no reconnect), and its connection task.
pub(crate) async fn spawn_fixed<M: Mode<Msg, Msg>>(
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
pub(crate) async fn finish(
    ch: Ch,
    task: JoinHandle<()>,
    servers: &[&dyn Open],
    proxies: &[&ProxyStats],
) {
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

pub(crate) async fn settle_sockets(servers: &[&dyn Open], proxies: &[&ProxyStats]) {
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
pub(crate) trait Open {
    fn open_now(&self) -> usize;
}

impl Open for ServerStats {
    fn open_now(&self) -> usize {
        self.open()
    }
}

/// The lost connection's kind behind `err`.
pub(crate) fn why(err: &Error) -> Option<ConnectionErrorKind> {
    err.connection_error().map(|c| c.kind())
}

/// `err` is a lost connection, *may have executed*, caused by one of `causes`.
#[track_caller]
pub(crate) fn assert_mx(err: &Error, causes: &[ConnectionErrorKind]) {
    assert_eq!(err.kind(), Kind::ConnectionLost, "{err:?}");
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

/// `err` failed with its lost connection (`ConnectionLost`): *may have executed* with a
/// cause in `causes`, or *not sent* when none of its bytes had left (the crate's
/// connectors meter their bytes), and then the server executed it `times` = 0 times.
#[track_caller]
pub(crate) fn assert_lost(err: &Error, causes: &[ConnectionErrorKind], times: usize) {
    if err.is_not_sent() {
        assert_eq!(err.kind(), Kind::ConnectionLost, "{err:?}");
        assert_eq!(times, 0, "failed not sent, yet executed: {err:?}");
    } else {
        assert_mx(err, causes);
    }
}

/// `err` is a *not sent* failure of `kind`.
#[track_caller]
pub(crate) fn assert_ns(err: &Error, kind: Kind) {
    assert_eq!(err.kind(), kind, "{err:?}");
    assert!(
        err.is_not_sent() && !err.may_have_executed(),
        "expected not-sent: {err:?}"
    );
}

/// Awaits a spawned call within [`STEP`].
#[track_caller]
pub(crate) fn joined<T>(h: JoinHandle<T>) -> impl Future<Output = T> {
    joined_within(STEP, h)
}

/// Records every state the channel's watch shows (consecutive duplicates merged) until
/// the channel is gone.
pub(crate) fn record_states(ch: &Ch) -> JoinHandle<Vec<State>> {
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
