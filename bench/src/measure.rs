//! What the benchmark counts, and how: heap allocations and live bytes (a counting global
//! allocator), socket reads and writes (a counting stream adapter, or the channel's own
//! counters: [`Meter`]), client CPU time
//! (`getrusage`) and latency (a log-linear histogram).
//!
//! Every counter is process-wide. The server runs in another process, so only the client
//! under test (and the harness, which allocates nothing per request) shows up here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeValLike;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

// ---------------------------------------------------------------------------------------
// Heap

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

/// The system allocator, counting allocations (`alloc`, `alloc_zeroed` and `realloc`
/// calls) and live bytes (requested sizes, not what the allocator rounds them up to).
struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

// The only unsafe code in the benchmark: a `GlobalAlloc` impl is unsafe by definition.
// Each method forwards to `System` with the caller's arguments unchanged, so it upholds
// exactly the contract its caller upholds.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; see the impl comment.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            ALLOCATIONS.fetch_add(1, Relaxed);
            LIVE_BYTES.fetch_add(layout.size() as i64, Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; see the impl comment.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            ALLOCATIONS.fetch_add(1, Relaxed);
            LIVE_BYTES.fetch_add(layout.size() as i64, Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; see the impl comment.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as i64, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; see the impl comment.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            ALLOCATIONS.fetch_add(1, Relaxed);
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        }
        new
    }
}

/// Bytes currently allocated on the heap by this process.
pub fn live_bytes() -> i64 {
    LIVE_BYTES.load(Relaxed)
}

// ---------------------------------------------------------------------------------------
// Socket I/O

static WRITES: AtomicU64 = AtomicU64::new(0);
static WRITTEN_BYTES: AtomicU64 = AtomicU64::new(0);
static READS: AtomicU64 = AtomicU64::new(0);

/// A socket (or socket half) that counts its successful reads and writes.
///
/// Each `poll_read`, `poll_write` or `poll_write_vectored` that returns `Ready(Ok(_))` is
/// one system call that moved data; calls that would block are not counted. Every client
/// in the benchmark, hand-written ones included, talks to the server through this.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
}

impl<S> Counted<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Counted { inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            READS.fetch_add(1, Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        count_write(Pin::new(&mut self.inner).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        count_write(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn count_write(poll: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
    if let Poll::Ready(Ok(n)) = poll {
        WRITES.fetch_add(1, Relaxed);
        WRITTEN_BYTES.fetch_add(n as u64, Relaxed);
    }
    poll
}

// ---------------------------------------------------------------------------------------
// Meters: who counts a client's socket reads and writes

/// A client's socket operations so far, as far as its [`Meter`] knows them; `None` for
/// what it cannot tell.
#[derive(Debug, Clone, Copy, Default)]
pub struct Io {
    /// Writes that moved data.
    pub writes: Option<u64>,
    /// Reads that returned data.
    pub reads: Option<u64>,
    /// Bytes written.
    pub written_bytes: Option<u64>,
    /// Reads the server processed (Redis `INFO stats`: `total_reads_processed`).
    pub server_reads: Option<u64>,
    /// Writes the server processed (`total_writes_processed`).
    pub server_writes: Option<u64>,
}

impl Io {
    /// The change from `earlier` to `self`, field by field.
    pub fn since(&self, earlier: &Io) -> Io {
        let d = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        Io {
            writes: d(self.writes, earlier.writes),
            reads: d(self.reads, earlier.reads),
            written_bytes: d(self.written_bytes, earlier.written_bytes),
            server_reads: d(self.server_reads, earlier.server_reads),
            server_writes: d(self.server_writes, earlier.server_writes),
        }
    }

    /// `self`, with what it does not know taken from `other`.
    pub fn or(self, other: Io) -> Io {
        Io {
            writes: self.writes.or(other.writes),
            reads: self.reads.or(other.reads),
            written_bytes: self.written_bytes.or(other.written_bytes),
            server_reads: self.server_reads.or(other.server_reads),
            server_writes: self.server_writes.or(other.server_writes),
        }
    }
}

/// Where a client's socket reads and writes are counted: the benchmark's [`Counted`]
/// wrapper ([`CountedSockets`]), or, for a channel built with the crate's own connector
/// (whose socket the benchmark cannot wrap), the channel's own counters.
pub trait Meter {
    /// The counts now.
    async fn io(&self) -> Io;
}

/// Every [`Counted`] socket of the process.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountedSockets;

impl Meter for CountedSockets {
    async fn io(&self) -> Io {
        Io {
            writes: Some(WRITES.load(Relaxed)),
            reads: Some(READS.load(Relaxed)),
            written_bytes: Some(WRITTEN_BYTES.load(Relaxed)),
            ..Io::default()
        }
    }
}

/// Two meters: what the first does not know, the second tells.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Debug, Clone, Copy)]
pub struct Both<A, B>(pub A, pub B);

impl<A: Meter, B: Meter> Meter for Both<A, B> {
    async fn io(&self) -> Io {
        let first = self.0.io().await;
        first.or(self.1.io().await)
    }
}

// ---------------------------------------------------------------------------------------
// Snapshots

/// The process-wide counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    at: Instant,
    cpu: Duration,
    allocations: u64,
    parks: u64,
}

/// How much each counter moved between two snapshots.
#[derive(Debug, Clone, Copy)]
pub struct Delta {
    /// Wall-clock time.
    pub elapsed: Duration,
    /// User plus system CPU time of the whole client process.
    pub cpu: Duration,
    /// Heap allocations (including reallocations).
    pub allocations: u64,
    /// Socket operations, from the client's meter.
    pub io: Io,
    /// Times the runtime's workers parked (went to sleep for want of work), summed over
    /// the workers of a multi-thread runtime; 0 on a current-thread one.
    pub parks: u64,
}

impl Counters {
    /// Reads every counter now.
    pub fn now() -> Self {
        Counters {
            at: Instant::now(),
            cpu: cpu_time(),
            allocations: ALLOCATIONS.load(Relaxed),
            parks: parks(),
        }
    }

    /// The change from `earlier` to `self`, with `io` the change of the client's meter.
    pub fn since(&self, earlier: &Counters, io: Io) -> Delta {
        Delta {
            elapsed: self.at - earlier.at,
            cpu: self.cpu.saturating_sub(earlier.cpu),
            allocations: self.allocations - earlier.allocations,
            io,
            parks: self.parks.saturating_sub(earlier.parks),
        }
    }
}

/// Times the workers of the multi-thread runtime this is called on have parked so far
/// (0 outside one): a worker parks when it finds no task to run, so parks per request
/// say how often the scheduler put a worker to sleep and woke it again.
fn parks() -> u64 {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return 0;
    };
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return 0;
    }
    let metrics = handle.metrics();
    (0..metrics.num_workers())
        .map(|worker| metrics.worker_park_count(worker))
        .sum()
}

/// User plus system CPU time consumed so far by all threads of this process.
fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage(RUSAGE_SELF) cannot fail");
    let micros = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    Duration::from_micros(micros.max(0) as u64)
}

// ---------------------------------------------------------------------------------------
// Latency

/// Sub-buckets per power of two: 2^5 = 32, so a bucket is at most ~3% wide.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Values are clamped below 2^40 ns (about 18 minutes).
const MAX_BITS: u32 = 40;
const BUCKETS: usize = SUB * (MAX_BITS - SUB_BITS + 1) as usize;

/// A log-linear histogram of durations in nanoseconds (the HdrHistogram layout): exact
/// below 32 ns, then 32 equal buckets per power of two.
///
/// Recording is an index computation and an increment; each caller task owns one and
/// they are merged at the end, so recording never allocates or contends.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
        }
    }
}

impl Histogram {
    /// Counts one observation.
    pub fn record(&mut self, value: Duration) {
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket(nanos)] += 1;
        self.total += 1;
    }

    /// Adds every observation of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The value below which a fraction `q` of the observations fall, as the midpoint of
    /// its bucket; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos((low(i) + low(i + 1)) / 2);
            }
        }
        unreachable!("rank is at most the total count")
    }
}

/// The bucket holding `value`.
fn bucket(value: u64) -> usize {
    let value = value.min((1 << MAX_BITS) - 1);
    if value < SUB as u64 {
        return value as usize;
    }
    let shift = (63 - value.leading_zeros()) - SUB_BITS;
    SUB * (shift as usize + 1) + ((value >> shift) as usize - SUB)
}

/// The smallest value in bucket `i` (for `i == BUCKETS`, the end of the last bucket).
fn low(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = i / SUB - 1;
    ((SUB + i % SUB) as u64) << shift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        for i in 0..BUCKETS {
            assert_eq!(bucket(low(i)), i);
            assert_eq!(bucket(low(i + 1) - 1), i);
            let width = low(i + 1) - low(i);
            assert!(width == 1 || width * 32 <= low(i), "bucket {i} too wide");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for micros in 1..=100 {
            h.record(Duration::from_micros(micros));
        }
        let p50 = h.quantile(0.5).as_secs_f64() * 1e6;
        let p99 = h.quantile(0.99).as_secs_f64() * 1e6;
        assert!((p50 - 50.0).abs() <= 50.0 * 0.04, "p50 {p50}");
        assert!((p99 - 99.0).abs() <= 99.0 * 0.04, "p99 {p99}");
        let mut merged = Histogram::default();
        merged.merge(&h);
        merged.merge(&h);
        assert_eq!(merged.quantile(0.5), h.quantile(0.5));
    }
}
