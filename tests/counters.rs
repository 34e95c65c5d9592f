//! What [`Counters`] says the built-in connector's IO did: bytes, and the reads and
//! writes (system calls, over a socket) that moved them, so a user can see how well a
//! connection coalesces calls.

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
