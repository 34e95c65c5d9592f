//! Keeping a channel connected: endpoints, connect passes, the handshake, backoff.
//!
//! One connection task per channel outlives each transport. It connects lazily (on the
//! first call) or on [`Channel::connect`](crate::Channel::connect), tries the current
//! host then each configured one, runs the handshake on every new connection before any
//! user call, and after a failure backs off before the next pass.
//!
//! * `task`: the task, its phases and its poll loop;
//! * `pass`: one connect pass, backoff, ready and lost connections;
//! * `handshake`: the hook and its lane;
//! * `control`: `close`, `shutdown`, `connect`, host changes;
//! * `drain`: old connections finishing their calls;
//! * `ping`: the idle ping;
//! * `turns`: one connect pass at a time, and one backoff, for channels that connect
//!   together (a pool's);
//! * `backoff`, `endpoint`, `error`, `options`: the settings and the pass's error.

mod backoff;
mod control;
mod drain;
mod endpoint;
mod error;
mod handshake;
mod options;
mod pass;
mod ping;
mod task;
mod turns;

pub use self::backoff::Backoff;
pub use self::endpoint::{Endpoint, IntoHost, InvalidEndpoint};
pub use self::error::ConnectError;
pub use self::handshake::Handshake;
pub use self::options::Reconnect;
pub use self::turns::SiblingFailed;

pub(crate) use self::endpoint::{HostSpec, Hosts};
pub(crate) use self::options::Options;
pub(crate) use self::task::Task;
#[cfg(feature = "pool")]
pub(crate) use self::turns::TurnGate;
pub(crate) use self::turns::Turns;
