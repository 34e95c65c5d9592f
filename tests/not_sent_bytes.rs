//! *Not sent* down to the byte: when a connection fails, a call none of whose bytes its
//! IO accepted cannot have reached the server, and fails *not sent*, over a transport
//! whose IO and codec are both [`Metered`] (the crate's connectors'). It holds no
//! request (the codec consumed it), so `RetryNotSent` retries it only from a copy of its
//! own: a `Req: Clone` request through `Service<Req>`.
//!
//! The IO here accepts bytes up to a chosen offset of its stream, then fails every write.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{
    Backoff, BoxError, Channel, Endpoint, Error, Metered, MeteredFramed, Order, Plain, RetryNotSent,
};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio_util::codec::{Framed, LinesCodec};
use tower::{Service, ServiceBuilder, ServiceExt};

const TEST: Duration = Duration::from_secs(10);
/// Ten calls of four bytes each: `c00\n` to `c09\n`.
const CALLS: usize = 10;

/// An IO that accepts its first `limit` bytes (at most `chunk` per write), then fails
/// every write with a broken pipe.
struct FailAt {
    io: DuplexStream,
    limit: usize,
    chunk: usize,
    accepted: usize,
}

impl FailAt {
    fn new(io: DuplexStream, limit: usize, chunk: usize) -> Self {
        FailAt {
            io,
            limit,
            chunk,
            accepted: 0,
        }
    }
}

impl AsyncRead for FailAt {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for FailAt {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let room = self.limit - self.accepted;
        if room == 0 {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(room).min(self.chunk);
        let poll = Pin::new(&mut self.io).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(n)) = poll {
            self.accepted += n;
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Ten calls at once on `channel`, whose server never answers: each call's error.
async fn ten_calls(channel: &Channel<String, String>) -> Vec<Error> {
    let calls = (0..CALLS).map(|i| channel.request(format!("c{i:02}")));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect_err("the server never answers"))
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn calls_whose_first_byte_never_left_fail_not_sent() {
    tokio::time::timeout(TEST, async {
        for (limit, chunk) in [(0, 64), (1, 64), (14, 64), (16, 64), (16, 3), (39, 5)] {
            let (client, _server) = tokio::io::duplex(1024);
            let io = FailAt::new(client, limit, chunk);
            let framed = Framed::new(Metered::exact(io), Metered::new(LinesCodec::new()));
            let channel = Channel::new(framed, Order::new(Plain));
            for (i, mut err) in ten_calls(&channel).await.into_iter().enumerate() {
                // Call i's bytes begin at 4 i: it left if that byte was accepted.
                let left = 4 * i < limit;
                assert_eq!(
                    err.may_have_executed(),
                    left,
                    "limit {limit}, chunk {chunk}, call {i}: {err}"
                );
                // Whichever it is, the codec consumed the request: there is none to give
                // back.
                assert_eq!(
                    err.take_request::<String>(),
                    None,
                    "limit {limit}, call {i}"
                );
            }
        }
    })
    .await
    .expect("within the test's time");
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_metered_codec_every_call_handed_over_may_have_executed() {
    tokio::time::timeout(TEST, async {
        let (client, _server) = tokio::io::duplex(1024);
        let io = FailAt::new(client, 14, 64);
        let framed = Framed::new(Metered::exact(io), LinesCodec::new());
        let channel = Channel::new(framed, Order::new(Plain));
        for err in ten_calls(&channel).await {
            assert!(err.may_have_executed(), "{err}");
        }
    })
    .await
    .expect("within the test's time");
}

/// A server that records every line it reads on a connection and answers it (while
/// the client is there to answer).
async fn serve(server: DuplexStream, log: Arc<Mutex<Vec<String>>>) {
    let mut lines = Framed::new(server, LinesCodec::new());
    let mut answering = true;
    while let Some(Ok(line)) = lines.next().await {
        log.lock().unwrap().push(line.clone());
        answering = answering && lines.send(line).await.is_ok();
    }
}

/// The first connection accepts 14 bytes (three calls and the first bytes of a fourth)
/// and then fails; later ones carry everything. Only the calls that never left are
/// retried, from `Service<String>`'s copies, and every line is executed once.
#[tokio::test(flavor = "current_thread")]
async fn retry_not_sent_resends_only_the_calls_that_never_left() {
    tokio::time::timeout(TEST, async {
        let log = Arc::new(Mutex::new(Vec::new()));
        let connects = Arc::new(Mutex::new(0usize));
        let connector = {
            let (log, connects) = (log.clone(), connects.clone());
            tower::service_fn(move |_: Endpoint| {
                let (log, connects) = (log.clone(), connects.clone());
                async move {
                    let first = {
                        let mut n = connects.lock().unwrap();
                        *n += 1;
                        *n == 1
                    };
                    let (client, server) = tokio::io::duplex(1024);
                    tokio::spawn(serve(server, log));
                    let limit = if first { 14 } else { usize::MAX };
                    let io = FailAt::new(client, limit, 64);
                    let framed: MeteredFramed<FailAt, LinesCodec> =
                        Framed::new(Metered::exact(io), Metered::new(LinesCodec::new()));
                    Ok::<_, io::Error>(framed)
                }
            })
        };
        let channel: Channel<String, String> = Channel::builder()
            .host("127.0.0.1:1")
            .backoff(Backoff::exponential(
                Duration::from_millis(1),
                Duration::from_millis(1),
            ))
            .connector(connector, Order::new(Plain))
            .unwrap();
        let service = ServiceBuilder::new()
            .retry(RetryNotSent::new(2))
            .service(channel.clone());
        let calls = (0..CALLS).map(|i| {
            let service = service.clone();
            async move { service.oneshot(format!("c{i:02}")).await }
        });
        let outcomes: Vec<Result<String, BoxError>> = futures::future::join_all(calls).await;

        // c00..c02 reached the server whole and c03 in part: lost with the connection,
        // *may have executed*, not retried. c04..c09 never left: retried, answered.
        for (i, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Ok(reply) => {
                    assert!(i >= 4, "call {i} was answered: {reply}");
                    assert_eq!(reply, &format!("c{i:02}"));
                }
                Err(err) => {
                    let err = err.downcast_ref::<Error>().expect("the channel's error");
                    assert!(i < 4 && err.may_have_executed(), "call {i}: {err}");
                }
            }
        }
        let mut seen = log.lock().unwrap().clone();
        seen.sort();
        // "c0": the first two bytes of c03, read as a last line at the end of the stream.
        let expected: Vec<String> = std::iter::once("c0".to_string())
            .chain(
                [0, 1, 2, 4, 5, 6, 7, 8, 9]
                    .iter()
                    .map(|i| format!("c{i:02}")),
            )
            .collect();
        assert_eq!(seen, expected, "each line executed once, c03 never whole");
        assert_eq!(*connects.lock().unwrap(), 2);
    })
    .await
    .expect("within the test's time");
}

/// The same through `Service<Call>`: a call keeps no copy of its request, so one that
/// never left fails *not sent* and is not retried.
#[tokio::test(flavor = "current_thread")]
async fn a_call_without_its_request_is_not_retried() {
    tokio::time::timeout(TEST, async {
        let (client, _server) = tokio::io::duplex(1024);
        let io = FailAt::new(client, 0, 64);
        let framed = Framed::new(Metered::exact(io), Metered::new(LinesCodec::new()));
        let channel: Channel<String, String> = Channel::new(framed, Order::new(Plain));
        let mut service = ServiceBuilder::new()
            .retry(RetryNotSent::new(3))
            .service(channel.calls());
        let service = service.ready().await.expect("ready");
        let err = service
            .call(socketchannel::Call::new("c00".to_string()))
            .await
            .expect_err("the write fails");
        let err = err.downcast_ref::<Error>().expect("the channel's error");
        assert!(err.is_not_sent(), "{err}");
        assert_eq!(channel.counters().sent, 1, "written once, never again");
    })
    .await
    .expect("within the test's time");
}

/// A codec metered twice (`TcpConnector::new(Metered::new(codec))` frames a
/// `Metered<Metered<C>>`) counts each frame once: calls that went out whole stay *may
/// have executed*. (Counted twice, the offsets ran ahead of the IO's count and calls 3
/// and 4 below were called unsent.)
#[tokio::test(flavor = "current_thread")]
async fn a_codec_metered_twice_counts_each_frame_once() {
    tokio::time::timeout(TEST, async {
        let (client, _server) = tokio::io::duplex(1024);
        let io = FailAt::new(client, 20, 64);
        let codec = Metered::new(Metered::new(LinesCodec::new()));
        let channel = Channel::new(Framed::new(Metered::exact(io), codec), Order::new(Plain));
        for (i, err) in ten_calls(&channel).await.into_iter().enumerate() {
            assert_eq!(err.may_have_executed(), i < 5, "call {i}: {err}");
        }
    })
    .await
    .expect("within the test's time");
}

/// An IO metered with `Metered::new` (not said to be exact) may have sent part of a
/// write that failed (TLS does): every call in that write *may have executed*.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_write_of_an_io_not_said_exact_may_have_taken_everything() {
    tokio::time::timeout(TEST, async {
        let (client, _server) = tokio::io::duplex(1024);
        let io = FailAt::new(client, 14, 64);
        let framed = Framed::new(Metered::new(io), Metered::new(LinesCodec::new()));
        let channel = Channel::new(framed, Order::new(Plain));
        for err in ten_calls(&channel).await {
            assert!(err.may_have_executed(), "{err}");
        }
    })
    .await
    .expect("within the test's time");
}
