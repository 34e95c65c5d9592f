//! The clients under test, and how each is built over a fresh connection.

use std::fmt;
use std::net::SocketAddr;

use tokio::net::TcpStream;
use tower::BoxError;

use crate::load::{self, Client, Load};
use crate::server::ServerMode;
use crate::{hand, tokio_tower};

/// How replies are matched to requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// In order (pipelining), against the `order` server.
    Order,
    /// By session id (multiplexing), against the `reverse` server.
    Session,
}

impl Mode {
    /// The server this mode runs against.
    pub fn server(self) -> ServerMode {
        match self {
            Mode::Order => ServerMode::Order,
            Mode::Session => ServerMode::Reverse,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Order => "order",
            Mode::Session => "session",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One client under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// [`hand::Order`]: the baseline for order mode.
    HandOrder,
    /// [`hand::Session`]: the baseline for session mode.
    HandSession,
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
    /// The full reconnecting `Channel` (builder, lazy connect) in order mode.
    #[cfg(feature = "engine")]
    ChannelOrder,
    /// The full reconnecting `Channel` in session mode.
    #[cfg(feature = "engine")]
    ChannelSession,
}

impl Variant {
    /// Every variant, in the order rows are printed.
    pub const ALL: &[Variant] = &[
        Variant::HandOrder,
        Variant::TokioTowerOrder,
        #[cfg(feature = "engine")]
        Variant::EngineOrder,
        #[cfg(feature = "engine")]
        Variant::ChannelOrder,
        Variant::HandSession,
        Variant::TokioTowerSession,
        #[cfg(feature = "engine")]
        Variant::EngineSession,
        #[cfg(feature = "engine")]
        Variant::ChannelSession,
    ];

    /// The name printed in the report and matched by `--filter`.
    pub fn name(self) -> &'static str {
        match self {
            Variant::HandOrder => "hand-order",
            Variant::HandSession => "hand-session",
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
        }
    }

    /// How this variant matches replies.
    pub fn mode(self) -> Mode {
        match self {
            Variant::HandOrder | Variant::TokioTowerOrder => Mode::Order,
            Variant::HandSession | Variant::TokioTowerSession => Mode::Session,
            #[cfg(feature = "engine")]
            Variant::EngineOrder | Variant::ChannelOrder => Mode::Order,
            #[cfg(feature = "engine")]
            Variant::EngineSession | Variant::ChannelSession => Mode::Session,
        }
    }

    /// The hand-written client of the same mode, which ratios are taken against.
    pub fn baseline(self) -> Variant {
        match self.mode() {
            Mode::Order => Variant::HandOrder,
            Mode::Session => Variant::HandSession,
        }
    }

    /// Connects to `addr`, builds this variant's client over the connection and runs
    /// `experiment` with it.
    pub async fn run<E: Experiment>(
        self,
        addr: SocketAddr,
        experiment: E,
    ) -> Result<E::Output, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        match self {
            Variant::HandOrder => experiment.run(hand::Order::spawn(stream)).await,
            Variant::HandSession => experiment.run(hand::Session::spawn(stream)).await,
            Variant::TokioTowerOrder => experiment.run(tokio_tower::order(stream)).await,
            Variant::TokioTowerSession => experiment.run(tokio_tower::session(stream)).await,
            #[cfg(feature = "engine")]
            Variant::EngineOrder => experiment.run(crate::engine::order(stream)).await,
            #[cfg(feature = "engine")]
            Variant::EngineSession => experiment.run(crate::engine::session(stream)).await,
            // The full channel makes its own connection (lazily, on the first call).
            #[cfg(feature = "engine")]
            Variant::ChannelOrder => experiment.run(crate::engine::channel_order(addr)).await,
            #[cfg(feature = "engine")]
            Variant::ChannelSession => experiment.run(crate::engine::channel_session(addr)).await,
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

    /// Runs the experiment with `client`.
    async fn run<C: Client>(self, client: C) -> Result<Self::Output, BoxError>;
}

impl Experiment for Load {
    type Output = load::Outcome;

    async fn run<C: Client>(self, client: C) -> Result<load::Outcome, BoxError> {
        load::closed_loop(client, self).await
    }
}

/// Measures the heap held per request with this many requests in flight.
#[derive(Debug, Clone, Copy)]
pub struct InFlight(pub usize);

impl Experiment for InFlight {
    type Output = f64;

    async fn run<C: Client>(self, client: C) -> Result<f64, BoxError> {
        load::bytes_in_flight(client, self.0).await
    }
}
