//! Drain throughput: `rows` records enqueued while the worker is off (by sync_table's
//! backfill), then the worker is switched on and timed until the mock holds every
//! contact and the queue is empty. The worker's memory is sampled meanwhile.
//! Then the digest skip: the same rows enqueued again, unchanged, drained again.

use std::time::{Duration, Instant};

use etlify_e2e::fixtures::overview;
use etlify_e2e::wait_for_every;

use crate::env::{Bench, MAPPED, PLAIN};
use crate::interrupt;
use crate::rss::{self, Mem, Sampler};

const POLL: Duration = Duration::from_millis(20);

pub struct Drain {
    pub rows: i64,
    pub secs: f64,
    pub records_per_s: f64,
    /// CRM requests the drain sent.
    pub requests: i64,
    pub peak: Mem,
    pub samples: usize,
    pub worker_idle: Mem,
    pub idle_backend: Mem,
    /// The worker's PID changed during the drain (it crashed and was restarted).
    pub worker_restarted: bool,
}

pub struct Redrain {
    /// Rows the unchanged UPDATE put in the queue (the capture trigger compares old
    /// and new watched values: expected 0).
    pub enqueued_by_unchanged_update: i64,
    pub secs: f64,
    pub records_per_s: f64,
    pub requests: i64,
}

/// Generous bound of a drain: a stuck worker fails the run instead of hanging it.
fn deadline(rows: i64) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(2 * rows as u64)
}

/// Waits until the mock holds `contacts` contacts and the queue is empty. The cheap
/// check (mock stats) first, so polling the database does not steal a core early.
fn wait_drained(b: &mut Bench, contacts: i64) {
    let limit = deadline(contacts);
    wait_for_every(limit, POLL, "the mock to hold every contact", || {
        interrupt::check();
        (b.mock_contacts() >= contacts).then_some(())
    });
    wait_for_every(limit, POLL, "nothing pending", || {
        interrupt::check();
        (b.queued() == 0).then_some(())
    });
}

fn check_overview(b: &mut Bench, rows: i64, when: &str) {
    let o = overview(&mut b.db, "hubspot", MAPPED);
    let n = |k: &str| o[k].as_i64().unwrap_or(-1);
    assert!(
        n("synced") == rows && n("pending") == 0 && n("failed") == 0 && n("parked") == 0,
        "{when}: etlify.overview should show {rows} synced and nothing pending: {o}"
    );
}

/// A fresh backend that ran one query: what any connection costs.
fn idle_backend(b: &Bench) -> Mem {
    let mut c = b.cluster.client();
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pg_backend_pid")
        .get(0);
    rss::read(pid).expect("idle backend's /proc status")
}

pub fn first(b: &mut Bench, rows: i64, stats: bool) -> Drain {
    b.set_worker(false);
    b.fill(MAPPED, rows);
    b.fill(PLAIN, rows);
    b.exec(
        "SELECT etlify.sync_table('hubspot', 'users', 'contacts', 'email', 'contact_payload', \
         watch => '{email,first_name,last_name}')",
    );
    assert_eq!(b.queued(), rows, "the backfill should enqueue every row");
    b.exec("VACUUM ANALYZE users, users_plain, etlify.queue, etlify.changes");
    interrupt::sleep(Duration::from_millis(300));
    assert_eq!(
        b.mock_requests(),
        0,
        "the worker sent requests while etlify.enabled = off"
    );

    let pid = b.cluster.wait_worker_pid();
    let worker_idle = rss::read(pid).expect("worker's /proc status");
    let idle_backend = idle_backend(b);
    if stats {
        b.exec("SELECT pg_stat_statements_reset()");
    }
    let sampler = Sampler::start(pid);
    let start = Instant::now();
    b.set_worker(true);
    wait_drained(b, rows);
    let secs = start.elapsed().as_secs_f64();
    let (peak, samples) = sampler.finish();
    check_overview(b, rows, "after the drain");
    Drain {
        rows,
        secs,
        records_per_s: rows as f64 / secs,
        requests: b.mock_requests(),
        peak,
        samples,
        worker_idle,
        idle_backend,
        worker_restarted: b.cluster.worker_pid() != Some(pid),
    }
}

pub fn unchanged(b: &mut Bench, rows: i64) -> Redrain {
    b.set_worker(false);
    b.exec("UPDATE users SET first_name = first_name");
    let enqueued_by_unchanged_update = b.queued();
    // The trigger filters that UPDATE out, so put every key back in the queue through
    // the public API: the drain must find the payloads unchanged (same digest).
    let n = b.count("SELECT count(etlify.enqueue('hubspot', 'users', id::text)) FROM users");
    assert_eq!(n, rows);
    assert_eq!(b.queued(), rows);
    let before = b.mock_requests();
    let start = Instant::now();
    b.set_worker(true);
    wait_for_every(deadline(rows), POLL, "nothing pending", || {
        interrupt::check();
        (b.queued() == 0).then_some(())
    });
    let secs = start.elapsed().as_secs_f64();
    check_overview(b, rows, "after the second drain");
    Redrain {
        enqueued_by_unchanged_update,
        secs,
        records_per_s: rows as f64 / secs,
        requests: b.mock_requests() - before,
    }
}
