//! Turns at connecting, for channels that connect to the same hosts together (a pool's
//! connections): one connect pass at a time, and one backoff for all.
//!
//! A pass takes the turn before its first dial (the wait is not part of any connect
//! timeout) and holds it to its end, handshake included. A pass that fails leaves the
//! time its own backoff retries at; until then a sibling's pass does not dial: it fails
//! at once with [`SiblingFailed`] and backs off until that same time, and so does a
//! pass that waited for the failed one (in the same step), even when it gave up. The
//! first pass after it (any sibling's) dials; one that connects clears the failure.
//! So one dead host, or one that fails every handshake, sees one pass per backoff step
//! however many channels there are, and every channel comes back in the same step.
//!
//! A *fresh* pass never follows (it only waits its turn): one asked for by
//! `connect()`, one after a host change (the failure was another host's), and one that
//! replaces a connection that answered (a retirement: the host is up).
//!
//! A connection that connected and then fails as an attempt does (lost before it
//! answered a call, or the server's word that it is the wrong one) leaves a failure
//! too (`Turns::failed`). After a failure (and at the start), a pass that connects keeps the turn until
//! its connection proves the host up (a reply to a user's call, or a second of life:
//! [`Proving`]), so a host that accepts, answers the handshake and drops every
//! connection is one connect per step too. A channel waiting for its turn is
//! `Connecting` for as long as the passes before it take, up to K times the connect
//! and handshake timeouts.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Endpoint;
use crate::error::Cause;

/// A channel's share of a [`TurnGate`].
#[derive(Clone)]
pub(crate) struct Turns {
    gate: Arc<TurnGate>,
}

/// What the channels that take turns share.
#[derive(Default)]
pub(crate) struct TurnGate {
    state: Mutex<GateState>,
    /// Notified when a turn ends.
    done: Notify,
}

#[derive(Default)]
struct GateState {
    running: bool,
    /// The last pass failed: until when, and why.
    failed: Option<Failed>,
    /// Passes ended so far.
    ended: u64,
    /// A connection has proven the host up since the last failure (or ever).
    proven: bool,
}

struct Failed {
    until: Instant,
    cause: Cause,
    /// The host that said it is the wrong one: the followers try it last, too.
    demoted: Option<Endpoint>,
    /// The pass gave up (its backoff ended): siblings in the same step give up too.
    gave_up: bool,
}

/// How long a pass that gave up holds back its siblings: those woken in the same step
/// (their timers all fire at the time the last failure left) give up with it.
const GAVE_UP_STEP: std::time::Duration = std::time::Duration::from_millis(100);

/// How a pass may go on.
pub(crate) enum Turn {
    /// Its turn: it dials, and holds the turn until it ends.
    Go(TurnGuard),
    /// A sibling's pass failed: this one fails at once and backs off until then, or
    /// (`None`: the sibling gave up) as its own backoff says.
    Follow(Option<Instant>, SiblingFailed),
}

/// A pass's turn, given back when it is dropped: with the pass's outcome if it was
/// told one (an abandoned pass, closed or moved to another host, leaves none).
pub(crate) struct TurnGuard {
    gate: Arc<TurnGate>,
    outcome: Option<Outcome>,
    /// Taken after a failure, or before any connection proved the host up: a
    /// connection must prove it before the turn goes (`Proving`).
    after_failure: bool,
}

enum Outcome {
    Connected,
    Failed(Option<Instant>, Cause),
}

impl TurnGate {
    #[cfg_attr(not(feature = "pool"), allow(dead_code))]
    pub(crate) fn turns(self: &Arc<Self>) -> Turns {
        Turns { gate: self.clone() }
    }
}

impl Turns {
    /// Waits while a sibling's pass runs, then takes the turn or follows a failure: one
    /// whose retry time has not come, or that of the pass it waited for (even one that
    /// gave up). A `fresh` pass (asked for by `connect()` or a host change, or
    /// replacing a connection that answered) never follows: it only waits its turn.
    pub(crate) async fn take(&self, fresh: bool) -> Turn {
        let mut waited_for = None;
        loop {
            let ended = self.gate.done.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let mut state = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
                if !state.running {
                    if let Some(failed) = &state.failed {
                        let awaited = waited_for.is_some_and(|seen| state.ended > seen);
                        if !fresh && (awaited || Instant::now() < failed.until) {
                            let until = (!failed.gave_up).then_some(failed.until);
                            let sibling = SiblingFailed {
                                cause: failed.cause.clone(),
                                demoted: failed.demoted.clone(),
                            };
                            return Turn::Follow(until, sibling);
                        }
                    }
                    state.running = true;
                    return Turn::Go(TurnGuard {
                        gate: self.gate.clone(),
                        outcome: None,
                        after_failure: state.failed.is_some() || !state.proven,
                    });
                }
                waited_for.get_or_insert(state.ended);
            }
            ended.await;
        }
    }
}

impl Turns {
    /// The host a sibling was last told is the wrong one, until a pass connects: a pass
    /// tries it last.
    pub(crate) fn demoted(&self) -> Option<Endpoint> {
        let state = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        state.failed.as_ref()?.demoted.clone()
    }

    /// A channel's connection failed as an attempt does, outside any pass (it connected,
    /// then was lost before it answered, or the server said it is the wrong one): the
    /// siblings follow until `until` as after a failed pass. A pass running now (a
    /// sibling's) decides by its own outcome when it ends.
    pub(crate) fn failed(&self, until: Option<Instant>, cause: Cause, demoted: Option<Endpoint>) {
        let mut state = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        state.proven = false;
        // A host that said it is the wrong one stays so until a pass connects.
        let demoted = demoted.or_else(|| state.failed.take().and_then(|f| f.demoted));
        state.failed = Some(Failed {
            until: until.unwrap_or_else(|| Instant::now() + GAVE_UP_STEP),
            cause,
            demoted,
            gave_up: until.is_none(),
        });
    }
}

impl TurnGuard {
    /// The pass connected: siblings dial again.
    pub(crate) fn connected(&mut self) {
        self.outcome = Some(Outcome::Connected);
    }

    /// The pass failed, and retries at `until` (`None`: it gave up): siblings follow
    /// until then.
    pub(crate) fn failed(&mut self, until: Option<Instant>, cause: Cause) {
        self.outcome = Some(Outcome::Failed(until, cause));
    }
}

/// How long a pass's turn outlives the pass that connected, at most, while its
/// connection has answered nothing yet.
const PROVING: std::time::Duration = std::time::Duration::from_secs(1);

/// A pass's turn, kept from a pass that connected until its connection proves the host
/// up: a reply to a user's call, or [`PROVING`] of life. A host that accepts, answers
/// the handshake and then drops every connection is so no connect storm either: the
/// siblings wait for the first connection's fate, and follow its failure.
pub(crate) struct Proving {
    guard: TurnGuard,
    until: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Proving {
    /// The turn of a pass that connected: kept to prove the host up only while it is in
    /// doubt (after a failure, or before any connection proved it); once one has, the
    /// siblings dial at once.
    pub(crate) fn new(mut guard: TurnGuard) -> Option<Self> {
        if !guard.after_failure {
            guard.connected();
            return None;
        }
        Some(Proving {
            guard,
            until: Box::pin(tokio::time::sleep(PROVING)),
        })
    }

    /// Proven: the connection `answered`, or lived long enough. The turn is then given
    /// back as a connected pass's (the siblings dial).
    pub(crate) fn proven(&mut self, cx: &mut std::task::Context<'_>, answered: bool) -> bool {
        if answered || self.until.as_mut().poll(cx).is_ready() {
            self.guard.connected();
            return true;
        }
        false
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        {
            let mut state = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
            state.running = false;
            state.ended += 1;
            match self.outcome.take() {
                Some(Outcome::Connected) => {
                    state.failed = None;
                    state.proven = true;
                }
                Some(Outcome::Failed(until, cause)) => {
                    state.proven = false;
                    let demoted = state.failed.take().and_then(|f| f.demoted);
                    state.failed = Some(Failed {
                        until: until.unwrap_or_else(|| Instant::now() + GAVE_UP_STEP),
                        cause,
                        demoted,
                        gave_up: until.is_none(),
                    });
                }
                None => {}
            }
        }
        self.gate.done.notify_waiters();
    }
}

/// A host failed without being dialed: another connection of the same pool failed to
/// reach its hosts just before, and this one backs off with it instead of dialing.
/// The sibling's error is its [`source`](std::error::Error::source).
#[derive(Clone)]
pub struct SiblingFailed {
    cause: Cause,
    /// The host the sibling was told is the wrong one, if it was.
    demoted: Option<Endpoint>,
}

impl SiblingFailed {
    /// The host the sibling's server said is the wrong one: this channel tries it last.
    pub(crate) fn demoted(&self) -> Option<&Endpoint> {
        self.demoted.as_ref()
    }
}

impl fmt::Debug for SiblingFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SiblingFailed").field(&self.cause).finish()
    }
}

impl fmt::Display for SiblingFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "another connection of the pool failed to connect just before: {}",
            self.cause
        )
    }
}

impl std::error::Error for SiblingFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}
