//! FIFO matching: every caller gets its own reply, fire-and-forget sends among the
//! requests included.

use std::collections::HashSet;

use socketchannel::Config;

use crate::common::{SHORT, channel};
use crate::support::codec::Msg;
use crate::support::server::{Behaviour, TestServer};
use crate::support::{bounded, eventually, timeout};

/// 256 concurrent callers, 16 requests each, over one connection: every reply is its
/// own request's echo (id and body).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifo_256_concurrent_callers_each_get_their_own_reply() {
    bounded(async {
        const CALLERS: u64 = 256;
        const ROUNDS: u64 = 16;
        let server = TestServer::start(Behaviour::echo()).await;
        let ch = channel(&server, Config::default()).await;

        let mut tasks = Vec::new();
        for c in 0..CALLERS {
            let ch = ch.clone();
            tasks.push(tokio::spawn(async move {
                for r in 0..ROUNDS {
                    let req = Msg::with_id(c * 1000 + r, format!("caller {c} round {r}"));
                    let resp = ch.request(req.clone()).await.expect("request");
                    assert_eq!(resp, req, "caller {c} got another caller's reply");
                }
            }));
        }
        for t in tasks {
            t.await.expect("caller task");
        }

        let total = (CALLERS * ROUNDS) as usize;
        assert_eq!(server.stats().frames(), total);
        let bodies: HashSet<String> = server.stats().bodies().into_iter().collect();
        assert_eq!(bodies.len(), total, "every request reached the server once");
        // Counters are written by the connection task right after it hands out replies.
        let want = (total as u64, total as u64, 0, 0);
        eventually(SHORT, "counters settle", || {
            let c = ch.counters();
            (c.sent, c.received, c.in_flight, c.skipped) == want
        })
        .await;
    })
    .await;
}

/// `send` resolves once written, takes no reply slot, and the requests around it are
/// still matched right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_is_written_and_waits_for_nothing() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let ch = channel(&server, Config::default()).await;

        timeout(SHORT, ch.send(Msg::new("noreply first")))
            .await
            .expect("send");
        assert_eq!(ch.counters().in_flight, 0, "a send waits for no reply");
        eventually(SHORT, "server saw the send", || {
            server.stats().frames() == 1
        })
        .await;

        // Interleaved with requests, from many callers at once.
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let ch = ch.clone();
                tokio::spawn(async move {
                    if i % 3 == 0 {
                        ch.send(Msg::with_id(i, format!("noreply {i}")))
                            .await
                            .expect("send");
                    } else {
                        let req = Msg::with_id(i, format!("req {i}"));
                        assert_eq!(ch.request(req.clone()).await.expect("request"), req);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("caller");
        }
        let last = Msg::new("last");
        assert_eq!(ch.request(last.clone()).await.expect("last"), last);

        let bodies = server.stats().bodies();
        let sends = bodies.iter().filter(|b| b.starts_with("noreply")).count();
        assert_eq!(sends, 1 + 22, "every send reached the server: {bodies:?}");
        assert_eq!(bodies.len(), 1 + 64 + 1, "{bodies:?}");
        eventually(SHORT, "nothing in flight", || ch.counters().in_flight == 0).await;
        assert_eq!(ch.counters().skipped, 0);
    })
    .await;
}
