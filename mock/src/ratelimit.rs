//! HubSpot's per-app limits: a rolling window and a daily quota. They drive the
//! `X-HubSpot-RateLimit-*` headers on every response, and (only when enforced) the 429s.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Professional/enterprise tier: 190 requests per 10 s.
pub const DEFAULT_MAX: u64 = 190;
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Daily quota shown in headers (enterprise tier) unless one is enforced.
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
    /// An enforced daily quota; None reports [`DAILY_MAX`] and enforces nothing.
    pub daily: Option<u64>,
}

impl Default for Limit {
    fn default() -> Self {
        Limit {
            max: DEFAULT_MAX,
            interval_ms: DEFAULT_INTERVAL_MS,
            enforced: false,
            daily: None,
        }
    }
}

/// Which limit refused a request (HubSpot's `policyName`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    TenSecondlyRolling,
    Daily,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Arrival times of accepted requests, oldest first. Only the newest `max` are kept: that
    /// is all that `remaining` depends on, and it bounds memory at any request rate.
    window: VecDeque<Instant>,
    /// Accepted requests since start or reset (the mock's "day" ends only at a reset).
    daily_used: u64,
}

impl RateLimiter {
    pub fn reset(&mut self) {
        self.window.clear();
        self.daily_used = 0;
    }

    /// Counts one request arriving at `now`. `Err` means over an enforced limit (the request
    /// is not counted, as HubSpot doesn't count rejected calls against the window).
    pub fn admit(
        &mut self,
        limit: Limit,
        now: Instant,
    ) -> Result<RateHeaders, (RateHeaders, Policy)> {
        let interval = Duration::from_millis(limit.interval_ms);
        while let Some(&t) = self.window.front() {
            if now.duration_since(t) >= interval {
                self.window.pop_front();
            } else {
                break;
            }
        }
        let daily = limit.daily.unwrap_or(DAILY_MAX);
        let headers = |used: usize, daily_used: u64| RateHeaders {
            interval_ms: limit.interval_ms,
            max: limit.max,
            remaining: limit.max.saturating_sub(used as u64),
            daily,
            daily_remaining: daily.saturating_sub(daily_used),
        };
        // The day's quota first: once it is spent, waiting ten seconds does not help.
        if limit.daily.is_some() && self.daily_used >= daily {
            let h = headers(self.window.len(), self.daily_used);
            return Err((h, Policy::Daily));
        }
        if limit.enforced && self.window.len() as u64 >= limit.max {
            let h = headers(self.window.len(), self.daily_used);
            return Err((h, Policy::TenSecondlyRolling));
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
            daily: None,
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
            daily: None,
        };
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(rl.admit(lim, t0).is_ok());
        }
        let h = rl.admit(lim, t0).unwrap();
        assert_eq!(
            (h.remaining, h.daily, h.daily_remaining),
            (0, DAILY_MAX, DAILY_MAX - 6)
        );
    }

    #[test]
    fn daily_quota_enforces_until_reset() {
        let mut rl = RateLimiter::default();
        let lim = Limit {
            daily: Some(2),
            ..Limit::default()
        };
        let t0 = Instant::now();
        assert_eq!(rl.admit(lim, t0).unwrap().daily_remaining, 1);
        let h = rl.admit(lim, t0).unwrap();
        assert_eq!((h.daily, h.daily_remaining), (2, 0));
        // Hours later the mock's day is still not over.
        let (h, policy) = rl.admit(lim, t0 + Duration::from_secs(7200)).unwrap_err();
        assert_eq!((policy, h.daily_remaining), (Policy::Daily, 0));
        rl.reset();
        assert_eq!(rl.admit(lim, t0).unwrap().daily_remaining, 1);
    }
}
