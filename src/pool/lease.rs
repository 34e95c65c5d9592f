//! An exclusive lease of one connection of a pool.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tower::load::Load;

use super::member::{Slot, Standing};
use super::members::{self, Found, Members};
use super::{Pool, choose};
use crate::channel::Channel;
use crate::error::Error;

/// One connection of a [`Pool`] for this caller alone, until dropped: no call of any
/// other caller goes to it meanwhile, so a stateful sequence (WATCH/MULTI/EXEC, a
/// transaction, a subscription) runs on one connection, in order. It is the
/// connection's [`Channel`] (through `Deref`), so every call shape and `Service` is
/// there.
///
/// The pool holds a leased connection out of its choice; a lease kept long makes the
/// pool one connection smaller. Dropping the lease returns the connection, whatever
/// state the sequence left it in: end a transaction before, or close the connection
/// ([`close`](Channel::close), [`shutdown`](Channel::shutdown)): the pool then reopens
/// it, a new connection with none of the sequence's state.
pub struct Lease<Req, Resp> {
    members: Arc<Members<Req, Resp>>,
    slot: Arc<Slot<Req, Resp>>,
    channel: Channel<Req, Resp>,
}

impl<Req, Resp> Pool<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Takes the least loaded connection that takes calls for this caller alone,
    /// waiting while every one is leased or connecting.
    ///
    /// # Errors
    ///
    /// When every connection is backing off or closed: the error a call gets then
    /// ([`Kind::ConnectFailed`](crate::Kind::ConnectFailed),
    /// [`Kind::Closed`](crate::Kind::Closed)).
    pub async fn lease(&self) -> Result<Lease<Req, Resp>, Error> {
        loop {
            // Read before the list (as `Pool::pick` does).
            let awaiting = self.members.awaits_endpoints();
            let slots = self.members.snapshot();
            let changed = members::changed(&self.members, &slots);
            tokio::pin!(changed);
            members::registered(changed.as_mut()).await;
            let mut usable: Vec<(usize, usize)> = Vec::new();
            let mut soon = false;
            for (i, slot) in slots.iter().enumerate() {
                match slot.standing() {
                    Standing::Usable => usable.push((slot.channel.load(), i)),
                    Standing::Soon => soon = true,
                    Standing::Down => {}
                }
            }
            usable.sort_unstable();
            for (_, i) in usable {
                let slot = &slots[i];
                let taken =
                    slot.leased
                        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst);
                if taken.is_ok() {
                    // Made first, so a caller who drops this future returns it.
                    let lease = Lease {
                        members: self.members.clone(),
                        slot: slot.clone(),
                        channel: slot.channel.clone(),
                    };
                    slot.taken.notify_waiters();
                    self.members.changes.notify_waiters();
                    // Calls handed to it by callers who found it free are in its
                    // intake before the lease's first (a synchronous step each).
                    while slot.queuing.load(Ordering::SeqCst) != 0 {
                        tokio::task::yield_now().await;
                    }
                    return Ok(lease);
                }
                soon = true;
            }
            // Endpoints to come (a pool over a `Discover`) are worth waiting for too.
            let coming = slots.is_empty() && awaiting;
            if !soon && !coming {
                return match members::find(&slots) {
                    Found::Down(i) => Err(slots[i].down_error()),
                    _ => Err(choose::no_connection()),
                };
            }
            changed.await;
        }
    }
}

impl<Req, Resp> Deref for Lease<Req, Resp> {
    type Target = Channel<Req, Resp>;

    fn deref(&self) -> &Channel<Req, Resp> {
        &self.channel
    }
}

impl<Req, Resp> Lease<Req, Resp> {
    /// The leased connection's handle, to use as a `tower::Service` (a clone of it
    /// outlives the lease: only calls made while the lease is held are exclusive).
    pub fn channel(&self) -> &Channel<Req, Resp> {
        &self.channel
    }
}

impl<Req, Resp> Drop for Lease<Req, Resp> {
    fn drop(&mut self) {
        // Closed by the lease's holder (the pool's own close and a removal set their
        // flags first): reopened, or the pool would be a connection short for good
        // (helper-58's finding). A pool closed meanwhile closes it again.
        let ours = || {
            !self.members.closed.load(Ordering::SeqCst) && !self.slot.removed.load(Ordering::SeqCst)
        };
        if self.channel.shared.is_closed() && ours() {
            self.channel.reopen();
            if !ours() {
                self.channel.close_running();
            }
        }
        self.slot.leased.store(false, Ordering::Release);
        self.members.changes.notify_waiters();
    }
}

impl<Req, Resp> fmt::Debug for Lease<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("connection", &self.slot.key)
            .field("channel", &self.channel)
            .finish()
    }
}
