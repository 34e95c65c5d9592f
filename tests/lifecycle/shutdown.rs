//! A shutdown ends as soon as nothing it waits for is left; `connect` during one waits
//! for it.

use std::time::Duration;

use socketchannel::{Channel, Config, Kind, Order, State};
use tokio::time::Instant;
use tower::Service;

use crate::support::channel::{Mode, joined, msg, spawn_request};
use crate::support::codec::{MsgCodec, TestProto};
use crate::{ms, serve};

/// Defect 6: the shutdown of a reconnecting channel ends when its last call is
/// answered (it used to wait for an unrelated timer: the 30 s stall timer, or with none
/// the whole deadline).
#[tokio::test(start_paused = true)]
async fn d06_a_reconnecting_channel_shuts_down_with_its_last_call() {
    for stall in [Some(Duration::from_secs(30)), None] {
        let (net, _log) = serve();
        let ch = net.channel(
            Mode::Order,
            Channel::builder()
                .host("a:1")
                .config(Config::default().stall_timeout(stall)),
        );
        let call = spawn_request(&ch, "slow 200 last");
        tokio::time::sleep(ms(10)).await;
        let started = Instant::now();
        ch.shutdown(Duration::from_secs(3600)).await;
        let took = started.elapsed();
        assert!(took < ms(300), "took {took:?} with stall {stall:?}");
        assert_eq!(
            joined(call).await.expect("answered").text(),
            "slow 200 last"
        );
        assert_eq!(*ch.state().borrow(), State::Closed);
    }
}

/// Defect 7: the shutdown of a fixed-transport channel is not held by a slot another
/// handle reserved with `poll_ready` (p2c keeps its ready services' slots); that call
/// then fails *not sent*.
#[tokio::test(start_paused = true)]
async fn d07_a_reserved_slot_does_not_hold_a_shutdown() {
    let (client, server) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        use futures::{SinkExt, StreamExt};
        let mut server = tokio_util::codec::Framed::new(server, MsgCodec::default());
        while let Some(Ok(req)) = server.next().await {
            let _ = server.send(req).await;
        }
    });
    let transport = tokio_util::codec::Framed::new(client, MsgCodec::default());
    let ch = Channel::new(transport, Order::new(TestProto));
    let mut holder = ch.clone();
    std::future::poll_fn(|cx| holder.poll_ready(cx))
        .await
        .expect("a slot");
    let started = Instant::now();
    ch.shutdown(Duration::from_secs(3600)).await;
    assert!(started.elapsed() < ms(100), "{:?}", started.elapsed());
    let err = holder.call(msg("late")).await.expect_err("closed");
    let err = err
        .downcast::<socketchannel::Error>()
        .expect("channel error");
    assert_eq!(err.kind(), Kind::Closed);
    assert!(err.is_not_sent());
}

/// `connect()` during a shutdown waits for the shutdown to finish (it used to cancel it,
/// and the `shutdown` future never resolved), then reopens the channel.
#[tokio::test(start_paused = true)]
async fn connect_during_a_shutdown_waits_for_it_then_reopens() {
    let (net, log) = serve();
    let ch = net.channel(Mode::Session, Channel::builder().host("a:1"));
    let call = spawn_request(&ch, "slow 500 last");
    tokio::time::sleep(ms(10)).await;
    let closing = tokio::spawn({
        let ch = ch.clone();
        async move { ch.shutdown(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(ms(10)).await;
    let opening = tokio::spawn({
        let ch = ch.clone();
        async move { ch.connect().await }
    });
    tokio::time::timeout(Duration::from_secs(2), closing)
        .await
        .expect("the shutdown ends")
        .expect("task");
    assert_eq!(joined(call).await.expect("served").text(), "slow 500 last");
    tokio::time::timeout(Duration::from_secs(2), opening)
        .await
        .expect("connect ends")
        .expect("task")
        .expect("reopened and connected");
    assert_eq!(
        joined(spawn_request(&ch, "again"))
            .await
            .expect("open")
            .text(),
        "again"
    );
    assert_eq!(log.executed("again"), 1);
}

/// A fire-and-forget call is written even if its caller leaves (`Channel::send`), so a
/// shutdown waits for it: queued during a slow connect and dropped, it is written once
/// the connection is made, and the shutdown ends then (not when its caller left, nor
/// at its deadline). The simulation's `shutdown_prompt` counts on this
/// (`sim::regressions::shutdown_held_by_a_send_whose_caller_left_seed_0x7aa60`).
#[tokio::test(start_paused = true)]
async fn a_shutdown_waits_for_a_send_whose_caller_left_until_it_is_written() {
    let (net, log) = serve();
    net.delay(ms(500));
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
    let send = tokio::spawn({
        let ch = ch.clone();
        async move { ch.send(msg("fire")).await }
    });
    tokio::time::sleep(ms(10)).await;
    send.abort();
    assert!(send.await.expect_err("aborted").is_cancelled());
    let started = Instant::now();
    ch.shutdown(Duration::from_secs(3600)).await;
    let took = started.elapsed();
    assert!(took >= ms(480) && took < ms(600), "took {took:?}");
    tokio::time::sleep(ms(10)).await;
    assert_eq!(log.executed("fire"), 1);
}
