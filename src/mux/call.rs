//! One call on its way through the intake: the frames to write and who waits for what.

use std::any::Any;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Cause, Error, Kind};
use crate::protocol::Protocol;

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
            Frames::Many(parts) => parts.iter().map(|p| overload.weigh(p)).sum(),
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

/// The state of a call that collects several frames.
#[derive(Debug)]
pub(crate) struct Collect<Resp> {
    pub(crate) tx: Option<Reply<Vec<Resp>>>,
    pub(crate) parts: Vec<Resp>,
    pub(crate) until: Until,
    pub(crate) error: Option<Error>,
}

impl<Resp> Collect<Resp> {
    pub(crate) fn waiter(tx: Reply<Vec<Resp>>, until: Until) -> Waiter<Resp> {
        Waiter::Collect(Box::new(Collect {
            tx: Some(tx),
            parts: Vec::new(),
            until,
            error: None,
        }))
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
    Stream(Box<(mpsc::UnboundedSender<Result<Resp, Error>>, Until)>),
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
            Waiter::Stream(s) => s.0.is_closed(),
        }
    }

    /// Does the call wait for any reply frame?
    pub(crate) fn wants_reply(&self) -> bool {
        match self {
            Waiter::Sent(_) => false,
            Waiter::One(_) => true,
            Waiter::Collect(c) => !matches!(c.until, Until::Count(0)),
            Waiter::Stream(s) => !matches!(s.1, Until::Count(0)),
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
            _ => {}
        }
    }

    /// Hands one reply frame to the caller. Returns true when the reply is complete and
    /// the slot can be freed.
    pub(crate) fn deliver<Req, P: Protocol<Req, Resp>>(&mut self, frame: Resp, proto: &P) -> bool {
        match self {
            Waiter::One(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(proto.check(frame).map_err(Error::server));
                }
                true
            }
            Waiter::Collect(c) => {
                let Collect {
                    tx,
                    parts,
                    until,
                    error,
                } = &mut **c;
                let last = until.last(&frame, proto);
                match proto.check(frame) {
                    Ok(frame) => parts.push(frame),
                    // The first error reply fails the call; the rest of its frames are
                    // still read so the stream stays in step.
                    Err(e) => {
                        error.get_or_insert_with(|| Error::server(e));
                    }
                }
                if last {
                    if let Some(tx) = tx.take() {
                        let outcome = match error.take() {
                            Some(e) => Err(e),
                            None => Ok(std::mem::take(parts)),
                        };
                        let _ = tx.send(outcome);
                    }
                }
                last
            }
            Waiter::Stream(s) => {
                let (tx, until) = &mut **s;
                let last = until.last(&frame, proto);
                let _ = tx.send(proto.check(frame).map_err(Error::server));
                last
            }
            Waiter::Sent(_) => true,
        }
    }

    /// Fails the call.
    pub(crate) fn fail(self, err: Error) {
        match self {
            Waiter::Sent(tx) => {
                let _ = tx.send(Err(err));
            }
            Waiter::One(Some(tx)) => {
                let _ = tx.send(Err(err));
            }
            Waiter::Collect(mut c) => {
                if let Some(tx) = c.tx.take() {
                    let _ = tx.send(Err(err));
                }
            }
            Waiter::One(None) => {}
            Waiter::Stream(s) => {
                let _ = s.0.send(Err(err));
            }
        }
    }
}

/// A call in the intake.
#[derive(Debug)]
pub(crate) struct Envelope<Req, Resp> {
    pub(crate) frames: Frames<Req>,
    pub(crate) waiter: Waiter<Resp>,
    /// A caller-supplied session id.
    pub(crate) id: Option<u64>,
    /// Exempt from the stall timeout (a blocking command).
    pub(crate) exempt: bool,
    /// What it counts for the overload signal while queued (0 when that is off).
    pub(crate) weight: usize,
}

impl<Req: Send + 'static, Resp> Envelope<Req, Resp> {
    pub(crate) fn new(frames: Frames<Req>, waiter: Waiter<Resp>) -> Self {
        Envelope {
            frames,
            waiter,
            id: None,
            exempt: false,
            weight: 0,
        }
    }

    /// Fails a call that was never written, handing its request back.
    pub(crate) fn fail_unsent(self, kind: Kind, cause: Option<&Cause>) {
        let mut err = Error::new(kind);
        if let Some(cause) = cause {
            err = err.with_cause(cause.clone());
        }
        if let Some(req) = self.frames.into_any() {
            err = err.with_request(req);
        }
        self.waiter.fail(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_of_a_waiting_call_stays_small() {
        // One waiting call costs an `Entry` in its matcher: a waiter plus a few words.
        assert!(std::mem::size_of::<Waiter<[u8; 64]>>() <= 16);
        assert!(std::mem::size_of::<super::super::matcher::Entry<[u8; 64]>>() <= 24);
    }
}
