//! Under fire (issue 12's measurements), each on its own throwaway cluster and mocks:
//!
//! 1. rate-limit use: a mock enforcing a rolling limit, two workers and a backend
//!    draining inline share one budget; requests accepted per window ÷ the limit,
//!    and the 429s, with the limit learned from the headers and configured;
//! 2. speed-up: the same backlog drained with `etlify.workers` = 1 and = 2;
//! 3. a healthy CRM's commit-to-CRM latency while another CRM hangs, against the
//!    same measurement while that other CRM is healthy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etlify_e2e::fixtures::{error_text, insert_users, map_users, register_crm, TOKEN, USERS};
use etlify_e2e::{wait_for_every, Cluster, Mock};
use postgres::Client;
use serde_json::{json, Value};

use crate::env::assert_loopback;
use crate::interrupt;
use crate::latency::{self, Latency};
use crate::opts::Opts;

/// The mock's rolling limit in the utilisation part: HubSpot's is 190 per 10 s; a
/// 2 s window gives several windows in a short run.
pub const RATE_MAX: u64 = 100;
pub const RATE_MS: u64 = 2_000;
/// Records per request in the utilisation part: requests are the bottleneck.
pub const UTIL_BATCH: i64 = 10;
/// What the concurrent backend asks of each `etlify.drain()` call, and its pause.
pub const DRAIN_MAX: i64 = 50;
pub const DRAIN_PAUSE_MS: u64 = 20;
/// The hung CRM: its mock answers after `HANG_MS`, etlify gives up after `TIMEOUT_MS`.
pub const HANG_MS: u64 = 30_000;
pub const TIMEOUT_MS: u64 = 20_000;
/// Leads pending on the hung CRM.
pub const LEADS: i64 = 1_000;

/// The mock's arguments when the CRM's limit must not bind. Without `--rate-limit`
/// the mock enforces nothing but its headers still say 190 per 10 s, and etlify
/// learns and keeps that limit (it applies a configured and a learned limit both):
/// so a limit that is enforced but never reached, which the headers report.
pub const UNBOUND: [&str; 4] = ["--rate-limit", "1000000", "--rate-interval-ms", "1000"];

const POLL: Duration = Duration::from_millis(20);

pub struct Util {
    pub variant: &'static str,
    pub secs: f64,
    pub backlog: i64,
    /// Requests the mock accepted in each full window of `RATE_MS` counted from the
    /// first request, the first window and the last partial one left out.
    pub windows: Vec<u64>,
    /// CRM requests received during the measurement, and how many were 429s.
    pub requests: usize,
    pub n429: usize,
    /// The most accepted requests in any sliding window of `RATE_MS` (≤ the limit).
    pub densest: usize,
    /// `etlify.drain()` calls of the concurrent backend, the records they synced, and
    /// the calls that raised an error.
    pub drain_calls: u64,
    pub drain_records: i64,
    pub drain_errors: u64,
    /// Records still waiting at the end (must be > 0: the backlog lasted).
    pub left: i64,
    /// `etlify.crm_status` at the end.
    pub status: String,
    /// The first 429s of the log (seq, received_at_us, path), if any.
    pub excerpt: Vec<String>,
}

impl Util {
    pub fn ratios(&self) -> Vec<f64> {
        self.windows
            .iter()
            .map(|&n| n as f64 / RATE_MAX as f64)
            .collect()
    }
}

pub struct Speedup {
    pub rows: i64,
    /// The order the drains ran in (1 or 2 workers), and their rates, in that order.
    pub order: Vec<usize>,
    pub rates: Vec<f64>,
    /// CRM requests of each drain.
    pub requests: Vec<i64>,
    /// The first drain (creates, 1 worker), not counted.
    pub warmup: f64,
}

impl Speedup {
    pub fn with(&self, workers: usize) -> Vec<f64> {
        self.order
            .iter()
            .zip(&self.rates)
            .filter(|(w, _)| **w == workers)
            .map(|(_, r)| *r)
            .collect()
    }

    /// 2-worker rate ÷ 1-worker rate of each adjacent pair (the order is 1,2 2,1 1,2 …).
    pub fn pair_ratios(&self) -> Vec<f64> {
        self.order
            .chunks(2)
            .zip(self.rates.chunks(2))
            .filter(|(w, _)| w.len() == 2)
            .map(|(w, r)| if w[0] == 2 { r[0] / r[1] } else { r[1] / r[0] })
            .collect()
    }
}

pub struct Hung {
    pub baseline: Latency,
    pub hung: Latency,
    /// Requests hanging at the hung CRM's mock before and after the measurement.
    pub inflight_before: u64,
    pub inflight_after: u64,
    /// `etlify.crm_status` of both CRMs after the measurement.
    pub status: String,
}

pub struct Fire {
    pub util: Vec<Util>,
    pub speedup: Speedup,
    pub hung: Hung,
}

pub fn measure(opts: &Opts) -> Fire {
    crate::phase(&format!(
        "under fire: rate-limit use, limit learned from headers ({} s)",
        opts.fire_secs
    ));
    let learned = utilisation(opts, false);
    crate::phase(&format!(
        "under fire: rate-limit use, limit configured ({} s)",
        opts.fire_secs
    ));
    let configured = utilisation(opts, true);
    crate::phase(&format!(
        "under fire: {} records drained with 1 and with 2 workers, {} rounds each",
        opts.fire_rows, opts.fire_rounds
    ));
    let speedup = speedup(opts);
    crate::phase(&format!(
        "under fire: commit-to-CRM latency beside a hung CRM, 2×{} paced INSERTs",
        opts.latency_samples
    ));
    let hung = hung(opts);
    Fire {
        util: vec![learned, configured],
        speedup,
        hung,
    }
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

fn exec(db: &mut Client, sql: &str) {
    db.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
}

pub fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
        .get(0)
}

/// The extension and the `users` fixture (`user_payload`) on a fresh cluster.
pub fn schema(cluster: &Cluster) -> Client {
    let mut db = cluster.client();
    exec(&mut db, "CREATE EXTENSION etlify");
    exec(&mut db, USERS);
    db
}

pub fn mock(args: &[&str]) -> Mock {
    let mut all = vec!["--token", TOKEN];
    all.extend_from_slice(args);
    let m = Mock::start(&all);
    assert_loopback(m.url());
    m
}

/// `ALTER SYSTEM SET name = value`, a reload, and a wait until this session sees it.
pub fn set_system(db: &mut Client, name: &str, value: &str) {
    exec(db, &format!("ALTER SYSTEM SET {name} = '{value}'"));
    exec(db, "SELECT pg_reload_conf()");
    wait_for_every(
        Duration::from_secs(20),
        Duration::from_millis(5),
        &format!("{name} = {value}"),
        || {
            interrupt::check();
            let v: String = db
                .query_one("SELECT current_setting($1)", &[&name])
                .expect("current_setting")
                .get(0);
            (v == value).then_some(())
        },
    );
}

/// `etlify.enabled` on or off; off also gives the workers time to read it.
fn set_enabled(db: &mut Client, on: bool) {
    set_system(db, "etlify.enabled", if on { "on" } else { "off" });
    if !on {
        interrupt::sleep(Duration::from_millis(300));
    }
}

pub fn queued(db: &mut Client) -> i64 {
    count(db, "SELECT count(*) FROM etlify._pending")
}

/// One line per CRM of `etlify.crm_status`.
pub fn crm_status(db: &mut Client) -> String {
    db.query(
        "SELECT crm || ': state=' || state || coalesce(' paused_until=' || paused_until::text, '')
                || coalesce(' pause_reason=' || pause_reason, '')
                || ' rate_limit=' || coalesce(rate_limit::text, '-')
                || ' rate_period=' || coalesce(rate_period::text, '-')
                || ' requests_last_period=' || coalesce(requests_last_period::text, '-')
                || ' throttled_total=' || coalesce(throttled_total::text, '-')
                || ' daily_used=' || coalesce(daily_used::text, '-')
                || ' daily_limit=' || coalesce(daily_limit::text, '-')
           FROM etlify.crm_status ORDER BY crm",
        &[],
    )
    .map(|rows| {
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("; ")
    })
    .unwrap_or_else(|e| format!("(crm_status: {})", error_text(&e)))
}

fn wait_drained(db: &mut Client, limit: Duration) {
    wait_for_every(limit, POLL, "nothing pending", || {
        interrupt::check();
        (queued(db) == 0).then_some(())
    });
}

/// Sets the flag when dropped, so a scoped thread that waits for it also stops when
/// the main thread unwinds (an interrupt, a failed check).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn utilisation(opts: &Opts, configured: bool) -> Util {
    let cluster = Cluster::start("etlify.workers = 2\netlify.enabled = off");
    let max = RATE_MAX.to_string();
    let interval = RATE_MS.to_string();
    let mock = mock(&["--rate-limit", &max, "--rate-interval-ms", &interval]);
    let mut db = schema(&cluster);
    let reg = if configured {
        format!(
            ", batch_size => {UTIL_BATCH}, rate_limit => {RATE_MAX}, rate_period => '{RATE_MS} ms'"
        )
    } else {
        format!(", batch_size => {UTIL_BATCH}")
    };
    register_crm(&mut db, "hubspot", &mock, &reg);
    map_users(&mut db, "");
    // half again what the limit lets through in the time, plus a margin
    let per_s = RATE_MAX as f64 * 1000.0 / RATE_MS as f64;
    let backlog = (per_s * opts.fire_secs as f64 * UTIL_BATCH as f64 * 1.5) as i64 + 2_000;
    insert_users(&mut db, 1..=backlog);
    exec(
        &mut db,
        "VACUUM ANALYZE users, etlify.queue, etlify.changes",
    );
    let mut drainer = cluster.client();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    set_enabled(&mut db, true);
    let (drain_calls, drain_records, drain_errors) = thread::scope(|s| {
        let guard = StopOnDrop(&stop);
        let h = s.spawn(|| {
            let (mut calls, mut records, mut errors) = (0u64, 0i64, 0u64);
            let sql = format!(
                "SELECT coalesce((etlify.drain(max_records => {DRAIN_MAX})->>'synced')::bigint, 0)"
            );
            while !stop.load(Ordering::SeqCst) {
                calls += 1;
                match drainer.query_one(&sql, &[]) {
                    Ok(r) => records += r.get::<_, i64>(0),
                    Err(_) => errors += 1,
                }
                thread::sleep(Duration::from_millis(DRAIN_PAUSE_MS));
            }
            (calls, records, errors)
        });
        interrupt::sleep(Duration::from_secs(opts.fire_secs));
        drop(guard);
        h.join().expect("the drain loop")
    });
    let end_us = now_us();
    let secs = started.elapsed().as_secs_f64();
    let status = crm_status(&mut db);
    let left = queued(&mut db);
    // requests received before the end complete within a few ms: no fault slows them
    interrupt::sleep(Duration::from_millis(500));
    let reqs: Vec<Value> = mock
        .crm_requests()
        .into_iter()
        .filter(|r| r["received_at_us"].as_i64().unwrap_or(i64::MAX) <= end_us)
        .collect();
    let (windows, densest) = windows(&reqs, end_us, RATE_MS as i64 * 1000);
    let rejected: Vec<&Value> = reqs
        .iter()
        .filter(|r| r["status"].as_u64() == Some(429))
        .collect();
    let excerpt = rejected
        .iter()
        .take(5)
        .map(|r| {
            format!(
                "#{} {} {} -> 429 at {} µs",
                r["seq"], r["method"], r["path"], r["received_at_us"]
            )
        })
        .collect();
    Util {
        variant: if configured {
            "limit configured (rate_limit => 100, rate_period => '2 s')"
        } else {
            "limit learned from the headers"
        },
        secs,
        backlog,
        windows,
        requests: reqs.len(),
        n429: rejected.len(),
        densest,
        drain_calls,
        drain_records,
        drain_errors,
        left,
        status,
        excerpt,
    }
}

/// Accepted requests (not 429) per fixed window of `period_us` from the first
/// request, leaving out the first window and the last partial one; and the most
/// accepted requests in any sliding window of `period_us`.
pub fn windows(reqs: &[Value], end_us: i64, period_us: i64) -> (Vec<u64>, usize) {
    let mut at: Vec<i64> = reqs
        .iter()
        .filter(|r| r["status"].as_u64() != Some(429))
        .filter_map(|r| r["received_at_us"].as_i64())
        .collect();
    at.sort_unstable();
    let t0 = reqs
        .iter()
        .filter_map(|r| r["received_at_us"].as_i64())
        .min();
    let mut counts = Vec::new();
    if let Some(t0) = t0 {
        let mut k = 1;
        while t0 + (k + 1) * period_us <= end_us {
            let (from, to) = (t0 + k * period_us, t0 + (k + 1) * period_us);
            counts
                .push((at.partition_point(|&t| t < to) - at.partition_point(|&t| t < from)) as u64);
            k += 1;
        }
    }
    (counts, etlify_e2e::mock::densest(&at, period_us))
}

fn speedup(opts: &Opts) -> Speedup {
    let rows = opts.fire_rows;
    let mut cluster = Cluster::start("etlify.workers = 1\netlify.enabled = off");
    let mock = mock(&UNBOUND);
    let mut db = schema(&cluster);
    register_crm(&mut db, "hubspot", &mock, "");
    map_users(&mut db, "");
    insert_users(&mut db, 1..=rows);
    let limit = Duration::from_secs(120) + Duration::from_millis(2 * rows as u64);
    // the first drain creates every contact: not counted (later ones update them)
    let started = Instant::now();
    set_enabled(&mut db, true);
    wait_drained(&mut db, limit);
    let warmup = rows as f64 / started.elapsed().as_secs_f64();
    set_enabled(&mut db, false);

    let order: Vec<usize> = (0..opts.fire_rounds)
        .flat_map(|i| if i % 2 == 0 { [1, 2] } else { [2, 1] })
        .collect();
    let mut workers = 1;
    let (mut rates, mut requests) = (Vec::new(), Vec::new());
    for (round, &w) in order.iter().enumerate() {
        if w != workers {
            exec(&mut db, &format!("ALTER SYSTEM SET etlify.workers = {w}"));
            drop(db);
            cluster.restart();
            db = cluster.client();
            workers = w;
        }
        wait_for_every(
            Duration::from_secs(30),
            POLL,
            &format!("{w} etlify workers"),
            || {
                interrupt::check();
                (cluster.worker_pids().len() == w).then_some(())
            },
        );
        exec(
            &mut db,
            &format!("UPDATE users SET first_name = 'Round{round}'"),
        );
        exec(
            &mut db,
            "VACUUM ANALYZE users, etlify.queue, etlify.changes",
        );
        assert_eq!(queued(&mut db), rows, "the UPDATE should queue every row");
        let before = mock.stats()["requests"].as_i64().unwrap_or(0);
        let started = Instant::now();
        set_enabled(&mut db, true);
        // the cheap check first (the mock's count of requests): counting the queue
        // every 20 ms would take a core from the workers while they drain
        let expected = before + (rows + 99) / 100;
        wait_for_every(limit, POLL, "every batch at the mock", || {
            interrupt::check();
            (mock.stats()["requests"].as_i64().unwrap_or(0) >= expected).then_some(())
        });
        wait_drained(&mut db, limit);
        rates.push(rows as f64 / started.elapsed().as_secs_f64());
        requests.push(mock.stats()["requests"].as_i64().unwrap_or(0) - before);
        set_enabled(&mut db, false);
        eprintln!(
            "    {w} worker(s): {:.0} rec/s",
            rates.last().copied().unwrap_or(0.0)
        );
    }
    let n = count(
        &mut db,
        "SELECT count(*) FROM etlify.sync_status WHERE state <> 'synced'",
    );
    assert_eq!(n, 0, "every record synced after the drains");
    Speedup {
        rows,
        order,
        rates,
        requests,
        warmup,
    }
}

const LEADS_SCHEMA: &str = "CREATE TABLE leads (id bigint PRIMARY KEY, email text);
CREATE FUNCTION lead_payload(l leads) RETURNS jsonb LANGUAGE sql STABLE
    AS $$ SELECT jsonb_build_object('email', l.email) $$;";

fn insert_leads(db: &mut Client, from: i64, to: i64) {
    db.execute(
        "INSERT INTO leads SELECT i, 'lead' || i || '@example.com' FROM generate_series($1::bigint, $2::bigint) i",
        &[&from, &to],
    )
    .unwrap_or_else(|e| panic!("insert leads: {}", error_text(&e)));
}

fn hung(opts: &Opts) -> Hung {
    let cluster = Cluster::start("etlify.workers = 2");
    let healthy = mock(&UNBOUND);
    let other = mock(&UNBOUND);
    let mut db = schema(&cluster);
    exec(&mut db, LEADS_SCHEMA);
    // UNBOUND: 2×200 paced INSERTs would fill the 190 per 10 s etlify learns from a
    // mock without a limit, and the latency would measure that window
    register_crm(&mut db, "hubspot", &healthy, "");
    db.execute(
        "SELECT etlify.register_crm('hung', 'hubspot', config => jsonb_build_object('base_url', $1::text, 'timeout_ms', $2::int), secret => $3)",
        &[&other.url(), &(TIMEOUT_MS as i32), &TOKEN],
    )
    .unwrap_or_else(|e| panic!("register_crm hung: {}", error_text(&e)));
    exec(
        &mut db,
        "SELECT etlify.sync_table('hung', 'leads', 'contacts', 'email', 'lead_payload')",
    );
    map_users(&mut db, "");

    // baseline: the second CRM healthy; its backlog goes out first
    insert_leads(&mut db, 1, LEADS);
    wait_drained(&mut db, Duration::from_secs(60));
    interrupt::sleep(Duration::from_millis(300));
    let baseline = latency::paced(&mut db, &healthy, 1_000_000, opts.latency_samples);

    // the same with the second CRM hanging on a backlog
    other.set_faults(json!({ "hang_ms": HANG_MS }));
    insert_leads(&mut db, LEADS + 1, 2 * LEADS);
    wait_for_every(
        Duration::from_secs(30),
        POLL,
        "a request hanging at the hung CRM",
        || {
            interrupt::check();
            (other.inflight() > 0).then_some(())
        },
    );
    let inflight_before = other.inflight();
    interrupt::sleep(Duration::from_millis(300));
    let hung = latency::paced(&mut db, &healthy, 2_000_000, opts.latency_samples);
    let inflight_after = other.inflight();
    let status = crm_status(&mut db);
    Hung {
        baseline,
        hung,
        inflight_before,
        inflight_after,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_windows_only() {
        let r = |t: i64, s: u64| json!({"received_at_us": t, "status": s});
        // t0 = 0, period 10: windows [10,20) and [20,30) are full before end 35
        let reqs = vec![
            r(0, 200),
            r(5, 200),
            r(10, 200),
            r(12, 429),
            r(19, 200),
            r(20, 200),
            r(31, 200),
        ];
        let (w, densest) = windows(&reqs, 35, 10);
        assert_eq!(w, vec![2, 1]);
        assert_eq!(densest, 2);
    }
}
