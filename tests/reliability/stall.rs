//! Silent and slow peers (scenarios 13, 22-24): the stall timeout and the idle ping find a
//! silent peer, latency below the timeout causes no reconnect, head-of-line blocking.

use std::time::Duration;

use futures::future::join_all;
use socketchannel::{Config, ConnectionErrorKind, Reconnect};
use tokio::time::Instant;

use crate::common::{STEP, assert_mx, builder, finish, ms, spawn, whole};
use crate::scripted::Scripted;
use crate::support::channel::{Mode as Md, msg};
use crate::support::codec::Msg;
use crate::support::proxy::{Dir, Fault, Proxy};
use crate::support::server::{Behaviour, TestServer};
use crate::support::{eventually, timeout};

use ConnectionErrorKind::Stalled;

/// 13, 22. The server goes silent (the proxy holds its replies, the connection stays
/// up): the stall timeout closes the connection within its bound, the calls in flight
/// fail *may have executed* (`Stalled`), and (`Reconnect::Persistent`) the channel
/// reconnects; once the path heals calls succeed.
async fn stall_case(md: Md) {
    let server = TestServer::start(Behaviour::echo()).await;
    let proxy = Proxy::start(server.addr(), 13).await;
    let bld = builder(proxy.addr())
        .reconnect(Reconnect::Persistent)
        .config(Config::default().stall_timeout(Some(ms(300))));
    let (ch, task) = spawn(md, bld);
    assert_eq!(
        timeout(STEP, ch.request(msg("warm"))).await.unwrap().text(),
        "warm"
    );

    proxy.set(Dir::Down, Fault::Stall);
    let t = Instant::now();
    let outcomes = timeout(
        STEP,
        join_all((0..3).map(|i| ch.request(msg(format!("s{i}"))))),
    )
    .await;
    let took = t.elapsed();
    assert!(
        took >= ms(290) && took < ms(3000),
        "detected after {took:?}"
    );
    for outcome in outcomes {
        assert_mx(&outcome.expect_err("stalled"), &[Stalled]);
    }
    eventually(STEP, "reconnected", || proxy.stats().accepted() >= 2).await;
    proxy.heal();
    assert_eq!(
        timeout(STEP, ch.request(msg("after")))
            .await
            .unwrap()
            .text(),
        "after"
    );
    assert!(ch.counters().reconnects >= 1);
    finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_s22_silent_server_stall_timeout_fails_in_flight_and_reconnects_order() {
    whole(stall_case(Md::Order)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_silent_server_stall_timeout_fails_in_flight_and_reconnects_session() {
    whole(stall_case(Md::Session)).await;
}

/// Scenario 22: An idle connection whose peer goes silent is found by the idle ping and the
/// stall timeout, without any user call, and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_idle_ping_finds_a_silent_peer() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let proxy = Proxy::start(server.addr(), 22).await;
        let bld = builder(proxy.addr())
            .reconnect(Reconnect::Persistent)
            .idle_ping(ms(100), || msg("ping"))
            .config(Config::default().stall_timeout(Some(ms(300))))
            .eager();
        let (ch, task) = spawn(Md::Order, bld);
        eventually(STEP, "pinged", || {
            server.stats().bodies().iter().any(|b| b == "ping")
        })
        .await;
        proxy.set(Dir::Down, Fault::Stall);
        let t = Instant::now();
        eventually(STEP, "the silent peer was replaced", || {
            proxy.stats().accepted() >= 2
        })
        .await;
        let took = t.elapsed();
        assert!(took < ms(2000), "took {took:?}");
        proxy.heal();
        assert_eq!(
            timeout(STEP, ch.request(msg("user"))).await.unwrap().text(),
            "user"
        );
        finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
    })
    .await;
}

/// Scenario 23: 20 to 60 ms of latency each way (seeded jitter), below a 1 s stall timeout,
/// with idle pings between bursts: no spurious reconnect, every call answered right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s23_latency_below_the_timeout_causes_no_reconnect() {
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let proxy = Proxy::start(server.addr(), 23).await;
        proxy.set_both(Fault::Jitter(ms(20), ms(60)));
        let bld = builder(proxy.addr())
            .reconnect(Reconnect::Persistent)
            .idle_ping(ms(100), || msg("ping"))
            .config(Config::default().stall_timeout(Some(ms(1000))));
        let (ch, task) = spawn(Md::Order, bld);
        for round in 0..6 {
            let calls = (0..16).map(|i| {
                let body = format!("{round}:{i}");
                let ch = &ch;
                async move {
                    let reply = timeout(STEP, ch.request(msg(&*body))).await.unwrap();
                    assert_eq!(reply.text(), body);
                }
            });
            join_all(calls).await;
            tokio::time::sleep(ms(250)).await;
        }
        assert_eq!(ch.counters().reconnects, 0);
        assert_eq!(proxy.stats().accepted(), 1);
        assert!(server.stats().bodies().iter().any(|b| b == "ping"));
        finish(ch, task, &[server.stats()], &[proxy.stats()]).await;
    })
    .await;
}

fn slow_head(m: &Msg) -> Vec<(Duration, Msg)> {
    let delay = if m.text().starts_with("slow") {
        ms(800)
    } else {
        Duration::ZERO
    };
    vec![(delay, m.clone())]
}

/// Scenario 24: A slow reply (800 ms) at the head: in order mode (a pipelining server) the
/// calls behind it wait for it and every reply stays in order; in session mode (a
/// multiplexing server) the fast calls complete while the slow one is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s24_head_of_line_order_waits_session_does_not() {
    whole(async {
        for md in [Md::Order, Md::Session] {
            let server = Scripted::start(slow_head, md == Md::Order).await;
            let (ch, task) = spawn(md, builder(server.addr));
            // Connected first, so the clock measures only the replies.
            assert_eq!(
                timeout(STEP, ch.request(msg("warm"))).await.unwrap().text(),
                "warm"
            );
            let t = Instant::now();
            let calls = ["slow A", "B", "C"].into_iter().map(|body| {
                let ch = &ch;
                async move {
                    let reply = timeout(STEP, ch.request(msg(body))).await.unwrap();
                    assert_eq!(reply.text(), body);
                    t.elapsed()
                }
            });
            let took = join_all(calls).await;
            let (a, b, c) = (took[0], took[1], took[2]);
            assert!(a >= ms(790), "{md:?}: slow A took {a:?}");
            match md {
                Md::Order => assert!(b >= ms(790) && c >= ms(790), "{md:?}: {b:?} {c:?}"),
                Md::Session => assert!(b < ms(500) && c < ms(500), "{md:?}: {b:?} {c:?}"),
            }
            assert_eq!(server.frames(), 4);
            finish(ch, task, &[&server], &[]).await;
        }
    })
    .await;
}
