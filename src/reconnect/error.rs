//! The error of a failed connect pass.

use std::fmt;

use tower::BoxError;

use super::Endpoint;

/// Every host of a connect pass failed; the error names each host and its failure.
///
/// Calls that were waiting for the pass fail with
/// [`Kind::ConnectFailed`](crate::Kind::ConnectFailed) and this as their source
/// ([`Error::connect_error`](crate::Error::connect_error)). Its own
/// [`source`](std::error::Error::source) is the last host's failure (for a refused or
/// timed-out TCP connect, an [`std::io::Error`]), so error reporters that walk the chain
/// (anyhow, tracing, tonic's `Status::from_error`) reach it; [`failures`](Self::failures)
/// lists every host's.
#[derive(Debug)]
pub struct ConnectError {
    failures: Vec<(Endpoint, BoxError)>,
}

impl ConnectError {
    pub(crate) fn new(failures: Vec<(Endpoint, BoxError)>) -> Self {
        ConnectError { failures }
    }

    /// Each host tried, in order, with its failure.
    pub fn failures(
        &self,
    ) -> impl Iterator<Item = (&Endpoint, &(dyn std::error::Error + Send + Sync + 'static))> {
        self.failures.iter().map(|(e, err)| (e, &**err))
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("every host failed")?;
        for (i, (endpoint, err)) in self.failures.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{endpoint}: {err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {
    /// The last host's failure.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let (_, last) = self.failures.last()?;
        Some(&**last)
    }
}

/// Why one host failed during a connect pass.
#[derive(Debug)]
pub(crate) enum HostError {
    Timeout(&'static str),
    Handshake(BoxError),
    /// Not a failure of the host: its handshake named another (the next line of the
    /// error says how that one fared).
    Redirected(Endpoint),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Timeout(what) => write!(f, "{what} timed out"),
            HostError::Redirected(to) => write!(f, "redirected to {to}"),
            // A call of the handshake failed: its cause says more than "request may
            // have executed" does here.
            HostError::Handshake(e) => match e
                .downcast_ref::<crate::Error>()
                .and_then(std::error::Error::source)
            {
                Some(cause) => write!(f, "handshake failed: {cause}"),
                None => write!(f, "handshake failed: {e}"),
            },
        }
    }
}

impl std::error::Error for HostError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HostError::Timeout(_) | HostError::Redirected(_) => None,
            HostError::Handshake(e) => Some(&**e),
        }
    }
}
