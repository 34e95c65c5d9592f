//! Order mode: the n-th reply belongs to the n-th call still waiting.

use std::collections::VecDeque;

use super::call::{Frames, Took};
use super::matcher::{Entry, Matcher, Route, abandoned, count_orphans, find_in};
use crate::error::{Error, Kind};
use crate::protocol::{Protocol, Verdict};

/// Order mode (pipelining): requests are written in order and the server answers in the
/// same order.
///
/// Cheap and universal (Redis, memcached text, SMTP, most line protocols), but a slow
/// reply delays every reply behind it (head-of-line blocking).
#[derive(Debug, Clone)]
pub struct Order<P> {
    pub(crate) protocol: P,
}

impl<P> Order<P> {
    /// Order mode for a protocol (use [`Plain`](crate::Plain) when replies need no
    /// interpretation).
    pub fn new(protocol: P) -> Self {
        Order { protocol }
    }
}

/// Order mode's table of waiting calls: a FIFO queue, the head answered next.
#[allow(unreachable_pub, missing_debug_implementations)] // named by `Mode::Matcher`, unreachable from outside
pub struct OrderMatcher<P, Resp> {
    protocol: P,
    queue: VecDeque<Entry<Resp>>,
    max_in_flight: usize,
}

impl<P, Resp> OrderMatcher<P, Resp> {
    pub(crate) fn new(protocol: P, max_in_flight: usize) -> Self {
        OrderMatcher {
            protocol,
            queue: VecDeque::new(),
            max_in_flight,
        }
    }
}

impl<P, Resp> Drop for OrderMatcher<P, Resp> {
    fn drop(&mut self) {
        self.queue.drain(..).for_each(abandoned);
    }
}

impl<Req, Resp, P> Matcher<Req, Resp> for OrderMatcher<P, Resp>
where
    P: Protocol<Req, Resp>,
    Resp: Send + 'static,
{
    fn has_room(&self) -> bool {
        self.queue.len() < self.max_in_flight
    }

    fn admit(
        &mut self,
        _frames: &mut Frames<Req>,
        id: Option<u64>,
        entry: Entry<Resp>,
    ) -> Result<Option<u64>, (Error, Entry<Resp>)> {
        if id.is_some() {
            return Err((Error::new(Kind::Unsupported), entry));
        }
        self.queue.push_back(entry);
        Ok(None)
    }

    fn find(&mut self, seq: u64, _id: Option<u64>) -> Option<&mut Entry<Resp>> {
        find_in(&mut self.queue, seq)
    }

    /// The head's number: the calls wait in the order they were admitted.
    fn floor(&self) -> u64 {
        self.queue.front().map_or(u64::MAX, |head| head.seq)
    }

    fn route(&mut self, frame: Resp) -> Route<Resp> {
        if self.protocol.is_push(&frame) {
            return Route::Push(frame);
        }
        let verdict = self.protocol.verdict(&frame);
        if verdict == Verdict::Drain {
            return Route::Drain;
        }
        let Some(head) = self.queue.front_mut() else {
            return Route::Desync;
        };
        let counts = head.counts;
        if head.waiter.deliver(frame, &self.protocol, verdict) == Took::Last {
            self.queue.pop_front();
        }
        Route::delivered(verdict, counts)
    }

    fn pending(&self) -> usize {
        self.queue.len()
    }

    fn watched(&self) -> bool {
        // An exempt head (a blocking command) holds everything behind it by design.
        self.queue.front().is_some_and(|head| !head.exempt)
    }

    fn capacity(&self) -> usize {
        self.max_in_flight
    }

    fn ignores_calls(&self) -> bool {
        false
    }

    fn orphans(&self) -> (usize, Option<u32>) {
        count_orphans(self.queue.iter())
    }

    fn poll_nobody_waits(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        // Every entry is polled (a count, not a short-circuiting `all`), so each live
        // caller will wake the task when it leaves.
        self.queue
            .iter_mut()
            .map(|e| e.waiter.poll_gone(cx))
            .filter(|gone| !gone)
            .count()
            == 0
    }

    fn drain(&mut self, each: &mut dyn FnMut(Entry<Resp>)) {
        self.queue.drain(..).for_each(each);
    }
}
