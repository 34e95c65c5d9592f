//! The engine: drives one transport at a time for the calls of one intake.
//!
//! One poll does, in turn and within a budget: write calls from the intake while the
//! sink and the matcher have room, read and route up to `READ_BATCH` ready frames,
//! flush once, and check the stall timer. Reading never waits for writing, so a peer
//! that only reads after it has written cannot deadlock us.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use futures_sink::Sink;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tracing::{debug, trace};

use super::call::{Envelope, Frames, Waiter};
use super::matcher::{Entry, Matcher, Route, millis_since};
use crate::config::{Config, deadline};
use crate::error::{Cause, ConnectionError, ConnectionErrorKind as Why, Error, Kind};
use crate::shared::Shared;
use crate::stats::Stats;
use crate::transport::Transport;

/// Poll iterations before the connection task yields to the scheduler.
const BUDGET: usize = 16;
/// Calls written per iteration at most: keeps both directions moving.
const BATCH: usize = 256;
/// Frames read per iteration at most. The callers they wake send their next calls as one
/// write (see the yield in `poll_conn`) while the rest of the replies wait in the read
/// buffer, so the server works on one batch while the callers work on the next. Smaller
/// batches cost the server a read per few calls; at 256 callers on Redis, 64 did 8-13%
/// more than 256, and 32 did 20% less.
const READ_BATCH: usize = 64;

/// The state that outlives each transport: the intake, the push sender, the settings.
pub(crate) struct Engine<Req, Resp> {
    intake: mpsc::Receiver<Envelope<Req, Resp>>,
    /// Calls taken from the intake but not yet written, written first: the one the
    /// reconnect worker took to learn that a connection is wanted, an idle ping, calls a
    /// handshake queued without waiting for them.
    held: VecDeque<Envelope<Req, Resp>>,
    /// Every handle is gone and the intake is empty.
    intake_done: bool,
    pushes: mpsc::Sender<Resp>,
    pub(crate) shared: Arc<Shared<Resp>>,
    stall: Option<Duration>,
}

/// Where a connection takes the calls it writes.
pub(crate) enum Lane<'a, Req, Resp> {
    /// The users' intake.
    User,
    /// The handshake's own intake: user calls wait until the handshake is done.
    Handshake(&'a mut mpsc::Receiver<Envelope<Req, Resp>>),
    /// None: a connection that only drains what it has written.
    Drain,
}

/// One transport, the calls written on it and the write state tied to it.
pub(crate) struct Conn<T, M, Req, Resp> {
    transport: T,
    pub(crate) matcher: M,
    writing: Option<Writing<Req, Resp>>,
    needs_flush: bool,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    epoch: Instant,
    /// The waiting calls this connection last counted into `Counters::in_flight`.
    reported: usize,
}

/// The rest of a multi-part request: nothing else is written until it is.
struct Writing<Req, Resp> {
    rest: std::vec::IntoIter<Req>,
    /// A fire-and-forget waiter, resolved once the last part is handed over.
    done: Option<Waiter<Resp>>,
}

impl<Req, Resp> Drop for Writing<Req, Resp> {
    /// Dropped before its last part was handed over (the task is gone): part of it was.
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done.fail(Error::new(Kind::Closed).written(true));
        }
    }
}

impl<T, M, Req, Resp> Conn<T, M, Req, Resp> {
    pub(crate) fn new(transport: T, matcher: M) -> Self {
        Conn {
            transport,
            matcher,
            writing: None,
            needs_flush: false,
            timer: None,
            armed: false,
            epoch: Instant::now(),
            reported: 0,
        }
    }
}

fn fail(why: Why, source: impl Into<BoxError>) -> ConnectionError {
    ConnectionError::new(why, Some(source.into()))
}

impl<Req, Resp> Engine<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    pub(crate) fn new(
        intake: mpsc::Receiver<Envelope<Req, Resp>>,
        pushes: mpsc::Sender<Resp>,
        shared: Arc<Shared<Resp>>,
        config: &Config,
    ) -> Self {
        Engine {
            intake,
            held: VecDeque::new(),
            intake_done: false,
            pushes,
            shared,
            stall: config.stall_timeout,
        }
    }

    /// Every handle is gone and every queued call was taken.
    pub(crate) fn intake_done(&self) -> bool {
        self.intake_done && self.held.is_empty()
    }

    /// Nothing is queued.
    pub(crate) fn queue_is_empty(&self) -> bool {
        self.held.is_empty() && self.intake.is_empty()
    }

    /// Queues a call ahead of the intake.
    pub(crate) fn hold_first(&mut self, call: Envelope<Req, Resp>) {
        self.held.push_back(call);
    }

    /// Stops taking new calls; those already queued are still served.
    pub(crate) fn close_intake(&mut self) {
        self.intake.close();
    }

    /// Waits until a user call is queued (and holds it, to be written first), or the
    /// intake is finished (`false`).
    pub(crate) fn poll_wanted(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if !self.held.is_empty() {
            return Poll::Ready(true);
        }
        if self.intake_done {
            return Poll::Ready(false);
        }
        match ready!(self.intake.poll_recv(cx)) {
            Some(call) => {
                self.shared.unqueue(call.weight);
                self.held.push_back(call);
                Poll::Ready(true)
            }
            None => {
                self.intake_done = true;
                Poll::Ready(false)
            }
        }
    }

    fn poll_call(
        &mut self,
        cx: &mut Context<'_>,
        lane: &mut Lane<'_, Req, Resp>,
    ) -> Poll<Option<Envelope<Req, Resp>>> {
        match lane {
            Lane::User => {
                if let Some(call) = self.held.pop_front() {
                    return Poll::Ready(Some(call));
                }
                if self.intake_done {
                    return Poll::Ready(None);
                }
                let call = ready!(self.intake.poll_recv(cx));
                match &call {
                    Some(call) => self.shared.unqueue(call.weight),
                    None => self.intake_done = true,
                }
                Poll::Ready(call)
            }
            Lane::Handshake(rx) => rx.poll_recv(cx),
            Lane::Drain => Poll::Ready(None),
        }
    }

    /// Drives `conn`, writing calls from `lane`, until it fails, or until the lane is
    /// finished and nothing waits (then the transport is flushed and closed and this
    /// returns `Ok`).
    pub(crate) fn poll_conn<T, M>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<T, M, Req, Resp>,
        mut lane: Lane<'_, Req, Resp>,
    ) -> Poll<Result<(), ConnectionError>>
    where
        T: Transport<Req, Resp>,
        M: Matcher<Req, Resp>,
    {
        for _ in 0..BUDGET {
            let now_ms = match self.stall {
                Some(_) => millis_since(conn.epoch, Instant::now()),
                None => 0,
            };
            // Writes first: a read without a request queued before a greeting arrived
            // must hold its FIFO slot when the greeting is routed.
            let (wrote, lane_done) = self.poll_write(cx, conn, &mut lane, now_ms)?;
            // Any frame read may free a slot or an id: then go round again to write.
            let read = self.poll_read(cx, conn, now_ms)?;
            // Flush after routing: the callers the replies woke start on other workers
            // while this one is in the write syscall (tens of µs on loopback: it runs
            // the receiver's side of TCP too), instead of after it.
            if conn.needs_flush {
                if let Poll::Ready(res) = Pin::new(&mut conn.transport).poll_flush(cx) {
                    res.map_err(|e| fail(Why::Write, e))?;
                    conn.needs_flush = false;
                }
            }
            conn.report_in_flight(&self.shared.stats);
            conn.poll_stall(cx, self.stall)?;

            let lane_ends_conn = !matches!(lane, Lane::Handshake(_));
            if lane_done && lane_ends_conn && conn.is_idle() {
                ready!(Pin::new(&mut conn.transport).poll_close(cx))
                    .map_err(|e| fail(Why::Write, e))?;
                return Poll::Ready(Ok(()));
            }
            if read == 0 && !wrote {
                return Poll::Pending;
            }
            // The callers these replies woke are about to send their next calls: let
            // them run first (a self-wake puts this task behind them), then write all
            // of those calls in one batch. Without this, on a multi-threaded runtime the
            // first caller's call wakes this task into the worker's LIFO slot, ahead of
            // the other callers, and each write carries a call or two. One reply woke
            // one caller, whose call wakes this task anyway: no need to yield.
            if read >= 2 && matches!(lane, Lane::User) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        // Out of budget with work left: let other tasks run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads and routes ready frames. Returns how many it read.
    fn poll_read<T, M, RE>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<T, M, Req, Resp>,
        now_ms: u32,
    ) -> Result<usize, ConnectionError>
    where
        T: Stream<Item = Result<Resp, RE>> + Unpin,
        M: Matcher<Req, Resp>,
        RE: Into<BoxError>,
    {
        let mut n = 0;
        while n < READ_BATCH {
            let frame = match Pin::new(&mut conn.transport).poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => return Err(fail(Why::Read, e)),
                Poll::Ready(None) => return Err(ConnectionError::new(Why::Eof, None)),
                Poll::Pending => break,
            };
            n += 1;
            self.shared.stats.received(1);
            match conn.matcher.route(frame, now_ms) {
                Route::Delivered => {}
                Route::Push(frame) => self.push(frame),
                Route::Unknown => self.shared.stats.unknown(1),
                Route::Desync => return Err(ConnectionError::new(Why::Desync, None)),
            }
        }
        Ok(n)
    }

    fn push(&mut self, frame: Resp) {
        match self.pushes.try_send(frame) {
            Ok(()) => self.shared.stats.pushes(1),
            Err(_) => {
                trace!("push receiver full or gone; push frame dropped");
                self.shared.stats.push_overflow(1);
            }
        }
    }

    /// Writes calls from `lane` while there is room. Returns whether it did anything,
    /// and whether the lane is finished.
    fn poll_write<T, M, WE>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<T, M, Req, Resp>,
        lane: &mut Lane<'_, Req, Resp>,
        now_ms: u32,
    ) -> Result<(bool, bool), ConnectionError>
    where
        T: Sink<Req, Error = WE> + Unpin,
        M: Matcher<Req, Resp>,
        WE: Into<BoxError>,
    {
        let mut sent = 0u64;
        let mut progress = false;
        let mut lane_done = false;
        for _ in 0..BATCH {
            if conn.writing.is_none() && !conn.matcher.has_room() {
                break;
            }
            match Pin::new(&mut conn.transport).poll_ready(cx) {
                Poll::Ready(res) => res.map_err(|e| fail(Why::Write, e))?,
                Poll::Pending => break,
            }
            if let Some(writing) = &mut conn.writing {
                progress = true;
                match writing.rest.next() {
                    Some(part) => conn.start_send(part)?,
                    None => {
                        if let Some(done) = conn.writing.take().and_then(|mut w| w.done.take()) {
                            done.written();
                        }
                    }
                }
                continue;
            }
            let call = match self.poll_call(cx, lane) {
                Poll::Ready(Some(call)) => call,
                Poll::Ready(None) => {
                    lane_done = true;
                    break;
                }
                Poll::Pending => break,
            };
            progress = true;
            if call.waiter.is_gone() {
                // Cancelled before it was written: never written.
                self.shared.stats.skipped(1);
                continue;
            }
            if conn.write_call(call, now_ms)? {
                sent += 1;
            }
        }
        if sent > 0 {
            self.shared.stats.sent(sent);
        }
        Ok((progress, lane_done))
    }

    /// Fails every queued call as *not sent*, handing each its request back, and stops
    /// the intake for good.
    pub(crate) fn fail_queued_and_close(&mut self, kind: Kind, cause: Option<&Cause>) {
        self.intake.close();
        self.fail_queued(kind, cause);
        self.intake_done = true;
    }

    /// After the end: fails each call that still arrives (on a slot reserved before) as
    /// closed and *not sent*, until no handle can send any more.
    pub(crate) fn poll_fail_late(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(call) = ready!(self.intake.poll_recv(cx)) {
            self.shared.unqueue(call.weight);
            call.fail_unsent(Kind::Closed, None);
        }
        Poll::Ready(())
    }

    /// Fails the queued calls as *not sent*, handing each its request back, but keeps
    /// the intake open: later calls are taken as usual.
    pub(crate) fn fail_queued(&mut self, kind: Kind, cause: Option<&Cause>) {
        for call in self.held.drain(..) {
            call.fail_unsent(kind, cause);
        }
        while let Ok(call) = self.intake.try_recv() {
            self.shared.unqueue(call.weight);
            call.fail_unsent(kind, cause);
        }
    }
}

impl<T, M, Req, Resp> Conn<T, M, Req, Resp>
where
    M: Matcher<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Nothing is being written, flushed, or waited for.
    pub(crate) fn is_idle(&self) -> bool {
        self.writing.is_none() && !self.needs_flush && self.matcher.pending() == 0
    }

    fn start_send<WE>(&mut self, req: Req) -> Result<(), ConnectionError>
    where
        T: Sink<Req, Error = WE> + Unpin,
        WE: Into<BoxError>,
    {
        self.needs_flush = true;
        Pin::new(&mut self.transport)
            .start_send(req)
            .map_err(|e| fail(Why::Write, e))
    }

    /// Admits one call and hands its first frame to the sink. Returns whether it wrote.
    fn write_call<WE>(
        &mut self,
        call: Envelope<Req, Resp>,
        now_ms: u32,
    ) -> Result<bool, ConnectionError>
    where
        T: Sink<Req, Error = WE> + Unpin,
        WE: Into<BoxError>,
    {
        let Envelope {
            mut frames,
            waiter,
            id,
            exempt,
            weight: _,
        } = call;
        if matches!(&frames, Frames::Many(parts) if parts.is_empty()) {
            // Nothing to write: in order mode it would take the next caller's reply.
            let mut err = Error::new(Kind::Unsupported);
            if let Some(req) = frames.into_any() {
                err = err.with_request(req);
            }
            waiter.fail(err);
            return Ok(false);
        }
        let done = if waiter.wants_reply() {
            let entry = Entry {
                waiter,
                written_ms: now_ms,
                exempt,
                read_only: matches!(frames, Frames::None),
            };
            if let Err((err, entry)) = self.matcher.admit(&mut frames, id, entry) {
                let err = match frames.into_any() {
                    Some(req) => err.with_request(req),
                    None => err,
                };
                entry.waiter.fail(err);
                return Ok(false);
            }
            None
        } else {
            Some(waiter)
        };
        match frames {
            // A read writes nothing: not counted as sent.
            Frames::None => return Ok(false),
            Frames::One(req) => {
                self.start_send(req)?;
                if let Some(done) = done {
                    done.written();
                }
            }
            Frames::Many(parts) => {
                // Parts go out back to back; `poll_write` finishes them before anything
                // else, resolving `done` after the last.
                self.writing = Some(Writing {
                    rest: parts.into_iter(),
                    done,
                });
            }
        }
        Ok(true)
    }

    /// Arms, re-arms or fires the stall timer.
    fn poll_stall(
        &mut self,
        cx: &mut Context<'_>,
        stall: Option<Duration>,
    ) -> Result<(), ConnectionError> {
        let Some(stall) = stall else {
            return Ok(());
        };
        if self.matcher.pending() == 0 {
            self.armed = false;
            return Ok(());
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if !self.armed {
            timer.as_mut().reset(deadline(Instant::now(), stall));
            self.armed = true;
        }
        while timer.as_mut().poll(cx).is_ready() {
            let Some(since) = self.matcher.stalled_since() else {
                self.armed = false;
                return Ok(());
            };
            let deadline = deadline(self.epoch + Duration::from_millis(since.into()), stall);
            if deadline <= Instant::now() {
                debug!(?stall, "stall timeout: the oldest request went unanswered");
                return Err(ConnectionError::new(Why::Stalled, None));
            }
            timer.as_mut().reset(deadline);
        }
        Ok(())
    }

    fn report_in_flight(&mut self, stats: &Stats) {
        let now = self.matcher.pending();
        stats.in_flight_changed(self.reported, now);
        self.reported = now;
    }

    /// Fails every call written on this connection, which has ended, as *may have
    /// executed* (reads without a request as *not sent*).
    pub(crate) fn fail(mut self, kind: Kind, cause: &Cause, stats: &Stats) {
        let failed = |read_only: bool| {
            Error::new(kind)
                .written(!read_only)
                .with_cause(cause.clone())
        };
        if let Some(done) = self.writing.take().and_then(|mut w| w.done.take()) {
            done.fail(failed(false));
        }
        self.matcher
            .drain(&mut |entry| entry.waiter.fail(failed(entry.read_only)));
        self.report_in_flight(stats);
    }
}
