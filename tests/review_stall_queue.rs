//! A skeptical review of the stall timer's send-queue reading (`src/meter/queue.rs`,
//! `src/mux/stall.rs`, the `flushing` rule in `src/mux/engine/drive.rs`): Contract 6,
//! "a large transfer on a slow link is never a stall", and "a server that reads our
//! heartbeats/small requests but never answers must still stall".
//!
//! Real loopback sockets (TCP, Unix, TLS over TCP) on real time, servers on 127.0.0.1
//! or a Unix socket in the temp dir; every wait is bounded.
//!
//! Tests named `finding_*` failed on the tree under review (each says why); the others
//! passed and document what holds.
//!
//! * Finding 1 (`finding_1_*`, `finding_1b_*`), fixed: progress heard early in a quiet
//!   spell left the timer armed for the old spell's end; it fired past the new spell's
//!   half, the baseline was read then and the verdict moments later, so a peer reading
//!   all along was `Stalled`. Deterministic with a push frame; intermittent with the
//!   writer's own wake-ups (the defect's case at 100 ms). The verdict now waits until
//!   half a limit after its baseline (`Stall::next`), and bytes written between two
//!   readings are not taken for those the peer read (`stall::judge`).
//!
//! A run that stalled while the machine starved the test's server (woken from a sleep
//! about half a limit late, in the limit before the verdict) proves nothing and is run
//! again, three times at most (`answered`).
//! * Finding 2 (`finding_2_*`), a floor of the approach, ignored: the queue moves in
//!   steps (TCP: a window update, ~95 KB on loopback; Unix: one ~36 KB skb), so a
//!   reader slower than a step per half a stall timeout is `Stalled` though it reads
//!   all along. With the default 30 s that is a few KB/s; `Config::stall_timeout` says
//!   so.

mod support;
#[path = "../examples/common/tls.rs"]
#[allow(dead_code)]
mod tls;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use socketchannel::{
    Call, Channel, Config, ConnectionErrorKind, Error, Kind as ErrKind, Order, Session,
    TcpConnector, TlsConnector,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};

use support::channel::Ch;
use support::codec::{Kind, Msg, MsgCodec, TestProto};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The bound on any one test body.
const WHOLE: Duration = Duration::from_secs(30);

/// Runs a test body within [`WHOLE`], one at a time: the tests move megabytes through
/// slow readers on real time, and on a machine of two cores a reader starved for a
/// stall timeout by its neighbours is silent, as the timer rightly says.
async fn whole<F: Future>(f: F) -> F::Output {
    static ONE_AT_A_TIME: std::sync::OnceLock<Mutex<()>> = std::sync::OnceLock::new();
    let _turn = ONE_AT_A_TIME.get_or_init(|| Mutex::new(())).lock().await;
    tokio::time::timeout(WHOLE, f)
        .await
        .expect("the test finished within its bound")
}

// ---------------------------------------------------------------------------------
// The peer.

/// How the server behaves.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// Bytes per read (0: reads nothing).
    step: usize,
    /// Sleep before each read.
    every: Duration,
    /// Answers each request with its body's length.
    answer: bool,
    /// Sends a push frame this long after its last one (the first this long after the
    /// connection is accepted).
    push_every: Option<Duration>,
    /// Stops reading for good once it has read this many bytes.
    stop_after: Option<usize>,
}

impl Peer {
    fn reading(step: usize, every_ms: u64) -> Peer {
        Peer {
            step,
            every: ms(every_ms),
            answer: true,
            push_every: None,
            stop_after: None,
        }
    }
}

/// What the server saw.
#[derive(Default)]
struct Seen {
    read: AtomicUsize,
    requests: AtomicUsize,
    pushes: AtomicUsize,
    /// The times the machine woke the server late from its sleep before a read: when
    /// it was due, and how late (over 5 ms). A server starved so takes nothing in.
    late: std::sync::Mutex<Vec<(Instant, Duration)>>,
}

impl Seen {
    /// The longest the server woke late in the `window` before `at`.
    fn late_before(&self, at: Instant, window: Duration) -> Duration {
        let from = at.checked_sub(window).unwrap_or(at);
        let late = self.late.lock().expect("not poisoned");
        late.iter()
            .filter(|&&(due, late)| due + late >= from && due <= at)
            .map(|&(_, late)| late)
            .max()
            .unwrap_or_default()
    }
}

async fn serve<S>(stream: S, peer: Peer, seen: Arc<Seen>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let wr = Arc::new(Mutex::new(wr));
    if let Some(period) = peer.push_every {
        let (wr, seen) = (wr.clone(), seen.clone());
        tokio::spawn(async move {
            let mut out = BytesMut::new();
            loop {
                tokio::time::sleep(period).await;
                MsgCodec::default()
                    .encode(Msg::new("tick").kind(Kind::Push), &mut out)
                    .expect("encode");
                let mut wr = wr.lock().await;
                if wr.write_all(&out.split()).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
                seen.pushes.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let (mut codec, mut buf, mut out) = (MsgCodec::default(), BytesMut::new(), BytesMut::new());
    let mut chunk = vec![0; peer.step.max(1)];
    loop {
        let due = Instant::now() + peer.every;
        tokio::time::sleep_until(due).await;
        let late = due.elapsed();
        if late > ms(5) {
            seen.late.lock().expect("not poisoned").push((due, late));
        }
        let stopped = peer
            .stop_after
            .is_some_and(|n| seen.read.load(Ordering::Relaxed) >= n);
        if peer.step == 0 || stopped {
            continue;
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                seen.read.fetch_add(n, Ordering::Relaxed);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        while let Ok(Some(req)) = codec.decode(&mut buf) {
            seen.requests.fetch_add(1, Ordering::Relaxed);
            if peer.answer {
                let reply = Msg::with_id(req.id, req.body.len().to_string());
                codec.encode(reply, &mut out).expect("encode");
                let mut wr = wr.lock().await;
                if wr.write_all(&out.split()).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    Tcp,
    Unix,
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Md {
    Order,
    Session,
}

fn unix_path() -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "review-stall-queue-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// A server behaving as `peer` (one connection), and a channel to it over `net` in
/// mode `md` with `config`: the crate's own connectors (the builder's for TCP and Unix,
/// `TlsConnector` for TLS).
async fn setup(net: Net, md: Md, peer: Peer, config: Config) -> (Ch, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let b = Channel::builder().config(config);
    let ch = match net {
        Net::Tcp | Net::Unix => {
            let b = if net == Net::Tcp {
                let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = l.local_addr().expect("addr");
                tokio::spawn(async move {
                    if let Ok((stream, _)) = l.accept().await {
                        serve(stream, peer, s).await;
                    }
                });
                b.host(addr.to_string())
            } else {
                let path = unix_path();
                let l = UnixListener::bind(&path).expect("bind");
                tokio::spawn(async move {
                    if let Ok((stream, _)) = l.accept().await {
                        serve(stream, peer, s).await;
                    }
                });
                b.host(format!("unix:{}", path.display()))
            };
            match md {
                Md::Order => b.order(MsgCodec::default(), TestProto),
                Md::Session => b.session(MsgCodec::default(), TestProto),
            }
        }
        Net::Tls => {
            let ca = tls::TestCa::new("review CA").expect("ca");
            let cert = ca.server(&["127.0.0.1"]).expect("cert");
            let acceptor =
                tokio_rustls::TlsAcceptor::from(cert.server_config().expect("server config"));
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr");
            tokio::spawn(async move {
                if let Ok((stream, _)) = l.accept().await
                    && let Ok(stream) = acceptor.accept(stream).await
                {
                    serve(stream, peer, s).await;
                }
            });
            let tls = TlsConnector::with_roots(TcpConnector::new(MsgCodec::default()), ca.roots());
            let b = b.host(addr.to_string());
            match md {
                Md::Order => b.connector(tls, Order::new(TestProto)),
                Md::Session => b.connector(tls, Session::new(TestProto)),
            }
        }
    };
    (ch.expect("valid host"), seen)
}

fn stalls_at(limit: Duration) -> Config {
    Config::default().stall_timeout(Some(limit))
}

fn is_stalled(err: &Error) -> bool {
    err.kind() == ErrKind::ConnectionLost
        && err.may_have_executed()
        && err
            .connection_error()
            .is_some_and(|c| c.kind() == ConnectionErrorKind::Stalled)
}

/// How a run failed, and whether the run proves nothing: see [`answered`].
struct Failed {
    why: String,
    starved: bool,
}

/// One request of `size` bytes to a peer behaving as `peer`: its reply, or how it
/// failed (the error, when, how much of the request the server had read, and how late
/// the machine woke it in the last limit).
async fn one_big(net: Net, md: Md, size: usize, peer: Peer, limit: Duration) -> Result<(), Failed> {
    let (ch, seen) = setup(net, md, peer, stalls_at(limit)).await;
    let t = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        ch.request(Msg::new("x".repeat(size))),
    )
    .await;
    let took = t.elapsed();
    let late = seen.late_before(Instant::now(), limit);
    ch.close();
    let failed = |why: String| Failed {
        why: format!("{net:?}/{md:?}: {why}"),
        starved: false,
    };
    match res {
        Err(_) => Err(failed("no verdict within 20 s (a hang)".into())),
        Ok(Ok(reply)) if reply.text() == size.to_string() => Ok(()),
        Ok(Ok(reply)) => Err(failed(format!("wrong reply {:?}", reply.text()))),
        Ok(Err(e)) => Err(Failed {
            // The verdict compares two readings half a limit apart at least, and the
            // queue moves a step per read or two: a server woken half a limit late,
            // less one read, within the limit before the verdict read too little in
            // it to move the queue for certain, and may rightly stall (`Stall::next`).
            starved: is_stalled(&e) && late + peer.every >= limit / 2,
            ..failed(format!(
                "{size} B request to a server reading {} B every {:?} failed after \
                 {took:?} (stall timeout {limit:?}) with the server still reading ({} B \
                 read, {} pushes sent, woken at most {late:?} late in the last limit): {e}",
                peer.step,
                peer.every,
                seen.read.load(Ordering::Relaxed),
                seen.pushes.load(Ordering::Relaxed),
            ))
        }),
    }
}

/// How many times a run that proves nothing is run again.
const RERUNS: usize = 3;

/// [`one_big`], answered. These runs are on real time on a shared machine: one that
/// stalled while the machine starved the server (woke it from a sleep about half a
/// limit late, in the limit before the verdict: it read nothing meanwhile, which the
/// timer may rightly call a stall) proves nothing either way, and is run again, up to
/// [`RERUNS`] times. (A server waiting on a read because the client sent nothing is
/// not late: that is the client's stall.)
async fn answered(
    net: Net,
    md: Md,
    size: usize,
    peer: Peer,
    limit: Duration,
) -> Result<(), String> {
    for _ in 0..RERUNS {
        match one_big(net, md, size, peer, limit).await {
            Ok(()) => return Ok(()),
            Err(Failed { why, starved: true }) => eprintln!("run again, the server starved: {why}"),
            Err(Failed { why, .. }) => return Err(why),
        }
    }
    one_big(net, md, size, peer, limit).await.map_err(|f| f.why)
}

/// `runs` such requests, one after another: every one must be answered.
async fn all_answered(net: Net, md: Md, size: usize, peer: Peer, limit: Duration, runs: usize) {
    let mut failed = Vec::new();
    for _ in 0..runs {
        if let Err(e) = answered(net, md, size, peer, limit).await {
            failed.push(e);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {runs} runs failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------
// Finding 1: progress heard early in a spell leaves the verdict a few ms after the
// baseline (src/mux/stall.rs: `poll` keeps the timer armed for the old spell's end;
// when it fires past the new spell's half, `next` asks for the baseline *then*, and
// the verdict comes at the new spell's end, moments later).

/// 3 MiB (the kernel takes it whole: no writer wake-up later) to a server reading
/// 64 KiB every 40 ms (about 1.6 MB/s: the send queue shrinks by a window of ~95 KB
/// every ~60 ms, over two seconds), which also sends a push frame every 310 ms.
///
/// Each push restarts the clock (a frame read). But the timer stays armed for the end
/// of the spell before (300 ms after the last verdict, which came 10 ms before the
/// push); when it fires, the new spell is past its half, so `Stall::next` asks for the
/// baseline there, and the verdict comes at the new spell's end, 10 ms later. The
/// queue moves in ~60 ms steps: over those 10 ms it usually did not, and the
/// connection fails `Stalled` (at ~615 ms) with the server reading and talking, in
/// both modes and over TLS. Without the pushes
/// (less sign of life) the same transfer is answered: see the control below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_1_a_push_frame_early_in_a_spell_makes_a_slow_reader_stall() {
    whole(async {
        let peer = Peer {
            push_every: Some(ms(310)),
            ..Peer::reading(64 * 1024, 40)
        };
        let mut failed = Vec::new();
        for (net, md) in [
            (Net::Tcp, Md::Session),
            (Net::Tcp, Md::Order),
            (Net::Tls, Md::Session),
        ] {
            if let Err(e) = answered(net, md, 3 * MIB, peer, ms(300)).await {
                failed.push(e);
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    })
    .await;
}

/// The control for finding 1: the same transfer with no push frames is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_1_the_same_slow_reader_without_pushes_is_answered() {
    whole(async {
        all_answered(
            Net::Tcp,
            Md::Session,
            3 * MIB,
            Peer::reading(64 * 1024, 40),
            ms(300),
            2,
        )
        .await;
    })
    .await;
}

/// The defect's own case (8 MiB, a server reading 64 KiB every 10 ms) with a 100 ms
/// stall timeout, eight times over. The writer's wake-ups (every ~330 ms, when a third
/// of the 4 MB send queue drained) restart the clock mid-spell exactly as the pushes
/// of finding 1 do: when one lands within a few ms after a verdict, the next baseline
/// is read ~85 ms late and the verdict ~15 ms after it, across which the queue (moving
/// every ~22 ms) often did not shrink: `Stalled` at ~420 ms, 1.8 MB read. Fails in
/// about one run in three to ten here; eight runs catch it more often than not
/// (intermittent: a pass proves nothing).
///
/// Later, in CI, one run in eight of this test failed `Stalled` at ~1.04 s, 5.1 MB
/// read: a writer wake-up in the very pass that read the queue. The pass read the queue
/// before its flush wrote a third of the send buffer, and that reading, short of those
/// bytes, became the next spell's baseline, so the verdict saw no shrinking. A reading
/// now carries the bytes written to the socket, and those written since the baseline
/// are told from the old ones left
/// (`mux::stall::tests::a_flush_after_the_reading_does_not_hide_the_peer_reading`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_1b_the_defects_own_case_with_a_100ms_timeout_still_stalls_sometimes() {
    whole(async {
        all_answered(
            Net::Tcp,
            Md::Session,
            8 * MIB,
            Peer::reading(64 * 1024, 10),
            ms(100),
            8,
        )
        .await;
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Finding 2: the send queue moves in steps, and a reader slower than one step per
// half a stall timeout stalls though it reads all along (src/mux/stall.rs `answered`:
// one reading at the half and one at the limit must differ; src/meter/queue.rs reads
// `TIOCOUTQ`). Over TCP the queue shrinks only when the receiver opens its window
// again, by about one loopback MSS (~64 KiB: ~95 KB steps here); over a Unix socket
// only when the reader has consumed a whole skb (~36 KB).

/// 1 MiB, taken whole by the kernel, to a server reading 2 KiB every 10 ms (~190 KB/s,
/// about 1.5 Mbit/s: a slow link), with the defect's own 300 ms stall timeout. The
/// queue shrinks by ~95 KB every ~520 ms (`diagnostic_trace_send_queue`, STEP=2048), so
/// the reading at the half (150 ms) and the one at the limit (300 ms) are equal, and
/// the request fails `Stalled` at ~300 ms with 55 KB read, the server reading all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a floor of the send-queue reading (Config::stall_timeout): run with --ignored"]
async fn finding_2_tcp_a_request_taken_whole_read_at_1_5_mbit_s_stalls() {
    whole(async {
        all_answered(
            Net::Tcp,
            Md::Session,
            MIB,
            Peer::reading(2 * 1024, 10),
            ms(300),
            1,
        )
        .await;
    })
    .await;
}

/// 512 KiB over a Unix socket (the builder's connector, a path host) to a server reading
/// 1 KiB every 10 ms (~100 KB/s), stall timeout 300 ms: `SIOCOUTQ` on a Unix socket
/// counts the skbs not wholly read, and drops by one ~36 KB skb every ~400 ms; the
/// writer wakes only every ~2 s (a quarter of the send buffer left): `Stalled` at
/// ~300 ms with 27 KB read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a floor of the send-queue reading (Config::stall_timeout): run with --ignored"]
async fn finding_2_unix_a_slow_reader_stalls() {
    whole(async {
        all_answered(
            Net::Unix,
            Md::Order,
            MIB / 2,
            Peer::reading(1024, 10),
            ms(300),
            1,
        )
        .await;
    })
    .await;
}

// ---------------------------------------------------------------------------------
// What holds: slow readers above those floors.

/// [`all_answered`] in order mode and in session mode.
async fn answered_in_both_modes(net: Net, size: usize, peer: Peer, limit: Duration, runs: usize) {
    for md in [Md::Order, Md::Session] {
        all_answered(net, md, size, peer, limit, runs).await;
    }
}

/// 2 MiB taken whole, read at ~6 MB/s (64 KiB every 10 ms), stall timeout 100 ms: the
/// queue moves every ~22 ms, no writer wake-up restarts a spell mid-way: answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_a_request_taken_whole_read_at_6_mb_s_with_100ms_is_answered() {
    let peer = Peer::reading(64 * 1024, 10);
    whole(answered_in_both_modes(Net::Tcp, 2 * MIB, peer, ms(100), 2)).await;
}

/// The defect's case over a Unix socket (the builder's connector with a path host):
/// answered, in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_the_defects_case_is_answered() {
    let peer = Peer::reading(64 * 1024, 10);
    whole(answered_in_both_modes(Net::Unix, 8 * MIB, peer, ms(300), 1)).await;
}

/// The defect's case over TLS (`TlsConnector`: the queue of the TCP socket under the
/// session): answered, in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_the_defects_case_is_answered() {
    let peer = Peer::reading(64 * 1024, 10);
    whole(answered_in_both_modes(Net::Tls, 8 * MIB, peer, ms(300), 1)).await;
}

// ---------------------------------------------------------------------------------
// What holds: silent peers still stall, within a bound.

/// Calls of 100 B every `gap` to a server (behaving as `peer`) that never answers:
/// the first call's verdict, and when it came.
async fn small_calls(
    net: Net,
    peer: Peer,
    limit: Duration,
    gap: Duration,
) -> (Result<Msg, Error>, Duration) {
    let (ch, _seen) = setup(net, Md::Session, peer, stalls_at(limit)).await;
    let t = Instant::now();
    let first = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.request(Msg::new("y".repeat(100))).await })
    };
    let writer = {
        let ch = ch.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(gap).await;
                let ch = ch.clone();
                tokio::spawn(async move { ch.request(Msg::new("z".repeat(100))).await });
            }
        })
    };
    let res = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the first call got a verdict within 10 s (no hang)")
        .expect("joined");
    let took = t.elapsed();
    writer.abort();
    ch.close();
    (res, took)
}

/// A server that reads every byte at once and never answers, while small calls go
/// out every 10 ms: `Stalled` near the limit, over TCP and a Unix socket, many times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_calls_to_a_reader_that_never_answers_stall_near_the_limit() {
    whole(async {
        let peer = Peer {
            answer: false,
            ..Peer::reading(1 << 20, 1)
        };
        for net in [Net::Tcp, Net::Unix] {
            for _ in 0..5 {
                let (res, took) = small_calls(net, peer, ms(100), ms(10)).await;
                let err = res.expect_err("never answered");
                assert!(is_stalled(&err), "{net:?}: {err}");
                assert!(took < ms(350), "{net:?}: stalled only after {took:?}");
            }
        }
    })
    .await;
}

/// A server that reads only every 40 ms (so a call written just before the half of a
/// spell may still sit in the queue, unacknowledged or unread, then be gone by its
/// end: a queue that "shrank" only because our own small request was taken in), and
/// never answers; small calls every 7 ms. It still stalls within three limits: a
/// reprieve needs each reading strictly below the last, which small writes keep
/// breaking. (The comment in `Stall::poll` admits one extra spell.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_calls_to_a_periodic_reader_that_never_answers_stall_within_three_limits() {
    whole(async {
        let peer = Peer {
            answer: false,
            ..Peer::reading(1 << 20, 40)
        };
        for net in [Net::Tcp, Net::Unix] {
            let mut times = Vec::new();
            for _ in 0..6 {
                let (res, took) = small_calls(net, peer, ms(100), ms(7)).await;
                let err = res.expect_err("never answered");
                assert!(is_stalled(&err), "{net:?}: {err}");
                times.push(took);
            }
            assert!(
                times.iter().all(|t| *t < ms(350)),
                "{net:?}: stalled after {times:?} (limit 100 ms)"
            );
        }
    })
    .await;
}

/// One call to a server that reads everything (at once, or every 40 ms) and never
/// answers, with an idle ping every 20 ms: the ping (a small write that goes out
/// whole, `flushing` false) is no sign of life, and the call fails `Stalled` near the
/// limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_ping_to_a_server_that_never_answers_does_not_keep_it_alive() {
    whole(async {
        for every in [1, 40] {
            for _ in 0..3 {
                let peer = Peer {
                    answer: false,
                    ..Peer::reading(1 << 20, every)
                };
                let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = l.local_addr().expect("addr");
                let seen = Arc::new(Seen::default());
                let s = seen.clone();
                tokio::spawn(async move {
                    if let Ok((stream, _)) = l.accept().await {
                        serve(stream, peer, s).await;
                    }
                });
                let ch: Ch = Channel::builder()
                    .host(addr.to_string())
                    .config(stalls_at(ms(100)))
                    .idle_ping(ms(20), || Msg::new("PING"))
                    .session(MsgCodec::default(), TestProto)
                    .expect("valid host");
                let t = Instant::now();
                let err = tokio::time::timeout(Duration::from_secs(5), ch.request(Msg::new("q")))
                    .await
                    .expect("a verdict within 5 s")
                    .expect_err("never answered");
                let took = t.elapsed();
                assert!(is_stalled(&err), "{err}");
                assert!(
                    took < ms(250),
                    "reads every {every} ms: stalled after {took:?}, {} requests read",
                    seen.requests.load(Ordering::Relaxed)
                );
                assert!(
                    seen.requests.load(Ordering::Relaxed) >= 2,
                    "the ping went out"
                );
                ch.close();
            }
        }
    })
    .await;
}

/// 8 MiB to a server that reads 2 MiB (64 KiB every 10 ms) and then stops reading
/// (its window closes; our send queue stops shrinking): `Stalled`, within three limits
/// and a bit of the stop (the verdict after the last shrink), over TCP, a Unix socket
/// and TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_mid_transfer_stalls_within_a_bound() {
    whole(async {
        for net in [Net::Tcp, Net::Unix, Net::Tls] {
            let peer = Peer {
                stop_after: Some(2 * MIB),
                ..Peer::reading(64 * 1024, 10)
            };
            let (ch, seen) = setup(net, Md::Session, peer, stalls_at(ms(300))).await;
            let t = Instant::now();
            let err = tokio::time::timeout(
                Duration::from_secs(10),
                ch.request(Msg::new("x".repeat(8 * MIB))),
            )
            .await
            .expect("a verdict within 10 s")
            .expect_err("never read whole");
            let took = t.elapsed();
            assert!(is_stalled(&err), "{net:?}: {err}");
            // 2 MiB at ~6 MB/s is ~350 ms of reading; then two limits, and one more:
            // the peer's kernel takes bytes in for a while after it stopped reading (its
            // receive buffer grows), and a queue that shrank spares a spell. Typically
            // ~770 ms, over TLS up to ~920 ms; once 1.16 s under load.
            assert!(
                took < ms(350 + 3 * 300 + 200),
                "{net:?}: stalled after {took:?}"
            );
            assert!(seen.read.load(Ordering::Relaxed) >= 2 * MIB, "{net:?}");
            ch.close();
        }
    })
    .await;
}

/// The thread-local question (`meter::queue`): on one current-thread runtime, channel
/// B moves a large request to a slow reader (its send queue shrinking all along),
/// while channel C (the crate's connector: it asks and answers) and channel U (a
/// transport of the user's own, not `Metered`: it asks, nobody answers) each wait on a
/// server that reads and never answers. If an answer leaked from B's socket to C's or
/// U's question, a shrinking queue would spare them; each stalls near its limit.
#[tokio::test]
async fn no_answer_leaks_between_connections_on_one_thread() {
    whole(async {
        let (b, _) = setup(
            Net::Tcp,
            Md::Session,
            Peer::reading(64 * 1024, 20),
            stalls_at(ms(200)),
        )
        .await;
        let big = tokio::spawn(async move { b.request(Msg::new("x".repeat(3 * MIB))).await });
        tokio::time::sleep(ms(50)).await;
        let mute = Peer {
            answer: false,
            ..Peer::reading(1 << 20, 1)
        };
        let (c, _) = setup(Net::Tcp, Md::Session, mute, stalls_at(ms(200))).await;
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((stream, _)) = l.accept().await {
                serve(stream, mute, Arc::new(Seen::default())).await;
            }
        });
        let (u, conn) = Channel::pair(
            support::connect(addr).await,
            Session::new(TestProto),
            stalls_at(ms(200)),
        );
        tokio::spawn(conn);
        let t = Instant::now();
        let (rc, ru) = tokio::join!(c.request(Msg::new("c")), u.request(Msg::new("u")));
        let took = t.elapsed();
        let (rc, ru) = (
            rc.expect_err("C never answered"),
            ru.expect_err("U never answered"),
        );
        assert!(is_stalled(&rc), "C: {rc}");
        assert!(is_stalled(&ru), "U: {ru}");
        assert!(took < ms(450), "stalled after {took:?} (limit 200 ms)");
        let reply = tokio::time::timeout(Duration::from_secs(10), big)
            .await
            .expect("B answered within 10 s")
            .expect("joined")
            .expect("B's slow reader took the request in and answered");
        assert_eq!(reply.text(), (3 * MIB).to_string());
    })
    .await;
}

/// A call exempt from the stall timer (`Call::no_stall_timeout`) moving 8 MiB to a
/// server that reads nothing: no queue reading is asked for (nothing watched), and it
/// is still waiting after six limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exempt_call_is_never_stalled_by_the_queue_reading() {
    whole(async {
        let (ch, _) = setup(
            Net::Tcp,
            Md::Session,
            Peer::reading(0, 10),
            stalls_at(ms(100)),
        )
        .await;
        let call = Call::new(Msg::new("x".repeat(8 * MIB))).no_stall_timeout();
        let res = tokio::time::timeout(ms(600), ch.request(call)).await;
        assert!(res.is_err(), "the exempt call ended: {res:?}");
        assert_eq!(ch.counters().reconnects, 0);
        ch.close();
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Diagnostics (ignored): how a socket's send queue moves under a slow reader.

/// Writes `SIZE` bytes over TCP (`NET=tcp`, the default) or a Unix socket pair to a
/// server reading `STEP` bytes every `EVERY` ms, printing each write and each change
/// of `TIOCOUTQ` (sampled every 2 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "diagnostic: prints how the send queue moves"]
async fn diagnostic_trace_send_queue() {
    use std::os::fd::AsRawFd;
    fn env(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
    #[allow(unsafe_code)]
    fn outq(fd: i32) -> i64 {
        let mut q: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one c_int; fd is open while the stream lives.
        unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut q) };
        i64::from(q)
    }
    let (size, step, every) = (
        env("SIZE", 2 << 20) as usize,
        env("STEP", 4096) as usize,
        env("EVERY", 10),
    );
    let seen = Arc::new(Seen::default());
    let peer = Peer {
        answer: false,
        ..Peer::reading(step, every)
    };
    let (mut tcp, mut unix) = (None, None);
    let fd = if std::env::var("NET").as_deref() == Ok("unix") {
        let (a, b) = tokio::net::UnixStream::pair().expect("pair");
        tokio::spawn(serve(b, peer, seen.clone()));
        let fd = a.as_raw_fd();
        unix = Some(a);
        fd
    } else {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = tokio::net::TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        a.set_nodelay(true).expect("nodelay");
        let (b, _) = l.accept().await.expect("accept");
        tokio::spawn(serve(b, peer, seen.clone()));
        let fd = a.as_raw_fd();
        tcp = Some(a);
        fd
    };
    let t = Instant::now();
    let sampler = tokio::spawn(async move {
        let mut last = -1;
        while t.elapsed() < Duration::from_secs(5) {
            let q = outq(fd);
            if q != last {
                println!("{:>6} ms queue {q}", t.elapsed().as_millis());
                last = q;
            }
            tokio::time::sleep(ms(2)).await;
        }
    });
    let data = vec![b'x'; size];
    let mut off = 0;
    while off < size && t.elapsed() < Duration::from_secs(5) {
        let n = match (&mut tcp, &mut unix) {
            (Some(s), _) => tokio::time::timeout(ms(500), s.write(&data[off..])).await,
            (_, Some(s)) => tokio::time::timeout(ms(500), s.write(&data[off..])).await,
            _ => unreachable!(),
        };
        if let Ok(n) = n {
            let n = n.expect("write");
            off += n;
            println!("{:>6} ms wrote {n} (total {off})", t.elapsed().as_millis());
        }
    }
    let _ = sampler.await;
    println!("server read {}", seen.read.load(Ordering::Relaxed));
}
