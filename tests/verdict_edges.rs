//! Verdicts of the server's word on a reply ([`Verdict`]) that `tests/verdict.rs` leaves
//! out: a `verdict` that panics, `NotRun` replies among many calls in flight (both
//! modes), and a `Drain` while calls are still queued on a fixed transport (held back by
//! the in-flight limit, or by a sink that takes nothing).
//!
//! Every test runs on paused time over in-memory pipes (`tests/support`): the fixed
//! transports' far end is a [`Peer`] the test drives frame by frame, the reconnecting
//! channels' a scripted server on a [`Net`]. Calls are queued in a known order (each
//! polled once before it is spawned), so which of them are written and which wait is
//! fixed, and every await is bounded.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use socketchannel::{Channel, Config, Endpoint, Error, Kind, Order, Session, State};
use tokio::io::DuplexStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use support::channel::{Ch, Mode, joined_within, msg, wait_state};
use support::codec::{Kind as Frame, Msg, MsgCodec, Verdicts};
use support::memory::{Io, Net};
use support::script::{Peer, pipe, settle};
use support::{bounded, timeout};

/// How long a single await may take (of the paused clock: only a hang reaches it).
const WAIT: Duration = Duration::from_secs(5);

type Outcome = Result<Msg, Error>;

/// A channel of [`Verdicts`] over a transport of one's own, in `mode`.
fn fixed<T>(transport: T, mode: Mode, config: Config) -> Ch
where
    T: socketchannel::Transport<Msg, Msg>,
{
    match mode {
        Mode::Order => Channel::with_config(transport, Order::new(Verdicts), config),
        Mode::Session => Channel::with_config(transport, Session::new(Verdicts), config),
    }
}

/// A reconnecting channel of [`Verdicts`] over `net` (host `a:1`), in `mode`.
fn reconnecting(net: &Net, mode: Mode, config: Config) -> Ch {
    let builder = Channel::builder().host("a:1").config(config);
    match mode {
        Mode::Order => builder.connector(net.connector(), Order::new(Verdicts)),
        Mode::Session => builder.connector(net.connector(), Session::new(Verdicts)),
    }
    .expect("a valid host")
}

/// Queues a call of each body, in that order: each is polled once (which puts it in the
/// channel's intake, before the connection task runs again) and then spawned.
fn queue_in_order<S: AsRef<str>>(ch: &Ch, bodies: &[S]) -> Vec<JoinHandle<Outcome>> {
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    bodies
        .iter()
        .map(|body| {
            let ch = ch.clone();
            let body = body.as_ref().to_string();
            let mut call = Box::pin(async move { ch.request(msg(body)).await });
            assert!(call.as_mut().poll(&mut cx).is_pending(), "no reply yet");
            tokio::spawn(call)
        })
        .collect()
}

/// The outcome of a spawned call, within [`WAIT`].
async fn outcome(call: JoinHandle<Outcome>) -> Outcome {
    joined_within(WAIT, call).await
}

/// The reply's body; panics (naming `what`) if the call failed.
fn body(out: Outcome, what: &str) -> String {
    match out {
        Ok(reply) => reply.text().to_string(),
        Err(err) => panic!("{what}: failed: {err:?}"),
    }
}

/// The error; panics (naming `what`) if the call succeeded.
fn error(out: Outcome, what: &str) -> Error {
    match out {
        Ok(reply) => panic!("{what}: got a reply {:?}", reply.text()),
        Err(err) => err,
    }
}

/// `err` is `kind`, *may have executed*, and holds no request.
fn assert_may_have_executed(mut err: Error, kind: Kind, what: &str) {
    assert_eq!(err.kind(), kind, "{what}: {err:?}");
    assert!(err.may_have_executed(), "{what}: {err:?}");
    assert!(!err.is_not_sent(), "{what}: {err:?}");
    assert_eq!(
        err.take_request::<Msg>(),
        None,
        "{what}: written, no request"
    );
}

/// `err` is `kind`, *not sent*, and gives back the request of body `request`.
fn assert_not_sent_with(mut err: Error, kind: Kind, request: &str) {
    assert_eq!(err.kind(), kind, "{request}: {err:?}");
    assert!(err.is_not_sent(), "{request}: {err:?}");
    assert!(!err.may_have_executed(), "{request}: {err:?}");
    let given_back = err.take_request::<Msg>();
    assert_eq!(
        given_back.as_ref().map(Msg::text),
        Some(request),
        "{request}: its own request handed back"
    );
}

/// The text of an error's cause.
fn cause(err: &Error) -> Option<String> {
    std::error::Error::source(err).map(ToString::to_string)
}

/// Waits until the server has seen the connection end, having read nothing more.
async fn assert_no_more_frames(peer: &mut Peer) {
    let more = timeout(WAIT, peer.recv()).await;
    assert_eq!(more, None, "the server read nothing more, then the end");
}

// 1. A panic in `verdict`.

/// Over a fixed transport, three calls are written (the in-flight limit) and two wait
/// queued; the server answers one and then sends `BOOM` for another, on which `verdict`
/// panics. The answered call keeps its reply; the one `BOOM` answers, and the third
/// written one, fail `Closed` *may have executed*; the queued ones fail `Closed` *not
/// sent* with their requests; the channel is closed (its state too), the connection is
/// dropped, and later calls fail `Closed` *not sent*.
async fn a_panic_in_verdict_on_a_fixed_transport(mode: Mode) {
    let (transport, server) = pipe();
    let mut peer = Peer::spawn(server);
    let ch = fixed(transport, mode, Config::default().max_in_flight(3));
    let mut calls = queue_in_order(&ch, &["w1", "w2", "w3", "q1", "q2"]).into_iter();
    let mut written = Vec::new();
    for _ in 0..3 {
        written.push(peer.next().await);
    }
    let bodies: Vec<_> = written.iter().map(Msg::text).collect();
    assert_eq!(bodies, ["w1", "w2", "w3"]);
    settle().await;
    assert_eq!(
        peer.idle(),
        None,
        "the in-flight limit holds q1 and q2 back"
    );

    // Order mode: `w1` answered, `BOOM` answers `w2`. Session mode: `w3` answered,
    // `BOOM` carries `w2`'s id.
    let answered = match mode {
        Mode::Order => 0,
        Mode::Session => 2,
    };
    peer.reply(&written[answered], written[answered].text());
    peer.reply(&written[1], "BOOM");

    let outs: Vec<Outcome> = {
        let mut outs = Vec::new();
        for call in calls.by_ref() {
            outs.push(outcome(call).await);
        }
        outs
    };
    let mut outs = outs.into_iter();
    for (i, out) in outs.by_ref().take(3).enumerate() {
        let what = format!("{mode:?}: w{}", i + 1);
        if i == answered {
            assert_eq!(body(out, &what), format!("w{}", i + 1), "its own reply");
        } else {
            // `w2` is the call `BOOM` answers; the other one was written and waiting.
            assert_may_have_executed(error(out, &what), Kind::Closed, &what);
        }
    }
    for (out, request) in outs.zip(["q1", "q2"]) {
        assert_not_sent_with(error(out, request), Kind::Closed, request);
    }

    // The channel closed with its task.
    wait_state(&ch, State::Closed).await;
    assert!(ch.is_closed());
    let late = timeout(WAIT, ch.request(msg("late"))).await;
    assert_not_sent_with(error(late, "late"), Kind::Closed, "late");
    let connect = timeout(WAIT, ch.connect()).await;
    assert_eq!(connect.map_err(|e| e.kind()), Err(Kind::Closed));
    assert_no_more_frames(&mut peer).await;
    assert_eq!(ch.counters().in_flight, 0, "nothing is left waiting");
}

/// As [`a_panic_in_verdict_on_a_fixed_transport`], over a reconnecting channel: the
/// panic ends the whole connection task, reconnects included, so the channel closes
/// and no second connection is made.
async fn a_panic_in_verdict_on_a_reconnecting_channel(mode: Mode) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let net = Net::new(move |_: Endpoint, mut io: Io| {
        let log = log.clone();
        async move {
            let mut reqs = Vec::new();
            while reqs.len() < 3 {
                match io.next().await {
                    Some(Ok(req)) => {
                        log.lock().unwrap().push(req.text().to_string());
                        reqs.push(req);
                    }
                    _ => return,
                }
            }
            let answered = match mode {
                Mode::Order => 0,
                Mode::Session => 2,
            };
            let first = Msg::with_id(reqs[answered].id, reqs[answered].body.clone());
            let boom = Msg::with_id(reqs[1].id, "BOOM");
            if io.send(first).await.is_err() || io.send(boom).await.is_err() {
                return;
            }
            // Whatever else comes is recorded, never answered.
            while let Some(Ok(req)) = io.next().await {
                log.lock().unwrap().push(req.text().to_string());
            }
        }
    });
    let ch = reconnecting(&net, mode, Config::default().max_in_flight(3));
    let calls = queue_in_order(&ch, &["w1", "w2", "w3", "q1", "q2"]);
    let mut outs = Vec::new();
    for call in calls {
        outs.push(outcome(call).await);
    }
    let mut outs = outs.into_iter();
    let answered = match mode {
        Mode::Order => 0,
        Mode::Session => 2,
    };
    for (i, out) in outs.by_ref().take(3).enumerate() {
        let what = format!("{mode:?}, reconnecting: w{}", i + 1);
        if i == answered {
            assert_eq!(body(out, &what), format!("w{}", i + 1), "its own reply");
        } else {
            assert_may_have_executed(error(out, &what), Kind::Closed, &what);
        }
    }
    for (out, request) in outs.zip(["q1", "q2"]) {
        assert_not_sent_with(error(out, request), Kind::Closed, request);
    }
    wait_state(&ch, State::Closed).await;
    assert!(ch.is_closed());
    let late = timeout(WAIT, ch.request(msg("late"))).await;
    assert_not_sent_with(error(late, "late"), Kind::Closed, "late");
    let connect = timeout(WAIT, ch.connect()).await;
    assert_eq!(connect.map_err(|e| e.kind()), Err(Kind::Closed));
    settle().await;
    assert_eq!(net.connects(), 1, "no reconnect after the panic");
    assert_eq!(
        *seen.lock().unwrap(),
        ["w1", "w2", "w3"],
        "nothing else written"
    );
    assert_eq!(ch.counters().in_flight, 0, "nothing is left waiting");
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_verdict_fails_the_call_may_have_executed() {
    bounded(async {
        a_panic_in_verdict_on_a_fixed_transport(Mode::Order).await;
        a_panic_in_verdict_on_a_fixed_transport(Mode::Session).await;
        a_panic_in_verdict_on_a_reconnecting_channel(Mode::Order).await;
        a_panic_in_verdict_on_a_reconnecting_channel(Mode::Session).await;
    })
    .await;
}

// 2. `NotRun` replies among many calls in flight.

/// Calls in the load.
const LOAD: usize = 200;

/// Does the call `c{i}` get a `NotRun` reply? Every 7th.
fn not_run(i: usize) -> bool {
    i.is_multiple_of(7)
}

/// A server that reads all [`LOAD`] calls (and says so through `loaded`), waits for
/// `go`, then answers them: in their order, or (`shuffle`, session mode) in another
/// (`i * 73 % LOAD`). `c{i}` with [`not_run`] gets `NOTRUN c{i}`: an error reply when
/// `i` is odd, an ordinary frame when even (so `check` passes it and the verdict alone
/// fails the call); the others are echoed. Then it echoes whatever comes.
fn loaded_server(shuffle: bool, loaded: Arc<Notify>, go: Arc<Notify>) -> Net {
    Net::new(move |_: Endpoint, mut io: Io| {
        let (loaded, go) = (loaded.clone(), go.clone());
        async move {
            let mut reqs = Vec::with_capacity(LOAD);
            while reqs.len() < LOAD {
                match io.next().await {
                    Some(Ok(req)) => reqs.push(req),
                    _ => return,
                }
            }
            loaded.notify_one();
            go.notified().await;
            for k in 0..LOAD {
                let req = &reqs[if shuffle { k * 73 % LOAD } else { k }];
                let i: usize = req.text()[1..].parse().expect("a numbered call");
                let reply = if not_run(i) {
                    let kind = if i % 2 == 1 {
                        Frame::Error
                    } else {
                        Frame::Normal
                    };
                    Msg::with_id(req.id, format!("NOTRUN {}", req.text())).kind(kind)
                } else {
                    Msg::with_id(req.id, req.body.clone())
                };
                if io.feed(reply).await.is_err() {
                    return;
                }
            }
            if io.flush().await.is_err() {
                return;
            }
            while let Some(Ok(req)) = io.next().await {
                if io.send(req).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// [`LOAD`] calls pipelined on one connection of a reconnecting channel, all in flight
/// at once; the `NotRun` ones fail `Server` *not sent*, each with its own reply as the
/// cause; every other one gets its own reply; and the connection stays.
async fn not_run_replies_under_load(mode: Mode) {
    let (loaded, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let net = loaded_server(mode == Mode::Session, loaded.clone(), go.clone());
    let ch = reconnecting(&net, mode, Config::default());
    let bodies: Vec<String> = (0..LOAD).map(|i| format!("c{i}")).collect();
    let calls = queue_in_order(&ch, &bodies);
    timeout(WAIT, loaded.notified()).await;
    settle().await;
    assert_eq!(
        ch.counters().in_flight,
        LOAD as u64,
        "{mode:?}: all in flight"
    );
    go.notify_one();

    let mut failed = 0;
    for (i, call) in calls.into_iter().enumerate() {
        let what = format!("{mode:?}: c{i}");
        let out = outcome(call).await;
        if not_run(i) {
            failed += 1;
            let mut err = error(out, &what);
            assert_eq!(err.kind(), Kind::Server, "{what}: {err:?}");
            assert!(err.is_not_sent(), "{what}: {err:?}");
            assert!(!err.may_have_executed(), "{what}: {err:?}");
            // Written: the encoder took the request.
            assert_eq!(err.take_request::<Msg>(), None, "{what}");
            let expected = if i % 2 == 1 {
                // `check`'s error: the call's own `NOTRUN` reply.
                format!("server said: NOTRUN c{i}")
            } else {
                "the server said the call did not run".to_string()
            };
            assert_eq!(cause(&err), Some(expected), "{what}");
        } else {
            assert_eq!(body(out, &what), format!("c{i}"), "{what}: its own reply");
        }
    }
    assert_eq!(failed, LOAD.div_ceil(7));

    // One connection throughout: nothing was retired or reconnected, nothing unknown.
    let counters = ch.counters();
    assert_eq!(counters.sent, LOAD as u64, "{mode:?}: {counters:?}");
    assert_eq!(counters.received, LOAD as u64, "{mode:?}: {counters:?}");
    assert_eq!(counters.in_flight, 0, "{mode:?}: {counters:?}");
    assert_eq!(counters.unknown, 0, "{mode:?}: {counters:?}");
    assert_eq!(counters.reconnects, 0, "{mode:?}: {counters:?}");
    assert_eq!(counters.retired, 0, "{mode:?}: {counters:?}");
    assert_eq!(*ch.state().borrow(), State::Ready);
    // And it still serves calls.
    let after = timeout(WAIT, ch.request(msg("after"))).await;
    assert_eq!(body(after, "after"), "after");
    assert_eq!(net.connects(), 1, "{mode:?}: one connection");
    assert_eq!(ch.counters().reconnects, 0);
}

#[tokio::test(start_paused = true)]
async fn not_run_replies_mid_load_fail_only_their_calls_not_sent() {
    bounded(not_run_replies_under_load(Mode::Order)).await;
}

#[tokio::test(start_paused = true)]
async fn not_run_replies_mid_load_fail_only_their_calls_not_sent_in_session_mode_out_of_order() {
    bounded(not_run_replies_under_load(Mode::Session)).await;
}

// 3. A drain with calls still queued, on a fixed transport.

/// A transport whose sink takes only as many frames as it has permits: once they are
/// used up, `poll_ready` is pending until [`Gate::open`] gives more.
struct Gated {
    inner: Framed<DuplexStream, MsgCodec>,
    gate: Gate,
}

/// The permits of a [`Gated`] sink; clones share them.
#[derive(Clone, Default)]
struct Gate(Arc<GateInner>);

#[derive(Default)]
struct GateInner {
    permits: AtomicUsize,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    /// `n` more frames may be taken.
    fn open(&self, n: usize) {
        self.0.permits.fetch_add(n, Ordering::SeqCst);
        if let Some(waker) = self.0.waker.lock().unwrap().take() {
            waker.wake();
        }
    }
}

impl Sink<Msg> for Gated {
    type Error = std::io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.gate.0.permits.load(Ordering::SeqCst) == 0 {
            *self.gate.0.waker.lock().unwrap() = Some(cx.waker().clone());
            // Opened meanwhile: no wake is lost.
            if self.gate.0.permits.load(Ordering::SeqCst) == 0 {
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Msg) -> std::io::Result<()> {
        let was = self.gate.0.permits.fetch_sub(1, Ordering::SeqCst);
        assert!(was > 0, "start_send without a permit");
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl Stream for Gated {
    type Item = std::io::Result<Msg>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// What holds the later calls back, unwritten, while the first two are written.
#[derive(Debug, Clone, Copy)]
enum Hold {
    /// `Config::max_in_flight(2)`.
    InFlightLimit,
    /// A sink that takes two frames and then is not ready.
    SinkNotReady,
}

/// Two calls written and unanswered, three queued behind them; the server sends `DRAIN`
/// (in session mode with the first written call's id: it is still nobody's reply). At
/// once the queued calls fail `Closed` *not sent* with their requests and the channel
/// takes no new call, while the written ones still wait; nothing more is written (even
/// once the sink is ready again); the written calls get their own replies; then the
/// channel is closed and the connection ends.
async fn a_drain_with_calls_queued(mode: Mode, hold: Hold) {
    let what = format!("{mode:?}, {hold:?}");
    let (client, server) = tokio::io::duplex(1 << 16);
    let mut peer = Peer::spawn(server);
    let framed = Framed::new(client, MsgCodec::default());
    let gate = Gate::default();
    let ch = match hold {
        Hold::InFlightLimit => fixed(framed, mode, Config::default().max_in_flight(2)),
        Hold::SinkNotReady => {
            gate.open(2);
            let gated = Gated {
                inner: framed,
                gate: gate.clone(),
            };
            fixed(gated, mode, Config::default())
        }
    };
    let mut calls = queue_in_order(&ch, &["w1", "w2", "q1", "q2", "q3"]);
    let written = [peer.next().await, peer.next().await];
    assert_eq!(written.each_ref().map(Msg::text), ["w1", "w2"], "{what}");
    settle().await;
    assert_eq!(peer.idle(), None, "{what}: q1 to q3 held back");
    assert!(calls.iter().all(|c| !c.is_finished()), "{what}");

    let drain = match mode {
        Mode::Order => Msg::new("DRAIN"),
        Mode::Session => Msg::with_id(written[0].id, "DRAIN"),
    };
    peer.send(drain);
    settle().await;

    // The queued calls failed at once, not sent, each with its request.
    let queued = calls.split_off(2);
    for (call, request) in queued.into_iter().zip(["q1", "q2", "q3"]) {
        assert!(call.is_finished(), "{what}: {request} failed at the drain");
        assert_not_sent_with(error(outcome(call).await, request), Kind::Closed, request);
    }
    // The written ones still wait for their replies; the channel takes no new call.
    assert!(
        calls.iter().all(|c| !c.is_finished()),
        "{what}: w1, w2 wait"
    );
    assert!(ch.is_closed(), "{what}");
    let late = timeout(WAIT, ch.request(msg("late"))).await;
    assert_not_sent_with(error(late, "late"), Kind::Closed, "late");
    assert_ne!(
        *ch.state().borrow(),
        State::Closed,
        "{what}: w1, w2 still wait"
    );
    // Nothing new is written, even once the sink would take it.
    gate.open(10);
    settle().await;
    assert_eq!(peer.idle(), None, "{what}: nothing written after the drain");

    // The written calls finish with their own replies (session mode: out of order).
    match mode {
        Mode::Order => {
            peer.reply(&written[0], "w1");
            peer.reply(&written[1], "w2");
        }
        Mode::Session => {
            peer.reply(&written[1], "w2");
            peer.reply(&written[0], "w1");
        }
    }
    for (call, request) in calls.into_iter().zip(["w1", "w2"]) {
        assert_eq!(body(outcome(call).await, request), request, "{what}");
    }
    wait_state(&ch, State::Closed).await;
    let late = timeout(WAIT, ch.request(msg("later"))).await;
    assert_not_sent_with(error(late, "later"), Kind::Closed, "later");
    assert_no_more_frames(&mut peer).await;
    let counters = ch.counters();
    assert_eq!(counters.sent, 2, "{what}: {counters:?}");
    assert_eq!(counters.received, 3, "{what}: {counters:?}");
    assert_eq!(counters.unknown, 0, "{what}: the drain is nobody's reply");
    assert_eq!(counters.in_flight, 0, "{what}: {counters:?}");
}

#[tokio::test(start_paused = true)]
async fn a_drain_on_a_fixed_transport_fails_calls_queued_at_that_moment_not_sent() {
    bounded(async {
        for mode in [Mode::Order, Mode::Session] {
            a_drain_with_calls_queued(mode, Hold::InFlightLimit).await;
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_drain_on_a_fixed_transport_fails_calls_the_sink_had_not_taken_not_sent() {
    bounded(async {
        for mode in [Mode::Order, Mode::Session] {
            a_drain_with_calls_queued(mode, Hold::SinkNotReady).await;
        }
    })
    .await;
}
