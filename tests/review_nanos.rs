//! Review of 9cc23db (deadlines as u64 nanoseconds from an epoch taken in
//! `Deadlines::new`, i.e. in `Engine::new`, when the channel is built), with its two
//! findings fixed:
//!
//! 1. the epoch was read from whatever clock was current when the channel was *built*,
//!    but deadlines are read on the clock of the runtime the task *runs* on: when that
//!    clock was behind the epoch, future deadlines counted as passed and timeouts fired
//!    late. The epoch is now the task's first clock read for a deadline.
//! 2. a deadline beyond `epoch + NEVER` (30 years; any `Duration::MAX` timeout) capped
//!    the timer below the entry, so from then on the timer was always elapsed and
//!    nothing was ever due: the task busy-looped (self-wake) and, on a paused clock,
//!    blocked auto-advance for good. A deadline of never now arms no timer, and any
//!    other is the timer's instant itself.
//!
//! Those tests failed on 9cc23db (and passed on its parent); the rest are controls.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use socketchannel::{Call, Channel, Config, Connection, Kind, Session};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use support::channel::{Ch, into_channel_error, msg, spawn_request};
use support::codec::TestProto;
use support::script::{Peer, pipe};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `config::NEVER`.
const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);

fn paused_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Counts the polls of a connection task.
struct Counted {
    inner: Connection,
    polls: Arc<AtomicUsize>,
}

impl Future for Counted {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll(cx)
    }
}

fn spawn_counted(conn: Connection) -> Arc<AtomicUsize> {
    let polls = Arc::new(AtomicUsize::new(0));
    tokio::spawn(Counted {
        inner: conn,
        polls: polls.clone(),
    });
    polls
}

/// Makes a call of `body` with `Call::timeout(timeout)` through `Service<Call>` (a
/// `Deadline::After`, which the connection task resolves) and returns its reply's
/// future: the call is queued by the time this returns.
async fn timed(
    ch: &Ch,
    body: &str,
    timeout: Duration,
) -> impl Future<Output = Result<socketchannel::Reply<support::codec::Msg>, socketchannel::BoxError>>
{
    let mut calls = ch.calls();
    calls
        .ready()
        .await
        .expect("ready")
        .call(Call::new(msg(body)).timeout(timeout))
}

/// A paused runtime, and a channel built outside it 300 ms of real time later (setup
/// work before `block_on`): the runtime's paused clock is behind the channel's build.
fn built_after_a_paused_runtime() -> (tokio::runtime::Runtime, Ch, tokio::io::DuplexStream) {
    let rt = paused_rt();
    std::thread::sleep(ms(300));
    let (transport, server) = pipe();
    let ch: Ch = Channel::with_config(transport, Session::new(TestProto), Config::default());
    (rt, ch, server)
}

// ---------------------------------------------------------------------------------
// Finding 1: epoch from the build-time clock, deadlines on the run-time clock.
// ---------------------------------------------------------------------------------

/// A runtime made (paused) first, the channel built outside it (as a builder run before
/// the runtime starts), then `block_on`: the paused clock stands at the runtime's
/// creation, behind the epoch (the std clock when the channel was built). A call whose
/// deadline is 100 ms ahead, answered after 50 ms, must succeed.
#[test]
fn future_deadline_on_a_clock_behind_the_epoch_is_not_passed() {
    let (rt, ch, server) = built_after_a_paused_runtime();
    rt.block_on(async move {
        let peer = Peer::spawn(server);
        let mut peer = peer;
        let start = Instant::now();
        let call = spawn_request(&ch, Call::new(msg("a")).deadline(start + ms(100)));
        tokio::time::sleep(ms(50)).await;
        if let Some(req) = peer.idle() {
            peer.reply(&req, "re:a");
        }
        let out = tokio::time::timeout(ms(1000), call)
            .await
            .expect("bounded")
            .expect("no panic");
        match out {
            Ok(reply) => assert_eq!(reply.text(), "re:a"),
            Err(err) => panic!(
                "a call whose deadline was 100 ms ahead failed after {:?}: {err:?} \
                 (kind {:?}, not sent: {})",
                Instant::now() - start,
                err.kind(),
                err.is_not_sent()
            ),
        }
    });
}

/// Same setup; a `Call::timeout` through tower (a `Deadline::After` that reaches
/// `Deadlines::check`) on a silent server must fire 100 ms after the call.
#[test]
fn timeout_on_a_clock_behind_the_epoch_fires_on_time() {
    let (rt, ch, server) = built_after_a_paused_runtime();
    rt.block_on(async move {
        let _peer = Peer::spawn(server);
        let start = Instant::now();
        let fut = timed(&ch, "w", ms(100)).await;
        let err = into_channel_error(fut.await.expect_err("the server never answers"));
        let took = Instant::now() - start;
        assert_eq!(err.kind(), Kind::Timeout);
        assert!(
            took >= ms(100) && took <= ms(101),
            "a 100 ms timeout fired after {took:?}"
        );
    });
}

/// Fully deterministic (no real sleep): a pair made on a paused runtime whose clock was
/// advanced an hour, its connection run on another paused runtime (whose clock starts
/// at the real now, an hour behind the epoch).
#[test]
fn pair_made_on_one_runtime_run_on_another() {
    let a = paused_rt();
    let (ch, conn, server) = a.block_on(async {
        tokio::time::advance(Duration::from_secs(3600)).await;
        let (transport, server) = pipe();
        let (ch, conn): (Ch, Connection) =
            Channel::pair(transport, Session::new(TestProto), Config::default());
        (ch, conn, server)
    });
    drop(a);
    let b = paused_rt();
    b.block_on(async move {
        tokio::spawn(conn);
        let mut peer = Peer::spawn(server);
        // (a) a deadline 100 ms ahead, answered at 50 ms.
        let start = Instant::now();
        let call = spawn_request(&ch, Call::new(msg("a")).deadline(start + ms(100)));
        tokio::time::sleep(ms(50)).await;
        let a_ok = match peer.idle() {
            Some(req) => {
                peer.reply(&req, "re:a");
                call.await.unwrap().is_ok()
            }
            None => false,
        };
        // (b) a 100 ms timeout through tower on a silent server.
        let start = Instant::now();
        let fut = timed(&ch, "w", ms(100)).await;
        let err = into_channel_error(fut.await.expect_err("never answered"));
        let took = Instant::now() - start;
        assert!(
            a_ok && took <= ms(101) && err.kind() == Kind::Timeout,
            "deadline 100 ms ahead answered at 50 ms succeeded: {a_ok}; \
             a 100 ms timeout failed {:?} after {took:?}",
            err.kind()
        );
    });
}

// ---------------------------------------------------------------------------------
// Finding 2: an entry beyond the 30-year timer cap: the timer fires, nothing is due.
// ---------------------------------------------------------------------------------

/// One call with `timeout(Duration::MAX)` (entry `u64::MAX`), answered at once. Its
/// entry stays in the young generation; the timer is capped at `epoch + NEVER`. Past
/// that, the task must not be polled on every scheduler tick.
#[tokio::test(start_paused = true)]
async fn an_answered_duration_max_timeout_does_not_make_the_task_spin() {
    let (transport, server) = pipe();
    let (ch, conn): (Ch, Connection) =
        Channel::pair(transport, Session::new(TestProto), Config::default());
    let polls = spawn_counted(conn);
    let mut peer = Peer::spawn(server);
    let fut = timed(&ch, "a", Duration::MAX).await;
    let req = peer.next().await;
    peer.reply(&req, "re:a");
    fut.await.expect("answered");
    tokio::time::advance(NEVER + Duration::from_secs(86_400)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let before = polls.load(Ordering::Relaxed);
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    let spun = polls.load(Ordering::Relaxed) - before;
    assert!(
        spun < 10,
        "the idle connection task was polled {spun} times over 200 yields"
    );
}

/// `Config::call_timeout(Duration::MAX)` through a method (stamped `now + NEVER`), a
/// second after the channel was made: the entry is at `NEVER + 1 s`, the timer at
/// `NEVER`. On a paused clock the spinning task keeps the runtime from ever idling, so
/// auto-advance stops: a 1 ms sleep in the test never ends. Run on a thread of its own,
/// watched in real time.
#[test]
fn a_call_timeout_of_duration_max_does_not_block_auto_advance_after_30_years() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = paused_rt();
        rt.block_on(async move {
            let (transport, server) = pipe();
            let (ch, conn): (Ch, Connection) = Channel::pair(
                transport,
                Session::new(TestProto),
                Config::default().call_timeout(Duration::MAX),
            );
            tokio::spawn(conn);
            let mut peer = Peer::spawn(server);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let call = spawn_request(&ch, "a");
            let req = peer.next().await;
            peer.reply(&req, "re:a");
            call.await.unwrap().expect("answered");
            // A test that waits "forever" (tokio's own far future is now + 30 years).
            tokio::time::sleep(NEVER + Duration::from_secs(60)).await;
            tokio::time::sleep(ms(1)).await;
            let _ = tx.send(());
        });
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "paused time stopped advancing 30 years after the channel was made \
         (the connection task spins; its thread is left behind)"
    );
}

/// Not only huge timeouts: once the channel is older than 30 years (`epoch + NEVER`),
/// every deadline's nanos exceed the timer's cap, so an ordinary 100 ms timeout spins
/// the task and, on a paused clock, never fires.
#[test]
fn a_channel_older_than_30_years_times_out_an_ordinary_call() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = paused_rt();
        rt.block_on(async move {
            let (transport, server) = pipe();
            let (ch, conn): (Ch, Connection) =
                Channel::pair(transport, Session::new(TestProto), Config::default());
            tokio::spawn(conn);
            let _peer = Peer::spawn(server);
            tokio::time::advance(NEVER + Duration::from_secs(86_400)).await;
            let start = Instant::now();
            let err = ch
                .request(Call::new(msg("late")).timeout(ms(100)))
                .await
                .expect_err("the server never answers");
            let _ = tx.send((err.kind(), Instant::now() - start));
        });
    });
    let got = rx.recv_timeout(Duration::from_secs(10));
    assert!(
        matches!(got, Ok((Kind::Timeout, took)) if took <= ms(101)),
        "a 100 ms timeout on a channel made 30 years ago: {got:?} \
         (Err(Timeout) = it never fired within 10 s of real time; the task spins)"
    );
}

// ---------------------------------------------------------------------------------
// Controls (expected to pass).
// ---------------------------------------------------------------------------------

/// A deadline at an odd nanosecond after an odd start: it fires at it (to the ms),
/// with no spinning around the timer instant.
#[tokio::test(start_paused = true)]
async fn a_deadline_at_an_odd_nanosecond_fires_on_time_without_spinning() {
    let (transport, server) = pipe();
    let (ch, conn): (Ch, Connection) =
        Channel::pair(transport, Session::new(TestProto), Config::default());
    let polls = spawn_counted(conn);
    let _peer = Peer::spawn(server);
    tokio::time::advance(Duration::from_nanos(1_234_567)).await;
    for (i, extra) in [7_654_321u64, 1, 999_999, 1_000_000]
        .into_iter()
        .enumerate()
    {
        let at = Instant::now() + Duration::from_nanos(extra);
        let before = polls.load(Ordering::Relaxed);
        let err = ch
            .request(Call::new(msg(format!("c{i}"))).deadline(at))
            .await
            .expect_err("never answered");
        assert_eq!(err.kind(), Kind::Timeout);
        let now = Instant::now();
        // tokio's timer is to the millisecond, and a paused clock auto-advances by
        // whole ticks from a fractional now: up to 2 ms late (as before 9cc23db).
        assert!(now >= at && now <= at + ms(2), "{i}: {:?}", now - at);
        let n = polls.load(Ordering::Relaxed) - before;
        assert!(n < 20, "{i}: {n} polls");
    }
}

/// A channel made on a running (unpaused) runtime, then the clock paused: deadlines
/// count on the paused clock, which goes on from the real one.
#[tokio::test(flavor = "current_thread")]
async fn a_channel_made_before_pause_times_out_on_the_paused_clock() {
    let (transport, server) = pipe();
    let ch: Ch = Channel::with_config(transport, Session::new(TestProto), Config::default());
    let _peer = Peer::spawn(server);
    tokio::time::sleep(ms(5)).await;
    tokio::time::pause();
    let start = Instant::now();
    let fut = timed(&ch, "w", ms(100)).await;
    let err = into_channel_error(fut.await.expect_err("never answered"));
    assert_eq!(err.kind(), Kind::Timeout);
    let took = Instant::now() - start;
    assert!(took >= ms(100) && took <= ms(101), "{took:?}");
}

/// An instant from before the channel was made (before its epoch) has passed: the call
/// fails at once, *not sent*.
#[tokio::test(start_paused = true)]
async fn an_instant_before_the_epoch_has_passed() {
    let before = Instant::now();
    tokio::time::advance(ms(10)).await;
    let (transport, server) = pipe();
    let ch: Ch = Channel::with_config(transport, Session::new(TestProto), Config::default());
    let mut peer = Peer::spawn(server);
    tokio::time::advance(ms(10)).await;
    let start = Instant::now();
    let err = ch
        .request(Call::new(msg("old")).deadline(before + ms(5)))
        .await
        .expect_err("passed");
    assert_eq!(err.kind(), Kind::Timeout);
    assert!(err.is_not_sent());
    assert_eq!(Instant::now(), start);
    assert!(peer.idle().is_none());
}
