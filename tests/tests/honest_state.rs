//! Honest state (issue 10): the views answer from the same truth the worker acts
//! on, and never hide why a record is not in the CRM.

use etlify_e2e::fixtures::{
    insert_users, map_users, overview, scalar, user_status, wait_users_state,
};
use etlify_e2e::{wait_for_default, Env};
use serde_json::{json, Value};

/// 7. overview: oldest_pending_at only for records that are pending; a deleted
///    count; sync_log durations without float noise; a pending record whose CRM
///    cannot take it says why.
#[test]
fn views_say_what_the_worker_sees() {
    let mut env = Env::start("", ", max_sync_errors => 1");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=3);
    wait_users_state(&mut env.db, &[1, 2, 3], "synced");
    env.db
        .batch_execute("DELETE FROM users WHERE id = 3")
        .unwrap();
    wait_users_state(&mut env.db, &[3], "deleted");
    // a record whose payload lacks the id property: parked at once (max_sync_errors 1)
    env.db
        .batch_execute("UPDATE users SET email = NULL WHERE id = 2")
        .unwrap();
    wait_users_state(&mut env.db, &[2], "parked");
    let o = overview(&mut env.db, "hubspot", "users");
    assert_eq!(o["parked"], json!(1), "{o}");
    assert_eq!(o["pending"], json!(0), "{o}");
    assert_eq!(o["deleted"], json!(1), "{o}");
    assert_eq!(o["oldest_pending_at"], Value::Null, "{o}");

    let noisy = scalar(
        &mut env.db,
        "SELECT count(*) FROM etlify.sync_log WHERE duration_ms <> round(duration_ms::numeric, 3)",
    );
    assert_eq!(noisy.as_deref(), Some("0"));

    // the CRM asks to slow down (429, Retry-After 60 s): pending, and last_error
    // says why, without counting against the record
    env.mock
        .set_faults(json!({"fail_next": [{"status": 429, "retry_after": 60}]}));
    env.db
        .batch_execute("UPDATE users SET first_name = 'Waiting' WHERE id = 1")
        .unwrap();
    let s = wait_for_default("record 1 pending with a reason", || {
        user_status(&mut env.db, 1).filter(|s| s.state == "pending" && s.last_error.is_some())
    });
    assert_eq!(s.error_count, 0, "{s:?}");
    let o = overview(&mut env.db, "hubspot", "users");
    assert!(o["oldest_pending_at"].is_string(), "{o}");
}
