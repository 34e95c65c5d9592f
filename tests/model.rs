//! A model of who must get what (issue #8, item 5): random sequences of operations on a
//! reconnecting channel, checked after every step against what the server did.
//!
//! The operations: a caller sends a request (plain, under `tokio::time::timeout`, or
//! under `tower::timeout`), a caller gives up (its task aborted wherever it is), time
//! passes (timeouts fire, backoffs end), the server replies (order mode: to the oldest
//! request it has not answered; session mode: to any of them, chosen by the test; a
//! normal or an error reply), the server sends a frame nobody asked for (session mode: a
//! reply for an id that is not waiting, which must be dropped and counted; order mode,
//! when nothing waits: an unsolicited frame, which is a desync that closes the
//! connection), the server closes the connection, the connector starts or stops refusing
//! connections. Reconnects happen as the channel decides; the test accepts them.
//!
//! The channel runs over an in-memory connector (`tower::service_fn` over
//! `tokio::io::duplex`); the test holds the server's end and drives it step by step. One
//! current-thread runtime with paused time, no real I/O: each case is deterministic.
//! After every operation the test lets every task run until nothing moves (the
//! "settle"), reads what reached the server, and checks:
//!
//! * a caller's reply is the server's answer to *its* request (the nonce in the body, and
//!   in session mode the id the request went out with), never another's;
//! * an error reply reaches its own caller only, as `Kind::Server`;
//! * a request the server answered reaches its caller (unless the caller gave up first);
//! * when a connection dies (closed by the server, or a desync), every request the
//!   server had read on it and not answered fails *may have executed*
//!   (`Kind::ConnectionLost`); requests it never read are not failed by that: they go out
//!   on the next connection, or fail *not sent* (`Kind::ConnectFailed`) when a connect pass
//!   fails (and only then);
//! * a caller that gave up gets nothing, and a request whose caller gave up before it was
//!   written is never written; no request is ever written twice;
//! * a `tokio::time::timeout` fires at its deadline; nothing times out early;
//! * an unknown session id is dropped and counted (`counters().unknown`), the
//!   connection kept.
//!
//! At the end the connector accepts again and the server answers everything: every
//! caller that did not give up must have its outcome, `in_flight` is 0, and the channel's
//! `sent` counter equals the number of requests the server read.
//!
//! `proptest-state-machine` is not used: the operations refer to waiting calls by an
//! index taken modulo their number, so every sequence is valid as generated and plain
//! `proptest` shrinks it well; the reference model is the test's own bookkeeping of what
//! the server read and answered.
//!
//! Cases: `PROPTEST_CASES` (default 256 per mode: a few seconds in a debug build).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use proptest::prelude::*;
use socketchannel::{
    Backoff, BoxError, Channel, ConnectionErrorKind, Endpoint, Error, Kind, Order, Reconnect,
    Session,
};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tower::ServiceExt;

#[path = "support/codec.rs"]
mod codec;

use codec::{Kind as FrameKind, Msg, MsgCodec, TestProto, TestProto16};

type Ch = Channel<Msg, Msg>;
type Io = Framed<DuplexStream, MsgCodec>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Order,
    Session,
}

/// How a caller waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// `channel.request(..)`.
    Plain,
    /// `tokio::time::timeout(ms, channel.request(..))`.
    Tokio(u64),
    /// `tower::timeout::Timeout::new(channel, ms).oneshot(..)`: its clock starts once
    /// `poll_ready` said ready.
    Tower(u64),
}

#[derive(Debug, Clone)]
enum Op {
    Send(Flavour),
    /// A waiting caller (index modulo their number) gives up: its task is aborted.
    Cancel(usize),
    /// Time passes, in milliseconds.
    Advance(u64),
    /// The server answers one request it read (order: the oldest; session: this index
    /// modulo their number), with an error reply if `error`.
    Reply {
        pick: usize,
        error: bool,
    },
    /// The server sends a frame no request waits for (the number picks the id).
    Unknown(usize),
    /// The server closes the connection.
    Close,
    /// The connector refuses new connections (`true`) or accepts them again.
    Refuse(bool),
}

/// The channel's settings for a case.
#[derive(Debug, Clone, Copy)]
struct Setup {
    max_in_flight: usize,
    queue: usize,
    /// Session mode: ids `1..=span` (small, so they wrap and run out).
    span: u16,
}

/// What a caller got.
#[derive(Debug, Clone)]
enum Outcome {
    Reply(Msg),
    Failed {
        kind: Kind,
        may_have_executed: bool,
        why: Option<ConnectionErrorKind>,
        text: String,
    },
    TimedOut,
}

impl Outcome {
    fn of(got: Result<Msg, Error>) -> Outcome {
        match got {
            Ok(m) => Outcome::Reply(m),
            Err(e) => Outcome::Failed {
                kind: e.kind(),
                may_have_executed: e.may_have_executed(),
                why: e.connection_error().map(|c| c.kind()),
                text: e.to_string(),
            },
        }
    }

    fn of_service(got: Result<Msg, BoxError>) -> Outcome {
        match got {
            Ok(m) => Outcome::Reply(m),
            Err(e) if e.is::<tower::timeout::error::Elapsed>() => Outcome::TimedOut,
            Err(e) => match e.downcast::<Error>() {
                Ok(e) => Outcome::of(Err(*e)),
                Err(other) => panic!("an error that is not the crate's: {other}"),
            },
        }
    }
}

/// The test's record of one call.
#[derive(Debug)]
struct Call {
    nonce: u64,
    flavour: Flavour,
    created: Instant,
    task: JoinHandle<()>,
    /// The step at which its caller gave up (aborted, or its timeout seen to fire).
    abandoned: Option<usize>,
    /// Aborted by the test (before the settle of the step in `abandoned`).
    cancelled: bool,
    /// Read by the server: on which connection, with which id, at which step.
    received: Option<(usize, u64, usize)>,
    /// Answered by the server: with an error reply?
    answered: Option<bool>,
    /// Its outcome, once seen and checked.
    seen: Option<Outcome>,
}

impl Call {
    fn body(&self) -> String {
        format!("n{}", self.nonce)
    }
}

/// The server's end of the current connection.
struct ServerConn {
    index: usize,
    io: Io,
    /// Requests read and not answered: (nonce, id), in the order read.
    unanswered: Vec<(u64, u64)>,
}

struct Harness {
    mode: Mode,
    setup: Setup,
    ch: Ch,
    calls: Vec<Call>,
    outcomes: Arc<Mutex<HashMap<u64, Outcome>>>,
    accept: mpsc::UnboundedReceiver<DuplexStream>,
    refuse: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    server: Option<ServerConn>,
    conns: usize,
    dead: BTreeSet<usize>,
    step: usize,
    unknown_sent: u64,
    received_total: u64,
    log: Vec<String>,
}

impl Harness {
    fn new(mode: Mode, setup: Setup) -> Harness {
        let (tx, accept) = mpsc::unbounded_channel();
        let refuse = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let connector = {
            let (refuse, refused) = (refuse.clone(), refused.clone());
            tower::service_fn(move |_: Endpoint| {
                let tx: mpsc::UnboundedSender<DuplexStream> = tx.clone();
                let (refuse, refused) = (refuse.clone(), refused.clone());
                async move {
                    if refuse.load(Ordering::SeqCst) {
                        refused.fetch_add(1, Ordering::SeqCst);
                        return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
                    }
                    let (client, server) = tokio::io::duplex(1 << 16);
                    tx.send(server)
                        .map_err(|_| io::Error::other("the test is gone"))?;
                    Ok(Framed::new(client, MsgCodec::default()))
                }
            })
        };
        let config = socketchannel::Config::default()
            .max_in_flight(setup.max_in_flight)
            .queue(setup.queue)
            .stall_timeout(None)
            // The model keeps one connection at a time: no retiring one for its orphans.
            .max_orphans(None)
            .orphan_age(None);
        let builder = Channel::builder()
            .host("model:1")
            .config(config)
            .reconnect(Reconnect::Once)
            .backoff(Backoff::exponential(
                Duration::from_millis(100),
                Duration::from_millis(100),
            ));
        let ch = match mode {
            Mode::Order => builder.connector(connector, Order::new(TestProto)),
            Mode::Session => {
                builder.connector(connector, Session::new(TestProto16).ids(1u16..=setup.span))
            }
        }
        .expect("a channel");
        Harness {
            mode,
            setup,
            ch,
            calls: Vec::new(),
            outcomes: Arc::new(Mutex::new(HashMap::new())),
            accept,
            refuse,
            refused,
            server: None,
            conns: 0,
            dead: BTreeSet::new(),
            step: 0,
            unknown_sent: 0,
            received_total: 0,
            log: Vec::new(),
        }
    }

    /// Fails the case, with what happened so far.
    #[track_caller]
    fn fail(&self, what: String) -> ! {
        panic!(
            "{what}\nmode {:?}, {:?}, step {}\nlog:\n  {}",
            self.mode,
            self.setup,
            self.step,
            self.log.join("\n  ")
        );
    }

    fn call_index(&self, nonce: u64) -> usize {
        usize::try_from(nonce).expect("a nonce is an index")
    }

    /// Lets every task run until nothing moves: no task ready, nothing new at the server.
    async fn settle(&mut self) {
        let mut quiet = 0;
        for _ in 0..1000 {
            for _ in 0..32 {
                tokio::task::yield_now().await;
            }
            if self.pump() {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet >= 3 {
                    return;
                }
            }
        }
        self.fail("no quiet after 1000 rounds: something spins".into());
    }

    /// Accepts new connections and reads what reached the server. Returns whether
    /// anything did.
    fn pump(&mut self) -> bool {
        let mut progress = false;
        while let Ok(io) = self.accept.try_recv() {
            progress = true;
            if let Some(old) = self.server.take() {
                // The channel made a new connection: it dropped the old one.
                self.dead.insert(old.index);
            }
            self.log
                .push(format!("server accepts connection {}", self.conns));
            self.server = Some(ServerConn {
                index: self.conns,
                io: Framed::new(io, MsgCodec::default()),
                unanswered: Vec::new(),
            });
            self.conns += 1;
        }
        let mut read = Vec::new();
        let mut closed = false;
        if let Some(conn) = &mut self.server {
            loop {
                match conn.io.next().now_or_never() {
                    Some(Some(Ok(m))) => read.push(m),
                    Some(Some(Err(e))) => panic!("the server cannot decode a request: {e}"),
                    Some(None) => {
                        closed = true;
                        break;
                    }
                    None => break,
                }
            }
        }
        for m in read {
            progress = true;
            self.received(m);
        }
        if closed {
            progress = true;
            let conn = self.server.take().expect("a connection");
            self.log
                .push(format!("client closed connection {}", conn.index));
            self.dead.insert(conn.index);
        }
        progress
    }

    /// The server read `m`.
    fn received(&mut self, m: Msg) {
        let Some(nonce) = m
            .text()
            .strip_prefix('n')
            .and_then(|n| n.parse::<u64>().ok())
        else {
            self.fail(format!("the server read a frame no caller sent: {m:?}"));
        };
        let i = self.call_index(nonce);
        let conn = self.server.as_ref().expect("a connection").index;
        let step = self.step;
        let call = &self.calls[i];
        if let Some(prev) = call.received {
            self.fail(format!(
                "request n{nonce} written twice: first {prev:?}, now on {conn}"
            ));
        }
        if let Some(when) = call.abandoned
            && (when < step || call.cancelled)
        {
            self.fail(format!(
                "request n{nonce} written at step {step}, after its caller gave up at step {when}"
            ));
        }
        if self.mode == Mode::Session {
            let live = &self.server.as_ref().expect("a connection").unanswered;
            if m.id == 0 || m.id > u64::from(self.setup.span) {
                self.fail(format!(
                    "request n{nonce} went out with id {} out of range",
                    m.id
                ));
            }
            if live.iter().any(|&(_, id)| id == m.id) {
                self.fail(format!(
                    "request n{nonce} went out with id {}, which is live",
                    m.id
                ));
            }
        }
        self.log
            .push(format!("server reads n{nonce} (id {}) on {conn}", m.id));
        self.calls[i].received = Some((conn, m.id, step));
        self.received_total += 1;
        self.server
            .as_mut()
            .expect("a connection")
            .unanswered
            .push((nonce, m.id));
    }

    /// Writes `frame` as the server; `false` when the connection is gone.
    fn server_send(&mut self, frame: Msg) -> bool {
        let Some(conn) = &mut self.server else {
            return false;
        };
        match conn.io.send(frame).now_or_never() {
            Some(Ok(())) => true,
            Some(Err(_)) => false,
            None => panic!("a 64 KiB pipe is full: the client does not read"),
        }
    }

    fn spawn_call(&mut self, flavour: Flavour) {
        let nonce = self.calls.len() as u64;
        let body = format!("n{nonce}");
        let outcomes = self.outcomes.clone();
        let ch = self.ch.clone();
        let task = tokio::spawn(async move {
            let outcome = match flavour {
                Flavour::Plain => Outcome::of(ch.request(Msg::new(body)).await),
                Flavour::Tokio(ms) => {
                    let limit = Duration::from_millis(ms);
                    match tokio::time::timeout(limit, ch.request(Msg::new(body))).await {
                        Ok(got) => Outcome::of(got),
                        Err(_) => Outcome::TimedOut,
                    }
                }
                Flavour::Tower(ms) => {
                    let svc = tower::timeout::Timeout::new(ch, Duration::from_millis(ms));
                    Outcome::of_service(svc.oneshot(Msg::new(body)).await)
                }
            };
            outcomes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(nonce, outcome);
        });
        self.log.push(format!("send n{nonce} {flavour:?}"));
        self.calls.push(Call {
            nonce,
            flavour,
            created: Instant::now(),
            task,
            abandoned: None,
            cancelled: false,
            received: None,
            answered: None,
            seen: None,
        });
    }

    fn waiting(&self) -> Vec<usize> {
        let outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        self.calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.abandoned.is_none() && !outcomes.contains_key(&c.nonce))
            .map(|(i, _)| i)
            .collect()
    }

    async fn apply(&mut self, op: &Op) {
        self.step += 1;
        match *op {
            Op::Send(flavour) => self.spawn_call(flavour),
            Op::Cancel(pick) => {
                let waiting = self.waiting();
                if waiting.is_empty() {
                    return;
                }
                let i = waiting[pick % waiting.len()];
                self.calls[i].task.abort();
                self.calls[i].abandoned = Some(self.step);
                self.calls[i].cancelled = true;
                self.log.push(format!("cancel n{i}"));
            }
            Op::Advance(ms) => {
                self.log.push(format!("advance {ms} ms"));
                tokio::time::advance(Duration::from_millis(ms)).await;
            }
            Op::Reply { pick, error } => {
                let Some(conn) = &mut self.server else {
                    return;
                };
                if conn.unanswered.is_empty() {
                    return;
                }
                let at = match self.mode {
                    Mode::Order => 0,
                    Mode::Session => pick % conn.unanswered.len(),
                };
                let (nonce, id) = conn.unanswered.remove(at);
                let kind = if error {
                    FrameKind::Error
                } else {
                    FrameKind::Normal
                };
                let frame = Msg::with_id(id, format!("n{nonce}")).kind(kind);
                self.log
                    .push(format!("server answers n{nonce} (id {id}, error {error})"));
                if self.server_send(frame) {
                    let i = self.call_index(nonce);
                    self.calls[i].answered = Some(error);
                }
            }
            Op::Unknown(pick) => {
                let Some(conn) = &self.server else {
                    return;
                };
                match self.mode {
                    Mode::Session => {
                        // An id no request waits for: 0 (no id), one beyond the range, or
                        // a free one in the range.
                        let live: Vec<u64> = conn.unanswered.iter().map(|&(_, id)| id).collect();
                        let mut ids = vec![0, 1000];
                        ids.extend(
                            (1..=u64::from(self.setup.span)).filter(|id| !live.contains(id)),
                        );
                        let id = ids[pick % ids.len()];
                        self.log
                            .push(format!("server sends a frame for unknown id {id}"));
                        if self.server_send(Msg::with_id(id, "unknown")) {
                            self.unknown_sent += 1;
                        }
                    }
                    Mode::Order => {
                        // Unsolicited only when nothing waits; otherwise it would be the
                        // oldest request's reply, as far as anyone can tell.
                        if !conn.unanswered.is_empty() {
                            return;
                        }
                        let index = conn.index;
                        self.log
                            .push(format!("server sends an unsolicited frame on {index}"));
                        if self.server_send(Msg::new("unsolicited")) {
                            self.settle().await;
                            if self.server.as_ref().is_some_and(|c| c.index == index) {
                                self.fail("a desync did not close the connection".into());
                            }
                        }
                    }
                }
            }
            Op::Close => {
                if let Some(conn) = self.server.take() {
                    self.log
                        .push(format!("server closes connection {}", conn.index));
                    self.dead.insert(conn.index);
                }
            }
            Op::Refuse(on) => {
                self.log.push(format!("connector refuses: {on}"));
                self.refuse.store(on, Ordering::SeqCst);
            }
        }
        self.settle().await;
        self.check();
    }

    /// Checks every call against what the server did.
    fn check(&mut self) {
        let now = Instant::now();
        let outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let unknown = self.ch.counters().unknown;
        if self.mode == Mode::Session && unknown != self.unknown_sent {
            self.fail(format!(
                "{} frames for unknown ids sent, {unknown} counted",
                self.unknown_sent
            ));
        }
        for i in 0..self.calls.len() {
            let call = &self.calls[i];
            let got = outcomes.get(&call.nonce);
            let body = call.body();
            if call.abandoned.is_some() && call.seen.is_none() {
                // Gave up (aborted, or its timeout already seen): nothing may arrive.
                if let Some(got) = got
                    && !matches!(got, Outcome::TimedOut)
                {
                    self.fail(format!("{body} gave up, yet got {got:?}"));
                }
                continue;
            }
            match (got, &call.seen) {
                (Some(got), None) => {
                    self.validate(i, got, now);
                    let call = &mut self.calls[i];
                    if matches!(got, Outcome::TimedOut) {
                        call.abandoned = Some(self.step);
                    }
                    call.seen = Some(got.clone());
                }
                (Some(_), Some(_)) => {}
                (None, Some(seen)) => self.fail(format!("{body}'s outcome {seen:?} vanished")),
                (None, None) => self.must_be_waiting(i, now),
            }
        }
    }

    /// A call has its outcome: is it the right one?
    fn validate(&self, i: usize, got: &Outcome, now: Instant) {
        let call = &self.calls[i];
        let body = call.body();
        match got {
            Outcome::Reply(m) => {
                if m.text() != body {
                    self.fail(format!("{body} got another's reply: {m:?}"));
                }
                if call.answered != Some(false) {
                    self.fail(format!("{body} got a reply the server did not send: {m:?}"));
                }
                if self.mode == Mode::Session {
                    let id = call.received.map(|(_, id, _)| id);
                    if Some(m.id) != id {
                        self.fail(format!(
                            "{body} went out with id {id:?}, got a reply for {}",
                            m.id
                        ));
                    }
                }
            }
            Outcome::Failed {
                kind: Kind::Server,
                text,
                ..
            } => {
                if call.answered != Some(true) || !text.ends_with(&format!("server said: {body}")) {
                    self.fail(format!("{body} got an error reply it was not sent: {text}"));
                }
            }
            Outcome::Failed {
                kind,
                may_have_executed: true,
                why,
                text,
            } => {
                let Some((conn, _, _)) = call.received else {
                    self.fail(format!(
                        "{body} never reached the server, yet failed MX: {text}"
                    ));
                };
                if *kind != Kind::ConnectionLost || !self.dead.contains(&conn) {
                    self.fail(format!(
                        "{body} failed MX ({kind:?}, {why:?}) on connection {conn}, which is \
                         not dead: {text}"
                    ));
                }
                if call.answered.is_some() {
                    self.fail(format!("{body} was answered, yet failed: {text}"));
                }
            }
            Outcome::Failed {
                kind,
                may_have_executed: false,
                text,
                ..
            } => {
                if call.received.is_some() {
                    self.fail(format!(
                        "{body} reached the server, yet failed not sent: {text}"
                    ));
                }
                if *kind != Kind::ConnectFailed || self.refused.load(Ordering::SeqCst) == 0 {
                    self.fail(format!(
                        "{body} failed not sent ({kind:?}) with no connect refused: {text}"
                    ));
                }
            }
            Outcome::TimedOut => {
                let limit = match call.flavour {
                    Flavour::Tokio(ms) | Flavour::Tower(ms) => Duration::from_millis(ms),
                    Flavour::Plain => self.fail(format!("{body} has no timeout, yet timed out")),
                };
                if now < call.created + limit {
                    self.fail(format!(
                        "{body} timed out early: after {:?} of {limit:?}",
                        now - call.created
                    ));
                }
            }
        }
    }

    /// A call without an outcome: is that allowed now?
    fn must_be_waiting(&self, i: usize, now: Instant) {
        let call = &self.calls[i];
        let body = call.body();
        if let Some(error) = call.answered {
            self.fail(format!(
                "{body} was answered (error {error}), its caller got nothing"
            ));
        }
        if let Some((conn, _, _)) = call.received
            && self.dead.contains(&conn)
        {
            self.fail(format!(
                "{body}'s connection {conn} died, its caller got nothing"
            ));
        }
        if let Flavour::Tokio(ms) = call.flavour {
            // The timer wheel counts whole milliseconds: allow one more.
            if now >= call.created + Duration::from_millis(ms + 1) {
                self.fail(format!("{body}'s timeout of {ms} ms did not fire"));
            }
        }
    }

    /// The end: connections accepted again, everything answered. Every caller that did
    /// not give up has its outcome; nothing is left in flight.
    async fn finish(&mut self) {
        self.log.push("finish".into());
        self.refuse.store(false, Ordering::SeqCst);
        for _ in 0..50 {
            self.step += 1;
            self.settle().await;
            while let Some(conn) = &self.server {
                if conn.unanswered.is_empty() {
                    break;
                }
                self.apply_reply_oldest();
                self.settle().await;
            }
            self.check();
            if self.waiting().is_empty() {
                break;
            }
            tokio::time::advance(Duration::from_millis(200)).await;
            self.settle().await;
            self.check();
        }
        let waiting = self.waiting();
        if !waiting.is_empty() {
            self.fail(format!("calls still waiting at the end: {waiting:?}"));
        }
        // Abandoned calls' replies: answer them too, so no slot or id stays held.
        while let Some(conn) = &self.server {
            if conn.unanswered.is_empty() {
                break;
            }
            self.apply_reply_oldest();
            self.settle().await;
        }
        self.check();
        let c = self.ch.counters();
        if c.in_flight != 0 {
            self.fail(format!("in flight at the end: {c:?}"));
        }
        if c.sent != self.received_total {
            self.fail(format!(
                "the channel counts {} sent, the server read {}",
                c.sent, self.received_total
            ));
        }
    }

    fn apply_reply_oldest(&mut self) {
        let Some(conn) = &mut self.server else {
            return;
        };
        let (nonce, id) = conn.unanswered.remove(0);
        self.log.push(format!("server answers n{nonce} (id {id})"));
        if self.server_send(Msg::with_id(id, format!("n{nonce}"))) {
            let i = self.call_index(nonce);
            self.calls[i].answered = Some(false);
        }
    }
}

fn run(mode: Mode, setup: Setup, ops: &[Op]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut h = Harness::new(mode, setup);
        for op in ops {
            h.apply(op).await;
        }
        h.finish().await;
    });
}

fn flavour() -> impl Strategy<Value = Flavour> {
    prop_oneof![
        3 => Just(Flavour::Plain),
        1 => prop::sample::select(vec![100u64, 500, 2000]).prop_map(Flavour::Tokio),
        1 => prop::sample::select(vec![100u64, 500, 2000]).prop_map(Flavour::Tower),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => flavour().prop_map(Op::Send),
        8 => any::<usize>().prop_map(Op::Cancel),
        8 => prop::sample::select(vec![1u64, 50, 150, 600, 2500]).prop_map(Op::Advance),
        25 => (any::<usize>(), prop::bool::weighted(0.15))
            .prop_map(|(pick, error)| Op::Reply { pick, error }),
        5 => any::<usize>().prop_map(Op::Unknown),
        5 => Just(Op::Close),
        4 => any::<bool>().prop_map(Op::Refuse),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    (1usize..=4, prop::sample::select(vec![1usize, 8]), 2u16..=6).prop_map(
        |(max_in_flight, queue, span)| Setup {
            max_in_flight,
            queue,
            span,
        },
    )
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Order mode: replies in order; an unsolicited frame is a desync.
    #[test]
    fn order_mode_matches_the_model(setup in setup(), ops in prop::collection::vec(op(), 1..60)) {
        run(Mode::Order, setup, &ops);
    }

    /// Session mode: replies in any order; unknown ids are dropped and counted.
    #[test]
    fn session_mode_matches_the_model(setup in setup(), ops in prop::collection::vec(op(), 1..60)) {
        run(Mode::Session, setup, &ops);
    }
}
