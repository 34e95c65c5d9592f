//! Redis Sentinel: a channel that finds the master through the sentinels and follows a
//! failover, from `examples/common/sentinel.rs` (the part to copy).
//!
//! It starts a master, a replica (`--replicaof`) and three sentinels (`redis-server
//! --sentinel`, quorum 2, `down-after-milliseconds` 1000) as child processes on free
//! 127.0.0.1 ports, with their files in a temp dir, and kills them by pid when done.
//! Then 16 callers write and read back keys of their own while the master is killed:
//! the sentinels promote the replica, a watcher hears `+switch-master` and moves the
//! channel, and the callers go on. Calls fail meanwhile only with typed errors; none
//! gets another caller's reply.
//!
//! Run it with `cargo run --example sentinel` (`redis-server` must be on `PATH`).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis::{Frame, cmd, text};
use common::sentinel::{Deployment, Sentinel, Timing, role};
use socketchannel::{BoxError, Call, Channel};
use tokio::task::JoinSet;
use tokio::time::Instant;

const NAME: &str = "mymaster";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    println!("1. A master, its replica and three sentinels, each a child process");
    let timing = Timing {
        quorum: 2,
        down_after: Duration::from_secs(1),
        failover_timeout: Duration::from_secs(5),
    };
    let mut d = Deployment::start(NAME, 3, timing).await?;
    println!(
        "   master {}, replica {}, sentinels {}",
        d.master.addr(),
        d.replica.addr(),
        d.sentinel_addrs().join(" ")
    );
    println!("   waiting for the sentinels to find each other and the replica...");
    d.sentinels_acquainted(Duration::from_secs(20)).await?;
    for i in 0..d.sentinels.len() {
        d.replica_known(i, Duration::from_secs(15)).await?;
    }

    println!("\n2. A channel to the master, found through the sentinels");
    let master =
        Sentinel::new(NAME, d.sentinel_addrs())?.connect(|b| b.name("sentinel-example"))?;
    let channel = master.channel().clone();
    channel.request(cmd(["SET", "greeting", "hello"])).await?;
    println!(
        "   the handshake asked a sentinel, was redirected to {} and found ROLE master",
        show(&master.master().borrow())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while master.watching() < d.sentinels.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "   {} watchers subscribed to +switch-master",
        master.watching()
    );

    println!("\n3. 16 callers under load; the master is killed");
    let tally = Arc::new(Tally::default());
    let mut callers = JoinSet::new();
    for c in 0..16 {
        callers.spawn(caller(c, channel.clone(), tally.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    *tally.killed.lock().unwrap() = Some(killed);
    d.master.kill();
    println!("   master killed (pid gone); the sentinels wait 1 s, agree, and promote");
    let mut current = master.master();
    let new = tokio::time::timeout(
        Duration::from_secs(20),
        current.wait_for(|m| m.as_ref().is_some_and(|m| m.port() == d.replica.port())),
    )
    .await
    .map_err(|_| "the channel did not move to the replica within 20 s")??
    .clone();
    println!(
        "   +{:.2} s: the channel is on {}",
        killed.elapsed().as_secs_f64(),
        show(&new)
    );
    while tally.recovered.lock().unwrap().is_none() && killed.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tally.stop.store(true, Ordering::Relaxed);
    while let Some(done) = callers.join_next().await {
        done??;
    }
    let recovered = tally.recovered.lock().unwrap().ok_or("no call succeeded")?;
    println!(
        "   recovery: {:.0} ms from the kill to the first write on the new master",
        (recovered - killed).as_secs_f64() * 1e3
    );
    println!(
        "   {} calls ok, each read back its own value; failures: {:?}",
        tally.ok.load(Ordering::Relaxed),
        tally.failures.lock().unwrap()
    );

    println!("\n4. The new master");
    let reply = channel.request(cmd(["ROLE"])).await?;
    println!(
        "   ROLE -> {}, reached through {} switch(es) and {} reconnect(s)",
        role(&reply).unwrap_or_default(),
        master.switches(),
        channel.counters().reconnects
    );
    let greeting = channel.request(cmd(["GET", "greeting"])).await?;
    println!(
        "   GET greeting -> {} (replicated before the failover)",
        text(&greeting).unwrap_or_default()
    );
    println!("\ndone; stopping the servers");
    Ok(())
}

#[derive(Default)]
struct Tally {
    stop: AtomicBool,
    ok: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    killed: Mutex<Option<Instant>>,
    /// When the first call made after the kill succeeded.
    recovered: Mutex<Option<Instant>>,
}

/// Writes values of its own to its own key and reads each back in the same request.
async fn caller(
    c: usize,
    channel: Channel<Frame, Frame>,
    tally: Arc<Tally>,
) -> Result<(), BoxError> {
    let mut i = 0u64;
    while !tally.stop.load(Ordering::Relaxed) {
        i += 1;
        let (key, value) = (format!("key:{c}"), format!("{c}:{i}"));
        let call = Call::parts(vec![cmd(["SET", &key, &value]), cmd(["GET", &key])]);
        let started = Instant::now();
        match channel.request_n(call, 2).await {
            Ok(replies) => {
                if text(&replies[1]).as_deref() != Some(value.as_str()) {
                    return Err(format!("{key}: wrote {value}, read {:?}", replies[1]).into());
                }
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if tally.killed.lock().unwrap().is_some_and(|k| started > k) {
                    tally
                        .recovered
                        .lock()
                        .unwrap()
                        .get_or_insert(Instant::now());
                }
            }
            Err(e) => {
                let sent = if e.is_not_sent() {
                    "not sent"
                } else {
                    "may have executed"
                };
                let what = format!("{:?} ({sent})", e.kind());
                *tally.failures.lock().unwrap().entry(what).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Ok(())
}

fn show(master: &Option<socketchannel::Endpoint>) -> String {
    master.as_ref().map_or("(none)".into(), ToString::to_string)
}
