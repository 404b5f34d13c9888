//! The HubSpot CRM v3 objects API: routing and the single-object and batch handlers.
//! Handlers are synchronous: they parse and validate outside the store lock, then take it
//! once per request for the lookups, writes and response rendering.

use crate::clock::{now_ms, Iso};
use crate::errors::{self, ApiError};
use crate::query::{percent_decode, Query};
use crate::render::ObjView;
use crate::state::{is_system_prop, unique_key, Changes, Conflict, Store, TypeStore};
use axum::http::Method;
use serde::de::DeserializeOwned;
use serde::ser::{Serialize, Serializer};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

/// HubSpot's documented cap on batch inputs.
pub const MAX_BATCH_INPUTS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BatchOp {
    Create,
    Read,
    Update,
    Upsert,
    Archive,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    List,
    Create,
    Read(String),
    Update(String),
    Archive(String),
    Batch(BatchOp),
    Search,
}

#[derive(Debug, PartialEq)]
pub enum RouteError {
    NotFound,
    MethodNotAllowed,
}

/// Maps `/crm/v3/objects/{t}[/...]` to an operation.
pub fn route<'a>(method: &Method, path: &'a str) -> Result<(&'a str, Op), RouteError> {
    use RouteError::*;
    let rest = path.strip_prefix("/crm/v3/objects/").ok_or(NotFound)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segs = rest.split('/');
    let t = segs.next().filter(|t| !t.is_empty()).ok_or(NotFound)?;
    let (a, b, extra) = (segs.next(), segs.next(), segs.next());
    if extra.is_some() {
        return Err(NotFound);
    }
    let op = match (a, b) {
        (None, None) => match *method {
            Method::GET => Op::List,
            Method::POST => Op::Create,
            _ => return Err(MethodNotAllowed),
        },
        (Some("search"), None) if *method == Method::POST => Op::Search,
        (Some("batch"), Some(op)) => {
            let op = match op {
                "create" => BatchOp::Create,
                "read" => BatchOp::Read,
                "update" => BatchOp::Update,
                "upsert" => BatchOp::Upsert,
                "archive" => BatchOp::Archive,
                _ => return Err(NotFound),
            };
            if *method != Method::POST {
                return Err(MethodNotAllowed);
            }
            Op::Batch(op)
        }
        (Some(id), None) if !id.is_empty() => {
            let id = percent_decode(id, false);
            match *method {
                Method::GET => Op::Read(id),
                Method::PATCH => Op::Update(id),
                Method::DELETE => Op::Archive(id),
                _ => return Err(MethodNotAllowed),
            }
        }
        _ => return Err(NotFound),
    };
    Ok((t, op))
}

/// A finished answer from a handler, plus the input count for the request log.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub inputs: u32,
}

impl Reply {
    fn ok(status: u16, body: Vec<u8>, inputs: usize) -> Self {
        Reply {
            status,
            body,
            inputs: inputs as u32,
        }
    }

    fn err(e: ApiError, inputs: usize) -> Self {
        Reply {
            status: e.status,
            body: e.body,
            inputs: inputs as u32,
        }
    }
}

/// Everything a handler needs besides its body.
pub struct Ctx<'a> {
    pub store: &'a Mutex<Store>,
    pub object_type: &'a str,
    pub query: Query,
    pub fail_ids: Option<&'a BTreeMap<String, String>>,
}

impl Ctx<'_> {
    /// Scripted per-input failure for this id value, if any (email matches case-insensitively).
    fn scripted_failure(&self, key: &str) -> Option<String> {
        let ids = self.fail_ids?;
        ids.get(key)
            .or_else(|| ids.get(&key.to_ascii_lowercase()))
            .cloned()
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        crate::lock(self.store)
    }
}

pub fn handle(ctx: &Ctx, op: Op, body: &[u8]) -> Reply {
    match op {
        Op::List => list(ctx),
        Op::Create => single_create(ctx, body),
        Op::Read(id) => single_read(ctx, &id),
        Op::Update(id) => single_update(ctx, &id, body),
        Op::Archive(id) => single_archive(ctx, &id),
        Op::Search => match crate::search::search(ctx.store, ctx.object_type, body) {
            Ok(b) => Reply::ok(200, b, 0),
            Err(e) => Reply::err(e, 0),
        },
        Op::Batch(op) => batch(ctx, op, body),
    }
}

// ---------------------------------------------------------------------------------------
// Request bodies

#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default, rename = "idProperty")]
    id_property: Option<String>,
    #[serde(default)]
    properties: Option<Map<String, Value>>,
    #[serde(default, rename = "objectWriteTraceId")]
    trace: Option<String>,
}

#[derive(Deserialize)]
struct BatchBody {
    inputs: Vec<Input>,
    #[serde(default, rename = "idProperty")]
    id_property: Option<String>,
    /// Batch read: which properties to return.
    #[serde(default)]
    properties: Option<Vec<String>>,
    #[serde(default)]
    archived: bool,
}

/// Counts `inputs` without keeping them (request log of rejected requests).
pub fn count_inputs(body: &[u8]) -> u32 {
    #[derive(Deserialize)]
    struct Count {
        inputs: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Count>(body)
        .map(|c| c.inputs.len() as u32)
        .unwrap_or(0)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| errors::invalid_json(&e))
}

/// An id as sent: HubSpot accepts strings; numbers are tolerated.
fn id_string(v: &Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Normalizes a stored value: emails are case-insensitive, so they are kept lowercased.
fn normalize(prop: &str, v: String) -> String {
    if prop == "email" {
        v.to_ascii_lowercase()
    } else {
        v
    }
}

/// Input properties to writes. Values are stored as strings; `null` and `""` clear. System
/// properties are read-only and silently ignored, as HubSpot does.
fn to_changes(props: Option<Map<String, Value>>) -> Result<Changes, String> {
    let props = props.unwrap_or_default();
    let mut out = Vec::with_capacity(props.len());
    for (k, v) in props {
        if is_system_prop(&k) {
            continue;
        }
        let v = match v {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(normalize(&k, s)),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Array(_) | Value::Object(_) => {
                return Err(format!(
                    "Property values were not valid: [{{\"isValid\":false,\"message\":\"{k} must be a string, number or boolean\",\"error\":\"INVALID_PROPERTY_VALUE\",\"name\":\"{k}\"}}]"
                ))
            }
        };
        out.push((k, v));
    }
    Ok(out)
}

fn email_of(changes: &Changes) -> Option<&str> {
    changes
        .iter()
        .find(|(k, _)| k == "email")
        .and_then(|(_, v)| v.as_deref())
}

/// "Contact", "Company", ... as HubSpot words its conflict messages.
fn singular(object_type: &str) -> String {
    match object_type {
        "contacts" => "Contact".into(),
        "companies" => "Company".into(),
        "deals" => "Deal".into(),
        "tickets" => "Ticket".into(),
        _ => "Object".into(),
    }
}

fn conflict_message(object_type: &str, c: &Conflict) -> String {
    format!(
        "{} already exists. Existing ID: {}",
        singular(object_type),
        c.existing_id
    )
}

fn not_found_single(id: &str) -> ApiError {
    errors::error_with_context(
        404,
        "OBJECT_NOT_FOUND",
        "Object not found.  objectId are usually numeric.",
        json!({ "id": [id] }),
    )
}

fn render_one(view: ObjView) -> Vec<u8> {
    serde_json::to_vec(&view).expect("in-memory write")
}

// ---------------------------------------------------------------------------------------
// Single-object calls

fn list(ctx: &Ctx) -> Reply {
    let q = &ctx.query;
    let limit = match q.get("limit").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        _ => return Reply::err(errors::validation("limit must be between 1 and 100"), 0),
    };
    let after: u64 = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let archived = q.flag("archived");
    let props = q.list("properties");
    let props = (!props.is_empty()).then_some(props.as_slice());
    let store = ctx.store();
    let empty = TypeStore::default();
    let ts = store.types.get(ctx.object_type).unwrap_or(&empty);
    let mut page = ts
        .objects
        .range(after..)
        .map(|(_, o)| o)
        .filter(|o| o.is_live() != archived)
        .take(limit + 1);
    let results: Vec<_> = page.by_ref().take(limit).collect();
    let next = page.next().map(|o| o.id);
    let mut out = Vec::with_capacity(256 * results.len() + 64);
    out.extend_from_slice(b"{\"results\":");
    serde_json::to_writer(
        &mut out,
        &results
            .iter()
            .map(|o| ObjView {
                obj: o,
                props,
                new: None,
                trace: None,
            })
            .collect::<Vec<_>>(),
    )
    .expect("in-memory write");
    if let Some(n) = next {
        out.extend_from_slice(format!(",\"paging\":{{\"next\":{{\"after\":\"{n}\"}}}}").as_bytes());
    }
    out.push(b'}');
    Reply::ok(200, out, 0)
}

fn single_create(ctx: &Ctx, body: &[u8]) -> Reply {
    let run = || -> Result<Vec<u8>, ApiError> {
        let input: Input = parse(body)?;
        let changes = to_changes(input.properties).map_err(errors::validation)?;
        if ctx.object_type == "contacts" {
            if let Some(msg) = email_of(&changes).and_then(|e| ctx.scripted_failure(e)) {
                return Err(errors::validation(msg));
            }
        }
        let mut store = ctx.store();
        if let Some(c) = store.type_mut(ctx.object_type).conflict(None, &changes) {
            return Err(errors::error(
                409,
                "CONFLICT",
                conflict_message(ctx.object_type, &c),
            ));
        }
        let id = store.create(ctx.object_type, changes, now_ms());
        let ts = store.type_mut(ctx.object_type);
        Ok(render_one(ObjView::full(ts.get(id).expect("just created"))))
    };
    match run() {
        Ok(b) => Reply::ok(201, b, 1),
        Err(e) => Reply::err(e, 1),
    }
}

fn single_read(ctx: &Ctx, id: &str) -> Reply {
    if let Some(msg) = ctx.scripted_failure(id) {
        return Reply::err(errors::validation(msg), 0);
    }
    let id_prop = ctx.query.get("idProperty");
    let props = ctx.query.list("properties");
    let props = (!props.is_empty()).then_some(props.as_slice());
    let mut store = ctx.store();
    let ts = store.type_mut(ctx.object_type);
    let found = if ctx.query.flag("archived") {
        ts.find_archived(id)
    } else {
        if let Some(p) = id_prop {
            ts.ensure_unique(p);
        }
        ts.find(id_prop, id)
    };
    match found.and_then(|oid| ts.get(oid)) {
        Some(obj) => Reply::ok(
            200,
            render_one(ObjView {
                obj,
                props,
                new: None,
                trace: None,
            }),
            0,
        ),
        None => Reply::err(not_found_single(id), 0),
    }
}

fn single_update(ctx: &Ctx, id: &str, body: &[u8]) -> Reply {
    let run = || -> Result<Vec<u8>, ApiError> {
        let input: Input = parse(body)?;
        if let Some(msg) = ctx.scripted_failure(id) {
            return Err(errors::validation(msg));
        }
        let changes = to_changes(input.properties).map_err(errors::validation)?;
        let id_prop = ctx.query.get("idProperty");
        let mut store = ctx.store();
        let ts = store.type_mut(ctx.object_type);
        if let Some(p) = id_prop {
            ts.ensure_unique(p);
        }
        let oid = ts.find(id_prop, id).ok_or_else(|| not_found_single(id))?;
        if let Some(c) = ts.conflict(Some(oid), &changes) {
            return Err(errors::error(
                409,
                "CONFLICT",
                conflict_message(ctx.object_type, &c),
            ));
        }
        ts.update(oid, changes, now_ms());
        Ok(render_one(ObjView::full(ts.get(oid).expect("exists"))))
    };
    match run() {
        Ok(b) => Reply::ok(200, b, 1),
        Err(e) => Reply::err(e, 1),
    }
}

/// HubSpot answers 204 whether or not the object existed.
fn single_archive(ctx: &Ctx, id: &str) -> Reply {
    if let Some(msg) = ctx.scripted_failure(id) {
        return Reply::err(errors::validation(msg), 1);
    }
    let id_prop = ctx.query.get("idProperty");
    let mut store = ctx.store();
    let ts = store.type_mut(ctx.object_type);
    if let Some(p) = id_prop {
        ts.ensure_unique(p);
    }
    if let Some(oid) = ts.find(id_prop, id) {
        ts.archive(oid, now_ms());
    }
    Reply::ok(204, Vec::new(), 1)
}

// ---------------------------------------------------------------------------------------
// Batch calls

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
struct ErrEntry {
    status: &'static str,
    category: &'static str,
    message: String,
    context: ErrContext,
}

fn input_error(
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
struct BatchResponse<'a> {
    status: &'static str,
    results: Results<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_errors: Option<usize>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [ErrEntry],
    started_at: String,
    completed_at: String,
}

/// 200/201 when every input succeeded, else 207 (even if none did) with per-input errors.
fn batch_reply(
    ts: &TypeStore,
    done: &[Done],
    errors: &[ErrEntry],
    props: Option<&[String]>,
    started_ms: i64,
    ok_status: u16,
    inputs: usize,
) -> Reply {
    let resp = BatchResponse {
        status: "COMPLETE",
        results: Results { ts, done, props },
        num_errors: (!errors.is_empty()).then_some(errors.len()),
        errors,
        started_at: Iso(started_ms).to_string(),
        completed_at: Iso(now_ms()).to_string(),
    };
    let mut out = Vec::with_capacity(512 * done.len() + 256);
    serde_json::to_writer(&mut out, &resp).expect("in-memory write");
    let status = if errors.is_empty() { ok_status } else { 207 };
    Reply::ok(status, out, inputs)
}

fn duplicate_ids(dup: &str) -> ApiError {
    errors::validation(format!(
        "Duplicate IDs found in batch input: [{dup}]. IDs must be unique"
    ))
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

fn batch(ctx: &Ctx, op: BatchOp, body: &[u8]) -> Reply {
    let b: BatchBody = match parse(body) {
        Ok(b) => b,
        Err(e) => return Reply::err(e, count_inputs(body) as usize),
    };
    let n = b.inputs.len();
    if n > MAX_BATCH_INPUTS {
        return Reply::err(
            errors::validation(
                "The maximum number of inputs supported in a batch is 100. Please reduce the number of items and try again",
            ),
            n,
        );
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
        let Some(id) = id else {
            errors.push(input_error(
                "VALIDATION_ERROR",
                "Input is missing its id".into(),
                None,
                None,
            ));
            continue;
        };
        if let Some(msg) = ctx.scripted_failure(id) {
            errors.push(input_error("VALIDATION_ERROR", msg, Some(id), None));
            continue;
        }
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
                format!(
                    "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
                    ctx.object_type.to_ascii_uppercase()
                ),
                Some(id),
                None,
            )),
        }
    }
    batch_reply(ts, &done, &errors, props.as_deref(), started, 200, n)
}

fn batch_update(ctx: &Ctx, b: BatchBody, started: i64) -> Reply {
    let n = b.inputs.len();
    let default_prop = b
        .id_property
        .clone()
        .or(ctx.query.get("idProperty").map(str::to_owned));
    struct Prepared {
        id: Option<String>,
        id_prop: Option<String>,
        changes: Result<Changes, String>,
        trace: Option<String>,
    }
    let prepared: Vec<Prepared> = b
        .inputs
        .into_iter()
        .map(|i| Prepared {
            id: id_string(&i.id),
            id_prop: i.id_property.or_else(|| default_prop.clone()),
            changes: to_changes(i.properties),
            trace: i.trace,
        })
        .collect();
    if let Some(d) = first_duplicate(
        prepared
            .iter()
            .filter_map(|p| p.id.as_deref().map(|id| (p.id_prop.as_deref(), id))),
    ) {
        return Reply::err(duplicate_ids(d), n);
    }
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
    let default_prop = b
        .id_property
        .clone()
        .or(ctx.query.get("idProperty").map(str::to_owned));
    struct Prepared {
        id: Option<String>,
        id_prop: Option<String>,
        changes: Result<Changes, String>,
        trace: Option<String>,
    }
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
        return Reply::err(duplicate_ids(d), n);
    }
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
    let mut store = ctx.store();
    let ts = store.type_mut(ctx.object_type);
    if let Some(p) = id_prop {
        ts.ensure_unique(p);
    }
    let now = now_ms();
    for id in &ids {
        let Some(id) = id else {
            errors.push(input_error(
                "VALIDATION_ERROR",
                "Input is missing its id".into(),
                None,
                None,
            ));
            continue;
        };
        if let Some(msg) = ctx.scripted_failure(id) {
            errors.push(input_error("VALIDATION_ERROR", msg, Some(id), None));
            continue;
        }
        if let Some(oid) = ts.find(id_prop, id) {
            ts.archive(oid, now);
        }
    }
    if errors.is_empty() {
        return Reply::ok(204, Vec::new(), n);
    }
    batch_reply(ts, &[], &errors, None, started, 200, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |m: Method, p: &str| route(&m, p);
        assert_eq!(
            r(Method::POST, "/crm/v3/objects/contacts"),
            Ok(("contacts", Op::Create))
        );
        assert_eq!(
            r(Method::GET, "/crm/v3/objects/deals/"),
            Ok(("deals", Op::List))
        );
        assert_eq!(
            r(Method::GET, "/crm/v3/objects/contacts/a%40b.c"),
            Ok(("contacts", Op::Read("a@b.c".into())))
        );
        assert_eq!(
            r(Method::POST, "/crm/v3/objects/2-123/batch/upsert"),
            Ok(("2-123", Op::Batch(BatchOp::Upsert)))
        );
        assert_eq!(
            r(Method::POST, "/crm/v3/objects/contacts/search"),
            Ok(("contacts", Op::Search))
        );
        assert_eq!(
            r(Method::PUT, "/crm/v3/objects/contacts/1"),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            r(Method::GET, "/crm/v3/objects/contacts/batch/upsert"),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            r(Method::POST, "/crm/v3/objects/contacts/batch/nope"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            r(Method::GET, "/crm/v4/objects/contacts"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            r(Method::GET, "/crm/v3/objects/"),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn property_values_become_strings() {
        let props: Map<String, Value> = serde_json::from_str(
            r#"{"n":1.5,"b":true,"s":"x","e":"","z":null,"email":"A@B.C","hs_object_id":"9"}"#,
        )
        .unwrap();
        let mut c = to_changes(Some(props)).unwrap();
        c.sort();
        let want: Changes = vec![
            ("b".into(), Some("true".into())),
            ("e".into(), None),
            ("email".into(), Some("a@b.c".into())),
            ("n".into(), Some("1.5".into())),
            ("s".into(), Some("x".into())),
            ("z".into(), None),
        ];
        assert_eq!(c, want);
        let bad: Map<String, Value> = serde_json::from_str(r#"{"a":[1]}"#).unwrap();
        assert!(to_changes(Some(bad)).is_err());
    }
}
