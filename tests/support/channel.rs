//! Channels of the test protocol and their calls: the two matchers ([`Mode`]), request
//! bodies ([`msg`]), calls spawned on their own task ([`spawn_request`], [`joined`]),
//! the state watch ([`wait_state`]), and the errors behind a failed call
//! ([`channel_error`], [`into_channel_error`], [`connect_error`]).
//!
//! ```ignore
//! let call = spawn_request(&ch, "a");
//! wait_state(&ch, State::Ready).await;
//! assert_eq!(joined(call).await?.text(), "a");
//! ```

#![allow(dead_code)]

use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use socketchannel::{BoxError, Call, Channel, ConnectError, Error, State};
use tokio::task::JoinHandle;

use super::codec::Msg;
use super::{timeout, within};

/// A channel of the test protocol.
pub type Ch = Channel<Msg, Msg>;

/// Which matcher a test runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Replies in request order ([`socketchannel::Order`]).
    Order,
    /// Replies matched by id ([`socketchannel::Session`]).
    Session,
}

/// How long [`joined`] waits for a spawned call.
pub const JOIN_BOUND: Duration = Duration::from_secs(30);

/// A request with this body (id 0, kind normal).
pub fn msg(body: impl Into<String>) -> Msg {
    Msg::new(body.into())
}

/// What [`spawn_request`] takes: a body (as for [`msg`]) or a whole [`Call`].
pub struct CallOf(pub Call<Msg>);

impl From<&str> for CallOf {
    fn from(body: &str) -> Self {
        CallOf(Call::new(msg(body)))
    }
}

impl From<String> for CallOf {
    fn from(body: String) -> Self {
        CallOf(Call::new(msg(body)))
    }
}

impl From<Call<Msg>> for CallOf {
    fn from(call: Call<Msg>) -> Self {
        CallOf(call)
    }
}

/// Makes the call `ch.request(call)` on a task of its own; await it with [`joined`].
pub fn spawn_request(ch: &Ch, call: impl Into<CallOf>) -> JoinHandle<Result<Msg, Error>> {
    let ch = ch.clone();
    let call = call.into().0;
    tokio::spawn(async move { ch.request(call).await })
}

/// Starts a graceful shutdown of `ch` (deadline 5 s), lets it begin, runs `leave` (the
/// last waiting caller goes), and checks that the shutdown then ends at once rather
/// than at its deadline; `what` names the case in the failure.
pub async fn shutdown_ends_when(ch: &Ch, leave: impl FnOnce(), what: &str) {
    let down = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.shutdown(Duration::from_secs(5)).await })
    };
    super::script::settle().await;
    let left = tokio::time::Instant::now();
    leave();
    tokio::time::timeout(Duration::from_secs(10), down)
        .await
        .expect("the shutdown ends")
        .unwrap();
    assert!(
        left.elapsed() < Duration::from_secs(1),
        "{what}: the shutdown waited for its deadline"
    );
}

/// Awaits a spawned call (or any task) within `limit`; panics, with the caller's
/// location, if it takes longer or if the task panicked.
#[track_caller]
pub fn joined_within<T>(limit: Duration, h: JoinHandle<T>) -> impl Future<Output = T> {
    let f = timeout(limit, h);
    async move { f.await.expect("the call task panicked") }
}

/// [`joined_within`] [`JOIN_BOUND`].
#[track_caller]
pub fn joined<T>(h: JoinHandle<T>) -> impl Future<Output = T> {
    joined_within(JOIN_BOUND, h)
}

/// Waits (at most 30 s of the runtime's clock) until the channel is in `state`.
pub async fn wait_state(ch: &Ch, state: State) {
    let mut rx = ch.state();
    within(
        30,
        &format!("state {state:?}"),
        rx.wait_for(|s| *s == state),
    )
    .await
    .expect("the state watch is alive");
}

/// The channel error behind a tower error, if it is one.
pub fn channel_error(err: &BoxError) -> Option<&Error> {
    err.downcast_ref::<Error>()
}

/// The channel error behind a tower error; panics if it is something else.
pub fn into_channel_error(err: BoxError) -> Error {
    match err.downcast::<Error>() {
        Ok(err) => *err,
        Err(other) => panic!("not a socketchannel::Error: {other}"),
    }
}

/// The `ConnectError` behind a `Kind::ConnectFailed` error; panics if there is none.
pub fn connect_error(err: &Error) -> &ConnectError {
    err.source()
        .and_then(|s| s.downcast_ref::<ConnectError>())
        .unwrap_or_else(|| panic!("no ConnectError behind {err:?}"))
}

/// Makes a call of `body` through tower's `Timeout` and gives up on it after 100 ms:
/// the server must not answer it (it is left an orphan).
pub async fn abandon(ch: &Ch, body: &str) {
    use tower::{Service, ServiceBuilder, ServiceExt};
    let mut svc = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .service(ch.clone());
    let gave_up = svc.ready().await.expect("ready").call(msg(body)).await;
    assert!(gave_up.is_err(), "nobody answers {body:?}");
}
