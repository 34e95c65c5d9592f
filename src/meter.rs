//! Bytes moved by the transport, and the reads and writes that moved them, for the stall
//! timer and the counters.
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

/// What every [`Metered`] IO polled on one thread has moved so far: the counts only
/// grow (wrapping), so the difference of two marks is what moved between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Bytes read.
    pub(crate) read: u64,
    /// Bytes the IO accepted for writing.
    pub(crate) written: u64,
    /// Reads that returned bytes (or the end of the stream).
    pub(crate) reads: u64,
    /// Writes that the IO accepted bytes of.
    pub(crate) writes: u64,
}

impl Mark {
    /// What moved from `earlier` to `self`.
    pub(crate) fn since(self, earlier: Mark) -> Mark {
        Mark {
            read: self.read.wrapping_sub(earlier.read),
            written: self.written.wrapping_sub(earlier.written),
            reads: self.reads.wrapping_sub(earlier.reads),
            writes: self.writes.wrapping_sub(earlier.writes),
        }
    }
}

thread_local! {
    static MOVED: Cell<Mark> = const {
        Cell::new(Mark { read: 0, written: 0, reads: 0, writes: 0 })
    };
}

/// What every [`Metered`] IO has moved on this thread so far.
pub(crate) fn mark() -> Mark {
    MOVED.with(Cell::get)
}

fn add(update: impl FnOnce(&mut Mark)) {
    MOVED.with(|cell| {
        let mut mark = cell.get();
        update(&mut mark);
        cell.set(mark);
    });
}

fn add_written(n: usize) {
    add(|m| {
        m.written = m.written.wrapping_add(n as u64);
        m.writes = m.writes.wrapping_add(1);
    });
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
            let n = (buf.filled().len() - before) as u64;
            add(|m| {
                m.read = m.read.wrapping_add(n);
                m.reads = m.reads.wrapping_add(1);
            });
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
            add_written(n);
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
            add_written(n);
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
