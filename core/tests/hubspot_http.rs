//! The HubSpot adapter over real HTTP, against a tiny scripted server on 127.0.0.1:
//! headers and JSON on the wire, keep-alive, timeouts, pacing, secret masking. The
//! association tests and the CRM's faults (batches refused whole, a wrong base_url or
//! token, the daily limit) run against the full mock CRM (mock/) instead: HubSpot only
//! links objects that exist, which canned answers cannot check.

use etlify_core::adapter::{
    build, CrmAdapter, CrmSettings, Delete, Find, Label, Link, Outcome, Report, Upsert,
};
use etlify_core::bisect::bisect;
use etlify_core::http::{Pacer, RateLimitHeaders, Unpaced};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SECRET: &str = "pat-na1-11111111-2222-3333-4444-555555555555";

/// One request as the server saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
    connection: usize,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One canned answer.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delay: Duration,
}

fn answer(status: u16, body: Value) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        body: if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        },
        delay: Duration::ZERO,
    }
}

/// Answers requests in order from a script; records what it was sent.
struct Server {
    addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Answer>>>,
    seen: Receiver<Seen>,
}

impl Server {
    fn start(script: Vec<Answer>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (tx, seen) = channel();
        let shared = script.clone();
        thread::spawn(move || {
            for (connection, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let (script, tx) = (shared.clone(), tx.clone());
                thread::spawn(move || serve(stream, connection, script, tx));
            }
        });
        Server { addr, script, seen }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.try_iter().collect()
    }

    fn unused_answers(&self) -> usize {
        self.script.lock().unwrap().len()
    }
}

fn serve(
    stream: TcpStream,
    connection: usize,
    script: Arc<Mutex<VecDeque<Answer>>>,
    tx: Sender<Seen>,
) {
    // Our side of the socket must not add the delayed-ACK stall either.
    stream.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return; // the client closed the connection
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').unwrap();
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let next = script.lock().unwrap().pop_front();
        let Answer {
            status,
            headers: extra,
            body: reply,
            delay,
        } = next.unwrap_or_else(|| answer(500, json!({"message": "script exhausted"})));
        tx.send(Seen {
            method,
            path,
            headers,
            body,
            connection,
        })
        .unwrap();
        thread::sleep(delay);
        let mut head = format!("HTTP/1.1 {status} X\r\nconnection: keep-alive\r\n");
        if status != 204 {
            head += &format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                reply.len()
            );
        }
        for (n, v) in extra {
            head += &format!("{n}: {v}\r\n");
        }
        head += "\r\n";
        // Headers and body in two writes, as many servers do: the case where a client
        // without TCP_NODELAY waits for a delayed ACK.
        if out.write_all(head.as_bytes()).is_err() || out.write_all(&reply).is_err() {
            return;
        }
    }
}

fn hubspot(server_url: &str, extra: Value, pacer: Box<dyn Pacer>) -> Box<dyn CrmAdapter> {
    let mut config = json!({ "base_url": server_url });
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    build(
        &CrmSettings {
            adapter: "hubspot".into(),
            config,
            secret: Some(SECRET.into()),
            batch_size: None,
        },
        pacer,
    )
    .unwrap()
}

fn upsert(key: &str, crm_id: Option<&str>, email: &str) -> Upsert {
    Upsert {
        key: key.into(),
        crm_id: crm_id.map(Into::into),
        id_value: email.into(),
        properties: json!({ "email": email, "firstname": format!("F{key}"), "age": 40 })
            .as_object()
            .unwrap()
            .clone(),
    }
}

fn retry_error(o: &Outcome) -> &str {
    match o {
        Outcome::Retry { error } => error,
        other => panic!("expected Retry, got {other:?}"),
    }
}

#[test]
fn upsert_sends_bearer_json_and_reuses_the_connection() {
    let server = Server::start(vec![
        answer(
            200,
            json!({"status": "COMPLETE", "results": [{"id": "101", "properties": {"email": "ann@x.io"}}]}),
        ),
        answer(
            200,
            json!({"status": "COMPLETE", "results": [
                {"id": "103", "properties": {"email": "cy@x.io"}, "new": true},
                {"id": "102", "properties": {"email": "bob@x.io"}, "new": true}
            ]}),
        ),
    ]);
    let mut adapter = hubspot(&server.base_url(), json!({}), Box::new(Unpaced));
    let items = [
        upsert("1", Some("101"), "ann@x.io"),
        upsert("2", None, "Bob@x.io"),
        upsert("3", None, "cy@x.io"),
    ];
    let report = adapter.upsert("contacts", "email", &items);

    assert_eq!(
        report.outcomes,
        vec![
            (
                "1".into(),
                Outcome::Synced {
                    crm_id: "101".into()
                }
            ),
            (
                "2".into(),
                Outcome::Synced {
                    crm_id: "102".into()
                }
            ),
            (
                "3".into(),
                Outcome::Synced {
                    crm_id: "103".into()
                }
            ),
        ]
    );
    assert_eq!(report.pause, None);
    let ops: Vec<_> = report
        .requests
        .iter()
        .map(|r| {
            (
                r.operation.as_str(),
                r.records,
                r.http_status,
                r.error.is_none(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("batch/update", 1, Some(200), true),
            ("batch/upsert", 2, Some(200), true)
        ]
    );

    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(
            s.header("authorization"),
            Some(format!("Bearer {SECRET}").as_str())
        );
        assert_eq!(s.header("content-type"), Some("application/json"));
        assert_eq!(s.header("accept"), Some("application/json"));
        assert!(s.header("user-agent").unwrap().starts_with("etlify/"));
    }
    assert_eq!(seen[0].path, "/crm/v3/objects/contacts/batch/update");
    assert_eq!(
        seen[0].body,
        json!({"inputs": [{"id": "101", "properties": {"email": "ann@x.io", "firstname": "F1", "age": 40}}]})
    );
    assert_eq!(seen[1].path, "/crm/v3/objects/contacts/batch/upsert");
    assert_eq!(
        seen[1].body,
        json!({"inputs": [
            {"idProperty": "email", "id": "Bob@x.io", "properties": {"email": "Bob@x.io", "firstname": "F2", "age": 40}},
            {"idProperty": "email", "id": "cy@x.io", "properties": {"email": "cy@x.io", "firstname": "F3", "age": 40}}
        ]})
    );
    // Keep-alive: both requests on the first connection.
    assert_eq!((seen[0].connection, seen[1].connection), (0, 0));
}

fn find(key: &str, email: &str) -> Find {
    Find {
        key: key.into(),
        id_value: email.into(),
    }
}

#[test]
fn find_reads_each_value_once_and_shares_its_answer() {
    let server = Server::start(vec![answer(
        207,
        json!({"status": "COMPLETE",
            "results": [{"id": "101", "properties": {"email": "ann@x.io", "hs_object_id": "101"}, "archived": false}],
            "numErrors": 1,
            "errors": [{"status": "error", "category": "OBJECT_NOT_FOUND",
                "message": "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.",
                "context": {"ids": ["bob@x.io"]}}]}),
    )]);
    let mut adapter = hubspot(&server.base_url(), json!({}), Box::new(Unpaced));
    let items = [
        find("1", "Ann@x.io"),
        find("2", "bob@x.io"),
        find("3", "ann@X.io "),
        find("4", " "),
    ];
    let report = adapter.find("contacts", "email", &items);
    let ann = Outcome::Synced {
        crm_id: "101".into(),
    };
    assert_eq!(
        report.outcomes,
        vec![
            ("1".into(), ann.clone()),
            ("2".into(), Outcome::Deleted),
            ("3".into(), ann),
            // Never sent: upsert sends no blank value, so it created nothing.
            ("4".into(), Outcome::Deleted),
        ]
    );
    assert_eq!(report.pause, None);
    assert_eq!(log(&report), [("batch/read", 2, Some(207))]);
    assert_eq!(report.requests[0].error, None);
    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/crm/v3/objects/contacts/batch/read");
    assert_eq!(
        seen[0].body,
        json!({"idProperty": "email", "properties": ["email"], "inputs": [{"id": "Ann@x.io"}, {"id": "bob@x.io"}]})
    );
}

#[test]
fn delete_archives_and_204_means_deleted() {
    let server = Server::start(vec![answer(204, Value::Null)]);
    let mut adapter = hubspot(&server.base_url(), json!({}), Box::new(Unpaced));
    let report = adapter.delete(
        "p123_cars",
        &[
            Delete {
                key: "a".into(),
                crm_id: "11".into(),
            },
            Delete {
                key: "b".into(),
                crm_id: "12".into(),
            },
        ],
    );
    assert_eq!(
        report.outcomes,
        vec![
            ("a".into(), Outcome::Deleted),
            ("b".into(), Outcome::Deleted)
        ]
    );
    assert_eq!(report.requests.len(), 1);
    assert_eq!(report.requests[0].http_status, Some(204));
    let seen = server.requests();
    assert_eq!(seen[0].path, "/crm/v3/objects/p123_cars/batch/archive");
    assert_eq!(
        seen[0].body,
        json!({"inputs": [{"id": "11"}, {"id": "12"}]})
    );
}

#[test]
fn a_timeout_is_retried_not_blamed() {
    let mut slow = answer(200, json!({"results": []}));
    slow.delay = Duration::from_secs(3);
    let server = Server::start(vec![slow]);
    let mut adapter = hubspot(
        &server.base_url(),
        json!({"timeout_ms": 300}),
        Box::new(Unpaced),
    );
    let started = Instant::now();
    let report = adapter.upsert("contacts", "email", &[upsert("1", None, "a@x.io")]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "timeout not honoured: {took:?}"
    );
    assert!(
        retry_error(&report.outcomes[0].1).contains("timed out"),
        "{report:?}"
    );
    assert_eq!(report.pause, Some(Duration::from_secs(1)));
    let log = &report.requests[0];
    assert_eq!(log.http_status, None);
    assert!(log.duration_ms >= 250.0, "{log:?}");
    assert!(log.error.as_deref().unwrap().contains("timed out"));
}

#[test]
fn connection_refused_is_retried() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut adapter = hubspot(
        &format!("http://127.0.0.1:{port}"),
        json!({}),
        Box::new(Unpaced),
    );
    let report = adapter.delete(
        "contacts",
        &[Delete {
            key: "a".into(),
            crm_id: "1".into(),
        }],
    );
    retry_error(&report.outcomes[0].1);
    assert_eq!(report.requests.len(), 1);
    assert_eq!(report.requests[0].http_status, None);
    assert_eq!(report.pause, Some(Duration::from_secs(1)));
}

/// Records what the client tells it; refuses once `budget` requests went.
struct RecordingPacer {
    budget: usize,
    acquired: Arc<AtomicUsize>,
    observed: Arc<Mutex<Vec<(u16, RateLimitHeaders)>>>,
}

impl Pacer for RecordingPacer {
    fn acquire(&mut self) -> Result<(), String> {
        if self.acquired.load(Ordering::SeqCst) >= self.budget {
            return Err("interrupted".into());
        }
        self.acquired.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn observe(&mut self, status: u16, limits: &RateLimitHeaders) {
        self.observed.lock().unwrap().push((status, limits.clone()));
    }
}

#[test]
fn a_429_pauses_and_holds_back_the_rest_of_the_call() {
    let mut limited = answer(
        429,
        json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
               "errorType": "RATE_LIMIT", "correlationId": "c", "policyName": "TEN_SECONDLY_ROLLING"}),
    );
    limited.headers = vec![
        ("X-HubSpot-RateLimit-Interval-Milliseconds", "10000".into()),
        ("X-HubSpot-RateLimit-Max", "100".into()),
        ("X-HubSpot-RateLimit-Remaining", "0".into()),
    ];
    let server = Server::start(vec![limited]);
    let observed = Arc::new(Mutex::new(Vec::new()));
    let pacer = RecordingPacer {
        budget: usize::MAX,
        acquired: Arc::new(AtomicUsize::new(0)),
        observed: observed.clone(),
    };
    let mut adapter = hubspot(&server.base_url(), json!({}), Box::new(pacer));
    let items = [
        upsert("1", Some("101"), "a@x.io"),
        upsert("2", None, "b@x.io"),
    ];
    let report = adapter.upsert("contacts", "email", &items);

    assert!(retry_error(&report.outcomes[0].1).contains("ten_secondly_rolling"));
    assert_eq!(
        retry_error(&report.outcomes[1].1),
        "not sent: the CRM asked to pause"
    );
    assert_eq!(report.pause, Some(Duration::from_secs(10)));
    assert_eq!(
        report.requests.len(),
        1,
        "the upsert must wait for the pause"
    );
    assert_eq!(server.requests().len(), 1);
    let observed = observed.lock().unwrap();
    let [(429, limits)] = observed.as_slice() else {
        panic!("{observed:?}");
    };
    assert_eq!(
        (
            limits.interval_ms,
            limits.max,
            limits.remaining,
            limits.retry_after
        ),
        (Some(10_000), Some(100), Some(0), None)
    );
}

#[test]
fn a_refusing_pacer_sends_nothing_more() {
    let server = Server::start(vec![answer(
        200,
        json!({"results": [{"id": "101", "properties": {}}]}),
    )]);
    let acquired = Arc::new(AtomicUsize::new(0));
    let pacer = RecordingPacer {
        budget: 1,
        acquired: acquired.clone(),
        observed: Arc::default(),
    };
    let mut adapter = hubspot(&server.base_url(), json!({}), Box::new(pacer));
    let items = [
        upsert("1", Some("101"), "a@x.io"),
        upsert("2", None, "b@x.io"),
    ];
    let report = adapter.upsert("contacts", "email", &items);
    assert_eq!(
        report.outcomes[0].1,
        Outcome::Synced {
            crm_id: "101".into()
        }
    );
    assert_eq!(retry_error(&report.outcomes[1].1), "not sent: interrupted");
    assert_eq!(report.requests.len(), 1, "no log for a request never made");
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn the_secret_never_shows_in_errors() {
    // A (misbehaving) server that quotes the Authorization header back.
    let server = Server::start(vec![answer(
        400,
        json!({"status": "error", "category": "VALIDATION_ERROR",
               "message": format!("bad header Authorization: Bearer {SECRET}")}),
    )]);
    let mut adapter = hubspot(&server.base_url(), json!({}), Box::new(Unpaced));
    let report = adapter.upsert("contacts", "email", &[upsert("1", None, "a@x.io")]);
    let Outcome::Failed { error } = &report.outcomes[0].1 else {
        panic!("{report:?}")
    };
    assert!(!error.contains(SECRET), "{error}");
    assert!(error.contains("Bearer ********"), "{error}");
    assert!(!report.requests[0]
        .error
        .as_deref()
        .unwrap()
        .contains(SECRET));
}

#[test]
fn an_oversized_response_is_refused_and_retried() {
    let mut huge = answer(200, Value::Null);
    huge.body = vec![b' '; 16 * 1024 * 1024 + 10];
    let server = Server::start(vec![huge]);
    let mut adapter = hubspot(&server.base_url(), json!({}), Box::new(Unpaced));
    let report = adapter.upsert("contacts", "email", &[upsert("1", None, "a@x.io")]);
    let error = retry_error(&report.outcomes[0].1);
    assert!(error.contains("larger than"), "{error}");
    assert_eq!(report.requests[0].http_status, Some(200));
}

#[test]
fn keep_alive_requests_do_not_stall_on_delayed_acks() {
    // Without TCP_NODELAY each request costs ~40 ms on loopback (delayed ACK); with it,
    // well under a millisecond. 20 requests in 400 ms leaves a wide margin for a busy
    // machine while still failing if the stall is back.
    const N: usize = 20;
    let ok = || {
        answer(
            200,
            json!({"results": [{"id": "1", "properties": {"email": "a@x.io"}}]}),
        )
    };
    let server = Server::start((0..N).map(|_| ok()).collect());
    let mut adapter = hubspot(&server.base_url(), json!({}), Box::new(Unpaced));
    let items = [upsert("1", None, "a@x.io")];
    adapter.upsert("contacts", "email", &items); // connect outside the clock
    let started = Instant::now();
    for _ in 1..N {
        let report = adapter.upsert("contacts", "email", &items);
        assert_eq!(report.outcomes[0].1, Outcome::Synced { crm_id: "1".into() });
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(400),
        "{} requests took {took:?}",
        N - 1
    );
    let seen = server.requests();
    assert_eq!(seen.len(), N);
    assert!(
        seen.iter().all(|s| s.connection == 0),
        "a new connection was opened"
    );
    assert_eq!(server.unused_answers(), 0);
}

// ---------------------------------------------------------------------------------------
// Associations, against the full mock CRM (objects must exist for HubSpot to link them).

/// The mock, and a client for its API and `/__mock` endpoints.
struct Mock {
    server: etlify_mock::MockServer,
    agent: ureq::Agent,
}

impl Mock {
    fn start() -> Mock {
        let server = etlify_mock::MockServer::start(etlify_mock::Config {
            token: Some(SECRET.into()),
            ..etlify_mock::Config::default()
        })
        .unwrap();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Mock { server, agent }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.server.url());
        let auth = format!("Bearer {SECRET}");
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            (m, body) => {
                let body = body.unwrap_or(json!({})).to_string();
                let request = match m {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                request
                    .header("authorization", &auth)
                    .content_type("application/json")
                    .send(body.as_bytes())
            }
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates `n` objects of `object_type`; their ids.
    fn create(&self, object_type: &str, n: usize) -> Vec<String> {
        let inputs: Vec<Value> = (0..n)
            .map(|i| json!({"properties": {"name": format!("{object_type} {i}")}}))
            .collect();
        let (status, body) = self.call(
            "POST",
            &format!("/crm/v3/objects/{object_type}/batch/create"),
            Some(json!({ "inputs": inputs })),
        );
        assert_eq!(status, 201, "{body}");
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// What the mock holds from `from`'s side: (from, to, type ids).
    fn associations(&self, from: &str, to: &str) -> Vec<(String, String, Vec<i64>)> {
        let (_, body) = self.call("GET", &format!("/__mock/associations/{from}/{to}"), None);
        body.as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let types = a["types"].as_array().unwrap().iter();
                (
                    a["from"].as_str().unwrap().to_owned(),
                    a["to"].as_str().unwrap().to_owned(),
                    types.map(|t| t["type_id"].as_i64().unwrap()).collect(),
                )
            })
            .collect()
    }

    fn faults(&self, faults: Value) {
        assert_eq!(self.call("PUT", "/__mock/faults", Some(faults)).0, 200);
    }

    fn adapter(&self) -> Box<dyn CrmAdapter> {
        hubspot(&self.server.url(), json!({}), Box::new(Unpaced))
    }

    /// An adapter that puts at most `n` inputs in a request.
    fn adapter_of_batch(&self, n: usize) -> Box<dyn CrmAdapter> {
        build(
            &CrmSettings {
                adapter: "hubspot".into(),
                config: json!({ "base_url": self.server.url() }),
                secret: Some(SECRET.into()),
                batch_size: Some(n),
            },
            Box::new(Unpaced),
        )
        .unwrap()
    }
}

fn link(key: &str, from: &str, to: &str, label: Option<i64>) -> Link {
    Link {
        key: key.into(),
        from_id: from.into(),
        to_id: to.into(),
        label: label.map(|type_id| Label {
            category: "HUBSPOT_DEFINED".into(),
            type_id,
        }),
    }
}

fn synced(id: &str) -> Outcome {
    Outcome::Synced { crm_id: id.into() }
}

fn triple(from: &str, to: &str, types: &[i64]) -> (String, String, Vec<i64>) {
    (from.into(), to.into(), types.to_vec())
}

/// (operation, records, status) of each request.
fn log(report: &Report) -> Vec<(&str, usize, Option<u16>)> {
    report
        .requests
        .iter()
        .map(|r| (r.operation.as_str(), r.records, r.http_status))
        .collect()
}

#[test]
fn associate_default_and_labelled_then_dissociate() {
    let mock = Mock::start();
    let deals = mock.create("deals", 2);
    let companies = mock.create("companies", 2);
    let mut adapter = mock.adapter();
    let links = [
        link("a", &deals[0], &companies[0], None),
        link("b", &deals[0], &companies[1], Some(5)),
        link("c", &deals[1], &companies[0], None),
    ];
    let report = adapter.associate("deals", "companies", &links);
    let outcomes: Vec<_> = report
        .outcomes
        .iter()
        .map(|(k, o)| (k.as_str(), o.clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("a", synced(&companies[0])),
            ("b", synced(&companies[1])),
            ("c", synced(&companies[0]))
        ]
    );
    assert_eq!(
        log(&report),
        [
            ("associations/batch/associate/default", 2, Some(200)),
            ("associations/batch/create", 1, Some(200))
        ]
    );
    assert!(report.requests.iter().all(|r| r.error.is_none()));
    assert_eq!(report.pause, None);
    assert_eq!(
        mock.associations("deals", "companies"),
        [
            triple(&deals[0], &companies[0], &[341]),
            triple(&deals[0], &companies[1], &[5, 341]),
            triple(&deals[1], &companies[0], &[341]),
        ]
    );
    // Seen from the other side, as HubSpot's associations are.
    assert_eq!(
        mock.associations("companies", "deals")[0],
        triple(&companies[0], &deals[0], &[342])
    );

    // Removing: every type between the pair goes; a pair never linked is removed too.
    let unlink = [
        link("b", &deals[0], &companies[1], Some(5)),
        link("c", &deals[1], &companies[0], None),
        link("d", &deals[1], &companies[1], None),
    ];
    let report = adapter.dissociate("deals", "companies", &unlink);
    assert!(
        report.outcomes.iter().all(|(_, o)| *o == Outcome::Deleted),
        "{report:?}"
    );
    assert_eq!(log(&report), [("associations/batch/archive", 3, Some(204))]);
    assert_eq!(
        mock.associations("deals", "companies"),
        [triple(&deals[0], &companies[0], &[341])]
    );
    let (_, requests) = mock.call("GET", "/__mock/requests", None);
    let paths: Vec<&str> = requests["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .filter(|p| p.starts_with("/crm/v4"))
        .collect();
    assert_eq!(
        paths,
        [
            "/crm/v4/associations/deals/companies/batch/associate/default",
            "/crm/v4/associations/deals/companies/batch/create",
            "/crm/v4/associations/deals/companies/batch/archive",
        ]
    );
}

#[test]
fn an_unknown_object_fails_only_its_links() {
    let mock = Mock::start();
    let deals = mock.create("deals", 1);
    let companies = mock.create("companies", 1);
    let mut adapter = mock.adapter();
    let links = [
        link("ghost", "31337", &companies[0], None),
        link("real", &deals[0], &companies[0], None),
        link("ghost-labelled", "31337", &companies[0], Some(5)),
    ];
    let report = adapter.associate("deals", "companies", &links);
    let Outcome::Failed { error } = &report.outcomes[0].1 else {
        panic!("{report:?}")
    };
    assert!(
        error.starts_with("OBJECT_NOT_FOUND: Could not get some DEALS objects"),
        "{error}"
    );
    assert_eq!(report.outcomes[1].1, synced(&companies[0]));
    assert!(matches!(report.outcomes[2].1, Outcome::Failed { .. }));
    assert_eq!(
        log(&report),
        [
            ("associations/batch/associate/default", 2, Some(207)),
            ("associations/batch/create", 1, Some(207))
        ]
    );
    assert!(report.requests[0]
        .error
        .as_deref()
        .unwrap()
        .starts_with("HTTP 207: 1 of 2 records not applied"));
    assert_eq!(report.pause, None, "the record's fault, not the CRM's");
    // A link without an object id never leaves the adapter.
    let report = adapter.associate("deals", "companies", &[link("x", &deals[0], " ", None)]);
    assert_eq!(
        report.outcomes[0].1,
        Outcome::Failed {
            error: "the link has no to object id".into()
        }
    );
    assert!(report.requests.is_empty());
}

#[test]
fn a_429_with_retry_after_pauses_the_associations() {
    let mock = Mock::start();
    let deals = mock.create("deals", 1);
    let companies = mock.create("companies", 1);
    mock.faults(
        json!({"operations": ["associations"], "fail_next": [{"status": 429, "retry_after": 7}]}),
    );
    let mut adapter = mock.adapter();
    let links = [
        link("a", &deals[0], &companies[0], None),
        link("b", &deals[0], &companies[0], Some(5)),
    ];
    let report = adapter.associate("deals", "companies", &links);
    assert!(
        retry_error(&report.outcomes[0].1).starts_with("HTTP 429: RATE_LIMIT"),
        "{report:?}"
    );
    assert_eq!(
        retry_error(&report.outcomes[1].1),
        "not sent: the CRM asked to pause"
    );
    assert_eq!(report.pause, Some(Duration::from_secs(7)));
    assert_eq!(
        log(&report),
        [("associations/batch/associate/default", 1, Some(429))]
    );
    assert!(mock.associations("deals", "companies").is_empty());
}

#[test]
fn server_errors_are_retried_for_links() {
    let mock = Mock::start();
    let deals = mock.create("deals", 1);
    let companies = mock.create("companies", 1);
    mock.faults(json!({"fail_next": [{"status": 503}, {"status": 500, "retry_after": 2}]}));
    let mut adapter = mock.adapter();
    let links = [link("a", &deals[0], &companies[0], None)];
    let report = adapter.associate("deals", "companies", &links);
    assert!(retry_error(&report.outcomes[0].1).starts_with("HTTP 503"));
    assert_eq!(report.pause, Some(Duration::from_secs(1)));
    let report = adapter.dissociate("deals", "companies", &links);
    assert!(retry_error(&report.outcomes[0].1).starts_with("HTTP 500"));
    assert_eq!(report.pause, Some(Duration::from_secs(2)));
    assert_eq!(log(&report), [("associations/batch/archive", 1, Some(500))]);
    // Once the CRM is back, the same call goes through.
    let report = adapter.associate("deals", "companies", &links);
    assert_eq!(report.outcomes[0].1, synced(&companies[0]));
}

// ---------------------------------------------------------------------------------------
// The CRM's faults, not the records': against the full mock CRM.

fn contacts(mock: &Mock) -> Vec<String> {
    let (_, body) = mock.call("GET", "/__mock/objects/contacts", None);
    let mut emails: Vec<String> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["properties"]["email"].as_str().unwrap().to_owned())
        .collect();
    emails.sort();
    emails
}

#[test]
fn a_batch_refused_whole_is_rejected_and_bisection_finds_the_culprit() {
    for status in [400, 409] {
        let mock = Mock::start();
        mock.faults(json!({ "reject_ids": { "c3@x.io": status } }));
        let mut adapter = mock.adapter();
        let items: Vec<Upsert> = (0..6)
            .map(|i| upsert(&i.to_string(), None, &format!("c{i}@x.io")))
            .collect();
        // The adapter alone: nobody named, nobody blamed.
        let report = adapter.upsert("contacts", "email", &items);
        assert!(
            report
                .outcomes
                .iter()
                .all(|(_, o)| matches!(o, Outcome::Rejected { error } if error.starts_with(&format!("HTTP {status}: ")))),
            "{report:?}"
        );
        assert_eq!(report.pause, None);
        assert!(contacts(&mock).is_empty());
        // Bisected: the innocent go through, the culprit alone fails.
        let report = bisect(&items, |u| &u.key, &mut |batch| {
            adapter.upsert("contacts", "email", batch)
        });
        for (key, outcome) in &report.outcomes {
            match (key.as_str(), outcome) {
                ("3", Outcome::Failed { error }) => {
                    assert!(error.starts_with(&format!("HTTP {status}: ")), "{error}")
                }
                (_, Outcome::Synced { .. }) => {}
                other => panic!("{other:?}"),
            }
        }
        // 6 → 3 + 3 → (1 + 2 → 1 + 1) on the poisoned side.
        assert_eq!(report.requests.len(), 1 + 2 + 2 + 2, "{:?}", log(&report));
        assert_eq!(
            contacts(&mock),
            ["c0@x.io", "c1@x.io", "c2@x.io", "c4@x.io", "c5@x.io"]
        );
    }
}

#[test]
fn a_lone_update_of_a_gone_object_is_stale() {
    let mock = Mock::start();
    let mut adapter = mock.adapter();
    mock.faults(json!({"fail_next": [{"status": 404}]}));
    let report = adapter.upsert("contacts", "email", &[upsert("1", Some("77"), "a@x.io")]);
    assert!(
        matches!(&report.outcomes[0].1, Outcome::Stale { error } if error.starts_with("HTTP 404: OBJECT_NOT_FOUND")),
        "{report:?}"
    );
    assert_eq!(report.misconfigured, None);
}

#[test]
fn a_wrong_base_url_is_misconfigured_and_holds_back_the_rest() {
    let mock = Mock::start();
    let url = format!("{}/v3", mock.server.url());
    let mut adapter = hubspot(&url, json!({}), Box::new(Unpaced));
    let items = [
        upsert("1", Some("101"), "a@x.io"),
        upsert("2", None, "b@x.io"),
    ];
    let report = adapter.upsert("contacts", "email", &items);
    let reason = report.misconfigured.clone().expect("misconfigured");
    assert_eq!(
        reason,
        format!("HTTP 404: Unable to route POST request to /v3/crm/v3/objects/contacts/batch/update; the CRM has no such route: check base_url (POST {url}/crm/v3/objects/contacts/batch/update)")
    );
    for (_, o) in &report.outcomes {
        assert_eq!(retry_error(o), reason);
    }
    assert_eq!(log(&report), [("batch/update", 1, Some(404))]);
    assert_eq!(report.pause, Some(Duration::from_secs(60)));
    assert!(!report.daily_limit_reached);
}

#[test]
fn bad_credentials_and_scopes_are_misconfigured() {
    // 401: the mock knows another token.
    let mock = Mock::start();
    let mut adapter = build(
        &CrmSettings {
            adapter: "hubspot".into(),
            config: json!({ "base_url": mock.server.url() }),
            secret: Some("pat-na1-wrong".into()),
            batch_size: None,
        },
        Box::new(Unpaced),
    )
    .unwrap();
    let report = adapter.delete(
        "contacts",
        &[Delete {
            key: "a".into(),
            crm_id: "1".into(),
        }],
    );
    let reason = report.misconfigured.clone().expect("misconfigured");
    assert!(
        reason
            .starts_with("HTTP 401: INVALID_AUTHENTICATION: Authentication credentials not found.")
            && reason.contains("check the secret and the app's scopes (POST http://"),
        "{reason}"
    );
    assert_eq!(retry_error(&report.outcomes[0].1), reason);

    // 403: missing scopes, say for deals; the secret never shows.
    mock.faults(json!({"fail_next": [{"status": 403, "message": format!("token {SECRET} lacks crm.objects.deals.write")}]}));
    let mut adapter = mock.adapter();
    let report = adapter.upsert("deals", "dealname", &[upsert("1", None, "x")]);
    let reason = report.misconfigured.clone().expect("misconfigured");
    assert!(
        reason.starts_with("HTTP 403: MISSING_SCOPES: token ******** lacks")
            && reason.ends_with("/crm/v3/objects/deals/batch/upsert)"),
        "{reason}"
    );
    assert!(!reason.contains(SECRET));
}

#[test]
fn the_daily_limit_is_reported() {
    let mock = Mock::start();
    mock.faults(json!({"rate_limit": {"daily": 0}}));
    let mut adapter = mock.adapter();
    let items = [
        upsert("1", Some("101"), "a@x.io"),
        upsert("2", None, "b@x.io"),
    ];
    let report = adapter.upsert("contacts", "email", &items);
    assert!(report.daily_limit_reached);
    assert_eq!(report.misconfigured, None);
    assert_eq!(report.pause, Some(Duration::from_secs(300)));
    assert!(retry_error(&report.outcomes[0].1).contains("You have reached your daily limit."));
    assert_eq!(
        retry_error(&report.outcomes[1].1),
        "not sent: the CRM asked to pause"
    );
    assert_eq!(log(&report), [("batch/update", 1, Some(429))]);
}

#[test]
fn records_naming_one_object_twice_wait_for_a_later_batch() {
    let mock = Mock::start();
    let mut adapter = mock.adapter();
    let report = adapter.upsert(
        "contacts",
        "email",
        &[
            upsert("1", None, "ann@x.io"),
            upsert("2", None, "bob@x.io"),
            upsert("3", None, "Ann@X.io "),
        ],
    );
    assert!(matches!(report.outcomes[0].1, Outcome::Synced { .. }));
    assert!(matches!(report.outcomes[1].1, Outcome::Synced { .. }));
    assert_eq!(
        retry_error(&report.outcomes[2].1),
        "deferred: another record in this batch has the same email ignoring case"
    );
    assert_eq!(log(&report), [("batch/upsert", 2, Some(200))]);
    let Outcome::Synced { crm_id } = &report.outcomes[0].1 else {
        unreachable!()
    };
    // Updates naming one crm_id twice.
    let report = adapter.upsert(
        "contacts",
        "email",
        &[
            upsert("1", Some(crm_id), "ann@x.io"),
            upsert("3", Some(crm_id), "ann2@x.io"),
        ],
    );
    assert_eq!(report.outcomes[0].1, synced(crm_id));
    assert_eq!(
        retry_error(&report.outcomes[1].1),
        "deferred: another record in this batch has the same crm_id"
    );
    assert_eq!(log(&report), [("batch/update", 1, Some(200))]);
    assert_eq!(contacts(&mock), ["ann@x.io", "bob@x.io"]);
}

// ---------------------------------------------------------------------------------------
// Finding the objects of upserts whose answer was lost, against the full mock CRM.

#[test]
fn find_tells_live_objects_from_archived_and_unknown_ones() {
    let mock = Mock::start();
    let mut adapter = mock.adapter();
    let report = adapter.upsert(
        "contacts",
        "email",
        &[upsert("1", None, "Ann@x.io"), upsert("2", None, "bob@x.io")],
    );
    let ids: Vec<String> = report
        .outcomes
        .iter()
        .map(|(_, o)| match o {
            Outcome::Synced { crm_id } => crm_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let report = adapter.delete(
        "contacts",
        &[Delete {
            key: "2".into(),
            crm_id: ids[1].clone(),
        }],
    );
    assert_eq!(report.outcomes[0].1, Outcome::Deleted);
    // Two values a request: the third goes in a second one.
    let mut adapter = mock.adapter_of_batch(2);
    let items = [
        find("a", "ANN@x.io"),
        find("b", "bob@x.io"),
        find("c", "ann@x.io"),
        find("d", "cy@x.io"),
    ];
    let report = adapter.find("contacts", "email", &items);
    let outcomes: Vec<_> = report.outcomes.iter().map(|(_, o)| o.clone()).collect();
    assert_eq!(
        outcomes,
        [
            synced(&ids[0]),
            // Archived: not live, so nothing to update or archive.
            Outcome::Deleted,
            synced(&ids[0]),
            Outcome::Deleted,
        ]
    );
    assert_eq!(
        log(&report),
        [("batch/read", 2, Some(207)), ("batch/read", 1, Some(207))]
    );
    assert!(report.requests.iter().all(|r| r.error.is_none()));
    // Found alone: a 200.
    let report = adapter.find("contacts", "email", &[find("a", "ann@x.io")]);
    assert_eq!(report.outcomes[0].1, synced(&ids[0]));
    assert_eq!(log(&report), [("batch/read", 1, Some(200))]);
}

#[test]
fn find_pauses_and_misconfiguration_as_for_the_other_calls() {
    let mock = Mock::start();
    let items = [
        find("a", "a@x.io"),
        find("b", "b@x.io"),
        find("c", "c@x.io"),
    ];
    let mut adapter = mock.adapter_of_batch(2);
    // A 429: the rest of the call waits.
    mock.faults(
        json!({"operations": ["batch/read"], "fail_next": [{"status": 429, "retry_after": 3}]}),
    );
    let report = adapter.find("contacts", "email", &items);
    assert!(retry_error(&report.outcomes[0].1).starts_with("HTTP 429: RATE_LIMIT"));
    assert!(retry_error(&report.outcomes[1].1).starts_with("HTTP 429: RATE_LIMIT"));
    assert_eq!(
        retry_error(&report.outcomes[2].1),
        "not sent: the CRM asked to pause"
    );
    assert_eq!(report.pause, Some(Duration::from_secs(3)));
    assert_eq!(log(&report), [("batch/read", 2, Some(429))]);
    // A 404 OBJECT_NOT_FOUND for the whole request: none found.
    mock.faults(json!({"fail_next": [{"status": 404}]}));
    let report = adapter.find("contacts", "email", &items[..2]);
    assert!(
        report.outcomes.iter().all(|(_, o)| *o == Outcome::Deleted),
        "{report:?}"
    );
    assert_eq!((report.pause, report.misconfigured), (None, None));
    // A 404 from no route: the base_url is wrong, nobody is found or blamed.
    let url = format!("{}/v3", mock.server.url());
    let mut adapter = hubspot(&url, json!({}), Box::new(Unpaced));
    let report = adapter.find("contacts", "email", &items);
    let reason = report.misconfigured.clone().expect("misconfigured");
    assert!(
        reason.starts_with(
            "HTTP 404: Unable to route POST request to /v3/crm/v3/objects/contacts/batch/read"
        ),
        "{reason}"
    );
    for (_, o) in &report.outcomes {
        assert_eq!(retry_error(o), reason);
    }
    assert_eq!(report.pause, Some(Duration::from_secs(60)));
}
