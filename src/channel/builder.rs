//! Building a reconnecting channel, the way skynet's `sc.channel { ... }` does.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tower::BoxError;

use super::{Channel, Connection, ReconnectLayer};
use crate::config::Config;
use crate::mux::Mode;
use crate::panic::CatchPanic;
use crate::reconnect::{
    Backoff, Endpoint, Handshake, HostSpec, Hosts, IntoHost, InvalidEndpoint, Options, Reconnect,
};
use crate::transport::Connector;

/// Builds a [`Channel`] that connects by itself: lazily on first use, to a host or its
/// backups, with a handshake on every connection, and reconnects after failures.
///
/// ```no_run
/// use std::time::Duration;
/// use socketchannel::{Channel, Handshake, Plain};
/// use tokio_util::codec::LinesCodec;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let channel: Channel<String, String> = Channel::builder()
///     .host("127.0.0.1:7000")
///     .backup("127.0.0.1:7001")
///     .connect_timeout(Duration::from_secs(1))
///     .handshake(|conn, _endpoint| async move {
///         conn.request("AUTH secret".to_string()).await?;
///         Ok(Handshake::Ready)
///     })
///     .order(LinesCodec::new(), Plain)?;
/// let reply = channel.request("PING".to_string()).await?;
/// # Ok(())
/// # }
/// ```
pub struct Builder<Req, Resp> {
    host: Result<Option<HostSpec>, InvalidEndpoint>,
    port: Option<u16>,
    backups: Result<Vec<HostSpec>, InvalidEndpoint>,
    config: Config,
    name: Option<Cow<'static, str>>,
    call_timeout: Option<Option<Duration>>,
    opts: Options<Req, Resp>,
    #[cfg(feature = "tcp")]
    pub(super) nodelay: bool,
    #[cfg(feature = "tcp")]
    pub(super) keepalive: bool,
}

impl<Req, Resp> fmt::Debug for Builder<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("backups", &self.backups)
            .field("name", &self.name)
            .field("call_timeout", &self.call_timeout)
            .field("config", &self.config)
            .field("reconnect", &self.opts.reconnect)
            .field("backoff", &self.opts.backoff)
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> Channel<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Starts building a reconnecting channel.
    pub fn builder() -> Builder<Req, Resp> {
        Builder {
            host: Ok(None),
            port: None,
            backups: Ok(Vec::new()),
            config: Config::default(),
            name: None,
            call_timeout: None,
            opts: Options {
                reconnect: Reconnect::Once,
                backoff: Backoff::default(),
                connect_timeout: Some(Duration::from_secs(5)),
                handshake_timeout: Some(Duration::from_secs(5)),
                drain_timeout: Duration::from_secs(5),
                handshake: None,
                idle_ping: None,
                queue: 0,
                max_in_flight: 0,
                eager: false,
                orphans: crate::config::Orphans::Quarter,
                orphan_age: None,
                max_connection_age: None,
                turns: None,
            },
            #[cfg(feature = "tcp")]
            nodelay: true,
            #[cfg(feature = "tcp")]
            keepalive: true,
        }
    }
}

impl<Req, Resp> Builder<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// The host: `"host:port"`, `"[v6]:port"`, a bare host with [`port`](Self::port), a
    /// `SocketAddr`, a `(host, port)` pair, a Unix socket (`"unix:/run/redis.sock"`, a
    /// `Path`: no port) or an [`Endpoint`] ([`IntoHost`]). An unparsable one makes the
    /// final step fail with [`InvalidEndpoint`].
    pub fn host(mut self, host: impl IntoHost) -> Self {
        self.host = HostSpec::from(&host).map(Some);
        self
    }

    /// The port, for a host given without one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Adds a backup host, tried in order after the current host fails. Without a port
    /// it takes the current host's. Duplicates are skipped. A backup that connects
    /// becomes the current host.
    pub fn backup(mut self, host: impl IntoHost) -> Self {
        if let Ok(backups) = &mut self.backups {
            match HostSpec::from(&host) {
                Ok(spec) => backups.push(spec),
                Err(e) => self.backups = Err(e),
            }
        }
        self
    }

    /// When to reconnect after a failed pass or a lost connection (default
    /// [`Reconnect::Once`]).
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.opts.reconnect = reconnect;
        self
    }

    /// The wait between failed passes (default exponential, 100 ms to 10 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.opts.backoff = backoff;
        self
    }

    /// How long one connection attempt may take (default 5 s; `None`: no limit).
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.opts.connect_timeout = timeout.into();
        self
    }

    /// How long the handshake may take (default 5 s; `None`: no limit). When it passes,
    /// the next host is tried.
    pub fn handshake_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.opts.handshake_timeout = timeout.into();
        self
    }

    /// How long calls on the old connection may take to finish after
    /// [`Channel::change_host`] (default 5 s); then they fail.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.opts.drain_timeout = timeout;
        self
    }

    /// Runs on every new connection before any user call is written (skynet's `auth`).
    ///
    /// It gets a [`Channel`] on the new connection's priority lane (its calls go before
    /// any user call; user calls wait) and the endpoint. It may send requests, read a
    /// greeting ([`Channel::read`]), replace the backups
    /// ([`Channel::change_backups`]), and return [`Handshake::Ready`] or
    /// [`Handshake::Redirect`]. An error (or a panic) fails this host: the next one is
    /// tried, and after the last, the backoff applies (a wrong password never makes a
    /// hot loop).
    pub fn handshake<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Channel<Req, Resp>, Endpoint) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Handshake, BoxError>> + Send + 'static,
    {
        self.opts.handshake = Some(Arc::new(move |channel, endpoint| {
            // A handshake that panics, making its future or running it, fails its host
            // like one that returns an error.
            let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                CatchPanic::new(hook(channel, endpoint))
            }));
            Box::pin(async move {
                match made {
                    Ok(hook) => hook
                        .await
                        .unwrap_or_else(|panic| Err(format!("handshake panicked: {panic}").into())),
                    Err(panic) => Err(format!(
                        "handshake panicked: {}",
                        crate::panic::message(&*panic)
                    )
                    .into()),
                }
            })
        }));
        self
    }

    /// How long a pool over discovered endpoints waits for the first: the connect
    /// timeout (5 s without one).
    #[cfg(feature = "pool")]
    pub(crate) fn first_wait(&self) -> Duration {
        self.opts.connect_timeout.unwrap_or(Duration::from_secs(5))
    }

    /// The drain timeout set so far (a pool's connections taken out drain within it).
    #[cfg(feature = "pool")]
    pub(crate) fn drain(&self) -> Duration {
        self.opts.drain_timeout
    }

    /// Sends `ping()` when the connection has been idle for `every` (at least 1 ms), so
    /// a dead peer is found (by the stall timeout, or the write failing) before a user
    /// call is.
    pub fn idle_ping<F>(mut self, every: Duration, ping: F) -> Self
    where
        F: Fn() -> Req + Send + Sync + 'static,
    {
        let every = every.max(Duration::from_millis(1));
        self.opts.idle_ping = Some((every, Arc::new(ping)));
        self
    }

    /// Retires each connection once it is this old (default: never), as
    /// [`Channel::change_host`] does: new calls go to a fresh connection (made at once
    /// if calls wait, else on the next call), the old one finishes its calls within the
    /// drain timeout. This picks up DNS changes, and spreads load again after a
    /// failover moved every client to one server.
    pub fn max_connection_age(mut self, age: impl Into<Option<Duration>>) -> Self {
        self.opts.max_connection_age = age.into();
        self
    }

    /// The channel's name in its telemetry (default: none): the `channel` field of its
    /// connection task's `socketchannel` span (beside `host`, the host it is built with)
    /// and, with the `metrics` feature, the `channel` label of its metrics, which
    /// without a name is the host. See the crate docs' "Observability". It wins over a
    /// name in the [`config`](Self::config) ([`Config::name`]).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The deadline of every call that has none of its own, from when the channel
    /// takes it in (default `None`); see [`Config::call_timeout`]. It wins over the one in the
    /// [`config`](Self::config).
    pub fn call_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.call_timeout = Some(timeout.into());
        self
    }

    /// Connects as soon as the channel is built instead of on the first call.
    pub fn eager(mut self) -> Self {
        self.opts.eager = true;
        self
    }

    /// The engine's limits and timers.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Builds a channel over any [`Connector`] (a `tower::Service` from [`Endpoint`] to a
    /// [`Transport`](crate::Transport): a Unix socket, TLS, an in-memory pipe) and mode,
    /// with its connection task spawned.
    ///
    /// # Errors
    ///
    /// No host, or a host or backup that does not parse.
    ///
    /// The connection task runs on a tokio runtime, as [`Channel`'s runtime
    /// section](crate::Channel#runtime) says: this one, or the first call's.
    pub fn connector<K, M>(
        self,
        connector: K,
        mode: M,
    ) -> Result<Channel<Req, Resp>, InvalidEndpoint>
    where
        K: Connector<Req, Resp>,
        M: Mode<Req, Resp> + Clone,
    {
        let (channel, connection) = self.pair(connector, mode)?;
        Ok(channel.start(connection))
    }

    /// Like [`connector`](Self::connector), but hands back the connection task for the
    /// caller to run.
    ///
    /// # Errors
    ///
    /// No host, or a host or backup that does not parse.
    pub fn pair<K, M>(
        self,
        connector: K,
        mode: M,
    ) -> Result<(Channel<Req, Resp>, Connection), InvalidEndpoint>
    where
        K: Connector<Req, Resp>,
        M: Mode<Req, Resp> + Clone,
    {
        Ok(self.into_layer(mode)?.pair(connector))
    }

    /// The finished configuration as a [`tower::Layer`] that turns a connector into a
    /// channel, for `ServiceBuilder` users.
    ///
    /// # Errors
    ///
    /// No host, or a host or backup that does not parse.
    pub fn into_layer<M>(mut self, mode: M) -> Result<ReconnectLayer<M, Req, Resp>, InvalidEndpoint>
    where
        M: Mode<Req, Resp> + Clone,
    {
        let host = self.host?.ok_or_else(InvalidEndpoint::no_host)?;
        // A Unix socket needs no port; a TCP host without one takes `port`.
        let hosts = Hosts::configure(&host, self.port, &self.backups?)?;
        self.opts.queue = self.config.queue;
        self.opts.max_in_flight = self.config.max_in_flight;
        self.opts.orphans = self.config.orphans;
        self.opts.orphan_age = self.config.orphan_age;
        if let Some(timeout) = self.call_timeout {
            self.config.call_timeout = timeout;
        }
        if let Some(name) = self.name {
            self.config.name = Some(name);
        }
        Ok(ReconnectLayer::new(hosts, self.config, self.opts, mode))
    }
}
