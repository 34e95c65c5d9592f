//! How a channel ends: calls in flight outlive the last handle; `connect()` does not
//! reopen an ended fixed-transport channel.

use socketchannel::{Config, State};
use tower::{Service, ServiceExt};

use crate::common::{SHORT, channel};
use crate::support::codec::Msg;
use crate::support::server::{Behaviour, Gate, TestServer};
use crate::support::{bounded, eventually, timeout};

/// Calls made through `Service::call` outlive the handle: with the last handle dropped
/// they still complete, and then the connection closes (the server reads end of stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_handle_dropped_with_calls_in_flight_completes_them_then_closes() {
    bounded(async {
        let gate = Gate::new();
        let server = TestServer::start(Behaviour::echo().gated(&gate)).await;
        let mut ch = channel(&server, Config::default()).await;

        let reqs: Vec<Msg> = (0..3)
            .map(|i| Msg::with_id(i, format!("in flight {i}")))
            .collect();
        let mut futs = Vec::new();
        for req in &reqs {
            futs.push(ch.ready().await.expect("ready").call(req.clone()));
        }
        eventually(SHORT, "server read all three", || {
            server.stats().frames() == 3
        })
        .await;
        drop(ch);
        assert_eq!(
            server.stats().eofs(),
            0,
            "closed while calls were in flight"
        );

        gate.open();
        let replies = futures::future::join_all(futs).await;
        for (reply, req) in replies.into_iter().zip(&reqs) {
            assert_eq!(&reply.expect("in-flight call completes"), req);
        }
        eventually(SHORT, "server saw end of stream", || {
            server.stats().eofs() == 1
        })
        .await;
    })
    .await;
}

/// `connect()` cannot reopen a channel over a fixed transport: once its connection has
/// ended it fails as closed, and the channel stays closed (`is_closed`, and calls fail
/// at once as *not sent*).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_does_not_reopen_an_ended_fixed_transport_channel() {
    bounded(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let ch = channel(&server, Config::default()).await;
        ch.close();
        let mut state = ch.state();
        timeout(SHORT, state.wait_for(|s| *s == State::Closed))
            .await
            .expect("state");

        let err = timeout(SHORT, ch.connect()).await.expect_err("closed");
        assert!(err.is_closed(), "{err:?}");
        assert!(ch.is_closed(), "still closed after connect()");
        let err = timeout(SHORT, ch.request(Msg::new("late")))
            .await
            .expect_err("closed");
        assert!(err.is_closed() && err.is_not_sent(), "{err:?}");
        assert!(server.stats().bodies().is_empty(), "nothing was written");
    })
    .await;
}
