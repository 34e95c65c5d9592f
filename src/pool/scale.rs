//! A pool sized between a minimum and a maximum by how busy its connections are,
//! changed at most once per dwell time.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};

use super::member::Standing;
use super::members::Members;

/// How a pool that may grow and shrink decides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizing {
    pub(crate) min: usize,
    pub(crate) max: usize,
    /// The least time between two changes; the load is averaged over it.
    pub(crate) dwell: Duration,
    /// Calls in flight per connection the pool aims for: it grows while the mean is
    /// above, shrinks while it is below half of it.
    pub(crate) target: usize,
    /// How long a connection taken out has to finish its calls.
    pub(crate) drain: Duration,
}

/// Samples of the load per dwell time.
const SAMPLES: u32 = 4;

impl Sizing {
    /// What to do with `size` connections whose mean load over the last dwell time was
    /// `mean` calls in flight each: +1, -1 or 0. The band between half the target and
    /// the target keeps it still: one more connection after a growth leaves the mean
    /// above half the target, so a steady load never makes it flap.
    pub(crate) fn step(&self, size: usize, mean: f64) -> isize {
        let target = self.target as f64;
        if mean > target && size < self.max {
            1
        } else if mean * 2.0 < target && size > self.min {
            -1
        } else {
            0
        }
    }
}

/// Runs the sizing of `members` on the current runtime until the pool is gone or
/// closed; without a runtime the pool keeps its size.
pub(crate) fn spawn<Req, Resp>(members: &Arc<Members<Req, Resp>>, sizing: Sizing)
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("a pool built outside a runtime keeps its size");
        return;
    };
    let members = Arc::downgrade(members);
    runtime.spawn(run(members, sizing));
}

async fn run<Req, Resp>(members: Weak<Members<Req, Resp>>, sizing: Sizing)
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let every = (sizing.dwell / SAMPLES).max(Duration::from_millis(1));
    let mut samples: VecDeque<f64> = VecDeque::new();
    let mut changed = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let Some(members) = members.upgrade() else {
            return;
        };
        if members.closed.load(Ordering::Acquire) {
            return;
        }
        let slots = members.snapshot();
        let usable: Vec<_> = slots
            .iter()
            .filter(|s| s.standing() == Standing::Usable)
            .collect();
        // Calls waiting on the server: not the slots handles reserve in `poll_ready`,
        // which every handle's balance holds on every connection it may choose.
        let busy: u64 = usable
            .iter()
            .map(|s| s.channel.shared.stats.in_flight())
            .sum();
        samples.push_back(busy as f64 / usable.len().max(1) as f64);
        if samples.len() > SAMPLES as usize {
            samples.pop_front();
        }
        if changed.elapsed() < sizing.dwell || samples.len() < SAMPLES as usize {
            continue;
        }
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        match sizing.step(slots.len(), mean) {
            1 => {
                info!(size = slots.len() + 1, mean, "pool grows");
                members.grow(&members.home.clone());
            }
            -1 => {
                // One that no lease holds with nothing in flight: one that is down
                // first, if nothing is queued on it (calls queued there wait for its
                // next connection, and would get only the drain timeout); else a
                // usable one, but never the last. It drains.
                let free = |s: &Arc<super::member::Slot<Req, Resp>>| {
                    !s.leased.load(Ordering::Acquire) && s.channel.shared.stats.in_flight() == 0
                };
                let down = slots
                    .iter()
                    .find(|s| free(s) && s.standing() == Standing::Down && s.channel.queued() == 0);
                let idle = || {
                    (usable.len() > 1)
                        .then(|| usable.iter().copied().find(|s| free(s)))
                        .flatten()
                };
                let chosen = down.or_else(idle).and_then(|s| members.remove(s.key));
                let Some(slot) = chosen else {
                    continue;
                };
                info!(size = slots.len() - 1, mean, "pool shrinks");
                super::endpoints::drain_out(vec![slot], sizing.drain);
            }
            _ => {
                debug!(size = slots.len(), mean, "pool keeps its size");
                continue;
            }
        }
        changed = Instant::now();
        samples.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizing() -> Sizing {
        Sizing {
            min: 1,
            max: 8,
            dwell: Duration::from_secs(1),
            target: 16,
            drain: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_steady_load_settles_and_stays() {
        let sizing = sizing();
        for load in [0usize, 5, 16, 17, 40, 100, 127, 128, 129, 1000] {
            let mut size = 1;
            let mut steps = 0;
            loop {
                let step = sizing.step(size, load as f64 / size as f64);
                if step == 0 {
                    break;
                }
                size = size.checked_add_signed(step).unwrap();
                steps += 1;
                assert!(steps <= 8, "load {load}: no rest");
            }
            // At rest it stays: the same load gives no step, grown or not.
            assert_eq!(
                sizing.step(size, load as f64 / size as f64),
                0,
                "load {load}"
            );
            assert!((1..=8).contains(&size));
        }
    }
}
