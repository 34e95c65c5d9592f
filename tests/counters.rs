//! What [`Counters`] says the built-in connector's IO did: bytes, and the reads and
//! writes (system calls, over a socket) that moved them, so a user can see how well a
//! connection coalesces calls.

#![cfg(feature = "tcp")]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Channel, Counters, Plain};
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LinesCodec};

/// A line echo server on a free loopback port, for one connection.
async fn echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut lines = Framed::new(socket, LinesCodec::new());
        while let Some(Ok(line)) = lines.next().await {
            if lines.send(line).await.is_err() {
                break;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "current_thread")]
async fn reads_and_writes_count_the_ios_operations() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let channel: Channel<String, String> = Channel::builder()
            .host(echo().await)
            .order(LinesCodec::new(), Plain)
            .unwrap();
        assert_eq!(channel.request("one".to_string()).await.unwrap(), "one");
        let one = channel.counters();
        assert_eq!((one.writes, one.bytes_written), (1, 4), "{one:?}");
        assert!(one.reads >= 1 && one.bytes_read == 4, "{one:?}");

        // 64 calls queued before the connection task runs go out in one write.
        let calls = (0..64).map(|i| channel.request(format!("{i:02}")));
        let replies = futures::future::join_all(calls).await;
        assert!(replies.iter().all(Result::is_ok));
        let all = channel.counters();
        let Counters {
            writes,
            bytes_written,
            ..
        } = all;
        assert_eq!((writes, bytes_written), (2, 4 + 64 * 3), "{all:?}");
        assert!(
            all.reads > one.reads && all.reads <= one.reads + 64,
            "{all:?}"
        );
    })
    .await
    .expect("within 10 s");
}

/// The builder's connector buffers 64 KiB: 32 calls of 1 KiB queued at once go out in
/// one write, and their replies come in a few reads (with tokio-util's 8 KiB default:
/// four writes, and a read per 8 KiB).
#[tokio::test(flavor = "current_thread")]
async fn the_default_buffers_gather_32_calls_of_1_kib_into_one_write() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let codec = LinesCodec::new_with_max_length(4096);
        let channel: Channel<String, String> = Channel::builder()
            .host(echo().await)
            .order(codec, Plain)
            .unwrap();
        channel.request("warm".to_string()).await.unwrap();
        let before = channel.counters();
        let line = "x".repeat(1023);
        let replies = futures::future::join_all((0..32).map(|_| channel.request(line.clone())));
        assert!(
            replies
                .await
                .iter()
                .all(|r| r.as_ref().is_ok_and(|r| *r == line))
        );
        let after = channel.counters();
        assert_eq!(after.bytes_written - before.bytes_written, 32 * 1024);
        assert_eq!(after.writes - before.writes, 1, "{after:?}");
    })
    .await
    .expect("within 10 s");
}
