//! Where a channel's connection task runs (#16): a channel made outside a runtime
//! starts on the runtime of its first call, and a channel that outlives its runtime
//! (kept in a `static` across `#[tokio::test]`s) fails its calls at once, saying why,
//! instead of hanging or panicking.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Channel, Endpoint, Kind};

use support::channel::{Ch, Mode, msg};
use support::memory::{Io, Net};

async fn echo(_endpoint: Endpoint, mut io: Io) {
    while let Some(Ok(req)) = io.next().await {
        if io.send(req).await.is_err() {
            break;
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The chain of an error's causes, as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        text.push_str(" / ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

#[test]
fn a_channel_built_outside_a_runtime_starts_on_its_first_call() {
    let net = Net::new(echo);
    let ch: Ch = net.channel(Mode::Order, Channel::builder().host("a:1"));

    // Outside any tokio runtime: refused, not sent, saying why; nothing hangs.
    let err = futures::executor::block_on(ch.request(msg("early"))).unwrap_err();
    assert_eq!(err.kind(), Kind::Closed);
    assert!(err.is_not_sent());
    assert!(chain(&err).contains("no tokio runtime"), "{}", chain(&err));
    let cause = std::error::Error::source(&err).expect("a cause");
    assert!(cause.is::<socketchannel::NoRuntime>(), "{cause:?}");
    assert!(
        !ch.is_closed(),
        "a refusal for want of a runtime closes nothing"
    );

    let rt = runtime();
    let reply = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), ch.request(msg("hello"))).await
    });
    assert_eq!(reply.unwrap().unwrap().text(), "hello");
}

#[test]
fn a_fixed_transport_channel_made_outside_a_runtime_starts_too() {
    let (client, server) = tokio::io::duplex(1024);
    let ch = Channel::new(
        tokio_util::codec::Framed::new(client, support::codec::MsgCodec::default()),
        socketchannel::Order::new(support::codec::TestProto),
    );
    let rt = runtime();
    let reply = rt.block_on(async move {
        tokio::spawn(async move {
            let mut io =
                tokio_util::codec::Framed::new(server, support::codec::MsgCodec::default());
            while let Some(Ok(req)) = io.next().await {
                let _ = io.send(req).await;
            }
        });
        tokio::time::timeout(Duration::from_secs(5), ch.request(msg("fixed"))).await
    });
    assert_eq!(reply.unwrap().unwrap().text(), "fixed");
}

static SHARED: OnceLock<(Net, Ch)> = OnceLock::new();

#[test]
fn a_static_channel_that_outlives_its_runtime_fails_fast_and_says_why() {
    let first = runtime();
    first.block_on(async {
        let (_, ch) = SHARED.get_or_init(|| {
            let net = Net::new(echo);
            let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
            (net, ch)
        });
        let reply = tokio::time::timeout(Duration::from_secs(5), ch.request(msg("one"))).await;
        assert_eq!(reply.unwrap().unwrap().text(), "one");
    });
    drop(first);

    let second = runtime();
    second.block_on(async {
        let (_, ch) = SHARED.get().unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), ch.request(msg("two")))
            .await
            .expect("a call on a channel whose runtime is gone must not hang");
        let err = outcome.unwrap_err();
        assert_eq!(err.kind(), Kind::Closed);
        assert!(err.is_not_sent());
        assert!(
            chain(&err).contains("dropped before it ended"),
            "{}",
            chain(&err)
        );
        let cause = std::error::Error::source(&err).expect("a cause");
        assert!(cause.is::<socketchannel::TaskDropped>(), "{cause:?}");
    });
}

/// A channel made outside a runtime and dropped before any call: its task, and the
/// transport in it, go with it (the peer sees the end of the stream).
#[test]
fn a_channel_dropped_before_it_started_drops_its_transport() {
    let (client, server) = tokio::io::duplex(1024);
    let ch = Channel::new(
        tokio_util::codec::Framed::new(client, support::codec::MsgCodec::default()),
        socketchannel::Order::new(support::codec::TestProto),
    );
    let clone = ch.clone();
    drop(ch);
    drop(clone);
    let rt = runtime();
    rt.block_on(async move {
        let mut server =
            tokio_util::codec::Framed::new(server, support::codec::MsgCodec::default());
        let end = tokio::time::timeout(Duration::from_millis(500), server.next()).await;
        assert!(
            matches!(end, Ok(None)),
            "the client's end was never dropped: {end:?}"
        );
    });
}
