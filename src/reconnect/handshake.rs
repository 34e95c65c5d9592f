//! The handshake: what runs on every new connection before any user call.
//!
//! It runs on the connection's own lane: a [`Channel`] whose calls go to a small intake
//! of their own, written before any user call (which waits in the users' intake). When
//! the hook returns, the lane closes: every call that entered it before is written
//! first, in its order, whether the hook awaited it or not (Contract 12); a call made on
//! the handle later fails *not sent*, saying why.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Sleep;
use tower::BoxError;

use super::Endpoint;
use super::error::HostError;
use super::pass::Pass;
use super::task::{Phase, Task};
use crate::channel::Channel;
use crate::error::{Cause, ConnectionError, ConnectionErrorKind, Kind};
use crate::mux::{Conn, Envelope, Lane, Matcher, Mode};
use crate::shared::Shared;
use crate::transport::{Connector, Transport};

/// How a handshake ends well.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handshake {
    /// The connection is ready for user calls.
    Ready,
    /// Use another host instead (a sentinel named the current primary): the connection
    /// is dropped and that host is tried next in the same pass; once it connects it is
    /// tried first in later passes. The configured hosts stay in every later pass, so
    /// the one that redirected is asked again after a failover.
    Redirect(Endpoint),
}

pub(crate) type HandshakeFuture = Pin<Box<dyn Future<Output = Result<Handshake, BoxError>> + Send>>;

/// The user's handshake, type-erased.
pub(crate) type Hook<Req, Resp> =
    Arc<dyn Fn(Channel<Req, Resp>, Endpoint) -> HandshakeFuture + Send + Sync>;

/// A connection whose handshake runs.
pub(super) struct Handshaking<T, Mt, Req, Resp> {
    pass: Pass,
    endpoint: Endpoint,
    conn: Conn<T, Mt, Req, Resp>,
    lane: mpsc::Receiver<Envelope<Req, Resp>>,
    hook: HandshakeFuture,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T, Mt, Req, Resp> Handshaking<T, Mt, Req, Resp>
where
    Mt: Matcher<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// The connection the handshake runs on.
    pub(super) fn conn_mut(&mut self) -> &mut Conn<T, Mt, Req, Resp> {
        &mut self.conn
    }

    pub(super) fn start(
        hook: &Hook<Req, Resp>,
        shared: &Arc<Shared<Resp>>,
        queue: usize,
        timeout: Option<Duration>,
        pass: Pass,
        endpoint: Endpoint,
        conn: Conn<T, Mt, Req, Resp>,
    ) -> Self {
        let (tx, lane) = mpsc::channel(queue);
        let handle = Channel::handshake_handle(tx, shared.clone());
        Handshaking {
            pass,
            hook: hook(handle, endpoint.clone()),
            endpoint,
            conn,
            lane,
            timer: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
        }
    }

    /// No call on the connection has a caller waiting (the handshake's own included;
    /// else the task is woken when one leaves).
    pub(super) fn poll_nobody_waits(&mut self, cx: &mut Context<'_>) -> bool {
        self.conn.poll_nobody_waits(cx)
    }

    /// Gives the connection up: what the handshake had in flight on it fails.
    pub(super) fn abandon(self) {
        abandon(self.conn);
    }
}

/// Drops a connection whose handshake did not make it ready.
fn abandon<T, Mt, Req, Resp>(conn: Conn<T, Mt, Req, Resp>)
where
    Mt: Matcher<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let cause: Cause = Arc::new(ConnectionError::new(ConnectionErrorKind::Closed, None));
    conn.fail(Kind::ConnectionLost, &cause);
}

type PhaseOf<M, T, Req, Resp> = Phase<T, <M as Mode<Req, Resp>>::Matcher, Req, Resp>;

impl<K, M, T, Req, Resp> Task<K, M, T, Req, Resp>
where
    K: Connector<Req, Resp, Transport = T>,
    T: Transport<Req, Resp>,
    M: Mode<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Runs the handshake a step: its hook, then its lane on the connection.
    #[allow(clippy::result_unit_err)]
    pub(super) fn step_handshake(
        &mut self,
        cx: &mut Context<'_>,
        mut hs: Box<Handshaking<T, M::Matcher, Req, Resp>>,
    ) -> Result<PhaseOf<M, T, Req, Resp>, ()> {
        // The hook first: a read it queues must hold its slot before a greeting that is
        // already buffered is routed (the engine writes before it reads).
        let outcome = hs.hook.as_mut().poll(cx);
        let Poll::Ready(outcome) = outcome else {
            let h = &mut *hs;
            if let Poll::Ready(res) =
                self.engine
                    .poll_conn(cx, &mut h.conn, Lane::Handshake(&mut h.lane))
            {
                // The handshake lane never finishes a connection, nor retires it.
                let why = res
                    .err()
                    .unwrap_or_else(|| ConnectionError::new(ConnectionErrorKind::Eof, None));
                let cause: Cause = Arc::new(why);
                let Handshaking {
                    pass,
                    endpoint,
                    conn,
                    ..
                } = *hs;
                conn.fail(Kind::ConnectionLost, &cause);
                // The error itself, not its text: its chain (a TLS alert, an io::Error) is
                // what tells the user why this host failed.
                return Ok(self.host_failed(pass, endpoint, Box::new(cause.clone())));
            }
            if h.timer
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready())
            {
                let Handshaking {
                    pass,
                    endpoint,
                    conn,
                    ..
                } = *hs;
                abandon(conn);
                let err = HostError::Timeout("handshake").into();
                return Ok(self.host_failed(pass, endpoint, err));
            }
            self.phase = Phase::Handshaking(hs);
            return Err(());
        };
        let Handshaking {
            pass,
            endpoint,
            mut conn,
            mut lane,
            ..
        } = *hs;
        match outcome {
            Ok(Handshake::Ready) => {
                // Every call that entered the lane goes first on this connection, in
                // its order, ahead of any user call (even the one that asked for the
                // connection); the handle takes no more.
                lane.close();
                while let Ok(mut call) = lane.try_recv() {
                    call.leftover = true;
                    conn.first.push_back(call);
                }
                let proving = pass.connected();
                Ok(self.ready(endpoint, conn, proving))
            }
            Ok(Handshake::Redirect(to)) => {
                abandon(conn);
                Ok(self.redirect(pass, endpoint, to))
            }
            Err(err) => {
                abandon(conn);
                Ok(self.host_failed(pass, endpoint, HostError::Handshake(err).into()))
            }
        }
    }
}
