//! This crate's engine: a `socketchannel::Channel` over an existing transport, in order
//! mode and in session mode.
//!
//! Built with the `engine` feature (on by default; see `Cargo.toml`).
//!
//! # `channel-order` / `channel-session`
//!
//! Rows for the full `Channel` (built by its builder, with reconnect) belong here too:
//! add two constructors next to [`order`] and [`session`] and two variants in `main.rs`
//! (marked there). They use the same API, so the harness needs nothing else.

use socketchannel::{Channel, Order, Plain, Protocol, Session, Sessions};
use tokio::net::TcpStream;

use crate::codec::{Frame, transport};

/// The engine in order mode over `stream`.
pub fn order(stream: TcpStream) -> Channel<Frame, Frame> {
    Channel::new(transport(stream), Order::new(Plain))
}

/// The engine in session mode over `stream`: the channel stamps ids into [`Frame::id`].
pub fn session(stream: TcpStream) -> Channel<Frame, Frame> {
    Channel::new(transport(stream), Session::new(FrameIds))
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
