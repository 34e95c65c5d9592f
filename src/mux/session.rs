//! Session mode: each request carries an id, each reply names the id it answers.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

use tracing::warn;

use super::call::{Frames, Took};
use super::ids::IdTable;
use super::matcher::{Entry, Matcher, Route, abandoned, count_orphans, find_in};
use crate::error::{Error, Kind};
use crate::protocol::{SessionId, Sessions, Verdict};

/// Session mode (multiplexing): the channel stamps a session id into each request and
/// matches replies by the id they carry, in any order.
///
/// A slow reply delays no other (no head-of-line blocking), at the price of an id in
/// every frame.
///
/// Ids are given round-robin over the range (by default the whole of
/// [`Sessions::Id`] but 0): in increasing order, wrapping at the end, so an id comes
/// back only after a full lap. Ids still waiting are skipped, including those of callers
/// that gave up before their reply came: an id is free again only once its reply arrived
/// or its connection ended. When no id is free, the channel stops taking requests until
/// one is.
#[derive(Debug, Clone)]
pub struct Session<S> {
    pub(crate) sessions: S,
    ids: Option<(u64, u64)>,
}

impl<S> Session<S> {
    /// Session mode with the protocol's id layout.
    pub fn new(sessions: S) -> Self {
        Session {
            sessions,
            ids: None,
        }
    }

    /// Restricts the ids the channel gives out (caller-supplied ids may lie outside it).
    ///
    /// # Panics
    ///
    /// If the range is empty.
    ///
    /// ```
    /// # use socketchannel::{Protocol, Session, Sessions};
    /// # struct P;
    /// # impl Protocol<u16, u16> for P {}
    /// # impl Sessions<u16, u16> for P {
    /// #     type Id = u16;
    /// #     fn stamp(&self, r: &mut u16, id: u16) { *r = id }
    /// #     fn session(&self, r: &u16) -> Option<u16> { Some(*r) }
    /// # }
    /// let mode = Session::new(P).ids(1u16..=1024);
    /// ```
    pub fn ids<I: SessionId>(mut self, range: RangeInclusive<I>) -> Self {
        let (lo, hi) = (range.start().into_u64(), range.end().into_u64());
        assert!(lo <= hi, "the session id range is empty");
        self.ids = Some((lo, hi));
        self
    }

    /// Does the protocol send cancel notices ([`Sessions::cancels`])?
    pub(crate) fn cancels<Req, Resp>(&self) -> bool
    where
        S: Sessions<Req, Resp>,
    {
        self.sessions.cancels()
    }

    pub(crate) fn matcher<Req, Resp>(&self, max_in_flight: usize) -> SessionMatcher<S, Resp>
    where
        S: Sessions<Req, Resp> + Clone,
    {
        // A range beyond what the protocol's id type holds is cut down to it.
        let (lo, hi) = self.ids.unwrap_or((1, S::Id::MAX));
        let (lo, hi) = (lo.min(S::Id::MAX), hi.min(S::Id::MAX));
        SessionMatcher {
            sessions: self.sessions.clone(),
            live: IdTable::new(lo, hi),
            reads: VecDeque::new(),
            max_in_flight,
            watched: 0,
            cancels: self.sessions.cancels(),
        }
    }
}

/// Session mode's table of waiting calls, by session id, and its id allocator.
#[allow(unreachable_pub, missing_debug_implementations)] // named by `Mode::Matcher`, unreachable from outside
pub struct SessionMatcher<S, Resp> {
    sessions: S,
    /// Calls waiting for a reply, by session id.
    live: IdTable<Entry<Resp>>,
    /// Reads without a request: they take frames that carry no id, oldest first.
    reads: VecDeque<Entry<Resp>>,
    max_in_flight: usize,
    /// Waiting calls that count for the stall timer (not exempt).
    watched: usize,
    /// The protocol sends cancel notices ([`Sessions::cancels`]).
    cancels: bool,
}

impl<S, Resp> SessionMatcher<S, Resp> {
    fn removed(&mut self, entry: &Entry<Resp>) {
        if !entry.exempt {
            self.watched -= 1;
        }
    }
}

impl<S, Resp> Drop for SessionMatcher<S, Resp> {
    fn drop(&mut self) {
        self.live.drain(abandoned);
        self.reads.drain(..).for_each(abandoned);
    }
}

impl<Req, Resp, S> Matcher<Req, Resp> for SessionMatcher<S, Resp>
where
    S: Sessions<Req, Resp>,
    Resp: Send + 'static,
{
    fn has_room(&self) -> bool {
        let pending = self.live.len() + self.reads.len();
        pending < self.max_in_flight && self.live.has_free()
    }

    fn admit(
        &mut self,
        frames: &mut Frames<Req>,
        id: Option<u64>,
        entry: Entry<Resp>,
    ) -> Result<Option<u64>, (Error, Entry<Resp>)> {
        let watched = usize::from(!entry.exempt);
        if matches!(frames, Frames::None) && id.is_none() {
            self.reads.push_back(entry);
            self.watched += watched;
            return Ok(None);
        }
        let id = match id {
            Some(id) if id > S::Id::MAX => return Err((Error::new(Kind::Unsupported), entry)),
            Some(id) => self
                .live
                .insert(id, entry)
                .map(|()| id)
                .map_err(|entry| (Error::new(Kind::IdInUse), entry))?,
            // `has_room` said there was a free id.
            None => self
                .live
                .insert_next(entry)
                .map_err(|entry| (Error::new(Kind::IdInUse), entry))?,
        };
        self.watched += watched;
        // On the connection task, in its span; nothing is formatted unless DEBUG is on.
        tracing::debug!(id, "session id stamped");
        let wire = S::Id::from_u64(id);
        match frames {
            Frames::None => {}
            Frames::One(req) => self.sessions.stamp(req, wire),
            Frames::Many(parts) => parts
                .iter_mut()
                .for_each(|req| self.sessions.stamp(req, wire)),
        }
        Ok(Some(id))
    }

    fn find(&mut self, seq: u64, id: Option<u64>) -> Option<&mut Entry<Resp>> {
        match id {
            None => find_in(&mut self.reads, seq),
            Some(id) => self.live.get_mut(id).filter(|e| e.seq == seq),
        }
    }

    fn route(&mut self, frame: Resp) -> Route<Resp> {
        if self.sessions.is_push(&frame) {
            return Route::Push(frame);
        }
        let verdict = self.sessions.verdict(&frame);
        if verdict == Verdict::Drain {
            return Route::Drain;
        }
        let Some(id) = self.sessions.session(&frame).map(SessionId::into_u64) else {
            let Some(read) = self.reads.front_mut() else {
                warn!("reply without a session id and no read waiting; dropped");
                return Route::Unknown;
            };
            let counts = read.counts;
            if read.waiter.deliver(frame, &self.sessions, verdict) == Took::Last
                && let Some(read) = self.reads.pop_front()
            {
                self.removed(&read);
            }
            return Route::delivered(verdict, counts);
        };
        let Some(entry) = self.live.get_mut(id) else {
            warn!(id, "reply for a session id that is not waiting; dropped");
            return Route::Unknown;
        };
        // Matched by its id: the id can go (`Sessions::unstamp`, a no-op by default)
        // before `is_final`, `check` and the caller see the frame.
        let frame = self.sessions.unstamp(frame);
        let counts = entry.counts;
        match entry.waiter.deliver(frame, &self.sessions, verdict) {
            Took::Last => {
                if let Some(entry) = self.live.remove(id) {
                    self.removed(&entry);
                }
            }
            // Failed by a limit while the server still works on it: owed a notice now,
            // not whenever another caller happens to leave (a read with an id wrote
            // nothing, and gets none). A frame that says the call did not run,
            // `WrongServer`, leaves nothing to stop: its route wins.
            Took::Limit
                if self.cancels
                    && !entry.noticed
                    && !entry.read_only
                    && verdict != Verdict::WrongServer =>
            {
                return Route::Limit { counts };
            }
            Took::Limit | Took::More => {}
        }
        Route::delivered(verdict, counts)
    }

    fn pending(&self) -> usize {
        self.live.len() + self.reads.len()
    }

    fn watched(&self) -> bool {
        self.watched > 0
    }

    fn capacity(&self) -> usize {
        // Caller ids outside the range take none of its ids.
        let ids = self.live.range().saturating_add(self.live.outside());
        self.max_in_flight.min(ids)
    }

    fn ignores_calls(&self) -> bool {
        true
    }

    fn orphans(&self) -> (usize, Option<u32>) {
        count_orphans(self.live.values().chain(self.reads.iter()))
    }

    fn poll_nobody_waits(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        // Every entry is polled (a count, not a short-circuiting `all`), so each live
        // caller will wake the task when it leaves.
        self.live
            .values_mut()
            .chain(self.reads.iter_mut())
            .map(|e| e.waiter.poll_gone(cx))
            .filter(|gone| !gone)
            .count()
            == 0
    }

    fn notices(&mut self, each: &mut dyn FnMut(u64, u64)) {
        // A read wrote nothing the server could work on, even one with an id of its own
        // (those wait here, not in `reads`): it gets none.
        for (id, entry) in self.live.iter_mut() {
            if !entry.noticed && !entry.read_only && entry.waiter.is_gone() {
                entry.noticed = true;
                each(id, entry.seq);
            }
        }
    }

    fn notice(&mut self, id: u64, seq: u64) -> Option<Req> {
        self.live.get_mut(id).filter(|e| e.seq == seq)?;
        self.sessions.cancel(S::Id::from_u64(id))
    }

    fn drain(&mut self, each: &mut dyn FnMut(Entry<Resp>)) {
        self.watched = 0;
        self.live.drain(&mut *each);
        self.reads.drain(..).for_each(each);
    }
}
