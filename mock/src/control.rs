//! Per-request admission: everything decided before a request touches the store (request log
//! slot, auth, rate limit, scripted faults, delay), under one short-lived lock.

use crate::errors::{self, ApiError};
use crate::faults::{FailSpec, FaultConfig};
use crate::ratelimit::{Limit, Policy, RateHeaders, RateLimiter};
use crate::reqlog::RequestLog;
use axum::http::Method;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What kind of API request is arriving; decides which checks apply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// No such route / method: answered without auth, faults or rate accounting.
    Unrouted,
    /// Search has its own limits and no rate-limit headers.
    Search,
    /// Every other CRM call: counted against the rolling window.
    Counted,
}

pub enum Outcome {
    Proceed,
    Reject {
        error: ApiError,
        retry_after: Option<u64>,
    },
}

pub struct Admission {
    pub seq: u64,
    pub outcome: Outcome,
    pub delay: Duration,
    /// `Some` when the response must carry rate-limit headers.
    pub rate: Option<RateHeaders>,
    pub fail_ids: Option<Arc<BTreeMap<String, String>>>,
    pub reject_ids: Option<Arc<BTreeMap<String, u16>>>,
}

#[derive(Debug)]
pub struct Control {
    faults: FaultConfig,
    fail_next: VecDeque<FailSpec>,
    fail_ids: Option<Arc<BTreeMap<String, String>>>,
    reject_ids: Option<Arc<BTreeMap<String, u16>>>,
    /// Limit from the command line; a faults `rate_limit` overrides it until the next PUT/reset.
    cli_limit: Limit,
    limiter: RateLimiter,
    pub log: RequestLog,
    pub total_requests: u64,
    rng: u64,
}

impl Control {
    pub fn new(cli_limit: Limit) -> Self {
        Control {
            faults: FaultConfig::default(),
            fail_next: VecDeque::new(),
            fail_ids: None,
            reject_ids: None,
            cli_limit,
            limiter: RateLimiter::default(),
            log: RequestLog::default(),
            total_requests: 0,
            rng: errors::splitmix64(crate::clock::now_us() as u64),
        }
    }

    /// Back to the startup state: no faults, no log, fresh rate window (CLI limit stays).
    pub fn reset(&mut self) {
        self.set_faults(FaultConfig::default());
        self.limiter.reset();
        self.log.clear();
        self.total_requests = 0;
    }

    pub fn faults(&self) -> &FaultConfig {
        &self.faults
    }

    /// The scripted failures not yet consumed.
    pub fn pending_fail_next(&self) -> impl Iterator<Item = &FailSpec> {
        self.fail_next.iter()
    }

    pub fn set_faults(&mut self, cfg: FaultConfig) {
        self.fail_next = cfg.fail_next.clone().unwrap_or_default().into();
        self.fail_ids = cfg.fail_ids.clone().filter(|m| !m.is_empty()).map(Arc::new);
        self.reject_ids = cfg
            .reject_ids
            .clone()
            .filter(|m| !m.is_empty())
            .map(Arc::new);
        self.faults = cfg;
    }

    fn limit(&self) -> Limit {
        match self.faults.rate_limit {
            // Without a max, the window stays the command line's.
            Some(rl) => Limit {
                daily: rl.daily,
                ..match rl.max {
                    Some(max) => Limit {
                        max,
                        interval_ms: rl.interval_ms,
                        enforced: true,
                        daily: None,
                    },
                    None => self.cli_limit,
                }
            },
            None => self.cli_limit,
        }
    }

    fn random_unit(&mut self) -> f64 {
        self.rng = errors::splitmix64(self.rng);
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Order matters and mirrors the real service: routing, then auth, then the rate limit,
    /// then (for our tests) scripted faults, for the operations they target. `operation`
    /// is None for a request no route matched.
    pub fn admit(
        &mut self,
        method: Method,
        path: String,
        kind: Kind,
        operation: Option<&str>,
        authed: bool,
        received_at_us: i64,
    ) -> Admission {
        let seq = self.log.start(method, path, received_at_us);
        self.total_requests += 1;
        let targeted = self.faults.targets(operation);
        let delay = if targeted {
            Duration::from_millis(self.faults.delay_ms())
        } else {
            Duration::ZERO
        };
        let mut adm = Admission {
            seq,
            outcome: Outcome::Proceed,
            delay,
            rate: None,
            fail_ids: None,
            reject_ids: None,
        };
        if kind == Kind::Unrouted || !authed {
            return adm;
        }
        // The rate limit is the portal's, whatever `operations` the faults target.
        if kind == Kind::Counted {
            match self.limiter.admit(self.limit(), Instant::now()) {
                Ok(h) => adm.rate = Some(h),
                Err((h, policy)) => {
                    adm.rate = Some(h);
                    adm.outcome = Outcome::Reject {
                        error: match policy {
                            Policy::TenSecondlyRolling => errors::rate_limited(),
                            Policy::Daily => errors::daily_limit_reached(),
                        },
                        retry_after: None,
                    };
                    return adm;
                }
            }
        }
        if !targeted {
            return adm;
        }
        if let Some(f) = self.fail_next.pop_front() {
            adm.outcome = Outcome::Reject {
                error: errors::injected(f.status, f.message.as_deref(), f.category.as_deref()),
                retry_after: f.retry_after,
            };
            return adm;
        }
        if let Some(rate) = self.faults.error_rate.filter(|r| *r > 0.0) {
            if self.random_unit() < rate {
                adm.outcome = Outcome::Reject {
                    error: errors::injected(self.faults.error_status.unwrap_or(503), None, None),
                    retry_after: None,
                };
                return adm;
            }
        }
        adm.fail_ids = self.fail_ids.clone();
        adm.reject_ids = self.reject_ids.clone();
        adm
    }
}
