//! Request/response clients over one long-lived connection, as [`tower`] middleware.
//!
//! A [`Channel`] carries many concurrent calls over one connection, the way skynet's
//! `socketchannel` does, and is a [`tower::Service`] so it composes with timeouts,
//! retries, limits and load balancing.
//!
//! # Order mode or session mode?
//!
//! Two ways to match a reply to its request:
//!
//! * **[`Order`] mode** (pipelining): requests are written in order and the server
//!   answers in the same order; the n-th reply belongs to the n-th request still
//!   waiting. It needs nothing from the protocol, so it fits Redis, memcached's text
//!   protocol, SMTP and most line protocols. Its cost is **head-of-line blocking**: a
//!   slow reply delays every reply queued behind it.
//! * **[`Session`] mode** (multiplexing): the channel stamps a session id into each
//!   request and the server names that id in its reply, in any order. A slow reply
//!   delays no other. Pick it whenever the protocol has an id field (memcached binary's
//!   `opaque`, DNS, MongoDB's `requestID`, most RPC protocols).
//!   A protocol that can tell the server a caller gave up ([`Sessions::cancel`]) gets
//!   that notice written for every written call whose caller leaves.
//!
//! Both are one engine with two matchers; everything else (write batching,
//! backpressure, cancellation, push frames, the stall timeout, failure semantics) is
//! shared.
//!
//! Writing a codec: see [`guide`]. A call takes one frame, unless it says how many.
//!
//! Either way, one connection task per channel does the codec's work for every call,
//! while the callers run on all the runtime's workers. If encoding a request is costly
//! and the runtime has several workers, encode it on the caller's side (the request
//! type is then the encoded bytes, and the codec copies them): `examples/common/redis.rs`
//! in the repository does this with `Packed`, as redis-rs does with its commands. It
//! pays only where the callers run beside the connection task: in the benchmark (256
//! callers, Redis `PING`) it did 1.29x sending frames on two workers, and 0.88-0.95x on
//! a current-thread runtime, where the callers' encoding and the copy are on the same
//! thread as the task.
//!
//! # Example
//!
//! A line protocol over an in-memory pipe, in order mode:
//!
//! ```
//! use futures::{SinkExt, StreamExt};
//! use socketchannel::{Channel, Order, Plain};
//! use tokio_util::codec::{Framed, LinesCodec};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let (client, server) = tokio::io::duplex(1024);
//!
//! // A server that answers each line in upper case, in order.
//! tokio::spawn(async move {
//!     let mut server = Framed::new(server, LinesCodec::new());
//!     while let Some(Ok(line)) = server.next().await {
//!         server.send(line.to_uppercase()).await.unwrap();
//!     }
//! });
//!
//! let channel = Channel::new(Framed::new(client, LinesCodec::new()), Order::new(Plain));
//! let (a, b) = tokio::join!(channel.request("hello".to_string()), channel.request("world".to_string()));
//! assert_eq!(a?, "HELLO");
//! assert_eq!(b?, "WORLD");
//! # Ok(())
//! # }
//! ```
//!
//! The same over session mode: the channel stamps an id into each request, the server
//! answers out of order, and each caller still gets its own reply.
//!
//! ```
//! use futures::{SinkExt, StreamExt};
//! use socketchannel::{Channel, Protocol, Session, Sessions};
//! use tokio_util::codec::{Framed, LinesCodec};
//!
//! /// Lines that start with their session id: "7 hello".
//! #[derive(Clone)]
//! struct Tagged;
//! impl Protocol<String, String> for Tagged {}
//! impl Sessions<String, String> for Tagged {
//!     type Id = u32;
//!     fn stamp(&self, req: &mut String, id: u32) {
//!         *req = format!("{id} {req}");
//!     }
//!     fn session(&self, resp: &String) -> Option<u32> {
//!         resp.split_once(' ')?.0.parse().ok()
//!     }
//!     // Takes "7 " off a matched reply, so the caller sees "HELLO".
//!     fn unstamp(&self, mut resp: String) -> String {
//!         resp.drain(..resp.find(' ').map_or(0, |i| i + 1));
//!         resp
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let (client, server) = tokio::io::duplex(1024);
//! // A server that reads two requests, then answers the second one first.
//! tokio::spawn(async move {
//!     let mut server = Framed::new(server, LinesCodec::new());
//!     let first = server.next().await.unwrap().unwrap();
//!     let second = server.next().await.unwrap().unwrap();
//!     server.send(second.to_uppercase()).await.unwrap();
//!     server.send(first.to_uppercase()).await.unwrap();
//! });
//!
//! let channel = Channel::new(Framed::new(client, LinesCodec::new()), Session::new(Tagged));
//! let (a, b) = tokio::join!(channel.request("hello".to_string()), channel.request("world".to_string()));
//! assert_eq!(a?, "HELLO");
//! assert_eq!(b?, "WORLD");
//! # Ok(())
//! # }
//! ```
//!
//! # Keeping connected
//!
//! [`Channel::new`] runs over a transport you already have; when it ends, the channel is
//! closed. [`Channel::builder`] makes a channel that connects by itself: lazily on the
//! first call (concurrent callers share one attempt), to a host or its backups, with a
//! handshake on every new connection before any user request ([`Handshake`]: AUTH,
//! SELECT, reading a greeting, a redirect to the primary), and reconnects when the
//! connection is lost: at once under [`Reconnect::Persistent`], on the next call under
//! [`Reconnect::Once`]. Failed connect passes (and a connection lost before it answered
//! a user's call: the handshake's replies do not count) wait out a [`Backoff`]. Calls not yet written survive a reconnect.
//!
//! ```no_run
//! use std::time::Duration;
//! use socketchannel::{Backoff, Channel, Handshake, Plain, Reconnect};
//! use tokio_util::codec::LinesCodec;
//!
//! # fn demo() -> Result<(), socketchannel::InvalidEndpoint> {
//! let channel: Channel<String, String> = Channel::builder()
//!     .host("10.0.0.1:7000")
//!     .backup("10.0.0.2:7000")
//!     .reconnect(Reconnect::Persistent)
//!     .backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)))
//!     .handshake(|conn, _endpoint| async move {
//!         conn.request("AUTH secret".to_string()).await?;
//!         Ok(Handshake::Ready)
//!     })
//!     .order(LinesCodec::new(), Plain)?;
//! # Ok(())
//! # }
//! ```
//!
//! # A tower citizen
//!
//! `Channel` is a [`tower::Service`] of one request, one reply, whose `poll_ready` waits
//! only for real backpressure (a full queue) or a running connect pass, and a
//! [`tower::load::Load`], so `ServiceBuilder` layers (timeout, retry, concurrency limit,
//! buffer, `p2c` balance) work as they should. Every other call shape (several reply
//! frames, a stream, fire-and-forget, multi-part, caller ids) goes through
//! [`Channel::calls`], a `Service<Call<Req>>` whose response is a [`Reply`]. Retry only
//! what [`Error::is_not_sent`] says never reached the server: [`RetryNotSent`] does
//! (over either service, with a retry budget if you give it one), and retries a
//! [`Call::idempotent`] after a lost connection too. For a time limit, prefer the
//! channel's own deadlines ([`Call::deadline`], [`Call::timeout`], a default in
//! [`Config::call_timeout`] or [`Builder::call_timeout`]) to tower's `timeout`: the
//! engine keeps them all in one heap with one timer, a call whose deadline passes while
//! queued is never written, and the [`Kind::Timeout`] error says whether it was sent.
//! [`MuxLayer`] and
//! [`ReconnectLayer`] offer the pieces as layers.
//!
//! # Past one connection: a pool
//!
//! One channel is one connection task: one core's worth of encoding, decoding and
//! matching, and one TCP stream. When that is the limit (measure first: one channel
//! carries a great deal), [`Builder::pool`] (feature `pool`) makes a [`Pool`] of K
//! channels built alike, balanced by tower's `p2c` over their [`Load`](tower::load::Load)
//! with no lock on the hot path. A connection that is connecting, backing off or
//! [leased](Pool::lease) is held out of the choice; when every one is down the pool fails
//! calls fast, *not sent*; the connections connect one at a time and share one backoff,
//! so a dead host sees one connect pass per backoff step. [`PoolBuilder::grow_to`] lets
//! it grow and shrink with the load, at most once per dwell time. A call and its
//! whole reply stay on one connection; calls a task does not await in turn may be
//! answered in any order, and a sequence that needs one connection (a transaction)
//! takes a [`Lease`].
//!
//! ```no_run
//! # #[cfg(feature = "pool")]
//! # async fn demo() -> Result<(), socketchannel::BoxError> {
//! use socketchannel::{Channel, Plain};
//! use tokio_util::codec::LinesCodec;
//!
//! let pool = Channel::<String, String>::builder()
//!     .host("127.0.0.1:7000")
//!     .pool(4)
//!     .order(LinesCodec::new(), Plain)?;
//! let reply = pool.request("PING".to_string()).await?;
//! let tx = pool.lease().await?; // one connection, for this caller alone
//! tx.request("MULTI".to_string()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What to do with an error
//!
//! Every call fails with one [`Error`] (boxed as a [`BoxError`] by the services: downcast
//! it). Two questions decide what a caller does: was it sent ([`Error::is_not_sent`]),
//! and what kind it is ([`Error::kind`]). A gateway in front of the channel maps them
//! so:
//!
//! | Outcome | [`Kind`] | Sent? | Retry? | HTTP | gRPC |
//! |---|---|---|---|---|---|
//! | No host could be connected (or the channel is backing off) | `ConnectFailed` | not sent | yes, after a delay or on another channel | 503 | `UNAVAILABLE` |
//! | Queued when its connection was lost, and the next pass failed | `ConnectFailed` | not sent | yes | 503 | `UNAVAILABLE` |
//! | Written, then the connection was lost (I/O error, EOF, undecodable frame, desync) | `ConnectionLost` | may have executed | only if idempotent | 502 | `UNKNOWN` |
//! | Handed to the transport, but its connection was lost (or closed) before the IO took any of its bytes, over a [`Metered`] IO and codec (the crate's connectors) | `ConnectionLost` (`Closed`) | not sent | yes, from a copy: the codec consumed the request (`RetryNotSent` over `Service<Req>`, `Req: Clone`, keeps one; a [`Call`] has none) | 503 | `UNAVAILABLE` |
//! | Queued on a fixed transport that ended; a [`Call::read`] waiting when its connection was lost | `ConnectionLost` | not sent | a queued call on another channel; a read never (it would take another call's reply) | 503 | `UNAVAILABLE` |
//! | Written, then the server fell silent ([`ConnectionErrorKind::Stalled`]) | `ConnectionLost` | may have executed | only if idempotent | 504 | `DEADLINE_EXCEEDED` |
//! | The channel is closed (`close`, a shutdown, a task that is gone) before it was written | `Closed` | not sent | on another channel only (a closed channel stays closed) | 503 | `UNAVAILABLE` |
//! | Written, then closed (`close`, a shutdown's deadline passed, the task vanished) | `Closed` | may have executed | no (on another channel, if idempotent) | 502 | `UNKNOWN` |
//! | The server answered with an error reply ([`Protocol::check`]) | `Server` | answered | no: it is the answer | by the reply (a missing key 404, a bad argument 400), else 502 | by the reply, else `INTERNAL` |
//! | The server answered that the call did not run ([`Verdict::NotRun`]: Redis `LOADING`) | `Server` | not sent | yes, from a copy (the written request is not in the error) | 503 | `UNAVAILABLE` |
//! | The server answered that it is the wrong one ([`Verdict::WrongServer`]: Redis `READONLY` on a demoted master); the channel leaves it | `Server` | not sent | yes, from a copy: the channel reconnects after a backoff, that host last | 503 | `UNAVAILABLE` |
//! | Queued when the server asked to drain a fixed transport ([`Verdict::Drain`]; a reconnecting channel moves such calls to a new connection instead); the channel closes once the written calls finish | `Closed` | not sent | on another channel only | 503 | `UNAVAILABLE` |
//! | The protocol's [`verdict`](Protocol::verdict) (or [`check`](Protocol::check), or the codec) panicked on its reply: the connection task ends and the channel closes, its other written calls fail so too and its queued ones *not sent* | `Closed` | may have executed | no (on another channel, if idempotent) | 502 | `UNKNOWN` |
//! | The reply outgrew a limit ([`Config::max_reply_frames`]) | `Limit` | may have executed | no | 502 | `INTERNAL` |
//! | `Service::call` without `poll_ready`, intake full | `Overloaded` | not sent | yes, after a delay | 503 | `UNAVAILABLE` |
//! | A caller-supplied session id still in use | `IdInUse` | not sent | no: a caller's bug | 500 | `INTERNAL` |
//! | A call the channel cannot make (an id in order mode, no parts) | `Unsupported` | not sent | no: a caller's bug | 500 | `INTERNAL` |
//! | Its deadline passed while it was queued ([`Call::deadline`], [`Config::call_timeout`]): never written | `Timeout` | not sent | no: its time is up (a retry keeps the deadline) | 504 | `DEADLINE_EXCEEDED` |
//! | Its deadline passed after it was written (its slot or id stays taken until the reply) | `Timeout` | may have executed | no | 504 | `DEADLINE_EXCEEDED` |
//! | tower's `timeout` elapsed (not a channel error) | — | unknown: may have executed | only if idempotent | 504 | `DEADLINE_EXCEEDED` |
//!
//! *May have executed* never maps to a code that tells clients to retry (503,
//! `UNAVAILABLE`): the server may have run it, and a second `INCR` is a wrong answer.
//! [`RetryNotSent`] follows the "Retry?" column, retrying on the service it wraps (so it
//! leaves "on another channel" to you). In code:
//!
//! ```
//! use socketchannel::{BoxError, Error, Kind};
//!
//! /// The HTTP status and gRPC code for a call's error.
//! fn status(err: &BoxError) -> (u16, &'static str) {
//!     let Some(err) = err.downcast_ref::<Error>() else {
//!         // tower's timeout, or another layer's error: the call may have executed.
//!         return (504, "DEADLINE_EXCEEDED");
//!     };
//!     let stalled = err
//!         .connection_error()
//!         .is_some_and(|c| c.kind() == socketchannel::ConnectionErrorKind::Stalled);
//!     match err.kind() {
//!         Kind::IdInUse | Kind::Unsupported => (500, "INTERNAL"),
//!         // Its deadline, sent or not: a retry would start past it.
//!         Kind::Timeout => (504, "DEADLINE_EXCEEDED"),
//!         // The server's word that it did not run the call.
//!         Kind::Server if err.is_not_sent() => (503, "UNAVAILABLE"),
//!         Kind::Server | Kind::Limit => (502, "INTERNAL"),
//!         _ if err.is_not_sent() => (503, "UNAVAILABLE"),
//!         _ if stalled => (504, "DEADLINE_EXCEEDED"),
//!         _ => (502, "UNKNOWN"),
//!     }
//! }
//! # let elapsed: BoxError = "deadline has elapsed".into();
//! # assert_eq!(status(&elapsed), (504, "DEADLINE_EXCEEDED"));
//! ```
//!
//! The source chain says why: [`Error::connection_error`] for a lost connection,
//! [`Error::connect_error`] (every host's failure; its `source()` is the last host's,
//! an `io::Error` for a refused or timed-out connect) for a failed pass, the protocol's
//! own error for a `Server` reply.
//!
//! # Failure semantics
//!
//! Every call resolves exactly once. When a connection dies, calls already written fail
//! as *may have executed* ([`Error::may_have_executed`]), unless none of a call's bytes
//! left: over a [`Metered`] IO and codec (what the crate's connectors frame), a call
//! whose first byte the IO never accepted fails *not sent*, without its request (the
//! codec consumed it). *Not sent* always means the server cannot have executed the
//! call. Calls not yet written wait for
//! the next connection on a reconnecting channel; they fail as *not sent*
//! ([`Error::is_not_sent`]) and give their request back ([`Error::take_request`]) when
//! the channel is over a fixed transport, is closed, or its next connect pass fails. A
//! reply the protocol marks as an error fails its own call only ([`Protocol::check`]).
//!
//! When the channel cannot know, it says *may have executed*: a call whose reply was
//! being delivered when user code panicked, or whose connection task vanished, is never
//! reported *not sent*, so [`RetryNotSent`] cannot run it twice. Multi-frame replies
//! are bounded ([`Config::max_reply_frames`], [`Config::stream_buffer`]); going over
//! fails that call only ([`Kind::Limit`]). The stall timer measures silence, not
//! transfer ([`Config::stall_timeout`]). See `docs/architecture.md` in the repository
//! for the whole picture.
//!
//! # Observability
//!
//! Tracing, through [`tracing`]:
//!
//! * **`call`**, a DEBUG span with the field `shape` (`one`, `many`, `stream`, `send`):
//!   one per call on every path (the methods, `Service<Req>`, [`Calls`]), entered while
//!   the call is queued and whenever its future is polled. A failed call says why in a
//!   DEBUG event in it.
//! * **`socketchannel`**, an INFO span with the fields `channel`, the channel's name
//!   ([`Builder::name`], [`Config::name`]; absent without one), and `host`, the host a
//!   builder channel is built with. Made once per channel, as a root span; the
//!   connection task runs in it (entered on every poll), handshakes included.
//! * **A state change** ([`State`]) is one event in that span with the field `state`,
//!   only when the state changes: INFO for `Ready` (`connected`, with the `endpoint`),
//!   `BackingOff` (`backing off`, with the `delay` and the `failures` in a row) and
//!   `Closed` (`state changed`); DEBUG for `Connecting` (`connecting`, with the
//!   `endpoint`: every attempt of a pass says so, the first with `state`),
//!   `Handshaking` and `Idle` (`state changed`), INFO for `Idle` when a limited backoff
//!   gives up (`giving up until the next call`). A channel's first state is no change: a
//!   channel over a transport of one's own starts `Ready` without an event.
//! * **`session id stamped`**, a DEBUG event with the field `id`, for each session-mode
//!   call as it is written: on the connection task, so in its span, not the call's.
//!   With DEBUG off it costs a level check.
//! * WARN for a host that failed, a failed connect pass, a lost connection, the overload
//!   signal and replies nobody waits for; ERROR for a connection task that panicked.
//!
//! Metrics, with the feature `metrics`, through the
//! [`metrics`](https://docs.rs/metrics) facade. Every metric has the label `channel`:
//! the channel's name, else the host a builder channel is built with, else `""`.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `socketchannel_calls_total` | counter | `channel` | calls made, on every path |
//! | `socketchannel_outcomes_total` | counter | `channel`, `outcome`, `sent` | calls resolved: `outcome` is `ok`, or the [`Kind`] in snake case (`connection_lost`, `server`, ...) with `sent` = `not_sent` or `may_have_executed` ([`Error::is_not_sent`]); or `cancelled` (no `sent`) when the caller dropped its future or stream first |
//! | `socketchannel_in_flight` | gauge | `channel` | calls written and waiting for their reply ([`Counters::in_flight`]) |
//! | `socketchannel_reconnects_total` | counter | `channel` | connections made after the first ([`Counters::reconnects`]) |
//! | `socketchannel_call_duration_seconds` | histogram | `channel` | from the call being made to its outcome reaching the caller (every outcome but `cancelled`) |
//!
//! A call's outcome is what its future resolves to; a stream's is its first item (or
//! its end, when it has none). Once no call is pending, `calls_total` is the sum of
//! `outcomes_total`. Handles are registered once, when the channel is built, with the
//! recorder in force then (the thread's local one, else the global one): **install the
//! recorder before building the channel.** A channel built before records nothing.
//!
//! # Public dependencies
//!
//! Types of these crates appear in this crate's signatures; use the same major
//! versions: [`tower`] 0.5 (`Service`, `Layer`, `load::Load`, `retry::Policy`,
//! [`BoxError`] and [`TpsBudget`], both re-exported here), `tokio` 1 (the runtime,
//! `sync::watch::Receiver` from [`Channel::state`], `sync::mpsc::Receiver` from
//! [`Channel::pushes`]), `tokio-util` 0.7 (`codec::{Encoder, Decoder, Framed}`) and
//! `futures-core` / `futures-sink` 0.3 (the `Stream` and `Sink` a [`Transport`] is).
//! With the feature `rustls`: rustls 0.23 (`ClientConfig`, `RootCertStore`, `ServerName`,
//! re-exported as `socketchannel::rustls`) and tokio-rustls 0.26 (`client::TlsStream`,
//! inside the transport `TlsConnector` makes).
//! Features: `tcp` (default: the TCP and Unix connectors and the builder's `order` and
//! `session`), `rustls` (`TlsConnector`: TLS over the TCP connector through rustls, SNI
//! from each endpoint's host, the user's roots and client certificates; implies `tcp`),
//! `metrics` (see above), `pool` ([`Pool`]: tower's `balance`), `testing` (the
//! simulation's building blocks).
//!
//! # Layout
//!
//! * `mux`: the engine: the intake and the poll loop (`engine`), one connection and what
//!   is tied to it (`conn`), the matchers ([`Order`], [`Session`]), the call envelope
//!   and reply limits (`call`), the stall timer (`stall`).
//! * `reconnect`: the reconnecting task (`task`), connect passes and [`Backoff`]
//!   (`pass`), the handshake and its lane, `close`/`shutdown`/host changes (`control`),
//!   draining connections, the idle ping, endpoints.
//! * `channel`: the [`Channel`] handle, its [`Builder`], call shapes ([`Call`]),
//!   futures, `Service` and `Load`, and the layers that build it ([`MuxLayer`],
//!   [`ReconnectLayer`]).
//! * `pool` (feature `pool`): [`Pool`], K channels behind tower's `p2c`: a handle's
//!   choice (`choose`), the shared list (`members`) and its `Discover` (`discover`), a
//!   connection as the balance sees it (`member`), the sizing (`scale`), [`Lease`],
//!   [`Pushes`], the builder's steps. Its connections take turns at connecting
//!   (`reconnect::turns`).
//! * `meter`: [`Metered`], an IO whose bytes count as progress.
//! * `metrics` (feature `metrics`): a channel's metric handles, and the timing of a call
//!   on the caller's side.
//! * `transport`: what a channel runs over: a [`Transport`] of frames, and a
//!   [`Connector`] that makes one for an [`Endpoint`].
//! * `connect`: [`TcpConnector`] (TCP, happy eyeballs), `UnixConnector` (Unix
//!   sockets), [`SocketConnector`] (either, by the endpoint: the builder's) and
//!   `TlsConnector` (feature `rustls`: TLS over TCP), each framed with a codec.
//! * `protocol`: what the engine must know of a protocol ([`Protocol`], [`Sessions`]).
//! * `retry`: [`RetryNotSent`], the retry policy for calls that never reached the server.
//! * `shared`: what the handle and the task share: the closed flag, the [`State`] watch,
//!   the counters, the overload signal.
//! * `error`, `config`, `stats`, `panic`: [`Error`], [`Config`], [`Counters`], and the
//!   message of a caught panic.
//! * `testing` (feature `testing`): an in-memory network of scripted hosts, a server
//!   log, a ledger of calls and the checks over them, for simulations of whole
//!   lifecycles (the crate's own is `tests/sim`).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod channel;
mod config;
#[cfg(any(feature = "tcp", feature = "testing"))]
mod connect;
mod error;
pub mod guide;
mod meter;
#[cfg(feature = "metrics")]
mod metrics;
mod mux;
mod panic;
#[cfg(feature = "pool")]
mod pool;
mod protocol;
mod reconnect;
mod retry;
mod shared;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;
mod transport;

pub use crate::channel::{
    Builder, Call, Calls, Channel, Connection, IntoCall, MuxLayer, NoRuntime, ReconnectLayer,
    Replies, Reply, ReplyFuture, ReplyStream, ResponseFuture, TaskDropped,
};
pub use crate::config::Config;
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub use crate::connect::TlsConnector;
#[cfg(all(unix, feature = "tcp"))]
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "tcp"))))]
pub use crate::connect::UnixConnector;
#[cfg(feature = "tcp")]
pub use crate::connect::{SocketConnector, SocketStream, TcpConnector};
pub use crate::error::{ConnectionError, ConnectionErrorKind, Error, Kind, LimitError};
#[cfg(unix)]
pub use crate::meter::socket_send_queue;
pub use crate::meter::{Metered, MeteredFramed, Wire};
pub use crate::mux::{Mode, Order, Session};
#[cfg(feature = "pool")]
#[cfg_attr(docsrs, doc(cfg(feature = "pool")))]
pub use crate::pool::{DnsDiscover, Lease, Pool, PoolBuilder, PoolCalls, PoolFuture, Pushes};
pub use crate::protocol::{Plain, Protocol, SessionId, Sessions, Verdict};
pub use crate::reconnect::{
    Backoff, ConnectError, Endpoint, Handshake, IntoHost, InvalidEndpoint, Reconnect, SiblingFailed,
};
pub use crate::retry::RetryNotSent;
pub use crate::shared::State;
pub use crate::stats::Counters;
pub use crate::transport::{Connector, Transport};

/// The rustls that [`TlsConnector`] uses (0.23): its
/// [`ClientConfig`](rustls::ClientConfig) and [`RootCertStore`](rustls::RootCertStore)
/// without a dependency of one's own.
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub use tokio_rustls::rustls;
pub use tower::BoxError;
/// tower's retry budget, for [`RetryNotSent::budget`].
pub use tower::retry::budget::TpsBudget;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
