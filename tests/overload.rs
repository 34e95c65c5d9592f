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
