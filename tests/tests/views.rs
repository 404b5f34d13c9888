//! The views: their columns (the contract), every state a record can be in, the
//! overview's counts, the request log; and secrets, which no view shows and no
//! non-superuser can read.

use etlify_e2e::fixtures::{
    email, error_text, insert_users, json, map_users, overview, scalar, user_status,
    wait_users_state,
};
use etlify_e2e::{wait_for_default, Env, Mock};
use serde_json::json;

fn columns(db: &mut postgres::Client, view: &str) -> Vec<String> {
    db.query(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        &[&view],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn views_have_the_contract_columns() {
    let mut env = Env::start("", "");
    assert_eq!(
        columns(&mut env.db, "etlify.sync_status"),
        [
            "crm",
            "source",
            "key",
            "state",
            "crm_id",
            "last_synced_at",
            "error_count",
            "last_error",
            "next_attempt_at"
        ]
    );
    assert_eq!(
        columns(&mut env.db, "etlify.overview"),
        [
            "crm",
            "source",
            "synced",
            "pending",
            "buffered",
            "failed",
            "parked",
            "skipped",
            "oldest_pending_at",
            "last_synced_at",
            // etlify's addition to the contract's columns
            "deleted"
        ]
    );
    assert_eq!(
        columns(&mut env.db, "etlify.sync_log"),
        [
            "at",
            "crm",
            "source",
            "operation",
            "records",
            "http_status",
            "duration_ms",
            "error"
        ]
    );
    let source_type = scalar(
        &mut env.db,
        "SELECT atttypid::regtype FROM pg_attribute
         WHERE attrelid = 'etlify.sync_status'::regclass AND attname = 'source'",
    );
    assert_eq!(source_type.as_deref(), Some("regclass"));
}

#[test]
fn sync_status_overview_and_sync_log_show_every_state() {
    // the worker idles (etlify.enabled = off): etlify.drain() decides when things are sent
    let mut env = Env::start("etlify.enabled = off", ", max_sync_errors => 2");
    map_users(&mut env.db, ", sync_if => 'active'");
    insert_users(&mut env.db, 1..=6);
    env.db
        .execute("UPDATE users SET active = false WHERE id = 2", &[])
        .unwrap();
    let o = overview(&mut env.db, "hubspot", "users");
    assert_eq!(o["pending"], json!(6), "{o}");
    assert!(!o["oldest_pending_at"].is_null(), "{o}");

    // round 1: user 4 is refused by the CRM
    env.mock
        .set_faults(json!({ "fail_ids": { email(4): "rejected four" } }));
    let r = json(&mut env.db, "etlify.drain()");
    assert_eq!(
        (
            r["synced"].clone(),
            r["skipped"].clone(),
            r["failed"].clone()
        ),
        (json!(4), json!(1), json!(1)),
        "{r}"
    );
    let s4 = user_status(&mut env.db, 4).unwrap();
    assert_eq!(
        (s4.state.as_str(), s4.error_count),
        ("failed", 1),
        "{:#?}",
        etlify_e2e::fixtures::statuses(&mut env.db, "hubspot", "users")
    );
    assert!(
        s4.next_attempt_at.is_some(),
        "a failed record has a next attempt: {s4:?}"
    );
    assert!(
        s4.last_error
            .as_deref()
            .unwrap_or("")
            .contains("rejected four"),
        "{s4:?}"
    );
    let crm_id3 = user_status(&mut env.db, 3)
        .unwrap()
        .crm_id
        .expect("user 3 synced");

    // round 2: user 3 changes and is refused too (by email or by its CRM id), user 4
    // fails again and is parked, user 5 is deleted
    env.db
        .execute("UPDATE users SET first_name = 'Changed' WHERE id = 3", &[])
        .unwrap();
    env.db
        .execute("DELETE FROM users WHERE id = 5", &[])
        .unwrap();
    env.mock.set_faults(json!({ "fail_ids": {
        email(4): "rejected four", email(3): "rejected three", crm_id3.clone(): "rejected three"
    } }));
    wait_for_default("user 4's next attempt to come due", || {
        let due = scalar(
            &mut env.db,
            "SELECT next_attempt_at <= now() FROM etlify.sync_status WHERE key = '4'",
        );
        (due.as_deref() == Some("true")).then_some(())
    });
    let r = json(&mut env.db, "etlify.drain()");
    assert_eq!(
        (
            r["failed"].clone(),
            r["deleted"].clone(),
            r["synced"].clone()
        ),
        (json!(2), json!(1), json!(0)),
        "{r}"
    );

    // user 6 changes and is not drained
    env.db
        .execute("UPDATE users SET first_name = 'Later' WHERE id = 6", &[])
        .unwrap();

    let states = etlify_e2e::fixtures::user_states(&mut env.db);
    let expected: Vec<(&str, &str)> = vec![
        ("1", "synced"),
        ("2", "skipped"),
        ("3", "failed"),
        ("4", "parked"),
        ("5", "deleted"),
        ("6", "pending"),
    ];
    assert_eq!(
        states
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        expected
    );
    let s4 = user_status(&mut env.db, 4).unwrap();
    assert_eq!(s4.error_count, 2);
    assert!(s4.next_attempt_at.is_none(), "parked: no next attempt");
    let s3 = user_status(&mut env.db, 3).unwrap();
    assert_eq!(
        s3.crm_id.as_deref(),
        Some(crm_id3.as_str()),
        "a failed update keeps its crm_id"
    );
    assert!(
        s3.last_error
            .as_deref()
            .unwrap_or("")
            .contains("rejected three"),
        "{s3:?}"
    );
    assert!(user_status(&mut env.db, 1)
        .unwrap()
        .last_synced_at
        .is_some());

    let o = overview(&mut env.db, "hubspot", "users");
    for (k, n) in [
        ("synced", 1),
        ("pending", 1),
        ("buffered", 0),
        ("failed", 1),
        ("parked", 1),
        ("skipped", 1),
    ] {
        assert_eq!(o[k], json!(n), "overview.{k} in {o}");
    }
    assert!(
        !o["oldest_pending_at"].is_null() && !o["last_synced_at"].is_null(),
        "{o}"
    );

    // the request log: every request the drains made, newest first
    let log = env
        .db
        .query(
            "SELECT crm::text, source::text, operation::text, records::bigint, http_status::bigint,
                    duration_ms::float8, error::text
             FROM etlify.sync_log",
            &[],
        )
        .unwrap();
    let reqs = env.mock.crm_requests();
    assert_eq!(log.len(), reqs.len(), "one log row per request");
    let mut statuses = Vec::new();
    for row in &log {
        assert_eq!(row.get::<_, String>(0), "hubspot");
        assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("users"));
        assert!(!row.get::<_, String>(2).is_empty());
        assert!(row.get::<_, i64>(3) >= 1);
        assert!(row.get::<_, f64>(5) >= 0.0);
        statuses.push(row.get::<_, Option<i64>>(4));
    }
    let partial = log
        .iter()
        .filter(|r| {
            r.get::<_, Option<i64>>(4) == Some(207) || r.get::<_, Option<String>>(6).is_some()
        })
        .count();
    assert!(
        partial >= 2,
        "both partial failures are logged: {statuses:?}"
    );
}

#[test]
fn secret_is_not_readable_by_non_superusers_nor_shown_by_views() {
    let secret = "s3cr3t-t0ken-42";
    let mock = Mock::start(&["--token", secret]);
    let cluster = etlify_e2e::Cluster::start("");
    let mut db = cluster.client();
    db.batch_execute("CREATE EXTENSION etlify").unwrap();
    db.batch_execute(etlify_e2e::fixtures::USERS).unwrap();
    etlify_e2e::fixtures::register_crm(
        &mut db,
        "hubspot",
        &mock,
        &format!(", secret => '{secret}'"),
    );
    map_users(&mut db, "");
    insert_users(&mut db, [1]);
    // the token is used: the mock refuses requests without it
    wait_users_state(&mut db, &[1], "synced");
    assert!(mock.find("contacts", "email", &email(1)).is_some());

    // a monitoring role that may read the views
    db.batch_execute(
        "CREATE ROLE monitor LOGIN;
         GRANT USAGE ON SCHEMA etlify TO monitor;
         GRANT SELECT ON etlify.sync_status, etlify.overview, etlify.sync_log TO monitor;",
    )
    .unwrap();
    let relations: Vec<(String, String)> = db
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'etlify' AND c.relkind IN ('r', 'v', 'm', 'p') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(relations.iter().any(|(n, _)| n == "etlify.sync_status"));

    // no view shows it, even to a superuser
    for (rel, kind) in relations.iter().filter(|(_, k)| k == "v" || k == "m") {
        let n: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM {rel} x WHERE x::text LIKE '%' || $1 || '%'"),
                &[&secret],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "view {rel} ({kind}) shows the secret");
    }
    // a non-superuser reads no relation that holds it
    let mut monitor = cluster.connect_as("monitor");
    let mut readable = 0;
    for (rel, _) in &relations {
        match monitor.query(
            &format!("SELECT count(*) FROM {rel} x WHERE x::text LIKE '%' || $1 || '%'"),
            &[&secret],
        ) {
            Ok(rows) => {
                readable += 1;
                assert_eq!(
                    rows[0].get::<_, i64>(0),
                    0,
                    "{rel} shows monitor the secret"
                );
            }
            Err(e) => assert!(
                error_text(&e).contains("permission denied"),
                "{rel}: {}",
                error_text(&e)
            ),
        }
    }
    assert!(readable >= 3, "the granted views are readable");
    // nor any function body or setting
    let leaks: i64 = monitor
        .query_one(
            "SELECT (SELECT count(*) FROM pg_proc WHERE prosrc LIKE '%' || $1 || '%')
                  + (SELECT count(*) FROM pg_settings WHERE setting LIKE '%' || $1 || '%')",
            &[&secret],
        )
        .unwrap()
        .get(0);
    assert_eq!(leaks, 0);
    assert!(
        !cluster.log().contains(secret),
        "the server log shows the secret"
    );
    drop(monitor);
    drop(db);
    drop(cluster);
    drop(mock);
}
