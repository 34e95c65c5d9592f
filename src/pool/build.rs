//! Building a pool: the builder's final steps, `size` times over one gate.

use std::fmt;
use std::sync::Arc;

use super::Pool;
use super::gate::{Gate, Gated};
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
        }
    }
}

impl<Req, Resp> PoolBuilder<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// The pool over any [`Connector`] and mode ([`Builder::connector`]).
    ///
    /// # Errors
    ///
    /// No host, or a host or backup that does not parse.
    pub fn connector<K, M>(self, connector: K, mode: M) -> Result<Pool<Req, Resp>, InvalidEndpoint>
    where
        K: Connector<Req, Resp>,
        M: Mode<Req, Resp> + Clone,
    {
        Ok(self.builder.into_layer(mode)?.pool(self.size, connector))
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
    /// this layer makes; they dial through one gate (see [`Pool`]). Spawns their
    /// connection tasks, so it must run inside a tokio runtime (or, as a channel's, on
    /// the first call's).
    pub fn pool<K>(&self, size: usize, connector: K) -> Pool<Req, Resp>
    where
        K: Connector<Req, Resp>,
    {
        let gate = Arc::new(Gate::default());
        let channels = (0..size.max(1))
            .map(|i| tower::Layer::layer(self, Gated::new(connector.clone(), gate.clone(), i)))
            .collect();
        Pool::from_channels(channels)
    }
}

impl<Req, Resp> fmt::Debug for PoolBuilder<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("builder", &self.builder)
            .field("size", &self.size)
            .finish()
    }
}
