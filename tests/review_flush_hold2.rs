//! A second skeptic review of the held flush (`src/mux/flush.rs`, after d5901fa):
//! a paused clock (the time rule always reads "quick"), a `close()`, a shutdown or a host
//! change by a woken caller between the held pass that wrote a call and the next (metered
//! and unmetered, fixed and reconnecting), a multi-part `send` and a `Replies::Count(0)`
//! call (both resolved on write) beside a burst. Each burst is 200 replies in one write,
//! read 64 a pass.
//!
//! Failed on 3f61eab, passed with the hold off: `after_an_idle_spell_...` and
//! `a_reply_of_many_frames_...` (the time rule's verdict was old, or taken from passes
//! whose frames woke nobody). Fixed: a verdict counts for 2 ms (`FRESH`; without it the
//! first fails), and only reads whose frames mostly completed calls hold or are timed
//! (the second passes through `FRESH` alone here: its burst comes more than 2 ms after
//! the long reply). The others pass either way: guards.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use socketchannel::{Call, Channel, Config, Error, Replies, Session};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::codec::{Framed, FramedRead};

use support::burst::{BURST, burst_with, encode, rig, warm_up};
use support::channel::Ch;
use support::codec::{Msg, MsgCodec, TestProto};
use support::{bounded, timeout};

/// Every burst call reached the server (it saw all BURST): none may fail *not sent*.
async fn no_burst_call_not_sent(callers: Vec<JoinHandle<Result<Msg, Error>>>) -> usize {
    let mut failed = 0;
    for c in callers {
        if let Err(e) = c.await.unwrap() {
            assert!(
                !e.is_not_sent(),
                "a burst call the server took failed not sent: {e}"
            );
            failed += 1;
        }
    }
    failed
}

/// (3) A woken caller closes the channel as soon as its reply comes: between the held
/// pass that wrote `x` and the next. `x`'s verdict must match what the server saw:
/// *not sent* only if it never reached it; over a metered transport, *not sent* if it
/// did not.
async fn close_by_a_woken_caller(metered: bool) -> (bool, Result<Msg, Error>) {
    let (ch, s) = rig(metered, Duration::ZERO);
    warm_up(&ch, &s).await;
    let first = Arc::new(AtomicBool::new(false));
    let callers = burst_with(&ch, &s, move |ch| {
        if !first.swap(true, Ordering::SeqCst) {
            ch.close();
        }
    })
    .await;
    let mut x = Box::pin(ch.request(Msg::new("x")));
    assert!(futures::poll!(&mut x).is_pending());
    s.release();
    let r = timeout(Duration::from_secs(5), x).await;
    no_burst_call_not_sent(callers).await;
    let reached = s.wait_reached("x", 300).await;
    match &r {
        Ok(_) => assert!(reached, "answered, never seen by the server"),
        Err(e) => {
            if reached {
                assert!(!e.is_not_sent(), "x reached the server, yet: {e}");
            } else if metered {
                assert!(e.is_not_sent(), "x never left a metered IO, yet: {e}");
            }
        }
    }
    eprintln!("metered {metered}: x reached the server: {reached}; x: {r:?}");
    (reached, r)
}

#[tokio::test(flavor = "current_thread")]
async fn close_between_a_held_pass_and_the_next_metered() {
    bounded(async {
        let _ = close_by_a_woken_caller(true).await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn close_between_a_held_pass_and_the_next_unmetered() {
    bounded(async {
        let (reached, r) = close_by_a_woken_caller(false).await;
        // Not a wrong verdict, but note it: a call that never left is reported as
        // *may have executed* over an unmetered transport.
        if let Err(e) = &r {
            assert!(reached || e.may_have_executed(), "{e}");
        }
    })
    .await;
}

/// (2) A multi-part request and a `Replies::Count(0)` call (resolved on write) beside
/// a burst, then `close()` at once: the Count(0) call resolved, so it must reach the
/// server.
#[tokio::test(flavor = "current_thread")]
async fn a_count_zero_call_that_resolved_before_close_reaches_the_server() {
    bounded(async {
        let (ch, s) = rig(false, Duration::ZERO);
        warm_up(&ch, &s).await;
        let callers = burst_with(&ch, &s, |_| {}).await;
        let mut x = Box::pin(ch.request_n(Call::new(Msg::new("x0")).replies(Replies::Count(0)), 0));
        assert!(futures::poll!(&mut x).is_pending());
        s.release();
        let got = timeout(Duration::from_secs(5), x).await;
        assert!(got.is_ok(), "{got:?}");
        ch.close();
        let _ = no_burst_call_not_sent(callers).await;
        assert!(
            s.wait_reached("x0", 300).await,
            "a Count(0) call resolved Ok before close() never reached the server"
        );
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_multi_part_send_that_resolved_before_close_reaches_the_server() {
    bounded(async {
        let (ch, s) = rig(true, Duration::ZERO);
        warm_up(&ch, &s).await;
        let callers = burst_with(&ch, &s, |_| {}).await;
        let parts = vec![Msg::new("p1"), Msg::new("p2"), Msg::new("p3")];
        let mut x = Box::pin(ch.send(Call::parts(parts)));
        assert!(futures::poll!(&mut x).is_pending());
        s.release();
        timeout(Duration::from_secs(5), x).await.unwrap();
        ch.close();
        let _ = no_burst_call_not_sent(callers).await;
        assert!(
            s.wait_reached("p3", 300).await,
            "a multi-part send resolved Ok before close() never fully reached the server"
        );
    })
    .await;
}

/// (5) Shutdown by a woken caller while `x` is held: it waits for `x`'s reply.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_between_a_held_pass_and_the_next_answers_the_held_call() {
    bounded(async {
        let (ch, s) = rig(true, Duration::ZERO);
        warm_up(&ch, &s).await;
        let first = Arc::new(AtomicBool::new(false));
        let callers = burst_with(&ch, &s, move |ch| {
            if !first.swap(true, Ordering::SeqCst) {
                let ch = ch.clone();
                tokio::spawn(async move { ch.shutdown(Duration::from_secs(3)).await });
            }
        })
        .await;
        let mut x = Box::pin(ch.request(Msg::new("x")));
        assert!(futures::poll!(&mut x).is_pending());
        s.release();
        let r = timeout(Duration::from_secs(5), x).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(no_burst_call_not_sent(callers).await, 0);
    })
    .await;
}

// ---------------------------------------------------------------------------------
// (1) A paused clock: the gap after a full read always reads 0, so holds are on from
// the second burst. A server task on the same runtime; the callers await a timer after
// their reply, then make a deadlined call; a stall timer of 20 ms runs. Nothing may
// wait on a held flush while the clock auto-advances.

struct Local {
    seen: AtomicUsize,
    go: Notify,
}

fn local_rig(config: Config) -> (Ch, Arc<Local>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let l = Arc::new(Local {
        seen: AtomicUsize::new(0),
        go: Notify::new(),
    });
    let srv = l.clone();
    tokio::spawn(async move {
        let (rd, mut wr) = tokio::io::split(server);
        let mut calls = FramedRead::new(rd, MsgCodec::default());
        let mut burst = Vec::new();
        while let Some(Ok(call)) = calls.next().await {
            if !call.text().starts_with("call") {
                let _ = wr.write_all(&encode(&[call.id], "other")).await;
                continue;
            }
            burst.push(call.id);
            srv.seen.fetch_add(1, Ordering::SeqCst);
            if burst.len() == BURST {
                srv.go.notified().await;
                wr.write_all(&encode(&burst, "burst")).await.unwrap();
                burst.clear();
            }
        }
    });
    let ch = Channel::with_config(
        Framed::new(client, MsgCodec::default()),
        Session::new(TestProto),
        config,
    );
    (ch, l)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn with_a_paused_clock_no_deadline_or_stall_waits_on_a_held_flush() {
    bounded(async {
        let config = Config::default().stall_timeout(Some(Duration::from_millis(20)));
        let (ch, l) = local_rig(config);
        for round in 0..4 {
            let before = l.seen.load(Ordering::SeqCst);
            let callers: Vec<_> = (0..BURST)
                .map(|i| {
                    let ch = ch.clone();
                    tokio::spawn(async move {
                        ch.request(Msg::new(format!("call {i}"))).await?;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        ch.request(Call::new(Msg::new("f")).timeout(Duration::from_millis(10)))
                            .await
                    })
                })
                .collect();
            while l.seen.load(Ordering::SeqCst) < before + BURST {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let t0 = tokio::time::Instant::now();
            let mut x =
                Box::pin(ch.request(Call::new(Msg::new("x")).timeout(Duration::from_millis(10))));
            // The server first, then the connection task: the pass that writes `x`
            // reads the burst's first 64 replies.
            l.go.notify_one();
            assert!(futures::poll!(&mut x).is_pending());
            let r = x.await;
            assert!(r.is_ok(), "round {round}: x: {r:?}");
            assert!(t0.elapsed() < Duration::from_millis(10), "round {round}");
            for c in callers {
                let r = c.await.unwrap();
                assert!(r.is_ok(), "round {round}: a caller: {r:?}");
            }
        }
        assert!(!ch.is_closed());
    })
    .await;
}

// ---------------------------------------------------------------------------------
// (1, real clock) The time rule's verdict does not expire: `quick` is measured only
// in a pass that follows a full read, and kept until the next such measurement. After
// a round of quick callers and a second of idleness, the next burst's first full read
// holds on that old verdict, and `x` waits behind the work of the 64 callers its
// replies woke (5 ms each, ~320 ms), though nothing has shown holds to be cheap now.

#[tokio::test(flavor = "current_thread")]
async fn after_an_idle_spell_an_old_quick_verdict_holds_a_call_behind_slow_callers() {
    bounded(async {
        let (ch, s) = rig(false, Duration::ZERO);
        warm_up(&ch, &s).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let callers = burst_with(&ch, &s, |_| std::thread::sleep(Duration::from_millis(5))).await;
        let mut x = Box::pin(ch.request(Msg::new("x")));
        assert!(futures::poll!(&mut x).is_pending());
        s.release();
        let t0 = Instant::now();
        timeout(Duration::from_secs(8), x).await.unwrap();
        let at = s.reached("x").unwrap();
        let reached = at.saturating_duration_since(t0);
        assert_eq!(no_burst_call_not_sent(callers).await, 0);
        assert!(
            reached < Duration::from_millis(150),
            "`x` reached the server {reached:?} after its pass, on a verdict a second old"
        );
    })
    .await;
}

/// Slow callers (5 ms each) in a round, then (if `many`) one call answered by 200
/// frames in one write, then the same slow callers and `x` beside their burst: how long
/// after its pass `x` reached the server.
async fn slow_rounds(many: bool) -> Duration {
    let (ch, s) = rig(false, Duration::ZERO);
    let slow = |_: &Ch| std::thread::sleep(Duration::from_millis(5));
    // Slow callers: the pass after the full read is slow, holds are off.
    let callers = burst_with(&ch, &s, slow).await;
    s.release();
    assert_eq!(no_burst_call_not_sent(callers).await, 0);
    if many {
        let parts = timeout(
            Duration::from_secs(5),
            ch.request_n(Msg::new("many"), BURST),
        )
        .await
        .unwrap();
        assert_eq!(parts.len(), BURST);
    }
    let callers = burst_with(&ch, &s, slow).await;
    let mut x = Box::pin(ch.request(Msg::new("x")));
    assert!(futures::poll!(&mut x).is_pending());
    s.release();
    let t0 = Instant::now();
    timeout(Duration::from_secs(8), x).await.unwrap();
    let at = s.reached("x").unwrap();
    assert_eq!(no_burst_call_not_sent(callers).await, 0);
    at.saturating_duration_since(t0)
}

/// Control: callers known to be slow keep holds off (the time rule works).
#[tokio::test(flavor = "current_thread")]
async fn callers_known_to_be_slow_keep_holds_off() {
    bounded(async {
        let reached = slow_rounds(false).await;
        assert!(reached < Duration::from_millis(150), "{reached:?}");
    })
    .await;
}

/// The verdict is taken from other callers than those a hold waits for: one
/// `request_n` of 200 frames (its full reads wake nobody, so the pass after each comes
/// at once) turns holds back on, and the next burst of the same slow callers holds `x`
/// behind 64 of them again (~330 ms).
#[tokio::test(flavor = "current_thread")]
async fn a_reply_of_many_frames_turns_holds_on_for_callers_known_to_be_slow() {
    bounded(async {
        let reached = slow_rounds(true).await;
        assert!(
            reached < Duration::from_millis(150),
            "`x` reached the server {reached:?} after its pass, behind callers known to be slow"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------
// (3) A reconnecting channel (in-memory connector): a woken caller changes the host,
// or closes, between the held pass that wrote `x` and the next.

struct Burst {
    seen: AtomicUsize,
    go: Notify,
    others: Mutex<Vec<String>>,
}

fn burst_net(b: &Arc<Burst>) -> support::memory::Net {
    let b = b.clone();
    support::memory::Net::new(
        move |ep: socketchannel::Endpoint, io: support::memory::Io| {
            let b = b.clone();
            async move {
                let (mut wr, mut rd) = io.split();
                use futures::SinkExt;
                let mut burst = Vec::new();
                while let Some(Ok(call)) = rd.next().await {
                    if !call.text().starts_with("call") {
                        b.others
                            .lock()
                            .unwrap()
                            .push(format!("{ep} {}", call.text()));
                        let _ = wr.send(Msg::with_id(call.id, "other")).await;
                        continue;
                    }
                    burst.push(call.id);
                    b.seen.fetch_add(1, Ordering::SeqCst);
                    if burst.len() == BURST {
                        b.go.notified().await;
                        for &id in &burst {
                            let _ = wr.feed(Msg::with_id(id, "burst")).await;
                        }
                        let _ = wr.flush().await;
                        burst.clear();
                    }
                }
            }
        },
    )
}

async fn reconnect_round<F>(
    ch: &Ch,
    b: &Burst,
    then: F,
    x: bool,
) -> (
    Option<Result<Msg, Error>>,
    Vec<JoinHandle<Result<Msg, Error>>>,
)
where
    F: Fn(&Ch) + Send + Sync + Clone + 'static,
{
    let before = b.seen.load(Ordering::SeqCst);
    let callers: Vec<_> = (0..BURST)
        .map(|i| {
            let ch = ch.clone();
            let then = then.clone();
            tokio::spawn(async move {
                let r = ch.request(Msg::new(format!("call {i}"))).await;
                if r.is_ok() {
                    then(&ch);
                }
                r
            })
        })
        .collect();
    while b.seen.load(Ordering::SeqCst) < before + BURST {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if !x {
        b.go.notify_one();
        return (None, callers);
    }
    let mut xf = Box::pin(ch.request(Msg::new("x")));
    // The server first, then the connection task: the pass that writes `x` reads the
    // burst's first 64 replies.
    b.go.notify_one();
    assert!(futures::poll!(&mut xf).is_pending());
    let r = timeout(Duration::from_secs(5), xf).await;
    (Some(r), callers)
}

// A paused clock: holds are on from the second burst (the time rule reads 0).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn change_host_between_a_held_pass_and_the_next_drains_the_held_call() {
    bounded(async {
        let b = Arc::new(Burst {
            seen: AtomicUsize::new(0),
            go: Notify::new(),
            others: Mutex::new(Vec::new()),
        });
        let net = burst_net(&b);
        let ch = net.channel(
            support::channel::Mode::Session,
            Channel::builder().host("a:1"),
        );
        let (_, callers) = reconnect_round(&ch, &b, |_| {}, false).await;
        assert_eq!(no_burst_call_not_sent(callers).await, 0);
        let first = Arc::new(AtomicBool::new(false));
        let (x, callers) = reconnect_round(
            &ch,
            &b,
            move |ch| {
                if !first.swap(true, Ordering::SeqCst) {
                    ch.change_host("b:1").unwrap();
                }
            },
            true,
        )
        .await;
        let x = x.unwrap();
        assert_eq!(no_burst_call_not_sent(callers).await, 0);
        assert!(x.is_ok(), "{x:?}");
        assert!(b.others.lock().unwrap().iter().any(|t| t == "a:1 x"));
    })
    .await;
}

async fn reconnect_close(config: Config) -> (bool, Result<Msg, Error>) {
    let b = Arc::new(Burst {
        seen: AtomicUsize::new(0),
        go: Notify::new(),
        others: Mutex::new(Vec::new()),
    });
    let net = burst_net(&b);
    let ch = net.channel(
        support::channel::Mode::Session,
        Channel::builder().host("a:1").config(config),
    );
    let (_, callers) = reconnect_round(&ch, &b, |_| {}, false).await;
    assert_eq!(no_burst_call_not_sent(callers).await, 0);
    let first = Arc::new(AtomicBool::new(false));
    let (x, callers) = reconnect_round(
        &ch,
        &b,
        move |ch| {
            if !first.swap(true, Ordering::SeqCst) {
                ch.close();
            }
        },
        true,
    )
    .await;
    let x = x.unwrap();
    no_burst_call_not_sent(callers).await;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let reached = b.others.lock().unwrap().iter().any(|t| t == "a:1 x");
    eprintln!("reconnect close: x reached: {reached}; x: {x:?}");
    if let Err(e) = &x {
        assert!(!reached || !e.is_not_sent(), "{e}");
    } else {
        assert!(reached);
    }
    (reached, x)
}

/// With the default orphan-age clock (60 s) and without it: until b169b5a the time rule
/// took the pass's clock, which with that clock is read at the pass's start
/// (`advance_age`); it now reads its own at the pass's end.
// A paused clock: holds are on from the second burst (the time rule reads 0).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn close_of_a_reconnecting_channel_between_a_held_pass_and_the_next() {
    bounded(async {
        let (reached, x) = reconnect_close(Config::default()).await;
        eprintln!("default config: x reached: {reached}; x: {x:?}");
        let (reached, x) = reconnect_close(Config::default().orphan_age(None)).await;
        eprintln!("no orphan age: x reached: {reached}; x: {x:?}");
    })
    .await;
}
