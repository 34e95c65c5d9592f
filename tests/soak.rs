//! Soak (issue #8, item 4; catalogue 30): many requests over a reconnecting channel in
//! each mode, 30% of them abandoned by their caller (the future dropped at a random
//! point, or a `tokio::time::timeout` that fires), against a server that ignores some
//! requests. Afterwards, and after a settle, nothing is left behind: no call in flight
//! and the heap (a counting allocator's live bytes, design.md Contract 11) back to where
//! it started.
//!
//! Size: `SOAK_REQUESTS` requests per mode (default 400,000: about 5-20 s for both
//! modes in a debug build on a 2-core machine). The full soak is a million per mode, in a
//! release build:
//!
//! ```text
//! SOAK_REQUESTS=1000000 cargo test --release --test soak -- --nocapture
//! ```
//!
//! `SOAK_MODE=order` or `SOAK_MODE=session` runs one mode only.
//!
//! # What the server ignores, and why that is safe in each mode
//!
//! * **Order mode**: a FIFO server that skips a reply would shift every later reply onto
//!   the wrong caller, and no client can tell; so here the ignored requests are
//!   fire-and-forget ([`Channel::send`], body `noreply...`), which is what they are for:
//!   they take no FIFO slot. The stall timer never fires.
//! * **Session mode**: an ignored request (`noreply...` through `request`, its caller
//!   giving up after a few milliseconds) keeps its session id reserved (Contract 4:
//!   never freed by a timeout alone) until the stall timeout closes the connection; the
//!   calls then in flight fail *may have executed* and the reconnecting channel goes on
//!   with a new connection. So the session run reconnects every few hundred
//!   milliseconds, by design.
//!
//! # The memory check
//!
//! This test binary installs a counting `#[global_allocator]` (the only `unsafe` here:
//! the `GlobalAlloc` wrapper around the system allocator). The baseline is taken after a
//! warm-up with the same mix, so that what the first requests allocate once for good
//! (buffers grown to their working size, the runtime's timer and task structures) is in
//! it. The end figure is taken after the run, a settle (no call in flight, every ignored
//! id released), and one more connection, so both figures have one live connection.
//! The figures are printed (`--nocapture`): start, peak, end.
//!
//! Tolerance: [`TOLERANCE`] bytes (64 KiB). What may legitimately differ between the
//! two points is capacity, not count: the read and write buffers of the live connection
//! (a `BytesMut` keeps what it grew to: 8 KiB to a few tens of KiB under a batch of 256
//! replies), the intake's block list (tokio's mpsc keeps a block of 32 slots for reuse),
//! a `HashMap`/`VecDeque` in the matcher that grew under load, the runtime's timer and
//! task bookkeeping. Measured, the two figures differ by a few KiB at most, either way.
//! A leak of one byte per request is 400 KB at the default size and is caught, so is
//! a 64-byte leak on one request in 300; at a million requests the check is 2.5 times
//! as sharp.

#![cfg(feature = "tcp")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use socketchannel::{Channel, Config, Kind};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

#[path = "support/codec.rs"]
mod codec;

use codec::{Msg, MsgCodec, TestProto};

// ---------------------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------------------

/// The system allocator, counting the bytes live now and the most live at once.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Allocations made on this thread, for checks that must not see other tests' work.
    static ALLOCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn grew(n: usize) {
    ALLOCS.with(|a| a.set(a.get() + 1));
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(n: usize) {
    LIVE.fetch_sub(n, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and
// only counts sizes on the side; the contract of `GlobalAlloc` is `System`'s.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn allocs_on_this_thread() -> u64 {
    ALLOCS.with(|a| a.get())
}

/// Cloning a handle is three atomic increments: no allocation, however many clones.
#[tokio::test(flavor = "current_thread")]
async fn cloning_a_channel_never_allocates() {
    let (client, _server) = tokio::io::duplex(64);
    let channel: Channel<Msg, Msg> = Channel::new(
        Framed::new(client, MsgCodec::default()),
        socketchannel::Order::new(TestProto),
    );
    let before = allocs_on_this_thread();
    let clones: Vec<_> = (0..1000).map(|_| channel.clone()).collect::<Vec<_>>();
    // The Vec of clones itself is one allocation.
    assert_eq!(allocs_on_this_thread() - before, 1);
    drop(clones);
}

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

/// Requests per mode unless `SOAK_REQUESTS` says otherwise.
const DEFAULT_REQUESTS: u64 = 400_000;
/// Requests of the warm-up before the baseline.
const WARM_UP: u64 = 3_000;
/// Concurrent callers.
const CALLERS: u64 = 64;
/// How far the end may lie above the start, in bytes (see the module docs).
const TOLERANCE: usize = 64 * 1024;
/// Session mode's stall timeout: how long an ignored request holds its id.
const STALL: Duration = Duration::from_millis(300);
/// The longest any wait in the test may take.
const BOUND: Duration = Duration::from_secs(30);

fn requests() -> u64 {
    std::env::var("SOAK_REQUESTS")
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_REQUESTS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Order,
    Session,
}

/// A small deterministic random source (splitmix64): the mix is the same every run.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------
// The server: answers every frame but `noreply...` ones; keeps nothing
// ---------------------------------------------------------------------------------------

/// Echoes each frame (id and body) except those whose body starts with `noreply`. In
/// session mode it answers each batch of frames read together in reverse order. It
/// records nothing, so its memory stays flat however long it runs.
async fn serve(listener: TcpListener, mode: Mode) {
    // Bounded: far more connections than any run makes.
    for _ in 0..1_000_000 {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut io = Framed::new(stream, MsgCodec::default());
            let mut batch = Vec::new();
            loop {
                let Some(Ok(first)) = io.next().await else {
                    return;
                };
                batch.push(first);
                while batch.len() < 256 {
                    match io.next().now_or_never() {
                        Some(Some(Ok(m))) => batch.push(m),
                        Some(_) => return,
                        None => break,
                    }
                }
                if mode == Mode::Session {
                    batch.reverse();
                }
                for m in batch.drain(..) {
                    if m.body.starts_with(b"noreply") {
                        continue;
                    }
                    if io.feed(m).await.is_err() {
                        return;
                    }
                }
                if io.flush().await.is_err() {
                    return;
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// The load
// ---------------------------------------------------------------------------------------

/// What became of the calls.
#[derive(Debug, Default)]
struct Tally {
    /// Calls whose caller gives up (drops the future, or times out) at some point: 30%.
    abandoning: AtomicU64,
    ok: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
    ignored: AtomicU64,
    sent: AtomicU64,
    /// Failed as *may have executed*, the connection lost (session mode: the stall).
    lost: AtomicU64,
    /// Failed as *not sent* (a failed connect pass).
    not_sent: AtomicU64,
    /// Anything else: a wrong reply, an error of a kind that should not happen.
    wrong: AtomicU64,
}

impl Tally {
    fn get(n: &AtomicU64) -> u64 {
        n.load(Ordering::Relaxed)
    }
}

type Ch = Channel<Msg, Msg>;

fn record(tally: &Tally, body: &str, got: Result<Msg, socketchannel::Error>) {
    match got {
        Ok(reply) if reply.text() == body => tally.ok.fetch_add(1, Ordering::Relaxed),
        Ok(reply) => {
            eprintln!("WRONG REPLY: {body:?} got {:?}", reply.text());
            tally.wrong.fetch_add(1, Ordering::Relaxed)
        }
        Err(e) if e.kind() == Kind::ConnectionLost && e.may_have_executed() => {
            tally.lost.fetch_add(1, Ordering::Relaxed)
        }
        Err(e)
            if e.is_not_sent()
                && matches!(e.kind(), Kind::ConnectFailed | Kind::ConnectionLost) =>
        {
            tally.not_sent.fetch_add(1, Ordering::Relaxed)
        }
        Err(e) => {
            eprintln!("UNEXPECTED ERROR for {body:?}: {e}");
            tally.wrong.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// One request `i` of the mix.
async fn one(ch: &Ch, mode: Mode, i: u64, tally: &Tally) {
    let r = mix(i);
    let pick = r % 1000;
    // Order mode: 3% extra fire-and-forget frames the server ignores.
    if mode == Mode::Order && (r >> 10) % 100 < 3 {
        match ch.send(Msg::new(format!("noreply-{i}"))).await {
            Ok(()) => tally.sent.fetch_add(1, Ordering::Relaxed),
            Err(_) => tally.not_sent.fetch_add(1, Ordering::Relaxed),
        };
    }
    // Session mode: 0.2% of requests are ignored by the server; their callers give up.
    if mode == Mode::Session && pick < 2 {
        let body = format!("noreply-{i}");
        let waited = Duration::from_millis(2 + (r >> 20) % 8);
        match tokio::time::timeout(waited, ch.request(Msg::new(body.clone()))).await {
            Err(_) => tally.ignored.fetch_add(1, Ordering::Relaxed),
            Ok(got) => {
                // An ignored request can only end early with its connection.
                match got {
                    Err(e) if e.kind() == Kind::ConnectionLost => {
                        tally.ignored.fetch_add(1, Ordering::Relaxed)
                    }
                    other => {
                        eprintln!("IGNORED REQUEST ANSWERED: {other:?}");
                        tally.wrong.fetch_add(1, Ordering::Relaxed)
                    }
                }
            }
        };
        return;
    }
    let body = format!("r{i}");
    if pick < 150 {
        // Cancelled: dropped after 1 to 3 polls, wherever it then is (queued, written,
        // or answered and not yet read by this caller), unless it finished first.
        tally.abandoning.fetch_add(1, Ordering::Relaxed);
        let polls = 1 + (r >> 20) % 3;
        let mut call = pin!(ch.request(Msg::new(body.clone())));
        for _ in 0..polls {
            if let Poll::Ready(got) = futures::poll!(call.as_mut()) {
                record(tally, &body, got);
                return;
            }
            tokio::task::yield_now().await;
        }
        tally.cancelled.fetch_add(1, Ordering::Relaxed);
    } else if pick < 300 {
        // Timed out: a deadline of 0 to 1 ms, which fires for some and not others.
        tally.abandoning.fetch_add(1, Ordering::Relaxed);
        let limit = Duration::from_micros((r >> 20) % 1_000);
        match tokio::time::timeout(limit, ch.request(Msg::new(body.clone()))).await {
            Ok(got) => record(tally, &body, got),
            Err(_) => {
                tally.timed_out.fetch_add(1, Ordering::Relaxed);
            }
        }
    } else {
        let got = ch.request(Msg::new(body.clone())).await;
        record(tally, &body, got);
    }
}

/// Runs requests `from..to` of the mix over `CALLERS` concurrent callers.
async fn load(ch: &Ch, mode: Mode, from: u64, to: u64, tally: &Arc<Tally>) {
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let ch = ch.clone();
        let tally = tally.clone();
        callers.push(tokio::spawn(async move {
            let mut i = from + c;
            while i < to {
                one(&ch, mode, i, &tally).await;
                i += CALLERS;
            }
        }));
    }
    for caller in callers {
        caller.await.expect("a caller panicked");
    }
}

/// [`load`], failing the test if it takes longer than a minute plus a millisecond per
/// request (ten times what a debug build takes).
async fn bounded_load(ch: &Ch, mode: Mode, from: u64, to: u64, tally: &Arc<Tally>) {
    let limit = Duration::from_secs(60) + Duration::from_millis(to - from);
    tokio::time::timeout(limit, load(ch, mode, from, to, tally))
        .await
        .unwrap_or_else(|_| panic!("{} requests not done within {limit:?}", to - from));
}

/// Waits until nothing is in flight, then makes sure a connection is up (answering a
/// few plain requests) and settles again, so that the measured state has exactly one
/// live connection and nothing waiting.
async fn settle(ch: &Ch) {
    // In flight drops to 0 only with the last reply, or (session mode) with the stall
    // timeout closing the connection that held the ignored ids.
    let start = tokio::time::Instant::now();
    while ch.counters().in_flight != 0 {
        assert!(
            start.elapsed() < BOUND,
            "calls still in flight after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..8 {
        let body = format!("settle-{i}");
        let reply = tokio::time::timeout(BOUND, ch.request(Msg::new(body.clone())))
            .await
            .expect("a settle request hung")
            .expect("a settle request failed");
        assert_eq!(reply.text(), body);
    }
    // The counter is updated by the connection task just after it delivers a reply;
    // the caller may look first.
    while ch.counters().in_flight != 0 {
        assert!(
            start.elapsed() < BOUND,
            "in flight not back to 0 after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Let finished tasks (old server connections) be dropped.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

struct Figures {
    requests: u64,
    elapsed: Duration,
    start: usize,
    peak: usize,
    end: usize,
}

fn soak(mode: Mode, n: u64) -> Figures {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let figures = rt.block_on(async {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, mode));

        let config = match mode {
            Mode::Order => Config::default(),
            Mode::Session => Config::default().stall_timeout(Some(STALL)),
        };
        let builder = Channel::builder().host(addr.to_string()).config(config);
        let ch: Ch = match mode {
            Mode::Order => builder.order(MsgCodec::default(), TestProto),
            Mode::Session => builder.session(MsgCodec::default(), TestProto),
        }
        .expect("a channel");

        let tally = Arc::new(Tally::default());
        bounded_load(&ch, mode, 0, WARM_UP, &tally).await;
        assert_eq!(Tally::get(&tally.wrong), 0, "wrong replies in the warm-up");
        settle(&ch).await;
        let start = live();
        PEAK.store(start, Ordering::Relaxed);

        let tally = Arc::new(Tally::default());
        let began = Instant::now();
        bounded_load(&ch, mode, WARM_UP, WARM_UP + n, &tally).await;
        let elapsed = began.elapsed();
        settle(&ch).await;
        let end = live();
        let peak = PEAK.load(Ordering::Relaxed);

        let c = ch.counters();
        let t = &*tally;
        println!(
            "soak {mode:?}: {n} requests in {elapsed:.2?}: abandoning {}, ok {}, cancelled {}, \
             timed out {}, ignored {}, fire-and-forget {}, lost (MX) {}, not sent {}, wrong {}; \
             counters {c:?}",
            Tally::get(&t.abandoning),
            Tally::get(&t.ok),
            Tally::get(&t.cancelled),
            Tally::get(&t.timed_out),
            Tally::get(&t.ignored),
            Tally::get(&t.sent),
            Tally::get(&t.lost),
            Tally::get(&t.not_sent),
            Tally::get(&t.wrong),
        );
        assert_eq!(
            Tally::get(&t.wrong),
            0,
            "wrong replies or unexpected errors"
        );
        assert_eq!(c.in_flight, 0, "calls in flight after the settle");
        let abandoning = Tally::get(&t.abandoning);
        assert!(
            (n * 27..=n * 33).contains(&(abandoning * 100)),
            "the mix abandons 30% of the calls, not {abandoning} of {n}"
        );
        // Many give up before their reply is read (the others were answered first).
        let cut_short = Tally::get(&t.cancelled) + Tally::get(&t.timed_out);
        assert!(
            cut_short * 100 >= n * 5,
            "only {cut_short} of {n} calls were cut short by their caller"
        );
        assert!(Tally::get(&t.ok) * 2 >= n, "most calls must succeed");
        if mode == Mode::Session {
            assert!(
                c.reconnects > 0,
                "the ignored ids never made the stall timeout fire"
            );
        } else {
            assert_eq!(Tally::get(&t.lost), 0, "order mode lost a connection");
        }

        drop(ch);
        server.abort();
        Figures {
            requests: n,
            elapsed,
            start,
            peak,
            end,
        }
    });
    drop(rt);
    figures
}

#[test]
fn soak_both_modes_leave_nothing_behind() {
    let n = requests();
    let modes: &[Mode] = match std::env::var("SOAK_MODE").as_deref() {
        Ok("order") => &[Mode::Order],
        Ok("session") => &[Mode::Session],
        _ => &[Mode::Order, Mode::Session],
    };
    let mut failures = Vec::new();
    for &mode in modes {
        let f = soak(mode, n);
        println!(
            "soak {mode:?}: {} requests, {:.2?}; live bytes start {} / peak {} / end {} \
             (end - start: {:+})",
            f.requests,
            f.elapsed,
            f.start,
            f.peak,
            f.end,
            f.end as i64 - f.start as i64
        );
        if f.end > f.start + TOLERANCE {
            failures.push(format!(
                "{mode:?}: live bytes grew from {} to {} (+{}, tolerance {TOLERANCE})",
                f.start,
                f.end,
                f.end - f.start
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "memory not back to its start: {failures:?}"
    );
}
