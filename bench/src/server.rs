//! The echo server, and the guard that runs it as a child process.
//!
//! The server runs in its own process (this same binary, started with the hidden
//! `--server MODE --port N` arguments) so that its CPU time and allocations never count
//! as the client's. It is plain blocking code, one thread per connection: read as much
//! as the socket has (up to 256 KiB), answer every complete frame, write all the answers
//! of that read with one `write`. It does no per-frame work beyond finding frame
//! boundaries, so the client is what the benchmark measures.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::process::{Child, Command, Stdio};
use std::{fmt, thread};

use crate::codec::{HEADER_LEN, frame_len};

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMode {
    /// Echo every frame, in order.
    Order,
    /// Echo the complete frames of each read in reverse order, so a session-mode client
    /// gets its replies out of order.
    Reverse,
    /// Hold every reply until a frame whose nonce is [`RELEASE`] arrives, then send them
    /// all (in order, the release frame last). Used to measure a client with many
    /// requests in flight.
    Hold,
}

/// The payload nonce of the frame that makes a [`ServerMode::Hold`] server answer.
pub const RELEASE: u64 = u64::MAX;

impl ServerMode {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerMode::Order => "order",
            ServerMode::Reverse => "reverse",
            ServerMode::Hold => "hold",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Self> {
        [ServerMode::Order, ServerMode::Reverse, ServerMode::Hold]
            .into_iter()
            .find(|mode| mode.as_str() == name)
    }
}

impl fmt::Display for ServerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------
// The child process, seen from the parent

/// A server running in a child process; killed (by pid) when dropped, panics included.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts this binary as a `mode` server on a free loopback port and waits until it
    /// listens.
    pub fn spawn(mode: ServerMode) -> io::Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .args(["--server", mode.as_str(), "--port", "0"])
            // The child exits when this pipe closes, so it never outlives us.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        // From here on, an early return drops the guard and kills the child.
        let mut server = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let stdout = server.child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        server.addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| {
                io::Error::other(format!("{mode} server did not start (said {line:?})"))
            })?;
        Ok(server)
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The server itself, in the child

/// Runs a `mode` server on 127.0.0.1:`port` (0 picks a free port) until stdin closes.
///
/// Prints `listening ADDR` on stdout once it accepts connections.
pub fn serve(mode: ServerMode, port: u16) -> io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let mut stdout = io::stdout();
    writeln!(stdout, "listening {}", listener.local_addr()?)?;
    stdout.flush()?;

    // The parent holds the other end of stdin: when it goes away, however it died, so
    // do we.
    thread::spawn(|| {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        std::process::exit(0);
    });

    for stream in listener.incoming() {
        let stream = stream?;
        stream.set_nodelay(true)?;
        thread::spawn(move || {
            if let Err(e) = serve_connection(mode, stream) {
                // A client that disconnects is the normal way for a connection to end.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) {
                    eprintln!("{mode} server: {e}");
                }
            }
        });
    }
    Ok(())
}

/// Answers one connection until the client closes it.
fn serve_connection(mode: ServerMode, mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    let mut frames: Vec<Range<usize>> = Vec::new();
    // Reverse mode: the answers of one read. Hold mode: everything held so far.
    let mut out: Vec<u8> = Vec::with_capacity(buf.len());
    loop {
        if filled == buf.len() {
            // One frame bigger than the buffer: grow it.
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;

        // Find the complete frames; `end` is where the first incomplete one starts.
        frames.clear();
        let mut end = 0;
        while let Some(len) = frame_len(&buf[end..filled])? {
            if end + 4 + len > filled {
                break;
            }
            frames.push(end..end + 4 + len);
            end += 4 + len;
        }

        match mode {
            // An echo in order is the bytes just read: no copy at all.
            ServerMode::Order if end > 0 => stream.write_all(&buf[..end])?,
            ServerMode::Order => {}
            ServerMode::Reverse => {
                out.clear();
                for frame in frames.iter().rev() {
                    out.extend_from_slice(&buf[frame.clone()]);
                }
                stream.write_all(&out)?;
            }
            ServerMode::Hold => {
                for frame in &frames {
                    let frame = &buf[frame.clone()];
                    out.extend_from_slice(frame);
                    if nonce(frame) == Some(RELEASE) {
                        stream.write_all(&out)?;
                        out.clear();
                    }
                }
            }
        }

        buf.copy_within(end..filled, 0);
        filled -= end;
    }
}

/// The nonce in the first 8 bytes of a frame's payload, if it has that many.
fn nonce(frame: &[u8]) -> Option<u64> {
    let bytes = frame.get(HEADER_LEN..HEADER_LEN + 8)?;
    Some(u64::from_be_bytes(bytes.try_into().expect("eight bytes")))
}
