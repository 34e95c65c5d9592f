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

/// How many bytes of calls one pass of the connection task gathers before a write goes
/// out (`Framed`'s backpressure boundary), at most: 16 times the buffer capacity, and
/// at least that capacity (a smaller buffer asked for less memory). A pass writes
/// every call its callers have queued (up to 256) and then flushes, so this binds only
/// large frames: at 64 KiB a pass of 16 KiB calls went out as a write per 4 calls
/// (0.25 writes per request, against the hand-written client's 0.005); with 1 MiB it is
/// 0.016, and at 256 callers on a current-thread runtime 8.0-8.5 against 9.2-10.7 us of
/// CPU per request (issue 17). The write buffer grows to this size only while that
/// much is queued, and keeps the capacity (hyper's write buffer goes to 400 KiB).
#[cfg(any(feature = "tcp", feature = "testing"))]
pub(crate) const WRITE_GATHER: usize = 1024 * 1024;

/// Frames `io` (metered: [`Metered::exact`](crate::Metered::exact) for a socket) with
/// `codec`, metered too, with `buffer` bytes of read and write buffer, writing once
/// [`WRITE_GATHER`] bytes (at most 16 times `buffer`, at least `buffer`) are gathered.
#[cfg(any(feature = "tcp", feature = "testing"))]
pub(crate) fn frame<IO, C>(
    io: crate::Metered<IO>,
    codec: C,
    buffer: usize,
) -> crate::MeteredFramed<IO, C>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let mut framed =
        tokio_util::codec::Framed::with_capacity(io, crate::Metered::new(codec), buffer);
    framed.set_backpressure_boundary(WRITE_GATHER.min(buffer.saturating_mul(16)).max(buffer));
    framed
}
