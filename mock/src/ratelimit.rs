//! HubSpot's per-app rolling-window limit: drives the `X-HubSpot-RateLimit-*` headers on
//! every response, and (only when enforcement is on) the 429s.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Professional/enterprise tier: 190 requests per 10 s.
pub const DEFAULT_MAX: u64 = 190;
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Daily quota shown in headers (enterprise tier); never enforced.
pub const DAILY_MAX: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateHeaders {
    pub interval_ms: u64,
    pub max: u64,
    pub remaining: u64,
    pub daily: u64,
    pub daily_remaining: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub max: u64,
    pub interval_ms: u64,
    pub enforced: bool,
}

impl Default for Limit {
    fn default() -> Self {
        Limit {
            max: DEFAULT_MAX,
            interval_ms: DEFAULT_INTERVAL_MS,
            enforced: false,
        }
    }
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Arrival times of accepted requests, oldest first. Only the newest `max` are kept: that
    /// is all that `remaining` depends on, and it bounds memory at any request rate.
    window: VecDeque<Instant>,
    daily_used: u64,
}

impl RateLimiter {
    pub fn reset(&mut self) {
        self.window.clear();
        self.daily_used = 0;
    }

    /// Counts one request arriving at `now`. `Err` means over an enforced limit (the request
    /// is not counted, as HubSpot doesn't count rejected calls against the window).
    pub fn admit(&mut self, limit: Limit, now: Instant) -> Result<RateHeaders, RateHeaders> {
        let interval = Duration::from_millis(limit.interval_ms);
        while let Some(&t) = self.window.front() {
            if now.duration_since(t) >= interval {
                self.window.pop_front();
            } else {
                break;
            }
        }
        let headers = |used: usize, daily_used: u64| RateHeaders {
            interval_ms: limit.interval_ms,
            max: limit.max,
            remaining: limit.max.saturating_sub(used as u64),
            daily: DAILY_MAX,
            daily_remaining: DAILY_MAX.saturating_sub(daily_used),
        };
        if limit.enforced && self.window.len() as u64 >= limit.max {
            return Err(headers(self.window.len(), self.daily_used));
        }
        self.window.push_back(now);
        while self.window.len() as u64 > limit.max.max(1) {
            self.window.pop_front();
        }
        self.daily_used += 1;
        Ok(headers(self.window.len(), self.daily_used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window_enforces_and_recovers() {
        let mut rl = RateLimiter::default();
        let lim = Limit {
            max: 2,
            interval_ms: 100,
            enforced: true,
        };
        let t0 = Instant::now();
        assert_eq!(rl.admit(lim, t0).unwrap().remaining, 1);
        assert_eq!(rl.admit(lim, t0).unwrap().remaining, 0);
        assert!(rl.admit(lim, t0 + Duration::from_millis(50)).is_err());
        let h = rl.admit(lim, t0 + Duration::from_millis(100)).unwrap();
        assert_eq!(h.remaining, 1);
        assert_eq!(h.daily_remaining, DAILY_MAX - 3);
    }

    #[test]
    fn unenforced_only_reports() {
        let mut rl = RateLimiter::default();
        let lim = Limit {
            max: 2,
            interval_ms: 10_000,
            enforced: false,
        };
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(rl.admit(lim, t0).is_ok());
        }
        assert_eq!(rl.admit(lim, t0).unwrap().remaining, 0);
    }
}
