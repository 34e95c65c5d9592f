//! The builder's default connector: TCP or a Unix domain socket, by the endpoint.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::meter::MeteredFramed;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;

use super::TcpConnector;
use crate::reconnect::Endpoint;

/// Connects a TCP endpoint with a [`TcpConnector`] and a Unix one (`"unix:PATH"`) by its
/// socket, as a `UnixConnector` (Unix only) does, and frames either stream
/// with the codec: the connector of the [`Builder`](crate::Builder)'s `order` and
/// `session`, so a channel's host and backups may mix the two.
///
/// Both kinds are one [`SocketStream`], an enum: a read or write is a `match`, no
/// dynamic dispatch. On a platform without Unix sockets a Unix endpoint fails with
/// [`io::ErrorKind::Unsupported`].
///
/// ```no_run
/// use socketchannel::{Channel, Order, Plain, SocketConnector, TcpConnector};
/// use tokio_util::codec::LinesCodec;
///
/// # fn demo() -> Result<(), socketchannel::InvalidEndpoint> {
/// let connector = SocketConnector::new(TcpConnector::new(LinesCodec::new()).nodelay(false));
/// let channel: Channel<String, String> = Channel::builder()
///     .host("unix:/run/lines.sock")
///     .backup("10.0.0.2:7000")
///     .connector(connector, Order::new(Plain))?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SocketConnector<C> {
    tcp: TcpConnector<C>,
}

impl<C: Clone> SocketConnector<C> {
    /// Connects TCP endpoints with `tcp` (its socket options, its happy eyeballs delay),
    /// and frames Unix sockets with its codec and buffer capacity.
    pub fn new(tcp: TcpConnector<C>) -> Self {
        SocketConnector { tcp }
    }

    async fn connect(self, endpoint: Endpoint) -> io::Result<MeteredFramed<SocketStream, C>> {
        let stream = match endpoint.unix_path() {
            #[cfg(unix)]
            Some(path) => SocketStream::Unix(super::unix::connect_path(path).await?),
            #[cfg(not(unix))]
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{endpoint}: Unix sockets are not supported on this platform"),
                ));
            }
            None => SocketStream::Tcp(self.tcp.sockets().stream(&endpoint).await?),
        };
        Ok(super::frame(
            crate::Metered::exact(stream).send_queue(SocketStream::queued),
            self.tcp.codec,
            self.tcp.buffer,
        ))
    }
}

impl<C> tower::Service<Endpoint> for SocketConnector<C>
where
    C: Clone + Send + 'static,
{
    type Response = MeteredFramed<SocketStream, C>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<MeteredFramed<SocketStream, C>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        Box::pin(self.clone().connect(endpoint))
    }
}

/// A TCP stream or (on Unix) a Unix domain socket's: what
/// [`SocketConnector`] connects.
#[derive(Debug)]
pub enum SocketStream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain socket connection.
    #[cfg(unix)]
    Unix(UnixStream),
}

/// `$e` on the stream inside, whichever it is.
macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            SocketStream::Tcp($s) => $e,
            #[cfg(unix)]
            SocketStream::Unix($s) => $e,
        }
    };
}

impl SocketStream {
    /// Its send queue, for the stall timer (`meter::queue`).
    fn queued(&self) -> Option<u64> {
        each!(self, s => crate::meter::queue::of(s))
    }
}

impl AsyncRead for SocketStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for SocketStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}
