//! A channel over TLS: the built-in TCP connector replaced by a `tower::Service<Endpoint>`
//! that runs a rustls handshake (`tokio-rustls`, `ring` provider) and frames the TLS
//! stream with `LinesCodec`, passed to `Channel::builder().connector(..)`.
//!
//! It generates a self-signed certificate with rcgen, starts an in-process TLS line
//! server on 127.0.0.1, pipelines concurrent requests over one TLS connection, then
//! shows that a certificate which does not match the expected server name fails the
//! connect (`Kind::ConnectFailed`) instead of sending anything. Nothing outside this process
//! is needed. Run it with `cargo run --example tls`.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::tls;
use socketchannel::{BoxError, Channel, Order, Plain};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cert = tls::TestCert::generate()?;
    let server = tls::TlsLineServer::start("tls-server", cert.server_config()?).await?;
    println!("TLS line server on {}", server.addr);

    // The certificate names `localhost` and `127.0.0.1`; the endpoint's host is checked.
    let connector = tls::TlsConnector::new(cert.client_config()?);
    let channel: Channel<String, String> = Channel::builder()
        .host(server.addr.to_string())
        .connector(connector.clone(), Order::new(Plain))?;

    println!("WHO -> {}", channel.request("WHO".to_string()).await?);

    let started = Instant::now();
    let sets = (0..500).map(|i| channel.request(format!("SET key{i} value{i}")));
    futures::future::try_join_all(sets).await?;
    let gets = (0..500).map(|i| {
        let channel = channel.clone();
        async move {
            let value = channel.request(format!("GET key{i}")).await?;
            Ok::<_, socketchannel::Error>(value == format!("value{i}"))
        }
    });
    let right = futures::future::try_join_all(gets).await?;
    println!(
        "500 concurrent SETs, then 500 concurrent GETs over one TLS connection: \
         {} of 500 values right, in {} ms ({} reconnects)",
        right.iter().filter(|ok| **ok).count(),
        started.elapsed().as_millis(),
        channel.counters().reconnects,
    );

    // Same server, but we expect a certificate for another name: the handshake fails,
    // so the connect pass fails and the call fails as "not sent".
    let wrong = connector.server_name("db.example.com")?;
    let mistrusting: Channel<String, String> = Channel::builder()
        .host(server.addr.to_string())
        .connector(wrong, Order::new(Plain))?;
    match mistrusting.request("WHO".to_string()).await {
        Ok(reply) => return Err(format!("a wrong server name was accepted: {reply}").into()),
        Err(e) => println!(
            "expecting db.example.com: {:?}, not sent: {}\n  {e}",
            e.kind(),
            e.is_not_sent()
        ),
    }
    Ok(())
}
