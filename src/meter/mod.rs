//! Bytes moved by the transport, and the reads and writes that moved them, for the stall
//! timer, the counters and the byte-exact *not sent*.
//!
//! [`Metered`] wraps an IO object (a `TcpStream`, a TLS stream) below the codec's
//! `Framed` and counts what each read and write moved, into counters of the thread
//! that polls it; wrapped around the codec, it counts the bytes each frame encodes to.
//! The engine reads the counters before and after it polls its transport, in the same
//! poll on the same thread, so the difference is what its own transport moved: nothing
//! has to be threaded through the user's codec or the `Transport` bound.
//!
//! With both counts a connection knows where each call's bytes begin in its stream and
//! how far the IO took that stream: when it fails, a call whose first byte the IO never
//! accepted cannot have reached the server, and fails *not sent* (`Conn::fail`).

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};

pub(crate) mod queue;

#[cfg(unix)]
pub use queue::socket_send_queue;
mod wire;

pub use self::wire::Wire;

/// What every [`Metered`] IO polled on one thread has moved so far: the counts only
/// grow (wrapping), so the difference of two marks is what moved between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Bytes read.
    pub(crate) read: u64,
    /// Bytes the IO accepted for writing.
    pub(crate) written: u64,
    /// Reads that returned bytes (or the end of the stream).
    pub(crate) reads: u64,
    /// Writes that the IO accepted bytes of.
    pub(crate) writes: u64,
    /// Writes and flushes asked of the IO, whatever became of them: a transport whose
    /// writes are metered shows some before it can fail a write.
    pub(crate) tries: u64,
    /// Bytes a [`Wire`] saw leave. Not in `written`, which counts what the layer above
    /// took (and may count ahead of it: a layer's `Pending`), but progress all the same:
    /// a large request leaving slowly through a layer is no stall.
    pub(crate) below: u64,
}

impl Mark {
    /// What moved from `earlier` to `self`.
    pub(crate) fn since(self, earlier: Mark) -> Mark {
        Mark {
            read: self.read.wrapping_sub(earlier.read),
            written: self.written.wrapping_sub(earlier.written),
            reads: self.reads.wrapping_sub(earlier.reads),
            writes: self.writes.wrapping_sub(earlier.writes),
            tries: self.tries.wrapping_sub(earlier.tries),
            below: self.below.wrapping_sub(earlier.below),
        }
    }
}

thread_local! {
    static MOVED: Cell<Mark> = const {
        Cell::new(Mark { read: 0, written: 0, reads: 0, writes: 0, tries: 0, below: 0 })
    };
    /// Bytes every [`Metered`] codec on this thread has encoded.
    static ENCODED: Cell<u64> = const { Cell::new(0) };
    /// A [`Metered`] codec is encoding on this thread (the outermost counts).
    static ENCODING: Cell<bool> = const { Cell::new(false) };
}

/// What every [`Metered`] IO has moved on this thread so far.
pub(crate) fn mark() -> Mark {
    MOVED.with(Cell::get)
}

/// Bytes every [`Metered`] codec has encoded on this thread so far.
#[inline]
pub(crate) fn encoded() -> u64 {
    ENCODED.with(Cell::get)
}

pub(super) fn add(update: impl FnOnce(&mut Mark)) {
    MOVED.with(|cell| {
        let mut mark = cell.get();
        update(&mut mark);
        cell.set(mark);
    });
}

/// What a [`Wire`] below saw during one write of the [`Metered`] above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Below {
    /// No `Metered` write is under way on this thread (a flush, a handshake).
    Outside,
    /// No `Wire` was written to.
    Unseen,
    /// A `Wire` was written to, and took nothing.
    Nothing,
    /// A `Wire` took bytes.
    Moved,
    /// A `Wire` took bytes, then failed, and kept the error for the next write (see
    /// [`Wire`]): only a count the layer above reports for this write says what left.
    Kept,
}

thread_local! {
    pub(super) static BELOW: Cell<Below> = const { Cell::new(Below::Outside) };
}

/// A [`Metered`] write under way on this thread: what a [`Wire`] below sees is its,
/// until it ends (also by a panic, so no later write reads a stale state).
struct WriteUnderWay;

impl WriteUnderWay {
    fn start() -> Self {
        BELOW.set(Below::Unseen);
        WriteUnderWay
    }
}

impl Drop for WriteUnderWay {
    fn drop(&mut self) {
        BELOW.set(Below::Outside);
    }
}

/// How a [`Metered`] IO's failed and pending writes are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Mode {
    /// A layer that may fail a write after part of it left, and may say `Pending`
    /// after taking its input (OpenSSL's way): [`Metered::new`].
    #[default]
    Layer,
    /// A socket or pipe: a failed write took nothing ([`Metered::exact`]).
    Exact,
    /// A layer that takes nothing in a write that says `Pending` (tokio-rustls):
    /// [`Metered::reporting`].
    Reporting,
}

/// Counts one write of `offered` bytes. Too many is safe (a call counted as having
/// left *may have executed*), too few is not (it would fail *not sent*), so where it
/// is not known what left, all that was offered counts:
///
/// - a write that failed took nothing only where that is known: a [`Wire`] below saw
///   nothing leave, or an `exact` IO saw no `Wire` at all;
/// - a write that says `Pending` after bytes left the `Wire` below (or after it kept
///   an error) counts all it was offered at once, except under a `Reporting` layer:
///   the layer may hold all of its input and report it only once it left, and the
///   connection may end before it does (a read error, the stall timer). What is
///   counted ahead of a report is `credit`, taken off the counts that follow.
fn count_write(
    poll: &Poll<io::Result<usize>>,
    offered: usize,
    mode: Mode,
    credit: &mut u64,
) -> u64 {
    let below = BELOW.get();
    let offered = offered as u64;
    let n = match poll {
        Poll::Ready(Ok(n)) => {
            let n = *n as u64;
            let ahead = n.min(*credit);
            *credit -= ahead;
            n - ahead
        }
        Poll::Ready(Err(_)) => {
            let n = match below {
                Below::Nothing => 0,
                Below::Unseen if mode == Mode::Exact => 0,
                _ => offered.saturating_sub(*credit),
            };
            *credit = 0;
            n
        }
        Poll::Pending if mode != Mode::Reporting && matches!(below, Below::Moved | Below::Kept) => {
            let n = offered.saturating_sub(*credit);
            *credit = (*credit).max(offered);
            n
        }
        Poll::Pending => 0,
    };
    add(|m| {
        m.tries = m.tries.wrapping_add(1);
        if n > 0 {
            m.written = m.written.wrapping_add(n);
            m.writes = m.writes.wrapping_add(1);
        }
    });
    n
}

/// A stream framed with a codec, both [`Metered`]: what the crate's connectors make.
pub type MeteredFramed<IO, C> = tokio_util::codec::Framed<Metered<IO>, Metered<C>>;

pin_project_lite::pin_project! {
    /// Counts what a connection moves: wrapped around its IO object (below the codec's
    /// `Framed`), the bytes each read and write moved; wrapped around its codec, the
    /// bytes each frame encodes to.
    ///
    /// The IO's bytes count as progress for the stall timer
    /// ([`Config::stall_timeout`](crate::Config::stall_timeout)) and in
    /// [`Counters`](crate::Counters); without it only whole frames count. With both
    /// wrapped, a call none of whose bytes the IO accepted when its connection fails
    /// (a write error, a reset, the server's close while calls were still buffered)
    /// fails *not sent* ([`Error::is_not_sent`](crate::Error::is_not_sent)), where
    /// otherwise every call handed to the transport *may have executed*. The crate's
    /// connectors ([`TcpConnector`](crate::TcpConnector) and the others) frame
    /// `Metered<TcpStream>` ([`exact`](Metered::exact)) with a `Metered` codec; wrap a
    /// connector of your own the same way:
    ///
    /// ```
    /// use socketchannel::{Channel, Metered, Order, Plain};
    /// use tokio_util::codec::{Framed, LinesCodec};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (io, _server) = tokio::io::duplex(1024);
    /// // A pipe's failed write took nothing: `exact`.
    /// let framed = Framed::new(Metered::exact(io), Metered::new(LinesCodec::new()));
    /// let channel: Channel<String, String> = Channel::new(framed, Order::new(Plain));
    /// # drop(channel);
    /// # }
    /// ```
    ///
    /// A codec's bytes are only exact when the bytes its frames encode to are the bytes
    /// written, in order: an IO of your own between the `Framed` and the socket that
    /// compresses or re-frames them must be the one wrapped, above such a layer (TLS:
    /// the plaintext the TLS session accepted counts, as the crate's `TlsConnector`
    /// does). Such a layer may fail a write after part of it left: a `Metered` made by
    /// [`new`](Metered::new) counts a failed write as having taken all it was offered,
    /// unless a [`Wire`] under the layer saw nothing leave, and a write that says
    /// `Pending` after bytes left the `Wire` as having taken all it was offered (the
    /// layer may hold its input until all of it left). Over a layer that takes nothing
    /// in a write that says `Pending` (tokio-rustls), [`reporting`](Metered::reporting)
    /// counts such a write as nothing.
    #[derive(Debug, Clone, Default)]
    pub struct Metered<T> {
        #[pin]
        inner: T,
        mode: Mode,
        // Bytes counted as written ahead of the IO's report of them (`count_write`).
        credit: u64,
        // Reads the send queue of the socket under the IO, for the stall timer.
        queued: Option<queue::Queued<T>>,
        // Bytes counted as written, all told (wrapping). Of an `exact` IO (a socket),
        // a send queue's reading carries it, so the timer knows what was written
        // between two readings; above a layer they are not the socket's bytes.
        sent: u64,
    }
}

impl<T> Metered<T> {
    /// Wraps an IO object or a codec. A write of the IO that fails counts as having
    /// taken all it was offered (unless a [`Wire`] below says otherwise): some IOs
    /// (TLS) report an error after part of the write left, so only that is safe.
    pub fn new(inner: T) -> Self {
        Metered::with(inner, Mode::Layer)
    }

    /// Wraps an IO object whose failed writes took nothing: a socket (`TcpStream`,
    /// `UnixStream`) or an in-memory pipe, where one write is one system call, which
    /// either takes bytes or fails. The crate's connectors meter their sockets so.
    pub fn exact(inner: T) -> Self {
        Metered::with(inner, Mode::Exact)
    }

    /// Wraps a layer over a [`Wire`] that reports, for every write that does not fail,
    /// how much of its input it took, and takes nothing in a write that says `Pending`:
    /// tokio-rustls' `TlsStream`, which the crate's [`TlsConnector`](crate::TlsConnector)
    /// meters so. Under [`new`](Metered::new), a `Pending` write after a record left
    /// counts all it was offered (a layer may hold its input and say `Pending` until
    /// all of it left); here it counts nothing, so more calls can fail *not sent* when
    /// the connection ends. Only for a layer that keeps that promise: one that says
    /// `Pending` after taking input would have executed calls fail *not sent*.
    pub fn reporting(inner: T) -> Self {
        Metered::with(inner, Mode::Reporting)
    }

    fn with(inner: T, mode: Mode) -> Self {
        Metered {
            inner,
            mode,
            credit: 0,
            queued: None,
            sent: 0,
        }
    }

    /// Reads the send queue of the socket under the IO with `queued` (its bytes not yet
    /// taken in by the peer; [`socket_send_queue`] reads a
    /// socket's) when the stall timer asks, before it gives up on a connection where
    /// calls wait and no byte moved: the kernel takes megabytes of a large request at
    /// once and wakes the writer again only once much of them has drained, so a peer
    /// taking a request in slowly can go longer than the stall timeout without a byte
    /// seen to move. A queue that shrank is the peer reading: the clock restarts. The
    /// crate's connectors read their sockets' so; without it, such a peer may fail
    /// [`Stalled`](crate::ConnectionErrorKind::Stalled).
    ///
    /// `queued` runs once or twice per stall timeout at most, only while calls wait
    /// and nothing moves, from the connection task when it polls this IO to read; one
    /// that returns `None` leaves the timer to judge by bytes alone. Over a layer
    /// (TLS), meter the layer and read the socket under it.
    pub fn send_queue(mut self, queued: fn(&T) -> Option<u64>) -> Self {
        self.queued = Some(queue::Queued::Queue(queued));
        self
    }

    /// [`send_queue`](Self::send_queue) over a layer with a [`Wire`] under it: `read`
    /// returns the socket's queue and the bytes the `Wire` wrote to it, all told, in
    /// the same unit (TLS records, where this IO counts plaintext).
    // Only the TLS connector reads a `Wire`'s count.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn send_queue_counted(mut self, read: fn(&T) -> Option<queue::Reading>) -> Self {
        self.queued = Some(queue::Queued::Counted(read));
        self
    }

    /// The IO object or codec.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The IO object or codec, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Unwraps the IO object or codec.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<IO: AsyncRead> AsyncRead for Metered<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(queued) = this.queued {
            let sent = (*this.mode == Mode::Exact).then_some(*this.sent);
            queue::answer_for(this.inner.as_ref().get_ref(), *queued, sent);
        }
        let before = buf.filled().len();
        let poll = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let n = (buf.filled().len() - before) as u64;
            add(|m| {
                m.read = m.read.wrapping_add(n);
                m.reads = m.reads.wrapping_add(1);
            });
        }
        poll
    }
}

impl<IO: AsyncWrite> AsyncWrite for Metered<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let _write = WriteUnderWay::start();
        let poll = this.inner.poll_write(cx, buf);
        let n = count_write(&poll, buf.len(), *this.mode, this.credit);
        *this.sent = this.sent.wrapping_add(n);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let _write = WriteUnderWay::start();
        let poll = this.inner.poll_write_vectored(cx, bufs);
        let offered = bufs.iter().map(|b| b.len()).sum();
        let n = count_write(&poll, offered, *this.mode, this.credit);
        *this.sent = this.sent.wrapping_add(n);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        add(|m| m.tries = m.tries.wrapping_add(1));
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        add(|m| m.tries = m.tries.wrapping_add(1));
        self.project().inner.poll_shutdown(cx)
    }
}

impl<I, C: Encoder<I>> Encoder<I> for Metered<C> {
    type Error = C::Error;

    #[inline]
    fn encode(&mut self, item: I, dst: &mut BytesMut) -> Result<(), Self::Error> {
        // A `Metered` codec inside another counts nothing: the outer one counts the
        // frame once.
        if ENCODING.replace(true) {
            return self.inner.encode(item, dst);
        }
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                ENCODING.set(false);
            }
        }
        let _done = Done;
        let before = dst.len();
        if before == 0 {
            front(dst);
        }
        let res = self.inner.encode(item, dst);
        // A codec that failed may have left part of a frame: it is in the stream.
        let n = dst.len().saturating_sub(before) as u64;
        ENCODED.with(|c| c.set(c.get().wrapping_add(n)));
        res
    }
}

/// Starts an empty write buffer at the front of its allocation. `Framed` advances its
/// write buffer past what each write took, so without this the frames of a batch go
/// where the last batch's ended, and once they reach the end of the allocation the
/// buffer copies what it holds of the batch back to the front to make room: with 64
/// calls of 1 KiB a batch, about half of each batch was copied twice (the encoder's
/// copy took 8.6% of the cycles at 256 callers against the hand-written client's
/// 2.9%). Empty, it moves no byte back, and `try_reclaim` allocates nothing: where the
/// buffer already starts at the front, or shares its allocation, it does nothing (a
/// buffer that owns its allocation alone with room past its end, which `Framed`'s
/// never does, only gains a byte of capacity).
#[cold]
#[inline(never)]
fn front(dst: &mut BytesMut) {
    let _ = dst.try_reclaim(dst.capacity().saturating_add(1));
}

impl<C: Decoder> Decoder for Metered<C> {
    type Item = C::Item;
    type Error = C::Error;

    #[inline]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        self.inner.decode(src)
    }

    #[inline]
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        self.inner.decode_eof(src)
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Buf, BufMut};

    use super::*;

    /// Writes `n` bytes a frame.
    struct Fill(usize);

    impl Encoder<()> for Fill {
        type Error = io::Error;

        fn encode(&mut self, (): (), dst: &mut BytesMut) -> io::Result<()> {
            dst.put_bytes(7, self.0);
            Ok(())
        }
    }

    /// What `Framed` does to its write buffer: frames encoded into it, then written
    /// out (the buffer advanced past them).
    #[test]
    fn a_batch_starts_at_the_front_of_an_emptied_write_buffer() {
        let mut codec = Metered::new(Fill(100));
        let mut buf = BytesMut::with_capacity(1024);
        codec.encode((), &mut buf).unwrap();
        buf.advance(100);
        assert_eq!(buf.capacity(), 924, "the written part is behind the start");
        codec.encode((), &mut buf).unwrap();
        assert_eq!(buf.capacity(), 1024, "back at the front, with all of it");
        assert_eq!(buf.len(), 100);
        // Not empty: left where it is (moving it would copy the unwritten frame).
        buf.advance(50);
        codec.encode((), &mut buf).unwrap();
        assert_eq!((buf.len(), buf.capacity()), (150, 974));
    }

    #[test]
    fn a_write_buffer_at_the_front_is_not_grown() {
        let mut codec = Metered::new(Fill(10));
        let mut buf = BytesMut::with_capacity(64);
        codec.encode((), &mut buf).unwrap();
        assert_eq!((buf.len(), buf.capacity()), (10, 64));
        let mut empty = BytesMut::new();
        codec.encode((), &mut empty).unwrap();
        assert_eq!(empty.len(), 10);
    }

    /// A layer that writes half its input below (a compressor) and says it took all.
    struct Halving<IO>(IO);

    impl<IO: AsyncRead + Unpin> AsyncRead for Halving<IO> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl<IO: AsyncWrite + Unpin> AsyncWrite for Halving<IO> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let half = buf.len() / 2;
            Pin::new(&mut self.0)
                .poll_write(cx, &buf[..half])
                .map_ok(|n| if n == half { buf.len() } else { n })
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// Writes 100 bytes to `io`, then asks for its send queue as the engine does and
    /// polls it to read: the reading it answered with.
    fn written_then_read<IO: AsyncRead + AsyncWrite + Unpin>(
        mut io: Metered<IO>,
    ) -> Option<queue::Reading> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let wrote = Pin::new(&mut io).poll_write(&mut cx, &[1; 100]);
        assert!(matches!(wrote, Poll::Ready(Ok(100))), "{wrote:?}");
        queue::ask();
        let mut space = [0; 8];
        let _ = Pin::new(&mut io).poll_read(&mut cx, &mut ReadBuf::new(&mut space));
        queue::answer()
    }

    /// Helper-57's finding: a reading carried the bytes the `Metered` IO took, which
    /// above a layer are not those that joined the socket's queue (a compressor's
    /// input, TLS plaintext): a peer that stopped reading was spared while calls went
    /// out. A reading carries a count only in the socket's unit.
    #[tokio::test]
    async fn a_reading_counts_the_bytes_the_socket_took() {
        let (io, _peer) = tokio::io::duplex(4096);
        let exact = written_then_read(Metered::exact(io).send_queue(|_| Some(0)));
        assert_eq!(
            exact.and_then(|r| r.sent),
            Some(100),
            "a socket's own count"
        );

        let (io, _peer) = tokio::io::duplex(4096);
        let layer = Metered::new(Halving(Wire::new(io))).send_queue(|_| Some(0));
        let layer = written_then_read(layer).expect("answered");
        assert_eq!(
            layer.sent, None,
            "a layer's input is not the socket's bytes"
        );

        let (io, _peer) = tokio::io::duplex(4096);
        let counted = Metered::reporting(Halving(Wire::new(io))).send_queue_counted(|io| {
            Some(queue::Reading {
                queued: 0,
                sent: Some(io.0.sent()),
            })
        });
        let counted = written_then_read(counted).expect("answered");
        assert_eq!(
            counted.sent,
            Some(50),
            "what the wire under the layer wrote"
        );
    }
}
