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
//! Always bounded: a flush is held only when the read stopped at its limit (so another
//! pass comes at once: the replies are there to read), and for [`MAX_HELD`] passes in a
//! row at most (a stream of frames that wake nobody cannot keep a call in the buffer).

/// Passes in a row a flush may wait for at most. Two cover a window of 256 calls read
/// in four passes of 64; the third is slack for callers slow to send theirs.
const MAX_HELD: u8 = 3;

/// What a connection wrote since its last flush.
#[derive(Debug, Default)]
pub(crate) struct Unflushed {
    /// Frames handed to the sink since the last flush.
    frames: usize,
    /// Passes in a row that held the flush.
    held: u8,
}

impl Unflushed {
    /// A frame was handed to the sink.
    #[inline]
    pub(crate) fn wrote(&mut self) {
        self.frames += 1;
    }

    /// The sink is flushed.
    #[inline]
    pub(crate) fn flushed(&mut self) {
        *self = Unflushed::default();
    }

    /// Whether this pass leaves its flush to the next one: its read stopped at the
    /// pass's limit (`more`: frames are still ready, so a pass follows at once), fewer
    /// than half of the `in_flight` calls wait unflushed, and no earlier pass held it
    /// [`MAX_HELD`] times in a row. Counts the hold.
    #[inline]
    pub(crate) fn hold(&mut self, more: bool, in_flight: usize) -> bool {
        let hold = more && self.held < MAX_HELD && self.frames.saturating_mul(2) < in_flight;
        self.held = if hold { self.held + 1 } else { 0 };
        hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrote(n: usize) -> Unflushed {
        let mut u = Unflushed::default();
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
}
