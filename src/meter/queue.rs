//! A socket's send queue: the bytes it took that its peer has not yet acknowledged
//! (TCP) or read (a Unix socket). The stall timer reads it before it gives up: the
//! kernel takes megabytes of a large request at once, and wakes the writer again only
//! once much of them has drained, so a peer taking a request in slowly can go longer
//! than the stall timeout without the engine seeing a byte move. A queue that shrank
//! is that peer reading (Contract 6: a large transfer on a slow link is never a stall).
//!
//! The engine asks before it polls a connection's transport ([`ask`]), and the first
//! [`Metered`](super::Metered) IO that can read its socket's queue answers when it is
//! polled to read ([`answer`]): nothing is threaded through the user's codec, and the
//! socket is read only where it lives, only when asked (once or twice a stall timeout,
//! while calls wait and nothing moves).

use std::cell::Cell;

/// Reads the send queue of the socket under an IO object, if it can.
#[derive(Debug)]
pub(crate) enum Queued<T> {
    /// The queue alone. What was written between two readings is then known only of
    /// an IO that is the socket itself ([`Metered::exact`](super::Metered::exact)):
    /// above a layer, the bytes the `Metered` IO takes are not the socket's (TLS
    /// plaintext, a compressed stream).
    Queue(fn(&T) -> Option<u64>),
    /// The queue, and the bytes written to the socket all told (a [`Wire`](super::Wire)
    /// under the layer counts them).
    // Only the TLS connector reads a `Wire`'s count.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    Counted(fn(&T) -> Option<Reading>),
}

impl<T> Clone for Queued<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Queued<T> {}

/// One reading of a socket's send queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reading {
    /// The bytes in the send queue.
    pub(crate) queued: u64,
    /// The bytes written to the socket, all told (wrapping), when the queue was read,
    /// where they are known: what two readings' counts differ by was written between
    /// them, and joined the queue behind the bytes it held.
    pub(crate) sent: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// Nobody asks.
    No,
    /// The engine asks the next IO polled on this thread.
    Yes,
    /// An IO answered.
    Answered(Reading),
}

thread_local! {
    static ASKED: Cell<Asked> = const { Cell::new(Asked::No) };
}

/// Asks the next metered IO polled to read on this thread for its send queue.
pub(crate) fn ask() {
    ASKED.set(Asked::Yes);
}

/// The answer to the last [`ask`], if an IO gave one; the question is withdrawn.
pub(crate) fn answer() -> Option<Reading> {
    match ASKED.replace(Asked::No) {
        Asked::Answered(reading) => Some(reading),
        Asked::No | Asked::Yes => None,
    }
}

/// Answers the question, if one is asked, with `queued` of `io`, whose socket has
/// taken `sent` bytes all told if that is known.
#[inline]
pub(super) fn answer_for<T>(io: &T, queued: Queued<T>, sent: Option<u64>) {
    if ASKED.get() == Asked::Yes {
        let reading = match queued {
            Queued::Queue(queued) => queued(io).map(|queued| Reading { queued, sent }),
            Queued::Counted(read) => read(io),
        };
        ASKED.set(reading.map_or(Asked::No, Asked::Answered));
    }
}

/// The send queue of `socket`: for a TCP socket, the bytes it took that its peer has
/// not yet acknowledged (`SIOCOUTQ`); for a Unix stream socket, those its peer has not
/// read. `None` where it cannot be read: on platforms other than Linux and Android,
/// and for descriptors that are no socket.
///
/// For [`Metered::send_queue`](crate::Metered::send_queue) in a connector of your own,
/// so that its stall timer tells a peer taking a large request in slowly from a stall
/// as the crate's connectors do:
///
/// ```
/// use socketchannel::{Metered, socket_send_queue};
/// use tokio::net::TcpStream;
///
/// fn meter(stream: TcpStream) -> Metered<TcpStream> {
///     Metered::exact(stream).send_queue(socket_send_queue)
/// }
/// ```
#[cfg(unix)]
#[allow(unsafe_code)]
pub fn socket_send_queue<S: std::os::fd::AsFd>(socket: &S) -> Option<u64> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let mut queued: libc::c_int = 0;
        // SAFETY: the descriptor is open (borrowed from `socket` for this call), and on
        // a socket `TIOCOUTQ` (the same request as `SIOCOUTQ`) writes one `c_int`
        // through the pointer, which points at one; on any other descriptor it fails.
        let rc = unsafe { libc::ioctl(socket.as_fd().as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if rc != 0 {
            return None;
        }
        u64::try_from(queued).ok()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = socket;
        None
    }
}

/// The send queue of the crate's connectors' sockets ([`socket_send_queue`]).
#[cfg(all(feature = "tcp", unix))]
pub(crate) use socket_send_queue as of;

/// The send queue of a socket: not read on this platform.
#[cfg(all(feature = "tcp", not(unix)))]
pub(crate) fn of<S>(_socket: &S) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Io(u64);

    const QUEUED: Queued<Io> = Queued::Queue(|io| Some(io.0));

    #[test]
    fn only_an_asked_question_is_answered_and_only_once() {
        answer_for(&Io(7), QUEUED, Some(1));
        assert_eq!(answer(), None, "nobody asked");
        ask();
        answer_for(&Io(7), QUEUED, Some(1));
        answer_for(&Io(9), QUEUED, Some(2));
        let first = Reading {
            queued: 7,
            sent: Some(1),
        };
        assert_eq!(answer(), Some(first), "the first IO polled answers");
        assert_eq!(answer(), None, "an answer is taken once");
        ask();
        assert_eq!(answer(), None, "no IO answered");
        answer_for(&Io(7), QUEUED, Some(1));
        assert_eq!(answer(), None, "the question was withdrawn");
    }

    #[test]
    fn a_counted_reading_carries_the_sockets_count() {
        let counted = Queued::Counted(|io: &Io| {
            Some(Reading {
                queued: io.0,
                sent: Some(40),
            })
        });
        ask();
        answer_for(&Io(7), counted, Some(60));
        let reading = answer().expect("answered");
        assert_eq!(
            reading.sent,
            Some(40),
            "the socket's count, not the layer's"
        );
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_socket_reports_what_its_peer_has_not_read() {
        use std::io::Write;
        let (mut a, b) = std::os::unix::net::UnixStream::pair().expect("a pair");
        assert_eq!(socket_send_queue(&a), Some(0));
        a.write_all(&[0; 1000]).expect("write");
        let held = socket_send_queue(&a).expect("a queue");
        assert!(held >= 1000, "{held}");
        drop(b);
        let file = std::fs::File::open("/dev/null").expect("a file");
        assert_eq!(socket_send_queue(&file), None, "no socket");
    }
}
