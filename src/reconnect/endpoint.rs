//! Where to connect: a host and a port.

use std::fmt;
use std::str::FromStr;

/// A host (name or IP address) and a port.
///
/// Parsed from `"host:port"`, `"[v6 address]:port"`, or a bare host given a default
/// port. Host names are resolved at every connection attempt, and every address they
/// resolve to is tried.
///
/// ```
/// use socketchannel::Endpoint;
///
/// let a: Endpoint = "127.0.0.1:6379".parse().unwrap();
/// let b: Endpoint = "[::1]:6379".parse().unwrap();
/// let c = Endpoint::parse_with_port("localhost", 6379).unwrap();
/// assert_eq!(b.host(), "::1");
/// assert_eq!(c.to_string(), "localhost:6379");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    host: String,
    port: u16,
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
        match spec.port.or(default_port) {
            Some(port) => Ok(Endpoint::new(spec.host, port)),
            None => Err(InvalidEndpoint {
                input: input.to_string(),
                why: "no port",
            }),
        }
    }

    /// The host name or address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for Endpoint {
    type Err = InvalidEndpoint;

    /// Parses `"host:port"` or `"[v6]:port"`; the port is required.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_inner(s, None)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
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
/// * an [`Endpoint`].
///
/// ```
/// use std::net::{Ipv6Addr, SocketAddr};
/// use socketchannel::Channel;
///
/// let addr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
/// let b: socketchannel::Builder<String, String> = Channel::builder()
///     .host(addr)
///     .backup(("redis-2.internal", 6379))
///     .backup((Ipv6Addr::LOCALHOST, 6380))
///     .backup(String::from("redis-3.internal:6379"));
/// ```
pub trait IntoHost: sealed::Sealed {}

pub(crate) mod sealed {
    use std::borrow::Cow;

    /// How a host is written, for the parser every form goes through.
    pub trait Sealed {
        #[doc(hidden)]
        fn host_text(&self) -> Cow<'_, str>;
    }
}

use std::borrow::Cow;

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
    Endpoint => |e| joined(e.host(), e.port());
}

impl<T: sealed::Sealed + ?Sized> sealed::Sealed for &T {
    fn host_text(&self) -> Cow<'_, str> {
        (**self).host_text()
    }
}

impl<T: IntoHost + ?Sized> IntoHost for &T {}

/// A host as a user wrote it: the port may be left to a default (the current host's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostSpec {
    host: String,
    port: Option<u16>,
}

impl HostSpec {
    /// Any form of a host ([`IntoHost`]), through the one parser.
    pub(crate) fn from(host: &impl IntoHost) -> Result<Self, InvalidEndpoint> {
        HostSpec::parse(&sealed::Sealed::host_text(host))
    }

    pub(crate) fn parse(input: &str) -> Result<Self, InvalidEndpoint> {
        let bad = |why| InvalidEndpoint {
            input: input.to_string(),
            why,
        };
        let s = input.trim();
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
        })
    }

    pub(crate) fn port(&self) -> Option<u16> {
        self.port
    }

    pub(crate) fn endpoint(&self, default_port: u16) -> Endpoint {
        Endpoint::new(self.host.clone(), self.port.unwrap_or(default_port))
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
}

impl Hosts {
    pub(crate) fn new(host: Endpoint) -> Self {
        Hosts {
            current: host.clone(),
            configured: vec![host],
        }
    }

    /// Replaces the backups; those without a port take the configured host's.
    pub(crate) fn set_backups(&mut self, backups: &[HostSpec]) {
        let port = self.configured[0].port;
        self.configured.truncate(1);
        self.configured
            .extend(backups.iter().map(|b| b.endpoint(port)));
    }

    /// The host that connected is tried first from now on.
    pub(crate) fn promote(&mut self, endpoint: Endpoint) {
        self.current = endpoint;
    }

    /// Replaces the configured host (and the current one), keeping its port if the new
    /// one names none.
    pub(crate) fn set_current(&mut self, host: &HostSpec) {
        let host = host.endpoint(self.configured[0].port);
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
}
