//! Where two lifecycle features meet: one named regression test per failure-path defect
//! of issue 15, each failing without its fix.
//!
//! Most run over the in-memory network of `support::memory` under paused time: a
//! scripted server ([`serve`]) that records what each connection read, so a test can
//! say what the server executed, in what order, on which connection.
//!
//! * `handshake`: leftovers go first, the tower API inside a handshake, a shutdown
//!   during one, its calls and the overload signal, a host change during one;
//! * `failures`: what a panic, a dropped task or a failed write says about "sent";
//! * `stall`: the stall timer measures silence, not transfer;
//! * `shutdown`: a shutdown ends with its last call; `connect` during one;
//! * `hosts`: the crash-loop backoff counts only answers; redirects keep hosts;
//! * `limits`: multi-frame replies and slow stream readers are bounded;
//! * `orphans`: a connection full of calls nobody waits for is retired; maximum age;
//! * `review`: the reproductions of the skeptical review of these fixes.

#[path = "../support/mod.rs"]
mod support;

mod failures;
mod handshake;
mod hosts;
mod limits;
mod orphans;
mod review;
mod shutdown;
mod stall;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::Endpoint;

use support::codec::{Kind as FrameKind, Msg};
use support::memory::{Io, Net};

/// What every connection of a [`serve`] network read, in connection order.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Connection>>>);

/// A connection's endpoint and the bodies it read.
pub type Connection = (String, Vec<String>);

impl Log {
    /// The bodies each connection read, with its endpoint.
    pub fn connections(&self) -> Vec<Connection> {
        self.0.lock().unwrap().clone()
    }

    /// How many times any connection read `body`.
    pub fn executed(&self, body: &str) -> usize {
        self.connections()
            .iter()
            .flat_map(|(_, read)| read.iter())
            .filter(|b| *b == body)
            .count()
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How many connects a `Persistent` channel to `a:1` on `net` makes in 2 s of virtual
/// time, backing off from 100 ms up to 1 s (so a handful if the backoff holds). Past 200
/// connects the connector hangs: a hot loop ends there instead of never letting the
/// paused clock move.
pub async fn connects_in_two_seconds(
    net: &Net,
    builder: socketchannel::Builder<Msg, Msg>,
) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::Service;
    let connects = Arc::new(AtomicUsize::new(0));
    let count = connects.clone();
    let inner = net.connector();
    let connector = tower::service_fn(move |ep: Endpoint| {
        let mut inner = inner.clone();
        let n = count.fetch_add(1, Ordering::SeqCst);
        async move {
            if n >= 200 {
                std::future::pending::<()>().await;
            }
            inner.call(ep).await
        }
    });
    let backoff = socketchannel::Backoff::exponential(ms(100), Duration::from_secs(1));
    let ch = builder
        .host("a:1")
        .reconnect(socketchannel::Reconnect::Persistent)
        .backoff(backoff.jitter_seed(1))
        .eager()
        .connector(
            connector,
            socketchannel::Order::new(support::codec::TestProto),
        )
        .expect("valid");
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(ch);
    connects.load(Ordering::SeqCst)
}

/// A network whose servers answer in order, one request at a time, and log what they
/// read. A body says how to answer it:
///
/// * `mute...`: never answered;
/// * `slow <ms> ...`: answered after that long;
/// * `parts <n> <ms>`: `n` frames, one every `ms` (the last one final);
/// * `bye`: answered, then the connection is closed;
/// * anything else: echoed at once.
pub fn serve() -> (Net, Log) {
    let log = Log::default();
    let l = log.clone();
    let net = Net::new(move |endpoint: Endpoint, io: Io| {
        let log = l.clone();
        async move { answer(endpoint, io, log).await }
    });
    (net, log)
}

async fn answer(endpoint: Endpoint, mut io: Io, log: Log) {
    let conn = {
        let mut all = log.0.lock().unwrap();
        all.push((endpoint.to_string(), Vec::new()));
        all.len() - 1
    };
    while let Some(Ok(req)) = io.next().await {
        let body = req.text().to_string();
        log.0.lock().unwrap()[conn].1.push(body.clone());
        let words: Vec<&str> = body.split(' ').collect();
        let reply = |text: String| Msg::with_id(req.id, text);
        let sent = match words.as_slice() {
            ["mute", ..] => Ok(()),
            ["slow", wait, ..] => {
                tokio::time::sleep(ms(wait.parse().unwrap())).await;
                io.send(reply(body.clone())).await
            }
            ["parts", n, every] => {
                let (n, every): (usize, u64) = (n.parse().unwrap(), every.parse().unwrap());
                let mut res = Ok(());
                for i in 0..n {
                    tokio::time::sleep(ms(every)).await;
                    let kind = if i + 1 == n {
                        FrameKind::Normal
                    } else {
                        FrameKind::More
                    };
                    res = io.send(reply(format!("part {i}")).kind(kind)).await;
                    if res.is_err() {
                        break;
                    }
                }
                res
            }
            ["bye"] => {
                let _ = io.send(reply(body.clone())).await;
                return;
            }
            _ => io.send(reply(body.clone())).await,
        };
        if sent.is_err() {
            return;
        }
    }
}
