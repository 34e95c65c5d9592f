//! A connect pass: the current host, then each configured one, until one connects and
//! its handshake makes it ready; backoff when every host failed, or when a connection
//! died before it answered anything.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;
use tower::BoxError;
use tracing::{debug, info, warn};

use super::endpoint::Endpoint;
use super::error::{ConnectError, HostError};
use super::handshake::Handshaking;
use super::options::Reconnect;
use super::ping::Ping;
use super::task::{ConnOf, Phase, Task};
use super::turns::{Proving, SiblingFailed, Turn, TurnGuard};
use crate::error::{Cause, ConnectionError, Error, Kind};
use crate::mux::{Matcher, Mode, Retire};
use crate::shared::State;
use crate::transport::{Connector, Transport};

/// Redirects followed in one pass at most: a loop of redirects is a failure.
pub(super) const MAX_REDIRECTS: u8 = 8;

pub(super) struct Pass {
    pub(super) hosts: Vec<Endpoint>,
    pub(super) next: usize,
    pub(super) failures: Vec<(Endpoint, BoxError)>,
    pub(super) redirects: u8,
    /// The pass's turn, for a channel that takes turns (`turns.rs`): taken by its first
    /// attempt, held to its end.
    pub(super) turn: Option<Arc<Mutex<TurnSlot>>>,
}

/// Where a pass stands with its turn.
pub(super) enum TurnSlot {
    /// Not taken yet; `fresh`: it never follows a sibling's failure (`Turns::take`).
    Waiting {
        fresh: bool,
    },
    Held(TurnGuard),
    /// A sibling failed: this pass fails without dialing, and backs off until then
    /// (`None`: the sibling gave up; this one's own backoff applies).
    Follow(Option<Instant>, SiblingFailed),
}

impl Pass {
    fn slot(&self) -> Option<MutexGuard<'_, TurnSlot>> {
        let turn = self.turn.as_ref()?;
        Some(turn.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The pass connected: its turn, if it took one, is kept until the connection
    /// proves the host up ([`Proving`]).
    pub(super) fn connected(self) -> Option<Proving> {
        let mut slot = self.slot()?;
        match std::mem::replace(&mut *slot, TurnSlot::Waiting { fresh: false }) {
            TurnSlot::Held(guard) => Proving::new(guard),
            _ => None,
        }
    }
}

type PhaseOf<M, T, Req, Resp> = Phase<T, <M as Mode<Req, Resp>>::Matcher, Req, Resp>;

impl<K, M, T, Req, Resp> Task<K, M, T, Req, Resp>
where
    K: Connector<Req, Resp, Transport = T>,
    T: Transport<Req, Resp>,
    M: Mode<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    pub(super) fn start_pass(&mut self) -> PhaseOf<M, T, Req, Resp> {
        let mut hosts = self.hosts.pass();
        // Tried last: this channel's host, when it crash-looped or said it is the wrong
        // one, and the host a pool sibling was told is the wrong one.
        let mut last = Vec::new();
        if std::mem::take(&mut self.demote_current) {
            last.push(self.hosts.current.clone());
        }
        if let Some(demoted) = self.opts.turns.as_ref().and_then(|t| t.demoted()) {
            last.push(demoted);
        }
        if !last.is_empty() {
            // Stable: the others keep their order, the demoted ones follow in theirs.
            hosts.sort_by_key(|h| last.contains(h));
        }
        let pass = Pass {
            hosts,
            next: 0,
            failures: Vec::new(),
            redirects: 0,
            turn: self.opts.turns.as_ref().map(|_| {
                let fresh = std::mem::take(&mut self.fresh_pass);
                Arc::new(Mutex::new(TurnSlot::Waiting { fresh }))
            }),
        };
        self.next_host(pass)
    }

    /// Tries the pass's next host, or ends the pass.
    pub(super) fn next_host(&mut self, mut pass: Pass) -> PhaseOf<M, T, Req, Resp> {
        let following = match pass.slot().as_deref() {
            Some(TurnSlot::Follow(_, sibling)) => Some(sibling.clone()),
            _ => None,
        };
        if let Some(sibling) = following {
            // Every host of the pass failed with the sibling's pass: the error names
            // each, as a failed pass's does.
            while let Some(endpoint) = pass.hosts.get(pass.next).cloned() {
                pass.next += 1;
                pass.failures.push((endpoint, Box::new(sibling.clone())));
            }
            return self.pass_failed(pass);
        }
        let Some(endpoint) = pass.hosts.get(pass.next).cloned() else {
            return self.pass_failed(pass);
        };
        // The first attempt of a pass that takes turns takes the pass's turn first.
        let waiting = match pass.slot().as_deref() {
            Some(TurnSlot::Waiting { fresh }) => Some(*fresh),
            _ => None,
        };
        let taking = match (&pass.turn, &self.opts.turns, waiting) {
            (Some(turn), Some(turns), Some(fresh)) => Some((turn.clone(), turns.clone(), fresh)),
            _ => None,
        };
        pass.next += 1;
        // Every attempt says so; the first of a pass is the change to `Connecting`.
        let state = self.set_state_quietly(State::Connecting);
        debug!(%endpoint, state, "connecting");
        let mut connector = self.connector.clone();
        let timeout = self.opts.connect_timeout;
        let target = endpoint.clone();
        let attempt = async move {
            // Outside the connect timeout: waiting for a sibling's pass is no dial.
            if let Some((turn, turns, fresh)) = taking {
                let taken = match turns.take(fresh).await {
                    Turn::Go(guard) => TurnSlot::Held(guard),
                    Turn::Follow(until, sibling) => {
                        *turn.lock().unwrap_or_else(|e| e.into_inner()) =
                            TurnSlot::Follow(until, sibling.clone());
                        return Err(sibling.into());
                    }
                };
                *turn.lock().unwrap_or_else(|e| e.into_inner()) = taken;
            }
            let connect = async move {
                std::future::poll_fn(|cx| connector.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                connector.call(target).await.map_err(Into::into)
            };
            match timeout {
                Some(t) => tokio::time::timeout(t, connect)
                    .await
                    .unwrap_or_else(|_| Err(connect_timed_out())),
                None => connect.await,
            }
        };
        Phase::Connecting {
            pass,
            endpoint,
            attempt: Box::pin(attempt),
        }
    }

    pub(super) fn host_failed(
        &mut self,
        mut pass: Pass,
        endpoint: Endpoint,
        err: BoxError,
    ) -> PhaseOf<M, T, Req, Resp> {
        warn!(%endpoint, error = %err, "host failed");
        pass.failures.push((endpoint, err));
        self.next_host(pass)
    }

    /// A handshake on `from` named another host: it is tried next in this pass (the
    /// rest of the pass stays as it was, so a target that fails is reported as such and
    /// the other hosts still get their turn).
    pub(super) fn redirect(
        &mut self,
        mut pass: Pass,
        from: Endpoint,
        to: Endpoint,
    ) -> PhaseOf<M, T, Req, Resp> {
        info!(%from, %to, "handshake redirects");
        if pass.redirects >= MAX_REDIRECTS {
            return self.host_failed(pass, from, "too many redirects".into());
        }
        pass.redirects += 1;
        pass.failures
            .push((from, HostError::Redirected(to.clone()).into()));
        let rest = pass.next;
        if let Some(later) = pass.hosts[rest..].iter().position(|h| *h == to) {
            pass.hosts.remove(rest + later);
        }
        pass.hosts.insert(rest, to);
        self.next_host(pass)
    }

    /// Every host failed: queued calls fail as *not sent*, then back off.
    fn pass_failed(&mut self, mut pass: Pass) -> PhaseOf<M, T, Req, Resp> {
        let turn = pass.turn.take();
        let err = ConnectError::new(pass.failures);
        warn!(error = %err, "connect pass failed");
        let cause: Cause = Arc::new(err);
        self.engine.fail_queued(Kind::ConnectFailed, Some(&cause));
        *self
            .engine
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(cause.clone());
        self.tell_waiters(|| Error::new(Kind::ConnectFailed).with_cause(cause.clone()));
        self.last_error = Some(cause.clone());
        let mut phase = self.back_off(true);
        let Some(turn) = turn else {
            return phase;
        };
        match &mut *turn.lock().unwrap_or_else(|e| e.into_inner()) {
            // Siblings follow this pass until it retries.
            TurnSlot::Held(guard) => {
                let until = match &phase {
                    Phase::BackingOff { sleep, .. } => Some(sleep.deadline()),
                    _ => None,
                };
                guard.failed(until, cause);
            }
            // This one followed a sibling: it retries when the sibling does (one that
            // gave up leaves no such time: this one's own backoff applies).
            TurnSlot::Follow(until, sibling) => {
                // The sibling was told this host is the wrong one: tried last here too.
                if sibling.demoted() == Some(&self.hosts.current) {
                    self.demote_current = true;
                }
                if let (Phase::BackingOff { sleep, .. }, Some(until)) = (&mut phase, *until) {
                    sleep.as_mut().reset(until);
                }
            }
            TurnSlot::Waiting { .. } => {}
        }
        phase
    }

    /// A connection that connected and then failed as an attempt does (lost before it
    /// answered, or left on the server's word): a pool's siblings back off with this
    /// one, as after a failed pass (`turns.rs`), instead of each trying the host.
    pub(super) fn failed_after_connecting(
        &self,
        phase: &PhaseOf<M, T, Req, Resp>,
        cause: Cause,
        wrong_server: bool,
    ) {
        if let Some(turns) = &self.opts.turns {
            let until = match phase {
                Phase::BackingOff { sleep, .. } => Some(sleep.deadline()),
                _ => None,
            };
            let demoted = wrong_server.then(|| self.hosts.current.clone());
            turns.failed(until, cause, demoted);
        }
    }

    /// Tells `connect()` callers how the pass ended.
    pub(super) fn tell_waiters(&mut self, err: impl Fn() -> Error) {
        for waiter in self.connect_waiters.drain(..) {
            let _ = waiter.send(Err(err()));
        }
    }

    pub(super) fn back_off(&mut self, fail_fast: bool) -> PhaseOf<M, T, Req, Resp> {
        self.failures += 1;
        match self
            .opts
            .backoff
            .next_delay(self.failures, &mut self.backoff)
        {
            Some(delay) => {
                let state = self.set_state_quietly(State::BackingOff);
                info!(?delay, failures = self.failures, state, "backing off");
                Phase::BackingOff {
                    sleep: Box::pin(tokio::time::sleep(delay)),
                    fail_fast,
                }
            }
            None => {
                let state = self.set_state_quietly(State::Idle);
                info!(
                    failures = self.failures,
                    state, "giving up until the next call"
                );
                self.failures = 0;
                Phase::Idle
            }
        }
    }

    /// A transport is open: the handshake runs on it, or it is ready.
    pub(super) fn connected(
        &mut self,
        pass: Pass,
        endpoint: Endpoint,
        transport: T,
    ) -> PhaseOf<M, T, Req, Resp> {
        let conn = self
            .engine
            .conn(transport, self.mode.matcher(self.opts.max_in_flight));
        match self.opts.handshake.clone() {
            Some(hook) => {
                self.set_state(State::Handshaking);
                Phase::Handshaking(Box::new(Handshaking::start(
                    &hook,
                    &self.engine.shared,
                    self.opts.queue,
                    self.opts.handshake_timeout,
                    pass,
                    endpoint,
                    conn,
                )))
            }
            None => {
                let proving = pass.connected();
                self.ready(endpoint, conn, proving)
            }
        }
    }

    pub(super) fn ready(
        &mut self,
        endpoint: Endpoint,
        conn: ConnOf<T, M, Req, Resp>,
        proving: Option<Proving>,
    ) -> PhaseOf<M, T, Req, Resp> {
        if self.connected_before {
            self.engine.shared.stats.reconnects(1);
        }
        self.connected_before = true;
        self.hosts.promote(endpoint);
        self.last_error = None;
        for waiter in self.connect_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
        let state = self.set_state_quietly(State::Ready);
        info!(endpoint = %self.hosts.current, state, "connected");
        let ping = self
            .opts
            .idle_ping
            .as_ref()
            .map(|(every, _)| Ping::new(*every));
        let mut conn = conn;
        // Only a reply to a user call counts as the host answering: a host that answers
        // the handshake and then closes is a crash loop too. (The handshake's replies
        // do not set it, `Entry::counts`; this is a safeguard.)
        conn.answered = false;
        let limit = self
            .opts
            .orphans
            .limit(conn.matcher.capacity(), conn.matcher.ignores_calls());
        conn.retire_when(Retire::new(limit, self.opts.orphan_age));
        let age = self
            .opts
            .max_connection_age
            .map(|age| Box::pin(tokio::time::sleep(age)));
        Phase::Ready {
            conn,
            ping,
            age,
            proving,
        }
    }

    /// The connection in use ended.
    pub(super) fn lost(
        &mut self,
        conn: ConnOf<T, M, Req, Resp>,
        why: ConnectionError,
    ) -> PhaseOf<M, T, Req, Resp> {
        warn!(error = %why, "connection lost");
        let answered = conn.answered;
        let wrong_server = matches!(conn.leave, Some(crate::mux::Ended::WrongServer));
        let cause: Cause = Arc::new(why);
        conn.fail(Kind::ConnectionLost, &cause);
        if !answered {
            // A host that accepts and then dies without answering a call (at once, or
            // after one unsolicited frame) would make a hot loop: back off, and try
            // the backups first next time.
            self.last_error = Some(cause.clone());
            self.demote_current = true;
            let phase = self.back_off(false);
            self.failed_after_connecting(&phase, cause, wrong_server);
            return phase;
        }
        self.failures = 0;
        self.after_loss()
    }

    /// Reconnects at once under `Persistent` (unless every handle is gone) or for
    /// `connect()` callers waiting (a shutdown's, after its backoff), else waits for
    /// the next call.
    pub(super) fn after_loss(&mut self) -> PhaseOf<M, T, Req, Resp> {
        if !self.connect_waiters.is_empty()
            || (self.opts.reconnect == Reconnect::Persistent && !self.engine.intake_done())
        {
            return self.start_pass();
        }
        self.set_state(State::Idle);
        Phase::Idle
    }
}

/// A connect attempt that outlived the connect timeout, as the `io::Error` a socket's own
/// timeout would be, so reporters that look for one in the chain find it.
fn connect_timed_out() -> tower::BoxError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out").into()
}
