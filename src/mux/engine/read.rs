//! Reading a connection: ready frames, routed by the matcher to their callers, the push
//! receiver, or (order mode, nothing waiting) the end of the connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tower::BoxError;
use tracing::trace;

use super::{Ended, Engine, LARGE_PASS, READ_BATCH, READ_BATCH_LARGE, fail};
use crate::error::{ConnectionError, ConnectionErrorKind as Why};
use crate::mux::conn::Conn;
use crate::mux::matcher::{Matcher, Route};

impl<Req, Resp> Engine<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Reads and routes ready frames. Returns how many it read, and whether it stopped
    /// at the pass's limit (more may be ready) rather than for want of a frame.
    pub(super) fn poll_read<T, M, RE>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<T, M, Req, Resp>,
    ) -> Result<(usize, bool), ConnectionError>
    where
        T: Stream<Item = Result<Resp, RE>> + Unpin,
        M: Matcher<Req, Resp>,
        RE: Into<BoxError>,
    {
        let mut n = 0;
        let start = crate::meter::mark().read;
        loop {
            // Large frames (a pass's `READ_BATCH` of them took `LARGE_PASS` bytes off
            // the socket): up to `READ_BATCH_LARGE` a pass.
            if n >= READ_BATCH
                && (n >= READ_BATCH_LARGE
                    || crate::meter::mark().read.wrapping_sub(start) < LARGE_PASS)
            {
                return Ok((n, true));
            }
            let frame = match Pin::new(&mut conn.transport).poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => return Err(fail(Why::Read, e)),
                Poll::Ready(None) => return Err(ConnectionError::new(Why::Eof, None)),
                Poll::Pending => break,
            };
            n += 1;
            self.shared.stats.received(1);
            match conn.matcher.route(frame) {
                Route::Delivered { counts } => conn.answered |= counts,
                Route::Limit { counts } => {
                    conn.answered |= counts;
                    conn.gave_up();
                }
                Route::Push(frame) => self.push(frame),
                Route::Unknown => self.shared.stats.unknown(1),
                Route::Desync => return Err(ConnectionError::new(Why::Desync, None)),
                // Its call is answered, but the host is not: a connection that only
                // ever says so (or says so and closes) is a failed attempt, backed
                // off from, wherever it ends.
                Route::WrongServer => conn.leave = Some(Ended::WrongServer),
                // Wrong server wins: it also says to back off from this host.
                Route::Drain => {
                    conn.leave.get_or_insert(Ended::Drain);
                }
            }
        }
        Ok((n, false))
    }

    fn push(&mut self, frame: Resp) {
        match self.pushes.try_send(frame) {
            Ok(()) => self.shared.stats.pushes(1),
            Err(_) => {
                trace!("push receiver full or gone; push frame dropped");
                self.shared.stats.push_overflow(1);
            }
        }
    }
}
