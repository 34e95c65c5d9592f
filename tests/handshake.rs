//! The handshake (issue #6; design.md "Connection management"): it runs on every new
//! connection before any user call is written, on a priority lane. It can send requests
//! and get their replies, read a greeting, fail (the next host is tried, then the backoff
//! applies: no hot loop on a wrong password), redirect to another host, replace the
//! backups, and is bounded by the handshake timeout.
//!
//! Every test uses an in-memory connector (`support::memory`: a `tower::service_fn`
//! opening a duplex pipe to a scripted server) under paused time.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Backoff, BoxError, Channel, Endpoint, Handshake, Kind, Reconnect, State};
use tokio::time::Instant;

use support::channel::{Ch, Mode, connect_error, joined, msg, spawn_request, wait_state};
use support::codec::{Kind as FrameKind, Msg};
use support::memory::{Io, Net};
use support::within;

/// How a scripted server treats the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behave {
    /// `auth secret` is answered `ok`; any other `auth ...` gets an error reply.
    Auth,
    /// Sends a greeting (id 0, `hello from <endpoint>`) on accept, then as `Auth`.
    Greet,
    /// Reads the auth and never answers anything.
    Mute,
    /// Reads the auth and closes the connection.
    Hangup,
}

/// Scripted servers behind the in-memory network. Each logs the frames it reads, one log
/// per connection. Frames that are not `auth ...` are answered `<endpoint>|<body>`;
/// after answering `bye` the server closes the connection.
#[derive(Clone, Default)]
struct Servers(Arc<ServersInner>);

#[derive(Default)]
struct ServersInner {
    behave: Mutex<HashMap<String, Behave>>,
    /// (endpoint, frames read) per connection, in connection order.
    log: Mutex<Vec<(String, Vec<String>)>>,
}

impl Servers {
    fn behave(&self, endpoint: &str, b: Behave) -> &Self {
        self.0
            .behave
            .lock()
            .unwrap()
            .insert(endpoint.to_string(), b);
        self
    }

    fn log(&self) -> Vec<(String, Vec<String>)> {
        self.0.log.lock().unwrap().clone()
    }

    fn net(&self) -> Net {
        let servers = self.clone();
        Net::new(move |endpoint, io| servers.clone().serve(endpoint, io))
    }

    async fn serve(self, endpoint: Endpoint, mut io: Io) {
        let key = endpoint.to_string();
        let behave = self
            .0
            .behave
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or(Behave::Auth);
        let conn = {
            let mut log = self.0.log.lock().unwrap();
            log.push((key.clone(), Vec::new()));
            log.len() - 1
        };
        if behave == Behave::Greet
            && io
                .send(Msg::with_id(0, format!("hello from {key}")))
                .await
                .is_err()
        {
            return;
        }
        while let Some(Ok(req)) = io.next().await {
            let text = req.text().to_string();
            self.0.log.lock().unwrap()[conn].1.push(text.clone());
            let reply = if text.starts_with("auth") {
                match behave {
                    Behave::Mute => continue,
                    Behave::Hangup => return,
                    Behave::Auth | Behave::Greet if text == "auth secret" => {
                        Msg::with_id(req.id, "ok")
                    }
                    Behave::Auth | Behave::Greet => {
                        Msg::with_id(req.id, "denied").kind(FrameKind::Error)
                    }
                }
            } else {
                Msg::with_id(req.id, format!("{key}|{text}"))
            };
            if io.send(reply).await.is_err() || text == "bye" {
                return;
            }
        }
    }
}

/// A handshake that authenticates with `password` and counts its runs.
fn auth(
    password: &'static str,
    runs: Arc<AtomicUsize>,
) -> impl Fn(Ch, Endpoint) -> Pin<Box<dyn Future<Output = Result<Handshake, BoxError>> + Send>>
+ Send
+ Sync
+ 'static {
    move |conn: Ch, _endpoint: Endpoint| {
        runs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let reply = conn.request(msg(format!("auth {password}"))).await?;
            assert_eq!(reply.text(), "ok");
            Ok(Handshake::Ready)
        })
    }
}

fn texts(frames: &[String]) -> Vec<&str> {
    frames.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------
// What the handshake can do
// ---------------------------------------------------------------------------------------

/// The handshake's requests are written first and their replies reach the hook; then the
/// user's call goes out on the same connection.
async fn requests_and_replies_case(mode: Mode) {
    let servers = Servers::default();
    let net = servers.net();
    let replies = Arc::new(Mutex::new(Vec::new()));
    let seen = replies.clone();
    let ch = net.channel(
        mode,
        Channel::builder()
            .host("a:1")
            .handshake(move |conn: Ch, endpoint| {
                let seen = seen.clone();
                async move {
                    assert_eq!(endpoint.to_string(), "a:1");
                    let ok = conn.request(msg("auth secret")).await?;
                    let selected = conn.request(msg("select 2")).await?;
                    seen.lock()
                        .unwrap()
                        .extend([ok.text().to_string(), selected.text().to_string()]);
                    Ok(Handshake::Ready)
                }
            }),
    );
    let reply = within(10, "call after handshake", ch.request(msg("get")))
        .await
        .expect("get");
    assert_eq!(reply.text(), "a:1|get");
    assert_eq!(*replies.lock().unwrap(), ["ok", "a:1|select 2"]);
    let log = servers.log();
    assert_eq!(log.len(), 1);
    assert_eq!(texts(&log[0].1), ["auth secret", "select 2", "get"]);
    assert_eq!(*ch.state().borrow(), State::Ready);
}

#[tokio::test(start_paused = true)]
async fn handshake_sends_requests_and_gets_replies_order() {
    requests_and_replies_case(Mode::Order).await;
}

#[tokio::test(start_paused = true)]
async fn handshake_sends_requests_and_gets_replies_session() {
    requests_and_replies_case(Mode::Session).await;
}

/// The server greets on accept (a frame with id 0); the hook reads it with
/// `conn.read()` before authenticating. With `early`, the greeting is already in the pipe
/// when the connect completes (before the hook runs), as it can be over a network.
async fn greeting_case(mode: Mode, early: bool) {
    let servers = Servers::default();
    servers.behave("a:1", Behave::Greet);
    let net = servers.net();
    if early {
        net.server_first();
    }
    let greeting = Arc::new(Mutex::new(None));
    let seen = greeting.clone();
    let ch = net.channel(
        mode,
        Channel::builder()
            .host("a:1")
            .handshake(move |conn: Ch, _| {
                let seen = seen.clone();
                async move {
                    let hello = conn.read().await?;
                    *seen.lock().unwrap() = Some(hello.text().to_string());
                    conn.request(msg("auth secret")).await?;
                    Ok(Handshake::Ready)
                }
            }),
    );
    let reply = within(10, "call after greeting", ch.request(msg("get")))
        .await
        .unwrap_or_else(|e| panic!("the call failed: {e:?}"));
    assert_eq!(reply.text(), "a:1|get");
    assert_eq!(greeting.lock().unwrap().as_deref(), Some("hello from a:1"));
    assert_eq!(texts(&servers.log()[0].1), ["auth secret", "get"]);
}

#[tokio::test(start_paused = true)]
async fn handshake_reads_a_greeting_order() {
    greeting_case(Mode::Order, false).await;
}

#[tokio::test(start_paused = true)]
async fn handshake_reads_a_greeting_session() {
    greeting_case(Mode::Session, false).await;
}

#[tokio::test(start_paused = true)]
async fn handshake_reads_a_greeting_already_buffered_order() {
    greeting_case(Mode::Order, true).await;
}

#[tokio::test(start_paused = true)]
async fn handshake_reads_a_greeting_already_buffered_session() {
    greeting_case(Mode::Session, true).await;
}

/// A failed handshake (wrong password) fails that host; the next one is tried.
#[tokio::test(start_paused = true)]
async fn failed_handshake_tries_the_next_host() {
    let servers = Servers::default();
    let net = servers.net();
    let runs = Arc::new(AtomicUsize::new(0));
    let hook_runs = runs.clone();
    // a:1 knows another password than b:2.
    let ch = net.channel(
        Mode::Order,
        Channel::builder().host("a:1").backup("b:2").handshake(
            move |conn: Ch, endpoint: Endpoint| {
                hook_runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    let password = if endpoint.port() == 1 {
                        "wrong"
                    } else {
                        "secret"
                    };
                    conn.request(msg(format!("auth {password}"))).await?;
                    Ok(Handshake::Ready)
                }
            },
        ),
    );
    let reply = within(10, "failover", ch.request(msg("x")))
        .await
        .expect("b:2");
    assert_eq!(reply.text(), "b:2|x");
    assert_eq!(net.tried(), ["a:1", "b:2"]);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let log = servers.log();
    assert_eq!(
        texts(&log[0].1),
        ["auth wrong"],
        "a user frame reached the host that refused"
    );
    assert_eq!(texts(&log[1].1), ["auth secret", "x"]);
}

/// Every host refuses the password: the calls fail `Kind::ConnectFailed`, not sent, and the
/// `ConnectError` says the handshake failed and why.
#[tokio::test(start_paused = true)]
async fn failed_handshake_on_every_host_names_the_cause() {
    let servers = Servers::default();
    let net = servers.net();
    let runs = Arc::new(AtomicUsize::new(0));
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .backup("b:2")
            .handshake(auth("wrong", runs.clone())),
    );
    let err = within(10, "all refuse", ch.request(msg("x")))
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
    assert!(err.is_not_sent());
    let connect = connect_error(&err);
    let text = connect.to_string();
    assert!(text.contains("a:1") && text.contains("b:2"), "{text}");
    assert!(
        text.contains("handshake failed") && text.contains("denied"),
        "{text}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// `Handshake::Redirect`: the connection is dropped, the redirect target becomes the
/// current host, and the channel ends up connected to it.
#[tokio::test(start_paused = true)]
async fn redirect_connects_to_the_named_host() {
    let servers = Servers::default();
    let net = servers.net();
    let ch = net.channel(
        Mode::Order,
        Channel::builder().host("a:1").backup("b:2").handshake(
            |conn: Ch, endpoint: Endpoint| async move {
                conn.request(msg("auth secret")).await?;
                if endpoint.to_string() == "a:1" {
                    return Ok(Handshake::Redirect(Endpoint::new("c", 3)));
                }
                Ok(Handshake::Ready)
            },
        ),
    );
    let reply = within(10, "redirect", ch.request(msg("x")))
        .await
        .expect("c:3");
    assert_eq!(reply.text(), "c:3|x");
    assert_eq!(net.tried(), ["a:1", "c:3"]);

    // The redirect target is now the current host: the next pass starts there.
    within(10, "bye", ch.request(msg("bye")))
        .await
        .expect("bye");
    wait_state(&ch, State::Idle).await;
    let reply = within(10, "reconnect", ch.request(msg("y")))
        .await
        .expect("c:3 again");
    assert_eq!(reply.text(), "c:3|y");
    assert_eq!(net.tried(), ["a:1", "c:3", "c:3"]);
}

/// A redirect loop (every host redirects to itself) is a failure, not a hang.
#[tokio::test(start_paused = true)]
async fn redirect_loop_fails_the_pass() {
    let servers = Servers::default();
    let net = servers.net();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .handshake(
                |_conn: Ch, endpoint: Endpoint| async move { Ok(Handshake::Redirect(endpoint)) },
            ),
    );
    let err = within(10, "redirect loop", ch.request(msg("x")))
        .await
        .expect_err("loop");
    assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
    assert!(err.is_not_sent());
    assert!(
        net.connects() <= 20,
        "{} connects for a redirect loop",
        net.connects()
    );
}

/// The hook replaces the backups (`conn.change_backups`): later passes use the new list.
#[tokio::test(start_paused = true)]
async fn handshake_replaces_the_backups() {
    let servers = Servers::default();
    let net = servers.net();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .backup("b:2")
            .handshake(|conn: Ch, _endpoint| async move {
                conn.request(msg("auth secret")).await?;
                conn.change_backups(["c:3"])?;
                Ok(Handshake::Ready)
            }),
    );
    assert_eq!(ch.request(msg("x")).await.expect("a:1").text(), "a:1|x");
    within(10, "bye", ch.request(msg("bye")))
        .await
        .expect("bye");
    wait_state(&ch, State::Idle).await;
    net.down("a:1", true);
    let reply = within(10, "failover", ch.request(msg("y")))
        .await
        .expect("c:3");
    assert_eq!(reply.text(), "c:3|y");
    assert_eq!(net.tried(), ["a:1", "a:1", "c:3"]);
    assert_eq!(net.count("b:2"), 0, "the replaced backup was tried");
}

/// The server never answers the auth: the handshake timeout fails the host and the next
/// one is tried.
#[tokio::test(start_paused = true)]
async fn handshake_timeout_tries_the_next_host() {
    let servers = Servers::default();
    servers.behave("a:1", Behave::Mute);
    let net = servers.net();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .backup("b:2")
            .handshake_timeout(Duration::from_secs(2))
            .handshake(auth("secret", Arc::default())),
    );
    let start = Instant::now();
    let reply = within(10, "timeout then b:2", ch.request(msg("x")))
        .await
        .expect("b:2");
    let took = Instant::now() - start;
    assert_eq!(reply.text(), "b:2|x");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(net.tried(), ["a:1", "b:2"]);
    assert_eq!(texts(&servers.log()[0].1), ["auth secret"]);
}

/// 50 user calls launched before the first connect (and 50 more before a reconnect):
/// on every connection the handshake's frames come first, and only once.
async fn handshake_first_case(mode: Mode) {
    let servers = Servers::default();
    let net = servers.net();
    let ch = net.channel(
        mode,
        Channel::builder()
            .host("a:1")
            .handshake(|conn: Ch, _| async move {
                conn.request(msg("auth secret")).await?;
                // Leave user calls every chance to slip in between.
                tokio::time::sleep(Duration::from_millis(10)).await;
                tokio::task::yield_now().await;
                conn.request(msg("select 2")).await?;
                Ok(Handshake::Ready)
            }),
    );
    for round in 0..2 {
        let calls: Vec<_> = (0..50)
            .map(|i| spawn_request(&ch, format!("r{round}u{i}")))
            .collect();
        for (i, h) in calls.into_iter().enumerate() {
            let reply = joined(h).await.unwrap_or_else(|e| panic!("call {i}: {e}"));
            assert_eq!(reply.text(), format!("a:1|r{round}u{i}"));
        }
        within(10, "bye", ch.request(msg("bye")))
            .await
            .expect("bye");
        wait_state(&ch, State::Idle).await;
    }
    let log = servers.log();
    assert_eq!(log.len(), 2, "one connection per round");
    for (endpoint, frames) in &log {
        assert_eq!(endpoint, "a:1");
        assert_eq!(
            texts(&frames[..2]),
            ["auth secret", "select 2"],
            "a user frame came before the handshake's: {frames:?}"
        );
        let handshake_frames = frames
            .iter()
            .filter(|f| *f == "auth secret" || *f == "select 2");
        assert_eq!(handshake_frames.count(), 2, "{frames:?}");
        assert_eq!(frames.len(), 2 + 50 + 1, "{frames:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn no_user_frame_before_the_handshake_order() {
    handshake_first_case(Mode::Order).await;
}

#[tokio::test(start_paused = true)]
async fn no_user_frame_before_the_handshake_session() {
    handshake_first_case(Mode::Session).await;
}

/// The server hangs up after reading the auth: no deadlock; the next host is tried.
#[tokio::test(start_paused = true)]
async fn disconnect_during_handshake_tries_the_next_host() {
    let servers = Servers::default();
    servers.behave("a:1", Behave::Hangup);
    let net = servers.net();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .backup("b:2")
            .handshake(auth("secret", Arc::default())),
    );
    let reply = within(10, "hang-up then b:2", ch.request(msg("x")))
        .await
        .expect("b:2");
    assert_eq!(reply.text(), "b:2|x");
    assert_eq!(net.tried(), ["a:1", "b:2"]);
}

/// The only host hangs up during the handshake: the call fails (not sent) within the
/// bound, then the channel backs off: calls fail fast without a new attempt.
#[tokio::test(start_paused = true)]
async fn disconnect_during_handshake_on_the_only_host_backs_off() {
    let servers = Servers::default();
    servers.behave("a:1", Behave::Hangup);
    let net = servers.net();
    let runs = Arc::new(AtomicUsize::new(0));
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .backoff(Backoff::exponential(
                Duration::from_secs(5),
                Duration::from_secs(5),
            ))
            .handshake(auth("secret", runs.clone())),
    );
    let err = within(10, "hang-up", ch.request(msg("x")))
        .await
        .expect_err("hung up");
    assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
    assert!(err.is_not_sent());
    assert_eq!(*ch.state().borrow(), State::BackingOff);
    let err = within(1, "fail fast", ch.request(msg("y")))
        .await
        .expect_err("backing off");
    assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
    assert_eq!((net.connects(), runs.load(Ordering::SeqCst)), (1, 1));
}

/// A wrong password under `Reconnect::Persistent` and exponential backoff (1 s to 10 s):
/// over 60 s the handshake runs a bounded number of times, at least 1 s apart: no hot
/// loop.
#[tokio::test(start_paused = true)]
async fn wrong_credentials_back_off() {
    let servers = Servers::default();
    let net = servers.net();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let at = attempts.clone();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(10),
            ))
            .handshake(move |conn: Ch, _| {
                at.lock().unwrap().push(Instant::now());
                async move {
                    conn.request(msg("auth wrong")).await?;
                    Ok(Handshake::Ready)
                }
            }),
    );
    let start = Instant::now();
    let err = within(10, "connect", ch.connect())
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
    tokio::time::sleep_until(start + Duration::from_secs(60)).await;
    let attempts = attempts.lock().unwrap().clone();
    let n = attempts.len();
    // At most 1, 2, 4, 8, 10, 10, ... s apart: at least 9 runs by t = 60 s. At least 1 s
    // apart: 61 at the very most; with the jitter drawn uniformly from [1 s, cap], 25
    // or more would take 20 waits averaging under 3 s where they average over 5 s
    // (about 5 standard deviations out).
    assert!((9..25).contains(&n), "{n} handshakes in 60 s");
    for pair in attempts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_secs(1),
            "handshakes {gap:?} apart: {attempts:?}"
        );
        assert!(
            gap <= Duration::from_millis(10_100),
            "handshakes {gap:?} apart"
        );
    }
    assert_eq!(net.connects(), n, "one connection per handshake");
}
