//! The test protocol: length-prefixed frames with an id, a kind and a body.
//!
//! ```text
//! +----------------+----------------+--------+-----------------+
//! | len: u32 (BE)  | id: u64 (BE)   | kind:u8| body: len-9 B   |
//! +----------------+----------------+--------+-----------------+
//! ```
//! `len` counts everything after itself. `kind`: see [`Kind`].

#![allow(dead_code)]

use bytes::{Buf, BufMut, Bytes, BytesMut};
use socketchannel::{BoxError, Protocol, Sessions, Verdict};
use tokio_util::codec::{Decoder, Encoder};

/// What a frame is, to the test protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A request, or a whole reply.
    Normal = 0,
    /// An unsolicited push frame.
    Push = 1,
    /// An error reply: fails its call only.
    Error = 2,
    /// A part of a multi-part reply that is not the last.
    More = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Normal,
            1 => Kind::Push,
            2 => Kind::Error,
            3 => Kind::More,
            _ => return None,
        })
    }
}

/// One frame of the test protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub id: u64,
    pub kind: Kind,
    pub body: Bytes,
}

impl Msg {
    pub fn new(body: impl Into<Bytes>) -> Msg {
        Msg {
            id: 0,
            kind: Kind::Normal,
            body: body.into(),
        }
    }

    pub fn with_id(id: u64, body: impl Into<Bytes>) -> Msg {
        Msg {
            id,
            kind: Kind::Normal,
            body: body.into(),
        }
    }

    pub fn kind(mut self, kind: Kind) -> Msg {
        self.kind = kind;
        self
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<binary>")
    }
}

/// Header bytes after the length prefix.
pub const HEADER: usize = 9;

/// Encodes and decodes [`Msg`]; frames longer than `max_len` are a decode error.
#[derive(Debug, Clone)]
pub struct MsgCodec {
    pub max_len: usize,
}

impl Default for MsgCodec {
    fn default() -> Self {
        MsgCodec {
            max_len: 16 * 1024 * 1024,
        }
    }
}

impl Encoder<Msg> for MsgCodec {
    type Error = std::io::Error;

    fn encode(&mut self, msg: Msg, dst: &mut BytesMut) -> Result<(), Self::Error> {
        dst.reserve(4 + HEADER + msg.body.len());
        dst.put_u32((HEADER + msg.body.len()) as u32);
        dst.put_u64(msg.id);
        dst.put_u8(msg.kind as u8);
        dst.put_slice(&msg.body);
        Ok(())
    }
}

impl Decoder for MsgCodec {
    type Item = Msg;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, Self::Error> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if !(HEADER..=self.max_len).contains(&len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad frame length {len}"),
            ));
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let id = src.get_u64();
        let kind = Kind::from_u8(src.get_u8()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "bad frame kind")
        })?;
        let body = src.split_to(len - HEADER).freeze();
        Ok(Some(Msg { id, kind, body }))
    }
}

/// The test protocol's meaning of frames, and its session ids (the `id` field, used
/// as a 64-bit id).
#[derive(Debug, Clone, Copy, Default)]
pub struct TestProto;

/// A reply of kind [`Kind::Error`], as the caller sees it.
#[derive(Debug)]
pub struct ServerSaid(pub String);

impl std::fmt::Display for ServerSaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server said: {}", self.0)
    }
}

impl std::error::Error for ServerSaid {}

impl Protocol<Msg, Msg> for TestProto {
    fn is_push(&self, resp: &Msg) -> bool {
        resp.kind == Kind::Push
    }

    fn is_final(&self, resp: &Msg) -> bool {
        resp.kind != Kind::More
    }

    fn check(&self, resp: Msg) -> Result<Msg, BoxError> {
        match resp.kind {
            Kind::Error => Err(ServerSaid(resp.text().to_string()).into()),
            _ => Ok(resp),
        }
    }
}

impl Sessions<Msg, Msg> for TestProto {
    type Id = u64;

    fn stamp(&self, req: &mut Msg, id: u64) {
        req.id = id;
    }

    fn session(&self, resp: &Msg) -> Option<u64> {
        // Id 0 means "no session" (a greeting).
        (resp.id != 0).then_some(resp.id)
    }
}

/// The body of a cancel notice.
pub const CANCEL: &str = "CANCEL";

/// The test protocol, telling the server of each written call whose caller left.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cancelling;

impl Protocol<Msg, Msg> for Cancelling {
    fn is_push(&self, resp: &Msg) -> bool {
        TestProto.is_push(resp)
    }
    fn is_final(&self, resp: &Msg) -> bool {
        Protocol::<Msg, Msg>::is_final(&TestProto, resp)
    }
    fn check(&self, resp: Msg) -> Result<Msg, BoxError> {
        TestProto.check(resp)
    }
}

impl Sessions<Msg, Msg> for Cancelling {
    type Id = u64;
    fn stamp(&self, req: &mut Msg, id: u64) {
        TestProto.stamp(req, id);
    }
    fn session(&self, resp: &Msg) -> Option<u64> {
        TestProto.session(resp)
    }
    fn cancels(&self) -> bool {
        true
    }
    fn cancel(&self, id: u64) -> Option<Msg> {
        Some(Msg::with_id(id, CANCEL))
    }
}

/// The test protocol with 16-bit session ids, for wrap-around and exhaustion tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestProto16;

impl Protocol<Msg, Msg> for TestProto16 {
    fn is_push(&self, resp: &Msg) -> bool {
        TestProto.is_push(resp)
    }
    fn is_final(&self, resp: &Msg) -> bool {
        Protocol::<Msg, Msg>::is_final(&TestProto, resp)
    }
    fn check(&self, resp: Msg) -> Result<Msg, BoxError> {
        TestProto.check(resp)
    }
}

impl Sessions<Msg, Msg> for TestProto16 {
    type Id = u16;

    fn stamp(&self, req: &mut Msg, id: u16) {
        req.id = u64::from(id);
    }

    fn session(&self, resp: &Msg) -> Option<u16> {
        (resp.id != 0).then_some(resp.id as u16)
    }
}

/// The test protocol, with verdicts read from the reply's body: `NOTRUN ...` did not
/// run, `DRAIN` asks for a drain, and `BOOM` makes `verdict` panic.
#[derive(Debug, Clone, Copy, Default)]
pub struct Verdicts;

impl Protocol<Msg, Msg> for Verdicts {
    fn is_push(&self, resp: &Msg) -> bool {
        TestProto.is_push(resp)
    }

    fn is_final(&self, resp: &Msg) -> bool {
        Protocol::<Msg, Msg>::is_final(&TestProto, resp)
    }

    fn check(&self, resp: Msg) -> Result<Msg, BoxError> {
        TestProto.check(resp)
    }

    fn verdict(&self, resp: &Msg) -> Verdict {
        let body = resp.text();
        assert!(body != "BOOM", "verdict panicked");
        if body.starts_with("NOTRUN") {
            Verdict::NotRun
        } else if body == "DRAIN" {
            Verdict::Drain
        } else {
            Verdict::Reply
        }
    }
}

impl Sessions<Msg, Msg> for Verdicts {
    type Id = u64;

    fn stamp(&self, req: &mut Msg, id: u64) {
        TestProto.stamp(req, id);
    }

    fn session(&self, resp: &Msg) -> Option<u64> {
        TestProto.session(resp)
    }
}
