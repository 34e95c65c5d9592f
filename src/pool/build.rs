//! Building a pool: the builder's final steps, for every connection, taking turns.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Pool;
use super::endpoints::{self, Numbered, Source};
use super::members::{Factory, Members};
use super::scale::{self, Sizing};
use crate::channel::{Builder, ReconnectLayer};
use crate::mux::Mode;
use crate::reconnect::InvalidEndpoint;
use crate::transport::Connector;

/// Builds a [`Pool`]: a [`Builder`]'s settings, for each of `size` connections
/// ([`Builder::pool`]).
///
/// ```no_run
/// use socketchannel::{Channel, Plain};
/// use tokio_util::codec::LinesCodec;
///
/// # async fn demo() -> Result<(), socketchannel::BoxError> {
/// let pool = Channel::<String, String>::builder()
///     .host("127.0.0.1:7000")
///     .pool(4)
///     .order(LinesCodec::new(), Plain)?;
/// let reply = pool.request("PING".to_string()).await?;
/// # Ok(())
/// # }
/// ```
pub struct PoolBuilder<Req, Resp> {
    builder: Builder<Req, Resp>,
    size: usize,
    /// Grown up to this many, when set.
    max: Option<usize>,
    dwell: Duration,
    target: usize,
    /// Where the endpoints come from, instead of the builder's host.
    discover: Option<Box<dyn Source>>,
    /// Seeds the handles' balances.
    seed: Option<u64>,
}

impl<Req, Resp> Builder<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Builds a pool of `size` connections (at least one) with these settings instead
    /// of one channel; the final steps are the same.
    pub fn pool(self, size: usize) -> PoolBuilder<Req, Resp> {
        PoolBuilder {
            builder: self,
            size: size.max(1),
            max: None,
            dwell: Duration::from_secs(10),
            target: 32,
            discover: None,
            seed: None,
        }
    }
}

impl<Req, Resp> PoolBuilder<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Lets the pool grow up to `max` connections while they are busy, and shrink back
    /// to the size it was built with while they are not (default: a fixed size). Only
    /// one with nothing in flight is taken out: a down one with nothing queued first,
    /// else a usable one but never the last; never a leased one. It finishes what
    /// reached it within the drain timeout ([`Builder::drain_timeout`]); a call a
    /// handle had readied for it goes to another connection. The sizing runs on
    /// the runtime the pool is built on (built outside one, the pool keeps its size).
    pub fn grow_to(mut self, max: usize) -> Self {
        self.max = Some(max);
        self
    }

    /// The least time between two changes of a growing pool's size (default 10 s):
    /// the mean load is taken over it, and the size changes at most once per dwell
    /// time.
    pub fn dwell(mut self, dwell: Duration) -> Self {
        self.dwell = dwell.max(Duration::from_millis(1));
        self
    }

    /// The calls in flight per connection a growing pool aims for (default 32): it
    /// grows by one while the mean over a dwell time is above, and shrinks by one
    /// while it is below half of it. A steady load settles at a size and stays there.
    pub fn target_load(mut self, calls: usize) -> Self {
        self.target = calls.max(1);
        self
    }

    /// Takes the pool's endpoints from `discover` instead of the builder's host and
    /// backups: `size` connections to each endpoint it inserts (they take turns at
    /// connecting and share a backoff, endpoint by endpoint), and every connection to
    /// one it removes drained (their calls finish within the drain timeout; none is
    /// lost). A [`DnsDiscover`](crate::DnsDiscover) follows a host name. Until the
    /// first endpoints come (for the connect timeout at most), calls wait for them;
    /// after, a pool left without any fails calls fast, *not sent*. A `Discover` that fails or ends
    /// leaves the pool with the endpoints it has. The size is fixed per endpoint
    /// ([`grow_to`](Self::grow_to) applies to a pool of one host).
    pub fn discover<D>(mut self, discover: D) -> Self
    where
        D: tower::discover::Discover<Service = crate::Endpoint> + Send + Unpin + 'static,
        D::Key: std::hash::Hash + Eq + Send + 'static,
        D::Error: Into<tower::BoxError>,
    {
        self.discover = Some(Box::new(Numbered::new(discover)));
        self
    }

    /// Seeds the random draws of the handles' `p2c` balances (default: tower's own
    /// source, seeded per process), so that a run replays its choices: a simulation,
    /// a test. Each handle draws from the seed in the order handles first choose.
    pub fn balance_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The pool over any [`Connector`] and mode ([`Builder::connector`]).
    ///
    /// # Errors
    ///
    /// No host, or a host or backup that does not parse.
    pub fn connector<K, M>(
        mut self,
        connector: K,
        mode: M,
    ) -> Result<Pool<Req, Resp>, InvalidEndpoint>
    where
        K: Connector<Req, Resp>,
        M: Mode<Req, Resp> + Clone,
    {
        if let Some(discover) = self.discover.take() {
            // The endpoints replace the builder's host, which need not be set.
            let (drain, first) = (self.builder.drain(), self.builder.first_wait());
            let builder = self.builder.host(crate::Endpoint::new("0.0.0.0", 0));
            let layer = builder.into_layer(mode)?;
            let pool = layer.discovered(self.size, discover, (drain, first), connector);
            return Ok(pool.seeded(self.seed));
        }
        let sizing = self.max.filter(|max| *max > self.size).map(|max| Sizing {
            min: self.size,
            max,
            dwell: self.dwell,
            target: self.target,
            drain: self.builder.drain(),
        });
        let pool = self
            .builder
            .into_layer(mode)?
            .sized(self.size, sizing, connector);
        Ok(pool.seeded(self.seed))
    }
}

#[cfg(feature = "tcp")]
impl<Req, Resp> PoolBuilder<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// An order-mode pool over TCP (or a Unix socket) framed with `codec`
    /// ([`Builder::order`]).
    ///
    /// # Errors
    ///
    /// No host, or a host or backup that does not parse.
    pub fn order<C, P>(self, codec: C, protocol: P) -> Result<Pool<Req, Resp>, InvalidEndpoint>
    where
        C: tokio_util::codec::Encoder<Req>
            + tokio_util::codec::Decoder<Item = Resp>
            + Clone
            + Send
            + 'static,
        <C as tokio_util::codec::Encoder<Req>>::Error: Into<tower::BoxError>,
        <C as tokio_util::codec::Decoder>::Error: Into<tower::BoxError>,
        P: crate::Protocol<Req, Resp> + Clone,
    {
        let connector = self.builder.tcp(codec);
        self.connector(connector, crate::Order::new(protocol))
    }

    /// A session-mode pool over TCP (or a Unix socket) framed with `codec`
    /// ([`Builder::session`]).
    ///
    /// # Errors
    ///
    /// No host, or a host or backup that does not parse.
    pub fn session<C, S>(self, codec: C, sessions: S) -> Result<Pool<Req, Resp>, InvalidEndpoint>
    where
        C: tokio_util::codec::Encoder<Req>
            + tokio_util::codec::Decoder<Item = Resp>
            + Clone
            + Send
            + 'static,
        <C as tokio_util::codec::Encoder<Req>>::Error: Into<tower::BoxError>,
        <C as tokio_util::codec::Decoder>::Error: Into<tower::BoxError>,
        S: crate::Sessions<Req, Resp> + Clone,
    {
        let connector = self.builder.tcp(codec);
        self.connector(connector, crate::Session::new(sessions))
    }
}

impl<M, Req, Resp> ReconnectLayer<M, Req, Resp>
where
    M: Mode<Req, Resp> + Clone,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// A pool of `size` connections (at least one) over `connector`, each a channel
    /// this layer makes; they take turns at connecting (see [`Pool`]). Spawns their
    /// connection tasks, so it must run inside a tokio runtime (or, as a channel's, on
    /// the first call's).
    pub fn pool<K>(&self, size: usize, connector: K) -> Pool<Req, Resp>
    where
        K: Connector<Req, Resp>,
    {
        self.sized(size, None, connector)
    }

    /// A pool of `per` connections to each endpoint `source` yields.
    fn discovered<K>(
        &self,
        per: usize,
        source: Box<dyn Source>,
        (drain, first): (Duration, Duration),
        connector: K,
    ) -> Pool<Req, Resp>
    where
        K: Connector<Req, Resp>,
    {
        let timeout = self.call_timeout();
        let members = Arc::new(Members::new(0, false, timeout, self.factory(connector)));
        members
            .awaiting
            .store(true, std::sync::atomic::Ordering::Release);
        let gone = members.gone();
        let run = endpoints::drive(Arc::downgrade(&members), gone, source, per, drain, first);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(run);
            }
            Err(_) => {
                tracing::warn!("a pool over discovered endpoints needs a runtime: it has none");
                members.endpoints_came();
            }
        }
        Pool::from_members(members)
    }

    /// Makes each connection of a group: this layer to the group's endpoint, taking
    /// the group's turns.
    fn factory<K>(&self, connector: K) -> Factory<Req, Resp>
    where
        K: Connector<Req, Resp>,
    {
        // Called again whenever the pool grows: behind a lock, so the layer and the
        // connector need not be `Sync`.
        let parts = Mutex::new((self.clone(), connector));
        Box::new(move |group| {
            let parts = parts.lock().unwrap_or_else(|e| e.into_inner());
            let (layer, connector) = &*parts;
            // Every connection of a group takes turns at connecting with the others.
            let layer = match &group.endpoint {
                Some(endpoint) => layer.with_host(endpoint.clone()),
                None => layer.clone(),
            }
            .with_turns(group.turns.clone());
            tower::Layer::layer(&layer, connector.clone())
        })
    }

    fn sized<K>(&self, size: usize, sizing: Option<Sizing>, connector: K) -> Pool<Req, Resp>
    where
        K: Connector<Req, Resp>,
    {
        let factory = self.factory(connector);
        let members = Arc::new(Members::new(
            size.max(1),
            sizing.is_none(),
            self.call_timeout(),
            factory,
        ));
        if let Some(sizing) = sizing {
            scale::spawn(&members, sizing);
        }
        Pool::from_members(members)
    }
}

impl<Req, Resp> fmt::Debug for PoolBuilder<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("builder", &self.builder)
            .field("size", &self.size)
            .field("max", &self.max)
            .field("dwell", &self.dwell)
            .field("target", &self.target)
            .field("discover", &self.discover.is_some())
            .field("seed", &self.seed)
            .finish()
    }
}
