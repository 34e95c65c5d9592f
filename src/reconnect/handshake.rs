//! The handshake: what runs on every new connection before any user call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tower::BoxError;

use super::Endpoint;
use crate::channel::Channel;

/// How a handshake ends well.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handshake {
    /// The connection is ready for user calls.
    Ready,
    /// Use another host instead (a sentinel named the current primary): the connection
    /// is dropped and the connect pass starts over at this host, which becomes the
    /// current host.
    Redirect(Endpoint),
}

pub(crate) type HandshakeFuture = Pin<Box<dyn Future<Output = Result<Handshake, BoxError>> + Send>>;

/// The user's handshake, type-erased.
pub(crate) type Hook<Req, Resp> =
    Arc<dyn Fn(Channel<Req, Resp>, Endpoint) -> HandshakeFuture + Send + Sync>;
