//! This crate's channels, in order mode and in session mode: the engine over an
//! existing transport (`engine-*` rows), and the full reconnecting `Channel` made by its
//! builder (`channel-*` rows), also behind tower's `Timeout` (`channel-order+timeout`).
//!
//! Built with the `engine` feature (on by default; see `Cargo.toml`).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socketchannel::{Channel, Endpoint, Mode, Order, Plain, Protocol, Session, Sessions};
use tokio::net::TcpStream;
use tower::ServiceBuilder;
use tower::timeout::Timeout;

use crate::codec::{Frame, transport};

/// The engine in order mode over `stream`.
pub fn order(stream: TcpStream) -> Channel<Frame, Frame> {
    Channel::new(transport(stream), Order::new(Plain))
}

/// The engine in session mode over `stream`: the channel stamps ids into [`Frame::id`].
pub fn session(stream: TcpStream) -> Channel<Frame, Frame> {
    Channel::new(transport(stream), Session::new(FrameIds))
}

/// The full channel in order mode: lazy connect through its builder, with reconnect,
/// handshake-free, over the same counted transport.
pub fn channel_order(addr: SocketAddr) -> Channel<Frame, Frame> {
    channel(addr, Order::new(Plain))
}

/// `channel_order` behind `tower::timeout::Timeout` with a 5-second limit, built the
/// usual way (`ServiceBuilder::new().timeout(..).service(channel)`). `Timeout` is `Clone`
/// because the channel is, so each caller gets its own clone, each call its own timer.
pub fn channel_order_timeout(addr: SocketAddr) -> Timeout<Channel<Frame, Frame>> {
    ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .service(channel_order(addr))
}

/// The full channel in session mode.
pub fn channel_session(addr: SocketAddr) -> Channel<Frame, Frame> {
    channel(addr, Session::new(FrameIds))
}

fn channel<M: Mode<Frame, Frame> + Clone>(addr: SocketAddr, mode: M) -> Channel<Frame, Frame> {
    let connect = tower::service_fn(|endpoint: Endpoint| async move {
        let stream = TcpStream::connect((endpoint.host(), endpoint.port())).await?;
        stream.set_nodelay(true)?;
        Ok::<_, io::Error>(transport(stream))
    });
    Channel::builder()
        .host(&addr.to_string())
        .connector(connect, mode)
        .expect("a socket address is a valid endpoint")
}

/// Where session ids live in a [`Frame`]: its header's id field.
#[derive(Debug, Clone, Copy)]
struct FrameIds;

impl Protocol<Frame, Frame> for FrameIds {}

impl Sessions<Frame, Frame> for FrameIds {
    type Id = u32;

    fn stamp(&self, request: &mut Frame, id: u32) {
        request.id = u64::from(id);
    }

    fn session(&self, reply: &Frame) -> Option<u32> {
        u32::try_from(reply.id).ok()
    }
}
