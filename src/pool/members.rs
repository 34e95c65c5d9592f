//! The connections of a pool, shared by every handle: a list that grows and shrinks,
//! read as snapshots.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tower::load::Load;

use super::member::{Slot, Standing};
use crate::channel::Channel;

/// The list as it stands: cheap to clone, never changed in place.
pub(crate) type Snapshot<Req, Resp> = Arc<[Arc<Slot<Req, Resp>>]>;

/// Makes a connection of a group: the pool's builder's settings, to the group's
/// endpoint (or the builder's hosts), taking turns with the group's other connections.
pub(crate) type Factory<Req, Resp> = Box<dyn Fn(&Group) -> Channel<Req, Resp> + Send + Sync>;

/// The connections to one endpoint: those of a pool of one host, or those a
/// [`Discover`](tower::discover::Discover) of endpoints made for one of them.
pub(crate) struct Group {
    pub(crate) id: u64,
    /// `None`: the builder's host and backups.
    pub(crate) endpoint: Option<crate::reconnect::Endpoint>,
    /// Its connections take turns at connecting, and share one backoff.
    pub(crate) turns: crate::reconnect::Turns,
}

impl Group {
    pub(crate) fn new(id: u64, endpoint: Option<crate::reconnect::Endpoint>) -> Arc<Self> {
        Arc::new(Group {
            id,
            endpoint,
            turns: Arc::new(crate::reconnect::TurnGate::default()).turns(),
        })
    }
}

pub(crate) struct Members<Req, Resp> {
    current: RwLock<Snapshot<Req, Resp>>,
    /// Bumped on every change of the list, after `current`.
    generation: AtomicU64,
    /// The handles' balances to wake when the list changes (their `Discover`s).
    watchers: Mutex<Vec<Weak<AtomicWaker>>>,
    /// Notified when a lease is taken or returned, and when the list changes (a
    /// `Notify`: its waiters wake in the order they began to wait, so a replay wakes
    /// them alike; a `watch` wakes them in an order drawn per process).
    pub(crate) changes: tokio::sync::Notify,
    next_key: AtomicU64,
    factory: Factory<Req, Resp>,
    /// The group of a pool of one host (the sizing grows it).
    pub(crate) home: Arc<Group>,
    /// Endpoints are still to come from a `Discover`: a pool without a connection
    /// waits for one rather than failing calls.
    pub(crate) awaiting: AtomicBool,
    /// The connections' deadline for a call without one
    /// ([`Config::call_timeout`](crate::Config::call_timeout)): known before any
    /// connection is, so it bounds the wait for the first endpoints too.
    pub(crate) call_timeout: Option<std::time::Duration>,
    /// A caller took the merged push receiver ([`Pool::pushes`](super::Pool::pushes)).
    pub(crate) pushes_taken: AtomicBool,
    /// Dropped with the pool: the tasks that serve it (its discovery) end.
    gone: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// Closed by the user: nothing is added from now on.
    pub(crate) closed: AtomicBool,
    /// The size never changes.
    fixed: bool,
    /// Seeds the handles' balances (`PoolBuilder::balance_seed`), one draw per handle
    /// in the order they first choose; `None`: tower's own random source.
    pub(crate) seed: std::sync::OnceLock<AtomicU64>,
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
    pub(crate) fn new(
        size: usize,
        fixed: bool,
        call_timeout: Option<std::time::Duration>,
        factory: Factory<Req, Resp>,
    ) -> Self {
        let members = Members {
            current: RwLock::new(Arc::from(Vec::new())),
            generation: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            changes: tokio::sync::Notify::new(),
            next_key: AtomicU64::new(0),
            factory,
            home: Group::new(0, None),
            awaiting: AtomicBool::new(false),
            call_timeout,
            pushes_taken: AtomicBool::new(false),
            gone: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            fixed,
            seed: std::sync::OnceLock::new(),
        };
        for _ in 0..size {
            members.grow(&members.home.clone());
        }
        members
    }

    /// Adds a connection to `group`.
    pub(crate) fn grow(&self, group: &Arc<Group>) {
        self.grow_by(group, 1);
    }

    /// Adds `n` connections to `group`, as one change.
    pub(crate) fn grow_by(&self, group: &Arc<Group>, n: usize) {
        let slots: Vec<_> = (0..n)
            .map(|_| {
                let key = self.next_key.fetch_add(1, Ordering::Relaxed);
                Arc::new(Slot::new(key, group.id, (self.factory)(group)))
            })
            .collect();
        let added: Vec<_> = slots.iter().map(|s| s.channel.clone()).collect();
        self.change(|list| list.extend(slots));
        // A `close()` that listed the connections before these were in: they close too.
        if self.closed.load(Ordering::SeqCst) {
            added.iter().for_each(|c| c.close());
        }
    }

    /// Takes every connection of group `id` out of the list; the caller drains them.
    pub(crate) fn remove_group(&self, id: u64) -> Vec<Arc<Slot<Req, Resp>>> {
        let mut removed = Vec::new();
        self.change(|list| {
            let (gone, kept): (Vec<_>, _) = std::mem::take(list)
                .into_iter()
                .partition(|s| s.group == id);
            *list = kept;
            // Flagged before the change wakes anyone: whoever wakes sees it.
            for slot in &gone {
                slot.take_out();
            }
            removed = gone;
        });
        removed
    }

    /// Takes the connection `key` out of the list: no new call goes to it; the caller
    /// drains it.
    pub(crate) fn remove(&self, key: u64) -> Option<Arc<Slot<Req, Resp>>> {
        let mut removed = None;
        self.change(|list| {
            if let Some(at) = list.iter().position(|s| s.key == key) {
                let slot = list.remove(at);
                // Flagged before the change wakes anyone: whoever wakes sees it.
                slot.take_out();
                removed = Some(slot);
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

    /// Resolves (with an error) once the pool is gone.
    pub(crate) fn gone(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.gone.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }

    /// The endpoints came (or will not): a pool without a connection now fails calls.
    pub(crate) fn endpoints_came(&self) {
        if self.awaiting.swap(false, Ordering::AcqRel) {
            // Wakes whoever waited for them.
            self.change(|_| {});
        }
    }

    /// Endpoints are still to come from a `Discover`: a pool without a connection
    /// waits for one.
    pub(crate) fn awaits_endpoints(&self) -> bool {
        self.awaiting.load(Ordering::Acquire)
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
        self.changes.notify_waiters();
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

/// Resolves at the next end of a connect pass (or change to a state that is not a
/// pass) of one of `slots`, change of a lease, or change of the list, after its first
/// poll: poll it once, look again, then await it (`registered`).
pub(crate) fn changed<Req, Resp>(
    members: &Arc<Members<Req, Resp>>,
    slots: &[Arc<Slot<Req, Resp>>],
) -> impl Future<Output = ()> + Send + 'static
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let shared: Vec<_> = slots.iter().map(|s| s.channel.shared.clone()).collect();
    let members = members.clone();
    async move {
        let mut waits: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = shared
            .iter()
            .map(|s| Box::pin(s.connect_done.notified()))
            .collect();
        waits.push(Box::pin(members.changes.notified()));
        for wait in &mut waits {
            wait.as_mut().enable();
        }
        std::future::poll_fn(|cx| {
            if waits.iter_mut().any(|w| w.as_mut().poll(cx).is_ready()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Polls `wait` once, so that it is registered for what comes next.
pub(crate) async fn registered<F: Future>(wait: Pin<&mut F>) {
    let mut wait = Some(wait);
    std::future::poll_fn(|cx| {
        if let Some(wait) = wait.take() {
            let _ = wait.poll(cx);
        }
        Poll::Ready(())
    })
    .await;
}
