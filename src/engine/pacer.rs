//! The rate limit a CRM registration asks for (rate_limit per rate_period), paced
//! per process for now. Waits are interruptible: SIGTERM in the worker, cancel or
//! statement_timeout in a backend.

use etlify_core::http::{Pacer, RateLimitHeaders, TokenBucket};
use std::time::{Duration, Instant};

/// How the current process sleeps: returns false when it must stop instead.
pub type Sleeper = fn(Duration) -> bool;

pub struct LocalPacer {
    bucket: Option<TokenBucket>,
    sleep: Sleeper,
}

impl LocalPacer {
    pub fn new(rate_limit: Option<i32>, period_ms: f64, sleep: Sleeper) -> Self {
        let bucket = rate_limit.filter(|n| *n > 0).map(|n| {
            TokenBucket::new(
                n as u32,
                Duration::from_secs_f64(period_ms.max(1.0) / 1000.0),
            )
        });
        LocalPacer { bucket, sleep }
    }
}

impl Pacer for LocalPacer {
    fn acquire(&mut self) -> Result<(), String> {
        let Some(bucket) = self.bucket.as_mut() else {
            return Ok(());
        };
        while let Some(wait) = bucket.take(Instant::now()) {
            if !(self.sleep)(wait) {
                return Err("interrupted while waiting for the rate limit".into());
            }
        }
        Ok(())
    }

    fn observe(&mut self, _status: u16, _limits: &RateLimitHeaders) {}
}
