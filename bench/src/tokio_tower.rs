//! The peer: tokio-tower 0.7's pipeline (order) and multiplex (session) clients.
//!
//! tokio-tower's clients are not `Clone`; the documented way to share one between callers
//! is tower's `Buffer`, which adds a task of its own. tokio-tower is built on tower 0.4,
//! hence `tower04`. Both share `tower_service::Service` with tower 0.5, so the harness
//! drives them like every other client.

use std::pin::Pin;
use std::task::{Context, Poll};

use ::tokio_tower::multiplex::{self, TagStore};
use ::tokio_tower::pipeline;
use futures::{Sink, Stream};
use tokio::net::TcpStream;
use tower::BoxError;
use tower04::buffer::Buffer;

use crate::codec::{Frame, Transport, transport};

/// Requests `Buffer` queues before `poll_ready` waits: above the highest concurrency, so
/// the buffer never limits the benchmark.
const BUFFER_BOUND: usize = 1024;

/// tokio-tower's pipelined client, shared through a `Buffer`.
pub type Order = Buffer<pipeline::Client<Transport, BoxError, Frame>, Frame>;

/// tokio-tower's multiplexed client, shared through a `Buffer`.
pub type Session = Buffer<multiplex::Client<Tagged<Transport>, BoxError, Frame>, Frame>;

/// Spawns a pipelined client (and its buffer) over `stream`.
pub fn order(stream: TcpStream) -> Order {
    Buffer::new(pipeline::Client::new(transport(stream)), BUFFER_BOUND)
}

/// Spawns a multiplexed client (and its buffer) over `stream`.
pub fn session(stream: TcpStream) -> Session {
    Buffer::new(
        multiplex::Client::new(Tagged::new(transport(stream))),
        BUFFER_BOUND,
    )
}

/// A transport that assigns session ids: tokio-tower asks the transport itself to tag
/// requests ([`TagStore`]). Ids are a wrapping counter written into [`Frame::id`].
#[derive(Debug)]
pub struct Tagged<T> {
    inner: T,
    next: u64,
}

impl<T> Tagged<T> {
    fn new(inner: T) -> Self {
        Tagged { inner, next: 0 }
    }
}

impl<T: Unpin> TagStore<Frame, Frame> for Tagged<T> {
    type Tag = u64;

    fn assign_tag(self: Pin<&mut Self>, request: &mut Frame) -> u64 {
        let this = self.get_mut();
        this.next = this.next.wrapping_add(1);
        request.id = this.next;
        this.next
    }

    fn finish_tag(self: Pin<&mut Self>, response: &Frame) -> u64 {
        response.id
    }
}

impl<T: Sink<Frame> + Unpin> Sink<Frame> for Tagged<T> {
    type Error = T::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), T::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Frame) -> Result<(), T::Error> {
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), T::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), T::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl<T: Stream + Unpin> Stream for Tagged<T> {
    type Item = T::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
