//! Handshakes (scenarios 7-10): rejected, never answered, first on every connection,
//! and a close between the handshake and the first request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::join_all;
use socketchannel::{Backoff, Config, ConnectionErrorKind, Handshake, Kind, Reconnect};
use tokio::time::Instant;

use crate::common::{STEP, assert_lost, assert_ns, builder, finish, ms, spawn, whole};
use crate::support::channel::{Ch, Mode as Md, connect_error, msg};
use crate::support::proxy::Proxy;
use crate::support::server::{Behaviour, TestServer};
use crate::support::{eventually, timeout};

use ConnectionErrorKind::{Eof, Read};

/// Scenario 7: The server rejects the handshake (a wrong password): the queued calls fail
/// promptly, *not sent*, with the handshake's failure as the cause; no user request is ever
/// written; and under `Reconnect::Persistent` the retries are paced by the backoff (no hot
/// loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_rejected_handshake_fails_queued_calls_without_a_hot_loop() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let hook_runs = runs.clone();
        let bld = builder(server.addr())
            .backoff(Backoff::exponential(ms(100), ms(400)))
            .handshake(move |conn: Ch, _| {
                hook_runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    conn.request(msg("err wrong password")).await?;
                    Ok(Handshake::Ready)
                }
            });
        let (ch, task) = spawn(Md::Order, bld);
        let t = Instant::now();
        let outcomes = timeout(
            STEP,
            join_all((0..5).map(|i| ch.request(msg(format!("user {i}"))))),
        )
        .await;
        assert!(t.elapsed() < ms(1000), "prompt: {:?}", t.elapsed());
        for outcome in outcomes {
            let err = outcome.expect_err("the handshake failed");
            assert_ns(&err, Kind::ConnectFailed);
            let text = connect_error(&err).to_string();
            assert!(
                text.contains("handshake failed") && text.contains("wrong password"),
                "{text}"
            );
        }
        // Backing off: the next call fails fast, without a new attempt.
        let err = timeout(STEP, ch.request(msg("soon")))
            .await
            .expect_err("backing off");
        assert_ns(&err, Kind::ConnectFailed);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(
            server.stats().bodies().iter().all(|b| b.starts_with("err")),
            "a user request was written: {:?}",
            server.stats().bodies()
        );
        finish(ch, task, &[server.stats()], &[]).await;

        // Persistent: over 1.2 s with a 100-400 ms backoff, a bounded number of tries.
        let server = TestServer::start(Behaviour::echo()).await;
        let bld = builder(server.addr())
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(ms(100), ms(400)))
            .eager()
            .handshake(|conn: Ch, _| async move {
                conn.request(msg("err wrong password")).await?;
                Ok(Handshake::Ready)
            });
        let (ch, task) = spawn(Md::Order, bld);
        tokio::time::sleep(ms(1200)).await;
        let tries = server.stats().accepted();
        assert!((2..=13).contains(&tries), "{tries} handshakes in 1.2 s");
        finish(ch, task, &[server.stats()], &[]).await;
    })
    .await;
}

/// Scenario 8: The first host never answers the handshake: the handshake timeout gives up
/// on it (its connection is closed, not leaked) and the backup serves the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_unanswered_handshake_times_out_and_the_next_host_serves() {
    whole(async {
        let silent = TestServer::start(Behaviour::silent()).await;
        let good = TestServer::start(Behaviour::echo()).await;
        let bld = builder(silent.addr())
            .backup(good.addr().to_string())
            .handshake_timeout(ms(300))
            .handshake(|conn: Ch, _| async move {
                conn.request(msg("auth")).await?;
                Ok(Handshake::Ready)
            });
        let (ch, task) = spawn(Md::Session, bld);
        let t = Instant::now();
        assert_eq!(
            timeout(STEP, ch.request(msg("user"))).await.unwrap().text(),
            "user"
        );
        assert!(t.elapsed() >= ms(290), "{:?}", t.elapsed());
        assert_eq!(silent.stats().bodies(), ["auth"]);
        assert_eq!(good.stats().bodies(), ["auth", "user"]);
        eventually(STEP, "the abandoned connection is closed", || {
            silent.stats().open() == 0
        })
        .await;
        finish(ch, task, &[silent.stats(), good.stats()], &[]).await;
    })
    .await;
}

/// Scenario 9: Reconnect with a handshake while 40 user calls are queued: on every
/// connection the handshake's request is the first frame, and comes once; no user request
/// is executed twice; the calls written on the lost connection fail *may have executed*,
/// the others are replayed and succeed.
async fn handshake_first_case(md: Md) {
    let server = TestServer::start_with(|i| match i {
        0 => Behaviour::echo().close_after(6),
        _ => Behaviour::echo(),
    })
    .await;
    let bld = builder(server.addr())
        .config(Config::default().max_in_flight(4))
        .handshake(|conn: Ch, _| async move {
            conn.request(msg("auth")).await?;
            Ok(Handshake::Ready)
        });
    let (ch, task) = spawn(md, bld);
    let outcomes = timeout(
        STEP,
        join_all((0..40).map(|i| ch.request(msg(format!("u{i}"))))),
    )
    .await;
    let log = server.stats().log();
    let conns = server.stats().accepted();
    assert!(conns >= 2, "the connection was lost and remade");
    for c in 0..conns {
        let frames = server.stats().received_on(c);
        if frames.is_empty() {
            continue;
        }
        assert_eq!(frames[0].text(), "auth", "connection {c}: {frames:?}");
        let auths = frames.iter().filter(|m| m.text() == "auth").count();
        assert_eq!(auths, 1, "connection {c}");
    }
    let mut seen = HashMap::new();
    for (_, m) in &log {
        *seen.entry(m.text().to_string()).or_insert(0) += 1;
    }
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let body = format!("u{i}");
        let times = seen.get(&body).copied().unwrap_or(0);
        assert!(times <= 1, "{body} executed {times} times");
        match outcome {
            Ok(reply) => {
                assert_eq!(reply.text(), body);
                assert_eq!(times, 1);
            }
            Err(err) => assert_lost(&err, &[Eof, Read], times),
        }
    }
    finish(ch, task, &[server.stats()], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_no_user_frame_before_the_handshake_on_reconnect_order() {
    whole(handshake_first_case(Md::Order)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_no_user_frame_before_the_handshake_on_reconnect_session() {
    whole(handshake_first_case(Md::Session)).await;
}

/// Scenario 10: The connection closes after the handshake's request was answered and before
/// the first user request was written (the hook is still finishing): that request was never
/// sent, stays queued, and is written exactly once, on the next host's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_close_between_handshake_and_first_request_replays_it_once() {
    whole(async {
        let server = TestServer::start_with(|i| match i {
            0 => Behaviour::echo().close_after(1),
            _ => Behaviour::echo(),
        })
        .await;
        // A second address for the same server: the backup.
        let proxy = Proxy::start(server.addr(), 10).await;
        let bld = builder(server.addr())
            .backup(proxy.addr().to_string())
            .handshake(|conn: Ch, _| async move {
                conn.request(msg("auth")).await?;
                tokio::time::sleep(ms(200)).await;
                Ok(Handshake::Ready)
            });
        let (ch, task) = spawn(Md::Order, bld);
        let reply = timeout(STEP, ch.request(msg("user"))).await.unwrap();
        assert_eq!(reply.text(), "user");
        let texts = |c| -> Vec<String> {
            server
                .stats()
                .received_on(c)
                .iter()
                .map(|m| m.text().to_string())
                .collect()
        };
        assert_eq!(texts(0), ["auth"]);
        assert_eq!(texts(1), ["auth", "user"]);
        assert_eq!(server.stats().accepted(), 2);
        finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
    })
    .await;
}
