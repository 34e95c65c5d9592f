//! Bad input from the user (issue #8, item 7): zero and huge limits, a one-id session
//! range, no host, addresses that do not parse, a handshake that panics, a codec that
//! fails to encode and one that panics, and calls of odd shapes.
//!
//! What every case must give: a clear error (at build time where the input is known
//! then, else for the call), never a panic in the caller, never a hang. Every test is
//! bounded in time; the servers are in-memory pipes or the test server on 127.0.0.1.

#![cfg(feature = "tcp")]

mod support;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use socketchannel::{
    Backoff, BoxError, Builder, Call, Channel, Config, ConnectionErrorKind, Endpoint, Error,
    Handshake, Kind, Order, Session, State,
};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder, Framed};
use tower::{Service, ServiceExt};

use support::codec::{Msg, MsgCodec, TestProto, TestProto16};
use support::server::{Behaviour, Gate, TestServer, replies_to};
use support::{bounded, eventually, on_paused_thread, timeout};

type Ch = Channel<Msg, Msg>;

const SHORT: Duration = Duration::from_secs(3);

fn msg(body: &str) -> Msg {
    Msg::new(body.to_string())
}

/// Awaits a task, re-raising its panic.
async fn joined<T>(h: JoinHandle<T>) -> T {
    match timeout(SHORT, h).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn spawn_request(ch: &Ch, body: &str) -> JoinHandle<Result<Msg, Error>> {
    let ch = ch.clone();
    let body = body.to_string();
    tokio::spawn(async move { ch.request(Msg::new(body)).await })
}

/// An in-memory server speaking the test protocol: answers as the test server does
/// ([`replies_to`]), in order, and counts the frames it read.
fn echo_server(io: DuplexStream, frames: Arc<AtomicUsize>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut io = Framed::new(io, MsgCodec::default());
        while let Some(Ok(req)) = io.next().await {
            frames.fetch_add(1, Ordering::SeqCst);
            for reply in replies_to(&req) {
                if io.send(reply).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// A transport framed by `codec` over a pipe to a fresh [`echo_server`].
fn pipe<C>(codec: C) -> (Framed<DuplexStream, C>, Arc<AtomicUsize>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let frames = Arc::new(AtomicUsize::new(0));
    echo_server(server, frames.clone());
    (Framed::new(client, codec), frames)
}

/// An in-memory connector: every connection is a pipe to a fresh [`echo_server`].
#[allow(clippy::type_complexity)]
fn echo_connector<C: Clone + Send + 'static>(
    codec: C,
) -> impl Service<
    Endpoint,
    Response = Framed<DuplexStream, C>,
    Error = io::Error,
    Future = impl Future<Output = io::Result<Framed<DuplexStream, C>>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Endpoint| {
        let codec = codec.clone();
        async move { Ok::<_, io::Error>(pipe(codec).0) }
    })
}

/// The builder's error for a channel it could not make.
#[track_caller]
fn build_error(builder: Builder<Msg, Msg>) -> String {
    let shown = format!("{builder:?}");
    match builder.order(MsgCodec::default(), TestProto) {
        Ok(_) => panic!("the builder accepted bad input: {shown}"),
        Err(e) => e.to_string(),
    }
}

/// `n` concurrent requests, each answered with its own body.
async fn all_answered(ch: &Ch, n: usize) {
    let calls: Vec<_> = (0..n)
        .map(|i| spawn_request(ch, &format!("r{i}")))
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let reply = joined(call).await.expect("answered");
        assert_eq!(
            reply.text(),
            format!("r{i}"),
            "request {i} got another's reply"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Limits: zero and huge
// ---------------------------------------------------------------------------------------

/// `max_in_flight(0)` counts as 1: one call written at a time, and every call answered.
#[tokio::test]
async fn max_in_flight_zero_counts_as_one() {
    bounded(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let ch: Ch = Channel::with_config(
            support::connect(server.addr()).await,
            Order::new(TestProto),
            Config::default().max_in_flight(0),
        );
        let calls: Vec<_> = (0..3)
            .map(|i| spawn_request(&ch, &format!("r{i}")))
            .collect();
        eventually(SHORT, "the first call written", || {
            server.stats().frames() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(server.stats().frames(), 1, "more than one call in flight");
        assert_eq!(ch.counters().in_flight, 1);
        gate.open();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(
                joined(call).await.expect("answered").text(),
                format!("r{i}")
            );
        }
    })
    .await;
}

/// `max_in_flight(usize::MAX)` in both modes: no overflow, no preallocation, answers.
#[tokio::test]
async fn max_in_flight_huge_works_in_both_modes() {
    bounded(async {
        let config = Config::default().max_in_flight(usize::MAX);
        let order: Ch = Channel::with_config(
            pipe(MsgCodec::default()).0,
            Order::new(TestProto),
            config.clone(),
        );
        all_answered(&order, 200).await;
        let session: Ch =
            Channel::with_config(pipe(MsgCodec::default()).0, Session::new(TestProto), config);
        all_answered(&session, 200).await;
    })
    .await;
}

/// `queue(0)` counts as 1: callers wait their turn (backpressure), through `request` and
/// through `Service::poll_ready`, and every call is answered.
#[tokio::test]
async fn queue_zero_counts_as_one() {
    bounded(async {
        let ch: Ch = Channel::with_config(
            pipe(MsgCodec::default()).0,
            Order::new(TestProto),
            Config::default().queue(0).max_in_flight(1),
        );
        all_answered(&ch, 50).await;
        let mut svc = ch.clone();
        for i in 0..20 {
            let reply = timeout(SHORT, svc.ready())
                .await
                .expect("ready")
                .call(msg(&format!("s{i}")));
            assert_eq!(
                timeout(SHORT, reply).await.expect("answered").text(),
                format!("s{i}")
            );
        }
    })
    .await;
}

/// `queue(usize::MAX)` is clamped to what the intake can hold: building does not panic
/// (with a fixed transport or a builder), calls are answered, and `load` is sane.
#[tokio::test]
async fn queue_huge_is_clamped() {
    bounded(async {
        let config = Config::default()
            .queue(usize::MAX)
            .push_capacity(usize::MAX);
        let ch: Ch = Channel::with_config(
            pipe(MsgCodec::default()).0,
            Order::new(TestProto),
            config.clone(),
        );
        all_answered(&ch, 20).await;
        assert_eq!(tower::load::Load::load(&ch), 0);

        let built: Ch = Channel::builder()
            .host("127.0.0.1:1")
            .config(config)
            .connector(echo_connector(MsgCodec::default()), Session::new(TestProto))
            .expect("built");
        all_answered(&built, 20).await;
    })
    .await;
}

/// `push_capacity(0)` counts as 1: one push frame is kept, the rest are dropped and
/// counted; replies are not affected.
#[tokio::test]
async fn push_capacity_zero_keeps_one() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo().push_before()).await;
        let ch: Ch = Channel::with_config(
            support::connect(server.addr()).await,
            Order::new(TestProto),
            Config::default().push_capacity(0),
        );
        let mut pushes = ch.pushes().expect("the push receiver");
        for i in 0..5 {
            let reply = timeout(SHORT, ch.request(msg(&format!("r{i}")))).await;
            assert_eq!(reply.expect("answered").text(), format!("r{i}"));
        }
        let c = ch.counters();
        assert_eq!((c.pushes, c.push_overflow), (1, 4), "{c:?}");
        assert!(pushes.try_recv().is_ok());
        assert!(pushes.try_recv().is_err());
    })
    .await;
}

/// A session id range of one id: calls go one at a time, each gets its own reply, and
/// the server only ever sees that id.
#[tokio::test]
async fn session_range_of_one_id_serves_calls_one_at_a_time() {
    bounded(async {
        let server = TestServer::start(Behaviour::reverse_batches()).await;
        let ch: Ch = Channel::new(
            support::connect(server.addr()).await,
            Session::new(TestProto16).ids(5u16..=5),
        );
        all_answered(&ch, 30).await;
        let ids: Vec<u64> = server.stats().received().iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![5; 30]);
    })
    .await;
}

/// With the one id taken, a caller asking for that id by hand: Contract 4 says it fails
/// (`IdInUse`, not sent, request handed back). The engine may instead hold it until the
/// id is free (no room to admit any call meanwhile); then it must go out once the first
/// call is answered and get its own reply. Either way: no hang, no other's reply.
#[tokio::test]
async fn session_range_of_one_id_caller_id_in_use() {
    bounded(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let ch: Ch = Channel::new(
            support::connect(server.addr()).await,
            Session::new(TestProto16).ids(5u16..=5),
        );
        let first = spawn_request(&ch, "first");
        eventually(SHORT, "first written", || server.stats().frames() == 1).await;
        let mine = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.request(Call::new(msg("mine")).id(5u16)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        if mine.is_finished() {
            let mut err = joined(mine).await.expect_err("id 5 is taken");
            assert_eq!(err.kind(), Kind::IdInUse);
            assert!(err.is_not_sent());
            let back = err.take_request::<Msg>();
            assert_eq!(back.map(|m| m.text().to_string()).as_deref(), Some("mine"));
            gate.open();
        } else {
            assert_eq!(server.stats().frames(), 1, "id 5 written twice at once");
            gate.open();
            let reply = joined(mine).await.expect("answered once id 5 was free");
            assert_eq!((reply.id, reply.text()), (5, "mine"));
        }
        assert_eq!(joined(first).await.expect("answered").text(), "first");
    })
    .await;
}

/// An empty id range is refused where it is given (documented: `ids` panics), not
/// later in the connection task.
#[test]
#[should_panic(expected = "the session id range is empty")]
#[allow(clippy::reversed_empty_ranges)]
fn session_empty_id_range_panics_where_given() {
    let _ = Session::new(TestProto16).ids(6u16..=5);
}

/// An id range beyond what the protocol's id type holds (`u32` ids for a `u16`
/// protocol): calls must not hang, must not panic the connection task, and must never
/// go out with an id the reply cannot name.
#[tokio::test]
async fn session_id_range_beyond_the_protocol_is_not_a_hang() {
    bounded(async {
        let (transport, _) = pipe(MsgCodec::default());
        let ch: Ch = Channel::with_config(
            transport,
            Session::new(TestProto16).ids(70_000u32..=70_010),
            Config::default().stall_timeout(None),
        );
        let got = timeout(SHORT, ch.request(msg("r"))).await;
        match &got {
            Ok(reply) => assert_eq!(reply.text(), "r"),
            Err(e) => {
                assert!(!e.is_closed(), "the connection task died: {e}");
            }
        }
        assert!(
            !ch.is_closed(),
            "the channel closed itself over a bad id range"
        );
    })
    .await;
}

/// A stall timeout of zero: every written call fails at once as *may have executed*
/// (`Stalled`), and the reconnecting channel goes on without a hot loop or a hang.
#[tokio::test(start_paused = true)]
async fn stall_timeout_zero_fails_calls_promptly() {
    bounded(async {
        let ch: Ch = Channel::builder()
            .host("127.0.0.1:1")
            .config(Config::default().stall_timeout(Some(Duration::ZERO)))
            .backoff(Backoff::exponential(
                Duration::from_millis(10),
                Duration::from_millis(10),
            ))
            .connector(echo_connector(MsgCodec::default()), Order::new(TestProto))
            .expect("built");
        for _ in 0..3 {
            match timeout(SHORT, ch.request(msg("r"))).await {
                Ok(reply) => assert_eq!(reply.text(), "r"),
                Err(e) => {
                    assert!(e.may_have_executed(), "{e}");
                    assert_eq!(
                        e.connection_error().map(|c| c.kind()),
                        Some(ConnectionErrorKind::Stalled)
                    );
                }
            }
        }
    })
    .await;
}

/// A huge stall timeout (`Duration::MAX`, "never"): calls are answered; no overflow
/// when the timer is armed.
#[tokio::test]
async fn stall_timeout_huge_is_never() {
    bounded(async {
        let ch: Ch = Channel::with_config(
            pipe(MsgCodec::default()).0,
            Order::new(TestProto),
            Config::default().stall_timeout(Some(Duration::MAX)),
        );
        all_answered(&ch, 10).await;
        assert!(!ch.is_closed());
    })
    .await;
}

/// `shutdown(Duration::MAX)` ("wait as long as it takes"): no overflow in the caller;
/// it resolves once the calls are done.
#[tokio::test]
async fn shutdown_with_a_huge_deadline() {
    bounded(async {
        let ch: Ch = Channel::new(pipe(MsgCodec::default()).0, Order::new(TestProto));
        all_answered(&ch, 3).await;
        let waiter = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.shutdown(Duration::MAX).await })
        };
        joined(waiter).await;
        assert!(ch.is_closed());
    })
    .await;
}

/// An idle ping every zero seconds: no busy loop that starves the runtime; calls are
/// answered. Run on a runtime of its own in a thread, watched from outside with a
/// deadline, because a connection task that spins never yields to a timer inside its
/// own runtime.
#[test]
fn idle_ping_every_zero_does_not_spin() {
    let what =
        "idle_ping(Duration::ZERO): calls not answered within 5 s (the connection task spins)";
    on_paused_thread(Duration::from_secs(5), what, || async {
        let ch: Ch = Channel::builder()
            .host("127.0.0.1:1")
            .idle_ping(Duration::ZERO, || msg("ping"))
            .connector(echo_connector(MsgCodec::default()), Order::new(TestProto))
            .expect("built");
        all_answered(&ch, 5).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        all_answered(&ch, 5).await;
    });
}

/// A connect timeout of zero: every attempt times out, so calls fail *not sent* with a
/// connect error naming the timeout, promptly.
#[tokio::test(start_paused = true)]
async fn connect_timeout_zero_fails_calls_not_sent() {
    bounded(async {
        let slow = tower::service_fn(|_: Endpoint| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok::<_, io::Error>(pipe(MsgCodec::default()).0)
        });
        let ch: Ch = Channel::builder()
            .host("127.0.0.1:1")
            .connect_timeout(Duration::ZERO)
            .connector(slow, Order::new(TestProto))
            .expect("built");
        let err = timeout(SHORT, ch.request(msg("r")))
            .await
            .expect_err("cannot connect");
        assert_eq!(err.kind(), Kind::ConnectFailed);
        assert!(err.is_not_sent());
        assert!(err.to_string().contains("timed out"), "{err}");
    })
    .await;
}

/// A handshake timeout of zero: the handshake cannot finish, calls fail *not sent*.
#[tokio::test(start_paused = true)]
async fn handshake_timeout_zero_fails_calls_not_sent() {
    bounded(async {
        let ch: Ch = Channel::builder()
            .host("127.0.0.1:1")
            .handshake_timeout(Duration::ZERO)
            .handshake(|conn: Ch, _| async move {
                conn.request(msg("auth")).await?;
                Ok(Handshake::Ready)
            })
            .connector(echo_connector(MsgCodec::default()), Order::new(TestProto))
            .expect("built");
        let err = timeout(SHORT, ch.request(msg("r")))
            .await
            .expect_err("no handshake");
        assert_eq!(err.kind(), Kind::ConnectFailed);
        assert!(err.is_not_sent());
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Hosts and addresses
// ---------------------------------------------------------------------------------------

/// No host at all: building fails, saying so, in every building path.
#[tokio::test]
async fn builder_without_a_host_is_an_error() {
    let err = build_error(Channel::builder());
    assert!(err.contains("no host"), "{err}");
    let err = Channel::<Msg, Msg>::builder()
        .session(MsgCodec::default(), TestProto)
        .expect_err("no host");
    assert!(err.to_string().contains("no host"), "{err}");
    let err = Channel::<Msg, Msg>::builder()
        .into_layer(Order::new(TestProto))
        .expect_err("no host");
    assert!(err.to_string().contains("no host"), "{err}");
    // Backups alone are not a host.
    let err = build_error(Channel::builder().backup("127.0.0.1:1"));
    assert!(err.contains("no host"), "{err}");
}

/// A host without a port needs `.port()`.
#[tokio::test]
async fn host_without_a_port_needs_one() {
    let err = build_error(Channel::builder().host("localhost"));
    assert!(err.contains("no port"), "{err}");
    let ch = Channel::<Msg, Msg>::builder()
        .host("localhost")
        .port(1)
        .order(MsgCodec::default(), TestProto);
    assert!(ch.is_ok());
}

/// Addresses that do not parse: building fails with the address in the message, as a
/// host or as a backup; at run time `change_host` / `change_backups` refuse them and
/// the channel goes on as before.
#[tokio::test]
async fn unparsable_addresses_are_errors() {
    bounded(async {
        for bad in [
            "host:port",
            "[::1",
            ":80",
            "",
            "[::1]x",
            "h:70000",
            "h:-1",
            "[]:80",
        ] {
            let err = build_error(Channel::builder().host(bad));
            assert!(err.contains("invalid endpoint"), "{bad:?}: {err}");
            let err = build_error(Channel::builder().host("127.0.0.1:1").backup(bad));
            assert!(
                err.contains("invalid endpoint"),
                "{bad:?} as a backup: {err}"
            );
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} parsed");
        }
        let ch: Ch = Channel::builder()
            .host("127.0.0.1:1")
            .connector(echo_connector(MsgCodec::default()), Order::new(TestProto))
            .expect("built");
        all_answered(&ch, 2).await;
        for bad in ["host:port", "[::1", ":80"] {
            assert!(ch.change_host(bad).is_err(), "{bad:?}");
            assert!(ch.change_backups(["127.0.0.1:2", bad]).is_err(), "{bad:?}");
        }
        all_answered(&ch, 2).await;
        assert_eq!(
            ch.counters().reconnects,
            0,
            "a refused host change moved the channel"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// A handshake that panics
// ---------------------------------------------------------------------------------------

/// How a channel must behave once its handshake panicked: the waiting caller gets an
/// error (*not sent*: nothing of it was written) that names the panic or says the
/// channel is closed, later calls fail too, `poll_ready` and `shutdown` resolve. No
/// hang, no panic in the caller.
async fn after_a_handshake_panic(ch: Ch) {
    let err = timeout(SHORT, ch.request(msg("r")))
        .await
        .expect_err("the handshake panicked");
    assert!(err.is_not_sent(), "nothing was written: {err}");
    assert!(
        err.is_closed() || mentions(&err, "handshake panicked"),
        "the error does not say what happened: {err}"
    );
    let err = timeout(SHORT, ch.request(msg("later")))
        .await
        .expect_err("the handshake panicked");
    assert!(err.is_not_sent(), "{err}");
    // `poll_ready` must not wait for a connect pass that will never end: ready (calls
    // then fail fast, Contract 2) or an error (closed).
    let mut svc = ch.clone();
    let _ = timeout(SHORT, svc.ready()).await;
    timeout(SHORT, ch.shutdown(Duration::from_secs(1))).await;
}

/// A handshake future that panics when polled.
#[tokio::test]
async fn handshake_future_that_panics_fails_callers() {
    bounded(async {
        let ch: Ch = Channel::builder()
            .host("127.0.0.1:1")
            .handshake(|_conn: Ch, _| async move {
                if true {
                    panic!("handshake panicked (on purpose, in a test)");
                }
                Ok(Handshake::Ready)
            })
            .connector(echo_connector(MsgCodec::default()), Order::new(TestProto))
            .expect("built");
        after_a_handshake_panic(ch).await;
    })
    .await;
}

/// A handshake hook that panics before it even returns its future.
#[tokio::test]
async fn handshake_hook_that_panics_fails_callers() {
    bounded(async {
        let ch: Ch = Channel::builder()
            .host("127.0.0.1:1")
            .handshake(
                |_conn: Ch, _| -> std::future::Ready<Result<Handshake, BoxError>> {
                    panic!("handshake hook panicked (on purpose, in a test)")
                },
            )
            .connector(echo_connector(MsgCodec::default()), Order::new(TestProto))
            .expect("built");
        after_a_handshake_panic(ch).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Codecs that fail or panic
// ---------------------------------------------------------------------------------------

/// The test codec, except that it fails to encode bodies starting with `unencodable`,
/// and panics encoding bodies starting with `panic-encode` or decoding frames whose body
/// starts with `panic-decode`.
#[derive(Debug, Clone, Default)]
struct BadCodec(MsgCodec);

impl Encoder<Msg> for BadCodec {
    type Error = io::Error;

    fn encode(&mut self, msg: Msg, dst: &mut BytesMut) -> Result<(), io::Error> {
        if msg.body.starts_with(b"unencodable") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "BadCodec cannot encode this body",
            ));
        }
        if msg.body.starts_with(b"panic-encode") {
            panic!("BadCodec panicked encoding (on purpose, in a test)");
        }
        self.0.encode(msg, dst)
    }
}

impl Decoder for BadCodec {
    type Item = Msg;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, io::Error> {
        let frame = self.0.decode(src)?;
        if frame
            .as_ref()
            .is_some_and(|m| m.body.starts_with(b"panic-decode"))
        {
            panic!("BadCodec panicked decoding (on purpose, in a test)");
        }
        Ok(frame)
    }
}

/// Walks an error's sources, looking for `needle` in any of their messages.
fn mentions(err: &Error, needle: &str) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.to_string().contains(needle) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A codec that fails to encode one request, on a fixed transport: as documented for a
/// transport error, every call written on the connection (that one too: it was handed
/// to the sink) fails *may have executed* with a `Write` connection error whose source
/// is the codec's; calls still queued fail *not sent*; the channel is then closed.
#[tokio::test]
async fn encode_error_on_a_fixed_transport() {
    bounded(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let stream = support::connect(server.addr()).await.into_inner();
        let ch: Ch = Channel::new(
            Framed::new(stream, BadCodec::default()),
            Order::new(TestProto),
        );
        let waiting = spawn_request(&ch, "waiting");
        eventually(SHORT, "first call written", || server.stats().frames() == 1).await;

        let err = timeout(SHORT, ch.request(msg("unencodable")))
            .await
            .expect_err("cannot be encoded");
        assert_eq!(err.kind(), Kind::ConnectionLost, "{err}");
        assert_eq!(
            err.connection_error().map(|c| c.kind()),
            Some(ConnectionErrorKind::Write)
        );
        assert!(
            mentions(&err, "BadCodec cannot encode"),
            "the codec's error is lost: {err}"
        );

        let err = joined(waiting).await.expect_err("its connection ended");
        assert!(err.may_have_executed(), "{err}");
        assert_eq!(err.kind(), Kind::ConnectionLost);

        let mut err = timeout(SHORT, ch.request(msg("after")))
            .await
            .expect_err("closed");
        assert!(err.is_not_sent());
        assert_eq!(
            err.take_request::<Msg>()
                .map(|m| m.text().to_string())
                .as_deref(),
            Some("after")
        );
        assert!(ch.is_closed());
    })
    .await;
}

/// The same on a reconnecting channel: the request that cannot be encoded fails with a
/// clear error and is not retried; the next call goes out on a new connection.
#[tokio::test]
async fn encode_error_on_a_reconnecting_channel() {
    bounded(async {
        let ch: Ch = Channel::builder()
            .host("127.0.0.1:1")
            .connector(echo_connector(BadCodec::default()), Order::new(TestProto))
            .expect("built");
        all_answered(&ch, 2).await;
        let err = timeout(SHORT, ch.request(msg("unencodable")))
            .await
            .expect_err("cannot be encoded");
        assert_eq!(err.kind(), Kind::ConnectionLost, "{err}");
        assert!(mentions(&err, "BadCodec cannot encode"), "{err}");
        all_answered(&ch, 2).await;
        assert_eq!(ch.counters().reconnects, 1);
    })
    .await;
}

/// How a channel must behave once its codec panicked in the connection task: the
/// caller gets an error (no panic in its task, no hang); a call that was written and
/// waits for its reply must not be told *not sent* (it may have executed: a retry
/// policy such as `RetryNotSent` would run it twice); `poll_ready` and `shutdown`
/// resolve. `trigger_sent`: whether the trigger itself reached the server (it did when
/// the panic is in decoding its reply; not when the panic is in encoding it).
async fn after_a_codec_panic(
    ch: Ch,
    written: JoinHandle<Result<Msg, Error>>,
    trigger: &str,
    trigger_sent: bool,
) {
    let err = timeout(SHORT, ch.request(msg(trigger)))
        .await
        .expect_err("the codec panicked");
    if trigger_sent {
        assert!(
            err.may_have_executed(),
            "the trigger was answered by the server, yet is told not sent: {err}"
        );
    }
    let err = joined(written)
        .await
        .expect_err("its connection task is gone");
    assert!(
        err.may_have_executed(),
        "a written call was told it was not sent after the connection task panicked: {err}"
    );
    let err = timeout(SHORT, ch.request(msg("later")))
        .await
        .expect_err("gone");
    assert!(err.is_not_sent(), "{err}");
    let mut svc = ch.clone();
    let ready = timeout(SHORT, svc.ready()).await;
    assert!(ready.is_err(), "poll_ready said ready on a dead channel");
    timeout(SHORT, ch.shutdown(Duration::from_secs(1))).await;
}

/// A codec that panics encoding a request. The call already written is one the server
/// does not answer (`noreply...`), so it is still waiting when the panic comes.
#[tokio::test]
async fn codec_panic_on_encode_is_an_error_not_a_hang() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let stream = support::connect(server.addr()).await.into_inner();
        let ch: Ch = Channel::new(
            Framed::new(stream, BadCodec::default()),
            Order::new(TestProto),
        );
        let written = spawn_request(&ch, "noreply-held");
        eventually(SHORT, "first call written", || server.stats().frames() == 1).await;
        after_a_codec_panic(ch, written, "panic-encode", false).await;
    })
    .await;
}

/// A codec that panics decoding a reply (the server echoes the trigger back).
#[tokio::test]
async fn codec_panic_on_decode_is_an_error_not_a_hang() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let stream = support::connect(server.addr()).await.into_inner();
        let ch: Ch = Channel::new(
            Framed::new(stream, BadCodec::default()),
            Session::new(TestProto),
        );
        let written = spawn_request(&ch, "noreply-held");
        eventually(SHORT, "first call written", || server.stats().frames() == 1).await;
        after_a_codec_panic(ch, written, "panic-decode", true).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Calls of odd shapes
// ---------------------------------------------------------------------------------------

/// A multi-part call with no parts, in order mode, followed by an ordinary call: the
/// empty call writes nothing, so it must not take the next call's reply.
#[tokio::test]
async fn empty_multi_part_call_takes_no_one_elses_reply() {
    bounded(async {
        let ch: Ch = Channel::with_config(
            pipe(MsgCodec::default()).0,
            Order::new(TestProto),
            Config::default().stall_timeout(Some(Duration::from_secs(1))),
        );
        let empty = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.request(Call::parts(Vec::new())).await })
        };
        tokio::task::yield_now().await;
        let next = spawn_request(&ch, "next");
        let next = joined(next).await;
        let empty = joined(empty).await;
        if let Ok(reply) = &empty {
            panic!("an empty call got a reply: {reply:?} (the next call got {next:?})");
        }
        assert_eq!(
            next.expect("answered").text(),
            "next",
            "the next call lost its reply"
        );
    })
    .await;
}

/// The same in session mode: an empty call must fail, not wait for a reply that the
/// server was never asked for.
#[tokio::test]
async fn empty_multi_part_call_in_session_mode_does_not_hang() {
    bounded(async {
        let ch: Ch = Channel::with_config(
            pipe(MsgCodec::default()).0,
            Session::new(TestProto),
            Config::default().stall_timeout(None),
        );
        let got = timeout(SHORT, ch.request(Call::parts(Vec::new()))).await;
        assert!(got.is_err(), "an empty call got a reply: {got:?}");
        all_answered(&ch, 2).await;
    })
    .await;
}

/// A caller-supplied id in order mode: `Unsupported`, not sent, request handed back.
#[tokio::test]
async fn caller_id_in_order_mode_is_unsupported() {
    bounded(async {
        let ch: Ch = Channel::new(pipe(MsgCodec::default()).0, Order::new(TestProto));
        let mut err = timeout(SHORT, ch.request(Call::new(msg("mine")).id(7u64)))
            .await
            .expect_err("no ids in order mode");
        assert_eq!(err.kind(), Kind::Unsupported);
        assert!(err.is_not_sent());
        assert!(err.take_request::<Msg>().is_some());
        all_answered(&ch, 2).await;
    })
    .await;
}

/// A caller-supplied id too large for the protocol's id type fails at once, not sent,
/// request handed back; nothing is written.
#[tokio::test]
async fn caller_id_beyond_the_protocol_fails_not_sent() {
    bounded(async {
        let (transport, frames) = pipe(MsgCodec::default());
        let ch: Ch = Channel::new(transport, Session::new(TestProto16));
        let mut err = timeout(SHORT, ch.request(Call::new(msg("mine")).id(70_000u32)))
            .await
            .expect_err("70000 is not a u16");
        assert!(err.is_not_sent(), "{err}");
        assert!(err.take_request::<Msg>().is_some());
        assert_eq!(frames.load(Ordering::SeqCst), 0);
        all_answered(&ch, 2).await;
    })
    .await;
}

/// `request_n(_, 0)` resolves once written, with no frames; the FIFO stays in step.
#[tokio::test]
async fn request_n_zero_resolves_when_written() {
    bounded(async {
        let ch: Ch = Channel::new(pipe(MsgCodec::default()).0, Order::new(TestProto));
        let got = timeout(SHORT, ch.request_n(msg("noreply"), 0))
            .await
            .expect("written");
        assert!(got.is_empty());
        all_answered(&ch, 3).await;
        assert_eq!(ch.counters().in_flight, 0);
    })
    .await;
}

/// State after the end: a fixed-transport channel whose codec panicked reports
/// `Closed`, so anything watching the state learns of it.
#[tokio::test]
async fn state_after_a_codec_panic_is_closed() {
    bounded(async {
        let ch: Ch = Channel::new(pipe(BadCodec::default()).0, Order::new(TestProto));
        let _ = timeout(SHORT, ch.request(msg("panic-encode"))).await;
        let mut state = ch.state();
        let closed = timeout(SHORT, state.wait_for(|s| *s == State::Closed)).await;
        assert!(closed.is_ok());
    })
    .await;
}
