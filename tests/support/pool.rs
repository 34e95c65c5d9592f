//! Pools of the test protocol over the in-memory network (feature `pool`): the host
//! they connect to, a reconnecting builder, a fixed backoff, the pool, and a look at
//! one of its connections.

#![allow(dead_code)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Backoff, Builder, Channel, Endpoint, Error, Order, Pool, Reconnect, State};
use tokio::task::JoinHandle;

use super::channel::msg;
use super::codec::{Kind as MsgKind, Msg, TestProto};
use super::eventually;
use super::memory::{Io, Net};

/// The host a pool's connections go to.
pub const HOST: &str = "a:1";

/// A pool of the test protocol.
pub type P = Pool<Msg, Msg>;

/// A builder for `HOST`, reconnecting persistently with `backoff`.
pub fn builder(backoff: Backoff) -> Builder<Msg, Msg> {
    Channel::builder()
        .host(HOST)
        .reconnect(Reconnect::Persistent)
        .backoff(backoff)
}

/// The same wait after every failed pass.
pub fn fixed(d: Duration) -> Backoff {
    Backoff::exponential(d, d)
}

/// A pool of `size` in order mode over `net`, built by `builder`.
pub fn build(net: &Net, builder: Builder<Msg, Msg>, size: usize) -> P {
    builder
        .pool(size)
        .connector(net.connector(), Order::new(TestProto))
        .expect("valid host")
}

/// A pool of `per` connections to each endpoint `discover` yields, in order mode over
/// `net`, reconnecting persistently; `builder` (with no host) sets the rest.
pub fn discovered<D>(net: &Net, builder: Builder<Msg, Msg>, per: usize, discover: D) -> P
where
    D: tower::discover::Discover<Service = Endpoint> + Send + Unpin + 'static,
    D::Key: std::hash::Hash + Eq + Send + 'static,
    D::Error: Into<socketchannel::BoxError>,
{
    builder
        .reconnect(Reconnect::Persistent)
        .pool(per)
        .discover(discover)
        .connector(net.connector(), Order::new(TestProto))
        .expect("no host to parse")
}

/// A pool of `size` over `net`, reconnecting persistently with a fixed backoff.
pub fn pool(net: &Net, size: usize, backoff: Duration) -> P {
    build(net, builder(fixed(backoff)), size)
}

/// The pool's `i`-th connection.
pub fn member(pool: &P, i: usize) -> Channel<Msg, Msg> {
    pool.channels().nth(i).expect("a member")
}

/// Is the channel connected?
pub fn ready(c: &Channel<Msg, Msg>) -> bool {
    *c.state().borrow() == State::Ready
}

/// Echoes every request; `quit` drops the connection unanswered; `hold` is answered
/// after a second (without holding up the replies behind it); `mute` is never
/// answered; `push` sends a push frame before its reply.
pub fn hold_net() -> Net {
    Net::new(|_: Endpoint, io: Io| async move {
        let (mut tx, mut rx) = io.split();
        let (replies, mut out) = futures::channel::mpsc::unbounded::<Msg>();
        let writer = async move {
            while let Some(m) = out.next().await {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        };
        let reader = async move {
            while let Some(Ok(req)) = rx.next().await {
                match req.text() {
                    "quit" => return,
                    "mute" => {}
                    "push" => {
                        let push = Msg::new("pushed").kind(MsgKind::Push);
                        let _ = replies.unbounded_send(push);
                        let _ = replies.unbounded_send(req);
                    }
                    "hold" => {
                        let replies = replies.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let _ = replies.unbounded_send(req);
                        });
                    }
                    _ => {
                        let _ = replies.unbounded_send(req);
                    }
                }
            }
        };
        tokio::select! {
            _ = writer => {}
            _ = reader => {}
        }
    })
}

/// A connected pool of 1 over a [`hold_net`], reconnecting after a fixed `backoff`,
/// that may grow to 2 (dwell 200 ms, target 1): [`grow`] makes it.
pub async fn growable(net: &Net, backoff: Duration) -> P {
    let pool = builder(fixed(backoff))
        .pool(1)
        .grow_to(2)
        .dwell(Duration::from_millis(200))
        .target_load(1)
        .connector(net.connector(), Order::new(TestProto))
        .unwrap();
    pool.connect().await.unwrap();
    pool
}

/// Four `hold` calls on a [`growable`] pool, returned once it has grown to 2 under
/// them, still held.
pub async fn grow(pool: &P) -> Vec<JoinHandle<Result<Msg, Error>>> {
    let held = (0..4)
        .map(|_| {
            let p = pool.clone();
            tokio::spawn(async move { p.request(msg("hold")).await })
        })
        .collect();
    eventually(Duration::from_millis(900), "grows", || pool.size() == 2).await;
    held
}

/// A [`growable`] pool that has [`grow`]n: returned with the calls it grew under.
pub async fn grown(net: &Net, backoff: Duration) -> (P, Vec<JoinHandle<Result<Msg, Error>>>) {
    let pool = growable(net, backoff).await;
    let held = grow(&pool).await;
    (pool, held)
}

/// The sender of a [`feed`]'s changes.
pub type Feed = tokio::sync::mpsc::UnboundedSender<tower::discover::Change<&'static str, Endpoint>>;

/// A `Discover` fed by the test.
pub fn feed() -> (
    Feed,
    impl tower::discover::Discover<
        Key = &'static str,
        Service = Endpoint,
        Error = std::convert::Infallible,
    > + Send
    + Unpin
    + 'static,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let discover = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|change| change.map(Ok::<_, std::convert::Infallible>))
    });
    (tx, discover)
}

/// A pool over a [`feed`] with an intake of 1, endpoint "a" inserted and answering a
/// first call; and a handle, ready for its next call, that holds the only slot of a's
/// intake (as a handle's balance does).
pub async fn held_intake(net: &Net) -> (P, Feed, P) {
    use tower::ServiceExt;
    let (changes, discover) = feed();
    let pool = Channel::builder()
        .config(socketchannel::Config::default().queue(1))
        .reconnect(Reconnect::Persistent)
        .pool(1)
        .discover(discover)
        .connector(net.connector(), Order::new(TestProto))
        .expect("valid host");
    changes
        .send(tower::discover::Change::Insert("a", Endpoint::new("a", 1)))
        .expect("the feed");
    assert_eq!(
        pool.request(msg("warm")).await.expect("warm").text(),
        "warm"
    );
    let mut holder = pool.clone();
    ServiceExt::<Msg>::ready(&mut holder).await.expect("ready");
    (pool, changes, holder)
}
