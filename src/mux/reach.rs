//! How far a connection's bytes went: where the calls' bytes begin in its stream, and
//! how much of that stream the IO accepted. When the connection ends, a call whose first
//! byte the IO never took cannot have reached the server: it fails *not sent*.
//!
//! Both counts come from [`Metered`](crate::Metered): the codec's (bytes each frame
//! encoded to, read around each `start_send`) and the IO's (bytes each write accepted,
//! read around each pass over the transport, `Engine::poll_conn`). Every write to the
//! IO happens inside such a pass, so `accepted` is never short of what went out; more
//! than that (bytes a connector queued itself) only makes calls look more written.
//!
//! Calls are written in the order of their sequence numbers, so one number says which
//! never left: the first call whose bytes begin at or after `accepted`, and every call
//! after it. The calls not yet known to have left are kept with where they begin, and
//! dropped from the front as the IO takes their first bytes: over a socket that keeps
//! up, none stays past the pass that wrote it.

use std::collections::VecDeque;

use crate::meter::{self, Mark};

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Reach {
    /// Bytes the frames handed over encoded to: where the next one begins.
    encoded: u64,
    /// Bytes the IO accepted.
    accepted: u64,
    /// The calls written whose first byte the IO may not have taken yet, in order: their
    /// sequence number and where their bytes begin.
    unsure: VecDeque<(u64, u64)>,
    /// Every frame handed over was counted by a metered codec (none encoded to
    /// nothing), and `unsure` stayed within the calls that can wait: the offsets hold.
    codec: bool,
    /// Writes or flushes were seen reaching a metered IO: its count is the IO's.
    io: bool,
}

impl Default for Reach {
    fn default() -> Self {
        Reach {
            encoded: 0,
            accepted: 0,
            unsure: VecDeque::new(),
            codec: true,
            io: false,
        }
    }
}

impl Reach {
    /// A call numbered `seq` is about to be handed over: its bytes begin where the next
    /// frame's do. `waiting`: the calls waiting on the connection, this one included. A
    /// call the IO has not taken a byte of cannot have been answered, so it still
    /// waits: more unsure calls than that means the counts are not this stream's (an IO
    /// that is not metered never takes a byte), and nothing is tracked from then on.
    #[inline]
    pub(crate) fn call(&mut self, seq: u64, waiting: usize) {
        if !self.codec {
            return;
        }
        // This call is among the waiting, not yet among the unsure.
        if self.unsure.len() >= waiting {
            self.codec = false;
            self.unsure = VecDeque::new();
            return;
        }
        self.unsure.push_back((seq, self.encoded));
    }

    /// A frame was handed over, with the codecs' count at `before` (`meter::encoded`).
    #[inline]
    pub(crate) fn encoded_since(&mut self, before: u64) {
        let n = meter::encoded().wrapping_sub(before);
        // Nothing counted: not a metered codec (or an empty frame): where the calls
        // after it begin is unknown, so none is called unsent.
        self.codec &= n != 0;
        self.encoded = self.encoded.wrapping_add(n);
    }

    /// What the IO moved in one pass.
    #[inline]
    pub(crate) fn moved(&mut self, moved: Mark) {
        self.accepted = self.accepted.wrapping_add(moved.written);
        self.io |= moved.tries != 0;
        // The calls whose first byte the IO has now taken, at once (a pass takes many).
        let accepted = self.accepted;
        let left = self.unsure.partition_point(|&(_, start)| start < accepted);
        self.unsure.drain(..left);
    }

    /// On a connection that has ended: the first call none of whose bytes the IO
    /// accepted; it and every call after it cannot have reached the server. `None`
    /// when every call may have (or the counts are not exact).
    pub(crate) fn never_left(&self) -> Option<u64> {
        if !(self.codec && self.io) {
            return None;
        }
        self.unsure
            .iter()
            .find(|&&(_, start)| start >= self.accepted)
            .map(|&(seq, _)| seq)
    }
}
