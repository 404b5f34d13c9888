//! Batch calls (`/crm/v3/objects/{t}/batch/{op}`): at most 100 inputs, one store lock per
//! batch, and per-input failures reported HubSpot's way (207 with `errors[].context.ids`).
//! The response and error shapes are shared with the v4 association batches.

use crate::clock::{now_ms, Iso};
use crate::errors::{self, ApiError};
use crate::hubspot::{
    conflict_message, count_inputs, email_of, id_string, normalize, parse, to_changes, BatchBody,
    BatchOp, Ctx, Reply, MAX_BATCH_INPUTS,
};
use crate::render::ObjView;
use crate::state::{unique_key, Changes, TypeStore};
use serde::ser::{Serialize, Serializer};
use std::collections::HashSet;

/// One successful input.
struct Done {
    id: u64,
    new: Option<bool>,
    trace: Option<String>,
}

#[derive(serde::Serialize)]
struct ErrContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    ids: Option<Vec<String>>,
    #[serde(rename = "objectWriteTraceId", skip_serializing_if = "Option::is_none")]
    trace: Option<Vec<String>>,
}

/// One failed input, as an entry of the batch response's `errors`.
#[derive(serde::Serialize)]
pub(crate) struct ErrEntry {
    status: &'static str,
    pub(crate) category: &'static str,
    pub(crate) message: String,
    context: ErrContext,
}

impl ErrEntry {
    /// The same error as a single-object call answers it (404 for a missing object).
    pub(crate) fn into_api_error(self) -> ApiError {
        let status = if self.category == "OBJECT_NOT_FOUND" {
            404
        } else {
            400
        };
        match self.context.ids {
            Some(ids) => errors::error_with_context(
                status,
                self.category,
                self.message,
                serde_json::json!({ "ids": ids }),
            ),
            None => errors::error(status, self.category, self.message),
        }
    }
}

pub(crate) fn input_error(
    category: &'static str,
    message: String,
    id: Option<&str>,
    trace: Option<&str>,
) -> ErrEntry {
    ErrEntry {
        status: "error",
        category,
        message,
        context: ErrContext {
            ids: id.map(|i| vec![i.to_owned()]),
            trace: trace.map(|t| vec![t.to_owned()]),
        },
    }
}

struct Results<'a> {
    ts: &'a TypeStore,
    done: &'a [Done],
    props: Option<&'a [String]>,
}

impl Serialize for Results<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.done.iter().filter_map(|d| {
            self.ts.get(d.id).map(|obj| ObjView {
                obj,
                props: self.props,
                new: d.new,
                trace: d.trace.as_deref(),
            })
        }))
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchResponse<'a, R> {
    status: &'static str,
    results: R,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_errors: Option<usize>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [ErrEntry],
    started_at: String,
    completed_at: String,
}

/// A batch answer, HubSpot's way for every batch endpoint (v3 objects, v4 associations):
/// `ok_status` when every input succeeded, else 207 (even if none did) with per-input
/// errors.
pub(crate) fn complete<R: serde::Serialize>(
    results: R,
    errors: &[ErrEntry],
    started_ms: i64,
    ok_status: u16,
    inputs: usize,
) -> Reply {
    let resp = BatchResponse {
        status: "COMPLETE",
        results,
        num_errors: (!errors.is_empty()).then_some(errors.len()),
        errors,
        started_at: Iso(started_ms).to_string(),
        completed_at: Iso(now_ms()).to_string(),
    };
    let mut out = Vec::with_capacity(512 * inputs + 256);
    serde_json::to_writer(&mut out, &resp).expect("in-memory write");
    let status = if errors.is_empty() { ok_status } else { 207 };
    Reply::ok(status, out, inputs)
}

fn batch_reply(
    ts: &TypeStore,
    done: &[Done],
    errors: &[ErrEntry],
    props: Option<&[String]>,
    started_ms: i64,
    ok_status: u16,
    inputs: usize,
) -> Reply {
    let results = Results { ts, done, props };
    complete(results, errors, started_ms, ok_status, inputs)
}

/// HubSpot's answer to a batch over its endpoint's cap.
pub(crate) fn too_many_inputs(max: usize) -> ApiError {
    errors::validation(format!(
        "The maximum number of inputs supported in a batch is {max}. Please reduce the number of items and try again"
    ))
}

fn duplicate_ids(dup: &str) -> ApiError {
    errors::validation(format!(
        "Duplicate IDs found in batch input: [{dup}]. IDs must be unique"
    ))
}

/// An input's id, or None after recording why it cannot be used (missing, or a
/// scripted failure for it).
pub(crate) fn usable_id<'a>(
    ctx: &Ctx,
    id: Option<&'a str>,
    errors: &mut Vec<ErrEntry>,
) -> Option<&'a str> {
    let Some(id) = id else {
        errors.push(input_error(
            "VALIDATION_ERROR",
            "Input is missing its id".into(),
            None,
            None,
        ));
        return None;
    };
    if let Some(msg) = ctx.scripted_failure(id) {
        errors.push(input_error("VALIDATION_ERROR", msg, Some(id), None));
        return None;
    }
    Some(id)
}

/// The message of a batch's OBJECT_NOT_FOUND entries.
pub(crate) fn missing_objects(object_type: &str) -> String {
    format!(
        "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
        object_type.to_ascii_uppercase()
    )
}

/// First id value sent twice in one batch (compared the way lookups compare them).
fn first_duplicate<'a>(keys: impl Iterator<Item = (Option<&'a str>, &'a str)>) -> Option<&'a str> {
    let mut seen = HashSet::new();
    for (prop, v) in keys {
        let key = (
            prop.unwrap_or("hs_object_id"),
            unique_key(prop.unwrap_or(""), v),
        );
        if !seen.insert(key) {
            return Some(v);
        }
    }
    None
}

pub fn batch(ctx: &Ctx, op: BatchOp, body: &[u8]) -> Reply {
    let b: BatchBody = match parse(body) {
        Ok(b) => b,
        Err(e) => return Reply::err(e, count_inputs(body) as usize),
    };
    let n = b.inputs.len();
    if n > MAX_BATCH_INPUTS {
        return Reply::err(too_many_inputs(MAX_BATCH_INPUTS), n);
    }
    if let Some(refusal) = scripted_refusal(ctx, op, &b) {
        return Reply::err(refusal, n);
    }
    let started = now_ms();
    match op {
        BatchOp::Create => batch_create(ctx, b, started),
        BatchOp::Read => batch_read(ctx, b, started),
        BatchOp::Update => batch_update(ctx, b, started),
        BatchOp::Upsert => batch_upsert(ctx, b, started),
        BatchOp::Archive => batch_archive(ctx, b, started),
    }
}

/// `reject_ids`: the first input holding one refuses the whole batch, naming no input (a
/// 400 names only a property, a 409 the object it collides with), as HubSpot does for a
/// create of an existing email or an invalid value in some batches. The id is the
/// idProperty value for upsert, the crm id for read/update/archive, the email for
/// contacts create.
fn scripted_refusal(ctx: &Ctx, op: BatchOp, b: &BatchBody) -> Option<ApiError> {
    ctx.reject_ids?;
    let default_prop = b.id_property.as_deref().or(ctx.query.get("idProperty"));
    b.inputs.iter().find_map(|input| {
        let id_prop = match op {
            BatchOp::Upsert => input.id_property.as_deref().or(default_prop),
            BatchOp::Create => Some("email"),
            _ => None,
        };
        let id = match op {
            BatchOp::Create if ctx.object_type != "contacts" => None,
            BatchOp::Create => input
                .properties
                .as_ref()
                .and_then(|p| p.get("email"))
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            _ => id_string(&input.id),
        }?;
        let status = ctx.scripted_rejection(&id)?;
        // The property HubSpot would name: the input's first one other than its id.
        let (property, value) = input
            .properties
            .iter()
            .flatten()
            .find(|(k, _)| Some(k.as_str()) != id_prop)
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .unwrap_or_else(|| (id_prop.unwrap_or("hs_object_id").to_owned(), id.clone()));
        let existing = {
            let mut store = ctx.store();
            let ts = store.type_mut(ctx.object_type);
            ts.find(id_prop, &id)
        };
        // Some object is in the way; when the store has none, any id reads the same.
        let existing = existing.unwrap_or(1000 + errors::splitmix64(id.len() as u64) % 1_000_000);
        Some(errors::batch_refused(
            status,
            ctx.object_type,
            (&property, &value),
            existing,
        ))
    })
}

/// Creates are all-or-nothing on conflicts (HubSpot fails the batch naming the first one);
/// scripted failures (`fail_ids` on email) and invalid values fail per input.
fn batch_create(ctx: &Ctx, b: BatchBody, started: i64) -> Reply {
    let n = b.inputs.len();
    let t = ctx.object_type;
    let mut errors = Vec::new();
    let mut todo = Vec::with_capacity(n);
    for input in b.inputs {
        let trace = input.trace;
        match to_changes(input.properties) {
            Err(msg) => errors.push(input_error("VALIDATION_ERROR", msg, None, trace.as_deref())),
            Ok(changes) => {
                let failure = (t == "contacts")
                    .then(|| {
                        email_of(&changes)
                            .and_then(|e| ctx.scripted_failure(e).map(|m| (e.to_owned(), m)))
                    })
                    .flatten();
                match failure {
                    Some((email, msg)) => errors.push(input_error(
                        "VALIDATION_ERROR",
                        msg,
                        Some(&email),
                        trace.as_deref(),
                    )),
                    None => todo.push((changes, trace)),
                }
            }
        }
    }
    let mut store = ctx.store();
    {
        let ts = store.type_mut(t);
        let mut in_batch = HashSet::new();
        for (changes, _) in &todo {
            if let Some(c) = ts.conflict(None, changes) {
                return Reply::err(errors::error(409, "CONFLICT", conflict_message(t, &c)), n);
            }
            for (k, v) in changes {
                if let (true, Some(v)) = (ts.is_unique(k), v) {
                    if !in_batch.insert((k.as_str(), unique_key(k, v))) {
                        return Reply::err(
                            errors::validation(format!(
                                "Duplicate value {v} for unique property {k} in batch input"
                            )),
                            n,
                        );
                    }
                }
            }
        }
    }
    let now = now_ms();
    let done: Vec<Done> = todo
        .into_iter()
        .map(|(changes, trace)| Done {
            id: store.create(t, changes, now),
            new: None,
            trace,
        })
        .collect();
    batch_reply(store.type_mut(t), &done, &errors, None, started, 201, n)
}

fn batch_read(ctx: &Ctx, b: BatchBody, started: i64) -> Reply {
    let n = b.inputs.len();
    let id_prop = b.id_property.as_deref().or(ctx.query.get("idProperty"));
    let ids: Vec<Option<String>> = b.inputs.iter().map(|i| id_string(&i.id)).collect();
    if let Some(d) = first_duplicate(ids.iter().flatten().map(|v| (id_prop, v.as_str()))) {
        return Reply::err(duplicate_ids(d), n);
    }
    let props = b.properties.filter(|p| !p.is_empty());
    let mut errors = Vec::new();
    let mut done = Vec::with_capacity(n);
    let mut store = ctx.store();
    let ts = store.type_mut(ctx.object_type);
    if let Some(p) = id_prop {
        ts.ensure_unique(p);
    }
    for id in &ids {
        let Some(id) = usable_id(ctx, id.as_deref(), &mut errors) else {
            continue;
        };
        let found = if b.archived {
            ts.find_archived(id)
        } else {
            ts.find(id_prop, id)
        };
        match found {
            Some(oid) => done.push(Done {
                id: oid,
                new: None,
                trace: None,
            }),
            None => errors.push(input_error(
                "OBJECT_NOT_FOUND",
                missing_objects(ctx.object_type),
                Some(id),
                None,
            )),
        }
    }
    batch_reply(ts, &done, &errors, props.as_deref(), started, 200, n)
}

/// A batch update or upsert input, read once: its id, the property the id is a value
/// of (the input's own, else the batch's, else the query string's), its changes.
struct Prepared {
    id: Option<String>,
    id_prop: Option<String>,
    changes: Result<Changes, String>,
    trace: Option<String>,
}

/// Err: the batch names one id twice (HubSpot refuses the whole batch).
fn prepare(ctx: &Ctx, b: BatchBody) -> Result<Vec<Prepared>, Reply> {
    let n = b.inputs.len();
    let default_prop = b
        .id_property
        .clone()
        .or(ctx.query.get("idProperty").map(str::to_owned));
    let prepared: Vec<Prepared> = b
        .inputs
        .into_iter()
        .map(|i| Prepared {
            id: id_string(&i.id),
            id_prop: i
                .id_property
                .filter(|p| !p.is_empty())
                .or_else(|| default_prop.clone()),
            changes: to_changes(i.properties),
            trace: i.trace,
        })
        .collect();
    if let Some(d) = first_duplicate(
        prepared
            .iter()
            .filter_map(|p| p.id.as_deref().map(|id| (p.id_prop.as_deref(), id))),
    ) {
        return Err(Reply::err(duplicate_ids(d), n));
    }
    Ok(prepared)
}

fn batch_update(ctx: &Ctx, b: BatchBody, started: i64) -> Reply {
    let n = b.inputs.len();
    let prepared = match prepare(ctx, b) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let mut errors = Vec::new();
    let mut done = Vec::with_capacity(n);
    let mut store = ctx.store();
    let ts = store.type_mut(ctx.object_type);
    let now = now_ms();
    for p in prepared {
        let trace = p.trace.as_deref();
        let Some(id) = p.id.as_deref() else {
            errors.push(input_error(
                "VALIDATION_ERROR",
                "Input is missing its id".into(),
                None,
                trace,
            ));
            continue;
        };
        if let Some(msg) = ctx.scripted_failure(id) {
            errors.push(input_error("VALIDATION_ERROR", msg, Some(id), trace));
            continue;
        }
        let changes = match p.changes {
            Ok(c) => c,
            Err(msg) => {
                errors.push(input_error("VALIDATION_ERROR", msg, Some(id), trace));
                continue;
            }
        };
        if let Some(prop) = p.id_prop.as_deref() {
            ts.ensure_unique(prop);
        }
        let Some(oid) = ts.find(p.id_prop.as_deref(), id) else {
            errors.push(input_error(
                "OBJECT_NOT_FOUND",
                "Object not found.  objectId are usually numeric.".into(),
                Some(id),
                trace,
            ));
            continue;
        };
        if let Some(c) = ts.conflict(Some(oid), &changes) {
            errors.push(input_error(
                "CONFLICT",
                conflict_message(ctx.object_type, &c),
                Some(id),
                trace,
            ));
            continue;
        }
        ts.update(oid, changes, now);
        done.push(Done {
            id: oid,
            new: None,
            trace: p.trace,
        });
    }
    batch_reply(ts, &done, &errors, None, started, 200, n)
}

/// Upsert by a unique property: update the object holding `id` in `idProperty`, or create
/// one with it. Every result says whether it was `new`.
fn batch_upsert(ctx: &Ctx, b: BatchBody, started: i64) -> Reply {
    let n = b.inputs.len();
    let t = ctx.object_type;
    let prepared = match prepare(ctx, b) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let mut errors = Vec::new();
    let mut done = Vec::with_capacity(n);
    let mut store = ctx.store();
    let now = now_ms();
    for p in prepared {
        let trace = p.trace.as_deref();
        let Some(id) = p.id.as_deref() else {
            let msg = format!(
                "Missing value for idProperty {}",
                p.id_prop.as_deref().unwrap_or("hs_object_id")
            );
            errors.push(input_error("VALIDATION_ERROR", msg, None, trace));
            continue;
        };
        if let Some(msg) = ctx.scripted_failure(id) {
            errors.push(input_error("VALIDATION_ERROR", msg, Some(id), trace));
            continue;
        }
        let mut changes = match p.changes {
            Ok(c) => c,
            Err(msg) => {
                errors.push(input_error("VALIDATION_ERROR", msg, Some(id), trace));
                continue;
            }
        };
        let id_prop = p.id_prop.as_deref().filter(|p| *p != "hs_object_id");
        let ts = store.type_mut(t);
        if let Some(prop) = id_prop {
            ts.ensure_unique(prop);
            // The object ends up holding exactly the id it was upserted by.
            changes.retain(|(k, _)| k != prop);
            changes.push((prop.to_owned(), Some(normalize(prop, id.to_owned()))));
        }
        let existing = ts.find(id_prop, id);
        if let Some(c) = ts.conflict(existing, &changes) {
            errors.push(input_error(
                "CONFLICT",
                conflict_message(t, &c),
                Some(id),
                trace,
            ));
            continue;
        }
        match (existing, id_prop) {
            (Some(oid), _) => {
                ts.update(oid, changes, now);
                done.push(Done {
                    id: oid,
                    new: Some(false),
                    trace: p.trace,
                });
            }
            (None, Some(_)) => done.push(Done {
                id: store.create(t, changes, now),
                new: Some(true),
                trace: p.trace,
            }),
            // Upsert by record id can only update: there is no id to create with.
            (None, None) => errors.push(input_error(
                "OBJECT_NOT_FOUND",
                "Object not found.  objectId are usually numeric.".into(),
                Some(id),
                trace,
            )),
        }
    }
    batch_reply(store.type_mut(t), &done, &errors, None, started, 200, n)
}

/// 204 No Content (unknown ids are ignored, as HubSpot does); 207 only for scripted failures.
fn batch_archive(ctx: &Ctx, b: BatchBody, started: i64) -> Reply {
    let n = b.inputs.len();
    let id_prop = b.id_property.as_deref().or(ctx.query.get("idProperty"));
    let ids: Vec<Option<String>> = b.inputs.iter().map(|i| id_string(&i.id)).collect();
    if let Some(d) = first_duplicate(ids.iter().flatten().map(|v| (id_prop, v.as_str()))) {
        return Reply::err(duplicate_ids(d), n);
    }
    let mut errors = Vec::new();
    let t = ctx.object_type;
    let mut store = ctx.store();
    if let Some(p) = id_prop {
        store.type_mut(t).ensure_unique(p);
    }
    let now = now_ms();
    for id in &ids {
        let Some(id) = usable_id(ctx, id.as_deref(), &mut errors) else {
            continue;
        };
        if let Some(oid) = store.type_mut(t).find(id_prop, id) {
            store.archive(t, oid, now);
        }
    }
    if errors.is_empty() {
        return Reply::ok(204, Vec::new(), n);
    }
    batch_reply(store.type_mut(t), &[], &errors, None, started, 200, n)
}
