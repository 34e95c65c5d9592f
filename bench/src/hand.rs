//! The baselines: minimal hand-written pipelined (order) and multiplexed (session)
//! clients, about as lean as such a client can be while still being shared by many
//! callers.
//!
//! ```text
//! callers --(frame, oneshot)--> unbounded mpsc --> writer task --one write per batch--> socket
//!                                                      |
//!                                 waiting replies (Mutex<VecDeque> | Mutex<HashMap>)
//!                                                      |
//! callers <-------------- oneshot ------------------ reader task <--large reads-------- socket
//! ```
//!
//! The writer drains everything queued (`recv_many`), encodes it into one reused buffer,
//! registers the replies it now waits for (one lock per batch), then writes the batch with
//! one `write_all`. When the reader has just woken more callers than have sent, the
//! writer first yields (a few times at most) so that their calls join the batch. The
//! reader decodes every frame of a read and completes the matching oneshots (one lock
//! per read). Per request that is one oneshot allocation; the mpsc and the buffers are
//! reused.
//!
//! Deliberately left out: backpressure, cancellation, reconnects, error details. These
//! are what a real client adds, and what the benchmark charges it for.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Decoder, Encoder};
use tower::{BoxError, Service};

use crate::codec::{Frame, FrameCodec};
use crate::measure::Counted;

/// Most requests the writer takes from the queue at once.
const BATCH: usize = 256;
/// Initial size of the read and write buffers.
const BUFFER: usize = 64 * 1024;
/// Least spare room in the read buffer before a read.
const MIN_READ: usize = 4 * 1024;

type Job = (Frame, oneshot::Sender<Frame>);

/// Replies the reader delivered in its last batch: callers that are about to send.
type Woken = Arc<AtomicUsize>;

/// Most times the writer yields to let woken callers send before it writes a batch.
const YIELDS: usize = 8;

/// Waits for jobs and takes every one queued. If the reader's last batch woke more
/// callers than have sent, yields (at most [`YIELDS`] times) so that they run, and takes
/// what they sent: their calls then go out in one write. Without this, on a
/// multi-threaded runtime the first caller's send wakes the writer into the worker's
/// LIFO slot, ahead of the other woken callers, and each write carries a call or two.
/// (On a current-thread runtime the woken callers run first anyway, and one reply
/// wakes one caller, so neither yields.)
async fn take_batch(
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    batch: &mut Vec<Job>,
    woken: &Woken,
) -> usize {
    if jobs.recv_many(batch, BATCH).await == 0 {
        return 0;
    }
    let expected = woken.swap(0, Relaxed);
    for _ in 0..YIELDS {
        if expected < 2 || batch.len() >= expected.min(BATCH) {
            break;
        }
        tokio::task::yield_now().await;
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
    }
    batch.len()
}

/// The hand-written pipelined client: replies are matched to requests by position.
#[derive(Debug, Clone)]
pub struct Order {
    intake: mpsc::UnboundedSender<Job>,
}

impl Order {
    /// Spawns the writer and reader tasks over `stream`.
    pub fn spawn(stream: TcpStream) -> Self {
        let (read, write) = stream.into_split();
        let (intake, jobs) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(VecDeque::new()));
        let woken = Woken::default();
        tokio::spawn(log_error(
            "hand-order writer",
            write_order(jobs, Counted::new(write), waiting.clone(), woken.clone()),
        ));
        tokio::spawn(log_error(
            "hand-order reader",
            read_order(Counted::new(read), waiting, woken),
        ));
        Order { intake }
    }
}

async fn write_order(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut io: Counted<OwnedWriteHalf>,
    waiting: Arc<Mutex<VecDeque<oneshot::Sender<Frame>>>>,
    woken: Woken,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(BATCH);
    let mut replies = Vec::with_capacity(BATCH);
    let mut buf = BytesMut::with_capacity(BUFFER);
    while take_batch(&mut jobs, &mut batch, &woken).await > 0 {
        for (frame, reply) in batch.drain(..) {
            FrameCodec.encode(frame, &mut buf)?;
            replies.push(reply);
        }
        // Register before writing, so a reply can never arrive before its slot.
        waiting.lock().unwrap().extend(replies.drain(..));
        io.write_all(&buf).await?;
        buf.clear();
    }
    Ok(())
}

async fn read_order(
    mut io: Counted<OwnedReadHalf>,
    waiting: Arc<Mutex<VecDeque<oneshot::Sender<Frame>>>>,
    woken: Woken,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(BUFFER);
    let mut frames = Vec::with_capacity(BATCH);
    let mut ready = Vec::with_capacity(BATCH);
    loop {
        if !read_frames(&mut io, &mut buf, &mut frames).await? {
            return Ok(());
        }
        {
            let mut waiting = waiting.lock().unwrap();
            for frame in frames.drain(..) {
                let reply = waiting
                    .pop_front()
                    .ok_or_else(|| desync("reply to nothing"))?;
                ready.push((reply, frame));
            }
        }
        woken.store(ready.len(), Relaxed);
        for (reply, frame) in ready.drain(..) {
            // The caller may be gone; its reply is then simply dropped.
            let _ = reply.send(frame);
        }
    }
}

/// The hand-written multiplexed client: the writer stamps each request with a fresh id
/// and replies are matched by id, in any order.
#[derive(Debug, Clone)]
pub struct Session {
    intake: mpsc::UnboundedSender<Job>,
}

impl Session {
    /// Spawns the writer and reader tasks over `stream`.
    pub fn spawn(stream: TcpStream) -> Self {
        let (read, write) = stream.into_split();
        let (intake, jobs) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(HashMap::with_capacity(BATCH)));
        let woken = Woken::default();
        tokio::spawn(log_error(
            "hand-session writer",
            write_session(jobs, Counted::new(write), waiting.clone(), woken.clone()),
        ));
        tokio::spawn(log_error(
            "hand-session reader",
            read_session(Counted::new(read), waiting, woken),
        ));
        Session { intake }
    }
}

async fn write_session(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut io: Counted<OwnedWriteHalf>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>,
    woken: Woken,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(BATCH);
    let mut replies = Vec::with_capacity(BATCH);
    let mut buf = BytesMut::with_capacity(BUFFER);
    let mut next_id = 0u64;
    while take_batch(&mut jobs, &mut batch, &woken).await > 0 {
        for (mut frame, reply) in batch.drain(..) {
            next_id = next_id.wrapping_add(1);
            frame.id = next_id;
            FrameCodec.encode(frame, &mut buf)?;
            replies.push((next_id, reply));
        }
        waiting.lock().unwrap().extend(replies.drain(..));
        io.write_all(&buf).await?;
        buf.clear();
    }
    Ok(())
}

async fn read_session(
    mut io: Counted<OwnedReadHalf>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>,
    woken: Woken,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(BUFFER);
    let mut frames = Vec::with_capacity(BATCH);
    let mut ready = Vec::with_capacity(BATCH);
    loop {
        if !read_frames(&mut io, &mut buf, &mut frames).await? {
            return Ok(());
        }
        {
            let mut waiting = waiting.lock().unwrap();
            for frame in frames.drain(..) {
                let reply = waiting
                    .remove(&frame.id)
                    .ok_or_else(|| desync("reply with an unknown id"))?;
                ready.push((reply, frame));
            }
        }
        woken.store(ready.len(), Relaxed);
        for (reply, frame) in ready.drain(..) {
            let _ = reply.send(frame);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Shared by both clients

/// Reads once (as much as the socket has) and decodes every complete frame into `frames`.
/// Returns `false` at end of stream.
async fn read_frames(
    io: &mut Counted<OwnedReadHalf>,
    buf: &mut BytesMut,
    frames: &mut Vec<Frame>,
) -> io::Result<bool> {
    // Replies are cut out of `buf` without copying, so its spare room shrinks with each
    // one. When it runs low, `reserve` takes the whole buffer back if callers have
    // dropped those replies by then, or else allocates a new one.
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(BUFFER);
    }
    if io.read_buf(buf).await? == 0 {
        return Ok(false);
    }
    while let Some(frame) = FrameCodec.decode(buf)? {
        frames.push(frame);
    }
    Ok(true)
}

fn desync(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("desynchronized: {what}"),
    )
}

/// Runs a connection task; an error ends it (and so fails every waiting caller).
async fn log_error(task: &'static str, fut: impl Future<Output = io::Result<()>>) {
    if let Err(e) = fut.await {
        eprintln!("{task}: {e}");
    }
}

impl Service<Frame> for Order {
    type Response = Frame;
    type Error = BoxError;
    type Future = Reply;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, frame: Frame) -> Reply {
        enqueue(&self.intake, frame)
    }
}

impl Service<Frame> for Session {
    type Response = Frame;
    type Error = BoxError;
    type Future = Reply;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, frame: Frame) -> Reply {
        enqueue(&self.intake, frame)
    }
}

fn enqueue(intake: &mpsc::UnboundedSender<Job>, frame: Frame) -> Reply {
    let (reply, rx) = oneshot::channel();
    // If the connection tasks are gone, `reply` is dropped and the caller sees an error.
    let _ = intake.send((frame, reply));
    Reply(rx)
}

/// The reply to one request of a hand-written client.
#[derive(Debug)]
pub struct Reply(oneshot::Receiver<Frame>);

impl Future for Reply {
    type Output = Result<Frame, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map_err(|_| "connection closed".into())
    }
}
