//! Every mistake in a declaration is an ERROR that names the culprit and changes
//! nothing (no mapping, trigger, function, queue or state row, no request); a
//! correct declaration made afterwards works normally.

use etlify_e2e::fixtures::{
    email, error_text, etlify_snapshot, insert_users, map_users, register_crm, wait_users_state,
};
use etlify_e2e::Env;

/// Runs `sql`, which must fail with an ERROR whose text names every `culprit` (any
/// one of each alternative list), and leave etlify exactly as it was.
fn assert_rejected(env: &mut Env, sql: &str, culprits: &[&[&str]]) {
    let before = etlify_snapshot(&mut env.db);
    let err = env
        .db
        .batch_execute(sql)
        .expect_err(&format!("declaration should fail: {sql}"));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {err}"));
    assert_eq!(db.severity(), "ERROR", "{sql}");
    let text = error_text(&err);
    let lower = text.to_lowercase();
    for alternatives in culprits {
        assert!(
            alternatives
                .iter()
                .any(|c| lower.contains(&c.to_lowercase())),
            "the error for `{sql}` should name {alternatives:?}: {text}"
        );
    }
    let after = etlify_snapshot(&mut env.db);
    if before != after {
        let changed: Vec<_> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .chain(before.keys().filter(|k| !after.contains_key(*k)).cloned())
            .collect();
        panic!("`{sql}` failed but changed {changed:?}");
    }
    assert!(
        env.mock.crm_requests().is_empty(),
        "a failed declaration sent a request"
    );
}

/// After the rejected declarations, the correct one installs and syncs.
fn assert_correct_declaration_works(env: &mut Env) {
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    assert!(env.mock.find("contacts", "email", &email(1)).is_some());
    assert_eq!(env.mock.crm_inputs(), 1);
}

const SYNC: &str =
    "SELECT etlify.sync_table('hubspot', 'users', 'contacts', 'email', 'user_payload'";

#[test]
fn table_without_primary_key_is_rejected() {
    let mut env = Env::start("", "");
    env.db
        .batch_execute(
            "CREATE TABLE no_pk_people (id int, email text);
             INSERT INTO no_pk_people VALUES (1, 'a@example.com');
             CREATE FUNCTION no_pk_payload(p no_pk_people) RETURNS jsonb LANGUAGE sql
               AS $$ SELECT jsonb_build_object('email', p.email) $$;",
        )
        .unwrap();
    assert_rejected(
        &mut env,
        "SELECT etlify.sync_table('hubspot', 'no_pk_people', 'contacts', 'email', 'no_pk_payload')",
        &[&["no_pk_people"], &["primary key"]],
    );
    assert_correct_declaration_works(&mut env);
}

#[test]
fn serializer_of_the_wrong_signature_is_rejected() {
    let mut env = Env::start("", "");
    env.db
        .batch_execute(
            "CREATE TABLE other (id int PRIMARY KEY);
             CREATE FUNCTION returns_text(u users) RETURNS text LANGUAGE sql AS $$ SELECT u.email $$;
             CREATE FUNCTION takes_int(i int) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
             CREATE FUNCTION takes_other(o other) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
             CREATE FUNCTION takes_two(u users, extra int) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
             CREATE FUNCTION returns_set(u users) RETURNS SETOF jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;",
        )
        .unwrap();
    insert_users(&mut env.db, [1]);
    for f in [
        "returns_text",
        "takes_int",
        "takes_other",
        "takes_two",
        "returns_set",
    ] {
        assert_rejected(
            &mut env,
            &format!("SELECT etlify.sync_table('hubspot', 'users', 'contacts', 'email', '{f}')"),
            &[&[f]],
        );
    }
    // the correct declaration backfills user 1
    map_users(&mut env.db, "");
    wait_users_state(&mut env.db, &[1], "synced");
    assert_eq!(env.mock.crm_inputs(), 1);
}

#[test]
fn unknown_crm_is_rejected() {
    let mut env = Env::start("", "");
    assert_rejected(
        &mut env,
        "SELECT etlify.sync_table('no_such_crm', 'users', 'contacts', 'email', 'user_payload')",
        &[&["no_such_crm"]],
    );
    assert_correct_declaration_works(&mut env);
}

#[test]
fn unknown_adapter_is_rejected_and_the_registration_left_as_it_was() {
    let mut env = Env::start("", "");
    assert_rejected(
        &mut env,
        "SELECT etlify.register_crm('newcrm', 'frobnicator')",
        &[&["frobnicator"]],
    );
    // the existing registration is not touched either
    assert_rejected(
        &mut env,
        "SELECT etlify.register_crm('hubspot', 'frobnicator')",
        &[&["frobnicator"]],
    );
    let with_newcrm = format!("{})", SYNC.replace("'hubspot'", "'newcrm'"));
    let err = env
        .db
        .batch_execute(&with_newcrm)
        .expect_err("newcrm was not registered");
    assert!(error_text(&err).contains("newcrm"), "{}", error_text(&err));
    assert_correct_declaration_works(&mut env);
}

/// A secret that an HTTP header cannot carry is refused when it is registered
/// (issue 12), not retried by the worker: the error says why and never shows it.
#[test]
fn a_secret_that_cannot_be_sent_is_refused_at_once() {
    let mut env = Env::start("", "");
    for (secret, why) in [
        ("''", "empty"),
        ("E'tok-123\\n'", "whitespace"),
        ("E'tok\\x01-123'", "control character at position 4"),
        ("'tok-’123'", "not ascii at position 5"),
    ] {
        let sql = format!("SELECT etlify.register_crm('hubspot', 'hubspot', secret => {secret})");
        assert_rejected(&mut env, &sql, &[&[why], &["secret"]]);
        let e = env.db.batch_execute(&sql).unwrap_err();
        assert!(!error_text(&e).contains("tok"), "{}", error_text(&e));
    }
    assert_correct_declaration_works(&mut env);
}

#[test]
fn unknown_column_is_rejected() {
    let mut env = Env::start("", "");
    assert_rejected(
        &mut env,
        &format!("{SYNC}, watch => ARRAY['email', 'no_such_column'])"),
        &[&["no_such_column"]],
    );
    assert_rejected(
        &mut env,
        &format!("{SYNC}, sync_if => 'no_such_flag AND active')"),
        &[&["no_such_flag"]],
    );
    assert_correct_declaration_works(&mut env);
}

#[test]
fn sync_if_that_does_not_parse_is_rejected() {
    let mut env = Env::start("", "");
    for predicate in ["active AND AND", "active = ", "(active"] {
        assert_rejected(
            &mut env,
            &format!("{SYNC}, sync_if => '{predicate}')"),
            &[&["sync_if", predicate]],
        );
    }
    assert_correct_declaration_works(&mut env);
}

#[test]
fn duplicate_mapping_is_rejected() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    assert_rejected(&mut env, &format!("{SYNC})"), &[&["users"], &["hubspot"]]);
    // the first mapping still works, once: one record, one request
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    assert_eq!(env.mock.crm_requests().len(), 1);
    assert_eq!(env.mock.crm_inputs(), 1);
    // a second CRM may mirror the same table
    register_crm(&mut env.db, "second", &env.mock, "");
    env.db
        .batch_execute(
            "SELECT etlify.sync_table('second', 'users', 'companies', 'email', 'user_payload')",
        )
        .unwrap();
}
