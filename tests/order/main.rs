//! Order mode (pipelining, FIFO): matching, batching, failure semantics, cancellation,
//! backpressure (issue #2).
//!
//! Every test is bounded in time ([`support::bounded`]); real sockets only ever run on
//! real time.
//!
//! The tests, by concern:
//!
//! * `matching`: FIFO matching, fire-and-forget among requests;
//! * `writes`: write batching, big frames through a tiny pipe;
//! * `failures`: a lost connection, garbage, error replies;
//! * `cancel`: calls dropped before their write, random cancellations (proptest);
//! * `reply_shape`: reply shapes that depend on the request (Contract 10);
//! * `unsolicited`: frames nobody asked for, greetings, pushes;
//! * `backpressure`: `poll_ready`, slots reserved before the end;
//! * `lifecycle`: the last handle goes, an ended channel stays closed;
//! * `test_server`: the test server's own behaviours.
//!
//! What they share is in `common`.

#![cfg(feature = "tcp")]

#[path = "../support/mod.rs"]
mod support;

mod common;

mod backpressure;
mod cancel;
mod failures;
mod lifecycle;
mod matching;
mod reply_shape;
mod test_server;
mod unsolicited;
mod writes;
