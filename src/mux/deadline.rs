//! Call deadlines: one deadline-ordered heap and one timer per channel, over the calls
//! queued and the calls written.
//!
//! A call with a deadline ([`Call::deadline`](crate::Call::deadline), or the channel's
//! [`Config::call_timeout`](crate::Config::call_timeout)) is entered here twice at most:
//! when the connection task takes it into its queue to time it (`held`: while it cannot
//! write, the task takes calls out of the intake) and when it is written. Each entry
//! names the call by a sequence number the task gave it there, and, once written, by its
//! session id. A call that is answered leaves its entry behind (a heap removes only its
//! top): a sweep drops those once they outnumber the live ones, so the heap stays a small
//! multiple of the calls waiting, and its top is soon a live call's deadline.
//!
//! At a deadline, a queued call fails [`Kind::Timeout`](crate::Kind::Timeout) *not sent*
//! and is never written; a written one fails *may have executed*, and its slot or id
//! stays taken until its reply comes (or the connection ends): it is an orphan then.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::pin::Pin;
use std::task::Context;

use tokio::time::{Instant, Sleep};

/// A call's deadline, and where to find the call: by its sequence number, and by its
/// session id once written in session mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Due {
    pub(crate) at: Instant,
    pub(crate) seq: u64,
    /// Written in session mode (a read aside): its session id.
    pub(crate) id: Option<u64>,
    /// Written (else queued).
    pub(crate) written: bool,
}

/// The channel's deadlines.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    heap: BinaryHeap<Reverse<Due>>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The heap's size after the last sweep: the next sweep comes at twice that.
    swept: usize,
    next_seq: u64,
    /// The clock, read once per write pass and only if a call there has a deadline.
    now: Option<Instant>,
    /// A call had a deadline: the task times the queued calls too (it takes them out of
    /// the intake while it cannot write them). Until then it costs nothing.
    pub(crate) used: bool,
}

/// Entries kept however few are live: below this, a sweep would cost more than it saves.
const SWEEP_FLOOR: usize = 1024;

impl Deadlines {
    /// The next sequence number.
    #[inline(always)]
    pub(crate) fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Has `at` passed? Reads the clock once per write pass ([`new_pass`](Self::new_pass)).
    #[inline]
    pub(crate) fn passed(&mut self, at: Instant) -> bool {
        at <= *self.now.get_or_insert_with(Instant::now)
    }

    /// A new write pass: the clock is read again when next needed.
    #[inline(always)]
    pub(crate) fn new_pass(&mut self) {
        self.now = None;
    }

    pub(crate) fn push(&mut self, due: Due) {
        self.used = true;
        self.heap.push(Reverse(due));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Whether a sweep is due (the heap doubled since the last one).
    pub(crate) fn wants_sweep(&self) -> bool {
        self.heap.len() > SWEEP_FLOOR.max(2 * self.swept)
    }

    /// Keeps only the entries whose call `live` says is still waiting.
    pub(crate) fn sweep(&mut self, mut live: impl FnMut(&Due) -> bool) {
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        entries.retain(|Reverse(due)| live(due));
        self.heap = BinaryHeap::from(entries);
        self.swept = self.heap.len();
    }

    /// The next entry whose deadline has passed (by the clock read now), if any.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Due> {
        if self.heap.peek()?.0.at > now {
            return None;
        }
        self.heap.pop().map(|Reverse(due)| due)
    }

    /// Sets the timer to the earliest deadline and polls it, so the task is woken then.
    /// True when it is due already.
    pub(crate) fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(Reverse(top)) = self.heap.peek() else {
            return false;
        };
        let at = top.at;
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        timer.as_mut().poll(cx).is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn due(at: Instant, seq: u64) -> Due {
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
        let now = Instant::now();
        for (seq, ms) in [(1, 30), (2, 10), (3, 20), (4, 10)] {
            d.push(due(now + Duration::from_millis(ms), seq));
        }
        assert!(d.pop_due(now).is_none());
        let later = now + Duration::from_millis(20);
        let popped: Vec<u64> = std::iter::from_fn(|| d.pop_due(later))
            .map(|d| d.seq)
            .collect();
        assert_eq!(popped, [2, 4, 3], "by deadline, then by number");
    }

    /// Answered calls leave their entries behind; sweeps keep the heap within twice the
    /// live ones (or the floor), however many calls go through.
    #[tokio::test(start_paused = true)]
    async fn sweeps_keep_the_heap_a_small_multiple_of_the_live_calls() {
        let mut d = Deadlines::default();
        let at = Instant::now() + Duration::from_secs(60);
        let mut max = 0;
        for seq in 0..100_000u64 {
            d.push(due(at, seq));
            if d.wants_sweep() {
                // The last 10 are live.
                d.sweep(|due| due.seq + 10 > seq);
            }
            max = max.max(d.heap.len());
        }
        assert!(max <= SWEEP_FLOOR + 1, "{max}");
    }
}
