//! The operation functions (sync, delete, enqueue, drain, sync_stale, unsync_table)
//! and their results; disabled CRMs; sync_if; the global switch; SIGHUP reload.

use std::time::Duration;

use etlify_e2e::fixtures::{
    email, error_text, insert_users, json, map_users, overview, pending_count, register_crm,
    scalar, statuses, user_status, wait_users_state,
};
use etlify_e2e::mock::id_of;
use etlify_e2e::{wait_for, wait_for_default, Env};
use serde_json::{json, Value};

const COUNTS: [&str; 9] = [
    "synced",
    "not_modified",
    "skipped",
    "deleted",
    "noop",
    "failed",
    "retry",
    "disabled",
    "buffered",
];

/// Asserts a drain result: every count named in `expected` has that value, every
/// other count is 0, and all nine counts are present.
fn assert_counts(result: &Value, expected: &[(&str, i64)]) {
    for k in COUNTS {
        let want = expected
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        assert_eq!(
            result.get(k).and_then(Value::as_i64),
            Some(want),
            "drain count {k:?} in {result}"
        );
    }
}

fn sync(env: &mut Env, key: &str) -> String {
    scalar(
        &mut env.db,
        &format!("etlify.sync('hubspot', 'users', '{key}')"),
    )
    .expect("sync result")
}

fn delete(env: &mut Env, key: &str) -> String {
    scalar(
        &mut env.db,
        &format!("etlify.delete('hubspot', 'users', '{key}')"),
    )
    .expect("delete result")
}

#[test]
fn drain_results_inline() {
    // the worker idles (etlify.enabled = off): etlify.drain() does its job inline
    let mut env = Env::start("etlify.enabled = off", "");
    insert_users(&mut env.db, 1..=2);
    map_users(&mut env.db, ""); // backfill: the existing rows are enqueued
    assert_eq!(pending_count(&mut env.db, "hubspot"), 2);
    assert!(env.mock.crm_requests().is_empty(), "the worker idles");

    assert_counts(&json(&mut env.db, "etlify.drain()"), &[("synced", 2)]);
    assert_eq!(env.mock.objects("contacts").len(), 2);
    wait_users_state(&mut env.db, &[1, 2], "synced");
    assert_counts(&json(&mut env.db, "etlify.drain()"), &[]);

    let before = env.mock.crm_requests().len();
    env.db
        .execute(
            "UPDATE users SET note = 'not in the payload' WHERE id = 1",
            &[],
        )
        .unwrap();
    assert_counts(&json(&mut env.db, "etlify.drain()"), &[("not_modified", 1)]);
    assert_eq!(
        env.mock.crm_requests().len(),
        before,
        "not_modified sends nothing"
    );

    env.db
        .execute("UPDATE users SET first_name = 'Changed' WHERE id = 2", &[])
        .unwrap();
    assert_counts(&json(&mut env.db, "etlify.drain()"), &[("synced", 1)]);
    assert_eq!(
        env.mock.find("contacts", "email", &email(2)).unwrap()["properties"]["firstname"],
        "Changed"
    );

    insert_users(&mut env.db, 3..=5);
    assert_counts(
        &json(&mut env.db, "etlify.drain(max_records => 2)"),
        &[("synced", 2)],
    );
    assert_eq!(pending_count(&mut env.db, "hubspot"), 1);
    assert_counts(
        &json(&mut env.db, "etlify.drain('hubspot')"),
        &[("synced", 1)],
    );
    assert_eq!(env.mock.objects("contacts").len(), 5);

    env.db
        .execute("DELETE FROM users WHERE id = 5", &[])
        .unwrap();
    assert_counts(&json(&mut env.db, "etlify.drain()"), &[("deleted", 1)]);
    assert_eq!(env.mock.archived("contacts").len(), 1);
    assert_eq!(user_status(&mut env.db, 5).unwrap().state, "deleted");
}

/// "Without the preload the extension still installs and records changes;
/// etlify.drain() does the worker's job inline."
#[test]
fn extension_works_without_the_preload() {
    let mut env = Env::start_without_worker("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=2);
    assert_eq!(
        pending_count(&mut env.db, "hubspot"),
        2,
        "changes are recorded"
    );
    assert!(env.cluster.worker_pid().is_none());
    assert_counts(&json(&mut env.db, "etlify.drain()"), &[("synced", 2)]);
    assert_eq!(env.mock.objects("contacts").len(), 2);
    wait_users_state(&mut env.db, &[1, 2], "synced");
    env.db
        .execute("UPDATE users SET first_name = 'Inline' WHERE id = 1", &[])
        .unwrap();
    assert_eq!(sync(&mut env, "1"), "synced");
    assert_eq!(
        env.mock.find("contacts", "email", &email(1)).unwrap()["properties"]["firstname"],
        "Inline"
    );
}

#[test]
fn sync_delete_and_enqueue_results_inline() {
    // the worker idles (etlify.enabled = off): sync/delete/drain run inline
    let mut env = Env::start("etlify.enabled = off", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);

    assert_eq!(sync(&mut env, "1"), "synced");
    let c = env
        .mock
        .find("contacts", "email", &email(1))
        .expect("sent at once");
    assert_eq!(user_status(&mut env.db, 1).unwrap().crm_id, id_of(&c));
    let requests = env.mock.crm_requests().len();
    assert_eq!(sync(&mut env, "1"), "not_modified");
    assert_eq!(
        env.mock.crm_requests().len(),
        requests,
        "not_modified sends nothing"
    );

    // enqueue: pending until drained; unchanged, so not_modified
    env.db
        .execute("SELECT etlify.enqueue('hubspot', 'users', '1')", &[])
        .unwrap();
    assert_eq!(user_status(&mut env.db, 1).unwrap().state, "pending");
    assert_counts(&json(&mut env.db, "etlify.drain()"), &[("not_modified", 1)]);
    assert_eq!(user_status(&mut env.db, 1).unwrap().state, "synced");

    // delete removes the CRM object now (the row stays); twice is a noop
    assert_eq!(delete(&mut env, "1"), "deleted");
    assert!(env.mock.objects("contacts").is_empty());
    assert_eq!(env.mock.archived("contacts").len(), 1);
    assert_eq!(user_status(&mut env.db, 1).unwrap().state, "deleted");
    assert_eq!(delete(&mut env, "1"), "noop");

    // the CRM no longer holds it: sync sends it again
    assert_eq!(sync(&mut env, "1"), "synced");
    assert_eq!(env.mock.objects("contacts").len(), 1);

    // a key without a row: nothing to send, nothing to delete
    assert_eq!(sync(&mut env, "999"), "noop");
    // the row is gone: sync deletes the CRM object
    env.db
        .execute("DELETE FROM users WHERE id = 1", &[])
        .unwrap();
    assert_eq!(sync(&mut env, "1"), "deleted");
    assert!(env.mock.objects("contacts").is_empty());

    // a malformed key is an error naming it
    let err = env
        .db
        .query_one(
            "SELECT etlify.sync('hubspot', 'users', 'not-a-number')",
            &[],
        )
        .expect_err("bad key");
    assert!(
        etlify_e2e::fixtures::error_text(&err).contains("not-a-number"),
        "{err}"
    );
}

/// A request the worker cannot serve (here: a mapping id that does not exist,
/// as when a mapping is removed after the request was queued) is answered
/// `failed` at once, and the worker goes on serving the next one.
#[test]
fn worker_answers_a_request_it_cannot_serve() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    // a guard: before the fix this call waited until cancelled
    env.db
        .batch_execute("SET statement_timeout = '10s'")
        .unwrap();
    let started = std::time::Instant::now();
    let r: String = env
        .db
        .query_one("SELECT etlify._sync_one(987654, '1', false)", &[])
        .expect("answered, not timed out")
        .get(0);
    assert_eq!(r, "failed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        env.cluster
            .log()
            .contains("mapping 987654 no longer exists"),
        "the worker logged why"
    );
    // the same worker still serves requests
    assert_eq!(sync(&mut env, "1"), "not_modified");
}

#[test]
fn sync_and_delete_wait_for_the_worker() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    let requests = env.mock.crm_requests().len();

    assert_eq!(sync(&mut env, "1"), "not_modified");
    assert_eq!(env.mock.crm_requests().len(), requests);
    assert_eq!(delete(&mut env, "1"), "deleted");
    assert!(
        env.mock.objects("contacts").is_empty(),
        "deleted before returning"
    );
    assert_eq!(delete(&mut env, "1"), "noop");
    assert_eq!(sync(&mut env, "1"), "synced");
    let c = env
        .mock
        .find("contacts", "email", &email(1))
        .expect("synced before returning");
    assert_eq!(user_status(&mut env.db, 1).unwrap().crm_id, id_of(&c));

    env.db
        .execute("UPDATE users SET first_name = 'Now' WHERE id = 1", &[])
        .unwrap();
    let r = sync(&mut env, "1");
    // the worker may have sent the change on its own just before
    assert!(r == "synced" || r == "not_modified", "{r}");
    assert_eq!(
        env.mock.find("contacts", "email", &email(1)).unwrap()["properties"]["firstname"],
        "Now"
    );
}

#[test]
fn disabled_crm_sends_nothing_inline() {
    let mut env = Env::start("etlify.enabled = off", ", enabled => false");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=2);
    // a disabled CRM is paused: nothing is sent, every change stays pending
    assert_counts(&json(&mut env.db, "etlify.drain()"), &[]);
    insert_users(&mut env.db, [3]);
    assert_eq!(sync(&mut env, "3"), "disabled");
    assert!(
        env.mock.crm_requests().is_empty(),
        "a disabled CRM is never called"
    );
    let st = statuses(&mut env.db, "hubspot", "users");
    assert_eq!(st.len(), 3, "{st:?}");
    assert!(
        st.values()
            .all(|s| s.state == "pending" && s.crm_id.is_none()),
        "every change is pending: {st:?}"
    );
    // enabled again: what waited goes out
    register_crm(&mut env.db, "hubspot", &env.mock, "");
    assert_counts(&json(&mut env.db, "etlify.drain()"), &[("synced", 3)]);
    assert_eq!(env.mock.objects("contacts").len(), 3);
}

#[test]
fn disabled_crm_sends_nothing_through_the_worker() {
    let mut env = Env::start("", "");
    // a second, disabled registration of the same mock, mapped to its own table
    register_crm(&mut env.db, "off", &env.mock, ", enabled => false");
    env.db
        .batch_execute(
            "CREATE TABLE leads (id int PRIMARY KEY, email text);
             CREATE FUNCTION lead_payload(l leads) RETURNS jsonb LANGUAGE sql
               AS $$ SELECT jsonb_build_object('email', l.email) $$;
             SELECT etlify.sync_table('off', 'leads', 'contacts', 'email', 'lead_payload');
             INSERT INTO leads SELECT i, 'lead' || i || '@example.com' FROM generate_series(1, 3) i;",
        )
        .unwrap();
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    // the disabled CRM's changes wait, pending
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pending_count(&mut env.db, "off"), 3);
    let contacts = env.mock.objects("contacts");
    assert_eq!(
        contacts.len(),
        1,
        "only the enabled CRM's record: {contacts:?}"
    );
    assert_eq!(env.mock.crm_inputs(), 1);
    // enabled again: they go out
    register_crm(&mut env.db, "off", &env.mock, "");
    wait_for_default("the paused changes sent", || {
        let st = statuses(&mut env.db, "off", "leads");
        (st.len() == 3
            && st
                .values()
                .all(|s| s.state == "synced" && s.crm_id.is_some()))
        .then_some(())
    });
    assert_eq!(env.mock.objects("contacts").len(), 4);
}

#[test]
fn sync_if_false_is_skipped() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, ", sync_if => 'active'");
    // one statement, one batch: skipped rows between sent ones
    env.db
        .batch_execute(
            "INSERT INTO users (id, email, first_name, active) VALUES
               (1, 'user1@example.com', 'Off1', false), (2, 'user2@example.com', 'On2', true),
               (3, 'user3@example.com', 'Off3', false), (4, 'user4@example.com', 'On4', true)",
        )
        .unwrap();
    wait_for_default("nothing pending", || {
        (pending_count(&mut env.db, "hubspot") == 0).then_some(())
    });
    let st = statuses(&mut env.db, "hubspot", "users");
    let states: Vec<(&str, &str)> = st
        .iter()
        .map(|(k, s)| (k.as_str(), s.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("1", "skipped"),
            ("2", "synced"),
            ("3", "skipped"),
            ("4", "synced")
        ],
        "{st:#?}"
    );
    let contacts = env.mock.objects("contacts");
    assert_eq!(contacts.len(), 2, "{contacts:?}");
    for i in [2, 4] {
        let c = env.mock.find("contacts", "email", &email(i)).expect("sent");
        assert_eq!(
            st[&i.to_string()].crm_id,
            id_of(&c),
            "user {i}'s crm_id: {st:#?}"
        );
    }
    assert!(
        st["1"].crm_id.is_none() && st["3"].crm_id.is_none(),
        "{st:#?}"
    );
    assert_eq!(env.mock.crm_inputs(), 2, "the skipped rows were never sent");
    assert_eq!(sync(&mut env, "1"), "skipped");
    assert_eq!(env.mock.crm_inputs(), 2);
    let o = overview(&mut env.db, "hubspot", "users");
    assert_eq!(
        (o["synced"].clone(), o["skipped"].clone()),
        (json!(2), json!(2)),
        "{o}"
    );

    env.db
        .execute("UPDATE users SET active = true WHERE id = 1", &[])
        .unwrap();
    let c = wait_for_default("user 1 in the CRM", || {
        env.mock.find("contacts", "email", &email(1))
    });
    let s = wait_users_state(&mut env.db, &[1], "synced");
    assert_eq!(s["1"].crm_id, id_of(&c));
}

#[test]
fn sync_stale_sends_what_backfill_false_left_out() {
    let mut env = Env::start("", "");
    insert_users(&mut env.db, 1..=3);
    map_users(&mut env.db, ", backfill => false");
    assert_eq!(
        pending_count(&mut env.db, "hubspot"),
        0,
        "backfill => false enqueues nothing"
    );
    assert!(statuses(&mut env.db, "hubspot", "users").is_empty());

    let r = json(&mut env.db, "etlify.sync_stale()");
    assert_eq!(r["total"], json!(3), "{r}");
    assert_eq!(r["per_model"]["users"], json!(3), "{r}");
    assert_eq!(r["errors"], json!(0), "{r}");
    wait_users_state(&mut env.db, &[1, 2, 3], "synced");
    assert_eq!(env.mock.objects("contacts").len(), 3);

    // a re-check of every record: nothing changed, so nothing is sent
    let requests = env.mock.crm_requests().len();
    let r = json(
        &mut env.db,
        "etlify.sync_stale('hubspot', ARRAY['users'::regclass], async => false)",
    );
    assert_eq!(r["total"], json!(3), "every record is re-checked: {r}");
    assert_eq!(r["per_model"]["users"], json!(0), "none differs: {r}");
    assert_eq!(
        pending_count(&mut env.db, "hubspot"),
        0,
        "nothing is enqueued"
    );
    assert_eq!(env.mock.crm_requests().len(), requests, "nothing was sent");
    // force: every record is sent again, whatever its digest
    let r = json(
        &mut env.db,
        "etlify.sync_stale('hubspot', async => false, force => true)",
    );
    assert_eq!(r["total"], json!(3), "{r}");
    assert_eq!(r["per_model"]["users"], json!(3), "{r}");
    assert!(env.mock.crm_requests().len() > requests, "force sends");
    assert_eq!(env.mock.objects("contacts").len(), 3);
}

#[test]
fn unsync_table_removes_triggers_and_state_and_sends_nothing() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    let requests = env.mock.crm_requests().len();

    env.db
        .execute("SELECT etlify.unsync_table('hubspot', 'users')", &[])
        .unwrap();
    let triggers: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'users'::regclass AND NOT tgisinternal",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
    assert!(statuses(&mut env.db, "hubspot", "users").is_empty());
    assert_eq!(overview(&mut env.db, "hubspot", "users"), Value::Null);
    insert_users(&mut env.db, [2]);
    env.db
        .execute("DELETE FROM users WHERE id = 1", &[])
        .unwrap();
    assert!(
        statuses(&mut env.db, "hubspot", "users").is_empty(),
        "nothing recorded"
    );
    assert_eq!(
        env.mock.crm_requests().len(),
        requests,
        "unsync sends nothing"
    );
    assert_eq!(
        env.mock.objects("contacts").len(),
        1,
        "the CRM object is left alone"
    );
}

#[test]
fn enabled_off_records_changes_and_on_sends_them() {
    let mut env = Env::start("etlify.enabled = off", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=3);
    let st = statuses(&mut env.db, "hubspot", "users");
    assert_eq!(st.len(), 3);
    assert!(st.values().all(|s| s.state == "pending"), "{st:?}");
    // No event says "the worker looked and did nothing": give it five naptimes.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(env.mock.crm_requests().is_empty(), "off: nothing is sent");
    assert_eq!(pending_count(&mut env.db, "hubspot"), 3);

    env.db
        .batch_execute("ALTER SYSTEM SET etlify.enabled = on")
        .unwrap();
    env.db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_users_state(&mut env.db, &[1, 2, 3], "synced");
    assert_eq!(env.mock.objects("contacts").len(), 3);
}

/// A change committed with two-phase commit, `COMMIT PREPARED` coming from another
/// session, does not wake the worker (the session that committed registered no commit
/// callback), so only the naptime brings it: this shows which naptime the worker uses.
#[test]
fn sighup_reloads_naptime() {
    let mut env = Env::start("etlify.naptime = '1h'\nmax_prepared_transactions = 4", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced"); // the worker is up and idle
    let mut other = env.cluster.client();

    let mut prepared_insert = |db: &mut postgres::Client, id: i64, gid: &str| {
        db.batch_execute("BEGIN").unwrap();
        insert_users(db, [id]);
        db.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
            .unwrap();
        other
            .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
            .unwrap();
    };

    prepared_insert(&mut env.db, 2, "tx2");
    std::thread::sleep(Duration::from_millis(1500));
    let woke_anyway = env.mock.find("contacts", "email", &email(2)).is_some();
    if woke_anyway {
        eprintln!("note: a 2PC commit woke the worker; naptime reload is only partly shown");
    }

    env.cluster.append_conf("etlify.naptime = '200ms'");
    env.cluster.reload();
    // the reload itself wakes the worker, which then finds user 2
    wait_users_state(&mut env.db, &[2], "synced");

    prepared_insert(&mut env.db, 3, "tx3");
    wait_for(
        Duration::from_secs(5),
        "user 3 within the new naptime",
        || env.mock.find("contacts", "email", &email(3)),
    );
    assert!(
        env.cluster.log().contains("received SIGHUP")
            || env
                .cluster
                .log()
                .contains("parameter \"etlify.naptime\" changed"),
        "the server reloaded its configuration"
    );
}

#[test]
fn registering_a_crm_again_updates_the_registration() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");

    // same name again, another endpoint
    let second = etlify_e2e::Mock::start(&["--token", etlify_e2e::fixtures::TOKEN]);
    register_crm(&mut env.db, "hubspot", &second, "");
    let crms: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM etlify.overview WHERE crm = 'hubspot'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(crms, 1, "still one mapping of one CRM");
    insert_users(&mut env.db, [2]);
    wait_users_state(&mut env.db, &[2], "synced");
    assert!(
        second.find("contacts", "email", &email(2)).is_some(),
        "sent to the new endpoint"
    );
    assert!(env.mock.find("contacts", "email", &email(2)).is_none());
    assert_eq!(
        env.mock.crm_inputs(),
        1,
        "the old endpoint got nothing more"
    );
}

#[test]
fn crm_id_gives_serializers_the_crm_id_of_another_record() {
    let mut env = Env::start("", "");
    // 'public.companies', qualified: etlify runs serializers with its own search_path
    // (pg_catalog, pg_temp), where an unqualified 'companies' does not resolve.
    env.db
        .batch_execute(
            "CREATE TABLE companies (id int PRIMARY KEY, domain text NOT NULL, name text);
             CREATE FUNCTION company_payload(c companies) RETURNS jsonb LANGUAGE sql STABLE AS $$
                 SELECT jsonb_build_object('domain', c.domain, 'name', c.name) $$;
             ALTER TABLE users ADD COLUMN company_id int REFERENCES companies;
             CREATE FUNCTION contact_with_company(u users) RETURNS jsonb LANGUAGE sql STABLE AS $$
                 SELECT jsonb_build_object('email', u.email, 'firstname', u.first_name,
                     'company_crm_id', etlify.crm_id('hubspot', 'public.companies', u.company_id::text)) $$;
             SELECT etlify.sync_table('hubspot', 'companies', 'companies', 'domain', 'company_payload');
             SELECT etlify.sync_table('hubspot', 'users', 'contacts', 'email', 'contact_with_company');
             INSERT INTO companies VALUES (7, 'acme.example', 'Acme');",
        )
        .unwrap();
    let st = wait_for_default("company 7 synced", || {
        etlify_e2e::fixtures::status_of(&mut env.db, "hubspot", "companies", "7")
            .filter(|s| s.state == "synced")
    });
    let company_id = st.crm_id.expect("company crm_id");
    let company = env
        .mock
        .find("companies", "domain", "acme.example")
        .expect("company sent");
    assert_eq!(id_of(&company).as_deref(), Some(company_id.as_str()));
    assert_eq!(
        scalar(&mut env.db, "etlify.crm_id('hubspot', 'companies', '7')").as_deref(),
        Some(company_id.as_str())
    );
    assert_eq!(
        scalar(&mut env.db, "etlify.crm_id('hubspot', 'companies', '8')"),
        None
    );

    env.db
        .execute(
            "INSERT INTO users (id, email, first_name, company_id) VALUES (1, 'user1@example.com', 'One', 7)",
            &[],
        )
        .unwrap();
    let c = wait_for_default("contact 1", || {
        env.mock.find("contacts", "email", &email(1))
    });
    assert_eq!(c["properties"]["company_crm_id"], json!(company_id));
}

/// sync_stale compares, in batches, every row's payload with what the CRM holds,
/// and enqueues only what differs: after a serializer change, after writes the
/// triggers never saw (a replica-role session), and for a row deleted unseen.
#[test]
fn sync_stale_enqueues_only_what_differs() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=7);
    wait_users_state(&mut env.db, &(1..=7).collect::<Vec<_>>(), "synced");
    let inputs = env.mock.crm_inputs();

    env.db
        .batch_execute(
            "CREATE OR REPLACE FUNCTION user_payload(u users) RETURNS jsonb LANGUAGE sql STABLE AS $$
                SELECT jsonb_strip_nulls(jsonb_build_object('email', u.email, 'firstname', u.first_name,
                  'lastname', CASE WHEN u.id > 5 THEN 'Changed' ELSE u.last_name END))
             $$;
             SET session_replication_role = replica;
             UPDATE users SET first_name = 'Unseen' WHERE id = 1;
             DELETE FROM users WHERE id = 2;
             RESET session_replication_role;",
        )
        .unwrap();
    assert_eq!(
        pending_count(&mut env.db, "hubspot"),
        0,
        "the triggers saw nothing"
    );
    let r = json(&mut env.db, "etlify.sync_stale('hubspot', batch_size => 2)");
    assert_eq!(
        r["total"],
        json!(7),
        "six rows and one record without its row: {r}"
    );
    assert_eq!(r["per_model"]["users"], json!(4), "ids 1, 2, 6 and 7: {r}");
    assert_eq!(r["errors"], json!(0), "{r}");
    wait_for_default("the differing records sent", || {
        (env.mock.crm_inputs() == inputs + 4 && pending_count(&mut env.db, "hubspot") == 0)
            .then_some(())
    });
    let first = env
        .mock
        .find("contacts", "email", &email(1))
        .and_then(|o| o["properties"]["firstname"].as_str().map(str::to_string));
    assert_eq!(first.as_deref(), Some("Unseen"));
    assert!(env.mock.find("contacts", "email", &email(2)).is_none());
    let r = json(&mut env.db, "etlify.sync_stale('hubspot')");
    assert_eq!(r["per_model"]["users"], json!(0), "all in line now: {r}");

    // a serializer that raises for one row: that row alone is counted (and enqueued,
    // so that its record shows the error)
    env.db
        .batch_execute(
            "CREATE OR REPLACE FUNCTION user_payload(u users) RETURNS jsonb LANGUAGE sql STABLE AS $$
                SELECT jsonb_strip_nulls(jsonb_build_object('email', u.email, 'firstname', u.first_name,
                  'lastname', CASE WHEN u.id = 3 THEN (1 / (u.id - 3))::text
                                   WHEN u.id > 5 THEN 'Changed' ELSE u.last_name END))
             $$;",
        )
        .unwrap();
    let r = json(&mut env.db, "etlify.sync_stale('hubspot', batch_size => 2)");
    assert_eq!(r["total"], json!(6), "{r}");
    assert_eq!(r["per_model"]["users"], json!(1), "{r}");
    assert_eq!(r["errors"], json!(1), "{r}");
    wait_for_default("record 3 failed with the serializer's error", || {
        user_status(&mut env.db, 3).filter(|s| {
            s.last_error
                .as_deref()
                .unwrap_or("")
                .contains("division by zero")
        })
    });
}

/// sync_stale reads a mapping's records beside the source (src/record_window.rs)
/// and probes the ones its window does not hold: with rows and records in
/// opposite orders and more records than the window holds, it still finds exactly
/// the records whose payload changed, and the ones whose record is gone.
#[test]
fn sync_stale_finds_every_difference_whatever_the_order_of_rows() {
    let mut env = Env::start_without_worker("", "");
    env.db
        .batch_execute(
            "SELECT etlify.register_crm('void', 'null');
             CREATE TABLE many (id int PRIMARY KEY, name text NOT NULL);
             CREATE FUNCTION many_payload(m many) RETURNS jsonb LANGUAGE sql AS $$
               SELECT jsonb_build_object('email', m.id || '@x.test', 'name', m.name) $$;
             INSERT INTO many SELECT i, 'n' || i FROM generate_series(1, 45000) i;
             SELECT etlify.sync_table('void', 'many', 'contacts', 'email', 'many_payload');
             SELECT etlify.drain();
             -- the rows in the opposite physical order to their records (no trigger fires)
             CREATE INDEX many_backwards ON many ((-id));
             CLUSTER many USING many_backwards;
             CREATE OR REPLACE FUNCTION many_payload(m many) RETURNS jsonb LANGUAGE sql AS $$
               SELECT jsonb_build_object('email', m.id || '@x.test',
                                         'name', CASE WHEN m.id % 100 = 3 THEN 'new' ELSE m.name END) $$;
             DELETE FROM etlify.records WHERE key IN ('1', '44999');",
        )
        .unwrap_or_else(|e| panic!("{}", error_text(&e)));
    let r = json(&mut env.db, "etlify.sync_stale('void')");
    assert_eq!(r["total"], 45000, "{r}");
    assert_eq!(
        r["per_model"]["many"], 452,
        "450 changed payloads and 2 records gone: {r}"
    );
    let queued = scalar(&mut env.db, "SELECT count(*) FROM etlify.queue");
    assert_eq!(queued.as_deref(), Some("452"));
}
