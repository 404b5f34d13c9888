//! One request budget per CRM (etlify-core's `Budget`: rolling window, learned limits,
//! pause), in shared memory: every worker and every backend that calls a CRM draws on
//! the same one. Without the preload there is no shared memory, and each process keeps
//! its own.
//!
//! A slot also says which workers are in a round on the CRM, so that one slow or hung
//! CRM never holds every worker (see `Engine::drain`).

use crate::engine::store::Work;
use etlify_core::http::{Budget, Limit, PauseKind, Status};
use pgrx::prelude::*;
use pgrx::{PGRXSharedMemory, PgLwLock};
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// CRMs tracked at once, over every database. When more are in use, the one used
/// least recently gives its slot up (and with it its window: the CRM's own headers
/// then tell the next user how much is left).
const SLOTS: usize = 32;

#[derive(Copy, Clone)]
struct Slot {
    used: bool,
    database: u32,
    crm: u64,
    /// The registration (crms.updated_at): a new one lifts the pause.
    version: u64,
    last_used: i64,
    /// Bit i: worker i+1 is in a round on this CRM.
    rounds: u32,
    budget: Budget,
}

#[derive(Copy, Clone)]
pub struct Budgets {
    slots: [Slot; SLOTS],
}

impl Default for Budgets {
    fn default() -> Self {
        let empty = Slot {
            used: false,
            database: 0,
            crm: 0,
            version: 0,
            last_used: 0,
            rounds: 0,
            budget: Budget::new(None, 1),
        };
        Budgets {
            slots: [empty; SLOTS],
        }
    }
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for Budgets {}

pub static BUDGETS: PgLwLock<Budgets> = unsafe { PgLwLock::new(c"etlify_budgets") };

thread_local! {
    static LOCAL: RefCell<Box<Budgets>> = RefCell::new(Box::default());
}

/// A CRM registration, as its budget is found by.
#[derive(Debug, Clone)]
pub struct CrmKey {
    database: u32,
    crm: u64,
    version: u64,
    configured: Option<Limit>,
}

impl CrmKey {
    pub fn of(w: &Work) -> CrmKey {
        let configured = w.rate_limit.filter(|n| *n > 0).map(|n| {
            let period = Duration::from_secs_f64(w.rate_period_ms.max(1.0) / 1000.0);
            Limit::guarded(n as u32, period)
        });
        CrmKey {
            // SAFETY: set in every process connected to a database.
            database: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            crm: fnv(&w.crm),
            version: fnv(&w.crm_version),
            configured,
        }
    }
}

/// FNV-1a: a CRM's name and registration as slot keys (the same in every process).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Microseconds on CLOCK_MONOTONIC: one clock for every process of the machine.
pub fn now_us() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000 + ts.tv_nsec / 1000
}

fn shared() -> bool {
    crate::wake::SHMEM_READY.load(Ordering::Relaxed)
}

fn locked<R>(f: impl FnOnce(&mut Budgets) -> R) -> R {
    if shared() {
        f(&mut BUDGETS.exclusive())
    } else {
        LOCAL.with(|l| f(&mut l.borrow_mut()))
    }
}

/// Where the CRM's slot is, if it has one.
fn position(all: &Budgets, database: u32, crm: u64) -> Option<usize> {
    all.slots
        .iter()
        .position(|s| s.used && s.database == database && s.crm == crm)
}

/// The CRM's slot, taken (from the least recently used) if it has none.
fn slot<'a>(all: &'a mut Budgets, k: &CrmKey, now: i64) -> &'a mut Slot {
    let i = position(all, k.database, k.crm).unwrap_or_else(|| {
        let i = (0..SLOTS)
            .min_by_key(|&i| (all.slots[i].used, all.slots[i].last_used))
            .unwrap_or(0);
        all.slots[i] = Slot {
            used: true,
            database: k.database,
            crm: k.crm,
            version: k.version,
            last_used: now,
            rounds: 0,
            budget: Budget::new(k.configured, k.crm ^ now as u64),
        };
        i
    });
    let s = &mut all.slots[i];
    if s.version != k.version {
        s.version = k.version;
        s.budget.reconfigure(k.configured);
    }
    s.last_used = now;
    s
}

/// Runs `f` on the CRM's budget, with the time now.
pub fn with<R>(k: &CrmKey, f: impl FnOnce(&mut Budget, i64) -> R) -> R {
    let now = now_us();
    locked(|all| f(&mut slot(all, k, now).budget, now))
}

/// Worker `index` (1-based) starts a round on the CRM, unless `cap` workers are in
/// one already: false then.
pub fn enter(k: &CrmKey, index: usize, cap: u32) -> bool {
    let now = now_us();
    locked(|all| {
        let s = slot(all, k, now);
        let bit = 1u32 << (index - 1);
        if (s.rounds & !bit).count_ones() >= cap {
            return false;
        }
        s.rounds |= bit;
        true
    })
}

pub fn leave(k: &CrmKey, index: usize) {
    locked(|all| {
        let s = slot(all, k, now_us());
        s.rounds &= !(1u32 << (index - 1));
    })
}

/// Worker `index` starts: a round its previous incarnation died in is over.
pub fn forget_rounds(index: usize) {
    locked(|all| {
        for s in all.slots.iter_mut() {
            s.rounds &= !(1u32 << (index - 1));
        }
    })
}

/// A CRM's state for etlify.crm_status, as of now; None when nothing called it since
/// the server started (or its slot went to another CRM).
pub fn status(database: u32, crm: &str, version: &str) -> Option<Status> {
    let now = now_us();
    let find = |all: &Budgets| {
        let s = &all.slots[position(all, database, fnv(crm))?];
        let mut st = s.budget.status(now);
        if s.version != fnv(version) {
            // registered again (or resumed) since: its pause is lifted
            st.paused = None;
            st.reason.clear();
        }
        Some(st)
    };
    if shared() {
        find(&BUDGETS.share())
    } else {
        LOCAL.with(|l| find(&l.borrow()))
    }
}

/// How long until `until` (a time of `now_us`).
pub fn until(until: i64) -> Duration {
    Duration::from_micros(until.saturating_sub(now_us()).max(0) as u64)
}

fn pause_state(kind: PauseKind) -> &'static str {
    match kind {
        PauseKind::Backoff | PauseKind::Misconfigured => "paused",
        PauseKind::Quota => "quota",
    }
}

/// etlify.crm_status's live half: a CRM's pause, window and quota as the workers and
/// backends of this server see them (all NULL when none of them called it yet).
#[pg_extern(stable, parallel_safe)]
#[allow(clippy::type_complexity)]
fn _crm_budget(
    crm: &str,
    version: &str,
) -> TableIterator<
    'static,
    (
        name!(state, Option<String>),
        name!(paused_until, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(pause_reason, Option<String>),
        name!(learned_limit, Option<i32>),
        name!(learned_period_ms, Option<i64>),
        name!(requests_last_period, Option<i64>),
        name!(throttled_total, Option<i64>),
        name!(daily_used, Option<i64>),
        name!(daily_limit, Option<i64>),
    ),
> {
    // SAFETY: set in every backend connected to a database.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let row = match status(database, crm, version) {
        None => (None, None, None, None, None, None, None, None, None),
        Some(s) => {
            let paused = s.paused.map(|(kind, until)| {
                let wall = pgrx::datum::TimestampWithTimeZone::try_from(
                    // SAFETY: plain clock read
                    unsafe { pg_sys::GetCurrentTimestamp() } + (until - now_us()),
                )
                .ok();
                (pause_state(kind), wall)
            });
            (
                Some(paused.map_or("ok", |p| p.0).to_string()),
                paused.and_then(|p| p.1),
                paused.map(|_| s.reason.clone()),
                s.learned.map(|(max, _)| max as i32),
                s.learned.map(|(_, ms)| ms as i64),
                Some(s.requests_last_period as i64),
                Some(s.throttled_total as i64),
                s.daily_used.map(|n| n as i64),
                s.daily_limit.map(|n| n as i64),
            )
        }
    };
    TableIterator::once(row)
}
