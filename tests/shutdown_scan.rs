//! A shutdown's scan of its waiting calls (who is still there?) and its cancel notices,
//! from the review of the notices: a notice behind a full sink must not make the task
//! spin, and more than tokio's task budget of callers gone must not read as callers
//! still there (the scan then also starved the shutdown's own deadline).

mod support;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Sink, Stream};
use socketchannel::{Channel, Session};
use tokio::io::DuplexStream;
use tokio_util::codec::Framed;

use support::channel::{Ch, spawn_request};
use support::codec::{Cancelling, Msg, MsgCodec, TestProto};
use support::script::Peer;

/// A framed transport that counts `poll_ready` calls.
struct Counting {
    inner: Framed<DuplexStream, MsgCodec>,
    readies: Arc<AtomicUsize>,
}

impl Sink<Msg> for Counting {
    type Error = std::io::Error;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.readies.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_ready(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Msg) -> Result<(), Self::Error> {
        Pin::new(&mut self.inner).start_send(item)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl Stream for Counting {
    type Item = Result<Msg, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// A graceful shutdown while a cancel notice waits for a sink that is not ready (the
/// server stopped reading: a big call fills the pipe) must wait for its deadline
/// asleep. `Conn::poll_nobody_waits` wakes the task itself whenever a notice is queued,
/// and the drive cannot write it: the task spins until the deadline.
#[test]
fn a_shutdown_with_a_notice_behind_a_full_sink_does_not_spin() {
    let spun = shutdown_behind_a_full_sink(true);
    assert!(
        spun < 1000,
        "the task polled the sink {spun} times in a 300 ms shutdown: a busy loop"
    );
}

/// Control: the same, with the caller still there (no notice queued): no spin.
#[test]
fn control_the_same_shutdown_without_a_notice_sleeps() {
    let spun = shutdown_behind_a_full_sink(false);
    assert!(spun < 1000, "{spun} polls");
}

fn shutdown_behind_a_full_sink(leave: bool) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let readies = Arc::new(AtomicUsize::new(0));
    rt.block_on(async {
        let (client, _server) = tokio::io::duplex(1 << 12);
        let transport = Counting {
            inner: Framed::new(client, MsgCodec::default()),
            readies: readies.clone(),
        };
        let ch: Ch = Channel::new(transport, Session::new(Cancelling));
        let slow = spawn_request(&ch, "slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Fills the 4 KiB pipe and the framed buffer past its backpressure boundary.
        let big = spawn_request(&ch, "x".repeat(64 << 10));
        tokio::time::sleep(Duration::from_millis(20)).await;
        if leave {
            slow.abort();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = readies.load(Ordering::Relaxed);
        ch.shutdown(Duration::from_millis(300)).await;
        drop((big, slow));
        readies.load(Ordering::Relaxed) - before
    })
}

/// A shutdown with more than 128 written calls whose callers all left (orphans: the
/// server has not answered) has nobody to wait for and should end at once. Each gone
/// caller's `poll_closed` is `Ready` and spends a unit of tokio's task budget; past
/// 128 the rest say `Pending` (and wake the waker), so they look still there: the
/// shutdown waits for its deadline, spinning.
fn shutdown_with_orphans(cancelling: bool, n: usize) -> (Duration, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let readies = Arc::new(AtomicUsize::new(0));
        let transport = Counting {
            inner: Framed::new(client, MsgCodec::default()),
            readies: readies.clone(),
        };
        let ch: Ch = if cancelling {
            Channel::new(transport, Session::new(Cancelling))
        } else {
            Channel::new(transport, Session::new(TestProto))
        };
        let mut peer = Peer::spawn(server);
        let calls: Vec<_> = (0..n)
            .map(|i| spawn_request(&ch, format!("c{i}")))
            .collect();
        for _ in 0..n {
            peer.next().await;
        }
        calls.iter().for_each(|c| c.abort());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = readies.load(Ordering::Relaxed);
        let start = std::time::Instant::now();
        ch.shutdown(Duration::from_millis(500)).await;
        (start.elapsed(), readies.load(Ordering::Relaxed) - before)
    })
}

/// Runs [`shutdown_with_orphans`] on a thread of its own, bounded in real time.
fn bounded(cancelling: bool, n: usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(shutdown_with_orphans(cancelling, n));
    });
    let (took, polls) = rx.recv_timeout(Duration::from_secs(10)).expect(
        "the 500 ms shutdown had not ended after 10 s: the task spins, its deadline starved",
    );
    assert!(
        took < Duration::from_millis(250),
        "took {took:?}, {polls} sink polls"
    );
}

#[test]
fn a_shutdown_with_300_orphans_ends_at_once_cancelling() {
    bounded(true, 300);
}

#[test]
fn a_shutdown_with_300_orphans_ends_at_once_plain() {
    bounded(false, 300);
}

#[test]
fn control_a_shutdown_with_100_orphans_ends_at_once() {
    bounded(true, 100);
}
