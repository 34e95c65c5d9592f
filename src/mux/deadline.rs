//! Call deadlines: one deadline-ordered heap and one timer per channel, over the calls
//! queued and the calls written.
//!
//! A call with a deadline ([`Call::deadline`](crate::Call::deadline), or the channel's
//! [`Config::call_timeout`](crate::Config::call_timeout)) is entered here twice at most:
//! when the connection task takes it into its queue to time it (`held`: while it cannot
//! write, the task takes calls out of the intake) and when it is written. Each entry
//! names the call by a sequence number the task gave it there, and, once written, by its
//! session id. A call that is answered leaves its entry behind: most never reach the
//! heap (an entry waits a generation of pushes in a plain list first, and only a live
//! call's goes on), and a sweep drops those in the heap once they outnumber the live
//! ones, so the heap stays a small multiple of the calls waiting long, and its top is
//! soon a live call's deadline.
//!
//! At a deadline, a queued call fails [`Kind::Timeout`](crate::Kind::Timeout) *not sent*
//! and is never written; a written one fails *may have executed*, and its slot or id
//! stays taken until its reply comes (or the connection ends): it is an orphan then.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::pin::Pin;
use std::task::Context;

use tokio::time::{Instant, Sleep};

/// An instant on the connection task: nanoseconds since its [`Deadlines`]' epoch, so
/// that adding a timeout and comparing deadlines, once per call, are integer operations,
/// and an entry is small. `u64::MAX` is never.
pub(crate) type Nanos = u64;

/// `d` in nanoseconds (`u64::MAX` for more than 584 years).
#[inline(always)]
fn nanos_of(d: std::time::Duration) -> Nanos {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// When a call fails [`Kind::Timeout`](crate::Kind::Timeout) if it is not answered: at
/// an instant, or a time after the channel takes it in. The connection task gives the
/// latter its instant with the clock it reads once for all the calls it takes in a
/// pass, so such a deadline costs no clock read per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    At(Instant),
    After(std::time::Duration),
}

impl Deadline {
    /// Its instant, `now` giving the clock for one counted from now.
    #[inline(always)]
    pub(crate) fn at(self, now: impl FnOnce() -> Instant) -> Instant {
        match self {
            Deadline::At(at) => at,
            Deadline::After(timeout) => crate::config::deadline(now(), timeout),
        }
    }

    /// Counted from now, if it was to be counted from when the task takes it in.
    pub(crate) fn fixed(self) -> Self {
        Deadline::At(self.at(Instant::now))
    }
}

/// A call's deadline, and where to find the call: by its sequence number, and by its
/// session id once written in session mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Due {
    pub(crate) at: Nanos,
    pub(crate) seq: u64,
    /// Written in session mode (a read aside): its session id.
    pub(crate) id: Option<u64>,
    /// Written (else queued).
    pub(crate) written: bool,
}

/// The channel's deadlines.
///
/// Most calls are answered long before their deadline, so an entry is not put in the
/// heap at once: it goes to `young`, a plain list, and only when `young` fills are the
/// entries of the generation before it (`old`) looked at: those whose call still waits
/// go to the heap, the rest are dropped. An answered call's entry then costs a push on
/// a list and one look, and no heap operation; the timer is at the earliest deadline of
/// the heap and of both lists.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    heap: BinaryHeap<Reverse<Due>>,
    young: Generation,
    old: Generation,
    /// What [`Nanos`] count from: the task's first clock read for a deadline (an
    /// instant before it is 0). Read then, on the clock the task runs on, not when the
    /// channel is built: that may be another runtime's clock, or the real one before a
    /// paused test clock that is behind it.
    epoch: Option<Instant>,
    /// The timer, and the deadline it is set to.
    timer: Option<(Pin<Box<Sleep>>, Nanos)>,
    /// The heap's size after the last sweep: the next sweep comes at twice that.
    swept: usize,
    next_seq: u64,
    /// The clock, read once per write pass and only if a call there has a deadline.
    now: Option<Nanos>,
    /// A call had a deadline: the task times the queued calls too (it takes them out of
    /// the intake while it cannot write them). Until then it costs nothing.
    pub(crate) used: bool,
}

/// Entries kept however few are live: below this, a sweep would cost more than it saves.
/// Also the size of a generation of entries.
const SWEEP_FLOOR: usize = 1024;

#[inline(always)]
fn earliest(a: Option<Nanos>, b: Nanos) -> Option<Nanos> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// A generation of entries, in the order of their numbers (an entry is pushed when its
/// number is given).
#[derive(Debug, Default)]
struct Generation {
    entries: Vec<Due>,
    /// The earliest deadline among them.
    first: Option<Nanos>,
    /// One of them is a queued call's (else all are written calls').
    queued: bool,
}

impl Generation {
    #[inline(always)]
    fn push(&mut self, due: Due) {
        debug_assert!(self.entries.last().is_none_or(|last| last.seq < due.seq));
        self.first = earliest(self.first, due.at);
        self.queued |= !due.written;
        self.entries.push(due);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether an entry's deadline has come by `now`.
    fn holds_due(&self, now: Nanos) -> bool {
        self.first.is_some_and(|at| at <= now)
    }

    /// Moves the entries whose call `live` says still waits to `heap`, leaving the
    /// generation empty. Written calls numbered below `floor` wait no more: when all are
    /// written calls', those are a prefix, dropped without a look.
    fn move_live(
        &mut self,
        heap: &mut BinaryHeap<Reverse<Due>>,
        floor: u64,
        live: &mut impl FnMut(&Due) -> bool,
    ) {
        let skip = if self.queued {
            0
        } else {
            self.entries.partition_point(|due| due.seq < floor)
        };
        for due in &self.entries[skip..] {
            if live(due) {
                heap.push(Reverse(*due));
            }
        }
        self.entries.clear();
        self.first = None;
        self.queued = false;
    }
}

impl Deadlines {
    /// The epoch, read now if it was not yet.
    #[inline]
    fn epoch(&mut self) -> Instant {
        *self.epoch.get_or_insert_with(Instant::now)
    }

    /// `at` as [`Nanos`] (0 for an instant before the epoch: it has passed).
    #[inline]
    pub(crate) fn nanos(&mut self, at: Instant) -> Nanos {
        nanos_of(at.saturating_duration_since(self.epoch()))
    }

    /// The clock now, as [`Nanos`].
    pub(crate) fn now(&mut self) -> Nanos {
        let epoch = self.epoch();
        nanos_of(Instant::now().saturating_duration_since(epoch))
    }

    /// The next sequence number.
    #[inline(always)]
    pub(crate) fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// `deadline`'s instant, and whether it has passed, for a call taken in a write pass:
    /// the clock is read once per pass ([`new_pass`](Self::new_pass)), when first
    /// needed.
    #[inline]
    pub(crate) fn check(&mut self, deadline: Deadline) -> (Nanos, bool) {
        let now = match self.now {
            Some(now) => now,
            None => {
                let now = self.now();
                self.now = Some(now);
                now
            }
        };
        let at = match deadline {
            Deadline::At(at) => self.nanos(at),
            Deadline::After(timeout) => now.saturating_add(nanos_of(timeout)),
        };
        (at, at <= now)
    }

    /// A new write pass: the clock is read again when next needed.
    #[inline(always)]
    pub(crate) fn new_pass(&mut self) {
        self.now = None;
    }

    #[inline]
    pub(crate) fn push(&mut self, due: Due) {
        self.used = true;
        self.young.push(due);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty() && self.young.entries.is_empty() && self.old.entries.is_empty()
    }

    /// Whether a sweep is due: a generation is full, or the heap doubled since the
    /// last sweep.
    #[inline]
    pub(crate) fn wants_sweep(&self) -> bool {
        self.young.len() >= SWEEP_FLOOR || self.heap.len() > SWEEP_FLOOR.max(2 * self.swept)
    }

    /// Keeps only the entries whose call `live` says is still waiting (no written call
    /// numbered below `floor` is): the old generation's, when the young one is full (the
    /// young becomes the old), and the heap's, when it doubled.
    pub(crate) fn sweep(&mut self, floor: u64, mut live: impl FnMut(&Due) -> bool) {
        if self.young.len() >= SWEEP_FLOOR {
            self.old.move_live(&mut self.heap, floor, &mut live);
            std::mem::swap(&mut self.old, &mut self.young);
        }
        if self.heap.len() > SWEEP_FLOOR.max(2 * self.swept) {
            let mut entries = std::mem::take(&mut self.heap).into_vec();
            entries.retain(|Reverse(due)| live(due));
            self.heap = BinaryHeap::from(entries);
            self.swept = self.heap.len();
        }
    }

    /// Moves to the heap the live entries of each generation that holds one due by
    /// `now`, before the due ones are taken from it; true when it moved a generation.
    /// A generation none of whose deadlines has come stays where it is: at a low call
    /// rate the old one's earliest deadline can come before the young one fills, and
    /// the young one holds the calls still waiting, whose entries would all go to the
    /// heap for nothing.
    pub(crate) fn settle(
        &mut self,
        now: Nanos,
        floor: u64,
        mut live: impl FnMut(&Due) -> bool,
    ) -> bool {
        let mut moved = false;
        for generation in [&mut self.old, &mut self.young] {
            if generation.holds_due(now) {
                moved = true;
                generation.move_live(&mut self.heap, floor, &mut live);
            }
        }
        moved
    }

    /// The next entry in the heap whose deadline has passed (by the clock read now), if
    /// any: [`settle`](Self::settle) by the same clock first.
    pub(crate) fn pop_due(&mut self, now: Nanos) -> Option<Due> {
        if self.heap.peek()?.0.at > now {
            return None;
        }
        self.heap.pop().map(|Reverse(due)| due)
    }

    /// Sets the timer to the earliest deadline and polls it, so the task is woken then.
    /// True when it is due already.
    pub(crate) fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let mut first = self.heap.peek().map(|Reverse(top)| top.at);
        for at in [self.young.first, self.old.first].into_iter().flatten() {
            first = earliest(first, at);
        }
        // Every entry was made after the epoch was read.
        let (Some(at), Some(epoch)) = (first, self.epoch) else {
            return false;
        };
        if let Some((timer, set)) = &mut self.timer
            && *set == at
        {
            return timer.as_mut().poll(cx).is_ready();
        }
        // Never (`u64::MAX`, a timeout of `Duration::MAX`), or past what an instant
        // holds: no timer, and nothing will be due. (A timer capped below the entry
        // would fire with nothing due, for ever.)
        let Some(instant) = (at < Nanos::MAX)
            .then(|| epoch.checked_add(std::time::Duration::from_nanos(at)))
            .flatten()
        else {
            self.timer = None;
            return false;
        };
        let timer = match &mut self.timer {
            Some((timer, set)) => {
                timer.as_mut().reset(instant);
                *set = at;
                timer
            }
            None => {
                &mut self
                    .timer
                    .insert((Box::pin(tokio::time::sleep_until(instant)), at))
                    .0
            }
        };
        timer.as_mut().poll(cx).is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `n` ms after the epoch.
    fn ms(n: u64) -> Nanos {
        n * 1_000_000
    }

    fn due(at: Nanos, seq: u64) -> Due {
        Due {
            at,
            seq,
            id: None,
            written: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pops_in_deadline_order_and_only_when_due() {
        let mut d = Deadlines::default();
        let now = d.now();
        for (seq, n) in [(1, 30), (2, 10), (3, 20), (4, 10)] {
            d.push(due(now + ms(n), seq));
        }
        assert!(!d.settle(now, 0, |_| true), "nothing is due yet");
        assert!(d.pop_due(now).is_none());
        let later = now + ms(20);
        assert!(d.settle(later, 0, |_| true));
        let popped: Vec<u64> = std::iter::from_fn(|| d.pop_due(later))
            .map(|d| d.seq)
            .collect();
        assert_eq!(popped, [2, 4, 3], "by deadline, then by number");
    }

    /// A live entry fires at its deadline wherever it is (the young list, the old one,
    /// the heap), all of them in deadline order, and the timer is at the earliest.
    #[tokio::test(start_paused = true)]
    async fn live_entries_fire_in_deadline_order_from_every_generation() {
        let mut d = Deadlines::default();
        let start = Instant::now();
        assert_eq!(d.now(), 0, "the epoch is the first clock read");
        let live = |due: &Due| due.seq.is_multiple_of(7);
        // Deadlines that go down and up, over three generations and a bit.
        let at = |seq: u64| ms(50 + (seq * 7919) % 450);
        for seq in 1..=3500u64 {
            d.push(due(at(seq), seq));
            if d.wants_sweep() {
                d.sweep(0, live);
            }
        }
        assert!(!d.heap.is_empty() && d.young.len() > 0 && d.old.len() > 0);
        let want_first = (1..=3500u64).map(at).min().unwrap();
        let waker = futures::task::noop_waker();
        assert!(!d.poll_timer(&mut Context::from_waker(&waker)));
        let (timer, set) = d.timer.as_ref().unwrap();
        assert_eq!(*set, want_first);
        assert_eq!(timer.deadline(), start + Duration::from_nanos(want_first));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(d.poll_timer(&mut Context::from_waker(&waker)));
        let now = d.now();
        d.settle(now, 0, live);
        let popped: Vec<Due> = std::iter::from_fn(|| d.pop_due(now)).collect();
        let mut want: Vec<u64> = (1..=3500u64).filter(|s| s.is_multiple_of(7)).collect();
        want.sort_by_key(|&s| (at(s), s));
        assert_eq!(popped.iter().map(|d| d.seq).collect::<Vec<_>>(), want);
        assert!(d.is_empty());
    }

    /// The timer fires for a generation's earliest deadline: only that generation goes
    /// to the heap; the young one, holding the calls still waiting, stays a list.
    #[tokio::test(start_paused = true)]
    async fn a_due_generation_is_settled_alone() {
        let mut d = Deadlines::default();
        let start = d.now();
        let soon = start + ms(10);
        for seq in 1..=SWEEP_FLOOR as u64 {
            d.push(due(soon, seq));
        }
        d.sweep(0, |_| true);
        let later = start + ms(1000);
        for seq in 1..=10 {
            d.push(due(later, SWEEP_FLOOR as u64 + seq));
        }
        assert!(!d.settle(start, 0, |_| true));
        assert!(d.settle(soon, 0, |_| true));
        assert_eq!(
            (d.heap.len(), d.old.len(), d.young.len()),
            (SWEEP_FLOOR, 0, 10)
        );
    }

    /// Written calls numbered below the floor are answered: a generation of written
    /// calls' entries drops them without asking, one with a queued call's asks of each.
    #[tokio::test(start_paused = true)]
    async fn entries_below_the_floor_are_dropped_unasked() {
        let at = ms(1000);
        let mut d = Deadlines::default();
        for seq in 1..=100 {
            d.push(due(at, seq));
        }
        let mut asked = 0;
        assert!(d.settle(at, 91, |_| {
            asked += 1;
            true
        }));
        assert_eq!((asked, d.heap.len()), (10, 10));

        let mut d = Deadlines::default();
        d.push(Due {
            written: false,
            ..due(at, 1)
        });
        for seq in 2..=100 {
            d.push(due(at, seq));
        }
        let mut asked = 0;
        d.settle(at, 91, |_| {
            asked += 1;
            true
        });
        assert_eq!(asked, 100);
    }

    /// The epoch is read on the clock the task runs on, when it first needs it, not when
    /// the channel is built (on another runtime's clock, or the real one before a
    /// paused clock behind it): a deadline ahead is not passed.
    #[tokio::test(start_paused = true)]
    async fn the_epoch_is_the_first_clock_read() {
        let mut d = Deadlines::default();
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let ahead = Instant::now() + std::time::Duration::from_millis(100);
        let (at, passed) = d.check(Deadline::At(ahead));
        assert_eq!((at, passed), (ms(100), false));
    }

    /// A deadline of never (`Duration::MAX`) arms no timer: a timer capped below it
    /// would fire with nothing due, and the task would wake itself for ever.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_of_never_arms_no_timer() {
        let mut d = Deadlines::default();
        let (at, passed) = d.check(Deadline::After(std::time::Duration::MAX));
        assert_eq!((at, passed), (Nanos::MAX, false));
        d.push(due(at, 1));
        let waker = futures::task::noop_waker();
        assert!(!d.poll_timer(&mut Context::from_waker(&waker)));
        assert!(d.timer.is_none());
        // Far, but an instant holds it: the timer is at the entry itself.
        d.push(due(ms(86_400_000 * 365 * 100), 2));
        assert!(!d.poll_timer(&mut Context::from_waker(&waker)));
        assert_eq!(
            d.timer.as_ref().map(|(_, set)| *set),
            Some(ms(86_400_000 * 365 * 100))
        );
    }

    /// Answered calls leave their entries behind; sweeps keep the heap within twice the
    /// live ones (or the floor), however many calls go through.
    #[tokio::test(start_paused = true)]
    async fn sweeps_keep_the_heap_a_small_multiple_of_the_live_calls() {
        let mut d = Deadlines::default();
        let at = ms(60_000);
        let mut max = 0;
        for seq in 0..100_000u64 {
            d.push(due(at, seq));
            if d.wants_sweep() {
                // The last 10 are live.
                d.sweep(0, |due| due.seq + 10 > seq);
            }
            max = max.max(d.heap.len() + d.young.len() + d.old.len());
        }
        assert!(max <= 3 * SWEEP_FLOOR + 1, "{max}");
        assert!(
            d.heap.len() <= 10,
            "only the live ones reach the heap: {}",
            d.heap.len()
        );
    }
}
