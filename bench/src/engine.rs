//! This crate's channels, in order mode and in session mode: the engine over an
//! existing transport (`engine-*` rows), the full reconnecting `Channel` as a user
//! builds it, with the builder's defaults (`channel-order`, `channel-session`:
//! `Channel::builder().host(..).order(codec, protocol)`, the built-in TCP connector), the
//! same over the benchmark's own connector with 64 KiB buffers (`channel-order-64k`,
//! `channel-session-64k`), and the builder-default channel behind tower's `Timeout` (`channel-order+timeout`)
//! with the engine's own deadlines (`channel-order+deadline`, beside the call path
//! without them, `channel-order+calls`), with cancel notices (`channel-session+cancel`)
//! and recording its metrics (`channel-order+metrics`), and the pool of K such
//! channels, built the same way with `.pool(k)` (`channel-pool-K`).
//!
//! Built with the `engine` feature (on by default; see `Cargo.toml`); the metrics row
//! with the `metrics` feature (on by default too).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use socketchannel::{
    Call, Calls, Channel, Endpoint, Mode, Order, Plain, Pool, Protocol, ReplyFuture, Session,
    Sessions,
};
use tokio::net::TcpStream;
use tower::timeout::Timeout;
use tower::{BoxError, Service, ServiceBuilder};

use crate::codec::{Frame, FrameCodec, transport};
use crate::load::Client;
use crate::measure::{Io, Meter};

/// The socket operations of a channel built with the crate's own connector, whose socket
/// the benchmark cannot wrap: from the channel's own counters ([`Channel::counters`]:
/// `writes`, `reads`, `bytes_written`), which its `Metered` IO keeps. Like the
/// benchmark's counting wrapper, they count the reads and writes that moved bytes.
#[derive(Debug)]
pub struct ChannelMeter<Req, Resp>(pub Channel<Req, Resp>);

impl<Req: Send + 'static, Resp: Send + 'static> Meter for ChannelMeter<Req, Resp> {
    async fn io(&self) -> Io {
        let counters = self.0.counters();
        Io {
            writes: Some(counters.writes),
            reads: Some(counters.reads),
            written_bytes: Some(counters.bytes_written),
            ..Io::default()
        }
    }
}

/// The socket operations of a pool built with the crate's own connector: its
/// connections' counters summed ([`Pool::counters`]), as [`ChannelMeter`] counts one.
pub struct PoolMeter<Req, Resp>(pub Pool<Req, Resp>);

// `Pool`'s `Debug` asks for `Send + 'static` requests and replies, which a derive
// would not.
impl<Req: Send + 'static, Resp: Send + 'static> std::fmt::Debug for PoolMeter<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PoolMeter").field(&self.0).finish()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Meter for PoolMeter<Req, Resp> {
    async fn io(&self) -> Io {
        let counters = self.0.counters();
        Io {
            writes: Some(counters.writes),
            reads: Some(counters.reads),
            written_bytes: Some(counters.bytes_written),
            ..Io::default()
        }
    }
}

/// The engine in order mode over `stream`.
pub fn order(stream: TcpStream) -> Channel<Frame, Frame> {
    Channel::new(transport(stream), Order::new(Plain))
}

/// The engine in session mode over `stream`: the channel stamps ids into [`Frame::id`].
pub fn session(stream: TcpStream) -> Channel<Frame, Frame> {
    Channel::new(transport(stream), Session::new(FrameIds::default()))
}

/// The full channel in order mode as the documentation builds it: the builder's
/// defaults, its built-in TCP connector (`TCP_NODELAY` on, `Framed` with its default
/// buffers), lazy connect, reconnect.
pub fn channel_order(addr: SocketAddr) -> Channel<Frame, Frame> {
    Channel::builder()
        .host(addr.to_string())
        .order(FrameCodec, Plain)
        .expect("a socket address is a valid endpoint")
}

/// A pool of `size` channels built as [`channel_order`] builds one (the builder's
/// defaults, its built-in TCP connector), through `.pool(size)`. Each caller drives its
/// own clone of the handle as a `tower::Service`, so each has its own p2c balance
/// (none for one connection).
pub fn pool_order(addr: SocketAddr, size: usize) -> Pool<Frame, Frame> {
    Channel::builder()
        .host(addr.to_string())
        .pool(size)
        .order(FrameCodec, Plain)
        .expect("a socket address is a valid endpoint")
}

/// The full channel in session mode as the documentation builds it.
pub fn channel_session(addr: SocketAddr) -> Channel<Frame, Frame> {
    Channel::builder()
        .host(addr.to_string())
        .session(FrameCodec, FrameIds::default())
        .expect("a socket address is a valid endpoint")
}

/// The full channel in order mode over the benchmark's connector: the counted socket,
/// framed with 64 KiB buffers as the hand-written clients' (`codec::transport`).
pub fn channel_order_64k(addr: SocketAddr) -> Channel<Frame, Frame> {
    channel(addr, Order::new(Plain))
}

/// `channel_order_64k` in session mode.
pub fn channel_session_64k(addr: SocketAddr) -> Channel<Frame, Frame> {
    channel(addr, Session::new(FrameIds::default()))
}

/// `channel` behind `tower::timeout::Timeout` with a 5-second limit, built the usual
/// way (`ServiceBuilder::new().timeout(..).service(channel)`). `Timeout` is `Clone`
/// because the channel is, so each caller gets its own clone, each call its own timer.
pub fn timeout(channel: Channel<Frame, Frame>) -> Timeout<Channel<Frame, Frame>> {
    ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .service(channel)
}

/// `channel` with a deadline on every call, drawn from 50-500 ms (uniform, by a
/// per-thread xorshift), kept by the channel's engine ([`Call::timeout`]): one heap and
/// one timer for every call instead of a timer per call. Calls go through
/// `Service<Call<Frame>>` ([`Channel::calls`]) and the one-frame reply is unwrapped.
pub fn deadline(channel: Channel<Frame, Frame>) -> impl Client {
    through_calls(channel, |frame| Call::new(frame).timeout(draw_deadline()))
}

/// `channel` through `Service<Call<Frame>>` with no deadline: the call path's own
/// cost, beside [`deadline`].
pub fn calls(channel: Channel<Frame, Frame>) -> impl Client {
    through_calls(channel, Call::new)
}

/// `channel` through `Service<Call<Frame>>`, each frame made a call by `to_call` (an
/// inlined closure, as a user's would be) and its one-frame reply taken out
/// ([`Reply::into_one`](socketchannel::Reply::into_one)), as a handler that awaits its call does. (Through tower's
/// `map_request`/`map_response` the reply future would be wrapped twice more, in
/// `MapOk` and `IntoFuture`: about 60 instructions per call that are the glue's, not the
/// channel's.)
fn through_calls(
    channel: Channel<Frame, Frame>,
    to_call: impl Fn(Frame) -> Call<Frame> + Clone + Send + 'static,
) -> impl Client {
    ThroughCalls {
        calls: channel.calls(),
        to_call,
    }
}

/// See [`through_calls`].
#[derive(Clone)]
struct ThroughCalls<F> {
    calls: Calls<Frame, Frame>,
    to_call: F,
}

impl<F: Fn(Frame) -> Call<Frame>> Service<Frame> for ThroughCalls<F> {
    type Response = Frame;
    type Error = BoxError;
    type Future = OneFrame;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.calls.poll_ready(cx)
    }

    fn call(&mut self, frame: Frame) -> OneFrame {
        OneFrame(self.calls.call((self.to_call)(frame)))
    }
}

/// A call's reply future, resolving to the frame of its one-frame reply.
struct OneFrame(ReplyFuture<Frame>);

impl Future for OneFrame {
    type Output = Result<Frame, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let reply = std::task::ready!(Pin::new(&mut self.0).poll(cx))?;
        Poll::Ready(
            reply
                .into_one()
                .ok_or_else(|| "a plain call has a one-frame reply".into()),
        )
    }
}

/// A deadline from 50 to 500 ms, uniform.
fn draw_deadline() -> Duration {
    thread_local! {
        static STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0x9e37_79b9_7f4a_7c15) };
    }
    let x = STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    });
    Duration::from_millis(50 + x % 451)
}

/// `channel_order` with its metrics recorded by metrics-exporter-prometheus's recorder,
/// as `PrometheusBuilder::new().install_recorder()` would make it, but set as this
/// thread's local recorder while the channel is built (its handles are registered then,
/// once) instead of as the global one: no other row's channel ever records, and each run
/// of the row gets a fresh recorder. Its upkeep (what `install` would spawn: draining the
/// latency samples into the summary) runs on the cell's runtime, so its CPU counts; the
/// cell's runtime ending stops it.
///
/// The upkeep runs every 100 ms rather than the exporter's default 5 s, for one reason:
/// the first drain into an empty summary (metrics-exporter-prometheus 0.18,
/// `RollingSummary::add`) keeps only the samples newer than the first one it reads, and
/// it reads the newest first, so every other sample of that drain makes a summary of its
/// own (an allocation) and is dropped. A long-running process pays that once; a 2.5 s
/// cell with a fresh recorder would pay it for a second's worth of calls inside the
/// measured window. Every 100 ms, it falls in the warm-up.
#[cfg(feature = "metrics")]
pub fn channel_order_metrics(addr: SocketAddr) -> (Channel<Frame, Frame>, Recorded) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let channel = metrics::with_local_recorder(&recorder, || channel_order(addr));
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    (channel, Recorded { handle })
}

/// The recorder of a `channel-order+metrics` channel, to check that it recorded.
#[cfg(feature = "metrics")]
#[derive(Debug)]
pub struct Recorded {
    handle: metrics_exporter_prometheus::PrometheusHandle,
}

#[cfg(feature = "metrics")]
impl Recorded {
    /// Fails unless the call latency histogram has samples (and as many calls resolved).
    pub fn check(&self) -> Result<u64, tower::BoxError> {
        self.handle.run_upkeep();
        let text = self.handle.render();
        let value = |name: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        let samples = value("socketchannel_call_duration_seconds_count");
        let calls = value("socketchannel_calls_total");
        if samples == 0 || samples > calls {
            return Err(format!(
                "channel-order+metrics: {samples} latency samples for {calls} calls:\n{text}"
            )
            .into());
        }
        Ok(samples)
    }
}

/// `channel_session` whose protocol sends cancel notices: the engine watches every
/// written call's caller. No caller leaves in the bench, so none is written: the row is
/// what watching costs.
pub fn channel_session_cancel(addr: SocketAddr) -> Channel<Frame, Frame> {
    Channel::builder()
        .host(addr.to_string())
        .session(FrameCodec, FrameIds { cancels: true })
        .expect("a socket address is a valid endpoint")
}

/// The full channel over the benchmark's connector (`codec::transport`: the counted
/// socket, 64 KiB buffers).
fn channel<M: Mode<Frame, Frame> + Clone>(addr: SocketAddr, mode: M) -> Channel<Frame, Frame> {
    let connect = tower::service_fn(|endpoint: Endpoint| async move {
        let stream = TcpStream::connect((endpoint.host(), endpoint.port())).await?;
        stream.set_nodelay(true)?;
        Ok::<_, io::Error>(transport(stream))
    });
    Channel::builder()
        .host(addr.to_string())
        .connector(connect, mode)
        .expect("a socket address is a valid endpoint")
}

/// Where session ids live in a [`Frame`]: its header's id field. With `cancels`, a
/// written call whose caller left gets a cancel notice: an empty frame under its id.
#[derive(Debug, Clone, Copy, Default)]
struct FrameIds {
    cancels: bool,
}

impl Protocol<Frame, Frame> for FrameIds {}

impl Sessions<Frame, Frame> for FrameIds {
    type Id = u32;

    fn stamp(&self, request: &mut Frame, id: u32) {
        request.id = u64::from(id);
    }

    fn session(&self, reply: &Frame) -> Option<u32> {
        u32::try_from(reply.id).ok()
    }

    fn cancels(&self) -> bool {
        self.cancels
    }

    fn cancel(&self, id: u32) -> Option<Frame> {
        Some(Frame {
            id: u64::from(id),
            payload: Default::default(),
        })
    }
}
