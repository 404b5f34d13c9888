//! SQL functions written in Rust. The rest of the API is SQL (sql/*.sql).

use crate::engine::{Engine, Host};
use crate::error::Error;
use etlify_core::adapter::{self, CrmSettings};
use etlify_core::http::Unpaced;
use etlify_core::plan::Intent;
use etlify_core::plan::Resolved;
use pgrx::prelude::*;
use pgrx::JsonB;
use std::time::Duration;

/// A backend draining inline as the engine's host: every step in the caller's
/// transaction, row locks instead of a claim token, errors to the caller, and the
/// keys noted before each request (the caller's transaction may roll back what
/// the CRM keeps: src/inline_sends.rs).
#[derive(Clone, Copy)]
struct InlineHost;

impl Host for InlineHost {
    fn claimer(self) -> Option<&'static str> {
        None
    }

    fn worker(self) -> Option<usize> {
        None
    }

    fn step<R>(self, f: impl FnOnce() -> R) -> R {
        f()
    }

    fn sleeper(self) -> fn(Duration) -> bool {
        // cancel and statement_timeout interrupt it
        |d| {
            crate::latch::backend_wait(d);
            true
        }
    }

    fn interrupted(self) -> fn() -> bool {
        // a cancel or statement_timeout: the request is abandoned, and the
        // interrupt raises its ERROR at the next check
        || unsafe { pg_sys::InterruptPending != 0 }
    }

    fn between_batches(self, _engine: &mut Engine<Self>) {}

    fn isolate(self, round: impl FnOnce() -> Vec<Resolved>) -> Vec<Resolved> {
        round()
    }

    fn before_send(self, mapping_id: i32, sends: Vec<(String, Option<String>)>) {
        crate::inline_sends::note(mapping_id, sends);
    }
}

/// register_crm's check of the adapter name, its config, its batch size,
/// whether it has the secret it needs and whether a new one can be sent (building the adapter checks all of it;
/// nothing is sent).
#[pg_extern(volatile)]
fn _validate_adapter(
    adapter: &str,
    config: JsonB,
    batch_size: Option<i32>,
    has_secret: bool,
    new_secret: Option<&str>,
) {
    if let Err(e) = adapter::validate(adapter, &config.0) {
        Error::invalid(format!("etlify.register_crm: {e}")).raise();
    }
    if let Err(e) = new_secret.map_or(Ok(()), adapter::check_secret) {
        Error::invalid(format!("etlify.register_crm: {e}")).raise();
    }
    if let Some(n) = batch_size.filter(|n| *n <= 0) {
        Error::invalid(format!(
            "etlify.register_crm: batch_size must be positive, got {n}"
        ))
        .raise();
    }
    let settings = CrmSettings {
        adapter: adapter.to_string(),
        config: config.0,
        secret: has_secret.then(|| "validation".to_string()),
        batch_size: batch_size.map(|n| n as usize),
    };
    if let Err(e) = adapter::build(&settings, Box::new(Unpaced)) {
        Error::invalid(format!("etlify.register_crm: {e}")).raise();
    }
}

/// The worker's job, inline, in the caller's transaction (tests, one-off runs,
/// clusters without the preload). HTTP happens inside this transaction. As the
/// extension's owner, like the worker (serializers still run as their mappings'
/// owners); EXECUTE is for etlify_admin only.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drain(crm: default!(Option<&str>, "NULL"), max_records: default!(Option<i32>, "NULL")) -> JsonB {
    if let Some(n) = max_records {
        if n < 0 {
            Error::invalid(format!(
                "etlify.drain: max_records must not be negative, got {n}"
            ))
            .raise();
        }
    }
    if let Some(name) = crm {
        let known = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM etlify.crms WHERE name = $1)",
            &[name.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if !known {
            Error::undefined(format!("etlify.drain: unknown CRM \"{name}\"")).raise();
        }
    }
    let counts = Engine::new(InlineHost).drain(crm, max_records.map(|n| n as usize), &|| false);
    JsonB(counts.to_json())
}

/// etlify.sync / etlify.delete after their SQL wrappers resolved the mapping: handed
/// to the worker, which sees committed rows only.
#[pg_extern(volatile, parallel_unsafe)]
fn _sync_one(mapping_id: i32, key: &str, remove: bool) -> &'static str {
    let verdict = if crate::requests::worker_available(key) {
        crate::requests::request(mapping_id, key, remove)
    } else {
        // no worker (no preload, or etlify.enabled = off): inline, documented
        let intent = if remove {
            Intent::Delete
        } else {
            Intent::Reconcile
        };
        Engine::new(InlineHost)
            .one(mapping_id, key, intent)
            .unwrap_or(etlify_core::plan::Verdict::Failed)
    };
    verdict.answer()
}
