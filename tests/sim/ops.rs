//! The schedule's operations, and the end of a scenario (heal, wait, close).

use std::sync::Arc;
use std::time::Duration;

use socketchannel::testing::{Behavior, Net, Outcome};
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::proto::{Msg, SimCodec, SimServer, tag_of};
use super::run::{Client, Ctx, LeaseRecord, body, boxed, call, failed, pool_call, spawn_call};
use super::scenario::{Flags, Op, Scenario, Shape};

/// Virtual time the end of a scenario waits for every call to resolve once the hosts
/// are healed.
pub const SETTLE: Duration = Duration::from_secs(60);

/// How long the end waits for calls nobody waits for to be answered.
const GAUGES_SETTLE: Duration = Duration::from_secs(20);

pub fn apply(
    ctx: &Arc<Ctx>,
    net: &Net<SimServer, SimCodec>,
    channels: &[Client],
    stack: Option<&BoxCloneService<Msg, Msg, socketchannel::BoxError>>,
    op: &Op,
) {
    let now = ctx.trace.now();
    match op {
        Op::Call {
            client,
            shape,
            flags,
        } => match &channels[*client] {
            Client::Ch(ch) => call(ctx, ch, *client, *shape, flags),
            Client::Pool(pool, _) => pool_call(ctx, pool, *client, *shape, flags),
        },
        Op::Balance { flags } => {
            let Some(stack) = stack else { return };
            let nonce = ctx.nonce();
            let mut b = format!("n={nonce} r=1 gap={}", flags.gap);
            if flags.err {
                b.push_str(" err");
            }
            if let Some(p) = flags.panic {
                b.push_str(&format!(" p={p}"));
            }
            if let Some(said) = flags.said {
                b.push_str(&said.tokens());
            }
            // The balance is a client of its own, numbered after the channels.
            let client = channels.len();
            let id = ctx
                .ledger
                .open(client, nonce, &format!("balance {b}"), false, true);
            let svc = stack.clone();
            spawn_call(ctx, client, id, flags.cancel_after, async move {
                let r =
                    tokio::time::timeout(Duration::from_secs(20), svc.oneshot(Msg::new(b))).await;
                match r {
                    Ok(Ok(m)) => Outcome::Replies(vec![tag_of(m.text())]),
                    Ok(Err(e)) => boxed(&e),
                    Err(_) => Outcome::Other("no service ready for 20 s".into()),
                }
            });
        }
        Op::ChangeHost { client, host } => {
            let Some(ch) = channels[*client].ch() else {
                return;
            };
            let name = ctx.hosts[*host].clone();
            let _ = ch.change_host(&name);
            ctx.reconfigure(*client, Some(name), None);
            ctx.kicks.lock().unwrap().push((*client, now));
        }
        Op::ChangeBackups { client, hosts } => {
            let Some(ch) = channels[*client].ch() else {
                return;
            };
            let names: Vec<String> = hosts.iter().map(|h| ctx.hosts[*h].clone()).collect();
            let _ = ch.change_backups(&names);
            ctx.reconfigure(*client, None, Some(names));
        }
        Op::Close(client) => channels[*client].close(),
        Op::Shutdown { client, deadline } => {
            let ch = channels[*client].clone();
            let id = ctx.ledger.open(*client, 0, "shutdown", false, false);
            let c = ctx.clone();
            let (client, deadline) = (*client, Duration::from_millis(*deadline));
            spawn_call(ctx, client, id, None, async move {
                let t0 = c.trace.now();
                match ch {
                    Client::Ch(ch) => ch.shutdown(deadline).await,
                    Client::Pool(pool, _) => pool.shutdown(deadline).await,
                }
                c.shutdowns
                    .lock()
                    .unwrap()
                    .push((client, t0, c.trace.now(), deadline));
                Outcome::Sent
            });
        }
        Op::Connect(client) => {
            // A pool's `connect()` starts a pass on each of its channels.
            let passes = match &channels[*client] {
                Client::Ch(_) => 1,
                Client::Pool(pool, _) => pool.size().max(1),
            };
            for _ in 0..passes {
                ctx.kicks.lock().unwrap().push((*client, now));
            }
            let ch = channels[*client].clone();
            let id = ctx.ledger.open(*client, 0, "connect()", false, false);
            spawn_call(ctx, *client, id, None, async move {
                let r = match ch {
                    Client::Ch(ch) => ch.connect().await,
                    Client::Pool(pool, _) => pool.connect().await,
                };
                match r {
                    Ok(()) => Outcome::Connected,
                    Err(e) => failed(&e),
                }
            });
        }
        Op::ReadyDrop { client, hold } => {
            let mut ch = channels[*client].clone();
            let hold = Duration::from_millis(*hold);
            let ctx = ctx.clone();
            let client = *client;
            tokio::spawn(async move {
                let ready = tokio::time::timeout(
                    hold,
                    std::future::poll_fn(|cx| match &mut ch {
                        Client::Ch(ch) => ch.poll_ready(cx),
                        Client::Pool(pool, _) => pool.poll_ready(cx),
                    }),
                )
                .await;
                ctx.trace.log(format!(
                    "client {client}: poll_ready slot {:?}, dropped later",
                    ready.as_ref().map(|r| r.is_ok())
                ));
                let slot = matches!(ready, Ok(Ok(())));
                if slot {
                    ctx.reserved.lock().unwrap()[client] += 1;
                }
                tokio::time::sleep(hold).await;
                drop(ch);
                if slot {
                    ctx.reserved.lock().unwrap()[client] -= 1;
                }
            });
        }
        Op::Set { host, behavior } => net.set(&ctx.hosts[*host], behavior.clone()),
        Op::Kill(host) => net.kill(&ctx.hosts[*host]),
        Op::Drain { host, after } => net.drain_after(&ctx.hosts[*host], *after),
        Op::Lease {
            client,
            calls,
            hold,
        } => {
            let Client::Pool(pool, _) = &channels[*client] else {
                return;
            };
            lease(ctx, (**pool).clone(), *client, *calls, *hold);
        }
        Op::Remove { client, which } => {
            if let Client::Pool(_, Some((feed, _))) = &channels[*client] {
                let _ = feed.send(tower::discover::Change::Remove(*which));
            }
        }
    }
    let _ = Shape::Request;
}

/// A `Lease` op: once the leases before it are dropped (`Ctx::lease_turn`), takes a
/// lease (waiting 20 s at most), makes `calls` requests on it one
/// after the other, holds it `hold` ms more, drops it, and records it for
/// `lease_is_exclusive`.
fn lease(ctx: &Arc<Ctx>, pool: super::run::PoolH, client: usize, calls: u64, hold: u64) {
    let id = ctx.ledger.open(client, 0, "lease", false, false);
    let c = ctx.clone();
    spawn_call(ctx, client, id, None, async move {
        let _turn = c.lease_turn.lock().await;
        let lease = match tokio::time::timeout(Duration::from_secs(20), pool.lease()).await {
            Ok(Ok(lease)) => lease,
            Ok(Err(e)) => return failed(&e),
            Err(_) => return Outcome::Other("no lease for 20 s".into()),
        };
        let (grant, from) = (c.nonce(), c.wire.count());
        c.trace.log(format!("client {client}: leased {lease:?}"));
        let mut nonces = Vec::new();
        for _ in 0..calls {
            let nonce = c.nonce();
            nonces.push(nonce);
            let cid = c.ledger.open(client, nonce, "lease Request", false, false);
            let m = super::proto::Msg::new(body(nonce, 1, &Flags::default(), ""));
            let o = match lease.request(m).await {
                Ok(m) => Outcome::Replies(vec![tag_of(m.text())]),
                Err(e) => failed(&e),
            };
            c.ledger.resolve(cid, o);
        }
        tokio::time::sleep(Duration::from_millis(hold)).await;
        let to = c.wire.count();
        drop(lease);
        c.trace.log(format!("client {client}: lease dropped"));
        c.leases.lock().unwrap().push(LeaseRecord {
            client,
            grant,
            from,
            to,
            nonces,
        });
        Outcome::Sent
    });
}

fn all_done(ctx: &Ctx) -> bool {
    ctx.tasks
        .lock()
        .unwrap()
        .iter()
        .all(|(id, _)| ctx.ledger.is_done(*id))
}

async fn wait_done(ctx: &Ctx, bound: Duration) {
    let until = tokio::time::Instant::now() + bound;
    while !all_done(ctx) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Heals every host, waits for every call, checks the idle gauges, closes every
/// channel and waits for what is left.
pub async fn finish(
    ctx: &Arc<Ctx>,
    net: &Net<SimServer, SimCodec>,
    scn: &Scenario,
    channels: &[Client],
) -> Vec<socketchannel::testing::Violation> {
    ctx.trace.log("end: heal every host");
    for h in &ctx.hosts {
        net.set(h, Behavior::Up);
        net.drain_after(h, None);
        net.kill(h);
    }
    wait_done(ctx, SETTLE).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A server may still owe frames to a call whose caller left (four frames, 1.5 s
    // apart, take 6 s): the gauges are read once those have come, or after a bound a
    // leak never meets.
    let until = tokio::time::Instant::now() + GAUGES_SETTLE;
    while channels.iter().any(Client::in_flight) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = Vec::new();
    let calls = ctx.ledger.calls();
    for (i, client) in channels.iter().enumerate() {
        let pending = calls
            .iter()
            .any(|c| c.client == i && c.outcomes.is_empty() && c.cancelled.is_none());
        let ch = match client {
            Client::Ch(ch) => ch,
            Client::Pool(pool, _) => {
                if !pending {
                    // A pool's handles keep a slot reserved on each channel their
                    // balance did not call (`Pool`'s Cost): its `Load` is left out.
                    for (k, ch) in pool.channels().enumerate() {
                        let name = format!("client {i} (pool channel {k})");
                        out.extend(
                            socketchannel::testing::checks::idle_gauges(&name, &ch)
                                .into_iter()
                                .filter(|v| !v.detail.contains("Load is")),
                        );
                    }
                }
                continue;
            }
        };
        if !pending {
            let found = socketchannel::testing::checks::idle_gauges(&format!("client {i}"), ch);
            // `Load` counts the slots `poll_ready` reserved (a reservation, not a leak):
            // those a `ReadyDrop` handle still holds (it drops them up to its hold after
            // this), and the one a p2c balance may keep on a channel it found ready.
            let reserved = ctx.reserved.lock().unwrap()[i];
            let balanced = scn.balance.is_some_and(|pair| pair.contains(&i));
            let excused = reserved..=reserved + usize::from(balanced);
            out.extend(found.into_iter().filter(|v| {
                !(v.detail.contains("in_flight 0")
                    && excused
                        .clone()
                        .any(|n| n > 0 && v.detail.contains(&format!("Load is {n} "))))
            }));
        }
    }
    ctx.trace.log("end: close every channel");
    *ctx.closing.lock().unwrap() = Some(ctx.trace.now());
    for ch in channels {
        ch.close();
    }
    wait_done(ctx, Duration::from_secs(5)).await;
    out
}
