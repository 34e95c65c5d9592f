//! Cancel notices (session mode): telling the server that a written call's caller is
//! gone, so it can stop working on it ([`Sessions::cancel`](crate::Sessions::cancel)).
//!
//! The callers say when they leave. A channel whose protocol sends notices gives each
//! caller's end of a reply (a response future, a reply stream) its [`Leaving`]: one
//! dropped before its outcome arrived closes its receiver and then counts itself there,
//! which wakes the connection task. The task counts there itself for a caller it made
//! gone while the server still works on the call: a deadline, a reply limit
//! ([`left`](Notices::left)). Each connection keeps the count it last saw; when the
//! count moved, it scans its waiting calls once for the callers that left and queues
//! each one's id. The write path writes a queued notice ahead of any call, and never
//! between the parts of a multi-part request, building it only then, and only if the
//! call still waits (a reply that came in the meantime freed its id, which a new call
//! may have taken).
//!
//! Nothing is registered per call on the connection's side, so a notice costs the hot
//! path one reference count per call on the caller's side. That count is taken on one
//! of a few [`Stripe`]s, picked by the calling thread, not on the `Leaving` itself: on a
//! multi-thread runtime, callers on every worker taking and dropping one reference
//! would bounce its cache line between the cores on every call. A channel whose
//! protocol sends none has no `Leaving`: the feature costs nothing unless it is used.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Waker};

/// A channel's count of the callers that left, and the task they wake.
#[derive(Debug, Default)]
pub(crate) struct Leaving {
    /// Callers that left (or were made gone by the task), ever.
    count: AtomicU64,
    /// The connection task.
    task: Mutex<Option<Waker>>,
}

impl Leaving {
    /// A caller left: count it and wake the task. The caller's receiver must be closed
    /// first, so that the scan this wakes finds it gone.
    pub(crate) fn left(&self) {
        self.count.fetch_add(1, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

/// A channel's [`Leaving`] and the stripes its callers reach it through.
#[derive(Debug)]
pub(crate) struct Leavers {
    leaving: Arc<Leaving>,
    /// A power of two of them, so that a thread's is a mask away.
    stripes: Box<[Arc<Stripe>]>,
}

/// A way to a channel's [`Leaving`]: what a caller's end holds until its outcome is
/// taken. Aligned so that its reference count is on a cache line of its own.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Stripe(Arc<Leaving>);

impl Stripe {
    /// See [`Leaving::left`].
    pub(crate) fn left(&self) {
        self.0.left();
    }
}

impl Leavers {
    pub(crate) fn new() -> Self {
        let leaving = Arc::new(Leaving::default());
        let stripes = (0..stripes())
            .map(|_| Arc::new(Stripe(leaving.clone())))
            .collect();
        Leavers { leaving, stripes }
    }

    pub(crate) fn leaving(&self) -> &Arc<Leaving> {
        &self.leaving
    }

    /// The calling thread's stripe.
    #[inline]
    pub(crate) fn pick(&self) -> Arc<Stripe> {
        self.stripes[thread_index() & (self.stripes.len() - 1)].clone()
    }
}

/// How many stripes a channel has: the machine's cores, as a power of two, 16 at most.
/// Threads are numbered in the order they first call, so the few that call in turn (a
/// runtime's workers) mostly get stripes of their own; two that share one pay what one
/// `Leaving` cost them both.
fn stripes() -> usize {
    static STRIPES: OnceLock<usize> = OnceLock::new();
    *STRIPES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(16)
            .next_power_of_two()
    })
}

/// The calling thread's number: given when it first asks.
#[inline]
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        let mut i = index.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed);
            index.set(i);
        }
        i
    })
}

/// One connection's view of its channel's [`Leaving`], and the notices it has still
/// to write.
pub(crate) struct Notices {
    leaving: Arc<Leaving>,
    /// The count the last scan answered.
    seen: u64,
    /// The calls to write a notice for: `(session id, sequence number)`.
    queue: VecDeque<(u64, u64)>,
}

impl Notices {
    pub(crate) fn new(leaving: Arc<Leaving>) -> Self {
        let seen = leaving.count.load(Ordering::Acquire);
        Notices {
            leaving,
            seen,
            queue: VecDeque::new(),
        }
    }

    /// Wakes `cx`'s task when a caller leaves. Call it before
    /// [`take_left`](Self::take_left), so that no leaving falls between the two.
    pub(crate) fn register(&self, cx: &Context<'_>) {
        let mut task = self.leaving.task.lock().unwrap_or_else(|e| e.into_inner());
        if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            *task = Some(cx.waker().clone());
        }
    }

    /// Marks that a caller left (found by the task itself: a deadline, a reply limit),
    /// and wakes the task to write its notice.
    pub(crate) fn left(&self) {
        self.leaving.left();
    }

    /// Did a caller leave since the last time? Then the caller scans.
    pub(crate) fn take_left(&mut self) -> bool {
        let count = self.leaving.count.load(Ordering::Acquire);
        if count == self.seen {
            return false;
        }
        self.seen = count;
        true
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
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    #[test]
    fn every_stripe_leads_to_the_one_count() {
        let leavers = Leavers::new();
        let mut notices = Notices::new(leavers.leaving().clone());
        assert!(leavers.stripes.len().is_power_of_two());
        for stripe in leavers.stripes.iter() {
            stripe.left();
            assert!(notices.take_left());
        }
        let picked = std::thread::scope(|s| s.spawn(|| leavers.pick()).join().unwrap());
        picked.left();
        assert!(notices.take_left(), "another thread's stripe counts too");
    }

    #[test]
    fn a_caller_leaving_marks_every_connection_and_wakes_the_task() {
        let leaving = Arc::new(Leaving::default());
        let (mut current, mut draining) =
            (Notices::new(leaving.clone()), Notices::new(leaving.clone()));
        let (task, woken) = flag_waker();
        current.register(&Context::from_waker(&task));
        assert!(!current.take_left());
        leaving.left();
        assert!(woken.load(Ordering::SeqCst));
        assert!(current.take_left());
        assert!(!current.take_left(), "the mark is cleared once taken");
        assert!(draining.take_left(), "each connection scans for itself");
    }

    /// A waker that records that it was woken.
    fn flag_waker() -> (Waker, Arc<AtomicBool>) {
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
