//! `/__mock/*`: unauthenticated control and inspection endpoints for tests and benchmarks.
//! Not part of HubSpot's API and never logged or rate-limited.

use crate::association_store::{canonical_type, AssocType};
use crate::faults::FaultConfig;
use crate::query::Query;
use crate::render;
use crate::server::respond;
use crate::{lock, App};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn json_ok(v: Value) -> Response {
    respond(
        200,
        serde_json::to_vec(&v).expect("in-memory write"),
        None,
        None,
    )
}

fn bad_request(message: String) -> Response {
    respond(
        400,
        serde_json::to_vec(&json!({"status": "error", "message": message}))
            .expect("in-memory write"),
        None,
        None,
    )
}

pub async fn health() -> &'static str {
    "ok"
}

pub async fn reset(State(app): State<Arc<App>>) -> Response {
    lock(&app.store).clear();
    lock(&app.control).reset();
    json_ok(json!({}))
}

/// `GET /__mock/objects/{t}[?archived=true]`: every (non-)archived object, sorted by id.
pub async fn objects(
    State(app): State<Arc<App>>,
    Path(t): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let archived = Query::parse(q.as_deref()).flag("archived");
    let store = lock(&app.store);
    let body = match store.types.get(&t) {
        Some(ts) => render::results_body(ts.objects.values().filter(|o| o.is_live() != archived)),
        None => br#"{"results":[]}"#.to_vec(),
    };
    drop(store);
    respond(200, body, None, None)
}

/// `GET /__mock/associations/{from}/{to}`: every association from → to as seen from
/// `from`'s side (types of that direction), sorted by (from, to) id.
pub async fn associations(
    State(app): State<Arc<App>>,
    Path((from, to)): Path<(String, String)>,
) -> Response {
    #[derive(serde::Serialize)]
    struct Entry {
        from: String,
        to: String,
        types: Vec<AssocType>,
    }
    let (from, to) = (canonical_type(&from), canonical_type(&to));
    let all = lock(&app.store).associations.all(&from, &to);
    let entries: Vec<Entry> = all
        .into_iter()
        .map(|(from, to, types)| Entry {
            from: from.to_string(),
            to: to.to_string(),
            types: types.into_iter().collect(),
        })
        .collect();
    respond(
        200,
        serde_json::to_vec(&entries).expect("in-memory write"),
        None,
        None,
    )
}

/// `GET /__mock/requests[?since=SEQ]`: completed API requests in arrival order.
pub async fn requests(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let since = Query::parse(q.as_deref())
        .get("since")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"requests\":");
    {
        let control = lock(&app.control);
        let entries: Vec<_> = control.log.completed_since(since).collect();
        serde_json::to_writer(&mut out, &entries).expect("in-memory write");
    }
    out.push(b'}');
    respond(200, out, None, None)
}

pub async fn stats(State(app): State<Arc<App>>) -> Response {
    let requests = lock(&app.control).total_requests;
    let (mut live, mut archived) = (BTreeMap::new(), BTreeMap::new());
    for (t, ts) in lock(&app.store).types.iter() {
        live.insert(t.clone(), ts.live);
        archived.insert(t.clone(), ts.archived_count());
    }
    json_ok(json!({
        "requests": requests,
        "inflight": app.inflight.load(Ordering::Relaxed),
        "objects": live,
        "archived": archived,
    }))
}

/// `PUT /__mock/faults`: replaces the whole fault config; echoes it back.
pub async fn put_faults(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    let cfg: FaultConfig = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(e) => return bad_request(format!("invalid fault config: {e}")),
    };
    if let Err(e) = cfg.validate() {
        return bad_request(e);
    }
    let echo = serde_json::to_value(&cfg).expect("in-memory write");
    lock(&app.control).set_faults(cfg);
    json_ok(echo)
}

/// `GET /__mock/faults`: the config in force, with the not-yet-consumed `fail_next` entries.
pub async fn get_faults(State(app): State<Arc<App>>) -> Response {
    let control = lock(&app.control);
    let mut v = serde_json::to_value(control.faults()).expect("in-memory write");
    let pending: Vec<_> = control.pending_fail_next().cloned().collect();
    drop(control);
    v["fail_next_pending"] = serde_json::to_value(pending).expect("in-memory write");
    json_ok(v)
}
