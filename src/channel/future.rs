//! The futures and streams a [`Channel`](super::Channel) call returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::{mpsc, oneshot};
use tower::BoxError;
use tracing::Span;

use crate::error::{Error, Kind};
use crate::mux::{Leavers, StreamShared, Stripe};

/// The outcome a connection task sent, or, when the reply sender was dropped without a
/// word (a panic while delivering the reply, a task that vanished), `Closed` and *may
/// have executed*: only a call known to be unwritten says *not sent* (its envelope
/// does, when dropped), so a retry never runs a request twice on a guess.
pub(crate) fn outcome<T>(
    received: Result<Result<T, Error>, oneshot::error::RecvError>,
) -> Result<T, Error> {
    received.unwrap_or_else(|_| Err(vanished()))
}

fn vanished() -> Error {
    Error::new(Kind::Closed).written(true)
}

/// The caller's end of a call's reply. Dropped before its outcome came, on a channel
/// whose protocol sends cancel notices, it tells the connection task, which owes the
/// server of a written call a notice (`mux/notice.rs`).
pub(crate) struct Answer<T> {
    rx: oneshot::Receiver<Result<T, Error>>,
    /// The way to the channel's `Leaving`, when its protocol sends notices, until the
    /// outcome is taken.
    leaving: Option<Arc<Stripe>>,
}

impl<T> Answer<T> {
    #[inline]
    pub(crate) fn new(rx: oneshot::Receiver<Result<T, Error>>, leaving: &Option<Leavers>) -> Self {
        Answer {
            rx,
            leaving: leaving.as_ref().map(Leavers::pick),
        }
    }

    /// The outcome, once sent. Taken with `try_recv` first: a call is polled once before
    /// its reply can have come (that poll registers the waker) and once after, and
    /// `try_recv` takes a sent outcome for fewer instructions than the receiver's
    /// `poll` (about 40 per call, under callgrind).
    #[inline(always)]
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        match self.rx.try_recv() {
            Ok(outcome) => {
                self.leaving = None;
                return Poll::Ready(outcome);
            }
            Err(oneshot::error::TryRecvError::Closed) => {
                self.leaving = None;
                return Poll::Ready(Err(vanished()));
            }
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let received = std::task::ready!(Pin::new(&mut self.rx).poll(cx));
        self.leaving = None;
        Poll::Ready(outcome(received))
    }

    /// Has the outcome come (or the sender gone)? It is taken then, and a drop tells
    /// nobody. For the channel's own calls (the idle ping), which nobody polls.
    pub(crate) fn answered(&mut self) -> bool {
        if let Err(oneshot::error::TryRecvError::Empty) = self.rx.try_recv() {
            return false;
        }
        self.leaving = None;
        true
    }

    /// Dropped on a channel that sends notices: tells it if the outcome never came.
    #[cold]
    #[inline(never)]
    fn leave(&mut self, leaving: &Stripe) {
        // `Empty`: no outcome yet, and the sender still waits (an outcome sent but not
        // taken means the call is over; a sender gone reads `Closed`). Closed before
        // it is told: the task this wakes (on another worker, perhaps at once) must
        // find the caller gone. An outcome sent in between makes the scan find nothing.
        if let Err(oneshot::error::TryRecvError::Empty) = self.rx.try_recv() {
            self.rx.close();
            leaving.left();
        }
    }
}

impl<T> Drop for Answer<T> {
    #[inline]
    fn drop(&mut self) {
        if let Some(leaving) = self.leaving.take() {
            self.leave(&leaving);
        }
    }
}

/// The reply of a [`Service::call`](tower::Service::call) on a
/// [`Channel`](super::Channel).
///
/// # Cancel safety
///
/// Dropping it never shifts another caller's reply: see [`Channel`](super::Channel).
pub struct ResponseFuture<Resp> {
    rx: Answer<Resp>,
    span: Span,
    /// The call's metrics, until its outcome is taken.
    #[cfg(feature = "metrics")]
    timing: Option<crate::metrics::Timing>,
}

impl<Resp> ResponseFuture<Resp> {
    pub(crate) fn waiting(
        rx: Answer<Resp>,
        span: Span,
        #[cfg(feature = "metrics")] timing: crate::metrics::Timing,
    ) -> Self {
        ResponseFuture {
            rx,
            span,
            #[cfg(feature = "metrics")]
            timing: Some(timing),
        }
    }
}

impl<Resp> Future for ResponseFuture<Resp> {
    type Output = Result<Resp, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let outcome = std::task::ready!(this.rx.poll(cx));
        #[cfg(feature = "metrics")]
        crate::metrics::finish(&mut this.timing, &outcome);
        if let Err(err) = &outcome {
            tracing::debug!(error = %err, "request failed");
        }
        Poll::Ready(outcome.map_err(BoxError::from))
    }
}

impl<Resp> fmt::Debug for ResponseFuture<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// The reply frames of [`Channel::stream`](super::Channel::stream), as they arrive.
///
/// It ends after the last frame, or after an error. A stream whose connection task
/// vanished mid-reply (its sender dropped without the last frame) ends with one
/// `Kind::Closed` error, *may have executed*, never silently.
pub struct ReplyStream<Resp> {
    /// Boxed: a stream is rare, and [`Reply`](super::Reply), which every call through
    /// `Service<Call>` returns and moves, is as large as its largest variant.
    inner: Box<StreamState<Resp>>,
}

/// A [`ReplyStream`]'s state.
struct StreamState<Resp> {
    rx: mpsc::UnboundedReceiver<Result<Resp, Error>>,
    shared: Arc<StreamShared>,
    /// The end was seen (and reported when it was not a clean one).
    ended: bool,
    /// The first frame, taken early by a [`ReplyFuture`](super::ReplyFuture).
    held: Option<Resp>,
    /// The call's metrics, until its first item (or its end) is taken.
    #[cfg(feature = "metrics")]
    timing: Option<crate::metrics::Timing>,
}

impl<Resp> ReplyStream<Resp> {
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<Result<Resp, Error>>,
        shared: Arc<StreamShared>,
    ) -> Self {
        ReplyStream {
            inner: Box::new(StreamState {
                rx,
                shared,
                ended: false,
                held: None,
                #[cfg(feature = "metrics")]
                timing: None,
            }),
        }
    }

    /// Times the call this stream is the reply of, until its first item or its end.
    #[cfg(feature = "metrics")]
    pub(crate) fn time(&mut self, timing: crate::metrics::Timing) {
        self.inner.timing = Some(timing);
    }

    /// Waits for the first frame and holds it, or for the end; the error of a reply
    /// that failed before its first frame (the call's error, for a retry layer).
    pub(crate) fn poll_first(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let inner = &mut *self.inner;
        Poll::Ready(match std::task::ready!(inner.poll_item(cx)) {
            Some(Ok(frame)) => {
                inner.held = Some(frame);
                Ok(())
            }
            Some(Err(err)) => Err(err),
            None => Ok(()),
        })
    }

    /// The next frame, or `None` after the last one.
    pub async fn next(&mut self) -> Option<Result<Resp, Error>> {
        std::future::poll_fn(|cx| self.inner.poll_item(cx)).await
    }
}

impl<Resp> StreamState<Resp> {
    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Resp, Error>>> {
        let item = std::task::ready!(self.poll_next_item(cx));
        // The first item (or the end) is the call's outcome.
        #[cfg(feature = "metrics")]
        if let Some(timing) = self.timing.take() {
            timing.finish(match &item {
                Some(Err(err)) => Err(err),
                Some(Ok(_)) | None => Ok(()),
            });
        }
        Poll::Ready(item)
    }

    fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Resp, Error>>> {
        if let Some(frame) = self.held.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(item) => {
                self.shared.buffered.fetch_sub(1, Ordering::AcqRel);
                if item.is_err() {
                    // An error ends the stream: the rest of the reply is read and
                    // dropped by the connection, not kept for a reader who is done.
                    self.ended = true;
                    self.rx.close();
                    // Before the reply's end (an error frame mid-reply) the reader has
                    // left as if dropped, while the server still works on the call:
                    // its connection is told now (its cancel notice), not at the drop.
                    if !self.shared.finished.load(Ordering::Acquire) {
                        self.shared.left();
                    }
                }
                Poll::Ready(Some(item))
            }
            None => {
                self.ended = true;
                if self.shared.finished.load(Ordering::Acquire) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(vanished())))
                }
            }
        }
    }
}

impl<Resp> Drop for StreamState<Resp> {
    fn drop(&mut self) {
        // Closed first: the task this wakes (on another worker, perhaps at once) must
        // find the reader gone.
        self.rx.close();
        // A finished reply has left its connection's waiting calls, or was failed there
        // (a deadline, a limit), which told the task itself: a wake would only make it
        // scan for nothing.
        if !self.shared.finished.load(Ordering::Acquire) {
            self.shared.left();
        }
    }
}

impl<Resp> Stream for ReplyStream<Resp> {
    type Item = Result<Resp, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_item(cx)
    }
}

impl<Resp> fmt::Debug for ReplyStream<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyStream").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::task::{Wake, Waker};

    /// A waker that records that it was woken.
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Drops a stream whose reply is `finished` or not; was its connection woken?
    fn dropping_wakes(finished: bool) -> bool {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let shared = Arc::new(StreamShared::default());
        *shared.leaving.lock().unwrap() = Some(Waker::from(flag.clone()));
        shared.finished.store(finished, Ordering::Release);
        let (_tx, rx) = mpsc::unbounded_channel::<Result<u8, Error>>();
        drop(ReplyStream::new(rx, shared));
        flag.0.load(Ordering::SeqCst)
    }

    #[test]
    fn dropping_a_stream_wakes_its_connection_only_before_the_end_of_its_reply() {
        assert!(
            dropping_wakes(false),
            "a reader leaving mid-reply is owed a notice"
        );
        assert!(
            !dropping_wakes(true),
            "a finished reply left nothing to notice: the wake is a scan for nothing"
        );
    }
}
