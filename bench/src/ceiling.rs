//! What the CRM endpoint allows: a plain Rust loop sending the same batch/upsert
//! requests the worker sends (100 contacts each, same JSON shape) over one keep-alive
//! connection with TCP_NODELAY, to a fresh mock. The drain's throughput divided by
//! this says how close the worker gets to the endpoint's own ceiling.

use std::time::{Duration, Instant};

use etlify_e2e::Mock;
use serde_json::json;

use crate::env::{assert_loopback, SECRET};
use crate::{interrupt, stats};

/// HubSpot's batch limit, the adapter's default batch size.
const BATCH: i64 = 100;

pub struct Ceiling {
    /// Median over runs, records per second.
    pub records_per_s: f64,
    pub runs: Vec<f64>,
    /// One-record upserts timed by the client: the floor of any commit-to-CRM latency.
    pub single_rtt_ms: Vec<f64>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .no_delay(true)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// The body the hubspot adapter sends for users `from..from+n` (serialized up front:
/// only the HTTP exchange is timed).
fn upsert_body(from: i64, n: i64) -> Vec<u8> {
    let inputs: Vec<_> = (from..from + n)
        .map(|i| {
            let email = format!("user{i}@example.com");
            json!({
                "idProperty": "email",
                "id": email,
                "properties": {"email": email, "firstname": format!("First{i}"), "lastname": format!("Last{i}")},
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "inputs": inputs })).expect("in-memory JSON")
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) {
    let mut resp = agent
        .post(url)
        .header("authorization", format!("Bearer {SECRET}"))
        .content_type("application/json")
        .send(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    // read to the end, as the adapter does, so the connection is reused
    let text = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("POST {url}: reading the body: {e}"));
    assert!(
        (200..300).contains(&status),
        "POST {url} -> {status}: {text}"
    );
}

/// One run on a fresh mock: `rows` records in batches of 100. Records per second.
fn run_once(rows: i64) -> f64 {
    let mock = Mock::start(&[]);
    assert_loopback(mock.url());
    let url = format!("{}/crm/v3/objects/contacts/batch/upsert", mock.url());
    let bodies: Vec<Vec<u8>> = (0..(rows + BATCH - 1) / BATCH)
        .map(|b| {
            let from = 1 + b * BATCH;
            upsert_body(from, BATCH.min(rows + 1 - from))
        })
        .collect();
    let agent = agent();
    let start = Instant::now();
    for body in &bodies {
        post(&agent, &url, body);
    }
    let secs = start.elapsed().as_secs_f64();
    interrupt::check();
    let held = mock.stats()["objects"]["contacts"].as_i64().unwrap_or(0);
    assert_eq!(
        held, rows,
        "the mock should hold every contact the loop sent"
    );
    rows as f64 / secs
}

/// `n` one-record upserts, each timed by the client, on a fresh mock.
fn single_rtts(n: usize) -> Vec<f64> {
    let mock = Mock::start(&[]);
    assert_loopback(mock.url());
    let url = format!("{}/crm/v3/objects/contacts/batch/upsert", mock.url());
    let agent = agent();
    post(&agent, &url, &upsert_body(0, 1)); // connect outside the timed part
    (1..=n as i64)
        .map(|i| {
            let body = upsert_body(i, 1);
            let start = Instant::now();
            post(&agent, &url, &body);
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            // paced like the latency phase, so both see an idle server
            interrupt::sleep(Duration::from_millis(5));
            ms
        })
        .collect()
}

pub fn measure(rows: i64, runs: usize, latency_samples: usize) -> Ceiling {
    let runs: Vec<f64> = (0..runs.max(1)).map(|_| run_once(rows)).collect();
    Ceiling {
        records_per_s: stats::median(&runs),
        runs,
        single_rtt_ms: single_rtts(latency_samples),
    }
}
