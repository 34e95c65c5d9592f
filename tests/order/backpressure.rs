//! Backpressure: `poll_ready` waits while the queue and the in-flight limit are full; a
//! slot reserved before the end, used after it, fails fast.

use std::future::poll_fn;
use std::time::Duration;

use socketchannel::{Channel, Config, State};
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Service, ServiceExt};

use crate::common::{Chan, SHORT, channel};
use crate::support::channel::into_channel_error;
use crate::support::codec::{Msg, MsgCodec, TestProto};
use crate::support::server::{Behaviour, Gate, TestServer};
use crate::support::{bounded, eventually, timeout};

/// With `queue(1).max_in_flight(1)`, one call in flight and one queued, `poll_ready` is
/// `Pending`; it becomes ready once a reply frees the slot and the queued call moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_ready_is_pending_while_queue_and_in_flight_are_full() {
    bounded(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let mut ch = channel(&server, Config::default().queue(1).max_in_flight(1)).await;

        let a = ch.ready().await.expect("ready").call(Msg::new("a"));
        eventually(SHORT, "a written", || server.stats().frames() == 1).await;
        let b = ch.ready().await.expect("ready").call(Msg::new("b"));

        {
            let mut ready = tokio_test::task::spawn(poll_fn(|cx| ch.poll_ready(cx)));
            assert_pending!(ready.poll());
            assert_pending!(ready.poll());

            gate.release(1);
            assert_eq!(a.await.expect("a").text(), "a");
            eventually(SHORT, "poll_ready woken", || ready.is_woken()).await;
            assert_ready_ok!(ready.poll());
        }
        let c = ch.call(Msg::new("c"));

        gate.open();
        assert_eq!(b.await.expect("b").text(), "b");
        assert_eq!(c.await.expect("c").text(), "c");
        assert_eq!(server.stats().bodies(), ["a", "b", "c"]);
    })
    .await;
}

/// Room reserved by `poll_ready` while the connection was up, used by `call` after it
/// ended (the connection task gone): the call must fail at once as *not sent*, not wait
/// forever for a connection task that no longer exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_after_the_connection_ended_on_a_reserved_slot_fails_fast() {
    bounded(async {
        let server = TestServer::start(Behaviour::silent().close_after(1)).await;
        let ch = channel(&server, Config::default()).await;

        reserved_slot_used_after_the_end_fails_fast(&ch, async {
            let err = timeout(SHORT, ch.request(Msg::new("a")))
                .await
                .expect_err("server closes");
            assert!(err.may_have_executed(), "{err:?}");
        })
        .await;
    })
    .await;
}

/// Reserves a slot on a clone of `ch`, runs `end` (which ends the channel), waits
/// until it is closed, then uses the slot: the call fails at once, closed and *not
/// sent*, its request handed back.
async fn reserved_slot_used_after_the_end_fails_fast(ch: &Chan, end: impl Future<Output = ()>) {
    let mut svc = ch.clone();
    poll_fn(|cx| svc.poll_ready(cx))
        .await
        .expect("ready while connected");
    end.await;
    let mut state = ch.state();
    timeout(SHORT, state.wait_for(|s| *s == State::Closed))
        .await
        .expect("state");
    // Let the finished connection task be dropped.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let outcome = timeout(SHORT, svc.call(Msg::new("b"))).await;
    let mut err = into_channel_error(outcome.expect_err("the channel is closed"));
    assert!(err.is_closed(), "{err:?}");
    assert!(err.is_not_sent(), "{err:?}");
    assert_eq!(err.take_request::<Msg>(), Some(Msg::new("b")));
}

/// The same after `close()`: a slot reserved before it, used after it, fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_after_close_on_a_reserved_slot_fails_fast() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let ch = channel(&server, Config::default()).await;

        reserved_slot_used_after_the_end_fails_fast(&ch, async { ch.close() }).await;
        assert!(server.stats().bodies().is_empty());
    })
    .await;
}

/// The same with a reconnecting channel from the builder: a slot reserved before
/// `close()`, used after it, fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_channel_call_after_close_on_a_reserved_slot_fails_fast() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let ch: Chan = Channel::builder()
            .host(server.addr().to_string())
            .order(MsgCodec::default(), TestProto)
            .expect("builder");
        let hello = Msg::new("hello");
        assert_eq!(
            timeout(SHORT, ch.request(hello.clone()))
                .await
                .expect("hello"),
            hello
        );

        reserved_slot_used_after_the_end_fails_fast(&ch, async { ch.close() }).await;
        assert_eq!(server.stats().bodies(), ["hello"]);
    })
    .await;
}
