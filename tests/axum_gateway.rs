//! The axum gateway of `examples/axum_gateway.rs`, driven by real concurrent HTTP
//! requests on 127.0.0.1, in front of a real `redis-server` child.

#![cfg(feature = "tcp")]

#[path = "../examples/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::gateway;
use futures::future::try_join_all;

const N: usize = 200;

async fn start() -> (gateway::RedisServer, gateway::Redis, SocketAddr) {
    let redis_server = gateway::RedisServer::start()
        .await
        .expect("tests/axum_gateway.rs needs redis-server (.ci/run installs it)");
    let redis = gateway::connect(redis_server.addr).unwrap();
    let listener = gateway::listen(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gateway::app(redis.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (redis_server, redis, addr)
}

/// A value with bytes that a line protocol would choke on: Redis bulk strings carry them.
fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value {i}\r\nsecond line\0").into_bytes();
    v.extend(std::iter::repeat_n(b'x', i));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_then_gets_of_distinct_keys() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (_redis_server, redis, addr) = start().await;

        let puts = (0..N).map(|i| async move {
            gateway::http(addr, "PUT", &format!("/kv/key-{i}"), &value(i)).await
        });
        for (status, body) in try_join_all(puts).await.unwrap() {
            assert_eq!(status, 204, "PUT body: {}", String::from_utf8_lossy(&body));
        }

        let gets = (0..N).map(|i| async move {
            let got = gateway::http(addr, "GET", &format!("/kv/key-{i}"), b"").await;
            (i, got)
        });
        for (i, got) in futures::future::join_all(gets).await {
            let (status, body) = got.unwrap();
            assert_eq!(status, 200, "GET key-{i}");
            assert_eq!(body, value(i), "GET key-{i} got another key's value");
        }

        // One Redis connection carried every command.
        let counters = redis.counters();
        assert_eq!(counters.reconnects, 0);
        assert_eq!(counters.sent, 2 * N as u64);
        // The connection task counts in-flight calls at the end of the pass that
        // routed their replies; on two workers the last reply can be in the caller's
        // hands (and through HTTP) a moment before.
        let mut settled = counters.in_flight == 0;
        for _ in 0..200 {
            if settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            settled = redis.counters().in_flight == 0;
        }
        assert!(settled, "calls left in flight: {:?}", redis.counters());
    })
    .await
    .expect("test took over 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_is_404_and_overwrite_wins() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (_redis_server, _redis, addr) = start().await;

        let (status, _) = gateway::http(addr, "GET", "/kv/nothing-here", b"")
            .await
            .unwrap();
        assert_eq!(status, 404);

        for v in ["first", "second"] {
            let (status, _) = gateway::http(addr, "PUT", "/kv/k", v.as_bytes())
                .await
                .unwrap();
            assert_eq!(status, 204);
        }
        let (status, body) = gateway::http(addr, "GET", "/kv/k", b"").await.unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"second"[..]));
    })
    .await
    .expect("test took over 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_is_a_gateway_error_not_a_hang() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (redis_server, _redis, addr) = start().await;
        let (status, _) = gateway::http(addr, "PUT", "/kv/k", b"v").await.unwrap();
        assert_eq!(status, 204);

        drop(redis_server); // killed: the connection ends, the next connect is refused
        let (status, body) = gateway::http(addr, "GET", "/kv/k", b"").await.unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(
            status == 502 || status == 503,
            "status {status}, body {body}"
        );
        assert!(body.starts_with("redis: "), "{body}");
    })
    .await
    .expect("test took over 30 s");
}
