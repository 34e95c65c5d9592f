//! One poll of a connection: write, read and route, flush, then the timers' rules, in
//! turn and within a budget; and when to yield.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::Instant;

use super::{BUDGET, Ended, Engine, Lane, fail};
use crate::error::{ConnectionError, ConnectionErrorKind as Why};
use crate::meter::Mark;
use crate::mux::conn::Conn;
use crate::mux::matcher::Matcher;
use crate::transport::Transport;

/// What one pass over the transport did.
struct Io {
    /// Calls or notices were written (or dropped unwritten).
    wrote: bool,
    /// The lane is finished.
    lane_done: bool,
    /// Frames read.
    read: usize,
    /// The read was full: it stopped at its limit (more frames may be ready) and most
    /// of its frames completed calls (`flush.rs`).
    full: bool,
    /// A flush completed.
    flushed: bool,
}

impl<Req, Resp> Engine<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Drives `conn`, writing calls from `lane`, until it fails, until the lane is
    /// finished and nothing waits (then the transport is flushed and closed:
    /// [`Ended::Done`]), or until it should be retired ([`Ended::Retire`]).
    pub(crate) fn poll_conn<T, M>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<T, M, Req, Resp>,
        mut lane: Lane<'_, Req, Resp>,
    ) -> Poll<Result<Ended, ConnectionError>>
    where
        T: Transport<Req, Resp>,
        M: Matcher<Req, Resp>,
    {
        for pass in 0..BUDGET {
            // The server's word to leave (read by the handshake, or in the last pass)
            // comes before any write: that connection takes no new call.
            if let Some(leave) = self.leaving(conn, &lane) {
                return Poll::Ready(Ok(leave));
            }
            let bytes = crate::meter::mark();
            // Callers that left get their cancel notices, written ahead of new calls.
            conn.collect_notices(cx, pass == 0);
            // With an orphan-age clock, the clock is read before the calls of this pass
            // are stamped with its tick (`retire.rs`), and that read serves the pass.
            let early = conn.advance_age();
            // A flush left unfinished by the last pass: what this one writes is more
            // of a request being taken in.
            let flushing = conn.needs_flush();
            conn.unflushed.begin();
            // The stall timer may ask what the socket's send queue holds: the first
            // metered IO polled to read answers.
            let ask = conn.stall.wants_queue();
            if ask {
                crate::meter::queue::ask();
            }
            let moved = self.poll_io(cx, conn, &mut lane);
            let queued = if ask {
                crate::meter::queue::answer()
            } else {
                None
            };
            // Counted before any error ends the connection: its calls' fate needs every
            // byte the IO accepted (`reach.rs`).
            let (bytes_read, bytes_written) = self.count_bytes(conn, bytes);
            let Io {
                wrote,
                lane_done,
                read,
                full,
                flushed,
            } = moved?;
            conn.report_in_flight();
            // One clock read per pass in which anything moved, for both timers' rules.
            let moved = (read > 0 || wrote || flushed || bytes_read || bytes_written)
                .then(|| early.unwrap_or_else(Instant::now));
            conn.unflushed.end(full);
            // The server's word restarts the stall clock: a frame or a byte read. So does
            // a write still being taken in (a large request over a slow link), up to its
            // last bytes, but not one that went out whole at once: a heartbeat to a
            // server that reads and never answers is no sign of life (Contract 6).
            let heard =
                read > 0 || bytes_read || (bytes_written && (flushing || conn.needs_flush()));
            let watched = conn.matcher.watched();
            if let Some(limit) = self.stall {
                conn.stall
                    .poll(cx, limit, watched, heard.then_some(moved).flatten(), queued)?;
            }

            let lane_ends_conn = !matches!(lane, Lane::Handshake(_));
            if lane_done && lane_ends_conn && conn.is_idle() {
                let bytes = crate::meter::mark();
                let closed = Pin::new(&mut conn.transport).poll_close(cx);
                self.count_bytes(conn, bytes);
                ready!(closed).map_err(|e| fail(Why::Write, e))?;
                return Poll::Ready(Ok(Ended::Done));
            }
            if let Some(leave) = self.leaving(conn, &lane) {
                return Poll::Ready(Ok(leave));
            }
            // With no stall timer watching the waiting calls (exempt, or none set), the
            // orphan rule keeps its own clock.
            let unwatched = self.stall.is_none() || !watched;
            if matches!(lane, Lane::User) && conn.should_retire(cx, moved, unwatched) {
                return Poll::Ready(Ok(Ended::Retire));
            }
            if read == 0 && !wrote {
                return Poll::Pending;
            }
            // The callers these replies woke are about to send their next calls: let
            // them run first (a self-wake puts this task behind them), then write all
            // of those calls in one batch. Without this, on a multi-threaded runtime the
            // first caller's call wakes this task into the worker's LIFO slot, ahead of
            // the other callers, and each write carries a call or two. One reply woke
            // one caller, whose call wakes this task anyway: no need to yield.
            if read >= 2 && matches!(lane, Lane::User) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        // Out of budget with work left: let other tasks run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The server's word to leave `conn`, acted on in the users' lane only: a
    /// handshake finishes first (its own calls got their verdicts), a drain goes on.
    fn leaving<T, M>(
        &self,
        conn: &mut Conn<T, M, Req, Resp>,
        lane: &Lane<'_, Req, Resp>,
    ) -> Option<Ended> {
        match lane {
            Lane::User => conn.leave.take(),
            Lane::Handshake(_) | Lane::Drain => None,
        }
    }

    /// One pass over the transport: writes, then reads and routes, then a flush.
    fn poll_io<T, M>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<T, M, Req, Resp>,
        lane: &mut Lane<'_, Req, Resp>,
    ) -> Result<Io, ConnectionError>
    where
        T: Transport<Req, Resp>,
        M: Matcher<Req, Resp>,
    {
        // Writes first: a read without a request queued before a greeting arrived
        // must hold its FIFO slot when the greeting is routed.
        let (wrote, lane_done) = self.poll_write(cx, conn, lane)?;
        // Any frame read may free a slot or an id: then go round again to write.
        let waiting = conn.matcher.pending();
        let (read, more) = self.poll_read(cx, conn)?;
        // Calls are admitted only by writes: the fewer waiting, the more completed.
        let completed = waiting.saturating_sub(conn.matcher.pending());
        let full = more && completed.saturating_mul(2) >= read;
        // Flush after routing: the callers the replies woke start on other workers
        // while this one is in the write syscall (tens of µs on loopback: it runs
        // the receiver's side of TCP too), instead of after it. Unless the replies
        // still ready wake callers whose calls can join this write (`flush.rs`); a
        // connection the server said to leave flushes what it has.
        let mut flushed = false;
        if conn.needs_flush()
            && (conn.leave.is_some() || !conn.unflushed.hold(full, conn.matcher.pending()))
            && let Poll::Ready(res) = Pin::new(&mut conn.transport).poll_flush(cx)
        {
            res.map_err(|e| fail(Why::Write, e))?;
            conn.unflushed.flushed();
            flushed = true;
        }
        Ok(Io {
            wrote,
            lane_done,
            read,
            full,
            flushed,
        })
    }

    /// Adds what the transport moved since `before` to the counters and to how far
    /// `conn`'s bytes went; whether any bytes were read, and whether any were written
    /// (taken by the IO, or seen leaving by a `Wire` under a layer that reports later).
    fn count_bytes<T, M>(&self, conn: &mut Conn<T, M, Req, Resp>, before: Mark) -> (bool, bool) {
        let moved = crate::meter::mark().since(before);
        if moved != Mark::default() {
            self.shared.stats.moved(moved);
            conn.reach.moved(moved);
        }
        (moved.read != 0, moved.written != 0 || moved.below != 0)
    }
}
