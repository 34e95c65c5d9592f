//! The engine as a [`tower::Layer`]: applied to a transport, it gives a channel.

use std::fmt;
use std::marker::PhantomData;

use tower::Layer;

use super::Channel;
use crate::config::Config;
use crate::mux::Mode;
use crate::transport::Transport;

/// A [`tower::Layer`] that runs the multiplexing engine over a transport the caller
/// already has (no reconnect): `layer(transport)` spawns the connection task and returns
/// its [`Channel`].
///
/// ```
/// use socketchannel::{Channel, MuxLayer, Order, Plain};
/// use tokio_util::codec::{Framed, LinesCodec};
/// use tower::Layer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (client, _server) = tokio::io::duplex(1024);
/// let layer = MuxLayer::new(Order::new(Plain));
/// let channel: Channel<String, String> = layer.layer(Framed::new(client, LinesCodec::new()));
/// # }
/// ```
pub struct MuxLayer<M, Req, Resp> {
    mode: M,
    config: Config,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<M, Req, Resp> MuxLayer<M, Req, Resp> {
    /// The engine in `mode`, with the default [`Config`].
    pub fn new(mode: M) -> Self {
        MuxLayer {
            mode,
            config: Config::default(),
            _types: PhantomData,
        }
    }

    /// The engine's limits and timers.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
}

impl<M: Clone, Req, Resp> Clone for MuxLayer<M, Req, Resp> {
    fn clone(&self) -> Self {
        MuxLayer {
            mode: self.mode.clone(),
            config: self.config.clone(),
            _types: PhantomData,
        }
    }
}

impl<M: fmt::Debug, Req, Resp> fmt::Debug for MuxLayer<M, Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxLayer")
            .field("mode", &self.mode)
            .field("config", &self.config)
            .finish()
    }
}

impl<T, M, Req, Resp> Layer<T> for MuxLayer<M, Req, Resp>
where
    T: Transport<Req, Resp>,
    M: Mode<Req, Resp> + Clone,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Service = Channel<Req, Resp>;

    fn layer(&self, transport: T) -> Channel<Req, Resp> {
        Channel::with_config(transport, self.mode.clone(), self.config.clone())
    }
}
