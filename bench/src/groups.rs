//! Sync groups and sync_stale (issue 11), each beside a baseline of the same run:
//! - sync_stale over unchanged rows of a table synced through the `null` adapter
//!   (no CRM in the way): rows checked per second, requests and queue rows it
//!   caused (both 0), the backend's peak memory; baseline: the serializer alone
//!   over the same rows, one statement;
//! - a bulk UPDATE of a has_many member table (investments → people) with the
//!   mapping's dependency, against the same UPDATE of an identical table without;
//! - a company renamed under `fanout` people: commit to every person delivered to
//!   the mock, against a plain drain of as many changed people.

use std::time::{Duration, Instant};

use etlify_e2e::wait_for_every;

use crate::env::Bench;
use crate::interrupt;
use crate::rss::{self, Mem, Sampler};
use crate::stats::median;

pub struct Groups {
    pub stale_rows: i64,
    /// rows checked per second, one per round
    pub stale_rates: Vec<f64>,
    /// the serializer alone, rows per second, one per round
    pub serializer_rates: Vec<f64>,
    pub stale_requests: i64,
    pub stale_enqueued: i64,
    pub stale_peak: Mem,
    pub idle_backend: Mem,
    pub member_rows: i64,
    /// seconds of the bulk UPDATE: with the dependency, without
    pub member_mapped: Vec<f64>,
    pub member_plain: Vec<f64>,
    pub fanout: i64,
    /// commit of the rename to every person delivered
    pub fanout_secs: f64,
    /// the same people changed directly, commit to delivered
    pub plain_secs: f64,
    /// the fan-out's requests as sync_log saw them
    pub fanout_log: String,
}

const SCHEMA: &str = r#"
SELECT etlify.register_crm('void', 'null');
CREATE TABLE stale_users (id bigint PRIMARY KEY, email text NOT NULL, first_name text, last_name text);
CREATE FUNCTION stale_payload(u stale_users) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('email', u.email, 'firstname', u.first_name, 'lastname', u.last_name)
$$;
CREATE TABLE companies (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE people (id bigint PRIMARY KEY, email text NOT NULL, company_id bigint REFERENCES companies);
CREATE INDEX ON people (company_id);
CREATE TABLE investments (id bigint PRIMARY KEY, person_id bigint REFERENCES people, amount numeric NOT NULL);
CREATE INDEX ON investments (person_id);
CREATE TABLE investments_plain (id bigint PRIMARY KEY, person_id bigint REFERENCES people, amount numeric NOT NULL);
CREATE INDEX ON investments_plain (person_id);
CREATE FUNCTION person_payload(p people) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('email', p.email,
        'company', (SELECT c.name FROM companies c WHERE c.id = p.company_id),
        'total', (SELECT coalesce(sum(i.amount), 0)::text FROM investments i WHERE i.person_id = p.id))
$$;
"#;

fn wait_quiet(b: &mut Bench, what: &str) {
    wait_for_every(
        Duration::from_secs(600),
        Duration::from_millis(20),
        what,
        || {
            interrupt::check();
            (b.queued() == 0).then_some(())
        },
    );
}

pub fn measure(
    b: &mut Bench,
    stale_rows: i64,
    member_rows: i64,
    fanout: i64,
    rounds: usize,
) -> Groups {
    b.exec(SCHEMA);
    let idle_backend = {
        let mut c = b.cluster.client();
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        rss::read(pid).unwrap_or_default()
    };

    // sync_stale: every row synced (null adapter), then re-checked unchanged
    b.exec(&format!(
        "INSERT INTO stale_users SELECT i, 'u' || i || '@example.com', 'First' || i, 'Last' || i \
         FROM generate_series(1, {stale_rows}) i;
         SELECT etlify.sync_table('void', 'stale_users', 'contacts', 'email', 'stale_payload');"
    ));
    wait_quiet(b, "the null-adapter backfill drained");
    b.exec("VACUUM ANALYZE stale_users");
    b.exec("VACUUM ANALYZE etlify.records");
    let requests = b.mock_requests();
    let (mut stale_rates, mut serializer_rates, mut stale_peak) =
        (Vec::new(), Vec::new(), Mem::default());
    let mut stale_enqueued = 0;
    for _ in 0..rounds {
        interrupt::check();
        let mut c = b.cluster.client();
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let sampler = Sampler::start(pid);
        let t = Instant::now();
        let r: String = c
            .query_one(
                "SELECT etlify.sync_stale('void', ARRAY['stale_users'::regclass])::text",
                &[],
            )
            .unwrap()
            .get(0);
        let r: serde_json::Value = serde_json::from_str(&r).unwrap_or_default();
        stale_rates.push(stale_rows as f64 / t.elapsed().as_secs_f64());
        let (peak, _) = sampler.finish();
        stale_peak = stale_peak.max(peak.max(rss::read(pid).unwrap_or_default()));
        stale_enqueued += r["per_model"]["stale_users"].as_i64().unwrap_or(-1);
        let t = Instant::now();
        c.query_one(
            "SELECT count(*) FROM (SELECT stale_payload(u)::text AS p FROM stale_users u) s WHERE p IS NOT NULL",
            &[],
        )
        .unwrap();
        serializer_rates.push(stale_rows as f64 / t.elapsed().as_secs_f64());
    }
    stale_enqueued += b.queued();
    let stale_requests = b.mock_requests() - requests;

    // a has_many member's bulk UPDATE, with the dependency and without
    b.exec(&format!(
        "INSERT INTO companies SELECT i, 'Company ' || i FROM generate_series(1, 10) i;
         INSERT INTO people SELECT i, 'p' || i || '@example.com', 1 + i % 10 FROM generate_series(1, {member_rows}) i;
         INSERT INTO investments SELECT i, i, 1 FROM generate_series(1, {member_rows}) i;
         INSERT INTO investments_plain SELECT i, i, 1 FROM generate_series(1, {member_rows}) i;
         SELECT etlify.sync_table('hubspot', 'people', 'contacts', 'email', 'person_payload',
                                  dependencies => '[\"investments\", \"companies\"]');"
    ));
    wait_quiet(b, "people drained");
    b.set_worker(false);
    let (mut member_mapped, mut member_plain) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for (table, out) in [
            ("investments_plain", &mut member_plain),
            ("investments", &mut member_mapped),
        ] {
            interrupt::check();
            let t = Instant::now();
            b.exec(&format!("UPDATE {table} SET amount = amount + 1"));
            out.push(t.elapsed().as_secs_f64());
            let _ = round;
        }
    }
    b.set_worker(true);
    wait_quiet(b, "the member updates drained");

    // fan-out: a company renamed under `fanout` people, against a plain drain of
    // as many changed people
    b.exec(&format!(
        "UPDATE people SET company_id = CASE WHEN id <= {fanout} THEN 1 ELSE 2 END"
    ));
    wait_quiet(b, "people regrouped");
    let t = Instant::now();
    b.exec("UPDATE companies SET name = 'Renamed' WHERE id = 1");
    let committed: String =
        b.db.query_one("SELECT clock_timestamp()::text", &[])
            .unwrap()
            .get(0);
    wait_quiet(b, "the rename delivered");
    let fanout_secs = t.elapsed().as_secs_f64();
    let fanout_log: String = b
        .db
        .query_one(
            "SELECT format('%s requests, the first %s s and the last %s s after the commit', count(*), \
                    round(extract(epoch FROM min(at) - $1::text::timestamptz)::numeric, 3), \
                    round(extract(epoch FROM max(at) - $1::text::timestamptz)::numeric, 3)) \
               FROM etlify.sync_log WHERE source = 'people'::regclass AND at > $1::text::timestamptz",
            &[&committed],
        )
        .unwrap()
        .get(0);
    let t = Instant::now();
    b.exec(&format!(
        "UPDATE people SET email = 'q' || id || '@example.com' WHERE id <= {fanout}"
    ));
    wait_quiet(b, "the people changed directly delivered");
    let plain_secs = t.elapsed().as_secs_f64();

    Groups {
        stale_rows,
        stale_rates,
        serializer_rates,
        stale_requests,
        stale_enqueued,
        stale_peak,
        idle_backend,
        member_rows,
        member_mapped,
        member_plain,
        fanout,
        fanout_secs,
        plain_secs,
        fanout_log,
    }
}

impl Groups {
    pub fn stale_median(&self) -> f64 {
        median(&self.stale_rates)
    }
}
