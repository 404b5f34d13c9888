//! sync_stale's re-check of a mapping (etlify._sync_stale in sql/operations.sql):
//! every row of the source, and every record whose row is gone, compared in
//! batches with what the CRM is known to hold, the way a drain would compare it
//! (etlify_core::plan::stale). Only the records that differ are enqueued, so a
//! re-check of a million unchanged rows sends nothing and queues nothing. Memory
//! is bounded by the batch: the keys come from a cursor, `batch_size` at a time.

use crate::datums;
use crate::engine::store;
use crate::error::Error;
use crate::keys::CANONICAL;
use crate::record_window::{Known, Window};
use crate::restricted::{self, with_settings};
use etlify_core::plan::{stale, Claimed};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::JsonB;
use rustc_hash::FxHashMap;
use serde_json::json;

/// The sync state of a batch of keys: one index probe per key (a LIMIT keeps the
/// planner from turning it into a scan of every record of the mapping, which it
/// picks when the table's statistics lag behind a backfill).
const RECORDS_OF_KEYS: &str = "SELECT r.key, r.state, r.crm_id, r.digest \
     FROM pg_catalog.unnest($2::pg_catalog.text[]) AS k(key) \
     CROSS JOIN LATERAL (SELECT * FROM etlify.records r \
                          WHERE r.mapping_id = $1 AND r.key = k.key LIMIT 1) r";

thread_local! {
    static RECORDS_PLAN: std::cell::RefCell<Option<OwnedPreparedStatement>> =
        const { std::cell::RefCell::new(None) };
}

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
    if !force {
        // the whole source in one pass; if any row breaks it (a serializer that
        // raises), row by row through the keys below, which blames that row alone
        if let Ok(Ok(counts)) =
            restricted::in_subtransaction(|| scan(mapping_id, batch, &id_property))
        {
            Spi::connect(|c| c.find_cursor(&cursor).map(drop)).ok();
            return JsonB(counts.to_json());
        }
    }
    let (mut checked, mut differ, mut errors) = (0usize, 0usize, 0usize);
    loop {
        let keys: Vec<String> = with_settings(&CANONICAL, || {
            Spi::connect(|c| {
                let mut cur = c.find_cursor(&cursor)?;
                let keys = cur
                    .fetch(batch)?
                    .filter_map(|r| datums::text(&r, 1))
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
        enqueue(mapping_id, dirty);
    }
    Spi::connect(|c| c.find_cursor(&cursor).map(drop)).ok();
    JsonB(json!({"checked": checked, "differ": differ, "errors": errors}))
}

/// The records of `keys` with their sync state, and their rows loaded and
/// serialized as a drain would.
fn records(mapping_id: i32, keys: Vec<String>) -> Vec<Claimed> {
    let rows = keys
        .into_iter()
        .map(|key| Claimed {
            key,
            ..Default::default()
        })
        .collect();
    let mut rows = with_records(mapping_id, rows);
    store::load(mapping_id, &mut rows);
    rows
}

#[derive(Default)]
struct Counts {
    checked: usize,
    differ: usize,
    errors: usize,
}

impl Counts {
    fn to_json(&self) -> serde_json::Value {
        json!({"checked": self.checked, "differ": self.differ, "errors": self.errors})
    }
}

/// Marks `keys` of a mapping dirty.
fn enqueue(mapping_id: i32, keys: Vec<String>) {
    if keys.is_empty() {
        return;
    }
    Spi::run_with_args(
        "SELECT etlify._dirty($1, $2, pg_catalog.now())",
        &[mapping_id.into(), keys.into()],
    )
    .unwrap_or_else(|e| Error::internal(format!("etlify.sync_stale: {e}")).raise());
}

/// The fast way: the serializer over the whole source in one statement
/// (etlify._scan_sql), read `batch` rows at a time as the mapping's owner; then the
/// records whose rows are gone, which all differ. Err when the mapping cannot be
/// read this way (the caller goes key by key instead).
fn scan(mapping_id: i32, batch: i64, id_property: &str) -> Result<Counts, String> {
    let (owner, search_path, sql) = store::plan(mapping_id, true)?;
    let path = restricted::owner_search_path(&search_path);
    let mut settings = vec![(c"search_path", path.as_str())];
    // keys are spelled canonically; for most key types (integers, text, uuid)
    // that needs no setting, and the serializer runs as the drain runs it
    let key_type = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT m.key_type::pg_catalog.oid FROM etlify.mappings m WHERE m.id = $1",
        &[mapping_id.into()],
    )
    .map_err(|e| e.to_string())?
    .ok_or("the mapping was removed")?;
    if crate::keys::setting_sensitive(key_type) {
        settings.extend(CANONICAL);
    }
    let max = crate::gucs::max_payload_bytes();
    let rows = restricted::as_role(owner, &settings, || {
        Spi::connect(|c| {
            c.open_cursor(sql.as_str(), &[max.into()])
                .detach_into_name()
        })
    });
    let mut counts = Counts::default();
    let each = Batch {
        mapping_id,
        owner,
        settings: &settings,
        cursor: &rows,
        size: batch,
        max,
    };
    let mut window = Window::open(mapping_id);
    while scan_batch(&each, &mut window, id_property, &mut counts)? {}
    window.close();
    Spi::connect(|c| c.find_cursor(&rows).map(drop)).ok();
    // records whose row is gone
    let gone_sql = Spi::get_one_with_args::<String>(
        "SELECT etlify._stale_keys_sql(m, true) FROM etlify.mappings m WHERE m.id = $1",
        &[mapping_id.into()],
    )
    .map_err(|e| e.to_string())?
    .ok_or("the mapping was removed")?;
    let gone: Vec<String> = with_settings(&CANONICAL, || {
        Spi::connect(|c| {
            c.select(gone_sql.as_str(), None, &[])
                .map(|t| t.filter_map(|r| datums::text(&r, 1)).collect())
        })
    })
    .map_err(|e| e.to_string())?;
    counts.checked += gone.len();
    counts.differ += gone.len();
    for chunk in gone.chunks(batch as usize) {
        enqueue(mapping_id, chunk.to_vec());
    }
    Ok(counts)
}

/// One batch of `scan`'s cursor, read as the mapping's owner: false when the
/// cursor is exhausted.
struct Batch<'a> {
    mapping_id: i32,
    owner: pg_sys::Oid,
    settings: &'a [(&'a std::ffi::CStr, &'a str)],
    cursor: &'a str,
    size: i64,
    max: i64,
}

fn scan_batch(
    b: &Batch<'_>,
    window: &mut Window,
    id_property: &str,
    counts: &mut Counts,
) -> Result<bool, String> {
    let batch_rows: Vec<Claimed> = restricted::as_role(b.owner, b.settings, || {
        Spi::connect(|c| {
            let mut cur = c.find_cursor(b.cursor)?;
            let out = cur
                .fetch(b.size)?
                .map(|r| {
                    let key = datums::text(&r, 1).unwrap_or_default();
                    let size = r.get::<i64>(4).ok().flatten();
                    let payload = datums::json(&r, 3);
                    let error = match (&payload, size) {
                        (None, Some(size)) if size > b.max => Some(format!(
                            "payload is {size} bytes, more than etlify.max_payload_size ({} kB)",
                            b.max / 1024
                        )),
                        _ => None,
                    };
                    Claimed {
                        key,
                        present: true,
                        included: r.get::<bool>(2).ok().flatten().unwrap_or(false),
                        payload,
                        error,
                        ..Default::default()
                    }
                })
                .collect();
            let _ = cur.detach_into_name();
            Ok::<_, pgrx::spi::SpiError>(out)
        })
    })
    .map_err(|e| e.to_string())?;
    if batch_rows.is_empty() {
        return Ok(false);
    }
    counts.checked += batch_rows.len();
    let found = stale(with_window(window, b.mapping_id, batch_rows), id_property);
    counts.errors += found.errors;
    counts.differ += found.differ.len();
    enqueue(b.mapping_id, found.differ);
    Ok(true)
}

/// Rows with their records' sync state: from the window read beside the scan,
/// and probed for the ones it does not hold.
fn with_window(window: &mut Window, mapping_id: i32, rows: Vec<Claimed>) -> Vec<Claimed> {
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let found = window.take(&keys);
    let (mut done, mut probe) = (Vec::with_capacity(rows.len()), Vec::new());
    for (mut r, known) in rows.into_iter().zip(found) {
        match known {
            Some(k) => {
                k.apply(&mut r);
                done.push(r);
            }
            None => probe.push(r),
        }
    }
    if !probe.is_empty() {
        done.extend(with_records(mapping_id, probe));
    }
    done
}

/// Rows with their records' sync state (state, CRM id, digest).
fn with_records(mapping_id: i32, mut rows: Vec<Claimed>) -> Vec<Claimed> {
    let keys: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
    let mut known: FxHashMap<String, Known> = Spi::connect(|c| {
        // planned once per backend: a re-check of a million rows asks a thousand times
        RECORDS_PLAN.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                let types = [
                    PgBuiltInOids::INT4OID.into(),
                    PgBuiltInOids::TEXTARRAYOID.into(),
                ];
                *slot = Some(c.prepare(RECORDS_OF_KEYS, &types)?.keep());
            }
            let plan = slot.as_ref().expect("prepared above");
            c.select(plan, None, &[mapping_id.into(), keys.into()])
                .map(|t| t.filter_map(|r| Known::read(&r)).collect())
        })
    })
    .unwrap_or_else(|e| Error::internal(format!("etlify.sync_stale: {e}")).raise());
    for r in rows.iter_mut() {
        if let Some(k) = known.remove(&r.key) {
            k.apply(r);
        }
    }
    rows
}
