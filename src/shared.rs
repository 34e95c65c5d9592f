//! State shared by a channel's handles and its connection task.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, watch};

use crate::mux::Control;
use crate::stats::Stats;

/// Where a channel's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Opening a connection.
    Connecting,
    /// Connected; the handshake runs.
    Handshaking,
    /// Connected: calls are written.
    Ready,
    /// Every host failed; waiting before the next attempt.
    BackingOff,
    /// Not connected and not trying: closed, or (without reconnect) the connection ended.
    Closed,
}

pub(crate) struct Shared<Resp> {
    pub(crate) stats: Stats,
    /// Set once the channel takes no more calls: closed, or its task ended.
    closed: AtomicBool,
    pub(crate) control: mpsc::UnboundedSender<Control>,
    /// The push receiver, until a handle takes it.
    pub(crate) pushes: Mutex<Option<mpsc::Receiver<Resp>>>,
    pub(crate) state: watch::Sender<State>,
}

impl<Resp> Shared<Resp> {
    pub(crate) fn new(
        control: mpsc::UnboundedSender<Control>,
        pushes: mpsc::Receiver<Resp>,
    ) -> Self {
        Shared {
            stats: Stats::default(),
            closed: AtomicBool::new(false),
            control,
            pushes: Mutex::new(Some(pushes)),
            state: watch::Sender::new(State::Connecting),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Takes no more calls from now on.
    pub(crate) fn set_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn set_state(&self, state: State) {
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }
}
