//! One call on its way through the intake: the frames to write and who waits for what.
//!
//! Two rules make the failure semantics safe by default:
//!
//! * an [`Envelope`] dropped before it was written (its queue or task is gone) fails its
//!   call *not sent* and hands its request back, through its `Drop`;
//! * a reply sender dropped without a word (a panic while delivering, a task that
//!   vanished) reads as *may have executed* on the caller's side
//!   ([`outcome`](crate::channel) in `channel/future.rs`): only what this module says
//!   was never written is *not sent*.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::config::ReplyLimits;
use crate::error::{Cause, Error, Kind, LimitError};
use crate::protocol::{Protocol, Verdict};

/// The frames a call writes.
#[derive(Debug)]
pub(crate) enum Frames<Req> {
    /// A read without a request: takes the next reply slot, writes nothing.
    None,
    One(Req),
    /// A multi-part request, written back to back.
    Many(Vec<Req>),
}

impl<Req: Send + 'static> Frames<Req> {
    /// The frames' weight for the overload signal.
    pub(crate) fn weigh(&self, overload: &crate::config::Overload) -> usize {
        match self {
            Frames::None => 0,
            Frames::One(req) => overload.weigh(req),
            Frames::Many(parts) => parts
                .iter()
                .fold(0, |sum, p| sum.saturating_add(overload.weigh(p))),
        }
    }

    /// The request as the caller gave it, for an error that hands it back.
    pub(crate) fn into_any(self) -> Option<Box<dyn Any + Send>> {
        match self {
            Frames::None => None,
            Frames::One(req) => Some(Box::new(req)),
            Frames::Many(parts) => Some(Box::new(parts)),
        }
    }
}

/// How many frames make the reply.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Until {
    /// This many more frames.
    Count(usize),
    /// Frames until one [`Protocol::is_final`] marks.
    Final,
}

impl Until {
    /// Counts one frame; true when it was the last.
    fn last<Req, Resp, P: Protocol<Req, Resp>>(&mut self, frame: &Resp, proto: &P) -> bool {
        match self {
            Until::Count(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            Until::Final => proto.is_final(frame),
        }
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// What one reply frame did to the call it was given to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Took {
    /// The call waits for more of its reply.
    More,
    /// The reply is complete: its slot or id can be freed.
    Last,
    /// The frame put the reply over a limit ([`Kind::Limit`]) and failed the call
    /// before its last frame: its caller has the outcome and is gone, while the server
    /// still works on it (a cancel notice can tell it). The rest is read and dropped.
    Limit,
}

impl Took {
    fn of(last: bool) -> Self {
        if last { Took::Last } else { Took::More }
    }

    /// Over a limit: failed, and still waiting unless this frame was the last.
    fn limit(last: bool) -> Self {
        if last { Took::Last } else { Took::Limit }
    }
}

/// What a multi-frame reply has taken so far, against the channel's limits.
#[derive(Debug)]
struct Budget {
    limits: ReplyLimits,
    frames: usize,
    bytes: usize,
}

impl Budget {
    fn new(limits: ReplyLimits) -> Self {
        Budget {
            limits,
            frames: 0,
            bytes: 0,
        }
    }

    /// Counts one more frame; the error when it goes over a limit.
    fn take<Resp: 'static>(&mut self, frame: &Resp) -> Result<(), Error> {
        self.frames += 1;
        if self.frames > self.limits.frames {
            return Err(limit(LimitError::Frames(self.limits.frames)));
        }
        if let Some((max, weigh)) = &self.limits.bytes {
            self.bytes = self.bytes.saturating_add(weigh(frame));
            if self.bytes > *max {
                return Err(limit(LimitError::Bytes(*max)));
            }
        }
        Ok(())
    }
}

fn limit(why: LimitError) -> Error {
    Error::new(Kind::Limit)
        .written(true)
        .with_cause(Arc::new(why))
}

/// The state of a call that collects several frames.
#[derive(Debug)]
pub(crate) struct Collect<Resp> {
    /// `None` once the outcome is sent: the rest of the reply is read and discarded.
    tx: Option<Reply<Vec<Resp>>>,
    parts: Vec<Resp>,
    until: Until,
    error: Option<Error>,
    /// Every frame so far said its command did not run ([`Verdict::not_run`]).
    not_run: bool,
    budget: Budget,
}

impl<Resp> Collect<Resp> {
    pub(crate) fn waiter(tx: Reply<Vec<Resp>>, until: Until, limits: ReplyLimits) -> Waiter<Resp> {
        Waiter::Collect(Box::new(Collect {
            tx: Some(tx),
            parts: Vec::new(),
            until,
            error: None,
            not_run: true,
            budget: Budget::new(limits),
        }))
    }
}

/// What a [`ReplyStream`](crate::ReplyStream) and its call's waiter share.
#[derive(Debug, Default)]
pub(crate) struct StreamShared {
    /// Frames sent and not yet taken by the reader.
    pub(crate) buffered: AtomicUsize,
    /// The reply is complete (or failed with an error sent): the end of the channel is
    /// not a silent drop.
    pub(crate) finished: AtomicBool,
    /// A connection task that waits for the reader to leave (a shutdown): woken when
    /// the [`ReplyStream`](crate::ReplyStream) is dropped.
    pub(crate) leaving: std::sync::Mutex<Option<std::task::Waker>>,
    /// The channel's, when its protocol sends cancel notices (`notice.rs`).
    channel: Option<Arc<super::Stripe>>,
}

impl StreamShared {
    pub(crate) fn new(channel: Option<Arc<super::Stripe>>) -> Self {
        StreamShared {
            channel,
            ..StreamShared::default()
        }
    }

    /// The reader is gone: wake the task that waits for that, and tell the channel.
    pub(crate) fn left(&self) {
        let waker = self
            .leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Some(channel) = &self.channel {
            channel.left();
        }
    }
}

/// The waiter of a call whose frames go to a [`ReplyStream`](crate::ReplyStream).
#[derive(Debug)]
pub(crate) struct StreamTx<Resp> {
    tx: mpsc::UnboundedSender<Result<Resp, Error>>,
    shared: Arc<StreamShared>,
    until: Until,
    budget: Budget,
    /// The reader fell behind or the reply outgrew a limit: the rest is discarded.
    failed: bool,
    /// A frame was delivered: the next one is not the reply's first.
    seen: bool,
}

impl<Resp> StreamTx<Resp> {
    pub(crate) fn waiter(
        tx: mpsc::UnboundedSender<Result<Resp, Error>>,
        shared: Arc<StreamShared>,
        until: Until,
        limits: ReplyLimits,
    ) -> Waiter<Resp> {
        Waiter::Stream(Box::new(StreamTx {
            tx,
            shared,
            until,
            budget: Budget::new(limits),
            failed: false,
            seen: false,
        }))
    }

    fn send(&self, item: Result<Resp, Error>) {
        self.shared.buffered.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(item);
    }

    /// Sends the last item and marks the reply finished.
    fn finish(&self, item: Option<Result<Resp, Error>>) {
        self.shared.finished.store(true, Ordering::Release);
        if let Some(item) = item {
            self.send(item);
        }
    }
}

/// Who waits for the outcome of a call, and in what shape.
#[derive(Debug)]
pub(crate) enum Waiter<Resp> {
    /// Fire-and-forget: resolved when the frames are handed to the transport.
    Sent(Reply<()>),
    /// One reply frame.
    One(Option<Reply<Resp>>),
    /// Several frames, delivered together. Boxed: rare, and it would triple the size
    /// of every waiting call's bookkeeping.
    Collect(Box<Collect<Resp>>),
    /// Several frames, delivered one by one. Boxed, like `Collect`.
    Stream(Box<StreamTx<Resp>>),
}

impl<Resp> Waiter<Resp> {
    /// The caller is gone: nothing would receive the outcome.
    ///
    /// Fire-and-forget calls are never skipped, so they never count as gone.
    pub(crate) fn is_gone(&self) -> bool {
        match self {
            Waiter::Sent(_) => false,
            Waiter::One(tx) => tx.as_ref().is_none_or(|tx| tx.is_closed()),
            Waiter::Collect(c) => c.tx.as_ref().is_none_or(|tx| tx.is_closed()),
            Waiter::Stream(s) => s.failed || s.tx.is_closed(),
        }
    }

    /// Like [`is_gone`](Self::is_gone), but when the caller is still there, arranges
    /// for the task to be woken when it leaves (for a shutdown, which ends once nobody
    /// waits).
    pub(crate) fn poll_gone(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        match self {
            Waiter::Sent(_) => false,
            Waiter::One(tx) => tx.as_mut().is_none_or(|tx| tx.poll_closed(cx).is_ready()),
            Waiter::Collect(c) => c.tx.as_mut().is_none_or(|tx| tx.poll_closed(cx).is_ready()),
            Waiter::Stream(s) => {
                *s.shared.leaving.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(cx.waker().clone());
                s.failed || s.tx.is_closed()
            }
        }
    }

    /// Does the call wait for any reply frame?
    pub(crate) fn wants_reply(&self) -> bool {
        match self {
            Waiter::Sent(_) => false,
            Waiter::One(_) => true,
            Waiter::Collect(c) => !matches!(c.until, Until::Count(0)),
            Waiter::Stream(s) => !matches!(s.until, Until::Count(0)),
        }
    }

    /// Resolves a call that wants no reply, once its frames are written.
    pub(crate) fn written(self) {
        match self {
            Waiter::Sent(tx) => {
                let _ = tx.send(Ok(()));
            }
            Waiter::Collect(mut c) => {
                if let Some(tx) = c.tx.take() {
                    let _ = tx.send(Ok(Vec::new()));
                }
            }
            Waiter::Stream(s) => s.finish(None),
            Waiter::One(_) => {}
        }
    }

    /// Hands one reply frame to the caller: whether the reply is complete (the slot can
    /// be freed), or the frame failed the call by a limit while it still waits.
    pub(crate) fn deliver<Req, P: Protocol<Req, Resp>>(
        &mut self,
        frame: Resp,
        proto: &P,
        verdict: Verdict,
    ) -> Took
    where
        Resp: 'static,
    {
        match self {
            Waiter::One(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(judge(proto, frame, verdict));
                }
                Took::Last
            }
            Waiter::Collect(c) => {
                let last = c.until.last(&frame, proto);
                if c.tx.is_none() {
                    // Failed already: the rest of the reply is read and dropped.
                    return Took::of(last);
                }
                if let Err(over) = c.budget.take(&frame) {
                    c.parts = Vec::new();
                    if let Some(tx) = c.tx.take() {
                        let _ = tx.send(Err(over));
                    }
                    return Took::limit(last);
                }
                c.not_run &= verdict.not_run();
                match judge(proto, frame, verdict) {
                    Ok(frame) => c.parts.push(frame),
                    // The first error reply fails the call; the rest of its frames are
                    // still read so the stream stays in step.
                    Err(e) => {
                        c.error.get_or_insert(e);
                    }
                }
                if last && let Some(tx) = c.tx.take() {
                    // Not sent only if no frame of the reply says a command ran.
                    let outcome = match c.error.take() {
                        Some(e) => Err(e.written(!c.not_run)),
                        None => Ok(std::mem::take(&mut c.parts)),
                    };
                    let _ = tx.send(outcome);
                }
                Took::of(last)
            }
            Waiter::Stream(s) => {
                let last = s.until.last(&frame, proto);
                if s.failed {
                    return Took::of(last);
                }
                let behind = s.shared.buffered.load(Ordering::Acquire) >= s.budget.limits.stream;
                let over = match s.budget.take(&frame) {
                    Err(e) => Some(e),
                    Ok(()) if behind => Some(limit(LimitError::Reader(s.budget.limits.stream))),
                    Ok(()) => None,
                };
                if let Some(err) = over {
                    s.failed = true;
                    s.finish(Some(Err(err)));
                    return Took::limit(last);
                }
                // Not sent only for a reply of one frame that says so.
                let lone = !s.seen && last;
                s.seen = true;
                let item = judge(proto, frame, verdict)
                    .map_err(|e| if lone { e } else { e.written(true) });
                if last {
                    s.finish(Some(item));
                } else {
                    s.send(item);
                }
                Took::of(last)
            }
            Waiter::Sent(_) => Took::Last,
        }
    }

    /// Fails a written call at its deadline, in place: the waiter is left gone (an
    /// orphan), so the rest of its reply, when it comes, is read and dropped. A call
    /// whose outcome was sent already, or whose caller left, is left alone.
    pub(crate) fn expire(&mut self, err: Error) {
        match self {
            Waiter::One(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(err));
                }
            }
            Waiter::Collect(c) => {
                c.parts = Vec::new();
                if let Some(tx) = c.tx.take() {
                    let _ = tx.send(Err(err));
                }
            }
            Waiter::Stream(s) => {
                if !s.failed {
                    s.failed = true;
                    s.finish(Some(Err(err)));
                }
            }
            // Resolved once written: never waits for a reply.
            Waiter::Sent(_) => {}
        }
    }

    /// Fails the call.
    pub(crate) fn fail(mut self, err: Error) {
        match self {
            Waiter::Sent(tx) => {
                let _ = tx.send(Err(err));
            }
            // As at a deadline; the waiter goes with it.
            _ => self.expire(err),
        }
    }
}

/// A reply frame's outcome for its caller: [`Protocol::check`]'s, unless the server
/// said the call did not run, which fails it *not sent* (with `check`'s error as the
/// cause, when it gives one).
fn judge<Req, Resp, P: Protocol<Req, Resp>>(
    proto: &P,
    frame: Resp,
    verdict: Verdict,
) -> Result<Resp, Error> {
    let checked = proto.check(frame).map_err(Error::server);
    if !verdict.not_run() {
        return checked;
    }
    let err = match checked {
        Err(err) => err,
        Ok(_) => Error::server("the server said the call did not run".into()),
    };
    Err(err.written(false))
}

/// A call in the intake.
///
/// Dropped before it was written, it fails its call *not sent* with the request.
#[derive(Debug)]
pub(crate) struct Envelope<Req, Resp> {
    pub(crate) frames: Frames<Req>,
    /// Taken when the call is written or failed; still here when dropped unwritten.
    pub(crate) waiter: Option<Waiter<Resp>>,
    /// A caller-supplied session id.
    pub(crate) id: Option<u64>,
    /// Exempt from the stall timeout (a blocking command).
    pub(crate) exempt: bool,
    /// Queued by a handshake that did not await it: its reply says nothing of whether
    /// the host answers users ([`Entry::counts`](super::matcher::Entry::counts)).
    pub(crate) leftover: bool,
    /// What it counts for the overload signal while queued (0 when that is off). A
    /// `u32`: with the flags beside it, the envelope is 128 bytes, which the compiler
    /// moves inline rather than through `memcpy` (it is moved several times per call).
    pub(crate) weight: u32,
    /// When it fails [`Kind::Timeout`] if it has not been answered (see `deadline.rs`).
    pub(crate) deadline: Option<super::Deadline>,
    /// Its sequence number while the connection task holds it in its queue.
    pub(crate) seq: u64,
    /// Boxes the request for an error that hands it back: `Drop` cannot ask
    /// `Req: Send + 'static`, so the constructor, which can, leaves this here.
    boxed: fn(Frames<Req>) -> Option<Box<dyn Any + Send>>,
}

impl<Req: Send + 'static, Resp> Envelope<Req, Resp> {
    #[inline]
    pub(crate) fn new(frames: Frames<Req>, waiter: Waiter<Resp>) -> Self {
        Envelope {
            frames,
            waiter: Some(waiter),
            id: None,
            exempt: false,
            leftover: false,
            weight: 0,
            deadline: None,
            seq: 0,
            boxed: Frames::into_any,
        }
    }
}

impl<Req, Resp> Envelope<Req, Resp> {
    /// Is the caller gone (never for a call already resolved)?
    pub(crate) fn is_gone(&self) -> bool {
        self.waiter.as_ref().is_none_or(Waiter::is_gone)
    }

    /// [`Waiter::poll_gone`] of its waiter.
    pub(crate) fn poll_gone(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.waiter.as_mut().is_none_or(|w| w.poll_gone(cx))
    }

    /// Opens the call to write it: its frames and its waiter (`None` when it was
    /// resolved already), without running its `Drop` (nothing is left to fail).
    #[inline(always)]
    pub(crate) fn into_parts(self) -> (Frames<Req>, Option<Waiter<Resp>>) {
        let mut this = std::mem::ManuallyDrop::new(self);
        // What stays behind owns nothing (`Frames::None`, `None`, plain numbers), so not
        // dropping it leaks nothing.
        let frames = std::mem::replace(&mut this.frames, Frames::None);
        (frames, this.waiter.take())
    }

    /// Takes the frames and the waiter out: dropping what is left does nothing.
    fn open(&mut self) -> Option<(Frames<Req>, Waiter<Resp>)> {
        let waiter = self.waiter.take()?;
        Some((std::mem::replace(&mut self.frames, Frames::None), waiter))
    }

    /// Fails a call that was never written, handing its request back.
    pub(crate) fn fail_unsent(mut self, kind: Kind, cause: Option<&Cause>) {
        self.fail_in_place(kind, cause);
    }

    fn fail_in_place(&mut self, kind: Kind, cause: Option<&Cause>) {
        let Some((frames, waiter)) = self.open() else {
            return;
        };
        let mut err = Error::new(kind);
        if let Some(cause) = cause {
            err = err.with_cause(cause.clone());
        }
        if let Some(req) = (self.boxed)(frames) {
            err = err.with_request(req);
        }
        waiter.fail(err);
    }
}

impl<Req, Resp> Drop for Envelope<Req, Resp> {
    /// Never written: its queue or its task is gone. *Not sent*, with the request.
    fn drop(&mut self) {
        if self.waiter.is_some() {
            let cause: Cause = Arc::new(crate::error::Dropped);
            self.fail_in_place(Kind::Closed, Some(&cause));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_of_a_waiting_call_stays_small() {
        // One waiting call costs an `Entry` in its matcher: a waiter plus a few words
        // (its sequence number, for its deadline, is one of them).
        assert!(std::mem::size_of::<Waiter<[u8; 64]>>() <= 16);
        assert!(std::mem::size_of::<super::super::matcher::Entry<[u8; 64]>>() <= 32);
    }

    #[test]
    fn an_envelope_is_moved_inline() {
        // An envelope is moved several times on its way to the connection (into the
        // intake, out of it, out of the batch taken). At 128 bytes or less the compiler
        // moves it with a few loads and stores; above, each move is a call to `memcpy`
        // (they were 7.6% of a run's instructions at 136 bytes). A request of 40 bytes:
        // an id and a `Bytes` payload, as the benchmark's frames are.
        type Frame = (u64, bytes::Bytes);
        assert!(std::mem::size_of::<Envelope<Frame, Frame>>() <= 128);
    }
}
