//! TLS test material, shared by `examples/tls.rs` and `tests/tls.rs` (the client side is
//! the crate's own `TlsConnector`, feature `rustls`):
//!
//! * [`TestCa`]: a private CA made with rcgen (ECDSA P-256, `ring`), issuing server
//!   and client certificates for any names, valid or long expired: DER for rustls, PEM
//!   files for `redis-server`.
//! * [`TlsLineServer`]: an in-process TLS server (a `TcpListener` and a
//!   `tokio_rustls::TlsAcceptor`) speaking a line protocol: `GET k`, `SET k v`,
//!   `ECHO x`, `WHO`, and `SNI` (the server name the client sent, `-` for none).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use socketchannel::BoxError;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_util::codec::{Framed, LinesCodec};

/// A certificate authority of the test's own.
pub struct TestCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA whose common name is `name`.
    pub fn new(name: &str) -> Result<Self, BoxError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?.der().clone();
        Ok(TestCa {
            cert,
            issuer: Issuer::new(params, key),
        })
    }

    /// A root store trusting this CA only.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert.clone())
            .expect("a CA certificate rcgen made");
        roots
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert)
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid from 1975 to
    /// 4096.
    pub fn server(&self, names: &[&str]) -> Result<Leaf, BoxError> {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    /// A server certificate for `names` that expired on 2021-01-01.
    pub fn expired_server(&self, names: &[&str]) -> Result<Leaf, BoxError> {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, true)
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, name: &str) -> Result<Leaf, BoxError> {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth, false)
    }

    fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> Result<Leaf, BoxError> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }
}

/// A certificate the [`TestCa`] issued, and its key.
pub struct Leaf {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Leaf {
    /// The chain to present: the certificate alone (the peer has the CA).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    /// The private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Writes `NAME.crt` and `NAME.key` (PEM) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> io::Result<(PathBuf, PathBuf)> {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, pem("CERTIFICATE", &self.cert))?;
        std::fs::write(&key, pem("PRIVATE KEY", self.key.secret_pkcs8_der()))?;
        Ok((cert, key))
    }

    /// The server side of an in-process server presenting this certificate.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, BoxError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain(), self.key())?;
        Ok(Arc::new(config))
    }
}

/// `der` as PEM, under `label` (rcgen's own PEM output is a feature this build leaves
/// out).
fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            text.push(if i <= chunk.len() {
                B64[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An in-process TLS line server on 127.0.0.1: `GET k` (the value, or `NIL`),
/// `SET k v` (`OK`), `ECHO x` (`x`), `WHO` (the server's name), `SNI` (the server name
/// the client sent, `-` for none). Stops on drop.
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
                    let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                    let mut lines = Framed::new(tls, LinesCodec::new());
                    while let Some(Ok(line)) = lines.next().await {
                        let reply = answer(name, &sni, &store, &line);
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

fn answer(name: &str, sni: &str, store: &Mutex<HashMap<String, String>>, line: &str) -> String {
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
        "SNI" => sni.to_string(),
        _ => "ERR unknown command".to_string(),
    }
}
