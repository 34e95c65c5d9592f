//! Redis, in order mode, against real `redis-server` processes.
//!
//! Each test starts its own `redis-server` on a free 127.0.0.1 port (no persistence),
//! waits until it answers `PING`, and kills it by its pid when done. RESP is framed by
//! the `redis-protocol` crate; the `Protocol` is in `examples/common/redis.rs`, shared
//! with `examples/redis.rs`. `redis-server` must be on `PATH` (CI's `.ci/run` installs
//! it): without it these tests fail, saying so.

#![cfg(feature = "tcp")]

#[path = "../examples/common/mod.rs"]
mod common;
mod support;

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::process::{Server, free_port, within};
use common::redis::{
    Frame, Packed, PubSub, Redis, RedisError, Resp3Frame, RespCodec, cmd, connect, info_field, int,
    start_server, text,
};
use socketchannel::{Backoff, Call, Channel, ConnectError, Error, Handshake, Kind, Reconnect};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio_util::codec::Encoder;

use support::peak::PeakInFlight;

/// The bound on a whole test.
const TEST: Duration = Duration::from_secs(40);
/// The bound on one call to a live server.
const CALL: Duration = Duration::from_secs(5);

async fn redis(extra: &[&str]) -> Server {
    start_server(extra)
        .await
        .unwrap_or_else(|e| panic!("could not start redis-server: {e}"))
}

/// An order-mode channel to `addr`, reconnecting quickly.
fn channel(addr: &str) -> Channel<Frame, Frame> {
    Channel::builder()
        .host(addr)
        .backoff(fast_backoff())
        .order(RespCodec::resp2(), Redis::commands())
        .expect("valid host")
}

fn fast_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(20), Duration::from_millis(200))
}

/// One command that must succeed.
async fn ok<I>(channel: &Channel<Frame, Frame>, args: I) -> Frame
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let frame = cmd(args);
    let what = format!("{frame:?}");
    within(CALL, &what, channel.request(frame))
        .await
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn bytes(frame: &Frame) -> Option<&[u8]> {
    frame.as_bytes()
}

/// The port of the server that answers on this channel.
async fn port_of(channel: &Channel<Frame, Frame>) -> Result<u16, Error> {
    let reply = within(
        CALL,
        "CONFIG GET port",
        channel.request(cmd(["CONFIG", "GET", "port"])),
    )
    .await?;
    match &reply {
        Frame::Array { data, .. } if data.len() == 2 => Ok(text(&data[1])
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("odd CONFIG GET reply {reply:?}"))),
        _ => panic!("odd CONFIG GET reply {reply:?}"),
    }
}

async fn info(channel: &Channel<Frame, Frame>, section: &str, field: &str) -> String {
    let reply = ok(channel, ["INFO", section]).await;
    let info = text(&reply).expect("INFO is a string");
    info_field(&info, field).unwrap_or_else(|| panic!("no {field} in INFO {section}"))
}

/// A side connection to `addr`, logged in with `password` when given, on `db`.
async fn side(addr: &str, password: Option<&str>, db: u32) -> Channel<Frame, Frame> {
    let channel = connect(addr).await.expect("side connection");
    if let Some(pw) = password {
        ok(&channel, ["AUTH", pw]).await;
    }
    ok(&channel, ["SELECT", &db.to_string()]).await;
    channel
}

fn server_error(err: &Error) -> &RedisError {
    err.source()
        .and_then(|s| s.downcast_ref::<RedisError>())
        .unwrap_or_else(|| panic!("not a redis error reply: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_callers_share_one_connection() {
    within(TEST, "test", async {
        const TASKS: usize = 256;
        const EACH: usize = 20;
        let server = redis(&[]).await;
        let channel = channel(&server.addr());
        let connections = info(&channel, "stats", "total_connections_received").await;

        let sampler = PeakInFlight::start(&channel);
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for t in 0..TASKS {
            let channel = channel.clone();
            tasks.spawn(async move {
                for i in 0..EACH {
                    let key = format!("k:{t}:{i}");
                    let value = format!("v:{t}:{i}:{}", "x".repeat(t % 64));
                    let set = channel.request(cmd(["SET", &key, &value])).await?;
                    assert_eq!(text(&set).as_deref(), Some("OK"), "SET {key}");
                    let got = channel.request(cmd(["GET", &key])).await?;
                    assert_eq!(bytes(&got), Some(value.as_bytes()), "GET {key}");
                }
                Ok::<_, Error>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("caller panicked").expect("call failed");
        }
        let elapsed = started.elapsed();
        sampler.stop();

        let total = TASKS * EACH;
        assert_eq!(int(&ok(&channel, ["DBSIZE"]).await), Some(total as i64));
        // One connection: the server saw no new one, and the channel never reconnected.
        assert_eq!(
            info(&channel, "stats", "total_connections_received").await,
            connections
        );
        assert_eq!(channel.counters().reconnects, 0);
        let peak = sampler.peak();
        assert!(
            peak > 1,
            "calls were never pipelined (peak in flight {peak})"
        );
        println!(
            "{} calls from {TASKS} tasks over one connection in {elapsed:?}, peak {peak} in flight",
            2 * total
        );
    })
    .await;
}

#[tokio::test]
async fn pipeline_of_n_commands_is_one_request() {
    within(TEST, "test", async {
        const N: usize = 100;
        let server = redis(&[]).await;
        let channel = channel(&server.addr());
        ok(&channel, ["PING"]).await;

        let sent = channel.counters().sent;
        let parts = (0..N).map(|_| cmd(["INCR", "counter"])).collect();
        let replies = within(CALL, "pipeline", channel.request_n(Call::parts(parts), N))
            .await
            .expect("pipeline");
        let counts: Vec<_> = replies.iter().map(int).collect();
        let expected: Vec<_> = (1..=N as i64).map(Some).collect();
        assert_eq!(counts, expected);
        assert_eq!(
            channel.counters().sent,
            sent + 1,
            "one call for the pipeline"
        );

        // Pipelines from many tasks at once: no other call's frame comes between parts.
        let mut tasks = JoinSet::new();
        for t in 0..16 {
            let channel = channel.clone();
            tasks.spawn(async move {
                let key = format!("list:{t}");
                let parts = (0..50)
                    .map(|i| cmd(["RPUSH", &key, &i.to_string()]))
                    .collect();
                let replies = channel.request_n(Call::parts(parts), 50).await?;
                let lens: Vec<_> = replies.iter().map(int).collect();
                assert_eq!(lens, (1..=50).map(Some).collect::<Vec<_>>(), "{key}");
                Ok::<_, Error>(())
            });
        }
        while let Some(done) = within(CALL, "pipelines", tasks.join_next()).await {
            done.expect("task panicked").expect("pipeline failed");
        }

        // An error reply inside a pipeline fails that call; the stream stays in step.
        let parts = vec![
            cmd(["SET", "a", "1"]),
            cmd(["NO-SUCH-COMMAND"]),
            cmd(["GET", "a"]),
        ];
        let err = within(CALL, "pipeline", channel.request_n(Call::parts(parts), 3))
            .await
            .expect_err("an error reply in the pipeline");
        assert_eq!(err.kind(), Kind::Server);
        assert!(err.may_have_executed());
        assert_eq!(server_error(&err).code(), "ERR");
        assert_eq!(
            text(&ok(&channel, ["GET", "a"]).await).as_deref(),
            Some("1")
        );
        assert_eq!(channel.counters().reconnects, 0);
    })
    .await;
}

#[test]
fn a_packed_command_is_the_bytes_the_codec_writes_for_its_frame() {
    let set = Packed::new(&cmd(["SET", "key", "value"])).expect("a command");
    assert_eq!(
        set.as_bytes(),
        b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"
    );
    let binary = Packed::new(&cmd([&b"GET"[..], b"k\r\n\0\xff"])).expect("a command");
    assert_eq!(
        binary.as_bytes(),
        b"*2\r\n$3\r\nGET\r\n$5\r\nk\r\n\0\xff\r\n"
    );

    for command in [
        cmd(["PING"]),
        cmd(["SET", "key", "value"]),
        cmd([&b"SET"[..], b"bin\r\nkey", &[0u8, 255, 13, 10]]),
    ] {
        let packed = Packed::new(&command).expect("a command");
        for mut codec in [RespCodec::resp2(), RespCodec::resp3()] {
            let (mut framed, mut copied) = (BytesMut::new(), BytesMut::new());
            codec.encode(command.clone(), &mut framed).expect("encode");
            codec.encode(packed.clone(), &mut copied).expect("encode");
            assert_eq!(packed.as_bytes(), &framed[..], "{command:?}");
            assert_eq!(copied, framed, "{command:?}");
        }
    }
}

#[test]
fn what_is_not_a_command_is_refused_before_it_is_sent() {
    let blob = |data: &'static str| Frame::BlobString {
        data: data.into(),
        attributes: None,
    };
    let with_attributes = Frame::BlobString {
        data: "GET".into(),
        attributes: Some(Default::default()),
    };
    let array = |data: Vec<Frame>| Frame::Array {
        data,
        attributes: None,
    };
    let refused = [
        // Redis skips an empty command without a reply.
        cmd(Vec::<&str>::new()),
        Frame::SimpleString {
            data: "OK".into(),
            attributes: None,
        },
        array(vec![Frame::Number {
            data: 1,
            attributes: None,
        }]),
        array(vec![blob("GET"), array(vec![blob("k")])]),
        array(vec![with_attributes]),
        Frame::Array {
            data: vec![blob("GET"), blob("k")],
            attributes: Some(Default::default()),
        },
        Frame::Push {
            data: vec![blob("GET"), blob("k")],
            attributes: None,
        },
    ];
    for frame in &refused {
        assert!(Packed::new(frame).is_err(), "{frame:?} is no command");
    }
    for mut codec in [RespCodec::resp2(), RespCodec::resp3()] {
        let mut buf = BytesMut::new();
        codec
            .encode(cmd(Vec::<&str>::new()), &mut buf)
            .expect_err("an empty command is refused");
        assert!(buf.is_empty());
    }
}

#[tokio::test]
async fn an_empty_command_fails_and_takes_no_other_reply() {
    within(TEST, "test", async {
        let server = redis(&[]).await;
        let channel = channel(&server.addr());
        ok(&channel, ["SET", "k", "v"]).await;

        let err = within(CALL, "empty", channel.request(cmd(Vec::<&str>::new())))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), Kind::ConnectionLost, "{err}");
        // The channel reconnects, and each reply still goes to its own call.
        let (get, ping) = tokio::join!(
            channel.request(cmd(["GET", "k"])),
            channel.request(cmd(["PING"])),
        );
        assert_eq!(text(&get.expect("GET")).as_deref(), Some("v"));
        assert_eq!(text(&ping.expect("PING")).as_deref(), Some("PONG"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_commands_get_their_own_replies() {
    within(TEST, "test", async {
        let server = redis(&[]).await;
        let channel: Channel<Packed, Frame> = Channel::builder()
            .host(server.addr())
            .order(RespCodec::resp2(), Redis::commands())
            .expect("valid host");
        let pack = |args: &[&str]| Packed::new(&cmd(args)).expect("a command");

        let mut callers = JoinSet::new();
        for c in 0..32 {
            let channel = channel.clone();
            callers.spawn(async move {
                for i in 0..20 {
                    let (key, value) = (format!("k{c}"), format!("{c}:{i}"));
                    let set = within(CALL, "SET", channel.request(pack(&["SET", &key, &value])));
                    assert_eq!(text(&set.await.expect("SET")).as_deref(), Some("OK"));
                    let got = within(CALL, "GET", channel.request(pack(&["GET", &key])));
                    assert_eq!(text(&got.await.expect("GET")), Some(value));
                }
            });
        }
        while let Some(done) = callers.join_next().await {
            done.expect("caller");
        }

        let err = within(CALL, "bad", channel.request(pack(&["NO-SUCH-COMMAND"])))
            .await
            .expect_err("an error reply");
        assert_eq!(server_error(&err).code(), "ERR", "{err}");
        let pong = within(CALL, "PING", channel.request(pack(&["PING"]))).await;
        assert_eq!(text(&pong.expect("PING")).as_deref(), Some("PONG"));
        assert_eq!(channel.counters().reconnects, 0);
    })
    .await;
}

#[tokio::test]
async fn error_reply_fails_only_its_call() {
    within(TEST, "test", async {
        let server = redis(&[]).await;
        let channel = channel(&server.addr());
        ok(&channel, ["SET", "s", "text"]).await;

        let (a, bad, b, wrong, c) = tokio::join!(
            channel.request(cmd(["SET", "x", "1"])),
            channel.request(cmd(["NO-SUCH-COMMAND", "arg"])),
            channel.request(cmd(["INCR", "x"])),
            channel.request(cmd(["LPUSH", "s", "item"])),
            channel.request(cmd(["GET", "x"])),
        );
        assert_eq!(text(&a.expect("SET")).as_deref(), Some("OK"));
        assert_eq!(int(&b.expect("INCR")), Some(2));
        assert_eq!(text(&c.expect("GET")).as_deref(), Some("2"));
        for (err, code) in [(bad, "ERR"), (wrong, "WRONGTYPE")] {
            let err = err.expect_err("an error reply");
            assert_eq!(err.kind(), Kind::Server, "{err}");
            assert!(err.may_have_executed());
            assert_eq!(server_error(&err).code(), code, "{err}");
        }
        assert_eq!(
            text(&ok(&channel, ["GET", "s"]).await).as_deref(),
            Some("text")
        );
        assert_eq!(channel.counters().reconnects, 0);
    })
    .await;
}

#[tokio::test]
async fn handshake_authenticates_and_selects_on_every_connection() {
    within(TEST, "test", async {
        const PASSWORD: &str = "s3cret-pw";
        let server = redis(&["--requirepass", PASSWORD]).await;
        let handshakes = Arc::new(AtomicU32::new(0));
        let channel: Channel<Frame, Frame> = Channel::builder()
            .host(server.addr())
            .backoff(fast_backoff())
            .handshake({
                let handshakes = handshakes.clone();
                move |conn, _endpoint| {
                    handshakes.fetch_add(1, Ordering::Relaxed);
                    async move {
                        conn.request(cmd(["AUTH", PASSWORD])).await?;
                        conn.request(cmd(["SELECT", "3"])).await?;
                        Ok(Handshake::Ready)
                    }
                }
            })
            .order(RespCodec::resp2(), Redis::commands())
            .expect("valid host");

        ok(&channel, ["SET", "where", "db3"]).await;
        assert_eq!(handshakes.load(Ordering::Relaxed), 1);
        let db3 = side(&server.addr(), Some(PASSWORD), 3).await;
        let db0 = side(&server.addr(), Some(PASSWORD), 0).await;
        assert_eq!(
            text(&ok(&db3, ["GET", "where"]).await).as_deref(),
            Some("db3")
        );
        assert_eq!(ok(&db0, ["GET", "where"]).await, Frame::Null);

        // The server drops the channel's connection: the next connection is
        // authenticated and on db 3 again.
        let id = int(&ok(&channel, ["CLIENT", "ID"]).await).expect("CLIENT ID");
        ok(&db0, ["CLIENT", "KILL", "ID", &id.to_string()]).await;
        let mut tries = 0;
        loop {
            match within(
                CALL,
                "SET after kill",
                channel.request(cmd(["SET", "again", "yes"])),
            )
            .await
            {
                Ok(_) => break,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 5, "still failing after {tries} tries: {e}");
                    assert!(
                        matches!(e.kind(), Kind::ConnectionLost | Kind::ConnectFailed),
                        "{e}"
                    );
                }
            }
        }
        assert_eq!(handshakes.load(Ordering::Relaxed), 2);
        let client = text(&ok(&channel, ["CLIENT", "INFO"]).await).expect("CLIENT INFO");
        assert!(client.contains(" db=3 "), "{client}");
        assert_eq!(
            text(&ok(&db3, ["GET", "again"]).await).as_deref(),
            Some("yes")
        );
        assert_eq!(channel.counters().reconnects, 1);
    })
    .await;
}

#[tokio::test]
async fn wrong_password_fails_clearly_and_backs_off() {
    within(TEST, "test", async {
        let server = redis(&["--requirepass", "right"]).await;
        let attempts = Arc::new(AtomicU32::new(0));
        let channel: Channel<Frame, Frame> = Channel::builder()
            .host(server.addr())
            .backoff(Backoff::exponential(
                Duration::from_millis(200),
                Duration::from_secs(1),
            ))
            .handshake({
                let attempts = attempts.clone();
                move |conn, _endpoint| {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    async move {
                        conn.request(cmd(["AUTH", "wrong"])).await?;
                        Ok(Handshake::Ready)
                    }
                }
            })
            .order(RespCodec::resp2(), Redis::commands())
            .expect("valid host");

        let err = within(CALL, "PING", channel.request(cmd(["PING"])))
            .await
            .expect_err("a wrong password cannot connect");
        assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
        assert!(err.is_not_sent());
        let source = err.source().expect("a source");
        let failures: Vec<_> = source
            .downcast_ref::<ConnectError>()
            .expect("a ConnectError")
            .failures()
            .map(|(endpoint, e)| (endpoint.to_string(), e.to_string()))
            .collect();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].0, server.addr());
        assert!(failures[0].1.contains("WRONGPASS"), "{}", failures[0].1);
        let message = err.to_string();
        assert!(
            message.contains(&server.addr()) && message.contains("WRONGPASS"),
            "{message}"
        );
        println!("{message}");

        // Callers keep calling for 2 s; the server sees a handful of AUTH attempts, spaced
        // by the backoff, not one per call.
        let started = Instant::now();
        let mut calls = 0;
        while started.elapsed() < Duration::from_secs(2) {
            let err = within(CALL, "PING", channel.request(cmd(["PING"])))
                .await
                .expect_err("still the wrong password");
            assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
            assert!(err.is_not_sent());
            calls += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let attempts = attempts.load(Ordering::Relaxed);
        // At least 200 ms between passes: at most 1 + 2000 / 200 in 2 s (and a little
        // slack for the last call); at most 1 s: at least 3.
        assert!(
            (3..=12).contains(&attempts),
            "{attempts} AUTH attempts in 2 s"
        );
        assert!(calls > 5 * attempts, "{calls} calls, {attempts} attempts");

        // The server's own count of failed authentications agrees.
        let side = side(&server.addr(), Some("right"), 0).await;
        assert_eq!(auth_failures(&side).await, i64::from(attempts));
        println!("{calls} calls failed fast; {attempts} AUTH attempts reached the server");
    })
    .await;
}

/// Failed `AUTH`s the server logged. Redis 7.0 has no counter for them in `INFO` (7.2
/// has `acl_access_denied_auth`), but `ACL LOG` counts them in its entries.
async fn auth_failures(side: &Channel<Frame, Frame>) -> i64 {
    let log = ok(side, ["ACL", "LOG"]).await;
    let Frame::Array { data: entries, .. } = &log else {
        panic!("odd ACL LOG reply {log:?}");
    };
    let field = |entry: &[Frame], name: &str| {
        entry
            .chunks(2)
            .find(|kv| kv[0].as_str() == Some(name))
            .map(|kv| kv[1].clone())
    };
    entries
        .iter()
        .map(|entry| {
            let Frame::Array { data: entry, .. } = entry else {
                panic!("odd ACL LOG entry {entry:?}");
            };
            match field(entry, "reason").as_ref().and_then(text).as_deref() {
                Some("auth") => field(entry, "count").as_ref().and_then(int).unwrap_or(0),
                _ => 0,
            }
        })
        .sum()
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    ok_after_restart: AtomicU64,
    /// Written, then lost with the connection.
    lost: AtomicU64,
    /// Never written: no host was up.
    unsent: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_mid_load_fails_only_calls_in_flight() {
    within(TEST, "test", async {
        const TASKS: usize = 64;
        let mut server = redis(&[]).await;
        let channel = channel(&server.addr());
        ok(&channel, ["PING"]).await;

        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        // Set once the server is back and the channel answered again.
        let recovered: Arc<Mutex<Option<Instant>>> = Arc::default();
        let restarted = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for t in 0..TASKS {
            let (channel, tally, stop) = (channel.clone(), tally.clone(), stop.clone());
            let (recovered, restarted) = (recovered.clone(), restarted.clone());
            tasks.spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let (key, value) = (format!("r:{t}"), format!("{t}-{i}"));
                    let call = Call::parts(vec![cmd(["SET", &key, &value]), cmd(["GET", &key])]);
                    let started = Instant::now();
                    match channel.request_n(call, 2).await {
                        Ok(replies) => {
                            assert_eq!(bytes(&replies[1]), Some(value.as_bytes()));
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            if restarted.load(Ordering::Relaxed) {
                                tally.ok_after_restart.fetch_add(1, Ordering::Relaxed);
                                recovered.lock().await.get_or_insert(started);
                            }
                        }
                        Err(e) => {
                            if let Some(at) = *recovered.lock().await {
                                assert!(started < at, "a call made after recovery failed: {e}");
                            }
                            if e.may_have_executed() {
                                assert_eq!(e.kind(), Kind::ConnectionLost, "{e}");
                                tally.lost.fetch_add(1, Ordering::Relaxed);
                            } else {
                                assert_eq!(e.kind(), Kind::ConnectFailed, "{e}");
                                tally.unsent.fetch_add(1, Ordering::Relaxed);
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            });
        }

        // Under load, with calls in flight: kill the server, restart it on its port.
        within(CALL, "load", async {
            while tally.ok.load(Ordering::Relaxed) < 1000 || channel.counters().in_flight == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        // A blocking call makes sure calls are in flight when the server dies: it is
        // written, and the callers' calls queue behind it on the server.
        let blocked = {
            let channel = channel.clone();
            let call = Call::new(cmd(["BLPOP", "never", "0"])).no_stall_timeout();
            tokio::spawn(async move { channel.request(call).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.kill();
        let err = within(CALL, "BLPOP", blocked)
            .await
            .expect("task")
            .expect_err("the server died under the BLPOP");
        assert_eq!(err.kind(), Kind::ConnectionLost, "{err}");
        assert!(err.may_have_executed());
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.restart().await.expect("restart redis-server");
        restarted.store(true, Ordering::Relaxed);
        within(CALL, "recovery", async {
            while tally.ok_after_restart.load(Ordering::Relaxed) < 1000 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        while let Some(done) = within(CALL, "callers", tasks.join_next()).await {
            done.expect("caller panicked");
        }

        let lost = tally.lost.load(Ordering::Relaxed);
        let unsent = tally.unsent.load(Ordering::Relaxed);
        // Each caller has at most one call in flight: at most TASKS were lost; those
        // stuck behind the BLPOP certainly were.
        assert!((1..=TASKS as u64).contains(&lost), "{lost} calls lost");
        assert!(channel.counters().reconnects >= 1);
        println!(
            "{} pipelines ok ({} after the restart); {lost} lost in flight, {unsent} failed \
             unsent while the server was down",
            tally.ok.load(Ordering::Relaxed),
            tally.ok_after_restart.load(Ordering::Relaxed)
        );
    })
    .await;
}

#[tokio::test]
async fn fails_over_to_a_backup() {
    within(TEST, "test", async {
        let mut primary = redis(&[]).await;
        let backup = redis(&[]).await;

        // The primary is down from the start: the backup serves the first call.
        let down = format!("127.0.0.1:{}", free_port().expect("a free port"));
        let channel: Channel<Frame, Frame> = Channel::builder()
            .host(&down)
            .backup(backup.addr())
            .order(RespCodec::resp2(), Redis::commands())
            .expect("valid hosts");
        assert_eq!(port_of(&channel).await.expect("backup"), backup.port());

        // The primary dies under a connected channel: it moves to the backup.
        let channel: Channel<Frame, Frame> = Channel::builder()
            .host(primary.addr())
            .backup(backup.addr())
            .backoff(fast_backoff())
            .order(RespCodec::resp2(), Redis::commands())
            .expect("valid hosts");
        assert_eq!(port_of(&channel).await.expect("primary"), primary.port());
        primary.kill();
        let mut tries = 0;
        let port = loop {
            match port_of(&channel).await {
                Ok(port) => break port,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 5, "still failing after {tries} tries: {e}");
                    assert!(
                        matches!(e.kind(), Kind::ConnectionLost | Kind::ConnectFailed),
                        "{e}"
                    );
                }
            }
        };
        assert_eq!(port, backup.port());
        ok(&channel, ["SET", "served-by", "backup"]).await;
        let side = side(&backup.addr(), None, 0).await;
        assert_eq!(
            text(&ok(&side, ["GET", "served-by"]).await).as_deref(),
            Some("backup")
        );
    })
    .await;
}

#[tokio::test]
async fn change_host_sends_new_calls_to_the_new_instance() {
    within(TEST, "test", async {
        let a = redis(&[]).await;
        let b = redis(&[]).await;
        let channel = channel(&a.addr());
        ok(&channel, ["SET", "before", "1"]).await;

        // A blocking call in flight on the old connection finishes there.
        let blocking = {
            let channel = channel.clone();
            tokio::spawn(async move {
                let call = Call::new(cmd(["BLPOP", "nothing", "0.5"])).no_stall_timeout();
                let started = Instant::now();
                (channel.request(call).await, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        channel.change_host(b.addr()).expect("valid host");
        ok(&channel, ["SET", "after", "2"]).await;
        assert_eq!(port_of(&channel).await.expect("new host"), b.port());

        let (blpop, took) = within(CALL, "BLPOP", blocking).await.expect("task");
        assert_eq!(blpop.expect("BLPOP timed out on the old host"), Frame::Null);
        assert!(took >= Duration::from_millis(400), "{took:?}");

        let (on_a, on_b) = (
            side(&a.addr(), None, 0).await,
            side(&b.addr(), None, 0).await,
        );
        let exists = |side: &Channel<Frame, Frame>, key: &'static str| {
            let side = side.clone();
            async move { int(&ok(&side, ["EXISTS", key]).await) }
        };
        assert_eq!(exists(&on_a, "before").await, Some(1));
        assert_eq!(exists(&on_a, "after").await, Some(0));
        assert_eq!(exists(&on_b, "before").await, Some(0));
        assert_eq!(exists(&on_b, "after").await, Some(1));
    })
    .await;
}

// -- Pub/sub, as skynet's `redis.watch` does it ------------------------------------------

/// The next pub/sub push, within `CALL`.
async fn next_push(pushes: &mut mpsc::Receiver<Frame>, resp3: bool) -> PubSub {
    let frame = within(CALL, "a push frame", pushes.recv())
        .await
        .expect("the push receiver is open");
    assert_eq!(matches!(frame, Frame::Push { .. }), resp3, "{frame:?}");
    PubSub::parse(&frame).unwrap_or_else(|| panic!("not a pub/sub frame: {frame:?}"))
}

fn confirm(kind: &str, channel: &str, count: i64) -> PubSub {
    PubSub::Confirm {
        kind: kind.into(),
        channel: channel.into(),
        count,
    }
}

fn message(channel: &str, payload: &'static str) -> PubSub {
    PubSub::Message {
        pattern: None,
        channel: channel.into(),
        payload: payload.into(),
    }
}

/// PUBLISHes until one subscriber got it (the publisher may first have to reconnect).
async fn publish(publisher: &Channel<Frame, Frame>, channel: &str, payload: &str) {
    within(CALL, "PUBLISH", async {
        loop {
            match publisher.request(cmd(["PUBLISH", channel, payload])).await {
                Ok(reply) if int(&reply) == Some(1) => return,
                Ok(reply) => assert_eq!(int(&reply), Some(0), "{reply:?}"),
                Err(e) => assert!(
                    matches!(e.kind(), Kind::ConnectionLost | Kind::ConnectFailed),
                    "{e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn watch(resp3: bool) {
    let mut server = redis(&[]).await;
    let handshakes = Arc::new(AtomicU32::new(0));
    // The watcher: a dedicated channel; its handshake (re)subscribes on every connection.
    let watcher: Channel<Frame, Frame> = Channel::builder()
        .host(server.addr())
        .reconnect(Reconnect::Persistent)
        .backoff(fast_backoff())
        .eager()
        .handshake({
            let handshakes = handshakes.clone();
            move |conn, _endpoint| {
                handshakes.fetch_add(1, Ordering::Relaxed);
                async move {
                    if resp3 {
                        conn.request(cmd(["HELLO", "3"])).await?;
                    }
                    conn.send(cmd(["SUBSCRIBE", "news", "alerts"])).await?;
                    Ok(Handshake::Ready)
                }
            }
        })
        // RESP3 marks its pushes itself; RESP2 needs the subscriber's reading.
        .order(
            if resp3 {
                RespCodec::resp3()
            } else {
                RespCodec::resp2()
            },
            if resp3 {
                Redis::commands()
            } else {
                Redis::subscriber()
            },
        )
        .expect("valid host");
    let mut pushes = watcher.pushes().expect("the push receiver");
    assert_eq!(
        next_push(&mut pushes, resp3).await,
        confirm("subscribe", "news", 1)
    );
    assert_eq!(
        next_push(&mut pushes, resp3).await,
        confirm("subscribe", "alerts", 2)
    );

    let publisher = channel(&server.addr());
    publish(&publisher, "news", "hello").await;
    assert_eq!(
        next_push(&mut pushes, resp3).await,
        message("news", "hello")
    );
    publish(&publisher, "alerts", "fire").await;
    assert_eq!(
        next_push(&mut pushes, resp3).await,
        message("alerts", "fire")
    );

    // The server restarts: the watcher reconnects by itself and subscribes again.
    server.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.restart().await.expect("restart redis-server");
    assert_eq!(
        next_push(&mut pushes, resp3).await,
        confirm("subscribe", "news", 1)
    );
    assert_eq!(
        next_push(&mut pushes, resp3).await,
        confirm("subscribe", "alerts", 2)
    );
    publish(&publisher, "news", "after restart").await;
    assert_eq!(
        next_push(&mut pushes, resp3).await,
        message("news", "after restart")
    );
    assert_eq!(handshakes.load(Ordering::Relaxed), 2);
    assert!(watcher.counters().reconnects >= 1);
    assert_eq!(watcher.counters().push_overflow, 0);
}

#[tokio::test]
async fn pubsub_resp2_messages_arrive_through_pushes_across_a_restart() {
    within(TEST, "test", watch(false)).await;
}

#[tokio::test]
async fn pubsub_resp3_messages_arrive_through_pushes_across_a_restart() {
    within(TEST, "test", watch(true)).await;
}
