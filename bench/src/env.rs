//! The benchmark's world: one preloaded cluster (the e2e harness's), one mock CRM
//! without a rate limit, and the SQL-API example schema: `users` mirrored as HubSpot
//! contacts, `users_plain` an identical table without a mapping (the A/B baseline).

use std::time::Duration;

use etlify_e2e::fixtures::error_text;
use etlify_e2e::{wait_for_every, Cluster, Mock};
use postgres::Client;

use crate::interrupt;

pub const MAPPED: &str = "users";
pub const PLAIN: &str = "users_plain";
pub const SECRET: &str = "pat-bench";

const SCHEMA: &str = r#"
CREATE EXTENSION etlify;
CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    email      text,
    first_name text,
    last_name  text
);
CREATE TABLE users_plain (
    id         bigserial PRIMARY KEY,
    email      text,
    first_name text,
    last_name  text
);
CREATE FUNCTION contact_payload(u users) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('email', u.email, 'firstname', u.first_name, 'lastname', u.last_name)
$$;
"#;

/// Fields drop in order: the connection first, then the mock, then the cluster.
pub struct Bench {
    pub db: Client,
    pub mock: Mock,
    pub cluster: Cluster,
}

impl Bench {
    /// The harness's cluster plus `extra_conf`, the schema, the CRM registered (the
    /// mapping comes later: the drain phase declares it over existing rows).
    pub fn start(extra_conf: &str) -> Bench {
        // the mock's headers otherwise advertise HubSpot's 190 requests per 10 s,
        // which etlify honours: the main phase measures etlify, not that limit
        let mock = Mock::start(&crate::fire::UNBOUND);
        assert_loopback(mock.url());
        let cluster = Cluster::start(extra_conf);
        let mut db = cluster.client();
        db.batch_execute(SCHEMA)
            .unwrap_or_else(|e| panic!("schema: {}", error_text(&e)));
        db.execute(
            "SELECT etlify.register_crm('hubspot', 'hubspot', \
             config => jsonb_build_object('base_url', $1::text), secret => $2)",
            &[&mock.url(), &SECRET],
        )
        .unwrap_or_else(|e| panic!("register_crm: {}", error_text(&e)));
        Bench { db, mock, cluster }
    }

    pub fn exec(&mut self, sql: &str) {
        self.db
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    }

    pub fn count(&mut self, sql: &str) -> i64 {
        self.db
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
            .get(0)
    }

    pub fn show(&mut self, setting: &str) -> String {
        self.db
            .query_one("SELECT current_setting($1)", &[&setting])
            .unwrap_or_else(|e| panic!("current_setting({setting}): {}", error_text(&e)))
            .get(0)
    }

    /// `ALTER SYSTEM SET name = value` for each pair, one reload, and a wait until this
    /// session sees every new value (the postmaster forwards SIGHUP to every process,
    /// the worker included). ALTER SYSTEM refuses transaction blocks: one call each.
    pub fn set_system(&mut self, settings: &[(&str, &str)]) {
        for (name, value) in settings {
            self.exec(&format!("ALTER SYSTEM SET {name} = '{value}'"));
        }
        self.exec("SELECT pg_reload_conf()");
        let what = format!("settings {settings:?} in effect");
        wait_for_every(
            Duration::from_secs(20),
            Duration::from_millis(5),
            &what,
            || {
                interrupt::check();
                settings
                    .iter()
                    .all(|(name, value)| normalized(&self.show(name)) == normalized(value))
                    .then_some(())
            },
        );
    }

    /// `etlify.enabled` on or off. Off waits a little longer: the worker must have
    /// read the new value (it wakes on SIGHUP) before the caller enqueues anything.
    pub fn set_worker(&mut self, on: bool) {
        self.set_system(&[("etlify.enabled", if on { "on" } else { "off" })]);
        if !on {
            interrupt::sleep(Duration::from_millis(300));
        }
    }

    /// Fills `table` with rows 1..=n (`user{i}@example.com`, `First{i}`, `Last{i}`).
    pub fn fill(&mut self, table: &str, n: i64) {
        self.db
            .execute(
                &format!(
                    "INSERT INTO {table} (email, first_name, last_name) \
                     SELECT 'user' || i || '@example.com', 'First' || i, 'Last' || i \
                     FROM generate_series(1, $1::bigint) AS i"
                ),
                &[&n],
            )
            .unwrap_or_else(|e| panic!("fill {table}: {}", error_text(&e)));
    }

    /// Records waiting (pending, failed or in flight, including writers' change rows
    /// not absorbed yet): 0 when drained.
    pub fn queued(&mut self) -> i64 {
        self.count("SELECT count(*) FROM etlify._pending")
    }

    pub fn mock_contacts(&self) -> i64 {
        self.mock.stats()["objects"]["contacts"]
            .as_i64()
            .unwrap_or(0)
    }

    pub fn mock_requests(&self) -> i64 {
        self.mock.stats()["requests"].as_i64().unwrap_or(0)
    }
}

/// `on`/`true`/`1` are one value to Postgres; compare them as such.
fn normalized(v: &str) -> String {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => "on".into(),
        "false" | "0" | "no" => "off".into(),
        other => other.into(),
    }
}

/// The benchmark only ever talks to processes it started on this machine.
pub fn assert_loopback(url: &str) {
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "refusing a non-loopback mock address: {url}"
    );
}
