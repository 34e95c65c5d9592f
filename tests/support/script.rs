//! Scripted peers at the far end of an in-memory pipe, for a channel made directly on a
//! transport (`Channel::new`): [`pipe`] makes the two ends, [`Peer`] is a server the test
//! drives frame by frame, [`group_echo_peer`] a server that answers in groups, and
//! [`settle`] gives in-memory traffic time to settle.
//!
//! ```ignore
//! let (transport, server) = pipe();
//! let mut peer = Peer::spawn(server);
//! let ch: Ch = Channel::new(transport, Session::new(TestProto));
//! let call = spawn_request(&ch, "a");
//! let req = peer.next().await;
//! peer.reply(&req, "re:a");
//! assert_eq!(joined(call).await?.text(), "re:a");
//! ```

#![allow(dead_code)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use super::codec::{Kind, Msg, MsgCodec};
use super::within;

/// The two ends of an in-memory pipe (64 KiB each way): the client's, framed, and the
/// server's, raw.
pub fn pipe() -> (Framed<DuplexStream, MsgCodec>, DuplexStream) {
    let (client, server) = tokio::io::duplex(1 << 16);
    (Framed::new(client, MsgCodec::default()), server)
}

/// Long enough for the connection task and the server to do whatever they are going to
/// do with the frames at hand (everything is in memory).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

/// A server the test drives by hand: every request it reads is handed to the test, and
/// it writes whatever frames the test gives it.
pub struct Peer {
    seen: mpsc::UnboundedReceiver<Msg>,
    out: mpsc::UnboundedSender<Msg>,
}

impl Peer {
    /// Serves the server's end of a [`pipe`] on a task of its own.
    pub fn spawn(io: DuplexStream) -> Peer {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            let mut framed = Framed::new(io, MsgCodec::default());
            loop {
                tokio::select! {
                    frame = framed.next() => match frame {
                        Some(Ok(msg)) => {
                            let _ = seen_tx.send(msg);
                        }
                        _ => break,
                    },
                    msg = out_rx.recv() => match msg {
                        Some(msg) => {
                            if framed.send(msg).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
        });
        Peer { seen, out }
    }

    /// The next request the server read (waits at most 5 s).
    pub async fn next(&mut self) -> Msg {
        within(5, "server waiting for a request", self.seen.recv())
            .await
            .expect("server: connection ended")
    }

    /// The next request the server read, or `None` once the connection has ended and
    /// every request was handed over (unbounded: wrap it in a timeout).
    pub async fn recv(&mut self) -> Option<Msg> {
        self.seen.recv().await
    }

    /// A request the server read and has not handed to the test yet.
    pub fn idle(&mut self) -> Option<Msg> {
        self.seen.try_recv().ok()
    }

    /// Writes `msg`.
    pub fn send(&self, msg: Msg) {
        self.out.send(msg).expect("server task gone");
    }

    /// Answers `req` (its id) with `body`.
    pub fn reply(&self, req: &Msg, body: &str) {
        self.reply_kind(req, body, Kind::Normal);
    }

    /// Answers `req` (its id) with a frame of `kind`.
    pub fn reply_kind(&self, req: &Msg, body: &str, kind: Kind) {
        self.send(Msg::with_id(req.id, body.to_string()).kind(kind));
    }
}

/// A server that reads `group` requests, then echoes all of them (in reverse order if
/// `reverse`) before it reads anything more, until it has answered `n`. Its task
/// returns how many it answered; it panics if the connection fails first.
pub fn group_echo_peer(
    io: DuplexStream,
    n: usize,
    group: usize,
    reverse: bool,
) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut framed = Framed::new(io, MsgCodec::default());
        let mut served = 0;
        while served < n {
            let mut batch = Vec::new();
            while batch.len() < group {
                batch.push(framed.next().await.expect("request").expect("decode"));
            }
            if reverse {
                batch.reverse();
            }
            // Write every reply of the group, reading nothing meanwhile.
            for req in batch {
                framed.send(req).await.expect("peer write");
                served += 1;
            }
        }
        served
    })
}

/// A body of `size` bytes (at least 8) that starts with `i` (big-endian), so each is
/// told apart from the others.
pub fn numbered_body(i: u64, size: usize) -> Vec<u8> {
    let mut body = vec![b'.'; size];
    body[..8].copy_from_slice(&i.to_be_bytes());
    body
}
