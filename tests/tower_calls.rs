//! Every call shape through tower (`Service<Call<Req>>`, contract 9), and
//! `RetryNotSent` over it: a call is refilled from its *not sent* error (its request
//! need not be `Clone`), an idempotent call is retried after its connection was lost,
//! a budget bounds retries, and the policy also fits services whose error is the
//! channel's own `Error`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use socketchannel::{
    BoxError, Call, Channel, Endpoint, Error, Kind, Order, Replies, Reply, RetryNotSent,
};
use tokio_util::codec::{Decoder, Encoder};
use tower::retry::budget::TpsBudget;
use tower::{Service, ServiceBuilder, ServiceExt};

use support::channel::{Ch, Mode, channel_error, msg};
use support::codec::{Kind as FrameKind, Msg, MsgCodec, TestProto};
use support::memory::{Io, Net};
use support::within;

/// Answers `n:K` with K frames (the last final), `quiet` with nothing, `drop once` by
/// closing the first connection it arrives on; echoes anything else.
async fn server(dropped: Arc<AtomicUsize>, mut io: Io) {
    while let Some(Ok(req)) = io.next().await {
        let text = req.text().to_string();
        if let Some(k) = text.strip_prefix("n:") {
            let k: usize = k.parse().unwrap();
            for i in 0..k {
                let kind = if i + 1 == k {
                    FrameKind::Normal
                } else {
                    FrameKind::More
                };
                let frame = Msg::with_id(req.id, format!("{i}")).kind(kind);
                if io.send(frame).await.is_err() {
                    return;
                }
            }
        } else if text != "quiet" {
            let drop_now = text == "drop once" && dropped.fetch_add(1, Ordering::SeqCst) == 0;
            if drop_now || io.send(req).await.is_err() {
                return;
            }
        }
    }
}

fn net() -> (Net, Arc<AtomicUsize>) {
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    (
        Net::new(move |_: Endpoint, io| server(d.clone(), io)),
        dropped,
    )
}

fn channel(net: &Net, mode: Mode) -> Ch {
    net.channel(mode, Channel::builder().host("a:1"))
}

fn texts(frames: &[Msg]) -> Vec<&str> {
    frames.iter().map(Msg::text).collect()
}

/// Every shape through one `ServiceBuilder` stack, in both modes.
#[tokio::test(start_paused = true)]
async fn every_shape_goes_through_a_service_builder_stack() {
    for mode in [Mode::Order, Mode::Session] {
        let (net, _) = net();
        let ch = channel(&net, mode);
        let mut svc = ServiceBuilder::new()
            .timeout(Duration::from_secs(5))
            .concurrency_limit(16)
            .service(ch.calls());

        let one = svc.ready().await.unwrap().call(Call::new(msg("a"))).await;
        assert_eq!(one.unwrap().into_one().unwrap().text(), "a");

        let many = Call::new(msg("n:3")).replies(Replies::Count(3));
        let many = svc.ready().await.unwrap().call(many).await.unwrap();
        assert_eq!(texts(&many.into_many().unwrap()), ["0", "1", "2"]);

        let until = Call::new(msg("n:4")).replies(Replies::UntilFinal);
        let until = svc.ready().await.unwrap().call(until).await.unwrap();
        assert_eq!(texts(&until.into_many().unwrap()), ["0", "1", "2", "3"]);

        let stream = Call::new(msg("n:3")).stream(Replies::UntilFinal);
        let stream = svc.ready().await.unwrap().call(stream).await.unwrap();
        let frames: Vec<Msg> = stream
            .into_stream()
            .unwrap()
            .map(|f| f.unwrap())
            .collect()
            .await;
        assert_eq!(texts(&frames), ["0", "1", "2"]);

        let sent = Call::new(msg("quiet")).no_reply();
        let sent = svc.ready().await.unwrap().call(sent).await.unwrap();
        assert!(matches!(sent, Reply::Sent));

        // Multi-part: each part is answered; the call takes the first reply.
        let parts = Call::parts(vec![msg("p1"), msg("p2")]).replies(Replies::Count(2));
        let parts = svc.ready().await.unwrap().call(parts).await.unwrap();
        assert_eq!(texts(&parts.into_many().unwrap()), ["p1", "p2"]);

        let exempt = Call::new(msg("slow")).no_stall_timeout();
        let exempt = svc.ready().await.unwrap().call(exempt).await.unwrap();
        assert_eq!(exempt.into_one().unwrap().text(), "slow");

        if mode == Mode::Session {
            let mine = Call::new(msg("mine")).id(77u64);
            let mine = svc.ready().await.unwrap().call(mine).await.unwrap();
            let mine = mine.into_one().unwrap();
            assert_eq!((mine.id, mine.text()), (77, "mine"));
        }
        assert_eq!(ch.counters().in_flight, 0, "{mode:?}");
    }
}

/// `Service<Call>` has the backpressure and `Load` of `Service<Req>`: `poll_ready` is
/// `Pending` while the intake is full, and `Load` counts the queued calls.
#[tokio::test(start_paused = true)]
async fn a_call_service_keeps_backpressure_and_load() {
    use tower::load::Load;
    let (net, _) = net();
    net.hang("a:1");
    let config = socketchannel::Config::default().queue(2);
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1").config(config));
    let mut svc = ch.calls();
    let mut futures = Vec::new();
    for i in 0..2 {
        let ready = within(1, "room in the intake", svc.ready()).await.unwrap();
        futures.push(ready.call(Call::new(msg(format!("{i}")))));
    }
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    // A connect pass is running (the host hangs): not ready either way, and the two
    // calls weigh on the load.
    assert!(svc.poll_ready(&mut cx).is_pending());
    assert!(svc.load() >= 2, "load {}", svc.load());
    drop(futures);
}

/// A slot `poll_ready` reserved counts in `Load` while the handle holds it (an idle
/// channel reads 1, not a leak) and no longer once it is used or the handle is dropped.
#[tokio::test(start_paused = true)]
async fn a_reserved_slot_counts_in_load_until_used_or_dropped() {
    use tower::load::Load;
    let (net, _) = net();
    let ch = channel(&net, Mode::Order);
    let reply = within(1, "an echo", ch.request(msg("warm"))).await.unwrap();
    assert_eq!(reply.text(), "warm");
    assert_eq!(ch.load(), 0);
    let mut ready = ch.clone();
    within(
        1,
        "a slot",
        std::future::poll_fn(|cx| Service::<Msg>::poll_ready(&mut ready, cx)),
    )
    .await
    .unwrap();
    assert_eq!((ch.load(), ch.counters().in_flight), (1, 0));
    let reply = within(1, "an echo", Service::<Msg>::call(&mut ready, msg("used")))
        .await
        .unwrap();
    assert_eq!(reply.text(), "used");
    assert_eq!(ch.load(), 0);
    within(
        1,
        "a slot",
        std::future::poll_fn(|cx| Service::<Msg>::poll_ready(&mut ready, cx)),
    )
    .await
    .unwrap();
    assert_eq!(ch.load(), 1);
    drop(ready);
    assert_eq!(ch.load(), 0);
}

/// A request type that is not `Clone`: its calls are retried from the request the
/// *not sent* error hands back.
#[derive(Debug)]
struct Once(Msg);

#[derive(Clone, Default)]
struct OnceCodec(MsgCodec);

impl Encoder<Once> for OnceCodec {
    type Error = std::io::Error;
    fn encode(&mut self, req: Once, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.0.encode(req.0, dst)
    }
}

impl Decoder for OnceCodec {
    type Item = Msg;
    type Error = std::io::Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, Self::Error> {
        self.0.decode(src)
    }
}

/// The test protocol, for `Once` requests.
#[derive(Clone, Copy)]
struct OnceProto;

impl socketchannel::Protocol<Once, Msg> for OnceProto {
    fn is_final(&self, resp: &Msg) -> bool {
        TestProto::is_final(&TestProto, resp)
    }
}

/// Routes the first attempt to one service, every later one to the other.
#[derive(Clone)]
struct FirstThenSecond<S> {
    first: S,
    second: S,
    calls: Arc<AtomicUsize>,
}

impl<S, R> Service<R> for FirstThenSecond<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.calls.load(Ordering::SeqCst) == 0 {
            self.first.poll_ready(cx)
        } else {
            self.second.poll_ready(cx)
        }
    }

    fn call(&mut self, req: R) -> S::Future {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.first.call(req)
        } else {
            self.second.call(req)
        }
    }
}

/// A channel of `Once` requests over a pipe to an echo server.
fn once_channel() -> Channel<Once, Msg> {
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let mut server = tokio_util::codec::Framed::new(server, MsgCodec::default());
        while let Some(Ok(req)) = server.next().await {
            if server.send(req).await.is_err() {
                break;
            }
        }
    });
    Channel::new(
        tokio_util::codec::Framed::new(client, OnceCodec::default()),
        Order::new(OnceProto),
    )
}

#[tokio::test]
async fn a_call_whose_request_is_not_clone_is_retried_from_its_error() {
    // A host that refuses every connect: the call fails *not sent*, request in hand.
    let refused = tower::service_fn(|_: Endpoint| async {
        Err::<tokio_util::codec::Framed<tokio::io::DuplexStream, OnceCodec>, _>(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )
    });
    let down = Channel::builder()
        .host("a:1")
        .connector(refused, Order::new(OnceProto))
        .unwrap();
    let live = once_channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = FirstThenSecond {
        first: down.calls(),
        second: live.calls(),
        calls: calls.clone(),
    };
    let mut svc = ServiceBuilder::new()
        .retry(RetryNotSent::new(2))
        .service(svc);
    let reply = within(5, "retried call", async {
        svc.ready().await?.call(Call::new(Once(msg("x")))).await
    })
    .await
    .unwrap();
    assert_eq!(reply.into_one().unwrap().text(), "x");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one failed attempt, one retry"
    );
}

/// Without the retry layer's help a hollow copy is never sent as a read, on any path.
#[tokio::test]
async fn a_copy_without_its_frames_is_refused_not_sent_as_a_read() {
    let mut ch = once_channel().calls();
    let mut policy = RetryNotSent::new(1);
    let copy = tower::retry::Policy::<Call<Once>, Reply<Msg>, BoxError>::clone_request(
        &mut policy,
        &Call::new(Once(msg("x"))),
    )
    .unwrap();
    let err = ch.ready().await.unwrap().call(copy).await.unwrap_err();
    let err = channel_error(&err).expect("a channel error");
    assert_eq!(err.kind(), Kind::Unsupported);
    assert!(err.is_not_sent());
    // The methods refuse one too.
    let copy = tower::retry::Policy::<Call<Once>, Reply<Msg>, BoxError>::clone_request(
        &mut policy,
        &Call::new(Once(msg("y"))),
    )
    .unwrap();
    let err = ch.channel().request(copy).await.unwrap_err();
    assert_eq!(err.kind(), Kind::Unsupported);
    assert!(err.is_not_sent());
    // And the channel still answers its own calls.
    let reply = ch.channel().request(Once(msg("z"))).await.unwrap();
    assert_eq!(reply.text(), "z");
}

/// An idempotent call whose connection was lost after it was written is retried (and
/// answered on the next connection); a plain one is not.
#[tokio::test(start_paused = true)]
async fn an_idempotent_call_is_retried_after_its_connection_was_lost() {
    for idempotent in [false, true] {
        let (net, dropped) = net();
        let ch = channel(&net, Mode::Order);
        let mut svc = ServiceBuilder::new()
            .retry(RetryNotSent::new(2))
            .service(ch.calls());
        let call = Call::new(msg("drop once"));
        let call = if idempotent { call.idempotent() } else { call };
        let outcome = within(10, "call", async { svc.ready().await?.call(call).await }).await;
        assert_eq!(dropped.load(Ordering::SeqCst), 1 + usize::from(idempotent));
        if idempotent {
            assert_eq!(outcome.unwrap().into_one().unwrap().text(), "drop once");
        } else {
            let err = outcome.unwrap_err();
            let err = channel_error(&err).expect("a channel error");
            assert_eq!(err.kind(), Kind::ConnectionLost);
            assert!(err.may_have_executed());
        }
    }
}

/// Counts the calls that reach the inner service.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    calls: Arc<AtomicUsize>,
}

impl<S: Service<R>, R> Service<R> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: R) -> S::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.call(req)
    }
}

/// A dead host and a budget of 10% with no reserve: 100 calls make far fewer than the
/// 400 attempts `RetryNotSent::new(3)` alone would.
#[tokio::test(start_paused = true)]
async fn a_budget_keeps_a_dead_host_from_being_hammered() {
    let (net, _) = net();
    net.down("a:1", true);
    let ch = channel(&net, Mode::Order);
    let calls = Arc::new(AtomicUsize::new(0));
    let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 1, 0.1));
    let svc = ServiceBuilder::new()
        .retry(RetryNotSent::new(3).budget(budget))
        .service(Counted {
            inner: ch.calls(),
            calls: calls.clone(),
        });
    for i in 0..100 {
        let outcome = within(5, "call on a dead host", async {
            svc.clone().oneshot(Call::new(msg(format!("{i}")))).await
        })
        .await;
        assert!(outcome.is_err());
    }
    let attempts = calls.load(Ordering::SeqCst);
    assert!(
        (100..=120).contains(&attempts),
        "{attempts} attempts for 100 calls"
    );
}

/// The policy fits a service whose error is the channel's own `Error` (mapped back from
/// `BoxError`), for plain requests and for calls.
#[tokio::test(start_paused = true)]
async fn the_policy_fits_services_that_fail_with_the_channel_error() {
    let (net, _) = net();
    let ch = channel(&net, Mode::Order);
    let unbox = |e: BoxError| -> Error { *e.downcast::<Error>().expect("a channel error") };
    let plain = ServiceBuilder::new()
        .retry(RetryNotSent::new(1))
        .service(ch.clone().map_err(unbox));
    let reply = within(5, "plain", plain.oneshot(msg("p"))).await.unwrap();
    assert_eq!(reply.text(), "p");
    let calls = ServiceBuilder::new()
        .retry(RetryNotSent::new(1))
        .service(ch.calls().map_err(unbox));
    let reply = within(5, "call", calls.oneshot(Call::new(msg("c"))))
        .await
        .unwrap();
    assert_eq!(reply.into_one().unwrap().text(), "c");
}
