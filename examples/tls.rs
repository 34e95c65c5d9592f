//! A channel over TLS with the crate's `TlsConnector` (feature `rustls`): TCP through the
//! built-in connector, then the rustls handshake with the endpoint's host as the server
//! name, trusting a private CA.
//!
//! It makes a CA and a certificate for `localhost` with rcgen, starts an in-process TLS
//! line server on 127.0.0.1, pipelines concurrent requests over one TLS connection, then
//! shows a host whose certificate names another host failing the connect
//! (`Kind::ConnectFailed`, the reason in the error) and the backup behind it taking
//! over. Nothing outside this process is needed:
//! `cargo run --example tls --features rustls`.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::tls::{TestCa, TlsLineServer};
use socketchannel::{BoxError, Channel, Order, Plain, TcpConnector, TlsConnector};
use tokio_util::codec::LinesCodec;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let ca = TestCa::new("example CA")?;
    let good = TlsLineServer::start("good", ca.server(&["localhost"])?.server_config()?).await?;
    let other = ca.server(&["other.example"])?.server_config()?;
    let wrong = TlsLineServer::start("wrong", other).await?;

    // Trust the CA; each host is checked under its own name: here "localhost".
    let tls = TlsConnector::with_roots(TcpConnector::new(LinesCodec::new()), ca.roots());
    let channel: Channel<String, String> = Channel::builder()
        .host(format!("localhost:{}", good.addr.port()))
        .connector(tls.clone(), Order::new(Plain))?;
    println!(
        "SNI the server saw: {}",
        channel.request("SNI".to_string()).await?
    );

    let started = Instant::now();
    let calls = (0..500).map(|i| channel.request(format!("ECHO {i}")));
    let replies = futures::future::try_join_all(calls).await?;
    let right = replies.iter().enumerate();
    let right = right.filter(|(i, r)| **r == i.to_string()).count();
    println!(
        "500 concurrent calls over one TLS connection: {right} right, in {} ms",
        started.elapsed().as_millis()
    );

    // A host whose certificate is for "other.example": the handshake fails, the call
    // fails as not sent, and the error says why.
    let wrong_host = format!("localhost:{}", wrong.addr.port());
    let only_wrong: Channel<String, String> = Channel::builder()
        .host(wrong_host.as_str())
        .connector(tls.clone(), Order::new(Plain))?;
    let err = match only_wrong.request("WHO".to_string()).await {
        Ok(reply) => return Err(format!("a wrong name was accepted: {reply}").into()),
        Err(e) => e,
    };
    println!("{:?}, not sent: {}\n  {err}", err.kind(), err.is_not_sent());

    // The same host with the good one as its backup: the backup answers.
    let failover: Channel<String, String> = Channel::builder()
        .host(wrong_host.as_str())
        .backup(format!("localhost:{}", good.addr.port()))
        .connector(tls, Order::new(Plain))?;
    println!(
        "with a backup: {}",
        failover.request("WHO".to_string()).await?
    );
    Ok(())
}
