//! socketchannel against a real memcached, in session mode (multiplexing): the binary
//! protocol's 32-bit `opaque` field carries the session id.
//!
//! It starts its own `memcached` on a free 127.0.0.1 port and kills it when done, then
//! shows: 10,000 concurrent get/set callers on one connection, a miss and an error
//! status that fail only their own calls, and a multi-packet reply (`STAT`). Then the
//! text protocol on the same server, in order mode (pipelining): a value holding
//! `"\r\nEND\r\n"`, a multi-key `get`, a `noreply` set sent fire-and-forget.
//!
//! The codecs are in `examples/common/memcached.rs` (binary, with the `Sessions`) and
//! `examples/common/memcached_text.rs` (text), shared with `tests/memcached.rs` and
//! `tests/memcached_text.rs`.
//!
//! Run it with `cargo run --example memcached` (`memcached` must be on `PATH`).

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::memcached::{Binary, BinaryCodec, Packet, start_server};
use common::memcached_text::{Reply as TextReply, Request, Text, TextCodec};
use socketchannel::{BoxError, Call, Channel};
use tokio::task::JoinSet;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = start_server().await?;
    println!(
        "memcached started on {} (pid {})\n",
        server.addr(),
        server.pid().unwrap_or_default()
    );
    let channel: Channel<Packet, Packet> = Channel::builder()
        .host(server.addr())
        .session(BinaryCodec::default(), Binary)?;

    let version = channel.request(Packet::version()).await?;
    println!(
        "VERSION -> {} (reply opaque: session {})",
        String::from_utf8_lossy(&version.value),
        version.opaque
    );

    println!("\n1. 10,000 concurrent callers, each a SET then a GET, on one connection");
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (channel, peak) = (channel.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(channel.counters().in_flight, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let started = Instant::now();
    let mut callers = JoinSet::new();
    for i in 0..10_000u32 {
        let channel = channel.clone();
        callers.spawn(async move {
            let (key, value) = (format!("key:{i}"), format!("value {i}"));
            channel.request(Packet::set(&key, &value, i)).await?;
            let got = channel.request(Packet::get(&key)).await?;
            if got.value != value.as_bytes() || got.flags() != Some(i) {
                return Err::<(), BoxError>(format!("GET {key}: {got:?}").into());
            }
            Ok(())
        });
    }
    while let Some(done) = callers.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    sampler.abort();
    println!(
        "   20000 calls in {:.0} ms ({:.0} calls/s), up to {} in flight at once, all checked",
        elapsed.as_secs_f64() * 1e3,
        20000.0 / elapsed.as_secs_f64(),
        peak.load(Ordering::Relaxed)
    );

    println!("\n2. A miss fails only its own call");
    let (miss, hit) = tokio::join!(
        channel.request(Packet::get("no-such-key")),
        channel.request(Packet::get("key:42")),
    );
    if let Err(e) = miss {
        println!("   GET no-such-key -> {e}");
    }
    println!(
        "   GET key:42, sent alongside -> {:?}",
        String::from_utf8_lossy(&hit?.value)
    );

    println!("\n3. An error status fails only its own call");
    if let Err(e) = channel.request(Packet::incr("key:42", 1, 0)).await {
        println!("   INCR key:42 (not a number) -> {e}");
    }
    let counter = channel.request(Packet::incr("hits", 1, 100)).await?;
    println!("   INCR hits -> {:?}", counter.counter());

    println!("\n4. A session id of the caller's choosing, and a multi-packet reply");
    let noop = channel
        .request(Call::new(Packet::noop()).id(4242u32))
        .await?;
    println!("   NOOP with session 4242 -> reply opaque {}", noop.opaque);
    let stats = channel.request_until_final(Packet::stat()).await?;
    let stat = |name: &str| {
        stats
            .iter()
            .find(|p| p.key == name.as_bytes())
            .map(|p| String::from_utf8_lossy(&p.value).into_owned())
            .unwrap_or_default()
    };
    println!(
        "   STAT -> {} packets; total_connections {}, cmd_get {}, cmd_set {}",
        stats.len(),
        stat("total_connections"),
        stat("cmd_get"),
        stat("cmd_set")
    );

    println!("\n5. The text protocol on the same server, in order mode");
    let text: Channel<Request, TextReply> = Channel::builder()
        .host(server.addr())
        .order(TextCodec::default(), Text)?;
    text.request(Request::set("tricky", 0, "a\r\nEND\r\nb")?)
        .await?;
    // Fire-and-forget: memcached sends nothing back for `noreply`.
    text.send(Request::set("quiet", 0, "shh")?.noreply())
        .await?;
    let reply = text
        .request(Request::get(["tricky", "missing", "quiet"])?)
        .await?;
    println!("   get tricky missing quiet -> {reply:?}");
    if let Err(e) = text.request(Request::incr("tricky", 1)?).await {
        println!("   incr tricky (not a number) -> {e}");
    }

    println!("\ndone; stopping memcached");
    Ok(())
}
