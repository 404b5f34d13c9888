//! Polling with a deadline. Tests never sleep and hope: they wait for a condition.

use std::thread;
use std::time::{Duration, Instant};

/// What most waits use: generous, because two cores are shared by parallel tests.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls `f` every 10 ms until it returns `Some`, and returns that value. Panics
/// after `timeout` with a message naming `what` was awaited.
pub fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_every(timeout, Duration::from_millis(10), what, f)
}

/// [`wait_for`] with [`DEFAULT_TIMEOUT`].
pub fn wait_for_default<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for(DEFAULT_TIMEOUT, what, f)
}

/// [`wait_for`] polling every `every` instead of every 10 ms: for waits that must
/// not load a 2-core machine (long benchmark phases) or must react faster.
pub fn wait_for_every<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(every);
    }
}
