//! How long to wait between connect passes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The wait between failed connect passes.
///
/// Two presets: [`Backoff::exponential`]: the cap doubles from `min` up to `max` after
/// each failed pass, and each wait is drawn uniformly from `[min, cap]` (jitter, so many
/// clients do not retry in step). [`Backoff::skynet`]: skynet's fixed schedule, 0, 1, 2,
/// ... 11 s, then 1 to 11 s over again. Any other schedule, yours or another crate's, is
/// an iterator of waits: [`Backoff::from_fn`]. Each can stop after a number of attempts
/// ([`max_attempts`](Backoff::max_attempts)).
///
/// A run of failed passes starts with the first failure after the host answered (or
/// after [`Channel::connect`](crate::Channel::connect), or after the channel gave up, or
/// at start), and the schedule starts over with each run.
///
/// ```
/// use std::time::Duration;
/// use socketchannel::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
///     .max_attempts(20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    schedule: Schedule,
    max_attempts: Option<u32>,
    seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Schedule {
    Exponential { min: Duration, max: Duration },
    Skynet,
    Custom(Factory),
}

/// A run of waits from a custom schedule: boxed once per run of failed passes.
pub(crate) type Waits = Box<dyn Iterator<Item = Duration> + Send>;

/// A custom schedule's factory. Two are equal only if they are the same one (clones of
/// one [`Backoff`]): closures cannot be compared.
#[derive(Clone)]
struct Factory(Arc<dyn Fn() -> Waits + Send + Sync>);

impl fmt::Debug for Factory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("custom")
    }
}

impl PartialEq for Factory {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Factory {}

impl Default for Backoff {
    /// Exponential from 100 ms up to 10 s, without end.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    /// Exponential backoff with full jitter between `min` and a cap that doubles up to
    /// `max`. A `max` below `min` counts as `min`.
    pub fn exponential(min: Duration, max: Duration) -> Self {
        Backoff::with(Schedule::Exponential {
            min,
            max: max.max(min),
        })
    }

    /// skynet's schedule: 0, 1, 2, ... 11 s, then 1 to 11 s again, repeating.
    pub fn skynet() -> Self {
        Backoff::with(Schedule::Skynet)
    }

    /// Any schedule: `factory` makes an iterator of waits, one per failed pass.
    ///
    /// Each channel calls `factory` when a run of failed passes starts (its first failed
    /// pass, and the first one after the host answered a call, after
    /// [`Channel::connect`](crate::Channel::connect) or after giving up), then waits
    /// the iterator's next item after each failed pass of the run. When the iterator
    /// ends (`None`), the channel gives up as after [`max_attempts`](Self::max_attempts):
    /// it waits for the next call, or `connect()`, to try again, and the next failure
    /// calls `factory` again. `max_attempts` applies too, whichever ends first.
    ///
    /// The iterator's waits are used as they are: [`jitter_seed`](Self::jitter_seed)
    /// seeds only the presets' jitter, so add your own if you want some. Each channel
    /// has iterators of its own; one is boxed per run of failures, none per call.
    ///
    /// Any iterator of [`Duration`]s will do, such as `backon`'s backoffs
    /// (`Backoff::from_fn(|| ExponentialBuilder::default().with_jitter().build())`, with
    /// `backon::BackoffBuilder` in scope), or one written by hand: 50 ms, doubling up to
    /// 2 s, ten waits in all:
    ///
    /// ```
    /// use std::time::Duration;
    /// use socketchannel::{Backoff, Channel};
    ///
    /// let backoff = Backoff::from_fn(|| {
    ///     std::iter::successors(Some(Duration::from_millis(50)), |d| {
    ///         Some((*d * 2).min(Duration::from_secs(2)))
    ///     })
    ///     .take(10)
    /// });
    /// let builder = Channel::<String, String>::builder().host("db:5432").backoff(backoff);
    /// # let _ = builder;
    /// ```
    pub fn from_fn<F, I>(factory: F) -> Self
    where
        F: Fn() -> I + Send + Sync + 'static,
        I: Iterator<Item = Duration> + Send + 'static,
    {
        Backoff::with(Schedule::Custom(Factory(Arc::new(move || {
            Box::new(factory()) as Waits
        }))))
    }

    fn with(schedule: Schedule) -> Self {
        Backoff {
            schedule,
            max_attempts: None,
            seed: None,
        }
    }

    /// Gives up after this many failed passes in a row (the channel then waits for the
    /// next call, or [`Channel::connect`](crate::Channel::connect), to try again).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Seeds the jitter of the presets ([`exponential`](Self::exponential)), so the
    /// same failures give the same waits (deterministic tests and simulations). Without
    /// it each channel seeds from the clock and the process. A schedule from
    /// [`from_fn`](Self::from_fn) makes its own waits: the seed does not touch them.
    ///
    /// ```
    /// # use socketchannel::Backoff;
    /// let backoff = Backoff::default().jitter_seed(42);
    /// ```
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The jitter source this backoff draws from: seeded as given, or from `fallback`.
    pub(crate) fn jitter(&self, fallback: impl FnOnce() -> u64) -> Jitter {
        Jitter::new(self.seed.unwrap_or_else(fallback))
    }

    /// A channel's own state for this backoff: the jitter, seeded as given or from
    /// `fallback`, and the current run of a custom schedule.
    pub(crate) fn state(&self, fallback: impl FnOnce() -> u64) -> BackoffState {
        BackoffState {
            jitter: self.jitter(fallback),
            run: None,
        }
    }

    /// The wait after the `failures`-th failed pass in a row (1-based), or `None` to give
    /// up. The first failure of a run (the task's counter back to 0 after a success, a
    /// `connect()` or giving up) starts a custom schedule over with a fresh iterator.
    pub(crate) fn next_delay(&self, failures: u32, state: &mut BackoffState) -> Option<Duration> {
        let Schedule::Custom(factory) = &self.schedule else {
            // One draw per failed pass, given up or not, as the presets always did.
            let unit = state.jitter.unit();
            return self.delay(failures, unit);
        };
        if self.gives_up(failures) {
            state.run = None;
            return None;
        }
        if failures <= 1 || state.run.is_none() {
            state.run = Some((factory.0)());
        }
        let delay = state.run.as_mut().and_then(Iterator::next);
        if delay.is_none() {
            state.run = None;
        }
        delay
    }

    fn gives_up(&self, failures: u32) -> bool {
        self.max_attempts.is_some_and(|max| failures >= max)
    }

    /// A preset's wait after the `failures`-th failed pass in a row (1-based), or `None`
    /// to give up. `unit` is a number in `[0, 1)`, the jitter. A custom schedule has no
    /// wait here (see [`next_delay`](Self::next_delay)).
    fn delay(&self, failures: u32, unit: f64) -> Option<Duration> {
        if self.gives_up(failures) {
            return None;
        }
        match self.schedule {
            Schedule::Exponential { min, max } => {
                let doublings = failures.saturating_sub(1).min(32);
                let cap = min
                    .checked_mul(1u32 << doublings.min(31))
                    .map_or(max, |cap| cap.min(max));
                Some(min + (cap - min).mul_f64(unit.clamp(0.0, 1.0)))
            }
            Schedule::Skynet => {
                // 0..=11, then 1..=11 repeating.
                let i = failures.saturating_sub(1);
                let secs = if i < 12 { i } else { 1 + (i - 12) % 11 };
                Some(Duration::from_secs(secs.into()))
            }
            Schedule::Custom(_) => None,
        }
    }
}

/// A channel's own backoff state (each channel's task holds one).
pub(crate) struct BackoffState {
    jitter: Jitter,
    /// The current run of a custom schedule; `None` until a run starts.
    run: Option<Waits>,
}

/// A small, seedable random source for jitter (xorshift64*): no dependency needed.
#[derive(Debug, Clone)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Self {
        Jitter(seed | 1)
    }

    /// A number in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn skynet_schedule() {
        let b = Backoff::skynet();
        let secs: Vec<u64> = (1..=25)
            .map(|n| b.delay(n, 0.5).unwrap().as_secs())
            .collect();
        assert_eq!(
            secs,
            [
                0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2
            ]
        );
    }

    #[test]
    fn a_seeded_jitter_repeats_itself() {
        let b = Backoff::default().jitter_seed(7);
        let draw = |b: &Backoff| {
            let mut j = b.jitter(|| unreachable!("seeded"));
            (0..8).map(|_| j.unit()).collect::<Vec<_>>()
        };
        assert_eq!(draw(&b), draw(&b));
        assert_ne!(draw(&b), draw(&Backoff::default().jitter_seed(8)));
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let b = Backoff::default().max_attempts(3);
        assert!(b.delay(2, 0.0).is_some());
        assert!(b.delay(3, 0.0).is_none());
    }

    proptest! {
        #[test]
        fn exponential_delays_stay_in_bounds_and_caps_grow(
            min_ms in 0u64..1_000,
            extra_ms in 0u64..100_000,
            failures in 1u32..200,
            unit in 0.0f64..1.0,
        ) {
            let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(min_ms + extra_ms));
            let b = Backoff::exponential(min, max);
            let d = b.delay(failures, unit).unwrap();
            prop_assert!(d >= min && d <= max);
            // The cap (unit = 1) never shrinks as failures grow.
            prop_assert!(b.delay(failures + 1, 0.999_999).unwrap() >= b.delay(failures, 0.999_999).unwrap());
            // The first wait is drawn from [min, min].
            prop_assert_eq!(b.delay(1, unit).unwrap(), min);
        }

        #[test]
        fn jitter_is_in_unit_range(seed in any::<u64>()) {
            let mut j = Jitter::new(seed);
            for _ in 0..100 {
                let u = j.unit();
                prop_assert!((0.0..1.0).contains(&u));
            }
        }
    }
}
