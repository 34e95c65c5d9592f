//! A retry policy that never executes a request twice.

use std::time::Duration;

use tower::BoxError;

use crate::error::Error;

/// A [`tower::retry::Policy`] that retries a call only when it failed *not sent*
/// ([`Error::is_not_sent`]): the request never reached the server, so trying again
/// cannot execute it twice.
///
/// A call that failed *may have executed* is not retried: the server may have run it
/// before the connection died, and a second `INCR`, payment or `RPUSH` would be a wrong
/// result, not a recovery. Make such requests idempotent, or decide per request, before
/// retrying them.
///
/// ```
/// use std::time::Duration;
/// use socketchannel::RetryNotSent;
/// use tower::ServiceBuilder;
///
/// # fn stack<S>(channel: S) -> impl Sized
/// # where S: tower::Service<String, Error = socketchannel::BoxError> + Clone {
/// ServiceBuilder::new()
///     .timeout(Duration::from_millis(200))
///     .retry(RetryNotSent::new(3).delay(Duration::from_millis(10)))
///     .concurrency_limit(1024)
///     .service(channel)
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RetryNotSent {
    attempts: usize,
    delay: Duration,
}

impl RetryNotSent {
    /// Retries a call up to `attempts` times, at once.
    pub fn new(attempts: usize) -> Self {
        RetryNotSent {
            attempts,
            delay: Duration::ZERO,
        }
    }

    /// Waits this long before each retry (a channel that is backing off fails calls
    /// fast, so an immediate retry on the same channel fails the same way).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

impl<Req: Clone, Resp> tower::retry::Policy<Req, Resp, BoxError> for RetryNotSent {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Req,
        result: &mut Result<Resp, BoxError>,
    ) -> Option<Self::Future> {
        let Err(err) = result else {
            return None;
        };
        let not_sent = err.downcast_ref::<Error>().is_some_and(Error::is_not_sent);
        if !not_sent || self.attempts == 0 {
            return None;
        }
        self.attempts -= 1;
        Some(tokio::time::sleep(self.delay))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use tower::retry::Policy;

    #[tokio::test]
    async fn retries_not_sent_only_and_only_so_often() {
        let mut policy = RetryNotSent::new(1);
        let mut req = ();
        let mut sent: Result<(), BoxError> =
            Err(Error::new(Kind::ConnectionLost).written(true).into());
        assert!(policy.retry(&mut req, &mut sent).is_none());
        let mut not_sent: Result<(), BoxError> = Err(Error::new(Kind::ConnectFailed).into());
        assert!(policy.retry(&mut req, &mut not_sent).is_some());
        assert!(policy.retry(&mut req, &mut not_sent).is_none());
        let mut ok: Result<(), BoxError> = Ok(());
        assert!(policy.retry(&mut req, &mut ok).is_none());
    }
}
