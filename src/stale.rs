//! sync_stale's re-check of a mapping (etlify._sync_stale in sql/operations.sql):
//! every row of the source, and every record whose row is gone, compared in
//! batches with what the CRM is known to hold, the way a drain would compare it
//! (etlify_core::plan::stale). Only the records that differ are enqueued, so a
//! re-check of a million unchanged rows sends nothing and queues nothing. Memory
//! is bounded by the batch: the keys come from a cursor, `batch_size` at a time.

use crate::engine::store;
use crate::error::Error;
use crate::keys::CANONICAL;
use crate::restricted::with_settings;
use etlify_core::plan::{stale, Claimed};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;
use std::collections::HashMap;

/// Re-checks one mapping: `{"checked", "differ", "errors"}`. With `force`, every
/// record is enqueued (the caller forgot the digests first).
#[pg_extern(volatile, parallel_unsafe)]
fn _stale_scan(mapping_id: i32, batch_size: i32, force: bool) -> JsonB {
    let batch = batch_size.max(1) as i64;
    let (keys_sql, id_property) = Spi::connect(|c| {
        let row = c
            .select(
                "SELECT etlify._stale_keys_sql(m), m.id_property FROM etlify.mappings m WHERE m.id = $1",
                None,
                &[mapping_id.into()],
            )?
            .first();
        Ok::<_, pgrx::spi::SpiError>((row.get::<String>(1)?, row.get::<String>(2)?))
    })
    .unwrap_or_else(|e| Error::internal(format!("etlify.sync_stale: {e}")).raise());
    let (Some(keys_sql), Some(id_property)) = (keys_sql, id_property) else {
        return JsonB(json!({"checked": 0, "differ": 0, "errors": 0}));
    };
    // keys are read in canonical spelling (keys.rs), as the capture writes them
    let cursor = with_settings(&CANONICAL, || {
        Spi::connect(|c| c.open_cursor(keys_sql.as_str(), &[]).detach_into_name())
    });
    let (mut checked, mut differ, mut errors) = (0usize, 0usize, 0usize);
    loop {
        let keys: Vec<String> = with_settings(&CANONICAL, || {
            Spi::connect(|c| {
                let mut cur = c.find_cursor(&cursor)?;
                let keys = cur
                    .fetch(batch)?
                    .filter_map(|r| r.get::<String>(1).ok().flatten())
                    .collect();
                // kept open for the next batch; this connection frees the rows
                let _ = cur.detach_into_name();
                Ok::<_, pgrx::spi::SpiError>(keys)
            })
        })
        .unwrap_or_else(|e| Error::internal(format!("etlify.sync_stale: {e}")).raise());
        if keys.is_empty() {
            break;
        }
        checked += keys.len();
        let dirty = if force {
            keys
        } else {
            let found = stale(records(mapping_id, keys), &id_property);
            errors += found.errors;
            found.differ
        };
        differ += dirty.len();
        if !dirty.is_empty() {
            Spi::run_with_args(
                "SELECT etlify._dirty($1, $2, pg_catalog.now())",
                &[mapping_id.into(), dirty.into()],
            )
            .unwrap_or_else(|e| Error::internal(format!("etlify.sync_stale: {e}")).raise());
        }
    }
    Spi::connect(|c| c.find_cursor(&cursor).map(drop)).ok();
    JsonB(json!({"checked": checked, "differ": differ, "errors": errors}))
}

/// The records of `keys` with their sync state, and their rows loaded and
/// serialized as a drain would.
fn records(mapping_id: i32, keys: Vec<String>) -> Vec<Claimed> {
    let mut known: HashMap<String, Claimed> = Spi::connect(|c| {
        c.select(
            "SELECT r.key, r.state, r.crm_id, r.digest FROM etlify.records r \
             WHERE r.mapping_id = $1 AND r.key = ANY ($2)",
            None,
            &[mapping_id.into(), keys.clone().into()],
        )
        .map(|rows| {
            rows.filter_map(|r| {
                let key = r.get::<String>(1).ok().flatten()?;
                Some((
                    key.clone(),
                    Claimed {
                        key,
                        state: r.get::<String>(2).ok().flatten(),
                        crm_id: r.get::<String>(3).ok().flatten(),
                        digest: r.get::<Vec<u8>>(4).ok().flatten(),
                        ..Default::default()
                    },
                ))
            })
            .collect()
        })
    })
    .unwrap_or_else(|e| Error::internal(format!("etlify.sync_stale: {e}")).raise());
    let mut rows: Vec<Claimed> = keys
        .into_iter()
        .map(|k| {
            known.remove(&k).unwrap_or(Claimed {
                key: k,
                ..Default::default()
            })
        })
        .collect();
    store::load(mapping_id, &mut rows);
    rows
}
