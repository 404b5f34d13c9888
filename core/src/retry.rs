//! When to try a failed record again.

use std::time::Duration;

/// Exponential backoff for a record that failed `error_count` times in a row (1-based):
/// base * 2^(error_count-1), capped at `cap`, with no jitter (deterministic; the caller may add jitter).
///
/// `error_count == 0` (never failed) waits nothing. Overflow saturates to `cap`, so any
/// count is safe to pass.
pub fn backoff(error_count: u32, base: Duration, cap: Duration) -> Duration {
    if error_count == 0 {
        return Duration::ZERO;
    }
    match 1u32.checked_shl(error_count - 1) {
        Some(factor) => base.saturating_mul(factor).min(cap),
        None => cap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_base() {
        let cap = Duration::from_secs(3600);
        let waits: Vec<u64> = (1..=6).map(|n| backoff(n, S, cap).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32]);
    }

    #[test]
    fn capped() {
        let cap = Duration::from_secs(10);
        assert_eq!(backoff(4, S, cap), Duration::from_secs(8));
        assert_eq!(backoff(5, S, cap), cap);
        assert_eq!(backoff(200, S, cap), cap);
        assert_eq!(backoff(u32::MAX, S, cap), cap);
        // A base above the cap is capped too.
        assert_eq!(backoff(1, Duration::from_secs(60), cap), cap);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        assert_eq!(backoff(32, Duration::MAX, Duration::MAX), Duration::MAX);
        assert_eq!(
            backoff(31, Duration::from_secs(u64::MAX / 2), Duration::MAX),
            Duration::MAX
        );
    }

    #[test]
    fn zero_failures_wait_nothing() {
        assert_eq!(backoff(0, S, Duration::from_secs(10)), Duration::ZERO);
    }

    #[test]
    fn sub_second_bases_keep_their_precision() {
        let base = Duration::from_millis(250);
        assert_eq!(backoff(3, base, Duration::MAX), Duration::from_millis(1000));
    }
}
