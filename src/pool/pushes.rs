//! The push frames of every connection of a pool, merged.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;

/// The merged receiver of a [`Pool`](super::Pool)'s push frames
/// ([`Pool::pushes`](super::Pool::pushes)): each connection's frames in the order that
/// connection read them; frames of different connections in no set order. It ends when
/// every connection's receiver has.
pub struct Pushes<Resp> {
    receivers: Vec<mpsc::Receiver<Resp>>,
    /// Where the next poll starts, so a busy connection does not starve the others.
    next: usize,
}

impl<Resp> Pushes<Resp> {
    pub(crate) fn new(receivers: Vec<mpsc::Receiver<Resp>>) -> Option<Self> {
        (!receivers.is_empty()).then_some(Pushes { receivers, next: 0 })
    }

    /// The next push frame of any connection, or `None` once every connection's
    /// receiver has ended.
    pub async fn recv(&mut self) -> Option<Resp> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next push frame of any connection.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Resp>> {
        let n = self.receivers.len();
        let mut open = false;
        for k in 0..n {
            let i = (self.next + k) % n;
            match self.receivers[i].poll_recv(cx) {
                Poll::Ready(Some(frame)) => {
                    self.next = (i + 1) % n;
                    return Poll::Ready(Some(frame));
                }
                Poll::Ready(None) => {}
                Poll::Pending => open = true,
            }
        }
        if open {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }
}

impl<Resp> Stream for Pushes<Resp> {
    type Item = Resp;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Resp>> {
        self.poll_recv(cx)
    }
}

impl<Resp> fmt::Debug for Pushes<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pushes")
            .field("connections", &self.receivers.len())
            .finish()
    }
}
