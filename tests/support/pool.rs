//! Pools of the test protocol over the in-memory network (feature `pool`): the host
//! they connect to, a reconnecting builder, a fixed backoff, the pool, and a look at
//! one of its connections.

#![allow(dead_code)]

use std::time::Duration;

use socketchannel::{Backoff, Builder, Channel, Order, Pool, Reconnect, State};

use super::codec::{Msg, TestProto};
use super::memory::Net;

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
