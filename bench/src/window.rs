//! `window-loop`: the limit of what any client could do over one connection in order
//! mode. One task, no futures, oneshots or channels per request: it keeps N frames
//! outstanding (N = the cell's concurrency), one per "caller" slot.
//!
//! ```text
//! write N frames (one buffer, one write_all)
//! loop: one large read
//!       for each complete reply: check it against the oldest outstanding frame,
//!                                queue that slot's next frame in the write buffer
//!       write the batch (one write_all)
//! ```
//!
//! Each slot cycles through its own ring of 64 payloads with nonces, like a caller of the
//! other variants, and every reply is checked against the frame it answers (the order
//! server answers in order, so that is the oldest outstanding one). Latency is from the
//! moment a frame is queued in the write buffer to the moment its reply is decoded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tower::BoxError;

use crate::codec::{HEADER_LEN, frame_len};
use crate::load::{self, Load, Outcome, Phase};
use crate::measure::{Counted, CountedSockets, Histogram};

/// Initial size of the read and write buffers (they grow for large cells).
const BUFFER: usize = 64 * 1024;

/// Runs the window loop over `stream` for `load`: `load.concurrency` frames outstanding,
/// each of `load.payload` bytes.
///
/// # Errors
///
/// A socket error, a wrong reply, or a loop that does not stop within 10 s of the window.
pub async fn run(stream: TcpStream, load: Load) -> Result<Outcome, BoxError> {
    let phase = Arc::new(AtomicU8::new(Phase::WARMUP));
    let task = tokio::spawn(window_loop(Counted::new(stream), load, phase.clone()));
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

/// The loop itself; returns the replies counted in the measured window and their
/// latencies.
async fn window_loop(
    mut io: Counted<TcpStream>,
    load: Load,
    phase: Arc<AtomicU8>,
) -> Result<(u64, Histogram), BoxError> {
    let n = load.concurrency;
    let rings: Vec<Vec<Bytes>> = (0..n)
        .map(|slot| load::payload_ring(slot as u32, load.payload))
        .collect();
    let frame_len_bytes = HEADER_LEN + load.payload;
    let mut out = BytesMut::with_capacity(BUFFER.max(n * frame_len_bytes));
    let mut input = BytesMut::with_capacity(BUFFER.max(n * frame_len_bytes));
    let mut outstanding: VecDeque<Outstanding> = VecDeque::with_capacity(n);
    let mut next = vec![0usize; n];
    let mut latency = Histogram::default();
    let mut requests = 0u64;

    let queue = |slot: usize,
                 next: &mut [usize],
                 out: &mut BytesMut,
                 outstanding: &mut VecDeque<Outstanding>| {
        let ring = next[slot];
        next[slot] = (ring + 1) % rings[slot].len();
        let payload = &rings[slot][ring];
        out.put_u32((8 + payload.len()) as u32);
        out.put_u64(0);
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
    io.write_all(&out).await?;
    out.clear();

    while phase.load(Relaxed) != Phase::STOP {
        if input.capacity() - input.len() < frame_len_bytes.max(4 * 1024) {
            // Everything decoded so far was consumed in place, so this reclaims the
            // buffer's room rather than allocating, unless a partial frame needs more.
            input.reserve(BUFFER.max(frame_len_bytes));
        }
        if io.read_buf(&mut input).await? == 0 {
            return Err("the server closed the connection".into());
        }
        let measuring = phase.load(Relaxed) == Phase::MEASURE;
        while let Some(len) = frame_len(&input)? {
            if input.len() < 4 + len {
                break;
            }
            let sent = outstanding
                .pop_front()
                .ok_or("a reply to no outstanding frame")?;
            let now = Instant::now();
            let expected = &rings[sent.slot][sent.ring];
            let reply = &input[HEADER_LEN..4 + len];
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
            input.advance(4 + len);
            if measuring {
                latency.record(now - sent.queued);
                requests += 1;
            }
            queue(sent.slot, &mut next, &mut out, &mut outstanding);
        }
        if !out.is_empty() {
            io.write_all(&out).await?;
            out.clear();
        }
    }
    Ok((requests, latency))
}
