//! A tour of socketchannel, with its own servers: nothing outside this process is needed.
//!
//! It shows pipelined requests (order mode), out-of-order replies (session mode), a
//! handshake on every connection, the server killed and restarted while the channel
//! reconnects with backoff, failover to a backup host, a throughput figure, and a
//! graceful shutdown.
//!
//! Run it with `cargo run --release --example tour`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use socketchannel::{
    Backoff, BoxError, Channel, Handshake, Plain, Protocol, Reconnect, Session, Sessions, State,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::codec::{Decoder, Encoder, Framed, LinesCodec, LinesCodecError};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    println!("socketchannel tour\n");

    // -- Order mode: a line protocol, pipelined. ---------------------------------------
    let mut primary = LineServer::start("primary", None).await?;
    let mut backup = LineServer::start("backup", None).await?;
    let (primary_addr, backup_addr) = (primary.addr, backup.addr);

    let channel: Channel<String, String> = Channel::builder()
        .host(primary_addr.to_string())
        .backup(backup_addr.to_string())
        .reconnect(Reconnect::Persistent)
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ))
        .handshake(|conn, endpoint| async move {
            // Runs on every new connection, before any user request is written.
            let reply = conn.request("AUTH secret".to_string()).await?;
            println!("  handshake with {endpoint}: AUTH -> {reply}");
            Ok(Handshake::Ready)
        })
        .order(LinesCodec::new(), Plain)?;

    println!("1. Pipelining (order mode): 8 requests in flight at once on one connection");
    let calls = (1..=8).map(|i| channel.request(format!("ECHO request-{i}")));
    let replies = futures::future::try_join_all(calls).await?;
    println!("  replies, each to its own caller: {}", replies.join(" "));

    // Watch the connection's state from here on.
    let mut state = channel.state();
    let watcher = tokio::spawn(async move {
        let start = Instant::now();
        let mut failed_passes = 0;
        while state.changed().await.is_ok() {
            let now = *state.borrow_and_update();
            let ms = start.elapsed().as_millis();
            match now {
                // Backoff rounds update one line instead of printing one each.
                State::BackingOff => {
                    failed_passes += 1;
                    print!(
                        "\r  [{ms:>5} ms] every host down: backing off ({failed_passes} passes failed)"
                    );
                    let _ = io::Write::flush(&mut io::stdout());
                }
                State::Connecting => {}
                _ => {
                    if failed_passes > 0 {
                        println!();
                        failed_passes = 0;
                    }
                    println!("  [{ms:>5} ms] state: {now:?}");
                }
            }
        }
    });

    println!("\n2. The primary is killed: the channel fails over to the backup");
    primary.kill().await;
    match channel.request("WHO".to_string()).await {
        Ok(who) => println!("  WHO -> {who}"),
        Err(e) => println!("  the request on the dead connection fails: {e}"),
    }
    println!("  WHO -> {}", channel.request("WHO".to_string()).await?);

    println!("\n3. The backup dies too: the channel backs off until the primary is back");
    backup.kill().await;
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        LineServer::start("primary", Some(primary_addr)).await
    });
    let started = Instant::now();
    let mut failures = 0;
    let who = loop {
        match channel.request("WHO".to_string()).await {
            Ok(who) => break who,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let _primary = restart.await??;
    println!(
        "  {failures} calls failed fast while no host was up; then WHO -> {who} after {} ms",
        started.elapsed().as_millis()
    );
    println!("  reconnects so far: {}", channel.counters().reconnects);

    println!("\n4. Throughput: 256 concurrent callers on one connection");
    let figure = throughput(&channel, Duration::from_secs(2)).await?;
    println!("\r  {figure:.0} requests/s, every reply checked against its request        ");

    println!("\n5. Graceful shutdown: in-flight requests finish, new ones are refused");
    let slow = channel.request("SLEEP 200".to_string());
    let (slow, ()) = tokio::join!(slow, async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        channel.shutdown(Duration::from_secs(2)).await;
    });
    println!("  in-flight request: {}", slow?);
    let refused = channel.request("ECHO too-late".to_string()).await;
    println!(
        "  after shutdown: {}",
        refused.err().map(|e| e.to_string()).unwrap_or_default()
    );
    watcher.abort();

    // -- Session mode: replies out of order. -------------------------------------------
    println!("\n6. Session mode: the server answers out of order, ids match replies");
    let addr = start_session_server().await?;
    let sessions = Channel::new(
        Framed::new(
            tokio::net::TcpStream::connect(addr).await?,
            TaggedCodec::default(),
        ),
        Session::new(Tags),
    );
    let started = Instant::now();
    let calls = [300u64, 50, 200, 10, 100].map(|ms| {
        let sessions = sessions.clone();
        async move {
            let reply = sessions.request(Tagged::new(format!("SLEEP {ms}"))).await?;
            println!(
                "  after {:>3} ms: {}",
                started.elapsed().as_millis(),
                reply.text
            );
            Ok::<_, socketchannel::Error>(())
        }
    });
    futures::future::try_join_all(calls).await?;
    println!("\ndone");
    Ok(())
}

/// Closed-loop callers for `run_for`, each checking its reply; prints a progress line.
async fn throughput(channel: &Channel<String, String>, run_for: Duration) -> Result<f64, BoxError> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut callers = JoinSet::new();
    for caller in 0..256 {
        let channel = channel.clone();
        let done = done.clone();
        callers.spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < run_for {
                let body = format!("ECHO {caller}-{n}");
                let reply = channel.request(body.clone()).await?;
                if reply != body[5..] {
                    return Err::<(), BoxError>(format!("misrouted: {reply} for {body}").into());
                }
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let n = done.load(Ordering::Relaxed);
                print!("\r  {n} requests so far...");
                let _ = io::Write::flush(&mut io::stdout());
            }
        })
    };
    while let Some(r) = callers.join_next().await {
        r??;
    }
    progress.abort();
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// An in-process line server: `AUTH pw`, `ECHO x`, `WHO`, `SLEEP ms`.
struct LineServer {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl LineServer {
    async fn start(name: &'static str, addr: Option<SocketAddr>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into())).await?;
        let addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                // Replies go out at once (no Nagle delay), as a real server's would.
                let _ = stream.set_nodelay(true);
                conns.spawn(async move {
                    let mut lines = Framed::new(stream, LinesCodec::new());
                    while let Some(Ok(line)) = lines.next().await {
                        let (cmd, arg) = line.split_once(' ').unwrap_or((&line, ""));
                        let reply = match cmd {
                            "AUTH" if arg == "secret" => "OK".to_string(),
                            "AUTH" => "ERR wrong password".to_string(),
                            "ECHO" => arg.to_string(),
                            "WHO" => name.to_string(),
                            "SLEEP" => {
                                let ms = arg.parse().unwrap_or(0);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                format!("slept {ms} ms")
                            }
                            _ => "ERR unknown command".to_string(),
                        };
                        if lines.send(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(LineServer { addr, tasks })
    }

    /// Stops accepting and drops every connection. Returns once the accept task is gone,
    /// and with it every connection task is aborted: no request sent after this is
    /// answered. (`abort_all` alone only marks them; a connection task could still answer
    /// the next request, as the killed server.)
    async fn kill(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

// -- The session-mode protocol: "<id> <text>" lines. ------------------------------------

#[derive(Debug, Clone)]
struct Tagged {
    id: u32,
    text: String,
}

impl Tagged {
    fn new(text: String) -> Self {
        Tagged { id: 0, text }
    }
}

#[derive(Debug, Clone, Default)]
struct TaggedCodec(LinesCodec);

impl Encoder<Tagged> for TaggedCodec {
    type Error = LinesCodecError;
    fn encode(&mut self, item: Tagged, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.0.encode(format!("{} {}", item.id, item.text), dst)
    }
}

impl Decoder for TaggedCodec {
    type Item = Tagged;
    type Error = LinesCodecError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Tagged>, Self::Error> {
        let Some(line) = self.0.decode(src)? else {
            return Ok(None);
        };
        let (id, text) = line.split_once(' ').unwrap_or((&line, ""));
        let id = id.parse().map_err(|_| {
            LinesCodecError::Io(io::Error::new(io::ErrorKind::InvalidData, "bad id"))
        })?;
        Ok(Some(Tagged {
            id,
            text: text.to_string(),
        }))
    }
}

/// Where the session id lives in a `Tagged` frame.
#[derive(Debug, Clone, Copy)]
struct Tags;

impl Protocol<Tagged, Tagged> for Tags {}

impl Sessions<Tagged, Tagged> for Tags {
    type Id = u32;
    fn stamp(&self, req: &mut Tagged, id: u32) {
        req.id = id;
    }
    fn session(&self, resp: &Tagged) -> Option<u32> {
        Some(resp.id)
    }
}

/// Answers each `SLEEP ms` after that long, so replies come back out of order.
async fn start_session_server() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (mut tx, mut rx) = Framed::new(stream, TaggedCodec::default()).split();
            let (out, mut replies) = tokio::sync::mpsc::unbounded_channel::<Tagged>();
            tokio::spawn(async move {
                while let Some(reply) = replies.recv().await {
                    if tx.send(reply).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(req)) = rx.next().await {
                let out = out.clone();
                tokio::spawn(async move {
                    let ms = req.text.trim_start_matches("SLEEP ").parse().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let _ = out.send(Tagged {
                        id: req.id,
                        text: format!("slept {ms} ms (session {})", req.id),
                    });
                });
            }
        }
    });
    Ok(addr)
}
