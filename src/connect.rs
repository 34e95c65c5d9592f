//! The default connector: TCP, framed with the user's codec.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::net::{TcpSocket, TcpStream, lookup_host};
use tokio_util::codec::Framed;

use crate::meter::Metered;
use crate::reconnect::Endpoint;

/// The default read and write buffer capacity of a connection's `Framed`, as
/// tokio-util's own default.
const BUFFER: usize = 8 * 1024;

/// Opens a TCP connection to an [`Endpoint`] and frames it with a codec: the connector
/// a [`Builder`](crate::Builder) uses unless given another.
///
/// The host is resolved at every call and each address it resolves to is tried in turn;
/// the error names the last failure. The stream is [`Metered`], so every byte it moves
/// counts as progress for the stall timer and in the counters. Any [`Connector`](crate::Connector) can stand in its
/// place (a Unix socket, TLS, an in-memory pipe for tests).
#[derive(Debug, Clone)]
pub struct TcpConnector<C> {
    codec: C,
    nodelay: bool,
    keepalive: bool,
    buffer: usize,
}

impl<C: Clone> TcpConnector<C> {
    /// A connector framing with `codec`, with `TCP_NODELAY` and keepalive on.
    pub fn new(codec: C) -> Self {
        TcpConnector {
            codec,
            nodelay: true,
            keepalive: true,
            buffer: BUFFER,
        }
    }

    /// The initial capacity of the read and write buffers of each connection's
    /// `Framed` (default 8 KiB; they grow for larger frames).
    pub fn buffer_capacity(mut self, bytes: usize) -> Self {
        self.buffer = bytes;
        self
    }

    /// Sets `TCP_NODELAY` on each connection (default on: requests are batched by the
    /// channel already, so Nagle's algorithm only adds latency).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// Sets `SO_KEEPALIVE` on each connection (default on).
    pub fn keepalive(mut self, on: bool) -> Self {
        self.keepalive = on;
        self
    }

    async fn connect(self, endpoint: Endpoint) -> io::Result<Framed<Metered<TcpStream>, C>> {
        let mut last = None;
        for addr in lookup_host((endpoint.host(), endpoint.port())).await? {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_keepalive(self.keepalive)?;
            match socket.connect(addr).await {
                Ok(stream) => {
                    stream.set_nodelay(self.nodelay)?;
                    return Ok(Framed::with_capacity(
                        Metered::new(stream),
                        self.codec,
                        self.buffer,
                    ));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "host resolved to no address")
        }))
    }
}

impl<C> tower::Service<Endpoint> for TcpConnector<C>
where
    C: Clone + Send + 'static,
{
    type Response = Framed<Metered<TcpStream>, C>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Framed<Metered<TcpStream>, C>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        Box::pin(self.clone().connect(endpoint))
    }
}
