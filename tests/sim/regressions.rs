//! Named regression cases: the first seed (under `Weights::CI`) that found each defect
//! of issue 15. Each fails while its defect is in the code.

use super::{print_failure, run_guarded};

/// Runs `seed` and fails if `check` fires (other checks are printed, not failed on:
/// `ci_seeds` covers them).
pub fn assert_clean(seed: u64, check: &str, test: &str) {
    let report = run_guarded(seed);
    if report.violations.iter().any(|v| v.check == check) {
        print_failure(seed, &report, test);
        panic!("seed {seed:#x}: {check} fired");
    }
    if !report.violations.is_empty() {
        eprintln!("seed {seed:#x}: {check} holds; other checks fired:");
        for v in &report.violations {
            eprintln!("  {v}");
        }
    }
}
