//! The connections of a pool, shared by every handle: a list that grows and shrinks,
//! read as snapshots.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio::sync::watch;
use tower::load::Load;

use super::member::{Slot, Standing};
use crate::channel::Channel;

/// The list as it stands: cheap to clone, never changed in place.
pub(crate) type Snapshot<Req, Resp> = Arc<[Arc<Slot<Req, Resp>>]>;

/// Makes the connection with this key: the pool's builder's settings, taking turns.
pub(crate) type Factory<Req, Resp> = Box<dyn Fn(u64) -> Channel<Req, Resp> + Send + Sync>;

pub(crate) struct Members<Req, Resp> {
    current: RwLock<Snapshot<Req, Resp>>,
    /// Bumped on every change of the list, after `current`.
    generation: AtomicU64,
    /// The handles' balances to wake when the list changes (their `Discover`s).
    watchers: Mutex<Vec<Weak<AtomicWaker>>>,
    /// Bumped when a lease is taken or returned.
    pub(crate) leases: watch::Sender<()>,
    next_key: AtomicU64,
    factory: Factory<Req, Resp>,
    /// Closed by the user: nothing is added from now on.
    pub(crate) closed: AtomicBool,
    /// The size never changes.
    fixed: bool,
}

/// What a caller choosing a connection found, in a snapshot.
pub(crate) enum Found {
    Usable(usize),
    /// None is usable, one will be soon.
    Wait,
    /// Every connection is down: this one fails calls fast.
    Down(usize),
    /// There is no connection at all.
    Empty,
}

impl<Req, Resp> Members<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// A pool of `size` connections made by `factory`; `fixed`: always that many.
    pub(crate) fn new(size: usize, fixed: bool, factory: Factory<Req, Resp>) -> Self {
        let members = Members {
            current: RwLock::new(Arc::from(Vec::new())),
            generation: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            leases: watch::Sender::new(()),
            next_key: AtomicU64::new(0),
            factory,
            closed: AtomicBool::new(false),
            fixed,
        };
        for _ in 0..size {
            members.grow();
        }
        members
    }

    /// Adds a connection.
    pub(crate) fn grow(&self) {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new(key, (self.factory)(key)));
        self.change(|list| list.push(slot));
    }

    /// Takes the connection `key` out of the list: no new call goes to it; the caller
    /// drains it.
    pub(crate) fn remove(&self, key: u64) -> Option<Arc<Slot<Req, Resp>>> {
        let mut removed = None;
        self.change(|list| {
            if let Some(at) = list.iter().position(|s| s.key == key) {
                removed = Some(list.remove(at));
            }
        });
        removed
    }
}

impl<Req, Resp> Members<Req, Resp> {
    pub(crate) fn snapshot(&self) -> Snapshot<Req, Resp> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The one connection of a pool that always has exactly one.
    pub(crate) fn fixed_one(&self) -> Option<Arc<Slot<Req, Resp>>> {
        let slots = self.snapshot();
        (self.fixed && slots.len() == 1).then(|| slots[0].clone())
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn change(&self, edit: impl FnOnce(&mut Vec<Arc<Slot<Req, Resp>>>)) {
        {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            let mut list = current.to_vec();
            edit(&mut list);
            *current = Arc::from(list);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.retain(|w| match w.upgrade() {
            Some(waker) => {
                waker.wake();
                true
            }
            None => false,
        });
        // A handle waiting for a connection that was not there wakes too.
        self.leases.send_replace(());
    }

    /// Wakes `waker` at every change of the list from now on, while it lives.
    pub(crate) fn watch(&self, waker: &Arc<AtomicWaker>) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        // Amortized: the dropped handles' entries go when the list has doubled.
        if watchers.len() >= 64 && watchers.len().is_power_of_two() {
            watchers.retain(|w| w.strong_count() > 0);
        }
        watchers.push(Arc::downgrade(waker));
    }
}

/// The least loaded usable connection of `slots`, else what to do instead.
pub(crate) fn find<Req, Resp>(slots: &[Arc<Slot<Req, Resp>>]) -> Found {
    let mut best: Option<(usize, usize)> = None;
    let mut soon = false;
    // A connection that backs off fails a call with why it cannot connect, a closed one
    // only with `Closed`.
    let mut down = None;
    for (i, slot) in slots.iter().enumerate() {
        match slot.standing() {
            Standing::Usable => {
                let load = slot.channel.load();
                if best.is_none_or(|(_, least)| load < least) {
                    best = Some((i, load));
                }
            }
            Standing::Soon => soon = true,
            Standing::Down if slot.channel.shared.is_backing_off() => down = Some(i),
            Standing::Down => {
                down.get_or_insert(i);
            }
        }
    }
    match (best, down) {
        (Some((i, _)), _) => Found::Usable(i),
        _ if soon => Found::Wait,
        (None, Some(i)) => Found::Down(i),
        (None, None) => Found::Empty,
    }
}

/// Is every connection of `slots` down (or is there none)? Stops at the first that is
/// not: on the hot path, the first one usually.
pub(crate) fn all_down<Req, Resp>(slots: &[Arc<Slot<Req, Resp>>]) -> bool {
    slots.iter().all(|s| s.standing() == Standing::Down)
}

/// The load of the usable connections of `slots`, summed; `usize::MAX` when none is.
pub(crate) fn load<Req, Resp>(slots: &[Arc<Slot<Req, Resp>>]) -> usize {
    let usable = slots.iter().filter(|s| s.standing() == Standing::Usable);
    usable
        .map(|s| s.channel.load())
        .reduce(usize::saturating_add)
        .unwrap_or(usize::MAX)
}

/// Resolves at the next change of a state of one of `slots`, of a lease, or of the list
/// after this call (the receivers are made, so marked seen, here).
pub(crate) fn changed<Req, Resp>(
    members: &Members<Req, Resp>,
    slots: &[Arc<Slot<Req, Resp>>],
) -> impl Future<Output = ()> + Send + 'static {
    type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;
    let mut waits: Vec<Wait> = slots
        .iter()
        .map(|s| {
            let mut state = s.channel.shared.state.subscribe();
            Box::pin(async move {
                let _ = state.changed().await;
            }) as Wait
        })
        .collect();
    let mut leases = members.leases.subscribe();
    waits.push(Box::pin(async move {
        let _ = leases.changed().await;
    }));
    std::future::poll_fn(move |cx| {
        if waits.iter_mut().any(|w| w.as_mut().poll(cx).is_ready()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}
