//! What handles ask of the task outside the flow of calls: `close`, `shutdown`,
//! `connect`, `change_host`, `change_backups`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;

use tokio::sync::oneshot;
use tokio::time::Sleep;
use tracing::info;

use super::task::{Phase, Task};
use crate::error::{Cause, ConnectionError, ConnectionErrorKind, Error, Kind};
use crate::mux::Mode;
use crate::shared::{Control, State};
use crate::transport::{Connector, Transport};

/// A graceful close under way.
pub(super) struct Shutdown {
    deadline: Pin<Box<Sleep>>,
    /// `shutdown` callers: dropped (which resolves them) when the channel is closed.
    waiters: Vec<oneshot::Sender<()>>,
    /// `connect` callers that came meanwhile: the channel reopens for them once closed.
    /// Each says whether it asked for a pass that dials at once (a user's `connect()`),
    /// or one that takes the pool's turn.
    reopen: Vec<(oneshot::Sender<Result<(), Error>>, bool)>,
    /// A lease's reopening that came meanwhile (`Control::Reopen`): as `reopen`, but a
    /// shutdown that comes after it calls it off.
    reopening: Option<oneshot::Sender<Result<(), Error>>>,
}

impl<K, M, T, Req, Resp> Task<K, M, T, Req, Resp>
where
    K: Connector<Req, Resp, Transport = T>,
    T: Transport<Req, Resp>,
    M: Mode<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    pub(super) fn on_control(&mut self, control: Control) {
        match control {
            Control::Close => self.close(false),
            Control::Shutdown(deadline, done) => match &mut self.shutdown {
                Some(shutdown) => {
                    if deadline < shutdown.deadline.deadline() {
                        shutdown.deadline.as_mut().reset(deadline);
                    }
                    shutdown.waiters.push(done);
                    // A lease's reopening parked before this shutdown (a pool's, or a
                    // removal's) is called off: helper-59's finding, a pool shut down
                    // while a lease's reopening waited for its holder's shutdown ended up
                    // open. A `connect()` still reopens the channel after it.
                    shutdown.reopening = None;
                    self.engine.shared.set_reopening(false);
                }
                None if matches!(self.phase, Phase::Closed) => drop(done),
                None => {
                    self.shutdown = Some(Shutdown {
                        deadline: Box::pin(tokio::time::sleep_until(deadline)),
                        waiters: vec![done],
                        reopen: Vec::new(),
                        reopening: None,
                    });
                }
            },
            Control::Connect(done, fresh) => {
                if let Some(shutdown) = &mut self.shutdown {
                    // The shutdown finishes first; then the channel reopens.
                    shutdown.reopen.push((done, fresh));
                    return;
                }
                self.reopen(vec![done], fresh);
            }
            Control::Reopen(done) => {
                if let Some(shutdown) = &mut self.shutdown {
                    shutdown.reopening = Some(done);
                    return;
                }
                self.reopen(vec![done], false);
            }
            Control::ChangeBackups(backups) => self.hosts.set_backups(&backups),
            Control::Deadlines => self.engine.deadlines.used = true,
            Control::ChangeHost(host) => {
                let old = self.hosts.current.clone();
                self.hosts.set_current(&host);
                // Another host: no sibling's failure on the old one holds it back.
                self.fresh_pass = true;
                // The host asked for is tried first, whatever the last one did.
                self.demote_current = false;
                self.left_unanswered = 0;
                info!(endpoint = %self.hosts.current, "changing host");
                match std::mem::replace(&mut self.phase, Phase::Idle) {
                    // Under `Once` the next call connects (`Idle` starts a pass at once if
                    // calls are queued).
                    Phase::Ready { conn, .. } => self.phase = self.retire(conn, old),
                    Phase::Handshaking(handshaking) => {
                        handshaking.abandon();
                        self.phase = self.start_pass();
                    }
                    Phase::Connecting { .. } => self.phase = self.start_pass(),
                    // New calls go to the new host now, not after a backoff that the old
                    // host's failures earned: at once under `Persistent`, with the next
                    // call under `Once`.
                    Phase::BackingOff { .. } => self.phase = self.after_loss(),
                    phase @ (Phase::Closed | Phase::Idle) => self.phase = phase,
                }
            }
        }
    }

    /// `connect()`: opens the channel (reopens a closed one) and connects if it is not.
    fn reopen(&mut self, mut waiters: Vec<oneshot::Sender<Result<(), Error>>>, fresh: bool) {
        if waiters.is_empty() {
            return;
        }
        self.engine.shared.set_open();
        match self.phase {
            Phase::Ready { .. } => {
                for done in waiters {
                    let _ = done.send(Ok(()));
                }
            }
            Phase::Connecting { .. } | Phase::Handshaking(_) => {
                self.connect_waiters.append(&mut waiters);
            }
            Phase::Idle | Phase::Closed | Phase::BackingOff { .. } => {
                self.connect_waiters.append(&mut waiters);
                self.failures = 0;
                self.left_unanswered = 0;
                // Asked for: it dials, whatever a sibling's last pass did (unless a pool
                // asked, for all its connections: then it takes its turn).
                self.fresh_pass = fresh;
                self.phase = self.start_pass();
            }
        }
    }

    /// Ends a shutdown whose calls are all answered, or whose deadline passed. Returns
    /// whether it ended one.
    pub(super) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(shutdown) = &mut self.shutdown else {
            return false;
        };
        // Nothing it waits for is left: no call queued or written has a caller (those
        // whose caller left, and slots reserved but unused, do not hold it).
        // Every part is polled (not short-circuited), so each caller left will wake the
        // task when it goes.
        let queued = self.engine.poll_nobody_waits(cx);
        let draining = self
            .draining
            .iter_mut()
            .map(|d| d.poll_nobody_waits(cx))
            .filter(|idle| !idle)
            .count()
            == 0;
        let current = match &mut self.phase {
            Phase::Ready { conn, .. } => conn.poll_nobody_waits(cx),
            Phase::Handshaking(handshaking) => handshaking.poll_nobody_waits(cx),
            _ => true,
        };
        let idle = queued && draining && current;
        if !idle && shutdown.deadline.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.close(true);
        true
    }

    /// Fails everything and stops: `close()` (`reopen` false: the `connect()` calls
    /// that waited for a shutdown fail, closed, and later calls fail fast), or a
    /// shutdown that ended (`reopen` true: those calls reopen the channel after).
    pub(super) fn close(&mut self, reopen: bool) {
        let cause: Cause = Arc::new(ConnectionError::new(ConnectionErrorKind::Closed, None));
        self.engine.shared.set_closed();
        if !reopen {
            self.engine.shared.set_reopening(false);
        }
        let mut backoff = None;
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Ready { conn, .. } => conn.fail(Kind::Closed, &cause),
            Phase::Handshaking(handshaking) => handshaking.abandon(),
            Phase::BackingOff { sleep, fail_fast } => backoff = Some((sleep, fail_fast)),
            Phase::Connecting { .. } | Phase::Idle | Phase::Closed => {}
        }
        for d in self.draining.drain(..) {
            d.fail(Kind::Closed, &cause);
        }
        self.engine.fail_queued(Kind::Closed, Some(&cause));
        self.tell_waiters(|| Error::new(Kind::Closed));
        self.set_state(State::Closed);
        if let Some(mut shutdown) = self.shutdown.take() {
            drop(shutdown.waiters);
            // A lease's reopening that was not called off reopens the channel as a
            // `connect()` that takes its turn does.
            if let Some(done) = shutdown.reopening.take() {
                shutdown.reopen.push((done, false));
            }
            if reopen {
                match backoff {
                    // A backoff under way (a failed attempt during the shutdown: a
                    // failed pass, the server's word that the connection was the
                    // wrong one) still counts: the `connect()` calls that waited for
                    // the shutdown wait it out too, then the pass is theirs
                    // (`after_loss`).
                    Some((sleep, fail_fast)) if !shutdown.reopen.is_empty() => {
                        self.engine.shared.set_open();
                        self.connect_waiters
                            .extend(shutdown.reopen.into_iter().map(|(done, _)| done));
                        self.set_state(State::BackingOff);
                        self.phase = Phase::BackingOff { sleep, fail_fast };
                    }
                    _ => {
                        let fresh = shutdown.reopen.iter().any(|(_, fresh)| *fresh);
                        let waiters = shutdown.reopen.into_iter().map(|(done, _)| done);
                        self.reopen(waiters.collect(), fresh);
                    }
                }
            } else {
                for (done, _) in shutdown.reopen {
                    let _ = done.send(Err(Error::new(Kind::Closed)));
                }
            }
        }
    }
}
