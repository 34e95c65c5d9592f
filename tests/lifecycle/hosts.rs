//! The crash-loop backoff counts only answers; a redirect keeps the configured hosts.

use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::SinkExt;
use socketchannel::{Backoff, Channel, Endpoint, Handshake, Kind, Order, Policy};
use tower::Service;

use crate::support::channel::{Mode, connect_error, msg};
use crate::support::codec::{Msg, TestProto};
use crate::support::memory::{Io, Net};
use crate::{ms, serve};

/// Defect 8: a host that sends one frame and closes (Redis' "max number of clients
/// reached") is backed off: a frame read is not an answer. It used to reconnect at once,
/// thousands of times per second.
#[tokio::test(start_paused = true)]
async fn d08_a_host_that_sends_one_frame_and_closes_is_backed_off() {
    let net = Net::new(|_: Endpoint, mut io: Io| async move {
        let _ = io
            .send(Msg::new("-ERR max number of clients reached"))
            .await;
    });
    // Past 200 connects the connector hangs: a hot loop ends there instead of never
    // letting the paused clock move.
    let connects = Arc::new(AtomicUsize::new(0));
    let count = connects.clone();
    let inner = net.connector();
    let connector = tower::service_fn(move |ep: Endpoint| {
        let mut inner = inner.clone();
        let n = count.fetch_add(1, Ordering::SeqCst);
        async move {
            if n >= 200 {
                std::future::pending::<()>().await;
            }
            inner.call(ep).await
        }
    });
    let ch = Channel::builder()
        .host("a:1")
        .policy(Policy::Persistent)
        .backoff(Backoff::exponential(ms(100), Duration::from_secs(1)).jitter_seed(1))
        .eager()
        .connector(connector, Order::new(TestProto))
        .expect("valid");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = connects.load(Ordering::SeqCst);
    // 100 ms, then up to 200, 400, 800 ms: a handful of attempts in 2 s.
    assert!(n <= 12, "{n} connects in 2 s");
    drop(ch);
}

/// Defect 12: `.host(sentinel)` with a handshake that redirects to the master. After
/// the master dies, the next pass still asks the sentinel (which names a new master):
/// a redirect, like a promotion, never drops a configured host. When the redirect's
/// target refuses, the error says so.
#[tokio::test(start_paused = true)]
async fn d12_a_redirect_keeps_the_host_that_redirected() {
    let (net, log) = serve();
    let master = Arc::new(Mutex::new("m1:1".to_string()));
    let named = master.clone();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("sentinel:1")
            .backoff(Backoff::exponential(ms(10), ms(50)))
            .handshake(move |_conn: Channel<_, _>, ep: Endpoint| {
                let named = named.clone();
                async move {
                    if ep.host() == "sentinel" {
                        let to: Endpoint = named.lock().unwrap().parse()?;
                        return Ok(Handshake::Redirect(to));
                    }
                    Ok(Handshake::Ready)
                }
            }),
    );
    assert_eq!(ch.request(msg("one")).await.expect("via m1").text(), "one");
    assert_eq!(log.connections().last().unwrap().0, "m1:1");

    // A failover: m1 dies, the sentinel names m2.
    net.kill("m1:1");
    *master.lock().unwrap() = "m2:1".to_string();
    tokio::time::sleep(ms(10)).await;
    assert_eq!(ch.request(msg("two")).await.expect("via m2").text(), "two");
    assert_eq!(log.connections().last().unwrap().0, "m2:1");

    // The sentinel names a master that refuses: the error says who redirected where,
    // and that the target refused (not "too many redirects").
    net.kill("m2:1");
    tokio::time::sleep(ms(10)).await;
    let err = ch.request(msg("three")).await.expect_err("m2 refuses");
    assert_eq!(err.kind(), Kind::Connect);
    let failures: Vec<String> = connect_error(&err)
        .failures()
        .map(|(ep, e)| format!("{ep}: {e}"))
        .collect();
    assert!(
        failures
            .iter()
            .any(|f| f == "sentinel:1: redirected to m2:1"),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|f| f.starts_with("m2:1: ") && f.contains("refused")),
        "{failures:?}"
    );
    assert!(
        !err.source()
            .unwrap()
            .to_string()
            .contains("too many redirects")
    );
}
