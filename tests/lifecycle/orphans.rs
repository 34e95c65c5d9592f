//! A connection that a busy server keeps full with calls it ignores (so the stall timer,
//! which measures silence, never fires) is retired once enough of them are orphans;
//! connections can also be retired by age.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Channel, Config, Endpoint, Session};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::support::channel::{Mode, abandon, joined, spawn_request};
use crate::support::codec::{Msg, TestProto16};
use crate::support::memory::{Io, Net};
use crate::{ms, serve};

/// 16-bit ids, a server that ignores one call in ten and answers the rest at once,
/// callers that give up after 50 ms: without retiring, the ignored calls' ids run out
/// and `poll_ready` waits forever (the stall timer never fires: replies keep coming).
/// With it, `poll_ready` never waits longer than one drain. `ORPHAN_CALLS` sets the
/// number of calls (default 10^6).
#[tokio::test(start_paused = true)]
async fn orphans_retire_a_connection_a_busy_server_keeps_full() {
    let calls: usize = std::env::var("ORPHAN_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let net = Net::new(|_: Endpoint, mut io: Io| async move {
        let mut seen = 0u64;
        while let Some(Ok(req)) = io.next().await {
            seen += 1;
            if !seen.is_multiple_of(10) && io.send(req).await.is_err() {
                return;
            }
        }
    });
    let drain = Duration::from_secs(1);
    let ch = Channel::builder()
        .host("busy:1")
        .drain_timeout(drain)
        .config(Config::default().max_in_flight(1 << 16).queue(4096))
        .connector(net.connector(), Session::new(TestProto16))
        .expect("valid");
    let mut svc = ServiceBuilder::new().timeout(ms(50)).service(ch.clone());
    let mut longest = Duration::ZERO;
    let mut answered = 0usize;
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..calls {
        let started = Instant::now();
        let ready = tokio::time::timeout(drain * 10, svc.ready())
            .await
            .expect("poll_ready waited ten drains")
            .expect("ready");
        longest = longest.max(started.elapsed());
        pending.push(ready.call(Msg::new(format!("{i}"))));
        while pending.len() >= 256 {
            if let Some(Ok(_)) = pending.next().await {
                answered += 1;
            }
        }
    }
    while let Some(outcome) = pending.next().await {
        answered += usize::from(outcome.is_ok());
    }
    let c = ch.counters();
    eprintln!("{calls} calls, {answered} answered, longest poll_ready {longest:?}, {c:?}");
    assert!(c.retired >= 1, "{c:?}");
    assert!(longest <= drain + ms(100), "poll_ready waited {longest:?}");
    assert!(answered >= calls * 8 / 10, "{answered} of {calls}");
}

/// `max_connection_age`: each connection is retired at that age, new calls go to a
/// fresh one, the old one finishes its calls.
#[tokio::test(start_paused = true)]
async fn connections_are_retired_at_their_maximum_age() {
    let (net, log) = serve();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .max_connection_age(Duration::from_secs(1)),
    );
    let slow = spawn_request(&ch, "slow 1500 across");
    for i in 0..35 {
        tokio::time::sleep(ms(100)).await;
        let reply = joined(spawn_request(&ch, format!("call {i}").as_str())).await;
        assert!(reply.is_ok(), "call {i}: {reply:?}");
    }
    assert_eq!(
        joined(slow).await.expect("finished on the old one").text(),
        "slow 1500 across"
    );
    let c = ch.counters();
    assert!((3..=4).contains(&c.retired), "{c:?}");
    assert_eq!(log.connections().len() as u64, c.retired + 1);
}

/// The age half of the rule: an orphan that is never answered (its caller gave up after
/// 100 ms) retires its connection once it is older than `orphan_age`, even though the
/// connection is far from full; the calls after it go to a fresh connection.
#[tokio::test(start_paused = true)]
async fn an_old_orphan_retires_its_connection() {
    let (net, log) = serve();
    let age = Duration::from_secs(8);
    let ch = net.channel(
        Mode::Session,
        Channel::builder()
            .host("a:1")
            .config(Config::default().orphan_age(Some(age))),
    );
    abandon(&ch, "mute").await;
    let started = Instant::now();
    while ch.counters().retired == 0 {
        assert!(started.elapsed() < age * 2, "still not retired");
        let reply = joined(spawn_request(&ch, "ping")).await.expect("answered");
        assert_eq!(reply.text(), "ping");
        tokio::time::sleep(ms(250)).await;
    }
    let waited = started.elapsed();
    assert!(waited >= age - ms(100), "retired after {waited:?}");
    assert_eq!(
        joined(spawn_request(&ch, "after"))
            .await
            .expect("fresh")
            .text(),
        "after"
    );
    assert_eq!(log.connections().len(), 2);
    assert_eq!(
        log.connections()[1].1.last().map(String::as_str),
        Some("after")
    );
}

/// The age clock ticks with time, not with activity: on a quiet connection (a stall
/// timer watches the orphan, so the age rule keeps no timer of its own, and the only
/// traffic is a ping every 3 s), an orphan older than a 1 s `orphan_age` retires its
/// connection at the first ping after it is old, not after one ping per quarter of
/// the age (about 15 s) as when each pass that moved counted as one tick.
#[tokio::test(start_paused = true)]
async fn an_old_orphan_on_a_quiet_connection_retires_it_on_time() {
    let (net, _log) = serve();
    let age = Duration::from_secs(1);
    let ch = net.channel(
        Mode::Session,
        Channel::builder().host("a:1").config(
            Config::default()
                .orphan_age(Some(age))
                .stall_timeout(Some(Duration::from_secs(30))),
        ),
    );
    abandon(&ch, "mute").await;
    let started = Instant::now();
    while ch.counters().retired == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "an orphan older than {age:?} is still not retired after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let reply = joined(spawn_request(&ch, "ping")).await.expect("answered");
        assert_eq!(reply.text(), "ping");
    }
}
