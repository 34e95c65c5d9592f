//! A tonic gRPC service whose handlers call a session-mode [`Channel`]: every gRPC call,
//! from every client, is multiplexed over one backend connection by session id.
//!
//! * [`pb`]: the `kv.Kv` service of `proto/kv.proto` (`Get`, `Set`), compiled by
//!   `build.rs` with `protoc`.
//! * [`backend`]: the session-mode protocol the handlers speak, and an in-process
//!   server of it.
//! * [`KvService`]: the handlers. Each passes the gRPC deadline (the `grpc-timeout`
//!   header) on as the backend call's deadline.
//! * [`code`] and [`status`]: a failed call as a gRPC [`Status`], by the table of the
//!   `socketchannel` crate docs ("What to do with an error"): `UNAVAILABLE` only for a
//!   call that was *not sent*, never for one that may have executed.
//! * [`serve`]: the gRPC server on a listener.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socketchannel::{BoxError, Call, Channel, ConnectionErrorKind, Error, InvalidEndpoint, Kind};
use tokio::net::TcpListener;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

pub mod backend;

use backend::{BackendError, Frame, op};

/// The generated messages, server and client.
pub mod pb {
    tonic::include_proto!("kv");
}

/// The one channel to the backend, shared by every handler.
pub type KvChannel = Channel<Frame, Frame>;

/// A reconnecting session-mode channel to the backend at `addr`; it connects on first
/// use.
///
/// # Errors
///
/// Never for a socket address (the builder checks the host).
pub fn connect(addr: SocketAddr) -> Result<KvChannel, InvalidEndpoint> {
    Channel::builder()
        .host(addr.to_string())
        .connect_timeout(Duration::from_secs(2))
        .session(backend::Codec, backend::Kv)
}

/// The `kv.Kv` handlers over one [`KvChannel`] (a clone of a `Channel` is cheap: each
/// gRPC connection's service shares the one backend connection).
#[derive(Debug, Clone)]
pub struct KvService {
    channel: KvChannel,
}

impl KvService {
    /// Handlers calling the backend through `channel`.
    pub fn new(channel: KvChannel) -> Self {
        KvService { channel }
    }

    /// One backend call within the gRPC deadline, if the client set one: it becomes the
    /// call's own deadline ([`Call::timeout`]), which the channel keeps. A call still
    /// queued when it passes fails *not sent* and is never written; a written one fails
    /// *may have executed*; both are `DEADLINE_EXCEEDED`.
    async fn call(&self, metadata: &MetadataMap, req: Frame) -> Result<Frame, Status> {
        let call = match grpc_timeout(metadata) {
            Some(timeout) => Call::new(req).timeout(timeout),
            None => Call::new(req),
        };
        self.channel.request(call).await.map_err(status)
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetReply>, Status> {
        let reply = self
            .call(
                request.metadata(),
                Frame::get(request.get_ref().key.clone()),
            )
            .await?;
        match reply.op {
            op::VALUE => Ok(Response::new(pb::GetReply { value: reply.value })),
            op::MISSING => Err(Status::not_found(format!(
                "no such key: {:?}",
                request.get_ref().key
            ))),
            _ => Err(unexpected(&reply)),
        }
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetReply>, Status> {
        let metadata = request.metadata().clone();
        let pb::SetRequest { key, value } = request.into_inner();
        let reply = self.call(&metadata, Frame::set(key, value)).await?;
        match reply.op {
            op::STORED => Ok(Response::new(pb::SetReply {})),
            _ => Err(unexpected(&reply)),
        }
    }
}

/// A reply that does not answer the request: the backend executed something.
fn unexpected(reply: &Frame) -> Status {
    Status::internal(format!(
        "unexpected reply from the backend: op 0x{:02x}",
        reply.op
    ))
}

/// The gRPC code for a failed call, by the crate docs' table ("What to do with an
/// error"). `UNAVAILABLE` (which gRPC clients and proxies may retry) only when the call
/// was not sent.
///
/// `err` is a [`socketchannel::Error`] (its deadline passed, [`Kind::Timeout`]:
/// `DEADLINE_EXCEEDED`), a [`Status`] some layer already chose (kept), or another
/// layer's error: a timeout (`tokio`'s or tower's), as the table says
/// `DEADLINE_EXCEEDED` since the call may have executed.
pub fn code(err: &(dyn StdError + 'static)) -> Code {
    if let Some(status) = err.downcast_ref::<Status>() {
        return status.code();
    }
    let Some(err) = err.downcast_ref::<Error>() else {
        // tower's timeout, `tokio::time::timeout`, or another layer's error.
        return Code::DeadlineExceeded;
    };
    let stalled = err
        .connection_error()
        .is_some_and(|c| c.kind() == ConnectionErrorKind::Stalled);
    match err.kind() {
        Kind::IdInUse | Kind::Unsupported => Code::Internal,
        // The call's deadline (the client's `grpc-timeout`), sent or not: a retry by the
        // client would start past it.
        Kind::Timeout => Code::DeadlineExceeded,
        // The server's word that it did not run the call.
        Kind::Server if err.is_not_sent() => Code::Unavailable,
        // By the reply: a request the backend calls wrong is the client's.
        Kind::Server if backend_error(err).is_some_and(|b| b.bad_request) => Code::InvalidArgument,
        Kind::Server | Kind::Limit => Code::Internal,
        _ if err.is_not_sent() => Code::Unavailable,
        _ if stalled => Code::DeadlineExceeded,
        _ => Code::Unknown,
    }
}

/// The backend's error reply in `err`'s source chain.
fn backend_error(err: &Error) -> Option<&BackendError> {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(b) = e.downcast_ref::<BackendError>() {
            return Some(b);
        }
        source = e.source();
    }
    None
}

/// A failed call as a [`Status`]: [`code`], a message with the error's whole source
/// chain, and the error itself as the status's source (so `Status::source`, and
/// [`Status::from_error`] on an error that wraps this status further up, find it).
pub fn status(err: impl Into<BoxError>) -> Status {
    let err = err.into();
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string());
        source = e.source();
    }
    let mut status = Status::new(code(&*err), message);
    status.set_source(Arc::from(err));
    status
}

/// The deadline the client set, from the `grpc-timeout` header: up to eight digits and
/// a unit (`H`, `M`, `S`, `m`, `u`, `n`). `None` when absent or malformed.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Serves `kv.Kv` over h2c on `listener` until the task is dropped.
///
/// The routes are served by `axum::serve` rather than `tonic::transport::Server`: that
/// one enforces `grpc-timeout` itself, answering `CANCELLED` ("Timeout expired") when
/// its timer fires first, and would race the handlers' own deadline, which answers
/// `DEADLINE_EXCEEDED` as the table says. With `Server`, the handlers work unchanged;
/// only an expired deadline may come back as `CANCELLED`.
///
/// # Errors
///
/// Accepting failed.
pub async fn serve(listener: TcpListener, channel: KvChannel) -> std::io::Result<()> {
    let routes = tonic::service::Routes::new(pb::kv_server::KvServer::new(KvService::new(channel)));
    axum::serve(listener, routes.prepare().into_axum_router()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(v: &'static str) -> Option<Duration> {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        grpc_timeout(&m)
    }

    #[test]
    fn grpc_timeout_header() {
        assert_eq!(timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(timeout("123456789m"), None, "more than 8 digits");
        assert_eq!(timeout("10x"), None);
        assert_eq!(timeout("m"), None);
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn other_layers_errors() {
        let elapsed: Box<dyn StdError + Send + Sync> = Box::new(tower_elapsed());
        assert_eq!(code(&*elapsed), Code::DeadlineExceeded);
        let chosen = Status::permission_denied("no");
        assert_eq!(code(&chosen), Code::PermissionDenied);
    }

    fn tower_elapsed() -> impl StdError + Send + Sync + 'static {
        #[derive(Debug)]
        struct Elapsed;
        impl std::fmt::Display for Elapsed {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("deadline has elapsed")
            }
        }
        impl StdError for Elapsed {}
        Elapsed
    }
}
