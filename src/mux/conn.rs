//! One transport, the calls written on it, and the write state tied to it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;

use futures_sink::Sink;

use tokio::time::Instant;
use tower::BoxError;

use super::call::{Envelope, Frames, Waiter};
use super::deadline::{Deadlines, Due};
use super::engine::Ended;
use super::flush::Unflushed;
use super::matcher::{Entry, Matcher};
use super::notice::Notices;
use super::reach::Reach;
use super::retire::Retire;
use super::stall::Stall;
use crate::error::{Cause, ConnectionError, ConnectionErrorKind as Why, Error, Kind};
use crate::shared::Shared;

/// One transport and what is tied to it. Dropped, it fails what it still holds: the
/// waiting calls *may have executed*, the calls queued for it first *not sent*, and
/// it takes its calls out of [`Counters::in_flight`](crate::Counters::in_flight).
pub(crate) struct Conn<T, M, Req, Resp> {
    pub(crate) transport: T,
    pub(crate) matcher: M,
    /// Written before anything from the lane: the calls a handshake queued and did not
    /// await (Contract 12), an idle ping.
    pub(crate) first: VecDeque<Envelope<Req, Resp>>,
    writing: Option<Writing<Req, Resp>>,
    /// What was written since the last flush, and whether this pass flushes it.
    pub(crate) unflushed: Unflushed,
    pub(crate) stall: Stall,
    /// A reply reached a user's call (or the idle ping) on this connection: the host
    /// answered. A frame read with nothing waiting, a push, or a reply to a handshake's
    /// call (even one it left unawaited) does not count.
    pub(crate) answered: bool,
    /// The server said to leave this connection ([`Verdict::WrongServer`],
    /// [`Verdict::Drain`]), seen by the read and acted on by the task that owns it.
    ///
    /// [`Verdict::WrongServer`]: crate::Verdict::WrongServer
    /// [`Verdict::Drain`]: crate::Verdict::Drain
    pub(crate) leave: Option<Ended>,
    /// When to retire the connection for its orphans (calls whose caller is gone and
    /// that the server has not answered): set by a reconnecting channel, which can move
    /// its calls to a fresh connection. Off on a fixed transport.
    retire: Option<Retire>,
    /// The waiting calls this connection last counted into `Counters::in_flight`.
    reported: usize,
    /// Cancel notices, when the protocol sends them (`notice.rs`). Boxed: most
    /// connections have none.
    notices: Option<Box<Notices>>,
    /// How far its bytes went, for the calls it fails when it ends (`reach.rs`).
    pub(crate) reach: Reach,
    shared: Arc<Shared<Resp>>,
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

fn fail(why: Why, source: impl Into<BoxError>) -> ConnectionError {
    ConnectionError::new(why, Some(source.into()))
}

impl<T, M, Req, Resp> Conn<T, M, Req, Resp> {
    pub(crate) fn new(transport: T, matcher: M, shared: Arc<Shared<Resp>>) -> Self
    where
        M: Matcher<Req, Resp>,
    {
        Conn {
            // The channel has a `Leaving` when its mode sends notices (`Mode::cancels`).
            notices: (shared.leaving.as_ref()).map(|l| Box::new(Notices::new(l.leaving().clone()))),
            transport,
            matcher,
            first: VecDeque::new(),
            writing: None,
            unflushed: Unflushed::default(),
            stall: Stall::default(),
            answered: false,
            leave: None,
            retire: None,
            reported: 0,
            reach: Reach::default(),
            shared,
        }
    }
}

impl<T, M, Req, Resp> Drop for Conn<T, M, Req, Resp> {
    fn drop(&mut self) {
        self.shared.stats.in_flight_changed(self.reported, 0);
        self.reported = 0;
    }
}

impl<T, M, Req, Resp> Conn<T, M, Req, Resp>
where
    M: Matcher<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Frames were handed to the sink since its last flush.
    #[inline]
    pub(crate) fn needs_flush(&self) -> bool {
        !self.unflushed.is_empty()
    }

    /// Nothing is being written, flushed, or waited for.
    pub(crate) fn is_idle(&self) -> bool {
        self.writing.is_none()
            && self.first.is_empty()
            && !self.needs_flush()
            && self.matcher.pending() == 0
    }

    /// Nothing is being written or flushed, and no waiting call has a caller (every
    /// one is an orphan): a shutdown need not wait for it. Otherwise the task is woken
    /// when the last caller leaves. A scan: for shutdowns only.
    pub(crate) fn poll_nobody_waits(&mut self, cx: &mut Context<'_>) -> bool {
        // A caller that just left is owed its notice before the connection ends.
        let queued = self.has_notice();
        self.collect_notices(cx, true);
        if self.has_notice() {
            // A new one is written by the drive (in this poll or, woken, the next);
            // one the drive already met waits for the sink, which wakes the task: a
            // wake of its own then would spin while the sink is full.
            if !queued {
                cx.waker().wake_by_ref();
            }
            return false;
        }
        // Outside the task budget: past it, callers gone would read as still there.
        let callers = super::unbudgeted(cx, |cx| self.matcher.poll_nobody_waits(cx));
        callers && self.writing.is_none() && self.first.is_empty() && !self.needs_flush()
    }

    /// A multi-part request is half written: nothing else may go out.
    pub(crate) fn mid_write(&self) -> bool {
        self.writing.is_some()
    }

    /// Queues the cancel notices of the written calls whose callers left since the
    /// last look; on the `first` pass of a poll, also has the task woken when another
    /// leaves. A no-op for a protocol that sends none.
    #[inline]
    pub(crate) fn collect_notices(&mut self, cx: &Context<'_>, first: bool) {
        let Some(notices) = &mut self.notices else {
            return;
        };
        if first {
            notices.register(cx);
        }
        if notices.take_left() {
            self.matcher.notices(&mut |id, seq| notices.push(id, seq));
        }
    }

    /// A cancel notice waits to be written (ahead of any call).
    #[inline]
    pub(crate) fn has_notice(&self) -> bool {
        self.notices.as_ref().is_some_and(|n| !n.is_empty())
    }

    /// Hands the next queued cancel notice to the sink (which is ready), if its call
    /// still waits: once answered, its id is free, and may be a new call's already.
    pub(crate) fn write_notice<WE>(&mut self) -> Result<(), ConnectionError>
    where
        T: Sink<Req, Error = WE> + Unpin,
        WE: Into<BoxError>,
    {
        let Some((id, seq)) = self.notices.as_mut().and_then(|n| n.pop()) else {
            return Ok(());
        };
        let Some(notice) = self.matcher.notice(id, seq) else {
            return Ok(());
        };
        // Counted once the sink took it: one it refused was never written.
        self.start_send(notice)?;
        self.shared.stats.cancel_notices(1);
        Ok(())
    }

    pub(crate) fn start_send<WE>(&mut self, req: Req) -> Result<(), ConnectionError>
    where
        T: Sink<Req, Error = WE> + Unpin,
        WE: Into<BoxError>,
    {
        self.unflushed.wrote();
        let before = crate::meter::encoded();
        let sent = Pin::new(&mut self.transport).start_send(req);
        self.reach.encoded_since(before);
        sent.map_err(|e| fail(Why::Write, e))
    }

    /// Hands the next part of a multi-part request to the sink, or resolves it after
    /// its last part.
    pub(crate) fn write_next_part<WE>(&mut self) -> Result<(), ConnectionError>
    where
        T: Sink<Req, Error = WE> + Unpin,
        WE: Into<BoxError>,
    {
        let Some(writing) = &mut self.writing else {
            return Ok(());
        };
        match writing.rest.next() {
            Some(part) => self.start_send(part),
            None => {
                if let Some(done) = self.writing.take().and_then(|mut w| w.done.take()) {
                    done.written();
                    self.unflushed.promised();
                }
                Ok(())
            }
        }
    }

    /// Admits one call and hands its first frame to the sink, entering its deadline.
    /// Returns whether it wrote. A call whose deadline has passed is not written: it
    /// fails [`Kind::Timeout`], *not sent*. `counts`: its reply counts as the host
    /// answering ([`Entry::counts`]).
    #[inline(always)]
    pub(crate) fn write_call<WE>(
        &mut self,
        call: Envelope<Req, Resp>,
        deadlines: &mut Deadlines,
        counts: bool,
    ) -> Result<bool, ConnectionError>
    where
        T: Sink<Req, Error = WE> + Unpin,
        WE: Into<BoxError>,
    {
        let (id, exempt) = (call.id, call.exempt);
        let deadline = match call.deadline {
            Some(deadline) => match deadlines.check(deadline) {
                (_, true) => {
                    call.fail_unsent(Kind::Timeout, None);
                    return Ok(false);
                }
                (at, false) => Some(at),
            },
            None => None,
        };
        let (mut frames, Some(waiter)) = call.into_parts() else {
            return Ok(false);
        };
        let unsupported = match &frames {
            // Nothing to write: in order mode it would take the next caller's reply.
            Frames::Many(parts) => parts.is_empty(),
            // A read that waits for no reply reads nothing: there is no such call.
            Frames::None => !waiter.wants_reply(),
            Frames::One(_) => false,
        };
        if unsupported {
            let mut err = Error::new(Kind::Unsupported);
            if let Some(req) = frames.into_any() {
                err = err.with_request(req);
            }
            waiter.fail(err);
            return Ok(false);
        }
        // A caller that leaves from now on (it may have since `poll_write` looked) is
        // written, and then told: it counts itself in the channel's `Leaving`.
        let done = if waiter.wants_reply() {
            let seq = deadlines.seq();
            let entry = Entry {
                waiter,
                seq,
                since: self.retire.as_ref().map_or(0, Retire::tick),
                exempt,
                read_only: matches!(frames, Frames::None),
                noticed: false,
                counts,
            };
            match self.matcher.admit(&mut frames, id, entry) {
                Ok(id) => {
                    if !matches!(frames, Frames::None) {
                        self.reach.call(seq, self.matcher.pending());
                    }
                    if let Some(at) = deadline {
                        deadlines.push(Due {
                            at,
                            seq,
                            id,
                            written: true,
                        });
                    }
                }
                Err((err, entry)) => {
                    let err = match frames.into_any() {
                        Some(req) => err.with_request(req),
                        None => err,
                    };
                    entry.waiter.fail(err);
                    return Ok(false);
                }
            }
            None
        } else {
            Some(waiter)
        };
        match frames {
            // A read writes nothing: not counted as sent.
            Frames::None => return Ok(false),
            Frames::One(req) => {
                if let Err(e) = self.start_send(req) {
                    // Handed over: the connection's end fails it with its cause.
                    self.writing = Some(Writing {
                        rest: Vec::new().into_iter(),
                        done,
                    });
                    return Err(e);
                }
                if let Some(done) = done {
                    done.written();
                    self.unflushed.promised();
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

    /// No written call numbered below this still waits on this connection
    /// ([`Matcher::floor`]).
    pub(crate) fn floor(&self) -> u64 {
        self.matcher.floor()
    }

    /// The written call `due` names, if it still waits for its reply and its caller is
    /// there; `expire`: fail it at its deadline (*may have executed*, a read *not sent*),
    /// leaving it an orphan that holds its slot or id until its reply comes.
    pub(crate) fn expire(&mut self, due: &Due, expire: bool) -> bool {
        let Some(entry) = self.matcher.find(due.seq, due.id) else {
            return false;
        };
        if entry.waiter.is_gone() {
            return false;
        }
        if expire {
            let err = Error::new(Kind::Timeout).written(!entry.read_only);
            entry.waiter.expire(err);
            if let Some(notices) = &self.notices {
                // Its caller is gone now: the server can be told.
                notices.left();
            }
        }
        true
    }

    /// A written call failed before its final reply (a reply limit) while the server
    /// still works on it: its caller is gone, and its notice goes out as a leaving
    /// caller's does, within one poll.
    pub(crate) fn gave_up(&self) {
        if let Some(notices) = &self.notices {
            notices.left();
        }
    }

    /// Sets the orphan rules (a reconnecting channel, once the connection is ready).
    pub(crate) fn retire_when(&mut self, rules: Option<Retire>) {
        self.retire = rules;
    }

    /// Reads the clock and moves the orphan-age clock to it when the connection keeps
    /// one (before calls are stamped with its tick); the clock read, if any.
    pub(crate) fn advance_age(&mut self) -> Option<Instant> {
        let retire = self.retire.as_mut().filter(|r| r.ages())?;
        let now = Instant::now();
        retire.advance(now);
        Some(now)
    }

    /// Should the connection be retired for its orphans (see `retire.rs`)? `now`: the
    /// clock read of this pass, if anything moved; `unwatched`: no stall timer watches
    /// the waiting calls.
    pub(crate) fn should_retire(
        &mut self,
        cx: &mut Context<'_>,
        now: Option<Instant>,
        unwatched: bool,
    ) -> bool {
        let Some(retire) = &mut self.retire else {
            return false;
        };
        let retiring = retire.poll(cx, &self.matcher, now, unwatched);
        if retiring {
            self.shared.stats.retired(1);
        }
        retiring
    }

    /// Brings `Counters::in_flight` up to date with this connection's waiting calls.
    pub(crate) fn report_in_flight(&mut self) {
        let now = self.matcher.pending();
        self.shared.stats.in_flight_changed(self.reported, now);
        self.reported = now;
    }

    /// Fails every call on this connection, which has ended: those written as *may
    /// have executed*, but for those none of whose bytes the IO accepted (`reach.rs`)
    /// and reads without a request, *not sent*; those queued for it first *not sent*.
    pub(crate) fn fail(mut self, kind: Kind, cause: &Cause) {
        let failed = |written: bool| Error::new(kind).written(written).with_cause(cause.clone());
        if let Some(done) = self.writing.take().and_then(|mut w| w.done.take()) {
            done.fail(failed(true));
        }
        let never_left = self.reach.never_left();
        self.matcher.drain(&mut |entry| {
            let written = !entry.read_only && never_left.is_none_or(|seq| entry.seq < seq);
            entry.waiter.fail(failed(written));
        });
        for call in self.first.drain(..) {
            call.fail_unsent(kind, Some(cause));
        }
    }
}
