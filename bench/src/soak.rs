//! The soak: two workers keep a CRM in step with a writer for minutes while the mock
//! answers 10% of requests 503, slows every answer and enforces a rolling rate limit,
//! and a worker is SIGKILLed every ~20 s (the postmaster then resets every backend).
//! Afterwards, the faults cleared (the rate limit stays: it is the CRM's), the CRM
//! must end holding exactly the rows (`etlify_e2e::exact::users_differences`).

use std::thread;
use std::time::{Duration, Instant};

use etlify_e2e::exact::users_differences;
use etlify_e2e::fixtures::{insert_users, map_users, register_crm};
use etlify_e2e::soak::{write_until, Lcg};
use etlify_e2e::Cluster;
use serde_json::{json, Value};

use crate::fire::{crm_status, mock, now_us, schema};
use crate::interrupt;
use crate::opts::Opts;

pub const ERROR_RATE: f64 = 0.1;
pub const ERROR_STATUS: u64 = 503;
pub const DELAY_MS: u64 = 20;
pub const BATCH: i64 = 10;
/// The mock's rolling limit: below what the writer asks for (~11 requests/s without
/// a limit), so that it binds and the workers share a full window.
pub const RATE_MAX: u64 = 20;
pub const RATE_MS: u64 = 2_000;
/// A worker is killed every 15–25 s.
pub const KILL_MIN_MS: u64 = 15_000;
pub const KILL_JITTER_MS: u64 = 10_000;
/// How long the CRM may take to hold exactly the rows once the writes stopped.
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(180);

pub struct Soak {
    pub seed: u64,
    /// Seconds of writing, and the statements that succeeded.
    pub secs: f64,
    pub writes: u64,
    /// Seconds from the start at which a worker was SIGKILLed.
    pub kills: Vec<f64>,
    pub requests: usize,
    pub n5xx: usize,
    pub n429: usize,
    /// 429s received within two rate windows after a kill (the postmaster's reset
    /// also resets etlify's shared budget).
    pub n429_after_kill: usize,
    /// Each 429: its seq, and seconds since the kill before it.
    pub excerpt429: Vec<String>,
    pub n409: usize,
    /// Seconds from the end of the writes (faults cleared) until the CRM held exactly
    /// the rows; None when it did not within [`CONVERGE_LIMIT`].
    pub converge_secs: Option<f64>,
    /// What still differed at the end (empty: exact).
    pub diffs: Vec<String>,
    pub rows: i64,
    pub contacts: usize,
    pub status: String,
}

impl Soak {
    pub fn exact(&self) -> bool {
        self.diffs.is_empty()
    }
}

pub fn run(opts: &Opts) -> Soak {
    crate::phase(&format!(
        "soak: {} s of writes, {ERROR_RATE} × {ERROR_STATUS}, {DELAY_MS} ms answers, {RATE_MAX} req / {RATE_MS} ms, a SIGKILL every ~20 s",
        opts.soak_secs
    ));
    let cluster = Cluster::start("etlify.workers = 2");
    let max = RATE_MAX.to_string();
    let interval = RATE_MS.to_string();
    let mock = mock(&["--rate-limit", &max, "--rate-interval-ms", &interval]);
    let mut db = schema(&cluster);
    register_crm(
        &mut db,
        "hubspot",
        &mock,
        &format!(", batch_size => {BATCH}"),
    );
    map_users(&mut db, "");
    insert_users(&mut db, 1..=300);
    mock.set_faults(json!({
        "error_rate": ERROR_RATE,
        "error_status": ERROR_STATUS,
        "delay_ms": DELAY_MS,
    }));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    eprintln!("    seed {seed}");
    let mut rng = Lcg(seed ^ 0x9e37_79b9_7f4a_7c15);
    let conninfo = cluster.conninfo("postgres");
    let started = Instant::now();
    let until = started + Duration::from_secs(opts.soak_secs);
    let writer = thread::spawn(move || write_until(&conninfo, seed, until));
    let mut kills = Vec::new();
    let mut kill_us = Vec::new();
    loop {
        let next = Instant::now() + Duration::from_millis(KILL_MIN_MS + rng.below(KILL_JITTER_MS));
        if next >= until {
            interrupt::sleep(until.saturating_duration_since(Instant::now()));
            break;
        }
        interrupt::sleep(next.saturating_duration_since(Instant::now()));
        kill_us.push(now_us());
        let (old, new) = cluster.kill_worker(libc::SIGKILL);
        let at = started.elapsed().as_secs_f64();
        eprintln!("    {at:.0} s: SIGKILL of worker {old}, now {new}");
        kills.push(at);
    }
    let writes = writer.join().expect("the writer");
    let secs = started.elapsed().as_secs_f64();
    let stopped = Instant::now();
    mock.set_faults(json!({}));
    db = cluster.client(); // the postmaster reset every backend at each kill
    cluster.wait_worker_pid();
    let mut diffs = users_differences(&mut db, &mock);
    while !diffs.is_empty() && stopped.elapsed() < CONVERGE_LIMIT {
        interrupt::sleep(Duration::from_millis(250));
        diffs = users_differences(&mut db, &mock);
    }
    let converge_secs = diffs.is_empty().then(|| stopped.elapsed().as_secs_f64());
    let status = crm_status(&mut db);
    let rows: i64 = db
        .query_one("SELECT count(*) FROM users WHERE email IS NOT NULL", &[])
        .expect("users")
        .get(0);
    let reqs = mock.crm_requests();
    let with = |s: u64| -> Vec<&Value> {
        reqs.iter()
            .filter(|r| r["status"].as_u64() == Some(s))
            .collect()
    };
    let window_us = 2 * RATE_MS as i64 * 1000;
    let n429_after_kill = with(429)
        .iter()
        .filter_map(|r| r["received_at_us"].as_i64())
        .filter(|t| kill_us.iter().any(|k| *t >= *k && *t < *k + window_us))
        .count();
    let excerpt429 = with(429)
        .iter()
        .map(|r| {
            let t = r["received_at_us"].as_i64().unwrap_or(0);
            let since = kill_us
                .iter()
                .filter(|k| **k <= t)
                .max()
                .map(|k| format!("{:.2} s after a kill", (t - k) as f64 / 1e6))
                .unwrap_or_else(|| "before any kill".into());
            format!(
                "#{} {} {} -> 429, {since}",
                r["seq"], r["method"], r["path"]
            )
        })
        .collect();
    let soak = Soak {
        seed,
        secs,
        writes,
        kills,
        requests: reqs.len(),
        n5xx: reqs
            .iter()
            .filter(|r| r["status"].as_u64().is_some_and(|s| s >= 500))
            .count(),
        n429: with(429).len(),
        n429_after_kill,
        excerpt429,
        n409: with(409).len(),
        converge_secs,
        diffs,
        rows,
        contacts: mock.objects("contacts").len(),
        status,
    };
    soak
}
