//! Turns at connecting, for channels that connect to the same hosts together (a pool's
//! connections): one connect pass at a time, and one backoff for all.
//!
//! A pass takes the turn before its first dial (the wait is not part of any connect
//! timeout) and holds it to its end, handshake included. A pass that fails leaves the
//! time its own backoff retries at; until then a sibling's pass does not dial: it fails
//! at once with [`SiblingFailed`] and backs off until that same time. The first pass
//! after it (any sibling's) dials; one that connects clears the failure. So one dead
//! host, or one that fails every handshake, sees one pass per backoff step however
//! many channels there are, and every channel comes back in the same step.

use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

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
    failed: Option<(Instant, Cause)>,
}

/// How a pass may go on.
pub(crate) enum Turn {
    /// Its turn: it dials, and holds the turn until it ends.
    Go(TurnGuard),
    /// A sibling's pass failed: this one fails at once and backs off until then.
    Follow(Instant, SiblingFailed),
}

/// A pass's turn, given back when it is dropped: with the pass's outcome if it was
/// told one (an abandoned pass, closed or moved to another host, leaves none).
pub(crate) struct TurnGuard {
    gate: Arc<TurnGate>,
    outcome: Option<Outcome>,
}

enum Outcome {
    Connected,
    Failed(Instant, Cause),
}

impl TurnGate {
    #[cfg_attr(not(feature = "pool"), allow(dead_code))]
    pub(crate) fn turns(self: &Arc<Self>) -> Turns {
        Turns { gate: self.clone() }
    }
}

impl Turns {
    /// Waits while a sibling's pass runs, then takes the turn or follows its failure.
    pub(crate) async fn take(&self) -> Turn {
        loop {
            let ended = self.gate.done.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let mut state = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
                if !state.running {
                    if let Some((until, cause)) = &state.failed
                        && Instant::now() < *until
                    {
                        return Turn::Follow(*until, SiblingFailed(cause.clone()));
                    }
                    state.running = true;
                    return Turn::Go(TurnGuard {
                        gate: self.gate.clone(),
                        outcome: None,
                    });
                }
            }
            ended.await;
        }
    }
}

impl TurnGuard {
    /// The pass connected: siblings dial again.
    pub(crate) fn connected(&mut self) {
        self.outcome = Some(Outcome::Connected);
    }

    /// The pass failed, and retries at `until`: siblings follow until then.
    pub(crate) fn failed(&mut self, until: Instant, cause: Cause) {
        self.outcome = Some(Outcome::Failed(until, cause));
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        {
            let mut state = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
            state.running = false;
            match self.outcome.take() {
                Some(Outcome::Connected) => state.failed = None,
                Some(Outcome::Failed(until, cause)) => state.failed = Some((until, cause)),
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
pub struct SiblingFailed(Cause);

impl fmt::Debug for SiblingFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SiblingFailed").field(&self.0).finish()
    }
}

impl fmt::Display for SiblingFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "another connection of the pool failed to connect just before: {}",
            self.0
        )
    }
}

impl std::error::Error for SiblingFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
