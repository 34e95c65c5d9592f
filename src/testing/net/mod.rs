//! An in-memory network of scripted hosts, and the log of what their servers did.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::codec::{Decoder, Encoder};

use super::Trace;
use crate::meter::MeteredFramed;
use crate::reconnect::Endpoint;

mod kill;
mod pipe;
mod serve;

use self::kill::Kill;
pub use self::pipe::Pipe;
use self::pipe::Raw;

/// How a host behaves, from the moment it is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// Accepts, serves every request.
    Up,
    /// Refuses connects.
    Refuse,
    /// Connects never complete (the client's connect timeout ends them).
    Blackhole,
    /// Up for `up`, then refusing (and dropping its connections) for `down`, in turn.
    Flap {
        /// How long it stays up.
        up: Duration,
        /// How long it stays down.
        down: Duration,
    },
    /// Every reply frame waits this much longer.
    Slow(Duration),
    /// Accepts and reads, executes, never writes a byte.
    Silent,
    /// Closes the connection after writing this many reply frames.
    CrashAfter(u32),
    /// Writes this many reply frames, then half of the next one, then closes.
    ResetMidFrame(u32),
    /// Writes reply bytes a few at a time: `bytes` every `every`.
    Trickle {
        /// Bytes per write.
        bytes: usize,
        /// Time between writes.
        every: Duration,
    },
    /// Writes one frame ([`Server::refusal`]) as soon as it accepts, then closes (Redis'
    /// `-ERR max number of clients reached`).
    OneFrame,
}

/// One connection, as its server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The host it was made to (`"host:port"`).
    pub host: String,
    /// Its number, unique in the network, from 1.
    pub conn: u64,
    /// The client that made it (the number given to [`Net::connector`]).
    pub client: usize,
}

/// What a request is, for the log and the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// The nonce of the call it belongs to, if it has one.
    pub nonce: Option<u64>,
    /// Sent by a handshake.
    pub handshake: bool,
    /// A short text for the event log.
    pub text: String,
}

/// What the server did with one request.
#[derive(Debug)]
pub struct Served<Resp> {
    /// Did it execute anything (the last part of a multi-part request does, the others
    /// only are read)?
    pub executed: bool,
    /// The reply frames, each written after its delay.
    pub replies: Vec<(Duration, Resp)>,
}

/// The server side of your protocol: decodes requests with your codec and answers them.
pub trait Server: Send + Sync + 'static {
    /// A request as the server decodes it.
    type Req: Send + 'static;
    /// A reply frame as the server encodes it.
    type Resp: Send + 'static;
    /// The server's codec.
    type Codec: Decoder<Item = Self::Req, Error: Send>
        + Encoder<Self::Resp, Error: Send>
        + Clone
        + Send
        + Sync
        + 'static;

    /// The codec for a new connection.
    fn codec(&self) -> Self::Codec;

    /// What a request is, for the log.
    fn describe(&self, req: &Self::Req) -> Described;

    /// Serves one request read on `conn`.
    fn serve(&self, conn: &ConnInfo, req: Self::Req) -> Served<Self::Resp>;

    /// The one frame a [`Behavior::OneFrame`] host writes before closing.
    fn refusal(&self, conn: &ConnInfo) -> Option<Self::Resp> {
        let _ = conn;
        None
    }

    /// The frame a host set to drain ([`Net::drain_after`]) writes to ask the client to
    /// drain `conn` (HTTP/2's `GOAWAY`); `None`: it writes none.
    fn drain_notice(&self, conn: &ConnInfo) -> Option<Self::Resp> {
        let _ = conn;
        None
    }
}

/// What a server did (one entry of the [`ServerLog`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A connect attempt and how it went (`None`: accepted).
    Connect(Option<String>),
    /// A connect attempt to the dead address a host's name resolves to first
    /// ([`Net::dead_first_address`]), and how it went.
    DeadAddress(&'static str),
    /// A request read.
    Read(Described),
    /// A request executed.
    Executed(Described),
    /// Reply bytes written.
    Wrote(usize),
    /// The server's drain notice written ([`Net::drain_after`]), after its bytes'
    /// `Wrote`.
    DrainNotice,
    /// The server closed the connection (or lost it).
    Closed(&'static str),
}

/// One entry of the [`ServerLog`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Virtual time since the network was made.
    pub at: Duration,
    /// The connection (0 for a refused connect).
    pub conn: u64,
    /// Its host.
    pub host: String,
    /// The client that connected.
    pub client: usize,
    /// What happened.
    pub what: What,
}

/// What every server of a [`Net`] did, in order.
#[derive(Debug, Clone, Default)]
pub struct ServerLog(Arc<Mutex<Vec<Record>>>);

impl ServerLog {
    fn push(&self, r: Record) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }

    /// Every entry so far.
    pub fn records(&self) -> Vec<Record> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many times the request with this nonce was executed, by any server.
    pub fn executions(&self, nonce: u64) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| matches!(&r.what, What::Executed(d) if d.nonce == Some(nonce)))
            .count()
    }
}

struct HostState {
    behavior: Behavior,
    since: tokio::time::Instant,
    kill: Arc<Kill>,
}

struct Inner<S: Server, CC> {
    server: S,
    client_codec: CC,
    trace: Trace,
    log: ServerLog,
    latency: Duration,
    max_connects: usize,
    state: Mutex<NetState>,
}

struct NetState {
    hosts: BTreeMap<String, HostState>,
    /// The hosts whose new connections write a drain notice, after this many reply
    /// frames ([`Net::drain_after`]).
    drains: BTreeMap<String, u32>,
    cuts: BTreeMap<String, usize>,
    /// The hosts whose names resolve to a dead address first ([`Net::dead_first_address`]).
    dead_first: BTreeMap<String, Behavior>,
    /// How long an attempt has before the next address's starts.
    eyeballs: Duration,
    tls: Option<Tls>,
    next_conn: u64,
    connects: usize,
}

/// The TLS a network speaks ([`Net::tls`]).
#[cfg(feature = "rustls")]
#[derive(Clone)]
struct Tls {
    client: Arc<crate::rustls::ClientConfig>,
    server: tokio_rustls::TlsAcceptor,
    /// `None`: the endpoint's host, as `TlsConnector` takes it without
    /// `server_name`.
    name: Option<crate::rustls::pki_types::ServerName<'static>>,
}

/// No TLS without the feature `rustls`.
#[cfg(not(feature = "rustls"))]
#[derive(Clone)]
enum Tls {}

/// An in-memory network of named hosts served by a [`Server`]; clones share it.
///
/// A host that was never [`set`](Net::set) refuses connects. Every connect takes a
/// latency of virtual time (1 ms by default, see [`Net::with`]), so even a client that
/// reconnects in a hot loop lets time pass; past a cap (5,000 by default) connects never
/// complete (so a hot loop cannot make a test run forever).
pub struct Net<S: Server, CC> {
    inner: Arc<Inner<S, CC>>,
}

impl<S: Server, CC> Clone for Net<S, CC> {
    fn clone(&self) -> Self {
        Net {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Server, CC> fmt::Debug for Net<S, CC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net").finish_non_exhaustive()
    }
}

/// A connect attempt of a [`Net`]'s connector: the client's end of an in-memory
/// connection, framed with the client codec.
pub type Connecting<CC> = Pin<Box<dyn Future<Output = io::Result<MeteredFramed<Pipe, CC>>> + Send>>;

impl<S, CC> Net<S, CC>
where
    S: Server,
    CC: Clone + Send + Sync + 'static,
{
    /// A network served by `server`; clients frame their ends with `client_codec`.
    pub fn new(server: S, client_codec: CC, trace: Trace) -> Self {
        Self::with(server, client_codec, trace, Duration::from_millis(1), 5_000)
    }

    /// [`Net::new`] with its connect latency and its cap on connects.
    pub fn with(
        server: S,
        client_codec: CC,
        trace: Trace,
        latency: Duration,
        max_connects: usize,
    ) -> Self {
        Net {
            inner: Arc::new(Inner {
                server,
                client_codec,
                trace,
                log: ServerLog::default(),
                latency,
                max_connects,
                state: Mutex::new(NetState {
                    hosts: BTreeMap::new(),
                    drains: BTreeMap::new(),
                    cuts: BTreeMap::new(),
                    dead_first: BTreeMap::new(),
                    eyeballs: Duration::from_millis(250),
                    tls: None,
                    next_conn: 1,
                    connects: 0,
                }),
            }),
        }
    }

    /// The log of what the servers did.
    pub fn log(&self) -> ServerLog {
        self.inner.log.clone()
    }

    /// Connect attempts so far.
    pub fn connects(&self) -> usize {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .connects
    }

    /// Sets how `host` (`"host:port"`) behaves from now on. Open connections keep the
    /// behaviour they were accepted with (use [`kill`](Net::kill) to drop them).
    pub fn set(&self, host: &str, behavior: Behavior) {
        self.inner.trace.log(format!("net: {host} -> {behavior:?}"));
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        match st.hosts.get_mut(host) {
            Some(h) => {
                h.behavior = behavior;
                h.since = now;
            }
            None => {
                st.hosts.insert(
                    host.to_string(),
                    HostState {
                        behavior,
                        since: now,
                        kill: Arc::default(),
                    },
                );
            }
        }
    }

    /// Makes the client's end of every new connection to `host` take only its first
    /// `after` bytes, then fail each write with a broken pipe (a connection that dies
    /// while the client writes: the server reads, and executes, the whole frames among
    /// those bytes, then the end of the stream); `None`: no cut. Open connections keep
    /// the option they were accepted with.
    pub fn cut_client_writes(&self, host: &str, after: Option<usize>) {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = match after {
            Some(n) => st.cuts.insert(host.to_string(), n),
            None => st.cuts.remove(host),
        };
        if before != after {
            self.inner.trace.log(format!(
                "net: {host} cuts client writes after {after:?} byte(s)"
            ));
        }
    }

    /// Makes every new connection to `host` write the server's
    /// [`drain_notice`](Server::drain_notice) once it has written `after` reply frames
    /// (`Some(0)`: as soon as it accepts), then go on reading and answering as its
    /// behaviour says; `None`: no notice. Open connections keep the option they were
    /// accepted with. A [`Behavior::OneFrame`] or [`Behavior::Silent`] host writes none.
    pub fn drain_after(&self, host: &str, after: Option<u32>) {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = match after {
            Some(n) => st.drains.insert(host.to_string(), n),
            None => st.drains.remove(host),
        };
        if before != after {
            self.inner
                .trace
                .log(format!("net: {host} drains after {after:?} frame(s)"));
        }
    }

    /// Makes `host`'s name resolve to two addresses: first a dead one that behaves as
    /// `dead` ([`Behavior::Blackhole`]; anything else refuses), then the host itself.
    /// A connect races them as the crate's `TcpConnector` races a name's addresses
    /// (RFC 8305, with the same code): the host's attempt starts when the dead one has
    /// not connected within the [happy eyeballs delay](Net::happy_eyeballs_delay), or
    /// at once when it fails. The server log records the dead one's attempts as
    /// [`What::DeadAddress`]. `None`: the name resolves to the host alone.
    pub fn dead_first_address(&self, host: &str, dead: Option<Behavior>) {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = match dead.clone() {
            Some(b) => st.dead_first.insert(host.to_string(), b),
            None => st.dead_first.remove(host),
        };
        if before != dead {
            self.inner.trace.log(format!(
                "net: {host} resolves to a dead address first: {dead:?}"
            ));
        }
    }

    /// How long a connect attempt to a name's address has before the next address's
    /// starts ([`dead_first_address`](Net::dead_first_address)); 250 ms by default, as
    /// RFC 8305 recommends and `TcpConnector` uses.
    pub fn happy_eyeballs_delay(&self, delay: Duration) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .eyeballs = delay;
    }

    /// Makes every new connection speak TLS: the client's end runs a session with
    /// `client` checking the certificate against `name`, or with `None` against the
    /// endpoint's host name as `TlsConnector` does (a Unix endpoint then fails its
    /// connects with `InvalidInput`, as there) (with the code of the crate's
    /// `TlsConnector`, metered the same way, over the in-memory stream whose writes
    /// [`cut_client_writes`](Net::cut_client_writes) cuts), the server's end accepts
    /// with `server`, and the server reads and writes through it. A handshake that
    /// fails fails the connect. `Behavior::Silent` hosts still answer the TLS
    /// handshake; `Behavior::OneFrame` ones write their frame through the session.
    #[cfg(feature = "rustls")]
    pub fn tls(
        &self,
        client: Arc<crate::rustls::ClientConfig>,
        server: Arc<crate::rustls::ServerConfig>,
        name: Option<crate::rustls::pki_types::ServerName<'static>>,
    ) {
        self.inner.trace.log("net: TLS on every new connection");
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tls = Some(Tls {
            client,
            server: tokio_rustls::TlsAcceptor::from(server),
            name,
        });
    }

    /// Drops every open connection to `host` (its clients read end of stream).
    pub fn kill(&self, host: &str) {
        self.inner.trace.log(format!("net: kill {host}"));
        let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = st.hosts.get(host) {
            h.kill.fire();
        }
    }

    fn record(&self, info: &ConnInfo, what: What) {
        self.inner.log.push(Record {
            at: self.inner.trace.now(),
            conn: info.conn,
            host: info.host.clone(),
            client: info.client,
            what,
        });
    }

    /// The connector for client number `client`: a `tower::Service<Endpoint>` that
    /// opens an in-memory connection framed with the client codec.
    pub fn connector(
        &self,
        client: usize,
    ) -> impl tower::Service<
        Endpoint,
        Response = MeteredFramed<Pipe, CC>,
        Error = io::Error,
        Future = Connecting<CC>,
    > + Clone
    + Send
    + 'static {
        let net = self.clone();
        tower::service_fn(move |endpoint: Endpoint| {
            let net = net.clone();
            Box::pin(async move { net.dial(client, endpoint).await }) as Connecting<CC>
        })
    }

    /// Connects to `endpoint`'s host, racing a dead first address if its name has one.
    async fn dial(self, client: usize, endpoint: Endpoint) -> io::Result<MeteredFramed<Pipe, CC>> {
        let host = endpoint.to_string();
        let (dead, delay, tls) = {
            let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            (
                st.dead_first.get(&host).cloned(),
                st.eyeballs,
                st.tls.clone(),
            )
        };
        // As `TlsConnector` does, before it dials: no name, no attempt.
        #[cfg(feature = "rustls")]
        if let Some(Tls { name: None, .. }) = tls {
            crate::connect::tls::server_name(&endpoint)?;
        }
        #[cfg(not(feature = "rustls"))]
        let _ = tls;
        let Some(dead) = dead else {
            return self.connect(client, endpoint).await;
        };
        let addresses = vec![Some(dead), None];
        crate::connect::race::race(addresses, delay, |address| match address {
            Some(dead) => Box::pin(self.clone().dead(client, host.clone(), dead)) as Connecting<CC>,
            None => Box::pin(self.clone().connect(client, endpoint.clone())),
        })
        .await
    }

    /// An attempt to a dead address of `host`'s name: it hangs or is refused.
    async fn dead(
        self,
        client: usize,
        host: String,
        dead: Behavior,
    ) -> io::Result<MeteredFramed<Pipe, CC>> {
        tokio::time::sleep(self.inner.latency).await;
        let capped = {
            let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.connects += 1;
            st.connects > self.inner.max_connects
        };
        let why = match dead {
            _ if capped => "connect cap reached: hangs",
            Behavior::Blackhole => "black hole: hangs",
            _ => "refused",
        };
        self.inner.trace.log(format!(
            "net: client {client} -> {host} (dead first address): {why}"
        ));
        let info = ConnInfo {
            host: host.clone(),
            conn: 0,
            client,
        };
        self.record(&info, What::DeadAddress(why));
        if why.ends_with("hangs") {
            std::future::pending::<()>().await;
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("{host}'s first address {why}"),
        ))
    }

    async fn connect(
        self,
        client: usize,
        endpoint: Endpoint,
    ) -> io::Result<MeteredFramed<Pipe, CC>> {
        let host = endpoint.to_string();
        tokio::time::sleep(self.inner.latency).await;
        let (decision, conn, kill, drain, cut, tls) = {
            let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.connects += 1;
            let drain = st.drains.get(&host).copied();
            let cut = st.cuts.get(&host).copied();
            let tls = st.tls.clone();
            let capped = st.connects > self.inner.max_connects;
            let conn = st.next_conn;
            let now = tokio::time::Instant::now();
            let (decision, kill) = match st.hosts.get(&host) {
                _ if capped => (Err("connect cap reached: hangs"), None),
                None => (Err("no such host"), None),
                Some(h) => match &h.behavior {
                    Behavior::Refuse => (Err("refused"), None),
                    Behavior::Blackhole => (Err("black hole: hangs"), None),
                    Behavior::Flap { up, down } => {
                        let period = (*up + *down).max(Duration::from_millis(1));
                        let into =
                            now.saturating_duration_since(h.since).as_nanos() % period.as_nanos();
                        if into < up.as_nanos() {
                            let left = Duration::from_nanos((up.as_nanos() - into) as u64);
                            (Ok((h.behavior.clone(), Some(left))), Some(h.kill.clone()))
                        } else {
                            (Err("refused (flapping)"), None)
                        }
                    }
                    b => (Ok((b.clone(), None)), Some(h.kill.clone())),
                },
            };
            if decision.is_ok() {
                st.next_conn += 1;
            }
            (decision, conn, kill, drain, cut, tls)
        };
        let info = ConnInfo {
            host: host.clone(),
            conn: if decision.is_ok() { conn } else { 0 },
            client,
        };
        match decision {
            Err(why) => {
                self.inner
                    .trace
                    .log(format!("net: client {client} -> {host}: {why}"));
                self.record(&info, What::Connect(Some(why.to_string())));
                if why.ends_with("hangs") {
                    std::future::pending::<()>().await;
                }
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("{host} {why}"),
                ))
            }
            Ok((behavior, up_for)) => {
                self.inner.trace.log(format!(
                    "net: client {client} -> {host}: conn {conn} accepted"
                ));
                self.record(&info, What::Connect(None));
                let (client_end, server_end) = tokio::io::duplex(64 * 1024);
                let kill = kill.expect("a live host has a kill switch");
                let seen = kill.now();
                let net = self.clone();
                let server_tls = tls.clone();
                tokio::spawn(async move {
                    let info2 = info.clone();
                    let why = tokio::select! {
                        biased;
                        _ = kill.killed(seen) => "killed",
                        _ = async {
                            match up_for {
                                Some(d) => tokio::time::sleep(d).await,
                                None => std::future::pending().await,
                            }
                        } => "flapped down",
                        why = net.accept(&info2, server_tls, server_end, behavior, drain) => why,
                    };
                    net.inner
                        .trace
                        .log(format!("net: conn {} closed: {why}", info.conn));
                    net.record(&info, What::Closed(why));
                });
                let raw = Raw::new(client_end, cut);
                let io = match tls {
                    #[cfg(feature = "rustls")]
                    Some(tls) => {
                        let name = match tls.name {
                            Some(name) => name,
                            None => crate::connect::tls::server_name(&endpoint)?,
                        };
                        let tls = crate::connect::tls::handshake(tls.client, name, raw).await?;
                        self.inner.trace.log(format!(
                            "net: conn {conn}: TLS handshake done, the client wrote {} byte(s)",
                            tls.get_ref().0.get_ref().wrote()
                        ));
                        Pipe::tls(tls)
                    }
                    #[cfg(not(feature = "rustls"))]
                    Some(never) => match never {},
                    None => Pipe::plain(raw),
                };
                // Framed as the crate's connectors frame a socket.
                Ok(crate::connect::frame(
                    io,
                    self.inner.client_codec.clone(),
                    crate::connect::BUFFER,
                ))
            }
        }
    }
}
