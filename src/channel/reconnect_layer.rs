//! The reconnect layer as a [`tower::Layer`]: applied to a connector, it gives a channel.

use std::fmt;

use tower::Layer;

use super::{Channel, Connection};
use crate::config::Config;
use crate::mux::Mode;
use crate::reconnect::{Hosts, Options, Task};
use crate::shared::State;
use crate::transport::Connector;

/// A [`tower::Layer`] that turns a [`Connector`] (a `tower::Service<Endpoint>` returning
/// a [`Transport`](crate::Transport)) into a reconnecting [`Channel`]; made by
/// [`Builder::into_layer`](crate::Builder::into_layer).
///
/// Each `layer` call spawns a connection task, so it must run inside a tokio runtime.
pub struct ReconnectLayer<M, Req, Resp> {
    hosts: Hosts,
    config: Config,
    opts: Options<Req, Resp>,
    mode: M,
}

impl<M, Req, Resp> ReconnectLayer<M, Req, Resp> {
    pub(crate) fn new(hosts: Hosts, config: Config, opts: Options<Req, Resp>, mode: M) -> Self {
        ReconnectLayer {
            hosts,
            config,
            opts,
            mode,
        }
    }
}

impl<M: Clone, Req, Resp> ReconnectLayer<M, Req, Resp> {
    /// This layer, its channels taking turns at connecting (a pool's).
    #[cfg(feature = "pool")]
    pub(crate) fn with_turns(&self, turns: crate::reconnect::Turns) -> Self {
        let mut layer = self.clone();
        layer.opts.turns = Some(turns);
        layer
    }

    /// The deadline its channels give a call without one
    /// ([`Config::call_timeout`](crate::Config::call_timeout)).
    #[cfg(feature = "pool")]
    pub(crate) fn call_timeout(&self) -> Option<std::time::Duration> {
        self.config.call_timeout
    }

    /// This layer, its channels connecting to `endpoint` alone (no backups): a pool's
    /// connections to a discovered endpoint.
    #[cfg(feature = "pool")]
    pub(crate) fn with_host(&self, endpoint: crate::reconnect::Endpoint) -> Self {
        let mut layer = self.clone();
        layer.hosts = Hosts::new(endpoint);
        layer
    }
}

impl<M: Clone, Req, Resp> Clone for ReconnectLayer<M, Req, Resp> {
    fn clone(&self) -> Self {
        ReconnectLayer {
            hosts: self.hosts.clone(),
            config: self.config.clone(),
            opts: self.opts.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<M: fmt::Debug, Req, Resp> fmt::Debug for ReconnectLayer<M, Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectLayer")
            .field("hosts", &self.hosts)
            .field("config", &self.config)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<M, Req, Resp> ReconnectLayer<M, Req, Resp>
where
    M: Mode<Req, Resp> + Clone,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// A channel over `connector` and its connection task, for the caller to run.
    pub fn pair<K>(&self, connector: K) -> (Channel<Req, Resp>, Connection)
    where
        K: Connector<Req, Resp>,
    {
        let (channel, engine, control) = Channel::plumbing(
            &self.config,
            State::Idle,
            Some(&self.hosts.current),
            self.mode.cancels(),
        );
        // In the task's span: an eager channel starts connecting here.
        let worker = channel.shared.span.in_scope(|| {
            Task::new(
                engine,
                connector,
                self.mode.clone(),
                self.opts.clone(),
                self.hosts.clone(),
                control,
            )
        });
        let connection = Connection::new(worker, channel.shared.clone());
        (channel, connection)
    }
}

impl<K, M, Req, Resp> Layer<K> for ReconnectLayer<M, Req, Resp>
where
    K: Connector<Req, Resp>,
    M: Mode<Req, Resp> + Clone,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Service = Channel<Req, Resp>;

    fn layer(&self, connector: K) -> Channel<Req, Resp> {
        let (channel, connection) = self.pair(connector);
        channel.start(connection)
    }
}
