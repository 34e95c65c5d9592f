//! memcached's binary protocol in session mode: the 32-bit `opaque` field of every
//! packet is the session id, which memcached copies into its reply.
//!
//! No maintained crate has a tokio codec for it, so here is a small one. A packet is a
//! 24-byte header, then extras, key and value:
//!
//! ```text
//!  byte 0      1        2..4        4          5          6..8               8..12       12..16   16..24
//!  magic   opcode   key length   extras len  data type  vbucket / status   body length  opaque   cas
//! ```
//!
//! `magic` is 0x80 in a request, 0x81 in a response; bytes 6..8 are the vbucket id in a
//! request and the status in a response. All integers are big-endian.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use socketchannel::{BoxError, Protocol, Sessions};
use tokio_util::codec::{Decoder, Encoder};

use super::process::{Server, answers};

const REQUEST: u8 = 0x80;
const RESPONSE: u8 = 0x81;
const HEADER: usize = 24;

/// The opcodes used here.
pub mod opcode {
    /// Get a value (its reply's extras hold the item's flags).
    pub const GET: u8 = 0x00;
    /// Store a value.
    pub const SET: u8 = 0x01;
    /// Store a value only if the key is absent.
    pub const ADD: u8 = 0x02;
    /// Delete a key.
    pub const DELETE: u8 = 0x04;
    /// Add to a counter.
    pub const INCREMENT: u8 = 0x05;
    /// Do nothing; answers at once.
    pub const NOOP: u8 = 0x0a;
    /// The server's version.
    pub const VERSION: u8 = 0x0b;
    /// Statistics: one reply packet per statistic, then one with an empty key.
    pub const STAT: u8 = 0x10;
}

/// A response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    /// No error.
    pub const OK: Status = Status(0x0000);
    /// Key not found.
    pub const KEY_NOT_FOUND: Status = Status(0x0001);
    /// Key exists.
    pub const KEY_EXISTS: Status = Status(0x0002);
    /// Value too large.
    pub const VALUE_TOO_LARGE: Status = Status(0x0003);
    /// Invalid arguments.
    pub const INVALID_ARGUMENTS: Status = Status(0x0004);
    /// Item not stored.
    pub const NOT_STORED: Status = Status(0x0005);
    /// Increment or decrement on a non-numeric value.
    pub const NON_NUMERIC: Status = Status(0x0006);
    /// Unknown command.
    pub const UNKNOWN_COMMAND: Status = Status(0x0081);
    /// Out of memory.
    pub const OUT_OF_MEMORY: Status = Status(0x0082);

    /// What the protocol calls it.
    pub fn name(self) -> &'static str {
        match self {
            Status::OK => "no error",
            Status::KEY_NOT_FOUND => "key not found",
            Status::KEY_EXISTS => "key exists",
            Status::VALUE_TOO_LARGE => "value too large",
            Status::INVALID_ARGUMENTS => "invalid arguments",
            Status::NOT_STORED => "item not stored",
            Status::NON_NUMERIC => "incr/decr on a non-numeric value",
            Status::UNKNOWN_COMMAND => "unknown command",
            Status::OUT_OF_MEMORY => "out of memory",
            _ => "unknown status",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04x} ({})", self.0, self.name())
    }
}

/// One packet, request or response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packet {
    /// The command.
    pub opcode: u8,
    /// Reserved; 0.
    pub data_type: u8,
    /// The vbucket id in a request, the [`Status`] in a response.
    pub status: u16,
    /// Copied by the server into its reply: the session id.
    pub opaque: u32,
    /// The item's version (compare-and-swap).
    pub cas: u64,
    /// Command-specific fixed fields (flags, expiry, counter delta).
    pub extras: Bytes,
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
}

impl Packet {
    /// A request with no extras and no value.
    pub fn new(opcode: u8, key: impl AsRef<[u8]>) -> Self {
        Packet {
            opcode,
            key: Bytes::copy_from_slice(key.as_ref()),
            ..Packet::default()
        }
    }

    /// `GET key`.
    pub fn get(key: impl AsRef<[u8]>) -> Self {
        Packet::new(opcode::GET, key)
    }

    /// `SET key value` with these flags and no expiry.
    pub fn set(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, flags: u32) -> Self {
        Packet::store(opcode::SET, key, value, flags)
    }

    /// `ADD key value`: fails with [`Status::KEY_EXISTS`] if the key is there.
    pub fn add(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, flags: u32) -> Self {
        Packet::store(opcode::ADD, key, value, flags)
    }

    fn store(op: u8, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, flags: u32) -> Self {
        let mut extras = BytesMut::with_capacity(8);
        extras.put_u32(flags);
        extras.put_u32(0); // expiry: never
        Packet {
            extras: extras.freeze(),
            value: Bytes::copy_from_slice(value.as_ref()),
            ..Packet::new(op, key)
        }
    }

    /// `DELETE key`.
    pub fn delete(key: impl AsRef<[u8]>) -> Self {
        Packet::new(opcode::DELETE, key)
    }

    /// `INCREMENT key` by `delta`, starting a missing counter at `initial`.
    pub fn incr(key: impl AsRef<[u8]>, delta: u64, initial: u64) -> Self {
        let mut extras = BytesMut::with_capacity(20);
        extras.put_u64(delta);
        extras.put_u64(initial);
        extras.put_u32(0); // expiry: never
        Packet {
            extras: extras.freeze(),
            ..Packet::new(opcode::INCREMENT, key)
        }
    }

    /// `NOOP`.
    pub fn noop() -> Self {
        Packet::new(opcode::NOOP, "")
    }

    /// `VERSION`.
    pub fn version() -> Self {
        Packet::new(opcode::VERSION, "")
    }

    /// `STAT`: the general statistics, one reply packet each.
    pub fn stat() -> Self {
        Packet::new(opcode::STAT, "")
    }

    /// A response's status.
    pub fn status(&self) -> Status {
        Status(self.status)
    }

    /// The flags of a `GET` reply.
    pub fn flags(&self) -> Option<u32> {
        (self.extras.len() >= 4).then(|| (&self.extras[..4]).get_u32())
    }

    /// The counter of an `INCREMENT` reply.
    pub fn counter(&self) -> Option<u64> {
        (self.value.len() == 8).then(|| (&self.value[..]).get_u64())
    }
}

/// The codec: encodes requests, decodes responses.
#[derive(Debug, Clone)]
pub struct BinaryCodec {
    max_body: u32,
}

impl Default for BinaryCodec {
    /// Bodies up to 32 MiB (memcached's own item limit is 1 MiB by default).
    fn default() -> Self {
        BinaryCodec { max_body: 32 << 20 }
    }
}

impl Encoder<Packet> for BinaryCodec {
    type Error = io::Error;

    fn encode(&mut self, p: Packet, dst: &mut BytesMut) -> Result<(), io::Error> {
        let too_long = |what| io::Error::new(io::ErrorKind::InvalidInput, what);
        let key_len = u16::try_from(p.key.len()).map_err(|_| too_long("key too long"))?;
        let extras_len = u8::try_from(p.extras.len()).map_err(|_| too_long("extras too long"))?;
        let body = p.extras.len() + p.key.len() + p.value.len();
        let body = u32::try_from(body)
            .ok()
            .filter(|&b| b <= self.max_body)
            .ok_or_else(|| too_long("body too long"))?;
        dst.reserve(HEADER + body as usize);
        dst.put_u8(REQUEST);
        dst.put_u8(p.opcode);
        dst.put_u16(key_len);
        dst.put_u8(extras_len);
        dst.put_u8(p.data_type);
        dst.put_u16(p.status);
        dst.put_u32(body);
        dst.put_u32(p.opaque);
        dst.put_u64(p.cas);
        dst.put_slice(&p.extras);
        dst.put_slice(&p.key);
        dst.put_slice(&p.value);
        Ok(())
    }
}

impl Decoder for BinaryCodec {
    type Item = Packet;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, io::Error> {
        if src.len() < HEADER {
            src.reserve(HEADER - src.len());
            return Ok(None);
        }
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut h = &src[..HEADER];
        let magic = h.get_u8();
        if magic != RESPONSE {
            return Err(invalid(format!("bad magic 0x{magic:02x}, expected 0x81")));
        }
        let opcode = h.get_u8();
        let key_len = h.get_u16() as usize;
        let extras_len = h.get_u8() as usize;
        let data_type = h.get_u8();
        let status = h.get_u16();
        let body = h.get_u32();
        let opaque = h.get_u32();
        let cas = h.get_u64();
        if body > self.max_body {
            return Err(invalid(format!("body of {body} bytes is too long")));
        }
        let body = body as usize;
        if key_len + extras_len > body {
            return Err(invalid(format!(
                "key ({key_len}) and extras ({extras_len}) longer than the body ({body})"
            )));
        }
        if src.len() < HEADER + body {
            src.reserve(HEADER + body - src.len());
            return Ok(None);
        }
        src.advance(HEADER);
        let mut body = src.split_to(body).freeze();
        let extras = body.split_to(extras_len);
        let key = body.split_to(key_len);
        Ok(Some(Packet {
            opcode,
            data_type,
            status,
            opaque,
            cas,
            extras,
            key,
            value: body,
        }))
    }
}

/// What a packet means to the engine: `opaque` is the session id, a status other than
/// success fails its own call, and a `STAT` reply ends with an empty key.
#[derive(Debug, Clone, Copy, Default)]
pub struct Binary;

impl Protocol<Packet, Packet> for Binary {
    fn is_final(&self, p: &Packet) -> bool {
        p.opcode != opcode::STAT || p.key.is_empty()
    }

    fn check(&self, p: Packet) -> Result<Packet, BoxError> {
        if p.status == 0 {
            return Ok(p);
        }
        Err(MemcachedError {
            status: p.status(),
            opcode: p.opcode,
            message: String::from_utf8_lossy(&p.value).into_owned(),
        }
        .into())
    }
}

impl Sessions<Packet, Packet> for Binary {
    type Id = u32;

    fn stamp(&self, req: &mut Packet, id: u32) {
        req.opaque = id;
    }

    fn session(&self, resp: &Packet) -> Option<u32> {
        Some(resp.opaque)
    }
}

/// A response with a status other than success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemcachedError {
    /// The status.
    pub status: Status,
    /// The opcode of the request it answers.
    pub opcode: u8,
    /// The text memcached sent along (`Not found`, `Data exists for key.`).
    pub message: String,
}

impl fmt::Display for MemcachedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memcached: status {} for opcode 0x{:02x}: {}",
            self.status, self.opcode, self.message
        )
    }
}

impl std::error::Error for MemcachedError {}

/// Starts `memcached -p PORT -l 127.0.0.1 -U 0` on a free port and waits until it
/// answers `VERSION`.
///
/// # Errors
///
/// `memcached` is not on `PATH` (the message says to install it), or it did not come up.
pub async fn start_server() -> io::Result<Server> {
    Server::start(
        "memcached",
        |port| {
            [
                "-p",
                &port.to_string(),
                "-l",
                "127.0.0.1",
                "-U",
                "0",
                // Only used when run as root (as CI does), where memcached refuses to
                // start without it; ignored otherwise.
                "-u",
                "root",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        },
        probe,
    )
    .await
}

fn probe(port: u16) -> Pin<Box<dyn Future<Output = bool> + Send>> {
    Box::pin(answers(port, BinaryCodec::default(), Packet::version()))
}
