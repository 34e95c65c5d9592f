//! Session mode: replies matched by id, in any order (design.md contracts 3 and 4).
//!
//! Every test runs against a small scripted server on the other end of an in-memory
//! duplex pipe, so the test decides exactly which frame goes out when.

mod support;

use std::collections::HashSet;

use futures::{SinkExt, StreamExt};
use socketchannel::{Call, Channel, Config, Kind as ErrKind, Order, Session};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use support::channel::{Ch, joined, spawn_request};
use support::codec::{Msg, MsgCodec, TestProto, TestProto16};
use support::script::{Peer, pipe, settle};
use support::within;

/// A server that answers every request with `re:<body>` under the request's id,
/// reversing the order of each batch of `chunk` requests.
fn reorder_server(io: DuplexStream, chunk: usize) {
    tokio::spawn(async move {
        let mut framed = Framed::new(io, MsgCodec::default());
        let mut batch = Vec::with_capacity(chunk);
        while let Some(Ok(req)) = framed.next().await {
            batch.push(req);
            if batch.len() == chunk {
                for req in batch.drain(..).rev() {
                    let reply = Msg::with_id(req.id, format!("re:{}", req.text()));
                    if framed.feed(reply).await.is_err() {
                        return;
                    }
                }
                if framed.flush().await.is_err() {
                    return;
                }
            }
        }
    });
}

/// A per-caller value the server cannot guess, so a reply proves whose request it
/// answers.
fn nonce(i: u64) -> u64 {
    (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0x5DEE_CE66
}

#[tokio::test]
async fn out_of_order_replies_reach_their_own_callers() {
    within(20, "256 callers with replies out of order", async {
        let (transport, server) = pipe();
        reorder_server(server, 32);
        let ch: Ch = Channel::new(transport, Session::new(TestProto));

        for round in 0..4u64 {
            let calls = (0..256u64).map(|i| {
                let ch = ch.clone();
                async move {
                    let body = format!("{round}/{i}/{:x}", nonce(round * 1000 + i));
                    let reply = ch.request(Msg::new(body.clone())).await;
                    (body, reply)
                }
            });
            for (body, reply) in futures::future::join_all(calls).await {
                let reply = reply.unwrap_or_else(|e| panic!("call {body} failed: {e}"));
                assert_eq!(
                    reply.text(),
                    format!("re:{body}"),
                    "a reply reached the wrong caller"
                );
            }
        }
        let c = ch.counters();
        assert_eq!(c.sent, 1024);
        assert_eq!(c.received, 1024);
        assert_eq!(c.in_flight, 0);
        assert_eq!(c.unknown, 0);
    })
    .await;
}

/// Ids 1..=4. A call whose reply the server withholds is cancelled: its id stays taken
/// while ids wrap round and round, and the late reply, when it comes, reaches nobody.
#[tokio::test]
async fn late_reply_of_cancelled_call_never_reaches_a_newer_caller() {
    within(10, "16-bit id wrap-around with a cancelled id", async {
        let (transport, server) = pipe();
        let mut peer = Peer::spawn(server);
        let ch: Ch = Channel::new(transport, Session::new(TestProto16).ids(1u16..=4));

        // A: written, withheld, then cancelled.
        let a = spawn_request(&ch, "A");
        let a_req = peer.next().await;
        assert_eq!(a_req.id, 1);
        a.abort();
        assert!(a.await.unwrap_err().is_cancelled());

        // Cycle the ids many times over: id 1 is never given out while A holds it.
        let mut ids = Vec::new();
        for i in 0..10 {
            let body = format!("cycle {i}");
            let call = spawn_request(&ch, body.as_str());
            let req = peer.next().await;
            ids.push(req.id);
            peer.reply(&req, &format!("re:{body}"));
            assert_eq!(joined(call).await.unwrap().text(), format!("re:{body}"));
        }
        assert_eq!(
            ids,
            [2, 3, 4, 2, 3, 4, 2, 3, 4, 2],
            "ids must go round-robin, skipping held id 1"
        );

        // B, C, D take the three other ids; every id is now held.
        let mut held = Vec::new();
        for name in ["B", "C", "D"] {
            let call = spawn_request(&ch, name);
            let req = peer.next().await;
            assert_ne!(req.id, 1, "id 1 is still held by the cancelled call");
            held.push((name, call, req));
        }
        // E waits for a free id: not written yet.
        let e = spawn_request(&ch, "E");
        settle().await;
        assert!(
            peer.idle().is_none(),
            "a call was written while every id was held"
        );

        // The late reply for A comes: nobody gets it, and it frees id 1 for E.
        peer.send(Msg::with_id(1, "late"));
        let e_req = peer.next().await;
        assert_eq!(e_req.text(), "E");
        assert_eq!(e_req.id, 1, "E takes the id the late reply freed");
        // Answer in reverse; each caller must get its own reply, never "late".
        peer.reply(&e_req, "re:E");
        for (name, _, req) in held.iter().rev() {
            peer.reply(req, &format!("re:{name}"));
        }
        assert_eq!(joined(e).await.unwrap().text(), "re:E");
        for (name, call, _) in held {
            assert_eq!(joined(call).await.unwrap().text(), format!("re:{name}"));
        }
        // The late reply was taken by the slot A kept; it was not an unknown id.
        assert_eq!(ch.counters().unknown, 0);

        // The same late reply again, now that id 1 is free: dropped and counted.
        peer.send(Msg::with_id(1, "late again"));
        let f = spawn_request(&ch, "F");
        let f_req = peer.next().await;
        peer.reply(&f_req, "re:F");
        assert_eq!(joined(f).await.unwrap().text(), "re:F");
        assert_eq!(ch.counters().unknown, 1);
        assert_eq!(ch.counters().in_flight, 0);
    })
    .await;
}

/// The whole 16-bit range, wrapped: with id 1 held by a cancelled call, ids go
/// 2, 3, ..., 65535, 2, 3, ... and never 0 or 1.
#[tokio::test]
async fn sixteen_bit_ids_wrap_around_a_held_id() {
    within(120, "wrapping the 16-bit id space", async {
        let (transport, server) = pipe();
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<u64>();
        let (release_tx, mut release) = mpsc::unbounded_channel::<()>();
        // Echoes at once, except "held", whose reply waits for `release`.
        tokio::spawn(async move {
            let mut framed = Framed::new(server, MsgCodec::default());
            let mut withheld = None;
            loop {
                tokio::select! {
                    frame = framed.next() => {
                        let Some(Ok(req)) = frame else { break };
                        let _ = seen_tx.send(req.id);
                        if req.text() == "held" {
                            withheld = Some(req.id);
                        } else {
                            let reply = Msg::with_id(req.id, format!("re:{}", req.text()));
                            if framed.send(reply).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(()) = release.recv() => {
                        let id = withheld.take().expect("nothing withheld");
                        if framed.send(Msg::with_id(id, "late")).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let ch: Ch = Channel::new(transport, Session::new(TestProto16));

        let a = spawn_request(&ch, "held");
        assert_eq!(seen.recv().await, Some(1));
        a.abort();
        let _ = a.await;

        let total = 65_534 + 600;
        let mut done = 0u64;
        while done < total {
            let batch = (done..(done + 256).min(total)).map(|i| {
                let ch = ch.clone();
                async move {
                    let body = format!("{i}:{:x}", nonce(i));
                    let reply = ch.request(Msg::new(body.clone())).await;
                    (body, reply)
                }
            });
            for (body, reply) in futures::future::join_all(batch).await {
                let reply = reply.unwrap_or_else(|e| panic!("call {body} failed: {e}"));
                assert_eq!(reply.text(), format!("re:{body}"));
            }
            done = (done + 256).min(total);
        }
        for k in 0..total {
            let id = seen
                .try_recv()
                .expect("server saw fewer requests than were made");
            assert_eq!(id, 2 + k % 65_534, "request {k} got id {id}");
        }

        // The late reply reaches nobody; the channel goes on.
        release_tx.send(()).unwrap();
        let reply = ch.request(Msg::new("after")).await.unwrap();
        assert_eq!(reply.text(), "re:after");
        let c = ch.counters();
        assert_eq!(c.unknown, 0);
        assert_eq!(c.in_flight, 0);
    })
    .await;
}

/// Every id held: the next call waits (is not written, and once the intake is full
/// `poll_ready` is pending) until a reply frees one. The server never sees two live
/// requests with the same id.
#[tokio::test]
async fn exhausted_ids_make_callers_wait_instead_of_colliding() {
    within(10, "id exhaustion", async {
        let (transport, server) = pipe();
        let mut peer = Peer::spawn(server);
        let mut ch: Ch = Channel::with_config(
            transport,
            Session::new(TestProto16).ids(1u16..=4),
            Config::default().queue(1),
        );
        let mut live: HashSet<u64> = HashSet::new();
        let track = |req: &Msg, live: &mut HashSet<u64>| {
            assert!(
                live.insert(req.id),
                "id {} written while still live",
                req.id
            );
        };

        let mut calls = Vec::new();
        for i in 0..4 {
            let body = format!("c{i}");
            let call = spawn_request(&ch, body.as_str());
            let req = peer.next().await;
            track(&req, &mut live);
            calls.push((body, call, req));
        }
        // A fifth call: no id free, so it stays in the intake, unwritten.
        let fifth = spawn_request(&ch, "c4");
        settle().await;
        assert!(peer.idle().is_none(), "written with every id held");
        assert_eq!(ch.counters().in_flight, 4);

        // The intake (one call) is full too: poll_ready waits.
        let mut ready = tokio_test::task::spawn(std::future::poll_fn(|cx| {
            tower::Service::<Msg>::poll_ready(&mut ch, cx)
        }));
        tokio_test::assert_pending!(ready.poll());

        // Free id 3 (the third call's): the fifth call is written with it.
        let (body, call, req) = calls.remove(2);
        assert_eq!(req.id, 3);
        peer.reply(&req, &format!("re:{body}"));
        live.remove(&req.id);
        assert_eq!(joined(call).await.unwrap().text(), "re:c2");
        let fifth_req = peer.next().await;
        assert_eq!(fifth_req.text(), "c4");
        track(&fifth_req, &mut live);
        assert_eq!(fifth_req.id, 3);
        calls.push(("c4".to_string(), fifth, fifth_req));

        // The intake drained, so readiness came back.
        within(5, "poll_ready after an id was freed", async {
            while ready.poll().is_pending() {
                settle().await;
            }
        })
        .await;
        drop(ready);
        // The reserved slot is used by this call.
        let svc_call = tower::Service::call(&mut ch, Msg::new("c5"));
        settle().await;
        assert!(peer.idle().is_none(), "written with every id held");

        // Answer everything in reverse; then the service call gets an id and its reply.
        for (body, _, req) in calls.iter().rev() {
            peer.reply(req, &format!("re:{body}"));
            live.remove(&req.id);
        }
        let svc_req = peer.next().await;
        track(&svc_req, &mut live);
        peer.reply(&svc_req, "re:c5");
        for (body, call, _) in calls {
            assert_eq!(joined(call).await.unwrap().text(), format!("re:{body}"));
        }
        let reply = within(5, "service call", svc_call).await.unwrap();
        assert_eq!(reply.text(), "re:c5");
        assert_eq!(ch.counters().in_flight, 0);
        assert_eq!(ch.counters().unknown, 0);
    })
    .await;
}

#[tokio::test]
async fn caller_supplied_id_is_used_and_a_live_one_is_refused() {
    within(10, "caller-supplied ids", async {
        let (transport, server) = pipe();
        let mut peer = Peer::spawn(server);
        let ch: Ch = Channel::new(transport, Session::new(TestProto));

        // Used as given.
        let call = spawn_request(&ch, Call::new(Msg::new("mine")).id(5u64));
        let req = peer.next().await;
        assert_eq!(req.id, 5);
        peer.reply(&req, "re:mine");
        assert_eq!(joined(call).await.unwrap().text(), "re:mine");

        // Held: a second call with the same id fails, unsent, with its request back.
        let first = spawn_request(&ch, Call::new(Msg::new("first")).id(5u64));
        let first_req = peer.next().await;
        assert_eq!(first_req.id, 5);
        let mut err = ch
            .request(Call::new(Msg::new("second")).id(5u64))
            .await
            .expect_err("a live id must be refused");
        assert_eq!(err.kind(), ErrKind::IdInUse);
        assert!(err.is_not_sent());
        assert_eq!(
            err.take_request::<Msg>().map(|m| m.body),
            Some("second".into())
        );
        settle().await;
        assert!(peer.idle().is_none(), "the refused call was written");

        // The first still gets its own reply.
        peer.reply(&first_req, "re:first");
        assert_eq!(joined(first).await.unwrap().text(), "re:first");
        // And the id is free again.
        let again = spawn_request(&ch, Call::new(Msg::new("again")).id(5u64));
        let req = peer.next().await;
        assert_eq!(req.id, 5);
        peer.reply(&req, "re:again");
        assert_eq!(joined(again).await.unwrap().text(), "re:again");
        assert_eq!(ch.counters().in_flight, 0);
    })
    .await;
}

/// Channel-allocated ids skip an id a caller holds.
#[tokio::test]
async fn allocated_ids_skip_a_caller_supplied_live_id() {
    within(10, "allocation around a caller id", async {
        let (transport, server) = pipe();
        let mut peer = Peer::spawn(server);
        let ch: Ch = Channel::new(transport, Session::new(TestProto16).ids(1u16..=8));

        let mine = spawn_request(&ch, Call::new(Msg::new("mine")).id(3u16));
        let mine_req = peer.next().await;
        assert_eq!(mine_req.id, 3);
        let mut ids = Vec::new();
        for i in 0..10 {
            let body = format!("auto {i}");
            let call = spawn_request(&ch, body.as_str());
            let req = peer.next().await;
            ids.push(req.id);
            peer.reply(&req, &format!("re:{body}"));
            assert_eq!(joined(call).await.unwrap().text(), format!("re:{body}"));
        }
        assert_eq!(ids, [1, 2, 4, 5, 6, 7, 8, 1, 2, 4]);
        peer.reply(&mine_req, "re:mine");
        assert_eq!(joined(mine).await.unwrap().text(), "re:mine");
    })
    .await;
}

#[tokio::test]
async fn caller_supplied_id_is_unsupported_in_order_mode() {
    within(10, "caller id in order mode", async {
        let (transport, server) = pipe();
        let mut peer = Peer::spawn(server);
        let ch: Ch = Channel::new(transport, Order::new(TestProto));

        let mut err = ch
            .request(Call::new(Msg::new("mine")).id(5u64))
            .await
            .expect_err("order mode has no session ids");
        assert_eq!(err.kind(), ErrKind::Unsupported);
        assert!(err.is_not_sent());
        assert_eq!(
            err.take_request::<Msg>().map(|m| m.body),
            Some("mine".into())
        );
        settle().await;
        assert!(peer.idle().is_none(), "the refused call was written");

        // The channel is fine.
        let call = spawn_request(&ch, "next");
        let req = peer.next().await;
        assert_eq!(req.text(), "next");
        peer.reply(&req, "re:next");
        assert_eq!(joined(call).await.unwrap().text(), "re:next");
    })
    .await;
}

#[tokio::test]
async fn reply_with_unknown_id_is_dropped_and_counted() {
    within(10, "unknown id", async {
        let (transport, server) = pipe();
        let mut peer = Peer::spawn(server);
        let ch: Ch = Channel::new(transport, Session::new(TestProto));

        let waiting = spawn_request(&ch, "waiting");
        let req = peer.next().await;
        peer.send(Msg::with_id(req.id + 1000, "stranger"));
        settle().await;
        assert_eq!(ch.counters().unknown, 1);
        assert_eq!(ch.counters().received, 1);
        assert!(
            !ch.is_closed(),
            "an unknown id must not close the connection"
        );
        assert!(
            !waiting.is_finished(),
            "the unknown reply reached a waiting caller"
        );

        peer.reply(&req, "re:waiting");
        assert_eq!(joined(waiting).await.unwrap().text(), "re:waiting");

        // The connection is still good for new calls.
        let next = spawn_request(&ch, "next");
        let req = peer.next().await;
        peer.reply(&req, "re:next");
        assert_eq!(joined(next).await.unwrap().text(), "re:next");
        assert_eq!(ch.counters().unknown, 1);
    })
    .await;
}

#[tokio::test]
async fn duplicate_reply_is_dropped_and_counted() {
    within(10, "duplicate reply", async {
        let (transport, server) = pipe();
        let mut peer = Peer::spawn(server);
        let ch: Ch = Channel::new(transport, Session::new(TestProto));

        let once = spawn_request(&ch, "once");
        let req = peer.next().await;
        peer.reply(&req, "re:once");
        peer.reply(&req, "re:once, again");
        assert_eq!(joined(once).await.unwrap().text(), "re:once");

        let next = spawn_request(&ch, "next");
        let next_req = peer.next().await;
        assert_ne!(next_req.id, req.id, "ids go round-robin");
        peer.reply(&next_req, "re:next");
        assert_eq!(joined(next).await.unwrap().text(), "re:next");
        let c = ch.counters();
        assert_eq!(c.unknown, 1);
        assert_eq!(c.received, 3);
        assert_eq!(c.in_flight, 0);
        assert!(!ch.is_closed());
    })
    .await;
}

/// A frame with id 0 carries no session: it goes to a waiting `read()`, and with none
/// waiting it is dropped and counted.
#[tokio::test]
async fn frame_without_session_goes_to_a_read_or_is_dropped() {
    within(10, "frames with no session id", async {
        let (transport, server) = pipe();
        let mut peer = Peer::spawn(server);
        let ch: Ch = Channel::new(transport, Session::new(TestProto));

        // No read waiting: dropped, counted, connection kept.
        peer.send(Msg::new("nobody listens"));
        settle().await;
        assert_eq!(ch.counters().unknown, 1);
        assert!(!ch.is_closed());

        // A read waiting, with a request in flight: the id-0 frame goes to the read, the
        // reply to the request.
        let read = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.read().await })
        };
        let call = spawn_request(&ch, "call");
        let req = peer.next().await;
        within(5, "the read to be taken in", async {
            while ch.counters().in_flight < 2 {
                settle().await;
            }
        })
        .await;
        peer.reply(&req, "re:call");
        peer.send(Msg::new("greeting"));
        assert_eq!(joined(call).await.unwrap().text(), "re:call");
        assert_eq!(joined(read).await.unwrap().text(), "greeting");
        assert_eq!(ch.counters().unknown, 1);
        assert_eq!(ch.counters().in_flight, 0);
    })
    .await;
}
