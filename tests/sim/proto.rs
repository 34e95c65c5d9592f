//! The simulation's protocol: the test frames (`tests/support/codec.rs`) with a small
//! language in the request body, a client protocol and codec that panic on marked
//! frames, and the server that executes requests and answers them.
//!
//! Request body, space-separated tokens:
//! `n=<nonce>` the call's nonce; `hs` sent by a handshake; `r=<k>` answer with k frames
//! (0: no answer); `f` the frames are parts until a final one; `gap=<ms>` before each
//! frame; `err` error replies; `pl=<i>/<m>` part i of an m-part request (only the last
//! is executed and answered); `x` also send a frame without a session id (for a read);
//! `p=<check|final|session|decode|encode>` make the client panic there.
//!
//! Reply body: `n=<nonce> i=<frame> c=<conn>` and `P:<where>` when the request asked
//! for a panic; `refused c=<conn>` for a one-frame host; `extra n=<nonce> c=<conn>`.

use std::time::Duration;

use bytes::BytesMut;
use socketchannel::testing::{ConnInfo, Described, ReplyTag, Served, Server};
use socketchannel::{BoxError, Protocol, Sessions};
use tokio_util::codec::{Decoder, Encoder};

pub use super::codec::{Kind as FrameKind, Msg, MsgCodec, ServerSaid, TestProto};

/// The value of `key=` in a body, if any.
pub fn token<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.split(' ')
        .find_map(|t| t.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

pub fn flag(body: &str, key: &str) -> bool {
    body.split(' ').any(|t| t == key)
}

fn num(body: &str, key: &str) -> Option<u64> {
    token(body, key)?.parse().ok()
}

/// The tag of a reply frame (or an error reply's text).
pub fn tag_of(text: &str) -> ReplyTag {
    ReplyTag {
        nonce: num(text, "n").unwrap_or(0),
        conn: num(text, "c"),
        any_caller: text.starts_with("refused") || text.contains("extra"),
    }
}

/// The tag of a `Kind::Server` error's source.
pub fn tag_of_error(source: &(dyn std::error::Error + 'static)) -> Option<ReplyTag> {
    source.downcast_ref::<ServerSaid>().map(|s| tag_of(&s.0))
}

/// The client's protocol: the test protocol, panicking on frames marked for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimProto;

fn marked(m: &Msg, at: &str) -> bool {
    m.text().contains(&format!("P:{at}"))
}

impl Protocol<Msg, Msg> for SimProto {
    fn is_push(&self, resp: &Msg) -> bool {
        TestProto.is_push(resp)
    }
    fn is_final(&self, resp: &Msg) -> bool {
        if marked(resp, "final") {
            panic!("simulated panic in is_final");
        }
        Protocol::<Msg, Msg>::is_final(&TestProto, resp)
    }
    fn check(&self, resp: Msg) -> Result<Msg, BoxError> {
        if marked(&resp, "check") {
            panic!("simulated panic in check");
        }
        TestProto.check(resp)
    }
}

impl Sessions<Msg, Msg> for SimProto {
    type Id = u64;
    fn stamp(&self, req: &mut Msg, id: u64) {
        req.id = id;
    }
    fn session(&self, resp: &Msg) -> Option<u64> {
        if marked(resp, "session") {
            panic!("simulated panic in session");
        }
        TestProto.session(resp)
    }
}

/// The client's codec: the test codec, panicking on marked frames.
#[derive(Debug, Clone, Default)]
pub struct SimCodec(MsgCodec);

impl Encoder<Msg> for SimCodec {
    type Error = std::io::Error;
    fn encode(&mut self, msg: Msg, dst: &mut BytesMut) -> Result<(), Self::Error> {
        if token(msg.text(), "p") == Some("encode") {
            panic!("simulated panic in encode");
        }
        self.0.encode(msg, dst)
    }
}

impl Decoder for SimCodec {
    type Item = Msg;
    type Error = std::io::Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, Self::Error> {
        let msg = self.0.decode(src)?;
        if msg.as_ref().is_some_and(|m| marked(m, "decode")) {
            panic!("simulated panic in decode");
        }
        Ok(msg)
    }
}

/// The server: executes every request (the last part of a multi-part one) and answers
/// as its body says.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimServer;

impl Server for SimServer {
    type Req = Msg;
    type Resp = Msg;
    type Codec = MsgCodec;

    fn codec(&self) -> MsgCodec {
        MsgCodec::default()
    }

    fn describe(&self, req: &Msg) -> Described {
        let body = req.text();
        Described {
            nonce: num(body, "n"),
            handshake: flag(body, "hs"),
            text: body.to_string(),
        }
    }

    fn serve(&self, conn: &ConnInfo, req: Msg) -> Served<Msg> {
        let body = req.text().to_string();
        if let Some((i, m)) = token(&body, "pl").and_then(|p| p.split_once('/'))
            && i.parse::<u64>().ok().map(|i| i + 1) != m.parse().ok()
        {
            return Served {
                executed: false,
                replies: Vec::new(),
            };
        }
        let nonce = num(&body, "n").unwrap_or(0);
        let frames = num(&body, "r").unwrap_or(1);
        let gap = Duration::from_millis(num(&body, "gap").unwrap_or(0));
        let parts = flag(&body, "f");
        let err = flag(&body, "err");
        let mark = match token(&body, "p") {
            Some(p) if p != "encode" => format!(" P:{p}"),
            _ => String::new(),
        };
        let mut replies = Vec::new();
        for i in 0..frames {
            // A part before the last is `More` even in an error reply: the test protocol
            // has no error part that is not final.
            let kind = if parts && i + 1 < frames {
                FrameKind::More
            } else if err {
                FrameKind::Error
            } else {
                FrameKind::Normal
            };
            let text = format!("n={nonce} i={i} c={}{mark}", conn.conn);
            replies.push((gap, Msg::with_id(req.id, text).kind(kind)));
        }
        if flag(&body, "x") {
            replies.push((
                gap,
                Msg::with_id(0, format!("extra n={nonce} c={}", conn.conn)),
            ));
        }
        Served {
            executed: true,
            replies,
        }
    }

    fn refusal(&self, conn: &ConnInfo) -> Option<Msg> {
        Some(Msg::with_id(0, format!("refused c={} max clients", conn.conn)).kind(FrameKind::Error))
    }
}
