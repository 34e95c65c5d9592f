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
pub(crate) use self::engine::{Ended, Engine, Lane};
pub use self::order::Order;
pub(crate) use self::retire::Retire;
pub use self::session::Session;
pub(crate) use self::worker::Worker;

pub(crate) use self::matcher::Matcher;
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
}
