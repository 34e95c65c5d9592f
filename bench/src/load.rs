//! The two experiments run against every client: a closed-loop load at a given
//! concurrency, and a count of the heap each in-flight request costs.
//!
//! Both drive a client only through `tower::Service<Frame>` (`poll_ready`, then `call`),
//! so every variant is measured by the same code. The harness itself allocates nothing
//! per request: payloads are built up front and handed out as `Bytes` clones, latencies
//! go into a preallocated histogram per caller.
//!
//! The closed loop itself ([`drive`]) knows nothing of frames: it runs any [`Caller`],
//! which is how the Redis section (`crate::redis`) drives clients that are not a
//! `Service<Frame>`.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::{sleep, timeout};
use tower::{BoxError, Service};

use crate::codec::Frame;
use crate::measure::{Counters, Delta, Histogram, Meter, live_bytes};
use crate::server::RELEASE;

/// A client the harness can drive: any cloneable `Service<Frame, Response = Frame>`.
pub trait Client:
    Service<Frame, Response = Frame, Error: Into<BoxError>, Future: Send> + Clone + Send + 'static
{
}

impl<S> Client for S
where
    S: Service<Frame, Response = Frame> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
}

/// Waits for `service` to accept a request, then sends `request` (tower's calling
/// convention).
pub async fn call<S, R>(service: &mut S, request: R) -> Result<S::Future, BoxError>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    Ok(service.call(request))
}

// ---------------------------------------------------------------------------------------
// Payloads and nonces

/// Distinct payloads each caller cycles through. Each caller has one request in flight at
/// a time, so any reply routed to the wrong caller, or a stale one, carries a wrong nonce.
const RING: usize = 64;

/// The nonce of a caller's `slot`-th payload: `caller << 32 | slot`.
fn nonce(caller: u32, slot: usize) -> u64 {
    u64::from(caller) << 32 | slot as u64
}

/// Builds `count` payloads of `size` bytes in one allocation, each starting with its own
/// nonce (`nonce_of(i)`), and returns them as slices of it.
fn payloads(count: usize, size: usize, nonce_of: impl Fn(usize) -> u64) -> Vec<Bytes> {
    assert!(size >= 8, "a payload must have room for its nonce");
    let mut buf = BytesMut::with_capacity(count * size);
    for i in 0..count {
        buf.put_u64(nonce_of(i));
        buf.put_bytes(0x5a, size - 8);
    }
    let all = buf.freeze();
    (0..count)
        .map(|i| all.slice(i * size..(i + 1) * size))
        .collect()
}

/// Checks that `reply` answers the request whose payload was `sent`.
fn check(reply: &Frame, sent: &Bytes) -> Result<(), BoxError> {
    if reply.payload.len() == sent.len() && reply.payload.get(..8) == sent.get(..8) {
        return Ok(());
    }
    let nonce = |payload: &Bytes| match payload.get(..8) {
        Some(word) => format!("{:#018x}", u64::from_be_bytes(word.try_into().unwrap())),
        None => "none".to_string(),
    };
    Err(format!(
        "wrong reply: expected nonce {} ({} bytes), got {} ({} bytes)",
        nonce(sent),
        sent.len(),
        nonce(&reply.payload),
        reply.payload.len(),
    )
    .into())
}

// ---------------------------------------------------------------------------------------
// Closed loop

/// One cell of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Caller tasks, each with one request in flight at a time.
    pub concurrency: usize,
    /// Payload bytes per request (the frame adds 12).
    pub payload: usize,
    /// How long the callers run.
    pub window: Window,
}

/// How long a closed loop runs.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Time the callers run before anything is counted.
    pub warmup: Duration,
    /// Time during which replies are counted.
    pub measure: Duration,
}

/// What a closed-loop run observed during its measured window.
#[derive(Debug)]
pub struct Outcome {
    /// Replies received (and checked) in the window.
    pub requests: u64,
    /// The process-wide counters over the window.
    pub delta: Delta,
    /// Latency of the counted requests, from `poll_ready` to the reply.
    pub latency: Histogram,
}

/// One caller of a closed loop: makes one request at a time and checks each reply.
///
/// Neither method may allocate on the harness's behalf beyond what the client under test
/// needs, since every allocation in the window is charged to the client.
pub trait Caller: Send + 'static {
    /// What a request resolves to.
    type Reply: Send;

    /// Sends the next request and waits for its reply.
    fn request(&mut self) -> impl Future<Output = Result<Self::Reply, BoxError>> + Send;

    /// Checks that `reply` answers the request just made (not timed).
    fn check(&self, reply: &Self::Reply) -> Result<(), BoxError>;
}

/// The phases of a closed loop, in an `AtomicU8` its callers watch.
#[derive(Debug)]
pub struct Phase;

impl Phase {
    /// Replies are not counted yet.
    pub const WARMUP: u8 = 0;
    /// Replies are counted.
    pub const MEASURE: u8 = 1;
    /// Callers stop.
    pub const STOP: u8 = 2;
}

/// Runs the clock of a closed loop: lets its callers warm up, then moves `phase` to
/// [`Phase::MEASURE`] for `window.measure`, then to [`Phase::STOP`]. Returns what the
/// process counters and `meter` counted over the measured window.
pub async fn window(window: Window, phase: &AtomicU8, meter: &impl Meter) -> Delta {
    sleep(window.warmup).await;
    let io = meter.io().await;
    let start = Counters::now();
    phase.store(Phase::MEASURE, Relaxed);
    sleep(window.measure).await;
    phase.store(Phase::STOP, Relaxed);
    let end = Counters::now();
    end.since(&start, meter.io().await.since(&io))
}

/// The ring of payloads of `caller`, each of `size` bytes: see [`RING`].
pub fn payload_ring(caller: u32, size: usize) -> Vec<Bytes> {
    payloads(RING, size, |slot| nonce(caller, slot))
}

/// Runs `load.concurrency` callers against `client`: each sends a request, awaits and
/// checks the reply, and repeats. Counts the replies that arrive in the measured window.
///
/// # Errors
///
/// Fails on the first client error or wrong reply, or if callers hang after the window.
pub async fn closed_loop<C: Client>(
    client: C,
    load: Load,
    meter: &impl Meter,
) -> Result<Outcome, BoxError> {
    let callers: Vec<_> = (0..load.concurrency)
        .map(|i| FrameCaller {
            client: client.clone(),
            ring: payload_ring(i as u32, load.payload),
            sent: 0,
        })
        .collect();
    drop(client);
    drive(callers, load.window, meter).await
}

/// Runs every caller in a task of its own for `window`: each makes a request, checks the
/// reply, and repeats. Counts the replies that arrive in the measured window, and what
/// `meter` counted over it.
///
/// # Errors
///
/// Fails on the first client error or wrong reply, or if callers hang after the window.
pub async fn drive<K: Caller>(
    callers: impl IntoIterator<Item = K>,
    window: Window,
    meter: &impl Meter,
) -> Result<Outcome, BoxError> {
    let phase = Arc::new(AtomicU8::new(Phase::WARMUP));
    let callers: Vec<_> = callers
        .into_iter()
        .map(|caller| tokio::spawn(run_caller(caller, phase.clone())))
        .collect();

    let delta = self::window(window, &phase, meter).await;

    let mut outcome = Outcome {
        requests: 0,
        delta,
        latency: Histogram::default(),
    };
    for caller in callers {
        let (requests, latency) = timeout(Duration::from_secs(10), caller)
            .await
            .map_err(|_| "a caller got no reply within 10 s")???;
        outcome.requests += requests;
        outcome.latency.merge(&latency);
    }
    Ok(outcome)
}

/// One caller's loop: returns how many replies it counted, and their latencies.
async fn run_caller<K: Caller>(
    mut caller: K,
    phase: Arc<AtomicU8>,
) -> Result<(u64, Histogram), BoxError> {
    let mut latency = Histogram::default();
    let mut requests = 0;
    while phase.load(Relaxed) != Phase::STOP {
        let started = Instant::now();
        let reply = caller.request().await?;
        let elapsed = started.elapsed();
        caller.check(&reply)?;
        if phase.load(Relaxed) == Phase::MEASURE {
            latency.record(elapsed);
            requests += 1;
        }
    }
    Ok((requests, latency))
}

/// A caller of an echo client: cycles through its ring of payloads, and checks that each
/// reply carries the nonce of the payload just sent.
struct FrameCaller<C> {
    client: C,
    ring: Vec<Bytes>,
    /// The index in `ring` of the payload sent last.
    sent: usize,
}

impl<C: Client> Caller for FrameCaller<C> {
    type Reply = Frame;

    async fn request(&mut self) -> Result<Frame, BoxError> {
        self.sent = (self.sent + 1) % self.ring.len();
        let frame = Frame {
            id: 0,
            payload: self.ring[self.sent].clone(),
        };
        let reply = call(&mut self.client, frame)
            .await?
            .await
            .map_err(Into::into)?;
        Ok(reply)
    }

    fn check(&self, reply: &Frame) -> Result<(), BoxError> {
        check(reply, &self.ring[self.sent])
    }
}

// ---------------------------------------------------------------------------------------
// Bytes per in-flight request

/// Payload size of the in-flight measurement: small, so buffers stay small.
const INFLIGHT_PAYLOAD: usize = 16;

/// Measures the heap a client holds per request in flight: sends `n` requests to a
/// [`Hold`](crate::server::ServerMode::Hold) server, which answers none of them yet, waits
/// until all are on the wire, and divides the growth of live heap bytes by `n`.
///
/// The baseline is taken after one round trip and after the harness has built its
/// payloads and its list of pending futures, so the figure is the client's own
/// bookkeeping: queue entries, reply slots, per-request allocations, and any buffer or
/// table growth the burst causes. The harness boxes each reply future to poll it; those
/// boxes (`n * size_of::<C::Future>()`, exactly) are subtracted. Then the hold is
/// released and every reply checked.
///
/// # Errors
///
/// Fails if the client errs, answers wrongly, or cannot put `n` requests on the wire
/// within 10 seconds (for example if it limits requests in flight below `n`).
pub async fn bytes_in_flight<C: Client>(
    mut client: C,
    n: usize,
    meter: &impl Meter,
) -> Result<f64, BoxError> {
    let written_bytes = async || {
        meter
            .io()
            .await
            .written_bytes
            .ok_or("the client's meter does not count bytes written")
    };
    let sent = payloads(n, INFLIGHT_PAYLOAD, |i| nonce(i as u32, 0));
    let release = payloads(1, INFLIGHT_PAYLOAD, |_| RELEASE).remove(0);
    let frame = |payload: &Bytes| Frame {
        id: 0,
        payload: payload.clone(),
    };

    // Warm up: the release frame alone comes straight back.
    let reply = call(&mut client, frame(&release)).await?.await;
    check(&reply.map_err(Into::into)?, &release)?;

    let mut pending: Vec<Pin<Box<C::Future>>> = Vec::with_capacity(n);
    let before = live_bytes();
    let on_wire = written_bytes().await? + (n * frame(&release).wire_len()) as u64;
    let during = timeout(Duration::from_secs(10), async {
        for payload in &sent {
            let mut reply = Box::pin(call(&mut client, frame(payload)).await?);
            // Poll once, in case the client only starts work when polled.
            if poll_fn(|cx| Poll::Ready(reply.as_mut().poll(cx).is_ready())).await {
                return Err::<_, BoxError>("a reply arrived before the release".into());
            }
            pending.push(reply);
        }
        while written_bytes().await? < on_wire {
            sleep(Duration::from_millis(1)).await;
        }
        // Let the client finish whatever it does right after writing.
        sleep(Duration::from_millis(20)).await;
        Ok(live_bytes())
    })
    .await
    .map_err(|_| format!("{n} requests were not all written within 10 s"))??;

    let release_reply = call(&mut client, frame(&release)).await?;
    for (reply, payload) in pending.into_iter().zip(&sent) {
        check(&reply.await.map_err(Into::into)?, payload)?;
    }
    check(&release_reply.await.map_err(Into::into)?, &release)?;

    let boxes = (n * size_of::<C::Future>()) as i64;
    Ok((during - before - boxes) as f64 / n as f64)
}
