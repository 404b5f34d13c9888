//! The sync worker: one background process per cluster, serving etlify.database.
//!
//! Loop: drain what is ready, then sleep on the latch until a commit wakes it
//! (see wake.rs) or etlify.naptime passes. SIGHUP reloads settings, SIGTERM stops
//! it between two requests. An error aborts the round's transaction, releases the
//! round's claims and is logged; the next round starts after a nap.

use crate::engine::{store, Engine, Host, WORKER_CLAIMER};
use crate::{gucs, requests, wake};
use etlify_core::plan::Resolved;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

pub const BACKEND_TYPE: &str = "etlify sync worker";

pub fn register() {
    BackgroundWorkerBuilder::new(BACKEND_TYPE)
        .set_type(BACKEND_TYPE)
        .set_library("etlify")
        .set_function("etlify_worker_main")
        .enable_spi_access()
        // restarted by the postmaster after a crash (and after exit code 1)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
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
pub struct WorkerHost;

impl Host for WorkerHost {
    fn claimer(self) -> Option<&'static str> {
        Some(WORKER_CLAIMER)
    }

    fn step<R>(self, f: impl FnOnce() -> R) -> R {
        transaction(f)
    }

    fn sleeper(self) -> fn(Duration) -> bool {
        sleep
    }

    fn between_batches(self, engine: &mut Engine<Self>) {
        requests::serve(engine);
    }

    fn isolate(self, round: impl FnOnce() -> Vec<Resolved>) -> Vec<Resolved> {
        PgTryBuilder::new(AssertUnwindSafe(round))
            .catch_others(|e| {
                recover(e);
                Vec::new()
            })
            .execute()
    }

    fn before_send(self, _mapping_id: i32, _keys: Vec<String>) {
        // claims are committed before HTTP: nothing the worker sends can roll back
    }
}

/// Interruptible sleep (rate limits): false when SIGTERM asks the worker to stop.
pub fn sleep(d: Duration) -> bool {
    BackgroundWorker::wait_latch(Some(d.max(Duration::from_millis(1))))
        && !BackgroundWorker::sigterm_received()
}

/// Asked between requests: SIGTERM, or settings reloaded to etlify.enabled = off
/// (a backlog must not keep the worker sending after it was switched off).
fn stop_requested() -> bool {
    reload_settings();
    BackgroundWorker::sigterm_received() || !gucs::enabled()
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

/// After an error in the worker: abort the transaction it broke, log it, and
/// release the claims it held so that those records are sent again.
pub fn recover(e: pg_sys::panic::CaughtError) {
    unsafe { pg_sys::AbortCurrentTransaction() };
    let message = crate::restricted::message(&e);
    warning!("{BACKEND_TYPE}: {message}");
    PgTryBuilder::new(|| transaction(|| store::release_claims(WORKER_CLAIMER)))
        .catch_others(|_| {
            unsafe { pg_sys::AbortCurrentTransaction() };
            0
        })
        .execute();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn etlify_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // Everything the worker runs itself is qualified; pinning the session's path
    // as well leaves nothing that objects planted in other schemas could capture.
    // (Serializers get their mapping's own path, see restricted.rs.)
    transaction(|| {
        Spi::run("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)")
            .unwrap_or_else(|e| pgrx::error!("etlify: cannot set the worker's search_path: {e}"))
    });
    wake::register_worker();
    log!("{BACKEND_TYPE} started for database \"{database}\"");

    requests::requeue_taken();
    let mut engine = Engine::new(WorkerHost);
    let mut recovered = false;
    while !BackgroundWorker::sigterm_received() {
        reload_settings();
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
                    // claims a previous incarnation committed before it died
                    let n = transaction(|| store::release_claims(WORKER_CLAIMER));
                    if n > 0 {
                        log!("{BACKEND_TYPE}: released {n} claims left by a previous run; they will be sent again");
                    }
                    recovered = true;
                }
                engine.drain(None, None, &stop_requested);
            }))
            .catch_others(recover)
            .execute();
            set_activity("idle");
        }
        if !BackgroundWorker::wait_latch(Some(gucs::naptime())) {
            break;
        }
    }
    wake::unregister_worker();
    log!("{BACKEND_TYPE} stopped");
}
