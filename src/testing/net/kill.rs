//! A host's kill switch: [`Net::kill`](super::Net::kill) drops every connection the
//! host had accepted before it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Each kill bumps the generation and wakes the connections that wait on it, in the order
/// they began to wait. (A `watch` wakes its waiters in a random order, drawn per process,
/// so the same seed would not give the same log in another process.)
#[derive(Default)]
pub(super) struct Kill {
    generation: AtomicU64,
    woken: Notify,
}

impl Kill {
    /// Kills what was accepted so far.
    pub(super) fn fire(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.woken.notify_waiters();
    }

    /// The generation now: [`killed`](Kill::killed) waits for the next one.
    pub(super) fn now(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Resolves once a kill comes after generation `seen`.
    pub(super) async fn killed(self: Arc<Self>, seen: u64) {
        loop {
            let woken = self.woken.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.now() != seen {
                return;
            }
            woken.await;
        }
    }
}
