//! The futures and streams a [`Channel`](super::Channel) call returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::{mpsc, oneshot};
use tower::BoxError;
use tracing::Span;

use crate::error::{Error, Kind};

/// The outcome a connection task sent, or `Closed` when it is gone without a word.
pub(crate) fn outcome<T>(
    received: Result<Result<T, Error>, oneshot::error::RecvError>,
) -> Result<T, Error> {
    received.unwrap_or_else(|_| Err(Error::new(Kind::Closed)))
}

/// The reply of a [`Service::call`](tower::Service::call) on a
/// [`Channel`](super::Channel).
///
/// # Cancel safety
///
/// Dropping it never shifts another caller's reply: see [`Channel`](super::Channel).
pub struct ResponseFuture<Resp> {
    state: Outcome<Resp>,
    span: Span,
}

enum Outcome<Resp> {
    Waiting(oneshot::Receiver<Result<Resp, Error>>),
    Failed(Option<Error>),
}

impl<Resp> ResponseFuture<Resp> {
    pub(crate) fn waiting(rx: oneshot::Receiver<Result<Resp, Error>>, span: Span) -> Self {
        ResponseFuture {
            state: Outcome::Waiting(rx),
            span,
        }
    }

    pub(crate) fn failed(err: Error) -> Self {
        ResponseFuture {
            state: Outcome::Failed(Some(err)),
            span: Span::none(),
        }
    }
}

impl<Resp> Future for ResponseFuture<Resp> {
    type Output = Result<Resp, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let outcome = match &mut this.state {
            Outcome::Waiting(rx) => outcome(std::task::ready!(Pin::new(rx).poll(cx))),
            Outcome::Failed(err) => Err(err.take().unwrap_or_else(|| Error::new(Kind::Closed))),
        };
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
pub struct ReplyStream<Resp> {
    rx: mpsc::UnboundedReceiver<Result<Resp, Error>>,
}

impl<Resp> ReplyStream<Resp> {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Result<Resp, Error>>) -> Self {
        ReplyStream { rx }
    }

    /// The next frame, or `None` after the last one.
    pub async fn next(&mut self) -> Option<Result<Resp, Error>> {
        std::future::poll_fn(|cx| self.rx.poll_recv(cx)).await
    }
}

impl<Resp> Stream for ReplyStream<Resp> {
    type Item = Result<Resp, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl<Resp> fmt::Debug for ReplyStream<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyStream").finish_non_exhaustive()
    }
}
