//! The HubSpot CRM v3 objects API: routing, request-body parsing and the single-object calls
//! (batch calls are in `batch.rs`, search in `search.rs`, the v4 associations in
//! `associations.rs`). Handlers are synchronous: they parse and validate outside the store lock, then take it
//! once per request for the lookups, writes and response rendering.

use crate::associations::AssocOp;
use crate::clock::now_ms;
use crate::errors::{self, ApiError};
use crate::query::{percent_decode, Query};
use crate::render::ObjView;
use crate::state::{is_system_prop, Changes, Conflict, Store, TypeStore};
use axum::http::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
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
    /// v4; the route's object type is the `from` type.
    Associations(AssocOp),
}

/// Every operation's name, as the fault config's `operations` targets them.
pub const OPERATIONS: [&str; 16] = [
    "list",
    "create",
    "read",
    "update",
    "archive",
    "search",
    "batch/create",
    "batch/read",
    "batch/update",
    "batch/upsert",
    "batch/archive",
    "associations/batch/associate/default",
    "associations/batch/create",
    "associations/batch/archive",
    "associations/batch/read",
    "associations/default",
];

impl Op {
    /// One of [`OPERATIONS`].
    pub fn name(&self) -> &'static str {
        match self {
            Op::List => "list",
            Op::Create => "create",
            Op::Read(_) => "read",
            Op::Update(_) => "update",
            Op::Archive(_) => "archive",
            Op::Search => "search",
            Op::Batch(op) => match op {
                BatchOp::Create => "batch/create",
                BatchOp::Read => "batch/read",
                BatchOp::Update => "batch/update",
                BatchOp::Upsert => "batch/upsert",
                BatchOp::Archive => "batch/archive",
            },
            Op::Associations(op) => op.name(),
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum RouteError {
    NotFound,
    MethodNotAllowed,
}

/// Maps `/crm/v3/objects/{t}[/...]` (and the v4 association paths) to an operation.
pub fn route<'a>(method: &Method, path: &'a str) -> Result<(&'a str, Op), RouteError> {
    use RouteError::*;
    if path.starts_with("/crm/v4/") {
        return crate::associations::route(method, path);
    }
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
    pub(crate) fn ok(status: u16, body: Vec<u8>, inputs: usize) -> Self {
        Reply {
            status,
            body,
            inputs: inputs as u32,
        }
    }

    pub(crate) fn err(e: ApiError, inputs: usize) -> Self {
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
    /// `reject_ids`: whole batches refused for one of these ids.
    pub reject_ids: Option<&'a BTreeMap<String, u16>>,
}

impl Ctx<'_> {
    /// Scripted per-input failure for this id value, if any (email matches case-insensitively).
    pub(crate) fn scripted_failure(&self, key: &str) -> Option<String> {
        let ids = self.fail_ids?;
        ids.get(key)
            .or_else(|| ids.get(&key.to_ascii_lowercase()))
            .cloned()
    }

    /// Scripted whole-batch refusal for this id value, if any. Ids match ignoring ASCII
    /// case, as emails do (crm ids are digits).
    pub(crate) fn scripted_rejection(&self, key: &str) -> Option<u16> {
        let ids = self.reject_ids?;
        ids.get(key).copied().or_else(|| {
            ids.iter()
                .find(|(id, _)| id.eq_ignore_ascii_case(key))
                .map(|(_, &status)| status)
        })
    }

    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, Store> {
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
        Op::Batch(op) => crate::batch::batch(ctx, op, body),
        Op::Associations(op) => crate::associations::handle(ctx, op, body),
    }
}

// ---------------------------------------------------------------------------------------
// Request bodies

#[derive(Deserialize)]
pub(crate) struct Input {
    #[serde(default)]
    pub(crate) id: Option<Value>,
    #[serde(default, rename = "idProperty")]
    pub(crate) id_property: Option<String>,
    #[serde(default)]
    pub(crate) properties: Option<Map<String, Value>>,
    #[serde(default, rename = "objectWriteTraceId")]
    pub(crate) trace: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct BatchBody {
    pub(crate) inputs: Vec<Input>,
    #[serde(default, rename = "idProperty")]
    pub(crate) id_property: Option<String>,
    /// Batch read: which properties to return.
    #[serde(default)]
    pub(crate) properties: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) archived: bool,
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

pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| errors::invalid_json(&e))
}

/// An id as sent: HubSpot accepts strings; numbers are tolerated.
pub(crate) fn id_string(v: &Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Normalizes a stored value: emails are case-insensitive, so they are kept lowercased.
pub(crate) fn normalize(prop: &str, v: String) -> String {
    if prop == "email" {
        v.to_ascii_lowercase()
    } else {
        v
    }
}

/// Input properties to writes. Values are stored as strings; `null` and `""` clear. System
/// properties are read-only and silently ignored, as HubSpot does.
pub(crate) fn to_changes(props: Option<Map<String, Value>>) -> Result<Changes, String> {
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

pub(crate) fn email_of(changes: &Changes) -> Option<&str> {
    changes
        .iter()
        .find(|(k, _)| k == "email")
        .and_then(|(_, v)| v.as_deref())
}

/// "Contact", "Company", ... as HubSpot words its conflict messages.
pub(crate) fn singular(object_type: &str) -> String {
    match object_type {
        "contacts" => "Contact".into(),
        "companies" => "Company".into(),
        "deals" => "Deal".into(),
        "tickets" => "Ticket".into(),
        _ => "Object".into(),
    }
}

pub(crate) fn conflict_message(object_type: &str, c: &Conflict) -> String {
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
        store.archive(ctx.object_type, oid, now_ms());
    }
    Reply::ok(204, Vec::new(), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        fn r(m: Method, p: &str) -> Result<(&str, Op), RouteError> {
            route(&m, p)
        }
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
    fn every_operation_has_a_listed_name() {
        let ops = [
            Op::List,
            Op::Create,
            Op::Read("1".into()),
            Op::Update("1".into()),
            Op::Archive("1".into()),
            Op::Search,
            Op::Batch(BatchOp::Create),
            Op::Batch(BatchOp::Read),
            Op::Batch(BatchOp::Update),
            Op::Batch(BatchOp::Upsert),
            Op::Batch(BatchOp::Archive),
        ];
        let assoc = [
            "/crm/v4/associations/deals/companies/batch/associate/default",
            "/crm/v4/associations/deals/companies/batch/create",
            "/crm/v4/associations/deals/companies/batch/archive",
            "/crm/v4/associations/deals/companies/batch/read",
        ]
        .map(|p| route(&Method::POST, p).unwrap().1);
        let single = route(
            &Method::PUT,
            "/crm/v4/objects/deals/1/associations/default/companies/2",
        )
        .unwrap()
        .1;
        let names: Vec<&str> = ops
            .iter()
            .chain(&assoc)
            .chain([&single])
            .map(Op::name)
            .collect();
        assert_eq!(names, OPERATIONS);
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
