//! `Channel` as a tower citizen: `Service` with real backpressure, and `Load`.

use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::ReusableBoxFuture;
use tower::BoxError;
use tower::load::Load;

use super::future::{Answer, ResponseFuture};
use super::{Call, Channel, Reply, ReplyFuture, call_span, closed};
use crate::error::{Error, Kind};
use crate::mux::{Envelope, Frames, Waiter};
use crate::shared::Shared;

impl<Req, Resp> Channel<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Reserves room in the intake for the next call: `Pending` only while the intake is
    /// full. The fast path is a `try_reserve`; the waiting future is boxed (once per
    /// handle) only when the intake is full.
    pub(crate) fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        if self.refuses() {
            return Poll::Ready(Err(self.refused()));
        }
        // The handshake's handle never waits for the pass it is part of, nor for room
        // among the calls the task holds (its calls are never held).
        std::task::ready!(self.poll_waits(cx));
        if !self.reserving {
            match self.sender().try_reserve_owned() {
                Ok(permit) => {
                    self.permit = Some(permit);
                    return Poll::Ready(Ok(()));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Poll::Ready(Err(self.refused()));
                }
                Err(mpsc::error::TrySendError::Full(tx)) => {
                    // The handshake's lane closes on its own (a shutdown lets a
                    // running handshake finish).
                    let shared = (!self.lane).then(|| self.shared.clone());
                    let wait = reserve_or_close(tx.reserve_owned(), shared);
                    match &mut self.reserve {
                        Some(reserve) => reserve.set(wait),
                        None => self.reserve = Some(ReusableBoxFuture::new(wait)),
                    }
                    self.reserving = true;
                }
            }
        }
        let Some(reserve) = self.reserve.as_mut() else {
            return Poll::Ready(Err(self.refused()));
        };
        let reserved = std::task::ready!(reserve.poll(cx));
        self.reserving = false;
        match reserved {
            Some(permit) => {
                self.permit = Some(permit);
                Poll::Ready(Ok(()))
            }
            None => Poll::Ready(Err(self.refused())),
        }
    }

    /// The error of a call this handle refuses (see `refuses`).
    pub(crate) fn refused(&self) -> Error {
        match self.refusal() {
            Some(cause) => closed().with_cause(cause),
            None => closed(),
        }
    }
}

/// Waits for `reserve` (room in a channel's intake), or for the channel of `shared` to
/// close: a closed channel keeps its intake open (`connect` reopens it), so no permit
/// would come while the handles that reserved the intake's slots keep them. `None`
/// when closed (or the intake is). Without `shared` (the handshake's lane, which
/// closes on its own), only `reserve`. Room at once costs one poll: the close is
/// watched only while it waits.
pub(super) async fn reserve_or_close<P, E, Resp, S>(
    reserve: impl std::future::Future<Output = Result<P, E>>,
    shared: Option<S>,
) -> Option<P>
where
    S: std::ops::Deref<Target = Shared<Resp>>,
{
    let mut reserve = std::pin::pin!(reserve);
    let first = std::future::poll_fn(|cx| Poll::Ready(reserve.as_mut().poll(cx))).await;
    if let Poll::Ready(permit) = first {
        return permit.ok();
    }
    let Some(shared) = shared else {
        return reserve.await.ok();
    };
    loop {
        // Registered before the flag is read: a close after it wakes this.
        let closing = shared.held_room.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        if shared.is_closed() {
            return None;
        }
        tokio::select! {
            biased;
            permit = &mut reserve => return permit.ok(),
            () = closing => {}
        }
    }
}

impl<Req, Resp: Send + 'static> Channel<Req, Resp> {
    /// An owned sender to make a permit from: the one the last permit gave back, or a
    /// clone of the handle's.
    fn sender(&mut self) -> mpsc::Sender<Envelope<Req, Resp>> {
        self.spare.take().unwrap_or_else(|| self.tx.clone())
    }

    /// `Pending` while a connect pass runs (Contract 2: so `balance` steers around a
    /// host that is connecting; the pass is bounded by the connect and handshake
    /// timeouts), and while the task holds as many calls as it times (it took them out
    /// of the intake to time them, while it cannot write: a call queued now would wait
    /// in the intake untimed, its deadline unheeded). The wait is boxed once per
    /// handle, and only when it happens.
    fn poll_waits(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if !self.waiting {
                if !self.lane && self.shared.is_connecting() {
                    let shared = self.shared.clone();
                    self.wait_with(async move {
                        loop {
                            let done = shared.connect_done.notified();
                            tokio::pin!(done);
                            done.as_mut().enable();
                            if !shared.is_connecting() {
                                return;
                            }
                            done.await;
                        }
                    });
                } else if self.held_full() && !self.shared.is_closed() {
                    // (Closed, the wait would end at once: the caller learns it next.)
                    let (shared, most) = (self.shared.clone(), self.tx.max_capacity());
                    self.wait_with(async move { shared.wait_held_below(most).await });
                } else {
                    return Poll::Ready(());
                }
            }
            if let Some(wait) = &mut self.wait {
                std::task::ready!(wait.poll(cx));
            }
            self.waiting = false;
        }
    }

    /// The task holds as many calls as it takes in to time (as many as the intake
    /// holds): a call queued now would wait in the intake, its deadline unheeded until
    /// the task took it. Not for the handshake's handle, whose calls are never held.
    #[inline]
    pub(crate) fn held_full(&self) -> bool {
        !self.lane
            && self.shared.held.load(std::sync::atomic::Ordering::Relaxed) >= self.tx.max_capacity()
    }

    /// Boxes `wait` (in the box this handle has, if any) for [`poll_waits`](Self::poll_waits).
    fn wait_with(&mut self, wait: impl std::future::Future<Output = ()> + Send + 'static) {
        match &mut self.wait {
            Some(w) => w.set(wait),
            None => self.wait = Some(ReusableBoxFuture::new(wait)),
        }
        self.waiting = true;
    }
}

impl<Req, Resp> tower::Service<Req> for Channel<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = ResponseFuture<Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.poll_reserve(cx).map_err(BoxError::from)
    }

    /// Queues the request. Without a preceding successful `poll_ready` it takes room if
    /// there is some and otherwise fails as *not sent*; it never panics.
    fn call(&mut self, req: Req) -> ResponseFuture<Resp> {
        #[cfg(feature = "metrics")]
        let timing = self.shared.timing();
        let span = tracing::debug_span!("call", shape = "one");
        let (tx, rx) = oneshot::channel();
        let envelope = Envelope::new(Frames::One(req), Waiter::One(Some(tx)));
        self.submit(envelope);
        ResponseFuture::waiting(
            Answer::new(rx, &self.shared.leaving),
            span,
            #[cfg(feature = "metrics")]
            timing,
        )
    }
}

/// A [`Channel`] as a `Service<Call<Req>>`: every call shape through tower.
///
/// The [`Call`] says what it writes and how its reply comes back, and the response is
/// the [`Reply`] of that shape. It is the channel itself (a clone of the handle, made
/// by [`Channel::calls`]), so `poll_ready`, its backpressure and [`Load`] are the
/// channel's. (A type of its own, rather than a second `Service` impl on `Channel`, so
/// that `channel.ready()` stays unambiguous.)
///
/// ```
/// use socketchannel::{Call, Channel, Order, Plain, Replies};
/// use tokio_util::codec::{Framed, LinesCodec};
/// use tower::ServiceExt;
/// # use futures::{SinkExt, StreamExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), socketchannel::BoxError> {
/// # let (client, server) = tokio::io::duplex(1024);
/// # tokio::spawn(async move {
/// #     let mut server = Framed::new(server, LinesCodec::new());
/// #     while let Some(Ok(line)) = server.next().await {
/// #         for word in line.split(' ') {
/// #             server.send(word.to_uppercase()).await.unwrap();
/// #         }
/// #     }
/// # });
/// // A server that answers a line with one line per word.
/// let channel = Channel::new(Framed::new(client, LinesCodec::new()), Order::new(Plain));
/// let call = Call::new("two words".to_string()).replies(Replies::Count(2));
/// let reply = channel.calls().oneshot(call).await?;
/// assert_eq!(reply.into_many().unwrap(), ["TWO", "WORDS"]);
/// # Ok(())
/// # }
/// ```
pub struct Calls<Req, Resp> {
    channel: Channel<Req, Resp>,
}

impl<Req, Resp> Channel<Req, Resp> {
    /// This channel as a `Service<Call<Req>>`, for every call shape through tower.
    /// Never allocates.
    pub fn calls(&self) -> Calls<Req, Resp> {
        Calls {
            channel: self.clone(),
        }
    }
}

impl<Req, Resp> Calls<Req, Resp> {
    /// The channel these calls go to.
    pub fn channel(&self) -> &Channel<Req, Resp> {
        &self.channel
    }
}

impl<Req, Resp> From<Channel<Req, Resp>> for Calls<Req, Resp> {
    fn from(channel: Channel<Req, Resp>) -> Self {
        Calls { channel }
    }
}

impl<Req, Resp> Clone for Calls<Req, Resp> {
    fn clone(&self) -> Self {
        self.channel.calls()
    }
}

impl<Req, Resp> std::fmt::Debug for Calls<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Calls").field(&self.channel).finish()
    }
}

impl<Req, Resp> tower::Service<Call<Req>> for Calls<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Reply<Resp>;
    type Error = BoxError;
    type Future = ReplyFuture<Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.channel.poll_reserve(cx).map_err(BoxError::from)
    }

    /// Queues the call; like `Service<Req>::call`, it never panics.
    ///
    /// A copy a retry policy made without the frames and never filled
    /// ([`RetryNotSent`](crate::RetryNotSent) fills its own) fails
    /// [`Kind::Unsupported`], *not sent*: sent as it is, it would read another call's
    /// reply.
    fn call(&mut self, call: Call<Req>) -> ReplyFuture<Resp> {
        self.channel.call_with(call)
    }
}

impl<Req, Resp> Load for Calls<Req, Resp> {
    type Metric = usize;

    /// The channel's load.
    fn load(&self) -> usize {
        self.channel.load()
    }
}

impl<Req, Resp> Channel<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// `Service<Call<Req>>::call`: queues the call in its shape, with the slot
    /// `poll_ready` reserved (or one taken now).
    pub(crate) fn call_with(&mut self, call: Call<Req>) -> ReplyFuture<Resp> {
        #[cfg(feature = "metrics")]
        let timing = self.shared.timing();
        let span = call_span(&call);
        let (waiter, pending) = call.shape.open(&self.shared);
        if call.hollow {
            // Fails it, never sent.
            let _ = call.into_envelope(waiter);
        } else {
            self.submit(call.envelope(waiter));
        }
        #[allow(unused_mut)]
        let mut reply = ReplyFuture::new(pending, span);
        #[cfg(feature = "metrics")]
        reply.time(timing);
        reply
    }

    /// A request failed *not sent* with `kind` without reaching the intake, its
    /// future as `Service<Req>::call` returns it (the error hands the request back).
    #[cfg(feature = "pool")]
    pub(crate) fn refuse_call(&mut self, req: Req, kind: Kind) -> ResponseFuture<Resp> {
        self.permit = None;
        let (tx, rx) = oneshot::channel();
        let envelope = Envelope::new(Frames::One(req), Waiter::One(Some(tx)));
        envelope.fail_unsent(kind, None);
        ResponseFuture::waiting(
            Answer::new(rx, &None),
            tracing::debug_span!("call", shape = "one"),
            #[cfg(feature = "metrics")]
            self.shared.timing(),
        )
    }

    /// [`refuse_call`](Self::refuse_call) for `Service<Call<Req>>`.
    #[cfg(feature = "pool")]
    pub(crate) fn refuse_call_with(&mut self, call: Call<Req>, kind: Kind) -> ReplyFuture<Resp> {
        self.permit = None;
        let span = call_span(&call);
        let (waiter, pending) = call.shape.open(&self.shared);
        if let Some(envelope) = call.into_envelope(waiter) {
            envelope.fail_unsent(kind, None);
        }
        ReplyFuture::new(pending, span)
    }

    /// Gives back the slot `poll_ready` reserved, unused.
    #[cfg(feature = "pool")]
    pub(crate) fn release(&mut self) {
        self.permit = None;
    }

    /// Hands a call to the intake with the slot `poll_ready` reserved, or one taken now
    /// if there is room; otherwise fails it *not sent*.
    #[inline]
    fn submit(&mut self, mut envelope: Envelope<Req, Resp>) {
        self.stamp_deadline(&mut envelope);
        if self.refuses() {
            // The task may be gone (it panicked): a send now could wait forever.
            self.permit = None;
            envelope.fail_unsent(Kind::Closed, self.refusal().as_ref());
            return;
        }
        let permit = match self.permit.take() {
            // Readied by `poll_ready`: the call was promised room, and has it.
            Some(permit) => permit,
            // Made without `poll_ready` while the task holds as many calls as it
            // should: no room, as when the intake is full.
            None if self.held_full() => {
                envelope.fail_unsent(Kind::Overloaded, None);
                return;
            }
            None => match self.sender().try_reserve_owned() {
                Ok(permit) => permit,
                Err(e) => {
                    let (kind, cause) = match e {
                        mpsc::error::TrySendError::Closed(_) => (Kind::Closed, self.refusal()),
                        mpsc::error::TrySendError::Full(_) => (Kind::Overloaded, None),
                    };
                    envelope.fail_unsent(kind, cause.as_ref());
                    return;
                }
            },
        };
        envelope.weight = self.weigh(&envelope);
        self.spare = Some(permit.send(envelope));
    }
}

impl<Req, Resp> Load for Channel<Req, Resp> {
    type Metric = usize;

    /// Calls queued or waiting for a reply, and the slots `poll_ready` reserved for the
    /// next call of a handle (until it is made or the handle dropped); `usize::MAX` while
    /// every host is down (the channel backs off and fails calls fast), so `p2c`
    /// balancing steers around it.
    fn load(&self) -> usize {
        if self.shared.is_backing_off() {
            return usize::MAX;
        }
        self.shared.stats.in_flight() as usize + self.queued()
    }
}

impl<Req, Resp> Channel<Req, Resp> {
    /// Calls queued: in the intake (or a slot reserved in it), and taken out of it by
    /// the task to be timed.
    pub(crate) fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
            + self.shared.held.load(std::sync::atomic::Ordering::Relaxed)
    }
}
