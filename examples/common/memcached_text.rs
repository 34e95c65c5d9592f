//! memcached's text protocol in order mode: memcached answers a connection's commands in
//! the order it reads them, so the n-th reply belongs to the n-th request still waiting.
//!
//! The decoder gives **one frame per reply**, not one per line: a `get` reply is zero or
//! more values, then `END`, and the whole of it is one [`Reply::Values`]. Every call then
//! takes one frame ([`Channel::request`](socketchannel::Channel::request), tower's
//! `Service::call`), and no data line can pass for the end of a reply: each data block
//! is read by the byte count of its `VALUE` line, never searched for `END`, so data may
//! hold `"\r\nEND\r\n"` or any byte. Framed by line, a reply's end could only be found by
//! looking at the lines (`is_final`), and a data line reading `END` would end it early
//! (the codec guide shows how that goes wrong).
//!
//! ```text
//! get a b\r\n            ->  VALUE a 0 2\r\nva\r\nEND\r\n          (b is missing)
//! set a 0 0 2\r\nva\r\n  ->  STORED\r\n
//! set a 0 0 2 noreply\r\nva\r\n  ->  (nothing: send it with `Channel::send`)
//! incr a 1\r\n           ->  CLIENT_ERROR cannot increment or decrement non-numeric value\r\n
//! ```
//!
//! `ERROR`, `CLIENT_ERROR <why>` and `SERVER_ERROR <why>` decode as [`Reply::Error`], and
//! [`Text`]'s `check` turns them into a [`TextError`] for their own call only (the
//! caller sees [`Kind::Server`](socketchannel::Kind::Server)); the connection stays up.
//! Anything else the decoder cannot frame is a decode error, which ends the connection.
//! A `noreply` command that fails (a value over the item size) fails unseen: memcached
//! sends nothing back, not even the error line.

use std::fmt;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::slice;
use std::str::FromStr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use socketchannel::{BoxError, Protocol};
use tokio_util::codec::{Decoder, Encoder};

use super::process::{Server, answers};

/// The longest reply line accepted, without its `\r\n`. A `VALUE` line with a 250-byte
/// key and every number at its widest is under 320 bytes.
pub const MAX_LINE: usize = 1024;

/// A key as memcached's text protocol allows it: 1 to 250 bytes, none of them a space or
/// a control character (which would end the key, or the command, early).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(Bytes);

impl Key {
    /// Checks a key.
    ///
    /// # Errors
    ///
    /// It is empty, longer than 250 bytes, or holds a space or a control character.
    pub fn new(key: impl AsRef<[u8]>) -> Result<Key, InvalidKey> {
        let key = key.as_ref();
        let bad = |why| {
            Err(InvalidKey(format!(
                "{why}: {:?}",
                String::from_utf8_lossy(key)
            )))
        };
        if key.is_empty() || key.len() > 250 {
            return bad("a key has 1 to 250 bytes");
        }
        if key.iter().any(|&b| b <= b' ' || b == 0x7f) {
            return bad("a key holds no space or control character");
        }
        Ok(Key(Bytes::copy_from_slice(key)))
    }
}

/// A key that memcached would not take as one (see [`Key::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidKey(pub String);

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid memcached key: {}", self.0)
    }
}

impl std::error::Error for InvalidKey {}

/// Which storage command a [`Request::Store`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Store, whatever is there.
    Set,
    /// Store only if the key is absent (else `NOT_STORED`).
    Add,
}

/// A command. Build one with the checking constructors ([`Request::get`],
/// [`Request::set`], ...): a [`Key`] is always valid, so encoding never fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get <key>*`: answered by the values found, then `END`.
    Get(Vec<Key>),
    /// `set`/`add <key> <flags> <exptime> <bytes> [noreply]`, then the data.
    Store {
        /// `set` or `add`.
        command: Store,
        /// The key.
        key: Key,
        /// Stored with the item and given back by `get`.
        flags: u32,
        /// Seconds to live (0: forever).
        exptime: u32,
        /// The value: any bytes.
        data: Bytes,
        /// Asks for no reply: send it with `Channel::send`, never `request`.
        noreply: bool,
    },
    /// `delete <key> [noreply]`: `DELETED` or `NOT_FOUND`.
    Delete {
        /// The key.
        key: Key,
        /// Asks for no reply.
        noreply: bool,
    },
    /// `incr <key> <delta> [noreply]`: the new value, `NOT_FOUND`, or a `CLIENT_ERROR`
    /// for a value that is not a number.
    Incr {
        /// The key.
        key: Key,
        /// What to add.
        delta: u64,
        /// Asks for no reply.
        noreply: bool,
    },
    /// `version`: `VERSION <version>`.
    Version,
}

impl Request {
    /// `get` of one key or several.
    ///
    /// # Errors
    ///
    /// No key, or an invalid one.
    pub fn get<K: AsRef<[u8]>>(keys: impl IntoIterator<Item = K>) -> Result<Self, InvalidKey> {
        let keys = keys
            .into_iter()
            .map(Key::new)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(InvalidKey("a get needs a key".into()));
        }
        Ok(Request::Get(keys))
    }

    /// `set key flags 0 <len>` with `data`.
    ///
    /// # Errors
    ///
    /// An invalid key.
    pub fn set(
        key: impl AsRef<[u8]>,
        flags: u32,
        data: impl Into<Bytes>,
    ) -> Result<Self, InvalidKey> {
        Request::store(Store::Set, key, flags, data)
    }

    /// `add key flags 0 <len>` with `data`.
    ///
    /// # Errors
    ///
    /// An invalid key.
    pub fn add(
        key: impl AsRef<[u8]>,
        flags: u32,
        data: impl Into<Bytes>,
    ) -> Result<Self, InvalidKey> {
        Request::store(Store::Add, key, flags, data)
    }

    fn store(
        command: Store,
        key: impl AsRef<[u8]>,
        flags: u32,
        data: impl Into<Bytes>,
    ) -> Result<Self, InvalidKey> {
        let (key, data) = (Key::new(key)?, data.into());
        Ok(Request::Store {
            command,
            key,
            flags,
            exptime: 0,
            data,
            noreply: false,
        })
    }

    /// `delete key`.
    ///
    /// # Errors
    ///
    /// An invalid key.
    pub fn delete(key: impl AsRef<[u8]>) -> Result<Self, InvalidKey> {
        Ok(Request::Delete {
            key: Key::new(key)?,
            noreply: false,
        })
    }

    /// `incr key delta`.
    ///
    /// # Errors
    ///
    /// An invalid key.
    pub fn incr(key: impl AsRef<[u8]>, delta: u64) -> Result<Self, InvalidKey> {
        Ok(Request::Incr {
            key: Key::new(key)?,
            delta,
            noreply: false,
        })
    }

    /// The same command with `noreply`, for `Channel::send`. `get` and `version` have no
    /// such form and are returned unchanged: they are always answered, so never `send`
    /// them (in order mode their reply would find no call waiting and end the
    /// connection).
    pub fn noreply(mut self) -> Self {
        if let Request::Store { noreply, .. }
        | Request::Delete { noreply, .. }
        | Request::Incr { noreply, .. } = &mut self
        {
            *noreply = true;
        }
        self
    }
}

/// One value of a `get` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// Its key.
    pub key: Bytes,
    /// The flags it was stored with.
    pub flags: u32,
    /// The data, exactly the bytes stored.
    pub data: Bytes,
}

/// A whole reply: one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A `get`'s values, in the order of its keys, missing keys left out.
    Values(Vec<Value>),
    /// `STORED`.
    Stored,
    /// `NOT_STORED` (an `add` of a key that is there).
    NotStored,
    /// `DELETED`.
    Deleted,
    /// `NOT_FOUND`.
    NotFound,
    /// An `incr`'s new value.
    Number(u64),
    /// `VERSION <version>`.
    Version(String),
    /// An error line; [`Text`]'s `check` fails its call with it.
    Error(TextError),
}

/// An error line: what a call fails with (the source of its `Kind::Server` error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    /// `ERROR`: an unknown command.
    Error,
    /// `CLIENT_ERROR <why>`: the request was wrong (a counter that is not a number).
    Client(String),
    /// `SERVER_ERROR <why>`: the server could not do it (a value over its item size).
    Server(String),
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::Error => write!(f, "memcached: ERROR (unknown command)"),
            TextError::Client(why) => write!(f, "memcached: CLIENT_ERROR {why}"),
            TextError::Server(why) => write!(f, "memcached: SERVER_ERROR {why}"),
        }
    }
}

impl std::error::Error for TextError {}

/// The codec: encodes [`Request`]s, decodes one [`Reply`] per reply. It keeps nothing
/// between frames, so a clone for a new connection starts clean.
#[derive(Debug, Clone)]
pub struct TextCodec {
    max_value: usize,
    max_reply: usize,
}

impl Default for TextCodec {
    /// Values up to 1 MiB (memcached's default item size), replies up to 64 MiB.
    fn default() -> Self {
        TextCodec::new(1 << 20, 64 << 20)
    }
}

impl TextCodec {
    /// A codec that takes values up to `max_value` bytes and whole replies (a multi-key
    /// `get`) up to `max_reply` bytes; beyond either, decoding fails.
    pub fn new(max_value: usize, max_reply: usize) -> Self {
        TextCodec {
            max_value,
            max_reply,
        }
    }
}

impl Encoder<Request> for TextCodec {
    type Error = io::Error;

    fn encode(&mut self, req: Request, dst: &mut BytesMut) -> io::Result<()> {
        let nr = |on: bool| if on { " noreply" } else { "" };
        // The command, its keys, the words after them, and the data block if any.
        let (command, keys, words, data) = match &req {
            Request::Get(keys) => ("get", &keys[..], String::new(), None),
            Request::Store {
                command,
                key,
                flags,
                exptime,
                data,
                noreply,
            } => {
                let command = match command {
                    Store::Set => "set",
                    Store::Add => "add",
                };
                let words = format!(" {flags} {exptime} {}{}", data.len(), nr(*noreply));
                (command, slice::from_ref(key), words, Some(data))
            }
            Request::Delete { key, noreply } => {
                ("delete", slice::from_ref(key), nr(*noreply).into(), None)
            }
            Request::Incr {
                key,
                delta,
                noreply,
            } => {
                let words = format!(" {delta}{}", nr(*noreply));
                ("incr", slice::from_ref(key), words, None)
            }
            Request::Version => ("version", &[][..], String::new(), None),
        };
        let keys_len: usize = keys.iter().map(|k| k.0.len() + 1).sum();
        dst.reserve(command.len() + keys_len + words.len() + data.map_or(0, |d| d.len() + 2) + 2);
        dst.put_slice(command.as_bytes());
        for key in keys {
            dst.put_u8(b' ');
            dst.put_slice(&key.0);
        }
        dst.put_slice(words.as_bytes());
        dst.put_slice(b"\r\n");
        if let Some(data) = data {
            dst.put_slice(data);
            dst.put_slice(b"\r\n");
        }
        Ok(())
    }
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// The line that starts at `at`: the end of its text and where the next line starts, or
/// `None` while its `\r\n` has not arrived.
fn line(buf: &[u8], at: usize) -> io::Result<Option<(usize, usize)>> {
    let window = &buf[at..buf.len().min(at + MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((at + i, at + i + 2))),
        None if window.len() >= MAX_LINE + 2 => Err(invalid(format!(
            "a reply line longer than {MAX_LINE} bytes"
        ))),
        None => Ok(None),
    }
}

/// A decimal number of ASCII digits only (`str::parse` would take a `+`).
fn number<T: FromStr>(text: &[u8]) -> Option<T> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// A `VALUE <key> <flags> <bytes> [<cas>]` line (its words after `VALUE `): the key's
/// range in the buffer, the flags and the byte count.
fn value_line(buf: &[u8], start: usize, end: usize) -> Option<(Range<usize>, u32, usize)> {
    let words: Vec<&[u8]> = buf[start..end].split(|&b| b == b' ').collect();
    let ([key, flags, len] | [key, flags, len, _]) = words[..] else {
        return None;
    };
    if key.is_empty() || (words.len() == 4 && number::<u64>(words[3]).is_none()) {
        return None;
    }
    Some((start..start + key.len(), number(flags)?, number(len)?))
}

/// A reply of one line (anything but a `get`'s), or an error line.
fn status(text: &[u8]) -> Option<Reply> {
    let words = |prefix: &[u8]| {
        text.strip_prefix(prefix)
            .map(|w| String::from_utf8_lossy(w).into_owned())
    };
    Some(match text {
        b"STORED" => Reply::Stored,
        b"NOT_STORED" => Reply::NotStored,
        b"DELETED" => Reply::Deleted,
        b"NOT_FOUND" => Reply::NotFound,
        b"ERROR" => Reply::Error(TextError::Error),
        _ => {
            if let Some(why) = words(b"CLIENT_ERROR ") {
                Reply::Error(TextError::Client(why))
            } else if let Some(why) = words(b"SERVER_ERROR ") {
                Reply::Error(TextError::Server(why))
            } else if let Some(version) = words(b"VERSION ") {
                Reply::Version(version)
            } else {
                Reply::Number(number(text)?)
            }
        }
    })
}

impl Decoder for TextCodec {
    type Item = Reply;
    type Error = io::Error;

    /// Walks the reply without taking anything from the buffer until all of it is
    /// there, then takes it whole; the values are slices of it (no copy).
    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Reply>> {
        let mut values: Vec<(Range<usize>, u32, Range<usize>)> = Vec::new();
        let mut at = 0;
        loop {
            let Some((end, next)) = line(src, at)? else {
                return Ok(None);
            };
            let text = &src[at..end];
            if text == b"END" {
                at = next;
                break;
            }
            if !text.starts_with(b"VALUE ") {
                match status(text) {
                    // A reply of one line; or an error line, with which memcached ends a
                    // `get` it cannot finish (instead of END).
                    Some(reply) if at == 0 || matches!(reply, Reply::Error(_)) => {
                        src.advance(next);
                        return Ok(Some(reply));
                    }
                    _ => {
                        let what = if at == 0 {
                            "reply"
                        } else {
                            "line in a get reply"
                        };
                        let text = String::from_utf8_lossy(text);
                        return Err(invalid(format!("an unexpected {what}: {text:?}")));
                    }
                }
            }
            let (key, flags, len) = value_line(src, at + 6, end).ok_or_else(|| {
                invalid(format!(
                    "a bad VALUE line: {:?}",
                    String::from_utf8_lossy(text)
                ))
            })?;
            if len > self.max_value {
                let max = self.max_value;
                return Err(invalid(format!(
                    "a value of {len} bytes, over the codec's {max}"
                )));
            }
            let data = next..next + len;
            if data.end + 2 > self.max_reply {
                let max = self.max_reply;
                return Err(invalid(format!("a reply over the codec's {max} bytes")));
            }
            if src.len() < data.end + 2 {
                src.reserve(data.end + 2 - src.len());
                return Ok(None);
            }
            if &src[data.end..data.end + 2] != b"\r\n" {
                return Err(invalid(format!(
                    "the data of {len} bytes does not end with \\r\\n"
                )));
            }
            at = data.end + 2;
            values.push((key, flags, data));
        }
        let frame = src.split_to(at).freeze();
        let values = values
            .into_iter()
            .map(|(key, flags, data)| Value {
                key: frame.slice(key),
                flags,
                data: frame.slice(data),
            })
            .collect();
        Ok(Some(Reply::Values(values)))
    }
}

/// What a reply means to the engine: an error line fails its own call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Text;

impl Protocol<Request, Reply> for Text {
    fn check(&self, reply: Reply) -> Result<Reply, BoxError> {
        match reply {
            Reply::Error(e) => Err(e.into()),
            reply => Ok(reply),
        }
    }
}

/// Starts `memcached` on a free port with items of at most `max_item` bytes (`-I`; at
/// least 1024), and waits until it answers `version` in the text protocol.
///
/// # Errors
///
/// `memcached` is not on `PATH` (the message says to install it), or it did not come up.
pub async fn start_server(max_item: usize) -> io::Result<Server> {
    Server::start(
        "memcached",
        move |port| {
            let (port, item) = (port.to_string(), max_item.to_string());
            // The largest slab chunk may not exceed the item size.
            let chunk = format!("slab_chunk_max={}", max_item.min(512 << 10));
            // `-u root` is needed only when run as root (as CI is), ignored otherwise.
            [
                "-p",
                &port,
                "-l",
                "127.0.0.1",
                "-U",
                "0",
                "-I",
                &item,
                "-o",
                &chunk,
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
    Box::pin(answers(port, TextCodec::default(), Request::Version))
}
