//! The clients under test, and how each is built over a fresh connection.
//!
//! Three groups: the matrix (every echo client at every cell), the "cost of safety" rows
//! (`channel-order` again at one cell, wrapped as a careful application would wrap it),
//! and the Redis section (`crate::redis`, against a real `redis-server`).

use std::fmt;
use std::net::SocketAddr;

use tokio::net::TcpStream;
use tower::BoxError;
use tracing::level_filters::LevelFilter;

use crate::load::{self, Client, Load};
use crate::measure::{CountedSockets, Meter};
use crate::server::ServerMode;
use crate::{hand, tokio_tower};

/// How replies are matched to requests, and what answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// In order (pipelining), against the `order` server.
    Order,
    /// By session id (multiplexing), against the `reverse` server.
    Session,
    /// Redis commands against a real `redis-server` (both clients match in order).
    #[cfg(feature = "redis")]
    Redis,
}

impl Mode {
    /// The echo server this mode runs against; `None` for Redis, whose server the Redis
    /// section starts itself.
    pub fn server(self) -> Option<ServerMode> {
        match self {
            Mode::Order => Some(ServerMode::Order),
            Mode::Session => Some(ServerMode::Reverse),
            #[cfg(feature = "redis")]
            Mode::Redis => None,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Order => "order",
            Mode::Session => "session",
            #[cfg(feature = "redis")]
            Mode::Redis => "redis",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of the run a variant belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Every cell of the matrix, against the echo servers.
    Matrix,
    /// Only the [`SAFETY_CELL`](crate::SAFETY_CELL), right after the matrix variants.
    Safety,
    /// The Redis section.
    Redis,
}

/// One client under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// [`hand::Order`]: the baseline for order mode.
    HandOrder,
    /// [`hand::Session`]: the baseline for session mode.
    HandSession,
    /// [`window`](crate::window): one task keeping N frames outstanding, no per-request
    /// futures; the limit of one connection in order mode.
    WindowLoop,
    /// tokio-tower's pipeline client behind tower 0.4's `Buffer`.
    TokioTowerOrder,
    /// tokio-tower's multiplex client behind tower 0.4's `Buffer`.
    TokioTowerSession,
    /// This crate's engine in order mode.
    #[cfg(feature = "engine")]
    EngineOrder,
    /// This crate's engine in session mode.
    #[cfg(feature = "engine")]
    EngineSession,
    /// The full reconnecting `Channel` in order mode, as a user builds it: the builder's
    /// defaults and its built-in TCP connector.
    #[cfg(feature = "engine")]
    ChannelOrder,
    /// The same in session mode.
    #[cfg(feature = "engine")]
    ChannelSession,
    /// A `Pool` of one `channel-order` (`.pool(1)`): what the pool's handle costs over
    /// the channel it holds, with no balance.
    #[cfg(feature = "engine")]
    ChannelPool1,
    /// A `Pool` of two `channel-order` connections, each caller's handle balancing them
    /// with its own p2c.
    #[cfg(feature = "engine")]
    ChannelPool2,
    /// The same with four connections.
    #[cfg(feature = "engine")]
    ChannelPool4,
    /// `channel-order` over the benchmark's connector: 64 KiB buffers, counted socket.
    #[cfg(feature = "engine")]
    ChannelOrder64k,
    /// `channel-session` over the benchmark's connector.
    #[cfg(feature = "engine")]
    ChannelSession64k,
    /// `channel-order` behind `tower::timeout::Timeout` (5 s).
    #[cfg(feature = "engine")]
    ChannelOrderTimeout,
    /// `channel-order` with a deadline on every call (50-500 ms), kept by the engine.
    #[cfg(feature = "engine")]
    ChannelOrderDeadline,
    /// `channel-order` through `Service<Call<Frame>>`, no deadline: what the call path
    /// costs, apart from deadlines.
    #[cfg(feature = "engine")]
    ChannelOrderCalls,
    /// `channel-session` with cancel notices on (`Sessions::cancels`): every written
    /// call's caller is watched.
    #[cfg(feature = "engine")]
    ChannelSessionCancel,
    /// `channel-order` with an INFO-level tracing subscriber installed.
    #[cfg(feature = "engine")]
    ChannelOrderTracing,
    /// `channel-order` with a DEBUG-level tracing subscriber installed.
    #[cfg(feature = "engine")]
    ChannelOrderTracingDebug,
    /// `channel-order` recording its metrics to metrics-exporter-prometheus's recorder.
    #[cfg(feature = "metrics")]
    ChannelOrderMetrics,
    /// The full `Channel` in order mode with the RESP2 codec of `examples/common`, each
    /// command packed on its caller's task (`Channel<Packed, Frame>`).
    #[cfg(feature = "redis")]
    ChannelRedis,
    /// `channel-redis` sending frames, encoded on the connection task
    /// (`Channel<Frame, Frame>`).
    #[cfg(feature = "redis")]
    ChannelRedisFrame,
    /// A `Pool` of two `channel-redis` connections (`.pool(2)`), each caller's handle
    /// balancing them with its own p2c.
    #[cfg(feature = "redis")]
    ChannelRedisPool2,
    /// The same with four connections.
    #[cfg(feature = "redis")]
    ChannelRedisPool4,
    /// Two `redis-rs-notimeout` connections, caller `i` on connection `i % 2`: the
    /// baseline for `channel-redis-pool-2`.
    #[cfg(feature = "redis")]
    RedisRsPool2,
    /// The same with four connections.
    #[cfg(feature = "redis")]
    RedisRsPool4,
    /// redis-rs's `MultiplexedConnection` with its default config (a 500 ms response
    /// timeout).
    #[cfg(feature = "redis")]
    RedisRs,
    /// redis-rs's `MultiplexedConnection` with no response timeout: the baseline of the
    /// Redis section.
    #[cfg(feature = "redis")]
    RedisRsNoTimeout,
}

impl Variant {
    /// Every variant, in the order rows are printed.
    pub const ALL: &[Variant] = &[
        Variant::HandOrder,
        Variant::WindowLoop,
        Variant::TokioTowerOrder,
        #[cfg(feature = "engine")]
        Variant::EngineOrder,
        #[cfg(feature = "engine")]
        Variant::ChannelOrder,
        #[cfg(feature = "engine")]
        Variant::ChannelPool1,
        #[cfg(feature = "engine")]
        Variant::ChannelPool2,
        #[cfg(feature = "engine")]
        Variant::ChannelPool4,
        #[cfg(feature = "engine")]
        Variant::ChannelOrder64k,
        #[cfg(feature = "engine")]
        Variant::ChannelOrderTimeout,
        #[cfg(feature = "engine")]
        Variant::ChannelOrderCalls,
        #[cfg(feature = "engine")]
        Variant::ChannelOrderDeadline,
        #[cfg(feature = "engine")]
        Variant::ChannelOrderTracing,
        #[cfg(feature = "engine")]
        Variant::ChannelOrderTracingDebug,
        #[cfg(feature = "metrics")]
        Variant::ChannelOrderMetrics,
        Variant::HandSession,
        Variant::TokioTowerSession,
        #[cfg(feature = "engine")]
        Variant::EngineSession,
        #[cfg(feature = "engine")]
        Variant::ChannelSession,
        #[cfg(feature = "engine")]
        Variant::ChannelSession64k,
        #[cfg(feature = "engine")]
        Variant::ChannelSessionCancel,
        #[cfg(feature = "redis")]
        Variant::ChannelRedis,
        #[cfg(feature = "redis")]
        Variant::ChannelRedisFrame,
        #[cfg(feature = "redis")]
        Variant::RedisRs,
        #[cfg(feature = "redis")]
        Variant::RedisRsNoTimeout,
        #[cfg(feature = "redis")]
        Variant::ChannelRedisPool2,
        #[cfg(feature = "redis")]
        Variant::RedisRsPool2,
        #[cfg(feature = "redis")]
        Variant::ChannelRedisPool4,
        #[cfg(feature = "redis")]
        Variant::RedisRsPool4,
    ];

    /// The name printed in the report and matched by `--filter`.
    pub fn name(self) -> &'static str {
        match self {
            Variant::HandOrder => "hand-order",
            Variant::HandSession => "hand-session",
            Variant::WindowLoop => "window-loop",
            Variant::TokioTowerOrder => "tokio-tower-order",
            Variant::TokioTowerSession => "tokio-tower-session",
            #[cfg(feature = "engine")]
            Variant::EngineOrder => "engine-order",
            #[cfg(feature = "engine")]
            Variant::EngineSession => "engine-session",
            #[cfg(feature = "engine")]
            Variant::ChannelOrder => "channel-order",
            #[cfg(feature = "engine")]
            Variant::ChannelSession => "channel-session",
            #[cfg(feature = "engine")]
            Variant::ChannelPool1 => "channel-pool-1",
            #[cfg(feature = "engine")]
            Variant::ChannelPool2 => "channel-pool-2",
            #[cfg(feature = "engine")]
            Variant::ChannelPool4 => "channel-pool-4",
            #[cfg(feature = "engine")]
            Variant::ChannelOrder64k => "channel-order-64k",
            #[cfg(feature = "engine")]
            Variant::ChannelSession64k => "channel-session-64k",
            #[cfg(feature = "engine")]
            Variant::ChannelSessionCancel => "channel-session+cancel",
            #[cfg(feature = "engine")]
            Variant::ChannelOrderTimeout => "channel-order+timeout",
            #[cfg(feature = "engine")]
            Variant::ChannelOrderDeadline => "channel-order+deadline",
            #[cfg(feature = "engine")]
            Variant::ChannelOrderCalls => "channel-order+calls",
            #[cfg(feature = "engine")]
            Variant::ChannelOrderTracing => "channel-order+tracing",
            #[cfg(feature = "engine")]
            Variant::ChannelOrderTracingDebug => "channel-order+tracing-debug",
            #[cfg(feature = "metrics")]
            Variant::ChannelOrderMetrics => "channel-order+metrics",
            #[cfg(feature = "redis")]
            Variant::ChannelRedis => "channel-redis",
            #[cfg(feature = "redis")]
            Variant::ChannelRedisFrame => "channel-redis-frame",
            #[cfg(feature = "redis")]
            Variant::RedisRs => "redis-rs",
            #[cfg(feature = "redis")]
            Variant::RedisRsNoTimeout => "redis-rs-notimeout",
            #[cfg(feature = "redis")]
            Variant::ChannelRedisPool2 => "channel-redis-pool-2",
            #[cfg(feature = "redis")]
            Variant::ChannelRedisPool4 => "channel-redis-pool-4",
            #[cfg(feature = "redis")]
            Variant::RedisRsPool2 => "redis-rs-pool-2",
            #[cfg(feature = "redis")]
            Variant::RedisRsPool4 => "redis-rs-pool-4",
        }
    }

    /// The part of the run this variant belongs to.
    pub fn group(self) -> Group {
        match self {
            #[cfg(feature = "engine")]
            Variant::ChannelOrderTimeout
            | Variant::ChannelOrderDeadline
            | Variant::ChannelOrderCalls
            | Variant::ChannelSessionCancel
            | Variant::ChannelOrderTracing
            | Variant::ChannelOrderTracingDebug => Group::Safety,
            #[cfg(feature = "metrics")]
            Variant::ChannelOrderMetrics => Group::Safety,
            #[cfg(feature = "redis")]
            Variant::ChannelRedis
            | Variant::ChannelRedisFrame
            | Variant::RedisRs
            | Variant::RedisRsNoTimeout
            | Variant::ChannelRedisPool2
            | Variant::ChannelRedisPool4
            | Variant::RedisRsPool2
            | Variant::RedisRsPool4 => Group::Redis,
            _ => Group::Matrix,
        }
    }

    /// The level of the tracing subscriber this variant runs with, if any (see
    /// [`CellRuntime::traced`](crate::runtime::CellRuntime::traced)).
    pub fn traced(self) -> Option<LevelFilter> {
        match self {
            #[cfg(feature = "engine")]
            Variant::ChannelOrderTracing => Some(LevelFilter::INFO),
            #[cfg(feature = "engine")]
            Variant::ChannelOrderTracingDebug => Some(LevelFilter::DEBUG),
            _ => None,
        }
    }

    /// How this variant matches replies.
    pub fn mode(self) -> Mode {
        match self {
            Variant::HandOrder | Variant::WindowLoop | Variant::TokioTowerOrder => Mode::Order,
            Variant::HandSession | Variant::TokioTowerSession => Mode::Session,
            #[cfg(feature = "engine")]
            Variant::EngineOrder
            | Variant::ChannelOrder
            | Variant::ChannelOrder64k
            | Variant::ChannelOrderTimeout
            | Variant::ChannelOrderDeadline
            | Variant::ChannelOrderCalls
            | Variant::ChannelOrderTracing
            | Variant::ChannelOrderTracingDebug
            | Variant::ChannelPool1
            | Variant::ChannelPool2
            | Variant::ChannelPool4 => Mode::Order,
            #[cfg(feature = "metrics")]
            Variant::ChannelOrderMetrics => Mode::Order,
            #[cfg(feature = "engine")]
            Variant::EngineSession
            | Variant::ChannelSession
            | Variant::ChannelSession64k
            | Variant::ChannelSessionCancel => Mode::Session,
            #[cfg(feature = "redis")]
            Variant::ChannelRedis
            | Variant::ChannelRedisFrame
            | Variant::RedisRs
            | Variant::RedisRsNoTimeout
            | Variant::ChannelRedisPool2
            | Variant::ChannelRedisPool4
            | Variant::RedisRsPool2
            | Variant::RedisRsPool4 => Mode::Redis,
        }
    }

    /// The client ratios are taken against: the hand-written client of the same mode, or
    /// redis-rs without its response timeout for the Redis rows.
    pub fn baseline(self) -> Variant {
        match self.mode() {
            Mode::Order => Variant::HandOrder,
            Mode::Session => Variant::HandSession,
            #[cfg(feature = "redis")]
            Mode::Redis => Variant::RedisRsNoTimeout,
        }
    }

    /// How many connections a pool variant spreads its calls over; `None` for a
    /// single-connection client.
    pub fn pool_size(self) -> Option<usize> {
        match self {
            #[cfg(feature = "engine")]
            Variant::ChannelPool1 => Some(1),
            #[cfg(feature = "engine")]
            Variant::ChannelPool2 => Some(2),
            #[cfg(feature = "engine")]
            Variant::ChannelPool4 => Some(4),
            #[cfg(feature = "redis")]
            Variant::ChannelRedisPool2 | Variant::RedisRsPool2 => Some(2),
            #[cfg(feature = "redis")]
            Variant::ChannelRedisPool4 | Variant::RedisRsPool4 => Some(4),
            _ => None,
        }
    }

    /// Whether the heap per in-flight request is measured for this variant: not for the
    /// window loop, which keeps no state per request beyond its fixed window, nor for a
    /// pool of more than one connection, whose calls the `hold` server (which answers a
    /// connection's held calls when that connection sends the release frame) would
    /// never all answer.
    pub fn measures_inflight(self) -> bool {
        self != Variant::WindowLoop && self.pool_size().is_none_or(|k| k == 1)
    }

    /// Connects to the echo server at `addr`, builds this variant's client over the
    /// connection and runs `experiment` with it, its socket operations counted by the
    /// benchmark's counting wrapper, or, for channels built with the crate's own
    /// connector, by the channel's counters. (The Redis variants run in `crate::redis`
    /// instead.)
    pub async fn run<E: Experiment>(
        self,
        addr: SocketAddr,
        experiment: E,
    ) -> Result<E::Output, BoxError> {
        #[cfg(feature = "engine")]
        use crate::engine::{self, ChannelMeter, PoolMeter};
        // The clients over a socket of the benchmark's, and those that make their own
        // connection (lazily, on the first call) over the benchmark's connector.
        let counted = &CountedSockets;
        let stream = async || -> Result<TcpStream, BoxError> {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        };
        match self {
            Variant::HandOrder => {
                experiment
                    .run(hand::Order::spawn(stream().await?), counted)
                    .await
            }
            Variant::HandSession => {
                experiment
                    .run(hand::Session::spawn(stream().await?), counted)
                    .await
            }
            Variant::WindowLoop => experiment.window_loop(stream().await?).await,
            Variant::TokioTowerOrder => {
                experiment
                    .run(tokio_tower::order(stream().await?), counted)
                    .await
            }
            Variant::TokioTowerSession => {
                experiment
                    .run(tokio_tower::session(stream().await?), counted)
                    .await
            }
            #[cfg(feature = "engine")]
            Variant::EngineOrder => {
                experiment
                    .run(engine::order(stream().await?), counted)
                    .await
            }
            #[cfg(feature = "engine")]
            Variant::EngineSession => {
                experiment
                    .run(engine::session(stream().await?), counted)
                    .await
            }
            #[cfg(feature = "engine")]
            Variant::ChannelOrder64k => {
                experiment
                    .run(engine::channel_order_64k(addr), counted)
                    .await
            }
            #[cfg(feature = "engine")]
            Variant::ChannelSession64k => {
                experiment
                    .run(engine::channel_session_64k(addr), counted)
                    .await
            }
            // The builder-default channels: the channel's own counters.
            // The subscriber of the `+tracing` rows is the runtime's
            // (`CellRuntime::traced`); the client is plain.
            #[cfg(feature = "engine")]
            Variant::ChannelOrder
            | Variant::ChannelOrderTracing
            | Variant::ChannelOrderTracingDebug => {
                let channel = engine::channel_order(addr);
                let meter = ChannelMeter(channel.clone());
                experiment.run(channel, &meter).await
            }
            // The pools: their connections' counters, summed.
            #[cfg(feature = "engine")]
            Variant::ChannelPool1 | Variant::ChannelPool2 | Variant::ChannelPool4 => {
                let size = self.pool_size().expect("a pool variant");
                let pool = engine::pool_order(addr, size);
                let meter = PoolMeter(pool.clone());
                experiment.run(pool, &meter).await
            }
            #[cfg(feature = "engine")]
            Variant::ChannelSession => {
                let channel = engine::channel_session(addr);
                let meter = ChannelMeter(channel.clone());
                experiment.run(channel, &meter).await
            }
            #[cfg(feature = "engine")]
            Variant::ChannelSessionCancel => {
                let channel = engine::channel_session_cancel(addr);
                let meter = ChannelMeter(channel.clone());
                experiment.run(channel, &meter).await
            }
            #[cfg(feature = "engine")]
            Variant::ChannelOrderCalls => {
                let channel = engine::channel_order(addr);
                let meter = ChannelMeter(channel.clone());
                experiment.run(engine::calls(channel), &meter).await
            }
            #[cfg(feature = "engine")]
            Variant::ChannelOrderTimeout => {
                let channel = engine::channel_order(addr);
                let meter = ChannelMeter(channel.clone());
                experiment.run(engine::timeout(channel), &meter).await
            }
            #[cfg(feature = "engine")]
            Variant::ChannelOrderDeadline => {
                let channel = engine::channel_order(addr);
                let meter = ChannelMeter(channel.clone());
                experiment.run(engine::deadline(channel), &meter).await
            }
            // The recorder is this channel's alone, and checked for the latencies after.
            #[cfg(feature = "metrics")]
            Variant::ChannelOrderMetrics => {
                let (channel, recorded) = engine::channel_order_metrics(addr);
                let meter = ChannelMeter(channel.clone());
                let output = experiment.run(channel, &meter).await?;
                recorded.check()?;
                Ok(output)
            }
            #[cfg(feature = "redis")]
            Variant::ChannelRedis
            | Variant::ChannelRedisFrame
            | Variant::RedisRs
            | Variant::RedisRsNoTimeout
            | Variant::ChannelRedisPool2
            | Variant::ChannelRedisPool4
            | Variant::RedisRsPool2
            | Variant::RedisRsPool4 => {
                Err(format!("{self} is not an echo client: it runs in the Redis section").into())
            }
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Something to do with a client, whatever its type.
pub trait Experiment {
    /// What the experiment finds.
    type Output;

    /// Runs the experiment with `client`, whose socket operations `meter` counts.
    async fn run<C: Client>(self, client: C, meter: &impl Meter) -> Result<Self::Output, BoxError>;

    /// Runs the experiment with the window loop ([`window`](crate::window)) over
    /// `stream`.
    async fn window_loop(self, stream: TcpStream) -> Result<Self::Output, BoxError>;
}

impl Experiment for Load {
    type Output = load::Outcome;

    async fn run<C: Client>(
        self,
        client: C,
        meter: &impl Meter,
    ) -> Result<load::Outcome, BoxError> {
        load::closed_loop(client, self, meter).await
    }

    async fn window_loop(self, stream: TcpStream) -> Result<load::Outcome, BoxError> {
        crate::window::run(stream, self).await
    }
}

/// Measures the heap held per request with this many requests in flight.
#[derive(Debug, Clone, Copy)]
pub struct InFlight(pub usize);

impl Experiment for InFlight {
    type Output = f64;

    async fn run<C: Client>(self, client: C, meter: &impl Meter) -> Result<f64, BoxError> {
        load::bytes_in_flight(client, self.0, meter).await
    }

    async fn window_loop(self, _: TcpStream) -> Result<f64, BoxError> {
        Err("the window loop keeps no state per request".into())
    }
}
