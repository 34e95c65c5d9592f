//! The channel's tracing: a `call` span on every call path, the connection task's
//! `socketchannel` span (with the channel's name and host), an event for each state
//! change, and the session id of each call written in session mode.
//!
//! A minimal subscriber of the test's own keeps every span and event; each test sets it
//! as its thread's default and runs on a current-thread runtime, so the connection task
//! is polled on that thread too.

#![cfg(feature = "tcp")]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{
    Backoff, Call, Channel, Config, Handshake, Order, Protocol, Replies, Reply, Session, Sessions,
    State,
};
use tokio::io::DuplexStream;
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LinesCodec};
use tower::ServiceExt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

// ---------------------------------------------------------------------------------------
// The subscriber

#[derive(Debug, Clone)]
struct SpanRec {
    name: &'static str,
    level: Level,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
}

#[derive(Debug, Clone)]
struct EventRec {
    level: Level,
    fields: BTreeMap<String, String>,
    /// The span it happened in: its explicit parent, else the thread's current span.
    span: Option<u64>,
}

impl EventRec {
    fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }
}

#[derive(Default)]
struct Log {
    spans: HashMap<u64, SpanRec>,
    events: Vec<EventRec>,
    /// Entered spans, per thread.
    stacks: HashMap<ThreadId, Vec<u64>>,
}

#[derive(Clone, Default)]
struct Capture {
    log: Arc<Mutex<Log>>,
    next: Arc<AtomicU64>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl Capture {
    fn current(log: &Log) -> Option<u64> {
        log.stacks
            .get(&std::thread::current().id())
            .and_then(|s| s.last().copied())
    }

    fn events(&self) -> Vec<EventRec> {
        self.log.lock().unwrap().events.clone()
    }

    fn span(&self, id: u64) -> SpanRec {
        self.log.lock().unwrap().spans[&id].clone()
    }

    fn spans(&self) -> Vec<SpanRec> {
        self.log.lock().unwrap().spans.values().cloned().collect()
    }

    /// The name of the span an event happened in, if any.
    fn span_name(&self, event: &EventRec) -> Option<&'static str> {
        event.span.map(|id| self.span(id).name)
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut log = self.log.lock().unwrap();
        let parent = if attrs.is_root() {
            None
        } else if let Some(parent) = attrs.parent() {
            Some(parent.into_u64())
        } else {
            Capture::current(&log)
        };
        let meta = attrs.metadata();
        log.spans.insert(
            id,
            SpanRec {
                name: meta.name(),
                level: *meta.level(),
                fields,
                parent,
            },
        );
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut log = self.log.lock().unwrap();
        if let Some(span) = log.spans.get_mut(&span.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let mut log = self.log.lock().unwrap();
        let span = if let Some(parent) = event.parent() {
            Some(parent.into_u64())
        } else if event.is_contextual() {
            Capture::current(&log)
        } else {
            None
        };
        log.events.push(EventRec {
            level: *event.metadata().level(),
            fields,
            span,
        });
    }

    fn enter(&self, span: &Id) {
        let mut log = self.log.lock().unwrap();
        let thread = std::thread::current().id();
        log.stacks.entry(thread).or_default().push(span.into_u64());
    }

    fn exit(&self, span: &Id) {
        let mut log = self.log.lock().unwrap();
        let thread = std::thread::current().id();
        if let Some(stack) = log.stacks.get_mut(&thread)
            && let Some(at) = stack.iter().rposition(|&s| s == span.into_u64())
        {
            stack.remove(at);
        }
    }
}

fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let guard = tracing::subscriber::set_default(capture.clone());
    (capture, guard)
}

// ---------------------------------------------------------------------------------------
// Servers and protocols

/// Each word of a request line comes back as a line of its own, in upper case; `end` as
/// `END`, the final frame. A line starting with `quiet` is not answered. Sends `HELLO`
/// first.
#[derive(Clone)]
struct Words;

impl Protocol<String, String> for Words {
    fn is_final(&self, resp: &String) -> bool {
        resp == "END"
    }
}

async fn answer(mut server: Framed<DuplexStream, LinesCodec>) {
    if server.send("HELLO".to_string()).await.is_err() {
        return;
    }
    while let Some(Ok(line)) = server.next().await {
        if line.starts_with("quiet") {
            continue;
        }
        for word in line.split(' ') {
            if server.send(word.to_uppercase()).await.is_err() {
                return;
            }
        }
    }
}

/// Lines that start with their session id: "7 hello".
#[derive(Clone)]
struct Tagged;

impl Protocol<String, String> for Tagged {}

impl Sessions<String, String> for Tagged {
    type Id = u32;
    fn stamp(&self, req: &mut String, id: u32) {
        *req = format!("{id} {req}");
    }
    fn session(&self, resp: &String) -> Option<u32> {
        resp.split_once(' ')?.0.parse().ok()
    }
}

fn s(x: &str) -> String {
    x.to_string()
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The `state` field of every event that has one, in order, with its level and message.
fn state_events(capture: &Capture) -> Vec<(String, Level, String)> {
    capture
        .events()
        .into_iter()
        .filter_map(|e| {
            let state = e.fields.get("state")?.clone();
            Some((state, e.level, e.message().to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn every_call_path_has_a_debug_call_span_named_by_its_shape() {
    let (capture, _guard) = capture();
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(answer(Framed::new(server, LinesCodec::new())));
    let (channel, connection) = Channel::pair(
        Framed::new(client, LinesCodec::new()),
        Order::new(Words),
        Config::default(),
    );
    // The read is queued before the task runs, so it takes the greeting.
    let mut greeting = Box::pin(channel.read());
    assert!(futures::poll!(&mut greeting).is_pending());
    tokio::spawn(connection);
    within("read", async {
        assert_eq!(greeting.await.unwrap(), "HELLO");
        assert_eq!(channel.request(s("a")).await.unwrap(), "A");
        assert_eq!(channel.request_n(s("a b"), 2).await.unwrap(), ["A", "B"]);
        let all = channel.request_until_final(s("a end")).await.unwrap();
        assert_eq!(all, ["A", "END"]);
        let mut stream = channel.stream(s("a end"), Replies::UntilFinal).await;
        while stream.next().await.transpose().unwrap().is_some() {}
        channel.send(s("quiet")).await.unwrap();
        assert_eq!(channel.clone().oneshot(s("a")).await.unwrap(), "A");
        let call = Call::new(s("a b")).replies(Replies::Count(2));
        let reply = channel.calls().oneshot(call).await.unwrap();
        assert!(matches!(reply, Reply::Many(_)));
    })
    .await;

    let mut shapes: Vec<String> = capture
        .spans()
        .into_iter()
        .filter(|s| s.name == "call")
        .inspect(|s| assert_eq!(s.level, Level::DEBUG))
        .map(|s| s.fields["shape"].clone())
        .collect();
    shapes.sort();
    // read, request, Service<Req>; request_n, request_until_final, Calls; stream; send.
    let expected = [
        "many", "many", "many", "one", "one", "one", "send", "stream",
    ];
    assert_eq!(shapes, expected);
}

#[tokio::test]
async fn the_connection_task_runs_in_a_span_naming_the_channel_and_its_host() {
    let (capture, _guard) = capture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers one line per connection, then hangs up.
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let mut lines = Framed::new(socket, LinesCodec::new());
            if let Some(Ok(line)) = lines.next().await {
                let _ = lines.send(line.to_uppercase()).await;
            }
        }
    });
    // Built inside a span of the caller's: the task's span is a root all the same.
    let outer = tracing::info_span!("caller");
    let channel: Channel<String, String> = outer.in_scope(|| {
        Channel::builder()
            .host(addr)
            .name("cache")
            .handshake(|_conn, _endpoint| async {
                tracing::info!("in the handshake");
                Ok(Handshake::Ready)
            })
            .order(LinesCodec::new(), Words)
            .unwrap()
    });
    let mut state = channel.state();
    assert_eq!(within("call", channel.request(s("a"))).await.unwrap(), "A");
    within("idle", state.wait_for(|s| *s == State::Idle))
        .await
        .unwrap();
    channel.close();
    within("closed", state.wait_for(|s| *s == State::Closed))
        .await
        .unwrap();

    let spans: Vec<SpanRec> = capture
        .spans()
        .into_iter()
        .filter(|s| s.name == "socketchannel")
        .collect();
    assert_eq!(spans.len(), 1, "one span, made once: {spans:?}");
    let task = &spans[0];
    assert_eq!(task.level, Level::INFO);
    assert_eq!(task.parent, None);
    assert_eq!(task.fields["channel"], "cache");
    assert_eq!(task.fields["host"], addr.to_string());

    // Everything the task does happens in it: the handshake's own events too.
    let events = capture.events();
    let handshake = events
        .iter()
        .find(|e| e.message() == "in the handshake")
        .expect("the handshake ran");
    assert_eq!(capture.span_name(handshake), Some("socketchannel"));
    let connected = events
        .iter()
        .find(|e| e.message() == "connected")
        .expect("a connected event");
    assert_eq!(capture.span_name(connected), Some("socketchannel"));
    assert_eq!(connected.fields["endpoint"], addr.to_string());
}

#[tokio::test]
async fn each_state_change_has_one_event_in_the_task_span() {
    let (capture, _guard) = capture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let mut lines = Framed::new(socket, LinesCodec::new());
            if let Some(Ok(line)) = lines.next().await {
                let _ = lines.send(line.to_uppercase()).await;
            }
        }
    });
    let channel: Channel<String, String> = Channel::builder()
        .host(addr)
        .name("states")
        .handshake(|_conn, _endpoint| async { Ok(Handshake::Ready) })
        .order(LinesCodec::new(), Words)
        .unwrap();
    let mut state = channel.state();
    assert_eq!(within("call", channel.request(s("a"))).await.unwrap(), "A");
    within("idle", state.wait_for(|s| *s == State::Idle))
        .await
        .unwrap();
    channel.close();
    within("closed", state.wait_for(|s| *s == State::Closed))
        .await
        .unwrap();
    drop(channel);
    tokio::task::yield_now().await;

    let states = state_events(&capture);
    let expected = [
        ("Connecting", Level::DEBUG, "connecting"),
        ("Handshaking", Level::DEBUG, "state changed"),
        ("Ready", Level::INFO, "connected"),
        ("Idle", Level::DEBUG, "state changed"),
        ("Closed", Level::INFO, "state changed"),
    ]
    .map(|(s, l, m)| (s.to_string(), l, m.to_string()));
    assert_eq!(states, expected);
    // No other event says the same change again.
    let connected = capture
        .events()
        .iter()
        .filter(|e| e.message() == "connected")
        .count();
    assert_eq!(connected, 1);
    for event in capture
        .events()
        .iter()
        .filter(|e| e.fields.contains_key("state"))
    {
        let span = capture.span(event.span.expect("in a span"));
        assert_eq!(
            (span.name, span.fields["channel"].as_str()),
            ("socketchannel", "states")
        );
    }
}

#[tokio::test]
async fn backing_off_is_an_info_event_and_a_fixed_channel_is_named_by_its_config() {
    let (capture, _guard) = capture();
    // A port nobody listens on.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let channel: Channel<String, String> = Channel::builder()
        .host(addr)
        .backoff(Backoff::exponential(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ))
        .order(LinesCodec::new(), Words)
        .unwrap();
    let err = within("refused", channel.request(s("a")))
        .await
        .unwrap_err();
    assert!(err.is_connect_failed(), "{err:?}");
    let states = state_events(&capture);
    let expected = [
        ("Connecting", Level::DEBUG, "connecting"),
        ("BackingOff", Level::INFO, "backing off"),
    ]
    .map(|(s, l, m)| (s.to_string(), l, m.to_string()));
    assert_eq!(states, expected);
    // Unnamed: the span names the host only.
    let task = capture
        .spans()
        .into_iter()
        .find(|s| s.name == "socketchannel")
        .unwrap();
    assert!(!task.fields.contains_key("channel"), "{task:?}");
    assert_eq!(task.fields["host"], addr.to_string());

    // Over a transport of one's own: named by its config, no host; ready from the start
    // (no event for that), closed when the transport ends.
    let (client, server) = tokio::io::duplex(1024);
    let channel: Channel<String, String> = Channel::with_config(
        Framed::new(client, LinesCodec::new()),
        Order::new(Words),
        Config::default().name("fixed"),
    );
    let mut state = channel.state();
    drop(server);
    within("closed", state.wait_for(|s| *s == State::Closed))
        .await
        .unwrap();
    let fixed: Vec<(String, Level, String)> = state_events(&capture)[2..].to_vec();
    let closed = [(
        "Closed".to_string(),
        Level::INFO,
        "state changed".to_string(),
    )];
    assert_eq!(fixed, closed);
    let task = capture
        .spans()
        .into_iter()
        .find(|s| {
            s.name == "socketchannel" && s.fields.get("channel").is_some_and(|c| c == "fixed")
        })
        .expect("the fixed channel's span");
    assert!(!task.fields.contains_key("host"));
}

#[tokio::test]
async fn a_session_id_is_a_debug_event_on_the_connection_task() {
    let (capture, _guard) = capture();
    let (client, server) = tokio::io::duplex(1024);
    // Echoes each line as it is.
    tokio::spawn(async move {
        let mut server = Framed::new(server, LinesCodec::new());
        while let Some(Ok(line)) = server.next().await {
            if server.send(line).await.is_err() {
                return;
            }
        }
    });
    let channel = Channel::with_config(
        Framed::new(client, LinesCodec::new()),
        Session::new(Tagged),
        Config::default().name("sessions"),
    );
    within("call", async {
        assert_eq!(channel.request(s("a")).await.unwrap(), "1 a");
        let call = Call::new(s("b")).id(42u32);
        assert_eq!(channel.request(call).await.unwrap(), "42 b");
    })
    .await;

    let ids: Vec<EventRec> = capture
        .events()
        .into_iter()
        .filter(|e| e.message() == "session id stamped")
        .collect();
    let values: Vec<&str> = ids.iter().map(|e| e.fields["id"].as_str()).collect();
    assert_eq!(values, ["1", "42"]);
    for event in &ids {
        assert_eq!(event.level, Level::DEBUG);
        // On the connection task (in its span), not in the caller's call span.
        let span = capture.span(event.span.expect("in a span"));
        assert_eq!(span.name, "socketchannel");
        assert_eq!(span.fields["channel"], "sessions");
    }
}
