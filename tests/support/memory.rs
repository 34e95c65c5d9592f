//! An in-memory network for reconnecting channels: a connector (a `tower::service_fn`
//! over [`Endpoint`]s) that opens a `tokio::io::duplex` pipe on every connect and runs a
//! scripted server, the test's own async function, on its far end.
//!
//! ```ignore
//! let net = Net::new(|_endpoint: Endpoint, mut io: Io| async move {
//!     while let Some(Ok(req)) = io.next().await {
//!         if io.send(req).await.is_err() {
//!             break;
//!         }
//!     }
//! });
//! net.down("a:1", true); // connects to a:1 are refused
//! let ch = net.channel(Mode::Order, Channel::builder().host("a:1").backup("b:2"));
//! assert_eq!(ch.request(msg("x")).await?.text(), "x");
//! assert_eq!(net.tried(), ["a:1", "b:2"]);
//! ```
//!
//! An endpoint can refuse connects ([`Net::down`]), never complete them ([`Net::hang`]),
//! or lose every open connection ([`Net::kill`]: the client reads end of stream). Every
//! connect can take a while ([`Net::delay`]) or let the server run before it completes
//! ([`Net::server_first`]). Every attempt is counted ([`Net::connects`]) and recorded
//! ([`Net::tried`]).
//!
//! No socket is involved: the suites run it under paused time.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socketchannel::{Builder, Endpoint, Order, Session};
use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio_util::codec::Framed;
use tower::Service;

use super::channel::{Ch, Mode};
use super::codec::{Msg, MsgCodec, TestProto};

/// The server's end of a connection (and the client's).
pub type Io = Framed<DuplexStream, MsgCodec>;

type Script = Arc<dyn Fn(Endpoint, Io) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What a server read, in order (for [`echo_after`]).
pub type Seen = Arc<Mutex<Vec<String>>>;

/// A network of echo servers that record what they read in `seen` and answer each
/// request `delay` later (in order).
pub fn echo_after(delay: Duration, seen: &Seen) -> Net {
    let seen = seen.clone();
    Net::new(move |_ep: Endpoint, mut io: Io| {
        let seen = seen.clone();
        async move {
            use futures::{SinkExt, StreamExt};
            while let Some(Ok(req)) = io.next().await {
                seen.lock().unwrap().push(req.text().to_string());
                tokio::time::sleep(delay).await;
                if io.send(req).await.is_err() {
                    break;
                }
            }
        }
    })
}

/// The in-memory network; clones share it.
#[derive(Clone)]
pub struct Net(Arc<Inner>);

struct Inner {
    script: Script,
    connects: AtomicUsize,
    tried: Mutex<Vec<String>>,
    down: Mutex<HashSet<String>>,
    hang: Mutex<HashSet<String>>,
    /// Slept at the start of every connect (`None`: no sleep at all).
    delay: Mutex<Option<Duration>>,
    /// Let the server task run before the connect completes (a greeting is then already
    /// in the pipe when the client gets it, as it can be over a real network).
    server_first: AtomicBool,
    /// Per endpoint: bumped to drop every open connection to it.
    kills: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Net {
    /// A network whose every connection is served by `script(endpoint, io)`.
    pub fn new<F, Fut>(script: F) -> Net
    where
        F: Fn(Endpoint, Io) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Net(Arc::new(Inner {
            script: Arc::new(move |ep, io| Box::pin(script(ep, io))),
            connects: AtomicUsize::new(0),
            tried: Mutex::new(Vec::new()),
            down: Mutex::new(HashSet::new()),
            hang: Mutex::new(HashSet::new()),
            delay: Mutex::new(None),
            server_first: AtomicBool::new(false),
            kills: Mutex::new(HashMap::new()),
        }))
    }

    /// Connect attempts so far, to any endpoint.
    pub fn connects(&self) -> usize {
        self.0.connects.load(Ordering::SeqCst)
    }

    /// Connect attempts to `endpoint` so far.
    pub fn count(&self, endpoint: &str) -> usize {
        self.tried().iter().filter(|e| *e == endpoint).count()
    }

    /// Every endpoint tried, in order.
    pub fn tried(&self) -> Vec<String> {
        self.0.tried.lock().unwrap().clone()
    }

    /// Connects to `endpoint` are refused (`down`), or no longer.
    pub fn down(&self, endpoint: &str, down: bool) {
        let mut set = self.0.down.lock().unwrap();
        if down {
            set.insert(endpoint.to_string());
        } else {
            set.remove(endpoint);
        }
    }

    /// Connects to `endpoint` never complete.
    pub fn hang(&self, endpoint: &str) {
        self.0.hang.lock().unwrap().insert(endpoint.to_string());
    }

    /// `endpoint` goes down and every open connection to it is dropped.
    pub fn kill(&self, endpoint: &str) {
        self.down(endpoint, true);
        if let Some(kill) = self.0.kills.lock().unwrap().get(endpoint) {
            kill.send_modify(|g| *g += 1);
        }
    }

    /// Every connect takes this long before it succeeds or fails (even a zero delay is a
    /// trip through the timer).
    pub fn delay(&self, d: Duration) {
        *self.0.delay.lock().unwrap() = Some(d);
    }

    /// The server runs before the connect completes.
    pub fn server_first(&self) {
        self.0.server_first.store(true, Ordering::SeqCst);
    }

    async fn connect(self, endpoint: Endpoint) -> io::Result<Io> {
        let key = endpoint.to_string();
        self.0.connects.fetch_add(1, Ordering::SeqCst);
        self.0.tried.lock().unwrap().push(key.clone());
        let delay = *self.0.delay.lock().unwrap();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if self.0.hang.lock().unwrap().contains(&key) {
            std::future::pending::<()>().await;
        }
        if self.0.down.lock().unwrap().contains(&key) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{key} refused"),
            ));
        }
        let mut killed = self
            .0
            .kills
            .lock()
            .unwrap()
            .entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        let (client, server) = tokio::io::duplex(64 * 1024);
        let serve = (self.0.script)(endpoint, Framed::new(server, MsgCodec::default()));
        tokio::spawn(async move {
            tokio::select! {
                () = serve => {}
                // Dropping the server's end: the client reads end of stream.
                _ = killed.changed() => {}
            }
        });
        if self.0.server_first.load(Ordering::SeqCst) {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
        Ok(Framed::new(client, MsgCodec::default()))
    }

    /// The connector: a `tower::service_fn` connecting over this network.
    pub fn connector(
        &self,
    ) -> impl Service<Endpoint, Response = Io, Error = io::Error, Future: Send> + Clone + Send + 'static
    {
        let net = self.clone();
        tower::service_fn(move |endpoint: Endpoint| net.clone().connect(endpoint))
    }

    /// A channel over this network, in order or session mode.
    pub fn channel(&self, mode: Mode, builder: Builder<Msg, Msg>) -> Ch {
        match mode {
            Mode::Order => builder.connector(self.connector(), Order::new(TestProto)),
            Mode::Session => builder.connector(self.connector(), Session::new(TestProto)),
        }
        .expect("valid hosts")
    }
}
