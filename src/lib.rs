//! etlify: keep Postgres tables in sync with CRMs, from inside Postgres.
//!
//! Triggers record *that* a record changed (sql/catalog.sql); the background
//! worker (worker.rs) decides *what* to send and sends it (engine/), through the
//! adapters of etlify-core.

use pgrx::prelude::*;
use std::sync::atomic::Ordering;

mod api;
mod budgets;
mod capture;
mod datums;
mod engine;
mod error;
mod gucs;
mod inline_sends;
mod keys;
mod latch;
mod members;
mod record_window;
mod requests;
mod restricted;
mod stale;
mod wake;
mod worker;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/catalog.sql",
    name = "catalog",
    requires = ["bootstrap"]
);
extension_sql_file!(
    "../sql/dependencies.sql",
    name = "dependencies",
    requires = ["catalog"]
);
extension_sql_file!(
    "../sql/dependency_order.sql",
    name = "dependency_order",
    requires = ["dependencies", keys::_name_in_path]
);
extension_sql_file!("../sql/operations.sql", name = "operations", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Shared memory and the worker exist only when preloaded; without the preload
    // the extension still records changes, and etlify.drain() does the worker's job.
    let preloaded = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    error::quiet_backtraces();
    gucs::init(preloaded);
    if preloaded {
        use budgets::BUDGETS;
        use requests::REQUESTS;
        use wake::{WAKE_PENDING, WORKERS};
        pgrx::pg_shmem_init!(WORKERS);
        pgrx::pg_shmem_init!(WAKE_PENDING);
        pgrx::pg_shmem_init!(REQUESTS);
        pgrx::pg_shmem_init!(BUDGETS);
        wake::SHMEM_READY.store(true, Ordering::Relaxed);
        worker::register();
    }
}

/// Required by `cargo pgrx test`; unused (end-to-end tests live in tests/).
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
