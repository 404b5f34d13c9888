//! Changes in the source table arrive in the CRM through the worker: inserts,
//! updates, deletes, TRUNCATE, primary-key and email changes; nothing is sent for
//! an unchanged payload or a rolled-back transaction; a change made while its
//! record is in flight is sent afterwards.

use etlify_e2e::fixtures::{
    email, insert_users, map_users, overview, pending_count, scalar, statuses, user_status,
    wait_users_state,
};
use etlify_e2e::mock::id_of;
use etlify_e2e::{wait_for_default, Env};
use serde_json::{json, Value};

fn prop<'a>(o: &'a Value, p: &str) -> Option<&'a str> {
    o["properties"][p].as_str()
}

/// Waits for the live contact with this email to satisfy `ok`.
fn wait_contact(env: &Env, mail: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let desc = format!("contact {mail}: {what}");
    wait_for_default(&desc, || {
        env.mock.find("contacts", "email", mail).filter(|o| ok(o))
    })
}

#[test]
fn inserts_updates_and_deletes_arrive() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=3);

    let contacts = wait_for_default("3 contacts in the mock", || {
        let o = env.mock.objects("contacts");
        (o.len() == 3).then_some(o)
    });
    for i in 1..=3 {
        let c = contacts
            .iter()
            .find(|c| prop(c, "email") == Some(email(i).as_str()))
            .unwrap_or_else(|| panic!("no contact for {}: {contacts:?}", email(i)));
        assert_eq!(prop(c, "firstname"), Some(format!("First{i}").as_str()));
        assert_eq!(prop(c, "lastname"), Some(format!("Last{i}").as_str()));
    }
    let synced = wait_users_state(&mut env.db, &[1, 2, 3], "synced");
    for i in 1..=3 {
        let s = &synced[&i.to_string()];
        let c = env.mock.find("contacts", "email", &email(i)).unwrap();
        assert_eq!(
            s.crm_id,
            id_of(&c),
            "crm_id of user {i} is the mock's object id"
        );
        assert!(s.last_synced_at.is_some());
        assert_eq!(s.error_count, 0);
    }

    // update
    let id2 = id_of(&env.mock.find("contacts", "email", &email(2)).unwrap());
    env.db
        .execute(
            "UPDATE users SET first_name = 'Ada', last_name = 'Lovelace' WHERE id = 2",
            &[],
        )
        .unwrap();
    let c2 = wait_contact(&env, &email(2), "firstname Ada", |c| {
        prop(c, "firstname") == Some("Ada")
    });
    assert_eq!(prop(&c2, "lastname"), Some("Lovelace"));
    assert_eq!(id_of(&c2), id2, "an update changes the same object");
    assert_eq!(env.mock.objects("contacts").len(), 3);

    // delete
    let id3 = id_of(&env.mock.find("contacts", "email", &email(3)).unwrap()).unwrap();
    env.db
        .execute("DELETE FROM users WHERE id = 3", &[])
        .unwrap();
    wait_for_default("contact 3 archived", || {
        env.mock
            .archived("contacts")
            .iter()
            .any(|o| id_of(o).as_deref() == Some(id3.as_str()))
            .then_some(())
    });
    assert_eq!(env.mock.objects("contacts").len(), 2);
    assert_eq!(env.mock.archived("contacts").len(), 1);
    wait_users_state(&mut env.db, &[3], "deleted");
    assert_eq!(user_status(&mut env.db, 1).unwrap().state, "synced");

    // every CRM call succeeded
    for r in env.mock.crm_requests() {
        let status = r["status"].as_u64().unwrap();
        assert!(
            (200..300).contains(&status),
            "unexpected failed request {r}"
        );
    }
}

#[test]
fn unchanged_payload_sends_no_request() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=2);
    wait_users_state(&mut env.db, &[1, 2], "synced");
    let before = env.mock.crm_requests().len();
    assert!(before >= 1);

    // `note` is not in the payload: the row changed (every column is watched), so the
    // record is reconsidered, but its digest is the same: no request.
    env.db
        .execute(
            "UPDATE users SET note = 'internal remark' WHERE id = 1",
            &[],
        )
        .unwrap();
    wait_for_default("the note change to be reconciled", || {
        (pending_count(&mut env.db, "hubspot") == 0).then_some(())
    });
    assert_eq!(user_status(&mut env.db, 1).unwrap().state, "synced");
    assert_eq!(
        env.mock.crm_requests().len(),
        before,
        "a change outside the payload sent a request"
    );

    // a no-op UPDATE, and an explicit sync of an unchanged record
    env.db
        .execute("UPDATE users SET first_name = first_name", &[])
        .unwrap();
    let r = scalar(&mut env.db, "etlify.sync('hubspot', 'users', '1')");
    assert_eq!(r.as_deref(), Some("not_modified"));
    assert_eq!(env.mock.crm_requests().len(), before);

    // fence: a real change of user 2 is the only thing sent after all that
    env.db
        .execute("UPDATE users SET first_name = 'Grace' WHERE id = 2", &[])
        .unwrap();
    wait_contact(&env, &email(2), "firstname Grace", |c| {
        prop(c, "firstname") == Some("Grace")
    });
    wait_users_state(&mut env.db, &[1, 2], "synced");
    let after = env.mock.crm_requests();
    assert_eq!(
        after.len(),
        before + 1,
        "only the fence was sent: {after:?}"
    );
    assert_eq!(after.last().unwrap()["inputs"], json!(1), "the fence alone");
}

#[test]
fn watched_columns_decide_what_marks_a_record_dirty() {
    let mut env = Env::start("", "");
    env.db
        .batch_execute(
            "CREATE FUNCTION user_with_note(u users) RETURNS jsonb LANGUAGE sql STABLE AS $$
                 SELECT jsonb_build_object('email', u.email, 'firstname', u.first_name,
                                           'note', coalesce(u.note, 'none'))
             $$;
             SELECT etlify.sync_table('hubspot', 'users', 'contacts', 'email', 'user_with_note',
                                      watch => ARRAY['email', 'first_name']);",
        )
        .unwrap();
    insert_users(&mut env.db, 1..=2);
    wait_users_state(&mut env.db, &[1, 2], "synced");
    let before = env.mock.crm_requests().len();

    // `note` is in the payload but not watched: not sent on its own
    env.db
        .execute("UPDATE users SET note = 'unwatched' WHERE id = 1", &[])
        .unwrap();
    // fence on a watched column of another record
    env.db
        .execute("UPDATE users SET first_name = 'Fence' WHERE id = 2", &[])
        .unwrap();
    wait_contact(&env, &email(2), "firstname Fence", |c| {
        prop(c, "firstname") == Some("Fence")
    });
    wait_users_state(&mut env.db, &[1, 2], "synced");
    let reqs = env.mock.crm_requests();
    assert_eq!(reqs.len(), before + 1, "{reqs:?}");
    assert_eq!(
        reqs.last().unwrap()["inputs"],
        json!(1),
        "user 1 was not sent"
    );
    let c1 = env.mock.find("contacts", "email", &email(1)).unwrap();
    assert_eq!(prop(&c1, "note"), Some("none"), "unwatched change not sent");

    // a watched change sends the whole current payload, note included
    env.db
        .execute("UPDATE users SET first_name = 'Watched' WHERE id = 1", &[])
        .unwrap();
    let c1 = wait_contact(&env, &email(1), "firstname Watched", |c| {
        prop(c, "firstname") == Some("Watched")
    });
    assert_eq!(prop(&c1, "note"), Some("unwatched"));
}

#[test]
fn rolled_back_changes_send_nothing() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    {
        let mut tx = env.db.transaction().unwrap();
        insert_users(&mut tx, [1]);
        tx.execute("UPDATE users SET first_name = 'Ghost' WHERE id = 1", &[])
            .unwrap();
        tx.rollback().unwrap();
    }
    {
        let mut tx = env.db.transaction().unwrap();
        insert_users(&mut tx, [2]);
        {
            let mut sp = tx.transaction().unwrap(); // SAVEPOINT
            insert_users(&mut sp, [3]);
            sp.rollback().unwrap(); // ROLLBACK TO SAVEPOINT
        }
        tx.commit().unwrap();
    }
    wait_users_state(&mut env.db, &[2], "synced");
    wait_for_default("nothing pending", || {
        (pending_count(&mut env.db, "hubspot") == 0).then_some(())
    });
    let contacts = env.mock.objects("contacts");
    assert_eq!(contacts.len(), 1, "only the committed user: {contacts:?}");
    assert_eq!(prop(&contacts[0], "email"), Some(email(2).as_str()));
    assert_eq!(env.mock.crm_inputs(), 1, "one record sent in total");
    let st = statuses(&mut env.db, "hubspot", "users");
    assert_eq!(st.keys().collect::<Vec<_>>(), vec!["2"], "{st:?}");
}

#[test]
fn change_during_in_flight_batch_is_sent_afterwards() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    env.mock.set_faults(json!({ "delay_ms": 1500 }));
    insert_users(&mut env.db, [1]);
    wait_for_default("a request in flight", || {
        (env.mock.inflight() >= 1).then_some(())
    });
    // committed while the first version is being sent
    env.db
        .execute("UPDATE users SET first_name = 'Second' WHERE id = 1", &[])
        .unwrap();
    env.mock.set_faults(json!({}));

    let first = wait_contact(&env, &email(1), "the first version", |_| true);
    let c = wait_contact(&env, &email(1), "firstname Second", |c| {
        prop(c, "firstname") == Some("Second")
    });
    assert_eq!(id_of(&c), id_of(&first), "same object");
    wait_users_state(&mut env.db, &[1], "synced");
    assert_eq!(env.mock.objects("contacts").len(), 1);
    let reqs = env.mock.crm_requests();
    assert!(
        reqs.len() >= 2,
        "the change was sent in a second request: {reqs:?}"
    );
    let first_done = reqs[0]["completed_at_us"].as_i64().unwrap();
    let last_sent = reqs.last().unwrap()["received_at_us"].as_i64().unwrap();
    assert!(
        last_sent >= first_done,
        "the resend came after the first request completed"
    );
}

#[test]
fn email_change_updates_the_same_contact() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    let s = wait_users_state(&mut env.db, &[1], "synced");
    let crm_id = s["1"].crm_id.clone().expect("crm_id");

    env.db
        .execute(
            "UPDATE users SET email = 'new.address@example.com' WHERE id = 1",
            &[],
        )
        .unwrap();
    let c = wait_contact(&env, "new.address@example.com", "present", |_| true);
    assert_eq!(
        id_of(&c).as_deref(),
        Some(crm_id.as_str()),
        "updated in place"
    );
    assert_eq!(prop(&c, "firstname"), Some("First1"));
    let all = env.mock.objects("contacts");
    assert_eq!(all.len(), 1, "no second contact: {all:?}");
    assert!(env.mock.archived("contacts").is_empty());
    let s = wait_users_state(&mut env.db, &[1], "synced");
    assert_eq!(s["1"].crm_id.as_deref(), Some(crm_id.as_str()));
}

#[test]
fn truncate_deletes_every_synced_record() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=3);
    let s = wait_users_state(&mut env.db, &[1, 2, 3], "synced");
    let mut ids: Vec<String> = s.values().map(|s| s.crm_id.clone().unwrap()).collect();
    ids.sort();

    env.db.batch_execute("TRUNCATE users").unwrap();
    let archived = wait_for_default("3 contacts archived", || {
        let a = env.mock.archived("contacts");
        (a.len() == 3).then_some(a)
    });
    let mut archived_ids: Vec<String> = archived.iter().filter_map(id_of).collect();
    archived_ids.sort();
    assert_eq!(archived_ids, ids);
    assert!(env.mock.objects("contacts").is_empty());
    wait_users_state(&mut env.db, &[1, 2, 3], "deleted");
    let o = overview(&mut env.db, "hubspot", "users");
    assert_eq!(o["synced"], json!(0), "{o}");
    assert_eq!(o["pending"], json!(0), "{o}");
}

#[test]
fn primary_key_change_moves_the_record() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1, 2]);
    wait_users_state(&mut env.db, &[1, 2], "synced");

    env.db
        .execute("UPDATE users SET id = 10 WHERE id = 1", &[])
        .unwrap();
    wait_users_state(&mut env.db, &[10], "synced");
    wait_users_state(&mut env.db, &[1], "deleted");
    wait_for_default("nothing pending", || {
        (pending_count(&mut env.db, "hubspot") == 0).then_some(())
    });
    // the row still exists (under key 10): its contact must be live, exactly once
    let live: Vec<Value> = env
        .mock
        .objects("contacts")
        .into_iter()
        .filter(|o| prop(o, "email") == Some(email(1).as_str()))
        .collect();
    assert_eq!(live.len(), 1, "user 10's contact is live: {live:?}");
    let s10 = user_status(&mut env.db, 10).unwrap();
    assert_eq!(s10.crm_id, id_of(&live[0]));
    assert_eq!(env.mock.objects("contacts").len(), 2);

    // and later changes of key 10 reach that contact
    env.db
        .execute("UPDATE users SET first_name = 'Moved' WHERE id = 10", &[])
        .unwrap();
    let c = wait_contact(&env, &email(1), "firstname Moved", |c| {
        prop(c, "firstname") == Some("Moved")
    });
    assert_eq!(id_of(&c), s10.crm_id);
}

#[test]
fn delete_and_reinsert_in_one_transaction_updates_in_place() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    let s = wait_users_state(&mut env.db, &[1], "synced");
    let crm_id = s["1"].crm_id.clone();

    env.db
        .batch_execute(
            "BEGIN;
             DELETE FROM users WHERE id = 1;
             INSERT INTO users (id, email, first_name) VALUES (1, 'user1@example.com', 'Reborn');
             COMMIT;",
        )
        .unwrap();
    let c = wait_contact(&env, &email(1), "firstname Reborn", |c| {
        prop(c, "firstname") == Some("Reborn")
    });
    assert_eq!(
        id_of(&c),
        crm_id,
        "reconciled to the current row: same contact"
    );
    assert!(
        env.mock.archived("contacts").is_empty(),
        "the row exists at commit: nothing is deleted"
    );
    wait_users_state(&mut env.db, &[1], "synced");
}

/// The capture trigger writes etlify.changes straight into the heap only while the
/// table has no index and no trigger; with one, it must go through SQL so that the
/// index stays whole. Either way every change arrives.
#[test]
fn changes_still_arrive_when_etlify_changes_has_an_index() {
    let mut env = Env::start("etlify.enabled = off", "");
    map_users(&mut env.db, "");
    env.db
        .batch_execute("CREATE INDEX changes_by_mapping ON etlify.changes (mapping_id)")
        .unwrap();
    insert_users(&mut env.db, 1..=2);
    env.db
        .execute("UPDATE users SET first_name = 'Indexed' WHERE id = 2", &[])
        .unwrap();
    // the index found every row the heap got (two statements: two rows)
    let count = |db: &mut postgres::Client, seqscan: &str| -> i64 {
        db.batch_execute(&format!(
            "SET enable_seqscan = {seqscan}; SET enable_bitmapscan = on"
        ))
        .unwrap();
        db.query_one(
            "SELECT count(*) FROM etlify.changes WHERE mapping_id > 0",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let by_heap = count(&mut env.db, "on");
    let by_index = count(&mut env.db, "off");
    assert_eq!(by_heap, 2, "one change row per statement");
    assert_eq!(by_index, by_heap, "the index has every change row");

    env.db.batch_execute("SELECT etlify.drain()").unwrap();
    let c = env
        .mock
        .find("contacts", "email", &email(2))
        .expect("user 2 sent");
    assert_eq!(prop(&c, "firstname"), Some("Indexed"));
    assert_eq!(env.mock.objects("contacts").len(), 2);
}
