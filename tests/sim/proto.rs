//! The simulation's protocol: the test frames (`tests/support/codec.rs`) with a small
//! language in the request body, a client protocol and codec that panic on marked
//! frames, and the server that executes requests and answers them.
//!
//! Request body, space-separated tokens:
//! `n=<nonce>` the call's nonce; `hs` sent by a handshake; `r=<k>` answer with k frames
//! (0: no answer); `f` the frames are parts until a final one; `gap=<ms>` before each
//! frame; `err` error replies; `pl=<i>/<m>` part i of an m-part request (only the last
//! is executed and answered); `x` also send a frame without a session id (for a read);
//! `p=<check|final|session|decode|encode|verdict>` make the client panic there.
//! The server's word ([`Verdict`]): `nr` every frame of the reply says the request did
//! not run (`LOADING`, [`Verdict::NotRun`]) and the server does not execute it; `ws`
//! likewise with `READONLY` ([`Verdict::WrongServer`]); with either, `once` only the
//! first time the server (any host) sees the nonce (a retry runs), and `mixed` the first
//! frame is an ordinary one, so the request *is* executed (its other frames say it did
//! not run). A request with no reply (`r=0`) has nowhere to say so: it is executed.
//!
//! Reply body: `n=<nonce> i=<frame> c=<conn>` and `P:<where>` when the request asked
//! for a panic, after `LOADING ` or `READONLY ` when it says it did not run;
//! `refused c=<conn>` for a one-frame host; `extra n=<nonce> c=<conn>`; the drain notice
//! of a draining host (`Net::drain_after`, [`Verdict::Drain`]) is `DRAIN c=<conn>`,
//! without a session id.
//!
//! The client's codec keeps a [`Wire`] journal of what each connection wrote and when it
//! read a drain notice, for `drain_writes_nothing_new`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use socketchannel::testing::{ConnInfo, Described, ReplyTag, Served, Server};
use socketchannel::{BoxError, Protocol, Sessions, Verdict};
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

/// The client's protocol: the test protocol, panicking on frames marked for it; with
/// `cancels`, it sends a cancel notice ([`CANCEL`] under the call's id) for each
/// written call whose caller left (session mode only).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimProto {
    pub cancels: bool,
}

/// The body of a cancel notice. The server reads it and ignores it: the call it names
/// is still answered (a server that stops work on a notice is `tests/cancel_notice.rs`'s).
pub const CANCEL: &str = "cancel";

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
    fn verdict(&self, resp: &Msg) -> Verdict {
        if marked(resp, "verdict") {
            panic!("simulated panic in verdict");
        }
        let text = resp.text();
        if text.starts_with("LOADING ") {
            Verdict::NotRun
        } else if text.starts_with("READONLY ") {
            Verdict::WrongServer
        } else if text.starts_with("DRAIN ") {
            Verdict::Drain
        } else {
            Verdict::Reply
        }
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
    fn cancels(&self) -> bool {
        self.cancels
    }
    fn cancel(&self, id: u64) -> Option<Msg> {
        Some(Msg::with_id(id, CANCEL))
    }
}

/// What a client connection's codec did, in the order the connection task did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// Encoded a frame (written it into the transport's buffer): a call's, under
    /// session id `id` (0 in order mode), part `part` (index, count) of a multi-part
    /// request.
    Encoded {
        nonce: u64,
        handshake: bool,
        id: u64,
        part: Option<(u64, u64)>,
    },
    /// Encoded a cancel notice for session id `id`.
    Cancel { id: u64 },
    /// Decoded a drain notice (`conn` is the server's number for the connection): the
    /// connection task routes it next.
    DrainRead { conn: u64 },
    /// Decoded a frame that says the server is the wrong one (`READONLY`).
    WrongServerRead { conn: u64 },
}

/// One [`Wire`] event: the codec (one per connection: the network clones the codec for
/// each), the virtual time, the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireEvent {
    pub codec: u64,
    pub at: Duration,
    pub what: Wire,
}

/// Every client codec's [`Wire`] events, in order; clones share it.
#[derive(Debug, Clone)]
pub struct Journal {
    epoch: tokio::time::Instant,
    inner: Arc<Mutex<(u64, Vec<WireEvent>)>>,
}

impl Journal {
    /// A journal whose times count from `epoch` (the trace's).
    pub fn new(epoch: tokio::time::Instant) -> Self {
        Journal {
            epoch,
            inner: Arc::default(),
        }
    }

    fn next_codec(&self) -> u64 {
        let mut j = self.inner.lock().unwrap();
        j.0 += 1;
        j.0
    }

    fn push(&self, codec: u64, what: Wire) {
        let at = tokio::time::Instant::now().saturating_duration_since(self.epoch);
        self.inner
            .lock()
            .unwrap()
            .1
            .push(WireEvent { codec, at, what });
    }

    /// How many events so far (the index the next one will have).
    pub fn count(&self) -> usize {
        self.inner.lock().unwrap().1.len()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<WireEvent> {
        self.inner.lock().unwrap().1.clone()
    }
}

/// The client's codec: the test codec, panicking on marked frames, keeping a journal.
#[derive(Debug)]
pub struct SimCodec {
    codec: MsgCodec,
    /// This codec's number in the journal (each clone has its own).
    id: u64,
    journal: Journal,
}

impl SimCodec {
    pub fn new(journal: Journal) -> Self {
        SimCodec {
            codec: MsgCodec::default(),
            id: 0,
            journal,
        }
    }
}

/// A clone is a new connection's codec: a number of its own, the same journal.
impl Clone for SimCodec {
    fn clone(&self) -> Self {
        SimCodec {
            codec: self.codec.clone(),
            id: self.journal.next_codec(),
            journal: self.journal.clone(),
        }
    }
}

impl Encoder<Msg> for SimCodec {
    type Error = std::io::Error;
    fn encode(&mut self, msg: Msg, dst: &mut BytesMut) -> Result<(), Self::Error> {
        if token(msg.text(), "p") == Some("encode") {
            panic!("simulated panic in encode");
        }
        let text = msg.text();
        let event = if text == CANCEL {
            Wire::Cancel { id: msg.id }
        } else {
            Wire::Encoded {
                nonce: num(text, "n").unwrap_or(0),
                handshake: flag(text, "hs"),
                id: msg.id,
                part: token(text, "pl")
                    .and_then(|p| p.split_once('/'))
                    .and_then(|(i, m)| Some((i.parse().ok()?, m.parse().ok()?))),
            }
        };
        self.journal.push(self.id, event);
        self.codec.encode(msg, dst)
    }
}

impl Decoder for SimCodec {
    type Item = Msg;
    type Error = std::io::Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, Self::Error> {
        let msg = self.codec.decode(src)?;
        if let Some(m) = &msg {
            let conn = num(m.text(), "c").unwrap_or(0);
            if m.text().starts_with("DRAIN ") {
                self.journal.push(self.id, Wire::DrainRead { conn });
            } else if m.text().starts_with("READONLY ") {
                self.journal.push(self.id, Wire::WrongServerRead { conn });
            }
        }
        if msg.as_ref().is_some_and(|m| marked(m, "decode")) {
            panic!("simulated panic in decode");
        }
        Ok(msg)
    }
}

/// The server: executes every request (the last part of a multi-part one) and answers
/// as its body says; its clones share the nonces it has seen (for `once`).
#[derive(Debug, Clone, Default)]
pub struct SimServer {
    seen: Arc<Mutex<BTreeSet<u64>>>,
}

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
        if body == CANCEL {
            // Ignored: the call it names runs and is answered as if it had not come.
            return Served {
                executed: false,
                replies: Vec::new(),
            };
        }
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
        // The server's word that it did not run the request (with `once`, only the
        // first time it sees it); with `mixed`, not on the first frame.
        let said = if flag(&body, "nr") {
            Some("LOADING ")
        } else if flag(&body, "ws") {
            Some("READONLY ")
        } else {
            None
        };
        let said = said
            .filter(|_| frames > 0)
            .filter(|_| !flag(&body, "once") || self.seen.lock().unwrap().insert(nonce));
        let mixed = flag(&body, "mixed");
        let mut replies = Vec::new();
        for i in 0..frames {
            let says = said.filter(|_| !(mixed && i == 0));
            // A part before the last is `More` even in an error reply: the test protocol
            // has no error part that is not final.
            let kind = if parts && i + 1 < frames {
                FrameKind::More
            } else if err || says.is_some() {
                FrameKind::Error
            } else {
                FrameKind::Normal
            };
            let text = format!(
                "{}n={nonce} i={i} c={}{mark}",
                says.unwrap_or(""),
                conn.conn
            );
            replies.push((gap, Msg::with_id(req.id, text).kind(kind)));
        }
        if flag(&body, "x") {
            replies.push((
                gap,
                Msg::with_id(0, format!("extra n={nonce} c={}", conn.conn)),
            ));
        }
        Served {
            // Not run only when every frame of its reply says so.
            executed: said.is_none() || mixed,
            replies,
        }
    }

    fn refusal(&self, conn: &ConnInfo) -> Option<Msg> {
        Some(Msg::with_id(0, format!("refused c={} max clients", conn.conn)).kind(FrameKind::Error))
    }

    fn drain_notice(&self, conn: &ConnInfo) -> Option<Msg> {
        Some(Msg::with_id(0, format!("DRAIN c={}", conn.conn)))
    }
}
