//! The stall timer: how long a connection may stay silent while calls wait.
//!
//! The clock runs only while a call that counts waits for its reply
//! ([`Matcher::watched`](super::Matcher::watched)), and the server's signs of life
//! restart it: a frame read, a byte read (over a [`Metered`](crate::Metered) IO, as the
//! crate's own connectors use), and bytes of a request the transport is still taking in
//! (a write that did not go out whole at once). So a large reply or request over a slow
//! link, or a multi-frame reply whose frames keep coming, never stalls; a server that
//! says nothing while calls wait does, even while we keep writing small requests or
//! heartbeats to it, and so does one that stopped reading them. The timer is re-armed lazily: progress only
//! stores an [`Instant`], and the timer, when it fires early, moves to the new deadline.

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::config::deadline;
use crate::error::{ConnectionError, ConnectionErrorKind};

#[derive(Debug, Default)]
pub(crate) struct Stall {
    timer: Option<Pin<Box<Sleep>>>,
    /// Since when the connection has been silent with calls waiting; `None` while the
    /// clock does not run.
    quiet_since: Option<Instant>,
}

impl Stall {
    /// Called once per engine iteration: `watched` says whether the clock runs; `heard`
    /// is the time (read once by the engine) when the iteration saw progress that
    /// restarts the clock.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        limit: Duration,
        watched: bool,
        heard: Option<Instant>,
    ) -> Result<(), ConnectionError> {
        if !watched {
            self.quiet_since = None;
            return Ok(());
        }
        if let Some(now) = heard {
            self.quiet_since = Some(now);
        } else if self.quiet_since.is_none() {
            self.quiet_since = Some(Instant::now());
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        while timer.as_mut().poll(cx).is_ready() {
            let Some(since) = self.quiet_since else {
                return Ok(());
            };
            let due = deadline(since, limit);
            if due <= Instant::now() {
                debug!(?limit, "stall timeout: no progress while calls waited");
                return Err(ConnectionError::new(ConnectionErrorKind::Stalled, None));
            }
            timer.as_mut().reset(due);
        }
        Ok(())
    }
}
