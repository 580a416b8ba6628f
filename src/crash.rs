//! Crash points, for tests that prove recovery: built only with the
//! `crash-points` feature, where `MILLRACE_CRASH_AT=<point>[:<n>]` makes the
//! process abort (as a SIGKILL would end it, with no cleanup) the `n`-th
//! time (first by default) it reaches the named point. Without the feature
//! [`hit`] does nothing and compiles away.
//!
//! Points: `checkpoint-before` (a checkpoint is built, not yet written),
//! `store-commit` (a store write's keys are in its transaction, not yet
//! committed), `checkpoint-after` (a checkpoint is committed, nothing has
//! been told of it), `restore` (the first view is restored on start, the
//! others not yet).

/// Aborts the process if `MILLRACE_CRASH_AT` names `point` and this is the
/// time it asks for.
#[cfg(feature = "crash-points")]
pub fn hit(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("MILLRACE_CRASH_AT") else {
        return;
    };
    let (name, nth) = match spec.split_once(':') {
        Some((name, n)) => (name.to_string(), n.parse::<u64>().unwrap_or(1)),
        None => (spec, 1),
    };
    if name == point && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        eprintln!("crash point {point} reached ({nth}): aborting");
        std::process::abort();
    }
}

/// Does nothing: crash points are built only with the `crash-points`
/// feature.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn hit(_point: &str) {}

/// Whether the operation at `point` should fail this time, for tests of
/// failure handling: with the `crash-points` feature,
/// `MILLRACE_FAIL_AT=<point>[:<n>]` makes the `n`-th time (first by
/// default) fail. Points: `checkpoint-write` (a checkpoint's store write),
/// `checkpoint-build` (building a checkpoint, after the operators handed
/// over their changes).
#[cfg(feature = "crash-points")]
pub fn fails(point: &str) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("MILLRACE_FAIL_AT") else {
        return false;
    };
    let (name, nth) = match spec.split_once(':') {
        Some((name, n)) => (name.to_string(), n.parse::<u64>().unwrap_or(1)),
        None => (spec, 1),
    };
    name == point && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == nth
}

/// Never: failures are injected only with the `crash-points` feature.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn fails(_point: &str) -> bool {
    false
}
