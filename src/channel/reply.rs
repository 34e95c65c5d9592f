//! Every call shape through one `Service`: what a [`Call`](super::Call) resolves to.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tower::BoxError;
use tracing::Span;

use super::future::{Answer, ReplyStream, outcome};
use crate::error::Error;
use crate::mux::{Collect, Leavers, StreamShared, StreamTx, Until, Waiter};
use crate::shared::Shared;

/// How a call's reply comes back.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shape {
    One,
    Collect(Until),
    Stream(Until),
    Send,
}

impl Shape {
    /// The waiter the connection task resolves, and the caller's end of it.
    #[inline]
    pub(crate) fn open<Resp>(self, shared: &Shared<Resp>) -> (Waiter<Resp>, Pending<Resp>) {
        let (limits, leaving) = (&shared.limits, &shared.leaving);
        match self {
            Shape::One => {
                let (tx, rx) = oneshot::channel();
                (
                    Waiter::One(Some(tx)),
                    Pending::One(Answer::new(rx, leaving)),
                )
            }
            Shape::Collect(until) => {
                let (tx, rx) = oneshot::channel();
                (
                    Collect::waiter(tx, until, limits.clone()),
                    Pending::Many(Answer::new(rx, leaving)),
                )
            }
            Shape::Stream(until) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let shared = Arc::new(StreamShared::new(leaving.as_ref().map(Leavers::pick)));
                let waiter = StreamTx::waiter(tx, shared.clone(), until, limits.clone());
                (waiter, Pending::Stream(Some(ReplyStream::new(rx, shared))))
            }
            Shape::Send => {
                let (tx, rx) = oneshot::channel();
                (Waiter::Sent(tx), Pending::Sent(rx))
            }
        }
    }

    /// The shape's name, for spans and metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Shape::One => "one",
            Shape::Collect(_) => "many",
            Shape::Stream(_) => "stream",
            Shape::Send => "send",
        }
    }
}

/// The caller's end of a call in flight.
pub(crate) enum Pending<Resp> {
    One(Answer<Resp>),
    Many(Answer<Vec<Resp>>),
    Sent(oneshot::Receiver<Result<(), Error>>),
    /// Taken when the future resolves (a box: see [`ReplyStream`]).
    Stream(Option<ReplyStream<Resp>>),
}

/// The reply to a [`Call`](super::Call) made through `Service<Call<Req>>`, in the shape
/// the call asked for.
///
/// ```
/// # use socketchannel::Reply;
/// fn frames(reply: Reply<String>) -> Vec<String> {
///     match reply {
///         Reply::One(frame) => vec![frame],
///         Reply::Many(frames) => frames,
///         Reply::Stream(_) | Reply::Sent => Vec::new(),
///     }
/// }
/// ```
#[derive(Debug)]
pub enum Reply<Resp> {
    /// The one reply frame of a plain call ([`Call::new`](super::Call::new),
    /// [`Call::parts`](super::Call::parts), [`Call::read`](super::Call::read)).
    One(Resp),
    /// The frames of a [`Call::replies`](super::Call::replies) call.
    Many(Vec<Resp>),
    /// The frames of a [`Call::stream`](super::Call::stream) call, as they arrive; the
    /// first has arrived (or the reply had none).
    Stream(ReplyStream<Resp>),
    /// A [`Call::no_reply`](super::Call::no_reply) call was written.
    Sent,
}

impl<Resp> Reply<Resp> {
    /// The frame of a one-frame reply.
    pub fn into_one(self) -> Option<Resp> {
        match self {
            Reply::One(frame) => Some(frame),
            _ => None,
        }
    }

    /// The frames of a collected reply.
    pub fn into_many(self) -> Option<Vec<Resp>> {
        match self {
            Reply::Many(frames) => Some(frames),
            _ => None,
        }
    }

    /// The stream of a streamed reply.
    pub fn into_stream(self) -> Option<ReplyStream<Resp>> {
        match self {
            Reply::Stream(stream) => Some(stream),
            _ => None,
        }
    }
}

/// The future of a [`Service::call`](tower::Service::call) with a
/// [`Call`](super::Call): resolves to its [`Reply`].
///
/// # Cancel safety
///
/// Dropping it never shifts another caller's reply: see [`Channel`](super::Channel).
pub struct ReplyFuture<Resp> {
    pending: Pending<Resp>,
    span: Span,
    /// The call's metrics, until its outcome is taken (a stream's are the stream's).
    #[cfg(feature = "metrics")]
    timing: Option<crate::metrics::Timing>,
}

impl<Resp> ReplyFuture<Resp> {
    #[inline]
    pub(crate) fn new(pending: Pending<Resp>, span: Span) -> Self {
        ReplyFuture {
            pending,
            span,
            #[cfg(feature = "metrics")]
            timing: None,
        }
    }

    /// Times the call until its outcome reaches the caller: this future's, or for a
    /// stream, its first item.
    #[cfg(feature = "metrics")]
    pub(crate) fn time(&mut self, timing: crate::metrics::Timing) {
        match &mut self.pending {
            Pending::Stream(Some(stream)) => stream.time(timing),
            _ => self.timing = Some(timing),
        }
    }
}

impl<Resp> ReplyFuture<Resp> {
    /// The outcome as the channel's own [`Error`] (the `Future` boxes it for tower).
    pub(crate) fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<Reply<Resp>, Error>> {
        let _entered = self.span.enter();
        let outcome = match &mut self.pending {
            Pending::One(rx) => std::task::ready!(rx.poll(cx)).map(Reply::One),
            Pending::Many(rx) => std::task::ready!(rx.poll(cx)).map(Reply::Many),
            Pending::Sent(rx) => {
                outcome(std::task::ready!(Pin::new(rx).poll(cx))).map(|()| Reply::Sent)
            }
            Pending::Stream(stream) => {
                let s = stream
                    .as_mut()
                    .expect("ReplyFuture polled after it resolved");
                std::task::ready!(s.poll_first(cx))
                    .map(|()| Reply::Stream(stream.take().expect("checked above")))
            }
        };
        #[cfg(feature = "metrics")]
        crate::metrics::finish(&mut self.timing, &outcome);
        if let Err(err) = &outcome {
            tracing::debug!(error = %err, "call failed");
        }
        Poll::Ready(outcome)
    }
}

impl<Resp> Future for ReplyFuture<Resp> {
    type Output = Result<Reply<Resp>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_reply(cx).map_err(BoxError::from)
    }
}

impl<Resp> fmt::Debug for ReplyFuture<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyFuture").finish_non_exhaustive()
    }
}
