//! Cancel notices (session mode): when the caller of a written call goes away (a
//! dropped future, a deadline), the protocol's notice tells the server, ahead of queued
//! calls and never inside a multi-part write, and the call's id stays reserved until the
//! server answers it (`Sessions::cancel`).
//!
//! Every test runs against a scripted server at the far end of an in-memory pipe, in
//! paused time: "at once" is to the tick.

mod support;

use std::time::Duration;

use futures::StreamExt;
use socketchannel::{Call, Channel, Kind as ErrKind, Mode, Order, Session};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use support::channel::{Ch, joined, shutdown_ends_when, spawn_request};
use support::codec::{CANCEL, Cancelling, Msg, MsgCodec, TestProto};
use support::on_paused_thread;
use support::script::{Peer, pipe, settle};

/// A channel in `mode` over an in-memory pipe, and the scripted server at its far end.
fn channel<M: Mode<Msg, Msg>>(mode: M) -> (Ch, Peer) {
    let (transport, server) = pipe();
    let peer = Peer::spawn(server);
    (Channel::new(transport, mode), peer)
}

/// A channel in session mode with the one id 1, so the id's fate is plain to see.
fn one_id_channel() -> (Ch, Peer) {
    channel(Session::new(Cancelling).ids(1u64..=1))
}

/// A channel (session mode, ids `1..=ids`) that wrote "slow" (id 1) and then began a
/// four-part call (id 2) that is stuck half written in a small pipe the server has not
/// read yet; then "slow"'s caller left. Returns the channel, the server's end of the
/// pipe, and the multi-part call.
async fn slow_left_behind_a_stuck_multi_part_call(
    ids: u64,
) -> (
    Ch,
    DuplexStream,
    JoinHandle<Result<Msg, socketchannel::Error>>,
) {
    let (client, server) = tokio::io::duplex(1 << 12);
    let ch: Ch = Channel::new(
        Framed::new(client, MsgCodec::default()),
        Session::new(Cancelling).ids(1..=ids),
    );
    let slow = spawn_request(&ch, "slow");
    settle().await;
    let parts: Vec<Msg> = (0..4)
        .map(|i| Msg::new(format!("part{i}:{}", "x".repeat(16 << 10))))
        .collect();
    let multi = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.request(Call::parts(parts)).await })
    };
    settle().await;
    slow.abort();
    settle().await;
    (ch, server, multi)
}

/// The next `n` frames the server reads, each as `<body up to ':'>@<id>`.
async fn read_frames<S, E>(server: &mut S, n: usize) -> Vec<String>
where
    S: futures::Stream<Item = Result<Msg, E>> + Unpin,
    E: std::fmt::Debug,
{
    let mut frames = Vec::new();
    for _ in 0..n {
        let frame = tokio::time::timeout(Duration::from_secs(5), server.next())
            .await
            .expect("the server waits for a frame")
            .expect("the connection ended")
            .expect("a frame");
        let body = frame.text().split(':').next().unwrap_or_default();
        frames.push(format!("{body}@{}", frame.id));
    }
    frames
}

/// A server that stops work on a notice, and says so under the call's id: the id is
/// free at once, and the next call gets it.
#[tokio::test(start_paused = true)]
async fn a_dropped_call_is_cancelled_at_once_and_its_id_waits_for_the_servers_word() {
    let (ch, mut peer) = one_id_channel();
    let slow = spawn_request(&ch, "slow");
    let req = peer.next().await;
    assert_eq!((req.id, req.text()), (1, "slow"));

    let left = Instant::now();
    slow.abort();
    let notice = peer.next().await;
    assert_eq!((notice.id, notice.text()), (1, CANCEL));
    assert_eq!(
        left.elapsed(),
        Duration::ZERO,
        "the notice waited for a timer"
    );
    assert_eq!(ch.counters().cancel_notices, 1);

    // The id is still the slow call's: the next call waits for it.
    let next = spawn_request(&ch, "next");
    settle().await;
    assert!(
        peer.idle().is_none(),
        "a call was written under an id still in use"
    );
    assert_eq!(
        ch.counters().in_flight,
        1,
        "the cancelled call holds its id"
    );

    // The server stopped, and says so: the id is free and goes to the next call.
    peer.reply(&req, "cancelled");
    let req = peer.next().await;
    assert_eq!((req.id, req.text()), (1, "next"));
    peer.reply(&req, "re:next");
    assert_eq!(joined(next).await.unwrap().text(), "re:next");
    let c = ch.counters();
    assert_eq!((c.cancel_notices, c.unknown, c.in_flight), (1, 0, 0));
}

/// A collected reply (`request_n`) whose caller leaves mid-reply is noticed at once,
/// as a plain call is: its future says so when dropped.
#[tokio::test(start_paused = true)]
async fn a_collected_call_whose_caller_left_is_cancelled_at_once() {
    let (ch, mut peer) = one_id_channel();
    let many = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.request_n(Msg::new("two"), 2).await })
    };
    let req = peer.next().await;
    peer.reply(&req, "first");
    settle().await;
    let left = Instant::now();
    many.abort();
    let notice = peer.next().await;
    assert_eq!((notice.id, notice.text()), (1, CANCEL));
    assert_eq!(left.elapsed(), Duration::ZERO, "the notice waited");
    assert_eq!(ch.counters().cancel_notices, 1);
}

/// A future dropped after its reply came, unpolled, left nothing unanswered: no notice.
#[tokio::test(start_paused = true)]
async fn a_future_dropped_after_its_reply_came_sends_no_notice() {
    use tower::Service;
    let (ch, mut peer) = one_id_channel();
    let mut svc = ch.clone();
    let unpolled = svc.call(Msg::new("quick"));
    let req = peer.next().await;
    peer.reply(&req, "re:quick");
    settle().await;
    assert_eq!(ch.counters().in_flight, 0, "the reply was matched");
    drop(unpolled);
    settle().await;
    assert!(peer.idle().is_none(), "a notice for an answered call");
    assert_eq!(ch.counters().cancel_notices, 0);
}

/// A server that ignores the notice answers the call when it is done: that late reply
/// frees the id and reaches nobody.
#[tokio::test(start_paused = true)]
async fn a_server_that_ignores_the_notice_frees_the_id_with_its_late_reply() {
    let (ch, mut peer) = one_id_channel();
    let slow = spawn_request(&ch, "slow");
    let req = peer.next().await;
    slow.abort();
    assert_eq!(peer.next().await.text(), CANCEL);

    let next = spawn_request(&ch, "next");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        peer.idle().is_none(),
        "a call was written under an id still in use"
    );

    peer.reply(&req, "re:slow");
    let req = peer.next().await;
    assert_eq!(req.text(), "next");
    peer.reply(&req, "re:next");
    assert_eq!(joined(next).await.unwrap().text(), "re:next");
    assert_eq!(ch.counters().cancel_notices, 1);
}

/// A written call whose deadline passes fails *may have executed*, and the server is
/// told at that moment.
#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_on_a_written_call_sends_its_notice() {
    let (ch, mut peer) = one_id_channel();
    let start = Instant::now();
    let call = {
        let ch = ch.clone();
        tokio::spawn(async move {
            ch.request(Call::new(Msg::new("slow")).timeout(Duration::from_millis(100)))
                .await
        })
    };
    let req = peer.next().await;
    let notice = peer.next().await;
    assert_eq!((notice.id, notice.text()), (req.id, CANCEL));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    let err = joined(call).await.unwrap_err();
    assert_eq!(err.kind(), ErrKind::Timeout);
    assert!(err.may_have_executed());
    assert_eq!(ch.counters().cancel_notices, 1);
}

/// Each call gets one notice, however many callers leave at once; calls still queued
/// when their caller leaves are never written, and get none.
#[tokio::test(start_paused = true)]
async fn many_callers_leaving_at_once_get_one_notice_each() {
    let (ch, mut peer) = channel(Session::new(Cancelling).ids(1u64..=4));
    let calls: Vec<_> = (0..6)
        .map(|i| spawn_request(&ch, format!("c{i}")))
        .collect();
    let mut written = Vec::new();
    for _ in 0..4 {
        written.push(peer.next().await.id);
    }
    calls.iter().for_each(|c| c.abort());
    let mut told = Vec::new();
    for _ in 0..4 {
        let notice = peer.next().await;
        assert_eq!(notice.text(), CANCEL);
        told.push(notice.id);
    }
    told.sort_unstable();
    assert_eq!(told, written);
    settle().await;
    assert!(
        peer.idle().is_none(),
        "a notice twice, or a queued call written"
    );
    let c = ch.counters();
    assert_eq!((c.cancel_notices, c.sent), (4, 4));
}

/// A notice never goes between the parts of a multi-part request: it waits for the
/// last part, then goes ahead of the calls queued behind.
#[tokio::test(start_paused = true)]
async fn a_notice_waits_for_a_multi_part_write_and_goes_ahead_of_queued_calls() {
    let (ch, server, multi) = slow_left_behind_a_stuck_multi_part_call(u64::MAX).await;
    let queued = spawn_request(&ch, "queued");
    settle().await;

    let mut server = Framed::new(server, MsgCodec::default());
    assert_eq!(
        read_frames(&mut server, 7).await,
        [
            "slow@1", "part0@2", "part1@2", "part2@2", "part3@2", "CANCEL@1", "queued@3"
        ],
        "a notice went inside a multi-part write, or behind a queued call"
    );
    drop((multi, queued));
}

/// Order mode sends none: a reply there is matched by its place, so the server must
/// answer every call anyway.
#[tokio::test(start_paused = true)]
async fn order_mode_sends_no_notice() {
    let (ch, mut peer) = channel(Order::new(Cancelling));
    let slow = spawn_request(&ch, "slow");
    let req = peer.next().await;
    slow.abort();
    settle().await;
    assert!(peer.idle().is_none(), "order mode wrote a notice");
    peer.reply(&req, "re:slow");
    let next = spawn_request(&ch, "next");
    let req = peer.next().await;
    peer.reply(&req, "re:next");
    assert_eq!(joined(next).await.unwrap().text(), "re:next");
    assert_eq!(ch.counters().cancel_notices, 0);
}

/// A protocol that sends none (the default) writes none, in session mode too.
#[tokio::test(start_paused = true)]
async fn a_protocol_without_notices_sends_none() {
    let (ch, mut peer) = channel(Session::new(TestProto));
    let slow = spawn_request(&ch, "slow");
    peer.next().await;
    slow.abort();
    settle().await;
    assert!(
        peer.idle().is_none(),
        "a notice from a protocol that sends none"
    );
    assert_eq!(ch.counters().cancel_notices, 0);
}

/// A burst of calls taken in one poll of the connection task (more than tokio's task
/// budget of 128): each caller that then leaves, alone, gets its notice. (Review: the
/// reply sender polled past the budget said `Pending` without watching, so every 128th
/// call's caller could leave unnoticed.)
#[tokio::test(start_paused = true)]
async fn each_caller_of_a_burst_leaving_alone_is_noticed() {
    let (ch, mut peer) = channel(Session::new(Cancelling).ids(1u64..=1000));
    let n = 300;
    let calls: Vec<_> = (0..n)
        .map(|i| spawn_request(&ch, format!("c{i}")))
        .collect();
    let mut ids = std::collections::HashMap::new();
    for _ in 0..n {
        let req = peer.next().await;
        ids.insert(req.text().to_owned(), req.id);
    }
    let mut told = std::collections::HashSet::new();
    let mut missed = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        call.abort();
        settle().await;
        while let Some(notice) = peer.idle() {
            assert_eq!(notice.text(), CANCEL);
            assert!(
                told.insert(notice.id),
                "a second notice for id {}",
                notice.id
            );
        }
        let id = ids[&format!("c{i}")];
        if !told.contains(&id) {
            missed.push((i, id));
        }
    }
    assert!(
        missed.is_empty(),
        "callers that left unnoticed (call, id): {missed:?}"
    );
    assert_eq!(ch.counters().cancel_notices, n);
}

/// A read without a request wrote nothing the server could work on, even one with an
/// id of its own: it gets no notice.
#[tokio::test(start_paused = true)]
async fn a_read_with_an_id_gets_no_notice() {
    let (ch, mut peer) = channel(Session::new(Cancelling));
    let read = ch.request(Call::read().id(7u64).timeout(Duration::from_millis(100)));
    assert_eq!(read.await.unwrap_err().kind(), ErrKind::Timeout);
    settle().await;
    assert!(
        peer.idle().is_none(),
        "a notice for a read that wrote nothing"
    );
    assert_eq!(ch.counters().cancel_notices, 0);
}

/// A notice queued behind a multi-part write whose call the server answers before the
/// notice can go: its id is free (and the next call takes it), so the notice is not
/// written. (Review: it was, right ahead of the next call under the same id.)
#[tokio::test(start_paused = true)]
async fn a_notice_whose_call_was_answered_meanwhile_is_not_written() {
    let (ch, server, multi) = slow_left_behind_a_stuck_multi_part_call(2).await;
    // The server answers "slow" (id 1) before it reads anything.
    let (mut to_client, mut from_client) = Framed::new(server, MsgCodec::default()).split();
    futures::SinkExt::send(&mut to_client, Msg::with_id(1, "re:slow"))
        .await
        .unwrap();
    settle().await;
    let next = spawn_request(&ch, "next");
    settle().await;
    assert_eq!(
        read_frames(&mut from_client, 6).await,
        [
            "slow@1", "part0@2", "part1@2", "part2@2", "part3@2", "next@1"
        ],
        "a notice went out for a call already answered"
    );
    settle().await;
    assert_eq!(ch.counters().cancel_notices, 0);
    drop((multi, next));
}

/// A graceful shutdown whose last waiting caller leaves writes that caller's notice
/// before the connection ends.
#[tokio::test(start_paused = true)]
async fn a_shutdown_writes_the_notice_of_its_last_caller() {
    let (ch, mut peer) = channel(Session::new(Cancelling));
    let slow = spawn_request(&ch, "slow");
    peer.next().await;
    shutdown_ends_when(&ch, || slow.abort(), "the last caller left").await;
    let mut got = Vec::new();
    while let Some(frame) = peer.recv().await {
        got.push(frame.text().to_owned());
    }
    assert_eq!(got, [CANCEL]);
}

/// A graceful shutdown with more callers waiting than tokio's task budget (128) waits
/// for them, to its deadline, without spinning (a reply sender polled past the budget
/// says `Pending` and wakes the task at once). In paused time a spinning task would keep
/// the clock from advancing, so the shutdown's deadline would never come: the test runs
/// on a thread of its own, bounded in real time.
#[test]
fn a_shutdown_with_many_callers_waiting_does_not_spin() {
    let what = "the shutdown spun: paused time never reached its deadline";
    on_paused_thread(Duration::from_secs(30), what, || async {
        let (ch, mut peer) = channel(Session::new(TestProto));
        let calls: Vec<_> = (0..300)
            .map(|i| spawn_request(&ch, format!("c{i}")))
            .collect();
        for _ in 0..300 {
            peer.next().await;
        }
        let start = Instant::now();
        ch.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(5),
            "the shutdown's deadline"
        );
        drop(calls);
    });
}
