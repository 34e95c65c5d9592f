//! Running a scenario: a current-thread runtime with paused time, the in-memory
//! network, the channels, the schedule, then the checks.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socketchannel::testing::{Ledger, Net, Outcome, SimRng, Trace, Violation};
use socketchannel::{
    Backoff, BoxError, Call, Channel, Config, Endpoint, Error, Handshake, Order, Reconnect,
    Replies, Reply, ReplyStream, RetryNotSent, Session,
};
use tokio::task::JoinHandle;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

use super::checks;
use super::proto::{Journal, Msg, SimCodec, SimProto, SimServer, tag_of, tag_of_error};
use super::scenario::{ClientPlan, Flags, Hs, Scenario, Shape};

pub type Ch = Channel<Msg, Msg>;
pub type PoolH = socketchannel::Pool<Msg, Msg>;
/// What feeds a pool's `Discover`: changes keyed by the endpoint's number.
pub type Feed = tokio::sync::mpsc::UnboundedSender<tower::discover::Change<usize, Endpoint>>;

/// A client of the scenario: one channel, or a pool (with the feed of its `Discover`
/// and the two hosts it names, when it has one).
#[derive(Clone)]
pub enum Client {
    Ch(Ch),
    Pool(Box<PoolH>, Option<(Feed, [usize; 2])>),
}

impl Client {
    /// The channel, when this client is one.
    pub fn ch(&self) -> Option<&Ch> {
        match self {
            Client::Ch(ch) => Some(ch),
            Client::Pool(..) => None,
        }
    }

    /// Some of its connections still wait for replies (`Counters::in_flight`).
    pub fn in_flight(&self) -> bool {
        match self {
            Client::Ch(ch) => ch.counters().in_flight != 0,
            Client::Pool(pool, _) => pool.counters().in_flight != 0,
        }
    }

    pub fn close(&self) {
        match self {
            Client::Ch(ch) => ch.close(),
            Client::Pool(pool, _) => pool.close(),
        }
    }
}

/// A lease a `Lease` op held: granted after nonce `grant` was drawn, the journal's
/// events from `from` to `to` (taken just before it was dropped) written meanwhile, and
/// the nonces of the calls made on it.
#[derive(Debug, Clone)]
pub struct LeaseRecord {
    pub client: usize,
    pub grant: u64,
    pub from: usize,
    pub to: usize,
    pub nonces: Vec<u64>,
}
type Stack = BoxCloneService<Msg, Msg, BoxError>;

/// What a run gives the checks.
pub struct Report {
    pub violations: Vec<Violation>,
    pub log: Vec<String>,
}

/// Shared by the schedule, the callers and the handshakes.
pub struct Ctx {
    pub trace: Trace,
    pub ledger: Ledger,
    nonce: AtomicU64,
    pub hosts: Vec<String>,
    /// Per client, every set of hosts it was configured with.
    pub configured: Mutex<Vec<Vec<BTreeSet<String>>>>,
    /// Per client, its configured host and backups now.
    current: Mutex<Vec<(String, Vec<String>)>>,
    /// Operations that start a connect pass at once: (client, when).
    pub kicks: Mutex<Vec<(usize, Duration)>>,
    /// Shutdowns: (client, started, ended, deadline).
    pub shutdowns: Mutex<Vec<(usize, Duration, Duration, Duration)>>,
    pub tasks: Mutex<Vec<(usize, JoinHandle<()>)>>,
    /// What the clients' connections wrote, and when they read a drain notice.
    pub wire: Journal,
    /// When the end of the scenario closed every channel.
    pub closing: Mutex<Option<Duration>>,
    /// Per client, the slots `poll_ready` reserved that a `ReadyDrop` handle still holds.
    pub reserved: Mutex<Vec<usize>>,
    /// The leases `Lease` ops held, once dropped.
    pub leases: Mutex<Vec<LeaseRecord>>,
    /// Taken by each `Lease` op (in turn, first come first served) for as long as it
    /// waits for and holds its lease: two tasks waiting in `Pool::lease` wake in an
    /// order that differs from one process to another (the pool waits on `watch`es).
    pub lease_turn: tokio::sync::Mutex<()>,
}

impl Ctx {
    pub fn nonce(&self) -> u64 {
        self.nonce.fetch_add(1, SeqCst)
    }

    pub fn reconfigure(&self, client: usize, host: Option<String>, backups: Option<Vec<String>>) {
        let mut cur = self.current.lock().unwrap();
        if let Some(h) = host {
            cur[client].0 = h;
        }
        if let Some(b) = backups {
            cur[client].1 = b;
        }
        let set: BTreeSet<String> = std::iter::once(cur[client].0.clone())
            .chain(cur[client].1.iter().cloned())
            .collect();
        self.configured.lock().unwrap()[client].push(set);
    }
}

pub fn failed(e: &Error) -> Outcome {
    Outcome::failed(e, tag_of_error)
}

pub fn boxed(e: &BoxError) -> Outcome {
    Outcome::boxed(e, tag_of_error)
}

pub fn body(nonce: u64, frames: u64, flags: &Flags, extra: &str) -> String {
    let mut b = format!("n={nonce} r={frames} gap={}", flags.gap);
    if flags.err {
        b.push_str(" err");
    }
    if let Some(p) = flags.panic {
        b.push_str(&format!(" p={p}"));
    }
    if let Some(said) = flags.said {
        b.push_str(&said.tokens());
    }
    b.push_str(extra);
    b
}

/// A handshake request the handshake awaits.
async fn hs_request(ctx: &Ctx, client: usize, conn: &Ch, what: &str) -> Result<(), BoxError> {
    let nonce = ctx.nonce();
    let id = ctx
        .ledger
        .open(client, nonce, &format!("hs {what}"), true, false);
    // The crate drops a handshake that timed out or lost its connection: its caller is
    // then gone, as a cancelled caller is.
    let _gone = GiveUpOnDrop(ctx.ledger.clone(), id);
    match conn
        .request(Msg::new(format!("n={nonce} hs r=1 {what}")))
        .await
    {
        Ok(m) => {
            ctx.ledger
                .resolve(id, Outcome::Replies(vec![tag_of(m.text())]));
            Ok(())
        }
        Err(e) => {
            ctx.ledger.resolve(id, failed(&e));
            Err(e.into())
        }
    }
}

struct GiveUpOnDrop(Ledger, usize);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        self.0.cancel(self.1);
    }
}

/// A call the handshake queues (polled once) and does not await.
async fn leftover(ctx: &Arc<Ctx>, client: usize, conn: &Ch, stream: bool) {
    let nonce = ctx.nonce();
    let shape = if stream {
        // Two frames, as its request asks (`r=2`).
        "hs leftover stream(2)"
    } else {
        "hs leftover send"
    };
    let id = ctx.ledger.open(client, nonce, shape, true, false);
    let ledger = ctx.ledger.clone();
    if stream {
        let conn = conn.clone();
        let mut fut = Box::pin(async move {
            conn.stream(Msg::new(format!("n={nonce} hs r=2")), Replies::Count(2))
                .await
        });
        let first = futures::poll!(fut.as_mut());
        tokio::spawn(async move {
            let s = match first {
                std::task::Poll::Ready(s) => s,
                std::task::Poll::Pending => fut.await,
            };
            ledger.resolve(id, drain(s).await);
        });
    } else {
        let conn = conn.clone();
        let mut fut =
            Box::pin(async move { conn.send(Msg::new(format!("n={nonce} hs r=0"))).await });
        let first = futures::poll!(fut.as_mut());
        let resolve = move |r: Result<(), Error>| match r {
            Ok(()) => Outcome::Sent,
            Err(e) => failed(&e),
        };
        match first {
            std::task::Poll::Ready(r) => ledger.resolve(id, resolve(r)),
            std::task::Poll::Pending => {
                tokio::spawn(async move { ledger.resolve(id, resolve(fut.await)) });
            }
        }
    }
}

async fn drain(mut s: socketchannel::ReplyStream<Msg>) -> Outcome {
    let mut tags = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(m) => tags.push(tag_of(m.text())),
            Err(e) => {
                let mut o = failed(&e);
                if let Outcome::Failed { before, .. } = &mut o {
                    *before = tags;
                }
                return o;
            }
        }
    }
    Outcome::Replies(tags)
}

fn build(
    ctx: &Arc<Ctx>,
    net: &Net<SimServer, SimCodec>,
    i: usize,
    plan: &ClientPlan,
    seed: u64,
) -> Client {
    let ms = Duration::from_millis;
    let mut config = Config::default()
        .stall_timeout(plan.stall.map(ms))
        .max_in_flight(plan.max_in_flight)
        .queue(plan.queue);
    if plan.overload {
        config = config.overload(64, |m: &Msg| m.body.len());
    }
    if let Some(n) = plan.reply_frames {
        config = config.max_reply_frames(n);
    }
    if let Some(n) = plan.stream_buffer {
        config = config.stream_buffer(n);
    }
    if let Some(n) = plan.max_orphans {
        config = config.max_orphans(Some(n));
    }
    if let Some(age) = plan.orphan_age {
        config = config.orphan_age(Some(ms(age)));
    }
    let mut b = Channel::builder()
        .host(&ctx.hosts[plan.host])
        .reconnect(if plan.persistent {
            Reconnect::Persistent
        } else {
            Reconnect::Once
        })
        .backoff(
            Backoff::exponential(ms(plan.backoff.0), ms(plan.backoff.1))
                .jitter_seed(seed ^ (i as u64 + 1)),
        )
        .connect_timeout(ms(plan.connect_timeout))
        .handshake_timeout(ms(plan.handshake_timeout))
        .max_connection_age(plan.max_age.map(ms))
        .config(config);
    for bk in &plan.backups {
        b = b.backup(&ctx.hosts[*bk]);
    }
    if plan.eager {
        b = b.eager();
    }
    if !matches!(plan.handshake, Hs::None) {
        let ctx = ctx.clone();
        let hs = plan.handshake.clone();
        let attempts = Arc::new(AtomicU32::new(0));
        b = b.handshake(move |conn: Ch, ep: Endpoint| {
            let ctx = ctx.clone();
            let hs = hs.clone();
            let attempt = attempts.fetch_add(1, SeqCst);
            async move {
                match hs {
                    Hs::PanicOn(k) if attempt == k => panic!("simulated panic in a handshake"),
                    Hs::FailOn(k) if attempt == k => {
                        return Err("simulated handshake failure".into());
                    }
                    Hs::Redirect { sentinel, master } if ep.to_string() == ctx.hosts[sentinel] => {
                        hs_request(&ctx, i, &conn, "who").await?;
                        let to: Endpoint = ctx.hosts[master].parse().expect("a host name");
                        return Ok(Handshake::Redirect(to));
                    }
                    _ => {}
                }
                hs_request(&ctx, i, &conn, "auth").await?;
                if let Hs::Leftover { stream } = hs {
                    leftover(&ctx, i, &conn, stream).await;
                }
                Ok(Handshake::Ready)
            }
        });
    }
    let connector = net.connector(i);
    // Half the seeds send cancel notices (drawn apart from the generator's stream, so
    // every seed keeps its scenario).
    let cancels = SimRng::new(seed ^ 0xca9ce1 ^ i as u64)
        .next_u64()
        .is_multiple_of(2);
    if let Some(k) = plan.pool {
        // Its handles' p2c draws replay with the seed.
        let mut pb = b.pool(k).balance_seed(seed ^ 0x0ba1_a9ce ^ i as u64);
        if let Some((max, dwell, target)) = plan.grow {
            pb = pb
                .grow_to(max)
                .dwell(Duration::from_millis(dwell))
                .target_load(target);
        }
        let mut feed = None;
        if let Some(pair) = plan.discover {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for (key, h) in pair.iter().enumerate() {
                let ep: Endpoint = ctx.hosts[*h].parse().expect("a host name");
                let _ = tx.send(tower::discover::Change::Insert(key, ep));
            }
            pb = pb.discover(futures::stream::poll_fn(move |cx| {
                rx.poll_recv(cx)
                    .map(|change| change.map(Ok::<_, std::convert::Infallible>))
            }));
            feed = Some((tx, pair));
        }
        let pool = if plan.session {
            pb.connector(connector, Session::new(SimProto { cancels }))
        } else {
            pb.connector(connector, Order::new(SimProto { cancels }))
        }
        .expect("valid hosts");
        return Client::Pool(Box::new(pool), feed);
    }
    Client::Ch(
        if plan.session {
            b.connector(connector, Session::new(SimProto { cancels }))
        } else {
            b.connector(connector, Order::new(SimProto { cancels }))
        }
        .expect("valid hosts"),
    )
}

struct P2cRng(SimRng);

impl tower::util::rng::Rng for P2cRng {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

pub fn spawn_call(
    ctx: &Arc<Ctx>,
    _client: usize,
    id: usize,
    cancel_after: Option<u64>,
    fut: impl std::future::Future<Output = Outcome> + Send + 'static,
) {
    let ledger = ctx.ledger.clone();
    let task = tokio::spawn(async move {
        let o = fut.await;
        ledger.resolve(id, o);
    });
    if let Some(after) = cancel_after {
        let ledger = ctx.ledger.clone();
        let abort = task.abort_handle();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after)).await;
            if !ledger.is_done(id) {
                abort.abort();
                ledger.cancel(id);
            }
        });
    }
    ctx.tasks.lock().unwrap().push((id, task));
}

/// Reads a reply stream to its end, or (`stop`) drops it after that many frames and
/// gives the call up.
async fn consume(
    stream: ReplyStream<Msg>,
    stop: Option<u64>,
    ledger: &Ledger,
    id: usize,
) -> Outcome {
    let mut s = Some(stream);
    let mut tags = Vec::new();
    loop {
        if stop.is_some_and(|k| tags.len() as u64 >= k) {
            s = None;
            ledger.cancel(id);
            // Give up for good: this task never resolves the call.
            std::future::pending::<()>().await;
        }
        let Some(stream) = s.as_mut() else { continue };
        match stream.next().await {
            Some(Ok(m)) => tags.push(tag_of(m.text())),
            Some(Err(e)) => {
                let mut o = failed(&e);
                if let Outcome::Failed { before, .. } = &mut o {
                    *before = tags;
                }
                return o;
            }
            None => return Outcome::Replies(tags),
        }
    }
}

/// A call of any shape through `Channel::calls()` or `Pool::calls()`, the
/// `Service<Call>`.
fn call_via_calls<S>(
    ctx: &Arc<Ctx>,
    svc: S,
    client: usize,
    id: usize,
    nonce: u64,
    shape: Shape,
    flags: &Flags,
) where
    S: Service<Call<Msg>, Response = Reply<Msg>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let msg = |frames: u64, extra: &str| Msg::new(body(nonce, frames, flags, extra));
    let mut stop = None;
    let call = match shape {
        Shape::Request | Shape::Service => Call::new(msg(1, "")),
        Shape::Exempt => Call::new(msg(1, "")).no_stall_timeout(),
        Shape::WithId(x) => Call::new(msg(1, "")).id(x),
        Shape::N(n) => Call::new(msg(n, "")).replies(Replies::Count(n as usize)),
        Shape::UntilFinal(n) => Call::new(msg(n, " f")).replies(Replies::UntilFinal),
        Shape::Stream(n, k) => {
            stop = k;
            Call::new(msg(n, "")).stream(Replies::Count(n as usize))
        }
        Shape::StreamFinal(n, k) => {
            stop = k;
            Call::new(msg(n, " f")).stream(Replies::UntilFinal)
        }
        Shape::Send => Call::new(msg(0, "")).no_reply(),
        Shape::Parts(k) => Call::parts((0..k).map(|i| msg(1, &format!(" pl={i}/{k}"))).collect()),
        Shape::Read => {
            let rid = ctx.ledger.open(client, 0, "read via calls", false, false);
            let reader = svc.clone();
            spawn_call(ctx, client, rid, None, async move {
                outcome_of(reader.oneshot(Call::read()).await, None, None).await
            });
            Call::new(msg(1, " x"))
        }
    };
    let call = timed(call, flags);
    let ledger = ctx.ledger.clone();
    spawn_call(ctx, client, id, flags.cancel_after, async move {
        outcome_of(svc.oneshot(call).await, stop, Some((&ledger, id))).await
    });
}

/// `call` with the timeout `flags` drew, if any.
fn timed(call: Call<Msg>, flags: &Flags) -> Call<Msg> {
    match flags.timeout {
        Some(ms) => call.timeout(Duration::from_millis(ms)),
        None => call,
    }
}

/// A call's label for the ledger: its timeout, if any (read by
/// `checks::deadline_bounds_the_wait`).
fn timeout_label(flags: &Flags) -> String {
    flags.timeout.map(|t| format!(" t={t}")).unwrap_or_default()
}

/// The outcome of a `Service<Call>` call, whatever its shape.
async fn outcome_of(
    r: Result<Reply<Msg>, BoxError>,
    stop: Option<u64>,
    ledger: Option<(&Ledger, usize)>,
) -> Outcome {
    match r {
        Ok(Reply::One(m)) => Outcome::Replies(vec![tag_of(m.text())]),
        Ok(Reply::Many(v)) => Outcome::Replies(v.iter().map(|m| tag_of(m.text())).collect()),
        Ok(Reply::Sent) => Outcome::Sent,
        Ok(Reply::Stream(stream)) => match ledger {
            Some((ledger, id)) => consume(stream, stop, ledger, id).await,
            None => Outcome::Other("a stream for a read".into()),
        },
        Err(e) => boxed(&e),
    }
}

pub fn call(ctx: &Arc<Ctx>, ch: &Ch, client: usize, shape: Shape, flags: &Flags) {
    let nonce = ctx.nonce();
    let via = if flags.via_calls { " via calls" } else { "" };
    let label = format!(
        "{shape:?}{via} gap={} err={} panic={:?}{}",
        flags.gap,
        flags.err,
        flags.panic,
        timeout_label(flags)
    );
    let id = ctx.ledger.open(client, nonce, &label, false, false);
    if flags.via_calls {
        return call_via_calls(ctx, ch.calls(), client, id, nonce, shape, flags);
    }
    let ch = ch.clone();
    let cancel = flags.cancel_after;
    let one = |r: Result<Msg, Error>| match r {
        Ok(m) => Outcome::Replies(vec![tag_of(m.text())]),
        Err(e) => failed(&e),
    };
    let many = |r: Result<Vec<Msg>, Error>| match r {
        Ok(v) => Outcome::Replies(v.iter().map(|m| tag_of(m.text())).collect()),
        Err(e) => failed(&e),
    };
    match shape {
        Shape::Request => {
            let call = timed(Call::new(Msg::new(body(nonce, 1, flags, ""))), flags);
            spawn_call(ctx, client, id, cancel, async move {
                one(ch.request(call).await)
            })
        }
        Shape::Exempt => {
            let m = Msg::new(body(nonce, 1, flags, ""));
            let call = timed(Call::new(m).no_stall_timeout(), flags);
            spawn_call(ctx, client, id, cancel, async move {
                one(ch.request(call).await)
            })
        }
        Shape::WithId(x) => {
            let call = timed(Call::new(Msg::new(body(nonce, 1, flags, ""))).id(x), flags);
            spawn_call(ctx, client, id, cancel, async move {
                one(ch.request(call).await)
            })
        }
        Shape::Service => {
            let m = Msg::new(body(nonce, 1, flags, ""));
            let mut ch = ch;
            spawn_call(ctx, client, id, cancel, async move {
                let r = match ch.ready().await {
                    Ok(svc) => svc.call(m).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(m) => Outcome::Replies(vec![tag_of(m.text())]),
                    Err(e) => boxed(&e),
                }
            })
        }
        Shape::N(n) => {
            let m = Msg::new(body(nonce, n, flags, ""));
            spawn_call(ctx, client, id, cancel, async move {
                many(ch.request_n(m, n as usize).await)
            })
        }
        Shape::UntilFinal(n) => {
            let m = Msg::new(body(nonce, n, flags, " f"));
            spawn_call(ctx, client, id, cancel, async move {
                many(ch.request_until_final(m).await)
            })
        }
        Shape::Stream(n, stop) | Shape::StreamFinal(n, stop) => {
            let fin = matches!(shape, Shape::StreamFinal(..));
            let m = Msg::new(body(nonce, n, flags, if fin { " f" } else { "" }));
            let replies = if fin {
                Replies::UntilFinal
            } else {
                Replies::Count(n as usize)
            };
            let ledger = ctx.ledger.clone();
            spawn_call(ctx, client, id, cancel, async move {
                let stream = ch.stream(m, replies).await;
                consume(stream, stop, &ledger, id).await
            })
        }
        Shape::Send => {
            let m = Msg::new(body(nonce, 0, flags, ""));
            spawn_call(ctx, client, id, cancel, async move {
                match ch.send(m).await {
                    Ok(()) => Outcome::Sent,
                    Err(e) => failed(&e),
                }
            })
        }
        Shape::Parts(k) => {
            let parts = (0..k)
                .map(|i| Msg::new(body(nonce, 1, flags, &format!(" pl={i}/{k}"))))
                .collect();
            let call = timed(Call::parts(parts), flags);
            spawn_call(ctx, client, id, cancel, async move {
                one(ch.request(call).await)
            })
        }
        Shape::Read => {
            let m = Msg::new(body(nonce, 1, flags, " x"));
            let reader = ch.clone();
            spawn_call(
                ctx,
                client,
                id,
                cancel,
                async move { one(ch.request(m).await) },
            );
            let rid = ctx.ledger.open(client, 0, "read", false, false);
            spawn_call(
                ctx,
                client,
                rid,
                None,
                async move { one(reader.read().await) },
            );
        }
    }
}

/// A call of any shape through a pool: its methods, its `Service<Req>`, or (`via_calls`)
/// `Pool::calls()`. A pool has no `read`: a `Read` is a request.
pub fn pool_call(ctx: &Arc<Ctx>, pool: &PoolH, client: usize, shape: Shape, flags: &Flags) {
    let nonce = ctx.nonce();
    let via = if flags.via_calls { " via calls" } else { "" };
    let label = format!(
        "pool {shape:?}{via} gap={} err={} panic={:?}{}",
        flags.gap,
        flags.err,
        flags.panic,
        timeout_label(flags)
    );
    let id = ctx.ledger.open(client, nonce, &label, false, false);
    let shape = if shape == Shape::Read {
        Shape::Request
    } else {
        shape
    };
    if flags.via_calls {
        return call_via_calls(ctx, pool.calls(), client, id, nonce, shape, flags);
    }
    let pool = pool.clone();
    let cancel = flags.cancel_after;
    let one = |r: Result<Msg, Error>| match r {
        Ok(m) => Outcome::Replies(vec![tag_of(m.text())]),
        Err(e) => failed(&e),
    };
    let many = |r: Result<Vec<Msg>, Error>| match r {
        Ok(v) => Outcome::Replies(v.iter().map(|m| tag_of(m.text())).collect()),
        Err(e) => failed(&e),
    };
    let fin = matches!(shape, Shape::UntilFinal(_) | Shape::StreamFinal(..));
    let frames = match shape {
        Shape::N(n) | Shape::UntilFinal(n) | Shape::Stream(n, _) | Shape::StreamFinal(n, _) => n,
        Shape::Send => 0,
        _ => 1,
    };
    let m = Msg::new(body(nonce, frames, flags, if fin { " f" } else { "" }));
    let parts: Vec<Msg> = match shape {
        Shape::Parts(k) => (0..k)
            .map(|i| Msg::new(body(nonce, 1, flags, &format!(" pl={i}/{k}"))))
            .collect(),
        _ => Vec::new(),
    };
    let ledger = ctx.ledger.clone();
    let flags = flags.clone();
    spawn_call(ctx, client, id, cancel, async move {
        match shape {
            Shape::Request | Shape::Read => one(pool.request(timed(Call::new(m), &flags)).await),
            Shape::Exempt => one(pool
                .request(timed(Call::new(m).no_stall_timeout(), &flags))
                .await),
            Shape::WithId(x) => one(pool.request(timed(Call::new(m).id(x), &flags)).await),
            Shape::Service => {
                let mut pool = pool;
                let r = match pool.ready().await {
                    Ok(svc) => svc.call(m).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(m) => Outcome::Replies(vec![tag_of(m.text())]),
                    Err(e) => boxed(&e),
                }
            }
            Shape::N(n) => many(pool.request_n(m, n as usize).await),
            Shape::UntilFinal(_) => many(pool.request_until_final(m).await),
            Shape::Stream(n, stop) | Shape::StreamFinal(n, stop) => {
                let replies = if fin {
                    Replies::UntilFinal
                } else {
                    Replies::Count(n as usize)
                };
                match pool.stream(m, replies).await {
                    Ok(stream) => consume(stream, stop, &ledger, id).await,
                    Err(e) => failed(&e),
                }
            }
            Shape::Send => match pool.send(m).await {
                Ok(()) => Outcome::Sent,
                Err(e) => failed(&e),
            },
            Shape::Parts(_) => one(pool.request(timed(Call::parts(parts), &flags)).await),
        }
    });
}

pub fn run(scn: &Scenario) -> Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(simulate(scn))
}

async fn simulate(scn: &Scenario) -> Report {
    let trace = Trace::new();
    let wire = Journal::new(trace.epoch());
    let net = Net::new(
        SimServer::default(),
        SimCodec::new(wire.clone()),
        trace.clone(),
    );
    for (h, b) in scn.hosts.iter().zip(&scn.initial) {
        net.set(h, b.clone());
    }
    for (h, d) in scn.hosts.iter().zip(&scn.drains) {
        net.drain_after(h, *d);
    }
    for (h, cut) in scn.hosts.iter().zip(&scn.cuts) {
        net.cut_client_writes(h, *cut);
    }
    super::connectors::install(&net, scn);
    let ctx = Arc::new(Ctx {
        trace: trace.clone(),
        ledger: Ledger::new(trace.clone()),
        nonce: AtomicU64::new(1),
        hosts: scn.hosts.clone(),
        configured: Mutex::new(vec![Vec::new(); scn.clients.len()]),
        current: Mutex::new(
            scn.clients
                .iter()
                .map(|c| {
                    (
                        scn.hosts[c.host].clone(),
                        c.backups.iter().map(|b| scn.hosts[*b].clone()).collect(),
                    )
                })
                .collect(),
        ),
        kicks: Mutex::new(Vec::new()),
        shutdowns: Mutex::new(Vec::new()),
        tasks: Mutex::new(Vec::new()),
        wire,
        closing: Mutex::new(None),
        reserved: Mutex::new(vec![0; scn.clients.len()]),
        leases: Mutex::new(Vec::new()),
        lease_turn: tokio::sync::Mutex::new(()),
    });
    let channels: Vec<Client> = scn
        .clients
        .iter()
        .enumerate()
        .map(|(i, plan)| {
            ctx.reconfigure(i, None, None);
            if let Some(pair) = plan.discover {
                // Each channel of a pool over a `Discover` is configured with one of
                // its hosts.
                ctx.configured.lock().unwrap()[i] = pair
                    .iter()
                    .map(|h| BTreeSet::from([scn.hosts[*h].clone()]))
                    .collect();
            }
            build(&ctx, &net, i, plan, scn.seed)
        })
        .collect();
    let stack: Option<Stack> = scn.balance.map(|[a, b]| {
        let rng = P2cRng(SimRng::new(scn.seed ^ 0xba1a));
        if scn.calls_balance {
            // RetryNotSent on `Call`s: a retried call is refilled from its error.
            let ch = |i: usize| channels[i].ch().expect("a balance over channels");
            let members = vec![ch(a).calls(), ch(b).calls()];
            let balance = tower::balance::p2c::Balance::from_rng(
                tower::discover::ServiceList::new(members),
                rng,
            );
            return BoxCloneService::new(
                ServiceBuilder::new()
                    .map_request(Call::new)
                    .map_response(|r: Reply<Msg>| r.into_one().expect("a one-frame reply"))
                    .retry(RetryNotSent::new(2))
                    .buffer(64)
                    .service(balance),
            );
        }
        let balance = tower::balance::p2c::Balance::from_rng(
            tower::discover::ServiceList::new(
                [a, b]
                    .map(|i| channels[i].ch().expect("a balance over channels").clone())
                    .to_vec(),
            ),
            rng,
        );
        BoxCloneService::new(
            ServiceBuilder::new()
                .retry(RetryNotSent::new(2))
                .buffer(64)
                .service(balance),
        )
    });
    let epoch = trace.epoch();
    for (at, op) in &scn.ops {
        tokio::time::sleep_until(epoch + Duration::from_millis(*at)).await;
        trace.log(format!("op: {op:?}"));
        super::ops::apply(&ctx, &net, &channels, stack.as_ref(), op);
    }
    tokio::time::sleep_until(epoch + Duration::from_millis(scn.end)).await;
    let mut violations = super::ops::finish(&ctx, &net, scn, &channels).await;
    violations.extend(checks::all(&ctx, &net, scn));
    // Whatever is still running is dropped with the runtime.
    Report {
        violations,
        log: trace.lines(),
    }
}
