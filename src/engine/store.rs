//! The drain's calls into its SQL half (sql/operations.sql), one function each.

use crate::datums;
use crate::restricted;
use etlify_core::adapter::Label;
use etlify_core::links::{Held, LinkState};
use etlify_core::plan::{Claimed, Resolved, Wait};
use etlify_core::unanswered::Unanswered;
use pgrx::prelude::*;
use pgrx::{JsonB, Spi};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

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
    /// The CRM was registered in another database or cluster: this one is a copy,
    /// and sends nothing to it until an operator resumes it.
    pub held: bool,
}

fn spi_err(what: &str, e: pgrx::spi::SpiError) -> ! {
    pgrx::error!("etlify: {what}: {e}")
}

pub fn work(crm: Option<&str>) -> Vec<Work> {
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT mapping_id, crm, source::oid, source_name, object_type, id_property, adapter, \
                 config, secret, enabled, rate_limit, rate_period_ms, batch_size, \
                 etlify._version(crm_version), held \
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
                held: r.get::<bool>(15).ok().flatten().unwrap_or(true),
            }
        })
        .collect()
    })
}

/// Claims up to `limit` ready records (or exactly `keys`), then loads and
/// serializes their rows as the mapping's owner (see `fetch`).
pub fn claim(
    mapping_id: i32,
    limit: usize,
    claimer: Option<&str>,
    keys: Option<Vec<String>>,
) -> Vec<Claimed> {
    let mut claimed: Vec<Claimed> = Spi::connect_mut(|client| {
        let rows = client
            .update(
                "SELECT key, change_seq, state, crm_id, digest, shared, sending, sent_ms \
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
            key: datums::text(&r, 1).unwrap_or_default(),
            seq: r.get::<i64>(2).ok().flatten(),
            state: datums::text(&r, 3),
            crm_id: datums::text(&r, 4),
            digest: datums::bytes(&r, 5),
            shared: r.get::<bool>(6).ok().flatten().unwrap_or(false),
            unanswered: datums::text(&r, 7).map(|value| Unanswered {
                value,
                age: Duration::from_secs_f64(
                    (r.get::<f64>(8).ok().flatten().unwrap_or(0.0) / 1000.0).max(0.0),
                ),
            }),
            ..Default::default()
        })
        .collect()
    });
    if !claimed.is_empty() {
        // read the rows as of now, not as of the transaction's start: the claim
        // saw keys that later commits enqueued; and what the records wait for
        // under the snapshot their payloads were read under (a payload read
        // before its reference had an id is never sent): restricted::one_snapshot
        let blocked = restricted::one_snapshot(|| {
            let refs = fetch(mapping_id, &mut claimed, true);
            if refs.iter().any(Option::is_some) {
                awaited(mapping_id, &mut claimed, &refs)
            } else {
                (Vec::new(), Vec::new())
            }
        });
        enqueue_awaited(mapping_id, blocked);
    }
    claimed
}

/// Notes (or forgets, with None) the id_property values claimed keys are about to
/// be upserted by (etlify._unanswered, crate::unanswered in core).
pub fn note_unanswered(mapping_id: i32, notes: Vec<(String, Option<String>)>) {
    if notes.is_empty() {
        return;
    }
    let (keys, values): (Vec<String>, Vec<Option<String>>) = notes.into_iter().unzip();
    Spi::connect_mut(|client| {
        client
            .update(
                "SELECT etlify._unanswered($1, $2, $3)",
                None,
                &[mapping_id.into(), keys.into(), values.into()],
            )
            .unwrap_or_else(|e| spi_err("noting the values about to be upserted", e));
    })
}

/// Which of `ids` a record of the mapping holds (etlify._held).
pub fn held_ids(mapping_id: i32, ids: Vec<String>) -> std::collections::HashSet<String> {
    if ids.is_empty() {
        return Default::default();
    }
    Spi::connect(|client| {
        client
            .select(
                "SELECT etlify._held($1, $2)",
                None,
                &[mapping_id.into(), ids.into()],
            )
            .unwrap_or_else(|e| spi_err("checking which records hold found objects", e))
            .filter_map(|r| datums::text(&r, 1))
            .collect()
    })
}

/// The sync dependencies of claimed records (etlify._await): the ones a record
/// waits for (the plan buffers it), and its associations. `refs` are the fetch's,
/// one list per claimed record. Returns the referenced records waited for, as
/// (positions, keys), to be enqueued.
fn awaited(
    mapping_id: i32,
    claimed: &mut [Claimed],
    refs: &[Option<Vec<Option<String>>>],
) -> (Vec<i32>, Vec<String>) {
    let (mut keys, mut positions, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for (c, r) in claimed.iter().zip(refs) {
        if let (true, true, Some(r)) = (c.present, c.included, r) {
            for (i, v) in r.iter().enumerate() {
                keys.push(c.key.clone());
                positions.push(i as i32 + 1);
                values.push(v.clone());
            }
        }
    }
    if keys.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let by_key: HashMap<String, usize> = claimed
        .iter()
        .enumerate()
        .map(|(i, c)| (c.key.clone(), i))
        .collect();
    let (mut blocked_pos, mut blocked_refs) = (Vec::new(), Vec::new());
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT key, position, ref, blocked, reason, to_type, to_id, associate, held_from, held_to \
                 FROM etlify._await($1, $2, $3, $4)",
                None,
                &[
                    mapping_id.into(),
                    keys.into(),
                    positions.into(),
                    values.into(),
                ],
            )
            .unwrap_or_else(|e| spi_err("looking up sync dependencies", e));
        for r in rows {
            let text = |i: usize| datums::text(&r, i);
            let (Some(key), Some(position)) = (text(1), r.get::<i32>(2).ok().flatten()) else {
                continue;
            };
            let Some(c) = by_key.get(&key).map(|&i| &mut claimed[i]) else {
                continue;
            };
            let blocked = r.get::<bool>(4).ok().flatten().unwrap_or(false);
            let reference = text(3);
            if blocked {
                if let Some(reference) = &reference {
                    blocked_pos.push(position);
                    blocked_refs.push(reference.clone());
                    if c.waits.is_none() {
                        c.waits = Some(Wait {
                            position,
                            key: reference.clone(),
                            reason: text(5).unwrap_or_default(),
                        });
                    }
                }
            }
            let associate = datums::json(&r, 8);
            let (held_from, held_to) = (text(9), text(10));
            if associate.is_some() || held_to.is_some() {
                c.links.push(LinkState {
                    position,
                    to_type: text(6),
                    want: associate.as_ref().and_then(|_| text(7)),
                    label: associate.as_ref().and_then(label),
                    held_from,
                    held_to,
                });
            }
        }
    });
    (blocked_pos, blocked_refs)
}

/// Enqueues the referenced records that claimed records wait for.
fn enqueue_awaited(mapping_id: i32, (blocked_pos, blocked_refs): (Vec<i32>, Vec<String>)) {
    if !blocked_pos.is_empty() {
        Spi::connect_mut(|client| {
            client
                .update(
                    "SELECT etlify._enqueue_awaited($1, $2, $3)",
                    None,
                    &[mapping_id.into(), blocked_pos.into(), blocked_refs.into()],
                )
                .unwrap_or_else(|e| spi_err("enqueueing awaited records", e));
        });
    }
}

/// A labelled association type as etlify.needs stores it (None: the default one).
fn label(associate: &Value) -> Option<Label> {
    Some(Label {
        category: associate.get("category")?.as_str()?.to_string(),
        type_id: associate.get("type_id")?.as_i64()?,
    })
}

/// One row of a mapping's fetch statement (etlify._fetch_sql).
struct Fetched {
    key: String,
    present: bool,
    included: bool,
    payload: Option<Value>,
    /// The payload's size in bytes (as jsonb), also when it was too big to load.
    size: Option<i64>,
}

/// Loads and serializes the claimed rows: one statement for the batch, as the
/// mapping's owner in a security-restricted operation with the mapping's
/// search_path (restricted.rs). If the batch fails, row by row in subtransactions,
/// so that only the rows whose serializer fails are blamed. With `with_refs`,
/// returns each row's references (sync dependencies); else none.
fn fetch(
    mapping_id: i32,
    claimed: &mut [Claimed],
    with_refs: bool,
) -> Vec<Option<Vec<Option<String>>>> {
    let (owner, search_path, sql, refs_sql) = match plan_with_refs(mapping_id, false) {
        Ok(p) => p,
        Err(problem) => {
            for c in claimed.iter_mut() {
                blame(c, problem.clone());
            }
            return vec![None; claimed.len()];
        }
    };
    let keys: Vec<String> = claimed.iter().map(|c| c.key.clone()).collect();
    let path = restricted::owner_search_path(&search_path);
    let settings = [(c"search_path", path.as_str())];
    let max = crate::gucs::max_payload_bytes();
    let timeout = crate::gucs::serializer_timeout_ms();
    let run = |keys: Vec<String>| {
        restricted::in_subtransaction_for_records(|| {
            restricted::bounded(timeout, || fetch_rows(&sql, keys, max))
        })
    };
    let (rows, refs): (Vec<Result<Fetched, String>>, _) =
        restricted::as_role(owner, &settings, || {
            let refs = refs_sql
                .filter(|_| with_refs)
                .map(|q| load_refs(mapping_id, &q, keys.clone(), timeout));
            let rows = match run(keys.clone()) {
                Ok(rows) => rows.into_iter().map(Ok).collect(),
                Err(_) => keys
                    .iter()
                    .map(|k| {
                        run(vec![k.clone()])
                            .map_err(|e| format!("serializer failed: {e}"))
                            .and_then(|mut rows| rows.pop().ok_or_else(|| "no row".to_string()))
                    })
                    .collect(),
            };
            (rows, refs)
        });
    let refs = match refs {
        Some(r) if r.len() == claimed.len() => r,
        _ => vec![None; claimed.len()],
    };
    // the statement answers one row per key, in the keys' order: anything else is
    // a bug, and a shifted result would send one row's payload as another's
    if rows.len() != claimed.len() {
        pgrx::error!(
            "etlify: mapping {mapping_id}: {} rows loaded for {} keys",
            rows.len(),
            claimed.len()
        );
    }
    for (c, row) in claimed.iter_mut().zip(rows) {
        match row {
            Ok(f) if f.key == c.key => {
                c.present = f.present;
                c.included = f.included;
                match (f.payload, f.size) {
                    (None, Some(size)) if size > max => {
                        c.error = Some(format!(
                            "payload is {size} bytes, more than etlify.max_payload_size ({} kB)",
                            max / 1024
                        ))
                    }
                    (payload, _) => c.payload = payload,
                }
            }
            Ok(f) => pgrx::error!(
                "etlify: mapping {mapping_id}: row for key {:?} loaded in place of key {:?}",
                f.key,
                c.key
            ),
            Err(e) => blame(c, e),
        }
    }
    refs
}

/// How to load and serialize a mapping's rows (etlify._fetch_plan): the owner
/// to run as, its recorded search_path, and the statement (for claimed keys, or
/// with `scan` for the whole source); or why it cannot be done.
pub fn plan(mapping_id: i32, scan: bool) -> Result<(pg_sys::Oid, String, String), String> {
    plan_with_refs(mapping_id, scan).map(|(owner, path, sql, _)| (owner, path, sql))
}

/// `plan`, with the statement that loads the references of sync dependencies
/// (etlify._refs_sql; None when the mapping has none).
type FetchPlan = (pg_sys::Oid, String, String, Option<String>);
fn plan_with_refs(mapping_id: i32, scan: bool) -> Result<FetchPlan, String> {
    let plan = Spi::connect(|client| {
        let t = client
            .select(
                "SELECT owner, search_path, sql, problem, refs_sql FROM etlify._fetch_plan($1, $2)",
                None,
                &[mapping_id.into(), scan.into()],
            )
            .unwrap_or_else(|e| spi_err("planning the serializer", e))
            .first();
        let text = |i| t.get::<String>(i).ok().flatten();
        (
            t.get::<pg_sys::Oid>(1).ok().flatten(),
            text(2),
            text(3),
            text(4),
            text(5),
        )
    });
    match plan {
        (Some(owner), Some(search_path), Some(sql), None, refs) => {
            Ok((owner, search_path, sql, refs))
        }
        (.., problem, _) => Err(problem.unwrap_or_else(|| "the mapping cannot be loaded".into())),
    }
}

/// Loads and serializes rows for records that are not claimed (sync_stale's
/// re-check), the way a claim does.
pub fn load(mapping_id: i32, records: &mut [Claimed]) {
    if !records.is_empty() {
        // a re-check compares payloads: what records wait for is the drain's
        restricted::one_snapshot(|| drop(fetch(mapping_id, records, false)));
    }
}

/// A record whose row could not be loaded or serialized: it fails with `error`
/// (the plan sees a present, included row with an error, and blames it).
fn blame(c: &mut Claimed, error: String) {
    c.present = true;
    c.included = true;
    c.error = Some(error);
}

/// The keys each of `keys`' rows references (etlify._refs_sql), in `keys`' order:
/// none for a row that is gone. If they cannot be loaded (a lock, a timeout), no
/// record of the batch waits, and a warning says why: the serializer decides.
fn load_refs(
    mapping_id: i32,
    sql: &str,
    keys: Vec<String>,
    timeout: i32,
) -> Vec<Option<Vec<Option<String>>>> {
    // spelled as keys are, whatever the session's DateStyle or TimeZone
    let loaded = restricted::in_subtransaction_for_records(|| {
        restricted::with_settings(&crate::keys::CANONICAL, || {
            restricted::bounded(timeout, || {
                Spi::connect(|client| {
                    client
                        .select(sql, None, &[keys.into()])
                        .map(|rows| rows.map(|r| datums::texts(&r, 2)).collect::<Vec<_>>())
                        .unwrap_or_else(|e| pgrx::error!("{e}"))
                })
            })
        })
    });
    loaded.unwrap_or_else(|e| {
        pgrx::warning!("etlify: mapping {mapping_id}: references not loaded: {e}");
        Vec::new()
    })
}

fn fetch_rows(sql: &str, keys: Vec<String>, max_payload: i64) -> Vec<Fetched> {
    Spi::connect(|client| {
        client
            .select(sql, None, &[keys.into(), max_payload.into()])
            .map(|rows| {
                rows.map(|r| Fetched {
                    key: datums::text(&r, 1).unwrap_or_default(),
                    present: r.get::<bool>(2).ok().flatten().unwrap_or(false),
                    included: r.get::<bool>(3).ok().flatten().unwrap_or(false),
                    payload: datums::json(&r, 4),
                    size: r.get::<i64>(5).ok().flatten(),
                })
                .collect()
            })
            .unwrap_or_else(|e| pgrx::error!("{e}"))
    })
}

/// Records a batch's results; returns how long until the earliest retry it
/// scheduled.
pub fn record(mapping_id: i32, claimer: Option<&str>, results: &[Resolved]) -> Option<Duration> {
    if results.is_empty() {
        return None;
    }
    let json = Value::Array(results.iter().map(Resolved::to_json).collect());
    Spi::connect_mut(|client| {
        client
            .update(
                "SELECT etlify._record($1, $2, $3)",
                None,
                &[mapping_id.into(), claimer.into(), JsonB(json).into()],
            )
            .and_then(|t| t.first().get_one::<f64>())
            .unwrap_or_else(|e| spi_err("recording results", e))
            .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 86_400.0)))
    })
}

/// The associations a batch made or removed (etlify._linked).
pub fn linked(mapping_id: i32, held: &[Held]) {
    if held.is_empty() {
        return;
    }
    let json = Value::Array(held.iter().map(Held::to_json).collect());
    Spi::connect_mut(|client| {
        client
            .update(
                "SELECT etlify._linked($1, $2)",
                None,
                &[mapping_id.into(), JsonB(json).into()],
            )
            .unwrap_or_else(|e| spi_err("recording associations", e));
    })
}

/// Makes the buffered records whose wait is over dirty again (etlify._release_buffered).
pub fn release_buffered() {
    Spi::connect_mut(|client| {
        client
            .update("SELECT etlify._release_buffered()", None, &[])
            .unwrap_or_else(|e| spi_err("releasing buffered records", e));
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

/// Marks one record dirty (etlify._dirty).
pub fn dirty(mapping_id: i32, key: &str) {
    Spi::connect_mut(|client| {
        client
            .update(
                "SELECT etlify._dirty($1, ARRAY[$2], now())",
                None,
                &[mapping_id.into(), key.into()],
            )
            .unwrap_or_else(|e| spi_err("marking a record dirty", e));
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

/// Makes the records of inline sends whose transaction rolled back dirty again
/// (see src/inline_sends.rs). In a subtransaction: whatever goes wrong here is a
/// warning, and the drain goes on (the notes wait for the next one).
pub fn settle_inline_sends() {
    let settled = restricted::in_subtransaction(|| {
        Spi::connect_mut(|client| {
            client
                .update("SELECT etlify._settle_inline_sends()", None, &[])
                .unwrap_or_else(|e| spi_err("settling inline sends", e));
        })
    });
    if let Err(e) = settled {
        pgrx::warning!("etlify: inline sends not settled this time: {e}");
    }
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
