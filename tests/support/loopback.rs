//! Plumbing shared by the loopback servers ([`server`](super::server),
//! [`proxy`](super::proxy) and the suites' own): a listener that can listen again on the
//! port it closed, the set of connection tasks a server aborts when it is dropped, and
//! an accept loop whose connections end with it ([`spawn_accept_loop`]).

#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

/// Listens on the loopback address `addr` (port 0: any free port) with `SO_REUSEADDR`,
/// so that a server can listen again on the port it has just closed. `who` names the
/// server in the panic for an address that is not loopback.
pub fn listen(addr: SocketAddr, who: &str) -> io::Result<TcpListener> {
    assert!(addr.ip().is_loopback(), "{who} only listens on loopback");
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The connection tasks a server started, so that dropping the server ends them all.
#[derive(Debug, Default)]
pub struct Conns(Mutex<Vec<AbortHandle>>);

impl Conns {
    /// Keeps `task`'s handle (and forgets those of the tasks that have finished).
    pub fn add<T>(&self, task: &JoinHandle<T>) {
        let mut conns = self.0.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| !c.is_finished());
        conns.push(task.abort_handle());
    }

    /// Aborts every connection task.
    pub fn abort_all(&self) {
        for conn in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            conn.abort();
        }
    }
}

/// Accepts connections on `listener`, each served by `serve(stream)` on a task of its
/// own, for at most `max` accepts and connection ends. Aborting the returned task aborts
/// every connection too (they live in a `JoinSet` it owns).
pub fn spawn_accept_loop<F, Fut>(listener: TcpListener, max: usize, mut serve: F) -> JoinHandle<()>
where
    F: FnMut(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        for _ in 0..max {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    conns.spawn(serve(stream));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}
