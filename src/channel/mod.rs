//! The handle users hold: [`Channel`].

mod builder;
mod call;
mod future;
mod mux_layer;
mod reconnect_layer;
mod reply;
mod service;
mod start;
#[cfg(feature = "tcp")]
mod tcp;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::ReusableBoxFuture;
use tracing::Instrument;

pub use self::builder::Builder;
pub use self::call::{Call, IntoCall, Replies};
pub(crate) use self::future::Answer;
pub use self::future::{ReplyStream, ResponseFuture};
pub use self::mux_layer::MuxLayer;
pub use self::reconnect_layer::ReconnectLayer;
pub(crate) use self::reply::Shape;
pub use self::reply::{Reply, ReplyFuture};
pub use self::service::Calls;
pub use self::start::{NoRuntime, TaskDropped};

use crate::config::Config;
use crate::error::{Error, Kind};
use crate::mux::{Deadline, Engine, Envelope, Mode, Until, Waiter, Worker};
use crate::reconnect::{Endpoint, HostSpec, IntoHost, InvalidEndpoint};
use crate::shared::{Control, Shared, State};
use crate::stats::Counters;
use crate::transport::Transport;

type Permit<Req, Resp> = mpsc::OwnedPermit<Envelope<Req, Resp>>;
/// The wait for room in a full intake: a permit, or `None` once the intake or the
/// channel is closed.
type Reserve<Req, Resp> = ReusableBoxFuture<'static, Option<Permit<Req, Resp>>>;

/// A clone-able handle to one connection's calls.
///
/// Every clone talks to the same connection task. Cloning never allocates. `Channel` is a
/// [`tower::Service`] (one request, one reply) and has a method for every other call shape.
///
/// # Runtime
///
/// The connection task is spawned on the current tokio runtime when the channel is
/// made; made outside one (a `static`, a `LazyLock`), on the runtime of its first call.
/// A call made outside any runtime before then fails [`Kind::Closed`], *not sent*, with
/// the cause [`NoRuntime`] (nothing is closed). The task lives as long as its runtime:
/// a channel that outlives it (a `static` shared by `#[tokio::test]`s, each with a
/// runtime of its own) is closed, and its calls fail at once with the cause
/// [`TaskDropped`]. On a current-thread runtime the task runs only while that runtime
/// is driven. Keep one channel per runtime.
///
/// # Cancel safety
///
/// Dropping a call's future never shifts another caller's reply: a call not yet written
/// is never written; a written one keeps its place (its FIFO slot or session id) and its
/// reply is discarded when it comes.
pub struct Channel<Req, Resp> {
    tx: mpsc::Sender<Envelope<Req, Resp>>,
    /// The handshake's handle: its calls go to the connection's priority lane, which
    /// closes when the handshake returns (not when the channel does: a shutdown lets a
    /// running handshake finish); it never waits for the connect pass it is part of,
    /// and its calls do not weigh on the overload signal.
    lane: bool,
    pub(crate) shared: Arc<Shared<Resp>>,
    /// Capacity reserved by `poll_ready` for the next `call`.
    permit: Option<Permit<Req, Resp>>,
    /// The sender the last permit gave back once used: the next permit is made from it,
    /// so a call does not clone and drop a sender (four atomic operations on the
    /// intake's shared counters).
    spare: Option<mpsc::Sender<Envelope<Req, Resp>>>,
    /// Waits for capacity when the intake is full; allocated the first time it is.
    reserve: Option<Reserve<Req, Resp>>,
    reserving: bool,
    /// Waits for a running connect pass to end, or for room among the calls the task
    /// holds (`service.rs`, `poll_waits`); allocated the first time it is needed.
    wait: Option<ReusableBoxFuture<'static, ()>>,
    waiting: bool,
    /// The connection task of a channel made outside a runtime, until a call spawns it
    /// (`start.rs`). Held by the handles, not by `shared` (which the task holds): a
    /// channel dropped before it started drops its task, and its transport, with it.
    deferred: Option<Arc<start::Deferred>>,
}

/// A channel's connection task, for callers who run it themselves
/// ([`Channel::pair`]). It ends when every handle is gone and every call answered; after
/// the connection ends or the channel is closed, it lives on only until no handle holds
/// a slot reserved by `poll_ready`, failing whatever still arrives.
#[must_use = "the channel does nothing unless its connection task runs"]
pub struct Connection {
    task: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The channel's `socketchannel` span, entered on every poll.
    span: tracing::Span,
    /// Marks the channel closed: when the task panics (in a user's codec, say), and when
    /// it is dropped (ended, or aborted); `true` when it is dropped before it ended.
    on_end: Box<dyn Fn(bool) + Send>,
    ended: bool,
}

impl Connection {
    pub(crate) fn new<Resp: Send + 'static>(
        task: impl Future<Output = ()> + Send + 'static,
        shared: Arc<Shared<Resp>>,
    ) -> Self {
        Connection {
            task: Box::pin(task),
            span: shared.span.clone(),
            on_end: Box::new(move |unfinished| {
                if unfinished {
                    shared.set_gone();
                }
                shared.set_closed();
                shared.clear_queued();
                shared.set_state(State::Closed);
            }),
            ended: false,
        }
    }
}

impl Future for Connection {
    type Output = ();

    /// A panic in the task (user code: a codec, a protocol impl) ends it: the channel
    /// is closed, and every call waiting on it fails with [`Kind::Closed`] as its reply
    /// sender is dropped.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let task = this.task.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                this.ended = true;
                Poll::Ready(())
            }
            Err(panic) => {
                tracing::error!(
                    panic = %crate::panic::message(&*panic),
                    "connection task panicked; channel closed"
                );
                this.ended = true;
                (this.on_end)(false);
                Poll::Ready(())
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _entered = self.span.enter();
        (self.on_end)(!self.ended);
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl<Req, Resp> Channel<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// A channel over a transport the caller already has, with its connection task
    /// spawned on the current tokio runtime. No reconnect: when the transport ends, the
    /// channel is closed.
    ///
    /// The connection task runs on a tokio runtime, as [`Channel`'s runtime
    /// section](crate::Channel#runtime) says: this one, or the first call's.
    pub fn new<T, M>(transport: T, mode: M) -> Self
    where
        T: Transport<Req, Resp>,
        M: Mode<Req, Resp>,
    {
        Self::with_config(transport, mode, Config::default())
    }

    /// [`Channel::new`] with limits and timers of one's own.
    ///
    /// The connection task runs on a tokio runtime, as [`Channel`'s runtime
    /// section](crate::Channel#runtime) says: this one, or the first call's.
    pub fn with_config<T, M>(transport: T, mode: M, config: Config) -> Self
    where
        T: Transport<Req, Resp>,
        M: Mode<Req, Resp>,
    {
        let (channel, connection) = Self::pair(transport, mode, config);
        channel.start(connection)
    }

    /// A channel and its connection task, which the caller runs (spawns, or polls
    /// alongside other work).
    pub fn pair<T, M>(transport: T, mode: M, config: Config) -> (Self, Connection)
    where
        T: Transport<Req, Resp>,
        M: Mode<Req, Resp>,
    {
        // Connected from the start: `Ready` is its first state, not a change.
        let cancels = Mode::<Req, Resp>::cancels(&mode);
        let (channel, engine, control) = Channel::plumbing(&config, State::Ready, None, cancels);
        let conn = engine.conn(transport, mode.matcher(config.max_in_flight));
        let connection =
            Connection::new(Worker::new(engine, conn, control), channel.shared.clone());
        (channel, connection)
    }

    /// What every channel is made of: the handle, and the engine and control receiver
    /// its connection task drives, starting in `state`. `host`: the host a reconnecting
    /// channel is built with, for its telemetry; `cancels`: its mode sends cancel
    /// notices.
    pub(crate) fn plumbing(
        config: &Config,
        state: State,
        host: Option<&Endpoint>,
        cancels: bool,
    ) -> (Self, Engine<Req, Resp>, mpsc::UnboundedReceiver<Control>) {
        let (tx, intake) = mpsc::channel(config.queue);
        let (control_tx, control) = mpsc::unbounded_channel();
        let (push_tx, pushes) = mpsc::channel(config.push_capacity);
        let name = config.name.as_deref();
        let shared = Arc::new(Shared::new(
            control_tx,
            pushes,
            config.overload.clone(),
            config.limits.clone(),
            config.call_timeout,
            state,
            task_span(name, host),
            cancels,
            #[cfg(feature = "metrics")]
            Arc::new(crate::metrics::Metrics::register(
                metrics_label(config, host),
                config.latency_sampling,
            )),
        ));
        let engine = Engine::new(intake, push_tx, shared.clone(), config);
        (Channel::from_parts(tx, shared), engine, control)
    }

    /// Queues a call, waiting for room in the intake; a call that cannot be queued is
    /// failed through its waiter.
    async fn enqueue(&self, call: Call<Req>, waiter: Waiter<Resp>) {
        let Some(mut envelope) = call.into_envelope(waiter) else {
            return;
        };
        if self.refuses() {
            self.refuse(envelope);
            return;
        }
        self.stamp_deadline(&mut envelope);
        // A call with a deadline waits for room no longer than that, counted from now
        // (the timer is only armed when there is no room at once).
        let at = envelope.deadline.map(|deadline| deadline.at(Instant::now));
        envelope.deadline = at.map(Deadline::At);
        let permit = loop {
            if self.held_full() {
                // The task holds as many calls as it should: wait for room among them
                // (no longer than the deadline), as for room in the intake.
                let room = self.shared.wait_held_below(self.tx.max_capacity());
                let timed_out = match at {
                    None => {
                        room.await;
                        false
                    }
                    Some(at) => tokio::time::timeout_at(at, room).await.is_err(),
                };
                if timed_out {
                    envelope.fail_unsent(Kind::Timeout, None);
                    return;
                }
            }
            if self.refuses() {
                self.refuse(envelope);
                return;
            }
            // A close ends the wait: the intake stays open for a reopening.
            let shared = (!self.lane).then_some(&*self.shared);
            let reserve = service::reserve_or_close(self.tx.reserve(), shared);
            let reserve = match at {
                None => reserve.await,
                Some(at) => match tokio::time::timeout_at(at, reserve).await {
                    Ok(reserved) => reserved,
                    Err(_) => {
                        envelope.fail_unsent(Kind::Timeout, None);
                        return;
                    }
                },
            };
            match reserve {
                Some(permit) if !self.refuses() => {
                    if !self.held_full() {
                        break permit;
                    }
                    // The held calls filled up while this one waited for a slot
                    // (every waiter is woken when there is room): wait again, so
                    // they stay bounded by the intake's size however many call.
                    drop(permit);
                }
                // Closed while we waited (the task may even be gone): do not send.
                _ => {
                    self.refuse(envelope);
                    return;
                }
            }
        };
        envelope.weight = self.weigh(&envelope);
        permit.send(envelope);
    }

    /// Gives a call without a deadline the channel's default (not a handshake's call:
    /// the handshake timeout bounds those), counted from when the task takes it in, as
    /// `Call::timeout` is.
    #[inline]
    pub(crate) fn stamp_deadline(&self, envelope: &mut Envelope<Req, Resp>) {
        if envelope.deadline.is_none()
            && !self.lane
            && let Some(timeout) = self.shared.call_timeout
        {
            envelope.deadline = Some(Deadline::After(timeout));
        }
        if envelope.deadline.is_some() {
            self.shared.deadline_used();
        }
    }

    /// This handle takes no more calls: the channel is closed, or (the handshake's
    /// handle) the handshake has returned, or its task has not started and there is no
    /// runtime to start it on. Starts a task kept for the first call (`start.rs`).
    pub(crate) fn refuses(&self) -> bool {
        if !self.ensure_started() {
            return true;
        }
        if self.lane {
            self.tx.is_closed()
        } else {
            self.shared.is_closed()
        }
    }

    /// Fails a call this handle cannot take, *not sent*, saying why.
    fn refuse(&self, envelope: Envelope<Req, Resp>) {
        envelope.fail_unsent(Kind::Closed, self.refusal().as_ref());
    }

    /// The cause of a refusal: for the handshake's handle, that its lane closed; for
    /// others, no runtime to start on, or a task dropped before it ended.
    pub(crate) fn refusal(&self) -> Option<crate::error::Cause> {
        if self.lane {
            return Some(Arc::new(crate::error::HandshakeOver));
        }
        self.shared.why_refused()
    }

    /// What a call weighs on the overload signal while queued: handshake calls nothing.
    pub(crate) fn weigh(&self, envelope: &Envelope<Req, Resp>) -> u32 {
        if self.lane {
            0
        } else {
            self.shared.queue(&envelope.frames)
        }
    }

    /// Queues a call in the given shape (the method's, whatever the call says) and
    /// waits for its outcome, in a span of its own.
    async fn exchange(&self, mut call: Call<Req>, shape: Shape) -> Result<Reply<Resp>, Error> {
        #[cfg(feature = "metrics")]
        let timing = self.shared.timing();
        call.shape = shape;
        let span = call_span(&call);
        let (waiter, pending) = shape.open(&self.shared);
        self.enqueue(call, waiter).instrument(span.clone()).await;
        let mut reply = ReplyFuture::new(pending, span);
        #[cfg(feature = "metrics")]
        reply.time(timing);
        std::future::poll_fn(|cx| reply.poll_reply(cx)).await
    }

    /// Sends a request and waits for its reply.
    ///
    /// # Errors
    ///
    /// See [`Error`]: whether the request was sent, and why the call failed.
    pub async fn request(&self, call: impl IntoCall<Req>) -> Result<Resp, Error> {
        match self.exchange(call.into_call(), Shape::One).await? {
            Reply::One(frame) => Ok(frame),
            _ => unreachable!("a one-frame call has a one-frame reply"),
        }
    }

    /// Sends a request and waits for exactly `n` reply frames (a pipeline of `n`
    /// commands written as one request). `n == 0` resolves once the request is written.
    pub async fn request_n(&self, call: impl IntoCall<Req>, n: usize) -> Result<Vec<Resp>, Error> {
        self.collect(call.into_call(), Until::Count(n)).await
    }

    /// Sends a request and collects reply frames until one the protocol marks final
    /// ([`Protocol::is_final`](crate::Protocol::is_final)).
    pub async fn request_until_final(&self, call: impl IntoCall<Req>) -> Result<Vec<Resp>, Error> {
        self.collect(call.into_call(), Until::Final).await
    }

    async fn collect(&self, call: Call<Req>, until: Until) -> Result<Vec<Resp>, Error> {
        match self.exchange(call, Shape::Collect(until)).await? {
            Reply::Many(frames) => Ok(frames),
            _ => unreachable!("a collecting call has a collected reply"),
        }
    }

    /// Sends a request and yields its reply frames one by one as they arrive.
    ///
    /// The stream ends after the last frame; an error ends it too. Dropping it early
    /// discards the remaining frames of this reply (they are still read, so no other
    /// caller is affected).
    ///
    /// A reader that leaves more than [`Config::stream_buffer`] frames unread fails its
    /// stream with [`Kind::Limit`]; the connection reads on for every other caller.
    pub async fn stream(&self, call: impl IntoCall<Req>, replies: Replies) -> ReplyStream<Resp> {
        #[cfg(feature = "metrics")]
        let timing = self.shared.timing();
        let mut call = call.into_call();
        call.shape = Shape::Stream(replies.into());
        let span = call_span(&call);
        let (waiter, pending) = call.shape.open(&self.shared);
        // A failure to queue is delivered through the stream itself.
        self.enqueue(call, waiter).instrument(span).await;
        match pending {
            #[allow(unused_mut)]
            reply::Pending::Stream(Some(mut stream)) => {
                #[cfg(feature = "metrics")]
                stream.time(timing);
                stream
            }
            _ => unreachable!("a streamed call has a stream"),
        }
    }

    /// Fire-and-forget: writes a request the server never answers. Resolves once the
    /// request is handed to the transport. It is written even if this future is dropped.
    ///
    /// In session mode the request is written as given: no session id is stamped.
    /// [`Call::read`] has nothing to send: it fails with [`Kind::Unsupported`].
    pub async fn send(&self, call: impl IntoCall<Req>) -> Result<(), Error> {
        match self.exchange(call.into_call(), Shape::Send).await? {
            Reply::Sent => Ok(()),
            _ => unreachable!("a fire-and-forget call has no reply"),
        }
    }

    /// Waits for the next reply without writing anything ([`Call::read`]).
    ///
    /// The read must be queued before its frame arrives: a frame no call waits for is
    /// unsolicited (in order mode, a desync that ends the connection). A greeting the
    /// server sends as soon as it accepts is best read in the
    /// [handshake](Builder::handshake), which runs before any frame is read. Over a
    /// transport of one's own, [`Channel::new`] spawns the connection task at once, and
    /// on a multi-threaded runtime it may read the greeting before this call is queued:
    /// use [`Channel::pair`] instead, poll this future once (which queues it), then
    /// spawn the [`Connection`].
    pub async fn read(&self) -> Result<Resp, Error> {
        self.request(Call::read()).await
    }

    /// Takes the receiver of push frames ([`Protocol::is_push`](crate::Protocol::is_push)).
    /// There is one per channel: the first caller gets it, later ones get `None`.
    ///
    /// It holds up to [`Config::push_capacity`] frames; more are dropped and counted.
    pub fn pushes(&self) -> Option<mpsc::Receiver<Resp>> {
        self.shared
            .pushes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Closes the channel now: every queued and waiting call fails with
    /// [`Kind::Closed`], and later calls fail at once.
    pub fn close(&self) {
        self.ensure_started();
        self.shared.set_closed();
        let _ = self.shared.control.send(Control::Close);
    }

    /// Closes the channel gracefully: no new calls are taken; those already queued or
    /// waiting have until `deadline` to be answered, then fail with [`Kind::Closed`].
    /// Resolves once the connection is closed.
    ///
    /// It ends as soon as nothing it waits for is left: the last call answered, even
    /// while a handle still holds a slot reserved by `poll_ready` (that call then fails
    /// *not sent*). A [`connect`](Self::connect) made meanwhile waits for the shutdown
    /// to finish, then reopens the channel.
    pub async fn shutdown(&self, deadline: Duration) {
        let started = self.ensure_started();
        self.shared.set_closed();
        if !started {
            // Nothing runs, so nothing is queued or waiting.
            return;
        }
        let at = crate::config::deadline(tokio::time::Instant::now(), deadline);
        let (tx, rx) = oneshot::channel();
        if self.shared.control.send(Control::Shutdown(at, tx)).is_ok() {
            // Dropped by the task when the channel is closed (or the task is gone).
            let _ = rx.await;
        }
    }

    /// Connects now, if not connected, and waits for the outcome. Reopens a closed
    /// channel. On a channel over a fixed transport ([`Channel::new`]) it only reports
    /// whether its connection task still runs.
    ///
    /// # Errors
    ///
    /// [`Kind::ConnectFailed`] (with the [`ConnectError`](crate::ConnectError) naming each host)
    /// when the pass failed; [`Kind::Closed`] for a fixed-transport channel that is closed.
    ///
    /// From the handshake's own handle it resolves at once: the connection the
    /// handshake runs on is the one being made.
    pub async fn connect(&self) -> Result<(), Error> {
        self.connect_as(true).await
    }

    /// [`connect`](Self::connect); `fresh`: the pass dials whatever a pool sibling's
    /// last pass did, else it takes its turn as any pass (`reconnect/turns.rs`).
    pub(crate) async fn connect_as(&self, fresh: bool) -> Result<(), Error> {
        if self.lane {
            return Ok(());
        }
        if !self.ensure_started() {
            return Err(self.refused());
        }
        // The reconnect task reopens the channel when it takes this; a fixed-transport
        // channel that has ended stays closed.
        let (tx, rx) = oneshot::channel();
        if self
            .shared
            .control
            .send(Control::Connect(tx, fresh))
            .is_err()
        {
            return Err(closed());
        }
        future::outcome(rx.await)
    }

    /// Sends new calls to another host (`"host:port"`, a bare host that keeps the
    /// current port, or any other form of [`IntoHost`]). Calls written on the old connection finish on it, within the
    /// drain timeout. The new connection is made on the next call, or at once under
    /// [`Reconnect::Persistent`](crate::Reconnect::Persistent).
    ///
    /// # Errors
    ///
    /// A host that does not parse. Nothing changes then.
    pub fn change_host(&self, host: impl IntoHost) -> Result<(), InvalidEndpoint> {
        let host = HostSpec::from(&host)?;
        let _ = self.shared.control.send(Control::ChangeHost(host));
        Ok(())
    }

    /// Replaces the backup hosts (those without a port take the current host's), from
    /// the next connect pass on. A handshake may call it too.
    ///
    /// # Errors
    ///
    /// A host that does not parse. Nothing changes then.
    pub fn change_backups<I, S>(&self, backups: I) -> Result<(), InvalidEndpoint>
    where
        I: IntoIterator<Item = S>,
        S: IntoHost,
    {
        let backups = backups
            .into_iter()
            .map(|b| HostSpec::from(&b))
            .collect::<Result<Vec<_>, _>>()?;
        let _ = self.shared.control.send(Control::ChangeBackups(backups));
        Ok(())
    }

    /// Watches the overload signal: `true` while the calls queued and not yet written
    /// weigh more than the high-water mark set by [`Config::overload`] (always `false`
    /// when that is not set).
    pub fn overload(&self) -> watch::Receiver<bool> {
        self.shared.overloaded.subscribe()
    }

    /// Watches the connection's state.
    pub fn state(&self) -> watch::Receiver<State> {
        self.shared.state.subscribe()
    }

    /// The channel's counters now.
    pub fn counters(&self) -> Counters {
        self.shared.stats.snapshot()
    }

    /// The channel takes no more calls.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}

impl<Req, Resp> Channel<Req, Resp> {
    pub(crate) fn from_parts(
        tx: mpsc::Sender<Envelope<Req, Resp>>,
        shared: Arc<Shared<Resp>>,
    ) -> Self {
        Channel {
            tx,
            lane: false,
            shared,
            permit: None,
            spare: None,
            reserve: None,
            reserving: false,
            wait: None,
            waiting: false,
            deferred: None,
        }
    }

    /// Reopens a closed channel whose task runs (a pool's connection that a lease
    /// closed), without waiting for its connect pass, which takes its turn as any
    /// pass does.
    #[cfg(feature = "pool")]
    pub(crate) fn reopen(&self) {
        // Seen by a pool before the task takes the reopening in (helper-59's finding:
        // a call right after the lease came back found the connection down).
        self.shared.set_reopening(true);
        let (done, _) = oneshot::channel();
        if self.shared.control.send(Control::Reopen(done)).is_err() {
            self.shared.set_reopening(false);
        }
    }

    /// [`close`](Self::close) of a channel whose task runs.
    #[cfg(feature = "pool")]
    pub(crate) fn close_running(&self) {
        self.shared.set_closed();
        let _ = self.shared.control.send(Control::Close);
    }

    /// The handshake's handle, on the lane of its connection.
    pub(crate) fn handshake_handle(
        tx: mpsc::Sender<Envelope<Req, Resp>>,
        shared: Arc<Shared<Resp>>,
    ) -> Self {
        let mut handle = Channel::from_parts(tx, shared);
        handle.lane = true;
        handle
    }
}

impl<Req, Resp> Clone for Channel<Req, Resp> {
    /// Another handle to the same connection; never allocates.
    fn clone(&self) -> Self {
        let mut handle = Channel::from_parts(self.tx.clone(), self.shared.clone());
        handle.lane = self.lane;
        handle.deferred = self.deferred.clone();
        handle
    }
}

impl<Req, Resp> fmt::Debug for Channel<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("state", &*self.shared.state.borrow())
            .field("counters", &self.shared.stats.snapshot())
            .finish_non_exhaustive()
    }
}

fn closed() -> Error {
    Error::new(Kind::Closed)
}

/// The span of one call, on every path (methods and `Service`): DEBUG, named by shape.
pub(crate) fn call_span<Req>(call: &Call<Req>) -> tracing::Span {
    tracing::debug_span!("call", shape = call.shape.name())
}

/// The connection task's span: INFO, `socketchannel`, with the channel's name and the
/// host a reconnecting channel is built with. A root: the task is no part of whatever
/// the code that built the channel was doing.
fn task_span(name: Option<&str>, host: Option<&Endpoint>) -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "socketchannel",
        channel = name.map(tracing::field::display),
        host = host.map(tracing::field::display),
    )
}

/// The `channel` label of a channel's metrics: its name, else the host it is built
/// with, else empty.
#[cfg(feature = "metrics")]
fn metrics_label(config: &Config, host: Option<&Endpoint>) -> String {
    match (&config.name, host) {
        (Some(name), _) => name.to_string(),
        (None, Some(host)) => host.to_string(),
        (None, None) => String::new(),
    }
}
