//! One connection of a pool: what every handle shares of it ([`Slot`]), and how one
//! handle's balance sees it ([`Member`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio_util::sync::ReusableBoxFuture;
use tower::load::Load;
use tower::{BoxError, Service};

use super::members::{self, Found, Members, Snapshot};
use crate::channel::{Call, Channel, Reply, ReplyFuture, ResponseFuture};
use crate::error::{Error, Kind};
use crate::shared::State;

/// A pool's connection, shared by every handle of the pool.
pub(crate) struct Slot<Req, Resp> {
    /// Its name in the pool, never reused (the key of the balances' `Discover`).
    pub(crate) key: u64,
    /// The group it belongs to (its endpoint's).
    pub(crate) group: u64,
    pub(crate) channel: Channel<Req, Resp>,
    /// Held by a [`Lease`](super::Lease): no other caller's call goes to it.
    pub(crate) leased: AtomicBool,
    /// Calls being handed to the channel now, by callers that found it unleased: a
    /// lease is granted once they are in (`queue`).
    pub(crate) queuing: AtomicUsize,
    /// Taken out of the pool (a shrink, its endpoint removed): it drains, and a call a
    /// handle had readied for it goes to another connection instead.
    pub(crate) removed: AtomicBool,
    /// Notified when it is taken out of the pool or leased, after the flag is set:
    /// calls waiting for room in its intake choose again.
    pub(crate) taken: tokio::sync::Notify,
}

/// A caller handing a call to a slot it found unleased ([`Slot::queue`]).
pub(crate) struct Queuing<'a>(&'a AtomicUsize);

impl Drop for Queuing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a connection stands for a caller choosing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Takes calls: connected, or idle (it connects for the next call).
    Usable,
    /// Will take calls soon: a connect pass runs (bounded by the connect and handshake
    /// timeouts), or a lease holds it.
    Soon,
    /// Fails calls fast: backing off after every host failed, or closed.
    Down,
}

impl<Req, Resp> Slot<Req, Resp> {
    pub(crate) fn new(key: u64, group: u64, channel: Channel<Req, Resp>) -> Self {
        Slot {
            key,
            group,
            channel,
            leased: AtomicBool::new(false),
            queuing: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            taken: tokio::sync::Notify::new(),
        }
    }

    /// Held by a lease or taken out of the pool: no other caller's call goes to it.
    pub(crate) fn is_taken(&self) -> bool {
        self.leased.load(Ordering::SeqCst) || self.removed.load(Ordering::SeqCst)
    }

    /// Taken out of the pool: no call goes to it any more, and the calls waiting for
    /// room in its intake choose again.
    pub(crate) fn take_out(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.taken.notify_waiters();
    }

    /// Leave to hand a call to this connection, unless a lease holds it: the lease
    /// waits until the call is in its intake, so no call of another caller's follows
    /// the lease's first.
    pub(crate) fn queue(&self) -> Option<Queuing<'_>> {
        self.queuing.fetch_add(1, Ordering::SeqCst);
        let queuing = Queuing(&self.queuing);
        (!self.is_taken()).then_some(queuing)
    }

    /// Sends `request` here, unless a lease holds this connection or it was taken out
    /// of the pool: then to the least loaded usable one of `slots`, or, with none, it
    /// fails *not sent* ([`Kind::Overloaded`]).
    pub(crate) fn send<R>(
        self: &Arc<Self>,
        channel: &mut Channel<Req, Resp>,
        slots: impl FnOnce() -> Snapshot<Req, Resp>,
        request: R,
    ) -> <Channel<Req, Resp> as Direct<R>>::Future
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        Channel<Req, Resp>: Direct<R>,
    {
        if let Some(_queuing) = self.queue() {
            return channel.direct(request);
        }
        // Leased or taken out since it was chosen: its reserved slot goes back.
        channel.release();
        let slots = slots();
        if let Found::Usable(i) = members::find(&slots)
            && let Some(_queuing) = slots[i].queue()
        {
            return slots[i].channel.clone().direct(request);
        }
        channel.refuse(request, Kind::Overloaded)
    }

    /// The error a call gets while the connection is down: its channel's.
    pub(crate) fn down_error(&self) -> Error
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        if self.channel.shared.is_closed() {
            return self.channel.refused();
        }
        let cause = self.channel.shared.last_error.lock();
        let cause = cause.unwrap_or_else(|e| e.into_inner()).clone();
        match cause {
            Some(cause) => Error::new(Kind::ConnectFailed).with_cause(cause),
            None => Error::new(Kind::ConnectFailed),
        }
    }

    pub(crate) fn standing(&self) -> Standing {
        if self.removed.load(Ordering::Acquire) {
            return Standing::Down;
        }
        if self.channel.shared.is_closed() {
            // A lease returned it closed, and it is being reopened (`Lease::drop`).
            return if self.channel.shared.is_reopening() {
                Standing::Soon
            } else {
                Standing::Down
            };
        }
        if self.leased.load(Ordering::Acquire) {
            return Standing::Soon;
        }
        match self.channel.shared.current() {
            State::Ready | State::Idle => Standing::Usable,
            State::Connecting | State::Handshaking => Standing::Soon,
            State::BackingOff | State::Closed => Standing::Down,
        }
    }
}

/// A pool's connection as one handle's `p2c` balance sees it: `Ready` only while it is
/// [`Usable`](Standing::Usable) and its intake has room for this handle's next call,
/// otherwise `Pending` until its state or a lease changes. It never fails `poll_ready`:
/// the balance would drop it for good.
///
/// Boxed: tower's ready cache moves the member it called into a pending future and
/// back on every call, so a pointer moves instead of the channel and its watches.
pub(crate) struct Member<Req, Resp>(Box<Parts<Req, Resp>>);

struct Parts<Req, Resp> {
    channel: Channel<Req, Resp>,
    slot: Arc<Slot<Req, Resp>>,
    members: Arc<Members<Req, Resp>>,
    /// Waits for a change of state or lease; allocated the first time it is needed.
    wait: Option<ReusableBoxFuture<'static, ()>>,
    waiting: bool,
}

impl<Req, Resp> Member<Req, Resp> {
    pub(crate) fn new(slot: Arc<Slot<Req, Resp>>, members: Arc<Members<Req, Resp>>) -> Self {
        let channel = slot.channel.clone();
        Member(Box::new(Parts {
            channel,
            slot,
            members,
            wait: None,
            waiting: false,
        }))
    }
}

impl<Req, Resp> Parts<Req, Resp> {
    fn standing(&self) -> Standing {
        self.slot.standing()
    }

    /// Arms the wait for the next change of state (a connect pass ends, or the state
    /// becomes one that is no pass) or of a lease. Registered first, it looks at the
    /// slot again and ends at once if it is usable now (unless the channel `refused`:
    /// then it waits for a change).
    fn arm(&mut self, refused: bool)
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let (slot, members) = (self.slot.clone(), self.members.clone());
        let wait = async move {
            let state = slot.channel.shared.connect_done.notified();
            let changes = members.changes.notified();
            tokio::pin!(state, changes);
            state.as_mut().enable();
            changes.as_mut().enable();
            if !refused && slot.standing() == Standing::Usable {
                return;
            }
            // Biased: a random order would make the simulation's runs differ by process.
            tokio::select! {
                biased;
                () = state => {}
                () = changes => {}
            }
        };
        match &mut self.wait {
            Some(w) => w.set(wait),
            None => self.wait = Some(ReusableBoxFuture::new(wait)),
        }
        self.waiting = true;
    }
}

impl<Req, Resp> Parts<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    fn poll_member(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            if self.waiting {
                if let Some(wait) = &mut self.wait {
                    std::task::ready!(wait.poll(cx));
                }
                self.waiting = false;
            }
            let mut refused = false;
            if self.standing() == Standing::Usable {
                match Service::<Req>::poll_ready(&mut self.channel, cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                    // Closed meanwhile: out, like any closed member.
                    Poll::Ready(Err(_)) => refused = true,
                }
            }
            self.arm(refused);
        }
    }
}

/// How a request of type `R` goes to a channel: its `Service<R>` call.
pub(crate) trait Direct<R> {
    type Response;
    type Future: Future<Output = Result<Self::Response, BoxError>> + Unpin + Send;

    fn direct(&mut self, request: R) -> Self::Future;

    /// The request failed *not sent* with `kind`, never queued.
    fn refuse(&mut self, request: R, kind: Kind) -> Self::Future;
}

impl<Req, Resp> Direct<Req> for Channel<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Future = ResponseFuture<Resp>;

    fn direct(&mut self, request: Req) -> ResponseFuture<Resp> {
        Service::call(self, request)
    }

    fn refuse(&mut self, request: Req, kind: Kind) -> ResponseFuture<Resp> {
        self.refuse_call(request, kind)
    }
}

impl<Req, Resp> Direct<Call<Req>> for Channel<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Reply<Resp>;
    type Future = ReplyFuture<Resp>;

    fn direct(&mut self, call: Call<Req>) -> ReplyFuture<Resp> {
        self.call_with(call)
    }

    fn refuse(&mut self, call: Call<Req>, kind: Kind) -> ReplyFuture<Resp> {
        self.refuse_call_with(call, kind)
    }
}

impl<Req, Resp, R> Service<R> for Member<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    Channel<Req, Resp>: Direct<R>,
{
    type Response = <Channel<Req, Resp> as Direct<R>>::Response;
    type Error = BoxError;
    type Future = <Channel<Req, Resp> as Direct<R>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_member(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let parts = &mut *self.0;
        let members = &parts.members;
        parts
            .slot
            .send(&mut parts.channel, || members.snapshot(), request)
    }
}

impl<Req, Resp> Load for Member<Req, Resp> {
    type Metric = usize;

    fn load(&self) -> usize {
        self.0.channel.load()
    }
}
