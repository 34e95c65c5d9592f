//! How long to wait between connect passes.

use std::time::Duration;

/// The wait between failed connect passes.
///
/// [`Backoff::exponential`]: the cap doubles from `min` up to `max` after each failed
/// pass, and each wait is drawn uniformly from `[min, cap]` (jitter, so many clients do
/// not retry in step). [`Backoff::skynet`]: skynet's fixed schedule, 0, 1, 2, ... 11 s,
/// then 1 to 11 s over again. Either can stop after a number of attempts.
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
}

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
        Backoff {
            schedule: Schedule::Exponential {
                min,
                max: max.max(min),
            },
            max_attempts: None,
            seed: None,
        }
    }

    /// skynet's schedule: 0, 1, 2, ... 11 s, then 1 to 11 s again, repeating.
    pub fn skynet() -> Self {
        Backoff {
            schedule: Schedule::Skynet,
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

    /// Seeds the jitter, so the same failures give the same waits (deterministic tests
    /// and simulations). Without it each channel seeds from the clock and the process.
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

    /// The wait after the `failures`-th failed pass in a row (1-based), or `None` to give
    /// up. `unit` is a number in `[0, 1)`, the jitter.
    pub(crate) fn delay(&self, failures: u32, unit: f64) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| failures >= max) {
            return None;
        }
        Some(match self.schedule {
            Schedule::Exponential { min, max } => {
                let doublings = failures.saturating_sub(1).min(32);
                let cap = min
                    .checked_mul(1u32 << doublings.min(31))
                    .map_or(max, |cap| cap.min(max));
                min + (cap - min).mul_f64(unit.clamp(0.0, 1.0))
            }
            Schedule::Skynet => {
                // 0..=11, then 1..=11 repeating.
                let i = failures.saturating_sub(1);
                let secs = if i < 12 { i } else { 1 + (i - 12) % 11 };
                Duration::from_secs(secs.into())
            }
        })
    }
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
