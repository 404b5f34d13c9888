//! Commit-to-CRM latency with an idle worker: single-row INSERTs, each committed,
//! then awaited at the mock. Latency = the mock's `received_at_us` of the request
//! that carried it minus the client's wall-clock time when COMMIT returned (same
//! machine, same clock). Paced so the worker is back asleep before the next one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etlify_e2e::fixtures::error_text;
use etlify_e2e::{wait_for_every, Mock};
use postgres::Client;
use serde_json::Value;

use crate::env::Bench;
use crate::interrupt;

/// Pause between samples: far above one drain round, so each INSERT finds the
/// worker asleep on its latch.
const PACE: Duration = Duration::from_millis(20);

pub struct Latency {
    pub ms: Vec<f64>,
    /// Requests that carried more than one record (expected 0 when paced).
    pub shared_requests: usize,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

fn last_seq(reqs: &[Value]) -> Option<u64> {
    reqs.iter().filter_map(|r| r["seq"].as_u64()).max()
}

pub fn measure(b: &mut Bench, first_id: i64, samples: usize) -> Latency {
    b.set_worker(true);
    assert_eq!(
        b.queued(),
        0,
        "latency needs an idle worker: queue not empty"
    );
    interrupt::sleep(Duration::from_millis(300));
    paced(&mut b.db, &b.mock, first_id, samples)
}

/// `samples` paced single-row INSERTs into `users` (ids from `first_id`), each timed
/// from its COMMIT to the `mock`'s receipt of the request that carried it. Only the
/// requests `mock` receives count: another CRM's mock does not disturb it.
pub fn paced(db: &mut Client, mock: &Mock, first_id: i64, samples: usize) -> Latency {
    let mut seq = last_seq(&mock.requests_since(0)).unwrap_or(0);
    let insert = db
        .prepare(
            "INSERT INTO users (id, email, first_name, last_name) VALUES ($1, $2, 'Lat', 'Ency')",
        )
        .expect("prepare insert");
    let mut ms = Vec::with_capacity(samples);
    let mut shared_requests = 0;
    for i in 0..samples as i64 {
        let id = first_id + i;
        let email = format!("latency{id}@example.com");
        db.execute(&insert, &[&id, &email])
            .unwrap_or_else(|e| panic!("insert user {id}: {}", error_text(&e)));
        let committed = now_us();
        let what = format!("the request carrying user {id}");
        let reqs = wait_for_every(
            Duration::from_secs(10),
            Duration::from_millis(2),
            &what,
            || {
                interrupt::check();
                let r: Vec<Value> = mock
                    .requests_since(seq)
                    .into_iter()
                    .filter(|r| r["path"].as_str().unwrap_or("").starts_with("/crm/"))
                    .collect();
                (!r.is_empty()).then_some(r)
            },
        );
        seq = last_seq(&reqs).unwrap_or(seq);
        let carrier = &reqs[0];
        assert_eq!(
            carrier["status"].as_u64().map(|s| (200..300).contains(&s)),
            Some(true),
            "the CRM refused user {id}: {carrier}"
        );
        if carrier["inputs"].as_u64() != Some(1) || reqs.len() > 1 {
            shared_requests += 1;
        }
        let received = carrier["received_at_us"].as_i64().expect("received_at_us");
        ms.push((received - committed) as f64 / 1000.0);
        interrupt::sleep(PACE);
    }
    Latency {
        ms,
        shared_requests,
    }
}
