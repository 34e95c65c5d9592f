//! State shared by a channel's handles and its connection task.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot, watch};

use tokio::time::Instant;

use crate::config::{Overload, ReplyLimits};
use crate::error::{Cause, Error};
use crate::mux::{Frames, Leavers};
use crate::reconnect::HostSpec;
use crate::stats::Stats;

/// Where a channel's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Opening a connection.
    Connecting,
    /// Connected; the handshake runs.
    Handshaking,
    /// Connected: calls are written.
    Ready,
    /// Every host failed; waiting before the next attempt.
    BackingOff,
    /// Not connected; connects when a call needs it.
    Idle,
    /// Closed: by `close()` or a shutdown, or (without reconnect) the connection ended.
    Closed,
}

/// What a handle asks of its connection task, outside the flow of calls.
#[derive(Debug)]
pub(crate) enum Control {
    /// Fail everything now and stop.
    Close,
    /// Take no new calls; serve the queued and waiting ones until the deadline. The
    /// sender is dropped once the channel is closed.
    Shutdown(Instant, oneshot::Sender<()>),
    /// Connect now (and reopen a closed channel); the outcome goes to the sender.
    /// `true`: a pass that dials whatever a pool sibling's last pass did (`connect()`);
    /// `false`: one that takes its turn as any (a pool connecting its connections).
    Connect(oneshot::Sender<Result<(), Error>>, bool),
    /// A lease's reopening of a pool's connection its holder closed: as `Connect` with
    /// `false`, but a shutdown that comes after it calls it off.
    #[cfg_attr(not(feature = "pool"), allow(dead_code))]
    Reopen(oneshot::Sender<Result<(), Error>>),
    /// New calls go to this host; calls on the old connection drain.
    ChangeHost(HostSpec),
    /// Replace the backups, from the next connect pass on.
    ChangeBackups(Vec<HostSpec>),
    /// The first call with a deadline was made: from now on the task times the calls
    /// queued in its intake too (`mux/deadline.rs`).
    Deadlines,
}

pub(crate) struct Shared<Resp> {
    pub(crate) stats: Stats,
    /// The connection task's span (`socketchannel`, INFO), made once with the channel:
    /// the task runs in it, and the state events name it as their parent wherever the
    /// state is set from.
    pub(crate) span: tracing::Span,
    /// Set once the channel takes no more calls: closed, or its task ended.
    closed: AtomicBool,
    /// A reopening asked for and not yet taken in (`set_reopening`).
    reopening: AtomicBool,
    /// `state`, mirrored so `poll_ready` and `load` read one atomic instead of a lock.
    current: AtomicU8,
    pub(crate) control: mpsc::UnboundedSender<Control>,
    /// The push receiver, until a handle takes it.
    pub(crate) pushes: Mutex<Option<mpsc::Receiver<Resp>>>,
    pub(crate) state: watch::Sender<State>,
    /// Notified when a connect pass ends, for the handles whose `poll_ready` waits for
    /// it (Contract 2). They wake in the order they began to wait: a `watch` wakes its
    /// waiters in an order drawn at random per process, which no replay could repeat.
    pub(crate) connect_done: tokio::sync::Notify,
    /// Why the last connect pass failed.
    pub(crate) last_error: Mutex<Option<Cause>>,
    overload: Option<Overload>,
    /// Weight of the calls queued and not yet taken by the connection task.
    queued: AtomicUsize,
    pub(crate) overloaded: watch::Sender<bool>,
    /// How large a multi-frame reply may grow.
    pub(crate) limits: ReplyLimits,
    /// The deadline a call without one of its own is given, from when it is made
    /// ([`Config::call_timeout`](crate::Config::call_timeout)).
    pub(crate) call_timeout: Option<std::time::Duration>,
    /// Calls the task took out of the intake and holds, unwritten (for `Load`).
    pub(crate) held: std::sync::atomic::AtomicUsize,
    /// Notified when `held` falls below the most the task holds (the intake's size),
    /// and when the channel closes or the task is gone: handles wait for it before they
    /// queue a call the task could not take in to time, and a handle waiting for room
    /// in a full intake stops at a close (`Channel::poll_reserve`).
    pub(crate) held_room: tokio::sync::Notify,
    /// A call with a deadline was made (and the task told: [`Control::Deadlines`]).
    pub(crate) deadlines: AtomicBool,
    /// The channel was made outside a runtime and its task has not started: the first
    /// call made inside one spawns it (`channel/start.rs`; the handles hold the task).
    pub(crate) unstarted: AtomicBool,
    /// Why the task is gone, when it went without ending (its runtime shut down).
    pub(crate) gone: Mutex<Option<Cause>>,
    /// Where callers that leave unanswered say so, when the protocol sends cancel
    /// notices (`mux/notice.rs`).
    pub(crate) leaving: Option<Leavers>,
}

impl<Resp> Shared<Resp> {
    /// What a channel's handles and task share, starting in `state` (a starting state
    /// is no change: no event says it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        control: mpsc::UnboundedSender<Control>,
        pushes: mpsc::Receiver<Resp>,
        overload: Option<Overload>,
        limits: ReplyLimits,
        call_timeout: Option<std::time::Duration>,
        state: State,
        span: tracing::Span,
        cancels: bool,
        #[cfg(feature = "metrics")] metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        Shared {
            stats: Stats::new(
                #[cfg(feature = "metrics")]
                metrics,
            ),
            span,
            closed: AtomicBool::new(false),
            reopening: AtomicBool::new(false),
            current: AtomicU8::new(state as u8),
            control,
            pushes: Mutex::new(Some(pushes)),
            state: watch::Sender::new(state),
            connect_done: tokio::sync::Notify::new(),
            last_error: Mutex::new(None),
            overload,
            queued: AtomicUsize::new(0),
            overloaded: watch::Sender::new(false),
            limits,
            call_timeout,
            held: std::sync::atomic::AtomicUsize::new(0),
            held_room: tokio::sync::Notify::new(),
            deadlines: AtomicBool::new(false),
            unstarted: AtomicBool::new(false),
            gone: Mutex::new(None),
            leaving: cancels.then(Leavers::new),
        }
    }

    /// A call with a deadline is being made: the first one tells the task.
    #[inline]
    pub(crate) fn deadline_used(&self) {
        if !self.deadlines.load(Ordering::Relaxed) && !self.deadlines.swap(true, Ordering::AcqRel) {
            let _ = self.control.send(Control::Deadlines);
        }
    }

    /// Weighs a call about to be queued and counts it; 0 when the signal is off. A
    /// call weighs `u32::MAX` at most (which is far above any sensible high-water mark),
    /// so its envelope stays small.
    pub(crate) fn queue<Req: Send + 'static>(&self, frames: &Frames<Req>) -> u32 {
        let Some(overload) = &self.overload else {
            return 0;
        };
        let weight = frames.weigh(overload).min(u32::MAX as usize);
        let queued = self.queued.fetch_add(weight, Ordering::AcqRel) + weight;
        if queued > overload.high_water && !*self.overloaded.borrow() {
            self.update_overload(overload);
        }
        weight as u32
    }

    /// `call` left the queue (taken to be written, or failed unsent): its weight is
    /// taken off, once.
    pub(crate) fn unqueue_call<Req>(&self, call: &mut crate::mux::Envelope<Req, Resp>) {
        self.unqueue(std::mem::take(&mut call.weight) as usize);
    }

    /// A call left the queue (written, or failed unsent).
    fn unqueue(&self, weight: usize) {
        let Some(overload) = &self.overload else {
            return;
        };
        if weight == 0 {
            return;
        }
        let queued = self.queued.fetch_sub(weight, Ordering::AcqRel) - weight;
        if queued <= overload.high_water / 2 && *self.overloaded.borrow() {
            self.update_overload(overload);
        }
    }

    /// The connection task is gone: every call it had queued was failed with it, so
    /// nothing weighs on the signal any more (their envelopes' `Drop` cannot reach
    /// here to take their weight off one by one).
    pub(crate) fn clear_queued(&self) {
        let Some(overload) = &self.overload else {
            return;
        };
        self.queued.store(0, Ordering::Release);
        self.update_overload(overload);
    }

    /// Re-decides the signal under the watch's lock, from the current weight: on above
    /// the high-water mark, off at half of it (hysteresis, so it does not flap).
    fn update_overload(&self, overload: &Overload) {
        self.overloaded.send_if_modified(|on| {
            let queued = self.queued.load(Ordering::Acquire);
            let next = if *on {
                queued > overload.high_water / 2
            } else {
                queued > overload.high_water
            };
            if next != *on {
                tracing::warn!(
                    queued,
                    high_water = overload.high_water,
                    overloaded = next,
                    "overload"
                );
            }
            std::mem::replace(on, next) != next
        });
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Returns once the task holds fewer than `most` calls (or is gone: then it holds
    /// none).
    pub(crate) async fn wait_held_below(&self, most: usize) {
        loop {
            let room = self.held_room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.held.load(Ordering::Relaxed) < most || self.is_closed() {
                return;
            }
            room.await;
        }
    }

    /// Takes no more calls from now on.
    pub(crate) fn set_closed(&self) {
        self.closed.store(true, Ordering::Release);
        // Handles waiting for room among the held calls learn it now.
        self.held_room.notify_waiters();
    }

    /// Takes calls again (a reconnecting channel reopened by `connect`): a reopening
    /// asked for is taken in.
    pub(crate) fn set_open(&self) {
        self.closed.store(false, Ordering::Release);
        self.reopening.store(false, Ordering::Release);
    }

    /// A reopening was asked for that the task has not taken in yet: a pool holds the
    /// closed connection as coming back soon, not down
    /// ([`Channel::reopen`](crate::Channel)).
    #[cfg(feature = "pool")]
    pub(crate) fn is_reopening(&self) -> bool {
        self.reopening.load(Ordering::Acquire)
    }

    /// [`is_reopening`](Self::is_reopening), set by the handle, cleared by the task.
    pub(crate) fn set_reopening(&self, reopening: bool) {
        self.reopening.store(reopening, Ordering::Release);
    }

    /// A connect pass is running.
    pub(crate) fn is_connecting(&self) -> bool {
        let now = self.current.load(Ordering::Acquire);
        now == State::Connecting as u8 || now == State::Handshaking as u8
    }

    /// The state now, from the atomic mirror (no lock).
    #[cfg(feature = "pool")]
    pub(crate) fn current(&self) -> State {
        const STATES: [State; 6] = [
            State::Connecting,
            State::Handshaking,
            State::Ready,
            State::BackingOff,
            State::Idle,
            State::Closed,
        ];
        let now = self.current.load(Ordering::Acquire);
        STATES
            .into_iter()
            .find(|s| *s as u8 == now)
            .unwrap_or(State::Closed)
    }

    /// Every host failed; calls fail fast until the next attempt.
    pub(crate) fn is_backing_off(&self) -> bool {
        self.current.load(Ordering::Acquire) == State::BackingOff as u8
    }

    /// Sets the state; when it changed, says so in an event of the task's span (INFO for
    /// `Ready`, `BackingOff` and `Closed`, DEBUG for the others).
    pub(crate) fn set_state(&self, state: State) {
        if !self.set_state_quietly(state) {
            return;
        }
        match state {
            State::Ready | State::BackingOff | State::Closed => {
                tracing::info!(parent: &self.span, ?state, "state changed");
            }
            State::Connecting | State::Handshaking | State::Idle => {
                tracing::debug!(parent: &self.span, ?state, "state changed");
            }
        }
    }

    /// Sets the state without an event, for a caller whose own event says it (with more
    /// to say: the endpoint, the delay). True when it changed.
    pub(crate) fn set_state_quietly(&self, state: State) -> bool {
        self.current.store(state as u8, Ordering::Release);
        let changed = self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        // After the watch, so a woken handle reads the new state there too.
        if !self.is_connecting() {
            self.connect_done.notify_waiters();
        }
        changed
    }

    /// A call is made: counted and timed until its outcome reaches the caller.
    #[cfg(feature = "metrics")]
    pub(crate) fn timing(&self) -> crate::metrics::Timing {
        self.stats.metrics.start()
    }
}
