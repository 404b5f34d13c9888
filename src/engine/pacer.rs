//! The pacer every adapter's HTTP client asks before a request: it draws on the CRM's
//! shared budget (budgets.rs) and tells it every answer's limit headers.
//!
//! A request waits for the rolling window only briefly: a longer wait gives the
//! request's records back (retried later, not counted), so that a worker never sits
//! on one CRM while others have work. Waits are interruptible: SIGTERM in the worker,
//! cancel or statement_timeout in a backend.

use crate::budgets::{self, CrmKey};
use etlify_core::http::{Pacer, RateLimitHeaders, Wait};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// How the current process sleeps: returns false when it must stop instead.
pub type Sleeper = fn(Duration) -> bool;

/// The longest a request waits for its place in the window.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// A place in the window the engine took before claiming (see `Engine::drain`): the
/// round's first request uses it.
pub type Reservation = Rc<Cell<Option<i64>>>;

pub struct BudgetPacer {
    key: CrmKey,
    sleep: Sleeper,
    interrupted: fn() -> bool,
    reserved: Reservation,
}

impl BudgetPacer {
    pub fn new(
        key: CrmKey,
        sleep: Sleeper,
        interrupted: fn() -> bool,
        reserved: Reservation,
    ) -> Self {
        BudgetPacer {
            key,
            sleep,
            interrupted,
            reserved,
        }
    }
}

impl Pacer for BudgetPacer {
    fn acquire(&mut self) -> Result<(), String> {
        if let Some(at) = self.reserved.take() {
            // the place is the round's; a pause another process met since wins
            let paused = budgets::with(&self.key, |b, now| match b.check(now) {
                Err(Wait::Paused { .. }) => {
                    b.give_back(at);
                    true
                }
                _ => {
                    b.retime(at, now);
                    false
                }
            });
            if paused {
                return Err("the CRM is paused".into());
            }
            return Ok(());
        }
        loop {
            let wait = match budgets::with(&self.key, |b, now| b.take(now)) {
                Ok(()) => return Ok(()),
                Err(Wait::Paused { .. }) => return Err("the CRM is paused".into()),
                Err(Wait::Window { until }) => budgets::until(until),
            };
            if wait > MAX_WAIT {
                return Err(format!(
                    "the rate limit lets the next request go in {:.1} s",
                    wait.as_secs_f64()
                ));
            }
            if !(self.sleep)(wait) {
                return Err("interrupted while waiting for the rate limit".into());
            }
        }
    }

    fn observe(&mut self, _status: u16, limits: &RateLimitHeaders) {
        budgets::with(&self.key, |b, now| b.observe(now, limits));
    }

    fn interrupted(&mut self) -> bool {
        (self.interrupted)()
    }
}
