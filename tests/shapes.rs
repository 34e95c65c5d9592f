//! Call shapes and the channel's life cycle, in order mode and in session mode where it
//! applies (design.md contracts 3, 5, 6 and 9): several reply frames, replies until a
//! final one, reply streams, multi-part requests, pushes, reads without a request, the
//! stall timeout, `shutdown`, `close` and the counters.
//!
//! Every test runs against a small scripted server on the other end of an in-memory
//! duplex pipe (or, for the greeting, a loopback TCP socket).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Call, Channel, Config, ConnectionErrorKind, Replies, State};
use tokio::io::DuplexStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tower::load::Load;

use support::channel::{Ch, Mode, joined, msg, spawn_request};
use support::codec::{Kind as FrameKind, Msg, MsgCodec, TestProto};
use support::script::{Peer, pipe, settle};
use support::within;

fn channel_on(mode: Mode, transport: Framed<DuplexStream, MsgCodec>, config: Config) -> Ch {
    match mode {
        Mode::Order => {
            Channel::with_config(transport, socketchannel::Order::new(TestProto), config)
        }
        Mode::Session => {
            Channel::with_config(transport, socketchannel::Session::new(TestProto), config)
        }
    }
}

/// A channel to a [`command_server`].
fn commanded(mode: Mode, config: Config) -> (Ch, Violations) {
    let (transport, server) = pipe();
    let violations = command_server(server);
    (channel_on(mode, transport, config), violations)
}

/// A channel to a [`Peer`].
fn puppet(mode: Mode, config: Config) -> (Ch, Peer) {
    let (transport, server) = pipe();
    let peer = Peer::spawn(server);
    (channel_on(mode, transport, config), peer)
}

/// Instantiates an `async fn case(mode: Mode)` as one test per mode.
macro_rules! both_modes {
    ($case:ident: $order:ident, $session:ident) => {
        #[tokio::test]
        async fn $order() {
            $case(Mode::Order).await
        }
        #[tokio::test]
        async fn $session() {
            $case(Mode::Session).await
        }
    };
    (paused $case:ident: $order:ident, $session:ident) => {
        #[tokio::test(start_paused = true)]
        async fn $order() {
            $case(Mode::Order).await
        }
        #[tokio::test(start_paused = true)]
        async fn $session() {
            $case(Mode::Session).await
        }
    };
}

/// What a [`command_server`] found wrong.
type Violations = Arc<Mutex<Vec<String>>>;

fn no_violations(v: &Violations) {
    let v = v.lock().unwrap();
    assert!(v.is_empty(), "the server saw: {v:?}");
}

/// A server that answers each request, in the order they arrive and under the request's
/// id, as its body says:
///
/// * `echo X`: one frame `X`;
/// * `count N X`: `N` frames `X#0` .. `X#N-1`;
/// * `more N X`: the same, all of kind `More` but the last;
/// * `err N K X`: `N` frames, the `K`-th of kind `Error`;
/// * `push N X`: `N` push frames `pX#i` (id 0), then one frame `X`;
/// * `part I N C`: part `I` of `N` of call `C`; parts must arrive back to back, all
///   under one id; after the last one, one frame `done C`;
/// * anything else: no answer.
fn command_server(io: DuplexStream) -> Violations {
    let violations: Violations = Arc::default();
    let found = violations.clone();
    tokio::spawn(async move {
        let mut framed = Framed::new(io, MsgCodec::default());
        // The multi-part call being received: (caller, next part, parts, id).
        let mut open: Option<(String, usize, usize, u64)> = None;
        while let Some(Ok(req)) = framed.next().await {
            let words: Vec<&str> = req.text().split(' ').collect();
            let num = |i: usize| words[i].parse::<usize>().expect("a number");
            let reply = |body: String| Msg::with_id(req.id, body);
            let mut out = Vec::new();
            if words[0] != "part"
                && let Some((c, i, n, _)) = open.take()
            {
                found.lock().unwrap().push(format!(
                    "{:?} came between part {i} and {n} of {c}",
                    req.text()
                ));
            }
            match words[0] {
                "echo" => out.push(reply(words[1].to_string())),
                "count" | "more" | "err" => {
                    let n = num(1);
                    for i in 0..n {
                        let kind = match words[0] {
                            "more" if i + 1 < n => FrameKind::More,
                            "err" if i == num(2) => FrameKind::Error,
                            _ => FrameKind::Normal,
                        };
                        out.push(reply(format!("{}#{i}", words[words.len() - 1])).kind(kind));
                    }
                }
                "push" => {
                    for i in 0..num(1) {
                        out.push(Msg::new(format!("p{}#{i}", words[2])).kind(FrameKind::Push));
                    }
                    out.push(reply(words[2].to_string()));
                }
                "part" => {
                    let (i, n, c) = (num(1), num(2), words[3].to_string());
                    match open.take() {
                        None if i == 0 => {}
                        Some((oc, oi, _, oid)) if oc == c && oi == i && oid == req.id => {}
                        other => found.lock().unwrap().push(format!(
                            "part {i}/{n} of {c} (id {}) while expecting {other:?}",
                            req.id
                        )),
                    }
                    if i + 1 == n {
                        out.push(reply(format!("done {c}")));
                    } else {
                        open = Some((c, i + 1, n, req.id));
                    }
                }
                _ => {}
            }
            for msg in out {
                if framed.feed(msg).await.is_err() {
                    return;
                }
            }
            if framed.flush().await.is_err() {
                return;
            }
        }
    });
    violations
}

fn texts(frames: &[Msg]) -> Vec<&str> {
    frames.iter().map(Msg::text).collect()
}

// ---------------------------------------------------------------------------------------
// Several reply frames.

async fn request_n_case(mode: Mode) {
    within(10, "request_n", async {
        let (ch, violations) = commanded(mode, Config::default());
        // Written together, so the three frames and the next reply arrive together.
        let (three, next) =
            tokio::join!(ch.request_n(msg("count 3 a"), 3), ch.request(msg("echo b")));
        assert_eq!(texts(&three.unwrap()), ["a#0", "a#1", "a#2"]);
        assert_eq!(next.unwrap().text(), "b");

        // One at a time, too, and twice in a row.
        for round in 0..2 {
            let frames = ch
                .request_n(msg(format!("count 3 r{round}")), 3)
                .await
                .unwrap();
            assert_eq!(frames.len(), 3);
            assert_eq!(frames[2].text(), format!("r{round}#2"));
        }
        assert_eq!(ch.request(msg("echo c")).await.unwrap().text(), "c");
        assert_eq!(ch.counters().in_flight, 0);
        assert_eq!(ch.counters().unknown, 0);
        no_violations(&violations);
    })
    .await;
}
both_modes!(request_n_case: request_n_returns_exactly_n_frames_order, request_n_returns_exactly_n_frames_session);

async fn request_n_zero_case(mode: Mode) {
    within(10, "request_n(_, 0)", async {
        let (ch, _) = commanded(mode, Config::default());
        // The server answers nothing; the call resolves once written.
        assert!(ch.request_n(msg("silent"), 0).await.unwrap().is_empty());
        assert_eq!(ch.request(msg("echo next")).await.unwrap().text(), "next");
        assert_eq!(ch.counters().in_flight, 0);
    })
    .await;
}
both_modes!(request_n_zero_case: request_n_zero_takes_no_reply_order, request_n_zero_takes_no_reply_session);

async fn until_final_case(mode: Mode) {
    within(10, "request_until_final", async {
        let (ch, violations) = commanded(mode, Config::default());
        let (parts, next) = tokio::join!(
            ch.request_until_final(msg("more 4 m")),
            ch.request(msg("echo after"))
        );
        let parts = parts.unwrap();
        assert_eq!(texts(&parts), ["m#0", "m#1", "m#2", "m#3"]);
        assert_eq!(
            parts.iter().map(|m| m.kind).collect::<Vec<_>>(),
            [
                FrameKind::More,
                FrameKind::More,
                FrameKind::More,
                FrameKind::Normal
            ]
        );
        assert_eq!(next.unwrap().text(), "after");
        // A reply that is final at once.
        assert_eq!(
            texts(&ch.request_until_final(msg("more 1 x")).await.unwrap()),
            ["x#0"]
        );
        no_violations(&violations);
    })
    .await;
}
both_modes!(until_final_case: request_until_final_collects_until_final_order, request_until_final_collects_until_final_session);

async fn error_part_case(mode: Mode) {
    within(10, "error part", async {
        let (ch, violations) = commanded(mode, Config::default());
        let (failed, next) = tokio::join!(
            ch.request_n(msg("err 3 1 e"), 3),
            ch.request(msg("echo fine"))
        );
        let err = failed.expect_err("an error part fails the call");
        assert!(err.is_server(), "{err:?}");
        assert!(err.may_have_executed());
        assert!(err.to_string().contains("e#1"), "{err}");
        assert_eq!(next.unwrap().text(), "fine");

        // The same for request_until_final (to the test protocol an error frame is final).
        let (failed, next) = tokio::join!(
            ch.request_until_final(msg("err 1 0 u")),
            ch.request(msg("echo next"))
        );
        assert!(failed.expect_err("error reply").is_server());
        assert_eq!(next.unwrap().text(), "next");
        assert_eq!(
            ch.request(msg("echo still fine")).await.unwrap().text(),
            "still"
        );
        assert!(!ch.is_closed());
        assert_eq!(ch.counters().in_flight, 0);
        no_violations(&violations);
    })
    .await;
}
both_modes!(error_part_case: error_part_fails_only_its_call_order, error_part_fails_only_its_call_session);

// ---------------------------------------------------------------------------------------
// Streams.

async fn stream_count_case(mode: Mode) {
    within(10, "stream(Replies::Count)", async {
        let (ch, mut peer) = puppet(mode, Config::default());

        // Frames come out one by one, as the server sends them.
        let mut stream = ch.stream(msg("s"), Replies::Count(3)).await;
        let req = peer.next().await;
        for i in 0..3 {
            peer.reply(&req, &format!("s#{i}"));
            let frame = within(5, "a stream frame", stream.next()).await;
            assert_eq!(
                frame.expect("stream ended early").unwrap().text(),
                format!("s#{i}")
            );
        }
        assert!(within(5, "stream end", stream.next()).await.is_none());

        // Dropped after one frame of four: the rest is discarded, later replies are right.
        let mut stream = ch.stream(msg("d"), Replies::Count(4)).await;
        let d = peer.next().await;
        peer.reply(&d, "d#0");
        assert_eq!(stream.next().await.unwrap().unwrap().text(), "d#0");
        drop(stream);
        let after = spawn_request(&ch, Call::new(msg("after")));
        let after_req = peer.next().await;
        for i in 1..4 {
            peer.reply(&d, &format!("d#{i}"));
        }
        peer.reply(&after_req, "re:after");
        assert_eq!(joined(after).await.unwrap().text(), "re:after");
        assert_eq!(ch.counters().in_flight, 0);
        assert_eq!(ch.counters().unknown, 0);
    })
    .await;
}
both_modes!(stream_count_case: stream_count_yields_frames_one_by_one_order, stream_count_yields_frames_one_by_one_session);

async fn stream_until_final_case(mode: Mode) {
    within(10, "stream(Replies::UntilFinal)", async {
        let (ch, mut peer) = puppet(mode, Config::default());

        let mut stream = ch.stream(msg("u"), Replies::UntilFinal).await;
        let req = peer.next().await;
        for i in 0..3 {
            peer.reply_kind(&req, &format!("u#{i}"), FrameKind::More);
            let frame = within(5, "a stream frame", stream.next()).await;
            assert_eq!(
                frame.expect("stream ended early").unwrap().text(),
                format!("u#{i}")
            );
        }
        peer.reply(&req, "u#last");
        assert_eq!(stream.next().await.unwrap().unwrap().text(), "u#last");
        assert!(within(5, "stream end", stream.next()).await.is_none());

        // Dropped early: the parts still coming are discarded up to the final one.
        let mut stream = ch.stream(msg("d"), Replies::UntilFinal).await;
        let d = peer.next().await;
        peer.reply_kind(&d, "d#0", FrameKind::More);
        assert_eq!(stream.next().await.unwrap().unwrap().text(), "d#0");
        drop(stream);
        let after = spawn_request(&ch, Call::new(msg("after")));
        let after_req = peer.next().await;
        peer.reply_kind(&d, "d#1", FrameKind::More);
        peer.reply_kind(&d, "d#2", FrameKind::More);
        peer.reply(&d, "d#last");
        peer.reply(&after_req, "re:after");
        assert_eq!(joined(after).await.unwrap().text(), "re:after");
        assert_eq!(ch.counters().in_flight, 0);
        assert_eq!(ch.counters().unknown, 0);
    })
    .await;
}
both_modes!(stream_until_final_case: stream_until_final_yields_frames_one_by_one_order, stream_until_final_yields_frames_one_by_one_session);

async fn stream_zero_case(mode: Mode) {
    within(10, "stream(Replies::Count(0))", async {
        let (ch, _) = commanded(mode, Config::default());
        // A request with no reply frames: the stream ends with nothing, like
        // request_n(_, 0), and takes no other call's reply.
        let mut stream = ch.stream(msg("silent"), Replies::Count(0)).await;
        let next = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.request(msg("echo next")).await })
        };
        let first = within(5, "an empty stream to end", stream.next()).await;
        assert!(first.is_none(), "a stream of 0 frames yielded {first:?}");
        assert_eq!(joined(next).await.unwrap().text(), "next");
    })
    .await;
}
both_modes!(stream_zero_case: stream_of_zero_frames_takes_no_reply_order, stream_of_zero_frames_takes_no_reply_session);

// ---------------------------------------------------------------------------------------
// Multi-part requests, pushes, reads.

async fn parts_case(mode: Mode) {
    within(20, "multi-part requests under 64 callers", async {
        let (ch, violations) = commanded(mode, Config::default());
        for round in 0..3 {
            let calls = (0..64usize).map(|i| {
                let ch = ch.clone();
                async move {
                    let c = format!("r{round}c{i}");
                    if i % 3 == 2 {
                        let reply = ch.request(msg(format!("echo {c}"))).await;
                        (c, reply)
                    } else {
                        let n = 2 + i % 5;
                        let parts = (0..n).map(|p| msg(format!("part {p} {n} {c}"))).collect();
                        let reply = ch.request(Call::parts(parts)).await;
                        (format!("done {c}"), reply)
                    }
                }
            });
            for (want, reply) in futures::future::join_all(calls).await {
                assert_eq!(reply.unwrap().text(), want);
            }
        }
        no_violations(&violations);
        let c = ch.counters();
        assert_eq!(c.sent, 3 * 64, "a multi-part call counts once");
        assert_eq!(c.in_flight, 0);
    })
    .await;
}
both_modes!(parts_case: multi_part_requests_are_not_interleaved_order, multi_part_requests_are_not_interleaved_session);

async fn pushes_case(mode: Mode) {
    within(10, "pushes while requests are in flight", async {
        let (ch, violations) = commanded(mode, Config::default());
        let mut pushes = ch.pushes().expect("the push receiver");
        assert!(ch.pushes().is_none(), "there is one push receiver");

        let calls = (0..16).map(|i| {
            let ch = ch.clone();
            async move { (i, ch.request(msg(format!("push 3 x{i}"))).await) }
        });
        for (i, reply) in futures::future::join_all(calls).await {
            assert_eq!(reply.unwrap().text(), format!("x{i}"));
        }
        let mut got = Vec::new();
        while let Ok(push) = pushes.try_recv() {
            assert_eq!(push.kind, FrameKind::Push);
            got.push(push.text().to_string());
        }
        got.sort();
        let mut want: Vec<String> = (0..16)
            .flat_map(|i| (0..3).map(move |j| format!("px{i}#{j}")))
            .collect();
        want.sort();
        assert_eq!(got, want);
        let c = ch.counters();
        assert_eq!(c.pushes, 48);
        assert_eq!(c.push_overflow, 0);
        assert_eq!(c.received, 48 + 16);
        assert_eq!(c.unknown, 0);
        no_violations(&violations);
    })
    .await;
}
both_modes!(pushes_case: pushes_go_to_the_push_receiver_order, pushes_go_to_the_push_receiver_session);

async fn push_overflow_case(mode: Mode) {
    within(10, "push overflow", async {
        let (ch, _) = commanded(mode, Config::default().push_capacity(2));
        let mut pushes = ch.pushes().expect("the push receiver");
        // The reply comes after the pushes, so they have all been routed by then.
        assert_eq!(ch.request(msg("push 5 x")).await.unwrap().text(), "x");
        let c = ch.counters();
        assert_eq!(c.pushes, 2);
        assert_eq!(c.push_overflow, 3);
        assert_eq!(pushes.try_recv().unwrap().text(), "px#0");
        assert_eq!(pushes.try_recv().unwrap().text(), "px#1");
        assert!(
            pushes.try_recv().is_err(),
            "more pushes kept than the capacity"
        );
        assert!(!ch.is_closed());
    })
    .await;
}
both_modes!(push_overflow_case: push_overflow_is_dropped_and_counted_order, push_overflow_is_dropped_and_counted_session);

/// Order mode: a server that greets on accept; `read()` takes the greeting.
#[tokio::test]
async fn read_takes_the_greeting_sent_on_accept() {
    within(10, "greeting over TCP", async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut framed = Framed::new(socket, MsgCodec::default());
            framed.send(msg("hello")).await.unwrap();
            while let Some(Ok(req)) = framed.next().await {
                framed
                    .send(Msg::with_id(req.id, format!("re:{}", req.text())))
                    .await
                    .unwrap();
            }
        });
        let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let ch: Ch = Channel::new(
            Framed::new(socket, MsgCodec::default()),
            socketchannel::Order::new(TestProto),
        );
        let greeting = ch.read().await.expect("the greeting");
        assert_eq!(greeting.text(), "hello");
        assert_eq!(ch.request(msg("ping")).await.unwrap().text(), "re:ping");
        assert_eq!(ch.counters().in_flight, 0);
    })
    .await;
}

/// `Counters::sent` counts calls whose frames were handed to the transport: a read
/// without a request hands none.
async fn read_not_sent_case(mode: Mode) {
    within(10, "a read is not sent", async {
        let (ch, mut peer) = puppet(mode, Config::default());
        let read = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.read().await })
        };
        within(5, "the read to be taken in", async {
            while ch.counters().in_flight < 1 {
                settle().await;
            }
        })
        .await;
        peer.send(msg("hello"));
        assert_eq!(joined(read).await.unwrap().text(), "hello");
        assert!(peer.idle().is_none(), "a read wrote something");
        let c = ch.counters();
        assert_eq!(
            (c.sent, c.received, c.in_flight),
            (0, 1, 0),
            "a read writes nothing"
        );
    })
    .await;
}
both_modes!(read_not_sent_case: a_read_is_not_counted_as_sent_order, a_read_is_not_counted_as_sent_session);

/// Order mode: the greeting is already waiting in the pipe when the channel starts.
#[tokio::test]
async fn read_takes_a_greeting_already_buffered() {
    within(10, "greeting already buffered", async {
        let (transport, server) = pipe();
        let mut server = Framed::new(server, MsgCodec::default());
        server.send(msg("hello")).await.unwrap();
        let ch: Ch = Channel::new(transport, socketchannel::Order::new(TestProto));
        let greeting = ch.read().await.expect("the greeting");
        assert_eq!(greeting.text(), "hello");
    })
    .await;
}

/// Order mode: a read after a request takes the frame after that request's reply.
#[tokio::test]
async fn read_takes_the_next_fifo_slot() {
    within(10, "read in FIFO order", async {
        let (ch, mut peer) = puppet(Mode::Order, Config::default());
        let call = spawn_request(&ch, Call::new(msg("a")));
        let req = peer.next().await;
        let read = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.read().await })
        };
        within(5, "the read to be taken in", async {
            while ch.counters().in_flight < 2 {
                settle().await;
            }
        })
        .await;
        peer.reply(&req, "re:a");
        peer.send(msg("unsolicited"));
        assert_eq!(joined(call).await.unwrap().text(), "re:a");
        assert_eq!(joined(read).await.unwrap().text(), "unsolicited");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The stall timeout (paused time over an in-memory pipe).

async fn stall_case(mode: Mode) {
    within(60, "stall timeout", async {
        let config = Config::default().stall_timeout(Some(Duration::from_secs(1)));
        let (ch, mut peer) = puppet(mode, config);
        let start = Instant::now();
        let call = spawn_request(&ch, Call::new(msg("ignored")));
        peer.next().await;
        let err = joined(call)
            .await
            .expect_err("a silent server must stall the call");
        let waited = start.elapsed();
        assert!(err.is_connection_lost(), "{err:?}");
        assert_eq!(
            err.connection_error().map(|c| c.kind()),
            Some(ConnectionErrorKind::Stalled)
        );
        assert!(err.may_have_executed());
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
            "fired after {waited:?}"
        );
        assert!(ch.is_closed());
        let later = ch
            .request(msg("later"))
            .await
            .expect_err("the connection is gone");
        assert!(later.is_not_sent());
    })
    .await;
}
both_modes!(paused stall_case: stall_timeout_fails_a_silent_call_order, stall_timeout_fails_a_silent_call_session);

async fn stall_exempt_case(mode: Mode) {
    within(60, "stall exemption", async {
        let config = Config::default().stall_timeout(Some(Duration::from_secs(1)));
        let (ch, mut peer) = puppet(mode, config);
        let blocking = spawn_request(&ch, Call::new(msg("blpop")).no_stall_timeout());
        let req = peer.next().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            !blocking.is_finished(),
            "an exempt call was failed: {:?}",
            blocking.await
        );
        assert!(!ch.is_closed());
        peer.reply(&req, "re:blpop");
        assert_eq!(joined(blocking).await.unwrap().text(), "re:blpop");

        // An answered call in between does not end the exemption either.
        let blocking = spawn_request(&ch, Call::new(msg("blpop2")).no_stall_timeout());
        let b = peer.next().await;
        if let Mode::Session = mode {
            let quick = spawn_request(&ch, Call::new(msg("quick")));
            let q = peer.next().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            peer.reply(&q, "re:quick");
            assert_eq!(joined(quick).await.unwrap().text(), "re:quick");
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            !blocking.is_finished(),
            "an exempt call was failed: {:?}",
            blocking.await
        );
        peer.reply(&b, "re:blpop2");
        assert_eq!(joined(blocking).await.unwrap().text(), "re:blpop2");
    })
    .await;
}
both_modes!(paused stall_exempt_case: stall_timeout_spares_an_exempt_call_order, stall_timeout_spares_an_exempt_call_session);

// ---------------------------------------------------------------------------------------
// shutdown, close.

async fn poll_ready(ch: &Ch) -> Result<(), socketchannel::BoxError> {
    let mut ch = ch.clone();
    within(
        5,
        "poll_ready",
        std::future::poll_fn(|cx| tower::Service::<Msg>::poll_ready(&mut ch, cx)),
    )
    .await
}

async fn shutdown_case(mode: Mode) {
    within(10, "shutdown", async {
        let (ch, mut peer) = puppet(mode, Config::default());
        let a = spawn_request(&ch, Call::new(msg("a")));
        let a_req = peer.next().await;
        let b = spawn_request(&ch, Call::new(msg("b")));
        let b_req = peer.next().await;

        let shutdown = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.shutdown(Duration::from_secs(5)).await })
        };
        settle().await;
        assert!(ch.is_closed());
        // New calls fail at once, unsent.
        let mut err = within(1, "a call after shutdown", ch.request(msg("late")))
            .await
            .expect_err("closed");
        assert!(err.is_closed(), "{err:?}");
        assert!(err.is_not_sent());
        assert_eq!(
            err.take_request::<Msg>().map(|m| m.body),
            Some("late".into())
        );
        assert!(poll_ready(&ch).await.is_err());
        assert!(!shutdown.is_finished(), "shutdown ended with calls waiting");

        // The calls in flight still get their replies.
        peer.reply(&a_req, "re:a");
        peer.reply(&b_req, "re:b");
        assert_eq!(joined(a).await.unwrap().text(), "re:a");
        assert_eq!(joined(b).await.unwrap().text(), "re:b");
        joined(shutdown).await;
        assert_eq!(*ch.state().borrow(), State::Closed);
        assert!(peer.idle().is_none(), "nothing was written after shutdown");
    })
    .await;
}
both_modes!(shutdown_case: shutdown_lets_calls_in_flight_finish_order, shutdown_lets_calls_in_flight_finish_session);

async fn shutdown_deadline_case(mode: Mode) {
    within(60, "shutdown deadline", async {
        let (ch, mut peer) = puppet(mode, Config::default());
        let a = spawn_request(&ch, Call::new(msg("a")));
        peer.next().await;
        let start = Instant::now();
        within(
            10,
            "shutdown to end at its deadline",
            ch.shutdown(Duration::from_secs(2)),
        )
        .await;
        assert!(start.elapsed() >= Duration::from_secs(2));
        let err = joined(a).await.expect_err("unanswered at the deadline");
        assert!(err.is_closed(), "{err:?}");
        assert!(err.may_have_executed());
    })
    .await;
}
both_modes!(paused shutdown_deadline_case: shutdown_fails_calls_left_at_the_deadline_order, shutdown_fails_calls_left_at_the_deadline_session);

async fn close_case(mode: Mode) {
    within(10, "close", async {
        let (ch, mut peer) = puppet(mode, Config::default().max_in_flight(1));
        let a = spawn_request(&ch, Call::new(msg("a")));
        peer.next().await;
        // Two more wait in the queue behind the in-flight limit.
        let b = spawn_request(&ch, Call::new(msg("b")));
        let c = spawn_request(&ch, Call::parts(vec![msg("c1"), msg("c2")]));
        within(5, "calls to queue", async {
            while ch.load() < 3 {
                settle().await;
            }
        })
        .await;
        assert!(peer.idle().is_none(), "written beyond max_in_flight");

        ch.close();
        let err = joined(a).await.expect_err("closed");
        assert!(err.is_closed(), "{err:?}");
        assert!(err.may_have_executed());
        let mut err = joined(b).await.expect_err("closed");
        assert!(err.is_closed() && err.is_not_sent(), "{err:?}");
        assert_eq!(err.take_request::<Msg>().map(|m| m.body), Some("b".into()));
        let mut err = joined(c).await.expect_err("closed");
        assert!(err.is_closed() && err.is_not_sent(), "{err:?}");
        let parts = err.take_request::<Vec<Msg>>().expect("the parts back");
        assert_eq!(texts(&parts), ["c1", "c2"]);

        // Later calls fail at once.
        let err = within(1, "a call after close", ch.request(msg("later")))
            .await
            .expect_err("closed");
        assert!(err.is_closed() && err.is_not_sent());
        let mut stream = ch.stream(msg("later"), Replies::Count(2)).await;
        assert!(
            stream
                .next()
                .await
                .expect("an error")
                .unwrap_err()
                .is_closed()
        );
        assert!(poll_ready(&ch).await.is_err());
        // The connection is closed: the server reads end of stream.
        assert!(
            within(5, "the server to see the end", peer.recv())
                .await
                .is_none()
        );
        assert_eq!(*ch.state().borrow(), State::Closed);
    })
    .await;
}
both_modes!(close_case: close_fails_everything_waiting_order, close_fails_everything_waiting_session);

// ---------------------------------------------------------------------------------------
// Counters.

async fn counters_case(mode: Mode) {
    within(10, "counters", async {
        let (ch, mut peer) = puppet(mode, Config::default());
        assert_eq!(ch.counters(), Default::default());

        for i in 0..3 {
            let call = spawn_request(&ch, Call::new(msg(format!("c{i}"))));
            let req = peer.next().await;
            peer.reply(&req, "ok");
            joined(call).await.unwrap();
        }
        let c = ch.counters();
        assert_eq!((c.sent, c.received, c.in_flight), (3, 3, 0));

        // One held; fire-and-forget; a push; a request_n of two.
        let held = spawn_request(&ch, Call::new(msg("held")));
        let held_req = peer.next().await;
        ch.send(msg("fire")).await.unwrap();
        assert_eq!(peer.next().await.text(), "fire");
        let c = ch.counters();
        assert_eq!((c.sent, c.received, c.in_flight), (5, 3, 1));

        peer.send(msg("news").kind(FrameKind::Push));
        peer.reply(&held_req, "ok");
        joined(held).await.unwrap();
        let two = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.request_n(msg("two"), 2).await })
        };
        let req = peer.next().await;
        peer.reply(&req, "1");
        settle().await;
        let c = ch.counters();
        assert_eq!((c.sent, c.received, c.in_flight, c.pushes), (6, 6, 1, 1));
        peer.reply(&req, "2");
        assert_eq!(joined(two).await.unwrap().len(), 2);
        let c = ch.counters();
        assert_eq!((c.sent, c.received, c.in_flight), (6, 7, 0));
        assert_eq!(
            (c.pushes, c.push_overflow, c.unknown, c.skipped),
            (1, 0, 0, 0)
        );
        assert_eq!(ch.load(), 0);
    })
    .await;
}
both_modes!(counters_case: counters_after_a_known_sequence_order, counters_after_a_known_sequence_session);

/// A call whose caller is gone before it is written is skipped, and counted.
#[tokio::test]
async fn call_dropped_before_written_is_skipped_and_counted() {
    within(10, "skipped", async {
        let (ch, mut peer) = puppet(Mode::Order, Config::default().max_in_flight(1));
        let a = spawn_request(&ch, Call::new(msg("a")));
        let a_req = peer.next().await;
        let b = spawn_request(&ch, Call::new(msg("b")));
        within(5, "b to queue", async {
            while ch.load() < 2 {
                settle().await;
            }
        })
        .await;
        b.abort();
        let _ = b.await;
        let c = spawn_request(&ch, Call::new(msg("c")));
        peer.reply(&a_req, "re:a");
        assert_eq!(joined(a).await.unwrap().text(), "re:a");
        let c_req = peer.next().await;
        assert_eq!(c_req.text(), "c", "a cancelled call was written");
        peer.reply(&c_req, "re:c");
        assert_eq!(joined(c).await.unwrap().text(), "re:c");
        let counters = ch.counters();
        assert_eq!((counters.sent, counters.skipped), (2, 1));
    })
    .await;
}
