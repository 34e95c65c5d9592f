//! Writing a connection: cancel notices first, then the calls tied to it, then its
//! lane's, while the sink and the matcher have room; calls whose caller is gone are
//! dropped unwritten.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_sink::Sink;
use tower::BoxError;

use super::{BATCH, Engine, Lane, fail};
use crate::error::{ConnectionError, ConnectionErrorKind as Why};
use crate::mux::Envelope;
use crate::mux::conn::Conn;
use crate::mux::matcher::Matcher;

impl<Req, Resp> Engine<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Writes calls, those tied to `conn` first and then `lane`'s, while there is room.
    /// Returns whether it did anything, and whether the lane is finished.
    pub(super) fn poll_write<T, M, WE>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<T, M, Req, Resp>,
        lane: &mut Lane<'_, Req, Resp>,
    ) -> Result<(bool, bool), ConnectionError>
    where
        T: Sink<Req, Error = WE> + Unpin,
        M: Matcher<Req, Resp>,
        WE: Into<BoxError>,
    {
        let mut pass = Pass::default();
        self.deadlines.new_pass();
        let written = self.write_pass(cx, conn, lane, &mut pass);
        // What the pass took from the intake and did not write (it ran out of room,
        // or the write failed) waits in `held`, still queued: never written.
        self.unstage();
        written?;
        // Calls wait in the intake for room: time them (`Engine::absorb`).
        if pass.blocked && matches!(lane, Lane::User) {
            self.absorb(cx);
        }
        if pass.sent > 0 {
            self.shared.stats.sent(pass.sent);
        }
        Ok((pass.progress, pass.lane_done))
    }

    #[inline(always)]
    fn write_pass<T, M, WE>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<T, M, Req, Resp>,
        lane: &mut Lane<'_, Req, Resp>,
        pass: &mut Pass,
    ) -> Result<(), ConnectionError>
    where
        T: Sink<Req, Error = WE> + Unpin,
        M: Matcher<Req, Resp>,
        WE: Into<BoxError>,
    {
        for turn in 0..BATCH {
            // A cancel notice goes ahead of any call, and needs no room in the matcher;
            // neither does the rest of a multi-part request.
            let mid_write = conn.mid_write();
            let notice = !mid_write && conn.has_notice();
            if !mid_write && !notice && !conn.matcher.has_room() {
                pass.blocked = true;
                break;
            }
            match Pin::new(&mut conn.transport).poll_ready(cx) {
                Poll::Ready(res) => res.map_err(|e| fail(Why::Write, e))?,
                Poll::Pending => {
                    pass.blocked = true;
                    break;
                }
            }
            if mid_write {
                pass.progress = true;
                conn.write_next_part()?;
                continue;
            }
            if notice {
                pass.progress = true;
                conn.write_notice()?;
                continue;
            }
            // What the handshake left unawaited and the idle ping go first; the
            // handshake's are no user's calls (the ping is the channel's own).
            if let Some(call) = conn.first.pop_front() {
                pass.progress = true;
                let counts = !call.leftover;
                self.write_one(conn, call, counts, pass)?;
                continue;
            }
            // As many as this pass and the matcher have room for may be taken from the
            // intake at once.
            let room = (BATCH - turn).min(
                conn.matcher
                    .capacity()
                    .saturating_sub(conn.matcher.pending()),
            );
            match self.poll_call(cx, lane, room) {
                Poll::Ready(Some(call)) => {
                    pass.progress = true;
                    let counts = matches!(lane, Lane::User);
                    self.write_one(conn, call, counts, pass)?;
                }
                Poll::Ready(None) => {
                    pass.lane_done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// Writes `call`, or drops it unwritten if its caller is gone.
    #[inline(always)]
    fn write_one<T, M, WE>(
        &mut self,
        conn: &mut Conn<T, M, Req, Resp>,
        call: Envelope<Req, Resp>,
        counts: bool,
        pass: &mut Pass,
    ) -> Result<(), ConnectionError>
    where
        T: Sink<Req, Error = WE> + Unpin,
        M: Matcher<Req, Resp>,
        WE: Into<BoxError>,
    {
        if call.is_gone() {
            // Cancelled before it was written: never written (and dropping it tells
            // nobody: its caller is gone).
            self.shared.stats.skipped(1);
            return Ok(());
        }
        if conn.write_call(call, &mut self.deadlines, counts)? {
            pass.sent += 1;
        }
        Ok(())
    }
}

/// What one write pass did.
#[derive(Default)]
struct Pass {
    /// Calls written.
    sent: u64,
    /// Anything was written or dropped unwritten.
    progress: bool,
    /// The lane is finished.
    lane_done: bool,
    /// It stopped for want of room, with calls perhaps still waiting.
    blocked: bool,
}
