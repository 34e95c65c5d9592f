//! The reconnecting channel (issue #5; design.md contracts 1, 2, 7 and 8): single-flight
//! connects, failover over backups, the two connect policies, backoff, the connect
//! timeout, restarts and host changes under load, `close` / `shutdown` / `connect`, the
//! state watch, `Buffer` over a channel whose first connect fails, and the idle ping.
//!
//! Most tests use an in-memory connector (`support::memory`: a `tower::service_fn` that
//! opens a duplex pipe and runs a scripted server on its far end) under paused time; the restart, host
//! change and `Buffer` tests use real loopback sockets and real time.

#![cfg(feature = "tcp")]

mod support;

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use socketchannel::{
    Backoff, Channel, Config, ConnectError, Endpoint, Error, Kind, Reconnect, State,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tower::load::Load;
use tower::{Service, ServiceExt};

use support::channel::{Ch, Mode, joined, msg, spawn_request, wait_state};
use support::codec::{Msg, MsgCodec, TestProto};
use support::memory::{Io, Net};
use support::{free_addr, within};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Waits until `cond` holds, checking every few milliseconds, for at most `secs`.
async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    within(secs, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Echoes every frame; after answering `bye` it closes the connection.
async fn echo(_endpoint: Endpoint, mut io: Io) {
    while let Some(Ok(req)) = io.next().await {
        let bye = req.text() == "bye";
        if io.send(req).await.is_err() || bye {
            break;
        }
    }
}

/// Reads every frame and never answers.
async fn silent(_endpoint: Endpoint, mut io: Io) {
    while let Some(Ok(_)) = io.next().await {}
}

fn assert_connect_not_sent(err: &Error) {
    assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
    assert!(err.is_not_sent(), "{err}");
}

/// Records every state the watch shows, deduplicated.
fn record_states(ch: &Ch) -> Arc<Mutex<Vec<State>>> {
    let mut rx = ch.state();
    let seen = Arc::new(Mutex::new(vec![*rx.borrow_and_update()]));
    let out = seen.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let s = *rx.borrow_and_update();
            let mut v = seen.lock().unwrap();
            if v.last() != Some(&s) {
                v.push(s);
            }
        }
    });
    out
}

/// A loopback TCP server speaking the test protocol. It answers `name:body`, in order.
/// A request whose body starts with `hold` is not answered (nor is anything after it on
/// that connection) until [`TcpServer::release`]. [`TcpServer::kill_all`] drops every
/// open connection while the listener keeps accepting.
struct TcpServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    holds: Arc<AtomicUsize>,
    kill: watch::Sender<u64>,
    release: watch::Sender<bool>,
}

impl TcpServer {
    async fn start(name: &'static str) -> TcpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::on(listener, name)
    }

    fn on(listener: TcpListener, name: &'static str) -> TcpServer {
        let addr = listener.local_addr().expect("local_addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let holds = Arc::new(AtomicUsize::new(0));
        let (kill, _) = watch::channel(0u64);
        let (release, _) = watch::channel(false);
        let server = TcpServer {
            addr,
            accepted: accepted.clone(),
            holds: holds.clone(),
            kill: kill.clone(),
            release: release.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let _ = socket.set_nodelay(true);
                let mut kill_rx = kill.subscribe();
                let mut release_rx = release.subscribe();
                let holds = holds.clone();
                tokio::spawn(async move {
                    let (mut tx, mut rx) = Framed::new(socket, MsgCodec::default()).split();
                    // Reads (and counts holds) independently of the replies, which wait
                    // at a hold until it is released.
                    let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel::<Msg>();
                    let mut reader_kill = kill_rx.clone();
                    let reader = async move {
                        loop {
                            let req = tokio::select! {
                                _ = reader_kill.changed() => return,
                                frame = rx.next() => match frame {
                                    Some(Ok(req)) => req,
                                    _ => return,
                                },
                            };
                            if req.text().starts_with("hold") {
                                holds.fetch_add(1, Ordering::SeqCst);
                            }
                            if queue.send(req).is_err() {
                                return;
                            }
                        }
                    };
                    let writer = async move {
                        while let Some(req) = queued.recv().await {
                            if req.text().starts_with("hold") {
                                tokio::select! {
                                    _ = kill_rx.changed() => return,
                                    _ = release_rx.wait_for(|r| *r) => {}
                                }
                            }
                            let reply = Msg::with_id(req.id, format!("{name}:{}", req.text()));
                            if tx.send(reply).await.is_err() {
                                return;
                            }
                        }
                    };
                    // Either half ending ends the connection (both halves dropped).
                    tokio::select! {
                        _ = reader => {}
                        _ = writer => {}
                    }
                });
            }
        });
        server
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn holds(&self) -> usize {
        self.holds.load(Ordering::SeqCst)
    }

    fn kill_all(&self) {
        self.kill.send_modify(|g| *g += 1);
    }

    fn release(&self) {
        self.release.send_replace(true);
    }
}

fn tcp_channel(addr: SocketAddr, config: Config) -> Ch {
    Channel::builder()
        .host(addr.to_string())
        .config(config)
        .order(MsgCodec::default(), TestProto)
        .expect("valid host")
}

// ---------------------------------------------------------------------------------------
// Single flight
// ---------------------------------------------------------------------------------------

/// 1,000 callers on a lazy channel share one connect attempt and all get their reply.
#[tokio::test(start_paused = true)]
async fn single_flight_one_connect_serves_a_thousand_callers() {
    let net = Net::new(echo);
    net.delay(Duration::from_millis(50));
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
    assert_eq!(
        net.connects(),
        0,
        "a lazy channel connected before any call"
    );
    let calls = (0..1000).map(|i| {
        let ch = ch.clone();
        async move { ch.request(msg(format!("m{i}"))).await }
    });
    let results = within(30, "1000 callers", join_all(calls)).await;
    assert_eq!(
        net.connects(),
        1,
        "callers did not share one connect attempt"
    );
    for (i, r) in results.into_iter().enumerate() {
        let reply = r.unwrap_or_else(|e| panic!("call {i} failed: {e}"));
        assert_eq!(reply.text(), format!("m{i}"));
    }
    assert_eq!(ch.counters().reconnects, 0);
}

/// When the one shared attempt fails, every one of the 1,000 callers learns it: they all
/// fail as *not sent* with `Kind::ConnectFailed`, and nobody starts a second attempt.
#[tokio::test(start_paused = true)]
async fn single_flight_failure_fails_every_caller_not_sent() {
    let net = Net::new(echo);
    net.delay(Duration::from_millis(50));
    net.down("a:1", true);
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
    let calls = (0..1000).map(|i| {
        let ch = ch.clone();
        async move { ch.request(msg(format!("m{i}"))).await }
    });
    let results = within(30, "1000 callers", join_all(calls)).await;
    assert_eq!(
        net.connects(),
        1,
        "callers did not share one connect attempt"
    );
    for (i, r) in results.into_iter().enumerate() {
        let mut err = r.expect_err("the connect failed, yet a call succeeded");
        assert_connect_not_sent(&err);
        assert_eq!(
            err.take_request::<Msg>().map(|m| m.text().to_string()),
            Some(format!("m{i}")),
            "a not-sent call hands its request back"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Failover and the connect error
// ---------------------------------------------------------------------------------------

/// Primary refused, first backup refused, second backup works: the call succeeds, and the
/// second backup becomes the current host (the next pass tries it first).
#[tokio::test(start_paused = true)]
async fn failover_tries_backups_in_order_and_keeps_the_one_that_worked() {
    let net = Net::new(echo);
    net.down("a:1", true);
    net.down("b:2", true);
    let ch = net.channel(
        Mode::Order,
        Channel::builder().host("a:1").backup("b:2").backup("c:3"),
    );
    let reply = within(10, "failover", ch.request(msg("x")))
        .await
        .expect("c:3 works");
    assert_eq!(reply.text(), "x");
    assert_eq!(net.tried(), ["a:1", "b:2", "c:3"]);

    // The server closes after `bye`; the connection answered, so (Reconnect::Once) the
    // channel goes idle and reconnects on the next call.
    within(10, "bye", ch.request(msg("bye")))
        .await
        .expect("bye");
    wait_state(&ch, State::Idle).await;
    net.down("a:1", false); // the primary is back, but c:3 is the current host now
    let reply = within(10, "reconnect", ch.request(msg("y")))
        .await
        .expect("reconnect");
    assert_eq!(reply.text(), "y");
    assert_eq!(
        net.tried(),
        ["a:1", "b:2", "c:3", "c:3"],
        "the next pass starts at c:3"
    );
    assert_eq!(
        (net.count("a:1"), net.count("b:2"), net.count("c:3")),
        (1, 1, 2)
    );
    assert_eq!(ch.counters().reconnects, 1);
}

/// Every host down: the error is `Kind::ConnectFailed`, not sent, and its source is a
/// `ConnectError` that names each host and its failure, in order.
#[tokio::test(start_paused = true)]
async fn all_hosts_down_error_names_each_host() {
    let net = Net::new(echo);
    for h in ["a:1", "b:2", "c:3"] {
        net.down(h, true);
    }
    let ch = net.channel(
        Mode::Order,
        Channel::builder().host("a:1").backup("b:2").backup("c:3"),
    );
    let err = within(10, "all down", ch.request(msg("x")))
        .await
        .expect_err("all down");
    assert_connect_not_sent(&err);
    let source = err.source().expect("a connect error has a source");
    let connect = source
        .downcast_ref::<ConnectError>()
        .unwrap_or_else(|| panic!("source is not a ConnectError: {source:?}"));
    let text = connect.to_string();
    for h in ["a:1 refused", "b:2 refused", "c:3 refused"] {
        assert!(text.contains(h), "{text:?} does not name {h:?}");
    }
    let hosts: Vec<String> = connect.failures().map(|(e, _)| e.to_string()).collect();
    assert_eq!(hosts, ["a:1", "b:2", "c:3"]);
    let whys: Vec<String> = connect.failures().map(|(_, why)| why.to_string()).collect();
    assert_eq!(whys, ["a:1 refused", "b:2 refused", "c:3 refused"]);
    assert!(
        err.to_string().contains("a:1"),
        "Display of the call error: {err}"
    );
}

// ---------------------------------------------------------------------------------------
// Policies and backoff
// ---------------------------------------------------------------------------------------

/// `Reconnect::Once`: after a failed pass, no more attempts until a call arrives.
#[tokio::test(start_paused = true)]
async fn policy_once_waits_for_a_call_after_a_failed_pass() {
    let net = Net::new(echo);
    net.down("a:1", true);
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Once)
            .backoff(Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(8),
            )),
    );
    let err = within(10, "first call", ch.request(msg("x")))
        .await
        .expect_err("down");
    assert_connect_not_sent(&err);
    assert_eq!(net.connects(), 1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        net.connects(),
        1,
        "Reconnect::Once kept connecting with no call waiting"
    );
    assert_eq!(*ch.state().borrow(), State::Idle);

    net.down("a:1", false);
    let reply = within(10, "next call", ch.request(msg("y")))
        .await
        .expect("up again");
    assert_eq!(reply.text(), "y");
    assert_eq!(net.connects(), 2);
}

/// `Reconnect::Persistent`: keeps trying in the background; the backoff (1 s to 8 s) bounds
/// the number of attempts in a window, and it connects by itself once the host is up.
#[tokio::test(start_paused = true)]
async fn policy_persistent_keeps_trying_within_the_backoff() {
    let net = Net::new(echo);
    net.down("a:1", true);
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(8),
            )),
    );
    let start = Instant::now();
    let err = within(10, "first call", ch.request(msg("x")))
        .await
        .expect_err("down");
    assert_connect_not_sent(&err);
    tokio::time::sleep_until(start + Duration::from_millis(30_500)).await;
    // Attempts at t = 0 and after each wait; waits are at least 1 s (at most 31
    // attempts by t = 30.5 s) and at most 1, 2, 4, 8, 8, 8 s (at least 6 attempts).
    let n = net.connects();
    assert!(
        (6..=31).contains(&n),
        "{n} attempts in 30 s with backoff 1..8 s"
    );

    net.down("a:1", false);
    within(20, "persistent reconnect", async {
        let mut rx = ch.state();
        rx.wait_for(|s| *s == State::Ready).await.expect("watch");
    })
    .await;
    let before = net.connects();
    assert_eq!(ch.request(msg("y")).await.expect("connected").text(), "y");
    assert_eq!(
        net.connects(),
        before,
        "the call used the connection made in the background"
    );
}

/// While backing off, calls fail fast (`Kind::ConnectFailed`, not sent, with the pass's error
/// as their source) without a new connect attempt, and `poll_ready` stays ready.
#[tokio::test(start_paused = true)]
async fn calls_during_backoff_fail_fast_without_connecting() {
    let net = Net::new(echo);
    net.down("a:1", true);
    let mut ch = net.channel(
        Mode::Order,
        Channel::builder().host("a:1").backoff(Backoff::exponential(
            Duration::from_secs(10),
            Duration::from_secs(10),
        )),
    );
    let err = within(10, "first call", ch.request(msg("x")))
        .await
        .expect_err("down");
    assert_connect_not_sent(&err);
    assert_eq!(*ch.state().borrow(), State::BackingOff);
    let start = Instant::now();
    for i in 0..20 {
        within(
            1,
            "poll_ready while backing off",
            ServiceExt::<Msg>::ready(&mut ch),
        )
        .await
        .expect("poll_ready is Ready (not Err) after a failed pass");
        let err = within(1, "fail fast", ch.call(msg(format!("f{i}"))))
            .await
            .expect_err("backing off");
        let err = err.downcast::<Error>().expect("a channel Error");
        assert_connect_not_sent(&err);
        let source = err.source().expect("the last pass's error");
        assert!(source.is::<ConnectError>(), "source: {source:?}");
    }
    assert!(
        Instant::now() - start < Duration::from_millis(100),
        "calls did not fail fast"
    );
    assert_eq!(
        net.connects(),
        1,
        "a call during the backoff started a connect"
    );

    // After the backoff, the next call tries again.
    tokio::time::sleep(Duration::from_secs(11)).await;
    net.down("a:1", false);
    assert_eq!(
        ch.request(msg("y"))
            .await
            .expect("after the backoff")
            .text(),
        "y"
    );
    assert_eq!(net.connects(), 2);
}

/// A host whose connect never completes is abandoned after the connect timeout and the
/// next backup is tried.
#[tokio::test(start_paused = true)]
async fn connect_timeout_moves_on_to_the_next_backup() {
    let net = Net::new(echo);
    net.hang("a:1");
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .backup("b:2")
            .connect_timeout(Duration::from_secs(1)),
    );
    let start = Instant::now();
    let reply = within(10, "timeout then backup", ch.request(msg("x")))
        .await
        .expect("b:2");
    assert_eq!(reply.text(), "x");
    let took = Instant::now() - start;
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    assert_eq!(net.tried(), ["a:1", "b:2"]);
}

// ---------------------------------------------------------------------------------------
// Restarts and host changes under load (real sockets)
// ---------------------------------------------------------------------------------------

/// The server drops every connection while it keeps accepting: the calls in flight fail
/// as *may have executed*; the calls queued behind the in-flight limit are written on
/// the new connection and succeed.
#[tokio::test]
async fn server_restart_mid_load_fails_in_flight_and_replays_queued() {
    let server = TcpServer::start("s").await;
    let ch = tcp_channel(server.addr, Config::default().max_in_flight(4));
    let warm = within(10, "warm up", ch.request(msg("warm")))
        .await
        .expect("warm");
    assert_eq!(warm.text(), "s:warm");

    let holds: Vec<_> = (0..4)
        .map(|i| spawn_request(&ch, format!("hold{i}")))
        .collect();
    until(10, "4 holds at the server", || server.holds() == 4).await;
    let queued: Vec<_> = (0..20)
        .map(|i| spawn_request(&ch, format!("n{i}")))
        .collect();
    until(10, "20 calls queued behind the limit", || ch.load() == 24).await;
    assert_eq!(ch.counters().in_flight, 4);

    server.kill_all();
    for h in holds {
        let err = joined(h).await.expect_err("in flight at the kill");
        assert!(err.may_have_executed(), "{err}");
        assert_eq!(err.kind(), Kind::ConnectionLost, "{err}");
    }
    for (i, h) in queued.into_iter().enumerate() {
        let reply = joined(h)
            .await
            .unwrap_or_else(|e| panic!("queued call {i}: {e}"));
        assert_eq!(reply.text(), format!("s:n{i}"));
    }
    assert!(ch.counters().reconnects >= 1, "{:?}", ch.counters());
    assert_eq!(server.accepted(), 2);
}

/// `change_host` under load: later calls reach the new server; calls in flight on the
/// old one finish there.
#[tokio::test]
async fn change_host_during_load() {
    let s1 = TcpServer::start("s1").await;
    let s2 = TcpServer::start("s2").await;
    let ch = tcp_channel(s1.addr, Config::default());
    assert_eq!(
        within(10, "warm", ch.request(msg("warm")))
            .await
            .expect("warm")
            .text(),
        "s1:warm"
    );
    let held: Vec<_> = (0..3)
        .map(|i| spawn_request(&ch, format!("hold{i}")))
        .collect();
    until(10, "3 holds at s1", || s1.holds() == 3).await;

    ch.change_host(s2.addr.to_string()).expect("valid host");
    let later: Vec<_> = (0..10)
        .map(|i| spawn_request(&ch, format!("n{i}")))
        .collect();
    for (i, h) in later.into_iter().enumerate() {
        let reply = joined(h)
            .await
            .unwrap_or_else(|e| panic!("later call {i}: {e}"));
        assert_eq!(
            reply.text(),
            format!("s2:n{i}"),
            "a later call did not reach s2"
        );
    }
    s1.release();
    for (i, h) in held.into_iter().enumerate() {
        let reply = joined(h)
            .await
            .unwrap_or_else(|e| panic!("held call {i}: {e}"));
        assert_eq!(
            reply.text(),
            format!("s1:hold{i}"),
            "an in-flight call did not finish on s1"
        );
    }
    assert_eq!((s1.accepted(), s2.accepted()), (1, 1));
}

/// `tower::buffer::Buffer` over a channel survives a failed connect: the first calls
/// fail, then the server comes up on that port, and later calls through the same Buffer
/// succeed.
#[tokio::test]
async fn buffer_survives_a_failed_connect() {
    let addr = free_addr().await;
    let ch = Channel::<Msg, Msg>::builder()
        .host(addr.to_string())
        .backoff(Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_millis(50),
        ))
        .order(MsgCodec::default(), TestProto)
        .expect("valid host");
    let mut buffer = tower::buffer::Buffer::new(ch.clone(), 64);
    for i in 0..3 {
        let err = within(10, "refused call", buffer.ready())
            .await
            .expect("Buffer stays ready after a connect error")
            .call(msg(format!("early{i}")))
            .await
            .expect_err("nothing listens yet");
        let err = err
            .downcast::<Error>()
            .unwrap_or_else(|e| panic!("not a channel Error: {e}"));
        assert_connect_not_sent(&err);
    }

    let listener = TcpListener::bind(addr)
        .await
        .expect("rebind the reserved port");
    let server = TcpServer::on(listener, "s");
    let reply = within(10, "later call through the same Buffer", async {
        loop {
            let svc = buffer.ready().await.expect("the Buffer is still alive");
            match svc.call(msg("late")).await {
                Ok(reply) => break reply,
                Err(e) => {
                    let e = e.downcast::<Error>().expect("a channel Error");
                    assert_connect_not_sent(&e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
    .await;
    assert_eq!(reply.text(), "s:late");
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------------------
// close, shutdown, connect
// ---------------------------------------------------------------------------------------

/// `close()` while the connector hangs: the waiting calls fail closed (not sent).
#[tokio::test(start_paused = true)]
async fn close_while_connecting_fails_waiting_calls() {
    let net = Net::new(echo);
    net.hang("a:1");
    let ch = net.channel(
        Mode::Order,
        Channel::builder().host("a:1").connect_timeout(None),
    );
    let calls: Vec<_> = (0..5)
        .map(|i| spawn_request(&ch, format!("m{i}")))
        .collect();
    wait_state(&ch, State::Connecting).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ch.close();
    for h in calls {
        let err = joined(h).await.expect_err("closed while connecting");
        assert!(err.is_closed(), "{err}");
        assert!(err.is_not_sent(), "{err}");
    }
    wait_state(&ch, State::Closed).await;
    let err = within(1, "after close", ch.request(msg("late")))
        .await
        .expect_err("closed");
    assert!(err.is_closed(), "{err}");
    assert_eq!(net.connects(), 1);
}

/// `close()` with calls in flight and calls queued: all fail closed; the written ones as
/// *may have executed*, the queued ones as *not sent*.
#[tokio::test(start_paused = true)]
async fn close_with_requests_waiting() {
    let net = Net::new(silent);
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .config(Config::default().max_in_flight(3)),
    );
    let calls: Vec<_> = (0..6)
        .map(|i| spawn_request(&ch, format!("m{i}")))
        .collect();
    until(10, "3 in flight and 3 queued", || {
        ch.counters().in_flight == 3 && ch.load() == 6
    })
    .await;
    ch.close();
    let (mut mx, mut ns) = (0, 0);
    for h in calls {
        let err = joined(h).await.expect_err("closed");
        assert!(err.is_closed(), "{err}");
        if err.may_have_executed() {
            mx += 1;
        } else {
            ns += 1;
        }
    }
    assert_eq!((mx, ns), (3, 3));
    wait_state(&ch, State::Closed).await;
}

/// Answers every request after 100 ms, one at a time.
async fn slow(_endpoint: Endpoint, mut io: Io) {
    while let Some(Ok(req)) = io.next().await {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if io.send(req).await.is_err() {
            break;
        }
    }
}

/// `shutdown(deadline)` lets the calls in flight finish, then closes.
#[tokio::test(start_paused = true)]
async fn shutdown_lets_in_flight_calls_finish() {
    let net = Net::new(slow);
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
    let calls: Vec<_> = (0..5)
        .map(|i| spawn_request(&ch, format!("m{i}")))
        .collect();
    until(10, "5 in flight", || ch.counters().in_flight == 5).await;
    within(10, "shutdown", ch.shutdown(Duration::from_secs(5))).await;
    for (i, h) in calls.into_iter().enumerate() {
        let reply = joined(h).await.unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(reply.text(), format!("m{i}"));
    }
    assert_eq!(*ch.state().borrow(), State::Closed);
    let err = ch.request(msg("late")).await.expect_err("shut down");
    assert!(err.is_closed() && err.is_not_sent(), "{err}");
}

/// `shutdown(deadline)` with a server that never answers: at the deadline the calls fail
/// closed (*may have executed*) and the shutdown resolves.
#[tokio::test(start_paused = true)]
async fn shutdown_deadline_fails_what_is_left() {
    let net = Net::new(silent);
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
    let calls: Vec<_> = (0..3)
        .map(|i| spawn_request(&ch, format!("m{i}")))
        .collect();
    until(10, "3 in flight", || ch.counters().in_flight == 3).await;
    let start = Instant::now();
    within(10, "shutdown", ch.shutdown(Duration::from_secs(2))).await;
    let took = Instant::now() - start;
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
    for h in calls {
        let err = joined(h).await.expect_err("past the deadline");
        assert!(err.is_closed() && err.may_have_executed(), "{err}");
    }
}

/// `connect()` reopens a closed channel; calls work again.
#[tokio::test(start_paused = true)]
async fn connect_reopens_after_close() {
    let net = Net::new(echo);
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
    assert_eq!(ch.request(msg("a")).await.expect("first").text(), "a");
    ch.close();
    wait_state(&ch, State::Closed).await;
    assert!(ch.is_closed());
    let err = ch.request(msg("b")).await.expect_err("closed");
    assert!(err.is_closed(), "{err}");

    within(10, "reopen", ch.connect()).await.expect("reopened");
    assert!(!ch.is_closed());
    assert_eq!(*ch.state().borrow(), State::Ready);
    assert_eq!(
        ch.request(msg("c")).await.expect("after reopen").text(),
        "c"
    );
    assert_eq!(net.connects(), 2);
}

/// `connect()` on a lazy channel connects now and reports a failed pass.
#[tokio::test(start_paused = true)]
async fn connect_reports_the_outcome_of_the_pass() {
    let net = Net::new(echo);
    net.down("a:1", true);
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
    let err = within(10, "connect", ch.connect()).await.expect_err("down");
    assert_connect_not_sent(&err);
    assert!(
        err.source().is_some_and(|s| s.is::<ConnectError>()),
        "{err:?}"
    );
    net.down("a:1", false);
    within(10, "connect", ch.connect()).await.expect("up");
    assert_eq!(*ch.state().borrow(), State::Ready);
    assert_eq!(net.connects(), 2);
}

// ---------------------------------------------------------------------------------------
// The state watch
// ---------------------------------------------------------------------------------------

/// Idle → Connecting → Ready → (connection lost) Idle → Connecting → BackingOff → Closed.
#[tokio::test(start_paused = true)]
async fn state_transitions_are_observable() {
    let net = Net::new(echo);
    net.delay(Duration::from_millis(10));
    let ch = net.channel(
        Mode::Order,
        Channel::builder().host("a:1").backoff(Backoff::exponential(
            Duration::from_secs(5),
            Duration::from_secs(5),
        )),
    );
    let seen = record_states(&ch);
    assert_eq!(*ch.state().borrow(), State::Idle);
    ch.request(msg("a")).await.expect("first");
    assert_eq!(*ch.state().borrow(), State::Ready);
    ch.request(msg("bye")).await.expect("bye");
    wait_state(&ch, State::Idle).await;
    net.down("a:1", true);
    ch.request(msg("b")).await.expect_err("down");
    wait_state(&ch, State::BackingOff).await;
    ch.close();
    wait_state(&ch, State::Closed).await;
    tokio::time::sleep(Duration::from_millis(10)).await;

    let seen = seen.lock().unwrap().clone();
    let want = [
        State::Idle,
        State::Connecting,
        State::Ready,
        State::Idle,
        State::Connecting,
        State::BackingOff,
        State::Closed,
    ];
    assert_eq!(seen, want, "states seen");
}

// ---------------------------------------------------------------------------------------
// Idle ping and dead peers
// ---------------------------------------------------------------------------------------

/// An idle connection is pinged; the server counts the pings.
#[tokio::test(start_paused = true)]
async fn idle_ping_is_sent_when_idle() {
    let pings = Arc::new(AtomicUsize::new(0));
    let counted = pings.clone();
    let net = Net::new(move |_ep, mut io: Io| {
        let pings = counted.clone();
        async move {
            while let Some(Ok(req)) = io.next().await {
                if req.text() == "ping" {
                    pings.fetch_add(1, Ordering::SeqCst);
                }
                if io.send(req).await.is_err() {
                    break;
                }
            }
        }
    });
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .idle_ping(Duration::from_secs(1), || msg("ping")),
    );
    ch.request(msg("hello")).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let n = pings.load(Ordering::SeqCst);
    // One ping per idle period at most, and not one per ten periods either.
    assert!((3..=10).contains(&n), "{n} pings in 10 idle seconds");
    assert_eq!(net.connects(), 1);
    assert_eq!(
        ch.request(msg("after"))
            .await
            .expect("still connected")
            .text(),
        "after"
    );
    let c = ch.counters();
    assert_eq!(c.reconnects, 0);
    assert_eq!(c.in_flight, 0);
}

/// A silent server: the idle ping goes unanswered, the stall timeout declares the peer
/// dead, and (Reconnect::Persistent) the channel reconnects by itself.
#[tokio::test(start_paused = true)]
async fn idle_ping_and_stall_timeout_detect_a_dead_peer() {
    let net = Net::new(silent);
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(1),
            ))
            .idle_ping(Duration::from_secs(1), || msg("ping"))
            .config(Config::default().stall_timeout(Some(Duration::from_secs(2)))),
    );
    within(10, "connect", ch.connect()).await.expect("connect");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let c = ch.counters();
    assert!(c.reconnects >= 2, "the dead peer was not detected: {c:?}");
    assert!(net.connects() >= 3, "{} connects", net.connects());
    assert!(c.sent >= 2, "no pings were sent: {c:?}");
}

// ---------------------------------------------------------------------------------------
// Documented behaviour at the edges
// ---------------------------------------------------------------------------------------

/// `shutdown(deadline)` while the first connect is still running: the calls already
/// queued "have until `deadline` to be answered" (Channel::shutdown's documentation), so
/// a connection made well within the deadline serves them.
#[tokio::test(start_paused = true)]
async fn shutdown_while_connecting_serves_the_queued_calls() {
    let net = Net::new(echo);
    net.delay(Duration::from_secs(1));
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
    let calls: Vec<_> = (0..3)
        .map(|i| spawn_request(&ch, format!("m{i}")))
        .collect();
    wait_state(&ch, State::Connecting).await;
    within(10, "shutdown", ch.shutdown(Duration::from_secs(5))).await;
    for (i, h) in calls.into_iter().enumerate() {
        let reply = joined(h)
            .await
            .unwrap_or_else(|e| panic!("queued call {i} failed before the deadline: {e}"));
        assert_eq!(reply.text(), format!("m{i}"));
    }
}

/// `change_host` under `Reconnect::Once`: "The new connection is made on the next call, or
/// at once under Reconnect::Persistent" (Channel::change_host's documentation).
#[tokio::test(start_paused = true)]
async fn change_host_under_policy_once_connects_on_the_next_call() {
    let net = Net::new(echo);
    let ch = net.channel(
        Mode::Order,
        Channel::builder().host("a:1").reconnect(Reconnect::Once),
    );
    ch.request(msg("x")).await.expect("a:1");
    ch.change_host("b:2").expect("valid host");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        net.count("b:2"),
        0,
        "Reconnect::Once connected to the new host with no call"
    );
    assert_eq!(ch.request(msg("y")).await.expect("b:2").text(), "y");
    assert_eq!(net.tried(), ["a:1", "b:2"]);
}

/// A crash-looping host (accepts, then closes at once without a word): the backoff
/// applies between connections (no hot loop), even though every connect succeeds.
#[tokio::test(start_paused = true)]
async fn crash_looping_host_is_retried_with_backoff() {
    let net = Net::new(|_ep, io: Io| async move { drop(io) });
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(8),
            )),
    );
    let start = Instant::now();
    let _ = within(10, "connect", ch.connect()).await;
    tokio::time::sleep_until(start + Duration::from_millis(30_500)).await;
    let n = net.connects();
    // Waits of at least 1 s, and at most 1, 2, 4, 8, 8, 8 s.
    assert!(
        (6..=31).contains(&n),
        "{n} connections in 30 s to a crash-looping host"
    );
}

/// `Reconnect::Persistent` with the host down: once every handle is gone, the connection
/// task stops trying (no task left connecting forever for nobody).
#[tokio::test(start_paused = true)]
async fn persistent_channel_stops_when_every_handle_is_dropped() {
    let net = Net::new(echo);
    net.down("a:1", true);
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(2),
            )),
    );
    ch.request(msg("x")).await.expect_err("down");
    drop(ch);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after_drop = net.connects();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        net.connects(),
        after_drop,
        "the connection task kept connecting after every handle was dropped"
    );
}
