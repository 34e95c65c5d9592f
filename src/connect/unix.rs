//! Unix domain sockets, framed with the user's codec.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::meter::MeteredFramed;
use tokio::net::UnixStream;

use super::BUFFER;
use crate::reconnect::Endpoint;

/// Opens a connection to a Unix domain socket endpoint (`"unix:PATH"`,
/// [`Endpoint::unix`]) and frames it with a codec, the stream [`Metered`](crate::Metered) as
/// [`TcpConnector`](crate::TcpConnector)'s is. Only on Unix platforms.
///
/// A TCP endpoint fails here with [`io::ErrorKind::InvalidInput`]. The builder's
/// default connector ([`SocketConnector`](crate::SocketConnector)) takes both kinds, so
/// `Channel::builder().host("unix:/run/redis.sock")` needs nothing else; this one is
/// for [`Builder::connector`](crate::Builder::connector) and layers.
///
/// ```no_run
/// use socketchannel::{Channel, Order, Plain, UnixConnector};
/// use tokio_util::codec::LinesCodec;
///
/// # fn demo() -> Result<(), socketchannel::InvalidEndpoint> {
/// let channel: Channel<String, String> = Channel::builder()
///     .host("unix:/run/lines.sock")
///     .connector(UnixConnector::new(LinesCodec::new()), Order::new(Plain))?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct UnixConnector<C> {
    codec: C,
    buffer: usize,
}

impl<C: Clone> UnixConnector<C> {
    /// A connector framing with `codec`.
    pub fn new(codec: C) -> Self {
        UnixConnector {
            codec,
            buffer: BUFFER,
        }
    }

    /// The initial capacity of the read and write buffers of each connection's
    /// `Framed` (default 64 KiB; they grow for larger frames). It is also how much a
    /// read takes at most: smaller saves memory per connection (the two buffers are
    /// allocated when it connects), and costs a read per that many bytes. A write goes
    /// out once the connection task has written every call queued, or once 16 times
    /// this capacity (1 MiB at most, this capacity at least) is gathered: the write
    /// buffer grows to that while that many bytes of calls wait at once, and keeps the
    /// capacity it grew to.
    pub fn buffer_capacity(mut self, bytes: usize) -> Self {
        self.buffer = bytes;
        self
    }

    async fn connect(self, endpoint: Endpoint) -> io::Result<MeteredFramed<UnixStream, C>> {
        let stream = stream(&endpoint).await?;
        Ok(super::frame(
            crate::Metered::exact(stream).send_queue(crate::meter::queue::of),
            self.codec,
            self.buffer,
        ))
    }
}

/// A connected stream to a Unix endpoint.
pub(super) async fn stream(endpoint: &Endpoint) -> io::Result<UnixStream> {
    match endpoint.unix_path() {
        Some(path) => connect_path(path).await,
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{endpoint} is a TCP host, not a Unix socket"),
        )),
    }
}

/// Connects to `path`, the error saying which path failed (a missing socket file's
/// `NotFound` alone does not).
pub(super) async fn connect_path(path: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(path)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl<C> tower::Service<Endpoint> for UnixConnector<C>
where
    C: Clone + Send + 'static,
{
    type Response = MeteredFramed<UnixStream, C>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<MeteredFramed<UnixStream, C>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        Box::pin(self.clone().connect(endpoint))
    }
}
