//! The engine: drives one transport at a time for the calls of one intake.
//!
//! One poll does, in turn and within a budget: write calls (those tied to the
//! connection first, then the lane's) while the sink and the matcher have room, read
//! and route up to `READ_BATCH` ready frames (`READ_BATCH_LARGE` of large ones), flush
//! once (or leave the flush to the next pass while more replies are ready: `mux/flush.rs`),
//! and run the stall timer.
//! Reading never waits for writing, so a peer that only reads after it has written
//! cannot deadlock us. The connection's own state is in `conn.rs`, the timer in
//! `stall.rs`. This file holds the engine and its intake; `drive.rs` the poll loop,
//! `write.rs` and `read.rs` its two directions.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::sync::mpsc;
use tower::BoxError;

mod drive;
mod read;
mod write;

use super::call::Envelope;
use super::conn::Conn;
use super::deadline::{Deadline, Deadlines, Due};
use crate::config::Config;
use crate::error::{Cause, ConnectionError, ConnectionErrorKind as Why, Kind};
use crate::shared::Shared;

/// Poll iterations before the connection task yields to the scheduler.
const BUDGET: usize = 16;
/// Calls written per iteration at most: keeps both directions moving.
const BATCH: usize = 256;
/// Frames read per iteration at most. The callers they wake send their next calls
/// before the next iteration (see the yield in `poll_conn`) while the rest of the
/// replies wait in the read buffer; those calls go out with the next group's, in one
/// write per half of the calls in flight (`mux/flush.rs`), so the server works on one
/// batch while the callers work on the next. Smaller batches cost the server a read per
/// few calls; at 256 callers on Redis, 64 did 8-13% more than 256, and 32 did 20% less.
const READ_BATCH: usize = 64;
/// Frames read per iteration at most when they are large: the pass's first
/// `READ_BATCH` took at least `LARGE_PASS` bytes off the socket (a `Metered` IO counts
/// them; without one, `READ_BATCH` holds). At 256 callers and 16 KiB, 256 frames a pass
/// took the channel from 0.73-1.01x to 1.14-1.37x the hand-written client's requests/s
/// and from 0.81-1.21x to 0.61-0.77x its CPU per request on two workers (bench/README.md,
/// "Read batches by size"); at 16 B and 1 KiB, where 256 a pass cost 10-20% of the
/// requests/s, a pass never reaches `LARGE_PASS`.
const READ_BATCH_LARGE: usize = 256;
/// See [`READ_BATCH_LARGE`]: 64 frames of 8 KiB.
const LARGE_PASS: u64 = 512 * 1024;
/// Calls taken from the intake at once, at most. Their slots are given back to the
/// handles together: one release of the intake's semaphore (a lock) per batch instead
/// of one per call.
const STAGE: usize = 64;

/// The state that outlives each transport: the intake, the push sender, the settings.
pub(crate) struct Engine<Req, Resp> {
    intake: mpsc::Receiver<Envelope<Req, Resp>>,
    /// The user call the reconnect worker took to learn that a connection is wanted:
    /// written first, on the next connection, after that connection's handshake.
    held: VecDeque<Envelope<Req, Resp>>,
    /// Calls a write pass took from the intake in one batch and has not written yet.
    /// Only within a pass: what it leaves goes to `held` at its end, so outside a pass
    /// this is empty, and no call is where neither `Load` nor the deadlines see it.
    staged: VecDeque<Envelope<Req, Resp>>,
    /// Every handle is gone and the intake is empty.
    intake_done: bool,
    /// Shutting down: the calls queued now are served, and an empty intake is the end
    /// even while a handle still holds a slot it reserved (it will fail, not wait).
    closing: bool,
    pushes: mpsc::Sender<Resp>,
    pub(crate) shared: Arc<Shared<Resp>>,
    stall: Option<Duration>,
    /// The deadlines of the calls queued in `held` and written (`deadline.rs`).
    pub(crate) deadlines: Deadlines,
    /// How many calls `held` takes out of the intake to time them: the intake's size.
    hold_at_most: usize,
}

/// How a connection's drive ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The lane is finished and nothing waits: the transport is closed.
    Done,
    /// Too many orphans hold its slots ([`Conn::should_retire`]): new calls should go to
    /// a fresh connection while this one drains.
    Retire,
    /// The server asked that it be drained ([`Verdict::Drain`](crate::Verdict::Drain)):
    /// as `Retire`.
    Drain,
    /// The server said it is the wrong one
    /// ([`Verdict::WrongServer`](crate::Verdict::WrongServer)): it drains, and the next
    /// connection is made as after a failed attempt.
    WrongServer,
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

impl<Req, Resp> Drop for Engine<Req, Resp> {
    /// The task is gone (ended, or panicked): the calls it held fail through their
    /// `Drop`, and count as queued no more.
    fn drop(&mut self) {
        self.shared
            .held
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.shared.held_room.notify_waiters();
    }
}

/// Where the call numbered `seq` is in `held`, which is in the order of their numbers.
fn held_at<Req, Resp>(held: &VecDeque<Envelope<Req, Resp>>, seq: u64) -> Option<usize> {
    held.binary_search_by_key(&seq, |call| call.seq).ok()
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
            staged: VecDeque::new(),
            intake_done: false,
            closing: false,
            pushes,
            shared,
            stall: config.stall_timeout,
            deadlines: Deadlines::default(),
            hold_at_most: config.queue,
        }
    }

    /// A fresh connection over `transport`.
    pub(crate) fn conn<T, M>(&self, transport: T, matcher: M) -> Conn<T, M, Req, Resp>
    where
        M: super::Matcher<Req, Resp>,
    {
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
            self.shared.unqueue_call(&mut call);
            self.hold(call);
        }
        let before = self.held.len();
        let shared = &self.shared;
        let held = &mut self.held;
        // Outside the task budget: past it, callers gone would read as still there.
        super::unbudgeted(cx, |cx| {
            held.retain_mut(|call| {
                let gone = call.poll_gone(cx);
                if gone {
                    shared.unqueue_call(call);
                }
                !gone
            })
        });
        self.shared.stats.skipped((before - self.held.len()) as u64);
        self.held_changed();
        self.held.is_empty()
    }

    /// Stops taking new calls; those already queued are still served, and an empty
    /// intake then ends the lane (a slot reserved by `poll_ready` does not hold it).
    pub(crate) fn close_intake(&mut self) {
        self.intake.close();
        self.closing = true;
    }

    /// Takes one call from the intake, taking it off the overload weight; with `room`
    /// for more than one, takes up to that many at once and stages the rest.
    #[inline(always)]
    fn take(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<Option<Envelope<Req, Resp>>> {
        // Handed on as it came, not unpacked and packed again: an envelope is large,
        // and each repacking is a copy of it.
        let mut polled = self.recv(cx, room);
        if let Poll::Ready(Some(call)) = &mut polled {
            self.shared.unqueue_call(call);
        }
        polled
    }

    /// Takes one call from the intake (the staged ones first), still weighing on the
    /// overload signal; see `take` for `room`.
    #[inline(always)]
    fn recv(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<Option<Envelope<Req, Resp>>> {
        if !self.staged.is_empty() {
            return Poll::Ready(self.staged.pop_front());
        }
        let polled = if self.closing {
            match self.intake.try_recv() {
                Ok(call) => Poll::Ready(Some(call)),
                Err(mpsc::error::TryRecvError::Empty | mpsc::error::TryRecvError::Disconnected) => {
                    Poll::Ready(None)
                }
            }
        } else if room > 1 {
            // Reuses the staging buffer (both conversions keep it: it is empty).
            let mut batch = Vec::from(std::mem::take(&mut self.staged));
            let polled = self.intake.poll_recv_many(cx, &mut batch, room.min(STAGE));
            self.staged = VecDeque::from(batch);
            polled.map(|_| self.staged.pop_front())
        } else {
            self.intake.poll_recv(cx)
        };
        if let Poll::Ready(None) = polled {
            self.intake_done = true;
        }
        polled
    }

    /// The calls a write pass staged and did not write wait in `held`, timed, after
    /// those already there (which were taken before them).
    fn unstage(&mut self) {
        while let Some(call) = self.staged.pop_front() {
            self.hold(call);
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
        match ready!(self.take(cx, 1)) {
            Some(call) => {
                self.hold(call);
                Poll::Ready(true)
            }
            None => Poll::Ready(false),
        }
    }

    /// Queues a call taken from the intake in `held`, in order, entering its deadline.
    fn hold(&mut self, mut call: Envelope<Req, Resp>) {
        let seq = self.deadlines.seq();
        call.seq = seq;
        if let Some(deadline) = call.deadline {
            // Taken in now: a deadline counted from then gets its instant.
            let at = deadline.at(tokio::time::Instant::now);
            call.deadline = Some(Deadline::At(at));
            let at = self.deadlines.nanos(at);
            self.deadlines.push(Due {
                at,
                seq,
                id: None,
                written: false,
            });
        }
        self.held.push_back(call);
        self.held_changed();
    }

    /// Tells the handles how many calls the task holds (for `Load`).
    fn held_changed(&self) {
        let held = self.held.len();
        let was = self
            .shared
            .held
            .swap(held, std::sync::atomic::Ordering::Relaxed);
        if was >= self.hold_at_most && held < self.hold_at_most {
            // Handles waiting to queue a call it can time now may.
            self.shared.held_room.notify_waiters();
        }
    }

    /// Takes a call out of `held`, off the overload weight.
    fn unhold(&mut self, mut call: Envelope<Req, Resp>) -> Envelope<Req, Resp> {
        self.shared.unqueue_call(&mut call);
        self.held_changed();
        call
    }

    /// Takes the calls in the intake into `held`, so their deadlines are timed while
    /// they cannot be written: there is no connection, or it has no room. Only once
    /// some call had a deadline; a no-op for a shutdown, which takes every queued call
    /// itself. They still count as queued: in the overload weight and in `Load`.
    ///
    /// Every call in the intake is taken, so none waits there untimed. What bounds
    /// `held` is the handles: while it holds the intake's size, they queue no call
    /// (`Channel::poll_reserve` and the methods wait, a call without `poll_ready` fails
    /// *not sent*), so it holds at most about twice that. Up to that many are taken in
    /// one poll; the task comes back for the rest.
    pub(crate) fn absorb(&mut self, cx: &mut Context<'_>) {
        if !self.deadlines.used || self.closing {
            return;
        }
        for _ in 0..2 * self.hold_at_most {
            match self.recv(cx, 1) {
                Poll::Ready(Some(call)) => self.hold(call),
                Poll::Ready(None) | Poll::Pending => return,
            }
        }
        cx.waker().wake_by_ref();
    }

    /// Fails the calls whose deadline has passed: those queued here *not sent*
    /// (never to be written), the written ones through `written`, which finds each in
    /// its connection (false: it is not waiting any more) and fails it when told to.
    /// No written call numbered below `floor` waits on any connection
    /// ([`Conn::floor`]): most entries swept are answered calls' and are dropped on
    /// that alone. Then sets the timer for the next deadline. Call it after anything
    /// that may enter a deadline, before the task waits. Calls whose outcome is known
    /// leave their entries behind; they are swept here too. True when it failed a call.
    pub(crate) fn poll_deadlines(
        &mut self,
        cx: &mut Context<'_>,
        floor: u64,
        mut written: impl FnMut(&Due, bool) -> bool,
    ) -> bool {
        if self.deadlines.is_empty() {
            return false;
        }
        macro_rules! live {
            () => {{
                let held = &self.held;
                |due: &Due| {
                    if due.written {
                        due.seq >= floor && written(due, false)
                    } else {
                        held_at(held, due.seq).is_some_and(|at| !held[at].is_gone())
                    }
                }
            }};
        }
        if self.deadlines.wants_sweep() {
            self.deadlines.sweep(floor, live!());
        }
        let mut failed = false;
        // The timer is at the earliest deadline: until it fires, nothing is due (and
        // the clock need not be read).
        while self.deadlines.poll_timer(cx) {
            let now = self.deadlines.now();
            let mut progress = self.deadlines.settle(now, floor, live!());
            while let Some(due) = self.deadlines.pop_due(now) {
                progress = true;
                if due.written {
                    failed |= due.seq >= floor && written(&due, true);
                } else if let Some(at) = held_at(&self.held, due.seq)
                    && let Some(call) = self.held.remove(at)
                {
                    let call = self.unhold(call);
                    if call.is_gone() {
                        // Cancelled while queued: never written, as `poll_write` skips.
                        self.shared.stats.skipped(1);
                        drop(call.into_parts());
                    } else {
                        failed = true;
                        call.fail_unsent(Kind::Timeout, None);
                    }
                }
            }
            if !progress {
                // The timer fired before the clock reached its deadline (nothing moved
                // to the heap, nothing taken from it): come back.
                cx.waker().wake_by_ref();
                break;
            }
        }
        failed
    }

    /// The next call to write: a held one, else one from `lane`, with `room` for that
    /// many more in this pass.
    #[inline(always)]
    fn poll_call(
        &mut self,
        cx: &mut Context<'_>,
        lane: &mut Lane<'_, Req, Resp>,
        room: usize,
    ) -> Poll<Option<Envelope<Req, Resp>>> {
        match lane {
            Lane::User => {
                if let Some(call) = self.held.pop_front() {
                    let call = self.unhold(call);
                    return Poll::Ready(Some(call));
                }
                if self.intake_done {
                    return Poll::Ready(None);
                }
                self.take(cx, room)
            }
            // Handshake calls are never weighed for the overload signal.
            Lane::Handshake(rx) => rx.poll_recv(cx),
            Lane::Drain => Poll::Ready(None),
        }
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
            self.shared.unqueue_call(&mut call);
            call.fail_unsent(Kind::Closed, None);
        }
        Poll::Ready(())
    }

    /// Fails the queued calls as *not sent*, handing each its request back, but keeps
    /// the intake open: later calls are taken as usual.
    pub(crate) fn fail_queued(&mut self, kind: Kind, cause: Option<&Cause>) {
        for mut call in std::mem::take(&mut self.held) {
            self.shared.unqueue_call(&mut call);
            call.fail_unsent(kind, cause);
        }
        self.held_changed();
        while let Ok(mut call) = self.intake.try_recv() {
            self.shared.unqueue_call(&mut call);
            call.fail_unsent(kind, cause);
        }
    }
}
