//! The session-mode backend the gRPC service calls: a small key-value protocol whose
//! frames carry a 32-bit session id that the server copies into its reply, so replies
//! may come back in any order over one connection.
//!
//! ```text
//! +---------------+--------------+--------+-------------------+-----+-------+
//! | len: u32 (BE) | id: u32 (BE) | op: u8 | key len: u16 (BE) | key | value |
//! +---------------+--------------+--------+-------------------+-----+-------+
//! ```
//!
//! `len` counts everything after itself. Requests are [`op::GET`] and [`op::SET`];
//! replies are [`op::VALUE`], [`op::STORED`], [`op::MISSING`] and the two error replies,
//! which [`Kv::check`](socketchannel::Protocol::check) turns into a [`BackendError`]
//! that fails its own call only.
//!
//! [`Backend`] is an in-process server of the protocol, with the behaviours the tests
//! need: keys under `slow/` are answered after a delay, keys under `hang/` never, and
//! [`Backend::kill`] drops the listener and every connection at once.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use socketchannel::{BoxError, Protocol, Sessions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify, mpsc};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_util::codec::{Decoder, Encoder, FramedRead};

/// The opcodes.
pub mod op {
    /// Request: the value of the key.
    pub const GET: u8 = 0x01;
    /// Request: store the value under the key.
    pub const SET: u8 = 0x02;
    /// Reply: the key's value.
    pub const VALUE: u8 = 0x81;
    /// Reply: stored.
    pub const STORED: u8 = 0x82;
    /// Reply: the key has no value.
    pub const MISSING: u8 = 0x83;
    /// Error reply: the request is wrong (an empty key); the value is the message.
    pub const BAD_REQUEST: u8 = 0xe0;
    /// Error reply: the backend failed; the value is the message.
    pub const FAILED: u8 = 0xe1;
}

/// One frame, request or reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    /// The session id: written by the channel, copied by the backend into its reply.
    pub id: u32,
    /// What it is: see [`op`].
    pub op: u8,
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
}

impl Frame {
    /// `GET key`.
    pub fn get(key: impl Into<Bytes>) -> Frame {
        Frame {
            op: op::GET,
            key: key.into(),
            ..Frame::default()
        }
    }

    /// `SET key value`.
    pub fn set(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Frame {
        Frame {
            op: op::SET,
            key: key.into(),
            value: value.into(),
            ..Frame::default()
        }
    }

    fn reply(&self, op: u8, value: impl Into<Bytes>) -> Frame {
        Frame {
            id: self.id,
            op,
            key: Bytes::new(),
            value: value.into(),
        }
    }
}

/// Encodes and decodes [`Frame`]s, both ways (the backend uses it too).
#[derive(Debug, Clone, Copy, Default)]
pub struct Codec;

/// Frames past this are a decode error.
const MAX_FRAME: usize = 16 << 20;
const HEADER: usize = 4 + 1 + 2;

impl Encoder<Frame> for Codec {
    type Error = io::Error;

    fn encode(&mut self, f: Frame, dst: &mut BytesMut) -> io::Result<()> {
        let key_len = u16::try_from(f.key.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "key too long"))?;
        let len = HEADER + f.key.len() + f.value.len();
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame too long",
            ));
        }
        dst.reserve(4 + len);
        dst.put_u32(len as u32);
        dst.put_u32(f.id);
        dst.put_u8(f.op);
        dst.put_u16(key_len);
        dst.put_slice(&f.key);
        dst.put_slice(&f.value);
        Ok(())
    }
}

impl Decoder for Codec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = (&src[..4]).get_u32() as usize;
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        if !(HEADER..=MAX_FRAME).contains(&len) {
            return Err(invalid(format!("bad frame length {len}")));
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut body = src.split_to(len).freeze();
        let id = body.get_u32();
        let op = body.get_u8();
        let key_len = body.get_u16() as usize;
        if key_len > body.len() {
            return Err(invalid(format!("key of {key_len} bytes past the frame")));
        }
        let key = body.split_to(key_len);
        Ok(Some(Frame {
            id,
            op,
            key,
            value: body,
        }))
    }
}

/// What a frame means to the channel: `id` is the session id, and an error reply fails
/// its own call with a [`BackendError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Kv;

impl Protocol<Frame, Frame> for Kv {
    fn check(&self, f: Frame) -> Result<Frame, BoxError> {
        match f.op {
            op::BAD_REQUEST | op::FAILED => Err(BackendError {
                bad_request: f.op == op::BAD_REQUEST,
                message: String::from_utf8_lossy(&f.value).into_owned(),
            }
            .into()),
            _ => Ok(f),
        }
    }
}

impl Sessions<Frame, Frame> for Kv {
    type Id = u32;

    fn stamp(&self, req: &mut Frame, id: u32) {
        req.id = id;
    }

    fn session(&self, resp: &Frame) -> Option<u32> {
        Some(resp.id)
    }
}

/// An error reply from the backend: the source of the channel's `Kind::Server` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    /// The request was wrong ([`op::BAD_REQUEST`]), rather than the backend failing.
    pub bad_request: bool,
    /// What the backend said.
    pub message: String,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.bad_request {
            "bad request"
        } else {
            "failed"
        };
        write!(f, "backend: {what}: {}", self.message)
    }
}

impl std::error::Error for BackendError {}

/// An in-process backend on a free 127.0.0.1 port. Dropping it (or [`kill`]) closes
/// its listener and every connection.
///
/// [`kill`]: Backend::kill
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    data: Mutex<HashMap<Bytes, Bytes>>,
    slow: Duration,
    /// Requests read, all connections together.
    received: AtomicU64,
    /// Woken when a `hang/` request has been read.
    hung: Notify,
}

impl Backend {
    /// Starts one that answers `slow/` keys after `slow`.
    ///
    /// # Errors
    ///
    /// It could not bind 127.0.0.1:0.
    pub async fn start(slow: Duration) -> io::Result<Backend> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            slow,
            ..State::default()
        });
        let server = tokio::spawn(accept(listener, state.clone()));
        Ok(Backend {
            addr,
            state,
            server,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests read so far.
    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::Relaxed)
    }

    /// Waits until a request for a `hang/` key has been read (one that will never be
    /// answered): the call is in flight.
    pub async fn hung(&self) {
        self.state.hung.notified().await;
    }

    /// Stops it as a crash would: the listener and every connection are closed at once,
    /// unanswered requests left unanswered. Later connects are refused.
    pub async fn kill(mut self) {
        self.server.abort();
        let _ = (&mut self.server).await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Accepts connections; each is served by a task of a set owned here, so aborting this
/// task drops them all.
async fn accept(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve(stream, state.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// One connection: every request is answered by a task of its own, so a slow key holds
/// up no other, and replies go out in the order they are ready.
async fn serve(stream: TcpStream, state: Arc<State>) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let mut requests = JoinSet::new();
    let writer = async move {
        let mut buf = BytesMut::new();
        while let Some(reply) = rx.recv().await {
            buf.clear();
            if Codec.encode(reply, &mut buf).is_err() || write.write_all(&buf).await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        let mut frames = FramedRead::new(read, Codec);
        while let Some(Ok(req)) = frames.next().await {
            state.received.fetch_add(1, Ordering::Relaxed);
            while requests.try_join_next().is_some() {}
            let (state, tx) = (state.clone(), tx.clone());
            requests.spawn(async move {
                if let Some(reply) = answer(&state, req).await {
                    let _ = tx.send(reply);
                }
            });
        }
    };
    // The connection ends when the client closes it (or sends garbage), or its writes
    // fail; unanswered requests are dropped with it.
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
}

async fn answer(state: &State, req: Frame) -> Option<Frame> {
    if req.key.is_empty() {
        return Some(req.reply(op::BAD_REQUEST, "empty key"));
    }
    if req.key.starts_with(b"hang/") {
        state.hung.notify_one();
        return std::future::pending().await;
    }
    if req.key.starts_with(b"slow/") {
        tokio::time::sleep(state.slow).await;
    }
    Some(match req.op {
        op::GET => match state.data.lock().await.get(&req.key) {
            Some(v) => req.reply(op::VALUE, v.clone()),
            None => req.reply(op::MISSING, ""),
        },
        op::SET => {
            state
                .data
                .lock()
                .await
                .insert(req.key.clone(), req.value.clone());
            req.reply(op::STORED, "")
        }
        other => req.reply(op::FAILED, format!("unknown op 0x{other:02x}")),
    })
}
