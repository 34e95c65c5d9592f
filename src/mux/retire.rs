//! When a reconnecting channel retires a connection for its orphans: calls whose caller
//! is gone and that the server has not answered.
//!
//! Two rules ([`Config::max_orphans`](crate::Config::max_orphans),
//! [`Config::orphan_age`](crate::Config::orphan_age)): the connection is full (in-flight
//! limit, or no free id) and at least `limit` of its waiting calls are orphans (calls a
//! server ignores while it answers others, so the stall timer never fires); or its
//! oldest orphan is older than the age. The orphans are counted by a scan, only when a
//! rule could be true: while full, at most every `SCAN_EVERY`; and at each tick of the
//! age clock. Each entry is stamped with the tick it was written in, so no clock is
//! read per call.

use std::pin::Pin;
use std::task::Context;

use tokio::time::{Duration, Instant, Sleep};
use tracing::info;

use super::matcher::Matcher;

/// Orphans are counted at most this often because the connection is full.
const SCAN_EVERY: Duration = Duration::from_millis(50);

/// The orphan rules of one connection, and their state.
pub(crate) struct Retire {
    /// Orphans that make a full connection retire.
    limit: Option<usize>,
    /// How old the oldest orphan may grow.
    age: Option<AgeClock>,
    /// When the orphans were last counted because the connection was full.
    last_scan: Option<Instant>,
    /// The age clock: bumped every `AgeClock::every`, stamped on each entry.
    tick: u32,
    /// The clock ticked (`advance`) and the orphans have not been counted since.
    scan_due: bool,
}

/// How many whole `every`s fit in `span`, saturated (the tick counter wraps, and an
/// age is at most `Retire::TICKS` ticks).
fn ticks_in(span: Duration, every: Duration) -> u32 {
    u32::try_from(span.as_nanos() / every.as_nanos().max(1))
        .unwrap_or(u32::MAX)
        .min(u32::MAX / 2)
}

/// The orphan-age clock of a connection.
struct AgeClock {
    /// The length of a tick.
    every: Duration,
    /// When the next tick starts (set at the first check).
    next: Option<Instant>,
    /// Brings the ticks where nothing moves and no stall timer watches (an exempt
    /// orphan at the head in order mode holds every call behind it).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Retire {
    /// Ticks per age: the age is known to within a quarter of itself.
    const TICKS: u32 = 4;

    /// The rules, or `None` when both are off.
    pub(crate) fn new(limit: Option<usize>, age: Option<Duration>) -> Option<Self> {
        let age = age.map(|age| AgeClock {
            every: (age / Self::TICKS).max(Duration::from_millis(1)),
            next: None,
            timer: None,
        });
        (limit.is_some() || age.is_some()).then_some(Retire {
            limit,
            age,
            last_scan: None,
            tick: 0,
            scan_due: false,
        })
    }

    /// The tick to stamp on a call written now: [`advance`](Self::advance) the clock
    /// first.
    pub(crate) fn tick(&self) -> u32 {
        self.tick
    }

    /// Whether the connection keeps an age clock, which calls are stamped by.
    pub(crate) fn ages(&self) -> bool {
        self.age.is_some()
    }

    /// Moves the age clock to `now`: every tick that passed since the last one counts
    /// (on a quiet connection they are far apart), before the calls of this pass are
    /// stamped, or a call written after a quiet spell would be stamped with the tick
    /// from before it and read as that old. True when it ticked (a scan is due).
    pub(crate) fn advance(&mut self, now: Instant) -> bool {
        if let Some(AgeClock { every, next, .. }) = &mut self.age
            && next.is_none_or(|at| now >= at)
        {
            let passed = next.map_or(1, |at| ticks_in(now - at, *every).saturating_add(1));
            self.tick = self.tick.wrapping_add(passed);
            *next = Some(now + *every);
            self.scan_due = true;
        }
        self.scan_due
    }

    /// Should the connection that `matcher` holds the calls of be retired?
    ///
    /// `now` is the clock the engine read because something moved in this pass. The
    /// age clock ticks on it, so no timer is polled per pass on a busy connection. When
    /// nothing moved and `unwatched` (no stall timer watches the waiting calls: they
    /// are exempt, or there is none), a timer brings the ticks instead; when nothing
    /// moved and the stall timer watches, a silent connection is the stall timer's.
    pub(crate) fn poll<Req, Resp>(
        &mut self,
        cx: &mut Context<'_>,
        matcher: &impl Matcher<Req, Resp>,
        now: Option<Instant>,
        unwatched: bool,
    ) -> bool {
        let now = match (now, &mut self.age) {
            (Some(now), _) => now,
            (None, Some(AgeClock { every, next, timer })) if unwatched && matcher.pending() > 0 => {
                let at = next.unwrap_or_else(|| Instant::now() + *every);
                let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    *next = Some(at);
                    // Ticked by this pass's early read (`advance`): count them now.
                    if !self.scan_due {
                        return false;
                    }
                }
                Instant::now()
            }
            // Ticked by this pass's early read, though nothing moved after it.
            (None, _) if self.scan_due => Instant::now(),
            (None, _) => return false,
        };
        let mut scan = self.advance(now);
        self.scan_due = false;
        // A timer that brought a tick is re-armed for the next one, or nothing would
        // wake a quiet connection again.
        if scan
            && let Some(AgeClock {
                next: Some(at),
                timer: Some(timer),
                ..
            }) = &mut self.age
        {
            timer.as_mut().reset(*at);
            let _ = timer.as_mut().poll(cx);
        }
        let full = self.limit.is_some() && !matcher.has_room();
        if full && self.last_scan.is_none_or(|t| now >= t + SCAN_EVERY) {
            self.last_scan = Some(now);
            scan = true;
        }
        if !scan {
            return false;
        }
        let (orphans, oldest) = matcher.orphans();
        let too_many = full && self.limit.is_some_and(|limit| orphans >= limit);
        // Written during tick `oldest`: at least `tick - oldest - 1` whole ticks old.
        let too_old = self.age.is_some()
            && oldest.is_some_and(|oldest| {
                self.tick.wrapping_sub(oldest).saturating_sub(1) >= Self::TICKS
            });
        if too_many || too_old {
            info!(
                orphans,
                too_many, too_old, "unanswered calls nobody waits for: retiring the connection"
            );
        }
        too_many || too_old
    }
}
