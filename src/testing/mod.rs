//! Building blocks of a deterministic simulation of whole lifecycles, for driver authors
//! who want to test their own codecs on the failure paths (feature `testing`).
//!
//! The crate's own simulation (`tests/sim` in the repository) is made of these parts:
//!
//! * [`Net`]: an in-memory network of named hosts, each with a [`Behavior`] (up,
//!   refusing, a black hole, flapping, slow, silent, crashing after some frames,
//!   resetting mid-frame, trickling bytes, sending one frame and closing), and
//!   optionally a drain notice after some frames ([`Net::drain_after`]), writes cut
//!   after some bytes ([`Net::cut_client_writes`]), a dead address its name resolves
//!   to first, raced as the crate's TCP connector races addresses
//!   ([`Net::dead_first_address`]), and, with the feature `rustls`, TLS on every
//!   connection through the code of the crate's `TlsConnector` (`Net::tls`). Its
//!   [`connector`](Net::connector) is a [`Connector`](crate::Connector) for
//!   [`Builder::connector`](crate::Builder::connector). The far end of every
//!   connection is served by your [`Server`]: it decodes requests with your codec,
//!   says what it executed and what it answers.
//! * [`ServerLog`]: what every connection of every host read, executed and wrote, with
//!   virtual timestamps.
//! * [`Ledger`]: every call a test makes and how it resolved.
//! * [`checks`]: the properties the crate promises, checked over a ledger and a server
//!   log (each call resolved once, every reply reached its own caller, a call that
//!   failed *not sent* was never executed, no request executed twice, the handshake's
//!   frames first on every connection, a stall only after silence, connect passes name
//!   every configured host, connect rates under the backoff's bound, the gauges back to
//!   zero when idle).
//! * [`SimRng`]: a small seeded random source, so a seed is a whole scenario.
//! * [`Trace`]: an event log with virtual timestamps; the same seed gives the same log.
//!
//! A driver's own codec on a failure path, end to end:
//!
//! ```
//! use std::time::Duration;
//! use socketchannel::testing::{
//!     checks, Behavior, ConnInfo, Described, Ledger, Net, Outcome, ReplyTag, Served, Server, Trace,
//! };
//! use socketchannel::{Channel, Order, Plain};
//! use tokio_util::codec::LinesCodec;
//!
//! /// A line server: executes each line (a number, the call's nonce) and echoes it.
//! struct Echo;
//!
//! impl Server for Echo {
//!     type Req = String;
//!     type Resp = String;
//!     type Codec = LinesCodec;
//!     fn codec(&self) -> LinesCodec {
//!         LinesCodec::new()
//!     }
//!     fn describe(&self, req: &String) -> Described {
//!         Described { nonce: req.parse().ok(), handshake: false, text: req.clone() }
//!     }
//!     fn serve(&self, _conn: &ConnInfo, req: String) -> Served<String> {
//!         Served { executed: true, replies: vec![(Duration::from_millis(10), req)] }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let trace = Trace::new();
//! let net = Net::new(Echo, LinesCodec::new(), trace.clone());
//! net.set("db:1", Behavior::CrashAfter(1));
//! let ch: Channel<String, String> = Channel::builder()
//!     .host("db:1")
//!     .connector(net.connector(0), Order::new(Plain))
//!     .unwrap();
//!
//! let ledger = Ledger::new(trace.clone());
//! for nonce in 1..=2u64 {
//!     let id = ledger.open(0, nonce, "request", false, false);
//!     let outcome = match ch.request(nonce.to_string()).await {
//!         Ok(reply) => Outcome::Replies(vec![ReplyTag {
//!             nonce: reply.parse().unwrap(),
//!             conn: None,
//!             any_caller: false,
//!         }]),
//!         Err(e) => Outcome::failed(&e, |_| None),
//!     };
//!     ledger.resolve(id, outcome);
//! }
//! let log = net.log();
//! let found: Vec<_> = [
//!     checks::resolved_once(&ledger),
//!     checks::own_reply(&ledger),
//!     checks::not_sent_not_executed(&ledger, &log),
//!     checks::executed_at_most_once(&ledger, &log),
//! ]
//! .concat();
//! assert!(found.is_empty(), "{found:?}");
//! # }
//! ```
//!
//! Run everything on a current-thread runtime with paused time
//! (`tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true)`):
//! no real I/O is involved, so a scenario of minutes runs in milliseconds and replays
//! exactly. Tokio draws some choices at random, per process, whatever the seed: use
//! `biased;` in any `tokio::select!` of your own, and wake several tasks with a `Notify`,
//! not a `watch` (a watch wakes its waiters in a random order). The crate's own paths and
//! [`Net`] do so.

mod checks_impl;
mod ledger;
mod net;
mod rng;

pub use self::ledger::{CallRecord, Ledger, Outcome, ReplyTag};
pub use self::net::{
    Behavior, ConnInfo, Connecting, Described, Net, Pipe, Record, Served, Server, ServerLog, What,
};
pub use self::rng::SimRng;

/// The checks over a [`Ledger`] and a [`ServerLog`]; each returns the [`Violation`]s it
/// found.
pub mod checks {
    pub use super::checks_impl::*;
}

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// An event log with virtual timestamps, shared by the parts of a simulation.
#[derive(Debug, Clone)]
pub struct Trace {
    epoch: Instant,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Trace {
    /// A log whose timestamps count from now.
    pub fn new() -> Self {
        Trace {
            epoch: Instant::now(),
            lines: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Virtual time since the log was made.
    pub fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }

    /// The instant the log counts from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Appends a line, stamped with the virtual time in milliseconds.
    pub fn log(&self, line: impl AsRef<str>) {
        let line = format!("{:>8} {}", self.now().as_millis(), line.as_ref());
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines[lines.len().saturating_sub(n)..].to_vec()
    }
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}

/// A property that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The check's name.
    pub check: &'static str,
    /// What was seen.
    pub detail: String,
}

impl Violation {
    /// A violation of `check`.
    pub fn new(check: &'static str, detail: impl Into<String>) -> Self {
        Violation {
            check,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.check, self.detail)
    }
}
