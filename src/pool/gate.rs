//! Single flight for a pool's connects: its members dial one at a time, and a member
//! does not dial a host a sibling just failed to reach.
//!
//! Each member's connection task runs its own connect passes and backoff, over a
//! [`Gated`] connector that shares one [`Gate`] with its siblings. The gate lets one
//! dial run at a time, and remembers the last failed dial of each host. A member whose
//! pass reaches a host that a sibling failed to reach since this member last dialed it
//! fails that host at once, with the sibling's error: the member that failed keeps
//! probing the host on its own backoff, the others follow it. One dead host costs one
//! dial per backoff step, not one per member; the first dial that reaches it clears the
//! record, and every member dials again.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use crate::reconnect::Endpoint;

/// What a pool's members share about connecting.
#[derive(Default)]
pub(crate) struct Gate {
    /// Held for the length of one dial: members dial one at a time.
    turn: tokio::sync::Mutex<()>,
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// Dials made, numbered in order.
    dials: u64,
    /// The last failed dial of each host that no dial reached since.
    failed: HashMap<Endpoint, Failure>,
    /// The number of each member's last dial of each host.
    last: HashMap<(u64, Endpoint), u64>,
}

struct Failure {
    member: u64,
    dial: u64,
    error: String,
}

impl Gate {
    /// The sibling's failure that `member` follows instead of dialing `endpoint`.
    fn shielded(&self, member: u64, endpoint: &Endpoint) -> Option<SiblingFailed> {
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let failure = book.failed.get(endpoint)?;
        let mine = book.last.get(&(member, endpoint.clone())).copied();
        let newer = mine.is_none_or(|dial| dial < failure.dial);
        (failure.member != member && newer).then(|| SiblingFailed {
            endpoint: endpoint.clone(),
            error: failure.error.clone(),
        })
    }

    /// `member` dials `endpoint`: the dial's number.
    fn dialing(&self, member: u64, endpoint: &Endpoint) -> u64 {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        book.dials += 1;
        let dial = book.dials;
        book.last.insert((member, endpoint.clone()), dial);
        dial
    }

    /// The outcome of a dial: a failure is remembered, a success clears the host.
    fn dialed(&self, member: u64, endpoint: &Endpoint, dial: u64, failed: Option<String>) {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        match failed {
            Some(error) => {
                book.failed.insert(
                    endpoint.clone(),
                    Failure {
                        member,
                        dial,
                        error,
                    },
                );
            }
            None => {
                book.failed.remove(endpoint);
            }
        }
    }
}

/// A member's connector: the user's, behind the pool's [`Gate`].
pub(crate) struct Gated<K> {
    inner: K,
    gate: Arc<Gate>,
    member: u64,
}

impl<K> Gated<K> {
    pub(crate) fn new(inner: K, gate: Arc<Gate>, member: u64) -> Self {
        Gated {
            inner,
            gate,
            member,
        }
    }
}

impl<K: Clone> Clone for Gated<K> {
    fn clone(&self) -> Self {
        Gated {
            inner: self.inner.clone(),
            gate: self.gate.clone(),
            member: self.member,
        }
    }
}

impl<K> Service<Endpoint> for Gated<K>
where
    K: Service<Endpoint, Error: Into<BoxError>, Future: Send> + Clone + Send + 'static,
    K::Response: Send + 'static,
{
    type Response = K::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<K::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        // The ready connector goes with the dial; this one is a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        let member = self.member;
        Box::pin(async move {
            let _turn = gate.turn.lock().await;
            if let Some(sibling) = gate.shielded(member, &endpoint) {
                return Err(sibling.into());
            }
            let dial = gate.dialing(member, &endpoint);
            // A dial abandoned midway (the connect timeout dropped it) failed too.
            let mut pending = Pending {
                gate: &gate,
                member,
                endpoint: &endpoint,
                dial,
                armed: true,
            };
            let outcome = inner.call(endpoint.clone()).await.map_err(Into::into);
            pending.armed = false;
            gate.dialed(
                member,
                &endpoint,
                dial,
                outcome.as_ref().err().map(|e: &BoxError| e.to_string()),
            );
            outcome
        })
    }
}

/// Records a dial dropped before its outcome as failed.
struct Pending<'a> {
    gate: &'a Gate,
    member: u64,
    endpoint: &'a Endpoint,
    dial: u64,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            let error = "the dial did not finish in time".to_string();
            self.gate
                .dialed(self.member, self.endpoint, self.dial, Some(error));
        }
    }
}

/// A host failed without a dial of this member's: a sibling in its pool failed to reach
/// it just before, and this member follows that sibling's backoff instead of dialing.
#[derive(Debug)]
pub struct SiblingFailed {
    endpoint: Endpoint,
    error: String,
}

impl SiblingFailed {
    /// The host the sibling failed to reach.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl fmt::Display for SiblingFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "another connection of the pool failed to reach {} just before: {}",
            self.endpoint, self.error
        )
    }
}

impl std::error::Error for SiblingFailed {}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Endpoint {
        Endpoint::new("127.0.0.1", 1)
    }

    #[test]
    fn a_member_follows_a_siblings_failure_until_a_dial_reaches_the_host() {
        let gate = Gate::default();
        let dial = gate.dialing(0, &host());
        gate.dialed(0, &host(), dial, Some("refused".into()));
        assert!(
            gate.shielded(0, &host()).is_none(),
            "the member that failed probes again"
        );
        let shield = gate.shielded(1, &host()).expect("a sibling follows");
        assert!(shield.to_string().contains("refused"), "{shield}");
        let dial = gate.dialing(0, &host());
        gate.dialed(0, &host(), dial, None);
        assert!(
            gate.shielded(1, &host()).is_none(),
            "reached: all dial again"
        );
    }

    #[test]
    fn a_member_that_dialed_after_the_failure_is_not_held_back_by_it() {
        let gate = Gate::default();
        let first = gate.dialing(0, &host());
        let _later = gate.dialing(1, &host());
        gate.dialed(0, &host(), first, Some("refused".into()));
        assert!(gate.shielded(1, &host()).is_none());
    }
}
