//! Redis Sentinel: a [`Channel`] that always talks to the current master of a set
//! monitored by sentinels, and follows a failover while connected. Copy the first part
//! of this file (down to "Set-up for the example and the tests") next to
//! `examples/common/redis.rs` (the RESP codec and [`Redis`] protocol it uses).
//!
//! ```ignore
//! let sentinel = Sentinel::new("mymaster", ["10.0.0.1:26379", "10.0.0.2:26379"])?;
//! let master = sentinel.connect(|builder| builder.name("cache"))?;
//! let channel = master.channel(); // a Channel<Frame, Frame>: clone it, call it
//! channel.request(cmd(["SET", "k", "v"])).await?;
//! // Keep `master` alive as long as the channel is used: it owns the watchers.
//! ```
//!
//! # How it works
//!
//! One data channel and, beside it, one watcher channel per sentinel.
//!
//! **The data channel**'s hosts are the sentinels. Its [handshake](Builder::handshake)
//! runs on every new connection, and tells the two kinds of host apart by address:
//!
//! 1. On a sentinel it asks `SENTINEL get-master-addr-by-name <name>` and returns
//!    [`Handshake::Redirect`] to the address named: the connection is dropped and that
//!    address is tried next, in the same connect pass. A sentinel that does not know the
//!    name fails its host ([`SentinelError::UnknownMaster`]): the next sentinel is
//!    asked.
//! 2. On the address a sentinel (or a watcher) just named, it sends `AUTH` if a
//!    password is set, then `ROLE`, and is [`Handshake::Ready`] only if the node says
//!    `master`. A replica, or a sentinel's stale answer, fails the host
//!    ([`SentinelError::NotMaster`]): the pass goes on to the next sentinel, and after
//!    the last, the backoff applies.
//! 3. On any other address it redirects to the first sentinel. The crate tries the host
//!    that last connected first in every later pass; for a sentinel set that is the last
//!    master, which after a failover may still say `master` for a while (until a
//!    sentinel demotes it) and take writes that the new master never sees. So a
//!    reconnect does not trust it: it asks the sentinels again, as Redis's guidelines for
//!    sentinel clients say ("every time a reconnection is needed, the client should
//!    resolve again the address using Sentinels").
//!
//! **The watchers** are plain pub/sub channels ([`Redis::subscriber`]), one per
//! sentinel (as Jedis does: a sentinel that is down or slow to hear of a failover does
//! not hold the switch back), each subscribed to `+switch-master` by its handshake, so
//! again after every reconnect, and pinged when idle, so a silent sentinel is left. When
//! a sentinel says `+switch-master <name> <old ip> <old port> <new ip> <new port>`, the
//! watcher vouches for the new address (the handshake checks its `ROLE` without asking a
//! sentinel first) and calls [`Channel::change_host`]: new calls go to the new master
//! at once, calls already written finish on the old connection (within the drain
//! timeout). Without the watchers the channel would stay on the old master until it is
//! demoted: after a `SENTINEL FAILOVER` (the old master stays up) a sentinel waits about
//! 10 s before it does, and the writes it took meanwhile are lost.
//!
//! **A call's outcome** during a failover is one of the crate's typed errors, never
//! another caller's reply: *not sent* ([`Kind::ConnectFailed`]) while no master can be
//! reached, *may have executed* ([`Kind::ConnectionLost`]) for calls in flight on a
//! master that died. A write that reaches a demoted master anyway (an operator's
//! `REPLICAOF`) gets `READONLY`: the protocol here, [`OnMaster`], makes that
//! [`Verdict::WrongServer`], so that call fails *not sent* and the channel leaves the
//! node and resolves the master again.
//!
//! What no client can fix: Redis replication is asynchronous, so writes acknowledged by
//! the old master just before it was demoted may be missing on the new one.
//!
//! # Not covered here
//!
//! Sentinels that need a password (send `AUTH` before the query, in
//! `Inner::handshake`, and before `SUBSCRIBE` in the watcher's handshake), TLS (build
//! the channels with the crate's `TlsConnector`), refreshing the sentinel list from
//! `SENTINEL sentinels <name>`, and reading from replicas.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socketchannel::{
    Backoff, BoxError, Builder, Channel, Config, Endpoint, Handshake, InvalidEndpoint, Protocol,
    Reconnect, State, Verdict,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::redis::{Frame, PubSub, Redis, RespCodec, cmd, text};

/// The pub/sub channel on which a sentinel announces a new master.
pub const SWITCH_MASTER: &str = "+switch-master";

/// Where the sentinels are and which master to follow: makes a [`MasterChannel`].
#[derive(Debug, Clone)]
pub struct Sentinel {
    name: String,
    sentinels: Vec<Endpoint>,
    password: Option<String>,
}

impl Sentinel {
    /// The master called `name` (as in `sentinel monitor <name> ...`), through these
    /// sentinels (`"host:port"`, asked in this order).
    ///
    /// # Errors
    ///
    /// A sentinel address that does not parse, or none given.
    pub fn new<I, S>(name: impl Into<String>, sentinels: I) -> Result<Sentinel, BoxError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let sentinels = sentinels
            .into_iter()
            .map(|s| s.as_ref().parse::<Endpoint>())
            .collect::<Result<Vec<_>, InvalidEndpoint>>()?;
        if sentinels.is_empty() {
            return Err("no sentinel given".into());
        }
        Ok(Sentinel {
            name: name.into(),
            sentinels,
            password: None,
        })
    }

    /// The password of the master (`requirepass`): sent as `AUTH` on every connection
    /// to it, before `ROLE`.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The channel to the current master, and its watchers. Call it on a tokio runtime
    /// (the watchers' tasks are spawned on it).
    ///
    /// `customize` gets the data channel's builder, with the sentinels as its hosts,
    /// [`Reconnect::Persistent`], a backoff from 50 ms to 2 s and 1 s connect timeouts
    /// set; it may change any of them and add a name, a config, an idle ping, `eager()`.
    /// It must not set a handshake: that would replace the one that finds the master.
    /// (For `SELECT`, add it to `Inner::handshake` after `ROLE`.) The data channel
    /// connects on its first call unless `customize` makes it eager.
    ///
    /// # Errors
    ///
    /// The builder refused its hosts.
    pub fn connect(
        &self,
        customize: impl FnOnce(Builder<Frame, Frame>) -> Builder<Frame, Frame>,
    ) -> Result<MasterChannel, BoxError> {
        let (master, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            name: self.name.clone(),
            sentinels: self.sentinels.clone(),
            password: self.password.clone(),
            vouched: Mutex::new(None),
            master,
            switches: AtomicU64::new(0),
        });

        let mut builder = Channel::builder()
            .host(&self.sentinels[0])
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(
                Duration::from_millis(50),
                Duration::from_secs(2),
            ))
            .connect_timeout(Duration::from_secs(1))
            .handshake_timeout(Duration::from_secs(1));
        for sentinel in &self.sentinels[1..] {
            builder = builder.backup(sentinel);
        }
        let hook = inner.clone();
        let channel = customize(builder)
            .handshake(move |conn, endpoint| {
                let inner = hook.clone();
                async move { inner.handshake(conn, endpoint).await }
            })
            .order(RespCodec::resp2(), OnMaster)?;

        let mut watchers = Vec::new();
        let mut tasks = Vec::new();
        for sentinel in &self.sentinels {
            let (watcher, pushes) = watcher(sentinel)?;
            let subscribed = Arc::new(AtomicBool::new(false));
            tasks.push(tokio::spawn(follow(
                inner.clone(),
                channel.clone(),
                pushes,
                subscribed.clone(),
            )));
            watchers.push((watcher, subscribed));
        }
        Ok(MasterChannel {
            channel,
            inner,
            watchers,
            tasks,
        })
    }
}

/// A [`Channel`] to the current master, and the watchers that move it after a failover.
/// Dropping it stops the watchers (the channel and its clones keep working, but no
/// longer follow `+switch-master`; reconnects still ask the sentinels).
pub struct MasterChannel {
    channel: Channel<Frame, Frame>,
    inner: Arc<Inner>,
    watchers: Vec<(Channel<Frame, Frame>, Arc<AtomicBool>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl MasterChannel {
    /// The channel: requests go to the current master.
    pub fn channel(&self) -> &Channel<Frame, Frame> {
        &self.channel
    }

    /// The master the channel uses: the last one its handshake found to be a master, or
    /// a watcher moved it to. `None` before the first connection.
    pub fn master(&self) -> watch::Receiver<Option<Endpoint>> {
        self.inner.master.subscribe()
    }

    /// How many times a `+switch-master` moved the channel.
    pub fn switches(&self) -> u64 {
        self.inner.switches.load(Ordering::Relaxed)
    }

    /// How many watchers are connected and have had their subscription confirmed.
    pub fn watching(&self) -> usize {
        self.watchers
            .iter()
            .filter(|(w, subscribed)| {
                subscribed.load(Ordering::Relaxed) && *w.state().borrow() == State::Ready
            })
            .count()
    }
}

impl Drop for MasterChannel {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for (watcher, _) in &self.watchers {
            watcher.close();
        }
    }
}

impl fmt::Debug for MasterChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterChannel")
            .field("master", &*self.inner.master.borrow())
            .field("switches", &self.switches())
            .field("watching", &self.watching())
            .finish_non_exhaustive()
    }
}

/// Why the handshake refused a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentinelError {
    /// The sentinel does not monitor a master of that name (it answered null).
    UnknownMaster {
        /// The sentinel asked.
        sentinel: Endpoint,
        /// The master's name.
        name: String,
    },
    /// The node a sentinel named is not a master: `role` is what its `ROLE` said
    /// (`slave`, `sentinel`).
    NotMaster {
        /// The node.
        endpoint: Endpoint,
        /// The first element of its `ROLE` reply.
        role: String,
    },
    /// A reply of a shape the handshake does not know.
    BadReply(String),
}

impl fmt::Display for SentinelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SentinelError::UnknownMaster { sentinel, name } => {
                write!(f, "sentinel {sentinel} knows no master called {name:?}")
            }
            SentinelError::NotMaster { endpoint, role } => {
                write!(f, "{endpoint} is not a master: its ROLE is {role:?}")
            }
            SentinelError::BadReply(what) => write!(f, "unexpected reply: {what}"),
        }
    }
}

impl std::error::Error for SentinelError {}

/// Redis's protocol for commands ([`Redis::commands`]), plus what an error reply says
/// of the node: `READONLY` (a master demoted under the channel) is
/// [`Verdict::WrongServer`]: the call did not run, and the channel leaves the node and
/// resolves the master again; `LOADING` is [`Verdict::NotRun`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OnMaster;

impl<Req> Protocol<Req, Frame> for OnMaster {
    fn is_push(&self, frame: &Frame) -> bool {
        <Redis as Protocol<Req, Frame>>::is_push(&Redis::commands(), frame)
    }

    fn check(&self, frame: Frame) -> Result<Frame, BoxError> {
        <Redis as Protocol<Req, Frame>>::check(&Redis::commands(), frame)
    }

    fn verdict(&self, frame: &Frame) -> Verdict {
        let error: &[u8] = match frame {
            Frame::SimpleError { data, .. } => data.as_bytes(),
            Frame::BlobError { data, .. } => data,
            _ => return Verdict::Reply,
        };
        if error.starts_with(b"READONLY") {
            Verdict::WrongServer
        } else if error.starts_with(b"LOADING") {
            Verdict::NotRun
        } else {
            Verdict::Reply
        }
    }
}

/// What the data channel's handshake and the watchers share.
struct Inner {
    name: String,
    sentinels: Vec<Endpoint>,
    password: Option<String>,
    /// The address a sentinel (or a watcher) named last, not yet tried: its connection
    /// is checked with `ROLE` rather than sent back to the sentinels. Taken by the next
    /// handshake, whichever host it runs on.
    vouched: Mutex<Option<Endpoint>>,
    master: watch::Sender<Option<Endpoint>>,
    switches: AtomicU64,
}

impl Inner {
    /// The data channel's handshake, on every new connection: see the module's docs.
    async fn handshake(
        &self,
        conn: Channel<Frame, Frame>,
        endpoint: Endpoint,
    ) -> Result<Handshake, BoxError> {
        if self.sentinels.contains(&endpoint) {
            let ask = cmd(["SENTINEL", "get-master-addr-by-name", &self.name]);
            let reply = conn.request(ask).await?;
            let master = master_addr(&reply)?.ok_or_else(|| SentinelError::UnknownMaster {
                sentinel: endpoint,
                name: self.name.clone(),
            })?;
            *lock(&self.vouched) = Some(master.clone());
            return Ok(Handshake::Redirect(master));
        }
        let vouched = lock(&self.vouched).take();
        if vouched.as_ref() != Some(&endpoint) {
            // The last master, tried first by a reconnect: ask the sentinels again.
            return Ok(Handshake::Redirect(self.sentinels[0].clone()));
        }
        if let Some(password) = &self.password {
            conn.request(cmd(["AUTH", password])).await?;
        }
        let reply = conn.request(cmd(["ROLE"])).await?;
        let role = role(&reply).ok_or_else(|| SentinelError::BadReply(format!("{reply:?}")))?;
        if role != "master" {
            return Err(SentinelError::NotMaster { endpoint, role }.into());
        }
        self.master.send_replace(Some(endpoint));
        Ok(Handshake::Ready)
    }

    /// A sentinel announced a new master: vouch for it and move the data channel there,
    /// unless it is there already (every sentinel announces the same switch).
    fn switch_to(&self, channel: &Channel<Frame, Frame>, to: Endpoint) {
        // Checked and set at once: two watchers may bring the same news together.
        let moved = self.master.send_if_modified(|master| {
            let moved = master.as_ref() != Some(&to);
            if moved {
                *master = Some(to.clone());
            }
            moved
        });
        if !moved {
            return;
        }
        *lock(&self.vouched) = Some(to.clone());
        self.switches.fetch_add(1, Ordering::Relaxed);
        tracing::info!(master = %to, "+switch-master: following");
        // `change_host` replaces the first configured host (a sentinel) with the new
        // master; the sentinels go back in as the backups, so every later pass still
        // has each of them.
        if channel.change_host(&to).is_ok() {
            let _ = channel.change_backups(&self.sentinels);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A watcher on one sentinel: a pub/sub channel subscribed to `+switch-master` on every
/// connection, and its push receiver.
fn watcher(
    sentinel: &Endpoint,
) -> Result<(Channel<Frame, Frame>, mpsc::Receiver<Frame>), BoxError> {
    let watcher: Channel<Frame, Frame> = Channel::builder()
        .host(sentinel)
        .reconnect(Reconnect::Persistent)
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .connect_timeout(Duration::from_secs(1))
        .eager()
        // A sentinel that falls silent is left after 1 s idle + 2 s without the PONG.
        .idle_ping(Duration::from_secs(1), || cmd(["PING"]))
        .config(Config::default().stall_timeout(Some(Duration::from_secs(2))))
        .handshake(|conn, _endpoint| async move {
            // The confirmation arrives as a push, like the messages.
            conn.send(cmd(["SUBSCRIBE", SWITCH_MASTER])).await?;
            Ok(Handshake::Ready)
        })
        .order(RespCodec::resp2(), Redis::subscriber())?;
    let pushes = watcher
        .pushes()
        .ok_or("the watcher's push receiver was taken")?;
    Ok((watcher, pushes))
}

/// A watcher's task: moves `channel` on each `+switch-master` for our master.
async fn follow(
    inner: Arc<Inner>,
    channel: Channel<Frame, Frame>,
    mut pushes: mpsc::Receiver<Frame>,
    subscribed: Arc<AtomicBool>,
) {
    while let Some(frame) = pushes.recv().await {
        match PubSub::parse(&frame) {
            Some(PubSub::Confirm { .. }) => subscribed.store(true, Ordering::Relaxed),
            Some(PubSub::Message {
                channel: topic,
                payload,
                ..
            }) if topic == SWITCH_MASTER => {
                if let Some(to) = switched_to(&payload, &inner.name) {
                    inner.switch_to(&channel, to);
                }
            }
            _ => {}
        }
    }
}

/// The new master in a `+switch-master` message (`<name> <old ip> <old port> <new ip>
/// <new port>`) about `name`.
pub fn switched_to(payload: &[u8], name: &str) -> Option<Endpoint> {
    let text = std::str::from_utf8(payload).ok()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields[..] {
        [n, _, _, ip, port] if n == name => Some(Endpoint::new(ip, port.parse().ok()?)),
        _ => None,
    }
}

/// The address in a `get-master-addr-by-name` reply (`[ip, port]`); `None` for null.
fn master_addr(reply: &Frame) -> Result<Option<Endpoint>, SentinelError> {
    let bad = || SentinelError::BadReply(format!("{reply:?}"));
    match reply {
        Frame::Null => Ok(None),
        Frame::Array { data, .. } if data.len() == 2 => {
            let ip = text(&data[0]).ok_or_else(bad)?;
            let port = text(&data[1])
                .and_then(|p| p.parse().ok())
                .ok_or_else(bad)?;
            Ok(Some(Endpoint::new(ip, port)))
        }
        _ => Err(bad()),
    }
}

/// The first element of a `ROLE` reply: `master`, `slave` or `sentinel`.
pub fn role(reply: &Frame) -> Option<String> {
    match reply {
        Frame::Array { data, .. } => data.first().and_then(text),
        _ => None,
    }
}

// -- Set-up for the example and the tests (not part of what to copy) -------------------

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use tokio::time::Instant;

use super::process::{Server, answers, free_port};
use super::redis::{connect, info_field};

/// A directory of its own under the system's temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Makes it.
    ///
    /// # Errors
    ///
    /// It could not be made.
    pub fn new(tag: &str) -> io::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!(
            "socketchannel-{tag}-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn probe(port: u16) -> Pin<Box<dyn Future<Output = bool> + Send>> {
    Box::pin(answers(port, RespCodec::resp2(), cmd(["PING"])))
}

/// `redis-server` on a free 127.0.0.1 port, no persistence, its files (a replica's
/// synced RDB) in `dir`, plus `extra` arguments.
///
/// # Errors
///
/// As [`Server::start`].
pub async fn start_redis(dir: &Path, extra: &[String]) -> io::Result<Server> {
    let dir = dir.to_string_lossy().into_owned();
    let extra = extra.to_vec();
    Server::start(
        "redis-server",
        move |port| {
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                &dir,
                "--dbfilename",
                &format!("dump-{port}.rdb"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().cloned());
            args
        },
        probe,
    )
    .await
}

/// How a test sentinel watches its master.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `quorum` of `sentinel monitor`.
    pub quorum: usize,
    /// `down-after-milliseconds`: silence before a sentinel thinks the master is down.
    pub down_after: Duration,
    /// `failover-timeout`.
    pub failover_timeout: Duration,
}

/// `redis-server --sentinel` on a free 127.0.0.1 port, monitoring the master `name` at
/// 127.0.0.1:`master_port`, with a config file of its own in `dir` (a sentinel rewrites
/// it).
///
/// # Errors
///
/// The config file could not be written, or as [`Server::start`].
pub async fn start_sentinel(
    dir: &Path,
    tag: &str,
    name: &str,
    master_port: u16,
    timing: Timing,
) -> io::Result<Server> {
    let conf = dir.join(format!("sentinel-{tag}.conf"));
    std::fs::write(
        &conf,
        format!(
            "bind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n\
             sentinel down-after-milliseconds {name} {down}\n\
             sentinel failover-timeout {name} {failover}\n\
             sentinel parallel-syncs {name} 1\n",
            dir = dir.display(),
            quorum = timing.quorum,
            down = timing.down_after.as_millis(),
            failover = timing.failover_timeout.as_millis(),
        ),
    )?;
    let conf = conf.to_string_lossy().into_owned();
    Server::start(
        "redis-server",
        move |port| {
            vec![
                conf.clone(),
                "--sentinel".into(),
                "--port".into(),
                port.to_string(),
            ]
        },
        probe,
    )
    .await
}

/// A master, its replica, and sentinels monitoring the master, each a child process on
/// 127.0.0.1 (killed by its pid when dropped).
#[derive(Debug)]
pub struct Deployment {
    /// The master at the start.
    pub master: Server,
    /// Its replica (`--replicaof`), in sync before the sentinels start.
    pub replica: Server,
    /// The sentinels.
    pub sentinels: Vec<Server>,
    /// The master's name in the sentinels' config.
    pub name: String,
    /// Last, so it is removed after the servers are killed.
    pub dir: TempDir,
}

impl Deployment {
    /// Starts a master, a replica in sync with it, then `sentinels` sentinels.
    ///
    /// # Errors
    ///
    /// A server did not start, or the replica did not sync within 10 s.
    pub async fn start(name: &str, sentinels: usize, timing: Timing) -> Result<Self, BoxError> {
        let dir = TempDir::new("sentinel")?;
        let master = start_redis(dir.path(), &[]).await?;
        let replicaof = ["--replicaof".into(), format!("127.0.0.1 {}", master.port())];
        let replica = start_redis(dir.path(), &replicaof).await?;
        // In sync before a sentinel's first INFO of the master, which lists the replica
        // (the next one comes 10 s later).
        poll(Duration::from_secs(10), "the replica to sync", async || {
            let side = connect(&replica.addr()).await?;
            let info = text(&side.request(cmd(["INFO", "replication"])).await?);
            Ok(info.and_then(|i| info_field(&i, "master_link_status")) == Some("up".into()))
        })
        .await?;
        let mut started = Vec::new();
        for i in 0..sentinels {
            let tag = i.to_string();
            started.push(start_sentinel(dir.path(), &tag, name, master.port(), timing).await?);
        }
        Ok(Deployment {
            master,
            replica,
            sentinels: started,
            name: name.into(),
            dir,
        })
    }

    /// The sentinels' addresses.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(Server::addr).collect()
    }

    /// Waits until sentinel `i` knows the replica as a healthy one (it can promote it).
    ///
    /// # Errors
    ///
    /// Not so within `limit`.
    pub async fn replica_known(&self, i: usize, limit: Duration) -> Result<(), BoxError> {
        let sentinel = self.sentinels[i].addr();
        let port = self.replica.port().to_string();
        poll(limit, "the sentinel to know the replica", async || {
            let side = connect(&sentinel).await?;
            let reply = side
                .request(cmd(["SENTINEL", "replicas", &self.name]))
                .await?;
            let Frame::Array { data, .. } = &reply else {
                return Ok(false);
            };
            Ok(data.iter().map(fields).any(|r| {
                r.get("port") == Some(&port)
                    && r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            }))
        })
        .await
    }

    /// Waits until every sentinel knows every other one (needed for a quorum above 1).
    ///
    /// # Errors
    ///
    /// Not so within `limit`.
    pub async fn sentinels_acquainted(&self, limit: Duration) -> Result<(), BoxError> {
        let others = (self.sentinels.len() - 1).to_string();
        for sentinel in self.sentinel_addrs() {
            poll(limit, "the sentinels to find each other", async || {
                let side = connect(&sentinel).await?;
                let reply = side
                    .request(cmd(["SENTINEL", "master", &self.name]))
                    .await?;
                Ok(fields(&reply).get("num-other-sentinels") == Some(&others))
            })
            .await?;
        }
        Ok(())
    }

    /// `SENTINEL FAILOVER <name>` on sentinel `i`, asked again while it says there is no
    /// replica it can promote yet. Returns when the sentinel took it (`OK`), just before
    /// which the failover started.
    ///
    /// # Errors
    ///
    /// Another refusal, or none taken within 10 s.
    pub async fn failover(&self, i: usize) -> Result<Instant, BoxError> {
        let side = connect(&self.sentinels[i].addr()).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sent = Instant::now();
            match side
                .request(cmd(["SENTINEL", "FAILOVER", &self.name]))
                .await
            {
                Ok(_) => return Ok(sent),
                Err(e) if e.to_string().contains("NOGOODSLAVE") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A flat `[field, value, field, value, ...]` reply (`SENTINEL master`, one entry of
/// `SENTINEL replicas`) as a map.
pub fn fields(reply: &Frame) -> HashMap<String, String> {
    let Frame::Array { data, .. } = reply else {
        return HashMap::new();
    };
    data.chunks(2)
        .filter_map(|kv| Some((text(&kv[0])?, text(kv.get(1)?)?)))
        .collect()
}

/// Asks `check` every 50 ms until it says yes; an error counts as no.
///
/// # Errors
///
/// No yes within `limit` (the message has the last error).
pub async fn poll<F>(limit: Duration, what: &str, mut check: F) -> Result<(), BoxError>
where
    F: AsyncFnMut() -> Result<bool, BoxError>,
{
    let deadline = Instant::now() + limit;
    let mut last = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), check()).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => last = Some("a check timed out".into()),
        }
        if Instant::now() >= deadline {
            let last = last
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default();
            return Err(format!("waited {limit:?} for {what}{last}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
