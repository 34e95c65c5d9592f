//! The reliability catalogue (`docs/reliability.md` maps every scenario to its tests):
//! named tests `sNN_...` for the scenarios, most of them over real loopback sockets, with
//! the fault-injecting proxy ([`support::proxy`]) where a fault is on the wire (a cut
//! mid-frame, one-byte writes, a stalled peer, latency). Scenario 31 is `tests/chaos.rs`.
//!
//! Every test checks, besides its own point (the scenario 28 tests, whose connection task
//! is killed, check what is left of this):
//!
//! * every call resolves, once, within a bound, with its own reply or the right typed
//!   error (`is_not_sent` / `may_have_executed` / `kind` / the connection error's kind);
//! * the channel's bookkeeping is back to empty (`counters().in_flight == 0`);
//! * no task is left behind: `close()` reaches `State::Closed` and, once the last handle
//!   is dropped, the connection task (spawned by the test from `pair`) ends;
//! * no socket is left behind: the servers and proxies have no connection open.
//!
//! Real sockets always run on real time; every wait is bounded.
//!
//! The tests, by concern (scenario numbers in parentheses):
//!
//! * `connection`: the connection ends under the calls (1-4);
//! * `hosts`: refused, blackholed and crash-looping hosts, single flight, backoff
//!   (5, 6, 25, 26, 33);
//! * `handshake`: rejected, silent, first on every connection (7-10);
//! * `cancel`: callers that give up, the in-flight limit, a small soak (11-14, 27, 30);
//! * `ids`: session ids, unknown, extra and duplicate replies (14-17);
//! * `stall`: silent and slow peers, head-of-line blocking (13, 22-24);
//! * `frames`: malformed frames, one byte at a time, big frames (18-21);
//! * `lifecycle`: the connection task dies, the last handle goes, drains (28, 29, 32);
//! * `proxy`: the fault-injecting proxy itself.
//!
//! What they share: `common` (the channels and the end-of-test checks), `recording` (a
//! connector that records its attempts), `scripted` (a loopback server answering by a
//! script), `one_byte` (in-memory transports that move one byte at a time).

#![cfg(feature = "tcp")]

#[path = "../support/mod.rs"]
mod support;

mod common;
mod one_byte;
mod recording;
mod scripted;

mod cancel;
mod connection;
mod frames;
mod handshake;
mod hosts;
mod ids;
mod lifecycle;
mod proxy;
mod slow_reader;
mod stall;
