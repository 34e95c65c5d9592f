//! Errors.
//!
//! Every call fails with one [`Error`]. Two questions matter to a caller and each has its
//! own answer:
//!
//! * **Can the server have executed it?** [`Error::is_not_sent`] is true when it cannot:
//!   the request was never handed to the transport (then [`Error::take_request`] gives
//!   it back), none of its bytes left before its connection was lost (over a
//!   [`Metered`](crate::Metered) IO and codec; the encoded request is gone), or the
//!   server answered that it did not run it ([`Verdict`](crate::Verdict); the written
//!   request is gone). It is safe to retry.
//!   [`Error::may_have_executed`] is true otherwise: written (or answered with an error
//!   reply), so retrying may execute it twice.
//! * **Why did it fail?** [`Error::kind`], with the underlying cause behind
//!   [`std::error::Error::source`] (for a lost connection, a [`ConnectionError`]).
//!
//! Services in this crate return [`tower::BoxError`] so they compose with tower middleware;
//! downcast it to [`Error`] to ask these questions.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, Mutex};

use tower::BoxError;

/// The shared cause of many calls' errors.
pub(crate) type Cause = Arc<dyn StdError + Send + Sync>;

/// The error of a call.
///
/// It is one pointer wide, so `Result<Resp, Error>` stays small.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    written: bool,
    cause: Option<Cause>,
    /// Behind a `Mutex` only so that `Error` is `Sync`; reached through `get_mut`.
    request: Mutex<Option<Box<dyn Any + Send>>>,
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A connection the call was queued on or written to was lost: an I/O error, end of
    /// stream, an undecodable frame, a desync or the stall timeout. The source is a
    /// [`ConnectionError`] ([`Error::connection_error`]).
    ConnectionLost,
    /// No connection could be made: every host of the connect pass failed, or the
    /// channel is backing off after such a pass. The source is a
    /// [`ConnectError`](crate::ConnectError) naming each host ([`Error::connect_error`]).
    ConnectFailed,
    /// The channel is closed: by [`close`](crate::Channel::close), by a shutdown, or
    /// because its connection task is gone.
    Closed,
    /// The server answered with a reply the protocol marks as an error
    /// ([`Protocol::check`](crate::Protocol::check)). The connection is fine.
    Server,
    /// The caller-supplied session id is already waiting for a reply.
    IdInUse,
    /// The call asks for something the channel cannot do: a caller-supplied id in order
    /// mode or beyond the protocol's id type, a multi-part call with no parts.
    Unsupported,
    /// `Service::call` without a successful `poll_ready`, while the intake was full.
    Overloaded,
    /// The reply outgrew a limit of the channel ([`Config::max_reply_frames`],
    /// [`Config::max_reply_bytes`]), or a [`ReplyStream`](crate::ReplyStream)'s reader
    /// fell further behind than [`Config::stream_buffer`] frames. Only this call fails
    /// (*may have executed*); the rest of its reply is read and dropped. The source is
    /// a [`LimitError`].
    ///
    /// [`Config::max_reply_frames`]: crate::Config::max_reply_frames
    /// [`Config::max_reply_bytes`]: crate::Config::max_reply_bytes
    /// [`Config::stream_buffer`]: crate::Config::stream_buffer
    Limit,
    /// The call's deadline passed ([`Call::deadline`](crate::Call::deadline),
    /// [`Config::call_timeout`](crate::Config::call_timeout)). Queued, it was never
    /// written (*not sent*); written, it *may have executed*, and its slot or id stays
    /// taken until its reply comes or its connection ends. Never retried by
    /// [`RetryNotSent`](crate::RetryNotSent): its time is up.
    Timeout,
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                written: false,
                cause: None,
                request: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn with_cause(mut self, cause: Cause) -> Self {
        self.inner.cause = Some(cause);
        self
    }

    pub(crate) fn written(mut self, written: bool) -> Self {
        self.inner.written = written;
        self
    }

    pub(crate) fn with_request(mut self, request: Box<dyn Any + Send>) -> Self {
        self.inner.request = Mutex::new(Some(request));
        self
    }

    /// Hands a request (back) to the error, for [`take_request`](Error::take_request).
    pub(crate) fn put_request(&mut self, request: Box<dyn Any + Send>) {
        *self
            .inner
            .request
            .get_mut()
            .unwrap_or_else(|e| e.into_inner()) = Some(request);
    }

    /// An error reply from the server, as [`Protocol::check`](crate::Protocol::check) made it.
    pub(crate) fn server(cause: BoxError) -> Self {
        Error::new(Kind::Server)
            .written(true)
            .with_cause(Arc::from(cause))
    }

    /// Why the call failed.
    pub fn kind(&self) -> Kind {
        self.inner.kind
    }

    /// The server cannot have executed the call: retrying it cannot execute it twice.
    ///
    /// Either the request was never handed to the transport, and
    /// [`take_request`](Error::take_request) gives it back; or it was handed over and
    /// its connection was lost before the IO accepted any of its bytes (over a
    /// [`Metered`](crate::Metered) IO and codec, as the crate's connectors frame: a
    /// `ConnectionLost` or `Closed` error); or it was written and the server answered
    /// that it did not run it ([`Verdict`](crate::Verdict)), a `Server` error. In the
    /// last two the codec consumed the request: there is none to give back, and a retry
    /// needs a copy of its own ([`RetryNotSent`](crate::RetryNotSent) keeps one for a
    /// `Req: Clone` request).
    pub fn is_not_sent(&self) -> bool {
        !self.inner.written
    }

    /// The request was written (or answered): the server may have executed it.
    pub fn may_have_executed(&self) -> bool {
        self.inner.written
    }

    /// The channel is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.kind == Kind::Closed
    }

    /// The connection was lost (see [`Error::connection_error`]).
    pub fn is_connection_lost(&self) -> bool {
        self.inner.kind == Kind::ConnectionLost
    }

    /// No connection could be made (see [`Error::connect_error`]).
    pub fn is_connect_failed(&self) -> bool {
        self.inner.kind == Kind::ConnectFailed
    }

    /// The server answered with an error reply.
    pub fn is_server(&self) -> bool {
        self.inner.kind == Kind::Server
    }

    /// The lost connection's cause, when the kind is [`Kind::ConnectionLost`].
    pub fn connection_error(&self) -> Option<&ConnectionError> {
        self.inner.cause.as_deref()?.downcast_ref()
    }

    /// The failed connect pass, with every host's failure, when the kind is
    /// [`Kind::ConnectFailed`].
    pub fn connect_error(&self) -> Option<&crate::ConnectError> {
        self.inner.cause.as_deref()?.downcast_ref()
    }

    /// Hands back the request of a call that was never written.
    ///
    /// `R` is the type the request was given as: `Req` for a plain call, `Vec<Req>` for a
    /// multi-part one. Returns `None` when the request was written, was already taken, or
    /// is of another type.
    ///
    /// ```
    /// # use socketchannel::Error;
    /// fn retry_later(mut err: Error) -> Option<String> {
    ///     if err.is_not_sent() { err.take_request::<String>() } else { None }
    /// }
    /// ```
    pub fn take_request<R: 'static>(&mut self) -> Option<R> {
        let slot = self
            .inner
            .request
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        match slot.take()?.downcast::<R>() {
            Ok(r) => Some(*r),
            Err(other) => {
                *slot = Some(other);
                None
            }
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("written", &self.inner.written)
            .field("cause", &self.inner.cause)
            .field(
                "has_request",
                &self.inner.request.lock().is_ok_and(|r| r.is_some()),
            )
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.inner.kind {
            Kind::ConnectionLost => "connection lost",
            Kind::ConnectFailed => "could not connect",
            Kind::Closed => "channel closed",
            Kind::Server => "server replied with an error",
            Kind::IdInUse => "session id already in use",
            Kind::Unsupported => "call not supported by this channel",
            Kind::Overloaded => "intake full (call without poll_ready)",
            Kind::Limit => "reply over the channel's limit",
            Kind::Timeout => "deadline passed",
        };
        let sent = if self.inner.written {
            "request may have executed"
        } else {
            "request not sent"
        };
        write!(f, "{what} ({sent})")?;
        if let Some(cause) = &self.inner.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        let cause: &(dyn StdError + 'static) = self.inner.cause.as_deref()?;
        Some(cause)
    }
}

/// Which limit a reply went over ([`Kind::Limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitError {
    /// More frames than [`Config::max_reply_frames`](crate::Config::max_reply_frames).
    Frames(usize),
    /// More bytes than [`Config::max_reply_bytes`](crate::Config::max_reply_bytes).
    Bytes(usize),
    /// The stream's reader left this many frames unread
    /// ([`Config::stream_buffer`](crate::Config::stream_buffer)).
    Reader(usize),
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::Frames(n) => write!(f, "more than {n} reply frames"),
            LimitError::Bytes(n) => write!(f, "more than {n} reply bytes"),
            LimitError::Reader(n) => write!(f, "the stream's reader left {n} frames unread"),
        }
    }
}

impl StdError for LimitError {}

/// The cause of a call dropped unwritten with its queue (the connection task is gone).
#[derive(Debug)]
pub(crate) struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dropped unwritten: the connection task is gone")
    }
}

impl StdError for Dropped {}

/// The cause of a call made on a handshake's handle after the handshake returned.
#[derive(Debug)]
pub(crate) struct HandshakeOver;

impl fmt::Display for HandshakeOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the handshake has returned: its handle takes no more calls")
    }
}

impl StdError for HandshakeOver {}

/// Why a connection ended.
///
/// Shared by every call that the connection's end failed; reached through
/// [`Error::connection_error`] or `source()`.
#[derive(Debug)]
pub struct ConnectionError {
    kind: ConnectionErrorKind,
    source: Option<BoxError>,
}

/// What ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionErrorKind {
    /// The peer closed the stream.
    Eof,
    /// The transport failed while writing (including encoding).
    Write,
    /// The transport failed while reading (I/O error or undecodable frame).
    Read,
    /// A reply arrived with no request waiting for it (order mode): the stream is out of
    /// step with the requests, so nothing after it can be trusted.
    Desync,
    /// The oldest waiting request went unanswered for longer than the stall timeout.
    Stalled,
    /// The channel was closed, or shut down and its deadline passed.
    Closed,
}

impl ConnectionError {
    pub(crate) fn new(kind: ConnectionErrorKind, source: Option<BoxError>) -> Self {
        ConnectionError { kind, source }
    }

    /// What ended the connection.
    pub fn kind(&self) -> ConnectionErrorKind {
        self.kind
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ConnectionErrorKind::Eof => "connection closed by peer",
            ConnectionErrorKind::Write => "write failed",
            ConnectionErrorKind::Read => "read failed",
            ConnectionErrorKind::Desync => "unsolicited reply with no request waiting",
            ConnectionErrorKind::Stalled => "stall timeout: server stopped answering",
            ConnectionErrorKind::Closed => "channel closed",
        };
        f.write_str(what)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for ConnectionError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        let source: &(dyn StdError + 'static) = self.source.as_deref()?;
        Some(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_request_gives_back_the_right_type_once() {
        let mut err = Error::new(Kind::ConnectionLost).with_request(Box::new(7u32));
        assert!(err.is_not_sent());
        assert_eq!(err.take_request::<String>(), None);
        assert_eq!(err.take_request::<u32>(), Some(7));
        assert_eq!(err.take_request::<u32>(), None);
    }

    #[test]
    fn display_names_cause() {
        let cause = ConnectionError::new(ConnectionErrorKind::Eof, None);
        let err = Error::new(Kind::ConnectionLost)
            .written(true)
            .with_cause(Arc::new(cause));
        assert_eq!(
            err.to_string(),
            "connection lost (request may have executed): connection closed by peer"
        );
        assert_eq!(
            err.connection_error().map(|c| c.kind()),
            Some(ConnectionErrorKind::Eof)
        );
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }
}
