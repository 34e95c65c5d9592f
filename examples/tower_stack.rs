//! Channels as tower services: a `ServiceBuilder` stack of `concurrency_limit`,
//! `timeout` and a retry policy over `tower::balance::p2c::Balance`, which spreads calls
//! over two backends, one reconnecting `Channel` each (via `tower::discover::ServiceList`,
//! picking by each channel's `Load`: its calls queued or waiting). A channel whose host
//! is down backs off and fails its calls at once; its `Load` then ranks it after every
//! working channel, so the balancer steers around it until it reconnects.
//!
//! The retry policy retries only calls the channel reports *not sent*
//! (`Error::is_not_sent`): those never reached a server, so running them again cannot
//! run them twice. Calls that *may have executed* are not retried.
//!
//! It starts two in-process line servers on 127.0.0.1 and runs closed-loop callers in
//! three phases: both backends up; backend B killed mid-phase; B restarted (its channel
//! reconnects by itself and the balancer uses it again). For each phase it prints the
//! successes per backend, the not-sent retries and the may-have-executed failures (the
//! calls in flight on B when it died). Nothing outside this process is needed.
//! Run it with `cargo run --example tower_stack`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Backoff, BoxError, Channel, Plain, Reconnect, RetryNotSent, State};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::codec::{Framed, LinesCodec};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::retry::Policy as RetryPolicy;
use tower::{Service, ServiceBuilder, ServiceExt};

const CALLERS: usize = 32;
const PER_PHASE: u64 = 3000;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let a = LineServer::start("A", None).await?;
    let mut b = LineServer::start("B", None).await?;
    let b_addr = b.addr;

    // One reconnecting channel per backend. `Persistent`: keep trying a dead backend, so
    // it rejoins when it comes back.
    let backend = |addr: SocketAddr| {
        Channel::<String, String>::builder()
            .host(addr.to_string())
            .reconnect(Reconnect::Persistent)
            .backoff(Backoff::exponential(
                Duration::from_millis(50),
                Duration::from_millis(200),
            ))
            .order(LinesCodec::new(), Plain)
    };
    let channels = vec![backend(a.addr)?, backend(b.addr)?];
    for channel in &channels {
        channel.connect().await?;
    }
    let mut b_state = channels[1].state();

    let tally = Arc::new(Tally::default());
    let stack = ServiceBuilder::new()
        .concurrency_limit(CALLERS / 2)
        .timeout(Duration::from_secs(2))
        .retry(Counted {
            policy: RetryNotSent::new(3).delay(Duration::from_millis(2)),
            tally: tally.clone(),
        })
        // `Balance` is not `Clone`; `buffer` gives each caller a handle to one balancer.
        .buffer(1024)
        .service(Balance::new(ServiceList::new(channels)));

    println!(
        "2 backends, {CALLERS} callers, {PER_PHASE} calls a phase; \
         stack: concurrency_limit > timeout > retry(not sent) > buffer > p2c balance"
    );
    run_phase("both up     ", &stack, &tally, || ()).await?;
    run_phase("B killed    ", &stack, &tally, || b.kill()).await?;

    // Same port: B's channel finds it at its next reconnect attempt.
    let b = LineServer::start("B", Some(b_addr)).await?;
    tokio::time::timeout(
        Duration::from_secs(5),
        b_state.wait_for(|s| *s == State::Ready),
    )
    .await??;
    run_phase("B restarted ", &stack, &tally, || ()).await?;
    drop((a, b));
    Ok(())
}

/// Runs closed-loop callers until `PER_PHASE` calls are done, doing `mid` a fifth of the
/// way in, then prints how the calls ended.
async fn run_phase<S>(
    name: &str,
    stack: &S,
    tally: &Arc<Tally>,
    mid: impl FnOnce(),
) -> Result<(), BoxError>
where
    S: Service<String, Response = String, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    tally.reset();
    let issued = Arc::new(AtomicU64::new(0));
    let mut callers = JoinSet::new();
    for caller in 0..CALLERS {
        let (mut stack, tally, issued) = (stack.clone(), tally.clone(), issued.clone());
        callers.spawn(async move {
            loop {
                let n = issued.fetch_add(1, Relaxed);
                if n >= PER_PHASE {
                    return Ok::<_, BoxError>(());
                }
                let body = format!("{caller}-{n}");
                let result = stack.ready().await?.call(format!("ECHO {body}")).await;
                tally.record(&body, result);
            }
        });
    }
    while issued.load(Relaxed) < PER_PHASE / 5 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    mid();
    while let Some(done) = callers.join_next().await {
        done??;
    }
    println!("{name}: {}", tally.summary());
    Ok(())
}

/// The crate's [`RetryNotSent`], counting its retries for the tally.
///
/// It retries a call only when the channel says its request was never sent (the host
/// could not be reached, or the connection died before the request was written), here
/// on whichever backend the balancer picks next. A *may have executed* failure is not
/// retried: the server may have run it, and a second run of a non-idempotent request
/// (`INCR`, a payment) would run it twice. Only the caller knows whether that is
/// harmless, so it gets the error.
#[derive(Clone)]
struct Counted {
    policy: RetryNotSent,
    tally: Arc<Tally>,
}

impl<Res> RetryPolicy<String, Res, BoxError> for Counted {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut String,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        let retry = self.policy.retry(req, result);
        if retry.is_some() {
            self.tally.ns_retries.fetch_add(1, Relaxed);
        }
        retry
    }

    fn clone_request(&mut self, req: &String) -> Option<String> {
        RetryPolicy::<String, Res, BoxError>::clone_request(&mut self.policy, req)
    }
}

/// How the calls of one phase ended.
#[derive(Default)]
struct Tally {
    ok_a: AtomicU64,
    ok_b: AtomicU64,
    ns_retries: AtomicU64,
    mx_failures: AtomicU64,
    ns_failures: AtomicU64,
    other_failures: AtomicU64,
}

impl Tally {
    fn record(&self, body: &str, result: Result<String, BoxError>) {
        let counter = match result {
            Ok(reply) => {
                let (who, echoed) = reply.split_once(' ').unwrap_or(("?", ""));
                assert_eq!(echoed, body, "a reply reached the wrong caller");
                if who == "A" { &self.ok_a } else { &self.ok_b }
            }
            Err(e) => match e.downcast_ref::<socketchannel::Error>() {
                Some(e) if e.may_have_executed() => &self.mx_failures,
                Some(_) => &self.ns_failures,
                None => &self.other_failures,
            },
        };
        counter.fetch_add(1, Relaxed);
    }

    fn reset(&self) {
        for c in [
            &self.ok_a,
            &self.ok_b,
            &self.ns_retries,
            &self.mx_failures,
            &self.ns_failures,
            &self.other_failures,
        ] {
            c.store(0, Relaxed);
        }
    }

    fn summary(&self) -> String {
        let (a, b) = (self.ok_a.load(Relaxed), self.ok_b.load(Relaxed));
        format!(
            "{} ok (A {a}, B {b}); {} NS retries; {} MX failures (not retried); \
             {} NS failures after 3 retries; {} other failures",
            a + b,
            self.ns_retries.load(Relaxed),
            self.mx_failures.load(Relaxed),
            self.ns_failures.load(Relaxed),
            self.other_failures.load(Relaxed),
        )
    }
}

/// An in-process line server: `ECHO x` answers `<name> x`.
struct LineServer {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl LineServer {
    /// Listens on `addr` (a free port if `None`).
    async fn start(name: &'static str, addr: Option<SocketAddr>) -> io::Result<Self> {
        let addr = addr.unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                // Without it, Nagle's algorithm holds small replies for a delayed ACK.
                let _ = stream.set_nodelay(true);
                conns.spawn(async move {
                    let mut lines = Framed::new(stream, LinesCodec::new());
                    while let Some(Ok(line)) = lines.next().await {
                        let arg = line.strip_prefix("ECHO ").unwrap_or("?");
                        if lines.send(format!("{name} {arg}")).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(LineServer { addr, tasks })
    }

    /// Stops listening and drops every connection, mid-request or not.
    fn kill(&mut self) {
        self.tasks.abort_all();
    }
}
