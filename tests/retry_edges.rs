//! `RetryNotSent` where its rules meet the channel's (found by a review of #16): a read
//! is never retried (on a new connection it would take another call's reply), a
//! retry the budget refuses leaves the request in the error, `IdInUse` and `Closed`
//! are never retried (a closed channel's `poll_ready` error would replace the call's,
//! losing its request and its *may have executed*).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{
    BoxError, Call, Channel, Endpoint, Error, Kind, Order, Plain, Protocol, Reconnect,
    RetryNotSent, Session, Sessions,
};
use tokio::io::DuplexStream;
use tokio_util::codec::{Framed, LinesCodec};
use tower::retry::budget::TpsBudget;
use tower::{Service, ServiceBuilder, ServiceExt};

type Lines = Framed<DuplexStream, LinesCodec>;

fn pipe() -> (Lines, Lines) {
    let (a, b) = tokio::io::duplex(4096);
    (
        Framed::new(a, LinesCodec::new()),
        Framed::new(b, LinesCodec::new()),
    )
}

type Serve = Arc<dyn Fn(usize, Lines) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A connector that hands out in-memory pipes and runs `serve(n, server_end)` for the
/// n-th connection; with `fail`, it refuses every connect.
#[derive(Clone)]
struct Conn {
    n: Arc<AtomicUsize>,
    serve: Serve,
    fail: bool,
}

impl Conn {
    fn new<F, Fut>(serve: F) -> Self
    where
        F: Fn(usize, Lines) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Conn {
            n: Arc::default(),
            serve: Arc::new(move |n, io| Box::pin(serve(n, io))),
            fail: false,
        }
    }
}

impl Service<Endpoint> for Conn {
    type Response = Lines;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Lines, BoxError>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, e: Endpoint) -> Self::Future {
        let _ = e;
        if self.fail {
            return Box::pin(async { Err("refused".into()) });
        }
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        let (client, server) = pipe();
        tokio::spawn((self.serve)(n, server));
        Box::pin(async move { Ok(client) })
    }
}

async fn echo_upper(mut io: Lines) {
    while let Some(Ok(line)) = io.next().await {
        if io.send(line.to_uppercase()).await.is_err() {
            return;
        }
    }
}

/// Counts the calls that reach the inner service.
#[derive(Clone)]
struct Count<S> {
    inner: S,
    n: Arc<AtomicUsize>,
}

impl<S: Service<R>, R> Service<R> for Count<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, r: R) -> S::Future {
        self.n.fetch_add(1, Ordering::SeqCst);
        self.inner.call(r)
    }
}

fn err(e: BoxError) -> Error {
    *e.downcast::<Error>().expect("a channel error")
}

/// A read waiting when its connection is lost fails *not sent*; it is not retried, and
/// the next caller gets its own reply.
#[tokio::test]
async fn a_read_is_never_retried_onto_another_connection() {
    let conn = Conn::new(|n, io| async move {
        if n == 0 {
            // First connection: say nothing, then drop.
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(io);
        } else {
            echo_upper(io).await;
        }
    });
    let channel: Channel<String, String> = Channel::builder()
        .host("h:1")
        .reconnect(Reconnect::Once)
        .connector(conn, Order::new(Plain))
        .unwrap();
    let svc = ServiceBuilder::new()
        .retry(RetryNotSent::new(3).delay(Duration::from_millis(50)))
        .service(channel.calls());
    let read = tokio::spawn(svc.oneshot(Call::<String>::read()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = tokio::time::timeout(Duration::from_millis(100), read)
        .await
        .expect("the read resolved")
        .unwrap();
    let e = err(read.unwrap_err());
    assert_eq!(e.kind(), Kind::ConnectionLost);
    let other = tokio::time::timeout(
        Duration::from_millis(500),
        channel.request("hello".to_string()),
    )
    .await;
    assert_eq!(other.unwrap().unwrap(), "HELLO");
}

#[derive(Clone)]
struct Tagged;
impl Protocol<String, String> for Tagged {}
impl Sessions<String, String> for Tagged {
    type Id = u32;
    fn stamp(&self, req: &mut String, id: u32) {
        *req = format!("{id} {req}");
    }
    fn session(&self, resp: &String) -> Option<u32> {
        resp.split_once(' ')?.0.parse().ok()
    }
}

/// A caller-supplied id still in use is the caller's bug: not retried.
#[tokio::test]
async fn id_in_use_is_not_retried() {
    let (client, mut server) = pipe();
    tokio::spawn(async move {
        while let Some(Ok(line)) = server.next().await {
            if line.ends_with("slow") {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            server.send(line).await.unwrap();
        }
    });
    let channel = Channel::new(client, Session::new(Tagged));
    let slow = {
        let c = channel.clone();
        tokio::spawn(async move { c.request(Call::new("slow".to_string()).id(7u32)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let n = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .retry(RetryNotSent::new(5).delay(Duration::from_millis(100)))
        .service(Count {
            inner: channel.calls(),
            n: n.clone(),
        });
    let e = err(svc
        .oneshot(Call::new("fast".to_string()).id(7u32))
        .await
        .unwrap_err());
    assert_eq!(e.kind(), Kind::IdInUse);
    slow.await.unwrap().unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 1, "IdInUse was retried");
}

/// A retry the budget refuses leaves the request in the *not sent* error.
#[tokio::test]
async fn a_retry_the_budget_refuses_keeps_the_request() {
    let mut conn = Conn::new(|_, io| echo_upper(io));
    conn.fail = true;
    let channel: Channel<String, String> = Channel::builder()
        .host("h:1")
        .connector(conn, Order::new(Plain))
        .unwrap();
    let budget = Arc::new(TpsBudget::new(Duration::from_secs(1), 0, 0.0));
    let e = ServiceBuilder::new()
        .retry(RetryNotSent::new(3).budget(budget))
        .service(channel.calls())
        .oneshot(Call::new("SET k v".to_string()))
        .await
        .unwrap_err();
    let mut e = err(e);
    assert!(e.is_not_sent());
    assert_eq!(e.take_request::<String>().as_deref(), Some("SET k v"));
}

/// A call refused by a closed channel is not retried there: its error keeps the
/// request.
#[tokio::test]
async fn closed_is_not_retried_and_keeps_the_request() {
    let (client, mut server) = pipe();
    tokio::spawn(async move { while let Some(Ok(_)) = server.next().await {} });
    let channel: Channel<String, String> = Channel::new(client, Order::new(Plain));
    let n = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .retry(RetryNotSent::new(3))
        .service(Count {
            inner: channel.calls(),
            n: n.clone(),
        });
    svc.ready().await.unwrap();
    channel.close();
    let mut e = err(svc
        .call(Call::new("SET k v".to_string()))
        .await
        .unwrap_err());
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert!(e.is_not_sent());
    assert_eq!(e.take_request::<String>().as_deref(), Some("SET k v"));
}

/// An idempotent call written, then closed: not retried, and still *may have
/// executed* (a retry's `poll_ready` error would have said *not sent*).
#[tokio::test]
async fn an_idempotent_call_written_then_closed_says_may_have_executed() {
    let (client, mut server) = pipe();
    tokio::spawn(async move { while let Some(Ok(_)) = server.next().await {} });
    let channel: Channel<String, String> = Channel::new(client, Order::new(Plain));
    let svc = ServiceBuilder::new()
        .retry(RetryNotSent::new(3))
        .service(channel.calls());
    let call = tokio::spawn(svc.oneshot(Call::new("GET k".to_string()).idempotent()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    channel.close();
    let e = err(call.await.unwrap().unwrap_err());
    assert!(e.may_have_executed(), "written, but reported {e}");
}
