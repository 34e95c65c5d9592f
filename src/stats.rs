//! Counters a channel keeps about its traffic.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters, written by the connection task, read by anyone.
#[derive(Debug)]
pub(crate) struct Stats {
    /// The channel's metric handles (feature `metrics`): the in-flight gauge and the
    /// reconnect counter follow the counters here; the callers' side records the rest.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: std::sync::Arc<crate::metrics::Metrics>,
    sent: AtomicU64,
    received: AtomicU64,
    in_flight: AtomicU64,
    unknown: AtomicU64,
    pushes: AtomicU64,
    push_overflow: AtomicU64,
    skipped: AtomicU64,
    reconnects: AtomicU64,
    retired: AtomicU64,
    cancel_notices: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
}

/// A snapshot of a channel's counters ([`Channel::counters`](crate::Channel::counters)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Calls whose frames were handed to a transport.
    pub sent: u64,
    /// Reply frames read (push frames included).
    pub received: u64,
    /// Calls written and waiting for their reply.
    pub in_flight: u64,
    /// Replies dropped because no call waited for them (session mode: an unknown id or a
    /// duplicate reply; a frame without an id and no read waiting).
    pub unknown: u64,
    /// Push frames handed to the push receiver.
    pub pushes: u64,
    /// Push frames dropped because the push receiver was full or gone.
    pub push_overflow: u64,
    /// Calls dropped before they were written because their caller was gone.
    pub skipped: u64,
    /// Connections made after the first one.
    pub reconnects: u64,
    /// Connections retired because too many of their calls were orphans
    /// ([`Config::max_orphans`](crate::Config::max_orphans)), they reached their
    /// maximum age ([`Builder::max_connection_age`](crate::Builder::max_connection_age)),
    /// or the server asked for a drain or said it is the wrong one
    /// ([`Verdict`](crate::Verdict)).
    pub retired: u64,
    /// Cancel notices written ([`Sessions::cancel`](crate::Sessions::cancel)), counted
    /// once the sink took them: one per written call whose caller left (or that a
    /// deadline or a reply limit failed) before its reply.
    pub cancel_notices: u64,
    /// Bytes read from the transport's IO, when it is [`Metered`](crate::Metered) (the
    /// crate's own connectors' is).
    pub bytes_read: u64,
    /// Bytes the transport's IO accepted for writing, when it is
    /// [`Metered`](crate::Metered).
    pub bytes_written: u64,
    /// Reads from the transport's IO that returned bytes, when it is
    /// [`Metered`](crate::Metered): `bytes_read / reads` is the mean read, and reads
    /// per call how well the read buffer batches replies.
    pub reads: u64,
    /// Writes to the transport's IO that it accepted bytes of, when it is
    /// [`Metered`](crate::Metered): a system call each over a socket, so writes per
    /// call below 1 is how much the connection coalesces calls.
    pub writes: u64,
}

macro_rules! bump {
    ($($name:ident),*) => {$(
        pub(crate) fn $name(&self, n: u64) {
            self.$name.fetch_add(n, Relaxed);
        }
    )*};
}

impl Stats {
    pub(crate) fn new(
        #[cfg(feature = "metrics")] metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        Stats {
            #[cfg(feature = "metrics")]
            metrics,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            push_overflow: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            cancel_notices: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    bump!(
        sent,
        received,
        unknown,
        pushes,
        push_overflow,
        skipped,
        retired,
        cancel_notices
    );

    pub(crate) fn reconnects(&self, n: u64) {
        self.reconnects.fetch_add(n, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.reconnects.increment(n);
    }

    /// Each connection reports the change of its own count, so the gauge is the sum
    /// over a connection and those draining beside it.
    pub(crate) fn in_flight_changed(&self, from: usize, to: usize) {
        if to > from {
            self.in_flight.fetch_add((to - from) as u64, Relaxed);
            #[cfg(feature = "metrics")]
            self.metrics.in_flight.increment((to - from) as f64);
        } else if from > to {
            self.in_flight.fetch_sub((from - to) as u64, Relaxed);
            #[cfg(feature = "metrics")]
            self.metrics.in_flight.decrement((from - to) as f64);
        }
    }

    /// Adds what the transport's IO moved.
    pub(crate) fn moved(&self, moved: crate::meter::Mark) {
        self.bytes_read.fetch_add(moved.read, Relaxed);
        self.bytes_written.fetch_add(moved.written, Relaxed);
        self.reads.fetch_add(moved.reads, Relaxed);
        self.writes.fetch_add(moved.writes, Relaxed);
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn snapshot(&self) -> Counters {
        Counters {
            sent: self.sent.load(Relaxed),
            received: self.received.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            unknown: self.unknown.load(Relaxed),
            pushes: self.pushes.load(Relaxed),
            push_overflow: self.push_overflow.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            retired: self.retired.load(Relaxed),
            cancel_notices: self.cancel_notices.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
        }
    }
}

impl std::ops::Add for Counters {
    type Output = Counters;

    /// Field by field: the counters of several channels (a [`Pool`](crate::Pool)'s)
    /// as one.
    fn add(self, other: Counters) -> Counters {
        Counters {
            sent: self.sent + other.sent,
            received: self.received + other.received,
            in_flight: self.in_flight + other.in_flight,
            unknown: self.unknown + other.unknown,
            pushes: self.pushes + other.pushes,
            push_overflow: self.push_overflow + other.push_overflow,
            skipped: self.skipped + other.skipped,
            reconnects: self.reconnects + other.reconnects,
            retired: self.retired + other.retired,
            cancel_notices: self.cancel_notices + other.cancel_notices,
            bytes_read: self.bytes_read + other.bytes_read,
            bytes_written: self.bytes_written + other.bytes_written,
            reads: self.reads + other.reads,
            writes: self.writes + other.writes,
        }
    }
}
