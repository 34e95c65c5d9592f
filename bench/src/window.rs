//! `window-loop`: the limit of what any client could do over one connection in order
//! mode. One task, no futures, oneshots or channels per request: it keeps N frames
//! outstanding (N = the cell's concurrency), one per "caller" slot.
//!
//! ```text
//! queue N frames in one buffer
//! loop: write what is queued (one write), or else read (one large read):
//!       for each complete reply: check it against the oldest outstanding frame,
//!                                queue that slot's next frame in the write buffer
//! ```
//!
//! So the replies of each read go out as one batch, written by the next turn.
//!
//! Each slot cycles through its own ring of 64 payloads with nonces, like a caller of the
//! other variants, and every reply is checked against the frame it answers (the order
//! server answers in order, so that is the oldest outstanding one). Latency is from the
//! moment a frame is queued in the write buffer to the moment its reply is decoded.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tower::BoxError;

use crate::codec::{HEADER_LEN, frame_len};
use crate::load::{self, Load, Outcome, Phase};
use crate::measure::{Counted, CountedSockets, Histogram};

/// Least size of the read and write buffers (they are larger for large cells).
const BUFFER: usize = 256 * 1024;

/// Runs the window loop over `stream` for `load`: `load.concurrency` frames outstanding,
/// each of `load.payload` bytes.
///
/// # Errors
///
/// A socket error, a wrong reply, or a loop that does not stop within 10 s of the window.
pub async fn run(stream: TcpStream, load: Load) -> Result<Outcome, BoxError> {
    let phase = Arc::new(AtomicU8::new(Phase::WARMUP));
    let task = tokio::spawn(window_loop(stream, load, phase.clone()));
    let delta = load::window(load.window, &phase, &CountedSockets).await;
    let (requests, latency) = timeout(Duration::from_secs(10), task)
        .await
        .map_err(|_| "the window loop did not stop within 10 s")???;
    Ok(Outcome {
        requests,
        delta,
        latency,
    })
}

/// One outstanding frame: whose it is, which of its payloads, and when it was queued.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    slot: usize,
    ring: usize,
    queued: Instant,
}

/// What one poll of the socket did.
enum Event {
    /// Wrote this many bytes of the write buffer.
    Wrote(usize),
    /// Read this many bytes into the read buffer (0: end of stream).
    Read(usize),
}

/// The loop itself; returns the replies counted in the measured window and their
/// latencies.
///
/// It writes and reads in one task without ever blocking on a write alone: with 256
/// frames of 16 KiB outstanding, a client that finished writing before reading would
/// deadlock with a server blocked writing the replies it does not read. So each turn
/// polls the write of what is queued first, then the read, and handles whichever is
/// ready.
async fn window_loop(
    mut stream: TcpStream,
    load: Load,
    phase: Arc<AtomicU8>,
) -> Result<(u64, Histogram), BoxError> {
    let (read, write) = stream.split();
    let (mut read, mut write) = (Counted::new(read), Counted::new(write));
    let n = load.concurrency;
    let rings: Vec<Vec<Bytes>> = (0..n)
        .map(|slot| load::payload_ring(slot as u32, load.payload))
        .collect();
    let frame_bytes = HEADER_LEN + load.payload;
    // The read buffer: bytes `start..end` are read and not yet decoded.
    let mut input = vec![0u8; BUFFER.max(2 * frame_bytes)];
    let (mut start, mut end) = (0, 0);
    // The write buffer: bytes `written..` are queued and not yet written.
    let mut out: Vec<u8> = Vec::with_capacity(BUFFER.max(n * frame_bytes));
    let mut written = 0;
    let mut outstanding: VecDeque<Outstanding> = VecDeque::with_capacity(n);
    let mut next = vec![0usize; n];
    let mut latency = Histogram::default();
    let mut requests = 0u64;

    let queue = |slot: usize,
                 next: &mut [usize],
                 out: &mut Vec<u8>,
                 outstanding: &mut VecDeque<Outstanding>| {
        let ring = next[slot];
        next[slot] = (ring + 1) % rings[slot].len();
        let payload = &rings[slot][ring];
        out.extend_from_slice(&((8 + payload.len()) as u32).to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.extend_from_slice(payload);
        outstanding.push_back(Outstanding {
            slot,
            ring,
            queued: Instant::now(),
        });
    };

    for slot in 0..n {
        queue(slot, &mut next, &mut out, &mut outstanding);
    }

    while phase.load(Relaxed) != Phase::STOP {
        // Room for at least a frame, or a good read, after what is not decoded yet.
        let room = frame_bytes.max(4 * 1024);
        if input.len() - end < room {
            input.copy_within(start..end, 0);
            end -= start;
            start = 0;
            if input.len() - end < room {
                input.resize(end + room, 0);
            }
        }
        let event = poll_fn(|cx| {
            if written < out.len() {
                match Pin::new(&mut write).poll_write(cx, &out[written..]) {
                    Poll::Ready(Ok(n)) => return Poll::Ready(Ok(Event::Wrote(n))),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            let mut buf = ReadBuf::new(&mut input[end..]);
            match Pin::new(&mut read).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Event::Read(buf.filled().len()))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        match event {
            Event::Wrote(n) => {
                written += n;
                if written == out.len() {
                    out.clear();
                    written = 0;
                }
                continue;
            }
            Event::Read(0) => return Err("the server closed the connection".into()),
            Event::Read(n) => end += n,
        }

        let measuring = phase.load(Relaxed) == Phase::MEASURE;
        while let Some(len) = frame_len(&input[start..end])? {
            if end - start < 4 + len {
                break;
            }
            let sent = outstanding
                .pop_front()
                .ok_or("a reply to no outstanding frame")?;
            let now = Instant::now();
            let expected = &rings[sent.slot][sent.ring];
            let reply = &input[start + HEADER_LEN..start + 4 + len];
            if reply.len() != expected.len() || reply.get(..8) != expected.get(..8) {
                return Err(format!(
                    "wrong reply for slot {} payload {}: {} bytes, expected {}",
                    sent.slot,
                    sent.ring,
                    reply.len(),
                    expected.len()
                )
                .into());
            }
            start += 4 + len;
            if measuring {
                latency.record(now - sent.queued);
                requests += 1;
            }
            queue(sent.slot, &mut next, &mut out, &mut outstanding);
        }
        if start == end {
            (start, end) = (0, 0);
        }
    }
    Ok((requests, latency))
}
