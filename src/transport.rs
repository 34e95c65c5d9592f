//! What a channel runs over: a [`Transport`] of frames, and a [`Connector`] that makes
//! one for an [`Endpoint`].
//!
//! Both are names for bounds, implemented for every type that meets them (as tower's
//! `MakeConnection` is), so there is nothing to implement: write `T: Transport<Req, Resp>`
//! or `K: Connector<Req, Resp>` where you would spell out the bounds.

use futures_core::Stream;
use futures_sink::Sink;
use tower::{BoxError, Service};

use crate::reconnect::Endpoint;

/// A connection as frames: a [`Sink`] of requests and a [`Stream`] of replies or read
/// errors, such as `tokio_util::codec::Framed` over a socket with a codec.
///
/// The connection task owns it: `Unpin`, so the task holds it without pinning; `Send +
/// 'static`, as the task ([`Connection`](crate::Connection)) is a boxed future that may
/// be spawned. A write or read error becomes the
/// [`ConnectionError`](crate::ConnectionError) that ends the connection.
///
/// ```
/// use socketchannel::{Channel, Order, Plain, Transport};
/// use tokio_util::codec::{Framed, LinesCodec};
///
/// /// A helper of one's own, over any transport of lines.
/// fn lines<T: Transport<String, String>>(transport: T) -> Channel<String, String> {
///     Channel::new(transport, Order::new(Plain))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (client, _server) = tokio::io::duplex(1024);
/// let channel = lines(Framed::new(client, LinesCodec::new()));
/// # drop(channel);
/// # }
/// ```
pub trait Transport<Req, Resp>:
    Sink<Req, Error = Self::WriteError>
    + Stream<Item = Result<Resp, Self::ReadError>>
    + Unpin
    + Send
    + 'static
{
    /// Why a write failed: the sink's error.
    type WriteError: Into<BoxError> + 'static;
    /// Why a read failed: the stream's error.
    type ReadError: Into<BoxError> + 'static;
}

impl<T, Req, Resp, WE, RE> Transport<Req, Resp> for T
where
    T: Sink<Req, Error = WE> + Stream<Item = Result<Resp, RE>> + Unpin + Send + 'static,
    WE: Into<BoxError> + 'static,
    RE: Into<BoxError> + 'static,
{
    type WriteError = WE;
    type ReadError = RE;
}

/// Makes a [`Transport`] for an [`Endpoint`]: a [`tower::Service`] such as
/// [`TcpConnector`](crate::TcpConnector), or `tower::service_fn` over an async function
/// that connects (TLS, a Unix socket, an in-memory pipe).
///
/// The connection task owns it and calls a clone of it for each connect attempt; the
/// attempt's future runs in that task, so it is `Send`. A failed or timed-out attempt
/// moves on to the next host. When every host of a pass has failed, the calls waiting
/// for it fail with a [`ConnectError`](crate::ConnectError) that lists each host's error.
pub trait Connector<Req, Resp>:
    Service<Endpoint, Response = Self::Transport, Error: Into<BoxError>, Future: Send>
    + Clone
    + Send
    + 'static
{
    /// The transport it makes.
    type Transport: Transport<Req, Resp>;
}

impl<K, T, Req, Resp> Connector<Req, Resp> for K
where
    K: Service<Endpoint, Response = T, Error: Into<BoxError>, Future: Send>
        + Clone
        + Send
        + 'static,
    T: Transport<Req, Resp>,
{
    type Transport = T;
}
