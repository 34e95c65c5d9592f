//! The schedule's operations, and the end of a scenario (heal, wait, close).

use std::sync::Arc;
use std::time::Duration;

use socketchannel::testing::{Behavior, Net, Outcome};
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::proto::{Msg, SimCodec, SimServer, tag_of};
use super::run::{Ch, Ctx, boxed, call, failed, spawn_call};
use super::scenario::{Op, Scenario, Shape};

/// Virtual time the end of a scenario waits for every call to resolve once the hosts
/// are healed.
pub const SETTLE: Duration = Duration::from_secs(60);

pub fn apply(
    ctx: &Arc<Ctx>,
    net: &Net<SimServer, SimCodec>,
    channels: &[Ch],
    stack: Option<&BoxCloneService<Msg, Msg, socketchannel::BoxError>>,
    op: &Op,
) {
    let now = ctx.trace.now();
    match op {
        Op::Call {
            client,
            shape,
            flags,
        } => call(ctx, &channels[*client], *client, *shape, flags),
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
            let name = ctx.hosts[*host].clone();
            let _ = channels[*client].change_host(&name);
            ctx.reconfigure(*client, Some(name), None);
            ctx.kicks.lock().unwrap().push((*client, now));
        }
        Op::ChangeBackups { client, hosts } => {
            let names: Vec<String> = hosts.iter().map(|h| ctx.hosts[*h].clone()).collect();
            let _ = channels[*client].change_backups(&names);
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
                ch.shutdown(deadline).await;
                c.shutdowns
                    .lock()
                    .unwrap()
                    .push((client, t0, c.trace.now(), deadline));
                Outcome::Sent
            });
        }
        Op::Connect(client) => {
            ctx.kicks.lock().unwrap().push((*client, now));
            let ch = channels[*client].clone();
            let id = ctx.ledger.open(*client, 0, "connect()", false, false);
            spawn_call(ctx, *client, id, None, async move {
                match ch.connect().await {
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
                let ready =
                    tokio::time::timeout(hold, std::future::poll_fn(|cx| ch.poll_ready(cx))).await;
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
    }
    let _ = Shape::Request;
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
    channels: &[Ch],
) -> Vec<socketchannel::testing::Violation> {
    ctx.trace.log("end: heal every host");
    for h in &ctx.hosts {
        net.set(h, Behavior::Up);
        net.drain_after(h, None);
        net.kill(h);
    }
    wait_done(ctx, SETTLE).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut out = Vec::new();
    let calls = ctx.ledger.calls();
    for (i, ch) in channels.iter().enumerate() {
        let pending = calls
            .iter()
            .any(|c| c.client == i && c.outcomes.is_empty() && c.cancelled.is_none());
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
