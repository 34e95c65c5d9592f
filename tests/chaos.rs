//! Seeded chaos (reliability catalogue, scenario 31): 64 callers send requests carrying
//! unique nonces to an echo server through the fault-injecting proxy, while a driver
//! cuts, resets, stalls, delays, slices, crash-loops and refuses at random. The channel
//! reconnects (`Reconnect::Persistent`, short backoff, short stall timeout).
//!
//! What must hold, whatever the faults:
//!
//! * no reply ever reaches the wrong caller (the reply's nonce is the request's);
//! * the server executes each nonce at most once (the channel never replays a written
//!   request), a call that succeeded exactly once, and a call that failed *not sent*
//!   never;
//! * every call resolves within a bound, and the run ends within its bound;
//! * afterwards the channel works, nothing is in flight, the connection task ends and
//!   no socket is left open.
//!
//! Sizing and replay, by environment variable:
//!
//! * `CHAOS_SEED`: the seed (decimal or `0x` hex); printed by every run, so a failing
//!   run can be replayed with it. Thread timing still varies between runs, so a replay
//!   repeats the same fault schedule and the same requests, not the same interleaving.
//! * `CHAOS_SECONDS`: how long each mode runs (default 15; the order and session runs
//!   go in parallel).
//! * `CHAOS_REQUESTS`: a cap on the requests per mode (default: no cap).
//!
//! ```text
//! CHAOS_SECONDS=300 cargo test --release --test chaos -- --nocapture
//! CHAOS_SEED=0x1234abcd cargo test --test chaos -- --nocapture
//! ```

#![cfg(feature = "tcp")]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};

use socketchannel::{
    Backoff, Channel, Config, ConnectionErrorKind, Error, Kind, Order, Reconnect, Session, State,
    TcpConnector,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use support::codec::{Msg, MsgCodec, TestProto};
use support::loopback::spawn_accept_loop;
use support::proxy::{Accept, Dir, Fault, Proxy, Rng};
use support::{eventually, timeout};

type Ch = Channel<Msg, Msg>;

/// Callers.
const TASKS: u64 = 64;
/// Every call resolves within this, whatever the faults.
const CALL_BOUND: Duration = Duration::from_secs(10);
/// The channel's stall timeout.
const STALL: Duration = Duration::from_millis(300);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

struct Settings {
    seed: u64,
    run: Duration,
    max_requests: u64,
}

fn settings() -> Settings {
    let seed = env_u64("CHAOS_SEED").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id()).rotate_left(32)
    });
    Settings {
        seed,
        run: Duration::from_secs(env_u64("CHAOS_SECONDS").unwrap_or(15)),
        max_requests: env_u64("CHAOS_REQUESTS").unwrap_or(u64::MAX),
    }
}

/// An echo server that counts executions per nonce: one byte per request, so a long
/// run stays small (a request is "executed" when the server decoded it whole).
struct Counting {
    addr: SocketAddr,
    shared: Arc<Counts>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    /// Per caller, per sequence number: how many times the server read that request.
    executed: Mutex<Vec<Vec<u8>>>,
    /// Frames whose body carries no caller's nonce.
    foreign: AtomicU64,
    open: AtomicUsize,
}

impl Counts {
    fn record(&self, body: &str) {
        let Some(nonce) = nonce_of(body) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (t, seq) = ((nonce >> 40) as usize, (nonce & ((1 << 40) - 1)) as usize);
        if t >= TASKS as usize {
            // The recovery probe after the chaos.
            return;
        }
        let mut executed = self.executed.lock().unwrap_or_else(|e| e.into_inner());
        if executed.len() < TASKS as usize {
            executed.resize(TASKS as usize, Vec::new());
        }
        let mine = &mut executed[t];
        if mine.len() <= seq {
            mine.resize(seq + 1, 0);
        }
        mine[seq] = mine[seq].saturating_add(1);
    }

    fn times(&self, nonce: u64) -> u8 {
        let (t, seq) = ((nonce >> 40) as usize, (nonce & ((1 << 40) - 1)) as usize);
        let executed = self.executed.lock().unwrap_or_else(|e| e.into_inner());
        executed
            .get(t)
            .and_then(|v| v.get(seq))
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> u64 {
        let executed = self.executed.lock().unwrap_or_else(|e| e.into_inner());
        executed.iter().flatten().map(|&n| u64::from(n)).sum()
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a connection open until dropped.
struct OpenGuard(Arc<Counts>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Counting {
    async fn start() -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Counts::default());
        let counts = shared.clone();
        let task = spawn_accept_loop(listener, 1_000_000, move |stream| {
            counts.open.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(counts.clone());
            serve(stream, counts.clone(), guard)
        });
        Counting { addr, shared, task }
    }

    fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

/// Echoes every frame (id and body), counting it; reads never wait for writes.
async fn serve(stream: TcpStream, counts: Arc<Counts>, _open: OpenGuard) {
    let _ = stream.set_nodelay(true);
    let (mut sink, mut reqs) = Framed::new(stream, MsgCodec::default()).split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let reader = async move {
        for _ in 0..u64::MAX {
            let Some(Ok(req)) = reqs.next().await else {
                return;
            };
            counts.record(req.text());
            if tx.send(req).is_err() {
                return;
            }
        }
    };
    let writer = async move {
        for _ in 0..u64::MAX {
            let Some(reply) = rx.recv().await else {
                return;
            };
            if sink.feed(reply).await.is_err() {
                return;
            }
            if rx.is_empty() && sink.flush().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
}

/// What became of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    NotSent(Kind),
    MayHaveExecuted(Kind, Option<ConnectionErrorKind>),
    /// The caller gave up on it (a short timeout, on purpose).
    Dropped,
}

fn outcome_of(err: &Error) -> Outcome {
    if err.is_not_sent() {
        Outcome::NotSent(err.kind())
    } else {
        Outcome::MayHaveExecuted(err.kind(), err.connection_error().map(|c| c.kind()))
    }
}

/// The body of request `nonce`: the nonce in hex, then padding of a random length (so
/// frames of many sizes get cut in many places).
fn body(nonce: u64, pad: usize) -> String {
    format!("c{nonce:016x}:{}", "p".repeat(pad))
}

/// The nonce back from a body.
fn nonce_of(body: &str) -> Option<u64> {
    u64::from_str_radix(body.get(1..17)?, 16).ok()
}

/// One caller: requests until `stop` or the budget runs out; returns each nonce's
/// outcome.
async fn caller(
    ch: Ch,
    order: bool,
    t: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
    budget: Arc<AtomicU64>,
) -> Vec<Outcome> {
    let mut rng = Rng::new(seed ^ (t + 1).wrapping_mul(0x9E37_79B9));
    let mut out = Vec::new();
    for seq in 0..u64::from(u32::MAX) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
            .is_err()
        {
            break;
        }
        let nonce = (t << 40) | seq;
        let pad = if rng.chance(0.1) {
            rng.below(4096) as usize
        } else {
            rng.below(64) as usize
        };
        let text = body(nonce, pad);
        // Order mode: the id field carries the nonce too (session mode stamps its own).
        let req = Msg::with_id(if order { nonce } else { 0 }, text.clone());
        let drop_early = rng.chance(0.05);
        let limit = if drop_early {
            rng.duration(Duration::ZERO, Duration::from_millis(5))
        } else {
            CALL_BOUND
        };
        let started = Instant::now();
        let outcome = match tokio::time::timeout(limit, ch.request(req)).await {
            Err(_) if drop_early => Outcome::Dropped,
            Err(_) => panic!("seed {seed:#x}: call {nonce:#x} unresolved after {CALL_BOUND:?}"),
            Ok(Ok(reply)) => {
                assert_eq!(
                    reply.text(),
                    text,
                    "seed {seed:#x}: call {nonce:#x} got another caller's reply"
                );
                if order {
                    assert_eq!(reply.id, nonce, "seed {seed:#x}: misrouted reply");
                }
                Outcome::Ok
            }
            Ok(Err(err)) => outcome_of(&err),
        };
        out.push(outcome);
        if !matches!(outcome, Outcome::Ok | Outcome::Dropped) {
            // Failures can be fast (backing off): do not spin.
            let pause = rng.duration(Duration::from_millis(1), Duration::from_millis(10));
            tokio::time::sleep(pause).await;
        }
        assert!(
            started.elapsed() < CALL_BOUND + Duration::from_secs(1),
            "seed {seed:#x}: call {nonce:#x} took {:?}",
            started.elapsed()
        );
    }
    out
}

/// The fault driver: a random fault for a random while, a healthy spell now and then.
/// Returns how often it did what.
async fn drive(proxy: Arc<Proxy>, seed: u64, stop: Arc<AtomicBool>) -> HashMap<&'static str, u64> {
    let mut rng = Rng::new(seed ^ 0xD21F);
    let mut did: HashMap<&'static str, u64> = HashMap::new();
    let dir = |rng: &mut Rng| if rng.chance(0.5) { Dir::Up } else { Dir::Down };
    for _ in 0..1_000_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let what = match rng.below(14) {
            0..=3 => {
                proxy.heal();
                "heal"
            }
            4 => {
                proxy.set(dir(&mut rng), Fault::Cut(rng.below(300) as usize));
                "cut"
            }
            5 => {
                proxy.set(dir(&mut rng), Fault::Reset(rng.below(300) as usize));
                "reset after"
            }
            6 => {
                proxy.set(dir(&mut rng), Fault::Stall);
                "stall"
            }
            7 => {
                let lo = rng.duration(Duration::ZERO, Duration::from_millis(20));
                proxy.set(dir(&mut rng), Fault::Jitter(lo, lo * 3));
                "jitter"
            }
            8 => {
                proxy.set(dir(&mut rng), Fault::Slice);
                "slice"
            }
            9 => {
                proxy.set_both(Fault::Chunks(1 + rng.below(32) as usize));
                "chunks"
            }
            10 => {
                proxy.kill_all();
                "kill all"
            }
            11 => {
                proxy.reset_all();
                "reset all"
            }
            12 => {
                let accept = if rng.chance(0.5) {
                    Accept::Close
                } else {
                    Accept::Reset
                };
                proxy.set_accept(accept);
                tokio::time::sleep(
                    rng.duration(Duration::from_millis(20), Duration::from_millis(200)),
                )
                .await;
                proxy.set_accept(Accept::Forward);
                "crash loop"
            }
            _ => {
                proxy.refuse().await;
                proxy.kill_all();
                tokio::time::sleep(
                    rng.duration(Duration::from_millis(20), Duration::from_millis(300)),
                )
                .await;
                proxy.resume().await.expect("listen again");
                "down"
            }
        };
        *did.entry(what).or_insert(0) += 1;
        tokio::time::sleep(rng.duration(Duration::from_millis(10), Duration::from_millis(250)))
            .await;
    }
    proxy.heal();
    proxy.set_accept(Accept::Forward);
    proxy.resume().await.expect("listen again");
    did
}

async fn chaos(order: bool) {
    let s = settings();
    let bound = s.run + Duration::from_secs(60);
    timeout(bound, run(order, s)).await;
}

async fn run(order: bool, s: Settings) {
    let mode = if order { "order" } else { "session" };
    println!(
        "chaos {mode}: CHAOS_SEED={:#x} CHAOS_SECONDS={} CHAOS_REQUESTS={}",
        s.seed,
        s.run.as_secs(),
        if s.max_requests == u64::MAX {
            "unlimited".to_string()
        } else {
            s.max_requests.to_string()
        }
    );
    let seed = s.seed ^ u64::from(order);
    let started = Instant::now();
    let server = Counting::start().await;
    let proxy = Arc::new(Proxy::start(server.addr, seed).await);

    let builder = Channel::builder()
        .host(proxy.addr().to_string())
        .reconnect(Reconnect::Persistent)
        .backoff(Backoff::exponential(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .connect_timeout(Duration::from_secs(1))
        .config(Config::default().stall_timeout(Some(STALL)));
    let tcp = TcpConnector::new(MsgCodec::default());
    let (ch, conn) = if order {
        builder.pair(tcp, Order::new(TestProto))
    } else {
        builder.pair(tcp, Session::new(TestProto))
    }
    .expect("valid host");
    let task = tokio::spawn(conn);

    let stop = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(AtomicU64::new(s.max_requests));
    let driver = tokio::spawn(drive(proxy.clone(), seed, stop.clone()));
    let callers: Vec<JoinHandle<Vec<Outcome>>> = (0..TASKS)
        .map(|t| {
            tokio::spawn(caller(
                ch.clone(),
                order,
                t,
                seed,
                stop.clone(),
                budget.clone(),
            ))
        })
        .collect();
    // Run until the time is up or every caller has used up the budget.
    let all_done = async {
        while !callers.iter().all(|c| c.is_finished()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(s.run, all_done).await;
    stop.store(true, Ordering::Relaxed);

    let mut outcomes: Vec<Vec<Outcome>> = Vec::new();
    for c in callers {
        let mine = timeout(CALL_BOUND * 2, c)
            .await
            .unwrap_or_else(|e| panic!("seed {seed:#x}: a caller failed: {e}"));
        outcomes.push(mine);
    }
    let did = timeout(Duration::from_secs(5), driver)
        .await
        .expect("the driver ends");

    // Healed: the channel works again.
    let t = Instant::now();
    loop {
        match timeout(CALL_BOUND, ch.request(Msg::new(body(u64::MAX, 0)))).await {
            Ok(reply) => {
                assert_eq!(reply.text(), body(u64::MAX, 0));
                break;
            }
            Err(_) if t.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("seed {seed:#x}: no recovery after the chaos: {err:?}"),
        }
    }

    // Let held bytes reach the server (a stalled direction that healed), then count.
    eventually(Duration::from_secs(5), "nothing in flight", || {
        ch.counters().in_flight == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let foreign = server.shared.foreign.load(Ordering::Relaxed);
    assert_eq!(
        foreign, 0,
        "seed {seed:#x}: the server read frames without a nonce"
    );

    let mut tally: HashMap<String, u64> = HashMap::new();
    let all = outcomes.iter().enumerate().flat_map(|(t, mine)| {
        mine.iter()
            .enumerate()
            .map(move |(seq, o)| (((t as u64) << 40) | seq as u64, o))
    });
    for (nonce, outcome) in all {
        let times = server.shared.times(nonce);
        assert!(
            times <= 1,
            "seed {seed:#x}: call {nonce:#x} ({outcome:?}) executed {times} times"
        );
        match outcome {
            Outcome::Ok => assert_eq!(
                times, 1,
                "seed {seed:#x}: {nonce:#x} answered, not executed"
            ),
            Outcome::NotSent(kind) => {
                assert_eq!(
                    times, 0,
                    "seed {seed:#x}: call {nonce:#x} failed not-sent ({kind:?}) but was executed"
                );
                // A failed pass, or a lost connection that never took a byte of it
                // (the crate's connector meters its codec and socket).
                assert!(
                    matches!(kind, Kind::ConnectFailed | Kind::ConnectionLost),
                    "seed {seed:#x}: not sent for another reason: {kind:?}"
                );
            }
            Outcome::MayHaveExecuted(kind, why) => {
                assert_eq!(*kind, Kind::ConnectionLost, "seed {seed:#x}: {nonce:#x}");
                assert_ne!(
                    *why,
                    Some(ConnectionErrorKind::Desync),
                    "seed {seed:#x}: an echo server through a proxy cannot desync a channel"
                );
            }
            Outcome::Dropped => {}
        }
        let key = match outcome {
            Outcome::Ok => "ok".to_string(),
            Outcome::Dropped => "dropped".to_string(),
            Outcome::NotSent(k) => format!("not sent {k:?}"),
            Outcome::MayHaveExecuted(_, why) => format!("may have executed {why:?}"),
        };
        *tally.entry(key).or_insert(0) += 1;
    }
    let c = ch.counters();
    let total: u64 = outcomes.iter().map(|o| o.len() as u64).sum();
    let ok = tally.get("ok").copied().unwrap_or(0);
    println!(
        "chaos {mode}: {total} calls in {:?}: {tally:?}",
        started.elapsed()
    );
    println!("chaos {mode}: faults {did:?}");
    println!("chaos {mode}: counters {c:?}");
    let executed_total = server.shared.total();
    assert!(
        executed_total <= c.sent,
        "seed {seed:#x}: {executed_total} executions for {} writes",
        c.sent
    );
    assert!(
        total > 0 && ok * 20 >= total,
        "seed {seed:#x}: too little progress: {tally:?}"
    );
    assert!(
        c.reconnects > 0,
        "seed {seed:#x}: the chaos never broke a connection"
    );

    // The end: close, the task ends, no socket left.
    ch.close();
    let mut state = ch.state();
    timeout(
        Duration::from_secs(5),
        state.wait_for(|s| *s == State::Closed),
    )
    .await
    .expect("state watch open");
    drop(state);
    drop(ch);
    timeout(Duration::from_secs(5), task)
        .await
        .expect("the connection task ends");
    eventually(Duration::from_secs(5), "no socket open", || {
        server.open() == 0 && proxy.stats().open() == 0
    })
    .await;
    assert!(
        started.elapsed() < s.run + Duration::from_secs(40),
        "seed {seed:#x}: the run overran its bound: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_order_mode() {
    chaos(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_session_mode() {
    chaos(false).await;
}
