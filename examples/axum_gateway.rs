//! An axum HTTP service in front of Redis: every handler calls Redis through one shared
//! `Channel` held in the app state, so all concurrent HTTP requests are pipelined over
//! a single Redis connection (`GET /kv/{key}` reads a key, `PUT /kv/{key}` stores the
//! request body).
//!
//! It starts its own `redis-server` child on a free 127.0.0.1 port (so `redis-server`
//! must be installed: `apt-get install redis-server`), serves the gateway on 127.0.0.1,
//! drives it with a few real HTTP requests and exits. Run it with
//! `cargo run --example axum_gateway`; add `-- --serve` to keep serving on
//! 127.0.0.1:3000 for `curl` until Ctrl-C.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::gateway;
use socketchannel::BoxError;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let serve = std::env::args().any(|a| a == "--serve");

    let redis_server = gateway::RedisServer::start()
        .await
        .map_err(|e| format!("this example needs a local redis-server: {e}"))?;
    println!("redis-server running on {}", redis_server.addr);

    let redis = gateway::connect(redis_server.addr)?;
    let port = if serve { 3000 } else { 0 };
    let listener = gateway::listen(([127, 0, 0, 1], port).into())?;
    let addr = listener.local_addr()?;
    let app = gateway::app(redis.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("gateway listening on http://{addr}");

    if serve {
        println!("try:\n  curl -X PUT --data 'hello' http://{addr}/kv/greeting");
        println!("  curl http://{addr}/kv/greeting\nCtrl-C to stop");
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }

    let (status, _) = gateway::http(addr, "PUT", "/kv/greeting", b"hello from axum").await?;
    println!("PUT /kv/greeting -> {status}");
    let (status, body) = gateway::http(addr, "GET", "/kv/greeting", b"").await?;
    println!(
        "GET /kv/greeting -> {status} {:?}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = gateway::http(addr, "GET", "/kv/missing", b"").await?;
    println!("GET /kv/missing  -> {status}");

    let n = 100;
    let started = Instant::now();
    let puts = (0..n).map(|i| {
        let body = format!("value {i}");
        async move { gateway::http(addr, "PUT", &format!("/kv/k{i}"), body.as_bytes()).await }
    });
    let statuses = futures::future::try_join_all(puts).await?;
    let gets = (0..n).map(|i| async move {
        let (status, body) = gateway::http(addr, "GET", &format!("/kv/k{i}"), b"").await?;
        Ok::<_, std::io::Error>(status == 200 && body == format!("value {i}").as_bytes())
    });
    let right = futures::future::try_join_all(gets).await?;
    println!(
        "{n} concurrent PUTs ({} answered 204), then {n} concurrent GETs \
         ({} returned their own value), in {} ms",
        statuses.iter().filter(|(s, _)| *s == 204).count(),
        right.iter().filter(|ok| **ok).count(),
        started.elapsed().as_millis()
    );
    let counters = redis.counters();
    println!(
        "all over one Redis connection: {} commands sent, {} reconnects",
        counters.sent, counters.reconnects
    );
    server.abort();
    Ok(())
}
