//! The client's end of an in-memory connection.

use std::io;
use std::pin::Pin;

use tokio::io::DuplexStream;

/// The client's end of an in-memory connection of a [`Net`]: a `DuplexStream` whose
/// writes may be cut after some bytes ([`Net::cut_client_writes`]).
#[derive(Debug)]
pub struct Pipe {
    pub(super) io: DuplexStream,
    /// Bytes it still takes before its writes fail; `None`: no limit.
    pub(super) room: Option<usize>,
}

impl tokio::io::AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Pipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let take = match self.room {
            Some(0) => return std::task::Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Some(room) => buf.len().min(room),
            None => buf.len(),
        };
        let poll = Pin::new(&mut self.io).poll_write(cx, &buf[..take]);
        if let (std::task::Poll::Ready(Ok(n)), Some(room)) = (&poll, &mut self.room) {
            *room -= *n;
        }
        poll
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
