//! The drain's calls into its SQL half (sql/operations.sql), one function each.

use etlify_core::plan::{Claimed, Resolved};
use pgrx::prelude::*;
use pgrx::{JsonB, Spi};
use serde_json::Value;

/// A mapping with its CRM's settings, as `etlify._work` lists them.
#[derive(Debug, Clone)]
pub struct Work {
    pub mapping_id: i32,
    pub crm: String,
    pub source: pg_sys::Oid,
    pub object_type: String,
    pub id_property: String,
    pub adapter: String,
    pub config: Value,
    pub secret: Option<String>,
    pub enabled: bool,
    pub rate_limit: Option<i32>,
    pub rate_period_ms: f64,
    pub batch_size: Option<i32>,
    /// Changes whenever the CRM is registered again: cached adapters are rebuilt.
    pub crm_version: String,
}

fn spi_err(what: &str, e: pgrx::spi::SpiError) -> ! {
    pgrx::error!("etlify: {what}: {e}")
}

pub fn work(crm: Option<&str>) -> Vec<Work> {
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT mapping_id, crm, source::oid, source_name, object_type, id_property, adapter, \
                 config, secret, enabled, rate_limit, rate_period_ms, batch_size, crm_version::text \
                 FROM etlify._work($1)",
                None,
                &[crm.into()],
            )
            .unwrap_or_else(|e| spi_err("listing mappings", e));
        rows.map(|r| {
            let get = |i: usize| -> Option<String> { r.get::<String>(i).ok().flatten() };
            Work {
                mapping_id: r.get::<i32>(1).ok().flatten().unwrap_or_default(),
                crm: get(2).unwrap_or_default(),
                source: r
                    .get::<pg_sys::Oid>(3)
                    .ok()
                    .flatten()
                    .unwrap_or(pg_sys::InvalidOid),
                object_type: get(5).unwrap_or_default(),
                id_property: get(6).unwrap_or_default(),
                adapter: get(7).unwrap_or_default(),
                config: r
                    .get::<JsonB>(8)
                    .ok()
                    .flatten()
                    .map(|j| j.0)
                    .unwrap_or(Value::Null),
                secret: get(9),
                enabled: r.get::<bool>(10).ok().flatten().unwrap_or(true),
                rate_limit: r.get::<i32>(11).ok().flatten(),
                rate_period_ms: r.get::<f64>(12).ok().flatten().unwrap_or(10_000.0),
                batch_size: r.get::<i32>(13).ok().flatten(),
                crm_version: get(14).unwrap_or_default(),
            }
        })
        .collect()
    })
}

/// Claims and serializes up to `limit` ready records (or exactly `keys`).
pub fn claim(
    mapping_id: i32,
    limit: usize,
    claimer: Option<&str>,
    keys: Option<Vec<String>>,
) -> Vec<Claimed> {
    Spi::connect_mut(|client| {
        let rows = client
            .update(
                "SELECT key, change_seq, state, crm_id, digest, present, included, payload, error \
                 FROM etlify._claim($1, $2, $3, $4)",
                None,
                &[
                    mapping_id.into(),
                    (limit.min(i32::MAX as usize) as i32).into(),
                    claimer.into(),
                    keys.into(),
                ],
            )
            .unwrap_or_else(|e| spi_err("claiming records", e));
        rows.map(|r| Claimed {
            key: r.get::<String>(1).ok().flatten().unwrap_or_default(),
            seq: r.get::<i64>(2).ok().flatten(),
            state: r.get::<String>(3).ok().flatten(),
            crm_id: r.get::<String>(4).ok().flatten(),
            digest: r.get::<Vec<u8>>(5).ok().flatten(),
            present: r.get::<bool>(6).ok().flatten().unwrap_or(false),
            included: r.get::<bool>(7).ok().flatten().unwrap_or(false),
            payload: r.get::<JsonB>(8).ok().flatten().map(|j| j.0),
            error: r.get::<String>(9).ok().flatten(),
        })
        .collect()
    })
}

pub fn record(mapping_id: i32, claimer: Option<&str>, results: &[Resolved]) {
    if results.is_empty() {
        return;
    }
    let json = Value::Array(results.iter().map(Resolved::to_json).collect());
    Spi::connect_mut(|client| {
        client
            .update(
                "SELECT etlify._record($1, $2, $3)",
                None,
                &[mapping_id.into(), claimer.into(), JsonB(json).into()],
            )
            .unwrap_or_else(|e| spi_err("recording results", e));
    })
}

pub fn log(crm: &str, source: pg_sys::Oid, entries: Vec<Value>) {
    if entries.is_empty() {
        return;
    }
    Spi::connect_mut(|client| {
        client
            .update(
                "SELECT etlify._log($1, $2::regclass, $3)",
                None,
                &[
                    crm.into(),
                    source.into(),
                    JsonB(Value::Array(entries)).into(),
                ],
            )
            .unwrap_or_else(|e| spi_err("writing sync_log", e));
    })
}

/// Moves writers' change rows into the keyed queue; returns how many rows moved.
pub fn absorb(limit: usize) -> i64 {
    Spi::connect_mut(|client| {
        client
            .update(
                "SELECT etlify._absorb($1)",
                None,
                &[(limit.min(i32::MAX as usize) as i32).into()],
            )
            .and_then(|t| t.first().get_one::<i64>())
            .unwrap_or_else(|e| spi_err("absorbing changes", e))
            .unwrap_or(0)
    })
}

/// Deletes the queue rows and sync state of removed mappings.
pub fn collect_forgotten() {
    Spi::connect_mut(|client| {
        client
            .update("SELECT etlify._collect_forgotten()", None, &[])
            .unwrap_or_else(|e| spi_err("cleaning up removed mappings", e));
    })
}

pub fn release_claims(claimer: &str) -> i64 {
    Spi::connect_mut(|client| {
        client
            .update("SELECT etlify._release_claims($1)", None, &[claimer.into()])
            .and_then(|t| t.first().get_one::<i64>())
            .unwrap_or_else(|e| spi_err("releasing claims", e))
            .unwrap_or(0)
    })
}
