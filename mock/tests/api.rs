//! End-to-end checks of the HubSpot emulation over real HTTP against an in-process server.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const UPSERT: &str = "/crm/v3/objects/contacts/batch/upsert";
const UPDATE: &str = "/crm/v3/objects/contacts/batch/update";

fn upsert_input(email: &str, props: Value) -> Value {
    json!({"idProperty": "email", "id": email, "properties": props})
}

#[test]
fn upsert_creates_then_updates() {
    let (_s, c) = start_default();
    let r = c.post(
        UPSERT,
        &json!({"inputs": [
            upsert_input("Ann@X.io", json!({"firstname": "Ann", "age": 31, "vip": true})),
            upsert_input("bob@x.io", json!({"firstname": "Bob"})),
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "COMPLETE");
    assert!(v.get("errors").is_none() && v.get("numErrors").is_none());
    assert!(v["startedAt"].as_str().unwrap().ends_with('Z'));
    let res = v["results"].as_array().unwrap();
    assert_eq!(res.len(), 2);
    assert!(res
        .iter()
        .all(|o| o["new"] == true && o["archived"] == false));
    let ann = &res[0];
    assert_eq!(
        ann["properties"]["email"], "ann@x.io",
        "emails are stored lowercased"
    );
    assert_eq!(ann["properties"]["age"], "31", "numbers become strings");
    assert_eq!(ann["properties"]["vip"], "true");
    assert_eq!(ann["properties"]["hs_object_id"], ann["id"]);
    assert!(ann["properties"]["createdate"].is_string());
    assert!(ann["properties"]["lastmodifieddate"].is_string());
    let ann_id: u64 = ann["id"].as_str().unwrap().parse().unwrap();
    assert!(ann_id >= 1_000_001);

    // Second upsert: matched case-insensitively, updates in place, "" and null clear.
    let r = c.post(
        &format!("{UPSERT}?idProperty=email"),
        &json!({"inputs": [
            {"id": "ANN@x.io", "properties": {"firstname": "Annie", "age": "", "vip": null}},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let o = &r.json()["results"][0];
    assert_eq!(o["new"], false);
    assert_eq!(o["id"], ann["id"]);
    assert_eq!(o["properties"]["firstname"], "Annie");
    assert!(o["properties"].get("age").is_none() && o["properties"].get("vip").is_none());

    let objs = c.objects("contacts");
    assert_eq!(objs.len(), 2);
    assert_eq!(objs[0]["id"], ann["id"], "sorted by id");
    assert_eq!(objs[0]["properties"]["firstname"], "Annie");

    // Single read by idProperty.
    let r =
        c.get("/crm/v3/objects/contacts/ann%40x.io?idProperty=email&properties=firstname,missing");
    assert_eq!(r.status, 200);
    let p = &r.json()["properties"];
    assert_eq!(p["firstname"], "Annie");
    assert!(p["missing"].is_null());
    assert!(p.get("email").is_none(), "only requested properties");
}

#[test]
fn partial_failures_answer_207_with_context_ids() {
    let (_s, c) = start_default();
    let r = c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("a@x.io", json!({})), upsert_input("b@x.io", json!({}))]}),
    );
    let ids: Vec<String> = r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();

    // Update: one ok, one unknown id, one email collision.
    let r = c.post(
        UPDATE,
        &json!({"inputs": [
            {"id": ids[0], "properties": {"firstname": "A"}},
            {"id": "999", "properties": {"firstname": "nobody"}},
            {"id": ids[1], "properties": {"email": "A@x.io"}},
        ]}),
    );
    assert_eq!(r.status, 207, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "COMPLETE");
    assert_eq!(v["numErrors"], 2);
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["errors"][0]["status"], "error");
    assert_eq!(v["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(v["errors"][0]["context"]["ids"], json!(["999"]));
    assert_eq!(v["errors"][1]["category"], "CONFLICT");
    assert_eq!(v["errors"][1]["context"]["ids"], json!([ids[1]]));

    // Scripted per-input failures on upsert; ids echoed exactly as sent.
    c.put(
        "/__mock/faults",
        &json!({"fail_ids": {"bad@x.io": "scripted nope"}}),
    );
    let r = c.post(
        UPSERT,
        &json!({"inputs": [
            upsert_input("Bad@x.io", json!({})),
            upsert_input("c@x.io", json!({"firstname": "C"})),
            {"idProperty": "email", "properties": {"firstname": "no id"}},
        ]}),
    );
    assert_eq!(r.status, 207, "{}", r.body);
    let v = r.json();
    assert_eq!(v["numErrors"], 2);
    assert_eq!(v["results"][0]["properties"]["email"], "c@x.io");
    assert_eq!(v["errors"][0]["category"], "VALIDATION_ERROR");
    assert_eq!(v["errors"][0]["message"], "scripted nope");
    assert_eq!(v["errors"][0]["context"]["ids"], json!(["Bad@x.io"]));
    assert_eq!(v["errors"][1]["category"], "VALIDATION_ERROR");

    // Every input failing is still a 207.
    let r = c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("bad@x.io", json!({}))]}),
    );
    assert_eq!(r.status, 207);
    assert_eq!(r.json()["results"], json!([]));

    // Upsert colliding with another object's unique email.
    let r = c.post(
        "/crm/v3/objects/contacts/batch/upsert",
        &json!({"inputs": [{"idProperty": "hs_object_id", "id": ids[1], "properties": {"email": "c@x.io"}}]}),
    );
    assert_eq!(r.status, 207, "{}", r.body);
    assert_eq!(r.json()["errors"][0]["category"], "CONFLICT");
}

#[test]
fn batch_limits_and_duplicates() {
    let (_s, c) = start_default();
    let inputs: Vec<Value> = (0..101)
        .map(|i| upsert_input(&format!("u{i}@x.io"), json!({})))
        .collect();
    let r = c.post(UPSERT, &json!({ "inputs": inputs }));
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["category"], "VALIDATION_ERROR");
    assert_eq!(
        v["message"],
        "The maximum number of inputs supported in a batch is 100. Please reduce the number of items and try again"
    );
    assert!(c.objects("contacts").is_empty());

    let r = c.post(UPSERT, &json!({ "inputs": inputs[..100] }));
    assert_eq!(r.status, 200);
    assert_eq!(c.objects("contacts").len(), 100);

    let r = c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("a@x.io", json!({})), upsert_input("A@x.io", json!({}))]}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["category"], "VALIDATION_ERROR");

    let r = c.post(
        UPDATE,
        &json!({"inputs": [{"id": "1", "properties": {}}, {"id": "1", "properties": {}}]}),
    );
    assert_eq!(r.status, 400);

    let r = c.post(UPSERT, &json!({"inputs": "nope"}));
    assert_eq!(r.status, 400);
    let r = c.try_req("POST", UPSERT, Some("{not json")).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["category"], "VALIDATION_ERROR");
}

#[test]
fn create_conflicts_and_single_object_calls() {
    let (_s, c) = start_default();
    let r = c.post(
        "/crm/v3/objects/contacts",
        &json!({"properties": {"email": "a@x.io", "firstname": "A"}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();

    let r = c.post(
        "/crm/v3/objects/contacts",
        &json!({"properties": {"email": "A@X.IO"}}),
    );
    assert_eq!(r.status, 409);
    let v = r.json();
    assert_eq!(v["category"], "CONFLICT");
    assert_eq!(
        v["message"],
        format!("Contact already exists. Existing ID: {id}")
    );

    // Batch create: a conflict fails the whole batch.
    let r = c.post(
        "/crm/v3/objects/contacts/batch/create",
        &json!({"inputs": [{"properties": {"email": "new@x.io"}}, {"properties": {"email": "a@x.io"}}]}),
    );
    assert_eq!(r.status, 409);
    assert_eq!(c.objects("contacts").len(), 1);
    let r = c.post(
        "/crm/v3/objects/contacts/batch/create",
        &json!({"inputs": [{"properties": {"email": "new@x.io"}, "objectWriteTraceId": "t1"}]}),
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["results"][0]["objectWriteTraceId"], "t1");

    let r = c.req(
        "PATCH",
        &format!("/crm/v3/objects/contacts/{id}"),
        Some(&json!({"properties": {"firstname": "B"}})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["properties"]["firstname"], "B");
    let r = c.req(
        "PATCH",
        "/crm/v3/objects/contacts/424242",
        Some(&json!({"properties": {}})),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["category"], "OBJECT_NOT_FOUND");
    let r = c.get(&format!("/crm/v3/objects/contacts/{id}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["properties"]["firstname"], "B");

    // Other types: no implicit unique property, but an idProperty becomes one.
    let r = c.post(
        "/crm/v3/objects/companies/batch/upsert",
        &json!({"inputs": [{"idProperty": "domain", "id": "x.io", "properties": {"name": "X"}}]}),
    );
    assert_eq!(r.status, 200);
    let r = c.post(
        "/crm/v3/objects/companies/batch/upsert",
        &json!({"inputs": [{"idProperty": "domain", "id": "x.io", "properties": {"name": "X2"}}]}),
    );
    assert_eq!(r.json()["results"][0]["new"], false);
    let r = c.post(
        "/crm/v3/objects/companies",
        &json!({"properties": {"domain": "x.io"}}),
    );
    assert_eq!(r.status, 409);
    assert_eq!(c.objects("companies").len(), 1);
}

#[test]
fn archive_is_204_and_idempotent() {
    let (_s, c) = start_default();
    let r = c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("a@x.io", json!({})), upsert_input("b@x.io", json!({}))]}),
    );
    let ids: Vec<String> = r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    let r = c.req(
        "DELETE",
        &format!("/crm/v3/objects/contacts/{}", ids[0]),
        None,
    );
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let r = c.req(
        "DELETE",
        &format!("/crm/v3/objects/contacts/{}", ids[0]),
        None,
    );
    assert_eq!(r.status, 204, "already gone is still 204");
    let r = c.post(
        "/crm/v3/objects/contacts/batch/archive",
        &json!({"inputs": [{"id": ids[1]}, {"id": "31337"}]}),
    );
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert!(c.objects("contacts").is_empty());
    let archived = c.get("/__mock/objects/contacts?archived=true").json()["results"].clone();
    assert_eq!(archived.as_array().unwrap().len(), 2);
    assert_eq!(archived[0]["archived"], true);
    assert!(archived[0]["archivedAt"].is_string());
    let r = c.get(&format!("/crm/v3/objects/contacts/{}", ids[0]));
    assert_eq!(r.status, 404);
    let stats = c.get("/__mock/stats").json();
    assert_eq!(stats["objects"]["contacts"], 0);
    assert_eq!(stats["archived"]["contacts"], 2);
    // An archived contact's email is free again.
    let r = c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("a@x.io", json!({}))]}),
    );
    assert_eq!(r.json()["results"][0]["new"], true);
}

#[test]
fn authentication() {
    let (_s, mut c) = start(Config {
        token: Some("sekret".into()),
        ..Config::default()
    });
    c.token = None;
    let r = c.get("/crm/v3/objects/contacts/1");
    assert_eq!(r.status, 401);
    let v = r.json();
    assert_eq!(v["status"], "error");
    assert_eq!(v["category"], "INVALID_AUTHENTICATION");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("Authentication credentials not found."));
    assert!(v["correlationId"].as_str().unwrap().len() >= 32);
    c.token = Some("wrong".into());
    assert_eq!(c.get("/crm/v3/objects/contacts/1").status, 401);
    c.token = Some("sekret".into());
    assert_eq!(c.get("/crm/v3/objects/contacts/1").status, 404);
    c.token = None;
    assert_eq!(c.get("/__mock/health").body, "ok", "admin needs no auth");

    let (_s2, mut c2) = start_default();
    c2.token = Some("anything".into());
    assert_eq!(c2.get("/crm/v3/objects/contacts/1").status, 404);
    c2.token = Some(String::new());
    assert_eq!(c2.get("/crm/v3/objects/contacts/1").status, 401);
}

#[test]
fn rate_limit_headers_and_enforcement() {
    let (_s, c) = start_default();
    let r = c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("a@x.io", json!({}))]}),
    );
    assert_eq!(
        r.header("X-HubSpot-RateLimit-Interval-Milliseconds"),
        Some("10000")
    );
    assert_eq!(r.header("X-HubSpot-RateLimit-Max"), Some("190"));
    assert_eq!(r.header("X-HubSpot-RateLimit-Remaining"), Some("189"));
    assert!(r.header("X-HubSpot-RateLimit-Daily").is_some());
    assert!(r.header("X-HubSpot-RateLimit-Daily-Remaining").is_some());
    let r = c.get("/crm/v3/objects/contacts/1");
    assert_eq!(r.header("X-HubSpot-RateLimit-Remaining"), Some("188"));
    let r = c.post("/crm/v3/objects/contacts/search", &json!({}));
    assert_eq!(r.status, 200);
    assert!(
        r.header("X-HubSpot-RateLimit-Max").is_none(),
        "no rate-limit headers on search"
    );

    c.put(
        "/__mock/faults",
        &json!({"rate_limit": {"max": 2, "interval_ms": 60000}}),
    );
    let r1 = c.get("/crm/v3/objects/contacts/1");
    assert_eq!(r1.header("X-HubSpot-RateLimit-Max"), Some("2"));
    assert_eq!(
        r1.header("X-HubSpot-RateLimit-Remaining"),
        Some("0"),
        "window already holds 2 calls"
    );
    let r = c.get("/crm/v3/objects/contacts/1");
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["status"], "error");
    assert_eq!(
        v["message"],
        "You have reached your ten_secondly_rolling limit."
    );
    assert_eq!(v["errorType"], "RATE_LIMIT");
    assert_eq!(v["policyName"], "TEN_SECONDLY_ROLLING");
    assert!(v["correlationId"].is_string());
    assert_eq!(r.header("X-HubSpot-RateLimit-Remaining"), Some("0"));
    assert_eq!(
        c.post("/crm/v3/objects/contacts/search", &json!({})).status,
        200,
        "search is not under this limit"
    );
    c.put("/__mock/faults", &json!({"rate_limit": null}));
    assert_eq!(c.get("/crm/v3/objects/contacts/1").status, 404);

    // Enforced from the configuration (the CLI's --rate-limit), with a short window.
    let (_s2, c2) = start(Config {
        rate_limit: Some((3, 1500)),
        ..Config::default()
    });
    let statuses: Vec<u16> = (0..5)
        .map(|_| c2.get("/crm/v3/objects/deals/1").status)
        .collect();
    assert_eq!(statuses, vec![404, 404, 404, 429, 429]);
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        c2.get("/crm/v3/objects/deals/1").status,
        404,
        "window rolled over"
    );
    c2.post("/__mock/reset", &json!({}));
    let r = c2.get("/crm/v3/objects/deals/1");
    assert_eq!(
        r.header("X-HubSpot-RateLimit-Remaining"),
        Some("2"),
        "reset clears the window"
    );
}

#[test]
fn fault_injection() {
    let (_s, c) = start_default();
    let cfg = json!({"fail_next": [{"status": 500, "retry_after": 2}, {"status": 429}, {"status": 503, "message": "down"}]});
    let r = c.put("/__mock/faults", &cfg);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), cfg, "echoes the config");
    let body = json!({"inputs": [upsert_input("a@x.io", json!({}))]});
    let r = c.post(UPSERT, &body);
    assert_eq!(r.status, 500);
    assert_eq!(r.header("Retry-After"), Some("2"));
    assert_eq!(r.json()["status"], "error");
    let r = c.post(UPSERT, &body);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["policyName"], "TEN_SECONDLY_ROLLING");
    assert!(r.header("Retry-After").is_none());
    let r = c.post(UPSERT, &body);
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (503, json!("down"))
    );
    assert_eq!(c.post(UPSERT, &body).status, 200);
    assert_eq!(
        c.objects("contacts").len(),
        1,
        "failed requests wrote nothing"
    );

    c.put(
        "/__mock/faults",
        &json!({"error_rate": 1.0, "error_status": 502}),
    );
    assert_eq!(c.post(UPSERT, &body).status, 502);
    c.put("/__mock/faults", &json!({"error_rate": 0.5}));
    let n503 = (0..200)
        .filter(|_| c.get("/crm/v3/objects/contacts/1").status == 503)
        .count();
    assert!((50..150).contains(&n503), "about half fail, got {n503}");

    c.put("/__mock/faults", &json!({"delay_ms": 400}));
    let t = Instant::now();
    assert_eq!(c.post(UPSERT, &body).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(400));

    // PUT replaces the whole config: {} clears everything.
    assert_eq!(c.put("/__mock/faults", &json!({})).json(), json!({}));
    let t = Instant::now();
    assert_eq!(c.post(UPSERT, &body).status, 200);
    assert!(t.elapsed() < Duration::from_millis(400));

    let r = c.put("/__mock/faults", &json!({"dealy_ms": 5}));
    assert_eq!(r.status, 400, "unknown fault fields are refused");
    let r = c.put("/__mock/faults", &json!({"error_rate": 2}));
    assert_eq!(r.status, 400);

    // Single-object scripted failure.
    c.put("/__mock/faults", &json!({"fail_ids": {"b@x.io": "no b"}}));
    let r = c.post(
        "/crm/v3/objects/contacts",
        &json!({"properties": {"email": "b@x.io"}}),
    );
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (400, json!("no b"))
    );
}

#[test]
fn hang_exceeds_client_timeout_but_write_completes() {
    let (s, c) = start_default();
    c.put("/__mock/faults", &json!({"hang_ms": 1500}));
    let impatient = Client::with_timeout(s.url(), Some(Duration::from_millis(150)));
    let body = json!({"inputs": [upsert_input("slow@x.io", json!({}))]}).to_string();
    assert!(
        impatient.try_req("POST", UPSERT, Some(&body)).is_err(),
        "client times out"
    );
    assert_eq!(c.get("/__mock/stats").json()["inflight"], 1);
    std::thread::sleep(Duration::from_millis(1600));
    let stats = c.get("/__mock/stats").json();
    assert_eq!(stats["inflight"], 0);
    assert_eq!(
        stats["objects"]["contacts"], 1,
        "the server still applied the write"
    );
}

#[test]
fn admin_request_log_and_reset() {
    let (_s, c) = start_default();
    c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("a@x.io", json!({})), upsert_input("b@x.io", json!({}))]}),
    );
    c.get("/crm/v3/objects/contacts/1000001");
    c.post("/crm/v3/objects/contacts/search", &json!({}));
    c.req("DELETE", "/crm/v3/objects/contacts/1", None);
    c.get("/crm/v3/nowhere");
    assert_eq!(c.get("/__mock/nowhere").status, 404);
    let log = c.requests();
    let summary: Vec<(String, String, u64, u64)> = log
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
                e["inputs"].as_u64().unwrap(),
            )
        })
        .collect();
    let s = |m: &str, p: &str, st: u64, n: u64| (m.to_owned(), p.to_owned(), st, n);
    assert_eq!(
        summary,
        vec![
            s("POST", UPSERT, 200, 2),
            s("GET", "/crm/v3/objects/contacts/1000001", 200, 0),
            s("POST", "/crm/v3/objects/contacts/search", 200, 0),
            s("DELETE", "/crm/v3/objects/contacts/1", 204, 1),
            s("GET", "/crm/v3/nowhere", 404, 0),
        ]
    );
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    for e in &log {
        let (rx, done) = (
            e["received_at_us"].as_i64().unwrap(),
            e["completed_at_us"].as_i64().unwrap(),
        );
        assert!(rx > 1_600_000_000_000_000 && done >= rx);
    }
    let since = c.get(&format!("/__mock/requests?since={}", seqs[2])).json();
    assert_eq!(since["requests"].as_array().unwrap().len(), 2);
    let nf = c.get("/crm/v3/nowhere").json();
    assert_eq!(nf["status"], "error");

    let stats = c.get("/__mock/stats").json();
    assert_eq!(stats["requests"], 6);
    assert_eq!(stats["inflight"], 0);
    assert_eq!(stats["objects"]["contacts"], 2);

    c.put("/__mock/faults", &json!({"delay_ms": 1000}));
    let r = c.post("/__mock/reset", &json!({}));
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    assert!(c.requests().is_empty());
    assert!(c.objects("contacts").is_empty());
    let t = Instant::now();
    c.get("/crm/v3/objects/contacts/1");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "reset cleared the faults"
    );
    assert_eq!(c.get("/__mock/stats").json()["requests"], 1);
}

#[test]
fn search_filters_sorts_and_pages() {
    let (_s, c) = start_default();
    let inputs: Vec<Value> = (0..30)
        .map(|i| {
            upsert_input(
                &format!("u{i:02}@x.io"),
                json!({"score": i, "team": if i % 2 == 0 { "even" } else { "odd" }}),
            )
        })
        .collect();
    c.post(UPSERT, &json!({ "inputs": inputs }));
    let search = |body: Value| {
        let r = c.post("/crm/v3/objects/contacts/search", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let v = search(json!({"filterGroups": [{"filters": [
        {"propertyName": "score", "operator": "GTE", "value": "10"},
        {"propertyName": "team", "operator": "EQ", "value": "EVEN"}]}],
        "sorts": [{"propertyName": "score", "direction": "DESCENDING"}], "limit": 3, "properties": ["score"]}));
    assert_eq!(v["total"], 10);
    let scores: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["properties"]["score"].as_str().unwrap())
        .collect();
    assert_eq!(scores, vec!["28", "26", "24"]);
    assert_eq!(v["paging"]["next"]["after"], "3");
    let v = search(
        json!({"filterGroups": [{"filters": [{"propertyName": "score", "operator": "GTE", "value": 10},
        {"propertyName": "team", "operator": "EQ", "value": "even"}]}], "sorts": [{"propertyName": "score", "direction": "DESCENDING"}], "limit": 3, "after": "9"}),
    );
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert!(v.get("paging").is_none());

    // OR of groups, IN, HAS/NOT_HAS, CONTAINS_TOKEN.
    let v = search(json!({"filterGroups": [
        {"filters": [{"propertyName": "score", "operator": "IN", "values": ["1", "2"]}]},
        {"filters": [{"propertyName": "score", "operator": "LT", "value": "1"}]}]}));
    assert_eq!(v["total"], 3);
    let v = search(
        json!({"filterGroups": [{"filters": [{"propertyName": "nope", "operator": "NOT_HAS_PROPERTY"},
        {"propertyName": "email", "operator": "CONTAINS_TOKEN", "value": "*@x.io"}, {"propertyName": "score", "operator": "HAS_PROPERTY"},
        {"propertyName": "team", "operator": "NEQ", "value": "odd"}]}]}),
    );
    assert_eq!(v["total"], 15);

    // Incremental read: lastmodifieddate GT a millisecond timestamp, ascending.
    let v = search(
        json!({"filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "GT", "value": "0"}]}],
        "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}], "limit": 200}),
    );
    assert_eq!(v["results"].as_array().unwrap().len(), 30);
    let far_future = search(
        json!({"filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "GT", "value": "99999999999999"}]}]}),
    );
    assert_eq!(far_future["total"], 0);

    let r = c.post("/crm/v3/objects/contacts/search", &json!({"limit": 201}));
    assert_eq!(r.status, 400);
    let r = c.post("/crm/v3/objects/contacts/search", &json!({"after": 10000}));
    assert_eq!(r.status, 400);
    let r = c.post("/crm/v3/objects/contacts/search", &json!({"filterGroups": [{"filters": [{"propertyName": "a", "operator": "LIKE", "value": "x"}]}]}));
    assert_eq!(r.status, 400);
}

#[test]
fn batch_read_and_update_by_id_property() {
    let (_s, c) = start_default();
    c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("a@x.io", json!({"firstname": "A"}))]}),
    );
    let r = c.post(
        "/crm/v3/objects/contacts/batch/read",
        &json!({"idProperty": "email", "properties": ["firstname"], "inputs": [{"id": "A@x.io"}, {"id": "z@x.io"}]}),
    );
    assert_eq!(r.status, 207, "{}", r.body);
    let v = r.json();
    assert_eq!(v["results"][0]["properties"]["firstname"], "A");
    assert_eq!(v["errors"][0]["context"]["ids"], json!(["z@x.io"]));
    // What etlify's find relies on: the idProperty comes back when asked for (lowercased,
    // as HubSpot stores emails), and a read finding nothing is still a 207.
    let r = c.post(
        "/crm/v3/objects/contacts/batch/read",
        &json!({"idProperty": "email", "properties": ["email"], "inputs": [{"id": "A@X.io"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["results"][0]["properties"]["email"], "a@x.io");
    let r = c.post(
        "/crm/v3/objects/contacts/batch/read",
        &json!({"idProperty": "email", "properties": ["email"], "inputs": [{"id": "y@x.io"}, {"id": "z@x.io"}]}),
    );
    assert_eq!(r.status, 207, "{}", r.body);
    let v = r.json();
    assert_eq!(v["results"], json!([]));
    assert_eq!(v["errors"][0]["category"], "OBJECT_NOT_FOUND");
    let r = c.post(
        UPDATE,
        &json!({"inputs": [{"idProperty": "email", "id": "a@x.io", "properties": {"firstname": "A2"}}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["results"][0]["properties"]["firstname"], "A2");
    let r = c.get("/crm/v3/objects/contacts?limit=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["results"].as_array().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------
// v4 associations

const V4: &str = "/crm/v4/associations";

/// Creates `n` objects of type `t`; returns their ids.
fn create_objects(c: &Client, t: &str, n: usize) -> Vec<String> {
    let inputs: Vec<Value> = (0..n)
        .map(|i| json!({"properties": {"name": format!("{t} {i}")}}))
        .collect();
    let r = c.post(
        &format!("/crm/v3/objects/{t}/batch/create"),
        &json!({ "inputs": inputs }),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

fn pair(from: &str, to: &str) -> Value {
    json!({"from": {"id": from}, "to": {"id": to}})
}

fn labelled(from: &str, to: &str, category: &str, type_id: i64) -> Value {
    json!({"from": {"id": from}, "to": {"id": to},
           "types": [{"associationCategory": category, "associationTypeId": type_id}]})
}

/// `GET /__mock/associations/{from}/{to}` as (from, to, [type ids]).
fn associations(c: &Client, from: &str, to: &str) -> Vec<(String, String, Vec<i64>)> {
    let r = c.get(&format!("/__mock/associations/{from}/{to}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let types = a["types"].as_array().unwrap();
            assert!(types.iter().all(|t| t["category"] == "HUBSPOT_DEFINED"));
            (
                a["from"].as_str().unwrap().to_owned(),
                a["to"].as_str().unwrap().to_owned(),
                types
                    .iter()
                    .map(|t| t["type_id"].as_i64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

fn triple(from: &str, to: &str, types: &[i64]) -> (String, String, Vec<i64>) {
    (from.to_owned(), to.to_owned(), types.to_vec())
}

#[test]
fn associate_default_is_bidirectional_and_readable() {
    let (_s, c) = start_default();
    let deals = create_objects(&c, "deals", 2);
    let companies = create_objects(&c, "companies", 2);
    let r = c.post(
        &format!("{V4}/deals/companies/batch/associate/default"),
        &json!({"inputs": [pair(&deals[1], &companies[0]), pair(&deals[0], &companies[1]), pair(&deals[0], &companies[0])]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "COMPLETE");
    assert!(v["startedAt"].is_string() && v["completedAt"].is_string());
    assert!(v.get("errors").is_none() && v.get("numErrors").is_none());
    assert_eq!(
        v["results"][0],
        json!({"from": {"id": deals[1]}, "to": {"id": companies[0]},
               "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 341}})
    );
    // Sorted by (from, to) numerically, from either side with that side's type ids.
    assert_eq!(
        associations(&c, "deals", "companies"),
        [
            triple(&deals[0], &companies[0], &[341]),
            triple(&deals[0], &companies[1], &[341]),
            triple(&deals[1], &companies[0], &[341]),
        ]
    );
    assert_eq!(
        associations(&c, "companies", "deals"),
        [
            triple(&companies[0], &deals[0], &[342]),
            triple(&companies[0], &deals[1], &[342]),
            triple(&companies[1], &deals[0], &[342]),
        ]
    );
    // Type names HubSpot accepts for the same types.
    assert_eq!(associations(&c, "0-2", "deal").len(), 3);

    // Batch read, from the company side; an unknown id is a 207 naming it.
    let r = c.post(
        &format!("{V4}/companies/deals/batch/read"),
        &json!({"inputs": [{"id": companies[1]}, {"id": "999"}]}),
    );
    assert_eq!(r.status, 207, "{}", r.body);
    let v = r.json();
    assert_eq!(
        v["results"],
        json!([{"from": {"id": companies[1]}, "to": [{"toObjectId": deals[0].parse::<u64>().unwrap(),
            "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 342, "label": null}]}]}])
    );
    assert_eq!(v["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(v["errors"][0]["context"]["ids"], json!(["999"]));

    // The single default PUT.
    let contacts = create_objects(&c, "contacts", 1);
    let r = c.put(
        &format!(
            "/crm/v4/objects/contacts/{}/associations/default/companies/{}",
            contacts[0], companies[1]
        ),
        &json!(null),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["results"][0]["associationSpec"]["associationTypeId"],
        279
    );
    assert_eq!(
        associations(&c, "companies", "contacts"),
        [triple(&companies[1], &contacts[0], &[280])]
    );
    let r = c.put(
        &format!(
            "/crm/v4/objects/contacts/{}/associations/default/companies/424242",
            contacts[0]
        ),
        &json!(null),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["category"], "OBJECT_NOT_FOUND");
    assert_eq!(r.json()["context"]["ids"], json!(["424242"]));
}

#[test]
fn labelled_associations_and_primary() {
    let (_s, c) = start_default();
    let deals = create_objects(&c, "deals", 1);
    let companies = create_objects(&c, "companies", 2);
    let create = format!("{V4}/deals/companies/batch/create");
    let r = c.post(
        &create,
        &json!({"inputs": [labelled(&deals[0], &companies[0], "HUBSPOT_DEFINED", 5)]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["results"][0],
        json!({"from": {"id": deals[0]}, "to": {"id": companies[0]},
               "associationTypes": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 5}]})
    );
    // A label comes with the unlabeled type; the company side reads the inverse ids.
    assert_eq!(
        associations(&c, "deals", "companies"),
        [triple(&deals[0], &companies[0], &[5, 341])]
    );
    assert_eq!(
        associations(&c, "companies", "deals"),
        [triple(&companies[0], &deals[0], &[6, 342])]
    );
    let read = c.post(
        &format!("{V4}/deals/companies/batch/read"),
        &json!({"inputs": [{"id": deals[0]}]}),
    );
    assert_eq!(
        read.json()["results"][0]["to"][0]["associationTypes"][0],
        json!({"category": "HUBSPOT_DEFINED", "typeId": 5, "label": "Primary"})
    );
    // A new primary company demotes the old one, which stays associated.
    c.post(
        &create,
        &json!({"inputs": [labelled(&deals[0], &companies[1], "HUBSPOT_DEFINED", 5)]}),
    );
    assert_eq!(
        associations(&c, "deals", "companies"),
        [
            triple(&deals[0], &companies[0], &[341]),
            triple(&deals[0], &companies[1], &[5, 341]),
        ]
    );
    // USER_DEFINED labels are taken as given (a string id is an integer too).
    let r = c.post(
        &create,
        &json!({"inputs": [{"from": {"id": deals[0]}, "to": {"id": companies[0]},
                "types": [{"associationCategory": "USER_DEFINED", "associationTypeId": "77"}]}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let raw = c.get("/__mock/associations/deals/companies").json();
    assert_eq!(
        raw[0]["types"],
        json!([{"category": "HUBSPOT_DEFINED", "type_id": 341}, {"category": "USER_DEFINED", "type_id": 77}])
    );

    // Malformed types refuse the whole batch.
    let ok = labelled(&deals[0], &companies[0], "HUBSPOT_DEFINED", 5);
    for (bad, why) in [
        (
            labelled(&deals[0], &companies[0], "HUBSPOT", 5),
            "associationCategory",
        ),
        (
            labelled(&deals[0], &companies[0], "HUBSPOT_DEFINED", 279),
            "not a HUBSPOT_DEFINED association type",
        ),
        (
            json!({"from": {"id": deals[0]}, "to": {"id": companies[0]},
                "types": [{"associationCategory": "USER_DEFINED", "associationTypeId": 1.5}]}),
            "associationTypeId",
        ),
        (
            json!({"from": {"id": deals[0]}, "to": {"id": companies[0]}, "types": []}),
            "at least one",
        ),
        (pair(&deals[0], &companies[0]), "at least one"),
    ] {
        let r = c.post(&create, &json!({"inputs": [ok.clone(), bad]}));
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["category"], "VALIDATION_ERROR");
        let msg = r.json()["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(why), "{msg}");
    }
}

#[test]
fn association_207s_limits_and_unknown_types() {
    let (_s, c) = start_default();
    let deals = create_objects(&c, "deals", 3);
    let companies = create_objects(&c, "companies", 1);
    c.req(
        "DELETE",
        &format!("/crm/v3/objects/deals/{}", deals[2]),
        None,
    );
    let r = c.post(
        &format!("{V4}/deals/companies/batch/associate/default"),
        &json!({"inputs": [
            pair(&deals[0], &companies[0]),
            pair("31337", &companies[0]),
            pair(&deals[1], "424242"),
            pair(&deals[2], &companies[0]),
            {"from": {"id": deals[1]}, "to": {}},
        ]}),
    );
    assert_eq!(r.status, 207, "{}", r.body);
    let v = r.json();
    assert_eq!(v["numErrors"], 4);
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    let named: Vec<(Value, Value)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["category"].clone(), e["context"]["ids"].clone()))
        .collect();
    assert_eq!(
        named,
        [
            (json!("OBJECT_NOT_FOUND"), json!(["31337"])),
            (json!("OBJECT_NOT_FOUND"), json!(["424242"])),
            (json!("OBJECT_NOT_FOUND"), json!([deals[2]])),
            (json!("VALIDATION_ERROR"), Value::Null),
        ]
    );
    assert_eq!(
        associations(&c, "deals", "companies"),
        [triple(&deals[0], &companies[0], &[341])]
    );

    let inputs: Vec<Value> = (0..1001).map(|_| pair(&deals[0], &companies[0])).collect();
    let r = c.post(
        &format!("{V4}/deals/companies/batch/associate/default"),
        &json!({ "inputs": inputs }),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["message"],
        "The maximum number of inputs supported in a batch is 1000. Please reduce the number of items and try again"
    );
    let r = c.post(
        &format!("{V4}/deals/companies/batch/associate/default"),
        &json!({ "inputs": inputs[..1000] }),
    );
    assert_eq!(r.status, 200);

    let r = c.post(
        &format!("{V4}/deals/nosuchtype/batch/associate/default"),
        &json!({"inputs": [pair(&deals[0], "1")]}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["message"],
        "Unable to infer object type from: nosuchtype"
    );
    let r = c.post(
        &format!("{V4}/deals/companies/batch/read"),
        &json!({"inputs": 3}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        c.get(&format!("{V4}/deals/companies/batch/read")).status,
        405
    );
    assert_eq!(
        c.post(&format!("{V4}/deals/companies/batch/nope"), &json!({}))
            .status,
        404
    );
}

#[test]
fn dissociating_and_archiving_remove_associations() {
    let (_s, c) = start_default();
    let contacts = create_objects(&c, "contacts", 2);
    let companies = create_objects(&c, "companies", 3);
    let create = |from: &str, to: &str| {
        c.post(
            &format!("{V4}/contacts/companies/batch/create"),
            &json!({"inputs": [labelled(from, to, "HUBSPOT_DEFINED", 279)]}),
        )
    };
    for (from, to) in [(0, 0), (0, 1), (1, 1), (1, 2)] {
        assert_eq!(create(&contacts[from], &companies[to]).status, 200);
    }
    // Archive removes every type between the pair; unknown objects are ignored.
    c.post(
        &format!("{V4}/contacts/companies/batch/create"),
        &json!({"inputs": [labelled(&contacts[0], &companies[0], "HUBSPOT_DEFINED", 1)]}),
    );
    let r = c.post(
        &format!("{V4}/contacts/companies/batch/archive"),
        &json!({"inputs": [{"from": {"id": contacts[0]}, "to": [{"id": companies[0]}, {"id": "31337"}]},
                           {"from": {"id": "404"}, "to": [{"id": companies[1]}]}]}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(r.body.is_empty());
    assert_eq!(
        associations(&c, "contacts", "companies"),
        [
            triple(&contacts[0], &companies[1], &[279]),
            triple(&contacts[1], &companies[1], &[279]),
            triple(&contacts[1], &companies[2], &[279]),
        ]
    );
    // Archiving an object drops its associations, single or batch.
    c.req(
        "DELETE",
        &format!("/crm/v3/objects/companies/{}", companies[1]),
        None,
    );
    assert_eq!(
        associations(&c, "contacts", "companies"),
        [triple(&contacts[1], &companies[2], &[279])]
    );
    let r = c.post(
        "/crm/v3/objects/contacts/batch/archive",
        &json!({"inputs": [{"id": contacts[1]}]}),
    );
    assert_eq!(r.status, 204);
    assert!(associations(&c, "companies", "contacts").is_empty());

    // Reset clears them too.
    assert_eq!(create(&contacts[0], &companies[0]).status, 200);
    c.post("/__mock/reset", &json!({}));
    assert!(associations(&c, "contacts", "companies").is_empty());
}

#[test]
fn faults_auth_rate_limit_and_log_apply_to_associations() {
    let (_s, c) = start_default();
    let deals = create_objects(&c, "deals", 2);
    let companies = create_objects(&c, "companies", 1);
    let default = format!("{V4}/deals/companies/batch/associate/default");
    let body = json!({"inputs": [pair(&deals[0], &companies[0])]});

    // `operations` aims the faults at association calls only.
    let cfg = json!({"operations": ["associations/batch"], "fail_next": [{"status": 429, "retry_after": 3}, {"status": 502}]});
    assert_eq!(c.put("/__mock/faults", &cfg).json(), cfg);
    assert_eq!(
        c.post(
            UPSERT,
            &json!({"inputs": [upsert_input("a@x.io", json!({}))]})
        )
        .status,
        200,
        "not targeted"
    );
    let r = c.post(&default, &body);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("Retry-After"), Some("3"));
    assert_eq!(r.json()["policyName"], "TEN_SECONDLY_ROLLING");
    assert_eq!(c.post(&default, &body).status, 502);
    assert!(
        associations(&c, "deals", "companies").is_empty(),
        "failed requests wrote nothing"
    );
    assert_eq!(c.post(&default, &body).status, 200);
    let r = c.put(
        "/__mock/faults",
        &json!({"operations": ["associations/batch/upsert"]}),
    );
    assert_eq!(r.status, 400, "unknown operations are refused");
    assert_eq!(
        c.put("/__mock/faults", &json!({"operations": []})).status,
        400
    );

    // fail_ids names association inputs by either object's id.
    c.put(
        "/__mock/faults",
        &json!({"operations": ["associations"], "fail_ids": {deals[1].clone(): "scripted nope"}}),
    );
    let r = c.post(
        &format!("{V4}/deals/companies/batch/create"),
        &json!({"inputs": [labelled(&deals[1], &companies[0], "HUBSPOT_DEFINED", 5),
                           labelled(&deals[0], &companies[0], "HUBSPOT_DEFINED", 5)]}),
    );
    assert_eq!(r.status, 207, "{}", r.body);
    let v = r.json();
    assert_eq!(v["errors"][0]["message"], "scripted nope");
    assert_eq!(v["errors"][0]["context"]["ids"], json!([deals[1]]));
    assert_eq!(v["results"][0]["from"]["id"], json!(deals[0]));
    let r = c.post(
        &format!("{V4}/deals/companies/batch/archive"),
        &json!({"inputs": [{"from": {"id": deals[1]}, "to": [{"id": companies[0]}]}]}),
    );
    assert_eq!(r.status, 207);

    // The rate limit and its headers, as on v3.
    c.put(
        "/__mock/faults",
        &json!({"rate_limit": {"max": 1, "interval_ms": 60000}}),
    );
    let r = c.post(&default, &body);
    assert_eq!(r.header("X-HubSpot-RateLimit-Max"), Some("1"));
    assert_eq!(r.status, 429, "the window already holds a call");

    // Auth.
    let mut anon = Client::new(c.base.clone());
    anon.token = None;
    c.put("/__mock/faults", &json!({}));
    assert_eq!(anon.post(&default, &body).status, 401);

    // The request log has the v4 paths with their input counts.
    let log: Vec<(String, u64, u64)> = c
        .requests()
        .iter()
        .filter(|e| e["path"].as_str().unwrap().starts_with("/crm/v4"))
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
                e["inputs"].as_u64().unwrap(),
            )
        })
        .collect();
    let archive = format!("{V4}/deals/companies/batch/archive");
    let create = format!("{V4}/deals/companies/batch/create");
    assert_eq!(
        log,
        [
            (default.clone(), 429, 1),
            (default.clone(), 502, 1),
            (default.clone(), 200, 1),
            (create, 207, 2),
            (archive, 207, 1),
            (default.clone(), 429, 1),
            (default, 401, 0),
        ]
    );
}

#[test]
fn reject_ids_refuse_whole_batches_naming_no_input() {
    let (_s, c) = start_default();
    let r = c.put(
        "/__mock/faults",
        &json!({"reject_ids": {"Bad@X.io": 400, "dup@x.io": 409, "42": 400}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // One poisoned input refuses the batch: nothing is written, no input is named.
    let r = c.post(
        UPSERT,
        &json!({"inputs": [
            upsert_input("ann@x.io", json!({"firstname": "Ann"})),
            upsert_input("bad@x.io", json!({"lifecyclestage": "nope"})),
        ]}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "error");
    assert_eq!(v["category"], "VALIDATION_ERROR");
    assert!(v["correlationId"].is_string());
    assert!(
        v.get("context").is_none() && v.get("errors").is_none(),
        "{v}"
    );
    let message = v["message"].as_str().unwrap();
    let detail: Value = serde_json::from_str(
        message
            .strip_prefix("Property values were not valid: ")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        detail,
        json!([{"isValid": false, "message": "nope was not one of the allowed options",
                "error": "INVALID_OPTION", "name": "lifecyclestage"}])
    );
    assert!(c.objects("contacts").is_empty());

    // 409: the object it collides with.
    let r = c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("dup@x.io", json!({}))]}),
    );
    assert_eq!(r.status, 409);
    let v = r.json();
    assert_eq!(v["category"], "CONFLICT");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Contact already exists. Existing ID: "),
        "{v}"
    );

    // Without a poisoned input the batch goes through.
    let r = c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("ann@x.io", json!({}))]}),
    );
    assert_eq!(r.status, 200);
    let ann = r.json()["results"][0]["id"].as_str().unwrap().to_owned();
    // Updates and archives by crm id.
    let update =
        |id: &str| json!({"inputs": [{"id": ann, "properties": {}}, {"id": id, "properties": {}}]});
    assert_eq!(c.post(UPDATE, &update("42")).status, 400);
    assert_eq!(c.post(UPDATE, &update(&ann)).status, 400, "duplicate ids");
    let r = c.post(
        "/crm/v3/objects/contacts/batch/archive",
        &json!({"inputs": [{"id": "42"}]}),
    );
    assert_eq!(r.status, 400);
    // Contacts create: by email.
    let r = c.post(
        "/crm/v3/objects/contacts/batch/create",
        &json!({"inputs": [{"properties": {"email": "DUP@x.io"}}]}),
    );
    assert_eq!(r.status, 409);

    // `operations` narrows it.
    c.put(
        "/__mock/faults",
        &json!({"reject_ids": {"bad@x.io": 400}, "operations": ["batch/update"]}),
    );
    let r = c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("bad@x.io", json!({}))]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let bad = c.put("/__mock/faults", &json!({"reject_ids": {"a": 503}}));
    assert_eq!(bad.status, 400);
}

#[test]
fn duplicate_emails_in_one_upsert_are_refused_ignoring_case() {
    let (_s, c) = start_default();
    let r = c.post(
        UPSERT,
        &json!({"inputs": [
            upsert_input("ann@x.io", json!({})),
            upsert_input("bob@x.io", json!({})),
            upsert_input("Ann@X.io", json!({})),
        ]}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let v = r.json();
    assert_eq!(v["category"], "VALIDATION_ERROR");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("Duplicate IDs found in batch input"));
    assert!(c.objects("contacts").is_empty());
}

#[test]
fn an_unknown_route_is_a_404_without_a_category() {
    let (_s, c) = start_default();
    for path in [
        "/crm/v3/objectz/contacts/batch/upsert",
        "/v3/objects/contacts/batch/upsert",
    ] {
        let r = c.post(path, &json!({"inputs": []}));
        assert_eq!(r.status, 404);
        let v = r.json();
        assert_eq!(v["status"], "error");
        assert_eq!(
            v["message"],
            format!("Unable to route POST request to {path}")
        );
        assert!(v["correlationId"].is_string());
        assert!(
            v.get("category").is_none(),
            "OBJECT_NOT_FOUND would read as a missing record: {v}"
        );
    }
}

#[test]
fn the_daily_limit() {
    let (_s, c) = start_default();
    let get = || c.get("/crm/v3/objects/contacts/1");
    // Reported, never enforced, by default.
    let r = get();
    assert_eq!(r.header("X-HubSpot-RateLimit-Daily"), Some("1000000"));
    assert_eq!(
        r.header("X-HubSpot-RateLimit-Daily-Remaining"),
        Some("999999")
    );
    c.post("/__mock/reset", &json!({}));
    let r = c.put("/__mock/faults", &json!({"rate_limit": {"daily": 2}}));
    assert_eq!(
        r.json(),
        json!({"rate_limit": {"interval_ms": 10000, "daily": 2}})
    );
    let r = get();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("X-HubSpot-RateLimit-Daily"), Some("2"));
    assert_eq!(r.header("X-HubSpot-RateLimit-Daily-Remaining"), Some("1"));
    // The rolling window is reported, not enforced, without a max.
    assert_eq!(r.header("X-HubSpot-RateLimit-Max"), Some("190"));
    assert_eq!(
        get().header("X-HubSpot-RateLimit-Daily-Remaining"),
        Some("0")
    );
    let r = c.post(
        UPSERT,
        &json!({"inputs": [upsert_input("a@x.io", json!({}))]}),
    );
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["message"], "You have reached your daily limit.");
    assert_eq!(v["errorType"], "RATE_LIMIT");
    assert_eq!(v["policyName"], "DAILY");
    assert!(v["correlationId"].is_string());
    assert_eq!(r.header("X-HubSpot-RateLimit-Daily"), Some("2"));
    assert_eq!(r.header("X-HubSpot-RateLimit-Daily-Remaining"), Some("0"));
    assert!(r
        .header("X-HubSpot-RateLimit-Interval-Milliseconds")
        .is_some());
    assert!(c.objects("contacts").is_empty());
    // A reset starts a new day (and clears the faults).
    c.post("/__mock/reset", &json!({}));
    c.put("/__mock/faults", &json!({"rate_limit": {"daily": 2}}));
    assert_eq!(get().status, 404);
}
