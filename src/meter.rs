//! Bytes moved by the transport, for the stall timer and the counters.
//!
//! [`Metered`] wraps an IO object (a `TcpStream`, a TLS stream) below the codec's
//! `Framed` and counts what each read and write moved, into counters of the thread
//! that polls it. The engine reads them before and after it polls its transport, in the
//! same poll on the same thread, so the difference is what its own transport moved:
//! nothing has to be threaded through the user's codec or the `Transport` bound.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

thread_local! {
    static READ: Cell<u64> = const { Cell::new(0) };
    static WRITTEN: Cell<u64> = const { Cell::new(0) };
}

/// Bytes read and written on this thread so far, by every [`Metered`] IO.
pub(crate) fn mark() -> (u64, u64) {
    (READ.with(Cell::get), WRITTEN.with(Cell::get))
}

fn add(counter: &'static std::thread::LocalKey<Cell<u64>>, n: usize) {
    counter.with(|c| c.set(c.get().wrapping_add(n as u64)));
}

pin_project_lite::pin_project! {
    /// An IO object whose bytes count as progress for the stall timer
    /// ([`Config::stall_timeout`](crate::Config::stall_timeout)) and in
    /// [`Counters`](crate::Counters). [`TcpConnector`](crate::TcpConnector) frames a
    /// `Metered<TcpStream>`; wrap the IO of a connector of your own the same way
    /// (`Framed::new(Metered::new(io), codec)`). Without it only whole frames count.
    #[derive(Debug)]
    pub struct Metered<IO> {
        #[pin]
        io: IO,
    }
}

impl<IO> Metered<IO> {
    /// Wraps `io`.
    pub fn new(io: IO) -> Self {
        Metered { io }
    }

    /// The IO object.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The IO object, mutably.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Unwraps the IO object.
    pub fn into_inner(self) -> IO {
        self.io
    }
}

impl<IO: AsyncRead> AsyncRead for Metered<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = self.project().io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            add(&READ, buf.filled().len() - before);
        }
        poll
    }
}

impl<IO: AsyncWrite> AsyncWrite for Metered<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = self.project().io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            add(&WRITTEN, n);
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = self.project().io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            add(&WRITTEN, n);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
