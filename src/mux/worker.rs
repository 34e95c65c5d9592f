//! The connection task over one transport the user already has (no reconnect).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;
use tracing::debug;

use super::conn::Conn;
use super::engine::{Ended, Engine, Lane};
use super::matcher::Matcher;
use crate::error::{Cause, ConnectionError, ConnectionErrorKind, Error, Kind};
use crate::shared::{Control, State};
use crate::transport::Transport;

/// Drives one transport until it fails, the channel is closed, or every handle is gone
/// and every call is answered.
pub(crate) struct Worker<T, M, Req, Resp> {
    engine: Engine<Req, Resp>,
    conn: Option<Conn<T, M, Req, Resp>>,
    control: mpsc::UnboundedReceiver<Control>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// `shutdown` callers, told when the connection is closed.
    shutdown: Vec<oneshot::Sender<()>>,
}

// No field is pinned structurally: the transport is `Unpin` and the timers are boxed.
impl<T, M, Req, Resp> Unpin for Worker<T, M, Req, Resp> {}

impl<T, M, Req, Resp> Worker<T, M, Req, Resp> {
    pub(crate) fn new(
        engine: Engine<Req, Resp>,
        conn: Conn<T, M, Req, Resp>,
        control: mpsc::UnboundedReceiver<Control>,
    ) -> Self {
        Worker {
            engine,
            conn: Some(conn),
            control,
            deadline: None,
            shutdown: Vec::new(),
        }
    }
}

impl<T, M, Req, Resp> Worker<T, M, Req, Resp>
where
    T: Transport<Req, Resp>,
    M: Matcher<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Ends the connection: waiting calls fail as *may have executed*, queued ones as
    /// *not sent*, both of `kind`, caused by `why`.
    fn end(&mut self, kind: Kind, why: ConnectionError) {
        debug!(error = %why, "connection ended");
        // Closed first, so no caller queues behind the failures below.
        self.engine.shared.set_closed();
        let cause: Cause = Arc::new(why);
        if let Some(conn) = self.conn.take() {
            conn.fail(kind, &cause);
        }
        self.engine.fail_queued_and_close(kind, Some(&cause));
        self.closed();
    }

    /// The connection is gone: say so to the state watch and to `shutdown` callers.
    fn closed(&mut self) {
        self.engine.shared.set_state(State::Closed);
        self.shutdown.clear();
    }
}

impl<T, M, Req, Resp> Future for Worker<T, M, Req, Resp>
where
    T: Transport<Req, Resp>,
    M: Matcher<Req, Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            // Ended: a caller may still hold a slot it reserved before; its call must
            // fail, not wait in a channel nobody reads. `connect()` learns it is closed.
            while let Poll::Ready(Some(control)) = this.control.poll_recv(cx) {
                if let Control::Connect(done, _) = control {
                    let _ = done.send(Err(Error::new(Kind::Closed)));
                }
                // A `Shutdown`'s sender is dropped with it: that shutdown is over.
            }
            return this.engine.poll_fail_late(cx);
        };
        while let Poll::Ready(Some(control)) = this.control.poll_recv(cx) {
            match control {
                Control::Close => {
                    let why = ConnectionError::new(ConnectionErrorKind::Closed, None);
                    this.end(Kind::Closed, why);
                    return this.engine.poll_fail_late(cx);
                }
                Control::Shutdown(deadline, done) => {
                    this.engine.close_intake();
                    this.shutdown.push(done);
                    match &mut this.deadline {
                        Some(d) if d.deadline() <= deadline => {}
                        _ => this.deadline = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                // Without a connector there is nothing to reconnect or redirect.
                Control::Connect(done, _) | Control::Reopen(done) => {
                    let outcome = if this.engine.shared.is_closed() {
                        Err(Error::new(Kind::Closed))
                    } else {
                        Ok(())
                    };
                    let _ = done.send(outcome);
                }
                Control::Deadlines => this.engine.deadlines.used = true,
                Control::ChangeHost(_) | Control::ChangeBackups(_) => {}
            }
        }
        // Deadlines first: a call that times out now may be the last a shutdown waits for.
        this.engine
            .poll_deadlines(cx, conn.floor(), |due, expire| conn.expire(due, expire));
        if let Some(deadline) = &mut this.deadline {
            // A shutdown ends as soon as no call it holds has a caller left (calls whose
            // caller left, and slots reserved but unused, do not hold it); while callers
            // remain, the task is woken when they leave.
            let queued = this.engine.poll_nobody_waits(cx);
            let nobody = conn.poll_nobody_waits(cx) && queued;
            if nobody || deadline.as_mut().poll(cx).is_ready() {
                let why = ConnectionError::new(ConnectionErrorKind::Closed, None);
                this.end(Kind::Closed, why);
                return this.engine.poll_fail_late(cx);
            }
        }
        match this.engine.poll_conn(cx, conn, Lane::User) {
            Poll::Pending => {
                // Calls written or queued in this poll: the timer is set for them; a
                // call failed now may end a shutdown, checked on the next poll.
                if this
                    .engine
                    .poll_deadlines(cx, conn.floor(), |due, expire| conn.expire(due, expire))
                {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            // No other connection to go to: the call that said so failed *not sent*.
            Poll::Ready(Ok(Ended::WrongServer)) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            // The queued calls fail *not sent*, and the channel closes once the written
            // ones finish (the intake is done: the connection ends when it is idle).
            Poll::Ready(Ok(Ended::Drain)) => {
                debug!("the server asked to drain the connection; closing the channel");
                this.engine.shared.set_closed();
                this.engine.fail_queued_and_close(Kind::Closed, None);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            // No connector to retire to: `orphan_limit` is never set here.
            Poll::Ready(Ok(_)) => {
                debug!("all handles dropped and every call answered; connection closed");
                this.conn = None;
                this.engine.shared.set_closed();
                this.closed();
                // A shutdown ended with its last call; calls on slots reserved before
                // still fail rather than wait.
                this.engine.poll_fail_late(cx)
            }
            Poll::Ready(Err(why)) => {
                this.end(Kind::ConnectionLost, why);
                this.engine.poll_fail_late(cx)
            }
        }
    }
}
