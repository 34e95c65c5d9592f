//! A connector that records its attempts: which host, when, and how many ran at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use socketchannel::{Endpoint, MeteredFramed, TcpConnector};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::Service;

use crate::support::codec::MsgCodec;

/// Every connect attempt (endpoint, when), and how many ran at once at most.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempts {
    log: Arc<Mutex<Vec<(String, Instant)>>>,
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Attempts {
    pub(crate) fn hosts(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(h, _)| h.clone())
            .collect()
    }
    pub(crate) fn times(&self) -> Vec<Instant> {
        self.log.lock().unwrap().iter().map(|(_, t)| *t).collect()
    }
    pub(crate) fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Counts an attempt as running until dropped (finished or abandoned on timeout).
pub(crate) struct Running(pub(crate) Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The TCP connector, recording each attempt.
#[derive(Clone)]
pub(crate) struct Recording {
    tcp: TcpConnector<MsgCodec>,
    attempts: Attempts,
}

impl Recording {
    pub(crate) fn new() -> (Recording, Attempts) {
        let attempts = Attempts::default();
        let me = Recording {
            tcp: TcpConnector::new(MsgCodec::default()),
            attempts: attempts.clone(),
        };
        (me, attempts)
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = io::Result<MeteredFramed<TcpStream, MsgCodec>>> + Send>>;

impl Service<Endpoint> for Recording {
    type Response = MeteredFramed<TcpStream, MsgCodec>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_ready(cx)
    }

    fn call(&mut self, endpoint: Endpoint) -> ConnectFuture {
        let a = &self.attempts;
        a.log
            .lock()
            .unwrap()
            .push((endpoint.to_string(), Instant::now()));
        let n = a.now.fetch_add(1, Ordering::SeqCst) + 1;
        a.peak.fetch_max(n, Ordering::SeqCst);
        let running = Running(a.now.clone());
        let attempt = self.tcp.call(endpoint);
        Box::pin(async move {
            let out = attempt.await;
            drop(running);
            out
        })
    }
}
