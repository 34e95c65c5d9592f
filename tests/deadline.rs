//! Call deadlines inside the engine (`Call::deadline`, `Call::timeout`,
//! `Config::call_timeout` / `Builder::call_timeout`): a queued call fails
//! `Kind::Timeout` *not sent* at its deadline and is never written, at any phase
//! (connecting to a black hole, waiting for room); a written one fails *may have
//! executed* and keeps its slot or id until its reply; deadlines resolve in deadline
//! order whatever order they were given in; `RetryNotSent` never retries a timeout, and
//! a retried call keeps its deadline. All in virtual time, to the millisecond.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use socketchannel::{Call, Channel, Config, Kind, RetryNotSent};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use support::channel::{Ch, Mode, joined, joined_within, msg, spawn_request};
use support::memory::{Net, Seen, echo_after};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn channel(net: &Net, mode: Mode, config: Config) -> Ch {
    net.channel(mode, Channel::builder().host("a:1").config(config))
}

/// Within a millisecond of `at`, and not before it.
#[track_caller]
fn at_deadline(ended: Instant, at: Instant) {
    assert!(
        ended >= at && ended <= at + ms(1),
        "resolved {:?} after its deadline",
        ended
            .checked_duration_since(at)
            .map_or_else(|| format!("-{:?}", at - ended), |d| format!("{d:?}"))
    );
}

/// The case: a connect that never completes (5 s connect timeout); queued calls
/// fail at their deadlines, *not sent*, with their requests, long before the connect
/// gives up, and none is ever written.
#[tokio::test(start_paused = true)]
async fn queued_calls_fail_at_their_deadline_during_a_blackholed_connect() {
    for mode in [Mode::Order, Mode::Session] {
        let seen = Seen::default();
        let net = echo_after(Duration::ZERO, &seen);
        net.hang("a:1");
        let ch = net.channel(
            mode,
            Channel::builder()
                .host("a:1")
                .connect_timeout(Duration::from_secs(5)),
        );
        let start = Instant::now();
        let calls: Vec<_> = [300u64, 100, 200]
            .iter()
            .map(|&d| {
                let call = Call::new(msg(format!("d{d}"))).deadline(start + ms(d));
                let ch = ch.clone();
                tokio::spawn(async move {
                    let out = ch.request(call).await;
                    (out, Instant::now())
                })
            })
            .collect();
        for (call, d) in calls.into_iter().zip([300u64, 100, 200]) {
            let (out, ended) = joined(call).await;
            let mut err = out.expect_err("timed out");
            assert_eq!(err.kind(), Kind::Timeout, "{mode:?}: {err}");
            assert!(
                err.is_not_sent(),
                "{mode:?}: queued calls were never written"
            );
            let req = err
                .take_request::<support::codec::Msg>()
                .expect("handed back");
            assert_eq!(req.text(), format!("d{d}"));
            at_deadline(ended, start + ms(d));
        }
        assert!(seen.lock().unwrap().is_empty(), "nothing was written");
    }
}

/// Deadlines given in reverse order resolve in deadline order, to the millisecond.
#[tokio::test(start_paused = true)]
async fn deadlines_in_reverse_order_resolve_in_deadline_order() {
    let seen = Seen::default();
    let net = echo_after(Duration::ZERO, &seen);
    net.hang("a:1");
    let ch = channel(&net, Mode::Order, Config::default());
    let start = Instant::now();
    let order = Arc::new(Mutex::new(Vec::new()));
    let calls: Vec<_> = (1..=20u64)
        .rev()
        .map(|i| {
            let call = Call::new(msg(format!("{i}"))).deadline(start + ms(10 * i));
            let (ch, order) = (ch.clone(), order.clone());
            tokio::spawn(async move {
                let err = ch.request(call).await.expect_err("timed out");
                assert_eq!(err.kind(), Kind::Timeout);
                at_deadline(Instant::now(), start + ms(10 * i));
                order.lock().unwrap().push(i);
            })
        })
        .collect();
    for call in calls {
        joined(call).await;
    }
    assert_eq!(*order.lock().unwrap(), (1..=20).collect::<Vec<_>>());
}

/// A written call fails *may have executed* at its deadline; its slot stays taken
/// until its reply comes: with one call in flight, the next is written only after the
/// late reply, which is read and dropped (no desync), and it gets its own reply.
#[tokio::test(start_paused = true)]
async fn a_written_call_times_out_may_have_executed_and_keeps_its_slot() {
    for mode in [Mode::Order, Mode::Session] {
        let seen = Seen::default();
        let net = echo_after(ms(500), &seen);
        let ch = channel(&net, mode, Config::default().max_in_flight(1));
        let start = Instant::now();
        let slow = spawn_request(&ch, Call::new(msg("slow")).timeout(ms(100)));
        tokio::time::sleep(ms(1)).await;
        let next = spawn_request(&ch, "next");
        let err = joined(slow).await.expect_err("timed out");
        assert_eq!(err.kind(), Kind::Timeout, "{mode:?}");
        assert!(!err.is_not_sent(), "{mode:?}: it was written");
        at_deadline(Instant::now(), start + ms(100));
        // The slot is still taken: `next` is not written before the late reply.
        tokio::time::sleep(ms(300)).await;
        assert_eq!(*seen.lock().unwrap(), ["slow"], "{mode:?}");
        let reply = joined(next).await.expect("answered after the late reply");
        assert_eq!(reply.text(), "next", "{mode:?}: its own reply");
        assert_eq!(*seen.lock().unwrap(), ["slow", "next"]);
        assert!(
            Instant::now() >= start + ms(1000),
            "{mode:?}: written after 500 ms"
        );
    }
}

/// Waiting for room on a connection (in-flight limit reached): the calls queued behind
/// fail at their deadlines, *not sent*, and are never written, while the first waits.
#[tokio::test(start_paused = true)]
async fn calls_waiting_for_room_fail_at_their_deadline_unwritten() {
    let seen = Seen::default();
    let net = echo_after(ms(1000), &seen);
    let ch = channel(&net, Mode::Order, Config::default().max_in_flight(1));
    let first = spawn_request(&ch, "first");
    tokio::time::sleep(ms(10)).await;
    let start = Instant::now();
    let behind: Vec<_> = (1..=3u64)
        .map(|i| {
            let call = Call::new(msg(format!("b{i}"))).deadline(start + ms(100 * i));
            let ch = ch.clone();
            tokio::spawn(async move { (ch.request(call).await, Instant::now()) })
        })
        .collect();
    for (i, call) in (1..=3u64).zip(behind) {
        let (out, ended) = joined(call).await;
        let err = out.expect_err("timed out");
        assert_eq!(err.kind(), Kind::Timeout);
        assert!(err.is_not_sent(), "never written");
        at_deadline(ended, start + ms(100 * i));
    }
    assert_eq!(joined(first).await.expect("answered").text(), "first");
    tokio::time::sleep(ms(100)).await;
    assert_eq!(
        *seen.lock().unwrap(),
        ["first"],
        "the timed-out calls never went out"
    );
}

/// The intake itself full (`queue(1)`): a caller waiting to queue its call gives up at
/// its deadline, *not sent*.
#[tokio::test(start_paused = true)]
async fn a_caller_waiting_for_intake_room_gives_up_at_its_deadline() {
    let seen = Seen::default();
    let net = echo_after(Duration::ZERO, &seen);
    net.hang("a:1");
    let ch = channel(&net, Mode::Order, Config::default().queue(1));
    // Deadlines in use: the task holds up to `queue` calls besides the intake's.
    let start = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let call = Call::new(msg(format!("{i}"))).deadline(start + ms(200 + i));
            let ch = ch.clone();
            tokio::spawn(async move { (ch.request(call).await, Instant::now()) })
        })
        .collect();
    for (i, call) in (0..4u64).zip(calls) {
        let (out, ended) = joined(call).await;
        let err = out.expect_err("timed out");
        assert_eq!(err.kind(), Kind::Timeout, "call {i}");
        assert!(err.is_not_sent());
        at_deadline(ended, start + ms(200 + i));
    }
}

/// The channel's default applies to every call without a deadline of its own, through
/// the methods and through `Service<Req>`; a call's own deadline replaces it.
#[tokio::test(start_paused = true)]
async fn the_channel_default_applies_and_a_calls_own_wins() {
    let seen = Seen::default();
    let net = echo_after(Duration::ZERO, &seen);
    net.hang("a:1");
    let ch = net.channel(
        Mode::Session,
        Channel::builder().host("a:1").call_timeout(ms(250)),
    );
    let start = Instant::now();
    let by_method = spawn_request(&ch, "m");
    let own = spawn_request(&ch, Call::new(msg("own")).timeout(ms(50)));
    let mut svc = ch.clone();
    let by_service = tokio::spawn(async move {
        let out = svc.ready().await.expect("ready").call(msg("s")).await;
        (out, Instant::now())
    });
    let err = joined(own).await.expect_err("timed out");
    assert_eq!(err.kind(), Kind::Timeout);
    at_deadline(Instant::now(), start + ms(50));
    let err = joined(by_method).await.expect_err("timed out");
    assert_eq!(err.kind(), Kind::Timeout);
    at_deadline(Instant::now(), start + ms(250));
    let (out, ended) = joined(by_service).await;
    let err = support::channel::into_channel_error(out.expect_err("timed out"));
    assert_eq!(err.kind(), Kind::Timeout);
    at_deadline(ended, start + ms(250));
}

/// Calls answered before their deadline are untouched, and a long run of them leaves
/// no growing bookkeeping behind (the sweep): the channel still times out a late one
/// precisely.
#[tokio::test(start_paused = true)]
async fn answered_calls_are_untouched_and_leave_nothing_behind() {
    let seen = Seen::default();
    let net = echo_after(Duration::ZERO, &seen);
    let ch = channel(&net, Mode::Session, Config::default());
    for round in 0..50 {
        let calls: Vec<_> = (0..100)
            .map(|i| {
                spawn_request(
                    &ch,
                    Call::new(msg(format!("{round}.{i}"))).timeout(ms(60_000)),
                )
            })
            .collect();
        for call in calls {
            joined(call).await.expect("answered in time");
        }
    }
    net.hang("a:1");
    net.kill("a:1");
    support::channel::wait_state(&ch, socketchannel::State::Idle).await;
    let start = Instant::now();
    let late = spawn_request(&ch, Call::new(msg("late")).timeout(ms(30)));
    let err = joined(late).await.expect_err("timed out");
    assert_eq!(err.kind(), Kind::Timeout);
    at_deadline(Instant::now(), start + ms(30));
}

/// `RetryNotSent` never retries a timeout: a call that timed out queued (*not sent*)
/// is not sent again.
#[tokio::test(start_paused = true)]
async fn retry_never_retries_a_timeout() {
    let seen = Seen::default();
    let net = echo_after(Duration::ZERO, &seen);
    net.hang("a:1");
    let ch = channel(&net, Mode::Order, Config::default());
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = attempts.clone();
    let mut svc = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(RetryNotSent::new(10)))
        .map_request(move |call: Call<support::codec::Msg>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            call
        })
        .service(ch.calls());
    let start = Instant::now();
    let call = Call::new(msg("x")).deadline(start + ms(400));
    let out = svc.ready().await.expect("ready").call(call).await;
    let err = support::channel::into_channel_error(out.expect_err("timed out"));
    assert_eq!(err.kind(), Kind::Timeout, "{err}");
    assert!(err.is_not_sent());
    at_deadline(Instant::now(), start + ms(400));
    assert_eq!(
        attempts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "not retried"
    );
    assert!(seen.lock().unwrap().is_empty());
}

/// Over a transport of one's own (no reconnect), deadlines work the same: a silent
/// server, a written call fails *may have executed* at its deadline.
#[tokio::test(start_paused = true)]
async fn a_fixed_transport_times_out_written_calls() {
    let (client, server) = tokio::io::duplex(1 << 16);
    let framed = tokio_util::codec::Framed::new(client, support::codec::MsgCodec::default());
    let ch: Ch = Channel::new(framed, socketchannel::Order::new(support::codec::TestProto));
    let _server = server;
    let start = Instant::now();
    let err = ch
        .request(Call::new(msg("x")).timeout(ms(75)))
        .await
        .expect_err("timed out");
    assert_eq!(err.kind(), Kind::Timeout);
    assert!(!err.is_not_sent());
    at_deadline(Instant::now(), start + ms(75));
}

/// Review R1: a shutdown of a fixed-transport channel ends as soon as its last call
/// times out (written, or queued behind an in-flight limit), not at its own deadline.
#[tokio::test(start_paused = true)]
async fn a_shutdown_ends_when_its_last_call_times_out() {
    for queued in [false, true] {
        let (client, server) = tokio::io::duplex(1 << 16);
        let framed = tokio_util::codec::Framed::new(client, support::codec::MsgCodec::default());
        let ch: Ch = Channel::with_config(
            framed,
            socketchannel::Order::new(support::codec::TestProto),
            Config::default().max_in_flight(1),
        );
        let _server = server;
        let start = Instant::now();
        let first = spawn_request(&ch, Call::new(msg("first")).timeout(ms(50)));
        tokio::time::sleep(ms(1)).await;
        let second = queued.then(|| spawn_request(&ch, Call::new(msg("second")).timeout(ms(100))));
        tokio::time::sleep(ms(10)).await;
        let ch2 = ch.clone();
        let shut = tokio::spawn(async move {
            ch2.shutdown(Duration::from_secs(10)).await;
            Instant::now()
        });
        assert_eq!(
            joined(first).await.expect_err("timed out").kind(),
            Kind::Timeout
        );
        if let Some(second) = second {
            let err = joined(second).await.expect_err("timed out");
            assert!(err.is_not_sent());
        }
        let ended = joined(shut).await;
        let last = if queued { 100 } else { 50 };
        assert!(
            ended - start <= ms(last + 1),
            "queued {queued}: shutdown ended at {:?}",
            ended - start
        );
    }
}

/// Review R3: calls the task takes out of the intake to time them still count as
/// queued, for `Load` (a `p2c` balance) and for the overload signal.
#[tokio::test(start_paused = true)]
async fn calls_held_to_be_timed_still_count_as_queued() {
    use tower::load::Load;
    for with_deadline in [false, true] {
        let seen = Seen::default();
        let net = echo_after(Duration::ZERO, &seen);
        net.hang("a:1");
        let ch = net.channel(
            Mode::Order,
            Channel::builder().host("a:1").config(
                Config::default()
                    .queue(64)
                    .overload(50, |m: &support::codec::Msg| m.text().len()),
            ),
        );
        let overload = ch.overload();
        let calls: Vec<_> = (0..10)
            .map(|i| {
                let mut call = Call::new(msg(format!("{i:020}")));
                if with_deadline {
                    call = call.timeout(Duration::from_secs(3));
                }
                spawn_request(&ch, call)
            })
            .collect();
        tokio::time::sleep(ms(50)).await;
        assert!(
            ch.load() >= 9,
            "deadlines {with_deadline}: load {}",
            ch.load()
        );
        assert!(
            *overload.borrow(),
            "deadlines {with_deadline}: 200 bytes queued"
        );
        if with_deadline {
            for call in calls {
                assert_eq!(
                    joined(call).await.expect_err("timed out").kind(),
                    Kind::Timeout
                );
            }
            assert!(!*overload.borrow(), "the timed-out calls weigh nothing");
            assert_eq!(ch.load(), 0);
        }
    }
}

/// Review R4: a queued call whose caller left is counted `skipped` whether its
/// deadline or the write finds it first.
#[tokio::test(start_paused = true)]
async fn a_cancelled_call_is_skipped_whatever_finds_it() {
    for with_deadline in [false, true] {
        let seen = Seen::default();
        let net = echo_after(Duration::ZERO, &seen);
        net.delay(ms(300));
        let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
        let mut call = Call::new(msg("x"));
        if with_deadline {
            call = call.timeout(ms(100));
        }
        let c = spawn_request(&ch, call);
        tokio::time::sleep(ms(10)).await;
        c.abort();
        tokio::time::sleep(ms(1000)).await;
        let _ = ch.request(msg("y")).await;
        assert_eq!(ch.counters().skipped, 1, "deadline {with_deadline}");
        assert_eq!(*seen.lock().unwrap(), ["y"]);
    }
}

/// A written call on a connection that drains (the host changed) still times out at
/// its deadline, though the new connection has written calls made after it: the sweep
/// that drops answered calls' entries by their number looks at every connection.
#[tokio::test(start_paused = true)]
async fn a_call_on_a_draining_connection_times_out_at_its_deadline() {
    let seen = Seen::default();
    let net = echo_after(ms(2000), &seen);
    let ch = channel(&net, Mode::Order, Config::default());
    let start = Instant::now();
    let old = spawn_request(&ch, Call::new(msg("old")).timeout(ms(300)));
    tokio::time::sleep(ms(10)).await;
    ch.change_host("b:1").expect("a valid host");
    let new = spawn_request(&ch, Call::new(msg("new")).timeout(ms(5000)));
    tokio::time::sleep(ms(10)).await;
    assert_eq!(*seen.lock().unwrap(), ["old", "new"], "both written");
    let err = joined(old).await.expect_err("timed out");
    assert_eq!(err.kind(), Kind::Timeout);
    assert!(!err.is_not_sent(), "it was written");
    at_deadline(Instant::now(), start + ms(300));
    let reply = joined(new).await.expect("answered on the new connection");
    assert_eq!(reply.text(), "new");
}

/// Through `Service<Call<Req>>`, a `Call::timeout` counts from when the channel takes
/// the call in: a written call fails `Timeout` *may have executed* `timeout` after it
/// was queued, to the millisecond, though the handle read no clock for it; a call
/// queued behind it on a full connection fails *not sent* at its own.
#[tokio::test(start_paused = true)]
async fn a_timeout_through_tower_counts_from_when_the_call_is_queued() {
    for mode in [Mode::Order, Mode::Session] {
        let seen = Seen::default();
        let net = echo_after(ms(1000), &seen);
        let ch = channel(&net, mode, Config::default().max_in_flight(1));
        ch.connect().await.expect("connected");
        let mut calls = ch.calls();
        tokio::time::sleep(ms(7)).await;
        let start = Instant::now();
        let written = calls
            .ready()
            .await
            .unwrap()
            .call(Call::new(msg("w")).timeout(ms(100)));
        let queued = calls
            .ready()
            .await
            .unwrap()
            .call(Call::new(msg("q")).timeout(ms(50)));
        let queued = tokio::spawn(async move { (queued.await, Instant::now()) });
        let err = written.await.expect_err("timed out");
        let err = err
            .downcast::<socketchannel::Error>()
            .expect("the channel's");
        assert_eq!(err.kind(), Kind::Timeout, "{mode:?}");
        assert!(!err.is_not_sent(), "{mode:?}: it was written");
        at_deadline(Instant::now(), start + ms(100));
        let (out, ended) = joined(queued).await;
        let err = out.expect_err("timed out");
        let err = err
            .downcast::<socketchannel::Error>()
            .expect("the channel's");
        assert_eq!(err.kind(), Kind::Timeout, "{mode:?}");
        assert!(err.is_not_sent(), "{mode:?}: never written");
        at_deadline(ended, start + ms(50));
        assert_eq!(*seen.lock().unwrap(), ["w"], "{mode:?}");
    }
}

/// While the task holds as many calls as it times (`queue(2)`, no room on the
/// connection), no call waits in the intake untimed: a method waits for room with its
/// deadline counted, and fails `Timeout` *not sent* at it, before the two held calls
/// time out; `poll_ready` waits; a call made without it fails `Overloaded` *not sent*.
/// (Found by the simulation's `deadline_bounds_the_wait`, seed 0x14c: a call queued
/// behind four held ones failed 1.6 s past its 20 ms deadline.)
#[tokio::test(start_paused = true)]
async fn no_call_waits_untimed_behind_as_many_held_calls_as_the_task_times() {
    let seen = Seen::default();
    let net = echo_after(ms(1000), &seen);
    let ch = channel(
        &net,
        Mode::Order,
        Config::default().max_in_flight(1).queue(2),
    );
    ch.connect().await.expect("connected");
    let first = spawn_request(&ch, "first");
    tokio::time::sleep(ms(1)).await;
    let start = Instant::now();
    let held: Vec<_> = (1..=2)
        .map(|i| spawn_request(&ch, Call::new(msg(format!("h{i}"))).timeout(ms(200))))
        .collect();
    // The task takes those two in to time them.
    tokio::time::sleep(ms(1)).await;
    let behind = spawn_request(&ch, Call::new(msg("b")).timeout(ms(100)));
    let mut calls = ch.calls();
    assert!(
        tokio::time::timeout(ms(50), calls.ready()).await.is_err(),
        "poll_ready waits while the task holds two"
    );
    let err = ch
        .calls()
        .call(Call::new(msg("c")))
        .await
        .expect_err("no room");
    let err = err
        .downcast::<socketchannel::Error>()
        .expect("the channel's");
    assert_eq!(err.kind(), Kind::Overloaded);
    assert!(err.is_not_sent());
    // A flood of calls with no deadline waits in the methods, not in the task: it
    // holds no more than twice the intake's size.
    let flood: Vec<_> = (0..20)
        .map(|i| spawn_request(&ch, format!("f{i}")))
        .collect();
    tokio::time::sleep(ms(10)).await;
    assert!(
        tower::load::Load::load(&ch) <= 1 + 2 * 2,
        "{} waiting",
        tower::load::Load::load(&ch)
    );
    let mut err = joined(behind).await.expect_err("timed out");
    assert_eq!(err.kind(), Kind::Timeout);
    assert!(err.is_not_sent(), "never written");
    assert_eq!(
        err.take_request::<support::codec::Msg>()
            .expect("handed back")
            .text(),
        "b"
    );
    at_deadline(Instant::now(), start + ms(1) + ms(100));
    for h in held {
        let err = joined(h).await.expect_err("timed out");
        assert_eq!(err.kind(), Kind::Timeout);
    }
    assert_eq!(joined(first).await.expect("answered").text(), "first");
    for call in flood {
        joined_within(ms(60_000), call)
            .await
            .expect("answered in turn");
    }
    assert_eq!(seen.lock().unwrap()[0], "first");
}
