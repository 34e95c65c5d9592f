//! Failure semantics: on a lost connection the written calls may have executed and the
//! queued ones are not sent; garbage is a read error; an error reply fails its call only.

use socketchannel::{Config, ConnectionErrorKind, Kind};
use tower::{Service, ServiceExt};

use crate::common::{SHORT, channel, why};
use crate::support::channel::into_channel_error;
use crate::support::codec::{Msg, ServerSaid};
use crate::support::server::{Behaviour, TestServer};
use crate::support::{bounded, eventually, timeout};

/// Five calls queued in order with `max_in_flight(2)`; the server reads two and then
/// closes (FIN) or resets (RST). The two written calls fail as *may have executed*; the
/// three queued ones as *not sent*, each handing back exactly its own request.
async fn connection_loss_with_calls_in_flight_and_queued(
    behaviour: Behaviour,
    expected: ConnectionErrorKind,
) {
    let server = TestServer::start(behaviour).await;
    let mut ch = channel(&server, Config::default().max_in_flight(2)).await;

    let reqs: Vec<Msg> = (0..5)
        .map(|i| Msg::with_id(i, format!("lost {i}")))
        .collect();
    let mut futs = Vec::new();
    for req in &reqs {
        // In order, and all five before the connection task runs (the runtime has one
        // thread and `ready()` resolves at once): nothing can close in between.
        futs.push(ch.ready().await.expect("ready").call(req.clone()));
    }
    let outcomes = futures::future::join_all(futs).await;

    for (i, (outcome, req)) in outcomes.into_iter().zip(&reqs).enumerate() {
        let mut err = into_channel_error(outcome.expect_err("the connection was lost"));
        assert_eq!(err.kind(), Kind::ConnectionLost, "call {i}: {err:?}");
        assert_eq!(why(&err), expected, "call {i}: {err:?}");
        if i < 2 {
            assert!(err.may_have_executed(), "written call {i}: {err:?}");
            assert!(!err.is_not_sent(), "written call {i}: {err:?}");
            assert_eq!(err.take_request::<Msg>(), None, "written call {i}");
        } else {
            assert!(err.is_not_sent(), "queued call {i}: {err:?}");
            assert!(!err.may_have_executed(), "queued call {i}: {err:?}");
            assert_eq!(
                err.take_request::<Msg>().as_ref(),
                Some(req),
                "queued call {i}"
            );
        }
    }
    assert_eq!(server.stats().bodies(), ["lost 0", "lost 1"]);

    // The channel has no reconnect: later calls fail at once.
    assert!(ch.is_closed());
    let err = timeout(SHORT, ch.request(Msg::new("after")))
        .await
        .expect_err("closed");
    assert!(err.is_closed() && err.is_not_sent(), "{err:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn eof_fails_written_as_may_have_executed_and_queued_as_not_sent() {
    bounded(connection_loss_with_calls_in_flight_and_queued(
        Behaviour::silent().close_after(2),
        ConnectionErrorKind::Eof,
    ))
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn reset_fails_written_as_may_have_executed_and_queued_as_not_sent() {
    bounded(connection_loss_with_calls_in_flight_and_queued(
        Behaviour::silent().reset_after(2),
        ConnectionErrorKind::Read,
    ))
    .await;
}

/// Garbage on the wire (a frame length beyond any limit) is a read error: every call in
/// flight fails as *may have executed*, the connection is gone.
#[tokio::test(flavor = "current_thread")]
async fn decode_error_fails_in_flight_calls_as_read_error() {
    bounded(async {
        let server = TestServer::start(Behaviour::garbage()).await;
        let mut ch = channel(&server, Config::default()).await;

        // All three are queued before the connection task runs (current thread), so
        // all three are written in its first batch.
        let mut futs = Vec::new();
        for i in 0..3 {
            futs.push(
                ch.ready()
                    .await
                    .expect("ready")
                    .call(Msg::new(format!("g{i}"))),
            );
        }
        for (i, outcome) in futures::future::join_all(futs)
            .await
            .into_iter()
            .enumerate()
        {
            let err = into_channel_error(outcome.expect_err("garbage kills the connection"));
            assert_eq!(err.kind(), Kind::ConnectionLost, "call {i}: {err:?}");
            assert!(err.may_have_executed(), "call {i}: {err:?}");
            assert_eq!(why(&err), ConnectionErrorKind::Read, "call {i}: {err:?}");
        }
        assert!(ch.is_closed());
    })
    .await;
}

/// A reply the protocol marks as an error fails its own call only; the calls around it
/// and after it succeed on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_reply_fails_that_call_only() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let ch = channel(&server, Config::default()).await;

        let (a, e, b) = tokio::join!(
            ch.request(Msg::new("a")),
            ch.request(Msg::new("err boom")),
            ch.request(Msg::new("b")),
        );
        assert_eq!(a.expect("a").text(), "a");
        assert_eq!(b.expect("b").text(), "b");

        let err = e.expect_err("an error reply");
        assert!(err.is_server(), "{err:?}");
        assert_eq!(err.kind(), Kind::Server);
        assert!(err.may_have_executed(), "the server did see it: {err:?}");
        let said = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<ServerSaid>())
            .unwrap_or_else(|| panic!("source is not ServerSaid: {err:?}"));
        assert_eq!(said.0, "err boom");

        // Still the same healthy connection.
        assert!(!ch.is_closed());
        for i in 0..10 {
            let body = format!("after {i}");
            assert_eq!(
                ch.request(Msg::new(body.clone()))
                    .await
                    .expect("after")
                    .text(),
                body
            );
        }
        assert_eq!(server.stats().accepted(), 1);
        eventually(SHORT, "nothing in flight", || ch.counters().in_flight == 0).await;
    })
    .await;
}
