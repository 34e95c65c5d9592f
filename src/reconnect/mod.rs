//! Keeping a channel connected: endpoints, connect passes, the handshake, backoff.
//!
//! One connection task per channel outlives each transport. It connects lazily (on the
//! first call) or on [`Channel::connect`](crate::Channel::connect), tries the current
//! host then each backup, runs the handshake on every new connection before any user
//! call, and after a failure backs off before the next pass.

mod backoff;
mod endpoint;
mod error;
mod handshake;
mod layer;
mod worker;

pub use self::backoff::Backoff;
pub use self::endpoint::{Endpoint, InvalidEndpoint};
pub use self::error::ConnectError;
pub use self::handshake::Handshake;
pub use self::layer::ReconnectLayer;
pub use self::worker::Policy;

pub(crate) use self::endpoint::{HostSpec, Hosts};
pub(crate) use self::worker::{Options, Reconnect};
