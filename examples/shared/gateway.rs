//! The HTTP-to-Redis gateway shared by `examples/axum_gateway.rs` and
//! `tests/axum_gateway.rs` (included by both with `#[path]`, so there is one copy).
//!
//! * [`app`]: an axum router whose handlers call Redis through one shared [`Channel`]
//!   held in the app state: `GET /kv/{key}` and `PUT /kv/{key}` (the body is the value).
//! * [`listen`]: the gateway's listener, with a backlog for bursts of clients.
//! * [`RedisServer`]: a `redis-server` child on a free 127.0.0.1 port, killed on drop.
//! * [`http`]: a minimal HTTP/1.1 client over a `TcpStream` (one request per connection),
//!   so neither the example nor the test needs an HTTP client crate.

use std::io;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::BytesFrame;
use socketchannel::{BoxError, Channel, Error, InvalidEndpoint, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// One channel to Redis, pipelined (RESP2 replies come in request order).
pub type Redis = Channel<BytesFrame, BytesFrame>;

/// RESP2 as the channel must know it: one frame per reply, `-ERR ...` fails its call only.
#[derive(Debug, Clone, Copy)]
pub struct RedisReplies;

impl Protocol<BytesFrame, BytesFrame> for RedisReplies {
    fn check(&self, resp: BytesFrame) -> Result<BytesFrame, BoxError> {
        match resp {
            BytesFrame::Error(msg) => Err(msg.to_string().into()),
            other => Ok(other),
        }
    }
}

/// A reconnecting channel to the Redis server at `addr`; it connects on first use.
pub fn connect(addr: SocketAddr) -> Result<Redis, InvalidEndpoint> {
    Channel::builder()
        .host(&addr.to_string())
        .connect_timeout(Duration::from_secs(2))
        .order(Resp2::default(), RedisReplies)
}

/// A Redis command as a RESP2 array of bulk strings (binary-safe arguments).
pub fn command(args: &[&[u8]]) -> BytesFrame {
    BytesFrame::Array(
        args.iter()
            .map(|a| BytesFrame::BulkString(Bytes::copy_from_slice(a)))
            .collect(),
    )
}

/// The gateway: every handler borrows the one channel from the state (a clone of a
/// `Channel` is three atomic increments), so all HTTP requests share one connection.
pub fn app(redis: Redis) -> Router {
    Router::new()
        .route("/kv/{key}", get(get_key).put(put_key))
        .with_state(redis)
}

async fn get_key(State(redis): State<Redis>, Path(key): Path<String>) -> Response {
    match redis.request(command(&[b"GET", key.as_bytes()])).await {
        Ok(BytesFrame::BulkString(value)) => (StatusCode::OK, value).into_response(),
        Ok(BytesFrame::Null) => (StatusCode::NOT_FOUND, "no such key\n").into_response(),
        Ok(other) => unexpected(&other),
        Err(e) => failed(&e),
    }
}

async fn put_key(State(redis): State<Redis>, Path(key): Path<String>, body: Bytes) -> Response {
    match redis
        .request(command(&[b"SET", key.as_bytes(), &body]))
        .await
    {
        Ok(BytesFrame::SimpleString(ok)) if ok == "OK" => StatusCode::NO_CONTENT.into_response(),
        Ok(other) => unexpected(&other),
        Err(e) => failed(&e),
    }
}

fn unexpected(reply: &BytesFrame) -> Response {
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

/// A `redis-server` child listening on a free 127.0.0.1 port, with persistence off.
/// Killed (and reaped) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RedisServer {
    /// Starts one and waits (at most 5 s) until it accepts connections.
    ///
    /// # Errors
    ///
    /// `redis-server` is not installed, or did not come up.
    pub async fn start() -> Result<Self, BoxError> {
        let mut last = String::new();
        // A free port may be taken between our probe and redis binding it: try again.
        for _ in 0..5 {
            let addr = free_port()?;
            let mut child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
                .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| -> BoxError {
                    if e.kind() == io::ErrorKind::NotFound {
                        "redis-server not found on PATH: install it (Debian: \
                         `apt-get install redis-server`)"
                            .into()
                    } else {
                        format!("could not start redis-server: {e}").into()
                    }
                })?;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if TcpStream::connect(addr).await.is_ok() {
                    return Ok(RedisServer { child, addr });
                }
                if let Some(status) = child.try_wait()? {
                    last = format!("redis-server exited with {status}");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("redis-server did not listen on {addr} within 5 s");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Err(last.into())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// One HTTP/1.1 request on its own connection (`Connection: close`); returns the status
/// code and the body. Enough for a server that sends `Content-Length` bodies, as axum
/// does for these handlers.
///
/// # Errors
///
/// I/O errors, and a response this little client does not parse.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;

    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut body = raw[split + 4..].to_vec();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked bodies are not supported by this client"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.parse().map_err(|_| bad("bad content-length"))?;
            if body.len() < len {
                return Err(bad("body shorter than content-length"));
            }
            body.truncate(len);
        }
    }
    Ok((status, body))
}
