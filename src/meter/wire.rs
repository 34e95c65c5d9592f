//! [`Wire`]: the IO under a layer that may fail a write after part of it left (TLS),
//! telling the [`Metered`] above that layer what reached the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[cfg(doc)]
use super::Metered;
use super::{BELOW, Below, add};

pin_project_lite::pin_project! {
    /// The IO under a layer that may fail a write after part of it left, such as a TLS
    /// session (`TlsStream<Wire<TcpStream>>`), framed with a [`Metered`] above that
    /// layer: it tells the `Metered` whether any bytes reached it during a write that
    /// then failed. Without it such a write counts as having taken everything it was
    /// offered (every call in it *may have executed*); with it, a write that failed
    /// before any byte reached the socket counts as taking nothing, so its calls fail
    /// *not sent* when the connection ends. The crate's
    /// [`TlsConnector`](crate::TlsConnector) frames its TLS stream so.
    ///
    /// A write that fails after some of the same `Metered` write's bytes reached the
    /// socket is not failed at once: the `Wire` keeps the error, wakes the task and says
    /// `Pending`, so that the layer above returns how much of its own input it took
    /// (TLS: the plaintext the session accepted), which it reports only for a write
    /// that did not fail. The kept error is the answer to the next write, flush or
    /// shutdown. The calls whose bytes the layer took may have executed; the others fail
    /// *not sent*. Under [`Metered::new`], a layer that says `Pending` after bytes
    /// left (an error kept or not) has all it was offered counted as taken at once.
    ///
    /// A write of the IO that takes nothing of a non-empty buffer (`Ok(0)`) is passed up
    /// as a `WriteZero` error: a layer above may read `Ok(0)` as "try later" and wait
    /// for a wake-up that never comes (tokio-rustls does).
    #[derive(Debug, Default)]
    pub struct Wire<IO> {
        #[pin]
        io: IO,
        failed: Option<io::Error>,
        // Bytes the IO took, all told (wrapping): for the stall timer's readings of the
        // socket's send queue, in its unit (`Metered::send_queue_counted`).
        sent: u64,
    }
}

impl<IO> Wire<IO> {
    /// Wraps `io`.
    pub fn new(io: IO) -> Self {
        Wire {
            io,
            failed: None,
            sent: 0,
        }
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

    /// The bytes the IO object took, all told (wrapping).
    // Only the TLS connector reads a `Wire`'s count.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }
}

/// Notes what a write of a [`Wire`] moved. A write that failed after an earlier one of
/// the same `Metered` write moved bytes is kept in `failed` and turned into `Pending`
/// (see [`Wire`]).
fn saw(
    poll: Poll<io::Result<usize>>,
    failed: &mut Option<io::Error>,
    sent: &mut u64,
    cx: &Context<'_>,
) -> Poll<io::Result<usize>> {
    let below = BELOW.get();
    if below == Below::Moved
        && let Poll::Ready(Err(err)) = poll
    {
        *failed = Some(err);
        BELOW.set(Below::Kept);
        cx.waker().wake_by_ref();
        return Poll::Pending;
    }
    let moved = match poll {
        Poll::Ready(Ok(n)) if n > 0 => {
            *sent = sent.wrapping_add(n as u64);
            add(|m| m.below = m.below.wrapping_add(n as u64));
            true
        }
        _ => false,
    };
    BELOW.set(match (below, moved) {
        (Below::Outside, _) => Below::Outside,
        (Below::Kept, _) => Below::Kept,
        (_, true) | (Below::Moved, _) => Below::Moved,
        _ => Below::Nothing,
    });
    poll
}

/// A write of bytes that took none says the IO can take no more: an error
/// (`WriteZero`), kept or passed up like any other. Passed up as `Ok(0)`, a layer
/// above may read it as "try later" with no wake-up to come (tokio-rustls does).
fn no_zero(poll: Poll<io::Result<usize>>, offered: bool) -> Poll<io::Result<usize>> {
    match poll {
        Poll::Ready(Ok(0)) if offered => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        poll => poll,
    }
}

/// A [`Wire`]'s kept error, the answer to the write after the one that kept it: that
/// write moved nothing (and the error is never kept again).
fn kept(err: io::Error) -> Poll<io::Result<usize>> {
    if BELOW.get() == Below::Unseen {
        BELOW.set(Below::Nothing);
    }
    Poll::Ready(Err(err))
}

impl<IO: AsyncRead> AsyncRead for Wire<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Wire<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if let Some(err) = this.failed.take() {
            return kept(err);
        }
        let poll = no_zero(this.io.poll_write(cx, buf), !buf.is_empty());
        saw(poll, this.failed, this.sent, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if let Some(err) = this.failed.take() {
            return kept(err);
        }
        let offered = bufs.iter().any(|b| !b.is_empty());
        let poll = no_zero(this.io.poll_write_vectored(cx, bufs), offered);
        saw(poll, this.failed, this.sent, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(err) = this.failed.take() {
            return Poll::Ready(Err(err));
        }
        this.io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(err) = this.failed.take() {
            return Poll::Ready(Err(err));
        }
        this.io.poll_shutdown(cx)
    }
}
