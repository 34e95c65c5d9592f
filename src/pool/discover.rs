//! The pool's list of connections as one handle's balance discovers it: a
//! `tower::discover::Discover` of the changes since it last looked.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::task::AtomicWaker;
use tower::discover::Change;

use super::member::Member;
use super::members::Members;

/// Yields an `Insert` for every connection added to the pool and a `Remove` for every
/// one taken out, keyed by the connection's key, from the handle's first poll on (the
/// connections there are then inserted). It never ends.
///
/// On the hot path (the balance polls it on every `poll_ready`) it reads one atomic and
/// registers its waker; the list is read only when its generation changed.
pub(crate) struct Discovery<Req, Resp> {
    members: Arc<Members<Req, Resp>>,
    /// The generation last read; `None` before the first poll.
    seen: Option<u64>,
    /// The keys this handle's balance holds.
    known: Vec<u64>,
    changes: VecDeque<Change<u64, Member<Req, Resp>>>,
    waker: Arc<AtomicWaker>,
}

impl<Req, Resp> Discovery<Req, Resp> {
    pub(crate) fn new(members: Arc<Members<Req, Resp>>) -> Self {
        let waker = Arc::new(AtomicWaker::new());
        members.watch(&waker);
        Discovery {
            members,
            seen: None,
            known: Vec::new(),
            changes: VecDeque::new(),
            waker,
        }
    }

    /// The changes from the list this handle knows to the list as it stands.
    fn catch_up(&mut self) {
        let generation = self.members.generation();
        let now = self.members.snapshot();
        self.seen = Some(generation);
        let (members, known) = (&self.members, &mut self.known);
        known.retain(|key| {
            let kept = now.iter().any(|s| s.key == *key);
            if !kept {
                self.changes.push_back(Change::Remove(*key));
            }
            kept
        });
        for slot in now.iter() {
            if !known.contains(&slot.key) {
                known.push(slot.key);
                let member = Member::new(slot.clone(), members.clone());
                self.changes.push_back(Change::Insert(slot.key, member));
            }
        }
    }
}

impl<Req, Resp> Stream for Discovery<Req, Resp> {
    type Item = Result<Change<u64, Member<Req, Resp>>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(change) = this.changes.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            this.waker.register(cx.waker());
            if this.seen == Some(this.members.generation()) {
                return Poll::Pending;
            }
            this.catch_up();
        }
    }
}
