//! Cancellation: a call dropped before its write is never written; random sends and
//! cancellations never misroute a reply (proptest).

use std::collections::HashSet;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use socketchannel::{Channel, Config, Order};
use tokio_test::assert_pending;
use tokio_util::codec::Framed;

use crate::common::{Chan, SHORT, channel};
use crate::support::codec::{Msg, MsgCodec, TestProto};
use crate::support::server::{Behaviour, Gate, TestServer, replies_to};
use crate::support::{bounded, eventually, timeout};

/// A call dropped while queued behind the in-flight limit is never written: the server
/// never sees it, and the next call gets its own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_dropped_before_write_never_reaches_the_server() {
    bounded(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let ch = channel(&server, Config::default().max_in_flight(1)).await;

        // `a` is written and held by the server: the one slot is taken.
        let first = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.request(Msg::new("a")).await })
        };
        eventually(SHORT, "server read a", || server.stats().frames() == 1).await;

        // `b` is queued (one poll: into the intake), then dropped.
        let mut b = tokio_test::task::spawn(ch.request(Msg::new("b")));
        assert_pending!(b.poll());
        drop(b);

        gate.open();
        assert_eq!(first.await.expect("task").expect("a").text(), "a");
        assert_eq!(
            timeout(SHORT, ch.request(Msg::new("c")))
                .await
                .expect("c")
                .text(),
            "c"
        );

        assert_eq!(
            server.stats().bodies(),
            ["a", "c"],
            "b must never be written"
        );
        let counters = ch.counters();
        assert_eq!(counters.skipped, 1);
        assert_eq!(counters.sent, 2);
    })
    .await;
}

/// One step of a random caller script.
#[derive(Debug, Clone)]
enum Step {
    /// A request; `Some(k)`: its caller polls it `k` times (yielding in between) and then
    /// drops it unless it completed. `Some(0)` never queues it at all.
    Call(Option<u8>),
    /// A fire-and-forget request (the server never answers `noreply...`).
    Send,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::option::of(0u8..8).prop_map(Step::Call),
            1 => Just(Step::Send),
        ],
        1..48,
    )
}

/// What became of one step.
#[derive(Debug, PartialEq)]
enum Outcome {
    Answered,
    Dropped,
    Sent,
}

/// Runs `steps` as concurrent callers over an in-memory pipe of `pipe` bytes against an
/// echoing peer that flushes every `flush_every` replies (or when it has nothing more
/// to read), and checks that no caller ever gets a reply that is not its own.
async fn run_script(steps: Vec<Step>, pipe: usize, flush_every: usize, in_flight: usize) {
    let (client, server) = tokio::io::duplex(pipe);
    let seen = Arc::new(Mutex::new(Vec::<Msg>::new()));
    let peer = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut framed = Framed::new(server, MsgCodec::default());
            let mut unflushed = 0;
            for _ in 0..100_000 {
                let Some(Ok(req)) = framed.next().await else {
                    break;
                };
                seen.lock().unwrap().push(req.clone());
                for reply in replies_to(&req) {
                    framed.feed(reply).await.expect("peer write");
                }
                unflushed += 1;
                if unflushed >= flush_every || framed.read_buffer().is_empty() {
                    framed.flush().await.expect("peer flush");
                    unflushed = 0;
                }
            }
        })
    };

    let config = Config::default().max_in_flight(in_flight);
    let ch: Chan = Channel::with_config(
        Framed::new(client, MsgCodec::default()),
        Order::new(TestProto),
        config,
    );

    let mut queued = 0u64;
    let mut tasks = Vec::new();
    for (i, step) in steps.iter().cloned().enumerate() {
        let ch = ch.clone();
        let id = i as u64 + 1;
        if !matches!(step, Step::Call(Some(0))) {
            queued += 1;
        }
        tasks.push(tokio::spawn(async move {
            match step {
                Step::Send => {
                    ch.send(Msg::with_id(id, format!("noreply {i}")))
                        .await
                        .expect("fire-and-forget");
                    Outcome::Sent
                }
                Step::Call(polls) => {
                    let req = Msg::with_id(id, format!("call {i}"));
                    let mut fut = pin!(ch.request(req.clone()));
                    let Some(polls) = polls else {
                        let resp = fut.await.expect("a call nobody dropped succeeds");
                        assert_eq!(resp, req, "call {i} got another call's reply");
                        return Outcome::Answered;
                    };
                    for _ in 0..polls {
                        if let Poll::Ready(resp) = futures::poll!(fut.as_mut()) {
                            let resp = resp.expect("call succeeds");
                            assert_eq!(resp, req, "call {i} got another call's reply");
                            return Outcome::Answered;
                        }
                        tokio::task::yield_now().await;
                    }
                    Outcome::Dropped
                }
            }
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("caller panicked"));
    }

    // Whatever was dropped where, the next call gets its own reply...
    let last = Msg::with_id(u64::MAX, "last");
    assert_eq!(ch.request(last.clone()).await.expect("last"), last);
    queued += 1;

    // ...every queued call was either written or skipped, and the server saw exactly
    // the written ones, each once.
    eventually(SHORT, "nothing in flight", || ch.counters().in_flight == 0).await;
    let counters = ch.counters();
    assert_eq!(counters.sent + counters.skipped, queued, "{counters:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len() as u64, counters.sent, "{counters:?}");
    let distinct: HashSet<_> = seen.iter().map(|m| m.body.clone()).collect();
    assert_eq!(distinct.len(), seen.len(), "a request was written twice");
    for (step, outcome) in steps.iter().zip(&outcomes) {
        match step {
            Step::Call(None) => assert_eq!(outcome, &Outcome::Answered),
            Step::Send => assert_eq!(outcome, &Outcome::Sent),
            Step::Call(Some(_)) => {}
        }
    }
    let sends = steps.iter().filter(|s| matches!(s, Step::Send)).count();
    assert_eq!(
        seen.iter()
            .filter(|m| m.text().starts_with("noreply"))
            .count(),
        sends,
        "fire-and-forget requests are never skipped"
    );

    drop(ch);
    peer.await.expect("peer");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random callers, fire-and-forget sends and cancellations at random points never
    /// hand any caller a reply that is not its own.
    #[test]
    fn random_sends_and_cancellations_never_misroute_a_reply(
        steps in steps(),
        pipe in 16usize..1024,
        flush_every in 1usize..6,
        in_flight in 1usize..6,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(bounded(run_script(steps, pipe, flush_every, in_flight)));
    }
}
