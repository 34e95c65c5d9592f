//! What a panic, a vanished task or a failed write says about whether a call was sent.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::{Sink, Stream};
use socketchannel::{
    BoxError, Call, Channel, Config, ConnectionErrorKind, Error, Kind, Order, Protocol,
    RetryNotSent,
};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::serve;
use crate::support::channel::{joined, msg};
use crate::support::codec::{Msg, TestProto};

/// The test protocol, but `check` panics on a reply whose body is `boom`.
#[derive(Clone)]
struct PanicsInCheck;

impl Protocol<Msg, Msg> for PanicsInCheck {
    fn check(&self, resp: Msg) -> Result<Msg, BoxError> {
        assert!(resp.text() != "boom", "check panicked");
        TestProto.check(resp)
    }
}

/// Defect 2: a panic in `Protocol::check` while delivering a written call's reply
/// fails that call *may have executed*, so `RetryNotSent` does not run it again (it
/// used to read as *not sent*, and the server executed it twice).
#[tokio::test(start_paused = true)]
async fn d02_a_panic_in_check_fails_the_written_call_as_may_have_executed() {
    let (net, log) = serve();
    let ch = Channel::builder()
        .host("a:1")
        .connector(net.connector(), Order::new(PanicsInCheck))
        .expect("valid");
    let err = ch
        .request(msg("boom"))
        .await
        .expect_err("the task panicked");
    assert!(err.may_have_executed(), "{err:?}");

    // Retry over a p2c balance of two channels: a retry would go to the other one.
    let two = (0..2)
        .map(|_| {
            Channel::builder()
                .host("a:1")
                .connector(net.connector(), Order::new(PanicsInCheck))
                .expect("valid")
        })
        .collect::<Vec<_>>();
    let mut svc = ServiceBuilder::new()
        .retry(RetryNotSent::new(3))
        .buffer(16)
        .service(Balance::new(ServiceList::new(two)));
    let err = svc
        .ready()
        .await
        .expect("ready")
        .call(msg("boom"))
        .await
        .expect_err("fails");
    let err = err.downcast::<Error>().expect("a channel error");
    assert!(err.may_have_executed());
    assert_eq!(
        log.executed("boom"),
        2,
        "once by the first channel, once through the balance"
    );
}

/// A call still queued when its connection task is dropped fails *not sent* and hands
/// its request back (its envelope's `Drop`); it used to be `Closed` without it.
#[tokio::test]
async fn a_call_queued_when_the_task_is_dropped_hands_its_request_back() {
    let (client, _server) = tokio::io::duplex(64);
    let transport =
        tokio_util::codec::Framed::new(client, crate::support::codec::MsgCodec::default());
    let (ch, task) = Channel::pair(transport, Order::new(TestProto), Config::default());
    let mut call = Box::pin(ch.request(msg("queued")));
    assert!(futures::poll!(call.as_mut()).is_pending());
    drop(task);
    let mut err = call.await.expect_err("the task is gone");
    assert!(err.is_not_sent());
    assert_eq!(
        err.take_request::<Msg>().map(|m| m.text().to_string()),
        Some("queued".into())
    );
}

/// `send(Call::read())` has nothing to send: `Unsupported`, not a silent `Closed`.
#[tokio::test(start_paused = true)]
async fn fire_and_forget_of_a_read_is_unsupported() {
    let (net, log) = serve();
    let ch = net.channel(
        crate::support::channel::Mode::Order,
        Channel::builder().host("a:1"),
    );
    let err = ch.send(Call::read()).await.expect_err("nothing to send");
    assert_eq!(err.kind(), Kind::Unsupported);
    assert!(err.is_not_sent());
    assert_eq!(
        joined(crate::support::channel::spawn_request(&ch, "after"))
            .await
            .unwrap()
            .text(),
        "after"
    );
    assert_eq!(log.executed("after"), 1);
}

/// A transport whose writes fail, and whose reads never end.
struct FailingWrites(Arc<AtomicUsize>);

impl Sink<Msg> for FailingWrites {
    type Error = io::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, _: Msg) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(io::Error::new(io::ErrorKind::BrokenPipe, "pipe broke"))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Stream for FailingWrites {
    type Item = io::Result<Msg>;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<io::Result<Msg>>> {
        Poll::Pending
    }
}

/// A fire-and-forget call whose `start_send` fails was handed over: `Connection`, *may
/// have executed*, with the write's cause (it used to be `Closed`, *not sent*, cause
/// lost).
#[tokio::test]
async fn fire_and_forget_whose_write_fails_keeps_its_cause() {
    let writes = Arc::new(AtomicUsize::new(0));
    let ch = Channel::new(FailingWrites(writes.clone()), Order::new(TestProto));
    let err = ch.send(msg("note")).await.expect_err("the write failed");
    assert_eq!(err.kind(), Kind::ConnectionLost, "{err}");
    assert!(err.may_have_executed());
    let cause = err.connection_error().expect("the connection's end");
    assert_eq!(cause.kind(), ConnectionErrorKind::Write);
    assert!(err.to_string().contains("pipe broke"), "{err}");
    assert_eq!(writes.load(Ordering::SeqCst), 1);
}
