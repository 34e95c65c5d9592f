//! When a pass flushes what it wrote: at once, unless the replies still waiting in the
//! read buffer will wake callers whose calls can join the same write.
//!
//! A read pass routes at most `READ_BATCH` frames; the callers they wake send their
//! next calls before the next pass (the yield in `poll_conn`). At 256 callers the
//! replies of one socket read take four passes, and a flush in each made four writes
//! per window of calls: each write on loopback also runs the server's side of TCP and
//! wakes the server, the largest share of the channel's CPU per request. Held while
//! more replies are ready and fewer than half of the calls in flight wait in the
//! buffer, a window goes out in two writes: the server works on one half while the
//! callers make the other.
//!
//! A held call waits for the callers the replies woke, so a hold is made only where
//! that wait is short and known to be:
//!
//! * the read stopped at its limit (so another pass comes as soon as those callers ran:
//!   the replies are there to read) and most of its frames completed calls (frames of
//!   a long reply or pushes wake nobody who would write), and for [`MAX_HELD`] passes in
//!   a row at most (a stream of frames cannot keep a call in the buffer);
//! * the pass after the last such read came within [`QUICK`] of it, less than [`FRESH`]
//!   ago: callers that work for a while after their reply (or a busy thread) turn holds
//!   off until a pass comes quickly again, so the server is not left idle while they
//!   work, and a verdict from before an idle spell does not count;
//! * nothing written since the last flush has told its caller it went out (a
//!   fire-and-forget `send` resolves once handed to the sink): a `close` right after
//!   it would drop it unflushed.

use std::time::Duration;

use tokio::time::Instant;

/// Passes in a row a flush may wait for at most. Two cover a window of 256 calls read
/// in four passes of 64; the third is slack for callers slow to send theirs.
const MAX_HELD: u8 = 3;

/// The longest a pass may come after a read that stopped at its limit for the next
/// such read to hold its flush. At 256 callers a pass of 64 replies and the callers it
/// wakes take some tens of microseconds (the whole channel spends 0.5 us of CPU a
/// request at 16 B, 0.8 at 1 KiB); a caller that works a millisecond is well past it.
const QUICK: Duration = Duration::from_micros(250);

/// How long a verdict of [`QUICK`] holds: a few windows of calls at 256 callers.
const FRESH: Duration = Duration::from_millis(2);

/// What a connection wrote since its last flush, and whether holding it has been cheap.
#[derive(Debug, Default)]
pub(crate) struct Unflushed {
    /// Frames handed to the sink since the last flush.
    frames: usize,
    /// Passes in a row that held the flush.
    held: u8,
    /// A frame written since the last flush told its caller it went out.
    promised: bool,
    /// When the last pass whose read was full (see [`hold`](Self::hold)) ended, until
    /// the next pass.
    full_at: Option<Instant>,
    /// When the pass after such a read last came within [`QUICK`] of it; `None` after
    /// one that came later.
    quick_at: Option<Instant>,
}

impl Unflushed {
    /// A frame was handed to the sink.
    #[inline]
    pub(crate) fn wrote(&mut self) {
        self.frames += 1;
    }

    /// Nothing was handed to the sink since its last flush.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// A call written since the last flush was told it went out (a fire-and-forget).
    #[inline]
    pub(crate) fn promised(&mut self) {
        self.promised = true;
    }

    /// The sink is flushed.
    #[inline]
    pub(crate) fn flushed(&mut self) {
        self.frames = 0;
        self.held = 0;
        self.promised = false;
    }

    /// A pass begins: if the last one's read was full, how long the callers it woke
    /// took decides whether holds are on. One clock read, only after such a pass.
    #[inline]
    pub(crate) fn begin(&mut self) {
        if let Some(at) = self.full_at.take() {
            let now = Instant::now();
            self.quick_at = (now.saturating_duration_since(at) <= QUICK).then_some(now);
        }
    }

    /// A pass ended, its read full or not. One clock read, only after a full one.
    #[inline]
    pub(crate) fn end(&mut self, full: bool) {
        self.full_at = full.then(Instant::now);
    }

    /// Whether this pass leaves its flush to the next one: its read was `full` (it
    /// stopped at the pass's limit, so a pass follows once the callers it woke ran, and
    /// most of its frames completed calls), holds are on (the pass after the last full
    /// read came quickly, and lately), nothing unflushed was promised to its caller,
    /// fewer than half of the `in_flight` calls wait unflushed, and no earlier pass held
    /// it [`MAX_HELD`] times in a row. Counts the hold.
    #[inline]
    pub(crate) fn hold(&mut self, full: bool, in_flight: usize) -> bool {
        let hold = full
            && !self.promised
            && self.held < MAX_HELD
            && self.frames.saturating_mul(2) < in_flight
            && self.quick_at.is_some_and(|at| at.elapsed() <= FRESH);
        self.held = if hold { self.held + 1 } else { 0 };
        hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` frames written, on a connection whose passes have come quickly.
    fn wrote(n: usize) -> Unflushed {
        let mut u = Unflushed {
            quick_at: Some(Instant::now()),
            ..Unflushed::default()
        };
        (0..n).for_each(|_| u.wrote());
        u
    }

    #[test]
    fn a_drained_read_flushes_at_once() {
        assert!(!wrote(1).hold(false, 256));
        assert!(!wrote(0).hold(false, 256));
    }

    #[test]
    fn a_window_goes_out_in_two_writes() {
        // 64 replies routed, their 64 calls written: a quarter of 256 in flight.
        let mut u = wrote(64);
        assert!(u.hold(true, 256));
        // The next 64: half of the window waits, it goes out.
        (0..64).for_each(|_| u.wrote());
        assert!(!u.hold(true, 256));
    }

    #[test]
    fn few_calls_in_flight_are_never_held() {
        // A lone call beside a long stream: half of what is in flight.
        assert!(!wrote(1).hold(true, 2));
        assert!(!wrote(1).hold(true, 1));
        assert!(!wrote(0).hold(true, 0));
    }

    #[test]
    fn a_flush_waits_three_passes_at_most() {
        // Frames that wake nobody (pushes, a long stream) keep the read at its limit.
        let mut u = wrote(1);
        for _ in 0..MAX_HELD {
            assert!(u.hold(true, 100));
        }
        assert!(!u.hold(true, 100));
        // The count starts again after a pass that flushed.
        assert!(u.hold(true, 100));
    }

    #[test]
    fn a_promise_to_a_caller_is_flushed_at_once() {
        let mut u = wrote(1);
        u.promised();
        assert!(!u.hold(true, 256));
        u.flushed();
        u.wrote();
        assert!(u.hold(true, 256), "the next batch holds again");
    }

    #[test]
    fn holds_wait_for_a_quick_pass_and_stop_after_a_slow_one() {
        // A fresh connection has seen no pass after a full read: no hold.
        let mut u = Unflushed::default();
        u.wrote();
        assert!(!u.hold(true, 256));
        // The pass after a full read came at once: holds are on.
        u.end(true);
        u.begin();
        assert!(u.hold(true, 256), "a pass within QUICK turns holds on");
        // The callers worked for a while before the next pass: off from that pass on.
        u.full_at = Instant::now().checked_sub(QUICK * 2);
        u.begin();
        assert!(!u.hold(true, 256));
        // A pass after a read that was not full leaves the verdict as it is.
        u.end(false);
        u.begin();
        assert!(!u.hold(true, 256));
        // Quick again.
        u.end(true);
        u.begin();
        assert!(u.hold(true, 256));
    }

    #[test]
    fn a_verdict_from_before_an_idle_spell_does_not_count() {
        let mut u = wrote(1);
        u.quick_at = Instant::now().checked_sub(FRESH * 2);
        assert!(!u.hold(true, 256));
    }
}
