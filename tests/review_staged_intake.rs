//! A skeptic's review of four commits: the staged intake (56cb015), the held gate
//! (db5d333), a wrong-server word on a retired connection (a62e596) and the u32 weight
//! (5708f7d). Each test states what it shows. The review's four findings (F1-F4 below)
//! were fixed with it: each of their tests failed on the commits as reviewed (and, but
//! for the weight's, passed on the commit before); the others pin down behaviour that
//! was checked and held.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{
    Backoff, BoxError, Call, Channel, Config, Endpoint, Kind, Order, Plain, Protocol, Reconnect,
    Verdict,
};
use tokio::io::DuplexStream;
use tokio_util::codec::{Framed, LinesCodec};
use tower::Service;

use support::within;

fn s(x: &str) -> String {
    x.to_string()
}

// ---------------------------------------------------------------------------------
// A line protocol with verdicts (as tests/verdict.rs): `READONLY` is a wrong server.
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Words;

impl Protocol<String, String> for Words {
    fn verdict(&self, resp: &String) -> Verdict {
        match resp.split(' ').next() {
            Some("READONLY") => Verdict::WrongServer,
            Some("DRAIN") => Verdict::Drain,
            _ => Verdict::Reply,
        }
    }

    fn check(&self, resp: String) -> Result<String, BoxError> {
        match resp.split(' ').next() {
            Some("READONLY") => Err(resp.into()),
            _ => Ok(resp),
        }
    }
}

/// Answers each word of a line with a line: `readonly` with `READONLY`, `slow` with
/// `SLOW` 200 ms later, any other word in upper case.
async fn serve(io: DuplexStream) {
    let mut io = Framed::new(io, LinesCodec::new());
    while let Some(Ok(line)) = io.next().await {
        for word in line.split(' ') {
            let answer = match word {
                "readonly" => "READONLY".to_string(),
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "SLOW".to_string()
                }
                w => w.to_uppercase(),
            };
            if io.send(answer).await.is_err() {
                return;
            }
        }
    }
}

/// Connects to an in-process [`serve`] for any endpoint, logging each attempt's port;
/// `refuse(port, nth)` (nth: earlier attempts to that port) may refuse an attempt after
/// a delay.
fn connector(
    connects: Arc<Mutex<Vec<u16>>>,
    refuse: fn(u16, usize) -> Option<Duration>,
) -> impl socketchannel::Connector<String, String> {
    tower::service_fn(move |endpoint: Endpoint| {
        let port = endpoint.port();
        let nth = {
            let mut log = connects.lock().unwrap();
            let nth = log.iter().filter(|p| **p == port).count();
            log.push(port);
            nth
        };
        let refused = refuse(port, nth);
        async move {
            if let Some(delay) = refused {
                tokio::time::sleep(delay).await;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "refused",
                ));
            }
            let (client, server) = tokio::io::duplex(1 << 16);
            tokio::spawn(serve(server));
            Ok(Framed::new(client, LinesCodec::new()))
        }
    })
}

/// Host 1 with backup host 2, reconnecting at once, connections retired at `age`;
/// two calls in flight at most and one orphan retires a full connection.
fn two_hosts(
    connects: Arc<Mutex<Vec<u16>>>,
    refuse: fn(u16, usize) -> Option<Duration>,
    age: Duration,
) -> Channel<String, String> {
    Channel::builder()
        .host("127.0.0.1:1")
        .backup("127.0.0.1:2")
        .reconnect(Reconnect::Persistent)
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .max_connection_age(age)
        .config(Config::default().max_in_flight(2).max_orphans(Some(1)))
        .connector(connector(connects, refuse), Order::new(Words))
        .expect("valid hosts")
}

/// Retires host 1's first connection with a `readonly` call on it (the orphan rule:
/// `slow` timed out, `readonly` fills the connection), which its server answers
/// `READONLY` 200 ms later, on the retired connection.
async fn retire_with_a_late_readonly(channel: &Channel<String, String>) {
    let slow = channel.request(Call::new(s("slow")).timeout(Duration::from_millis(50)));
    assert_eq!(slow.await.unwrap_err().kind(), Kind::Timeout);
    let readonly = channel.request(s("readonly")).await.unwrap_err();
    assert_eq!(
        (readonly.kind(), readonly.is_not_sent()),
        (Kind::Server, true)
    );
    assert_eq!(channel.counters().retired, 1);
}

/// F1 (a62e596): `poll_draining` set the boolean `demote_current` when the retired
/// connection's host was the current one *at that moment*; `start_pass` later demoted
/// whatever host was current *then*. Here the READONLY arrives while the replacement
/// pass is already dialing host 1 (which refuses); host 2 connects and becomes current,
/// answers, and when its connection is retired by age the stale flag demoted host 2:
/// the channel went back to host 1, the very host that said it is the wrong one. The
/// word now counts only while no pass runs and no connection serves.
#[tokio::test(start_paused = true)]
async fn a_retired_connections_word_does_not_demote_the_host_that_replaced_it() {
    let connects = Arc::new(Mutex::new(Vec::new()));
    // Host 1's second connect is refused after 300 ms: the READONLY (at 200 ms) comes
    // while that pass dials it.
    let channel = two_hosts(
        connects.clone(),
        |port, nth| (port == 1 && nth == 1).then_some(Duration::from_millis(300)),
        Duration::from_secs(2),
    );
    within(30, "test", async {
        retire_with_a_late_readonly(&channel).await;
        assert_eq!(channel.request(s("b")).await.unwrap(), "B");
        assert_eq!(*connects.lock().unwrap(), [1, 1, 2], "host 2 took over");
        // Host 2 answers; its connection reaches its age and is replaced.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(channel.request(s("c")).await.unwrap(), "C");
    })
    .await;
    assert_eq!(
        *connects.lock().unwrap(),
        [1, 1, 2, 2],
        "host 2 answered and host 1 said it is the wrong server: host 2 first"
    );
}

/// F2 (a62e596): the same flag outlived a healthy connection to the host it names. The
/// READONLY comes while the replacement connection to host 1 is up (a fresh session on
/// a host that answers); that connection answers user calls for seconds, then is
/// retired by age, and the next pass, long after the word, skipped host 1 for the
/// backup.
#[tokio::test(start_paused = true)]
async fn a_stale_wrong_server_word_does_not_demote_a_host_that_serves() {
    let connects = Arc::new(Mutex::new(Vec::new()));
    let channel = two_hosts(connects.clone(), |_, _| None, Duration::from_secs(5));
    within(30, "test", async {
        retire_with_a_late_readonly(&channel).await;
        for i in 0..4 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let word = format!("w{i}");
            assert_eq!(
                channel.request(word.clone()).await.unwrap(),
                word.to_uppercase()
            );
        }
        assert_eq!(*connects.lock().unwrap(), [1, 1]);
        // The second connection to host 1 reaches its age and is replaced.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(channel.request(s("c")).await.unwrap(), "C");
    })
    .await;
    assert_eq!(
        *connects.lock().unwrap(),
        [1, 1, 1],
        "host 1 answered every call for seconds after the old connection's word"
    );
}

// ---------------------------------------------------------------------------------
// 56cb015: the staged intake.
// ---------------------------------------------------------------------------------

/// A line of 60 characters: one frame fills most of a 64-byte pipe.
fn long(i: usize) -> String {
    format!("{i:060}")
}

/// F3 (56cb015): `Config::queue` documented "Calls accepted but not yet written, at
/// most" (without deadlines the task held none). A write pass now takes calls out of
/// the intake in batches, giving their slots back; those it cannot write (the sink
/// stopped taking frames) go to `held`, and the freed slots take as many again: with
/// `queue(4)`, 6 calls wait unwritten. Fewer than `queue` are held so, and the docs
/// now say so: fewer than twice `queue` wait unwritten.
#[tokio::test]
async fn unwritten_calls_stay_below_twice_the_queue_without_deadlines() {
    let (client, _server) = tokio::io::duplex(64);
    let mut transport = Framed::new(client, LinesCodec::new());
    transport.set_backpressure_boundary(1);
    let mut channel: Channel<String, String> =
        Channel::with_config(transport, Order::new(Plain), Config::default().queue(4));
    let mut calls = Vec::new();
    let mut accepted = 0;
    for round in 0..4 {
        // `Service::call` without `poll_ready`: taken if there is room, else Overloaded.
        for i in 0..8 {
            let mut call = Box::pin(Service::call(&mut channel, long(round * 8 + i)));
            let refused = futures::poll!(call.as_mut()).is_ready();
            if !refused {
                accepted += 1;
                calls.push(call);
            }
        }
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    let sent = channel.counters().sent as usize;
    let unwritten = accepted - sent;
    assert!(
        unwritten < 2 * 4,
        "queue(4), yet {unwritten} calls accepted and not written ({accepted} accepted, \
         {sent} written)"
    );
}

// ---------------------------------------------------------------------------------
// 5708f7d: the u32 weight.
// ---------------------------------------------------------------------------------

/// F4: the weight is clamped to `u32::MAX` after `Frames::weigh` sums the parts of a
/// multi-part call in `usize`: parts whose weights added past `usize::MAX` overflowed
/// there (a panic in the caller's task with debug assertions, a wrapped, tiny weight
/// without them) before the clamp was reached. Not introduced by 5708f7d (it failed on
/// db5d333 too); the sum saturates now.
#[tokio::test]
async fn a_multi_part_calls_weight_saturates_before_it_is_clamped() {
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let mut io = Framed::new(server, LinesCodec::new());
        while let Some(Ok(line)) = io.next().await {
            if io.send(line).await.is_err() {
                return;
            }
        }
    });
    let channel: Channel<String, String> = Channel::with_config(
        Framed::new(client, LinesCodec::new()),
        Order::new(Plain),
        Config::default().overload(1_000, |_: &String| usize::MAX / 2 + 1),
    );
    let call = {
        let channel = channel.clone();
        tokio::spawn(async move {
            channel
                .request_n(Call::parts(vec![s("a"), s("b")]), 2)
                .await
        })
    };
    let outcome = within(5, "the call", call).await;
    assert!(
        outcome.is_ok(),
        "the caller's task panicked: {:?}",
        outcome.err()
    );
}

// ---------------------------------------------------------------------------------
// 56cb015, checked and held: a panic or a write error in the middle of a batch.
// ---------------------------------------------------------------------------------

/// A line transport whose `start_send` panics on `panic_on` and fails on `fail_on`.
struct Faulty {
    inner: Framed<DuplexStream, LinesCodec>,
    panic_on: &'static str,
    fail_on: &'static str,
}

impl futures::Sink<String> for Faulty {
    type Error = std::io::Error;

    fn poll_ready(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        futures::Sink::<String>::poll_ready(std::pin::Pin::new(&mut self.inner), cx)
            .map_err(std::io::Error::other)
    }

    fn start_send(mut self: std::pin::Pin<&mut Self>, item: String) -> Result<(), Self::Error> {
        if item == self.panic_on {
            panic!("the codec panicked on {item}");
        }
        if item == self.fail_on {
            return Err(std::io::Error::other("the write failed"));
        }
        std::pin::Pin::new(&mut self.inner)
            .start_send(item)
            .map_err(std::io::Error::other)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        futures::Sink::<String>::poll_flush(std::pin::Pin::new(&mut self.inner), cx)
            .map_err(std::io::Error::other)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        futures::Sink::<String>::poll_close(std::pin::Pin::new(&mut self.inner), cx)
            .map_err(std::io::Error::other)
    }
}

impl futures::Stream for Faulty {
    type Item = Result<String, tokio_util::codec::LinesCodecError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Echoes each line, logging it in `log` (one list per connection).
async fn echo(io: DuplexStream, log: Arc<Mutex<Vec<Vec<String>>>>) {
    let conn = {
        let mut log = log.lock().unwrap();
        log.push(Vec::new());
        log.len() - 1
    };
    let mut io = Framed::new(io, LinesCodec::new());
    while let Some(Ok(line)) = io.next().await {
        log.lock().unwrap()[conn].push(line.clone());
        if io.send(line).await.is_err() {
            return;
        }
    }
}

fn faulty(
    log: Arc<Mutex<Vec<Vec<String>>>>,
    panic_on: &'static str,
    fail_on: &'static str,
) -> Faulty {
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(echo(server, log));
    Faulty {
        inner: Framed::new(client, LinesCodec::new()),
        panic_on,
        fail_on,
    }
}

/// Five calls taken in one batch; the codec panics on the second. The first two were
/// handed over (*may have executed*); the three still staged are dropped with the dead
/// task and fail *not sent*, each with its request back.
#[tokio::test]
async fn a_codec_panic_mid_batch_fails_the_staged_calls_not_sent() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut channel: Channel<String, String> =
        Channel::new(faulty(log, "boom", ""), Order::new(Plain));
    let futures: Vec<_> = ["a", "boom", "c", "d", "e"]
        .into_iter()
        .map(|w| Service::call(&mut channel, s(w)))
        .collect();
    let outcomes = within(5, "the calls", futures::future::join_all(futures)).await;
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|o| {
            let mut err = *o.unwrap_err().downcast::<socketchannel::Error>().unwrap();
            (err.is_not_sent(), err.take_request::<String>())
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (false, None),
            (false, None),
            (true, Some(s("c"))),
            (true, Some(s("d"))),
            (true, Some(s("e"))),
        ]
    );
}

/// Five calls taken in one batch; the write of the second fails. The three still staged
/// go to `held`, and the next connection writes them first, in order, before a call
/// made while the channel backed off.
#[tokio::test(start_paused = true)]
async fn a_write_error_mid_batch_keeps_the_staged_calls_in_order_for_the_next_connection() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let made = Arc::new(AtomicUsize::new(0));
    let connector = {
        let (log, made) = (log.clone(), made.clone());
        tower::service_fn(move |_: Endpoint| {
            let first = made.fetch_add(1, Ordering::SeqCst) == 0;
            let transport = faulty(log.clone(), "", if first { "fail" } else { "" });
            async move { Ok::<_, std::io::Error>(transport) }
        })
    };
    let mut channel: Channel<String, String> = Channel::builder()
        .host("127.0.0.1:1")
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ))
        .connector(connector, Order::new(Plain))
        .expect("valid host");
    channel.connect().await.unwrap();
    let batch: Vec<_> = ["a", "fail", "c", "d", "e"]
        .into_iter()
        .map(|w| Service::call(&mut channel, s(w)))
        .collect();
    let batch = tokio::spawn(futures::future::join_all(batch));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = Service::call(&mut channel, s("f"));
    let outcomes = within(5, "the calls", batch).await.unwrap();
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|o| o.map_err(|e| e.downcast::<socketchannel::Error>().unwrap().is_not_sent()))
        .collect();
    assert_eq!(
        outcomes,
        [Err(false), Err(false), Ok(s("c")), Ok(s("d")), Ok(s("e")),]
    );
    assert_eq!(within(5, "f", later).await.unwrap(), "f");
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1], ["c", "d", "e", "f"]);
}

/// Calls taken in one batch that the sink stopped taking go to `held` with their
/// deadlines entered: at the deadline the unwritten ones fail `Timeout` *not sent*
/// (request back), the written ones `Timeout` *may have executed*.
#[tokio::test(start_paused = true)]
async fn staged_calls_left_unwritten_are_timed_and_fail_not_sent_at_their_deadline() {
    let (client, _server) = tokio::io::duplex(64);
    let mut transport = Framed::new(client, LinesCodec::new());
    transport.set_backpressure_boundary(1);
    let channel: Channel<String, String> =
        Channel::with_config(transport, Order::new(Plain), Config::default().queue(8));
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let channel = channel.clone();
            let call = Call::new(long(i)).timeout(Duration::from_millis(100));
            tokio::spawn(async move { channel.request(call).await })
        })
        .collect();
    let start = tokio::time::Instant::now();
    let mut outcomes = Vec::new();
    for call in calls {
        let mut err = within(5, "a call", call).await.unwrap().unwrap_err();
        outcomes.push((
            err.kind(),
            err.is_not_sent(),
            err.take_request::<String>().is_some(),
        ));
    }
    assert!(
        start.elapsed() < Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(channel.counters().sent, 2);
    assert_eq!(
        outcomes,
        [
            (Kind::Timeout, false, false),
            (Kind::Timeout, false, false),
            (Kind::Timeout, true, true),
            (Kind::Timeout, true, true),
        ]
    );
}
