//! The HTTP-to-Redis gateway of `examples/axum_gateway.rs` and `tests/axum_gateway.rs`:
//! an axum app whose handlers call Redis through one shared [`Channel`].
//!
//! * [`app`]: the router, with the channel as its state: `GET /kv/{key}` and
//!   `PUT /kv/{key}` (the body is the value).
//! * [`connect`]: that channel, reconnecting, in order mode with the RESP codec and
//!   [`Protocol`](socketchannel::Protocol) of [`super::redis`].
//! * [`listen`]: the gateway's listener, with a backlog for bursts of clients.
//! * [`RedisServer`]: a `redis-server` child started by [`super::redis::start_server`],
//!   killed on drop.
//! * [`http`]: the client side, [`super::http::http`], re-exported so the example and
//!   the test drive the gateway through this one module.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use socketchannel::{BoxError, Channel, Error, InvalidEndpoint};
use tokio::net::{TcpListener, TcpSocket};

// Re-exported for the gateway's users; the other users of `common` leave it unused.
#[allow(unused_imports)]
pub use super::http::http;
use super::process::Server;
use super::redis::{Frame, RespCodec, cmd, start_server};

/// One channel to Redis, pipelined (RESP2 replies come in request order).
pub type Redis = Channel<Frame, Frame>;

/// A reconnecting channel to the Redis server at `addr`; it connects on first use. An
/// error reply (`-ERR ...`) fails its own call only.
pub fn connect(addr: SocketAddr) -> Result<Redis, InvalidEndpoint> {
    Channel::builder()
        .host(addr.to_string())
        .connect_timeout(Duration::from_secs(2))
        .order(RespCodec::resp2(), super::redis::Redis::commands())
}

/// The gateway: every handler borrows the one channel from the state (a clone of a
/// `Channel` is three atomic increments), so all HTTP requests share one connection.
pub fn app(redis: Redis) -> Router {
    Router::new()
        .route("/kv/{key}", get(get_key).put(put_key))
        .with_state(redis)
}

async fn get_key(State(redis): State<Redis>, Path(key): Path<String>) -> Response {
    match redis.request(cmd([&b"GET"[..], key.as_bytes()])).await {
        Ok(Frame::BlobString { data, .. }) => (StatusCode::OK, data).into_response(),
        Ok(Frame::Null) => (StatusCode::NOT_FOUND, "no such key\n").into_response(),
        Ok(other) => unexpected(&other),
        Err(e) => failed(&e),
    }
}

async fn put_key(State(redis): State<Redis>, Path(key): Path<String>, body: Bytes) -> Response {
    match redis
        .request(cmd([&b"SET"[..], key.as_bytes(), &body[..]]))
        .await
    {
        Ok(Frame::SimpleString { data, .. }) if data == "OK" => {
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(other) => unexpected(&other),
        Err(e) => failed(&e),
    }
}

fn unexpected(reply: &Frame) -> Response {
    let msg = format!("unexpected reply from redis: {reply:?}\n");
    (StatusCode::BAD_GATEWAY, msg).into_response()
}

/// A failed call, as HTTP: `503` when the command never reached Redis (the HTTP client
/// may retry it), `502` when it may have executed or Redis refused it.
fn failed(err: &Error) -> Response {
    let status = if err.is_not_sent() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_GATEWAY
    };
    (status, format!("redis: {err}\n")).into_response()
}

/// A listener for the gateway on `addr` with room for 1024 connections waiting to be
/// accepted: `TcpListener::bind` allows 128, and a burst of more concurrent clients
/// than that has some of their connects dropped and retried a second later.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A `redis-server` child listening on a free 127.0.0.1 port, with persistence off
/// (as [`start_server`] starts it). Killed (and reaped) on drop.
#[derive(Debug)]
pub struct RedisServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The child process: dropping it kills it.
    _server: Server,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// `redis-server` is not installed (the message says to install it), or did not
    /// come up.
    pub async fn start() -> Result<Self, BoxError> {
        let server = start_server(&[]).await?;
        Ok(RedisServer {
            addr: server.addr().parse()?,
            _server: server,
        })
    }
}
