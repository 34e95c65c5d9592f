//! The Redis section: this crate's `Channel` (`channel-redis`, `channel-redis-frame`)
//! against redis-rs's `MultiplexedConnection` (`redis-rs`), side by side on one real
//! `redis-server`, then `redis-benchmark` on the same server as the server's own limit.
//!
//! The server and the RESP code are the examples' own (`examples/common/process.rs` and
//! `examples/common/redis.rs`, included below), so the benchmark speaks to Redis through
//! exactly the codec and `Protocol` the examples and tests use.
//!
//! Each client gets one connection with `TCP_NODELAY`:
//!
//! * `channel-redis`: `Channel::builder().host(..).order(RespCodec::resp2(),
//!   Redis::commands())`, the builder's defaults and its built-in TCP connector, as a
//!   user builds it. Its writes and reads are the channel's own counters
//!   (`Counters::writes`, `Counters::reads`). Each caller packs its command on its own
//!   task (`Packed::new`), as redis-rs packs a `Cmd`.
//! * `channel-redis-frame`: the same channel sending frames, which its connection task
//!   encodes.
//! * `redis-rs`: `MultiplexedConnection::new_with_config` over a socket wrapped in the
//!   counting adapter ([`Counted`](crate::measure::Counted)), with redis-rs's default
//!   `AsyncConnectionConfig` (among others, a 500 ms response timeout: one timer per
//!   request), its driver spawned on the cell's runtime.
//! * `redis-rs-notimeout`: the same with `set_response_timeout(None)`: the baseline.
//!
//! Past one connection, K of them (K = 2, 4):
//!
//! * `channel-redis-pool-K`: `channel-redis` built with `.pool(K)`, each caller driving
//!   its own clone of the pool's handle as a `tower::Service` (its own p2c balance).
//! * `redis-rs-pool-K`: K `redis-rs-notimeout` connections, caller `i` always on
//!   connection `i % K`: an even split fixed up front, with nothing shared or chosen per
//!   request (a per-request round-robin would add a shared counter to every call): the
//!   baseline of the pool rows.
//!
//! For every row, the server's side too: the deltas of `total_reads_processed` and
//! `total_writes_processed` from `INFO stats` over the window, per request.
//!
//! Each caller sends one command at a time and checks every reply: `PING` must get
//! `PONG`, `SET` (the caller's own key, a small value) must get `OK`.

// The examples' shared code, of which the benchmark uses a part.
#[path = "../../examples/common/process.rs"]
#[allow(dead_code)]
mod process;
#[path = "../../examples/common/redis.rs"]
#[allow(dead_code)]
mod resp;

use std::fmt;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Cmd, RedisConnectionInfo, Value};
use redis_protocol::error::RedisProtocolError;
use socketchannel::{Channel, Pool};
use tokio::net::TcpStream;
use tokio_util::codec::Encoder;
use tower::BoxError;

use self::process::Server;
use self::resp::{Frame, Packed, Redis, RespCodec};
use crate::engine::{ChannelMeter, PoolMeter};
use crate::load::{self, Caller, Outcome, Window};
use crate::measure::{Both, Counted, CountedSockets, Io, Meter};
use crate::progress::Progress;
use crate::report::{Payload, Sample};
use crate::runtime::{CellRuntime, Flavor};
use crate::variant::Variant;

/// The cells of the section, at each concurrency: `PING`, and `SET` with a 16-byte and a
/// 1 KiB value (the sizes of the small and middle echo payloads).
pub const COMMANDS: [Payload; 3] = [Payload::Ping, Payload::Set(16), Payload::Set(1024)];

/// What the section runs.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Times the whole section is repeated.
    pub runs: usize,
    /// The concurrencies.
    pub callers: &'a [usize],
    /// The runtimes each cell runs on.
    pub runtimes: &'a [Flavor],
    /// Warm-up and measured time of each cell.
    pub window: Window,
}

/// `redis-benchmark`'s requests per test: with 64 commands pipelined, a second or two.
const LIMIT_REQUESTS: &str = "2000000";

/// How long `redis-benchmark` may take before it is killed.
const LIMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// What the section found.
#[derive(Debug)]
pub struct Section {
    /// A sample per variant, cell and run.
    pub samples: Vec<Sample>,
    /// A line naming the server.
    pub heading: String,
    /// `redis-benchmark`'s figures, when it is installed and succeeded.
    pub limit: Option<Limit>,
}

/// Starts a `redis-server`, runs `variants` at every cell and runtime of `plan`, then
/// `redis-benchmark`. `None` (with a note on stderr) when `redis-server` is not on
/// `PATH`.
///
/// # Errors
///
/// The server did not come up, or a client failed or got a wrong reply.
pub fn run(
    variants: &[Variant],
    plan: &Plan<'_>,
    progress: &mut Progress,
) -> Result<Option<Section>, BoxError> {
    let server = match CellRuntime::plain(Flavor::Current)?.block_on(resp::start_server(&[])) {
        Ok(server) => server,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!("note: Redis section skipped: {e}");
            return Ok(None);
        }
        Err(e) => return Err(format!("redis-server: {e}").into()),
    };
    let addr: SocketAddr = server.addr().parse()?;
    let version = CellRuntime::plain(Flavor::Current)?.block_on(version(&server))?;
    let heading = format!(
        "Redis: {version} on {addr} (--save \"\" --appendonly no), one connection per client \
         (K for the -pool-K rows)"
    );
    eprintln!("{heading}");

    let mut samples = Vec::new();
    for run in 1..=plan.runs {
        for &concurrency in plan.callers {
            for command in COMMANDS {
                for &flavor in plan.runtimes {
                    for &variant in variants {
                        progress.start();
                        let cell = closed_loop(variant, addr, concurrency, command, plan.window);
                        let outcome = CellRuntime::plain(flavor)?.block_on(cell).map_err(|e| {
                            format!("{variant} ({flavor}) c={concurrency} {command}: {e}")
                        })?;
                        let sample =
                            Sample::new(variant, flavor, concurrency, command, &outcome, None);
                        progress.finish(&sample, run, plan.runs);
                        samples.push(sample);
                    }
                }
            }
        }
    }

    let limit = limit(server.port())
        .inspect_err(|e| eprintln!("note: no redis-benchmark figures: {e}"))
        .ok();
    drop(server);
    Ok(Some(Section {
        samples,
        heading,
        limit,
    }))
}

/// `redis_version` from the server's `INFO server`.
async fn version(server: &Server) -> Result<String, BoxError> {
    let channel = resp::connect(&server.addr()).await?;
    let info = channel.request(resp::cmd(["INFO", "server"])).await?;
    let version = resp::text(&info)
        .and_then(|info| resp::info_field(&info, "redis_version"))
        .unwrap_or_else(|| "(unknown version)".to_string());
    Ok(format!("redis-server {version}"))
}

/// Runs `concurrency` callers of `variant`, each sending `command` over and over.
async fn closed_loop(
    variant: Variant,
    addr: SocketAddr,
    concurrency: usize,
    command: Payload,
    window: Window,
) -> Result<Outcome, BoxError> {
    let server = ServerStats::connect(addr).await?;
    match variant {
        Variant::ChannelRedis => {
            channel_loop::<Packed>(addr, concurrency, command, window, server).await
        }
        Variant::ChannelRedisFrame => {
            channel_loop::<Frame>(addr, concurrency, command, window, server).await
        }
        Variant::ChannelRedisPool2 | Variant::ChannelRedisPool4 => {
            let size = variant.pool_size().expect("a pool variant");
            pool_loop(addr, size, concurrency, command, window, server).await
        }
        Variant::RedisRs
        | Variant::RedisRsNoTimeout
        | Variant::RedisRsPool2
        | Variant::RedisRsPool4 => {
            let config = match variant {
                Variant::RedisRs => AsyncConnectionConfig::new(),
                _ => AsyncConnectionConfig::new().set_response_timeout(None),
            };
            let mut connections = Vec::new();
            for _ in 0..variant.pool_size().unwrap_or(1) {
                connections.push(redis_rs(addr, config.clone()).await?);
            }
            let callers: Vec<_> = (0..concurrency)
                .map(|caller| RedisRsCaller {
                    connection: connections[caller % connections.len()].clone(),
                    request: packed(command, caller),
                    command,
                })
                .collect();
            drop(connections);
            load::drive(callers, window, &Both(CountedSockets, server)).await
        }
        _ => Err(format!("{variant} is not a Redis client").into()),
    }
}

/// The key a caller sets: its own, so no two callers write the same key.
fn key(caller: usize) -> String {
    format!("socketchannel-bench:{caller}")
}

/// The value `SET` writes: `size` bytes.
fn value(size: usize) -> Vec<u8> {
    vec![b'v'; size]
}

/// The reply a command must get (a simple string).
fn expected(command: Payload) -> &'static str {
    match command {
        Payload::Ping => "PONG",
        _ => "OK",
    }
}

// ---------------------------------------------------------------------------------------
// channel-redis

/// Runs `concurrency` callers of one channel, sending `Req`s: `Packed` for
/// `channel-redis`, `Frame` for `channel-redis-frame`.
async fn channel_loop<Req: Request>(
    addr: SocketAddr,
    concurrency: usize,
    command: Payload,
    window: Window,
    server: ServerStats,
) -> Result<Outcome, BoxError>
where
    RespCodec: Encoder<Req, Error = RedisProtocolError>,
{
    let channel = channel::<Req>(addr)?;
    let meter = Both(ChannelMeter(channel.clone()), server);
    let callers: Vec<_> = (0..concurrency)
        .map(|caller| ChannelCaller {
            channel: channel.clone(),
            command: frame(command, caller),
            expect: expected(command),
        })
        .collect();
    drop(channel);
    load::drive(callers, window, &meter).await
}

/// Runs `concurrency` callers of one pool of `size` `channel-redis` connections, each
/// caller with its own clone of the handle, sending `Packed` commands.
async fn pool_loop(
    addr: SocketAddr,
    size: usize,
    concurrency: usize,
    command: Payload,
    window: Window,
    server: ServerStats,
) -> Result<Outcome, BoxError> {
    let pool: Pool<Packed, Frame> = Channel::builder()
        .host(addr.to_string())
        .pool(size)
        .order(RespCodec::resp2(), Redis::commands())?;
    let meter = Both(PoolMeter(pool.clone()), server);
    let callers: Vec<_> = (0..concurrency)
        .map(|caller| PoolCaller {
            pool: pool.clone(),
            command: frame(command, caller),
            expect: expected(command),
        })
        .collect();
    drop(pool);
    load::drive(callers, window, &meter).await
}

/// The full channel in order mode over RESP2, as a user builds it: the builder's
/// defaults and its built-in TCP connector.
fn channel<Req: Request>(addr: SocketAddr) -> Result<Channel<Req, Frame>, BoxError>
where
    RespCodec: Encoder<Req, Error = RedisProtocolError>,
{
    let channel = Channel::builder()
        .host(addr.to_string())
        .order(RespCodec::resp2(), Redis::commands())?;
    Ok(channel)
}

/// The server's side of a cell: `total_reads_processed` and `total_writes_processed`
/// from `INFO stats`, over a connection of its own (one per cell).
///
/// Each `INFO` is one read and one write of the server's too. The reply to an `INFO`
/// is made after its read is counted and before its write, so the delta between two of
/// them holds the second's read and the first's write: `io` takes each `INFO`'s own
/// read off, and the writes of the `INFO`s before it, so that the deltas hold the
/// client's operations alone.
#[derive(Debug)]
struct ServerStats {
    channel: Channel<Frame, Frame>,
    /// `INFO`s asked so far.
    asked: AtomicU64,
}

impl ServerStats {
    async fn connect(addr: SocketAddr) -> Result<Self, BoxError> {
        Ok(ServerStats {
            channel: resp::connect(&addr.to_string()).await?,
            asked: AtomicU64::new(0),
        })
    }
}

impl Meter for ServerStats {
    async fn io(&self) -> Io {
        let before = self.asked.fetch_add(1, Relaxed);
        let Ok(info) = self.channel.request(resp::cmd(["INFO", "stats"])).await else {
            return Io::default();
        };
        let field = |name: &str| -> Option<u64> {
            resp::info_field(&resp::text(&info)?, name)?
                .trim()
                .parse()
                .ok()
        };
        Io {
            server_reads: field("total_reads_processed").map(|r| r.saturating_sub(before + 1)),
            server_writes: field("total_writes_processed").map(|w| w.saturating_sub(before)),
            ..Io::default()
        }
    }
}

/// The request frame of `command` for `caller`.
fn frame(command: Payload, caller: usize) -> Frame {
    match command {
        Payload::Ping => resp::cmd(["PING"]),
        _ => resp::cmd([
            b"SET".to_vec(),
            key(caller).into_bytes(),
            value(command.bytes()),
        ]),
    }
}

/// What a `channel-redis` caller sends, made on every call from its prebuilt command,
/// on the caller's task.
trait Request: Send + 'static {
    fn from_command(command: &Frame) -> Self;
}

/// `channel-redis`: the command packed into a fresh buffer (one allocation), as redis-rs
/// packs its `Cmd`; the connection task copies the bytes.
impl Request for Packed {
    fn from_command(command: &Frame) -> Self {
        Packed::new(command).expect("the benchmark's commands are commands")
    }
}

/// `channel-redis-frame`: a clone of the frame (the clone of its `Vec` of arguments is
/// one allocation; the arguments are `Bytes`), encoded on the connection task.
impl Request for Frame {
    fn from_command(command: &Frame) -> Self {
        command.clone()
    }
}

/// A caller of `channel-redis` or `channel-redis-frame`. A `Channel` takes its requests
/// by value, so each call makes a fresh one from the prebuilt command; what that costs
/// is counted as the client's, as using it costs it.
struct ChannelCaller<Req> {
    channel: Channel<Req, Frame>,
    command: Frame,
    expect: &'static str,
}

impl<Req: Request> Caller for ChannelCaller<Req>
where
    RespCodec: Encoder<Req, Error = RedisProtocolError>,
{
    type Reply = Frame;

    async fn request(&mut self) -> Result<Frame, BoxError> {
        let reply = load::call(&mut self.channel, Req::from_command(&self.command)).await?;
        reply.await
    }

    fn check(&self, reply: &Frame) -> Result<(), BoxError> {
        match reply {
            Frame::SimpleString { data, .. } if data == self.expect.as_bytes() => Ok(()),
            _ => Err(format!("wrong reply: expected {}, got {reply:?}", self.expect).into()),
        }
    }
}

/// A caller of `channel-redis-pool-K`: as [`ChannelCaller`], through its own handle of
/// the pool.
struct PoolCaller {
    pool: Pool<Packed, Frame>,
    command: Frame,
    expect: &'static str,
}

impl Caller for PoolCaller {
    type Reply = Frame;

    async fn request(&mut self) -> Result<Frame, BoxError> {
        let reply = load::call(&mut self.pool, Packed::from_command(&self.command)).await?;
        reply.await
    }

    fn check(&self, reply: &Frame) -> Result<(), BoxError> {
        match reply {
            Frame::SimpleString { data, .. } if data == self.expect.as_bytes() => Ok(()),
            _ => Err(format!("wrong reply: expected {}, got {reply:?}", self.expect).into()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// redis-rs

/// redis-rs's multiplexed connection over a counted connection with `config`, its
/// driver spawned.
async fn redis_rs(
    addr: SocketAddr,
    config: AsyncConnectionConfig,
) -> Result<MultiplexedConnection, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (connection, driver) = MultiplexedConnection::new_with_config(
        &RedisConnectionInfo::default(),
        Counted::new(stream),
        config,
    )
    .await?;
    tokio::spawn(driver);
    Ok(connection)
}

/// The command for `caller`, as redis-rs builds it.
fn packed(command: Payload, caller: usize) -> Cmd {
    match command {
        Payload::Ping => ::redis::cmd("PING"),
        _ => {
            let mut set = ::redis::cmd("SET");
            set.arg(key(caller)).arg(value(command.bytes()));
            set
        }
    }
}

/// A caller of `redis-rs`: sends its prebuilt `Cmd` by reference (redis-rs packs it into
/// a fresh buffer on every call, counted as the client's).
struct RedisRsCaller {
    connection: MultiplexedConnection,
    request: Cmd,
    command: Payload,
}

impl Caller for RedisRsCaller {
    type Reply = Value;

    async fn request(&mut self) -> Result<Value, BoxError> {
        Ok(self.connection.send_packed_command(&self.request).await?)
    }

    fn check(&self, reply: &Value) -> Result<(), BoxError> {
        match (self.command, reply) {
            (Payload::Ping, Value::SimpleString(pong)) if pong == "PONG" => Ok(()),
            (Payload::Set(_), Value::Okay) => Ok(()),
            _ => Err(format!(
                "wrong reply: expected {}, got {reply:?}",
                expected(self.command)
            )
            .into()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// redis-benchmark

/// What `redis-benchmark` measured: the server's limit with 64 commands pipelined.
#[derive(Debug)]
pub struct Limit {
    /// The command line it ran with.
    command: String,
    /// Its summary lines (`SET: 3125000.00 requests per second, p50=0.951 msec`).
    lines: Vec<String>,
}

/// Runs `redis-benchmark -p PORT -P 64 -t ping,set -q -n 2000000`, killing it after
/// [`LIMIT_TIMEOUT`].
fn limit(port: u16) -> Result<Limit, BoxError> {
    let port = port.to_string();
    let args = [
        "-p",
        &port,
        "-P",
        "64",
        "-t",
        "ping,set",
        "-q",
        "-n",
        LIMIT_REQUESTS,
    ];
    // Its output goes to a file: in quiet mode it rewrites a progress line with `\r`.
    let log = std::env::temp_dir().join(format!(
        "socketchannel-bench-redis-benchmark-{}.log",
        std::process::id()
    ));
    let out = File::create(&log)?;
    let spawned = Command::new("redis-benchmark")
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let _ = std::fs::remove_file(&log);
            return Err("redis-benchmark is not on PATH".into());
        }
        Err(e) => return Err(e.into()),
    };
    let deadline = Instant::now() + LIMIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&log);
            return Err(format!("redis-benchmark took longer than {LIMIT_TIMEOUT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&log);
    let _ = std::fs::remove_file(&log);
    let output = output?;
    // Each line's final state is what follows its last `\r`.
    let lines: Vec<String> = output
        .lines()
        .filter_map(|line| line.rsplit('\r').next())
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect();
    if !status.success() {
        return Err(format!("redis-benchmark failed ({status}): {}", lines.join("; ")).into());
    }
    Ok(Limit {
        command: format!("redis-benchmark {}", args.join(" ")),
        lines,
    })
}

impl Limit {
    /// One JSON object per summary line, with `variant` `redis-benchmark`, the test name
    /// as `command`, `rps` and `p50_us`; lines that do not parse are left out.
    pub fn json(&self) -> String {
        self.lines
            .iter()
            .filter_map(|line| parse_summary(line))
            .map(|(test, rps, p50_ms)| {
                format!(
                    "{{\"variant\":\"redis-benchmark\",\"mode\":\"redis\",\"command\":\"{test}\",\
                     \"pipeline\":64,\"requests\":{LIMIT_REQUESTS},\"rps\":{rps:.1},\
                     \"p50_us\":{p50:.2}}}\n",
                    p50 = p50_ms * 1000.0,
                )
            })
            .collect()
    }
}

impl fmt::Display for Limit {
    /// The command line, then its summary lines, indented.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "The server's limit: {}", self.command)?;
        for line in &self.lines {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Reads `TEST: RPS requests per second, p50=MS msec`.
fn parse_summary(line: &str) -> Option<(&str, f64, f64)> {
    let (test, rest) = line.split_once(": ")?;
    let (rps, rest) = rest.split_once(" requests per second, p50=")?;
    let p50 = rest.strip_suffix(" msec")?;
    Some((test, rps.parse().ok()?, p50.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_benchmark_summary() {
        assert_eq!(
            parse_summary("SET: 3125000.00 requests per second, p50=0.951 msec"),
            Some(("SET", 3_125_000.0, 0.951))
        );
        assert_eq!(
            parse_summary("PING_INLINE: rps=3293068.0 (overall: 3293068.0)"),
            None
        );
    }
}
