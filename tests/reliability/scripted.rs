//! A scripted loopback server: per request, frames after delays.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use crate::common::Open;
use crate::recording::Running;
use crate::support::codec::{Msg, MsgCodec};
use crate::support::loopback::spawn_accept_loop;

pub(crate) type Script = fn(&Msg) -> Vec<(Duration, Msg)>;

/// A loopback server that answers each request with `script(request)`: frames, each
/// after its delay. `fifo`: the answers go out in request order, each waiting for the
/// one before (a pipelining server); otherwise each answer goes out on its own clock
/// (a multiplexing server: answers overtake each other).
pub(crate) struct Scripted {
    pub(crate) addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    frames: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Open for Scripted {
    fn open_now(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Scripted {
    pub(crate) async fn start(script: Script, fifo: bool) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let frames = Arc::new(AtomicUsize::new(0));
        let (a, o, f) = (accepted.clone(), open.clone(), frames.clone());
        let task = spawn_accept_loop(listener, 100_000, move |stream| {
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let guard = Running(o.clone());
            serve_scripted(stream, script, fifo, f.clone(), guard)
        });
        Scripted {
            addr,
            accepted,
            open,
            frames,
            task,
        }
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub(crate) fn frames(&self) -> usize {
        self.frames.load(Ordering::SeqCst)
    }
}

async fn serve_scripted(
    stream: TcpStream,
    script: Script,
    fifo: bool,
    frames: Arc<AtomicUsize>,
    _open: Running,
) {
    let _ = stream.set_nodelay(true);
    let (mut sink, mut reqs) = Framed::new(stream, MsgCodec::default()).split();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Duration, Msg)>();
    let writer = async move {
        for _ in 0..10_000_000 {
            let Some((delay, frame)) = rx.recv().await else {
                return;
            };
            if fifo && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if sink.send(frame).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut delayed = tokio::task::JoinSet::new();
        for _ in 0..10_000_000 {
            let Some(Ok(req)) = reqs.next().await else {
                return;
            };
            frames.fetch_add(1, Ordering::SeqCst);
            for (delay, frame) in script(&req) {
                if fifo || delay.is_zero() {
                    let _ = tx.send((delay, frame));
                } else {
                    let tx = tx.clone();
                    delayed.spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send((Duration::ZERO, frame));
                    });
                }
            }
        }
    };
    // The client closing its side ends the connection.
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
}
