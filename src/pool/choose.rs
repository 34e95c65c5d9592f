//! One handle's choice of connection for its next call, through either `Service` of a
//! pool (`Pool`'s for requests, `PoolCalls`' for [`Call`](crate::Call)s).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::{BoxError, Service};

use super::member::{Direct, Member};
use super::{Found, Members};
use crate::channel::Channel;
use crate::error::{Error, Kind};

type Balanced<Req, Resp, R> = Balance<ServiceList<Vec<Member<Req, Resp>>>, R>;

/// A handle's choice: its balance (made on its first `poll_ready`) and what
/// `poll_ready` found for the next call.
pub(crate) struct Chooser<Req, Resp, R> {
    pub(crate) members: Arc<Members<Req, Resp>>,
    choice: Option<Choice<Req, Resp, R>>,
    route: Option<Route>,
}

enum Choice<Req, Resp, R> {
    /// One connection: there is nothing to choose.
    One(Member<Req, Resp>),
    Many(Balanced<Req, Resp, R>),
}

#[derive(Debug, Clone, Copy)]
enum Route {
    /// The choice is ready.
    Chosen,
    /// Every connection is down: this one fails the call fast.
    Down(usize),
}

impl<Req, Resp, R> Chooser<Req, Resp, R> {
    pub(crate) fn new(members: Arc<Members<Req, Resp>>) -> Self {
        Chooser {
            members,
            choice: None,
            route: None,
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
        if let Found::Down(down) = self.members.find() {
            self.route = Some(Route::Down(down));
            return Poll::Ready(Ok(()));
        }
        let members = &self.members;
        let choice = self.choice.get_or_insert_with(|| {
            let member = |i| Member::new(members.clone(), i);
            if members.slots.len() == 1 {
                Choice::One(member(0))
            } else {
                let list: Vec<_> = (0..members.slots.len()).map(member).collect();
                Choice::Many(Balance::new(ServiceList::new(list)))
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
            (Some(Route::Down(i)), _) => {
                Inner::Direct(self.members.slots[i].channel.clone().direct(request))
            }
            _ => match self.members.find() {
                Found::Usable(i) | Found::Down(i) => {
                    Inner::Direct(self.members.slots[i].channel.clone().direct(request))
                }
                Found::Wait => Inner::Failed(Some(unready())),
            },
        };
        PoolFuture(inner)
    }
}

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
