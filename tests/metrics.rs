//! What the `metrics` feature records (`cargo test --features metrics --test metrics`),
//! through a recorder of the test's own, installed as the thread's local recorder while
//! each channel is built (handles are registered then, once).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use metrics::{
    Counter, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use socketchannel::{Call, Channel, Config, Kind, Order, Protocol, Replies, Reply, State};
use tokio::io::DuplexStream;
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LinesCodec};
use tower::{BoxError, Service, ServiceExt};

// ---------------------------------------------------------------------------------------
// A recorder that keeps every handle it gives out, by name and labels.

#[derive(Default, Clone)]
struct Captured {
    counters: Arc<Mutex<BTreeMap<String, Arc<AtomicU64>>>>,
    gauges: Arc<Mutex<BTreeMap<String, Arc<Level>>>>,
    histograms: Arc<Mutex<BTreeMap<String, Arc<Samples>>>>,
}

/// A gauge that remembers its highest value too.
#[derive(Default)]
struct Level(Mutex<(f64, f64)>);

impl GaugeFn for Level {
    fn increment(&self, value: f64) {
        let mut g = self.0.lock().unwrap();
        g.0 += value;
        g.1 = g.1.max(g.0);
    }
    fn decrement(&self, value: f64) {
        self.0.lock().unwrap().0 -= value;
    }
    fn set(&self, value: f64) {
        let mut g = self.0.lock().unwrap();
        g.0 = value;
        g.1 = g.1.max(value);
    }
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// `name{label=value,...}`, labels sorted.
fn key_string(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for Captured {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self.counters.lock().unwrap();
        Counter::from_arc(counters.entry(key_string(key)).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut gauges = self.gauges.lock().unwrap();
        Gauge::from_arc(gauges.entry(key_string(key)).or_default().clone())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut histograms = self.histograms.lock().unwrap();
        Histogram::from_arc(histograms.entry(key_string(key)).or_default().clone())
    }
}

impl Captured {
    /// The counter's value; panics if it was never registered.
    fn counter(&self, key: &str) -> u64 {
        let counters = self.counters.lock().unwrap();
        let Some(c) = counters.get(key) else {
            panic!("no counter {key}; registered: {:?}", counters.keys());
        };
        c.load(Ordering::Relaxed)
    }

    /// Every counter whose key starts with `prefix` and is not zero.
    fn nonzero(&self, prefix: &str) -> BTreeMap<String, u64> {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .filter(|(_, v)| *v != 0)
            .collect()
    }

    /// The gauge's value now and its highest.
    fn gauge(&self, key: &str) -> (f64, f64) {
        *self.gauges.lock().unwrap()[key].0.lock().unwrap()
    }

    fn samples(&self, key: &str) -> Vec<f64> {
        self.histograms.lock().unwrap()[key]
            .0
            .lock()
            .unwrap()
            .clone()
    }
}

// ---------------------------------------------------------------------------------------
// A line protocol: each word of a request line comes back as a line of its own, in upper
// case; `fail` as `ERR fail` (an error reply), `end` as `END` (the final frame). A line
// starting with `quiet` is not answered.

#[derive(Clone)]
struct Words;

impl Protocol<String, String> for Words {
    fn is_final(&self, resp: &String) -> bool {
        resp == "END"
    }
    fn check(&self, resp: String) -> Result<String, BoxError> {
        match resp.strip_prefix("ERR ") {
            Some(why) => Err(why.to_string().into()),
            None => Ok(resp),
        }
    }
}

async fn answer(mut server: Framed<DuplexStream, LinesCodec>) {
    while let Some(Ok(line)) = server.next().await {
        if line.starts_with("quiet") {
            continue;
        }
        for word in line.split(' ') {
            let reply = match word {
                "fail" => "ERR fail".to_string(),
                w => w.to_uppercase(),
            };
            if server.send(reply).await.is_err() {
                return;
            }
        }
    }
}

fn words_channel(config: Config) -> Channel<String, String> {
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(answer(Framed::new(server, LinesCodec::new())));
    Channel::with_config(
        Framed::new(client, LinesCodec::new()),
        Order::new(Words),
        config,
    )
}

fn s(x: &str) -> String {
    x.to_string()
}

async fn until_nothing_in_flight(channel: &Channel<String, String>) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while channel.counters().in_flight != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("calls still in flight");
}

#[tokio::test]
async fn every_call_is_counted_with_its_outcome_and_latency() {
    let rec = Captured::default();
    let channel = metrics::with_local_recorder(&rec, || {
        words_channel(Config::default().name("m").latency_sampling(1))
    });

    // Ok, on every path.
    assert_eq!(channel.request(s("a")).await.unwrap(), "A");
    assert_eq!(channel.request_n(s("a b"), 2).await.unwrap(), ["A", "B"]);
    assert_eq!(
        channel.request_until_final(s("a end")).await.unwrap(),
        ["A", "END"]
    );
    channel.send(s("quiet")).await.unwrap();
    assert_eq!(channel.clone().oneshot(s("a")).await.unwrap(), "A");
    let call = Call::new(s("a b")).stream(Replies::Count(2));
    let Reply::Stream(mut stream) = channel.calls().oneshot(call).await.unwrap() else {
        panic!("a streamed call has a stream");
    };
    while stream.next().await.transpose().unwrap().is_some() {}
    let mut stream = channel.stream(s("a b"), Replies::Count(2)).await;
    while stream.next().await.transpose().unwrap().is_some() {}
    // An error reply: answered, so it may have executed.
    let err = channel.request(s("fail")).await.unwrap_err();
    assert_eq!(err.kind(), Kind::Server);
    // A caller id in order mode: refused, never sent.
    let err = channel
        .request(Call::new(s("x")).id(5u32))
        .await
        .unwrap_err();
    assert_eq!((err.kind(), err.is_not_sent()), (Kind::Unsupported, true));
    // A call whose caller gives up before its outcome.
    let mut svc = channel.clone();
    svc.ready().await.unwrap();
    drop(svc.call(s("a")));
    // Its reply is read and dropped before this one's.
    assert_eq!(channel.request(s("z")).await.unwrap(), "Z");
    until_nothing_in_flight(&channel).await;

    assert_eq!(rec.counter("socketchannel_calls_total{channel=m}"), 11);
    let outcomes = rec.nonzero("socketchannel_outcomes_total");
    let expected: BTreeMap<String, u64> = [
        ("socketchannel_outcomes_total{channel=m,outcome=ok}", 8),
        (
            "socketchannel_outcomes_total{channel=m,outcome=server,sent=may_have_executed}",
            1,
        ),
        (
            "socketchannel_outcomes_total{channel=m,outcome=unsupported,sent=not_sent}",
            1,
        ),
        (
            "socketchannel_outcomes_total{channel=m,outcome=cancelled}",
            1,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(outcomes, expected);
    // Every kind, both ways, is there from the start (no lookup when a call ends).
    let registered = rec.counters.lock().unwrap().len();
    assert_eq!(
        registered,
        1 + 1 + 1 + 9 * 2 + 1,
        "calls, ok, cancelled, kinds, reconnects"
    );
    assert_eq!(rec.counter("socketchannel_reconnects_total{channel=m}"), 0);

    // A latency for every outcome but the cancelled one.
    let samples = rec.samples("socketchannel_call_duration_seconds{channel=m}");
    assert_eq!(samples.len(), 10);
    assert!(
        samples.iter().all(|&s| (0.0..5.0).contains(&s)),
        "{samples:?}"
    );

    let (now, highest) = rec.gauge("socketchannel_in_flight{channel=m}");
    assert_eq!(now, 0.0);
    assert!(highest >= 1.0, "the gauge never rose: {highest}");
}

/// By default one call in eight is timed, drawn at random, on every channel alike
/// (a thread alternating two channels times both); every call is counted.
#[tokio::test(flavor = "current_thread")]
async fn by_default_one_call_in_eight_is_timed_and_every_one_counted() {
    let rec = Captured::default();
    let (a, b) = metrics::with_local_recorder(&rec, || {
        (
            words_channel(Config::default().name("a")),
            words_channel(Config::default().name("b")),
        )
    });
    for _ in 0..800 {
        assert_eq!(a.request(s("x")).await.unwrap(), "X");
        assert_eq!(b.request(s("y")).await.unwrap(), "Y");
    }
    for name in ["a", "b"] {
        assert_eq!(
            rec.counter(&format!("socketchannel_calls_total{{channel={name}}}")),
            800
        );
        assert_eq!(
            rec.counter(&format!(
                "socketchannel_outcomes_total{{channel={name},outcome=ok}}"
            )),
            800
        );
        let samples = rec.samples(&format!(
            "socketchannel_call_duration_seconds{{channel={name}}}"
        ));
        // 100 expected; a counter would give one channel 200 and the other none.
        assert!(
            (50..=150).contains(&samples.len()),
            "{name}: {}",
            samples.len()
        );
    }
}

#[tokio::test]
async fn reconnects_are_counted_and_an_unnamed_builder_channel_is_labelled_by_its_host() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers one line per connection, then hangs up.
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let mut lines = Framed::new(socket, LinesCodec::new());
            if let Some(Ok(line)) = lines.next().await {
                let _ = lines.send(line.to_uppercase()).await;
            }
        }
    });
    let rec = Captured::default();
    let channel: Channel<String, String> = metrics::with_local_recorder(&rec, || {
        Channel::builder()
            .host(addr)
            .order(LinesCodec::new(), Words)
            .unwrap()
    });
    let mut state = channel.state();

    assert_eq!(channel.request(s("a")).await.unwrap(), "A");
    // Hung up on: idle until the next call, which reconnects.
    tokio::time::timeout(
        Duration::from_secs(5),
        state.wait_for(|s| *s == State::Idle),
    )
    .await
    .expect("the channel never saw the connection end")
    .unwrap();
    assert_eq!(channel.request(s("b")).await.unwrap(), "B");

    let label = format!("channel={addr}");
    assert_eq!(
        rec.counter(&format!("socketchannel_reconnects_total{{{label}}}")),
        1
    );
    assert_eq!(
        rec.counter(&format!("socketchannel_calls_total{{{label}}}")),
        2
    );
    assert_eq!(
        rec.counter(&format!(
            "socketchannel_outcomes_total{{{label},outcome=ok}}"
        )),
        2
    );
    assert_eq!(channel.counters().reconnects, 1);
}

#[tokio::test]
async fn the_builder_name_is_the_label_and_wins_over_the_config_name() {
    let rec = Captured::default();
    let _channel: Channel<String, String> = metrics::with_local_recorder(&rec, || {
        Channel::builder()
            .host("127.0.0.1:1")
            .config(Config::default().name("from-config"))
            .name("from-builder")
            .order(LinesCodec::new(), Words)
            .unwrap()
    });
    assert_eq!(
        rec.counter("socketchannel_calls_total{channel=from-builder}"),
        0
    );
    let keys: Vec<String> = rec.counters.lock().unwrap().keys().cloned().collect();
    assert!(
        keys.iter().all(|k| k.contains("channel=from-builder")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_recorder_installed_after_the_channel_is_built_sees_nothing() {
    let channel = words_channel(Config::default().name("late"));
    let rec = Captured::default();
    let _local = metrics::set_default_local_recorder(&rec);
    assert_eq!(channel.request(s("a")).await.unwrap(), "A");
    assert!(rec.counters.lock().unwrap().is_empty());
    assert!(rec.histograms.lock().unwrap().is_empty());
}
