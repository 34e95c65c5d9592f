//! The example server: starts its in-process session-mode backend, serves the `kv.Kv`
//! gRPC service on 127.0.0.1 (a free port, printed), and serves until Ctrl-C. Every
//! gRPC call is a call on one shared `Channel`, multiplexed over one backend connection.
//!
//! `cargo run -p socketchannel-tonic-example`, then with `grpcurl` (not needed by the
//! tests, which use a tonic client):
//!
//! ```text
//! grpcurl -plaintext -import-path examples/tonic-gateway/proto -proto kv.proto \
//!   -d '{"key":"k","value":"aGk="}' ADDR kv.Kv/Set
//! grpcurl -plaintext -import-path examples/tonic-gateway/proto -proto kv.proto \
//!   -max-time 0.2 -d '{"key":"slow/k"}' ADDR kv.Kv/Get    # DeadlineExceeded
//! ```

use std::time::Duration;

use socketchannel::BoxError;
use socketchannel_tonic_example::{backend::Backend, connect, serve};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // `slow/` keys are answered after a second: a shorter gRPC deadline expires.
    let backend = Backend::start(Duration::from_secs(1)).await?;
    println!("backend (session mode) on {}", backend.addr());
    let channel = connect(backend.addr())?;

    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    println!("gRPC kv.Kv on {}", listener.local_addr()?);
    tokio::select! {
        served = serve(listener, channel.clone()) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    let counters = channel.counters();
    println!(
        "{} backend calls over {} connection(s)",
        counters.sent,
        counters.reconnects + 1
    );
    Ok(())
}
