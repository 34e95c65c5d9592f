//! TLS for a channel, shared by `examples/tls.rs` and `tests/tls.rs`.
//!
//! * [`TlsConnector`]: a `tower::Service<Endpoint>` that opens TCP, runs the rustls
//!   client handshake and frames the TLS stream with `LinesCodec`: what
//!   `Channel::builder().connector(..)` takes in place of the built-in TCP connector.
//! * [`TestCert`]: a self-signed certificate made with rcgen for `localhost` and
//!   `127.0.0.1`, and the rustls client and server configurations around it.
//! * [`TlsLineServer`]: an in-process TLS server (a `TcpListener` and a
//!   `tokio_rustls::TlsAcceptor`) speaking a line protocol: `GET k`, `SET k v`,
//!   `ECHO x`, `WHO`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::{SinkExt, StreamExt};
use socketchannel::{BoxError, Endpoint};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector as RustlsConnector};
use tokio_util::codec::{Framed, LinesCodec};

/// Opens TCP to an endpoint, runs the TLS handshake, and frames the stream with
/// `LinesCodec`. The server name checked against the certificate is the endpoint's host
/// unless [`server_name`](Self::server_name) sets one.
///
/// A failure (connection refused, a certificate that does not verify) is this host's
/// failure in the channel's connect pass: the next host is tried, and when every host
/// has failed, waiting calls fail with `Kind::ConnectFailed`.
#[derive(Clone)]
pub struct TlsConnector {
    tls: RustlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl TlsConnector {
    /// A connector with this client configuration (its trusted roots, its ALPN, ...).
    pub fn new(config: Arc<ClientConfig>) -> Self {
        TlsConnector {
            tls: RustlsConnector::from(config),
            server_name: None,
        }
    }

    /// Checks the certificate against `name` instead of the endpoint's host (connect by
    /// IP address to a server whose certificate names a host).
    ///
    /// # Errors
    ///
    /// `name` is neither a DNS name nor an IP address.
    pub fn server_name(mut self, name: &str) -> Result<Self, BoxError> {
        self.server_name = Some(ServerName::try_from(name.to_string())?);
        Ok(self)
    }

    async fn connect(
        self,
        endpoint: Endpoint,
    ) -> io::Result<Framed<TlsStream<TcpStream>, LinesCodec>> {
        let name = match self.server_name {
            Some(name) => name,
            None => ServerName::try_from(endpoint.host().to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        };
        let tcp = TcpStream::connect((endpoint.host(), endpoint.port())).await?;
        tcp.set_nodelay(true)?;
        // A certificate that does not verify is an `InvalidData` io::Error naming why.
        let tls = self.tls.connect(name, tcp).await?;
        Ok(Framed::new(tls, LinesCodec::new()))
    }
}

impl tower::Service<Endpoint> for TlsConnector {
    type Response = Framed<TlsStream<TcpStream>, LinesCodec>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        Box::pin(self.clone().connect(endpoint))
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, and its key.
pub struct TestCert {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TestCert {
    /// Generates one (an ECDSA P-256 key, made with rcgen on the `ring` backend).
    pub fn generate() -> Result<Self, BoxError> {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let certified = rcgen::generate_simple_self_signed(names)?;
        Ok(TestCert {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        })
    }

    /// The server side: presents this certificate.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, BoxError> {
        let key = PrivateKeyDer::Pkcs8(self.key.clone_key());
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], key)?;
        Ok(Arc::new(config))
    }

    /// The client side: trusts this certificate (and nothing else).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, BoxError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone())?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// The `ring` provider, named explicitly: no process-wide default needs installing, and
/// no other provider (aws-lc-rs, with its C build) is compiled.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An in-process TLS line server on 127.0.0.1: `GET k` (the value, or `NIL`),
/// `SET k v` (`OK`), `ECHO x` (`x`), `WHO` (the server's name). Stops on drop.
pub struct TlsLineServer {
    /// Where it listens.
    pub addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl TlsLineServer {
    /// Binds a free port and serves TLS connections with `config`.
    pub async fn start(name: &'static str, config: Arc<ServerConfig>) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let store = Arc::new(Mutex::new(HashMap::<String, String>::new()));
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                // Without it, Nagle's algorithm holds small replies for a delayed ACK.
                let _ = tcp.set_nodelay(true);
                let (acceptor, store) = (acceptor.clone(), store.clone());
                conns.spawn(async move {
                    // A client that rejects our certificate aborts the handshake here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut lines = Framed::new(tls, LinesCodec::new());
                    while let Some(Ok(line)) = lines.next().await {
                        let reply = answer(name, &store, &line);
                        if lines.send(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(TlsLineServer { addr, tasks })
    }
}

impl Drop for TlsLineServer {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

fn answer(name: &str, store: &Mutex<HashMap<String, String>>, line: &str) -> String {
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
    match cmd {
        "GET" => store.get(arg).cloned().unwrap_or_else(|| "NIL".to_string()),
        "SET" => match arg.split_once(' ') {
            Some((k, v)) => {
                store.insert(k.to_string(), v.to_string());
                "OK".to_string()
            }
            None => "ERR usage: SET key value".to_string(),
        },
        "ECHO" => arg.to_string(),
        "WHO" => name.to_string(),
        _ => "ERR unknown command".to_string(),
    }
}
