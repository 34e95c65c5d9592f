//! Cancel notices (session mode): telling the server that a written call's caller is
//! gone, so it can stop working on it ([`Sessions::cancel`](crate::Sessions::cancel)).
//!
//! A connection whose protocol sends them watches the caller of each call it writes
//! with one waker of its own: a caller that leaves (its reply sender sees its receiver
//! dropped) wakes it, which marks the connection and wakes its task. The task marks it
//! itself for a caller it made gone while the server still works on the call: a
//! deadline, a reply limit ([`left`](Notices::left)). The task then scans
//! its waiting calls once for the callers that left and queues each one's id; the write
//! path writes a queued notice ahead of any call, and never between the parts of a
//! multi-part request, building it only then, and only if the call still waits (a
//! reply that came in the meantime freed its id, which a new call may have taken). A connection whose protocol sends none has no watcher, and its
//! callers are not watched: the feature costs nothing unless it is used.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use super::call::Waiter;

/// One connection's watcher and the notices it has still to write.
pub(crate) struct Notices {
    watch: Arc<Watch>,
    /// Wakes `watch`: registered with each written call's reply sender.
    waker: Waker,
    /// The calls to write a notice for: `(session id, sequence number)`.
    queue: VecDeque<(u64, u64)>,
}

/// What a caller that leaves wakes.
#[derive(Default)]
struct Watch {
    /// A watched caller left since the task last looked.
    left: AtomicBool,
    /// The connection task.
    task: Mutex<Option<Waker>>,
}

impl Wake for Watch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.left.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl Notices {
    pub(crate) fn new() -> Self {
        let watch = Arc::new(Watch::default());
        Notices {
            waker: Waker::from(watch.clone()),
            watch,
            queue: VecDeque::new(),
        }
    }

    /// Wakes `cx`'s task when a watched caller leaves. Call it before
    /// [`take_left`](Self::take_left), so that no leaving falls between the two.
    pub(crate) fn register(&self, cx: &Context<'_>) {
        let mut task = self.watch.task.lock().unwrap_or_else(|e| e.into_inner());
        if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            *task = Some(cx.waker().clone());
        }
    }

    /// A context whose waker is the watcher: a caller polled with it is watched.
    pub(crate) fn context(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }

    /// Watches `waiter`'s caller; true if it is gone already. Outside tokio's task
    /// budget: a reply sender polled on a task that spent its budget (a burst of calls
    /// taken from the intake) would say `Pending` without watching.
    pub(crate) fn watch<Resp>(&self, waiter: &mut Waiter<Resp>) -> bool {
        super::unbudgeted(&mut self.context(), |cx| waiter.poll_gone(cx))
    }

    /// Marks that a caller left (found by the task itself: a deadline, a caller gone
    /// before it was watched), and wakes the task to write its notice.
    pub(crate) fn left(&self) {
        self.waker.wake_by_ref();
    }

    /// Did a watched caller leave since the last time? Clears the mark.
    pub(crate) fn take_left(&self) -> bool {
        self.watch.left.load(Ordering::Relaxed) && self.watch.left.swap(false, Ordering::Acquire)
    }

    pub(crate) fn push(&mut self, id: u64, seq: u64) {
        self.queue.push_back((id, seq));
    }

    pub(crate) fn pop(&mut self) -> Option<(u64, u64)> {
        self.queue.pop_front()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    #[test]
    fn a_caller_leaving_marks_the_connection_and_wakes_its_task() {
        let notices = Notices::new();
        let (task, woken) = futures_test_waker();
        notices.register(&Context::from_waker(&task));
        let (mut tx, rx) = tokio::sync::oneshot::channel::<u8>();
        assert_eq!(tx.poll_closed(&mut notices.context()), Poll::Pending);
        assert!(!notices.take_left());
        drop(rx);
        assert!(woken.load(Ordering::SeqCst));
        assert!(notices.take_left());
        assert!(!notices.take_left(), "the mark is cleared once taken");
    }

    /// A waker that records that it was woken.
    fn futures_test_waker() -> (Waker, Arc<AtomicBool>) {
        struct Flag(Arc<AtomicBool>);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(AtomicBool::new(false));
        (Waker::from(Arc::new(Flag(woken.clone()))), woken)
    }
}
