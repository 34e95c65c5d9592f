//! The multiplexing engine: one connection, many calls.
//!
//! A connection task owns the transport (any [`Transport`](crate::Transport): a `Sink` of
//! requests and a `Stream` of replies, usually a [`Framed`](tokio_util::codec::Framed))
//! and the calls written on it. Callers hand it calls through a bounded intake; it writes
//! them in batches and matches each reply frame to its caller with a matcher: by FIFO
//! position ([`Order`]) or by session id ([`Session`]). Everything else (writing, batching, cancellation, backpressure,
//! pushes, the stall timer, failure fan-out) is the same engine for both.

mod call;
mod conn;
mod deadline;
mod engine;
mod flush;
mod ids;
mod matcher;
mod notice;
mod order;
mod reach;
mod retire;
mod session;
mod stall;
mod worker;

pub(crate) use self::call::{Collect, Envelope, Frames, StreamShared, StreamTx, Until, Waiter};
pub(crate) use self::conn::Conn;
pub(crate) use self::deadline::Deadline;
pub(crate) use self::engine::{Ended, Engine, Lane};
pub use self::order::Order;
pub(crate) use self::retire::Retire;
pub use self::session::Session;
pub(crate) use self::worker::Worker;

pub(crate) use self::matcher::Matcher;
pub(crate) use self::notice::{Leavers, Stripe};
use crate::protocol::{Protocol, Sessions};

mod sealed {
    /// Keeps [`Mode`](super::Mode) to the two modes of this crate.
    pub trait Sealed {}
}

/// How replies are matched to requests: [`Order`] or [`Session`].
///
/// Sealed: the two modes are all there is.
#[allow(private_bounds, private_interfaces)]
pub trait Mode<Req, Resp>: sealed::Sealed + Send + Sync + 'static {
    /// The connection task's table of waiting calls for this mode (crate-internal).
    #[doc(hidden)]
    type Matcher: Matcher<Req, Resp>;
    /// A fresh table for one connection, holding at most `max_in_flight` calls.
    #[doc(hidden)]
    fn matcher(&self, max_in_flight: usize) -> Self::Matcher;
    /// Does this mode send cancel notices? Then the callers say when they leave
    /// (`notice.rs`).
    #[doc(hidden)]
    fn cancels(&self) -> bool {
        false
    }
}

impl<P> sealed::Sealed for Order<P> {}
impl<S> sealed::Sealed for Session<S> {}

#[allow(private_interfaces)]
impl<Req, Resp, P> Mode<Req, Resp> for Order<P>
where
    P: Protocol<Req, Resp> + Clone,
    Resp: Send + 'static,
{
    type Matcher = order::OrderMatcher<P, Resp>;
    fn matcher(&self, max_in_flight: usize) -> Self::Matcher {
        order::OrderMatcher::new(self.protocol.clone(), max_in_flight)
    }
}

#[allow(private_interfaces)]
impl<Req, Resp, S> Mode<Req, Resp> for Session<S>
where
    S: Sessions<Req, Resp> + Clone,
    Resp: Send + 'static,
{
    type Matcher = session::SessionMatcher<S, Resp>;
    fn matcher(&self, max_in_flight: usize) -> Self::Matcher {
        Session::matcher(self, max_in_flight)
    }
    fn cancels(&self) -> bool {
        Session::cancels(self)
    }
}

/// Runs `f` with `cx` outside tokio's task budget. Asking a oneshot sender whether its
/// receiver is gone, and to be woken when it goes (a shutdown's scan of every waiting
/// call), uses a unit of the budget each time; past the budget (128 a poll) the rest
/// read as still there, and the task's own timers as not yet due.
pub(crate) fn unbudgeted<T>(
    cx: &mut std::task::Context<'_>,
    f: impl FnOnce(&mut std::task::Context<'_>) -> T,
) -> T {
    use std::future::Future;
    let mut f = Some(f);
    let run =
        std::future::poll_fn(|cx| std::task::Poll::Ready((f.take().expect("polled once"))(cx)));
    match std::pin::pin!(tokio::task::unconstrained(run)).poll(cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("the closure always finishes"),
    }
}
