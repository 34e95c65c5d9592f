//! The one pluggable part of the engine: where a waiting call is kept, and which one a
//! reply frame belongs to.

use super::call::{Frames, Waiter};
use crate::error::Error;

/// A written call waiting for its reply.
#[derive(Debug)]
pub(crate) struct Entry<Resp> {
    pub(crate) waiter: Waiter<Resp>,
    /// Its sequence number, increasing in the order calls are written: where its
    /// deadline finds it (see `deadline.rs`).
    pub(crate) seq: u64,
    /// The connection's orphan tick when it was written: a coarse clock, read by the
    /// orphan-age rule only (see `Conn::should_retire`).
    pub(crate) since: u32,
    /// Exempt from the stall timeout.
    pub(crate) exempt: bool,
    /// A read without a request: failing it never says "may have executed".
    pub(crate) read_only: bool,
    /// Its caller left and it was given a cancel notice (see `notice.rs`).
    pub(crate) noticed: bool,
    /// Its reply counts as the host answering (`Conn::answered`): a user's call, or the
    /// idle ping. A handshake's call, even one it left unawaited, does not: a host that
    /// answers the handshake and then drains or closes is a failed attempt.
    pub(crate) counts: bool,
}

/// What became of a reply frame.
#[derive(Debug)]
pub(crate) enum Route<Resp> {
    /// Given to its call (or discarded for a caller that left): the server answered,
    /// one that counts as the host answering if `counts` ([`Entry::counts`]).
    Delivered { counts: bool },
    /// Given to its call, which it put over a reply limit: the call failed before its
    /// last frame, and its caller is gone while the server still works on it. Only
    /// from a mode that sends cancel notices: the call is owed one, as a caller that
    /// left is.
    Limit { counts: bool },
    /// The protocol marks it as a push.
    Push(Resp),
    /// Session mode: no call waits for its id. Dropped.
    Unknown,
    /// Order mode: no call waits at all. The stream is out of step.
    Desync,
    /// Given to its call, which did not run, on the server's word that this connection
    /// is the wrong one ([`Verdict::WrongServer`](crate::Verdict::WrongServer)).
    WrongServer,
    /// Not a reply: the server asks that this connection be drained
    /// ([`Verdict::Drain`](crate::Verdict::Drain)).
    Drain,
}

impl<Resp> Route<Resp> {
    /// A frame given to its call (one that counts, [`Entry::counts`]), with what its verdict says of
    /// the connection.
    pub(crate) fn delivered(verdict: crate::Verdict, counts: bool) -> Self {
        match verdict {
            crate::Verdict::WrongServer => Route::WrongServer,
            _ => Route::Delivered { counts },
        }
    }
}

/// Matches reply frames to waiting calls: by FIFO position ([`Order`](super::Order)) or
/// by session id ([`Session`](super::Session)).
pub(crate) trait Matcher<Req, Resp>: Send + 'static {
    /// Can one more call be admitted (in-flight limit, a free session id)?
    fn has_room(&self) -> bool;

    /// Gives the call its place and stamps its frames (session id). On success the entry
    /// waits for its reply, under the session id returned (none in order mode, nor for a
    /// read); on failure it is handed back with the error for its caller.
    fn admit(
        &mut self,
        frames: &mut Frames<Req>,
        id: Option<u64>,
        entry: Entry<Resp>,
    ) -> Result<Option<u64>, (Error, Entry<Resp>)>;

    /// The waiting call admitted as `seq` under session id `id`, if it still waits.
    fn find(&mut self, seq: u64, id: Option<u64>) -> Option<&mut Entry<Resp>>;

    /// No call admitted with a number below this still waits here, so [`find`] finds
    /// none: `u64::MAX` when nothing waits. 0 where the matcher cannot tell at once.
    ///
    /// [`find`]: Self::find
    fn floor(&self) -> u64 {
        0
    }

    /// Routes one reply frame.
    fn route(&mut self, frame: Resp) -> Route<Resp>;

    /// Calls waiting for a reply.
    fn pending(&self) -> usize;

    /// Does a waiting call count for the stall timer? Exempt calls do not, nor (in
    /// order mode) the calls queued behind an exempt one, which cannot be answered
    /// before it.
    fn watched(&self) -> bool;

    /// How many calls can wait at once: the in-flight limit, or the id range if smaller.
    fn capacity(&self) -> usize;

    /// Can a server leave one call unanswered and answer later ones (session mode)?
    fn ignores_calls(&self) -> bool;

    /// Waiting calls whose caller is gone, and the oldest one's tick (a scan: called
    /// rarely).
    fn orphans(&self) -> (usize, Option<u32>);

    /// Has every waiting call lost its caller? Where one has not, the task is woken
    /// when it leaves (see [`Waiter::poll_gone`]). A scan: for shutdowns only.
    fn poll_nobody_waits(&mut self, cx: &mut std::task::Context<'_>) -> bool;

    /// Removes every waiting call, for the connection's end.
    fn drain(&mut self, each: &mut dyn FnMut(Entry<Resp>));

    /// Hands `each` the session id and sequence number of every waiting call whose
    /// caller left and that has had no cancel notice: each call gets one at most. A
    /// scan: called once a caller left.
    fn notices(&mut self, _each: &mut dyn FnMut(u64, u64)) {}

    /// The cancel notice of the call numbered `seq` under session id `id`, if it still
    /// waits and the protocol gives one.
    fn notice(&mut self, _id: u64, _seq: u64) -> Option<Req> {
        None
    }
}

/// The entry numbered `seq` in a queue of entries in the order they were admitted.
pub(crate) fn find_in<Resp>(
    queue: &mut std::collections::VecDeque<Entry<Resp>>,
    seq: u64,
) -> Option<&mut Entry<Resp>> {
    // Most lookups are of calls answered already: older than the head.
    if seq < queue.front()?.seq {
        return None;
    }
    let at = queue.binary_search_by_key(&seq, |e| e.seq).ok()?;
    queue.get_mut(at)
}

/// Counts the orphans among `entries`, with the oldest one's tick.
pub(crate) fn count_orphans<'a, Resp: 'a>(
    entries: impl Iterator<Item = &'a Entry<Resp>>,
) -> (usize, Option<u32>) {
    entries
        .filter(|e| e.waiter.is_gone())
        .fold((0, None), |(n, oldest), e| {
            (n + 1, Some(oldest.map_or(e.since, |o: u32| o.min(e.since))))
        })
}

/// The fate of calls still waiting when their matcher is dropped without being drained
/// (the connection task panicked or was aborted): they were written, so they may have
/// executed.
pub(crate) fn abandoned<Resp>(entry: Entry<Resp>) {
    let err = Error::new(crate::error::Kind::Closed).written(!entry.read_only);
    entry.waiter.fail(err);
}
