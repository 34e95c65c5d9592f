//! The idle ping: a user-given request sent when a connection has been idle for a
//! while, so a dead peer is found (by the stall timer, or the write failing) before a
//! user call is.

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::task::{ConnOf, Task};
use crate::channel::Answer;
use crate::mux::{Envelope, Frames, Mode, Waiter};
use crate::transport::{Connector, Transport};

pub(super) struct Ping<Resp> {
    timer: Pin<Box<Sleep>>,
    every: Duration,
    /// Traffic counters at the last tick: unchanged means idle.
    seen: (u64, u64),
    /// The last ping's reply: dropped unanswered (the connection moved aside), it
    /// tells the channel, which owes the server a cancel notice if it sends them.
    waiting: Option<Answer<Resp>>,
}

impl<Resp> Ping<Resp> {
    pub(super) fn new(every: Duration) -> Self {
        Ping {
            timer: Box::pin(tokio::time::sleep(every)),
            every,
            seen: (0, 0),
            waiting: None,
        }
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
    /// Queues the idle ping on `conn` when nothing was sent or received for a whole
    /// period. Once the channel is ending (a shutdown, every handle gone), it pings no
    /// more, and nobody waits for the last ping's reply: it neither holds a shutdown
    /// nor keeps the connection open (helper-58's finding: a ping the server never
    /// answered held a shutdown until its deadline, and, with no stall timer, kept a
    /// connection whose handles were all gone open for good).
    pub(super) fn poll_ping(
        &mut self,
        cx: &mut Context<'_>,
        ping: &mut Ping<Resp>,
        conn: &mut ConnOf<T, M, Req, Resp>,
    ) {
        if self.shutdown.is_some() || self.engine.intake_done() {
            ping.waiting = None;
            return;
        }
        while ping.timer.as_mut().poll(cx).is_ready() {
            ping.timer
                .as_mut()
                .reset(crate::config::deadline(Instant::now(), ping.every));
            let stats = self.engine.shared.stats.snapshot();
            let seen = (stats.sent, stats.received);
            let answered = ping.waiting.as_mut().is_none_or(Answer::answered);
            if seen == ping.seen
                && answered
                && let Some((_, make)) = &self.opts.idle_ping
            {
                debug!("idle: sending ping");
                let (tx, rx) = oneshot::channel();
                let call = Envelope::new(Frames::One(make()), Waiter::One(Some(tx)));
                conn.first.push_back(call);
                ping.waiting = Some(Answer::new(rx, &self.engine.shared.leaving));
            }
            ping.seen = seen;
        }
    }
}
