//! A pool over a changing set of endpoints: a `tower::discover::Discover` of them
//! ([`PoolBuilder::discover`](super::PoolBuilder::discover)), and one such source,
//! [`DnsDiscover`], a host name resolved again and again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::oneshot;
use tower::BoxError;
use tower::discover::{Change, Discover};
use tracing::{info, warn};

use super::members::{Group, Members};
use crate::reconnect::Endpoint;

/// A change of the set, its key made the pool's own.
pub(crate) enum Edit {
    Insert(u64, Endpoint),
    Remove(u64),
}

/// A `Discover` of endpoints, its keys numbered: what the pool's driver polls.
pub(crate) trait Source: Send {
    fn poll_edit(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Edit, BoxError>>>;
}

/// Wraps a user's `Discover`, numbering its keys.
pub(crate) struct Numbered<D: Discover> {
    discover: D,
    ids: HashMap<D::Key, u64>,
    next: u64,
}

impl<D: Discover> Numbered<D> {
    pub(crate) fn new(discover: D) -> Self {
        Numbered {
            discover,
            ids: HashMap::new(),
            next: 0,
        }
    }
}

impl<D> Source for Numbered<D>
where
    D: Discover<Service = Endpoint> + Send + Unpin,
    D::Key: Hash + Eq + Send,
    D::Error: Into<BoxError>,
{
    fn poll_edit(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Edit, BoxError>>> {
        let change = std::task::ready!(Pin::new(&mut self.discover).poll_discover(cx));
        Poll::Ready(change.map(|change| {
            Ok(match change.map_err(Into::into)? {
                Change::Insert(key, endpoint) => {
                    // A key inserted again replaces its endpoint: it keeps its number,
                    // so the driver drains the group it had (helper-58's finding: a
                    // fresh number left the old group in the pool for good).
                    let next = &mut self.next;
                    let id = *self.ids.entry(key).or_insert_with(|| {
                        *next += 1;
                        *next
                    });
                    Edit::Insert(id, endpoint)
                }
                Change::Remove(key) => match self.ids.remove(&key) {
                    Some(id) => Edit::Remove(id),
                    // Never inserted: nothing to remove (number 0 is no group's).
                    None => Edit::Remove(0),
                },
            })
        }))
    }
}

/// Applies the source's changes to the pool until the source ends, fails, or the pool
/// is gone or closed: `per` connections for each endpoint inserted, every connection
/// of one removed drained (they finish their calls within `drain`). Calls wait for the
/// first endpoints until the source has given some and has no more at hand, or for
/// `first` at most.
pub(crate) async fn drive<Req, Resp>(
    members: Weak<Members<Req, Resp>>,
    mut gone: oneshot::Receiver<()>,
    mut source: Box<dyn Source>,
    per: usize,
    drain: Duration,
    first: Duration,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let mut groups: HashMap<u64, Arc<Group>> = HashMap::new();
    let mut waited = Some(Box::pin(tokio::time::sleep(first)));
    loop {
        let next = std::future::poll_fn(|cx| {
            if Pin::new(&mut gone).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            // The user's `Discover` may panic: as one that failed, the pool keeps what
            // it has and stops waiting (helper-58's finding: its calls waited for
            // ever). It is not polled again.
            let polled =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| source.poll_edit(cx)))
                    .unwrap_or_else(|panic| {
                        let panic = crate::panic::message(&*panic);
                        Poll::Ready(Some(Err(format!("it panicked: {panic}").into())))
                    });
            match polled {
                Poll::Pending => {
                    // What the source had is in, or it took too long: the pool stops
                    // waiting for endpoints.
                    let still_waiting = groups.is_empty()
                        && waited
                            .as_mut()
                            .is_some_and(|w| w.as_mut().poll(cx).is_pending());
                    if !still_waiting {
                        waited = None;
                        if let Some(members) = members.upgrade() {
                            members.endpoints_came();
                        }
                    }
                    Poll::Pending
                }
                Poll::Ready(edit) => Poll::Ready(Some(edit)),
            }
        })
        .await;
        let Some(members) = members.upgrade() else {
            return;
        };
        let closed = members.closed.load(std::sync::atomic::Ordering::Acquire);
        let edit = match next {
            Some(Some(Ok(edit))) if !closed => edit,
            Some(Some(Err(err))) => {
                warn!(error = %err, "the pool's discovery of endpoints failed; it keeps those it has");
                members.endpoints_came();
                return;
            }
            _ => {
                members.endpoints_came();
                return;
            }
        };
        match edit {
            // The same endpoint again (a source that lists all it knows anew): nothing
            // changes, no connection is made again.
            Edit::Insert(id, endpoint)
                if groups
                    .get(&id)
                    .is_some_and(|g| g.endpoint.as_ref() == Some(&endpoint)) => {}
            Edit::Insert(id, endpoint) => {
                if let Some(old) = groups.remove(&id) {
                    drain_out(members.remove_group(old.id), drain);
                }
                info!(%endpoint, "the pool adds an endpoint");
                let group = Group::new(id, Some(endpoint));
                members.grow_by(&group, per);
                groups.insert(id, group);
            }
            Edit::Remove(id) => {
                if let Some(group) = groups.remove(&id) {
                    info!(endpoint = ?group.endpoint, "the pool removes an endpoint");
                    drain_out(members.remove_group(group.id), drain);
                }
            }
        }
    }
}

/// Connections taken out of a pool finish their calls (within `drain`), then close.
pub(crate) fn drain_out<Req, Resp>(slots: Vec<Arc<super::member::Slot<Req, Resp>>>, drain: Duration)
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    for slot in slots {
        tokio::spawn(async move { slot.channel.shutdown(drain).await });
    }
}

type Resolving = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;
type Resolver = Arc<dyn Fn(String) -> Resolving + Send + Sync>;

/// A host name resolved every `every`, as a `tower::discover::Discover` of its
/// addresses ([`Change::Insert`] for each address that appeared, [`Change::Remove`] for
/// each that went), for [`PoolBuilder::discover`](super::PoolBuilder::discover): a pool
/// that follows a DNS name (a headless Kubernetes service, a round-robin record). A
/// failed resolution keeps the addresses it had, and is tried again `every` later. It
/// never ends.
///
/// The endpoints are addresses, so a TLS connector names the server by its address;
/// resolve through DNS under TLS with a connector of one's own.
pub struct DnsDiscover {
    host: String,
    port: u16,
    every: Duration,
    resolver: Resolver,
    known: HashSet<SocketAddr>,
    changes: VecDeque<Change<SocketAddr, Endpoint>>,
    resolving: Option<Resolving>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

#[cfg(feature = "tcp")]
impl DnsDiscover {
    /// Resolves `host` (with `port`) at once, then every `every` (at least 1 ms).
    pub fn new(host: impl Into<String>, port: u16, every: Duration) -> Self {
        Self::with_resolver(host, port, every, |target| {
            Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
        })
    }
}

impl DnsDiscover {
    /// [`DnsDiscover::new`] with a resolver of one's own: it is given `"host:port"`.
    pub fn with_resolver<F, Fut>(
        host: impl Into<String>,
        port: u16,
        every: Duration,
        resolve: F,
    ) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static,
    {
        DnsDiscover {
            host: host.into(),
            port,
            every: every.max(Duration::from_millis(1)),
            resolver: Arc::new(move |target| Box::pin(resolve(target))),
            known: HashSet::new(),
            changes: VecDeque::new(),
            resolving: None,
            sleep: None,
        }
    }

    /// The differences from the addresses known to `now`.
    fn learn(&mut self, now: Vec<SocketAddr>) {
        let now: HashSet<SocketAddr> = now.into_iter().collect();
        let mut gone: Vec<_> = self.known.difference(&now).copied().collect();
        let mut new: Vec<_> = now.difference(&self.known).copied().collect();
        gone.sort_unstable();
        new.sort_unstable();
        for addr in gone {
            self.changes.push_back(Change::Remove(addr));
        }
        for addr in new {
            let endpoint = Endpoint::new(addr.ip().to_string(), addr.port());
            self.changes.push_back(Change::Insert(addr, endpoint));
        }
        self.known = now;
    }
}

impl Stream for DnsDiscover {
    type Item = Result<Change<SocketAddr, Endpoint>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(change) = this.changes.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if let Some(resolving) = &mut this.resolving {
                let resolved = std::task::ready!(resolving.as_mut().poll(cx));
                this.resolving = None;
                this.sleep = Some(Box::pin(tokio::time::sleep(this.every)));
                match resolved {
                    Ok(addrs) => this.learn(addrs),
                    Err(err) => {
                        warn!(host = %this.host, error = %err, "resolving the pool's host failed; keeping its addresses");
                    }
                }
                continue;
            }
            if let Some(sleep) = &mut this.sleep {
                std::task::ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }
            let target = format!("{}:{}", this.host, this.port);
            this.resolving = Some((this.resolver)(target));
        }
    }
}

impl fmt::Debug for DnsDiscover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsDiscover")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("every", &self.every)
            .field("known", &self.known)
            .finish_non_exhaustive()
    }
}
