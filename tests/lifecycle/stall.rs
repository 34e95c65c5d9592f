//! The stall timer measures silence: replies still arriving, and bytes still moving,
//! are progress.

use std::io;
use std::time::Duration;

use socketchannel::{Channel, Config, ConnectionErrorKind, Endpoint, Metered, Replies, Session};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;

use crate::support::channel::{Mode, joined, msg, spawn_request};
use crate::support::codec::{Msg, MsgCodec, TestProto};
use crate::{ms, serve};

fn stalls_at_one_second() -> Config {
    Config::default().stall_timeout(Some(Duration::from_secs(1)))
}

/// Defect 3: a reply of many frames, one every 400 ms with a 1 s stall timeout, in every
/// multi-frame shape, completes (the clock restarted only when a call completed).
#[tokio::test(start_paused = true)]
async fn d03_a_reply_whose_frames_keep_coming_never_stalls() {
    for mode in [Mode::Order, Mode::Session] {
        let (net, _log) = serve();
        let ch = net.channel(
            mode,
            Channel::builder()
                .host("a:1")
                .config(stalls_at_one_second()),
        );
        let parts = ch
            .request_until_final(msg("parts 8 400"))
            .await
            .expect("until final");
        assert_eq!(parts.len(), 8);
        let parts = ch.request_n(msg("parts 8 400"), 8).await.expect("n frames");
        assert_eq!(parts.len(), 8);
        let mut stream = ch.stream(msg("parts 8 400"), Replies::UntilFinal).await;
        let mut got = 0;
        while let Some(part) = stream.next().await {
            part.expect("a part");
            got += 1;
        }
        assert_eq!(got, 8);
        assert_eq!(ch.counters().reconnects, 0, "{mode:?}");
    }
}

/// A server that answers one 16 KiB reply 400 bytes every 100 ms (4 KB/s: about 4 s).
async fn trickle(
    endpoint: Endpoint,
) -> io::Result<Framed<Metered<tokio::io::DuplexStream>, MsgCodec>> {
    let _ = endpoint;
    let (client, mut server) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        let mut framed = Framed::new(&mut server, MsgCodec::default());
        use futures::StreamExt;
        while let Some(Ok(req)) = framed.next().await {
            let mut bytes = bytes::BytesMut::new();
            let reply = Msg::with_id(req.id, vec![b'x'; 16 * 1024]);
            tokio_util::codec::Encoder::encode(&mut MsgCodec::default(), reply, &mut bytes)
                .unwrap();
            for chunk in bytes.chunks(400) {
                tokio::time::sleep(ms(100)).await;
                if framed.get_mut().write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Framed::new(Metered::new(client), MsgCodec::default()))
}

/// Defect 3: a 16 KiB reply over a 4 KB/s link, stall timeout 1 s: the bytes moving
/// restart the clock (over a `Metered` IO, as the crate's connectors use), so it
/// completes instead of failing at 1 s on every attempt.
#[tokio::test(start_paused = true)]
async fn d03_a_large_reply_over_a_slow_link_never_stalls() {
    let ch = Channel::builder()
        .host("slow:1")
        .config(stalls_at_one_second())
        .connector(tower::service_fn(trickle), Session::new(TestProto))
        .expect("valid");
    let started = tokio::time::Instant::now();
    let reply = ch.request(msg("GET big")).await.expect("no stall");
    assert_eq!(reply.body.len(), 16 * 1024);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "it did trickle"
    );
    assert!(ch.counters().bytes_read > 16 * 1024);
}

/// Silence still stalls, also after 2^32 ms (49.7 days) on one connection, where a
/// millisecond stamp used to saturate and make every call look stalled at once
/// (defect 4).
#[tokio::test(start_paused = true)]
async fn d04_fifty_days_on_one_connection_change_nothing() {
    let (net, _log) = serve();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .config(stalls_at_one_second()),
    );
    assert_eq!(
        joined(spawn_request(&ch, "first")).await.unwrap().text(),
        "first"
    );
    tokio::time::advance(Duration::from_millis(1 << 32) + Duration::from_secs(86_400)).await;
    // Two pipelined calls of 900 ms each: the second becomes the head at 900 ms, when
    // the first is answered, and is answered 900 ms later, never 1 s without progress.
    let (a, b) = (
        spawn_request(&ch, "slow 900 a"),
        spawn_request(&ch, "slow 900 b"),
    );
    assert_eq!(joined(a).await.expect("no stall").text(), "slow 900 a");
    assert_eq!(joined(b).await.expect("no stall").text(), "slow 900 b");
    let started = tokio::time::Instant::now();
    let err = joined(spawn_request(&ch, "mute"))
        .await
        .expect_err("silence stalls");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < ms(1100),
        "{waited:?}"
    );
    assert_eq!(
        err.connection_error().map(|c| c.kind()),
        Some(ConnectionErrorKind::Stalled)
    );
    assert_eq!(ch.counters().reconnects, 0);
}
