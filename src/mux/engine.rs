//! The engine: drives one transport at a time for the calls of one intake.
//!
//! One poll does, in turn and within a budget: write calls (those tied to the
//! connection first, then the lane's) while the sink and the matcher have room, read
//! and route up to `READ_BATCH` ready frames, flush once, and run the stall timer.
//! Reading never waits for writing, so a peer that only reads after it has written
//! cannot deadlock us. The connection's own state is in `conn.rs`, the timer in
//! `stall.rs`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use futures_sink::Sink;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::BoxError;
use tracing::trace;

use super::call::Envelope;
use super::conn::Conn;
use super::matcher::{Matcher, Route};
use crate::config::Config;
use crate::error::{Cause, ConnectionError, ConnectionErrorKind as Why, Kind};
use crate::shared::Shared;
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
    /// The user call the reconnect worker took to learn that a connection is wanted:
    /// written first, on the next connection, after that connection's handshake.
    held: VecDeque<Envelope<Req, Resp>>,
    /// Every handle is gone and the intake is empty.
    intake_done: bool,
    /// Shutting down: the calls queued now are served, and an empty intake is the end
    /// even while a handle still holds a slot it reserved (it will fail, not wait).
    closing: bool,
    pushes: mpsc::Sender<Resp>,
    pub(crate) shared: Arc<Shared<Resp>>,
    stall: Option<Duration>,
}

/// How a connection's drive ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The lane is finished and nothing waits: the transport is closed.
    Done,
    /// Too many orphans hold its slots ([`Conn::should_retire`]): new calls should go to
    /// a fresh connection while this one drains.
    Retire,
}

/// Where a connection takes the calls it writes (after those tied to it).
pub(crate) enum Lane<'a, Req, Resp> {
    /// The users' intake.
    User,
    /// The handshake's own intake: user calls wait until the handshake is done.
    Handshake(&'a mut mpsc::Receiver<Envelope<Req, Resp>>),
    /// None: a connection that only drains what it has written.
    Drain,
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
            closing: false,
            pushes,
            shared,
            stall: config.stall_timeout,
        }
    }

    /// A fresh connection over `transport`.
    pub(crate) fn conn<T, M>(&self, transport: T, matcher: M) -> Conn<T, M, Req, Resp> {
        Conn::new(transport, matcher, self.shared.clone())
    }

    /// Every handle is gone (or a shutdown took the last queued call) and every queued
    /// call was taken.
    pub(crate) fn intake_done(&self) -> bool {
        self.intake_done && self.held.is_empty()
    }

    /// Nothing is queued.
    pub(crate) fn queue_is_empty(&self) -> bool {
        self.held.is_empty() && self.intake.is_empty()
    }

    /// Nothing queued has a caller waiting for it (for a shutdown, which ends when
    /// nothing it waits for is left): the queued calls are taken in order and those
    /// whose caller is gone are dropped unwritten.
    /// Where callers remain, the task is woken when they leave.
    pub(crate) fn poll_nobody_waits(&mut self, cx: &mut Context<'_>) -> bool {
        while let Ok(mut call) = self.intake.try_recv() {
            self.shared.unqueue(std::mem::take(&mut call.weight));
            self.held.push_back(call);
        }
        let before = self.held.len();
        self.held.retain_mut(|call| !call.poll_gone(cx));
        self.shared.stats.skipped((before - self.held.len()) as u64);
        self.held.is_empty()
    }

    /// Stops taking new calls; those already queued are still served, and an empty
    /// intake then ends the lane (a slot reserved by `poll_ready` does not hold it).
    pub(crate) fn close_intake(&mut self) {
        self.intake.close();
        self.closing = true;
    }

    /// Takes one call from the intake, taking it off the overload weight.
    #[inline(always)]
    fn take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Envelope<Req, Resp>>> {
        let polled = if self.closing {
            match self.intake.try_recv() {
                Ok(call) => Poll::Ready(Some(call)),
                Err(mpsc::error::TryRecvError::Empty | mpsc::error::TryRecvError::Disconnected) => {
                    Poll::Ready(None)
                }
            }
        } else {
            self.intake.poll_recv(cx)
        };
        match ready!(polled) {
            Some(mut call) => {
                self.shared.unqueue(std::mem::take(&mut call.weight));
                Poll::Ready(Some(call))
            }
            None => {
                self.intake_done = true;
                Poll::Ready(None)
            }
        }
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
        match ready!(self.take(cx)) {
            Some(call) => {
                self.held.push_back(call);
                Poll::Ready(true)
            }
            None => Poll::Ready(false),
        }
    }

    #[inline(always)]
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
                self.take(cx)
            }
            // Handshake calls are never weighed for the overload signal.
            Lane::Handshake(rx) => rx.poll_recv(cx),
            Lane::Drain => Poll::Ready(None),
        }
    }

    /// Drives `conn`, writing calls from `lane`, until it fails, until the lane is
    /// finished and nothing waits (then the transport is flushed and closed:
    /// [`Ended::Done`]), or until it should be retired ([`Ended::Retire`]).
    pub(crate) fn poll_conn<T, M>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<T, M, Req, Resp>,
        mut lane: Lane<'_, Req, Resp>,
    ) -> Poll<Result<Ended, ConnectionError>>
    where
        T: Transport<Req, Resp>,
        M: Matcher<Req, Resp>,
    {
        for _ in 0..BUDGET {
            let bytes = crate::meter::mark();
            // Writes first: a read without a request queued before a greeting arrived
            // must hold its FIFO slot when the greeting is routed.
            let (wrote, lane_done) = self.poll_write(cx, conn, &mut lane)?;
            // Any frame read may free a slot or an id: then go round again to write.
            let read = self.poll_read(cx, conn)?;
            // Flush after routing: the callers the replies woke start on other workers
            // while this one is in the write syscall (tens of µs on loopback: it runs
            // the receiver's side of TCP too), instead of after it.
            let mut flushed = false;
            if conn.needs_flush
                && let Poll::Ready(res) = Pin::new(&mut conn.transport).poll_flush(cx)
            {
                res.map_err(|e| fail(Why::Write, e))?;
                conn.needs_flush = false;
                flushed = true;
            }
            conn.report_in_flight();
            let (bytes_read, bytes_written) = self.count_bytes(bytes);
            // One clock read per pass in which anything moved, for both timers' rules.
            let moved =
                (read > 0 || wrote || flushed || bytes_read || bytes_written).then(Instant::now);
            // The server's word restarts the stall clock: a frame or a byte read. So does
            // a write still being taken in (a large request over a slow link), but not
            // one that went out whole at once: a heartbeat to a server that reads and
            // never answers is no sign of life (Contract 6).
            let heard = read > 0 || bytes_read || (bytes_written && conn.needs_flush);
            let watched = conn.matcher.watched();
            if let Some(limit) = self.stall {
                conn.stall
                    .poll(cx, limit, watched, heard.then_some(moved).flatten())?;
            }

            let lane_ends_conn = !matches!(lane, Lane::Handshake(_));
            if lane_done && lane_ends_conn && conn.is_idle() {
                ready!(Pin::new(&mut conn.transport).poll_close(cx))
                    .map_err(|e| fail(Why::Write, e))?;
                return Poll::Ready(Ok(Ended::Done));
            }
            // With no stall timer watching the waiting calls (exempt, or none set), the
            // orphan rule keeps its own clock.
            let unwatched = self.stall.is_none() || !watched;
            if matches!(lane, Lane::User) && conn.should_retire(cx, moved, unwatched) {
                return Poll::Ready(Ok(Ended::Retire));
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

    /// Adds the bytes the transport moved since `before` to the counters; whether any
    /// were read, and whether any were written.
    fn count_bytes(&self, before: (u64, u64)) -> (bool, bool) {
        let after = crate::meter::mark();
        let (read, written) = (
            after.0.wrapping_sub(before.0),
            after.1.wrapping_sub(before.1),
        );
        if read != 0 || written != 0 {
            self.shared.stats.bytes(read, written);
        }
        (read != 0, written != 0)
    }

    /// Reads and routes ready frames. Returns how many it read.
    fn poll_read<T, M, RE>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<T, M, Req, Resp>,
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
            match conn.matcher.route(frame) {
                Route::Delivered => conn.answered = true,
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

    /// Writes calls, those tied to `conn` first and then `lane`'s, while there is room.
    /// Returns whether it did anything, and whether the lane is finished.
    fn poll_write<T, M, WE>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<T, M, Req, Resp>,
        lane: &mut Lane<'_, Req, Resp>,
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
            if !conn.mid_write() && !conn.matcher.has_room() {
                break;
            }
            match Pin::new(&mut conn.transport).poll_ready(cx) {
                Poll::Ready(res) => res.map_err(|e| fail(Why::Write, e))?,
                Poll::Pending => break,
            }
            if conn.mid_write() {
                progress = true;
                conn.write_next_part()?;
                continue;
            }
            let call = match conn.first.pop_front() {
                Some(call) => call,
                None => match self.poll_call(cx, lane) {
                    Poll::Ready(Some(call)) => call,
                    Poll::Ready(None) => {
                        lane_done = true;
                        break;
                    }
                    Poll::Pending => break,
                },
            };
            progress = true;
            if call.is_gone() {
                // Cancelled before it was written: never written (and dropping it
                // tells nobody: its caller is gone).
                self.shared.stats.skipped(1);
                continue;
            }
            if conn.write_call(call)? {
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
        while let Some(mut call) = ready!(self.intake.poll_recv(cx)) {
            self.shared.unqueue(std::mem::take(&mut call.weight));
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
        while let Ok(mut call) = self.intake.try_recv() {
            self.shared.unqueue(std::mem::take(&mut call.weight));
            call.fail_unsent(kind, cause);
        }
    }
}
