//! A pool of connections, balanced by tower's `p2c` (feature `pool`).
//!
//! ```text
//!   Pool handle ── Chooser: its own p2c Balance ──▶ Member ─┐  (each a clone of one
//!   Pool handle ── Chooser: its own p2c Balance ──▶ Member ─┤   shared Channel)
//!   Members: the list (snapshots), changed by scale.rs and endpoints.rs
//!   each endpoint's connect passes ──▶ one TurnGate: one pass at a time, one backoff
//! ```
//!
//! Every handle holds its own balance over clones of the shared connections, so the
//! hot path takes no lock and goes through no `Buffer` (`choose.rs`, the list's
//! `Discover` in `discover.rs`). A connection that is connecting, backing off, closed or
//! leased is held out of the choice (`member.rs`); the connections of an endpoint take
//! turns at connecting (`reconnect/turns.rs`); the size may follow the load
//! (`scale.rs`) and the endpoints a `Discover` (`endpoints.rs`); a [`Lease`] takes one
//! connection for a sequence of calls (`lease.rs`); [`Pushes`] merges the push frames
//! (`pushes.rs`).

mod build;
mod choose;
mod discover;
mod endpoints;
mod lease;
mod member;
mod members;
mod pushes;
mod scale;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::join_all;
use tower::load::Load;
use tower::{BoxError, Service};

pub use self::build::PoolBuilder;
use self::choose::Chooser;
pub use self::choose::PoolFuture;
pub use self::endpoints::DnsDiscover;
pub use self::lease::Lease;
use self::member::{Slot, Standing};
use self::members::{Found, Members};
pub use self::pushes::Pushes;
use crate::channel::Shape;
use crate::channel::{
    Call, Channel, IntoCall, Replies, Reply, ReplyFuture, ReplyStream, ResponseFuture,
};
use crate::error::Error;
use crate::mux::{Deadline, Until};
use crate::shared::State;
use crate::stats::Counters;

/// A pool of connections: `size` reconnecting [`Channel`]s built alike, to one host (or
/// to each endpoint a [`Discover`](PoolBuilder::discover) yields), each call sent to the
/// less loaded of two connections drawn at random (tower's
/// [`p2c`](tower::balance::p2c)), over several cores' worth of connection tasks and
/// TCP streams.
///
/// Made by [`Builder::pool`](crate::Builder::pool) (or
/// [`ReconnectLayer::pool`](crate::ReconnectLayer::pool)). A clone is another handle to
/// the same connections; as a `tower::Service` each handle balances on its own, so
/// calls take no lock (keep a handle per task rather than a clone per call: a handle's
/// balance is made on its first `poll_ready`).
///
/// # Which connection takes a call
///
/// Only connections that take calls now are chosen: connected ones, and idle ones (they
/// connect for the call). One that is connecting, backing off, closed or
/// [leased](Pool::lease) is held out. When none takes calls but one is connecting (or
/// leased), `poll_ready` waits for it, as a [`Channel`]'s does for its connect pass;
/// when every connection is backing off or closed, the pool is `Ready` and fails calls
/// at once, *not sent*, with the error a channel gives then ([`Kind::ConnectFailed`](crate::Kind::ConnectFailed),
/// [`Kind::Closed`](crate::Kind::Closed)).
///
/// The connections connect one at a time (a connect pass each, handshake included) and
/// share one backoff: after a failed pass the others fail theirs at once with
/// [`SiblingFailed`](crate::SiblingFailed) and retry when it does. One dead host (or
/// one that fails every handshake) sees one pass per backoff step, not one per
/// connection, and the connections come back in the same step.
///
/// # Size
///
/// Fixed, or ([`PoolBuilder::grow_to`]) between the size it was built with and a
/// maximum: grown by one while the mean calls in flight per connection is above a
/// target, shrunk by one while it is below half of it, at most once per dwell time;
/// a connection taken out finishes its calls. A call whose connection was taken out
/// after it was chosen goes to another: through `Service`, to the least loaded usable
/// one (or, with none, it fails *not sent*, [`Kind::Overloaded`](crate::Kind::Overloaded));
/// through a method, chosen again, also while it waits for room in that connection's
/// intake.
///
/// # Cost
///
/// Through `Service` with more than one connection, tower's balance allocates once per
/// call (its ready cache re-queues the connection it called), and a handle's balance
/// keeps an intake slot reserved on every connection it did not call (counted in
/// their `Load`).
///
/// # Order across connections
///
/// A call stays on one connection, whatever its shape: a multi-part call, `request_n`,
/// until-final and a stream are written and answered there. Calls a task does not await
/// in turn may go to different connections and be answered in any order; a sequence
/// that needs one connection (WATCH/MULTI/EXEC, a transaction, a subscription) takes a
/// [`Lease`].
pub struct Pool<Req, Resp> {
    members: Arc<Members<Req, Resp>>,
    /// This handle's choice for its `Service` calls.
    chooser: Chooser<Req, Resp, Req>,
}

/// What a call waiting for room in a connection's intake found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// A slot, reserved for it.
    Reserved,
    /// None: the channel refuses calls (closed); the call fails as it fails them.
    Refused,
    /// The connection was taken out of the pool, or leased, meanwhile.
    Gone,
}

impl<Req, Resp> Pool<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// This pool, its handles' balances seeded (before any handle chose).
    pub(crate) fn seeded(self, seed: Option<u64>) -> Self {
        if let Some(seed) = seed {
            let _ = self
                .members
                .seed
                .set(std::sync::atomic::AtomicU64::new(seed));
        }
        self
    }

    pub(crate) fn from_members(members: Arc<Members<Req, Resp>>) -> Self {
        Pool {
            chooser: Chooser::new(members.clone()),
            members,
        }
    }

    /// A connection for a call made through a method: the least loaded usable one,
    /// waiting while none is usable but one will be; one that fails calls fast when
    /// every connection is down.
    async fn pick(&self) -> Result<Arc<Slot<Req, Resp>>, Error> {
        loop {
            // Read before the list: endpoints that came after the list was read would
            // otherwise make an empty list look final.
            let awaiting = self.members.awaits_endpoints();
            let slots = self.members.snapshot();
            match members::find(&slots) {
                Found::Usable(i) | Found::Down(i) => return Ok(slots[i].clone()),
                Found::Empty if !awaiting => {
                    return Err(choose::no_connection());
                }
                Found::Wait | Found::Empty => {}
            }
            // Registered, then looked at again: a change in between wakes it.
            let changed = members::changed(&self.members, &slots);
            tokio::pin!(changed);
            members::registered(changed.as_mut()).await;
            let now = self.members.snapshot();
            if Arc::ptr_eq(&now, &slots)
                && matches!(members::find(&now), Found::Wait | Found::Empty)
            {
                changed.await;
            }
        }
    }

    /// Queues `call` on a connection the way a [`Channel`] method does (waiting for
    /// room in its intake, no longer than the call's deadline), in `shape`, and waits
    /// for its reply.
    async fn exchange(&self, call: impl IntoCall<Req>, shape: Shape) -> Result<Reply<Resp>, Error> {
        let mut call = call.into_call();
        call.shape = shape;
        // The channels' default deadline, counted from now, as a channel's method
        // stamps it: it bounds the wait for a connection and for room too.
        if call.deadline.is_none()
            && let Some(timeout) = self.call_timeout()
        {
            call.deadline = Some(Deadline::After(timeout));
        }
        let at = call.deadline.map(|d| d.at(tokio::time::Instant::now));
        call.deadline = at.map(Deadline::At);
        loop {
            let picked = async {
                let slot = self.pick().await?;
                let mut channel = slot.channel.clone();
                let room = self.room(&slot, &mut channel).await;
                Ok::<_, Error>((slot, channel, room))
            };
            let picked = match at {
                None => picked.await,
                Some(at) => tokio::time::timeout_at(at, picked)
                    .await
                    .unwrap_or_else(|_| Err(Error::new(crate::error::Kind::Timeout))),
            };
            let (slot, mut channel, room) = match picked {
                // Taken out or leased while it waited for room: choose again.
                Ok((_, _, Room::Gone)) => continue,
                Ok((slot, channel, room)) => (slot, channel, room == Room::Reserved),
                // Timed out, or no connection at all: not sent, the request handed back.
                Err(mut err) => {
                    if let Some(req) = call.frames.into_any() {
                        err.put_request(req);
                    }
                    return Err(err);
                }
            };
            // No room because it is refused (closed): the call fails as it fails it.
            let queuing = if room { slot.queue() } else { None };
            if room && queuing.is_none() {
                // Leased while it waited for room: choose again.
                channel.release();
                continue;
            }
            let mut reply = channel.call_with(call);
            drop(queuing);
            return std::future::poll_fn(|cx| reply.poll_reply(cx)).await;
        }
    }

    /// Waits for room in `slot`'s intake, as a channel's method does, but no longer
    /// than `slot` takes other callers' calls: a connection taken out (a shrink, its
    /// endpoint removed) or leased may keep its intake full of slots that handles'
    /// balances reserved and will not use, and the call belongs on another one.
    async fn room(&self, slot: &Slot<Req, Resp>, channel: &mut Channel<Req, Resp>) -> Room {
        // Registered before the flags are read: a removal or a lease after it wakes
        // this (and nothing else does).
        let taken = slot.taken.notified();
        tokio::pin!(taken);
        taken.as_mut().enable();
        // Taken before that. Not a closed one that is leased: `pick` offers it again
        // (as down), and the call fails as its channel fails calls.
        let removed = || slot.removed.load(std::sync::atomic::Ordering::SeqCst);
        let leased = slot.leased.load(std::sync::atomic::Ordering::SeqCst);
        if removed() || leased && slot.standing() == Standing::Soon {
            return Room::Gone;
        }
        tokio::select! {
            biased;
            room = std::future::poll_fn(|cx| channel.poll_reserve(cx)) => match room {
                Ok(()) => Room::Reserved,
                // Its drain ended: it was taken out, not closed by the user.
                Err(_) if removed() => Room::Gone,
                Err(_) => Room::Refused,
            },
            () = taken => {
                channel.release();
                Room::Gone
            }
        }
    }

    /// The deadline the connections give a call without one
    /// ([`Config::call_timeout`](crate::Config::call_timeout)).
    fn call_timeout(&self) -> Option<Duration> {
        self.members.call_timeout
    }

    /// Sends a request to one connection and waits for its reply
    /// ([`Channel::request`]).
    ///
    /// # Errors
    ///
    /// See [`Error`]: whether the request was sent, and why the call failed.
    pub async fn request(&self, call: impl IntoCall<Req>) -> Result<Resp, Error> {
        match self.exchange(call, Shape::One).await? {
            Reply::One(frame) => Ok(frame),
            _ => unreachable!("a one-frame call has a one-frame reply"),
        }
    }

    /// [`Channel::request_n`] on one connection.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn request_n(&self, call: impl IntoCall<Req>, n: usize) -> Result<Vec<Resp>, Error> {
        match self.exchange(call, Shape::Collect(Until::Count(n))).await? {
            Reply::Many(frames) => Ok(frames),
            _ => unreachable!("a collecting call has a collected reply"),
        }
    }

    /// [`Channel::request_until_final`] on one connection.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn request_until_final(&self, call: impl IntoCall<Req>) -> Result<Vec<Resp>, Error> {
        match self.exchange(call, Shape::Collect(Until::Final)).await? {
            Reply::Many(frames) => Ok(frames),
            _ => unreachable!("a collecting call has a collected reply"),
        }
    }

    /// [`Channel::stream`] on one connection.
    ///
    /// # Errors
    ///
    /// The call's error when it fails before its first frame (as through
    /// `Service<Call<Req>>`); later ones come through the stream.
    pub async fn stream(
        &self,
        call: impl IntoCall<Req>,
        replies: Replies,
    ) -> Result<ReplyStream<Resp>, Error> {
        match self.exchange(call, Shape::Stream(replies.into())).await? {
            Reply::Stream(stream) => Ok(stream),
            _ => unreachable!("a streamed call has a stream"),
        }
    }

    /// [`Channel::send`] on one connection.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn send(&self, call: impl IntoCall<Req>) -> Result<(), Error> {
        match self.exchange(call, Shape::Send).await? {
            Reply::Sent => Ok(()),
            _ => unreachable!("a fire-and-forget call has no reply"),
        }
    }

    /// Closes every connection now ([`Channel::close`]); a pool that grows adds none
    /// from then on.
    pub fn close(&self) {
        self.members
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.channels().for_each(|c| c.close());
    }

    /// Shuts every connection down gracefully, together ([`Channel::shutdown`]).
    pub async fn shutdown(&self, deadline: Duration) {
        self.members
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        join_all(
            self.channels()
                .map(|channel| async move { channel.shutdown(deadline).await }),
        )
        .await;
    }

    /// Connects every connection now, if not connected, and waits for them all
    /// ([`Channel::connect`], which dials whatever the last pass did). One connection
    /// of each endpoint connects first; if it fails, so does this, and the others keep
    /// following the pool's backoff: a dead host is dialed once, not once per
    /// connection.
    ///
    /// # Errors
    ///
    /// The first connection's error, when one failed to connect.
    pub async fn connect(&self) -> Result<(), Error> {
        let slots = self.members.snapshot();
        let mut first: Vec<Arc<Slot<Req, Resp>>> = Vec::new();
        for slot in slots.iter() {
            if !first.iter().any(|f| f.group == slot.group) {
                first.push(slot.clone());
            }
        }
        let members = &self.members;
        let connect = |slots: Vec<Arc<Slot<Req, Resp>>>, fresh: bool| async move {
            let keys: Vec<u64> = slots.iter().map(|s| s.key).collect();
            let outcomes = join_all(
                slots
                    .into_iter()
                    .map(|slot| async move { slot.channel.connect_as(fresh).await }),
            )
            .await;
            // A connection taken out of the pool meanwhile (its endpoint removed, the
            // pool shrunk) is no failure of the pool's.
            let now = members.snapshot();
            keys.into_iter()
                .zip(outcomes)
                .filter(|(key, _)| now.iter().any(|s| s.key == *key))
                .map(|(_, outcome)| outcome)
                .collect::<Vec<_>>()
        };
        let rest = slots
            .iter()
            .filter(|s| !first.iter().any(|f| f.key == s.key))
            .cloned()
            .collect();
        // The first of each endpoint dials; the others then take their turn, following
        // it if it failed.
        let firsts: Result<(), Error> = connect(first, true).await.into_iter().collect();
        let rest: Result<(), Error> = connect(rest, false).await.into_iter().collect();
        firsts.and(rest)
    }
}

impl<Req, Resp> Pool<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// How many connections the pool has now.
    pub fn size(&self) -> usize {
        self.members.snapshot().len()
    }

    /// The pool's connections now, to watch or count one by one.
    pub fn channels(&self) -> impl Iterator<Item = Channel<Req, Resp>> + use<Req, Resp> {
        let slots = self.members.snapshot();
        (0..slots.len()).map(move |i| slots[i].channel.clone())
    }

    /// Where the pool stands, from its connections: `Ready` if one is; else
    /// `Handshaking` or `Connecting` if a connect pass runs; else `Idle` if one waits
    /// for a call; else `BackingOff` if one is; else `Closed`.
    pub fn state(&self) -> State {
        const RANK: [State; 6] = [
            State::Ready,
            State::Handshaking,
            State::Connecting,
            State::Idle,
            State::BackingOff,
            State::Closed,
        ];
        let rank = |s: State| RANK.iter().position(|r| *r == s).unwrap_or(RANK.len());
        self.channels()
            .map(|c| c.shared.current())
            .min_by_key(|s| rank(*s))
            .unwrap_or(State::Closed)
    }

    /// Waits until the pool's [`state`](Self::state) is other than `from`, and returns
    /// it: at once if it is already. The pool's `state` is made from its connections'
    /// (each a [`Channel::state`] watch), so this wakes when any of them changes, or the
    /// list of connections does (a growth, a shrink, an endpoint), and looks again.
    ///
    /// ```no_run
    /// # async fn watch(pool: socketchannel::Pool<String, String>) {
    /// use socketchannel::State;
    ///
    /// let mut state = pool.state();
    /// while state != State::Closed {
    ///     state = pool.state_change(state).await;
    ///     println!("the pool is {state:?}");
    /// }
    /// # }
    /// ```
    pub async fn state_change(&self, from: State) -> State {
        loop {
            // Registered before looking, so no change between the look and the wait
            // is missed.
            let listed = self.members.changes.notified();
            tokio::pin!(listed);
            listed.as_mut().enable();
            let mut watches: Vec<_> = self.channels().map(|c| c.state()).collect();
            for watch in &mut watches {
                watch.mark_unchanged();
            }
            let now = self.state();
            if now != from {
                return now;
            }
            // With no connection, only the list can change (and `select_all` wants one).
            if watches.is_empty() {
                listed.await;
                continue;
            }
            let any =
                futures_util::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                biased;
                () = &mut listed => {}
                _ = any => {}
            }
        }
    }

    /// The connections' counters, summed.
    pub fn counters(&self) -> Counters {
        self.channels()
            .map(|c| c.counters())
            .fold(Counters::default(), |sum, c| sum + c)
    }

    /// Takes the merged receiver of every connection's push frames
    /// ([`Channel::pushes`]), those of connections added later too: the first caller
    /// gets it, later ones get `None`.
    pub fn pushes(&self) -> Option<Pushes<Resp>> {
        Pushes::take(&self.members)
    }

    /// The pool takes no more calls: every connection is closed.
    pub fn is_closed(&self) -> bool {
        self.channels().all(|c| c.is_closed())
    }
}

impl<Req, Resp> Clone for Pool<Req, Resp> {
    /// Another handle to the same connections; its balance is its own (made when it is
    /// first used as a `Service`).
    fn clone(&self) -> Self {
        Pool {
            members: self.members.clone(),
            chooser: Chooser::new(self.members.clone()),
        }
    }
}

impl<Req, Resp> fmt::Debug for Pool<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> Service<Req> for Pool<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = PoolFuture<ResponseFuture<Resp>>;

    /// `Ready` once a usable connection has room for the call, or at once when every
    /// connection is down (the call then fails fast); `Pending` while none is usable
    /// and one is connecting or leased. It never fails.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.chooser.poll_ready(cx)
    }

    /// Sends the call to the connection `poll_ready` chose. Without a preceding
    /// successful `poll_ready`, the least loaded usable connection takes it if it has
    /// room, and otherwise it fails *not sent*; it never panics.
    fn call(&mut self, req: Req) -> Self::Future {
        self.chooser.call(req)
    }
}

impl<Req, Resp> Load for Pool<Req, Resp> {
    type Metric = usize;

    /// The load of the connections that take calls, summed; `usize::MAX` when none
    /// does.
    fn load(&self) -> usize {
        members::load(&self.chooser.members.snapshot())
    }
}

/// A [`Pool`] as a `Service<Call<Req>>`: every call shape through tower, as
/// [`Calls`](crate::Calls) is for a [`Channel`] (made by [`Pool::calls`]). A call and
/// its whole reply stay on one connection.
pub struct PoolCalls<Req, Resp> {
    chooser: Chooser<Req, Resp, Call<Req>>,
}

impl<Req, Resp> Pool<Req, Resp> {
    /// This pool as a `Service<Call<Req>>`: another handle, with a balance of its own.
    pub fn calls(&self) -> PoolCalls<Req, Resp> {
        PoolCalls {
            chooser: Chooser::new(self.chooser.members.clone()),
        }
    }
}

impl<Req, Resp> Clone for PoolCalls<Req, Resp> {
    fn clone(&self) -> Self {
        PoolCalls {
            chooser: Chooser::new(self.chooser.members.clone()),
        }
    }
}

impl<Req, Resp> fmt::Debug for PoolCalls<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolCalls")
            .field("size", &self.chooser.members.snapshot().len())
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> Service<Call<Req>> for PoolCalls<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Reply<Resp>;
    type Error = BoxError;
    type Future = PoolFuture<ReplyFuture<Resp>>;

    /// As [`Pool`]'s.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.chooser.poll_ready(cx)
    }

    /// As [`Pool`]'s.
    fn call(&mut self, call: Call<Req>) -> Self::Future {
        self.chooser.call(call)
    }
}

impl<Req, Resp> Load for PoolCalls<Req, Resp> {
    type Metric = usize;

    /// As [`Pool`]'s.
    fn load(&self) -> usize {
        members::load(&self.chooser.members.snapshot())
    }
}
