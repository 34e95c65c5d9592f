//! Where a channel's connection task runs: spawned at once on the current tokio
//! runtime, or, for a channel made outside one (a `static`, a `LazyLock`, a builder run
//! before the runtime starts), on the runtime of its first call.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::{Channel, Connection};
use crate::error::Cause;
use crate::shared::Shared;

/// A connection task not started yet.
pub(crate) type Deferred = Mutex<Option<Connection>>;

impl<Req, Resp> Channel<Req, Resp> {
    /// Spawns the connection task on the current runtime, or keeps it for the first
    /// call made inside one.
    pub(crate) fn start(mut self, connection: Connection) -> Self {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(connection);
            }
            Err(_) => {
                self.deferred = Some(Arc::new(Mutex::new(Some(connection))));
                self.shared.unstarted.store(true, Ordering::Release);
            }
        }
        self
    }

    /// Spawns a kept connection task on the current runtime; false when there is none
    /// to spawn it on (the call is then refused with [`NoRuntime`]).
    #[inline]
    pub(crate) fn ensure_started(&self) -> bool {
        // Checked twice per call: the started case inlines to one load.
        !self.shared.unstarted.load(Ordering::Acquire) || self.start_kept()
    }

    #[cold]
    fn start_kept(&self) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if let Some(connection) = self.deferred.as_ref().and_then(|d| lock(d).take()) {
            runtime.spawn(connection);
        }
        self.shared.unstarted.store(false, Ordering::Release);
        true
    }
}

impl<Resp> Shared<Resp> {
    /// Why calls are refused beyond the channel being closed: no runtime to start on,
    /// or the task was dropped before it ended.
    pub(crate) fn why_refused(&self) -> Option<Cause> {
        if self.unstarted.load(Ordering::Acquire) {
            return Some(Arc::new(NoRuntime));
        }
        lock(&self.gone).clone()
    }

    /// The connection task was dropped before it ended.
    pub(crate) fn set_gone(&self) {
        *lock(&self.gone) = Some(Arc::new(TaskDropped));
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cause (behind `source()`) of a [`Kind::Closed`](crate::Kind::Closed) error, *not
/// sent*: a call made outside any tokio runtime on a channel made outside one, whose
/// connection task has not started yet. Nothing is closed: a call made inside a runtime
/// starts the task.
#[derive(Debug)]
#[non_exhaustive]
pub struct NoRuntime;

impl fmt::Display for NoRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no tokio runtime to start the channel's connection task on: \
             make the first call from within one",
        )
    }
}

impl std::error::Error for NoRuntime {}

/// The cause (behind `source()`) of a [`Kind::Closed`](crate::Kind::Closed) error: the
/// channel's connection task was dropped before it ended. Its runtime shut down (a
/// channel kept in a `static` outlives a `#[tokio::test]`'s runtime), or the task was
/// aborted. The channel stays closed: make a channel per runtime.
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskDropped;

impl fmt::Display for TaskDropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the channel's connection task was dropped before it ended: its runtime \
             shut down, or it was aborted (make a channel per runtime)",
        )
    }
}

impl std::error::Error for TaskDropped {}
