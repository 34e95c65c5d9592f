//! `tower::balance::p2c::Balance` over reconnecting channels when one backend is down.
//!
//! A channel whose host is down backs off, and while it does its calls fail at once
//! (*not sent*). Its `poll_ready` stays `Ready`, so its `Load` must rank it after every
//! working channel: were it its true load (0, failing everything at once), power of two
//! choices would prefer it to any backend with a call in flight, and the dead backend
//! would draw the traffic (a "black hole").

#![cfg(feature = "tcp")]

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Backoff, Channel, Plain, Reconnect, State};
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LinesCodec};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::Load;
use tower::{Service, ServiceBuilder, ServiceExt};

type Lines = Channel<String, String>;

/// A line server that answers each line after `delay`, in order.
async fn slow_server(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut lines = Framed::new(stream, LinesCodec::new());
                while let Some(Ok(line)) = lines.next().await {
                    tokio::time::sleep(delay).await;
                    if lines.send(line).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A 127.0.0.1 port nobody listens on.
fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn channel(addr: SocketAddr) -> Lines {
    Channel::builder()
        .host(addr.to_string())
        .reconnect(Reconnect::Persistent)
        // Long enough that the dead backend stays backing off for the whole test.
        .backoff(Backoff::exponential(
            Duration::from_secs(30),
            Duration::from_secs(30),
        ))
        .order(LinesCodec::new(), Plain)
        .unwrap()
}

/// A dead backend, backing off: its first connect pass has failed.
async fn backing_off() -> Lines {
    let dead = channel(dead_addr());
    assert!(dead.connect().await.is_err());
    assert_eq!(*dead.state().borrow(), State::BackingOff);
    dead
}

#[tokio::test]
async fn a_backing_off_channel_does_not_look_less_loaded_than_a_working_one() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let live = channel(slow_server(Duration::from_millis(500)).await);
        let dead = backing_off().await;

        // One call in flight on the live backend.
        let in_flight = tokio::spawn({
            let live = live.clone();
            async move { live.request("x".to_string()).await }
        });
        while live.load() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            dead.load() > live.load(),
            "backing off: load {}; connected, one call in flight: load {}",
            dead.load(),
            live.load()
        );
        in_flight.await.unwrap().unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn balance_steers_around_a_backing_off_backend() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let live = channel(slow_server(Duration::from_millis(5)).await);
        let dead = backing_off().await;
        let balance = ServiceBuilder::new()
            .buffer(64)
            .service(Balance::new(ServiceList::new(vec![live, dead])));

        let calls = (0..32).map(|i| {
            let mut balance = balance.clone();
            async move {
                let reply = balance.ready().await?.call(format!("call {i}")).await?;
                assert_eq!(reply, format!("call {i}"));
                Ok::<_, tower::BoxError>(())
            }
        });
        let failed: Vec<String> = futures::future::join_all(calls)
            .await
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect();
        assert!(
            failed.is_empty(),
            "{} of 32 calls went to the dead backend: {:?}",
            failed.len(),
            failed.first()
        );
    })
    .await
    .unwrap();
}
