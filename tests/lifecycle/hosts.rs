//! The crash-loop backoff counts only answers; a redirect keeps the configured hosts.

use std::error::Error as _;
use std::sync::{Arc, Mutex};

use futures::SinkExt;
use socketchannel::{Backoff, Channel, Endpoint, Handshake, Kind};

use crate::support::channel::{Mode, connect_error, msg};
use crate::support::codec::Msg;
use crate::support::memory::{Io, Net};
use crate::{connects_in_two_seconds, ms, serve};

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
    let n = connects_in_two_seconds(&net, Channel::builder()).await;
    // 100 ms, then up to 200, 400, 800 ms: a handful of attempts in 2 s.
    assert!(n <= 12, "{n} connects in 2 s");
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
    assert_eq!(err.kind(), Kind::ConnectFailed);
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
