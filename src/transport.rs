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
/// The builder's [`connect_timeout`](crate::Builder::connect_timeout) bounds each call
/// of it, whatever it does inside.
///
/// # Bringing your own
///
/// Any way of opening a byte stream becomes a connector by mapping an [`Endpoint`] to
/// it and framing the stream with a codec (wrapped in [`Metered`](crate::Metered), so
/// its bytes count as progress for the stall timer):
///
/// * **hyper-util's `HttpConnector`** is a `Service<Uri>` giving a `TokioIo<TcpStream>`:
///   call it with `format!("http://{endpoint}").parse::<Uri>()?` (its own resolver,
///   happy eyeballs and socket options apply) and frame `io.into_inner()`.
/// * **A SOCKS proxy** (e.g. `tokio-socks`): connect to the proxy and ask it for
///   `(endpoint.host(), endpoint.port())`, so the proxy resolves the name; frame the
///   stream it gives back.
/// * **TLS, or anything layered**: call the built-in connector (or your own) for the
///   TCP stream, then do the layer's handshake on it before framing (for TLS over
///   rustls, the feature `rustls` has one: `TlsConnector`).
/// * **Around the built-in one**: count, log or gate connects, rewrite the endpoint, or
///   pick a different connector per endpoint (the builder's default,
///   [`SocketConnector`](crate::SocketConnector), picks TCP or a Unix socket).
///
/// `tower::service_fn` over a closure is the shortest way to write one; the closure
/// must be `Clone` (capture `Arc`s and connectors, which are).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use socketchannel::{Channel, Endpoint, Metered, Order, Plain, TcpConnector};
/// use tokio_util::codec::{Framed, LinesCodec};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Around the built-in connector: count the connects.
/// let connects = Arc::new(AtomicU64::new(0));
/// let tcp = TcpConnector::new(LinesCodec::new());
/// let counted = connects.clone();
/// let counting = tower::service_fn(move |endpoint: Endpoint| {
///     counted.fetch_add(1, Ordering::Relaxed);
///     tcp.clone().oneshot(endpoint)
/// });
/// let channel: Channel<String, String> = Channel::builder()
///     .host("127.0.0.1:7000")
///     .connector(counting, Order::new(Plain))?;
///
/// // A stream of one's own (a proxy's, a tunnel's; here plain TCP), metered and framed.
/// let own = tower::service_fn(|endpoint: Endpoint| async move {
///     let stream = tokio::net::TcpStream::connect((endpoint.host(), endpoint.port())).await?;
///     Ok::<_, std::io::Error>(Framed::new(Metered::exact(stream), Metered::new(LinesCodec::new())))
/// });
/// let other: Channel<String, String> = Channel::builder()
///     .host("127.0.0.1:7001")
///     .connector(own, Order::new(Plain))?;
/// # drop((channel, other));
/// # Ok(())
/// # }
/// ```
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
