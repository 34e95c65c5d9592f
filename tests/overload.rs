//! The overload signal: on when queued, unwritten requests weigh more than the
//! high-water mark, off again at half of it.

#[path = "support/codec.rs"]
mod codec;

use std::time::Duration;

use codec::{Msg, MsgCodec, TestProto};
use futures::{SinkExt, StreamExt};
use socketchannel::{Channel, Config, Order};
use tokio::sync::oneshot;
use tokio_util::codec::Framed;

#[tokio::test]
async fn overload_turns_on_above_the_mark_and_off_at_half() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (release_tx, release) = oneshot::channel::<()>();
    // A server that holds its first reply until released, then echoes everything.
    tokio::spawn(async move {
        let mut server = Framed::new(server, MsgCodec::default());
        let first = server.next().await.unwrap().unwrap();
        let _ = release.await;
        server.send(first).await.unwrap();
        while let Some(Ok(msg)) = server.next().await {
            server.send(msg).await.unwrap();
        }
    });
    let config = Config::default()
        .max_in_flight(1)
        .overload(500, |req: &Msg| req.body.len());
    let channel = Channel::with_config(
        Framed::new(client, MsgCodec::default()),
        Order::new(TestProto),
        config,
    );
    let mut overload = channel.overload();
    assert!(!*overload.borrow());

    // The first call is written and held; the next ten (100 bytes each) stay queued.
    let calls: Vec<_> = (0..11)
        .map(|i| {
            let channel = channel.clone();
            tokio::spawn(async move { channel.request(Msg::new(vec![i as u8; 100])).await })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(5), overload.wait_for(|on| *on))
        .await
        .expect("overload never turned on")
        .unwrap();

    release_tx.send(()).unwrap();
    for (i, call) in calls.into_iter().enumerate() {
        let reply = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("call hung")
            .unwrap()
            .unwrap();
        assert_eq!(reply.body[0], i as u8);
    }
    tokio::time::timeout(Duration::from_secs(5), overload.wait_for(|on| !*on))
        .await
        .expect("overload never turned off")
        .unwrap();
}

#[tokio::test]
async fn overload_stays_off_when_not_configured() {
    let (client, _server) = tokio::io::duplex(1024);
    let channel: Channel<Msg, Msg> = Channel::new(
        Framed::new(client, MsgCodec::default()),
        Order::new(TestProto),
    );
    assert!(!*channel.overload().borrow());
}

/// The connection task takes calls out of the intake in batches. Those a write pass took
/// and could not write (the transport stopped taking frames) are still queued: `Load`
/// (what a `p2c` balance reads) counts every call, written or not.
#[tokio::test]
async fn calls_taken_in_a_batch_and_left_unwritten_still_count_in_load() {
    use tower::load::Load;
    // A server that reads nothing: a few frames fill the pipe, and the transport, which
    // flushes before it takes the next frame, stops taking any.
    let (client, _server) = tokio::io::duplex(64);
    let mut transport = Framed::new(client, MsgCodec::default());
    transport.set_backpressure_boundary(1);
    let channel = Channel::new(transport, Order::new(TestProto));
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let channel = channel.clone();
            tokio::spawn(async move { channel.request(Msg::new(format!("{i:020}"))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let written = channel.counters().sent;
    assert!(
        written < 20,
        "the pipe holds only a few frames: {written} written"
    );
    assert_eq!(channel.load(), 20, "{written} written, the rest queued");
    for call in &calls {
        assert!(!call.is_finished());
    }
    for call in calls {
        call.abort();
    }
}
