//! What the meter's reviews share: a scripted in-memory "socket" with its control
//! handle, the server that records whole call lines, the calls and their verdicts, the
//! stacks (`framed`, a rustls session with the test CA), [`Pieces`] (a layer that
//! reports its input only once all of it left) and [`Spy`] (what a session's writes
//! returned). One copy of each; `panicking` holds review_session6's variant of the
//! socket, which differs in what it does (see there).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Channel, Error, Metered, Wire};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig};
use tokio_util::codec::{Framed, LinesCodec};

use crate::ca;

pub const STEP: Duration = Duration::from_secs(5);
pub const TEST: Duration = Duration::from_secs(20);
/// Each big call's line, without its `\n`: `cNN` then filler.
pub const LINE: usize = 10_000;
/// The TLS session's buffer limit (rustls's default, as `TlsConnector` leaves it), and
/// what [`Pieces`] takes at most.
pub const LIMIT: usize = 64 * 1024;
/// What [`Pieces`] writes to its IO at a time.
pub const PIECE: usize = 16 * 1024;

/// Call `i`'s line of `len` characters: `cNN` then filler.
pub fn line_of(i: usize, len: usize) -> String {
    format!("c{i:02}{}", "x".repeat(len - 3))
}

/// Call `i`'s big line ([`LINE`] characters).
pub fn line(i: usize) -> String {
    line_of(i, LINE)
}

/// Where call `i`'s bytes begin in a stream of calls of `len` bytes (with the `\n`).
pub fn start_of(i: usize, len: usize) -> usize {
    i * len
}

/// Where big call `i`'s bytes begin in the stream.
pub fn start(i: usize) -> usize {
    start_of(i, LINE + 1)
}

pub fn reset() -> io::Error {
    io::ErrorKind::ConnectionReset.into()
}

pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

// ---------------------------------------------------------------------------------------
// A scripted socket.
// ---------------------------------------------------------------------------------------

/// What one write of an armed [`Socket`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Takes all it is offered.
    Take,
    /// Takes at most this many bytes.
    Short(usize),
    /// Fails with a reset.
    Fail,
    /// Says `Pending` (the peer's window closed) until the script changes.
    Stall,
    /// Says `Ok(0)`.
    Zero,
}

#[derive(Debug)]
pub struct Control {
    pub armed: bool,
    pub script: VecDeque<Act>,
    pub then: Act,
    /// Bytes taken once armed.
    pub accepted: usize,
    /// Writes stalled (a write said `Pending`) since the script last changed.
    pub stalled: bool,
    /// Every write fails with a reset.
    pub writes_fail: bool,
    /// Every read fails with a reset.
    pub reads_fail: bool,
    pub wakers: Vec<Waker>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            armed: false,
            script: VecDeque::new(),
            then: Act::Take,
            accepted: 0,
            stalled: false,
            writes_fail: false,
            reads_fail: false,
            wakers: Vec::new(),
        }
    }
}

pub type Ctl = Arc<Mutex<Control>>;

/// Sets the script (arming the socket) and wakes whoever waits on it.
pub fn script(control: &Ctl, acts: &[Act], then: Act) {
    let wakers = {
        let mut c = control.lock().unwrap();
        c.armed = true;
        c.script = acts.iter().copied().collect();
        c.then = then;
        c.stalled = false;
        std::mem::take(&mut c.wakers)
    };
    wakers.into_iter().for_each(Waker::wake);
}

/// The peer's reset: writes fail, and reads too if `reads`.
pub fn reset_now(control: &Ctl, writes: bool, reads: bool) {
    let wakers = {
        let mut c = control.lock().unwrap();
        c.writes_fail |= writes;
        c.reads_fail |= reads;
        std::mem::take(&mut c.wakers)
    };
    wakers.into_iter().for_each(Waker::wake);
}

/// Until `ready` holds of the control (polling every millisecond, at most 2 s).
pub async fn until(control: &Ctl, what: &str, ready: impl Fn(&Control) -> bool) {
    for _ in 0..2_000 {
        if ready(&control.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never: {what}: {:?}", control.lock().unwrap());
}

/// An in-memory pipe whose writes, once armed, go as its [`Control`] says.
pub struct Socket {
    pub io: DuplexStream,
    pub control: Ctl,
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        {
            let mut c = self.control.lock().unwrap();
            if c.reads_fail {
                return Poll::Ready(Err(reset()));
            }
            c.wakers.push(cx.waker().clone());
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let act = {
            let mut c = self.control.lock().unwrap();
            if c.writes_fail {
                return Poll::Ready(Err(reset()));
            }
            if !c.armed {
                Act::Take
            } else {
                let act = c.script.pop_front().unwrap_or(c.then);
                if act == Act::Stall {
                    c.script.push_front(Act::Stall);
                    c.stalled = true;
                    c.wakers.push(cx.waker().clone());
                    return Poll::Pending;
                }
                act
            }
        };
        let n = match act {
            Act::Take => buf.len(),
            Act::Short(n) => n.min(buf.len()),
            Act::Fail => return Poll::Ready(Err(reset())),
            Act::Zero => return Poll::Ready(Ok(0)),
            Act::Stall => unreachable!(),
        };
        let poll = Pin::new(&mut self.io).poll_write(cx, &buf[..n]);
        let mut c = self.control.lock().unwrap();
        match &poll {
            Poll::Ready(Ok(n)) if c.armed => c.accepted += n,
            Poll::Pending => panic!("the pipe under the socket filled"),
            _ => {}
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.control.lock().unwrap().writes_fail {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

pub fn socket(io: DuplexStream) -> (Socket, Ctl) {
    let control = Ctl::default();
    (
        Socket {
            io,
            control: control.clone(),
        },
        control,
    )
}

// ---------------------------------------------------------------------------------------
// The server and the verdicts.
// ---------------------------------------------------------------------------------------

/// The calls (by number) a server read whole.
pub type Executed = Arc<Mutex<Vec<usize>>>;

/// The lengths of a whole big call line: only [`LINE`].
pub const BIG_LINES: &[usize] = &[LINE];

/// Reads lines, records each whole call line (of one of the lengths `lens`: a part of a
/// line at the end of the stream is not a call); answers `reNN` if `echo`.
pub async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    executed: Executed,
    lens: &'static [usize],
    echo: bool,
) {
    let mut lines = Framed::new(io, LinesCodec::new_with_max_length(1 << 22));
    while let Some(Ok(got)) = lines.next().await {
        let Some(call) = got.get(1..3).and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        if !lens.contains(&got.len()) || got != line_of(call, got.len()) {
            continue;
        }
        executed.lock().unwrap().push(call);
        if echo && lines.send(format!("re{call:02}")).await.is_err() {
            break;
        }
    }
}

/// Reads lines, records each whole big call line; never answers.
pub async fn serve_lines<IO: AsyncRead + AsyncWrite + Unpin>(io: IO, executed: Executed) {
    serve(io, executed, BIG_LINES, false).await
}

/// Calls `range`, each a line of `len` characters, all queued before the task runs.
pub fn calls_of(
    channel: &Channel<String, String>,
    range: std::ops::Range<usize>,
    len: usize,
) -> JoinHandle<Vec<Result<String, Error>>> {
    let channel = channel.clone();
    tokio::spawn(async move {
        let calls = range.map(|i| channel.request(line_of(i, len)));
        futures::future::join_all(calls).await
    })
}

/// `n` big calls, all queued before the connection's task runs (one pass writes them).
pub fn big_calls(
    channel: &Channel<String, String>,
    n: usize,
) -> JoinHandle<Vec<Result<String, Error>>> {
    calls_of(channel, 0..n, LINE)
}

pub fn verdicts(errors: &[Error]) -> Vec<&'static str> {
    errors
        .iter()
        .map(|e| match (e.is_not_sent(), e.may_have_executed()) {
            (true, false) => "NS",
            (false, true) => "MX",
            _ => "??",
        })
        .collect()
}

/// Each call is exactly one of NS and MX, and none the server executed is NS.
pub fn check_safe(errors: &[Error], executed: &[usize]) {
    let v = verdicts(errors);
    assert!(!v.contains(&"??"), "a call both or neither: {v:?}");
    for &call in executed {
        assert!(
            !errors[call].is_not_sent(),
            "the server executed call {call}, which failed not sent (a retry runs it \
             twice): executed {executed:?}, verdicts {v:?}"
        );
    }
}

pub fn framed<IO>(io: IO) -> Framed<Metered<IO>, Metered<LinesCodec>>
where
    IO: AsyncRead + AsyncWrite,
{
    framed_as(Metered::new(io))
}

/// As `TlsConnector` frames its session (`connect::frame`, `Metered::reporting`).
pub fn framed_tls<IO>(io: IO) -> Framed<Metered<IO>, Metered<LinesCodec>>
where
    IO: AsyncRead + AsyncWrite,
{
    framed_as(Metered::reporting(io))
}

/// With the connector's 64 KiB buffer and 1 MiB write gathering (`connect::frame`).
pub fn framed_as<IO>(io: Metered<IO>) -> Framed<Metered<IO>, Metered<LinesCodec>>
where
    IO: AsyncRead + AsyncWrite,
{
    let mut framed = Framed::with_capacity(
        io,
        Metered::new(LinesCodec::new_with_max_length(1 << 22)),
        64 * 1024,
    );
    framed.set_backpressure_boundary(1024 * 1024);
    framed
}

// ---------------------------------------------------------------------------------------
// A layer that reports its input only once all of it left.
// ---------------------------------------------------------------------------------------

/// A layer above the `Wire` that takes up to 64 KiB of a write, sends it in 16 KiB
/// pieces, and reports it only once all of it left; on `Pending` it keeps its progress
/// and wants the same bytes again (as `SSL_write` without partial writes, the TLS of
/// `tokio-openssl` / `tokio-native-tls` built so). Its input leaves in plain text. With
/// `zero_on_error`, an error of its IO is reported as `Ok(0)`, as
/// `openssl::ssl::SslStream`'s `Write` reports `ZERO_RETURN` (the peer's close_notify).
pub struct Pieces<IO> {
    pub io: IO,
    /// The input taken, and how much of it left.
    pub taking: Option<(Vec<u8>, usize)>,
    pub zero_on_error: bool,
}

impl<IO> Pieces<IO> {
    /// Errors of its IO reported as they are.
    pub fn new(io: IO) -> Self {
        Pieces {
            io,
            taking: None,
            zero_on_error: false,
        }
    }
}

read_through!(Pieces<IO>);

impl<IO: AsyncWrite + Unpin> AsyncWrite for Pieces<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let (data, off) = this
            .taking
            .get_or_insert_with(|| (buf[..buf.len().min(LIMIT)].to_vec(), 0));
        while *off < data.len() {
            let end = data.len().min(*off + PIECE);
            match Pin::new(&mut this.io).poll_write(cx, &data[*off..end]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => {
                    this.taking = None;
                    if this.zero_on_error {
                        return Poll::Ready(Ok(0));
                    }
                    return Poll::Ready(Err(err));
                }
                Poll::Ready(Ok(n)) => *off += n,
            }
        }
        let n = data.len();
        this.taking = None;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------
// rustls.
// ---------------------------------------------------------------------------------------

pub fn client_config(ca: &ca::TestCa) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(ca.roots())
            .with_no_client_auth(),
    )
}

/// What the session's writes returned, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    /// It took this much plaintext.
    Took(usize),
    Pending,
    Failed,
}

/// Between the `Metered` and the session: records what each write of the session
/// returned, and changes nothing.
pub struct Spy<IO> {
    pub io: IO,
    pub log: Arc<Mutex<Vec<Wrote>>>,
}

impl<IO> Spy<IO> {
    fn record(&self, poll: &Poll<io::Result<usize>>) {
        self.log.lock().unwrap().push(match poll {
            Poll::Ready(Ok(n)) => Wrote::Took(*n),
            Poll::Ready(Err(_)) => Wrote::Failed,
            Poll::Pending => Wrote::Pending,
        });
    }
}

read_through!(Spy<IO>);

impl<IO: AsyncWrite + Unpin> AsyncWrite for Spy<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.record(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.record(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A client session over `Wire<Socket>` to an in-process rustls server that records
/// whole lines (of the lengths `lens`, see [`serve`]); the session's buffer limit set to
/// 64 KiB.
pub async fn tls_session(
    ca: &ca::TestCa,
    lens: &'static [usize],
) -> (TlsStream<Wire<Socket>>, Ctl, Executed, JoinHandle<()>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(
        ca.server(&["localhost"]).unwrap().server_config().unwrap(),
    );
    let (client, server) = tokio::io::duplex(4 << 20);
    let executed = Executed::default();
    let log = executed.clone();
    let server = tokio::spawn(async move {
        if let Ok(tls) = acceptor.accept(server).await {
            serve(tls, log, lens, false).await;
        }
    });
    let (socket, control) = socket(client);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = within(
        STEP,
        "client handshake",
        tokio_rustls::TlsConnector::from(client_config(ca)).connect(name, Wire::new(socket)),
    )
    .await
    .expect("handshake");
    tls.get_mut().1.set_buffer_limit(Some(LIMIT));
    (tls, control, executed, server)
}

// ---------------------------------------------------------------------------------------
// review_session6's socket.
// ---------------------------------------------------------------------------------------

/// review_session6's scripted socket, kept apart from [`Socket`](super::Socket)
/// because it behaves otherwise: its reads are never failed and register no waker (its
/// `over_pieces` waits for the stalled write's waker), it can panic (`Act::Panic`), one
/// `reset` flag fails its writes and flushes, and `arm` wakes nobody.
pub mod panicking {
    use std::collections::VecDeque;
    use std::io;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use tokio::io::{AsyncWrite, DuplexStream};

    use super::reset;

    /// What one write of an armed [`Socket`] does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Act {
        /// Takes all it is offered.
        Take,
        /// Takes at most this many bytes.
        Short(usize),
        /// Fails with a reset.
        Fail,
        /// Says `Pending` (the peer's window closed), until `reset`.
        Stall,
        /// Panics (user code under the `Wire`).
        Panic,
    }

    #[derive(Debug)]
    pub struct Control {
        pub armed: bool,
        /// The next writes' acts; `then` once it is empty.
        pub script: VecDeque<Act>,
        pub then: Act,
        /// Bytes taken once armed.
        pub accepted: usize,
        /// Every write and flush fails with a reset.
        pub reset: bool,
        pub wakers: Vec<Waker>,
    }

    impl Default for Control {
        fn default() -> Self {
            Control {
                armed: false,
                script: VecDeque::new(),
                then: Act::Take,
                accepted: 0,
                reset: false,
                wakers: Vec::new(),
            }
        }
    }

    pub type Ctl = Arc<Mutex<Control>>;

    pub fn arm(control: &Ctl, script: &[Act], then: Act) {
        let mut c = control.lock().unwrap();
        c.armed = true;
        c.script = script.iter().copied().collect();
        c.then = then;
    }

    /// The peer's reset arrives: every write fails from now on.
    pub fn reset_now(control: &Ctl) {
        let wakers = {
            let mut c = control.lock().unwrap();
            c.reset = true;
            std::mem::take(&mut c.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// An in-memory pipe whose writes, once armed, go as its [`Control`] says.
    pub struct Socket {
        pub io: DuplexStream,
        pub control: Ctl,
    }

    read_through!(Socket);

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let act = {
                let mut c = self.control.lock().unwrap();
                if c.reset {
                    return Poll::Ready(Err(reset()));
                }
                if !c.armed {
                    Act::Take
                } else {
                    let act = c.script.pop_front().unwrap_or(c.then);
                    if act == Act::Stall {
                        // Stays stalled until the reset.
                        c.script.push_front(Act::Stall);
                        c.wakers.push(cx.waker().clone());
                        return Poll::Pending;
                    }
                    act
                }
            };
            let n = match act {
                Act::Take => buf.len(),
                Act::Short(n) => n.min(buf.len()),
                Act::Fail => return Poll::Ready(Err(reset())),
                Act::Panic => panic!("the socket under the Wire panicked"),
                Act::Stall => unreachable!(),
            };
            let poll = Pin::new(&mut self.io).poll_write(cx, &buf[..n]);
            let mut c = self.control.lock().unwrap();
            match &poll {
                Poll::Ready(Ok(n)) if c.armed => c.accepted += n,
                Poll::Pending => panic!("the pipe under the socket filled"),
                _ => {}
            }
            poll
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.control.lock().unwrap().reset {
                return Poll::Ready(Err(reset()));
            }
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }
}
