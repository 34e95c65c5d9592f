//! Redis in order mode: RESP frames through the `redis-protocol` crate's tokio codecs,
//! and the [`Protocol`] that tells the engine what a frame means.
//!
//! * An error reply (`-ERR ...`, or RESP3's blob error) fails its own call only:
//!   [`Redis::check`](Protocol::check) turns it into a [`RedisError`].
//! * A RESP3 push frame (`>`) is a push, always. A RESP2 connection in subscribed mode
//!   has no push type: its confirmations and messages are arrays whose first element is
//!   `subscribe`, `message`, ... [`Redis::subscriber`] treats those as pushes too; use it
//!   only on a channel dedicated to pub/sub (on an ordinary one, a list that happens to
//!   start with "message" would be taken for a push).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::codec::{Resp2, Resp3};
use redis_protocol::error::{RedisProtocolError, RedisProtocolErrorKind};
use redis_protocol::resp2::types::BytesFrame as Resp2Frame;
use redis_protocol::resp3::encode::complete::extend_encode;
pub use redis_protocol::resp3::types::{BytesFrame as Frame, Resp3Frame};
use socketchannel::{BoxError, Channel, Order, Protocol, Verdict};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder, Framed};

use super::process::{Server, answers};

/// RESP on the wire, through `redis-protocol`'s tokio codecs, read into one frame type
/// ([`Frame`], RESP3's) whichever version the connection speaks.
///
/// A connection speaks RESP2 until a `HELLO 3`: use [`RespCodec::resp2`] (the default)
/// unless the handshake starts with `HELLO 3`, then [`RespCodec::resp3`]. The RESP3
/// decoder cannot read every RESP2 reply: it takes RESP2's null (`$-1`, `*-1`) for the
/// start of a streamed RESP3 aggregate and waits for the rest of it, forever.
#[derive(Debug, Default)]
pub struct RespCodec {
    version: Version,
    resp2: Resp2,
    resp3: Resp3,
}

/// The RESP version a [`RespCodec`] reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Version {
    /// RESP2: what a connection speaks until `HELLO 3`.
    #[default]
    Resp2,
    /// RESP3: after `HELLO 3`.
    Resp3,
}

impl RespCodec {
    /// For a RESP2 connection (Redis's default).
    pub fn resp2() -> Self {
        RespCodec::default()
    }

    /// For a connection whose handshake starts with `HELLO 3`.
    pub fn resp3() -> Self {
        RespCodec {
            version: Version::Resp3,
            ..RespCodec::default()
        }
    }
}

impl Clone for RespCodec {
    /// A fresh codec of the same version: each connection starts with no partly read
    /// frame. (The builder clones the codec for every connection it makes.)
    fn clone(&self) -> Self {
        RespCodec {
            version: self.version,
            ..RespCodec::default()
        }
    }
}

impl Encoder<Frame> for RespCodec {
    type Error = RedisProtocolError;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), Self::Error> {
        if matches!(&item, Frame::Array { data, .. } if data.is_empty()) {
            // Redis skips an empty command without a reply: in order mode it would take
            // the next call's reply. (This ends the connection, as any encode error does;
            // `Packed::new` refuses it on the caller's side instead.)
            return Err(not_a_command());
        }
        match self.version {
            // A command (an array of blob strings) is the same bytes in RESP2 and RESP3:
            // encode it as it is, without building a RESP2 copy.
            Version::Resp2 if is_command(&item) => self.resp3.encode(item, dst),
            Version::Resp2 => self.resp2.encode(to_resp2(item)?, dst),
            Version::Resp3 => self.resp3.encode(item, dst),
        }
    }
}

impl Encoder<Packed> for RespCodec {
    type Error = RedisProtocolError;
    fn encode(&mut self, item: Packed, dst: &mut BytesMut) -> Result<(), Self::Error> {
        dst.extend_from_slice(&item.0);
        Ok(())
    }
}

impl Decoder for RespCodec {
    type Item = Frame;
    type Error = RedisProtocolError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        match self.version {
            Version::Resp2 => Ok(self.resp2.decode(src)?.map(from_resp2)),
            Version::Resp3 => self.resp3.decode(src),
        }
    }
}

/// A non-empty array of blob strings without attributes: what every client command is.
fn is_command(frame: &Frame) -> bool {
    match frame {
        Frame::Array {
            data,
            attributes: None,
        } => {
            !data.is_empty()
                && data.iter().all(|f| {
                    matches!(
                        f,
                        Frame::BlobString {
                            attributes: None,
                            ..
                        }
                    )
                })
        }
        _ => false,
    }
}

/// The error for a request that is no command.
fn not_a_command() -> RedisProtocolError {
    RedisProtocolError::new(
        RedisProtocolErrorKind::EncodeError,
        "a command is a non-empty array of blob strings without attributes",
    )
}

/// A RESP2 frame as the RESP3 frame of the same meaning. (Not the crate's
/// `into_resp3`: that turns any three-element array starting with "message" into a
/// push, which on an ordinary connection may be a list's contents.)
fn from_resp2(frame: Resp2Frame) -> Frame {
    match frame {
        Resp2Frame::SimpleString(data) => Frame::SimpleString {
            data,
            attributes: None,
        },
        Resp2Frame::Error(data) => Frame::SimpleError {
            data,
            attributes: None,
        },
        Resp2Frame::Integer(data) => Frame::Number {
            data,
            attributes: None,
        },
        Resp2Frame::BulkString(data) => Frame::BlobString {
            data,
            attributes: None,
        },
        Resp2Frame::Array(frames) => Frame::Array {
            data: frames.into_iter().map(from_resp2).collect(),
            attributes: None,
        },
        Resp2Frame::Null => Frame::Null,
    }
}

/// A request in RESP2: the types RESP2 has.
fn to_resp2(frame: Frame) -> Result<Resp2Frame, RedisProtocolError> {
    Ok(match frame {
        Frame::BlobString { data, .. } => Resp2Frame::BulkString(data),
        Frame::SimpleString { data, .. } => Resp2Frame::SimpleString(data),
        Frame::SimpleError { data, .. } => Resp2Frame::Error(data),
        Frame::Number { data, .. } => Resp2Frame::Integer(data),
        Frame::Array { data, .. } => {
            Resp2Frame::Array(data.into_iter().map(to_resp2).collect::<Result<_, _>>()?)
        }
        Frame::Null => Resp2Frame::Null,
        other => {
            return Err(RedisProtocolError::new(
                RedisProtocolErrorKind::EncodeError,
                format!("RESP2 has no {:?} frame", other.kind()),
            ));
        }
    })
}

/// A command: an array of bulk strings, binary-safe.
///
/// ```ignore
/// let set = cmd(["SET", "key", "value"]);
/// ```
pub fn cmd<I>(args: I) -> Frame
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    Frame::Array {
        data: args
            .into_iter()
            .map(|arg| Frame::BlobString {
                data: Bytes::copy_from_slice(arg.as_ref()),
                attributes: None,
            })
            .collect(),
        attributes: None,
    }
}

/// A command already encoded in RESP, by the caller: for a `Channel<Packed, Frame>`.
///
/// A `Channel<Frame, Frame>` encodes every command on its connection task, and there is
/// one such task per channel: under load, what it does per request can bound the
/// channel. `Packed::new` runs `redis-protocol`'s encoder on the caller's task instead
/// (on whichever worker runs the caller), and the connection task only copies the bytes
/// into its write buffer. This is what redis-rs does with a `Cmd`. The benchmark's
/// `channel-redis` row packs; `channel-redis-frame` sends the same calls as frames.
///
/// A frame that is not a command is refused here, by its caller, rather than by the
/// encoder on the connection task, where an encode error ends the connection for every
/// call on it.
///
/// ```ignore
/// let set = cmd(["SET", "key", "value"]);
/// let ok = channel.request(Packed::new(&set)?).await?;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed(Bytes);

impl Packed {
    /// `command` in RESP, packed into a buffer of its own.
    ///
    /// A command (a non-empty array of blob strings, as [`cmd`] builds) is the same bytes
    /// in RESP2 and RESP3, so a `Packed` goes to either.
    ///
    /// # Errors
    ///
    /// `command` is not a non-empty array of blob strings without attributes.
    pub fn new(command: &Frame) -> Result<Packed, RedisProtocolError> {
        if !is_command(command) {
            return Err(not_a_command());
        }
        let mut buf = BytesMut::new();
        extend_encode(&mut buf, command, false)?;
        Ok(Packed(buf.freeze()))
    }

    /// The RESP bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What a Redis frame means to the engine; see the module's documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Redis {
    subscriber: bool,
}

impl Redis {
    /// For commands: only RESP3 push frames are pushes.
    pub const fn commands() -> Self {
        Redis { subscriber: false }
    }

    /// For a channel dedicated to pub/sub: RESP2 subscription arrays are pushes too.
    /// `SUBSCRIBE` and its kin must then be sent with
    /// [`Channel::send`](socketchannel::Channel::send): their confirmations arrive
    /// through [`Channel::pushes`](socketchannel::Channel::pushes), not as replies.
    pub const fn subscriber() -> Self {
        Redis { subscriber: true }
    }
}

/// The first element of a subscribed connection's confirmations and messages.
const PUBSUB_KINDS: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
    "ssubscribe",
    "sunsubscribe",
    "message",
    "pmessage",
    "smessage",
];

/// Replies are frames whatever the requests are: [`Frame`]s or [`Packed`] commands.
impl<Req> Protocol<Req, Frame> for Redis {
    fn is_push(&self, frame: &Frame) -> bool {
        match frame {
            Frame::Push { .. } => true,
            Frame::Array { data, .. } if self.subscriber => data
                .first()
                .and_then(Resp3Frame::as_str)
                .is_some_and(|kind| PUBSUB_KINDS.contains(&kind)),
            _ => false,
        }
    }

    /// The errors that promise nothing ran: `LOADING` (the data set is being loaded),
    /// `MASTERDOWN` (a replica that serves no stale data), `TRYAGAIN`; and `READONLY`,
    /// which says more: this node is a replica now (a demoted master), so the channel
    /// leaves it. Not `MOVED`/`ASK`: those are per key.
    fn verdict(&self, frame: &Frame) -> Verdict {
        let error = match frame {
            Frame::SimpleError { data, .. } => data.as_bytes(),
            Frame::BlobError { data, .. } => &data[..],
            _ => return Verdict::Reply,
        };
        let code = error.split(|&b| b == b' ').next().unwrap_or_default();
        match code {
            b"READONLY" => Verdict::WrongServer,
            b"LOADING" | b"MASTERDOWN" | b"TRYAGAIN" => Verdict::NotRun,
            _ => Verdict::Reply,
        }
    }

    fn check(&self, frame: Frame) -> Result<Frame, BoxError> {
        match frame {
            Frame::SimpleError { data, .. } => Err(RedisError(data.to_string()).into()),
            Frame::BlobError { data, .. } => {
                Err(RedisError(String::from_utf8_lossy(&data).into_owned()).into())
            }
            frame => Ok(frame),
        }
    }
}

/// An error reply, as Redis wrote it (`ERR unknown command ...`, `WRONGPASS ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisError(pub String);

impl RedisError {
    /// The error's code: its first word (`ERR`, `WRONGPASS`, `NOAUTH`, ...).
    pub fn code(&self) -> &str {
        self.0.split(' ').next().unwrap_or_default()
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis: {}", self.0)
    }
}

impl std::error::Error for RedisError {}

/// A pub/sub push frame, from a RESP2 array or a RESP3 push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubSub {
    /// A (un)subscribe confirmation: which one, the channel or pattern, and how many
    /// subscriptions the connection has now.
    Confirm {
        /// `subscribe`, `unsubscribe`, `psubscribe`, ...
        kind: String,
        /// The channel or pattern.
        channel: String,
        /// Subscriptions of the connection after this one.
        count: i64,
    },
    /// A published message.
    Message {
        /// The pattern it matched (`pmessage`), if any.
        pattern: Option<String>,
        /// The channel it was published to.
        channel: String,
        /// What was published.
        payload: Bytes,
    },
}

impl PubSub {
    /// Reads a pub/sub push frame; `None` for anything else.
    pub fn parse(frame: &Frame) -> Option<PubSub> {
        let (Frame::Array { data, .. } | Frame::Push { data, .. }) = frame else {
            return None;
        };
        let text = |i: usize| data.get(i).and_then(Resp3Frame::to_string);
        let bytes = |i: usize| data.get(i).and_then(Resp3Frame::as_bytes);
        match (data.first()?.as_str()?, data.len()) {
            ("message" | "smessage", 3) => Some(PubSub::Message {
                pattern: None,
                channel: text(1)?,
                payload: Bytes::copy_from_slice(bytes(2)?),
            }),
            ("pmessage", 4) => Some(PubSub::Message {
                pattern: Some(text(1)?),
                channel: text(2)?,
                payload: Bytes::copy_from_slice(bytes(3)?),
            }),
            (kind, 3) if PUBSUB_KINDS.contains(&kind) => Some(PubSub::Confirm {
                kind: kind.to_string(),
                channel: text(1)?,
                count: match data.get(2)? {
                    Frame::Number { data, .. } => *data,
                    _ => return None,
                },
            }),
            _ => None,
        }
    }
}

/// The text of a string or number reply (`OK`, a bulk string, `42`); `None` for a null
/// or an aggregate.
pub fn text(frame: &Frame) -> Option<String> {
    frame.to_string()
}

/// The integer of a `:` reply.
pub fn int(frame: &Frame) -> Option<i64> {
    match frame {
        Frame::Number { data, .. } => Some(*data),
        _ => None,
    }
}

/// One field of an `INFO` reply (`field:value` lines).
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_string())
    })
}

/// Starts `redis-server` on a free port with no persistence (`--save "" --appendonly
/// no`), plus `extra` arguments (`["--requirepass", "secret"]`), and waits until it
/// answers `PING`.
///
/// # Errors
///
/// `redis-server` is not on `PATH` (the message says to install it), or it did not come
/// up.
pub async fn start_server(extra: &[&str]) -> io::Result<Server> {
    let dir = std::env::temp_dir();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Server::start(
        "redis-server",
        move |port| {
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                &dir.to_string_lossy(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().cloned());
            args
        },
        probe,
    )
    .await
}

/// Up once it answers `PING` with anything (`+PONG`, or `-NOAUTH` when it wants a
/// password).
fn probe(port: u16) -> Pin<Box<dyn Future<Output = bool> + Send>> {
    Box::pin(answers(port, RespCodec::resp2(), cmd(["PING"])))
}

/// A plain channel over a fresh connection to `addr`, with no reconnect: for looking at
/// a server from the side (what keys it holds, its `INFO`).
///
/// # Errors
///
/// The connection failed or took longer than 2 s.
pub async fn connect(addr: &str) -> Result<Channel<Frame, Frame>, BoxError> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
    stream.set_nodelay(true)?;
    Ok(Channel::new(
        Framed::new(stream, RespCodec::resp2()),
        Order::new(Redis::commands()),
    ))
}
