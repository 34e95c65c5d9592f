//! The client's end of an in-memory connection: the raw end, whose writes may be cut,
//! and, on a network that speaks TLS, the client's TLS session over it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use crate::meter::Metered;

/// The client's end of an in-memory connection of a [`Net`](super::Net): a
/// `DuplexStream` whose writes may be cut after some bytes
/// ([`Net::cut_client_writes`](super::Net::cut_client_writes)), or, on a network set to
/// TLS ([`Net::tls`](super::Net::tls)), the client's TLS session over one, as the
/// crate's `TlsConnector` makes it (the cut is then below the session, where a
/// socket's would be).
#[derive(Debug)]
pub struct Pipe {
    link: Link,
}

#[derive(Debug)]
enum Link {
    Plain(Raw),
    #[cfg(feature = "rustls")]
    Tls(Box<tokio_rustls::client::TlsStream<crate::meter::Wire<Raw>>>),
}

/// The in-memory stream and what is left of its cut.
#[derive(Debug)]
pub(super) struct Raw {
    io: DuplexStream,
    /// Bytes it still takes before its writes fail; `None`: no limit.
    room: Option<usize>,
    /// Bytes it took.
    wrote: usize,
}

impl Raw {
    pub(super) fn new(io: DuplexStream, room: Option<usize>) -> Self {
        Raw { io, room, wrote: 0 }
    }

    /// Bytes it took so far.
    #[cfg(feature = "rustls")]
    pub(super) fn wrote(&self) -> usize {
        self.wrote
    }
}

impl Pipe {
    /// The plain end, metered as a socket is: one write, one system call.
    pub(super) fn plain(raw: Raw) -> Metered<Pipe> {
        Metered::exact(Pipe {
            link: Link::Plain(raw),
        })
    }

    /// A TLS session's end, metered above the session, as `TlsConnector` meters it.
    #[cfg(feature = "rustls")]
    pub(super) fn tls(
        tls: tokio_rustls::client::TlsStream<crate::meter::Wire<Raw>>,
    ) -> Metered<Pipe> {
        Metered::reporting(Pipe {
            link: Link::Tls(Box::new(tls)),
        })
    }
}

/// Calls `$f` on whichever stream the link is.
macro_rules! on_link {
    ($self:ident, $io:ident => $f:expr) => {
        match &mut $self.get_mut().link {
            Link::Plain($io) => {
                let $io = Pin::new($io);
                $f
            }
            #[cfg(feature = "rustls")]
            Link::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $f
            }
        }
    };
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_link!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_link!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_link!(self, io => io.poll_write_vectored(cx, bufs))
    }

    /// As the crate's sockets and TLS sessions are: the transport's writes then take the
    /// same path through `Metered` and tokio-rustls as over them.
    fn is_write_vectored(&self) -> bool {
        match &self.link {
            Link::Plain(io) => io.is_write_vectored(),
            #[cfg(feature = "rustls")]
            Link::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_link!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_link!(self, io => io.poll_shutdown(cx))
    }
}

impl AsyncRead for Raw {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Raw {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let take = match self.room {
            Some(0) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Some(room) => buf.len().min(room),
            None => buf.len(),
        };
        let poll = Pin::new(&mut self.io).poll_write(cx, &buf[..take]);
        if let Poll::Ready(Ok(n)) = &poll {
            self.wrote += n;
            if let Some(room) = &mut self.room {
                *room -= n;
            }
        }
        poll
    }

    /// Gathers as a socket does, the cut taking a prefix of the slices.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = match self.room {
            Some(0) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Some(mut room) => {
                let mut cut = Vec::with_capacity(bufs.len());
                for b in bufs {
                    if room == 0 {
                        break;
                    }
                    let take = b.len().min(room);
                    cut.push(io::IoSlice::new(&b[..take]));
                    room -= take;
                }
                Pin::new(&mut self.io).poll_write_vectored(cx, &cut)
            }
            None => Pin::new(&mut self.io).poll_write_vectored(cx, bufs),
        };
        if let Poll::Ready(Ok(n)) = &poll {
            self.wrote += n;
            if let Some(room) = &mut self.room {
                *room -= n;
            }
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
