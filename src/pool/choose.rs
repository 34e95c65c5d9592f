//! One handle's choice of connection for its next call, through either `Service` of a
//! pool (`Pool`'s for requests, `PoolCalls`' for [`Call`](crate::Call)s).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tower::balance::p2c::Balance;
use tower::{BoxError, Service};

use super::discover::Discovery;
use super::member::{Direct, Member, Slot};
use super::members::{self, Found, Members, Snapshot};
use crate::channel::Channel;
use crate::error::{Error, Kind};

type Balanced<Req, Resp, R> = Balance<Discovery<Req, Resp>, R>;

/// A handle's choice: its balance (made on its first `poll_ready`) and what
/// `poll_ready` found for the next call.
pub(crate) struct Chooser<Req, Resp, R> {
    pub(crate) members: Arc<Members<Req, Resp>>,
    /// The list as this handle last read it, and its generation.
    slots: Snapshot<Req, Resp>,
    generation: u64,
    choice: Option<Choice<Req, Resp, R>>,
    route: Option<Route<Req, Resp>>,
}

// Made once per handle and used on every call: the balance stays inline.
#[allow(clippy::large_enum_variant)]
enum Choice<Req, Resp, R> {
    /// A pool of one connection, always: there is nothing to choose.
    One(Member<Req, Resp>),
    Many(Balanced<Req, Resp, R>),
}

enum Route<Req, Resp> {
    /// The choice is ready.
    Chosen,
    /// Every connection is down: this one fails the call fast.
    Down(Arc<Slot<Req, Resp>>),
}

impl<Req, Resp, R> Chooser<Req, Resp, R> {
    pub(crate) fn new(members: Arc<Members<Req, Resp>>) -> Self {
        Chooser {
            generation: members.generation(),
            slots: members.snapshot(),
            members,
            choice: None,
            route: None,
        }
    }

    /// Rereads the list if it changed: one atomic read when it did not.
    fn refresh(&mut self) {
        let generation = self.members.generation();
        if generation != self.generation {
            self.slots = self.members.snapshot();
            self.generation = generation;
        }
    }
}

impl<Req, Resp, R> Chooser<Req, Resp, R>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    Channel<Req, Resp>: Direct<R>,
{
    /// `Ready` once a usable connection has room for the call, or at once when every
    /// connection is down; `Pending` while none is usable and one is connecting or
    /// leased. It never fails.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.route.is_some() {
            return Poll::Ready(Ok(()));
        }
        // Read before the list (as `Pool::pick` does).
        let awaiting = self.members.awaits_endpoints();
        self.refresh();
        let slots = &self.slots;
        // No connection yet, endpoints to come: the balance waits for them.
        let awaiting = slots.is_empty() && awaiting;
        if !awaiting && members::all_down(slots) {
            // With no connection at all there is no route: the call fails at once.
            self.route = match members::find(slots) {
                Found::Down(i) => Some(Route::Down(slots[i].clone())),
                _ => None,
            };
            return Poll::Ready(Ok(()));
        }
        let members = &self.members;
        let choice = self
            .choice
            .get_or_insert_with(|| match members.fixed_one() {
                Some(slot) => Choice::One(Member::new(slot, members.clone())),
                None => {
                    let discovery = Discovery::new(members.clone());
                    Choice::Many(match members.seed.get() {
                        // Seeded: the same handles choose alike in every run (a replay).
                        Some(seed) => {
                            let n = seed.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
                            Balance::from_rng(discovery, SplitMix(n))
                        }
                        None => Balance::new(discovery),
                    })
                }
            });
        let ready = match choice {
            Choice::One(member) => Service::<R>::poll_ready(member, cx),
            Choice::Many(balance) => balance.poll_ready(cx),
        };
        std::task::ready!(ready)?;
        self.route = Some(Route::Chosen);
        Poll::Ready(Ok(()))
    }

    /// Sends the call to the connection `poll_ready` chose. Without a preceding
    /// successful `poll_ready`, the least loaded usable connection takes it if it has
    /// room, and otherwise it fails *not sent*; it never panics.
    pub(crate) fn call(
        &mut self,
        request: R,
    ) -> PoolFuture<<Channel<Req, Resp> as Direct<R>>::Future> {
        let inner = match (self.route.take(), &mut self.choice) {
            (Some(Route::Chosen), Some(Choice::One(member))) => Inner::Direct(member.call(request)),
            (Some(Route::Chosen), Some(Choice::Many(balance))) => {
                Inner::Balanced(balance.call(request))
            }
            (Some(Route::Down(slot)), _) => {
                let mut channel = slot.channel.clone();
                let slots = &self.slots;
                Inner::Direct(slot.send(&mut channel, || slots.clone(), request))
            }
            (Some(Route::Chosen), None) | (None, _) => {
                self.refresh();
                let slots = self.slots.clone();
                match members::find(&slots) {
                    Found::Usable(i) => {
                        let mut channel = slots[i].channel.clone();
                        Inner::Direct(slots[i].send(&mut channel, || slots.clone(), request))
                    }
                    Found::Down(i) => {
                        let mut channel = slots[i].channel.clone();
                        Inner::Direct(slots[i].send(&mut channel, || slots.clone(), request))
                    }
                    Found::Wait => Inner::Failed(Some(unready())),
                    Found::Empty => Inner::Failed(Some(no_connection().into())),
                }
            }
        };
        PoolFuture(inner)
    }
}

/// A seeded source for a handle's `p2c` draws (splitmix64).
struct SplitMix(u64);

impl tower::util::rng::Rng for SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A call to a pool that has no connection at all: not sent.
pub(crate) fn no_connection() -> Error {
    let cause: crate::error::Cause = Arc::new(NoConnection);
    Error::new(Kind::ConnectFailed).with_cause(cause)
}

/// The cause of a call to a pool that has no connection.
#[derive(Debug)]
struct NoConnection;

impl fmt::Display for NoConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the pool has no connection")
    }
}

impl std::error::Error for NoConnection {}

/// A call made without `poll_ready` while no connection takes calls: not sent.
fn unready() -> BoxError {
    Error::new(Kind::Overloaded).into()
}

/// The future of a pool's `Service::call`: the reply of the connection that took the
/// call (`F`: that connection's future, [`ResponseFuture`](crate::ResponseFuture) or
/// [`ReplyFuture`](crate::ReplyFuture)).
pub struct PoolFuture<F>(Inner<F>);

enum Inner<F> {
    Direct(F),
    /// What tower's `Balance` makes of the connection's future.
    Balanced(futures_util::future::MapErr<F, fn(BoxError) -> BoxError>),
    Failed(Option<BoxError>),
}

impl<F, T> Future for PoolFuture<F>
where
    F: Future<Output = Result<T, BoxError>> + Unpin,
{
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Inner::Direct(reply) => Pin::new(reply).poll(cx),
            Inner::Balanced(reply) => Pin::new(reply).poll(cx),
            Inner::Failed(err) => Poll::Ready(Err(err.take().unwrap_or_else(unready))),
        }
    }
}

impl<F> fmt::Debug for PoolFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolFuture").finish_non_exhaustive()
    }
}
