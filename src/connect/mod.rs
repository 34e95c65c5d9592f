//! The built-in connectors (feature `tcp`): TCP ([`TcpConnector`], happy eyeballs over
//! the addresses a name resolves to), Unix domain sockets (`UnixConnector`, on Unix),
//! and the builder's default, which takes either by the endpoint ([`SocketConnector`]);
//! with the feature `rustls`, TLS over the TCP one (`TlsConnector`). Each frames its
//! stream with the user's codec, both [`Metered`](crate::Metered).

mod socket;
mod tcp;
#[cfg(feature = "rustls")]
mod tls;
#[cfg(unix)]
mod unix;

pub use self::socket::{SocketConnector, SocketStream};
pub use self::tcp::TcpConnector;
#[cfg(feature = "rustls")]
pub use self::tls::TlsConnector;
#[cfg(unix)]
pub use self::unix::UnixConnector;

/// The default read and write buffer capacity of a connection's `Framed`, as
/// tokio-util's own default.
const BUFFER: usize = 8 * 1024;

/// Frames `io` with `codec`, both metered, with `buffer` bytes of read and write buffer.
fn frame<IO, C>(io: IO, codec: C, buffer: usize) -> crate::MeteredFramed<IO, C>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    tokio_util::codec::Framed::with_capacity(
        crate::Metered::new(io),
        crate::Metered::new(codec),
        buffer,
    )
}
