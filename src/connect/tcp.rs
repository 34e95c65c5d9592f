//! TCP, framed with the user's codec; happy eyeballs (RFC 8305) over the addresses a
//! name resolves to.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::meter::MeteredFramed;
use tokio::net::{TcpSocket, TcpStream, lookup_host};

use super::BUFFER;
use crate::reconnect::Endpoint;

/// RFC 8305's recommended "Connection Attempt Delay".
const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(250);

/// Opens a TCP connection to an [`Endpoint`] and frames it with a codec. The
/// [`Builder`](crate::Builder)'s default connector uses it for TCP endpoints.
///
/// The host is resolved at every call. When it resolves to several addresses they are
/// raced as RFC 8305 ("happy eyeballs", section 5) says: the addresses are ordered with
/// their families interleaved (the family the resolver put first, which under the
/// default address selection policy is IPv6, then the other, alternating), the first
/// attempt starts, and each next one starts when the one before it has not connected
/// within [`happy_eyeballs_delay`](Self::happy_eyeballs_delay) (250 ms), or at once
/// when an attempt fails. The attempts started keep racing; the first to connect wins
/// and the others are dropped. So an address that never answers (a blackholed one)
/// costs 250 ms, not the whole connect timeout. There is no timeout per address: the
/// builder's [`connect_timeout`](crate::Builder::connect_timeout) bounds the whole
/// connect. When every attempt fails, the error is the last failure.
///
/// The stream is [`Metered`](crate::Metered), so every byte it moves counts as progress for the stall
/// timer and in the counters. Any [`Connector`](crate::Connector) can stand in its
/// place (see there: TLS, a proxy, an in-memory pipe for tests). A Unix endpoint
/// (`"unix:PATH"`) fails here with [`io::ErrorKind::InvalidInput`]: use
/// [`SocketConnector`](crate::SocketConnector) for both.
#[derive(Debug, Clone)]
pub struct TcpConnector<C> {
    pub(super) codec: C,
    nodelay: bool,
    keepalive: bool,
    pub(super) buffer: usize,
    delay: Duration,
}

impl<C: Clone> TcpConnector<C> {
    /// A connector framing with `codec`, with `TCP_NODELAY` and keepalive on.
    pub fn new(codec: C) -> Self {
        TcpConnector {
            codec,
            nodelay: true,
            keepalive: true,
            buffer: BUFFER,
            delay: HAPPY_EYEBALLS_DELAY,
        }
    }

    /// The initial capacity of the read and write buffers of each connection's
    /// `Framed` (default 64 KiB; they grow for larger frames). It is also how much a
    /// read takes at most: smaller saves memory per connection (the two buffers are
    /// allocated when it connects), and costs a read per that many bytes. A write goes
    /// out once the connection task has written every call queued, or once 16 times
    /// this capacity (1 MiB at most, this capacity at least) is gathered: the write
    /// buffer grows to that while that many bytes of calls wait at once, and keeps the
    /// capacity it grew to.
    pub fn buffer_capacity(mut self, bytes: usize) -> Self {
        self.buffer = bytes;
        self
    }

    /// Sets `TCP_NODELAY` on each connection (default on: requests are batched by the
    /// channel already, so Nagle's algorithm only adds latency).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// Sets `SO_KEEPALIVE` on each connection (default on).
    pub fn keepalive(mut self, on: bool) -> Self {
        self.keepalive = on;
        self
    }

    /// How long an attempt to one address may go unanswered before the attempt to the
    /// next address starts beside it (default 250 ms, RFC 8305's recommendation).
    /// `Duration::ZERO` starts every address at once.
    pub fn happy_eyeballs_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    async fn connect(self, endpoint: Endpoint) -> io::Result<MeteredFramed<TcpStream, C>> {
        let stream = self.sockets().stream(&endpoint).await?;
        Ok(super::frame(
            crate::Metered::exact(stream).send_queue(crate::meter::queue::of),
            self.codec,
            self.buffer,
        ))
    }

    /// How it opens sockets, without the codec (so a connect need not hold it).
    pub(super) fn sockets(&self) -> Sockets {
        Sockets {
            nodelay: self.nodelay,
            keepalive: self.keepalive,
            delay: self.delay,
        }
    }
}

/// A [`TcpConnector`]'s socket options and happy eyeballs delay.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sockets {
    nodelay: bool,
    keepalive: bool,
    delay: Duration,
}

impl Sockets {
    /// A connected stream to `endpoint`: resolved, then its addresses raced.
    pub(super) async fn stream(self, endpoint: &Endpoint) -> io::Result<TcpStream> {
        if endpoint.unix_path().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{endpoint} is a Unix socket, not a TCP host"),
            ));
        }
        let addrs = lookup_host((endpoint.host(), endpoint.port())).await?;
        self.race(addrs).await
    }

    /// Happy eyeballs over `addrs`, as given (in the resolver's order).
    pub(crate) async fn race(
        self,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> io::Result<TcpStream> {
        let Sockets {
            nodelay,
            keepalive,
            delay,
        } = self;
        super::race::race(interleave(addrs), delay, move |addr| async move {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_keepalive(keepalive)?;
            let stream = socket.connect(addr).await?;
            stream.set_nodelay(nodelay)?;
            Ok(stream)
        })
        .await
    }
}

/// RFC 8305 section 4: the addresses with their families interleaved, starting with the
/// family of the first one, each family in its own order.
fn interleave(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let addrs: Vec<SocketAddr> = addrs.into_iter().collect();
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let v6_first = first.is_ipv6();
    let (mut preferred, mut other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|a| a.is_ipv6() == v6_first);
    let mut out = Vec::with_capacity(addrs.len());
    let (mut p, mut o) = (preferred.drain(..), other.drain(..));
    loop {
        match (p.next(), o.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

impl<C> tower::Service<Endpoint> for TcpConnector<C>
where
    C: Clone + Send + 'static,
{
    type Response = MeteredFramed<TcpStream, C>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<MeteredFramed<TcpStream, C>>> + Send>>;

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

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn families_interleave_starting_with_the_first() {
        let got =
            interleave(["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"].map(addr));
        let want = ["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1", "[::3]:1"].map(addr);
        assert_eq!(got, want);
        let got = interleave(["10.0.0.1:1", "10.0.0.2:1", "[::1]:1"].map(addr));
        assert_eq!(got, ["10.0.0.1:1", "[::1]:1", "10.0.0.2:1"].map(addr));
        assert!(interleave([]).is_empty());
    }

    #[cfg(target_os = "linux")]
    /// A loopback listener whose connects hang: its listen queue is full and it never
    /// accepts, so the kernel drops new SYNs. (TEST-NET addresses are no black hole on a
    /// box without a route: their connects fail at once.)
    async fn blackhole() -> (tokio::net::TcpListener, Vec<TcpStream>) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(addr("127.0.0.1:0")).unwrap();
        let listener = socket.listen(0).unwrap();
        let at = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(at)).await {
                Ok(stream) => held.push(stream.unwrap()),
                Err(_) => return (listener, held),
            }
        }
        panic!("could not fill the listen queue of {at}");
    }

    /// On real sockets: the first address never answers, the second is a live
    /// listener; the second is tried after the delay and wins. (Linux drops a SYN to a
    /// full listen queue; other systems may refuse it.)
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_live_address_behind_a_blackholed_one_connects_within_the_delay() {
        let (hole, _held) = blackhole().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap();
        let tcp = TcpConnector::new(());
        let start = std::time::Instant::now();
        let stream = tokio::time::timeout(
            Duration::from_secs(3),
            tcp.sockets().race([hole.local_addr().unwrap(), live]),
        )
        .await
        .expect("connected within 3 s, not after the blackholed address's OS timeout")
        .expect("connected");
        let took = start.elapsed();
        assert_eq!(stream.peer_addr().unwrap(), live);
        assert!(
            took >= Duration::from_millis(240),
            "took {took:?}: no black hole"
        );
        assert!(took < Duration::from_millis(1000), "took {took:?}");
    }

    #[tokio::test]
    async fn every_address_refused_names_the_last_failure() {
        // Two ports nobody listens on: bound, then closed.
        let mut refused = Vec::new();
        for _ in 0..2 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            refused.push(l.local_addr().unwrap());
        }
        let tcp = TcpConnector::new(());
        let err = tcp.sockets().race(refused).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
