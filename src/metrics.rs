//! What a channel records through the [`metrics`](::metrics) facade (feature `metrics`).
//!
//! Every name starts with `socketchannel_`, and every metric has the label `channel`:
//! the channel's name ([`Config::name`](crate::Config::name),
//! [`Builder::name`](crate::Builder::name)), or without one, the host a builder channel
//! was built with, or `""` for a channel over a transport of one's own.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `socketchannel_calls_total` | counter | `channel` | calls made, on every path (the methods, both `Service`s) |
//! | `socketchannel_outcomes_total` | counter | `channel`, `outcome`, `sent` | calls resolved: `outcome` is `ok`, or the [`Kind`] in snake case (`connection_lost`, `connect_failed`, `closed`, `server`, `id_in_use`, `unsupported`, `overloaded`, `limit`, `timeout`) with `sent` = `not_sent` or `may_have_executed` ([`Error::is_not_sent`]); `cancelled` (no `sent`) for a call whose future or stream was dropped before its outcome |
//! | `socketchannel_in_flight` | gauge | `channel` | calls written and waiting for their reply ([`Counters::in_flight`](crate::Counters::in_flight)) |
//! | `socketchannel_reconnects_total` | counter | `channel` | connections made after the first ([`Counters::reconnects`](crate::Counters::reconnects)) |
//! | `socketchannel_call_duration_seconds` | histogram | `channel` | from the call being made to its outcome reaching the caller, for every outcome but `cancelled`, for one call in eight, drawn at random ([`Config::latency_sampling`](crate::Config::latency_sampling): 1 times every call) |
//!
//! A call's outcome is what its future resolves to; for a stream
//! ([`Channel::stream`](crate::Channel::stream), or a streamed [`Call`](crate::Call)),
//! its first item, or its end when it has none. So once no call is pending,
//! `calls_total` is the sum of `outcomes_total`.
//!
//! The handles are registered once per channel, when it is built, with the recorder in
//! force then on that thread (a local one, else the global one): install the recorder
//! before building channels. A channel built before any is installed records nothing,
//! ever (its handles are no-ops), though per timed call it still reads the clock twice,
//! and per call counts a reference to its handles. The hot path does no lookup: one
//! outcome counter per kind is registered up front.
//!
//! Calls, outcomes and latency are recorded on the caller's side, as the call is made
//! and as its future resolves; calls in flight and reconnects where
//! [`Stats`](crate::stats) counts them, on the connection task. Latency is sampled because a sample is the costliest thing a
//! recorder is handed: metrics-exporter-prometheus queues every one and folds it into
//! a summary on upkeep.

use std::cell::Cell;
use std::sync::Arc;

// The clock read twice per call: quanta's (the TSC where it is invariant, as metrics-util
// uses), a third of the cost of `std::time::Instant` on a VM's vDSO.
use quanta::Instant;

use ::metrics::{
    Counter, Gauge, Histogram, SharedString, Unit, counter, describe_counter, describe_gauge,
    describe_histogram, gauge, histogram,
};

use crate::error::{Error, Kind};

const CALLS: &str = "socketchannel_calls_total";
const OUTCOMES: &str = "socketchannel_outcomes_total";
const IN_FLIGHT: &str = "socketchannel_in_flight";
const RECONNECTS: &str = "socketchannel_reconnects_total";
const DURATION: &str = "socketchannel_call_duration_seconds";

/// Every [`Kind`], in the order of [`kind_index`], with its label.
const KINDS: [(Kind, &str); 9] = [
    (Kind::ConnectionLost, "connection_lost"),
    (Kind::ConnectFailed, "connect_failed"),
    (Kind::Closed, "closed"),
    (Kind::Server, "server"),
    (Kind::IdInUse, "id_in_use"),
    (Kind::Unsupported, "unsupported"),
    (Kind::Overloaded, "overloaded"),
    (Kind::Limit, "limit"),
    (Kind::Timeout, "timeout"),
];

/// Where a kind's counters are in [`Metrics::failed`] (exhaustive: a new kind must be
/// given a label above).
fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::ConnectionLost => 0,
        Kind::ConnectFailed => 1,
        Kind::Closed => 2,
        Kind::Server => 3,
        Kind::IdInUse => 4,
        Kind::Unsupported => 5,
        Kind::Overloaded => 6,
        Kind::Limit => 7,
        Kind::Timeout => 8,
    }
}

/// One channel's metric handles, registered when it is built.
#[derive(Debug)]
pub(crate) struct Metrics {
    calls: Counter,
    ok: Counter,
    /// By kind ([`kind_index`]), then not sent (0) or may have executed (1).
    failed: [[Counter; 2]; KINDS.len()],
    cancelled: Counter,
    pub(crate) in_flight: Gauge,
    pub(crate) reconnects: Counter,
    duration: Histogram,
    /// One call in this many is timed.
    sampling: u32,
}

impl Metrics {
    /// Registers a channel's handles with the recorder in force, labelled `channel`.
    pub(crate) fn register(channel: impl Into<SharedString>, sampling: u32) -> Self {
        let channel: SharedString = channel.into();
        describe();
        // quanta calibrates its clock on first use: here, not in a call.
        let _ = Instant::now();
        let outcome = |outcome: &'static str| counter!(OUTCOMES, "channel" => channel.clone(), "outcome" => outcome);
        let failed = KINDS.map(|(_, kind)| {
            ["not_sent", "may_have_executed"].map(|sent| {
                counter!(
                    OUTCOMES,
                    "channel" => channel.clone(),
                    "outcome" => kind,
                    "sent" => sent
                )
            })
        });
        Metrics {
            calls: counter!(CALLS, "channel" => channel.clone()),
            ok: outcome("ok"),
            failed,
            cancelled: outcome("cancelled"),
            in_flight: gauge!(IN_FLIGHT, "channel" => channel.clone()),
            reconnects: counter!(RECONNECTS, "channel" => channel.clone()),
            duration: histogram!(DURATION, "channel" => channel),
            sampling: sampling.max(1),
        }
    }

    /// A call is made: counted now, and timed (one in [`SAMPLING`] by default) until
    /// [`Timing::finish`].
    pub(crate) fn start(self: &Arc<Self>) -> Timing {
        self.calls.increment(1);
        Timing {
            metrics: self.clone(),
            started: sampled(self.sampling).then(Instant::now),
            done: false,
        }
    }
}

/// Calls timed by default: one in this many on each thread ([`Config::latency_sampling`]).
///
/// [`Config::latency_sampling`]: crate::Config::latency_sampling
pub(crate) const SAMPLING: u32 = 8;

/// Whether to time this call: a draw of one in `n`, from a per-thread xorshift (a
/// counter would alias with call patterns: a thread alternating two channels with `n`
/// even would time only one of them).
#[inline]
fn sampled(n: u32) -> bool {
    thread_local!(static STATE: Cell<u32> = const { Cell::new(0x9E37_79B9) });
    n == 1
        || STATE.with(|state| {
            let mut x = state.get();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            state.set(x);
            x % n == 0
        })
}

/// The help text and units, for exporters that show them (given again for every channel:
/// recorders keep the last).
fn describe() {
    describe_counter!(CALLS, "Calls made");
    describe_counter!(
        OUTCOMES,
        "Calls resolved, by outcome (ok, or the error kind) and whether an error's request was sent"
    );
    describe_gauge!(IN_FLIGHT, "Calls written and waiting for their reply");
    describe_counter!(RECONNECTS, "Connections made after the first");
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "From a call being made to its outcome reaching the caller"
    );
}

/// One call on its way, on the caller's side. Dropped before [`finish`](Self::finish):
/// the caller gave up on it (`cancelled`).
#[derive(Debug)]
pub(crate) struct Timing {
    metrics: Arc<Metrics>,
    started: Option<Instant>,
    done: bool,
}

impl Timing {
    /// The call's outcome reached its caller: counts it and records its latency.
    pub(crate) fn finish(mut self, outcome: Result<(), &Error>) {
        self.done = true;
        let m = &self.metrics;
        match outcome {
            Ok(()) => m.ok.increment(1),
            Err(err) => {
                let sent = usize::from(err.may_have_executed());
                m.failed[kind_index(err.kind())][sent].increment(1);
            }
        }
        if let Some(started) = self.started {
            m.duration.record(Instant::now().duration_since(started));
        }
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.cancelled.increment(1);
        }
    }
}

/// Finishes `timing`, if the call is timed, with a call's outcome.
pub(crate) fn finish<T>(timing: &mut Option<Timing>, outcome: &Result<T, Error>) {
    if let Some(timing) = timing.take() {
        timing.finish(outcome.as_ref().map(|_| ()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_counters() {
        for (i, (kind, _)) in KINDS.iter().enumerate() {
            assert_eq!(kind_index(*kind), i, "{kind:?}");
        }
    }
}
