//! How a reconnecting channel connects: the policy after a failed pass, and the options
//! the builder hands the connection task.

use std::sync::Arc;
use std::time::Duration;

use super::backoff::Backoff;
use super::handshake::Hook;

/// When a reconnecting channel connects again: after a failed pass, and after a lost
/// connection. (Named so it does not collide with [`tower::retry::Policy`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reconnect {
    /// One pass over the hosts when a call needs a connection; if every host fails, the
    /// waiting calls fail as *not sent*, and the next pass waits for the backoff and for
    /// the next call (skynet's `request`).
    #[default]
    Once,
    /// Keep trying, with backoff, until closed, whether or not calls wait (skynet's
    /// `connect(false)`). Calls that arrive while it backs off fail as *not sent*.
    Persistent,
}

/// How a reconnecting channel connects.
pub(crate) struct Options<Req, Resp> {
    pub(crate) reconnect: Reconnect,
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) handshake_timeout: Option<Duration>,
    pub(crate) drain_timeout: Duration,
    pub(crate) handshake: Option<Hook<Req, Resp>>,
    pub(crate) idle_ping: Option<(Duration, Arc<dyn Fn() -> Req + Send + Sync>)>,
    pub(crate) queue: usize,
    pub(crate) max_in_flight: usize,
    /// Connect as soon as the task starts, not on the first call.
    pub(crate) eager: bool,
    pub(crate) orphans: crate::config::Orphans,
    pub(crate) orphan_age: Option<Duration>,
    pub(crate) max_connection_age: Option<Duration>,
    /// Takes turns at connecting with the other connections of a pool.
    pub(crate) turns: Option<super::Turns>,
}

// By hand: a derive would ask `Req: Clone` and `Resp: Clone`.
impl<Req, Resp> Clone for Options<Req, Resp> {
    fn clone(&self) -> Self {
        Options {
            reconnect: self.reconnect,
            backoff: self.backoff.clone(),
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
            drain_timeout: self.drain_timeout,
            handshake: self.handshake.clone(),
            idle_ping: self.idle_ping.clone(),
            queue: self.queue,
            max_in_flight: self.max_in_flight,
            eager: self.eager,
            orphans: self.orphans,
            orphan_age: self.orphan_age,
            max_connection_age: self.max_connection_age,
            turns: self.turns.clone(),
        }
    }
}
