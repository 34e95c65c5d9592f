//! socketchannel against a real Redis, in order mode (pipelining).
//!
//! It starts its own `redis-server` (with a password, no persistence) on a free
//! 127.0.0.1 port and kills it when done, then shows: a handshake that runs `AUTH` and
//! `SELECT` on every connection, many callers sharing one connection, a pipeline of
//! commands sent as one request, an error reply that fails only its own call, pub/sub
//! through the push receiver across a server restart (as skynet's `redis.watch`), what
//! a wrong password looks like, and commands encoded by their callers (`Packed`).
//!
//! RESP is framed by the `redis-protocol` crate; the `Protocol` that reads it is in
//! `examples/common/redis.rs`, shared with `tests/redis.rs`.
//!
//! Run it with `cargo run --example redis` (`redis-server` must be on `PATH`).

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::redis::{Frame, Packed, PubSub, Redis, RespCodec, cmd, start_server, text};
use socketchannel::{Backoff, BoxError, Call, Channel, Handshake, Reconnect};
use tokio::task::JoinSet;

const PASSWORD: &str = "example-password";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut server = start_server(&["--requirepass", PASSWORD]).await?;
    let addr = server.addr();
    println!(
        "redis-server started on {addr} (pid {})\n",
        server.pid().unwrap_or_default()
    );

    println!("1. A handshake on every connection: AUTH, then SELECT 1");
    let channel: Channel<Frame, Frame> = Channel::builder()
        .host(&addr)
        .backoff(backoff())
        .handshake(|conn, endpoint| async move {
            conn.request(cmd(["AUTH", PASSWORD])).await?;
            conn.request(cmd(["SELECT", "1"])).await?;
            println!("   handshake with {endpoint}: authenticated, db 1");
            Ok(Handshake::Ready)
        })
        .order(RespCodec::resp2(), Redis::commands())?;
    let pong = channel.request(cmd(["PING"])).await?;
    println!("   PING -> {}", show(&pong));

    println!("\n2. 200 callers share the connection; each checks its own replies");
    let elapsed = set_and_get(&channel, Ok).await?;
    println!(
        "   20000 calls in {:.0} ms ({:.0} calls/s), {} connection(s) made",
        elapsed.as_secs_f64() * 1e3,
        20000.0 / elapsed.as_secs_f64(),
        1 + channel.counters().reconnects
    );

    println!("\n3. A pipeline: 5 commands written as one request, 5 replies");
    let pipeline = vec![
        cmd(["DEL", "n"]),
        cmd(["INCR", "n"]),
        cmd(["INCRBY", "n", "10"]),
        cmd(["RPUSH", "list", "a", "b", "c"]),
        cmd(["LRANGE", "list", "0", "-1"]),
    ];
    let replies = channel.request_n(Call::parts(pipeline), 5).await?;
    let shown: Vec<String> = replies.iter().map(show).collect();
    println!("   {}", shown.join(" | "));

    println!("\n4. An error reply fails only its own call");
    let (bad, good) = tokio::join!(
        channel.request(cmd(["NO-SUCH-COMMAND"])),
        channel.request(cmd(["GET", "n"])),
    );
    if let Err(e) = bad {
        println!("   NO-SUCH-COMMAND -> {e}");
    }
    println!("   GET n, sent alongside -> {}", show(&good?));

    println!("\n5. Pub/sub: a watcher channel whose handshake (re)subscribes");
    let watcher: Channel<Frame, Frame> = Channel::builder()
        .host(&addr)
        .reconnect(Reconnect::Persistent)
        .backoff(backoff())
        .eager()
        .handshake(|conn, _endpoint| async move {
            conn.request(cmd(["AUTH", PASSWORD])).await?;
            conn.send(cmd(["SUBSCRIBE", "news"])).await?;
            Ok(Handshake::Ready)
        })
        .order(RespCodec::resp2(), Redis::subscriber())?;
    let mut pushes = watcher.pushes().expect("the first taker gets the receiver");
    let mut next_push = async || -> Result<PubSub, BoxError> {
        let frame = tokio::time::timeout(Duration::from_secs(5), pushes.recv())
            .await?
            .ok_or("push receiver closed")?;
        PubSub::parse(&frame).ok_or_else(|| format!("not pub/sub: {frame:?}").into())
    };
    println!("   push: {:?}", next_push().await?);
    let receivers = channel.request(cmd(["PUBLISH", "news", "hello"])).await?;
    println!("   PUBLISH news hello -> {} receiver(s)", show(&receivers));
    println!("   push: {:?}", next_push().await?);

    println!("   ...the server is killed and restarted on the same port...");
    server.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.restart().await?;
    println!("   push: {:?}", next_push().await?);
    // The publisher's old connection is gone: its first call may fail, then it
    // reconnects (and its handshake runs again).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match channel
            .request(cmd(["PUBLISH", "news", "back again"]))
            .await
        {
            Ok(n) if text(&n).as_deref() == Some("1") => break,
            Ok(_) => {}
            Err(e) => println!("   PUBLISH failed ({e}); trying again"),
        }
        if Instant::now() > deadline {
            return Err("the watcher did not resubscribe".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("   push: {:?}", next_push().await?);

    println!("\n6. A wrong password fails the connect pass, naming the host and the reason");
    let wrong: Channel<Frame, Frame> = Channel::builder()
        .host(&addr)
        .backoff(backoff())
        .handshake(|conn, _endpoint| async move {
            conn.request(cmd(["AUTH", "not-the-password"])).await?;
            Ok(Handshake::Ready)
        })
        .order(RespCodec::resp2(), Redis::commands())?;
    if let Err(e) = wrong.request(cmd(["PING"])).await {
        println!("   PING -> {e}");
    }

    println!("\n7. Commands packed on the callers' tasks: the calls of section 2 again");
    // The one connection task no longer encodes: it copies bytes (see `Packed`).
    let packed: Channel<Packed, Frame> = Channel::builder()
        .host(&addr)
        .backoff(backoff())
        .handshake(|conn, _endpoint| async move {
            conn.request(Packed::new(&cmd(["AUTH", PASSWORD]))?).await?;
            conn.request(Packed::new(&cmd(["SELECT", "1"]))?).await?;
            Ok(Handshake::Ready)
        })
        .order(RespCodec::resp2(), Redis::commands())?;
    packed.connect().await?; // as section 1 did for section 2's channel, before timing
    let elapsed = set_and_get(&packed, |command| Ok(Packed::new(&command)?)).await?;
    println!(
        "   20000 calls in {:.0} ms ({:.0} calls/s)",
        elapsed.as_secs_f64() * 1e3,
        20000.0 / elapsed.as_secs_f64(),
    );

    println!("\ndone; stopping redis-server");
    Ok(())
}

/// 200 callers, each setting 50 keys of its own and reading each back: 20 000 calls.
/// `request` makes what the channel sends from a command frame. Returns the time taken.
async fn set_and_get<Req: Send + 'static>(
    channel: &Channel<Req, Frame>,
    request: fn(Frame) -> Result<Req, BoxError>,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let mut callers = JoinSet::new();
    for c in 0..200 {
        let channel = channel.clone();
        callers.spawn(async move {
            for i in 0..50 {
                let (key, value) = (format!("key:{c}:{i}"), format!("value {c} {i}"));
                channel
                    .request(request(cmd(["SET", &key, &value]))?)
                    .await?;
                let got = channel.request(request(cmd(["GET", &key]))?).await?;
                if text(&got).as_deref() != Some(value.as_str()) {
                    return Err::<(), BoxError>(format!("GET {key}: {got:?}").into());
                }
            }
            Ok(())
        });
    }
    while let Some(done) = callers.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

fn backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(50), Duration::from_secs(1))
}

/// A reply, briefly.
fn show(frame: &Frame) -> String {
    match frame {
        Frame::Array { data, .. } => {
            let items: Vec<String> = data.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        Frame::Null => "(nil)".to_string(),
        other => text(other).unwrap_or_else(|| format!("{other:?}")),
    }
}
