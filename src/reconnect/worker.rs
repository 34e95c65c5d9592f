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
//! connection fail as *may have executed*.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tracing::{debug, info, warn};

use super::backoff::{Backoff, Jitter};
use super::endpoint::{Endpoint, Hosts};
use super::error::{ConnectError, HostError};
use super::handshake::{Handshake, HandshakeFuture, Hook};
use crate::channel::Channel;
use crate::error::{Cause, ConnectionError, ConnectionErrorKind, Error, Kind};
use crate::mux::{Conn, Engine, Envelope, Frames, Lane, Mode, Waiter};
use crate::shared::{Control, State};
use crate::stats::Stats;
use crate::transport::{Connector, Transport};

/// What to do when a connect pass fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// One pass over the hosts when a call needs a connection; if every host fails, the
    /// waiting calls fail as *not sent*, and the next pass waits for the backoff and for
    /// the next call (skynet's `request`).
    #[default]
    Once,
    /// Keep trying, with backoff, until closed, whether or not calls wait (skynet's
    /// `connect(false)`). Calls that arrive while it backs off fail as *not sent*.
    Persistent,
}

/// How a reconnecting channel connects.
pub(crate) struct Options<Req, Resp> {
    pub(crate) policy: Policy,
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) handshake_timeout: Option<Duration>,
    pub(crate) drain_timeout: Duration,
    pub(crate) handshake: Option<Hook<Req, Resp>>,
    pub(crate) idle_ping: Option<(Duration, Arc<dyn Fn() -> Req + Send + Sync>)>,
    pub(crate) queue: usize,
    pub(crate) max_in_flight: usize,
    /// Connect as soon as the task starts, not on the first call.
    pub(crate) eager: bool,
}

// By hand: a derive would ask `Req: Clone` and `Resp: Clone`.
impl<Req, Resp> Clone for Options<Req, Resp> {
    fn clone(&self) -> Self {
        Options {
            policy: self.policy,
            backoff: self.backoff.clone(),
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
            drain_timeout: self.drain_timeout,
            handshake: self.handshake.clone(),
            idle_ping: self.idle_ping.clone(),
            queue: self.queue,
            max_in_flight: self.max_in_flight,
            eager: self.eager,
        }
    }
}

type Attempt<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// Redirects followed in one pass at most: a loop of redirects is a failure.
const MAX_REDIRECTS: u8 = 8;

struct Pass {
    hosts: Vec<Endpoint>,
    next: usize,
    failures: Vec<(Endpoint, BoxError)>,
    redirects: u8,
}

enum Phase<T, Mt, Req, Resp> {
    /// Not connected; waiting for a call or `connect()`.
    Idle,
    Connecting {
        pass: Pass,
        endpoint: Endpoint,
        attempt: Attempt<T>,
    },
    Handshaking {
        pass: Pass,
        endpoint: Endpoint,
        conn: Conn<T, Mt, Req, Resp>,
        lane: mpsc::Receiver<Envelope<Req, Resp>>,
        hook: HandshakeFuture,
        timer: Option<Pin<Box<Sleep>>>,
    },
    Ready {
        conn: Conn<T, Mt, Req, Resp>,
        /// Frames received before this connection, to tell whether it answered any.
        received_before: u64,
        ping: Option<Ping<Resp>>,
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

struct Ping<Resp> {
    timer: Pin<Box<Sleep>>,
    every: Duration,
    /// Traffic counters at the last tick: unchanged means idle.
    seen: (u64, u64),
    waiting: Option<oneshot::Receiver<Result<Resp, Error>>>,
}

struct Draining<T, Mt, Req, Resp> {
    conn: Conn<T, Mt, Req, Resp>,
    deadline: Pin<Box<Sleep>>,
}

/// The connection task of a reconnecting channel.
pub(crate) struct Reconnect<K, M, T, Req, Resp>
where
    M: Mode<Req, Resp>,
{
    engine: Engine<Req, Resp>,
    connector: K,
    mode: M,
    opts: Options<Req, Resp>,
    hosts: Hosts,
    control: mpsc::UnboundedReceiver<Control>,
    phase: Phase<T, M::Matcher, Req, Resp>,
    draining: Vec<Draining<T, M::Matcher, Req, Resp>>,
    /// Failed passes in a row.
    failures: u32,
    jitter: Jitter,
    /// Why the last pass failed: the cause of calls that fail fast while backing off.
    last_error: Option<Cause>,
    shutdown: Option<Pin<Box<Sleep>>>,
    connected_before: bool,
    /// `connect()` callers waiting for the current pass.
    connect_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    /// The current host accepted and then died without a reply: the next pass tries it
    /// last, so a crash-looping host does not shut out its backups.
    demote_current: bool,
}

// No field is pinned structurally: futures and timers are boxed, transports `Unpin`.
impl<K, M: Mode<Req, Resp>, T, Req, Resp> Unpin for Reconnect<K, M, T, Req, Resp> {}

impl<K, M, T, Req, Resp> Reconnect<K, M, T, Req, Resp>
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
        let jitter = opts.backoff.jitter(|| {
            Instant::now().elapsed().as_nanos() as u64
                ^ (std::ptr::addr_of!(hosts) as u64).rotate_left(17)
                ^ std::process::id() as u64
        });
        let mut this = Reconnect {
            engine,
            connector,
            mode,
            opts,
            hosts,
            control,
            phase: Phase::Idle,
            draining: Vec::new(),
            failures: 0,
            jitter,
            last_error: None,
            shutdown: None,
            connected_before: false,
            connect_waiters: Vec::new(),
            demote_current: false,
        };
        this.engine.shared.set_state(State::Idle);
        if this.opts.eager {
            this.phase = this.start_pass();
        }
        this
    }

    fn set_state(&self, state: State) {
        self.engine.shared.set_state(state);
    }

    fn start_pass(&mut self) -> Phase<T, M::Matcher, Req, Resp> {
        let mut hosts = self.hosts.pass();
        if std::mem::take(&mut self.demote_current) {
            hosts.rotate_left(1);
        }
        let pass = Pass {
            hosts,
            next: 0,
            failures: Vec::new(),
            redirects: 0,
        };
        self.next_host(pass)
    }

    /// Tries the pass's next host, or ends the pass.
    fn next_host(&mut self, mut pass: Pass) -> Phase<T, M::Matcher, Req, Resp> {
        let Some(endpoint) = pass.hosts.get(pass.next).cloned() else {
            return self.pass_failed(pass);
        };
        pass.next += 1;
        debug!(%endpoint, "connecting");
        self.set_state(State::Connecting);
        let mut connector = self.connector.clone();
        let timeout = self.opts.connect_timeout;
        let target = endpoint.clone();
        let attempt = async move {
            let connect = async move {
                std::future::poll_fn(|cx| connector.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                connector.call(target).await.map_err(Into::into)
            };
            match timeout {
                Some(t) => tokio::time::timeout(t, connect)
                    .await
                    .unwrap_or_else(|_| Err(HostError::Timeout("connect").into())),
                None => connect.await,
            }
        };
        Phase::Connecting {
            pass,
            endpoint,
            attempt: Box::pin(attempt),
        }
    }

    fn host_failed(
        &mut self,
        mut pass: Pass,
        endpoint: Endpoint,
        err: BoxError,
    ) -> Phase<T, M::Matcher, Req, Resp> {
        warn!(%endpoint, error = %err, "host failed");
        pass.failures.push((endpoint, err));
        self.next_host(pass)
    }

    /// Every host failed: queued calls fail as *not sent*, then back off.
    fn pass_failed(&mut self, pass: Pass) -> Phase<T, M::Matcher, Req, Resp> {
        let err = ConnectError::new(pass.failures);
        warn!(error = %err, "connect pass failed");
        let cause: Cause = Arc::new(err);
        self.engine.fail_queued(Kind::Connect, Some(&cause));
        *self
            .engine
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(cause.clone());
        self.tell_waiters(|| Error::new(Kind::Connect).with_cause(cause.clone()));
        self.last_error = Some(cause);
        self.back_off(true)
    }

    /// Tells `connect()` callers how the pass ended.
    fn tell_waiters(&mut self, err: impl Fn() -> Error) {
        for waiter in self.connect_waiters.drain(..) {
            let _ = waiter.send(Err(err()));
        }
    }

    fn back_off(&mut self, fail_fast: bool) -> Phase<T, M::Matcher, Req, Resp> {
        self.failures += 1;
        match self.opts.backoff.delay(self.failures, self.jitter.unit()) {
            Some(delay) => {
                debug!(?delay, failures = self.failures, "backing off");
                self.set_state(State::BackingOff);
                Phase::BackingOff {
                    sleep: Box::pin(tokio::time::sleep(delay)),
                    fail_fast,
                }
            }
            None => {
                info!(failures = self.failures, "giving up until the next call");
                self.failures = 0;
                self.set_state(State::Idle);
                Phase::Idle
            }
        }
    }

    fn connected(
        &mut self,
        pass: Pass,
        endpoint: Endpoint,
        transport: T,
    ) -> Phase<T, M::Matcher, Req, Resp> {
        let conn = Conn::new(transport, self.mode.matcher(self.opts.max_in_flight));
        match self.opts.handshake.clone() {
            Some(hook) => {
                self.set_state(State::Handshaking);
                let (tx, lane) = mpsc::channel(self.opts.queue);
                let handle = Channel::from_parts(tx, self.engine.shared.clone());
                Phase::Handshaking {
                    pass,
                    hook: hook(handle, endpoint.clone()),
                    endpoint,
                    conn,
                    lane,
                    timer: self
                        .opts
                        .handshake_timeout
                        .map(|t| Box::pin(tokio::time::sleep(t))),
                }
            }
            None => self.ready(endpoint, conn),
        }
    }

    fn ready(
        &mut self,
        endpoint: Endpoint,
        conn: Conn<T, M::Matcher, Req, Resp>,
    ) -> Phase<T, M::Matcher, Req, Resp> {
        info!(%endpoint, "connected");
        if self.connected_before {
            self.engine.shared.stats.reconnects(1);
        }
        self.connected_before = true;
        self.hosts.promote(endpoint);
        self.last_error = None;
        for waiter in self.connect_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
        self.set_state(State::Ready);
        let stats = &self.engine.shared.stats;
        let ping = self.opts.idle_ping.as_ref().map(|(every, _)| Ping {
            timer: Box::pin(tokio::time::sleep(*every)),
            every: *every,
            seen: (0, 0),
            waiting: None,
        });
        Phase::Ready {
            conn,
            received_before: stats.snapshot().received,
            ping,
        }
    }

    /// The connection in use ended.
    fn lost(
        &mut self,
        conn: Conn<T, M::Matcher, Req, Resp>,
        why: ConnectionError,
        received_before: u64,
    ) -> Phase<T, M::Matcher, Req, Resp> {
        warn!(error = %why, "connection lost");
        let cause: Cause = Arc::new(why);
        conn.fail(Kind::Connection, &cause, &self.engine.shared.stats);
        let answered = self.engine.shared.stats.snapshot().received > received_before;
        if !answered {
            // A host that accepts and then dies without a word would make a hot loop:
            // back off, and try the backups first next time.
            self.last_error = Some(cause);
            self.demote_current = true;
            return self.back_off(false);
        }
        self.failures = 0;
        self.after_loss()
    }

    /// Reconnects at once under `Persistent` (unless every handle is gone), else waits
    /// for the next call.
    fn after_loss(&mut self) -> Phase<T, M::Matcher, Req, Resp> {
        if self.opts.policy == Policy::Persistent && !self.engine.intake_done() {
            return self.start_pass();
        }
        self.set_state(State::Idle);
        Phase::Idle
    }

    /// Fails everything and stops: `close()`, or a shutdown past its deadline.
    fn close(&mut self) {
        let cause: Cause = Arc::new(ConnectionError::new(ConnectionErrorKind::Closed, None));
        self.engine.shared.set_closed();
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Ready { conn, .. } | Phase::Handshaking { conn, .. } => {
                conn.fail(Kind::Closed, &cause, &self.engine.shared.stats);
            }
            _ => {}
        }
        for d in self.draining.drain(..) {
            d.conn.fail(Kind::Closed, &cause, &self.engine.shared.stats);
        }
        self.engine.fail_queued(Kind::Closed, Some(&cause));
        self.tell_waiters(|| Error::new(Kind::Closed));
        self.shutdown = None;
        self.set_state(State::Closed);
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Close => self.close(),
            Control::Shutdown(deadline) => {
                self.shutdown = Some(Box::pin(tokio::time::sleep_until(deadline)));
            }
            Control::Connect(done) => {
                self.shutdown = None;
                self.engine.shared.set_open();
                match self.phase {
                    Phase::Ready { .. } => {
                        let _ = done.send(Ok(()));
                    }
                    Phase::Connecting { .. } | Phase::Handshaking { .. } => {
                        self.connect_waiters.push(done);
                    }
                    Phase::Idle | Phase::Closed | Phase::BackingOff { .. } => {
                        self.connect_waiters.push(done);
                        self.failures = 0;
                        self.phase = self.start_pass();
                    }
                }
            }
            Control::ChangeBackups(backups) => self.hosts.set_backups(&backups),
            Control::ChangeHost(host) => {
                self.hosts.set_current(&host);
                info!(endpoint = %self.hosts.current, "changing host");
                match std::mem::replace(&mut self.phase, Phase::Idle) {
                    Phase::Ready { conn, .. } => {
                        self.draining.push(Draining {
                            conn,
                            deadline: Box::pin(tokio::time::sleep(self.opts.drain_timeout)),
                        });
                        // Under `Once` the next call connects (`Idle` starts a pass at
                        // once if calls are queued).
                        self.phase = self.after_loss();
                    }
                    Phase::Connecting { .. } | Phase::Handshaking { .. } => {
                        self.phase = self.start_pass();
                    }
                    Phase::Closed => self.phase = Phase::Closed,
                    Phase::Idle | Phase::BackingOff { .. } => {}
                }
            }
        }
    }

    /// Polls old connections that finish their calls after a host change.
    fn poll_draining(&mut self, cx: &mut Context<'_>) {
        let mut i = 0;
        while i < self.draining.len() {
            let d = &mut self.draining[i];
            let end = match self.engine.poll_conn(cx, &mut d.conn, Lane::Drain) {
                Poll::Ready(Ok(())) => Some(None),
                Poll::Ready(Err(why)) => Some(Some(why)),
                Poll::Pending if d.deadline.as_mut().poll(cx).is_ready() => Some(Some(
                    ConnectionError::new(ConnectionErrorKind::Closed, None),
                )),
                Poll::Pending => None,
            };
            match end {
                None => i += 1,
                Some(why) => {
                    let d = self.draining.swap_remove(i);
                    if let Some(why) = why {
                        let cause: Cause = Arc::new(why);
                        d.conn
                            .fail(Kind::Connection, &cause, &self.engine.shared.stats);
                    }
                }
            }
        }
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
                    self.fail_arrivals(cx, Kind::Connect);
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
            Phase::Handshaking {
                mut pass,
                endpoint,
                mut conn,
                mut lane,
                mut hook,
                mut timer,
            } => {
                // The hook first: a read it queues must hold its slot before a greeting
                // that is already buffered is routed (the engine writes before it reads).
                let outcome = hook.as_mut().poll(cx);
                if outcome.is_pending() {
                    if let Poll::Ready(res) =
                        self.engine
                            .poll_conn(cx, &mut conn, Lane::Handshake(&mut lane))
                    {
                        let why = res.err().unwrap_or_else(|| {
                            ConnectionError::new(ConnectionErrorKind::Eof, None)
                        });
                        let cause: Cause = Arc::new(why);
                        conn.fail(Kind::Connection, &cause, &self.engine.shared.stats);
                        return Ok(self.host_failed(pass, endpoint, cause.to_string().into()));
                    }
                    if timer
                        .as_mut()
                        .is_some_and(|t| t.as_mut().poll(cx).is_ready())
                    {
                        abandon(conn, &self.engine.shared.stats);
                        let err = HostError::Timeout("handshake").into();
                        return Ok(self.host_failed(pass, endpoint, err));
                    }
                    self.phase = Phase::Handshaking {
                        pass,
                        endpoint,
                        conn,
                        lane,
                        hook,
                        timer,
                    };
                    return Err(());
                }
                match outcome {
                    Poll::Ready(Ok(Handshake::Ready)) => {
                        // Calls the handshake queued but did not await still go first.
                        lane.close();
                        while let Ok(call) = lane.try_recv() {
                            self.engine.hold_first(call);
                        }
                        Ok(self.ready(endpoint, conn))
                    }
                    Poll::Ready(Ok(Handshake::Redirect(to))) => {
                        info!(from = %endpoint, %to, "handshake redirects");
                        abandon(conn, &self.engine.shared.stats);
                        if pass.redirects >= MAX_REDIRECTS {
                            return Ok(self.host_failed(
                                pass,
                                endpoint,
                                "too many redirects".into(),
                            ));
                        }
                        pass.redirects += 1;
                        self.hosts.current = to;
                        // Start over at the new host, then its backups.
                        pass.hosts = self.hosts.pass();
                        pass.next = 0;
                        Ok(self.next_host(pass))
                    }
                    Poll::Ready(Err(err)) => {
                        abandon(conn, &self.engine.shared.stats);
                        Ok(self.host_failed(pass, endpoint, HostError::Handshake(err).into()))
                    }
                    Poll::Pending => unreachable!("handled above"),
                }
            }
            Phase::Ready {
                mut conn,
                received_before,
                mut ping,
            } => {
                if let Some(ping) = &mut ping {
                    self.poll_ping(cx, ping);
                }
                match self.engine.poll_conn(cx, &mut conn, Lane::User) {
                    Poll::Pending => {
                        self.phase = Phase::Ready {
                            conn,
                            received_before,
                            ping,
                        };
                        Err(())
                    }
                    // Every handle is gone and every call answered.
                    Poll::Ready(Ok(())) => {
                        self.set_state(State::Closed);
                        self.phase = Phase::Idle;
                        Err(())
                    }
                    Poll::Ready(Err(why)) => Ok(self.lost(conn, why, received_before)),
                }
            }
        }
    }

    /// Sends the idle ping when nothing was sent or received for a whole period.
    fn poll_ping(&mut self, cx: &mut Context<'_>, ping: &mut Ping<Resp>) {
        while ping.timer.as_mut().poll(cx).is_ready() {
            ping.timer
                .as_mut()
                .reset(crate::config::deadline(Instant::now(), ping.every));
            let stats = self.engine.shared.stats.snapshot();
            let seen = (stats.sent, stats.received);
            let answered = ping.waiting.as_mut().is_none_or(|rx| {
                !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            });
            if seen == ping.seen && answered {
                if let Some((_, make)) = &self.opts.idle_ping {
                    debug!("idle: sending ping");
                    let (tx, rx) = oneshot::channel();
                    let call = Envelope::new(Frames::One(make()), Waiter::One(Some(tx)));
                    self.engine.hold_first(call);
                    ping.waiting = Some(rx);
                }
            }
            ping.seen = seen;
        }
    }
}

/// Drops a connection whose handshake did not make it ready; what the handshake had in
/// flight on it fails.
fn abandon<T, Mt, Req, Resp>(conn: Conn<T, Mt, Req, Resp>, stats: &Stats)
where
    Mt: crate::mux::Matcher<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let cause: Cause = Arc::new(ConnectionError::new(ConnectionErrorKind::Closed, None));
    conn.fail(Kind::Connection, &cause, stats);
}

impl<K, M, T, Req, Resp> Future for Reconnect<K, M, T, Req, Resp>
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
            if let Some(deadline) = &mut this.shutdown {
                let idle = this.engine.queue_is_empty()
                    && match &this.phase {
                        Phase::Ready { conn, .. } | Phase::Handshaking { conn, .. } => {
                            conn.is_idle()
                        }
                        _ => true,
                    };
                if (idle && this.draining.is_empty()) || deadline.as_mut().poll(cx).is_ready() {
                    this.close();
                }
            }
            this.poll_draining(cx);
            match this.step(cx) {
                Ok(next) => this.phase = next,
                Err(()) => {
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
