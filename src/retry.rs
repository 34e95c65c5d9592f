//! A retry policy that never executes a request twice.

use std::sync::Arc;
use std::time::Duration;

use tower::BoxError;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

use crate::channel::Call;
use crate::error::{Error, Kind};

/// A [`tower::retry::Policy`] that retries a call only when it failed *not sent*
/// ([`Error::is_not_sent`]): the request never reached the server, so trying again
/// cannot execute it twice.
///
/// A call that failed *may have executed* is not retried: the server may have run it
/// before the connection died, and a second `INCR`, payment or `RPUSH` would be a wrong
/// result, not a recovery. A [`Call`] marked [`idempotent`](Call::idempotent) (a read)
/// is retried after a lost connection too.
///
/// A `Server` error is an answer, and not retried, unless the server said the call did
/// not run ([`Verdict`](crate::Verdict): Redis `LOADING`, `READONLY`); such a call was
/// written, so its error holds no request: it is retried from a copy (`Req: Clone`, or
/// an idempotent `Call`), and a `Call` without one is not.
///
/// Never retried: errors of the call itself or answers (`Unsupported`, `IdInUse`,
/// `Server` but as above, `Limit`); `Closed` (a closed channel stays closed; over several channels,
/// send the call to another yourself); and a [`Call::read`], which waits for the next
/// frame of its own connection and would take another call's reply on a new one. tower's
/// `Retry` ends with the error of a retry's `poll_ready` when that fails: the caller then
/// gets that error. An idempotent call's error is its last attempt's. A retry waits for
/// that `poll_ready`, which is `Pending` while the channel connects (up to its connect
/// and handshake timeouts), and a [`Call::deadline`] does not cut that wait short (the
/// policy cannot): put a `Timeout` outside the `Retry`, as below, for a bound on the
/// whole.
///
/// It is a policy for plain requests (`Req: Clone`, over `Service<Req>`) and for
/// [`Call`]s (any `Req`, over `Service<Call<Req>>`), with the error type either
/// [`BoxError`] (the channel's services) or [`Error`] (a service that maps its errors
/// back). For a `Call` it keeps no copy of the request: a call that failed *not sent*
/// carries its request in the error ([`Error::take_request`]), and the retry takes it
/// from there; only an idempotent call keeps a copy, since after a write the error has
/// none.
///
/// With a [`budget`](Self::budget), retries are paced by tower's [`TpsBudget`]: a dead
/// cluster gets a bounded share of extra calls, not `attempts` times every call.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use socketchannel::{Call, Reply, RetryNotSent};
/// use tower::retry::budget::TpsBudget;
/// use tower::ServiceBuilder;
///
/// # fn stack<S>(channel: S) -> impl Sized
/// # where S: tower::Service<Call<String>, Response = Reply<String>, Error = socketchannel::BoxError> + Clone {
/// // At most 10% extra calls over any 10 s, and at least 10 retries a second.
/// let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.1));
/// ServiceBuilder::new()
///     .timeout(Duration::from_millis(200))
///     .retry(RetryNotSent::new(3).delay(Duration::from_millis(10)).budget(budget))
///     .concurrency_limit(1024)
///     .service(channel)
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RetryNotSent {
    attempts: usize,
    delay: Duration,
    budget: Option<Arc<TpsBudget>>,
}

impl RetryNotSent {
    /// Retries a call up to `attempts` times, at once.
    pub fn new(attempts: usize) -> Self {
        RetryNotSent {
            attempts,
            delay: Duration::ZERO,
            budget: None,
        }
    }

    /// Waits this long before each retry (a channel that is backing off fails calls
    /// fast, so an immediate retry on the same channel fails the same way).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Retries only while `budget` allows: each success deposits, each retry
    /// withdraws. Share one budget (an `Arc`) between the services it should bound.
    pub fn budget(mut self, budget: Arc<TpsBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Counts one outcome; true when a retry follows it. `err` is `None` for a success.
    fn decide(&mut self, err: Option<&Error>, idempotent: bool) -> bool {
        match err {
            None => {
                self.succeeded();
                false
            }
            Some(err) => self.retryable(err, idempotent) && self.spend(),
        }
    }

    fn succeeded(&self) {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
    }

    /// May this failure be retried, attempts left aside from the budget?
    fn retryable(&self, err: &Error, idempotent: bool) -> bool {
        let by_kind = match err.kind() {
            // The server answered that the call did not run (`Verdict::NotRun`,
            // `WrongServer`): again, perhaps elsewhere, it may.
            Kind::Server if err.is_not_sent() => true,
            // The call itself is wrong, or the server answered: a retry changes nothing.
            Kind::Unsupported | Kind::IdInUse | Kind::Server | Kind::Limit => false,
            // A closed channel stays closed: the retry's `poll_ready` would fail and its
            // error (no request, *not sent* even for a written call) replace this one.
            // On another channel it may go through: that is the caller's choice.
            Kind::Closed => false,
            // Its deadline passed: a retry would start after it, and it keeps it.
            Kind::Timeout => false,
            _ if err.is_not_sent() => true,
            // Written, and its connection went away before the reply.
            Kind::ConnectionLost => idempotent,
            _ => false,
        };
        by_kind && self.attempts > 0
    }

    /// Takes one attempt, and a withdrawal from the budget; false when it is spent.
    fn spend(&mut self) -> bool {
        if self.budget.as_ref().is_some_and(|b| !b.withdraw()) {
            return false;
        }
        self.attempts -= 1;
        true
    }

    fn wait(&self) -> tokio::time::Sleep {
        tokio::time::sleep(self.delay)
    }

    /// A call's retry: decided, and (for a copy kept without its frames) refilled from
    /// the error first: without its request the call cannot be retried at all, and
    /// then spends nothing.
    fn retry_call<Req: Send + 'static>(
        &mut self,
        call: &mut Call<Req>,
        err: Option<&mut Error>,
    ) -> Option<tokio::time::Sleep> {
        let idempotent = call.is_idempotent();
        let Some(err) = err else {
            self.succeeded();
            return None;
        };
        // A read waits for the next frame of its connection: on another connection it
        // would take whatever comes next there, another call's reply.
        if call.is_read() || !self.retryable(err, idempotent) || !call.refill(err) {
            return None;
        }
        if !self.spend() {
            // Out of budget: the caller still gets its request back from the error.
            call.unfill(err);
            return None;
        }
        Some(self.wait())
    }
}

/// The channel's [`Error`] behind a boxed one.
fn channel_error(err: &mut BoxError) -> Option<&mut Error> {
    err.downcast_mut::<Error>()
}

impl<Req: Clone, Resp> Policy<Req, Resp, BoxError> for RetryNotSent {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Req,
        result: &mut Result<Resp, BoxError>,
    ) -> Option<Self::Future> {
        let err = match result {
            Ok(_) => None,
            Err(err) => Some(channel_error(err)?),
        };
        self.decide(err.as_deref(), false).then(|| self.wait())
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

impl<Req: Clone, Resp> Policy<Req, Resp, Error> for RetryNotSent {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Resp, Error>) -> Option<Self::Future> {
        let err = result.as_ref().err();
        self.decide(err, false).then(|| self.wait())
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

impl<Req: Send + 'static, Resp> Policy<Call<Req>, Resp, BoxError> for RetryNotSent {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        call: &mut Call<Req>,
        result: &mut Result<Resp, BoxError>,
    ) -> Option<Self::Future> {
        let err = match result {
            Ok(_) => None,
            Err(err) => Some(channel_error(err)?),
        };
        self.retry_call(call, err)
    }

    /// A copy without the frames (they come back from a *not sent* error), or a full one
    /// for an [idempotent](Call::idempotent) call.
    fn clone_request(&mut self, call: &Call<Req>) -> Option<Call<Req>> {
        Some(call.retry_copy())
    }
}

impl<Req: Send + 'static, Resp> Policy<Call<Req>, Resp, Error> for RetryNotSent {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        call: &mut Call<Req>,
        result: &mut Result<Resp, Error>,
    ) -> Option<Self::Future> {
        self.retry_call(call, result.as_mut().err())
    }

    fn clone_request(&mut self, call: &Call<Req>) -> Option<Call<Req>> {
        Some(call.retry_copy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(err: Error) -> Result<(), BoxError> {
        Err(err.into())
    }

    #[tokio::test]
    async fn retries_not_sent_only_and_only_so_often() {
        let mut policy = RetryNotSent::new(1);
        let mut req = ();
        let mut sent = boxed(Error::new(Kind::ConnectionLost).written(true));
        assert!(policy.retry(&mut req, &mut sent).is_none());
        let mut not_sent = boxed(Error::new(Kind::ConnectFailed));
        assert!(policy.retry(&mut req, &mut not_sent).is_some());
        assert!(policy.retry(&mut req, &mut not_sent).is_none());
        let mut ok: Result<(), BoxError> = Ok(());
        assert!(policy.retry(&mut req, &mut ok).is_none());
    }

    #[tokio::test]
    async fn a_call_is_refilled_from_its_not_sent_error() {
        let mut policy = RetryNotSent::new(2);
        let call = Call::new(String::from("SET k v"));
        let mut copy = Policy::<_, (), BoxError>::clone_request(&mut policy, &call).unwrap();
        assert!(copy.hollow, "a copy without the frames");
        let mut not_sent =
            boxed(Error::new(Kind::ConnectFailed).with_request(Box::new(String::from("SET k v"))));
        assert!(policy.retry(&mut copy, &mut not_sent).is_some());
        assert!(!copy.hollow);
        assert!(matches!(&copy.frames, crate::mux::Frames::One(r) if r == "SET k v"));
        // Not sent, but with no request to hand back: no retry.
        let mut copy = Policy::<_, (), BoxError>::clone_request(&mut policy, &call).unwrap();
        let mut empty = boxed(Error::new(Kind::ConnectFailed));
        assert!(policy.retry(&mut copy, &mut empty).is_none());
    }

    /// A retry keeps the call's deadline (the whole budget, not one per attempt), and a
    /// timeout is never retried, though it was not sent. A timeout, counted from when
    /// the channel takes the call in, is counted from the copy for the copy: from
    /// before the first attempt.
    #[tokio::test(start_paused = true)]
    async fn a_retry_keeps_the_deadline_and_a_timeout_is_never_retried() {
        use crate::mux::Deadline;
        let timeout = std::time::Duration::from_millis(250);
        let at = Deadline::At(tokio::time::Instant::now() + timeout);
        for call in [
            Call::new(String::from("GET k")).deadline(tokio::time::Instant::now() + timeout),
            Call::new(String::from("GET k"))
                .timeout(timeout)
                .idempotent(),
            Call::new(String::from("GET k")).timeout(timeout),
        ] {
            let mut policy = RetryNotSent::new(1);
            let mut copy = Policy::<_, (), BoxError>::clone_request(&mut policy, &call).unwrap();
            assert_eq!(copy.deadline, Some(at));
            let mut not_sent = boxed(
                Error::new(Kind::ConnectFailed).with_request(Box::new(String::from("GET k"))),
            );
            assert!(policy.retry(&mut copy, &mut not_sent).is_some());
            assert_eq!(copy.deadline, Some(at), "refilled, with its deadline");
        }
        let mut policy = RetryNotSent::new(1);
        let mut req = ();
        let mut timed_out = boxed(Error::new(Kind::Timeout));
        assert!(policy.retry(&mut req, &mut timed_out).is_none());
    }

    #[tokio::test]
    async fn an_idempotent_call_is_retried_after_a_lost_connection() {
        let mut policy = RetryNotSent::new(1);
        let call = Call::new(String::from("GET k")).idempotent();
        let mut copy = Policy::<_, (), Error>::clone_request(&mut policy, &call).unwrap();
        assert!(!copy.hollow, "an idempotent call keeps its frames");
        let mut lost: Result<(), Error> = Err(Error::new(Kind::ConnectionLost).written(true));
        assert!(policy.retry(&mut copy, &mut lost).is_some());
        let mut server: Result<(), Error> = Err(Error::server("ERR".into()));
        let mut policy = RetryNotSent::new(1);
        assert!(
            policy.retry(&mut copy, &mut server).is_none(),
            "an error reply is an answer"
        );
        let plain = Call::new(String::from("INCR k"));
        let mut copy = Policy::<_, (), Error>::clone_request(&mut policy, &plain).unwrap();
        let mut lost: Result<(), Error> = Err(Error::new(Kind::ConnectionLost).written(true));
        assert!(policy.retry(&mut copy, &mut lost).is_none());
    }

    #[tokio::test]
    async fn the_budget_bounds_retries() {
        // No reserve and no deposits: 0 retries a second, none allowed.
        let budget = Arc::new(TpsBudget::new(Duration::from_secs(1), 0, 0.0));
        let mut policy = RetryNotSent::new(10).budget(budget.clone());
        let mut not_sent = boxed(Error::new(Kind::ConnectFailed));
        assert!(policy.retry(&mut (), &mut not_sent).is_none());
        // Deposits from successes buy retries.
        let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 0, 1.0));
        let mut policy = RetryNotSent::new(10).budget(budget);
        let mut ok: Result<(), BoxError> = Ok(());
        assert!(policy.retry(&mut (), &mut ok).is_none());
        assert!(policy.retry(&mut (), &mut not_sent).is_some());
    }
}
