//! A burst server for the held flush's reviews (`src/mux/flush.rs`): it takes
//! [`BURST`] calls and, once released, answers them all in one write, so the client's
//! read passes are full (64 replies each). Any other call is noted (its text, when it
//! arrived) and answered with its own text, after the server's `work`; a call `many`
//! is answered by [`BURST`] frames. The server runs on its own thread and runtime, at
//! the far end of an in-memory pipe.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use socketchannel::{Channel, Error, Metered, Session};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio_util::codec::{Encoder, Framed, FramedRead};

use super::channel::Ch;
use super::codec::{Msg, MsgCodec, TestProto};

/// Calls a burst answers.
pub const BURST: usize = 200;

/// `ids`' replies, each with `body`, encoded back to back.
pub fn encode(ids: &[u64], body: &str) -> BytesMut {
    let mut b = BytesMut::new();
    for &id in ids {
        MsgCodec::default()
            .encode(Msg::with_id(id, body.to_string()), &mut b)
            .unwrap();
    }
    b
}

/// The server's side, shared with the test.
pub struct Server {
    /// Burst calls taken.
    pub seen: AtomicUsize,
    go: AtomicUsize,
    bursts: AtomicUsize,
    /// Other calls, with when each arrived.
    others: Mutex<Vec<(String, Instant)>>,
    /// How long the server works on another call before it answers.
    work: Duration,
}

impl Server {
    fn spawn(io: tokio::io::DuplexStream, work: Duration) -> Arc<Server> {
        let s = Arc::new(Server {
            seen: AtomicUsize::new(0),
            go: AtomicUsize::new(0),
            bursts: AtomicUsize::new(0),
            others: Mutex::new(Vec::new()),
            work,
        });
        let server = s.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(server.serve(io));
        });
        s
    }

    async fn serve(&self, io: tokio::io::DuplexStream) {
        let (rd, mut wr) = tokio::io::split(io);
        let mut calls = FramedRead::new(rd, MsgCodec::default());
        let mut burst = Vec::new();
        while let Some(Ok(call)) = calls.next().await {
            if call.text() == "many" {
                let _ = wr.write_all(&encode(&vec![call.id; BURST], "part")).await;
                continue;
            }
            if !call.text().starts_with("call") {
                let text = call.text().to_string();
                self.others
                    .lock()
                    .unwrap()
                    .push((text.clone(), Instant::now()));
                tokio::time::sleep(self.work).await;
                let _ = wr.write_all(&encode(&[call.id], &text)).await;
                continue;
            }
            burst.push(call.id);
            self.seen.fetch_add(1, Ordering::SeqCst);
            if burst.len() == BURST {
                let round = self.bursts.load(Ordering::SeqCst);
                for _ in 0..10_000 {
                    if self.go.load(Ordering::SeqCst) > round {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if wr.write_all(&encode(&burst, "burst")).await.is_err() {
                    return;
                }
                burst.clear();
                self.bursts.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Releases the next burst and waits (blocking the thread, so that no task runs)
    /// until it is written.
    pub fn release(&self) {
        let round = self.bursts.load(Ordering::SeqCst);
        self.go.fetch_add(1, Ordering::SeqCst);
        for _ in 0..5_000 {
            if self.bursts.load(Ordering::SeqCst) > round {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the burst was never written");
    }

    /// When the call `what` reached the server, if it did.
    pub fn reached(&self, what: &str) -> Option<Instant> {
        let others = self.others.lock().unwrap();
        others.iter().find(|(t, _)| t == what).map(|&(_, at)| at)
    }

    /// Whether `what` reaches the server within `ms` milliseconds.
    pub async fn wait_reached(&self, what: &str, ms: u64) -> bool {
        for _ in 0..ms {
            if self.reached(what).is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.reached(what).is_some()
    }
}

/// A session-mode channel (a call need not wait for the burst's replies) to a fresh
/// server working `work` on each other call, over a metered transport or not.
pub fn rig(metered: bool, work: Duration) -> (Ch, Arc<Server>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let s = Server::spawn(server, work);
    let channel = if metered {
        Channel::new(
            Framed::new(Metered::exact(client), Metered::new(MsgCodec::default())),
            Session::new(TestProto),
        )
    } else {
        Channel::new(
            Framed::new(client, MsgCodec::default()),
            Session::new(TestProto),
        )
    };
    (channel, s)
}

/// [`BURST`] callers; `then` runs on each reply. Returns once the server took every
/// call.
pub async fn burst_with<F>(ch: &Ch, s: &Server, then: F) -> Vec<JoinHandle<Result<Msg, Error>>>
where
    F: Fn(&Ch) + Send + Sync + Clone + 'static,
{
    let before = s.seen.load(Ordering::SeqCst);
    let callers = (0..BURST)
        .map(|i| {
            let ch = ch.clone();
            let then = then.clone();
            tokio::spawn(async move {
                let reply = ch.request(Msg::new(format!("call {i}"))).await;
                if reply.is_ok() {
                    then(&ch);
                }
                reply
            })
        })
        .collect();
    while s.seen.load(Ordering::SeqCst) < before + BURST {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    callers
}

/// A round of quick callers: the passes after its full reads come at once, so holds
/// are on for the next burst.
pub async fn warm_up(ch: &Ch, s: &Server) {
    let callers = burst_with(ch, s, |_| {}).await;
    s.release();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap().text(), "burst");
    }
}
