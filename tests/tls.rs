//! A channel over TLS (the connector of `examples/tls.rs`) against an in-process rustls
//! server on 127.0.0.1, with a certificate generated for the test.

#[path = "../examples/common/mod.rs"]
mod common;

use std::time::Duration;

use common::tls;
use socketchannel::{Channel, ConnectError, Kind, Order, Plain};

type Lines = Channel<String, String>;

fn channel(addr: std::net::SocketAddr, connector: tls::TlsConnector) -> Lines {
    Channel::builder()
        .host(addr.to_string())
        .connect_timeout(Duration::from_secs(5))
        .connector(connector, Order::new(Plain))
        .unwrap()
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test took over 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_over_tls_each_get_their_reply() {
    bounded(async {
        let cert = tls::TestCert::generate().unwrap();
        let server = tls::TlsLineServer::start("tls-1", cert.server_config().unwrap())
            .await
            .unwrap();
        let channel = channel(
            server.addr,
            tls::TlsConnector::new(cert.client_config().unwrap()),
        );

        // Interleaved SETs, GETs and ECHOs from many tasks at once, on one connection.
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..50 {
            let channel = channel.clone();
            tasks.spawn(async move {
                for i in 0..20 {
                    let (key, value) = (format!("k{t}-{i}"), format!("v{t}-{i}"));
                    assert_eq!(channel.request(format!("GET {key}")).await.unwrap(), "NIL");
                    let set = channel.request(format!("SET {key} {value}"));
                    let echo = channel.request(format!("ECHO {t} {i}"));
                    let (set, echo) = tokio::join!(set, echo);
                    assert_eq!(set.unwrap(), "OK");
                    assert_eq!(echo.unwrap(), format!("{t} {i}"));
                    assert_eq!(channel.request(format!("GET {key}")).await.unwrap(), value);
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        assert_eq!(channel.request("WHO".to_string()).await.unwrap(), "tls-1");
        let counters = channel.counters();
        assert_eq!(counters.sent, 50 * 20 * 4 + 1);
        assert_eq!(
            counters.reconnects, 0,
            "one TLS connection carried every call"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_override_is_checked_against_the_certificate() {
    bounded(async {
        let cert = tls::TestCert::generate().unwrap();
        let server = tls::TlsLineServer::start("tls-2", cert.server_config().unwrap())
            .await
            .unwrap();
        // The endpoint is an IP address; the certificate also names `localhost`.
        let connector = tls::TlsConnector::new(cert.client_config().unwrap())
            .server_name("localhost")
            .unwrap();
        let channel = channel(server.addr, connector);
        assert_eq!(channel.request("ECHO hi".to_string()).await.unwrap(), "hi");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_name_fails_with_kind_connect() {
    bounded(async {
        let cert = tls::TestCert::generate().unwrap();
        let server = tls::TlsLineServer::start("tls-3", cert.server_config().unwrap())
            .await
            .unwrap();
        let connector = tls::TlsConnector::new(cert.client_config().unwrap())
            .server_name("db.example.com")
            .unwrap();
        let channel = channel(server.addr, connector);

        let mut err = channel.request("SET k v".to_string()).await.unwrap_err();
        assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
        assert!(err.is_not_sent(), "{err}");
        assert_eq!(err.take_request::<String>().as_deref(), Some("SET k v"));
        let connect = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<ConnectError>())
            .expect("source is a ConnectError");
        let failures: Vec<String> = connect.failures().map(|(_, e)| e.to_string()).collect();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("certificate"),
            "the failure names the certificate: {failures:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_fails_with_kind_connect() {
    bounded(async {
        let server_cert = tls::TestCert::generate().unwrap();
        let server = tls::TlsLineServer::start("tls-4", server_cert.server_config().unwrap())
            .await
            .unwrap();
        // The client trusts another certificate, for the same names.
        let other = tls::TestCert::generate().unwrap();
        let channel = channel(
            server.addr,
            tls::TlsConnector::new(other.client_config().unwrap()),
        );

        let err = channel.request("WHO".to_string()).await.unwrap_err();
        assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
        assert!(err.is_not_sent());
    })
    .await;
}
