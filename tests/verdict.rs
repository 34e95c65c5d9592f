//! The server's word on a reply ([`Verdict`]): a reply that says the call did not run
//! fails it *not sent*; one that says the connection is the wrong one also makes the
//! channel leave it, back off and try that host last; a drain notice moves new calls
//! to a new connection and loses none.
//!
//! The in-process servers speak lines: each word of a request line is answered with a
//! line, its upper case (`slow` 200 ms later), except `loading` (`LOADING`: did not run), `readonly`
//! (`READONLY`: wrong server), `err` (`ERR`: an ordinary error reply) and a word
//! starting `flaky`, which is `LOADING` the first time the server sees it. The Redis
//! test demotes a real master with `REPLICAOF` under load.

#![cfg(feature = "tcp")]

#[path = "../examples/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{
    Backoff, BoxError, Call, Channel, Endpoint, Error, Handshake, Kind, Order, Protocol, Reconnect,
    Replies, RetryNotSent, State, Verdict,
};
use tokio::io::DuplexStream;
use tokio_util::codec::{Framed, LinesCodec};
use tower::{ServiceBuilder, ServiceExt};

use common::process::within;

const TEST: Duration = Duration::from_secs(40);

/// The line protocol's verdicts and error replies.
#[derive(Clone, Copy)]
struct Words;

impl Protocol<String, String> for Words {
    fn verdict(&self, resp: &String) -> Verdict {
        match resp.split(' ').next() {
            Some("LOADING") => Verdict::NotRun,
            Some("READONLY") => Verdict::WrongServer,
            Some("DRAIN") => Verdict::Drain,
            _ => Verdict::Reply,
        }
    }

    fn check(&self, resp: String) -> Result<String, BoxError> {
        match resp.split(' ').next() {
            Some("LOADING" | "READONLY" | "ERR") => Err(resp.into()),
            _ => Ok(resp),
        }
    }
}

/// How one in-process server answers.
#[derive(Clone, Default)]
struct Script {
    /// Answers every word `READONLY`.
    readonly: bool,
    /// Sends `DRAIN` after the script's connections read this many lines in all (then
    /// answers them all).
    drain_after: Option<usize>,
    /// The `flaky` words seen, shared by the server's connections.
    seen: Arc<Mutex<HashSet<String>>>,
    /// Lines read, by every connection of this script.
    lines: Arc<AtomicUsize>,
    /// The first this many connections send `DRAIN` as soon as they are accepted.
    drain_on_accept: usize,
    /// Closes the connection after its first `READONLY`.
    close_after_readonly: bool,
    /// Each connection sends `DRAIN` once it has answered this many of its own lines.
    drain_each_after: Option<usize>,
    /// The lines each connection read, by connection.
    log: Arc<Mutex<Vec<Vec<String>>>>,
}

async fn serve(io: DuplexStream, script: Script) {
    let mut io = Framed::new(io, LinesCodec::new());
    let conn = {
        let mut log = script.log.lock().unwrap();
        log.push(Vec::new());
        log.len() - 1
    };
    if conn < script.drain_on_accept && io.send("DRAIN".to_string()).await.is_err() {
        return;
    }
    let mut own = 0;
    while let Some(Ok(line)) = io.next().await {
        own += 1;
        script.log.lock().unwrap()[conn].push(line.clone());
        let read = script.lines.fetch_add(1, Ordering::SeqCst) + 1;
        if script.drain_after == Some(read) && io.send("DRAIN".to_string()).await.is_err() {
            return;
        }
        for word in line.split(' ') {
            let answer = match word {
                _ if script.readonly => "READONLY You can't write against a replica".to_string(),
                "loading" => "LOADING the data set".to_string(),
                "readonly" => "READONLY".to_string(),
                "err" => "ERR bad".to_string(),
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "SLOW".to_string()
                }
                w if w.starts_with("flaky") => {
                    if script.seen.lock().unwrap().insert(w.to_string()) {
                        "LOADING once".to_string()
                    } else {
                        w.to_uppercase()
                    }
                }
                w => w.to_uppercase(),
            };
            let readonly = answer.starts_with("READONLY");
            if io.send(answer).await.is_err() || (readonly && script.close_after_readonly) {
                return;
            }
        }
        if script.drain_each_after == Some(own) && io.send("DRAIN".to_string()).await.is_err() {
            return;
        }
    }
}

/// A channel over one in-process connection (no reconnect).
fn fixed(script: Script) -> Channel<String, String> {
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(serve(server, script));
    Channel::new(Framed::new(client, LinesCodec::new()), Order::new(Words))
}

/// A reconnecting channel whose every connection is an in-process server: the script
/// of the endpoint's port (`scripts[port - 1]`), each connect counted by port.
fn reconnecting(
    scripts: Vec<Script>,
    backups: &[&str],
    connects: Arc<Mutex<Vec<u16>>>,
) -> Channel<String, String> {
    reconnecting_with(scripts, backups, connects, false)
}

/// As [`reconnecting`], with a handshake that sends `hello` and waits for its reply.
fn reconnecting_with(
    scripts: Vec<Script>,
    backups: &[&str],
    connects: Arc<Mutex<Vec<u16>>>,
    handshake: bool,
) -> Channel<String, String> {
    let mut builder = builder();
    for backup in backups {
        builder = builder.backup(*backup);
    }
    if handshake {
        builder = builder.handshake(|conn, _| async move {
            conn.request(s("hello")).await?;
            Ok(Handshake::Ready)
        });
    }
    builder
        .connector(connector(scripts, connects), Order::new(Words))
        .expect("valid hosts")
}

/// Host `127.0.0.1:1`, a backoff of 100 ms doubling to 2 s.
fn builder() -> socketchannel::Builder<String, String> {
    Channel::builder()
        .host("127.0.0.1:1")
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
}

/// Connects to the in-process server of the endpoint's port (`scripts[port - 1]`),
/// counting each connect by port.
fn connector(
    scripts: Vec<Script>,
    connects: Arc<Mutex<Vec<u16>>>,
) -> impl socketchannel::Connector<String, String> {
    tower::service_fn(move |endpoint: Endpoint| {
        let script = scripts[usize::from(endpoint.port()) - 1].clone();
        connects.lock().unwrap().push(endpoint.port());
        async move {
            let (client, server) = tokio::io::duplex(1 << 16);
            tokio::spawn(serve(server, script));
            Ok::<_, std::io::Error>(Framed::new(client, LinesCodec::new()))
        }
    })
}

fn s(x: &str) -> String {
    x.to_string()
}

fn outcome(err: &Error) -> (Kind, bool) {
    (err.kind(), err.is_not_sent())
}

#[tokio::test]
async fn a_reply_that_says_nothing_ran_fails_its_call_not_sent_and_the_connection_stays() {
    let channel = fixed(Script::default());
    let mut err = channel.request(s("loading")).await.unwrap_err();
    assert_eq!(outcome(&err), (Kind::Server, true));
    assert!(err.to_string().contains("not sent"), "{err}");
    // Written: the encoder took the request, so there is none to give back.
    assert_eq!(err.take_request::<String>(), None);
    // check's error is the cause.
    let cause = std::error::Error::source(&err).map(|e| e.to_string());
    assert_eq!(cause.as_deref(), Some("LOADING the data set"));
    // An ordinary error reply may have executed.
    let err = channel.request(s("err")).await.unwrap_err();
    assert_eq!(outcome(&err), (Kind::Server, false));

    // A multi-frame reply is not sent only if every frame says so.
    let err = channel
        .request_n(s("loading loading"), 2)
        .await
        .unwrap_err();
    assert_eq!(outcome(&err), (Kind::Server, true));
    let err = channel.request_n(s("a loading"), 2).await.unwrap_err();
    assert_eq!(outcome(&err), (Kind::Server, false));
    let err = channel.request_n(s("loading a"), 2).await.unwrap_err();
    assert_eq!(outcome(&err), (Kind::Server, false));
    // A stream's lone frame, and a stream's first of two.
    let mut lone = channel.stream(s("loading"), Replies::Count(1)).await;
    let err = lone.next().await.unwrap().unwrap_err();
    assert_eq!(outcome(&err), (Kind::Server, true));
    let mut two = channel.stream(s("loading a"), Replies::Count(2)).await;
    let err = two.next().await.unwrap().unwrap_err();
    assert_eq!(outcome(&err), (Kind::Server, false));
    // (An error ends a stream; the rest of its reply is read and dropped.)
    drop(two);
    // Through the tower service of every shape, too.
    let reply = channel.calls().oneshot(Call::new(s("loading"))).await;
    let err = reply.err().unwrap();
    let err = err.downcast_ref::<Error>().unwrap();
    assert_eq!(outcome(err), (Kind::Server, true));

    // The connection stayed: no reconnect on a fixed transport anyway, and no desync.
    assert_eq!(channel.request(s("a")).await.unwrap(), "A");
    assert_eq!(channel.counters().unknown, 0);
}

#[tokio::test]
async fn retry_not_sent_retries_a_call_the_server_did_not_run_when_it_has_a_copy() {
    let script = Script::default();
    let channel = fixed(script.clone());
    // `Req: Clone`: the policy keeps a copy, and the retry runs it.
    let svc = ServiceBuilder::new()
        .retry(RetryNotSent::new(3))
        .service(channel.clone());
    assert_eq!(svc.oneshot(s("flaky1")).await.unwrap(), "FLAKY1");
    assert_eq!(script.lines.load(Ordering::SeqCst), 2, "written twice");

    // A `Call` keeps no copy (the error holds no request once written): not retried.
    let calls = ServiceBuilder::new()
        .retry(RetryNotSent::new(3))
        .service(channel.calls());
    let err = calls
        .clone()
        .oneshot(Call::new(s("flaky2")))
        .await
        .unwrap_err();
    let err = err.downcast_ref::<Error>().unwrap();
    assert_eq!(outcome(err), (Kind::Server, true));
    assert_eq!(script.lines.load(Ordering::SeqCst), 3);
    // An idempotent one keeps a copy: retried.
    let reply = calls
        .oneshot(Call::new(s("flaky3")).idempotent())
        .await
        .unwrap();
    assert_eq!(reply.into_one().unwrap(), "FLAKY3");
    assert_eq!(script.lines.load(Ordering::SeqCst), 5);

    // An ordinary error reply is the answer: never retried.
    let svc = ServiceBuilder::new()
        .retry(RetryNotSent::new(3))
        .service(channel.clone());
    assert!(svc.oneshot(s("err")).await.is_err());
    assert_eq!(script.lines.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn a_drain_on_a_fixed_transport_finishes_the_written_calls_then_closes() {
    let channel = fixed(Script {
        drain_after: Some(1),
        ..Script::default()
    });
    // The server reads `a b`, says DRAIN, then answers both: the written call finishes.
    assert_eq!(channel.request_n(s("a b"), 2).await.unwrap(), ["A", "B"]);
    let err = channel.request(s("c")).await.unwrap_err();
    assert_eq!(outcome(&err), (Kind::Closed, true));
    let mut state = channel.state();
    within(
        Duration::from_secs(5),
        "closed",
        state.wait_for(|s| *s == State::Closed),
    )
    .await
    .unwrap();
    // A drain notice is nobody's reply: no desync, nothing unknown.
    assert_eq!(channel.counters().unknown, 0);
}

#[tokio::test]
async fn a_drain_under_load_moves_new_calls_to_a_new_connection_and_loses_none() {
    within(TEST, "test", async {
        let connects = Arc::new(Mutex::new(Vec::new()));
        let script = Script {
            drain_after: Some(100),
            ..Script::default()
        };
        let channel = reconnecting(vec![script], &[], connects.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..8 {
            let channel = channel.clone();
            tasks.spawn(async move {
                for i in 0..100 {
                    let word = format!("t{t}x{i}");
                    let reply = channel.request(word.clone()).await.expect("no call fails");
                    assert_eq!(reply, word.to_uppercase(), "its own reply");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        // Drained connections are not counted as each connection's own `received`.
        assert_eq!(connects.lock().unwrap().len(), 2, "one new connection");
        let counters = channel.counters();
        assert_eq!(counters.retired, 1);
        assert_eq!(counters.unknown, 0);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_wrong_server_is_left_for_the_backup_and_a_retry_lands_there() {
    let connects = Arc::new(Mutex::new(Vec::new()));
    let readonly = Script {
        readonly: true,
        ..Script::default()
    };
    let channel = reconnecting(
        vec![readonly.clone(), Script::default()],
        &["127.0.0.1:2"],
        connects.clone(),
    );
    // The first call meets the demoted host: not run, not sent.
    let err = channel.request(s("a")).await.unwrap_err();
    assert_eq!(outcome(&err), (Kind::Server, true));
    // The channel left it; after the backoff, the backup is tried first.
    let svc = ServiceBuilder::new()
        .retry(RetryNotSent::new(2))
        .service(channel.clone());
    assert_eq!(svc.oneshot(s("b")).await.unwrap(), "B");
    assert_eq!(*connects.lock().unwrap(), [1, 2]);
    assert_eq!(channel.counters().retired, 1);
    for _ in 0..20 {
        assert_eq!(channel.request(s("c")).await.unwrap(), "C");
    }
    assert_eq!(connects.lock().unwrap().len(), 2, "stays on the backup");
}

/// A node that answers every call `READONLY`, and no other host: each verdict is a
/// failed attempt, so connects follow the backoff (100 ms doubling to 2 s), not the
/// call rate.
#[tokio::test(start_paused = true)]
async fn a_node_that_keeps_saying_wrong_server_is_no_hot_loop() {
    let connects = Arc::new(Mutex::new(Vec::new()));
    let readonly = Script {
        readonly: true,
        ..Script::default()
    };
    let channel = reconnecting(vec![readonly.clone()], &[], connects.clone());
    let start = tokio::time::Instant::now();
    let mut calls = 0;
    while start.elapsed() < Duration::from_secs(10) {
        let err = channel.request(s("a")).await.unwrap_err();
        assert!(err.is_not_sent(), "{err}");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let connects = connects.lock().unwrap().len();
    // Delays of 100 ms doubling to 2 s, jittered: some 10 to 20 connections in 10 s.
    // Were the verdict not a failed attempt, every call would reconnect at once.
    assert!(connects <= 25, "{connects} connects for {calls} calls");
    assert!(calls >= connects, "{connects} connects for {calls} calls");
}

/// `READONLY` and then the end of the connection (a node that closes its connections
/// as it steps down) is still a failed attempt: backed off, not a reconnect per call.
#[tokio::test(start_paused = true)]
async fn wrong_server_then_a_close_is_still_backed_off() {
    let connects = Arc::new(Mutex::new(Vec::new()));
    let script = Script {
        readonly: true,
        close_after_readonly: true,
        ..Script::default()
    };
    let channel = reconnecting(vec![script], &[], connects.clone());
    let start = tokio::time::Instant::now();
    let mut calls = 0;
    while start.elapsed() < Duration::from_secs(10) {
        let _ = channel.request(s("a")).await;
        calls += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let connects = connects.lock().unwrap().len();
    assert!(connects <= 25, "{connects} connects for {calls} calls");
}

/// A drain notice read during the handshake: the handshake finishes, and no user call
/// is written on that connection: they go to the next one.
#[tokio::test(start_paused = true)]
async fn a_drain_read_by_the_handshake_keeps_user_calls_off_that_connection() {
    let connects = Arc::new(Mutex::new(Vec::new()));
    let script = Script {
        drain_on_accept: 1,
        ..Script::default()
    };
    let log = script.log.clone();
    let channel = reconnecting_with(vec![script], &[], connects, true);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..5 {
        let channel = channel.clone();
        calls.spawn(async move { channel.request(format!("u{i}")).await });
    }
    while let Some(done) = calls.join_next().await {
        assert!(done.unwrap().is_ok());
    }
    let log = log.lock().unwrap();
    assert_eq!(
        log[0],
        ["hello"],
        "the drained connection took only the handshake"
    );
    assert_eq!(log[1].len(), 6, "{:?}", log[1]);
}

/// A server that drains every connection as it accepts it, before it answers anything:
/// each is a failed attempt, backed off, not a storm of connections, even on a channel
/// that keeps itself connected (`Reconnect::Persistent`).
#[tokio::test(start_paused = true)]
async fn a_server_that_drains_every_connection_at_once_is_backed_off() {
    let connects = Arc::new(Mutex::new(Vec::new()));
    let script = Script {
        drain_on_accept: usize::MAX,
        ..Script::default()
    };
    let counted = connects.clone();
    let connector = tower::service_fn(move |_: Endpoint| {
        let script = script.clone();
        counted.lock().unwrap().push(1);
        async move {
            let (client, server) = tokio::io::duplex(1 << 16);
            tokio::spawn(serve(server, script));
            Ok::<_, std::io::Error>(Framed::new(client, LinesCodec::new()))
        }
    });
    let channel: Channel<String, String> = Channel::builder()
        .host("127.0.0.1:1")
        .reconnect(Reconnect::Persistent)
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .connector(connector, Order::new(Words))
        .expect("valid host");
    channel.connect().await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let connects = connects.lock().unwrap().len();
    assert!((2..=25).contains(&connects), "{connects} connects in 10 s");
}

/// A `Persistent` channel whose every connection is a server that sends `DRAIN` once it
/// has answered `drain_after` of its lines, with a handshake that awaits `auth` and
/// queues `select` without awaiting it, and a backoff of `backoff`.
fn draining_after_a_leftover(drain_after: usize, backoff: Duration) -> Draining {
    let script = Script {
        drain_each_after: Some(drain_after),
        ..Script::default()
    };
    let log = script.log.clone();
    let connects = Arc::new(Mutex::new(0usize));
    let storm = Arc::new(tokio::sync::Notify::new());
    let (counted, stormed) = (connects.clone(), storm.clone());
    let connector = tower::service_fn(move |_: Endpoint| {
        let script = script.clone();
        let mut n = counted.lock().unwrap();
        *n += 1;
        if *n == 100 {
            stormed.notify_one();
        }
        async move {
            let (client, server) = tokio::io::duplex(1 << 16);
            tokio::spawn(serve(server, script));
            Ok::<_, std::io::Error>(Framed::new(client, LinesCodec::new()))
        }
    });
    let channel = Channel::builder()
        .host("127.0.0.1:1")
        .reconnect(Reconnect::Persistent)
        .backoff(Backoff::exponential(
            backoff,
            backoff.max(Duration::from_secs(2)),
        ))
        .handshake(|conn: Channel<String, String>, _: Endpoint| async move {
            conn.request(s("auth")).await?;
            // Queued (polled once), not awaited.
            let mut select = Box::pin({
                let conn = conn.clone();
                async move { conn.request(s("select")).await }
            });
            let _ = futures::poll!(select.as_mut());
            tokio::spawn(select);
            Ok(Handshake::Ready)
        })
        .connector(connector, Order::new(Words))
        .expect("valid host");
    Draining {
        channel,
        log,
        connects,
        storm,
    }
}

/// What [`draining_after_a_leftover`] makes.
struct Draining {
    channel: Channel<String, String>,
    /// The script's log: the lines each connection read.
    log: Arc<Mutex<Vec<Vec<String>>>>,
    /// Connects so far.
    connects: Arc<Mutex<usize>>,
    /// Told at the 100th connect: a storm keeps the runtime busy, so paused time would
    /// never reach the end of a sleep.
    storm: Arc<tokio::sync::Notify>,
}

/// A server that answers the handshake, and the call the handshake queued without
/// awaiting it, and then drains: a handshake's calls are no user's, so each connection
/// is a failed attempt, backed off, not a reconnect at once (it was: about 500 a
/// second, sim seed 0x1bd29).
#[tokio::test(start_paused = true)]
async fn a_drain_after_the_handshakes_calls_is_backed_off() {
    let Draining {
        channel,
        log,
        connects,
        storm,
    } = draining_after_a_leftover(2, Duration::from_millis(100));
    channel.connect().await.unwrap();
    tokio::select! {
        biased;
        () = storm.notified() => panic!("a storm: 100 connects before 10 s passed"),
        () = tokio::time::sleep(Duration::from_secs(10)) => {}
    }
    let connects = *connects.lock().unwrap();
    assert!((2..=25).contains(&connects), "{connects} connects in 10 s");
    assert_eq!(log.lock().unwrap()[0], ["auth", "select"]);
}

/// The other side of `a_drain_after_the_handshakes_calls_is_backed_off`: with the same
/// handshake, a drain after a user's call was answered retires the connection and
/// makes the next one at once (a backoff would hold the next call for a minute).
#[tokio::test(start_paused = true)]
async fn a_drain_after_a_users_reply_still_reconnects_at_once() {
    let Draining {
        channel,
        log,
        connects,
        ..
    } = draining_after_a_leftover(3, Duration::from_secs(60));
    assert_eq!(channel.request(s("one")).await.unwrap(), "ONE");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let asked = tokio::time::Instant::now();
    assert_eq!(channel.request(s("two")).await.unwrap(), "TWO");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    // The second connection drains too, after `two`: a third follows at once.
    assert!(*connects.lock().unwrap() >= 2);
    let log = log.lock().unwrap();
    assert_eq!(log[0], ["auth", "select", "one"]);
    assert_eq!(log[1], ["auth", "select", "two"]);
}

/// `change_host` while backing off from a wrong server: the host asked for is tried
/// first, not last.
#[tokio::test(start_paused = true)]
async fn change_host_after_a_wrong_server_tries_the_new_host_first() {
    let connects = Arc::new(Mutex::new(Vec::new()));
    let readonly = Script {
        readonly: true,
        ..Script::default()
    };
    let channel = reconnecting(
        vec![readonly.clone(), Script::default(), readonly],
        &["127.0.0.1:3"],
        connects.clone(),
    );
    let err = channel.request(s("a")).await.unwrap_err();
    assert_eq!(outcome(&err), (Kind::Server, true));
    channel.change_host("127.0.0.1:2").unwrap();
    assert_eq!(channel.request(s("b")).await.unwrap(), "B");
    assert_eq!(*connects.lock().unwrap(), [1, 2]);
}

/// A connection already retired (here by the orphan rule: a call timed out, and one
/// orphan is the limit once the connection is full) still hears the server's word on the calls it drains: told it
/// is the wrong server while the channel has no connection, the channel tries that host
/// last on its next connect (sim seed 0x3d78: it dialed the demoted host first).
#[tokio::test(start_paused = true)]
async fn a_wrong_server_heard_on_a_retired_connection_is_tried_last() {
    let connects = Arc::new(Mutex::new(Vec::new()));
    let channel = builder()
        .backup("127.0.0.1:2")
        .config(
            socketchannel::Config::default()
                .max_in_flight(2)
                .max_orphans(Some(1)),
        )
        .connector(
            connector(vec![Script::default(), Script::default()], connects.clone()),
            Order::new(Words),
        )
        .expect("valid hosts");
    // `slow` times out, an orphan; the next call is written behind it, which fills the
    // connection, and then the connection is retired. The server answers that call
    // after `slow`, on the retired connection.
    let slow = channel.request(Call::new(s("slow")).timeout(Duration::from_millis(50)));
    assert_eq!(slow.await.unwrap_err().kind(), Kind::Timeout);
    let readonly = channel.request(s("readonly")).await;
    assert_eq!(outcome(&readonly.unwrap_err()), (Kind::Server, true));
    assert_eq!(channel.counters().retired, 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(channel.request(s("b")).await.unwrap(), "B");
    assert_eq!(*connects.lock().unwrap(), [1, 2], "the backup first");
}

/// A `connect()` made during a shutdown reopens the channel once the shutdown ends;
/// when the last call it waited for met a wrong server, that verdict's backoff (a
/// failed attempt) still holds: the reopening pass waits it out, not reconnecting to
/// the host at once (sim seed 0xfa720).
#[tokio::test(start_paused = true)]
async fn a_connect_that_waited_for_a_shutdown_ended_by_a_wrong_server_backs_off() {
    let connects = Arc::new(Mutex::new(Vec::new()));
    let readonly = Script {
        readonly: true,
        ..Script::default()
    };
    let channel = reconnecting(vec![readonly], &[], connects.clone());
    let start = tokio::time::Instant::now();
    // The call is queued, then the shutdown waits for it, then the `connect()` waits
    // for the shutdown: all before the task runs.
    let (call, (), connected) = within(TEST, "test", async {
        tokio::join!(
            channel.request(s("a")),
            channel.shutdown(Duration::from_secs(5)),
            async {
                let connected = channel.connect().await;
                (connected, start.elapsed())
            },
        )
    })
    .await;
    assert_eq!(outcome(&call.unwrap_err()), (Kind::Server, true));
    let (connected, after) = connected;
    connected.unwrap();
    assert_eq!(*connects.lock().unwrap(), [1, 1]);
    assert!(
        after >= Duration::from_millis(100),
        "reconnected {after:?} after the wrong server's word: no backoff"
    );
}

mod redis {
    use super::*;
    use common::redis::{Frame, Redis, RespCodec, cmd, start_server, text};

    async fn role(channel: &Channel<Frame, Frame>) -> Result<String, BoxError> {
        let reply = channel.request(cmd(["ROLE"])).await?;
        match reply {
            Frame::Array { data, .. } => Ok(data.first().and_then(text).unwrap_or_default()),
            other => Err(format!("ROLE answered {other:?}").into()),
        }
    }

    /// A master demoted under load (`REPLICAOF`): its writes answer `READONLY`, the
    /// channel leaves it, its handshake (checking `ROLE`) refuses it, and the backup,
    /// the master now, takes the calls; the retried writes land there, each caller's own.
    #[tokio::test]
    async fn a_demoted_master_is_left_for_the_new_one_under_load() {
        within(TEST, "test", async {
            let a = start_server(&[]).await.expect("redis-server");
            let b = start_server(&[]).await.expect("redis-server");
            let channel: Channel<Frame, Frame> = Channel::builder()
                .host(a.addr())
                .backup(b.addr())
                .backoff(Backoff::exponential(
                    Duration::from_millis(20),
                    Duration::from_millis(200),
                ))
                .handshake(|conn, endpoint| async move {
                    match role(&conn).await?.as_str() {
                        "master" => Ok(Handshake::Ready),
                        other => Err(format!("{endpoint} is a {other}, not the master").into()),
                    }
                })
                .order(RespCodec::resp2(), Redis::commands())
                .expect("valid hosts");
            let admin: Channel<Frame, Frame> = Channel::builder()
                .host(a.addr())
                .order(RespCodec::resp2(), Redis::commands())
                .expect("valid host");

            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut tasks = tokio::task::JoinSet::new();
            for t in 0..8 {
                let svc = ServiceBuilder::new()
                    .retry(RetryNotSent::new(20))
                    .service(channel.clone());
                let stop = stop.clone();
                tasks.spawn(async move {
                    let key = format!("k{t}");
                    let mut last = 0;
                    for i in 1..=100_000u32 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let value = i.to_string();
                        let reply = svc
                            .clone()
                            .oneshot(cmd(["SET", key.as_str(), value.as_str()]))
                            .await;
                        match reply {
                            Ok(reply) => {
                                assert_eq!(text(&reply).as_deref(), Some("OK"));
                                last = i;
                            }
                            // Only a call the server may have run fails otherwise.
                            Err(e) => {
                                let e = e.downcast_ref::<Error>().expect("a channel error");
                                assert!(e.may_have_executed(), "a not-sent call failed: {e}");
                            }
                        }
                    }
                    (key, last)
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(channel.counters().reconnects, 0);
            // Demote A: it becomes B's replica and answers writes READONLY.
            let demoted = std::time::Instant::now();
            let port = b.port().to_string();
            let reply = admin
                .request(cmd(["REPLICAOF", "127.0.0.1", port.as_str()]))
                .await
                .unwrap();
            assert_eq!(text(&reply).as_deref(), Some("OK"));
            // Writes resume on B.
            let mut landed = None;
            for _ in 0..400 {
                if channel.counters().reconnects >= 1
                    && role(&channel).await.ok().as_deref() == Some("master")
                {
                    landed = Some(demoted.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let landed = landed.expect("the channel moved to the master");
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.store(true, Ordering::SeqCst);
            let on_b: Channel<Frame, Frame> = Channel::builder()
                .host(b.addr())
                .order(RespCodec::resp2(), Redis::commands())
                .expect("valid host");
            while let Some(done) = tasks.join_next().await {
                let (key, last) = done.unwrap();
                assert!(last > 0);
                // Each caller's last acknowledged write is on the new master.
                let got = on_b.request(cmd(["GET", key.as_str()])).await.unwrap();
                assert_eq!(text(&got), Some(last.to_string()), "{key}");
            }
            eprintln!("demoted master left; writes on the new one after {landed:?}");
            assert!(channel.counters().retired >= 1);
        })
        .await;
    }
}
