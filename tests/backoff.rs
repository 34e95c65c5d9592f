//! Custom backoff schedules (`Backoff::from_fn`, issue #16 item 7): the waits between
//! failed passes are the iterator's, the schedule starts over after the host answered,
//! an iterator that ends gives up as `max_attempts` does (and `max_attempts` bounds a
//! custom schedule too), and each channel runs a schedule of its own.
//!
//! Every test runs over the in-memory network (`support::memory`) under paused time, and
//! measures the instant of each connect attempt through a connector that notes it.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Backoff, Builder, Channel, Endpoint, Kind, Order, Reconnect, State};
use tokio::time::Instant;
use tower::ServiceExt;

use support::channel::{Ch, msg, wait_state};
use support::codec::{Msg, TestProto};
use support::memory::{Io, Net};
use support::within;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Echoes every frame.
async fn echo(_endpoint: Endpoint, mut io: Io) {
    while let Some(Ok(req)) = io.next().await {
        if io.send(req).await.is_err() {
            break;
        }
    }
}

/// The instants of connect attempts, as the connector saw them.
#[derive(Clone, Default)]
struct Attempts(Arc<Mutex<Vec<Instant>>>);

impl Attempts {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The waits between attempts, from attempt `from` on (0-based).
    fn gaps_from(&self, from: usize) -> Vec<Duration> {
        let at = self.0.lock().unwrap();
        at[from..].windows(2).map(|w| w[1] - w[0]).collect()
    }
}

/// A channel over `net` whose connector notes the instant of every attempt in `attempts`.
fn channel(net: &Net, attempts: &Attempts, builder: Builder<Msg, Msg>) -> Ch {
    let inner = net.connector();
    let log = attempts.0.clone();
    let connector = tower::service_fn(move |endpoint: Endpoint| {
        log.lock().unwrap().push(Instant::now());
        inner.clone().oneshot(endpoint)
    });
    builder
        .connector(connector, Order::new(TestProto))
        .expect("valid hosts")
}

/// A custom schedule of these waits (then none: it ends), counting the factory's calls.
fn schedule(waits: &'static [u64], made: &Arc<AtomicUsize>) -> Backoff {
    let made = made.clone();
    Backoff::from_fn(move || {
        made.fetch_add(1, Ordering::SeqCst);
        waits.iter().map(|s| secs(*s))
    })
}

/// Each wait is as given, within the timer's millisecond.
#[track_caller]
fn assert_waits(gaps: &[Duration], expected: &[u64]) {
    assert_eq!(
        gaps.len(),
        expected.len(),
        "waits {gaps:?}, expected {expected:?} s"
    );
    for (gap, want) in gaps.iter().zip(expected) {
        let want = secs(*want);
        assert!(
            *gap >= want && *gap <= want + Duration::from_millis(5),
            "waits {gaps:?}, expected {expected:?} s"
        );
    }
}

/// The channel waits the schedule's own waits between passes: an irregular schedule
/// (3, 1, 4, 1, 5 s) that no preset makes, taken in order, one per failed pass.
#[tokio::test(start_paused = true)]
async fn waits_between_passes_are_the_schedules() {
    let net = Net::new(echo);
    net.down("a:1", true);
    let attempts = Attempts::default();
    let made = Arc::new(AtomicUsize::new(0));
    let ch = channel(
        &net,
        &attempts,
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Persistent)
            .backoff(schedule(&[3, 1, 4, 1, 5, 9, 2, 6], &made)),
    );
    let err = within(10, "first call", ch.request(msg("x")))
        .await
        .expect_err("down");
    assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
    // Attempts at 0, 3, 4, 8, 9, 14: the wait after the 6th failure is 9 s.
    tokio::time::sleep(secs(16)).await;
    assert_eq!(attempts.count(), 6, "{:?}", attempts.gaps_from(0));
    assert_waits(&attempts.gaps_from(0), &[3, 1, 4, 1, 5]);
    assert_eq!(made.load(Ordering::SeqCst), 1, "one run, one iterator");
}

/// After the host answered a call, the next failure starts the schedule over: the
/// factory is called again and the waits are 1, 2 s again, not the run's next (8 s).
#[tokio::test(start_paused = true)]
async fn the_schedule_starts_over_after_the_host_answered() {
    let net = Net::new(echo);
    net.down("a:1", true);
    let attempts = Attempts::default();
    let made = Arc::new(AtomicUsize::new(0));
    let counted = made.clone();
    let backoff = Backoff::from_fn(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        std::iter::successors(Some(secs(1)), |d| Some(*d * 2))
    });
    let ch = channel(
        &net,
        &attempts,
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Persistent)
            .backoff(backoff),
    );
    let start = Instant::now();
    let _ = within(10, "connect", ch.connect()).await;
    // Failures at 0, 1, 3 s (waits 1, 2, 4); up before the attempt at 7 s.
    tokio::time::sleep_until(start + secs(5)).await;
    net.down("a:1", false);
    wait_state(&ch, State::Ready).await;
    assert_eq!(attempts.count(), 4);
    assert_waits(&attempts.gaps_from(0), &[1, 2, 4]);
    assert_eq!(ch.request(msg("y")).await.expect("up").text(), "y");
    assert_eq!(made.load(Ordering::SeqCst), 1);

    // Lost after answering: reconnects at once, fails, and backs off from the start.
    net.kill("a:1");
    tokio::time::sleep(secs(4)).await;
    assert_eq!(
        made.load(Ordering::SeqCst),
        2,
        "a fresh iterator for the new run"
    );
    // Attempts at +0, +1, +3 s after the loss.
    assert_eq!(attempts.count(), 7, "{:?}", attempts.gaps_from(0));
    assert_waits(&attempts.gaps_from(4), &[1, 2]);
}

/// An iterator that ends gives up as `max_attempts` does: no more passes, the channel
/// idles until the next call, whose pass starts a new run from the first wait.
#[tokio::test(start_paused = true)]
async fn a_schedule_that_ends_gives_up_until_the_next_call() {
    let net = Net::new(echo);
    net.down("a:1", true);
    let attempts = Attempts::default();
    let made = Arc::new(AtomicUsize::new(0));
    let ch = channel(
        &net,
        &attempts,
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Persistent)
            .backoff(schedule(&[2, 1], &made)),
    );
    let _ = within(10, "first call", ch.request(msg("x"))).await;
    // Attempts at 0, 2, 3 s; the third failure finds the schedule ended.
    tokio::time::sleep(secs(60)).await;
    assert_eq!(
        attempts.count(),
        3,
        "kept connecting after the schedule ended"
    );
    assert_waits(&attempts.gaps_from(0), &[2, 1]);
    assert_eq!(*ch.state().borrow(), State::Idle);

    // The next call: a pass at once, then the schedule from its start.
    let err = within(10, "next call", ch.request(msg("y")))
        .await
        .expect_err("down");
    assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
    tokio::time::sleep(secs(60)).await;
    assert_eq!(attempts.count(), 6);
    assert_waits(&attempts.gaps_from(3), &[2, 1]);
    assert_eq!(made.load(Ordering::SeqCst), 2);

    // And it connects when the host is back.
    net.down("a:1", false);
    assert_eq!(ch.request(msg("z")).await.expect("up").text(), "z");
}

/// `max_attempts` bounds a custom schedule too, even one without end.
#[tokio::test(start_paused = true)]
async fn max_attempts_bounds_a_custom_schedule() {
    let net = Net::new(echo);
    net.down("a:1", true);
    let attempts = Attempts::default();
    let ch = channel(
        &net,
        &attempts,
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::from_fn(|| std::iter::repeat(secs(1))).max_attempts(3)),
    );
    let _ = within(10, "first call", ch.request(msg("x"))).await;
    tokio::time::sleep(secs(60)).await;
    assert_eq!(attempts.count(), 3, "{:?}", attempts.gaps_from(0));
    assert_waits(&attempts.gaps_from(0), &[1, 1]);
    assert_eq!(*ch.state().borrow(), State::Idle);
}

/// Two channels of one `Backoff` each run the schedule of their own: each calls the
/// factory, and each waits 1 then 5 s (one shared iterator would give one 1 s and the
/// other 5 s).
#[tokio::test(start_paused = true)]
async fn each_channel_runs_its_own_schedule() {
    let net = Net::new(echo);
    net.down("a:1", true);
    let made = Arc::new(AtomicUsize::new(0));
    let backoff = schedule(&[1, 5], &made);
    let (one, two) = (Attempts::default(), Attempts::default());
    let builder = || {
        Channel::builder()
            .host("a:1")
            .reconnect(Reconnect::Persistent)
            .backoff(backoff.clone())
    };
    let a = channel(&net, &one, builder());
    let b = channel(&net, &two, builder());
    let _ = tokio::join!(a.request(msg("x")), b.request(msg("x")));
    tokio::time::sleep(secs(30)).await;
    assert_waits(&one.gaps_from(0), &[1, 5]);
    assert_waits(&two.gaps_from(0), &[1, 5]);
    assert_eq!(made.load(Ordering::SeqCst), 2);
}

/// A custom schedule prints as "custom"; it equals its clones only; the presets compare
/// as before.
#[test]
fn custom_schedules_print_and_compare() {
    let custom = Backoff::from_fn(std::iter::empty::<Duration>);
    assert!(format!("{custom:?}").contains("custom"), "{custom:?}");
    assert_eq!(custom, custom.clone());
    assert_ne!(custom, Backoff::from_fn(std::iter::empty::<Duration>));
    assert_ne!(custom, Backoff::default());
    assert_eq!(
        Backoff::skynet().max_attempts(2),
        Backoff::skynet().max_attempts(2)
    );
    assert_eq!(
        Backoff::default(),
        Backoff::exponential(Duration::from_millis(100), secs(10))
    );
}
