//! The builder's socket half (feature `tcp`): the built-in connector's socket options,
//! and the final steps that frame a TCP stream (or a Unix socket's) with a codec.

use tokio_util::codec::{Decoder, Encoder};
use tower::BoxError;

use super::{Builder, Channel};
use crate::connect::{SocketConnector, TcpConnector};
use crate::mux::{Order, Session};
use crate::protocol::{Protocol, Sessions};
use crate::reconnect::InvalidEndpoint;

impl<Req, Resp> Builder<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Sets `TCP_NODELAY` (default on). Only for the built-in TCP connector.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// Sets `SO_KEEPALIVE` (default on). Only for the built-in TCP connector.
    pub fn keepalive(mut self, on: bool) -> Self {
        self.keepalive = on;
        self
    }

    /// Builds an order-mode channel over TCP (or a Unix socket, for a `"unix:PATH"`
    /// host or backup: [`SocketConnector`]) framed with `codec`.
    ///
    /// # Errors
    ///
    /// No host, or a host or backup that does not parse.
    ///
    /// The connection task runs on a tokio runtime, as [`Channel`'s runtime
    /// section](crate::Channel#runtime) says: this one, or the first call's.
    pub fn order<C, P>(self, codec: C, protocol: P) -> Result<Channel<Req, Resp>, InvalidEndpoint>
    where
        C: Encoder<Req> + Decoder<Item = Resp> + Clone + Send + 'static,
        <C as Encoder<Req>>::Error: Into<BoxError>,
        <C as Decoder>::Error: Into<BoxError>,
        P: Protocol<Req, Resp> + Clone,
    {
        let connector = self.tcp(codec);
        self.connector(connector, Order::new(protocol))
    }

    /// Builds a session-mode channel over TCP (or a Unix socket, for a `"unix:PATH"`
    /// host or backup: [`SocketConnector`]) framed with `codec`.
    ///
    /// # Errors
    ///
    /// No host, or a host or backup that does not parse.
    ///
    /// The connection task runs on a tokio runtime, as [`Channel`'s runtime
    /// section](crate::Channel#runtime) says: this one, or the first call's.
    pub fn session<C, S>(self, codec: C, sessions: S) -> Result<Channel<Req, Resp>, InvalidEndpoint>
    where
        C: Encoder<Req> + Decoder<Item = Resp> + Clone + Send + 'static,
        <C as Encoder<Req>>::Error: Into<BoxError>,
        <C as Decoder>::Error: Into<BoxError>,
        S: Sessions<Req, Resp> + Clone,
    {
        let connector = self.tcp(codec);
        self.connector(connector, Session::new(sessions))
    }

    pub(crate) fn tcp<C: Clone>(&self, codec: C) -> SocketConnector<C> {
        SocketConnector::new(
            TcpConnector::new(codec)
                .nodelay(self.nodelay)
                .keepalive(self.keepalive),
        )
    }
}
