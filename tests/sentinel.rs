//! Redis Sentinel (`examples/common/sentinel.rs`) against real processes: a master, its
//! replica and `redis-server --sentinel` processes, each started by the test on a free
//! 127.0.0.1 port (files in a temp dir of its own) and killed by its pid when done.
//! `redis-server` must be on `PATH`.
//!
//! * A `SENTINEL FAILOVER` under load (16 callers, each writing its own values and
//!   reading them back in the same request, and asking which node answered): no caller
//!   reads another's value, calls fail only with typed errors, none made after the
//!   channel reached the new master goes to the old one, and the writes land on the new
//!   master. Prints the recovery time: from the command to the first call answered by
//!   the new master.
//! * The master killed under load: the same checks, with the typed failures counted
//!   while no master is up.
//! * The handshake refuses a node whose `ROLE` is not `master` (a sentinel that names
//!   the replica), and the pass goes on to the next sentinel.
//! * A reconnect asks the sentinels again rather than trust the last master, which still
//!   says `master` for a while after a failover.
//! * A `READONLY` reply (a master demoted by hand, its clients left connected) makes the
//!   channel leave the node and find the master again.

#![cfg(feature = "tcp")]

#[path = "../examples/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::within;
use common::redis::{Frame, RedisError, cmd, connect, text};
use common::sentinel::{Deployment, MasterChannel, Sentinel, SentinelError, Timing, role};
use socketchannel::{Backoff, Call, Channel, Endpoint, Error, Kind};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The bound on a whole test.
const TEST: Duration = Duration::from_secs(40);
/// The bound on one call.
const CALL: Duration = Duration::from_secs(5);

/// Sentinels that never fail over by themselves during a test (only when told to).
const CALM: Timing = Timing {
    quorum: 2,
    down_after: Duration::from_secs(30),
    failover_timeout: Duration::from_secs(10),
};

fn fast_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(20), Duration::from_millis(200))
}

async fn deployment(sentinels: usize, timing: Timing) -> Deployment {
    Deployment::start("m", sentinels, timing)
        .await
        .unwrap_or_else(|e| panic!("could not start the deployment: {e}"))
}

fn follow(sentinels: &[String]) -> MasterChannel {
    Sentinel::new("m", sentinels)
        .expect("valid sentinels")
        .connect(|b| b.backoff(fast_backoff()))
        .expect("channel")
}

/// The port of the node that answers on `channel`.
async fn port_of(channel: &Channel<Frame, Frame>) -> u16 {
    let reply = within(
        CALL,
        "CONFIG GET port",
        channel.request(cmd(["CONFIG", "GET", "port"])),
    )
    .await
    .unwrap_or_else(|e| panic!("CONFIG GET port: {e}"));
    node_port(&reply).unwrap_or_else(|| panic!("odd CONFIG GET reply {reply:?}"))
}

fn node_port(reply: &Frame) -> Option<u16> {
    match reply {
        Frame::Array { data, .. } if data.len() == 2 => text(&data[1])?.parse().ok(),
        _ => None,
    }
}

fn endpoint(port: u16) -> Endpoint {
    Endpoint::new("127.0.0.1", port)
}

/// One call of the load, as it ended.
struct Record {
    started: Instant,
    done: Instant,
    /// The port of the node that answered, or the error's kind, whether it was not sent,
    /// and its text.
    outcome: Result<u16, (Kind, bool, String)>,
}

/// Callers on a channel, each writing values of its own to a key of its own and reading
/// each back in the same request, with the port of the node that answered.
struct Load {
    records: Arc<Mutex<Vec<Record>>>,
    misrouted: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

impl Load {
    fn start(channel: &Channel<Frame, Frame>, callers: usize) -> Load {
        let records: Arc<Mutex<Vec<Record>>> = Arc::default();
        let misrouted: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for t in 0..callers {
            let (channel, records, misrouted) =
                (channel.clone(), records.clone(), misrouted.clone());
            let (stop, ok) = (stop.clone(), ok.clone());
            tasks.spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let (key, value) = (format!("k:{t}"), format!("{t}:{i}"));
                    let call = Call::parts(vec![
                        cmd(["SET", &key, &value]),
                        cmd(["GET", &key]),
                        cmd(["CONFIG", "GET", "port"]),
                    ]);
                    let started = Instant::now();
                    let outcome = match tokio::time::timeout(CALL, channel.request_n(call, 3)).await
                    {
                        Err(_) => {
                            misrouted.lock().unwrap().push(format!("{key}: no outcome"));
                            Err((Kind::Closed, false, "no outcome within CALL".into()))
                        }
                        Ok(Ok(replies)) => {
                            if text(&replies[1]).as_deref() != Some(value.as_str()) {
                                let got = format!("{key}={value}: GET said {:?}", replies[1]);
                                misrouted.lock().unwrap().push(got);
                            }
                            ok.fetch_add(1, Ordering::Relaxed);
                            Ok(node_port(&replies[2]).expect("CONFIG GET port"))
                        }
                        Ok(Err(e)) => Err((e.kind(), e.is_not_sent(), e.to_string())),
                    };
                    let failed = outcome.is_err();
                    records.lock().unwrap().push(Record {
                        started,
                        done: Instant::now(),
                        outcome,
                    });
                    if failed {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            });
        }
        Load {
            records,
            misrouted,
            stop,
            ok,
            tasks,
        }
    }

    /// Waits until `n` more calls succeeded.
    async fn more_ok(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        within(CALL, "calls to succeed", async {
            while self.ok.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// When the first call answered by the node on `port` came back.
    async fn first_answer_from(&self, port: u16) -> Instant {
        within(Duration::from_secs(20), "a call on the new master", async {
            loop {
                let first = self
                    .records
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| r.outcome == Ok(port))
                    .map(|r| r.done)
                    .min();
                if let Some(at) = first {
                    return at;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Stops the callers; every call's record, after checking that each caller read
    /// back its own values.
    async fn stop(mut self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = within(CALL, "callers", self.tasks.join_next()).await {
            done.expect("caller panicked");
        }
        let misrouted = self.misrouted.lock().unwrap();
        assert!(misrouted.is_empty(), "misrouted: {:?}", &misrouted[..]);
        std::mem::take(&mut *self.records.lock().unwrap())
    }
}

/// Checks a failover's records: calls answered by the old master were all made before
/// the channel reached the new one; every failure is typed and came after `from`.
/// Returns (calls answered by the old master after `from`, failures by kind).
fn check_records(
    records: &[Record],
    old: u16,
    new: u16,
    from: Instant,
    recovered: Instant,
) -> (usize, BTreeMap<String, usize>) {
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut on_old_after = 0;
    for r in records {
        match &r.outcome {
            Ok(port) if *port == new => {}
            Ok(port) => {
                assert_eq!(*port, old, "answered by a node of no one's");
                on_old_after += usize::from(r.done > from);
                // A call made once the channel was on the new master went there.
                assert!(
                    r.started <= recovered,
                    "a call made {:?} after the recovery was answered by the old master",
                    r.started - recovered
                );
            }
            Err((kind, not_sent, why)) => {
                // Typed: never written (no master reachable), written on a connection
                // that was lost, or a demoted node's READONLY (did not run).
                let typed = match kind {
                    Kind::ConnectFailed => *not_sent,
                    Kind::ConnectionLost => true,
                    Kind::Server => *not_sent && why.contains("READONLY"),
                    _ => false,
                };
                assert!(
                    typed,
                    "an untyped failure: {kind:?} (not sent: {not_sent}) {why}"
                );
                assert!(r.done > from, "a call failed before the failover: {why}");
                assert!(
                    r.started <= recovered,
                    "a call made {:?} after the recovery failed: {why}",
                    r.started - recovered
                );
                let sent = if *not_sent {
                    "not sent"
                } else {
                    "may have executed"
                };
                *errors.entry(format!("{kind:?}, {sent}")).or_default() += 1;
            }
        }
    }
    (on_old_after, errors)
}

/// The channel is on the node on `port`, which says it is the master, and its writes
/// land there.
async fn writes_land_on(master: &MasterChannel, addr: &str, port: u16) {
    let channel = master.channel();
    assert_eq!(port_of(channel).await, port);
    let reply = within(CALL, "ROLE", channel.request(cmd(["ROLE"])))
        .await
        .expect("ROLE");
    assert_eq!(role(&reply).as_deref(), Some("master"));
    within(
        CALL,
        "SET",
        channel.request(cmd(["SET", "after", "failover"])),
    )
    .await
    .expect("SET after the failover");
    let side = connect(addr).await.expect("side connection");
    let got = within(CALL, "GET", side.request(cmd(["GET", "after"])))
        .await
        .expect("GET on the new master");
    assert_eq!(text(&got).as_deref(), Some("failover"));
    assert_eq!(*master.master().borrow(), Some(endpoint(port)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follows_a_failover_under_load_and_no_call_is_misrouted() {
    within(TEST, "test", async {
        let d = deployment(3, CALM).await;
        let (old, new) = (d.master.port(), d.replica.port());
        // The failover is asked of the last sentinel: not the data channel's first host.
        let leader = d.sentinels.len() - 1;
        d.replica_known(leader, Duration::from_secs(15))
            .await
            .expect("the sentinel knows the replica");

        let master = follow(&d.sentinel_addrs());
        let channel = master.channel().clone();
        assert_eq!(port_of(&channel).await, old, "first connection: the master");
        assert_eq!(*master.master().borrow(), Some(endpoint(old)));
        within(CALL, "every watcher subscribed", async {
            while master.watching() < d.sentinels.len() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;

        let load = Load::start(&channel, 16);
        load.more_ok(2000).await;
        let asked = d.failover(leader).await.expect("SENTINEL FAILOVER");
        let recovered = load.first_answer_from(new).await;
        load.more_ok(2000).await;
        let records = load.stop().await;
        let (on_old_after, errors) = check_records(&records, old, new, asked, recovered);

        writes_land_on(&master, &d.replica.addr(), new).await;
        // The old master is still up and still a master: only a watcher moves the
        // channel this soon.
        assert!(master.switches() >= 1, "no watcher moved the channel");
        let recovery = recovered - asked;
        println!(
            "SENTINEL FAILOVER: recovery {:.0} ms (the command to the first call answered \
             by the new master); {} calls ok, {on_old_after} answered by the old master \
             after the command; failures: {errors:?}; switches followed: {}, reconnects: {}",
            recovery.as_secs_f64() * 1e3,
            records.iter().filter(|r| r.outcome.is_ok()).count(),
            master.switches(),
            channel.counters().reconnects,
        );
        assert!(recovery < Duration::from_secs(15), "{recovery:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_master_is_replaced_and_calls_fail_only_typed() {
    within(TEST, "test", async {
        let quick = Timing {
            quorum: 1,
            down_after: Duration::from_secs(1),
            failover_timeout: Duration::from_secs(5),
        };
        let mut d = deployment(1, quick).await;
        let (old, new) = (d.master.port(), d.replica.port());
        d.replica_known(0, Duration::from_secs(15))
            .await
            .expect("the sentinel knows the replica");
        let master = follow(&d.sentinel_addrs());
        let channel = master.channel().clone();
        assert_eq!(port_of(&channel).await, old);

        let load = Load::start(&channel, 16);
        load.more_ok(2000).await;
        let killed = Instant::now();
        d.master.kill();
        let recovered = load.first_answer_from(new).await;
        load.more_ok(2000).await;
        let records = load.stop().await;
        let (on_old_after, errors) = check_records(&records, old, new, killed, recovered);
        assert!(!errors.is_empty(), "nothing failed while no master was up");

        writes_land_on(&master, &d.replica.addr(), new).await;
        let recovery = recovered - killed;
        println!(
            "master killed: recovery {:.0} ms (the kill to the first call answered by the \
             new master, down-after 1000 ms); {} calls ok, {on_old_after} answered by the \
             old master after the kill; failures: {errors:?}; switches followed: {}, \
             reconnects: {}",
            recovery.as_secs_f64() * 1e3,
            records.iter().filter(|r| r.outcome.is_ok()).count(),
            master.switches(),
            channel.counters().reconnects,
        );
        assert!(recovery < Duration::from_secs(20), "{recovery:?}");
    })
    .await;
}

/// The error behind a host's failure in a connect pass: the handshake's own.
fn sentinel_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a SentinelError> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<SentinelError>() {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_refuses_a_host_whose_role_is_not_master() {
    within(TEST, "test", async {
        let calm = Timing {
            quorum: 1,
            down_after: Duration::from_secs(60),
            ..CALM
        };
        let d = deployment(1, calm).await;
        // A sentinel whose idea of the master is the replica (as a stale one may have).
        let liar =
            common::sentinel::start_sentinel(d.dir.path(), "liar", "m", d.replica.port(), calm)
                .await
                .expect("start the lying sentinel");

        // Only the liar: the replica it names is refused, the pass fails, saying why.
        let misled = follow(&[liar.addr()]);
        let err = within(
            CALL,
            "SET",
            misled.channel().request(cmd(["SET", "k", "v"])),
        )
        .await
        .expect_err("no master to be found");
        assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
        assert!(err.is_not_sent());
        let failures: Vec<(Endpoint, Option<SentinelError>)> = err
            .connect_error()
            .expect("a connect error")
            .failures()
            .map(|(endpoint, e)| (endpoint.clone(), sentinel_error(e).cloned()))
            .collect();
        let refused = SentinelError::NotMaster {
            endpoint: endpoint(d.replica.port()),
            role: "slave".into(),
        };
        assert!(
            failures
                .iter()
                .any(|(at, e)| *at == endpoint(d.replica.port()) && e.as_ref() == Some(&refused)),
            "{err}"
        );
        assert!(err.to_string().contains("is not a master"), "{err}");
        assert_eq!(*misled.master().borrow(), None);
        drop(misled);

        // The liar first, then a sentinel that knows: the pass goes on to it and ends on
        // the master.
        let master = follow(&[liar.addr(), d.sentinels[0].addr()]);
        within(
            CALL,
            "SET",
            master.channel().request(cmd(["SET", "k", "on the master"])),
        )
        .await
        .expect("SET through the second sentinel");
        assert_eq!(port_of(master.channel()).await, d.master.port());
        assert_eq!(*master.master().borrow(), Some(endpoint(d.master.port())));
        let side = connect(&d.master.addr()).await.expect("side connection");
        let got = within(CALL, "GET", side.request(cmd(["GET", "k"])))
            .await
            .expect("GET on the master");
        assert_eq!(text(&got).as_deref(), Some("on the master"));
    })
    .await;
}

/// A channel left on the old master: it connects to the master, its watchers are
/// dropped, the sentinel fails over. The old master stays a master for about 10 s more,
/// until the sentinel demotes it.
async fn left_behind(d: &Deployment) -> Channel<Frame, Frame> {
    let (old, new) = (d.master.port(), d.replica.port());
    d.replica_known(0, Duration::from_secs(15))
        .await
        .expect("the sentinel knows the replica");
    let master = follow(&d.sentinel_addrs());
    let channel = master.channel().clone();
    assert_eq!(port_of(&channel).await, old);
    // Without its watchers the channel does not hear of the failover...
    drop(master);
    d.failover(0).await.expect("SENTINEL FAILOVER");
    let sentinel = connect(&d.sentinels[0].addr()).await.expect("side");
    common::sentinel::poll(Duration::from_secs(15), "the switch", async || {
        let ask = cmd(["SENTINEL", "get-master-addr-by-name", "m"]);
        let reply = sentinel.request(ask).await?;
        Ok(matches!(&reply, Frame::Array { data, .. }
            if data.len() == 2 && text(&data[1]) == Some(new.to_string())))
    })
    .await
    .expect("the sentinel switched to the replica");
    // ...and stays on the old master, which still says it is one.
    assert_eq!(port_of(&channel).await, old);
    let reply = within(CALL, "ROLE", channel.request(cmd(["ROLE"])))
        .await
        .expect("ROLE");
    assert_eq!(role(&reply).as_deref(), Some("master"));
    channel
}

/// The port of the node that answers the first call to succeed, with `failed` checking
/// each failure before it.
async fn next_answer(channel: &Channel<Frame, Frame>, failed: impl Fn(&Error)) -> u16 {
    within(CALL, "a call to succeed", async {
        loop {
            match channel.request(cmd(["CONFIG", "GET", "port"])).await {
                Ok(reply) => return node_port(&reply).expect("a port"),
                Err(e) => failed(&e),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_asks_the_sentinels_again_rather_than_trust_the_last_master() {
    within(TEST, "test", async {
        let d = deployment(1, Timing { quorum: 1, ..CALM }).await;
        let channel = left_behind(&d).await;

        // Its connection drops. The reconnect pass tries the last master first, and the
        // handshake sends it back to the sentinels, who name the new one.
        let side = connect(&d.master.addr()).await.expect("side connection");
        within(
            CALL,
            "CLIENT KILL",
            side.request(cmd(["CLIENT", "KILL", "TYPE", "normal"])),
        )
        .await
        .expect("CLIENT KILL");
        let port = next_answer(&channel, |e| {
            assert_eq!(e.kind(), Kind::ConnectionLost, "{e}");
        })
        .await;
        assert_eq!(
            port,
            d.replica.port(),
            "the reconnect trusted the old master"
        );
        // The old master would still have taken the writes.
        let reply = within(CALL, "ROLE", side.request(cmd(["ROLE"])))
            .await
            .expect("ROLE on the old master");
        assert_eq!(role(&reply).as_deref(), Some("master"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readonly_reply_makes_the_channel_leave_a_demoted_master() {
    within(TEST, "test", async {
        let d = deployment(1, Timing { quorum: 1, ..CALM }).await;
        let channel = left_behind(&d).await;

        // An operator demotes the old master by hand; its clients stay connected.
        let side = connect(&d.master.addr()).await.expect("side connection");
        let replicaof = cmd(["REPLICAOF", "127.0.0.1", &d.replica.port().to_string()]);
        within(CALL, "REPLICAOF", side.request(replicaof))
            .await
            .expect("REPLICAOF");
        // The next write gets READONLY: it did not run, and the channel leaves the node
        // and asks the sentinels again.
        let err = within(CALL, "SET", channel.request(cmd(["SET", "k", "v"])))
            .await
            .expect_err("a replica refuses writes");
        assert_eq!(err.kind(), Kind::Server, "{err}");
        assert!(err.is_not_sent(), "{err}");
        let reply = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<RedisError>());
        assert_eq!(reply.map(RedisError::code), Some("READONLY"), "{err}");
        let port = next_answer(&channel, |e| panic!("after READONLY: {e}")).await;
        assert_eq!(port, d.replica.port());
        within(CALL, "SET", channel.request(cmd(["SET", "k", "v"])))
            .await
            .expect("SET on the new master");
    })
    .await;
}
