//! Where to connect: a host and a port, or a Unix domain socket's path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where to connect: a host (name or IP address) and a port, or the path of a Unix
/// domain socket.
///
/// Parsed from `"host:port"`, `"[v6 address]:port"`, a bare host given a default
/// port, or `"unix:PATH"` (also `"unix://PATH"`, so `"unix:///run/redis.sock"` is
/// `/run/redis.sock`), which needs no port. Host names are resolved at every connection
/// attempt, and every address they resolve to is tried (see
/// [`TcpConnector`](crate::TcpConnector)). A Unix endpoint is connected by
/// `UnixConnector` (Unix only) or the builder's default connector, on Unix
/// platforms only; it parses everywhere.
///
/// `unix:` followed by digits only (`"unix:6379"`) is the TCP host `unix` with that
/// port, as it always was; write a socket of that name `"unix:./6379"`.
///
/// ```
/// use std::path::Path;
/// use socketchannel::Endpoint;
///
/// let a: Endpoint = "127.0.0.1:6379".parse().unwrap();
/// let b: Endpoint = "[::1]:6379".parse().unwrap();
/// let c = Endpoint::parse_with_port("localhost", 6379).unwrap();
/// assert_eq!(b.host(), "::1");
/// assert_eq!(c.to_string(), "localhost:6379");
/// assert_eq!(a.unix_path(), None);
///
/// let u: Endpoint = "unix:/run/redis.sock".parse().unwrap();
/// assert_eq!(u.unix_path(), Some(Path::new("/run/redis.sock")));
/// assert_eq!((u.host(), u.port()), ("/run/redis.sock", 0));
/// assert_eq!(u.to_string(), "unix:/run/redis.sock");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The host, or a Unix socket's path.
    host: String,
    /// The port; 0 for a Unix socket.
    port: u16,
    unix: bool,
}

/// A host string that is not an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEndpoint {
    input: String,
    why: &'static str,
}

impl fmt::Display for InvalidEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid endpoint {:?}: {}", self.input, self.why)
    }
}

impl std::error::Error for InvalidEndpoint {}

impl InvalidEndpoint {
    pub(crate) fn no_host() -> Self {
        InvalidEndpoint {
            input: String::new(),
            why: "no host given",
        }
    }

    pub(crate) fn no_port(host: &HostSpec) -> Self {
        InvalidEndpoint {
            input: host.host.clone(),
            why: "no port, and no default port given",
        }
    }
}

impl Endpoint {
    /// An endpoint from a host and a port. The host is not checked until it is resolved.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
            unix: false,
        }
    }

    /// The endpoint of the Unix domain socket at `path` (nothing is checked until it is
    /// connected), as `"unix:PATH"` parses to.
    ///
    /// # Errors
    ///
    /// An empty path, or one that is not UTF-8 (every form of a host is text).
    pub fn unix(path: impl AsRef<Path>) -> Result<Self, InvalidEndpoint> {
        let path = path.as_ref();
        let bad = |why| InvalidEndpoint {
            input: path.to_string_lossy().into_owned(),
            why,
        };
        match path.to_str() {
            None => Err(bad(NOT_UTF8)),
            Some("") => Err(bad(EMPTY_PATH)),
            Some(text) => Ok(Endpoint::unix_unchecked(text.to_string())),
        }
    }

    fn unix_unchecked(path: String) -> Self {
        Endpoint {
            host: path,
            port: 0,
            unix: true,
        }
    }

    /// Parses `"host:port"`, `"[v6]:port"`, or a bare host (or bare IPv6 address) that
    /// takes `default_port`.
    ///
    /// # Errors
    ///
    /// An empty host, an unclosed `[`, or a port that is not a number from 0 to 65535.
    pub fn parse_with_port(input: &str, default_port: u16) -> Result<Self, InvalidEndpoint> {
        Self::parse_inner(input, Some(default_port))
    }

    fn parse_inner(input: &str, default_port: Option<u16>) -> Result<Self, InvalidEndpoint> {
        let spec = HostSpec::parse(input)?;
        if spec.unix {
            return Ok(Endpoint::unix_unchecked(spec.host));
        }
        match spec.port.or(default_port) {
            Some(port) => Ok(Endpoint::new(spec.host, port)),
            None => Err(InvalidEndpoint {
                input: input.to_string(),
                why: "no port",
            }),
        }
    }

    /// The host name or address, without brackets; for a Unix endpoint, the socket's
    /// path.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port; 0 for a Unix endpoint.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket's path, for a Unix endpoint (`"unix:PATH"`, [`Endpoint::unix`]);
    /// `None` for a host and port.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.then(|| Path::new(&self.host))
    }
}

impl FromStr for Endpoint {
    type Err = InvalidEndpoint;

    /// Parses `"host:port"`, `"[v6]:port"` (the port is required) or `"unix:PATH"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_inner(s, None)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unix {
            f.write_str(&unix_text(&self.host))
        } else if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Anything a host can be given as, to [`Builder::host`](crate::Builder::host),
/// [`Builder::backup`](crate::Builder::backup) and
/// [`Channel::change_host`](crate::Channel::change_host):
///
/// * text: `"host:port"`, `"[v6]:port"`, or a bare host that takes a default port
///   (`&str`, `String`);
/// * a [`SocketAddr`](std::net::SocketAddr), or an `(IpAddr, u16)` (or `Ipv4Addr`,
///   `Ipv6Addr`);
/// * a `(host, port)` pair (`(&str, u16)`, `(String, u16)`), the host a name or an
///   address (an IPv6 one without brackets);
/// * a Unix domain socket: `"unix:PATH"` or `"unix://PATH"` text, or a
///   [`Path`] / [`PathBuf`] (which must be UTF-8); it needs no port, and backups of
///   either kind may follow it;
/// * an [`Endpoint`].
///
/// ```
/// use std::net::{Ipv6Addr, SocketAddr};
/// use std::path::Path;
/// use socketchannel::Channel;
///
/// let addr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
/// let b: socketchannel::Builder<String, String> = Channel::builder()
///     .host(addr)
///     .backup(("redis-2.internal", 6379))
///     .backup((Ipv6Addr::LOCALHOST, 6380))
///     .backup(String::from("redis-3.internal:6379"))
///     .backup("unix:/run/redis/redis.sock")
///     .backup(Path::new("/var/run/redis.sock"));
/// ```
pub trait IntoHost: sealed::Sealed {}

pub(crate) mod sealed {
    use std::borrow::Cow;

    /// How a host is written, for the parser every form goes through.
    pub trait Sealed {
        #[doc(hidden)]
        fn host_text(&self) -> Cow<'_, str>;

        /// Why the host has no text form (a path that is not UTF-8), if so.
        #[doc(hidden)]
        fn not_text(&self) -> Option<&'static str> {
            None
        }
    }
}

use std::borrow::Cow;

const NOT_UTF8: &str = "a Unix socket path must be UTF-8";
const EMPTY_PATH: &str = "empty Unix socket path";

/// `unix:PATH`, written so that it parses back to the same path (a path of digits only
/// would read as a port).
fn unix_text(path: &str) -> Cow<'static, str> {
    if is_port(path) {
        Cow::Owned(format!("unix:./{path}"))
    } else {
        Cow::Owned(format!("unix:{path}"))
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn path_text(path: &Path) -> Cow<'static, str> {
    unix_text(&path.to_string_lossy())
}

fn path_not_text(path: &Path) -> Option<&'static str> {
    match path.to_str() {
        None => Some(NOT_UTF8),
        Some(_) => None,
    }
}

impl sealed::Sealed for Path {
    fn host_text(&self) -> Cow<'_, str> {
        path_text(self)
    }

    fn not_text(&self) -> Option<&'static str> {
        path_not_text(self)
    }
}

impl IntoHost for Path {}

impl sealed::Sealed for PathBuf {
    fn host_text(&self) -> Cow<'_, str> {
        path_text(self)
    }

    fn not_text(&self) -> Option<&'static str> {
        path_not_text(self)
    }
}

impl IntoHost for PathBuf {}

/// `host:port`, bracketing an IPv6 address.
fn joined(host: &str, port: u16) -> Cow<'static, str> {
    if host.contains(':') && !host.starts_with('[') {
        Cow::Owned(format!("[{host}]:{port}"))
    } else {
        Cow::Owned(format!("{host}:{port}"))
    }
}

macro_rules! into_host {
    ($($t:ty => |$v:ident| $text:expr;)*) => {$(
        impl sealed::Sealed for $t {
            fn host_text(&self) -> Cow<'_, str> {
                let $v = self;
                $text
            }
        }
        impl IntoHost for $t {}
    )*};
}

into_host! {
    str => |s| Cow::Borrowed(s);
    String => |s| Cow::Borrowed(s.as_str());
    std::net::SocketAddr => |a| Cow::Owned(a.to_string());
    (std::net::IpAddr, u16) => |a| Cow::Owned(std::net::SocketAddr::from(*a).to_string());
    (std::net::Ipv4Addr, u16) => |a| Cow::Owned(std::net::SocketAddr::from(*a).to_string());
    (std::net::Ipv6Addr, u16) => |a| Cow::Owned(std::net::SocketAddr::from(*a).to_string());
    (&str, u16) => |p| joined(p.0, p.1);
    (String, u16) => |p| joined(&p.0, p.1);
    Endpoint => |e| if e.unix { unix_text(e.host()) } else { joined(e.host(), e.port()) };
}

impl<T: sealed::Sealed + ?Sized> sealed::Sealed for &T {
    fn host_text(&self) -> Cow<'_, str> {
        (**self).host_text()
    }

    fn not_text(&self) -> Option<&'static str> {
        (**self).not_text()
    }
}

impl<T: IntoHost + ?Sized> IntoHost for &T {}

/// A host as a user wrote it: the port may be left to a default (the current host's).
/// A Unix socket's path needs none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostSpec {
    /// The host, or a Unix socket's path.
    host: String,
    port: Option<u16>,
    unix: bool,
}

impl HostSpec {
    /// Any form of a host ([`IntoHost`]), through the one parser.
    pub(crate) fn from(host: &impl IntoHost) -> Result<Self, InvalidEndpoint> {
        let text = sealed::Sealed::host_text(host);
        if let Some(why) = sealed::Sealed::not_text(host) {
            return Err(InvalidEndpoint {
                input: text.into_owned(),
                why,
            });
        }
        HostSpec::parse(&text)
    }

    pub(crate) fn parse(input: &str) -> Result<Self, InvalidEndpoint> {
        let bad = |why| InvalidEndpoint {
            input: input.to_string(),
            why,
        };
        let s = input.trim();
        if let Some(rest) = s.strip_prefix("unix:")
            && !is_port(rest)
        {
            // `unix://PATH` as in URLs (`unix:///run/x.sock`), or `unix:PATH`.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(bad(EMPTY_PATH));
            }
            return Ok(HostSpec {
                host: path.to_string(),
                port: None,
                unix: true,
            });
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(bad("unexpected text after ']'")),
            }
        } else if s.matches(':').count() == 1 {
            let (host, port) = s.split_once(':').unwrap_or((s, ""));
            (host, Some(port))
        } else {
            // No colon, or a bare IPv6 address.
            (s, None)
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        // Brackets, or more than one ':', are for an IPv6 address and nothing else: a
        // `("db:6380", 6379)` pair or `"db:1:2"` is a mistake, not a host name.
        let v6 = host.split_once('%').map_or(host, |(addr, _scope)| addr);
        if (s.starts_with('[') || host.contains(':')) && v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad(
                "not an IPv6 address, yet in brackets or with more than one ':'",
            ));
        }
        let port = match port {
            Some(p) => Some(
                p.parse()
                    .map_err(|_| bad("port is not a number from 0 to 65535"))?,
            ),
            None => None,
        };
        Ok(HostSpec {
            host: host.to_string(),
            port,
            unix: false,
        })
    }

    #[cfg(test)]
    pub(crate) fn port(&self) -> Option<u16> {
        self.port
    }

    /// The endpoint, a TCP host without a port taking `default_port`. `None`: a TCP
    /// host without a port, and no default.
    pub(crate) fn endpoint_or(&self, default_port: Option<u16>) -> Option<Endpoint> {
        if self.unix {
            return Some(Endpoint::unix_unchecked(self.host.clone()));
        }
        let port = self.port.or(default_port)?;
        Some(Endpoint::new(self.host.clone(), port))
    }

    #[cfg(test)]
    pub(crate) fn endpoint(&self, default_port: u16) -> Endpoint {
        self.endpoint_or(Some(default_port)).expect("a port")
    }

    /// The endpoint, a TCP host without a port taking `default_port`; without one, port
    /// 0 (whose connects fail), saying so.
    fn endpoint_or_zero(&self, default_port: Option<u16>) -> Endpoint {
        self.endpoint_or(default_port).unwrap_or_else(|| {
            tracing::warn!(
                host = %self.host,
                "a host without a port, and no port to take: port 0, which will not connect"
            );
            Endpoint::new(self.host.clone(), 0)
        })
    }
}

/// The hosts of a channel: the configured ones (the host, then its backups, as given or
/// changed by `change_host` / `change_backups`) and the current one, which a pass tries
/// first: the host that last connected (a backup promoted, a redirect's target).
///
/// Promotion and redirects change only `current`, so no configured host ever drops out
/// of later passes (Contract 8).
#[derive(Debug, Clone)]
pub(crate) struct Hosts {
    pub(crate) current: Endpoint,
    /// The configured host, then the backups.
    configured: Vec<Endpoint>,
    /// The port of a host given without one: the configured host's, or for a Unix
    /// socket the builder's (if any).
    port: Option<u16>,
}

impl Hosts {
    pub(crate) fn new(host: Endpoint) -> Self {
        let port = host.unix_path().is_none().then_some(host.port);
        Hosts {
            current: host.clone(),
            configured: vec![host],
            port,
        }
    }

    /// The builder's hosts: `host`, taking `port` if it names none (a Unix socket needs
    /// none), then the backups, taking the host's port (or `port`, behind a Unix host).
    ///
    /// # Errors
    ///
    /// A TCP host or backup left without a port.
    pub(crate) fn configure(
        host: &HostSpec,
        port: Option<u16>,
        backups: &[HostSpec],
    ) -> Result<Self, InvalidEndpoint> {
        let current = host
            .endpoint_or(port)
            .ok_or_else(|| InvalidEndpoint::no_port(host))?;
        let mut hosts = Hosts::new(current);
        hosts.port = hosts.port.or(port);
        for b in backups {
            let backup = b
                .endpoint_or(hosts.port)
                .ok_or_else(|| InvalidEndpoint::no_port(b))?;
            hosts.configured.push(backup);
        }
        Ok(hosts)
    }

    /// Replaces the backups; those without a port take the configured host's.
    pub(crate) fn set_backups(&mut self, backups: &[HostSpec]) {
        let port = self.port;
        self.configured.truncate(1);
        self.configured
            .extend(backups.iter().map(|b| b.endpoint_or_zero(port)));
    }

    /// The host that connected is tried first from now on.
    pub(crate) fn promote(&mut self, endpoint: Endpoint) {
        self.current = endpoint;
    }

    /// Replaces the configured host (and the current one), keeping its port if the new
    /// one names none.
    pub(crate) fn set_current(&mut self, host: &HostSpec) {
        let host = host.endpoint_or_zero(self.port);
        if host.unix_path().is_none() {
            self.port = Some(host.port);
        }
        self.configured[0] = host.clone();
        self.current = host;
    }

    /// The order of one connect pass: the current host, then each configured host once.
    pub(crate) fn pass(&self) -> Vec<Endpoint> {
        let mut order = vec![self.current.clone()];
        for b in &self.configured {
            if !order.contains(b) {
                order.push(b.clone());
            }
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};

    #[test]
    fn every_form_of_a_host_parses_to_the_same_endpoint() {
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let forms: Vec<(HostSpec, &str)> = vec![
            (HostSpec::from(&"::1").unwrap(), "no port"),
            (HostSpec::from(&"[::1]:7").unwrap(), "[::1]:7"),
            (HostSpec::from(&String::from("[::1]:7")).unwrap(), "[::1]:7"),
            (HostSpec::from(&SocketAddr::new(v6, 7)).unwrap(), "[::1]:7"),
            (HostSpec::from(&(v6, 7)).unwrap(), "[::1]:7"),
            (HostSpec::from(&("::1", 7)).unwrap(), "[::1]:7"),
            (
                HostSpec::from(&(String::from("::1"), 7)).unwrap(),
                "[::1]:7",
            ),
            (HostSpec::from(&Endpoint::new("::1", 7)).unwrap(), "[::1]:7"),
            (HostSpec::from(&&&"[::1]:7").unwrap(), "[::1]:7"),
            (
                HostSpec::from(&("db.internal", 6379)).unwrap(),
                "db.internal:6379",
            ),
        ];
        for (spec, want) in forms {
            match spec.port() {
                None => assert_eq!(want, "no port"),
                Some(_) => assert_eq!(spec.endpoint(0).to_string(), want),
            }
        }
        assert!(HostSpec::from(&("", 7)).is_err());
        // A pair whose host has a port of its own, and colons that make no address.
        for bad in [
            HostSpec::from(&("db:6380", 6379)),
            HostSpec::from(&"db:1:2"),
            HostSpec::from(&"[db]:80"),
        ] {
            assert!(bad.is_err(), "{bad:?}");
        }
        assert!(HostSpec::from(&"[fe80::1%eth0]:7").is_ok());
    }

    #[test]
    fn parses_the_forms_skynet_accepts() {
        let e: Endpoint = "example.com:80".parse().unwrap();
        assert_eq!((e.host(), e.port()), ("example.com", 80));
        let e: Endpoint = "[fe80::1]:9000".parse().unwrap();
        assert_eq!((e.host(), e.port()), ("fe80::1", 9000));
        assert_eq!(e.to_string(), "[fe80::1]:9000");
        let e = Endpoint::parse_with_port("::1", 7).unwrap();
        assert_eq!((e.host(), e.port()), ("::1", 7));
        let e = Endpoint::parse_with_port("[::1]", 7).unwrap();
        assert_eq!((e.host(), e.port()), ("::1", 7));
        let e = Endpoint::parse_with_port("h:8", 7).unwrap();
        assert_eq!(e.port(), 8);
    }

    #[test]
    fn rejects_what_is_not_an_endpoint() {
        for bad in [
            "",
            ":80",
            "[::1",
            "[::1]x",
            "host:port",
            "host:70000",
            "host",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} parsed");
        }
    }

    fn spec(s: &str) -> HostSpec {
        HostSpec::parse(s).unwrap()
    }

    #[test]
    fn a_promoted_backup_goes_first_and_every_configured_host_stays() {
        let (a, b, c) = (
            Endpoint::new("a", 1),
            Endpoint::new("b", 1),
            Endpoint::new("c", 1),
        );
        let mut hosts = Hosts::new(a.clone());
        hosts.set_backups(&[spec("b:1"), spec("c:1")]);
        hosts.promote(c.clone());
        assert_eq!(hosts.pass(), vec![c, a.clone(), b.clone()]);
        // A redirect's target, not configured, goes first too, and drops out when the
        // next one connects: the configured hosts never do.
        let m = Endpoint::new("m", 1);
        hosts.promote(m.clone());
        assert_eq!(
            hosts.pass(),
            vec![m, a.clone(), b.clone(), Endpoint::new("c", 1)]
        );
        hosts.promote(Endpoint::new("n", 1));
        assert!(!hosts.pass().contains(&Endpoint::new("m", 1)));
    }

    #[test]
    fn a_pass_skips_duplicate_backups() {
        let mut hosts = Hosts::new(Endpoint::new("a", 1));
        hosts.set_backups(&[spec("b:1"), spec("a:1"), spec("b")]);
        assert_eq!(
            hosts.pass(),
            vec![Endpoint::new("a", 1), Endpoint::new("b", 1)]
        );
    }

    #[test]
    fn a_unix_socket_parses_from_every_form_and_needs_no_port() {
        use std::path::{Path, PathBuf};
        let want = Endpoint::unix("/run/r.sock").unwrap();
        assert_eq!(want.unix_path(), Some(Path::new("/run/r.sock")));
        assert_eq!((want.host(), want.port()), ("/run/r.sock", 0));
        assert_eq!(want.to_string(), "unix:/run/r.sock");
        for form in [
            HostSpec::from(&"unix:/run/r.sock").unwrap(),
            HostSpec::from(&" unix:///run/r.sock ").unwrap(),
            HostSpec::from(&Path::new("/run/r.sock")).unwrap(),
            HostSpec::from(&PathBuf::from("/run/r.sock")).unwrap(),
            HostSpec::from(&want).unwrap(),
        ] {
            assert_eq!(form.endpoint_or(None), Some(want.clone()));
            assert_eq!(form.endpoint_or(Some(7)), Some(want.clone()));
        }
        assert_eq!("unix:/run/r.sock".parse::<Endpoint>(), Ok(want.clone()));
        assert_eq!(Endpoint::parse_with_port("unix:/run/r.sock", 7), Ok(want));
        // A relative path; one of digits only round-trips through its text.
        let rel = Endpoint::unix("6379").unwrap();
        assert_eq!(rel.to_string(), "unix:./6379");
        assert_eq!(
            HostSpec::from(&rel)
                .unwrap()
                .endpoint_or(None)
                .unwrap()
                .unix_path(),
            Some(Path::new("./6379"))
        );
        assert_eq!(
            HostSpec::from(&Path::new("6379"))
                .unwrap()
                .endpoint_or(None)
                .unwrap()
                .host(),
            "./6379"
        );
        // `unix:` and digits is the TCP host `unix`, as before.
        let tcp: Endpoint = "unix:6379".parse().unwrap();
        assert_eq!(
            (tcp.host(), tcp.port(), tcp.unix_path()),
            ("unix", 6379, None)
        );
        assert_eq!(HostSpec::from(&("unix", 6379)).unwrap().endpoint(0), tcp);
        for bad in ["unix:", "unix://"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} parsed");
        }
        assert!(Endpoint::unix("").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let not_utf8 = Path::new(std::ffi::OsStr::from_bytes(b"/run/\xff.sock"));
            assert!(Endpoint::unix(not_utf8).is_err());
            let err = HostSpec::from(&not_utf8).unwrap_err();
            assert!(err.to_string().contains("UTF-8"), "{err}");
        }
    }

    #[test]
    fn backups_mix_unix_and_tcp_and_take_the_port_they_can() {
        let unix = Endpoint::unix("/run/r.sock").unwrap();
        // A Unix host needs no port; a TCP backup without one takes the builder's.
        let hosts = Hosts::configure(
            &spec("unix:/run/r.sock"),
            Some(7),
            &[spec("b"), spec("c:8"), spec("unix:/run/s.sock")],
        )
        .unwrap();
        assert_eq!(
            hosts.pass(),
            vec![
                unix.clone(),
                Endpoint::new("b", 7),
                Endpoint::new("c", 8),
                Endpoint::unix("/run/s.sock").unwrap()
            ]
        );
        // Without the builder's port, such a backup is refused, the Unix host is not.
        assert!(Hosts::configure(&spec("unix:/run/r.sock"), None, &[spec("b")]).is_err());
        let hosts = Hosts::configure(&spec("unix:/run/r.sock"), None, &[spec("b:9")]).unwrap();
        assert_eq!(hosts.pass(), vec![unix.clone(), Endpoint::new("b", 9)]);
        // Behind a TCP host, a Unix backup, and TCP ones taking the host's port.
        let mut hosts =
            Hosts::configure(&spec("a:5"), None, &[spec("unix:/x"), spec("b")]).unwrap();
        assert_eq!(
            hosts.pass(),
            vec![
                Endpoint::new("a", 5),
                Endpoint::unix("/x").unwrap(),
                Endpoint::new("b", 5)
            ]
        );
        assert!(Hosts::configure(&spec("a"), None, &[]).is_err());
        // Changed to a Unix host, a later bare host keeps the last TCP port.
        hosts.set_current(&spec("unix:/y"));
        hosts.set_backups(&[spec("c")]);
        assert_eq!(
            hosts.pass(),
            vec![Endpoint::unix("/y").unwrap(), Endpoint::new("c", 5)]
        );
    }
}
