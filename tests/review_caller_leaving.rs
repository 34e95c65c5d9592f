//! Review of "Cancel notices: the callers say when they leave" (cbd440a): the caller's
//! end of a reply counts itself in the channel's `Leaving` when dropped unanswered, and
//! each connection scans when the count moved.
//!
//! Each test names what it guards. Those marked **FAILS on cbd440a** are findings; the
//! others guard risks of the change and pass.
//!
//! Fails on cbd440a (passes on cbd440a~1):
//! * `an_idle_ping_left_behind_on_a_retired_connection_is_cancelled`
//!
//! Everything else passes on both.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Call, Channel, Endpoint, Replies, Session};
use tokio::time::Instant;
use tower::Service;

use support::channel::{Ch, shutdown_ends_when, spawn_request};
use support::codec::{CANCEL, Cancelling, Msg, TestProto};
use support::memory::{Io, Net};
use support::on_paused_thread;
use support::script::{Peer, pipe, settle};

/// Every frame the servers of a [`Net`] read, as `host|body@id`.
type Log = Arc<Mutex<Vec<String>>>;

/// A network whose servers log every frame they read and answer only requests whose
/// body starts with "echo" (at once); everything else, the idle ping included, waits.
fn logging_net(log: &Log) -> Net {
    let log = log.clone();
    Net::new(move |ep: Endpoint, mut io: Io| {
        let log = log.clone();
        async move {
            while let Some(Ok(req)) = io.next().await {
                log.lock()
                    .unwrap()
                    .push(format!("{ep}|{}@{}", req.text(), req.id));
                if req.text().starts_with("echo") && io.send(req).await.is_err() {
                    break;
                }
            }
        }
    })
}

fn logged(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// The id of the first frame logged as `host|body@id`.
fn id_of(log: &Log, host_body: &str) -> Option<u64> {
    logged(log).iter().find_map(|l| {
        let (hb, id) = l.rsplit_once('@')?;
        (hb == host_body).then(|| id.parse().ok()).flatten()
    })
}

/// A reconnecting session-mode channel over `net` with the notice-sending protocol.
fn reconnecting(net: &Net, builder: socketchannel::Builder<Msg, Msg>) -> Ch {
    builder
        .connector(net.connector(), Session::new(Cancelling))
        .expect("valid hosts")
}

// ---------------------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------------------

/// **FAILS on cbd440a; passes on its parent.**
///
/// The idle ping is a call whose caller is the channel itself: its reply receiver is a
/// bare `oneshot::Receiver` held by `Ping` (src/reconnect/ping.rs), not an `Answer`.
/// When the connection is moved aside (`change_host`, age, orphans, a drain verdict)
/// while its ping waits, `Ping` is dropped with the `Ready` phase: that caller leaves,
/// and nothing counts it in `Leaving`. The parent watched every written call's reply
/// sender, ping included, and told the server at once; now the draining connection
/// holds the ping (and its id) silently until the server answers or the drain timeout,
/// unless some other caller happens to leave and move the count.
#[tokio::test(start_paused = true)]
async fn an_idle_ping_left_behind_on_a_retired_connection_is_cancelled() {
    let log = Log::default();
    let net = logging_net(&log);
    let ch = reconnecting(
        &net,
        Channel::builder()
            .host("a:1")
            .drain_timeout(Duration::from_secs(60))
            .idle_ping(Duration::from_secs(1), || Msg::new("ping")),
    );
    ch.request(Msg::new("echo-hello")).await.expect("connect");
    // Idle for over a period: the ping goes out, and a:1 never answers it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ping = id_of(&log, "a:1|ping").expect("the idle ping was written");
    ch.change_host("b:2").expect("a host");
    // The next call goes to b:2; a:1 drains with only the ping waiting.
    ch.request(Msg::new("echo-next"))
        .await
        .expect("served by b:2");
    settle().await;
    let cancel = format!("a:1|{CANCEL}@{ping}");
    assert!(
        logged(&log).contains(&cancel),
        "the ping abandoned with its connection got no notice: {:?}",
        logged(&log)
    );
    assert_eq!(ch.counters().cancel_notices, 1);
}

// ---------------------------------------------------------------------------------------
// Guards (pass on cbd440a)
// ---------------------------------------------------------------------------------------

/// Several connections in one task share one `Leaving`: a draining connection's
/// caller and the current connection's caller each get their notice on their own
/// connection, at once, whichever scans first, and in either order of leaving.
#[tokio::test(start_paused = true)]
async fn draining_and_current_connections_each_notice_their_own_callers() {
    let log = Log::default();
    let net = logging_net(&log);
    let ch = reconnecting(
        &net,
        Channel::builder()
            .host("a:1")
            .drain_timeout(Duration::from_secs(60)),
    );
    let old = spawn_request(&ch, "slow-a");
    settle().await;
    ch.change_host("b:2").expect("a host");
    let new = spawn_request(&ch, "slow-b");
    settle().await;
    let (a, b) = (
        id_of(&log, "a:1|slow-a").expect("written on a:1"),
        id_of(&log, "b:2|slow-b").expect("written on b:2"),
    );
    // The new connection's caller first, then the draining one's: the first scan
    // (whichever connection makes it) must not use up the other's.
    let left = Instant::now();
    new.abort();
    settle().await;
    old.abort();
    settle().await;
    let got = logged(&log);
    assert!(got.contains(&format!("b:2|{CANCEL}@{b}")), "{got:?}");
    assert!(got.contains(&format!("a:1|{CANCEL}@{a}")), "{got:?}");
    assert!(left.elapsed() < Duration::from_millis(100));
    assert_eq!(ch.counters().cancel_notices, 2);
}

/// A connection made after a caller left (its `Notices` starts at the count of then):
/// that caller's call was never written and gets nothing; a caller of the new
/// connection that leaves later is still told.
#[tokio::test(start_paused = true)]
async fn a_connection_made_after_a_caller_left_still_notices_the_next_one() {
    let log = Log::default();
    let net = logging_net(&log);
    net.delay(Duration::from_millis(200));
    let ch = reconnecting(&net, Channel::builder().host("a:1"));
    let early = spawn_request(&ch, "early");
    tokio::time::sleep(Duration::from_millis(50)).await;
    early.abort();
    let kept = spawn_request(&ch, "kept");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = logged(&log);
    assert!(!got.iter().any(|l| l.contains("early")), "{got:?}");
    let id = id_of(&log, "a:1|kept").expect("written");
    kept.abort();
    settle().await;
    assert!(logged(&log).contains(&format!("a:1|{CANCEL}@{id}")));
    assert_eq!(ch.counters().cancel_notices, 1);
}

/// `Service<Call>`: a collected reply (`ReplyFuture` of `Pending::Many`) and a stream
/// resolved through it (`Reply::Stream`), each dropped mid-reply, are told at once.
#[tokio::test(start_paused = true)]
async fn service_call_shapes_dropped_mid_reply_are_cancelled() {
    let (transport, server) = pipe();
    let mut peer = Peer::spawn(server);
    let ch: Ch = Channel::new(transport, Session::new(Cancelling));
    let mut calls = ch.calls();

    let many = calls.call(Call::new(Msg::new("two")).replies(Replies::Count(2)));
    let req = peer.next().await;
    peer.reply(&req, "first");
    settle().await;
    drop(many);
    let notice = peer.next().await;
    assert_eq!((notice.id, notice.text()), (req.id, CANCEL));

    // The id is the collected call's until the server's word.
    peer.reply(&req, "cancelled");

    let streamed = calls.call(Call::new(Msg::new("three")).stream(Replies::UntilFinal));
    let req = peer.next().await;
    peer.reply_kind(&req, "first", support::codec::Kind::More);
    let reply = tokio::time::timeout(Duration::from_secs(5), streamed)
        .await
        .expect("the first frame")
        .expect("a reply");
    let mut stream = reply.into_stream().expect("a streamed reply");
    assert!(stream.next().await.is_some_and(|f| f.is_ok()));
    drop(stream);
    let notice = peer.next().await;
    assert_eq!((notice.id, notice.text()), (req.id, CANCEL));
    assert_eq!(ch.counters().cancel_notices, 2);
}

/// A reply stream dropped mid-reply on a multi-threaded runtime: the task (on another
/// worker) finds the reader gone and writes the notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_dropped_mid_reply_is_cancelled_on_a_multi_thread_runtime() {
    let (transport, server) = pipe();
    let mut peer = Peer::spawn(server);
    let ch: Ch = Channel::new(transport, Session::new(Cancelling));
    for round in 0..20u64 {
        let mut stream = ch
            .stream(Msg::new(format!("s{round}")), Replies::UntilFinal)
            .await;
        let req = peer.next().await;
        peer.reply_kind(&req, "part", support::codec::Kind::More);
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("first frame");
        assert!(first.is_some_and(|f| f.is_ok()));
        drop(stream);
        let notice = peer.next().await;
        assert_eq!(
            (notice.id, notice.text()),
            (req.id, CANCEL),
            "round {round}"
        );
        // The server's word frees the id.
        peer.reply(&req, "cancelled");
    }
    assert_eq!(ch.counters().cancel_notices, 20);
}

/// Callers that leave right as their calls are taken and written, on a multi-threaded
/// runtime: every call that was written and whose caller then left gets exactly one
/// notice (the drop races the task's write, admit and scan); none is written twice.
#[test]
fn callers_racing_the_write_each_get_one_notice_on_a_multi_thread_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let ch: Ch = Channel::new(
            tokio_util::codec::Framed::new(client, support::codec::MsgCodec::default()),
            Session::new(Cancelling),
        );
        let mut server =
            tokio_util::codec::Framed::new(server, support::codec::MsgCodec::default());
        let n = 2000u64;
        let mut callers = Vec::new();
        for i in 0..n {
            let ch = ch.clone();
            callers.push(tokio::spawn(async move {
                // Gives up after a few yields: at any point of the call's way in.
                let spins = (i % 7) as usize;
                let call = ch.request(Msg::new(format!("c{i}")));
                tokio::pin!(call);
                for _ in 0..spins {
                    if futures::poll!(call.as_mut()).is_ready() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        for c in callers {
            c.await.unwrap();
        }
        // Nobody answers: every written call's caller left. Read until quiet.
        let mut written = std::collections::HashSet::new();
        let mut told = std::collections::HashSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(std::time::Instant::now() < deadline, "bounded");
            match tokio::time::timeout(Duration::from_millis(300), server.next()).await {
                Ok(Some(Ok(frame))) => {
                    if frame.text() == CANCEL {
                        assert!(told.insert(frame.id), "a second notice for {}", frame.id);
                    } else {
                        assert!(written.insert(frame.id), "id {} reused", frame.id);
                    }
                }
                Ok(other) => panic!("the connection ended: {:?}", other.map(|r| r.is_ok())),
                Err(_) => break,
            }
        }
        assert!(
            written.len() > 100 && written.len() < n as usize,
            "the race was not exercised: {} of {n} written",
            written.len()
        );
        let missed: Vec<_> = written.difference(&told).collect();
        assert!(
            missed.is_empty(),
            "{} of {} written calls whose caller left got no notice: {:?}",
            missed.len(),
            written.len(),
            missed.iter().take(10).collect::<Vec<_>>()
        );
        assert!(told.is_subset(&written));
        assert_eq!(ch.counters().cancel_notices, told.len() as u64);
        let _ = server.send(Msg::with_id(0, "bye")).await;
    });
}

/// A session-mode channel over an in-memory pipe, with a protocol that sends cancel
/// notices or one that sends none, and the scripted server at its far end.
fn session_channel(cancels: bool) -> (Ch, Peer) {
    let (transport, server) = pipe();
    let peer = Peer::spawn(server);
    let ch: Ch = if cancels {
        Channel::new(transport, Session::new(Cancelling))
    } else {
        Channel::new(transport, Session::new(TestProto))
    };
    (ch, peer)
}

/// A shutdown whose last waiting caller is a stream reader ends when it leaves, with
/// its notice written first (cancelling protocol), and ends as soon for a protocol
/// that sends none (`poll_nobody_waits` lost its notices-context branch).
#[tokio::test(start_paused = true)]
async fn a_shutdown_ends_when_its_last_stream_reader_leaves() {
    for cancels in [true, false] {
        let (ch, mut peer) = session_channel(cancels);
        let mut stream = ch.stream(Msg::new("s"), Replies::UntilFinal).await;
        let req = peer.next().await;
        peer.reply_kind(&req, "part", support::codec::Kind::More);
        assert!(stream.next().await.is_some_and(|f| f.is_ok()));
        shutdown_ends_when(&ch, || drop(stream), &format!("cancels={cancels}")).await;
        let mut got = Vec::new();
        while let Some(frame) = peer.recv().await {
            got.push(frame.text().to_owned());
        }
        let want: &[&str] = if cancels { &[CANCEL] } else { &[] };
        assert_eq!(got, want, "cancels={cancels}");
    }
}

/// A shutdown of a collected call (non-cancelling and cancelling) ends when its caller
/// drops the future.
#[tokio::test(start_paused = true)]
async fn a_shutdown_ends_when_its_last_collecting_caller_leaves() {
    for cancels in [true, false] {
        let (ch, mut peer) = session_channel(cancels);
        let many = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.request_n(Msg::new("two"), 2).await })
        };
        let req = peer.next().await;
        peer.reply(&req, "first");
        shutdown_ends_when(&ch, || many.abort(), &format!("cancels={cancels}")).await;
    }
}

/// Callers that leave while their calls are still queued (never written) wake the task
/// each, but it must not spin: with many such departures and written calls waiting,
/// paused time still advances (a spinning task would hold the clock still), and no
/// notice is written for an unwritten call.
#[test]
fn callers_leaving_queued_calls_do_not_make_the_task_spin() {
    let what = "the task spun: paused time did not advance";
    on_paused_thread(Duration::from_secs(30), what, || async {
        let (transport, server) = pipe();
        let mut peer = Peer::spawn(server);
        let ch: Ch = Channel::new(transport, Session::new(Cancelling).ids(1u64..=4));
        // Four written, never answered: the ids are all taken, the rest queue.
        let written: Vec<_> = (0..4)
            .map(|i| spawn_request(&ch, format!("w{i}")))
            .collect();
        for _ in 0..4 {
            peer.next().await;
        }
        let queued: Vec<_> = (0..200)
            .map(|i| spawn_request(&ch, format!("q{i}")))
            .collect();
        settle().await;
        for q in &queued {
            q.abort();
        }
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(peer.idle().is_none(), "a notice for a call never written");
        assert_eq!(ch.counters().cancel_notices, 0);
        drop(written);
    });
}

/// The handshake's lane handle shares the channel's `Leaving`: a call the hook gives up
/// on after it was written (a timeout inside the hook, which then returns `Ready` in the
/// same poll) is told on that connection, at once.
#[tokio::test(start_paused = true)]
async fn a_handshake_call_the_hook_gave_up_on_is_cancelled() {
    let log = Log::default();
    let net = logging_net(&log);
    let ch = reconnecting(
        &net,
        Channel::builder()
            .host("a:1")
            .handshake(|hs: Ch, _ep| async move {
                let gave_up = tokio::time::timeout(
                    Duration::from_millis(100),
                    hs.request(Msg::new("hello-slow")),
                )
                .await;
                assert!(gave_up.is_err(), "nobody answers it");
                Ok(socketchannel::Handshake::Ready)
            }),
    );
    ch.request(Msg::new("echo-after")).await.expect("ready");
    settle().await;
    let id = id_of(&log, "a:1|hello-slow").expect("written");
    let got = logged(&log);
    let cancel = got
        .iter()
        .position(|l| *l == format!("a:1|{CANCEL}@{id}"))
        .unwrap_or_else(|| panic!("no notice: {got:?}"));
    let user = got
        .iter()
        .position(|l| l.starts_with("a:1|echo-after"))
        .unwrap();
    assert!(
        cancel < user,
        "the notice went behind a queued call: {got:?}"
    );
}
