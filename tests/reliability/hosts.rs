//! Hosts that fail (scenarios 5, 6, 25, 26, 33): failover past refused and blackholed
//! hosts, one connect attempt for a thousand callers, the backoff's pace, a crash-looping
//! host.

use std::collections::HashSet;
use std::io;
use std::time::Duration;

use socketchannel::{Backoff, ConnectionErrorKind, Handshake, Kind, Order, Reconnect, State};
use tokio::time::Instant;

use crate::common::{
    STEP, assert_mx, assert_ns, builder, finish, joined, ms, spawn, spawn_with, whole,
};
use crate::recording::Recording;
use crate::support::channel::{Ch, Mode as Md, connect_error, msg, spawn_request};
use crate::support::codec::TestProto;
use crate::support::proxy::{Accept, Blackhole, Proxy};
use crate::support::server::{Behaviour, Gate, TestServer};
use crate::support::{eventually, refused_addr, timeout};

use ConnectionErrorKind::{Eof, Read};

/// Scenario 5: Primary and first backup refuse connections: the backups are tried in order and
/// the call succeeds on the second backup. With every host refusing, the call fails
/// *not sent* (`Kind::ConnectFailed`) quickly, and the error names each host with its own
/// failure, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_refused_primary_fails_over_to_backups_in_order() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let (a, b) = (refused_addr().await, refused_addr().await);
        let (rec, attempts) = Recording::new();
        let bld = builder(a)
            .backup(b.to_string())
            .backup(server.addr().to_string());
        let (ch, task) = spawn_with(bld, rec, Order::new(TestProto));
        assert_eq!(
            timeout(STEP, ch.request(msg("hi"))).await.unwrap().text(),
            "hi"
        );
        let want = [a.to_string(), b.to_string(), server.addr().to_string()];
        assert_eq!(attempts.hosts(), want);
        assert_eq!(
            timeout(STEP, ch.request(msg("again")))
                .await
                .unwrap()
                .text(),
            "again"
        );
        assert_eq!(attempts.count(), 3, "no new attempt while connected");
        finish(ch, task, &[server.stats()], &[]).await;

        // Every host refuses.
        let (rec, attempts) = Recording::new();
        let (ch, task) = spawn_with(builder(a).backup(b.to_string()), rec, Order::new(TestProto));
        let t = Instant::now();
        let err = timeout(STEP, ch.request(msg("nobody")))
            .await
            .expect_err("every host refuses");
        assert!(t.elapsed() < ms(1000), "took {:?}", t.elapsed());
        assert_ns(&err, Kind::ConnectFailed);
        let failures: Vec<(String, io::ErrorKind)> = connect_error(&err)
            .failures()
            .map(|(e, why)| {
                let io = why.downcast_ref::<io::Error>().expect("an io::Error");
                (e.to_string(), io.kind())
            })
            .collect();
        let refused = io::ErrorKind::ConnectionRefused;
        assert_eq!(
            failures,
            [(a.to_string(), refused), (b.to_string(), refused)]
        );
        assert_eq!(attempts.count(), 2);
        finish(ch, task, &[], &[]).await;
    })
    .await;
}

/// Scenario 6: A blackholed primary (its connects never complete): the connect timeout
/// gives up on it and the backup is tried. With only blackholed hosts, the call fails *not
/// sent* after the timeout, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_blackholed_connect_times_out_and_the_backup_is_tried() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let hole = Blackhole::start().await;
        let (rec, attempts) = Recording::new();
        let bld = builder(hole.addr())
            .backup(server.addr().to_string())
            .connect_timeout(ms(300));
        let (ch, task) = spawn_with(bld, rec, Order::new(TestProto));
        let t = Instant::now();
        assert_eq!(
            timeout(STEP, ch.request(msg("hi"))).await.unwrap().text(),
            "hi"
        );
        assert!(t.elapsed() >= ms(290), "gave up early: {:?}", t.elapsed());
        assert_eq!(
            attempts.hosts(),
            [hole.addr().to_string(), server.addr().to_string()]
        );
        finish(ch, task, &[server.stats()], &[]).await;

        let (ch, task) = spawn(Md::Order, builder(hole.addr()).connect_timeout(ms(200)));
        let t = Instant::now();
        let err = timeout(STEP, ch.request(msg("nobody")))
            .await
            .expect_err("blackholed");
        assert!(t.elapsed() >= ms(190), "gave up early: {:?}", t.elapsed());
        assert_ns(&err, Kind::ConnectFailed);
        assert!(
            connect_error(&err)
                .to_string()
                .contains("connect timed out"),
            "{err}"
        );
        finish(ch, task, &[], &[]).await;
    })
    .await;
}

/// Scenario 25: 1,000 callers on a lazy channel share one connect attempt and all get their
/// reply; 1,000 callers in flight when the connection dies all fail *may have executed* and
/// the next 1,000 share one reconnect; 1,000 callers on a dead host all fail *not sent*
/// after one attempt. Never two attempts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s25_a_thousand_callers_share_one_connect_attempt() {
    whole(async {
        let gate = Gate::new();
        gate.open();
        let server = TestServer::start(Behaviour::echo()).await;
        let (rec, attempts) = Recording::new();
        let (ch, task) = spawn_with(builder(server.addr()), rec, Order::new(TestProto));
        let calls: Vec<_> = (0..1000)
            .map(|i| spawn_request(&ch, format!("a{i}")))
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(joined(call).await.unwrap().text(), format!("a{i}"));
        }
        assert_eq!(attempts.count(), 1);
        finish(ch, task, &[server.stats()], &[]).await;

        // In flight at a disconnect, then a reconnect.
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let (rec, attempts) = Recording::new();
        let (ch, task) = spawn_with(builder(server.addr()), rec, Order::new(TestProto));
        let calls: Vec<_> = (0..1000)
            .map(|i| spawn_request(&ch, format!("b{i}")))
            .collect();
        eventually(STEP, "all in flight", || server.stats().frames() == 1000).await;
        server.kill_connections();
        for call in calls {
            assert_mx(&joined(call).await.expect_err("killed"), &[Eof, Read]);
        }
        gate.open();
        let calls: Vec<_> = (0..1000)
            .map(|i| spawn_request(&ch, format!("c{i}")))
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(joined(call).await.unwrap().text(), format!("c{i}"));
        }
        assert_eq!(attempts.count(), 2, "one reconnect for 1000 callers");
        assert_eq!(attempts.peak(), 1);
        finish(ch, task, &[server.stats()], &[]).await;

        // A dead host. The backoff after the failed pass outlasts the test: callers whose
        // task runs only after the pass failed (1,000 spawned tasks take a while on a
        // loaded machine) fail fast while it lasts, as *not sent*, and make no second
        // attempt. With the 10 to 50 ms of `builder` such a late caller could find the
        // channel idle again and start a pass of its own.
        let (rec, attempts) = Recording::new();
        let dead = builder(refused_addr().await).backoff(Backoff::exponential(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ));
        let (ch, task) = spawn_with(dead, rec, Order::new(TestProto));
        let calls: Vec<_> = (0..1000)
            .map(|i| spawn_request(&ch, format!("d{i}")))
            .collect();
        for call in calls {
            assert_ns(&joined(call).await.expect_err("dead"), Kind::ConnectFailed);
        }
        assert_eq!(attempts.count(), 1);
        finish(ch, task, &[], &[]).await;
    })
    .await;
}

/// Scenario 26: Backoff over real time (the delay function's bounds and growth are property
/// tests in `src/reconnect/backoff.rs`): against a refusing host under
/// `Reconnect::Persistent`, with 20 to 160 ms of backoff, attempts are at least the minimum
/// apart, at most the maximum (plus scheduling slack), jittered, and bounded in number;
/// `max_attempts(3)` stops after three passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s26_backoff_paces_attempts_with_jitter_and_stops_at_max_attempts() {
    whole(async {
        let dead = refused_addr().await;
        let (rec, attempts) = Recording::new();
        let bld = builder(dead)
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(ms(20), ms(160)))
            .eager();
        let (ch, task) = spawn_with(bld, rec, Order::new(TestProto));
        tokio::time::sleep(ms(1500)).await;
        let times = attempts.times();
        let n = times.len();
        assert!((5..=76).contains(&n), "{n} attempts in 1.5 s");
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        for g in &gaps {
            assert!(*g >= ms(19), "a gap below the minimum: {gaps:?}");
            assert!(*g <= ms(160 + 400), "a gap far above the maximum: {gaps:?}");
        }
        let distinct: HashSet<u128> = gaps.iter().map(|g| g.as_millis()).collect();
        assert!(distinct.len() >= 3, "no jitter: {gaps:?}");
        finish(ch, task, &[], &[]).await;

        let (rec, attempts) = Recording::new();
        let bld = builder(dead)
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(ms(10), ms(20)).max_attempts(3))
            .eager();
        let (ch, task) = spawn_with(bld, rec, Order::new(TestProto));
        eventually(STEP, "gave up", || *ch.state().borrow() == State::Idle).await;
        tokio::time::sleep(ms(200)).await;
        assert_eq!(attempts.count(), 3);
        finish(ch, task, &[], &[]).await;
    })
    .await;
}

/// Scenario 33: A crash-looping primary (accepts, then closes or resets at once, before any
/// reply) with a working backup, and no handshake: the primary is retried with backoff, not
/// in a hot loop, and the calls fail over to the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s33_crash_looping_host_backs_off_and_fails_over() {
    whole(async {
        for accept in [Accept::Close, Accept::Reset] {
            let server = TestServer::start(Behaviour::echo()).await;
            let crashing = Proxy::start(server.addr(), 33).await;
            crashing.set_accept(accept);
            let bld = builder(crashing.addr())
                .backup(server.addr().to_string())
                .backoff(Backoff::exponential(ms(50), ms(200)));
            let (ch, task) = spawn(Md::Order, bld);
            let t = Instant::now();
            let mut served = false;
            while t.elapsed() < Duration::from_secs(3) {
                match timeout(STEP, ch.request(msg("hi"))).await {
                    Ok(reply) => {
                        assert_eq!(reply.text(), "hi");
                        served = true;
                        break;
                    }
                    Err(err) => assert!(err.kind() == Kind::ConnectionLost || err.is_not_sent()),
                }
                tokio::time::sleep(ms(10)).await;
            }
            let tries = crashing.stats().accepted();
            assert!(
                tries <= 3000 / 50 + 2,
                "{accept:?}: hot loop, {tries} tries"
            );
            assert!(
                served,
                "{accept:?}: no failover to the backup in 3 s ({tries} crashes)"
            );
            finish(ch, task, &[server.stats()], &[crashing.stats()]).await;
        }
    })
    .await;
}

/// 33 with a handshake: the crash is seen during the handshake, which fails that host,
/// so the backup is tried at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s33_crash_looping_host_with_a_handshake_fails_over() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let crashing = Proxy::start(server.addr(), 33).await;
        crashing.set_accept(Accept::Close);
        let bld = builder(crashing.addr())
            .backup(server.addr().to_string())
            .handshake(|conn: Ch, _| async move {
                conn.request(msg("auth")).await?;
                Ok(Handshake::Ready)
            });
        let (ch, task) = spawn(Md::Order, bld);
        assert_eq!(
            timeout(STEP, ch.request(msg("hi"))).await.unwrap().text(),
            "hi"
        );
        assert_eq!(crashing.stats().accepted(), 1);
        assert_eq!(server.stats().bodies(), ["auth", "hi"]);
        finish(ch, task, &[server.stats()], &[crashing.stats()]).await;
    })
    .await;
}
