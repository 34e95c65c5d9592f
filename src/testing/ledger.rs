//! The ledger: every call a simulation makes, and how it resolved.

use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::BoxError;

use super::Trace;
use crate::error::{ConnectionErrorKind, Error, Kind};
use crate::reconnect::ConnectError;

/// What a reply frame says about where it comes from: the nonce of the request it
/// answers and the connection it came over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTag {
    /// The nonce of the request the server answered.
    pub nonce: u64,
    /// The connection the server wrote it on.
    pub conn: Option<u64>,
    /// A frame that may go to any caller (a server's refusal at accept, a greeting).
    pub any_caller: bool,
}

/// How a call resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its reply frames (one for a plain request).
    Replies(Vec<ReplyTag>),
    /// Fire-and-forget: handed to the transport.
    Sent,
    /// `connect()` succeeded.
    Connected,
    /// It failed with the crate's [`Error`].
    Failed {
        /// The error's kind.
        kind: Kind,
        /// [`Error::is_not_sent`].
        not_sent: bool,
        /// What ended the connection, for [`Kind::ConnectionLost`].
        connection: Option<ConnectionErrorKind>,
        /// The hosts a failed connect pass names ([`ConnectError::failures`]).
        pass: Option<Vec<String>>,
        /// The error reply, for [`Kind::Server`].
        reply: Option<ReplyTag>,
        /// Frames a stream yielded before it failed.
        before: Vec<ReplyTag>,
        /// The error as text.
        text: String,
    },
    /// It failed with an error that is not the crate's (a tower timeout, a buffer whose
    /// worker is gone).
    Other(String),
}

impl Outcome {
    /// The outcome of a call that failed with `err`; `tag` reads the reply frame of a
    /// [`Kind::Server`] error from its source.
    pub fn failed(
        err: &Error,
        tag: impl Fn(&(dyn std::error::Error + 'static)) -> Option<ReplyTag>,
    ) -> Self {
        let pass = err
            .source()
            .and_then(|s| s.downcast_ref::<ConnectError>())
            .map(|c| c.failures().map(|(e, _)| e.to_string()).collect());
        Outcome::Failed {
            kind: err.kind(),
            not_sent: err.is_not_sent(),
            connection: err.connection_error().map(|c| c.kind()),
            pass,
            reply: match err.kind() {
                Kind::Server => err.source().and_then(tag),
                _ => None,
            },
            before: Vec::new(),
            text: err.to_string(),
        }
    }

    /// The outcome of a tower stack's error: the crate's [`Error`] if it is one.
    pub fn boxed(
        err: &BoxError,
        tag: impl Fn(&(dyn std::error::Error + 'static)) -> Option<ReplyTag>,
    ) -> Self {
        match err.downcast_ref::<Error>() {
            Some(e) => Outcome::failed(e, tag),
            None => Outcome::Other(err.to_string()),
        }
    }

    /// Short text for the event log.
    pub fn brief(&self) -> String {
        match self {
            Outcome::Replies(r) => format!("ok {} frame(s)", r.len()),
            Outcome::Sent => "sent".into(),
            Outcome::Connected => "connected".into(),
            Outcome::Failed { text, before, .. } if before.is_empty() => format!("failed: {text}"),
            Outcome::Failed { text, before, .. } => {
                format!("failed after {} frame(s): {text}", before.len())
            }
            Outcome::Other(t) => format!("other: {t}"),
        }
    }
}

/// One call in the [`Ledger`].
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// Its number in the ledger.
    pub id: usize,
    /// The nonce its request carries (0: none, such as a read or `connect()`).
    pub nonce: u64,
    /// The client it was made on.
    pub client: usize,
    /// Its shape, for reports.
    pub shape: String,
    /// Made by a handshake.
    pub handshake: bool,
    /// Made through a retry layer (the same request may be sent again).
    pub retried: bool,
    /// When it was made.
    pub created: Duration,
    /// Every time it resolved (exactly once is right).
    pub outcomes: Vec<(Duration, Outcome)>,
    /// When its caller gave up, if it did.
    pub cancelled: Option<Duration>,
}

/// Every call of a simulation and its outcomes; clones share it.
#[derive(Debug, Clone)]
pub struct Ledger {
    calls: Arc<Mutex<Vec<CallRecord>>>,
    trace: Trace,
}

impl Ledger {
    /// An empty ledger logging to `trace`.
    pub fn new(trace: Trace) -> Self {
        Ledger {
            calls: Arc::new(Mutex::new(Vec::new())),
            trace,
        }
    }

    /// Records a new call; returns its number.
    pub fn open(
        &self,
        client: usize,
        nonce: u64,
        shape: &str,
        handshake: bool,
        retried: bool,
    ) -> usize {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let id = calls.len();
        self.trace.log(format!(
            "call {id}: client {client} n={nonce} {shape}{}",
            if handshake { " (handshake)" } else { "" }
        ));
        calls.push(CallRecord {
            id,
            nonce,
            client,
            shape: shape.to_string(),
            handshake,
            retried,
            created: self.trace.now(),
            outcomes: Vec::new(),
            cancelled: None,
        });
        id
    }

    /// Records how call `id` resolved.
    pub fn resolve(&self, id: usize, outcome: Outcome) {
        self.trace.log(format!("call {id}: {}", outcome.brief()));
        let now = self.trace.now();
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls[id].outcomes.push((now, outcome));
    }

    /// Records that the caller of `id` gave up.
    pub fn cancel(&self, id: usize) {
        let now = self.trace.now();
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if calls[id].outcomes.is_empty() && calls[id].cancelled.is_none() {
            self.trace.log(format!("call {id}: cancelled"));
            calls[id].cancelled = Some(now);
        }
    }

    /// Is call `id` resolved or given up?
    pub fn is_done(&self, id: usize) -> bool {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        !calls[id].outcomes.is_empty() || calls[id].cancelled.is_some()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
