//! The handshake meets lazy connects, the tower API, shutdown, the overload signal and
//! host changes.

use std::time::Duration;

use socketchannel::{Channel, Config, Endpoint, Handshake, Kind, Replies, State};
use tower::{Service, ServiceExt};

use crate::support::channel::{Mode, joined, msg, spawn_request, wait_state};
use crate::{ms, serve};

/// Defect 1: a handshake that awaits AUTH, then queues calls it does not await (a
/// `send`, a `stream`), on a lazy connect: both go before the user call that asked for
/// the connection, in their order. A call on its handle after it returned fails *not
/// sent*, saying why.
#[tokio::test(start_paused = true)]
async fn d01_handshake_leftovers_go_before_the_call_that_asked_for_the_connection() {
    let (net, log) = serve();
    let late = std::sync::Arc::new(std::sync::Mutex::new(None));
    let keep = late.clone();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .handshake(move |conn: Channel<_, _>, _: Endpoint| {
                let keep = keep.clone();
                async move {
                    conn.request(msg("AUTH")).await?;
                    // Queued (polled once), not awaited.
                    let (a, b) = (conn.clone(), conn.clone());
                    let mut select = Box::pin(async move { a.send(msg("mute SELECT 2")).await });
                    let _ = futures::poll!(select.as_mut());
                    let mut stream = Box::pin(async move {
                        let mut s = b.stream(msg("CLIENT"), Replies::Count(1)).await;
                        s.next().await
                    });
                    let _ = futures::poll!(stream.as_mut());
                    tokio::spawn(async move {
                        let _ = select.await;
                        let _ = stream.await;
                    });
                    *keep.lock().unwrap() = Some(conn);
                    Ok(Handshake::Ready)
                }
            }),
    );
    let reply = joined(spawn_request(&ch, "GET k"))
        .await
        .expect("GET answered");
    assert_eq!(reply.text(), "GET k");
    let read = &log.connections()[0].1;
    assert_eq!(
        read,
        &["AUTH", "mute SELECT 2", "CLIENT", "GET k"],
        "in handshake order, first"
    );

    let conn = late.lock().unwrap().take().expect("the handle");
    let err = conn
        .request(msg("too late"))
        .await
        .expect_err("the lane is closed");
    assert_eq!(err.kind(), Kind::Closed);
    assert!(err.is_not_sent());
    let why = std::error::Error::source(&err)
        .expect("a cause")
        .to_string();
    assert!(why.contains("handshake has returned"), "{why}");
    assert_eq!(log.executed("too late"), 0);
}

/// Defect 5: the tower API (`ready().call()`) and `connect()` on the handshake's own
/// handle do not wait for the pass they are part of; with no handshake timeout they
/// used to wait forever.
#[tokio::test(start_paused = true)]
async fn d05_a_handshake_may_use_the_tower_api_and_connect_on_its_handle() {
    let (net, _log) = serve();
    let ch = net.channel(
        Mode::Session,
        Channel::builder()
            .host("a:1")
            .handshake_timeout(None)
            .handshake(|mut conn: Channel<_, _>, _: Endpoint| async move {
                conn.connect().await?;
                let auth: crate::support::codec::Msg =
                    conn.ready().await?.call(msg("AUTH")).await?;
                assert_eq!(auth.text(), "AUTH");
                Ok(Handshake::Ready)
            }),
    );
    let call = spawn_request(&ch, "GET");
    let reply = tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .expect("the handshake must not wait on itself")
        .expect("task");
    assert_eq!(reply.expect("answered").text(), "GET");
}

/// Defect 9: a shutdown while a handshake runs lets the handshake finish and serves the
/// queued user calls until the deadline, as without a handshake.
#[tokio::test(start_paused = true)]
async fn d09_a_shutdown_during_a_handshake_serves_the_queued_calls() {
    let (net, log) = serve();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .handshake(|conn: Channel<_, _>, _: Endpoint| async move {
                // The shutdown comes while the handshake thinks; its calls come after.
                tokio::time::sleep(ms(100)).await;
                conn.request(msg("AUTH")).await?;
                Ok(Handshake::Ready)
            }),
    );
    let call = spawn_request(&ch, "GET");
    wait_state(&ch, State::Handshaking).await;
    ch.shutdown(Duration::from_secs(10)).await;
    assert_eq!(joined(call).await.expect("served").text(), "GET");
    assert_eq!(log.connections()[0].1, ["AUTH", "GET"]);
}

/// Defect 10: handshake calls do not weigh on the overload signal (they used to be
/// added on every reconnect and never taken off).
#[tokio::test(start_paused = true)]
async fn d10_handshake_calls_never_stick_on_the_overload_signal() {
    let (net, _log) = serve();
    let config = Config::default().overload(10, |m: &crate::support::codec::Msg| m.body.len());
    let ch = net.channel(
        Mode::Order,
        Channel::builder().host("a:1").config(config).handshake(
            |conn: Channel<_, _>, _: Endpoint| async move {
                conn.request(msg("AUTH 1234")).await?;
                Ok(Handshake::Ready)
            },
        ),
    );
    for i in 0..4 {
        // "bye" answers, then the server closes: every call makes a new handshake.
        assert_eq!(
            joined(spawn_request(&ch, "bye"))
                .await
                .expect("answered")
                .text(),
            "bye"
        );
        wait_state(&ch, State::Idle).await;
        assert!(
            !*ch.overload().borrow(),
            "overloaded after {} handshakes",
            i + 1
        );
    }
}

/// Defect 11: `change_host` while a handshake waits gives the handshake's call back
/// from `in_flight` (and `Load`), which used to stay at 1 forever.
#[tokio::test(start_paused = true)]
async fn d11_change_host_during_a_handshake_leaves_nothing_in_flight() {
    let (net, _log) = serve();
    let ch = net.channel(
        Mode::Session,
        Channel::builder()
            .host("a:1")
            .handshake(|conn: Channel<_, _>, ep: Endpoint| async move {
                if ep.host() == "a" {
                    conn.request(msg("mute AUTH")).await?;
                }
                Ok(Handshake::Ready)
            }),
    );
    let call = spawn_request(&ch, "GET");
    wait_state(&ch, State::Handshaking).await;
    tokio::time::sleep(ms(10)).await;
    assert_eq!(ch.counters().in_flight, 1, "the handshake's AUTH waits");
    ch.change_host("b:1").expect("valid");
    assert_eq!(joined(call).await.expect("served by b").text(), "GET");
    tokio::time::sleep(ms(10)).await;
    assert_eq!(ch.counters().in_flight, 0);
    assert_eq!(tower::load::Load::load(&ch), 0);
}
