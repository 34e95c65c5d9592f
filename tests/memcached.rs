//! memcached's binary protocol, in session mode, against a real `memcached` process.
//!
//! The 32-bit `opaque` field is the session id. Each test starts its own `memcached` on a
//! free 127.0.0.1 port and kills it by its pid when done. The codec and the `Sessions`
//! are in `examples/common/memcached.rs`, shared with `examples/memcached.rs`.
//! `memcached` must be on `PATH` (CI's `.ci/run` installs it): without it these tests
//! fail, saying so.

#![cfg(feature = "tcp")]

#[path = "../examples/common/mod.rs"]
mod common;
mod support;

use std::error::Error as _;
use std::time::{Duration, Instant};

use common::memcached::{Binary, BinaryCodec, MemcachedError, Packet, Status, start_server};
use common::process::{Server, within};
use socketchannel::{Call, Channel, Error, Kind};
use tokio::task::JoinSet;

use support::peak::PeakInFlight;

/// The bound on a whole test.
const TEST: Duration = Duration::from_secs(40);
/// The bound on one call to a live server.
const CALL: Duration = Duration::from_secs(5);

async fn memcached() -> Server {
    start_server()
        .await
        .unwrap_or_else(|e| panic!("could not start memcached: {e}"))
}

fn channel(addr: &str) -> Channel<Packet, Packet> {
    Channel::builder()
        .host(addr)
        .session(BinaryCodec::default(), Binary)
        .expect("valid host")
}

async fn ok(channel: &Channel<Packet, Packet>, req: Packet) -> Packet {
    let what = format!("{req:?}");
    within(CALL, &what, channel.request(req))
        .await
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn status_of(err: &Error) -> Status {
    assert_eq!(err.kind(), Kind::Server, "{err}");
    assert!(err.may_have_executed());
    err.source()
        .and_then(|s| s.downcast_ref::<MemcachedError>())
        .unwrap_or_else(|| panic!("not a memcached status: {err}"))
        .status
}

/// The server's general statistics, read over `channel` (a multi-packet reply).
async fn stats(channel: &Channel<Packet, Packet>) -> Vec<(String, String)> {
    let packets = within(CALL, "STAT", channel.request_until_final(Packet::stat()))
        .await
        .expect("STAT");
    assert!(packets.last().is_some_and(|p| p.key.is_empty()));
    packets
        .iter()
        .filter(|p| !p.key.is_empty())
        .map(|p| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (text(&p.key), text(&p.value))
        })
        .collect()
}

fn stat(stats: &[(String, String)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in STAT"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_gets_and_sets_on_one_channel() {
    within(TEST, "test", async {
        const CALLERS: u32 = 10_000;
        let server = memcached().await;
        let channel = channel(&server.addr());
        let before = stats(&channel).await;

        let sampler = PeakInFlight::start(&channel);
        let started = Instant::now();
        let mut callers = JoinSet::new();
        for i in 0..CALLERS {
            let channel = channel.clone();
            callers.spawn(async move {
                let key = format!("key:{i}");
                let value = format!("value {i} {}", "v".repeat(i as usize % 100));
                let set = channel.request(Packet::set(&key, &value, i)).await?;
                assert_eq!(set.status(), Status::OK);
                let got = channel.request(Packet::get(&key)).await?;
                assert_eq!(got.value, value.as_bytes(), "{key}");
                assert_eq!(got.flags(), Some(i), "{key}");
                Ok::<_, Error>(())
            });
        }
        while let Some(done) = callers.join_next().await {
            done.expect("caller panicked").expect("call failed");
        }
        let elapsed = started.elapsed();
        sampler.stop();

        let after = stats(&channel).await;
        let calls = 2 * u64::from(CALLERS);
        assert_eq!(
            stat(&after, "cmd_set") - stat(&before, "cmd_set"),
            u64::from(CALLERS)
        );
        assert_eq!(
            stat(&after, "get_hits") - stat(&before, "get_hits"),
            u64::from(CALLERS)
        );
        // One connection all along.
        assert_eq!(
            stat(&after, "total_connections"),
            stat(&before, "total_connections")
        );
        assert_eq!(channel.counters().reconnects, 0);
        assert_eq!(channel.counters().unknown, 0);
        let peak = sampler.peak();
        assert!(peak >= 100, "only {peak} calls were ever in flight at once");
        println!(
            "{calls} calls from {CALLERS} callers over one connection in {elapsed:?} \
             ({:.0} calls/s), peak {peak} in flight",
            calls as f64 / elapsed.as_secs_f64()
        );
    })
    .await;
}

#[tokio::test]
async fn a_miss_fails_only_its_call() {
    within(TEST, "test", async {
        let server = memcached().await;
        let channel = channel(&server.addr());
        ok(&channel, Packet::set("here", "value", 7)).await;

        let (miss, hit) = tokio::join!(
            channel.request(Packet::get("not-here")),
            channel.request(Packet::get("here")),
        );
        let miss = miss.expect_err("a miss");
        assert_eq!(status_of(&miss), Status::KEY_NOT_FOUND);
        assert!(
            miss.to_string().contains("0x0001 (key not found)"),
            "{miss}"
        );
        let hit = hit.expect("a hit");
        assert_eq!(hit.value, "value".as_bytes());
        assert_eq!(hit.flags(), Some(7));

        // The next call is fine.
        assert_eq!(
            ok(&channel, Packet::get("here")).await.value,
            "value".as_bytes()
        );
        assert_eq!(channel.counters().reconnects, 0);
    })
    .await;
}

#[tokio::test]
async fn an_error_status_fails_only_its_call() {
    within(TEST, "test", async {
        let server = memcached().await;
        let channel = channel(&server.addr());
        ok(&channel, Packet::set("text", "not a number", 0)).await;
        ok(&channel, Packet::set("exists", "1", 0)).await;

        let (incr_text, add_existing, incr, add_new, delete_missing, get) = tokio::join!(
            channel.request(Packet::incr("text", 1, 0)),
            channel.request(Packet::add("exists", "2", 0)),
            channel.request(Packet::incr("counter", 5, 10)),
            channel.request(Packet::add("fresh", "3", 0)),
            channel.request(Packet::delete("never-set")),
            channel.request(Packet::get("exists")),
        );
        assert_eq!(
            status_of(&incr_text.expect_err("INCR on text")),
            Status::NON_NUMERIC
        );
        assert_eq!(
            status_of(&add_existing.expect_err("ADD on an existing key")),
            Status::KEY_EXISTS
        );
        assert_eq!(
            status_of(&delete_missing.expect_err("DELETE of a missing key")),
            Status::KEY_NOT_FOUND
        );
        // A missing counter starts at its initial value.
        assert_eq!(incr.expect("INCR").counter(), Some(10));
        assert_eq!(add_new.expect("ADD").status(), Status::OK);
        assert_eq!(get.expect("GET").value, "1".as_bytes());

        assert_eq!(
            ok(&channel, Packet::incr("counter", 5, 10)).await.counter(),
            Some(15)
        );
        assert_eq!(
            ok(&channel, Packet::get("fresh")).await.value,
            "3".as_bytes()
        );
        assert_eq!(channel.counters().reconnects, 0);
        assert_eq!(channel.counters().unknown, 0);
    })
    .await;
}

#[tokio::test]
async fn opaque_carries_the_session_id() {
    within(TEST, "test", async {
        let server = memcached().await;
        let channel = channel(&server.addr());

        // The channel stamps an id of its own into each request; memcached copies it.
        let replies = within(
            CALL,
            "NOOPs",
            futures::future::try_join_all((0..100).map(|_| channel.request(Packet::noop()))),
        )
        .await
        .expect("NOOPs");
        let mut ids: Vec<u32> = replies.iter().map(|p| p.opaque).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 100, "ids reused among calls in flight together");
        assert!(!ids.contains(&0), "id 0 is not given out");

        // A caller's own id goes on the wire as given.
        let reply = within(
            CALL,
            "NOOP",
            channel.request(Call::new(Packet::noop()).id(4242u32)),
        )
        .await
        .expect("NOOP");
        assert_eq!(reply.opaque, 4242);
        assert_eq!(channel.counters().unknown, 0);
    })
    .await;
}
