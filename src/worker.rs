//! The sync workers: etlify.workers background processes per cluster, serving
//! etlify.database, draining disjoint records (each claims with its own token).
//!
//! Loop: drain what is ready, then sleep on the latch until a commit wakes it
//! (see wake.rs), a paused CRM or a retry is due, or etlify.naptime passes. SIGHUP
//! reloads settings, SIGTERM stops it between two requests. An error aborts the
//! round's transaction, releases the worker's claims and is logged; the next round
//! starts after a nap.

use crate::engine::{store, Engine, Host};
use crate::{budgets, gucs, requests, wake};
use etlify_core::plan::Resolved;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const BACKEND_TYPE: &str = "etlify sync worker";

/// Claim tokens, by worker number: claims are committed before HTTP, and a worker
/// that dies leaves them behind; it releases its own, and only its own, at start.
const TOKENS: [&str; gucs::MAX_WORKERS as usize] = [
    "worker 1",
    "worker 2",
    "worker 3",
    "worker 4",
    "worker 5",
    "worker 6",
    "worker 7",
    "worker 8",
    "worker 9",
    "worker 10",
    "worker 11",
    "worker 12",
    "worker 13",
    "worker 14",
    "worker 15",
    "worker 16",
];

pub fn register() {
    for index in 1..=gucs::workers() {
        BackgroundWorkerBuilder::new(&format!("{BACKEND_TYPE} {index}"))
            .set_type(BACKEND_TYPE)
            .set_library("etlify")
            .set_function("etlify_worker_main")
            .set_argument(Some(pg_sys::Datum::from(index)))
            .enable_spi_access()
            // restarted by the postmaster after a crash (and after exit code 1)
            .set_restart_time(Some(Duration::from_secs(1)))
            .load();
    }
}

/// One transaction of the worker. An error inside unwinds to the round's handler
/// in `etlify_worker_main`, which aborts it.
pub fn transaction<R>(f: impl FnOnce() -> R) -> R {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = f();
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    result
}

/// The worker as the engine's host: a transaction per step, its claim token,
/// waiting sync() callers served between batches, and an error in one mapping's
/// round confined to that round.
#[derive(Clone, Copy)]
pub struct WorkerHost {
    /// 1-based
    pub index: usize,
}

impl Host for WorkerHost {
    fn claimer(self) -> Option<&'static str> {
        Some(TOKENS[self.index - 1])
    }

    fn worker(self) -> Option<usize> {
        Some(self.index)
    }

    fn step<R>(self, f: impl FnOnce() -> R) -> R {
        transaction(f)
    }

    fn sleeper(self) -> fn(Duration) -> bool {
        sleep
    }

    fn interrupted(self) -> fn() -> bool {
        stopping
    }

    fn between_batches(self, engine: &mut Engine<Self>) {
        requests::serve(engine);
    }

    fn isolate(self, round: impl FnOnce() -> Vec<Resolved>) -> Vec<Resolved> {
        PgTryBuilder::new(AssertUnwindSafe(round))
            .catch_others(|e| {
                recover(e, self.index);
                Vec::new()
            })
            .execute()
    }

    fn before_send(self, _mapping_id: i32, _sends: Vec<(String, Option<String>)>) {
        // claims are committed before HTTP: nothing the worker sends can roll back
    }
}

/// SIGTERM was received. pgrx's flag is cleared by reading it; this one stays set.
fn stopping() -> bool {
    static STOPPING: AtomicBool = AtomicBool::new(false);
    if BackgroundWorker::sigterm_received() {
        STOPPING.store(true, Ordering::Relaxed);
    }
    STOPPING.load(Ordering::Relaxed)
}

/// Interruptible sleep (rate limits): false when SIGTERM asks the worker to stop.
pub fn sleep(d: Duration) -> bool {
    BackgroundWorker::wait_latch(Some(d.max(Duration::from_millis(1)))) && !stopping()
}

/// Asked between requests: SIGTERM, or settings reloaded to etlify.enabled = off
/// (a backlog must not keep the worker sending after it was switched off).
fn stop_requested() -> bool {
    reload_settings();
    stopping() || !gucs::enabled()
}

fn reload_settings() {
    if BackgroundWorker::sighup_received() {
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
}

fn set_activity(what: &str) {
    let c = std::ffi::CString::new(what).unwrap_or_default();
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, c.as_ptr()) };
}

fn extension_installed() -> bool {
    transaction(|| {
        Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'etlify')")
            .ok()
            .flatten()
            .unwrap_or(false)
    })
}

/// After an error in worker `index`: abort the transaction it broke, log it, and
/// release the claims it held so that those records are sent again.
pub fn recover(e: pg_sys::panic::CaughtError, index: usize) {
    unsafe { pg_sys::AbortCurrentTransaction() };
    let message = crate::restricted::message(&e);
    warning!("{BACKEND_TYPE} {index}: {message}");
    budgets::forget_rounds(index);
    PgTryBuilder::new(|| transaction(|| store::release_claims(TOKENS[index - 1])))
        .catch_others(|_| {
            unsafe { pg_sys::AbortCurrentTransaction() };
            0
        })
        .execute();
}

/// At start: the claims this worker's previous incarnation committed before it
/// died; worker 1 also takes those of workers that no longer exist (etlify.workers
/// was lowered, or claims of a version with one worker).
fn release_left_claims(index: usize) -> i64 {
    let mut tokens = vec![TOKENS[index - 1]];
    if index == 1 {
        tokens.push("worker");
        tokens.extend(&TOKENS[gucs::workers()..]);
    }
    tokens
        .into_iter()
        .map(|t| transaction(|| store::release_claims(t)))
        .sum()
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn etlify_worker_main(arg: pg_sys::Datum) {
    let index = arg.value().clamp(1, gucs::MAX_WORKERS as usize);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // Everything the worker runs itself is qualified; pinning the session's path
    // as well leaves nothing that objects planted in other schemas could capture.
    // (Serializers get their mapping's own path, see restricted.rs.)
    // A deadlock between the worker and a user's statement (DROP TABLE of a table
    // whose foreign key locks the source the worker reads) is settled by whichever
    // waiter checks first: the worker checks after 50 ms, long before a session's
    // default second, so the round is given up and the user's statement goes on.
    transaction(|| {
        Spi::run(
            "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false), \
                    pg_catalog.set_config('deadlock_timeout', '50ms', false)",
        )
        .unwrap_or_else(|e| pgrx::error!("etlify: cannot set the worker's session: {e}"))
    });
    wake::register_worker(index);
    budgets::forget_rounds(index);
    log!("{BACKEND_TYPE} {index} started for database \"{database}\"");

    requests::requeue_taken(index);
    let mut engine = Engine::new(WorkerHost { index });
    let mut recovered = false;
    while !stopping() {
        reload_settings();
        let mut nap = gucs::naptime();
        if gucs::enabled() {
            // before reading anything: a commit after this point wakes us again
            wake::round_started();
            set_activity("draining");
            // everything a round does is inside the handler, the extension check
            // too: an error costs the round, never the worker (see recover)
            PgTryBuilder::new(AssertUnwindSafe(|| {
                // waiting callers first: they need nothing the checks below read
                requests::serve(&mut engine);
                if !extension_installed() {
                    return;
                }
                if !recovered {
                    let n = release_left_claims(index);
                    if n > 0 {
                        log!("{BACKEND_TYPE} {index}: released {n} claims left by a previous run; they will be sent again");
                    }
                    recovered = true;
                }
                engine.drain(None, None, &stop_requested);
            }))
            .catch_others(|e| recover(e, index))
            .execute();
            set_activity("idle");
            // a paused CRM, a full window or a retry due sooner than the naptime
            if let Some(at) = engine.wake_at {
                nap = nap.min(budgets::until(at) + Duration::from_millis(1));
            }
        }
        if !BackgroundWorker::wait_latch(Some(nap)) {
            break;
        }
    }
    wake::unregister_worker(index);
    log!("{BACKEND_TYPE} {index} stopped");
}
