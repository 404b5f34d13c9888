//! SQL fixtures and small query helpers shared by the tests, the demo and the benchmark.

use std::collections::BTreeMap;

use postgres::{Client, GenericClient};

use crate::Mock;

/// A `users` table and its HubSpot contact serializer. The payload leaves out NULL
/// properties, so a user without an email has a payload without the id property.
pub const USERS: &str = r#"
CREATE TABLE users (
    id         bigint PRIMARY KEY,
    email      text,
    first_name text,
    last_name  text,
    active     boolean NOT NULL DEFAULT true,
    note       text
);
CREATE FUNCTION user_payload(u users) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'email', u.email, 'firstname', u.first_name, 'lastname', u.last_name))
$$;
"#;

/// The email of test user `i`.
pub fn email(i: i64) -> String {
    format!("user{i}@example.com")
}

/// The access token [`crate::Env`] starts the mock with and registers CRMs with.
pub const TOKEN: &str = "e2e-token";

/// `etlify.register_crm(name, 'hubspot', config => {"base_url": mock}, secret =>
/// TOKEN, ...opts)`; `opts` is appended to the argument list, e.g.
/// `", max_sync_errors => 2"` (when it names a `secret`, that one is used instead).
pub fn register_crm(db: &mut Client, name: &str, mock: &Mock, opts: &str) {
    let secret = if opts.contains("secret") {
        String::new()
    } else {
        format!(", secret => '{TOKEN}'")
    };
    let sql = format!(
        "SELECT etlify.register_crm($1, 'hubspot', config => jsonb_build_object('base_url', $2::text){secret}{opts})"
    );
    db.execute(&sql, &[&name, &mock.url()])
        .unwrap_or_else(|e| panic!("register_crm {name}: {}", error_text(&e)));
}

/// Registers `hubspot` again on `mock` with the client timeout `timeout_ms` (its
/// secret kept): an unanswered upsert is looked up 2 × timeout + 5 s after it.
pub fn register_with_timeout(db: &mut Client, mock: &Mock, timeout_ms: u32) {
    db.execute(
        "SELECT etlify.register_crm('hubspot', 'hubspot',
             config => jsonb_build_object('base_url', $1::text, 'timeout_ms', $2::int))",
        &[&mock.url(), &(timeout_ms as i32)],
    )
    .unwrap_or_else(|e| panic!("register_crm hubspot: {}", error_text(&e)));
}

/// `etlify.sync_table('hubspot', 'users', 'contacts', 'email', 'user_payload' ...opts)`.
pub fn map_users(db: &mut Client, opts: &str) {
    let sql = format!(
        "SELECT etlify.sync_table('hubspot', 'users', 'contacts', 'email', 'user_payload'{opts})"
    );
    db.batch_execute(&sql)
        .unwrap_or_else(|e| panic!("sync_table users: {}", error_text(&e)));
}

/// Inserts users `ids` (email `user{i}@example.com`, first name `First{i}`) in one statement.
pub fn insert_users(db: &mut impl GenericClient, ids: impl IntoIterator<Item = i64>) {
    let ids: Vec<i64> = ids.into_iter().collect();
    db.execute(
        "INSERT INTO users (id, email, first_name, last_name)
         SELECT i, 'user' || i || '@example.com', 'First' || i, 'Last' || i
         FROM unnest($1::bigint[]) AS i",
        &[&ids],
    )
    .expect("insert users");
}

/// Message, detail and hint of a database error (or the error's text).
pub fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s += &format!(" DETAIL: {d}");
            }
            if let Some(h) = db.hint() {
                s += &format!(" HINT: {h}");
            }
            s
        }
        None => e.to_string(),
    }
}

/// One row of `etlify.sync_status`, with everything as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub crm: String,
    pub key: String,
    pub state: String,
    pub crm_id: Option<String>,
    pub last_synced_at: Option<String>,
    pub error_count: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<String>,
}

const STATUS_SELECT: &str = "SELECT crm::text, key::text, state::text, crm_id::text, \
     last_synced_at::text, coalesce(error_count, 0)::bigint, last_error::text, next_attempt_at::text \
     FROM etlify.sync_status";

fn to_status(r: &postgres::Row) -> Status {
    Status {
        crm: r.get(0),
        key: r.get(1),
        state: r.get(2),
        crm_id: r.get(3),
        last_synced_at: r.get(4),
        error_count: r.get(5),
        last_error: r.get(6),
        next_attempt_at: r.get(7),
    }
}

/// The `etlify.sync_status` row of (`crm`, `source`, `key`), if any.
pub fn status_of(db: &mut Client, crm: &str, source: &str, key: &str) -> Option<Status> {
    let sql = format!(
        "{STATUS_SELECT} WHERE crm::text = $1 AND source = $2::text::regclass AND key::text = $3"
    );
    let rows = db
        .query(&sql, &[&crm, &source, &key])
        .unwrap_or_else(|e| panic!("query sync_status: {}", error_text(&e)));
    assert!(
        rows.len() <= 1,
        "several sync_status rows for {crm}/{source}/{key}"
    );
    rows.first().map(to_status)
}

/// `status_of(db, "hubspot", "users", key)`.
pub fn user_status(db: &mut Client, key: i64) -> Option<Status> {
    status_of(db, "hubspot", "users", &key.to_string())
}

/// Every `etlify.sync_status` row of `source` for `crm`, by key.
pub fn statuses(db: &mut Client, crm: &str, source: &str) -> BTreeMap<String, Status> {
    let sql = format!("{STATUS_SELECT} WHERE crm::text = $1 AND source = $2::text::regclass");
    db.query(&sql, &[&crm, &source])
        .unwrap_or_else(|e| panic!("query sync_status: {}", error_text(&e)))
        .iter()
        .map(|r| {
            let s = to_status(r);
            (s.key.clone(), s)
        })
        .collect()
}

/// key → state for `hubspot`/`users`.
pub fn user_states(db: &mut Client) -> BTreeMap<String, String> {
    statuses(db, "hubspot", "users")
        .into_iter()
        .map(|(k, s)| (k, s.state))
        .collect()
}

/// A single scalar as text (NULL → None).
pub fn scalar(db: &mut Client, sql: &str) -> Option<String> {
    let wrapped = format!("SELECT ({sql})::text");
    db.query_one(&wrapped, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
        .get(0)
}

/// A jsonb result (e.g. of `etlify.drain()`) as a `serde_json::Value`.
pub fn json(db: &mut Client, sql: &str) -> serde_json::Value {
    let text = scalar(db, sql).unwrap_or_else(|| panic!("{sql} returned NULL"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sql} returned {text}: {e}"))
}

/// A fingerprint of everything etlify has installed: the contents of every table in
/// schema `etlify`, every non-internal trigger in the database and every function
/// and view in schema `etlify`. Used to prove a failed declaration changed nothing.
pub fn etlify_snapshot(db: &mut Client) -> BTreeMap<String, String> {
    let mut snap = BTreeMap::new();
    let tables: Vec<String> = db
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'etlify' AND c.relkind IN ('r', 'p') ORDER BY 1",
            &[],
        )
        .expect("list etlify tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in tables {
        let sql = format!(
            "SELECT count(*)::text || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x"
        );
        let v: String = db
            .query_one(&sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
            .get(0);
        snap.insert(format!("table {t}"), v);
    }
    for r in db
        .query(
            "SELECT tgrelid::regclass::text || '.' || tgname, tgenabled::text FROM pg_trigger
             WHERE NOT tgisinternal ORDER BY 1",
            &[],
        )
        .expect("list triggers")
    {
        snap.insert(format!("trigger {}", r.get::<_, String>(0)), r.get(1));
    }
    for r in db
        .query(
            "SELECT p.oid::regprocedure::text, md5(p.prosrc) FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .expect("list functions")
    {
        snap.insert(format!("function {}", r.get::<_, String>(0)), r.get(1));
    }
    for r in db
        .query(
            "SELECT c.oid::regclass::text, c.relkind::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
               AND c.relkind IN ('r', 'v', 'm', 'p', 'f') ORDER BY 1",
            &[],
        )
        .expect("list relations")
    {
        snap.insert(format!("relation {}", r.get::<_, String>(0)), r.get(1));
    }
    snap
}

/// Records of `crm` in state `pending` (changed, not yet sent).
pub fn pending_count(db: &mut Client, crm: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM etlify.sync_status WHERE crm::text = $1 AND state = 'pending'",
        &[&crm],
    )
    .unwrap_or_else(|e| panic!("count pending: {}", error_text(&e)))
    .get(0)
}

/// The `etlify.overview` row of (`crm`, `source`) as JSON (`null` if there is none).
pub fn overview(db: &mut Client, crm: &str, source: &str) -> serde_json::Value {
    let row = db
        .query_opt(
            "SELECT row_to_json(o)::text FROM etlify.overview o
             WHERE o.crm::text = $1 AND o.source::text = $2",
            &[&crm, &source],
        )
        .unwrap_or_else(|e| panic!("query overview: {}", error_text(&e)));
    match row {
        Some(r) => serde_json::from_str(&r.get::<_, String>(0)).expect("overview json"),
        None => serde_json::Value::Null,
    }
}

/// Waits until every record of `hubspot`/`users` in `keys` is in `state`; returns
/// their statuses.
pub fn wait_users_state(db: &mut Client, keys: &[i64], state: &str) -> BTreeMap<String, Status> {
    let what = format!("users {keys:?} in state {state}");
    crate::wait_for_default(&what, || {
        let all = statuses(db, "hubspot", "users");
        keys.iter()
            .all(|k| all.get(&k.to_string()).is_some_and(|s| s.state == state))
            .then_some(all)
    })
}
