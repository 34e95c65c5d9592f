//! TLS over the built-in TCP connector (feature `rustls`): the rustls client handshake
//! with the endpoint's host as the server name, then the TLS stream framed with the codec.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::meter::{Metered, MeteredFramed, Wire, queue};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::TcpConnector;
use crate::reconnect::Endpoint;

/// Opens TCP to an [`Endpoint`] with a [`TcpConnector`] (its socket options, happy
/// eyeballs, buffer capacity and codec), runs the rustls client handshake on it, and
/// frames the TLS stream, [`Metered`], with the codec (feature `rustls`).
///
/// The server name, sent as SNI and checked against the server's certificate, is the
/// endpoint's host: a DNS name as it is, an IP address as an IP address (rustls sends
/// no SNI for one, and checks the certificate's IP names). So each host and backup is
/// checked under its own name. [`server_name`](Self::server_name) sets one name for
/// every host instead (to connect by address to a server whose certificate names a
/// host). The builder's [`connect_timeout`](crate::Builder::connect_timeout) bounds the
/// TCP connect and the TLS handshake together.
///
/// Trust, client certificates, ALPN and protocol versions are the [`ClientConfig`]'s:
/// [`new`](Self::new) takes one, [`with_roots`](Self::with_roots) makes the common one
/// (the given roots, no client certificate). A client certificate is
/// `ClientConfig::builder()...with_client_auth_cert(chain, key)`.
///
/// # Errors
///
/// A failed connect is an [`io::Error`], this host's failure in the channel's connect
/// pass: the next host is tried, and when every host has failed, waiting calls fail
/// with [`Kind::ConnectFailed`](crate::Kind::ConnectFailed) and a
/// [`ConnectError`](crate::ConnectError) that lists each host's failure. A failed
/// handshake says so and names the server name and rustls's reason (`TLS handshake with
/// "db.internal" failed: invalid peer certificate: certificate expired: ...`); its
/// [`source`](std::error::Error::source) is the [`rustls::Error`] (for a certificate
/// that does not verify, `Error::InvalidCertificate` with the
/// [`CertificateError`](rustls::CertificateError): `ExpiredContext`,
/// `NotValidForNameContext`, `UnknownIssuer`, ...), or the [`io::Error`] that ended the
/// handshake. A host that is not a valid server name fails with
/// [`io::ErrorKind::InvalidInput`], as does a Unix endpoint.
///
/// Under TLS 1.3 the client's handshake is done before the server has checked the
/// client's certificate, so a server that refuses it (a missing or untrusted client
/// certificate) says so on the first read, not in the connect: give the builder a
/// [`handshake`](crate::Builder::handshake) that makes a call (a `PING`) and the refusal
/// fails the host, not the first user call.
///
/// ```
/// use std::sync::Arc;
/// use socketchannel::rustls::{ClientConfig, RootCertStore};
/// use socketchannel::rustls::pki_types::{CertificateDer, PrivateKeyDer};
/// use socketchannel::{Channel, Order, Plain, TcpConnector, TlsConnector};
/// use tokio_util::codec::LinesCodec;
///
/// # fn demo(
/// #     ca: CertificateDer<'static>,
/// #     chain: Vec<CertificateDer<'static>>,
/// #     key: PrivateKeyDer<'static>,
/// # ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// // Trust one private CA: the hosts are checked as "db-1.internal", "db-2.internal".
/// let mut roots = RootCertStore::empty();
/// roots.add(ca)?;
/// let tls = TlsConnector::with_roots(TcpConnector::new(LinesCodec::new()), roots.clone());
/// let channel: Channel<String, String> = Channel::builder()
///     .host("db-1.internal:7000")
///     .backup("db-2.internal:7000")
///     .connector(tls, Order::new(Plain))?;
///
/// // With a client certificate, through a `ClientConfig` of one's own.
/// let config = ClientConfig::builder_with_provider(Arc::new(
///     socketchannel::rustls::crypto::ring::default_provider(),
/// ))
/// .with_safe_default_protocol_versions()?
/// .with_root_certificates(roots)
/// .with_client_auth_cert(chain, key)?;
/// let tls = TlsConnector::new(TcpConnector::new(LinesCodec::new()), Arc::new(config));
/// let mutual: Channel<String, String> = Channel::builder()
///     .host("10.0.0.5:7000")
///     .connector(tls.server_name("db-1.internal".try_into()?), Order::new(Plain))?;
/// # drop((channel, mutual));
/// # Ok(())
/// # }
/// # let _ = demo;
/// ```
#[derive(Debug, Clone)]
pub struct TlsConnector<C> {
    tcp: TcpConnector<C>,
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl<C: Clone> TlsConnector<C> {
    /// Connects TCP with `tcp`, then TLS with `config` (its roots, client certificate,
    /// ALPN, versions, crypto provider).
    pub fn new(tcp: TcpConnector<C>, config: Arc<ClientConfig>) -> Self {
        TlsConnector {
            tcp,
            config,
            server_name: None,
        }
    }

    /// Connects TCP with `tcp`, then TLS trusting `roots` (and nothing else), without a
    /// client certificate, with rustls's safe defaults and its `ring` provider. For
    /// anything else, a [`ClientConfig`] of your own through [`new`](Self::new).
    pub fn with_roots(tcp: TcpConnector<C>, roots: RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports rustls's default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self::new(tcp, Arc::new(config))
    }

    /// Sends `name` as SNI and checks the certificate against it for every host, instead
    /// of each endpoint's host (`"db.internal".try_into()?`, or a `ServerName::IpAddress`).
    pub fn server_name(mut self, name: ServerName<'static>) -> Self {
        self.server_name = Some(name);
        self
    }

    async fn connect(
        self,
        endpoint: Endpoint,
    ) -> io::Result<MeteredFramed<TlsStream<Wire<TcpStream>>, C>> {
        let name = match self.server_name {
            Some(name) => name,
            None => server_name(&endpoint)?,
        };
        let tcp = self.tcp.sockets().stream(&endpoint).await?;
        let tls = handshake(self.config, name, tcp).await?;
        // Above the TLS session, which may fail a write after a record of it left (the
        // `Wire` below tells) and takes nothing in a write that says `Pending`.
        Ok(super::frame(
            Metered::reporting(tls).send_queue_counted(|tls| {
                let wire = tls.get_ref().0;
                let queued = queue::of(wire.get_ref())?;
                Some(queue::Reading {
                    queued,
                    sent: Some(wire.sent()),
                })
            }),
            self.tcp.codec,
            self.tcp.buffer,
        ))
    }
}

/// A TLS session with `config`, checking the server's certificate against `name`, over
/// `io` seen through a [`Wire`]: meter the session with [`Metered::reporting`], so
/// that it counts plaintext and a failed write's bytes as taken unless the `Wire` saw
/// none leave.
pub(crate) async fn handshake<IO>(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    io: IO,
) -> io::Result<TlsStream<Wire<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio_rustls::TlsConnector::from(config)
        .connect(name.clone(), Wire::new(io))
        .await
        .map_err(|e| HandshakeFailed::wrap(&name, e))
}

/// The endpoint's host as a server name: a DNS name, or an IP address.
pub(crate) fn server_name(endpoint: &Endpoint) -> io::Result<ServerName<'static>> {
    if endpoint.unix_path().is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{endpoint} is a Unix socket, not a TLS host"),
        ));
    }
    ServerName::try_from(endpoint.host().to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} is not a TLS server name: {e}", endpoint.host()),
        )
    })
}

/// A failed TLS handshake: the server name, and rustls's error (or the IO error that
/// ended it) as the source.
#[derive(Debug)]
struct HandshakeFailed {
    name: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl HandshakeFailed {
    /// `err` from tokio-rustls's handshake, as an `io::Error` of the same kind whose
    /// message names the server name and whose source is the rustls error inside `err`
    /// (tokio-rustls puts it there), else `err` itself.
    fn wrap(name: &ServerName<'_>, err: io::Error) -> io::Error {
        let kind = err.kind();
        let source: Box<dyn std::error::Error + Send + Sync> =
            if err.get_ref().is_some_and(|e| e.is::<rustls::Error>()) {
                err.into_inner().expect("checked: it has an inner error")
            } else {
                Box::new(err)
            };
        let name = name.to_str().into_owned();
        io::Error::new(kind, HandshakeFailed { name, source })
    }
}

impl fmt::Display for HandshakeFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLS handshake with {:?} failed: {}",
            self.name, self.source
        )
    }
}

impl std::error::Error for HandshakeFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl<C> tower::Service<Endpoint> for TlsConnector<C>
where
    C: Clone + Send + 'static,
{
    type Response = MeteredFramed<TlsStream<Wire<TcpStream>>, C>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        Box::pin(self.clone().connect(endpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn the_server_name_is_the_endpoints_host() {
        let name =
            |host: &str| server_name(&Endpoint::new(host, 1)).map(|n| n.to_str().into_owned());
        assert_eq!(name("db.internal").unwrap(), "db.internal");
        assert!(matches!(
            server_name(&Endpoint::new("127.0.0.1", 1)).unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name(&Endpoint::new("::1", 1)).unwrap(),
            ServerName::IpAddress(_)
        ));
        for bad in ["bad name", "fe80::1%eth0"] {
            let err = name(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}: {err}");
        }
        let unix = server_name(&Endpoint::unix("/run/r.sock").unwrap()).unwrap_err();
        assert_eq!(unix.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_failed_handshake_names_the_server_and_has_the_rustls_error_as_source() {
        let name = ServerName::try_from("db.internal").unwrap();
        let rustls_err = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        let err = HandshakeFailed::wrap(
            &name,
            io::Error::new(io::ErrorKind::InvalidData, rustls_err.clone()),
        );
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            err.to_string(),
            format!("TLS handshake with \"db.internal\" failed: {rustls_err}")
        );
        let source = err.source().and_then(|s| s.downcast_ref::<rustls::Error>());
        assert_eq!(source, Some(&rustls_err));

        // An IO error that ended the handshake is the source as it is.
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        let err = HandshakeFailed::wrap(&name, eof);
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            err.to_string().ends_with("failed: tls handshake eof"),
            "{err}"
        );
        let source = err.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(
            source.map(io::Error::kind),
            Some(io::ErrorKind::UnexpectedEof)
        );
    }
}
