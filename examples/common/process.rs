//! A real server (`redis-server`, `memcached`) run as a child process for an example or
//! a test: on a free 127.0.0.1 port, up once it answers a probe, killed by its pid when
//! dropped. Every wait is bounded.

use std::fs::File;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder, Framed};

/// How long a server may take to answer its first probe.
pub const STARTUP: Duration = Duration::from_secs(10);

/// Asks a server on a port whether it is up: resolves to `true` once it answers.
pub type Probe = fn(u16) -> Pin<Box<dyn Future<Output = bool> + Send>>;

/// A server child process. Dropping it kills the process (SIGKILL, by its pid).
#[derive(Debug)]
pub struct Server {
    program: &'static str,
    args: Vec<String>,
    port: u16,
    probe: Probe,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    /// Starts `program` with `args(port)` on a free port and waits until `probe`
    /// answers. A port taken by someone else between choosing and binding is retried
    /// with another.
    ///
    /// # Errors
    ///
    /// The program is not on `PATH` (the message says to install it), or the server did
    /// not come up within [`STARTUP`] (the message has the tail of its log).
    pub async fn start(
        program: &'static str,
        args: impl Fn(u16) -> Vec<String>,
        probe: Probe,
    ) -> io::Result<Server> {
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            let mut server = Server {
                program,
                args: args(port),
                port,
                probe,
                child: None,
                log: PathBuf::new(),
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no attempt made")))
    }

    /// `127.0.0.1:port`, as a host for a channel.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process (SIGKILL to its pid) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same program again, on the same port with the same arguments, and
    /// waits until it answers. Kills the running one first, if any.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let deadline = Instant::now() + STARTUP;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound || Instant::now() >= deadline => {
                    return Err(e);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn spawn_and_wait(&mut self) -> io::Result<()> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let _ = std::fs::remove_file(&self.log);
        self.log = std::env::temp_dir().join(format!(
            "socketchannel-{}-{}-{}-{}.log",
            self.program,
            self.port,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let out = File::create(&self.log)?;
        let child = Command::new(self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "`{0}` is not on PATH: install it (Debian/Ubuntu: \
                         `apt-get install {0}`; CI's .ci/run installs it)",
                        self.program
                    ),
                ),
                _ => e,
            })?;
        self.child = Some(child);

        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "{} on port {} exited at start ({status}); its log ends:\n{}",
                    self.program,
                    self.port,
                    self.log_tail()
                )));
            }
            let probe = tokio::time::timeout(Duration::from_secs(1), (self.probe)(self.port));
            if probe.await.unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} on port {} did not answer within {STARTUP:?}; its log ends:\n{}",
                        self.program,
                        self.port,
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether a server on 127.0.0.1:`port` answers `request` (sent framed by `codec`) with
/// a frame, any frame: an error reply is an answer too. What a [`Probe`] usually asks.
pub async fn answers<C, Req>(port: u16, codec: C, request: Req) -> bool
where
    C: Encoder<Req> + Decoder,
{
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut framed = Framed::new(stream, codec);
    if framed.send(request).await.is_err() {
        return false;
    }
    matches!(framed.next().await, Some(Ok(_)))
}

/// A port no one listens on now (the OS's choice; free until someone else takes it).
///
/// # Errors
///
/// The OS found none.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`: every wait in
/// the tests is bounded.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}
