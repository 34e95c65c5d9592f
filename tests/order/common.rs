//! What the tests share: the channel over a fresh connection, the lost connection's
//! kind, the bound on a step.

use std::time::Duration;

use socketchannel::{Channel, Config, ConnectionErrorKind, Error, Order};

use crate::support;
use crate::support::codec::{Msg, TestProto};
use crate::support::server::TestServer;

pub(crate) type Chan = Channel<Msg, Msg>;

/// A channel in order mode over a fresh connection to `server`.
pub(crate) async fn channel(server: &TestServer, config: Config) -> Chan {
    Channel::with_config(
        support::connect(server.addr()).await,
        Order::new(TestProto),
        config,
    )
}

/// The kind of the lost connection behind `err`.
pub(crate) fn why(err: &Error) -> ConnectionErrorKind {
    err.connection_error()
        .unwrap_or_else(|| panic!("no connection error behind {err:?}"))
        .kind()
}

pub(crate) const SHORT: Duration = Duration::from_secs(2);
