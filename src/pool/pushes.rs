//! The push frames of every connection of a pool, merged.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;

use super::members::Members;

/// The merged receiver of a [`Pool`](super::Pool)'s push frames
/// ([`Pool::pushes`](super::Pool::pushes)): each connection's frames in the order that
/// connection read them; frames of different connections in no set order. A connection
/// the pool adds later is merged in as it comes. It ends when the pool is gone and
/// every connection's receiver has ended.
pub struct Pushes<Resp> {
    /// The pool, to take the receivers of connections it adds.
    members: Box<dyn Pool<Resp>>,
    seen: Option<u64>,
    /// Woken when the pool's list changes.
    waker: Arc<AtomicWaker>,
    receivers: Keyed<Resp>,
    /// Where the next poll starts, so a busy connection does not starve the others.
    next: usize,
}

/// Push receivers by the key of their connection.
type Keyed<Resp> = Vec<(u64, mpsc::Receiver<Resp>)>;

/// The pool as `Pushes` sees it, without its request type.
trait Pool<Resp>: Send + Sync {
    /// The generation of the list; `None` once the pool is gone.
    fn generation(&self) -> Option<u64>;

    /// Wakes `waker` at every change of the list.
    fn watch(&self, waker: &Arc<AtomicWaker>);

    /// The generation of the list, and the receivers of connections not in `have`;
    /// `None` once the pool is gone.
    fn take_new(&self, have: &[u64]) -> Option<(u64, Keyed<Resp>)>;
}

impl<Req, Resp> Pool<Resp> for Weak<Members<Req, Resp>>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    fn generation(&self) -> Option<u64> {
        Some(self.upgrade()?.generation())
    }

    fn watch(&self, waker: &Arc<AtomicWaker>) {
        if let Some(members) = self.upgrade() {
            members.watch(waker);
        }
    }

    fn take_new(&self, have: &[u64]) -> Option<(u64, Keyed<Resp>)> {
        let members = self.upgrade()?;
        let generation = members.generation();
        let new = members
            .snapshot()
            .iter()
            .filter(|s| !have.contains(&s.key))
            .filter_map(|s| Some((s.key, s.channel.pushes()?)))
            .collect();
        Some((generation, new))
    }
}

impl<Resp: Send + 'static> Pushes<Resp> {
    /// The receiver, unless a caller took it before. Taken before the pool has any
    /// connection (over a `Discover`, before its first endpoint), it merges them in as
    /// they come (helper-58's finding: it was `None` then, for good).
    pub(crate) fn take<Req>(members: &Arc<Members<Req, Resp>>) -> Option<Self>
    where
        Req: Send + 'static,
    {
        if members
            .pushes_taken
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return None;
        }
        let pool: Box<dyn Pool<Resp>> = Box::new(Arc::downgrade(members));
        let (seen, receivers) = pool.take_new(&[])?;
        let waker = Arc::new(AtomicWaker::new());
        pool.watch(&waker);
        Some(Pushes {
            members: pool,
            seen: Some(seen),
            waker,
            receivers,
            next: 0,
        })
    }
}

impl<Resp> Pushes<Resp> {
    /// The next push frame of any connection, or `None` once it ended.
    pub async fn recv(&mut self) -> Option<Resp> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next push frame of any connection.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Resp>> {
        self.waker.register(cx.waker());
        let generation = self.members.generation();
        if generation.is_some() && generation != self.seen {
            let have: Vec<u64> = self.receivers.iter().map(|(key, _)| *key).collect();
            if let Some((generation, new)) = self.members.take_new(&have) {
                self.seen = Some(generation);
                self.receivers.extend(new);
            }
        }
        let mut k = 0;
        while k < self.receivers.len() {
            let i = (self.next + k) % self.receivers.len();
            match self.receivers[i].1.poll_recv(cx) {
                Poll::Ready(Some(frame)) => {
                    self.next = (i + 1) % self.receivers.len();
                    return Poll::Ready(Some(frame));
                }
                // That connection has ended: its receiver goes.
                Poll::Ready(None) => {
                    self.receivers.swap_remove(i);
                }
                Poll::Pending => k += 1,
            }
        }
        // While the pool lives it may add a connection: not the end.
        if self.receivers.is_empty() && self.members.generation().is_none() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl<Resp> Stream for Pushes<Resp> {
    type Item = Resp;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Resp>> {
        self.poll_recv(cx)
    }
}

impl<Resp> fmt::Debug for Pushes<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pushes")
            .field("connections", &self.receivers.len())
            .finish()
    }
}
