//! The progress lines on stderr: after each cell, which one of how many it was, what it
//! measured, and about how long the rest will take.

use std::time::{Duration, Instant};

use crate::report::Sample;

/// Counts the cells of a run as they finish.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: usize,
    /// Time spent in the cells so far (not in the in-flight measurements between them).
    spent: Duration,
    /// The time a cell is expected to take before any has run: its warm-up and window.
    estimate: Duration,
    started: Option<Instant>,
}

impl Progress {
    /// `total` cells ahead, each expected to take about `estimate`.
    pub fn new(total: usize, estimate: Duration) -> Self {
        Progress {
            total,
            done: 0,
            spent: Duration::ZERO,
            estimate,
            started: None,
        }
    }

    /// A cell starts now.
    pub fn start(&mut self) {
        self.started = Some(Instant::now());
    }

    /// The cell started last finished with `sample`: prints its line.
    pub fn finish(&mut self, sample: &Sample, run: usize, runs: usize) {
        if let Some(started) = self.started.take() {
            self.spent += started.elapsed();
        }
        self.done += 1;
        let per_cell = match self.done {
            0 => self.estimate,
            n => self.spent / n as u32,
        };
        let left = per_cell * self.total.saturating_sub(self.done) as u32;
        eprintln!(
            "cell {done:>width$} of {total}  run {run}/{runs}  {variant:<27} {runtime:<7} \
             c={conc:<4} p={payload:<8} {figures}  ~{left} left",
            done = self.done,
            width = self.total.to_string().len(),
            total = self.total,
            variant = sample.variant,
            runtime = sample.runtime,
            conc = sample.concurrency,
            payload = sample.payload,
            figures = sample.progress(),
            left = human(left),
        );
    }
}

/// `1h02m`, `3m05s`, `42s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}
