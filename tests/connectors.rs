//! Connectors beyond plain TCP, against real `redis-server` processes: a Unix domain
//! socket named as the builder's host (and mixed with TCP among the backups), and a
//! connector of the user's own (`tower::service_fn` around `TcpConnector`).
//!
//! Each test starts its own `redis-server` (examples/common/process.rs: a free
//! 127.0.0.1 port, which is also how it is probed until up; here also a `unixsocket` in
//! a directory of the test's own), and kills it by its pid when done.

#![cfg(feature = "tcp")]

#[path = "../examples/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::process::{Server, free_port, within};
use common::redis::{Frame, Redis, RespCodec, cmd, start_server, text};
use socketchannel::{Backoff, Channel, Endpoint, Order, TcpConnector};
use tower::ServiceExt;

const TEST: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(5);

/// A directory of the test's own, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "socketchannel-{tag}-{}-{}",
            std::process::id(),
            free_port().expect("a free port")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `redis-server` listening on a free TCP port and on `dir/r.sock`.
async fn redis_with_socket(dir: &TempDir) -> (Server, std::path::PathBuf) {
    let sock = dir.0.join("r.sock");
    let server = start_server(&["--unixsocket", &sock.to_string_lossy()])
        .await
        .unwrap_or_else(|e| panic!("could not start redis-server: {e}"));
    (server, sock)
}

async fn ok<I>(channel: &Channel<Frame, Frame>, args: I) -> Frame
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let frame = cmd(args);
    let what = format!("{frame:?}");
    within(CALL, &what, channel.request(frame))
        .await
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

/// What `CLIENT INFO` says of this channel's connection: its `addr` field.
async fn client_addr(channel: &Channel<Frame, Frame>) -> String {
    let info = text(&ok(channel, ["CLIENT", "INFO"]).await).expect("CLIENT INFO is text");
    info.split_whitespace()
        .find_map(|f| f.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr in {info:?}"))
        .to_string()
}

#[tokio::test]
async fn a_unix_socket_host_needs_no_port_and_carries_calls() {
    within(TEST, "test", async {
        let dir = TempDir::new("unix");
        let (_server, sock) = redis_with_socket(&dir).await;
        let host = format!("unix:{}", sock.display());

        // No port anywhere: the builder takes the path as it is.
        let channel: Channel<Frame, Frame> = Channel::builder()
            .host(host.as_str())
            .order(RespCodec::resp2(), Redis::commands())
            .expect("a unix host needs no port");
        assert_eq!(text(&ok(&channel, ["PING"]).await).as_deref(), Some("PONG"));
        ok(&channel, ["SET", "over", "unix"]).await;
        assert_eq!(
            text(&ok(&channel, ["GET", "over"]).await).as_deref(),
            Some("unix")
        );
        // The server saw a Unix socket client, not a TCP one.
        let addr = client_addr(&channel).await;
        assert!(addr.starts_with(&*sock.to_string_lossy()), "addr={addr}");

        // The same through a `Path`.
        let by_path: Channel<Frame, Frame> = Channel::builder()
            .host(sock.as_path())
            .order(RespCodec::resp2(), Redis::commands())
            .expect("a path is a host");
        assert_eq!(
            text(&ok(&by_path, ["GET", "over"]).await).as_deref(),
            Some("unix")
        );
    })
    .await;
}

#[tokio::test]
async fn backups_mix_tcp_and_unix_sockets() {
    within(TEST, "test", async {
        let dir = TempDir::new("mixed");
        let (server, sock) = redis_with_socket(&dir).await;
        let missing = dir.0.join("missing.sock");

        // A TCP host that refuses, then a missing socket, then the live socket.
        let down = format!("127.0.0.1:{}", free_port().expect("a free port"));
        let channel: Channel<Frame, Frame> = Channel::builder()
            .host(down.as_str())
            .backup(missing.as_path())
            .backup(Endpoint::unix(&sock).expect("a UTF-8 path"))
            .order(RespCodec::resp2(), Redis::commands())
            .expect("valid hosts");
        let addr = client_addr(&channel).await;
        assert!(addr.starts_with(&*sock.to_string_lossy()), "addr={addr}");

        // A Unix host that is missing, then TCP: the error of a pass names the path.
        let channel: Channel<Frame, Frame> = Channel::builder()
            .host(missing.as_path())
            .backup(server.addr())
            .order(RespCodec::resp2(), Redis::commands())
            .expect("valid hosts");
        assert_eq!(
            client_addr(&channel)
                .await
                .rsplit_once(':')
                .map(|(ip, _)| ip),
            Some("127.0.0.1")
        );
        let only_missing: Channel<Frame, Frame> = Channel::builder()
            .host(missing.as_path())
            .order(RespCodec::resp2(), Redis::commands())
            .expect("valid host");
        let err = within(CALL, "missing socket", only_missing.request(cmd(["PING"])))
            .await
            .expect_err("no such socket");
        let message = format!("{:?}", err.connect_error().expect("a connect error"));
        assert!(message.contains("missing.sock"), "{message}");
    })
    .await;
}

/// A connector of one's own, as `Connector`'s docs show: `service_fn` around the
/// built-in one, counting connects. The channel uses it for every connect.
#[tokio::test]
async fn a_service_fn_connector_makes_every_connection() {
    within(TEST, "test", async {
        let server = start_server(&[])
            .await
            .unwrap_or_else(|e| panic!("could not start redis-server: {e}"));
        let connects = Arc::new(AtomicUsize::new(0));
        let tcp = TcpConnector::new(RespCodec::resp2());
        let counted = connects.clone();
        let connector = tower::service_fn(move |endpoint: Endpoint| {
            counted.fetch_add(1, Ordering::SeqCst);
            tcp.clone().oneshot(endpoint)
        });
        let channel: Channel<Frame, Frame> = Channel::builder()
            .host(server.addr())
            .backoff(Backoff::exponential(
                Duration::from_millis(20),
                Duration::from_millis(200),
            ))
            .connector(connector, Order::new(Redis::commands()))
            .expect("valid host");
        assert_eq!(text(&ok(&channel, ["PING"]).await).as_deref(), Some("PONG"));
        assert_eq!(connects.load(Ordering::SeqCst), 1);

        // The server drops the connection: the next one is made by the same connector.
        let _ = channel
            .request(cmd(["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no"]))
            .await;
        let mut tries = 0;
        loop {
            match within(CALL, "PING", channel.request(cmd(["PING"]))).await {
                Ok(_) => break,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 5, "still failing after {tries} tries: {e}");
                }
            }
        }
        assert_eq!(connects.load(Ordering::SeqCst), 2);
    })
    .await;
}
