//! The gRPC service of `src/lib.rs`, driven by a real tonic client over h2c on
//! 127.0.0.1, in front of the in-process session-mode backend of `src/backend.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::future::join_all;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use socketchannel_tonic_example::backend::Backend;
use socketchannel_tonic_example::pb::kv_client::KvClient;
use socketchannel_tonic_example::pb::{GetRequest, SetRequest};
use socketchannel_tonic_example::{KvChannel, connect, serve};
use tokio::net::TcpListener;
use tonic::transport::Channel as GrpcChannel;
use tonic::{Code, Request};

/// How long the backend takes over a `slow/` key.
const SLOW: Duration = Duration::from_millis(800);

/// The gRPC server in front of a channel to `backend`, and a client of it.
async fn gateway(backend: SocketAddr) -> (KvChannel, KvClient<GrpcChannel>) {
    let (channel, client, _) = gateway_at(backend).await;
    (channel, client)
}

/// [`gateway`], and where it listens.
async fn gateway_at(backend: SocketAddr) -> (KvChannel, KvClient<GrpcChannel>, SocketAddr) {
    let channel = connect(backend).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, channel.clone()));
    let client = KvClient::connect(format!("http://{addr}")).await.unwrap();
    (channel, client, addr)
}

async fn set(client: &mut KvClient<GrpcChannel>, key: &str, value: &str) -> Result<(), Code> {
    let req = SetRequest {
        key: key.into(),
        value: value.to_owned().into(),
    };
    client.set(req).await.map(drop).map_err(|s| s.code())
}

fn get(key: &str) -> Request<GetRequest> {
    Request::new(GetRequest { key: key.into() })
}

fn within<F: Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(20), f)
}

/// 64 concurrent gRPC calls of each kind, on one HTTP/2 connection, become 64
/// concurrent backend calls on one backend connection, each matched to its reply by
/// session id: every Get gets its own key's value, though the `slow/` ones are
/// answered after all the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_each_get_their_own_value() {
    within(async {
        let backend = Backend::start(Duration::from_millis(50)).await.unwrap();
        let (channel, client) = gateway(backend.addr()).await;
        // Every fourth key is slow, so replies come back out of request order.
        let key = |i: usize| {
            if i.is_multiple_of(4) {
                format!("slow/key-{i}")
            } else {
                format!("key-{i}")
            }
        };

        let sets = (0..64).map(|i| {
            let mut client = client.clone();
            async move { set(&mut client, &key(i), &format!("value {i}")).await }
        });
        for (i, r) in join_all(sets).await.into_iter().enumerate() {
            assert_eq!(r, Ok(()), "Set {}", key(i));
        }

        let gets = (0..64).map(|i| {
            let mut client = client.clone();
            async move { client.get(get(&key(i))).await }
        });
        for (i, r) in join_all(gets).await.into_iter().enumerate() {
            let value = r
                .unwrap_or_else(|s| panic!("Get {}: {s}", key(i)))
                .into_inner()
                .value;
            assert_eq!(value, format!("value {i}").as_bytes(), "Get {}", key(i));
        }

        let counters = channel.counters();
        assert_eq!(counters.sent, 128);
        assert_eq!(
            counters.reconnects, 0,
            "one backend connection carried them all"
        );
        assert_eq!(counters.in_flight, 0);
        assert_eq!(backend.received(), 128);
    })
    .await
    .expect("test took over 20 s");
}

/// A client under which only the server enforces deadlines: the generated tonic
/// client over a plain HTTP/2 client. tonic's transport `Channel` runs the
/// `grpc-timeout` timer itself and answers `CANCELLED` ("Timeout expired") when it
/// fires before the server's answer arrives.
fn plain_client(addr: SocketAddr) -> KvClient<PlainHttp2> {
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    KvClient::with_origin(http, format!("http://{addr}").parse().unwrap())
}

type PlainHttp2 = hyper_util::client::legacy::Client<HttpConnector, tonic::body::Body>;

/// The client's deadline travels as `grpc-timeout` and becomes the backend call's:
/// shorter than the backend takes, the call fails `DEADLINE_EXCEEDED` when it passes
/// (not when the backend answers); longer, the same call succeeds. The abandoned
/// call's late reply disturbs no other call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_expires_is_deadline_exceeded() {
    within(async {
        let backend = Backend::start(SLOW).await.unwrap();
        let (channel, mut client, addr) = gateway_at(backend.addr()).await;
        set(&mut client, "fast", "f").await.unwrap();
        set(&mut client, "slow/k", "v").await.unwrap(); // no deadline: waits SLOW

        let mut plain = plain_client(addr);
        let mut req = get("slow/k");
        req.set_timeout(Duration::from_millis(100));
        let started = Instant::now();
        let status = plain.get(req).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
        assert!(
            took >= Duration::from_millis(100) && took < SLOW,
            "answered after {took:?}: the deadline did not end the call"
        );

        // Through tonic's own transport the client's timer may answer first.
        let mut req = get("slow/k");
        req.set_timeout(Duration::from_millis(100));
        let status = client.get(req).await.unwrap_err();
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status}"
        );

        // While the abandoned calls' replies are still due, other calls go on.
        let fast = client.get(get("fast")).await.unwrap().into_inner().value;
        assert_eq!(fast, "f".as_bytes());

        let mut req = get("slow/k");
        req.set_timeout(Duration::from_secs(10));
        let value = plain.get(req).await.unwrap().into_inner().value;
        assert_eq!(value, "v".as_bytes());
        assert_eq!(channel.counters().reconnects, 0);
    })
    .await
    .expect("test took over 20 s");
}

/// A backend that is not there: nothing was sent, so every call, a Set too, is
/// `UNAVAILABLE`, which a gRPC client may retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_is_unavailable() {
    within(async {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        }; // closed: connects are refused
        let (_channel, mut client) = gateway(dead).await;

        let status = client.get(get("k")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status}");
        assert_eq!(set(&mut client, "k", "v").await, Err(Code::Unavailable));
    })
    .await
    .expect("test took over 20 s");
}

/// The backend dies with a Set in flight: the Set may have executed, so it is never
/// `UNAVAILABLE` (a client retrying it could store twice) but `UNKNOWN`, as the crate's
/// table says. The calls after it are not sent (the reconnect is refused):
/// `UNAVAILABLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_with_a_call_in_flight_is_unknown_not_unavailable() {
    within(async {
        let backend = Backend::start(SLOW).await.unwrap();
        let (channel, mut client) = gateway(backend.addr()).await;
        set(&mut client, "k", "v").await.unwrap();

        let in_flight = tokio::spawn({
            let mut client = client.clone();
            async move { set(&mut client, "hang/k", "v").await }
        });
        backend.hung().await; // the backend has read it, and will never answer
        backend.kill().await;

        let got = in_flight.await.unwrap();
        assert_eq!(got, Err(Code::Unknown), "a call that may have executed");
        assert_eq!(channel.counters().in_flight, 0);

        let status = client.get(get("k")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status}");
    })
    .await
    .expect("test took over 20 s");
}

/// Error replies and answers that are errors to gRPC map by the reply: a missing key is
/// `NOT_FOUND`, a request the backend calls wrong `INVALID_ARGUMENT`, and the message
/// carries the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_map_by_what_they_say() {
    within(async {
        let backend = Backend::start(SLOW).await.unwrap();
        let (_channel, mut client) = gateway(backend.addr()).await;

        let status = client.get(get("nothing-here")).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status}");

        let status = client.get(get("")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status}");
        assert!(status.message().contains("empty key"), "{status}");
    })
    .await
    .expect("test took over 20 s");
}
