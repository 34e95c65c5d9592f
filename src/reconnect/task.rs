//! The connection task of a reconnecting channel: one task that outlives each transport.
//!
//! ```text
//!            call queued / connect()            transport          handshake Ready
//!   Idle ──────────────────────────▶ Connecting ─────────▶ Handshaking ─────────▶ Ready
//!    ▲                                │  ▲  host failed:      │ failed: next host    │
//!    │ once: wait for a call          │  └── next host ◀──────┘                      │
//!    │                                │ every host failed                            │
//!    └────────── BackingOff ◀─────────┘ (queued calls fail as not sent)              │
//!                 (calls fail fast)   ◀── connection lost before any reply ──────────┤
//!                                         connection lost after replies: reconnect ──┘
//! ```
//!
//! Calls not yet written stay in the intake across a reconnect; calls written on a lost
//! connection fail as *may have executed*. The rest of the task lives beside this file,
//! one concern each: the connect pass (`pass.rs`), the handshake (`handshake.rs`),
//! `close` / `shutdown` / runtime changes (`control.rs`), old connections draining
//! (`drain.rs`) and the idle ping (`ping.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;
use tower::BoxError;
use tracing::{info, warn};

use super::backoff::BackoffState;
use super::control::Shutdown;
use super::drain::Draining;
use super::endpoint::{Endpoint, Hosts};
use super::handshake::Handshaking;
use super::options::Options;
use super::pass::Pass;
use super::ping::Ping;
use super::turns::Proving;
use crate::error::{Cause, Error, Kind};
use crate::mux::{Conn, Ended, Engine, Lane, Mode};
use crate::shared::{Control, State};
use crate::transport::{Connector, Transport};

pub(super) type Attempt<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pub(super) type ConnOf<T, M, Req, Resp> = Conn<T, <M as Mode<Req, Resp>>::Matcher, Req, Resp>;

// `Ready` is the phase a channel lives in, polled on every wake: boxing its connection
// would put a pointer chase on the hot path to save the memory of one idle channel.
#[allow(clippy::large_enum_variant)]
pub(super) enum Phase<T, Mt, Req, Resp> {
    /// Not connected; waiting for a call or `connect()`.
    Idle,
    Connecting {
        pass: Pass,
        endpoint: Endpoint,
        attempt: Attempt<T>,
    },
    Handshaking(Box<Handshaking<T, Mt, Req, Resp>>),
    Ready {
        conn: Conn<T, Mt, Req, Resp>,
        ping: Option<Ping<Resp>>,
        /// When the connection reaches its maximum age and is retired.
        age: Option<Pin<Box<Sleep>>>,
        /// A pool's turn, until this connection proves the host up (`turns.rs`).
        proving: Option<Proving>,
    },
    BackingOff {
        sleep: Pin<Box<Sleep>>,
        /// After a failed pass, calls fail fast until the next attempt. After a
        /// connection lost before any reply (a crash-looping host), queued calls wait
        /// for the next pass instead: no pass has failed them yet.
        fail_fast: bool,
    },
    /// Closed by the user; `connect()` reopens.
    Closed,
}

/// The connection task of a reconnecting channel.
pub(crate) struct Task<K, M, T, Req, Resp>
where
    M: Mode<Req, Resp>,
{
    pub(super) engine: Engine<Req, Resp>,
    pub(super) connector: K,
    pub(super) mode: M,
    pub(super) opts: Options<Req, Resp>,
    pub(super) hosts: Hosts,
    pub(super) control: mpsc::UnboundedReceiver<Control>,
    pub(super) phase: Phase<T, M::Matcher, Req, Resp>,
    pub(super) draining: Vec<Draining<T, M::Matcher, Req, Resp>>,
    /// Failed passes in a row; back to 0 after a success (the next failure starts the
    /// backoff's schedule over).
    pub(super) failures: u32,
    /// Connections left unanswered on the server's word since a call was answered.
    pub(super) left_unanswered: u32,
    /// The backoff's jitter and current run of waits: this channel's own.
    pub(super) backoff: BackoffState,
    /// Why the last pass failed: the cause of calls that fail fast while backing off.
    pub(super) last_error: Option<Cause>,
    pub(super) shutdown: Option<Shutdown>,
    pub(super) connected_before: bool,
    /// `connect()` callers waiting for the current pass.
    pub(super) connect_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    /// The current host accepted and then died without a reply: the next pass tries it
    /// last, so a crash-looping host does not shut out its backups.
    pub(super) demote_current: bool,
    /// The next pass was asked for (`connect()`, a host change) or replaces a
    /// connection that answered: taking turns, it never follows a sibling's failure.
    pub(super) fresh_pass: bool,
}

/// A seed for a channel's backoff jitter that differs between channels: made in the
/// same nanosecond (or under a paused clock), channels to one dead host must still
/// spread their retries. A counter per process, the wall clock and the process id,
/// mixed (splitmix64).
fn jitter_seed() -> u64 {
    static CHANNELS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CHANNELS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ wall ^ u64::from(std::process::id());
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// No field is pinned structurally: futures and timers are boxed, transports `Unpin`.
impl<K, M: Mode<Req, Resp>, T, Req, Resp> Unpin for Task<K, M, T, Req, Resp> {}

impl<K, M, T, Req, Resp> Task<K, M, T, Req, Resp>
where
    K: Connector<Req, Resp, Transport = T>,
    T: Transport<Req, Resp>,
    M: Mode<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    pub(crate) fn new(
        engine: Engine<Req, Resp>,
        connector: K,
        mode: M,
        opts: Options<Req, Resp>,
        hosts: Hosts,
        control: mpsc::UnboundedReceiver<Control>,
    ) -> Self {
        let backoff = opts.backoff.state(jitter_seed);
        let mut this = Task {
            engine,
            connector,
            mode,
            opts,
            hosts,
            control,
            phase: Phase::Idle,
            draining: Vec::new(),
            failures: 0,
            left_unanswered: 0,
            backoff,
            last_error: None,
            shutdown: None,
            connected_before: false,
            connect_waiters: Vec::new(),
            demote_current: false,
            fresh_pass: false,
        };
        this.engine.shared.set_state(State::Idle);
        if this.opts.eager {
            this.phase = this.start_pass();
        }
        this
    }

    pub(super) fn set_state(&self, state: State) {
        self.engine.shared.set_state(state);
    }

    /// Sets the state for an event of the caller's own, which says the change: the
    /// state as that event's `state` field when it changed, else `None` (no field).
    pub(super) fn set_state_quietly(
        &self,
        state: State,
    ) -> Option<tracing::field::DebugValue<State>> {
        self.engine
            .shared
            .set_state_quietly(state)
            .then(|| tracing::field::debug(state))
    }

    /// Fails calls that arrive while there is no connection to try.
    fn fail_arrivals(&mut self, cx: &mut Context<'_>, kind: Kind) {
        while let Poll::Ready(true) = self.engine.poll_wanted(cx) {
            self.engine.fail_queued(kind, self.last_error.as_ref());
        }
    }

    /// One step of the current phase: `Ok(next)` to go on at once, `Err(())` to wait.
    #[allow(clippy::result_unit_err)]
    fn step(&mut self, cx: &mut Context<'_>) -> Result<Phase<T, M::Matcher, Req, Resp>, ()> {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Idle => match self.engine.poll_wanted(cx) {
                Poll::Ready(true) => Ok(self.start_pass()),
                Poll::Ready(false) | Poll::Pending => {
                    self.phase = Phase::Idle;
                    Err(())
                }
            },
            Phase::Closed => {
                self.fail_arrivals(cx, Kind::Closed);
                self.phase = Phase::Closed;
                Err(())
            }
            Phase::BackingOff {
                mut sleep,
                fail_fast,
            } => {
                if sleep.as_mut().poll(cx).is_ready() {
                    if !fail_fast && !self.engine.queue_is_empty() {
                        return Ok(self.start_pass());
                    }
                    return Ok(self.after_loss());
                }
                if fail_fast {
                    self.fail_arrivals(cx, Kind::ConnectFailed);
                }
                self.phase = Phase::BackingOff { sleep, fail_fast };
                Err(())
            }
            Phase::Connecting {
                pass,
                endpoint,
                mut attempt,
            } => match attempt.as_mut().poll(cx) {
                Poll::Ready(Ok(transport)) => Ok(self.connected(pass, endpoint, transport)),
                Poll::Ready(Err(err)) => Ok(self.host_failed(pass, endpoint, err)),
                Poll::Pending => {
                    self.phase = Phase::Connecting {
                        pass,
                        endpoint,
                        attempt,
                    };
                    Err(())
                }
            },
            Phase::Handshaking(handshaking) => self.step_handshake(cx, handshaking),
            Phase::Ready {
                mut conn,
                mut ping,
                mut age,
                mut proving,
            } => {
                if let Some(ping) = &mut ping {
                    self.poll_ping(cx, ping, &mut conn);
                }
                if age.as_mut().is_some_and(|a| a.as_mut().poll(cx).is_ready()) {
                    info!("connection reached its maximum age: retiring it");
                    self.engine.shared.stats.retired(1);
                    return Ok(self.retire(conn, self.hosts.current.clone()));
                }
                let polled = self.engine.poll_conn(cx, &mut conn, Lane::User);
                if proving
                    .as_mut()
                    .is_some_and(|p| p.proven(cx, conn.answered))
                {
                    proving = None;
                }
                // A connection that answered a call: the hosts left unanswered before it
                // say nothing of the next drain (a connection serving for days, then
                // retired, then drained once by a graceful restart, is no such host).
                // (So is the run of failures the backoff counts: back to 0 after a
                // success, whether the connection then ends by a loss or a retirement.)
                // The one place the count is reset for an answer: every path that
                // leaves or loses this connection comes after it.
                if conn.answered {
                    self.left_unanswered = 0;
                    self.failures = 0;
                }
                match polled {
                    Poll::Pending => {
                        self.phase = Phase::Ready {
                            conn,
                            ping,
                            age,
                            proving,
                        };
                        Err(())
                    }
                    // Every handle is gone and every call answered.
                    Poll::Ready(Ok(Ended::Done)) => {
                        self.set_state(State::Closed);
                        self.phase = Phase::Idle;
                        Err(())
                    }
                    Poll::Ready(Ok(Ended::Retire)) => {
                        Ok(self.retire(conn, self.hosts.current.clone()))
                    }
                    // A connection drained before it answered anything is a failed
                    // attempt, as one that closed would be: no storm of new ones.
                    Poll::Ready(Ok(Ended::Drain)) if !conn.answered => {
                        info!("the server asked to drain a connection that answered nothing");
                        Ok(self.leave(conn, false))
                    }
                    Poll::Ready(Ok(Ended::Drain)) => {
                        info!("the server asked to drain the connection: retiring it");
                        self.engine.shared.stats.retired(1);
                        Ok(self.retire(conn, self.hosts.current.clone()))
                    }
                    Poll::Ready(Ok(Ended::WrongServer)) => {
                        warn!("the server said this connection is the wrong one: leaving it");
                        Ok(self.leave(conn, true))
                    }
                    // The server said it is the wrong one and the connection ended in
                    // the same read, before that was acted on: still a failed attempt
                    // (backoff, that host tried last), whatever it answered before.
                    Poll::Ready(Err(why)) if matches!(conn.leave, Some(Ended::WrongServer)) => {
                        if conn.answered {
                            self.failures = 0;
                        }
                        conn.answered = false;
                        Ok(self.lost(conn, why))
                    }
                    Poll::Ready(Err(why)) => Ok(self.lost(conn, why)),
                }
            }
        }
    }

    /// Times the queued calls while there is no connection to write them to, and fails
    /// those whose deadline passed (`mux/deadline.rs`), until none is left to fail;
    /// true when it failed one.
    fn watch_deadlines(&mut self, cx: &mut Context<'_>) -> bool {
        let mut failed = false;
        loop {
            if !matches!(self.phase, Phase::Ready { .. }) {
                self.engine.absorb(cx);
            }
            if !self.poll_deadlines(cx) {
                return failed;
            }
            failed = true;
        }
    }

    /// Fails the calls whose deadline passed, finding a written one on the current
    /// connection or on one that drains; true when it failed one.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> bool {
        let (phase, draining) = (&mut self.phase, &mut self.draining);
        let current = match phase {
            Phase::Ready { conn, .. } => Some(conn.floor()),
            Phase::Handshaking(handshaking) => Some(handshaking.conn_mut().floor()),
            _ => None,
        };
        let floor = draining
            .iter_mut()
            .map(|d| d.conn_mut().floor())
            .chain(current)
            .min()
            .unwrap_or(u64::MAX);
        self.engine.poll_deadlines(cx, floor, |due, expire| {
            let current = match phase {
                Phase::Ready { conn, .. } => Some(conn),
                Phase::Handshaking(handshaking) => Some(handshaking.conn_mut()),
                _ => None,
            };
            current.is_some_and(|conn| conn.expire(due, expire))
                || draining
                    .iter_mut()
                    .any(|d| d.conn_mut().expire(due, expire))
        })
    }
}

impl<K, M, T, Req, Resp> Future for Task<K, M, T, Req, Resp>
where
    K: Connector<Req, Resp, Transport = T>,
    T: Transport<Req, Resp>,
    M: Mode<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Bounded: a pass over many failing hosts yields now and then.
        for _ in 0..64 {
            while let Poll::Ready(Some(control)) = this.control.poll_recv(cx) {
                this.on_control(control);
            }
            this.poll_shutdown(cx);
            this.poll_draining(cx);
            this.watch_deadlines(cx);
            match this.step(cx) {
                Ok(next) => this.phase = next,
                Err(()) => {
                    // The step may have entered deadlines (calls written, queued):
                    // the timer is set for them before the task waits.
                    if this.watch_deadlines(cx) {
                        continue;
                    }
                    // The step may have answered the last call a shutdown waited for:
                    // it ends now, not at the next unrelated wake-up.
                    if this.poll_shutdown(cx) {
                        continue;
                    }
                    let finished = matches!(this.phase, Phase::Idle | Phase::Closed)
                        && this.engine.intake_done()
                        && this.draining.is_empty();
                    if finished {
                        this.set_state(State::Closed);
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<K, M: Mode<Req, Resp>, T, Req, Resp> Drop for Task<K, M, T, Req, Resp> {
    fn drop(&mut self) {
        // No reopening can be taken in any more: a Connect sent before this close is
        // dropped with the receiver, one sent after fails (`Channel::reopen` clears).
        self.control.close();
        self.engine.shared.set_reopening(false);
    }
}
