//! The built-in connectors (feature `tcp`): TCP ([`TcpConnector`], happy eyeballs over
//! the addresses a name resolves to), Unix domain sockets (`UnixConnector`, on Unix),
//! and the builder's default, which takes either by the endpoint ([`SocketConnector`]);
//! with the feature `rustls`, TLS over the TCP one (`TlsConnector`). Each frames its
//! stream with the user's codec, both [`Metered`](crate::Metered). The simulation's
//! network (feature `testing`) races names and speaks TLS with the same code.

pub(crate) mod race;
#[cfg(feature = "tcp")]
mod socket;
#[cfg(feature = "tcp")]
mod tcp;
#[cfg(feature = "rustls")]
pub(crate) mod tls;
#[cfg(all(unix, feature = "tcp"))]
mod unix;

#[cfg(feature = "tcp")]
pub use self::socket::{SocketConnector, SocketStream};
#[cfg(feature = "tcp")]
pub use self::tcp::TcpConnector;
#[cfg(feature = "rustls")]
pub use self::tls::TlsConnector;
#[cfg(all(unix, feature = "tcp"))]
pub use self::unix::UnixConnector;

/// The default read and write buffer capacity of a connection's `Framed` (also how many
/// bytes of calls a write gathers before it goes out). tokio-util's own 8 KiB made a
/// write per 8 calls of 1 KiB and two reads per 16 KiB reply: with 64 KiB the builder's
/// channel at 256 callers did 1.7-1.9x the requests/s at 0.54-0.68x the CPU per request
/// with 1 KiB payloads, 1.15-1.5x with 16 KiB, and the same with 16 B (issue 17).
#[cfg(any(feature = "tcp", feature = "testing"))]
pub(crate) const BUFFER: usize = 64 * 1024;

/// Frames `io` (metered: [`Metered::exact`](crate::Metered::exact) for a socket) with
/// `codec`, metered too, with `buffer` bytes of read and write buffer.
#[cfg(any(feature = "tcp", feature = "testing"))]
pub(crate) fn frame<IO, C>(
    io: crate::Metered<IO>,
    codec: C,
    buffer: usize,
) -> crate::MeteredFramed<IO, C>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    tokio_util::codec::Framed::with_capacity(io, crate::Metered::new(codec), buffer)
}
