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

fn last_name_in_crm(mock: &etlify_e2e::Mock, id: i64) -> Option<String> {
    mock.find("contacts", "email", &etlify_e2e::fixtures::email(id))
        .and_then(|o| o["properties"]["lastname"].as_str().map(str::to_string))
}

fn one(db: &mut postgres::Client, sql: &str) -> String {
    db.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", etlify_e2e::fixtures::error_text(&e)))
        .get(0)
}

/// 5. An inline send inside a transaction that rolls back: the CRM keeps what was
///    sent, so the record must become dirty again and the row as it is must be sent
///    (it used to answer not_modified forever). With the worker: sync() in a
///    transaction that changed the row runs inline.
#[test]
fn a_rolled_back_inline_sync_is_sent_again() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=2);
    wait_users_state(&mut env.db, &[1, 2], "synced");
    assert_eq!(last_name_in_crm(&env.mock, 1).as_deref(), Some("Last1"));

    let mut tx = env.db.transaction().unwrap();
    tx.batch_execute("UPDATE users SET last_name = 'RolledBack' WHERE id = 1")
        .unwrap();
    let v: String = tx
        .query_one("SELECT etlify.sync('hubspot', 'users', '1')", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "synced");
    assert_eq!(
        last_name_in_crm(&env.mock, 1).as_deref(),
        Some("RolledBack")
    );
    tx.rollback().unwrap();

    // the worker puts the row as it is back, by itself
    wait_for_default("the rolled-back value replaced in the CRM", || {
        (last_name_in_crm(&env.mock, 1).as_deref() == Some("Last1")).then_some(())
    });
    wait_users_state(&mut env.db, &[1], "synced");

    // a committed inline sync is not sent twice
    let before = env.mock.crm_requests().len();
    let mut tx = env.db.transaction().unwrap();
    tx.batch_execute("UPDATE users SET last_name = 'Kept' WHERE id = 2")
        .unwrap();
    let v: String = tx
        .query_one("SELECT etlify.sync('hubspot', 'users', '2')", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "synced");
    tx.commit().unwrap();
    assert_eq!(
        one(&mut env.db, "SELECT etlify.sync('hubspot', 'users', '2')"),
        "not_modified"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(env.mock.crm_requests().len(), before + 1);
    assert_eq!(
        scalar(&mut env.db, "SELECT count(*) FROM etlify.inline_sends").as_deref(),
        Some("0")
    );
}

/// 5, without the worker: drain() in a transaction (or a savepoint) that rolls
/// back, and an error after the send inside the same statement.
#[test]
fn a_rolled_back_inline_drain_is_sent_again() {
    let mut env = Env::start_without_worker("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=3);
    one(&mut env.db, "SELECT etlify.drain()::text");
    assert_eq!(last_name_in_crm(&env.mock, 1).as_deref(), Some("Last1"));

    // a whole transaction
    env.db
        .batch_execute(
            "BEGIN; UPDATE users SET last_name = 'RB' WHERE id = 1; SELECT etlify.drain(); ROLLBACK;",
        )
        .unwrap();
    assert_eq!(last_name_in_crm(&env.mock, 1).as_deref(), Some("RB"));
    assert_eq!(
        one(&mut env.db, "SELECT etlify.sync('hubspot', 'users', '1')"),
        "synced"
    );
    assert_eq!(last_name_in_crm(&env.mock, 1).as_deref(), Some("Last1"));

    // a savepoint rolled back inside a transaction that commits
    env.db
        .batch_execute(
            "BEGIN; UPDATE users SET first_name = 'Kept' WHERE id = 3;
             SAVEPOINT s; UPDATE users SET last_name = 'RB' WHERE id = 2; SELECT etlify.drain();
             ROLLBACK TO s; COMMIT;",
        )
        .unwrap();
    assert_eq!(last_name_in_crm(&env.mock, 2).as_deref(), Some("RB"));
    let counts = one(&mut env.db, "SELECT etlify.drain()::text");
    let counts: Value = serde_json::from_str(&counts).unwrap();
    assert_eq!(
        last_name_in_crm(&env.mock, 2).as_deref(),
        Some("Last2"),
        "{counts}"
    );
    let first = env
        .mock
        .find("contacts", "email", &etlify_e2e::fixtures::email(3))
        .and_then(|o| o["properties"]["firstname"].as_str().map(str::to_string));
    assert_eq!(first.as_deref(), Some("Kept"));

    // the statement that sent fails afterwards
    env.db
        .batch_execute("UPDATE users SET last_name = 'Failed' WHERE id = 3")
        .unwrap();
    let e = env
        .db
        .batch_execute(
            "BEGIN; UPDATE users SET last_name = 'Lost' WHERE id = 3;
             SELECT etlify.drain(), 1 / (random() * 0)::int; COMMIT;",
        )
        .unwrap_err();
    assert!(etlify_e2e::fixtures::error_text(&e).contains("division by zero"));
    env.db.batch_execute("ROLLBACK").unwrap();
    assert_eq!(last_name_in_crm(&env.mock, 3).as_deref(), Some("Lost"));
    one(&mut env.db, "SELECT etlify.drain()::text");
    assert_eq!(last_name_in_crm(&env.mock, 3).as_deref(), Some("Failed"));
    // the note of that committed send goes with the next drain, which sends nothing
    let before = env.mock.crm_requests().len();
    one(&mut env.db, "SELECT etlify.drain()::text");
    assert_eq!(env.mock.crm_requests().len(), before);
    assert_eq!(
        scalar(&mut env.db, "SELECT count(*) FROM etlify.inline_sends").as_deref(),
        Some("0")
    );
}

/// 9. Behaviour the README documents: a row that stops matching sync_if keeps its
///    CRM object (skipped, crm_id kept); sync() on a parked record sends it and
///    un-parks it; sync_log is newest first.
#[test]
fn documented_behaviour_holds() {
    let mut env = Env::start("", ", max_sync_errors => 1");
    map_users(&mut env.db, ", sync_if => 'active'");
    insert_users(&mut env.db, 1..=2);
    let synced = wait_users_state(&mut env.db, &[1, 2], "synced");
    env.db
        .batch_execute("UPDATE users SET active = false WHERE id = 1")
        .unwrap();
    let s = wait_users_state(&mut env.db, &[1], "skipped");
    assert_eq!(s["1"].crm_id, synced["1"].crm_id, "{s:?}");
    assert!(env.mock.archived("contacts").is_empty());
    assert!(last_name_in_crm(&env.mock, 1).is_some());
    env.db
        .batch_execute("UPDATE users SET active = true, last_name = 'Back' WHERE id = 1")
        .unwrap();
    let s = wait_users_state(&mut env.db, &[1], "synced");
    assert_eq!(s["1"].crm_id, synced["1"].crm_id, "{s:?}");
    assert_eq!(last_name_in_crm(&env.mock, 1).as_deref(), Some("Back"));
    assert_eq!(env.mock.objects("contacts").len(), 2);

    // parked (no email: the payload lacks the id property), then the row is fixed:
    // it stays parked until sync() sends it
    env.db
        .batch_execute("UPDATE users SET email = NULL WHERE id = 2")
        .unwrap();
    wait_users_state(&mut env.db, &[2], "parked");
    env.db
        .batch_execute(
            "UPDATE users SET email = 'user2@example.com', last_name = 'Fixed' WHERE id = 2",
        )
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(user_status(&mut env.db, 2).unwrap().state, "parked");
    assert_eq!(
        one(&mut env.db, "SELECT etlify.sync('hubspot', 'users', '2')"),
        "synced"
    );
    let s = user_status(&mut env.db, 2).unwrap();
    assert_eq!((s.state.as_str(), s.error_count), ("synced", 0), "{s:?}");
    assert_eq!(last_name_in_crm(&env.mock, 2).as_deref(), Some("Fixed"));

    let newest_first = scalar(
        &mut env.db,
        "SELECT bool_and(at >= next_at) FROM (SELECT at, lead(at) OVER () AS next_at FROM etlify.sync_log) l WHERE next_at IS NOT NULL",
    );
    assert_eq!(newest_first.as_deref(), Some("true"));
}

/// 2. A serializer that reads another table by an unqualified name, in a schema
///    that only the declaring session's search_path names: sync_table accepts it,
///    and the worker and an inline sync() both resolve it with that recorded path.
#[test]
fn serializers_resolve_names_with_the_search_path_of_their_declaration() {
    let mut env = Env::start("", "");
    env.db
        .batch_execute(
            r#"
            CREATE SCHEMA crm_app;
            SET search_path = crm_app, public;
            CREATE TABLE teams (id bigint PRIMARY KEY, name text NOT NULL);
            CREATE TABLE members (id bigint PRIMARY KEY, email text NOT NULL, team_id bigint REFERENCES teams, note text);
            CREATE FUNCTION member_payload(m members) RETURNS jsonb LANGUAGE sql STABLE AS $$
                SELECT jsonb_build_object('email', m.email, 'company', t.name)
                  FROM teams t WHERE t.id = m.team_id
            $$;
            INSERT INTO teams VALUES (1, 'Blue');
            SELECT etlify.sync_table('hubspot', 'members', 'contacts', 'email', 'member_payload');
            RESET search_path;
            INSERT INTO crm_app.members VALUES (1, 'm1@x.test', 1);
            "#,
        )
        .unwrap();
    let company = |env: &Env| {
        env.mock
            .find("contacts", "email", "m1@x.test")
            .and_then(|o| o["properties"]["company"].as_str().map(str::to_string))
    };
    wait_for_default("the worker's send", || {
        (company(&env).as_deref() == Some("Blue")).then_some(())
    });
    // inline: a transaction that changed the row runs sync() itself
    let mut tx = env.db.transaction().unwrap();
    tx.batch_execute(
        "UPDATE crm_app.teams SET name = 'Green'; UPDATE crm_app.members SET note = 'moved'",
    )
    .unwrap();
    let v: String = tx
        .query_one("SELECT etlify.sync('hubspot', 'crm_app.members', '1')", &[])
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert_eq!(v, "synced");
    assert_eq!(company(&env).as_deref(), Some("Green"));
}

/// 5, the edges of the note: a transaction that created the extension itself
/// drains inline (nobody else could see a note; a rollback takes every record with
/// it), and a lock the sender holds on the notes makes drain() fail, not hang.
#[test]
fn inline_notes_never_wait_on_their_own_sender() {
    let mock = etlify_e2e::Mock::start(&["--token", etlify_e2e::fixtures::TOKEN]);
    let cluster = etlify_e2e::Cluster::start_without_preload("");
    let mut db = cluster.client();
    db.batch_execute(etlify_e2e::fixtures::USERS).unwrap();
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("CREATE EXTENSION etlify").unwrap();
    tx.execute(
        "SELECT etlify.register_crm('hubspot', 'hubspot', config => jsonb_build_object('base_url', $1::text), secret => $2)",
        &[&mock.url(), &etlify_e2e::fixtures::TOKEN],
    )
    .unwrap();
    tx.batch_execute(
        "SELECT etlify.sync_table('hubspot', 'users', 'contacts', 'email', 'user_payload');
         INSERT INTO users (id, email) VALUES (1, 'new@x.test');
         SELECT etlify.drain();",
    )
    .unwrap();
    tx.commit().unwrap();
    assert!(mock.find("contacts", "email", "new@x.test").is_some());

    db.batch_execute("UPDATE users SET last_name = 'Locked' WHERE id = 1")
        .unwrap();
    let started = std::time::Instant::now();
    let e = db
        .batch_execute("BEGIN; LOCK TABLE etlify.inline_sends; SELECT etlify.drain();")
        .unwrap_err();
    db.batch_execute("ROLLBACK").unwrap();
    assert!(
        etlify_e2e::fixtures::error_text(&e).contains("cannot note an inline send"),
        "{}",
        etlify_e2e::fixtures::error_text(&e)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(
        mock.find("contacts", "email", "new@x.test")
            .and_then(|o| o["properties"]["lastname"].as_str().map(str::to_string)),
        None,
        "nothing was sent"
    );
}

/// 5: a row inserted and sent by drain() in a transaction that rolls back: the
/// contact that send made has no row, and is archived once the request has
/// surely landed (looked up by the email it was sent; the rollback took the id).
#[test]
fn a_rolled_back_inline_insert_leaves_no_contact() {
    let mut env = Env::start_without_worker("", "");
    // the look-up waits twice the client's timeout plus 5 s
    etlify_e2e::fixtures::register_with_timeout(&mut env.db, &env.mock, 500);
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    env.db
        .batch_execute(
            "BEGIN; INSERT INTO users (id, email) VALUES (2, 'rolled@example.com');
             SELECT etlify.drain(); ROLLBACK;",
        )
        .unwrap();
    assert!(env
        .mock
        .find("contacts", "email", "rolled@example.com")
        .is_some());
    // the next drain finds the record too early to look it up, the one after 6 s does
    one(&mut env.db, "SELECT etlify.drain()::text");
    assert!(env
        .mock
        .find("contacts", "email", "rolled@example.com")
        .is_some());
    std::thread::sleep(std::time::Duration::from_secs(6));
    one(&mut env.db, "SELECT etlify.drain()::text");
    assert!(
        env.mock
            .find("contacts", "email", "rolled@example.com")
            .is_none(),
        "the rolled-back row's contact is still live"
    );
    let archived = env.mock.archived("contacts");
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert_eq!(
        etlify_e2e::exact::users_differences(&mut env.db, &env.mock),
        Vec::<String>::new()
    );
}
