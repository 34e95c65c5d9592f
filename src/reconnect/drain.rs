//! Old connections finishing their calls after a host change (or a retirement): they
//! write nothing new, and fail what is left at their deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;
use tracing::info;

use super::Endpoint;
use super::task::{ConnOf, Phase, Task};
use crate::error::{Cause, ConnectionError, ConnectionErrorKind, Kind};
use crate::mux::{Conn, Ended, Lane, Matcher, Mode};
use crate::transport::{Connector, Transport};

pub(super) struct Draining<T, Mt, Req, Resp> {
    conn: Conn<T, Mt, Req, Resp>,
    /// The host it is connected to.
    host: Endpoint,
    deadline: Pin<Box<Sleep>>,
}

impl<T, Mt, Req, Resp> Draining<T, Mt, Req, Resp>
where
    Mt: Matcher<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    pub(super) fn new(conn: Conn<T, Mt, Req, Resp>, host: Endpoint, timeout: Duration) -> Self {
        Draining {
            conn,
            host,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    pub(super) fn conn_mut(&mut self) -> &mut Conn<T, Mt, Req, Resp> {
        &mut self.conn
    }

    /// No call on it has a caller waiting (else the task is woken when one leaves).
    pub(super) fn poll_nobody_waits(&mut self, cx: &mut Context<'_>) -> bool {
        self.conn.poll_nobody_waits(cx)
    }

    pub(super) fn fail(self, kind: Kind, cause: &Cause) {
        self.conn.fail(kind, cause);
    }
}

impl<K, M, T, Req, Resp> Task<K, M, T, Req, Resp>
where
    K: Connector<Req, Resp, Transport = T>,
    T: Transport<Req, Resp>,
    M: Mode<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Moves the current connection, to `host`, aside to finish its calls (as
    /// `change_host` does): new calls go to a fresh connection, made at once when calls
    /// wait.
    pub(super) fn retire(
        &mut self,
        conn: ConnOf<T, M, Req, Resp>,
        host: Endpoint,
    ) -> Phase<T, M::Matcher, Req, Resp> {
        self.draining
            .push(Draining::new(conn, host, self.opts.drain_timeout));
        // The host is up (the connection answered): its replacement does not follow a
        // sibling's failure.
        self.fresh_pass = true;
        if self.engine.queue_is_empty() {
            self.after_loss()
        } else {
            self.start_pass()
        }
    }

    /// Leaves a connection on the server's word, as after a failed attempt: its written
    /// calls drain, and the next connection is made after a backoff (a run of them
    /// restarts if the host had answered), with that host tried last when it said it is
    /// the wrong one ([`Verdict::WrongServer`](crate::Verdict::WrongServer)), so a node
    /// that keeps saying so (or keeps draining at once) is no hot loop.
    pub(super) fn leave(
        &mut self,
        conn: ConnOf<T, M, Req, Resp>,
        wrong_server: bool,
    ) -> Phase<T, M::Matcher, Req, Resp> {
        self.engine.shared.stats.retired(1);
        let answered = conn.answered;
        if answered {
            self.failures = 0;
        } else {
            self.left_unanswered += 1;
        }
        let host = self.hosts.current.clone();
        self.draining
            .push(Draining::new(conn, host, self.opts.drain_timeout));
        if wrong_server {
            self.last_error = Some(Arc::new(WrongServer));
            self.demote_current = true;
        }
        if !answered {
            // A failed attempt on that host: it is tried last next time, as one lost
            // before it answered is (`lost`; helper-60's finding: a host draining every
            // connection was tried first again and again, its backups never).
            self.demote_current = true;
            if !wrong_server {
                self.last_error = Some(Arc::new(Drained));
            }
        }
        // Once every host has been left so since a call was answered, and one again, the
        // calls queued fail fast, not sent, as after a failed pass: none was written,
        // and no host serves them (they waited for ever while the one host drained each
        // connection at once). One drain is no such failure: a server restarting
        // gracefully may drain a connection or two, and the next one serves. (Counted
        // apart from `failures`, which other failures add to: helper-61's finding.)
        let hosts = u32::try_from(self.hosts.pass().len()).unwrap_or(u32::MAX);
        let every_host = !answered && self.left_unanswered > hosts;
        let phase = self.back_off(every_host);
        // A backoff that gave up goes `Idle`, which would start a pass at once for the
        // calls queued: they fail here instead, as after a failed pass.
        if every_host && matches!(phase, Phase::Idle) {
            self.engine
                .fail_queued(Kind::ConnectFailed, self.last_error.as_ref());
            self.left_unanswered = 0;
        }
        let cause: Cause = match &self.last_error {
            Some(cause) if wrong_server => cause.clone(),
            _ => Arc::new(ConnectionError::new(ConnectionErrorKind::Closed, None)),
        };
        self.failed_after_connecting(&phase, cause, wrong_server);
        phase
    }

    /// Polls the old connections; removes those that finished or failed. A server
    /// that says on one that it is the wrong one is still heard while the channel has
    /// no connection and no pass under way: that host, if it is the channel's current
    /// one, is tried last by the next pass (no backoff: the channel had left that
    /// connection already, so it is no failed attempt). Once a pass runs or a new
    /// connection serves, the word is stale: a new connection to a wrong host says so
    /// itself.
    pub(super) fn poll_draining(&mut self, cx: &mut Context<'_>) {
        let mut i = 0;
        while i < self.draining.len() {
            let d = &mut self.draining[i];
            let polled = self.engine.poll_conn(cx, &mut d.conn, Lane::Drain);
            if matches!(d.conn.leave, Some(Ended::WrongServer)) {
                d.conn.leave = None;
                let between = matches!(self.phase, Phase::Idle | Phase::BackingOff { .. });
                if between && d.host == self.hosts.current {
                    info!(endpoint = %d.host, "a retired connection's server said it is the wrong one");
                    self.demote_current = true;
                }
            }
            let end = match polled {
                Poll::Ready(Ok(_)) => Some(None),
                Poll::Ready(Err(why)) => Some(Some(why)),
                Poll::Pending if d.deadline.as_mut().poll(cx).is_ready() => Some(Some(
                    ConnectionError::new(ConnectionErrorKind::Closed, None),
                )),
                Poll::Pending => None,
            };
            match end {
                None => i += 1,
                Some(why) => {
                    let d = self.draining.swap_remove(i);
                    if let Some(why) = why {
                        let cause: Cause = Arc::new(why);
                        d.fail(Kind::ConnectionLost, &cause);
                    }
                }
            }
        }
    }
}

/// Why a channel left a connection on the server's word
/// ([`Verdict::WrongServer`](crate::Verdict::WrongServer)): the cause a backoff
/// reports.
#[derive(Debug)]
pub(super) struct WrongServer;

impl std::fmt::Display for WrongServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server said this connection is the wrong one")
    }
}

impl std::error::Error for WrongServer {}

/// Why a channel left a connection that the server asked to drain before it answered
/// anything ([`Verdict::Drain`](crate::Verdict::Drain)): the cause a backoff reports.
#[derive(Debug)]
pub(super) struct Drained;

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server asked to drain the connection before it answered")
    }
}

impl std::error::Error for Drained {}
