//! Privileges and schema life cycle: a non-superuser writer, serializers running as
//! the mapping's owner, pg_dump/restore of the configuration, hostile identifiers,
//! DROP TABLE / DROP EXTENSION, interruptible etlify.sync(), composite keys.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use etlify_e2e::fixtures::{
    email, error_text, etlify_snapshot, insert_users, json, map_users, overview, scalar, status_of,
    statuses, wait_users_state, TOKEN,
};
use etlify_e2e::mock::id_of;
use etlify_e2e::{wait_for, wait_for_default, Env};
use postgres::error::SqlState;
use postgres::{Client, NoTls};
use serde_json::{json, Value};

fn prop<'a>(o: &'a Value, p: &str) -> Option<&'a str> {
    o["properties"][p].as_str()
}

/// Waits until the mock holds exactly `n` live objects of type `t`.
fn wait_objects(env: &Env, t: &str, n: usize) -> Vec<Value> {
    wait_for_default(&format!("{n} live {t} in the mock"), || {
        let o = env.mock.objects(t);
        (o.len() == n).then_some(o)
    })
}

/// Waits for the live contact with this email to satisfy `ok`.
fn wait_contact(env: &Env, mail: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for_default(&format!("contact {mail}: {what}"), || {
        env.mock.find("contacts", "email", mail).filter(|o| ok(o))
    })
}

/// Asserts an error's SQLSTATE and, unless `text` is empty, that its message says
/// `text`; `what` names the statement in the failure message.
fn assert_error(err: &postgres::Error, state: &SqlState, text: &str, what: &str) {
    let message = error_text(err);
    assert_eq!(err.code(), Some(state), "{what}: {message}");
    assert!(message.contains(text), "{what}: {message}");
}

fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
        .get(0)
}

/// Non-internal triggers on `table` (a regclass literal).
fn triggers_on(db: &mut Client, table: &str) -> Vec<String> {
    db.query(
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1::text::regclass AND NOT tgisinternal ORDER BY 1",
        &[&table],
    )
    .unwrap_or_else(|e| panic!("triggers on {table}: {}", error_text(&e)))
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Server log lines of the etlify worker (`%b` in the log line prefix) at ERROR or worse.
fn worker_errors(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            l.contains("] etlify")
                && (l.contains("ERROR:") || l.contains("FATAL:") || l.contains("PANIC:"))
        })
        .map(str::to_string)
        .collect()
}

/// 1. A role that may only write the synced table: its changes reach the CRM, and it
///    reads nothing of etlify (secrets, sync state, queue, views).
#[test]
fn non_superuser_writer_is_synced_and_reads_nothing_of_etlify() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    env.db
        .batch_execute(
            "CREATE ROLE app_writer LOGIN NOSUPERUSER;
             GRANT INSERT, UPDATE, DELETE, TRUNCATE ON users TO app_writer;",
        )
        .unwrap();
    let mut w = env.cluster.connect_as("app_writer");
    assert_eq!(
        scalar(
            &mut w,
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        .as_deref(),
        Some("false")
    );
    // app_writer may not even read users: no WHERE clauses below, only whole-table writes
    assert!(w.query("SELECT * FROM users", &[]).is_err());

    // INSERT
    w.batch_execute(
        "INSERT INTO users (id, email, first_name, last_name) VALUES
           (1, 'user1@example.com', 'First1', 'Last1'),
           (2, 'user2@example.com', 'First2', 'Last2'),
           (3, 'user3@example.com', 'First3', 'Last3')",
    )
    .unwrap_or_else(|e| {
        let acl = scalar(
            &mut env.db,
            "SELECT coalesce(relacl::text, 'NULL') FROM pg_class WHERE oid = 'etlify.changes'::regclass",
        );
        panic!(
            "insert as app_writer: {} (ACL of etlify.changes: {acl:?})",
            error_text(&e).lines().next().unwrap_or_default()
        )
    });
    let contacts = wait_objects(&env, "contacts", 3);
    for i in 1..=3 {
        assert!(
            contacts
                .iter()
                .any(|c| prop(c, "email") == Some(email(i).as_str())
                    && prop(c, "firstname") == Some(format!("First{i}").as_str())),
            "contact {i} missing: {contacts:?}"
        );
    }
    wait_users_state(&mut env.db, &[1, 2, 3], "synced");

    // UPDATE
    w.batch_execute("UPDATE users SET last_name = 'Written'")
        .unwrap_or_else(|e| panic!("update as app_writer: {}", error_text(&e)));
    wait_for_default("every contact has lastname Written", || {
        let o = env.mock.objects("contacts");
        (o.len() == 3 && o.iter().all(|c| prop(c, "lastname") == Some("Written"))).then_some(())
    });

    // TRUNCATE: every synced record is archived
    w.batch_execute("TRUNCATE users")
        .unwrap_or_else(|e| panic!("truncate as app_writer: {}", error_text(&e)));
    wait_for_default("3 contacts archived after TRUNCATE", || {
        (env.mock.objects("contacts").is_empty() && env.mock.archived("contacts").len() == 3)
            .then_some(())
    });
    wait_users_state(&mut env.db, &[1, 2, 3], "deleted");

    // DELETE
    w.batch_execute(
        "INSERT INTO users (id, email, first_name) VALUES (4, 'user4@example.com', 'First4')",
    )
    .unwrap();
    wait_users_state(&mut env.db, &[4], "synced");
    assert!(env.mock.find("contacts", "email", &email(4)).is_some());
    w.batch_execute("DELETE FROM users")
        .unwrap_or_else(|e| panic!("delete as app_writer: {}", error_text(&e)));
    wait_users_state(&mut env.db, &[4], "deleted");
    assert!(env.mock.objects("contacts").is_empty());
    assert_eq!(env.mock.archived("contacts").len(), 4);

    // ... and reads nothing of etlify
    for rel in [
        "etlify.crm_secrets",
        "etlify.crms",
        "etlify.mappings",
        "etlify.records",
        "etlify.queue",
        "etlify.changes",
        "etlify.sync_log_entries",
        "etlify.sync_status",
        "etlify.overview",
        "etlify.sync_log",
        "etlify._pending",
    ] {
        let err = w
            .query(&format!("SELECT * FROM {rel}"), &[])
            .expect_err(&format!("app_writer must not read {rel}"));
        assert_error(
            &err,
            &SqlState::INSUFFICIENT_PRIVILEGE,
            "permission denied",
            rel,
        );
    }
    // nor runs the operations
    for call in [
        "SELECT etlify.drain()",
        "SELECT etlify.sync('hubspot', 'users', '1')",
        "SELECT etlify.register_crm('evil', 'null')",
    ] {
        let err = w.query(call, &[]).expect_err(call);
        assert_error(&err, &SqlState::INSUFFICIENT_PRIVILEGE, "", call);
    }
}

/// 2. The serializer runs as the role that declared the mapping (a non-superuser
///    here), never as the superuser worker: a row whose serializer reads a table only
///    superusers may read fails with a permission error, and is never sent.
#[test]
fn serializer_runs_as_the_mapping_owner_never_as_superuser() {
    let mut env = Env::start("", "");
    env.db
        .batch_execute(
            "CREATE ROLE app_owner LOGIN NOSUPERUSER;
             CREATE TABLE secret_stuff (token text);
             INSERT INTO secret_stuff VALUES ('classified-42');
             REVOKE ALL ON secret_stuff FROM PUBLIC;
             GRANT CREATE ON SCHEMA public TO app_owner;",
        )
        .unwrap();

    // app_owner owns the source table and the serializer
    let mut s = env.cluster.client(); // superuser session
    s.batch_execute(
        "SET ROLE app_owner;
         CREATE TABLE people (id int PRIMARY KEY, email text, needs_secret boolean NOT NULL);
         CREATE FUNCTION people_payload(p people) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
         BEGIN
             IF p.needs_secret THEN
                 RETURN jsonb_build_object('email', p.email,
                     'firstname', (SELECT token FROM public.secret_stuff LIMIT 1),
                     'lastname', current_user::text);
             END IF;
             RETURN jsonb_build_object('email', p.email, 'lastname', current_user::text);
         END $$;
         RESET ROLE;",
    )
    .unwrap();
    let sync_people =
        "SELECT etlify.sync_table('hubspot', 'people', 'contacts', 'email', 'people_payload')";

    // EXECUTE on sync_table is not granted to PUBLIC: a plain role cannot declare
    s.batch_execute("SET ROLE app_owner").unwrap();
    let err = s
        .batch_execute(sync_people)
        .expect_err("sync_table is not executable by PUBLIC");
    assert_error(
        &err,
        &SqlState::INSUFFICIENT_PRIVILEGE,
        "sync_table",
        "sync_table as app_owner",
    );
    s.batch_execute("RESET ROLE").unwrap();

    // Members of etlify_admin may declare mappings on the tables they own.
    s.batch_execute("GRANT etlify_admin TO app_owner").unwrap();
    // declared by a superuser session under SET ROLE: current_user is app_owner
    s.batch_execute(&format!("SET ROLE app_owner; {sync_people}; RESET ROLE"))
        .unwrap_or_else(|e| panic!("sync_table as app_owner: {}", error_text(&e)));
    assert_eq!(
        scalar(
            &mut env.db,
            "SELECT owner::text FROM etlify.mappings WHERE source = 'people'::regclass"
        )
        .as_deref(),
        Some("app_owner"),
        "the mapping's owner is the role that declared it"
    );

    // rows written by the superuser: 1 needs nothing secret, 2 reads secret_stuff
    env.db
        .batch_execute(
            "INSERT INTO people VALUES (1, 'p1@example.com', false), (2, 'p2@example.com', true)",
        )
        .unwrap();
    let c1 = wait_contact(&env, "p1@example.com", "sent", |_| true);
    assert_eq!(
        prop(&c1, "lastname"),
        Some("app_owner"),
        "the serializer ran as app_owner, not as the superuser worker: {c1}"
    );
    let st = wait_for_default("people 2 failed with an error", || {
        status_of(&mut env.db, "hubspot", "people", "2")
            .filter(|s| s.last_error.is_some() && (s.state == "failed" || s.state == "parked"))
    });
    let e = st.last_error.clone().unwrap();
    assert!(
        e.contains("permission denied") && e.contains("secret_stuff"),
        "last_error should be a permission error naming secret_stuff: {st:?}"
    );
    assert_eq!(st.crm_id, None);
    assert_eq!(
        status_of(&mut env.db, "hubspot", "people", "1")
            .unwrap()
            .state,
        "synced"
    );

    // a superuser asking for it now does not lift the owner's rights either
    assert_eq!(
        scalar(&mut env.db, "etlify.sync('hubspot', 'people', '2')").as_deref(),
        Some("failed")
    );
    // ... nor does the inline drain a superuser runs (or the worker, if it is first)
    scalar(&mut env.db, "etlify.reset_errors('hubspot', 'people', '2')");
    let drained = json(&mut env.db, "etlify.drain('hubspot')");
    assert_eq!(drained["synced"], json!(0), "{drained}");
    wait_for_default("people 2 failed again after reset_errors", || {
        status_of(&mut env.db, "hubspot", "people", "2").filter(|s| {
            s.state != "synced"
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("secret_stuff"))
        })
    });

    // nothing of record 2 (nor the secret) ever reached the CRM
    assert!(env
        .mock
        .find("contacts", "email", "p2@example.com")
        .is_none());
    assert!(env.mock.archived("contacts").is_empty());
    let all = serde_json::to_string(&env.mock.objects("contacts")).unwrap();
    assert!(!all.contains("classified-42"), "the secret was sent: {all}");
    assert_eq!(env.mock.objects("contacts").len(), 1);
}

/// 3. pg_dump of a database with a registered CRM and a mapping, restored into a new
///    database of the same cluster, keeps the configuration and the capture triggers,
///    and changes made there are captured and sent.
#[test]
fn pg_dump_and_restore_keep_the_configuration() {
    let mut env = Env::start("", "");
    map_users(
        &mut env.db,
        ", watch => ARRAY['email', 'first_name', 'last_name']",
    );
    insert_users(&mut env.db, 1..=2);
    wait_users_state(&mut env.db, &[1, 2], "synced");

    let dump = env.cluster.dir().join("dump.sql");
    let dump_s = dump.display().to_string();
    env.cluster
        .run_tool("pg_dump", &["--no-password", "-f", &dump_s, "postgres"]);
    env.cluster.run_tool("createdb", &["restored"]);
    let (_, stderr) = env.cluster.run_tool(
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=0",
            "-d",
            "restored",
            "-f",
            &dump_s,
        ],
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("FATAL"))
        .collect();
    assert!(errors.is_empty(), "the restore reported errors:\n{stderr}");

    let mut orig = env.cluster.client();
    let mut r = env.cluster.connect_db("postgres", "restored");
    let q_crm = "SELECT name || ' ' || adapter || ' ' || config::text || ' ' || enabled || ' ' \
                 || max_sync_errors FROM etlify.crms ORDER BY name";
    let q_map = "SELECT string_agg(concat_ws(' ', id, crm, source::text, object_type, id_property, \
                 serializer, watch::text, owner::text, key_column, key_type::text), ',') FROM etlify.mappings";
    let q_state =
        "SELECT string_agg(concat_ws(' ', mapping_id, key, state, crm_id, encode(digest, 'hex')), \
                   ',' ORDER BY key) FROM etlify.records";
    for q in [q_crm, q_map, q_state] {
        let a = scalar(&mut orig, q);
        let b = scalar(&mut r, q);
        assert!(a.is_some(), "{q}: nothing in the original");
        assert_eq!(a, b, "{q}: the restored configuration or state differs");
    }
    // no token in a dump file
    assert_eq!(
        count(&mut r, "SELECT count(*) FROM etlify.crm_secrets"),
        0,
        "secrets were dumped"
    );
    assert_eq!(
        scalar(
            &mut r,
            "SELECT config->>'base_url' FROM etlify.crms WHERE name = 'hubspot'"
        )
        .as_deref(),
        Some(env.mock.url())
    );

    // the same privileges on etlify's relations (secrets stay superuser-only)
    let q_acl =
        "SELECT string_agg(relname || '=' || coalesce(relacl::text, '-'), ' ' ORDER BY relname) \
                 FROM pg_class WHERE relnamespace = 'etlify'::regnamespace";
    assert_eq!(scalar(&mut orig, q_acl), scalar(&mut r, q_acl));
    assert_eq!(
        scalar(
            &mut r,
            "has_table_privilege('public', 'etlify.crm_secrets', 'SELECT')"
        )
        .as_deref(),
        Some("false")
    );

    // the capture triggers, still owned by the extension (dropped with it)
    let trg = triggers_on(&mut orig, "users");
    assert_eq!(trg.len(), 4, "{trg:?}");
    assert_eq!(
        triggers_on(&mut r, "users"),
        trg,
        "capture triggers restored"
    );
    let q_ext =
        "SELECT count(*) FROM pg_depend d JOIN pg_trigger t ON d.classid = 'pg_trigger'::regclass \
                 AND d.objid = t.oid WHERE t.tgrelid = 'users'::regclass AND d.deptype = 'x' \
                 AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'etlify')";
    assert_eq!(
        count(&mut r, q_ext),
        4,
        "restored triggers depend on the extension"
    );

    // the copy is held: its changes are captured, but nothing reaches the CRM
    let requests = env.mock.crm_requests().len();
    r.batch_execute(
        "UPDATE users SET email = 'moved1@example.com' WHERE id = 1; DELETE FROM users WHERE id = 2",
    )
    .unwrap();
    insert_users(&mut r, [3]);
    assert_eq!(
        scalar(
            &mut r,
            "SELECT state FROM etlify.crm_status WHERE crm = 'hubspot'"
        )
        .as_deref(),
        Some("held")
    );
    let err = r
        .batch_execute("SELECT etlify.sync('hubspot', 'users', '3')")
        .expect_err("sync() in a held copy");
    assert_error(
        &err,
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "etlify.resume",
        "sync() in a held copy",
    );
    let drained = json(&mut r, "etlify.drain()");
    assert_eq!(drained["synced"], json!(0), "{drained}");
    assert_eq!(env.mock.crm_requests().len(), requests, "a held copy sent");
    assert_eq!(pending_of(&mut r), 3);

    // the operator gives it the token: the restored state reaches the same objects
    r.batch_execute(&format!(
        "SELECT etlify.register_crm('hubspot', 'hubspot', config => '{{\"base_url\": \"{}\"}}', secret => '{TOKEN}')",
        env.mock.url()
    ))
    .unwrap();
    assert_eq!(
        scalar(
            &mut r,
            "SELECT state FROM etlify.crm_status WHERE crm = 'hubspot'"
        )
        .as_deref(),
        Some("ok")
    );
    let drained = json(&mut r, "etlify.drain()");
    assert_eq!(drained["synced"], json!(2), "{drained}");
    assert_eq!(drained["deleted"], json!(1), "{drained}");
    let moved = env
        .mock
        .find("contacts", "email", "moved1@example.com")
        .expect("user 1's contact, updated");
    assert_eq!(
        id_of(&moved),
        status_of(&mut orig, "hubspot", "users", "1").and_then(|s| s.crm_id),
        "the copy updated the same contact"
    );
    assert!(env.mock.find("contacts", "email", &email(2)).is_none());
    assert!(env.mock.find("contacts", "email", &email(3)).is_some());
    assert_eq!(env.mock.objects("contacts").len(), 2, "no duplicates");
}

fn pending_of(db: &mut Client) -> i64 {
    count(
        db,
        "SELECT count(*) FROM etlify.sync_status WHERE state = 'pending'",
    )
}

/// 3b. The database's owner, not a superuser, can pg_dump a database with etlify.
#[test]
fn the_database_owner_can_dump_it() {
    let env = Env::start("", "");
    let mut db = env.cluster.client();
    db.batch_execute("CREATE ROLE dbo LOGIN NOSUPERUSER")
        .unwrap();
    db.batch_execute("CREATE DATABASE owned OWNER dbo").unwrap();
    // the owner's own tables; the extension is created by a superuser
    let mut dbo = env.cluster.connect_db("dbo", "owned");
    dbo.batch_execute(etlify_e2e::fixtures::USERS).unwrap();
    let mut o = env.cluster.connect_db("postgres", "owned");
    o.batch_execute(
        "CREATE EXTENSION etlify;
         SELECT etlify.register_crm('n', 'null');
         SELECT etlify.sync_table('n', 'users', 'contacts', 'email', 'user_payload');",
    )
    .unwrap();
    let dump = env.cluster.dir().join("owned.sql");
    let dump_s = dump.display().to_string();
    env.cluster.run_tool(
        "pg_dump",
        &["--no-password", "-U", "dbo", "-f", &dump_s, "owned"],
    );
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(
        text.contains("etlify.mappings"),
        "the dump has the mappings"
    );
}

/// 4. Schema, table, key, columns and serializer names that need quoting everywhere.
#[test]
fn hostile_identifiers_are_quoted_everywhere() {
    let mut env = Env::start("", "");
    env.db
        .batch_execute(
            r#"CREATE SCHEMA "My Schema";
               CREATE TABLE "My Schema"."Weird Table" (
                   "Order ID" int PRIMARY KEY,
                   "select"   text,
                   "a""b"     text,
                   note       text
               );
               CREATE FUNCTION "My Schema"."pay load's"(w "My Schema"."Weird Table") RETURNS jsonb
               LANGUAGE sql STABLE AS $$
                   SELECT jsonb_build_object('email', 'order' || w."Order ID" || '@example.com',
                       'firstname', w."select", 'lastname', w."a""b", 'note', coalesce(w.note, 'none'))
               $$;
               SELECT etlify.sync_table('hubspot', '"My Schema"."Weird Table"', 'contacts', 'email',
                                        '"My Schema"."pay load''s"',
                                        watch => ARRAY['select', 'a"b'],
                                        sync_if => '"select" IS DISTINCT FROM ''skip''');"#,
        )
        .unwrap_or_else(|e| panic!("declaration: {}", error_text(&e)));
    let table = r#""My Schema"."Weird Table""#;
    let mail = |i: i32| format!("order{i}@example.com");
    let state = |db: &mut Client, k: &str| status_of(db, "hubspot", table, k).map(|s| s.state);

    // inserts (4 is skipped by sync_if)
    env.db
        .batch_execute(
            r#"INSERT INTO "My Schema"."Weird Table" VALUES
                 (1, 'sel1', 'ab1', NULL), (2, 'sel2', 'ab2', NULL), (4, 'skip', 'ab4', NULL)"#,
        )
        .unwrap();
    wait_objects(&env, "contacts", 2);
    let c1 = env.mock.find("contacts", "email", &mail(1)).unwrap();
    assert_eq!(prop(&c1, "firstname"), Some("sel1"));
    assert_eq!(prop(&c1, "lastname"), Some("ab1"));
    wait_for_default("record 4 skipped", || {
        (state(&mut env.db, "4").as_deref() == Some("skipped")).then_some(())
    });

    // updates of the watched columns; an unwatched one is not sent on its own
    env.db
        .batch_execute(
            r#"BEGIN;
               UPDATE "My Schema"."Weird Table" SET note = 'unwatched' WHERE "Order ID" = 2;
               UPDATE "My Schema"."Weird Table" SET "select" = 'new sel' WHERE "Order ID" = 1;
               UPDATE "My Schema"."Weird Table" SET "a""b" = 'new "ab"' WHERE "Order ID" = 1;
               COMMIT;"#,
        )
        .unwrap();
    wait_contact(&env, &mail(1), "both watched columns updated", |c| {
        prop(c, "firstname") == Some("new sel") && prop(c, "lastname") == Some(r#"new "ab""#)
    });
    assert_eq!(
        prop(
            &env.mock.find("contacts", "email", &mail(2)).unwrap(),
            "note"
        ),
        Some("none"),
        "the unwatched change was not sent"
    );
    env.db
        .batch_execute(
            r#"UPDATE "My Schema"."Weird Table" SET "a""b" = 'ab2 again' WHERE "Order ID" = 2"#,
        )
        .unwrap();
    let c2 = wait_contact(&env, &mail(2), "lastname ab2 again", |c| {
        prop(c, "lastname") == Some("ab2 again")
    });
    assert_eq!(prop(&c2, "note"), Some("unwatched"));

    // sync() by key
    assert_eq!(
        scalar(
            &mut env.db,
            &format!(
                "etlify.sync('hubspot', '{}', '2')",
                table.replace('\'', "''")
            )
        )
        .as_deref(),
        Some("not_modified")
    );

    // primary-key change: the record, and its contact, move to key 3 (whose
    // email follows the key: the same contact gets the new email)
    let id2 = id_of(&c2).unwrap();
    env.db
        .batch_execute(
            r#"UPDATE "My Schema"."Weird Table" SET "Order ID" = 3 WHERE "Order ID" = 2"#,
        )
        .unwrap();
    let c3 = wait_contact(&env, &mail(3), "moved by the key change", |_| true);
    assert_eq!(id_of(&c3).as_deref(), Some(id2.as_str()));
    assert!(env.mock.archived("contacts").is_empty());

    // delete
    env.db
        .batch_execute(r#"DELETE FROM "My Schema"."Weird Table" WHERE "Order ID" = 1"#)
        .unwrap();
    wait_for_default("record 1 deleted", || {
        (state(&mut env.db, "1").as_deref() == Some("deleted")).then_some(())
    });
    assert!(env.mock.find("contacts", "email", &mail(1)).is_none());
    assert_eq!(env.mock.objects("contacts").len(), 1);
    let st = statuses(&mut env.db, "hubspot", table);
    assert!(
        st.values()
            .all(|s| s.error_count == 0 && s.last_error.is_none()),
        "{st:?}"
    );

    // unsync_table: triggers, mapping and state gone; nothing sent afterwards
    env.db
        .batch_execute(&format!(
            "SELECT etlify.unsync_table('hubspot', '{}')",
            table.replace('\'', "''")
        ))
        .unwrap_or_else(|e| panic!("unsync_table: {}", error_text(&e)));
    assert_eq!(triggers_on(&mut env.db, table), Vec::<String>::new());
    assert_eq!(
        count(&mut env.db, "SELECT count(*) FROM etlify.mappings"),
        0
    );
    assert!(statuses(&mut env.db, "hubspot", table).is_empty());
    let requests = env.mock.crm_requests().len();
    env.db
        .batch_execute(
            r#"INSERT INTO "My Schema"."Weird Table" VALUES (5, 'sel5', 'ab5', NULL);
               UPDATE "My Schema"."Weird Table" SET "select" = 'after unsync';
               DELETE FROM "My Schema"."Weird Table" WHERE "Order ID" = 3;"#,
        )
        .unwrap();
    assert_eq!(count(&mut env.db, "SELECT count(*) FROM etlify.changes"), 0);
    assert_eq!(count(&mut env.db, "SELECT count(*) FROM etlify.queue"), 0);
    assert_eq!(
        env.mock.crm_requests().len(),
        requests,
        "unsync sends nothing"
    );
}

/// 5a. DROP TABLE of a synced source removes its mapping and state; the worker goes
///     on with the other mappings.
#[test]
fn dropping_a_synced_table_removes_its_mapping_and_the_worker_carries_on() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    env.db
        .batch_execute(
            "CREATE TABLE companies (id int PRIMARY KEY, domain text NOT NULL);
             CREATE FUNCTION company_payload(c companies) RETURNS jsonb LANGUAGE sql STABLE AS $$
                 SELECT jsonb_build_object('domain', c.domain)
             $$;
             SELECT etlify.sync_table('hubspot', 'companies', 'companies', 'domain', 'company_payload');
             INSERT INTO companies SELECT i, 'c' || i || '.example.com' FROM generate_series(1, 3) i;",
        )
        .unwrap();
    insert_users(&mut env.db, [1]);
    wait_objects(&env, "companies", 3);
    wait_users_state(&mut env.db, &[1], "synced");
    wait_for_default("companies synced", || {
        let s = statuses(&mut env.db, "hubspot", "companies");
        (s.len() == 3 && s.values().all(|s| s.state == "synced")).then_some(())
    });
    let mapping: i32 = env
        .db
        .query_one(
            "SELECT id FROM etlify.mappings WHERE source = 'companies'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    let worker = env.cluster.wait_worker_pid();
    let log_before = env.cluster.log().len();

    // committed changes of the table, likely still pending (or in flight) when it goes
    env.db
        .batch_execute(
            "INSERT INTO companies SELECT i, 'c' || i || '.example.com' FROM generate_series(4, 50) i",
        )
        .unwrap();
    // CASCADE: the serializer takes the table's row type
    env.db
        .batch_execute("DROP TABLE companies CASCADE")
        .unwrap_or_else(|e| panic!("DROP TABLE: {}", error_text(&e)));

    assert_eq!(
        count(
            &mut env.db,
            &format!("SELECT count(*) FROM etlify.mappings WHERE id = {mapping}")
        ),
        0,
        "the mapping is gone"
    );
    assert_eq!(
        count(
            &mut env.db,
            "SELECT count(*) FROM etlify.sync_status WHERE source::text <> 'users'"
        ),
        0
    );
    assert_eq!(
        overview(&mut env.db, "hubspot", "users")["crm"],
        json!("hubspot")
    );
    assert_eq!(
        count(&mut env.db, "SELECT count(*) FROM etlify.overview"),
        1
    );
    // its queue rows and sync state go with the drain's next round (DROP TABLE
    // itself touches only the mapping row, so it never waits on the worker)
    for t in ["etlify.records", "etlify.queue", "etlify.changes"] {
        wait_for_default(&format!("{t} without rows of the dropped mapping"), || {
            let n = count(
                &mut env.db,
                &format!("SELECT count(*) FROM {t} WHERE mapping_id = {mapping}"),
            );
            (n == 0).then_some(())
        });
    }
    assert_eq!(
        count(&mut env.db, "SELECT count(*) FROM etlify.forgotten"),
        0,
        "the cleanup is done"
    );

    // the worker keeps working for the other mapping
    insert_users(&mut env.db, [2]);
    env.db
        .execute("UPDATE users SET first_name = 'After' WHERE id = 1", &[])
        .unwrap();
    wait_users_state(&mut env.db, &[1, 2], "synced");
    wait_contact(&env, &email(1), "firstname After", |c| {
        prop(c, "firstname") == Some("After")
    });
    assert!(env.mock.find("contacts", "email", &email(2)).is_some());
    assert_eq!(
        env.cluster.worker_pid(),
        Some(worker),
        "the worker did not restart"
    );
    let errors = worker_errors(&env.cluster.log()[log_before..]);
    assert!(
        errors.is_empty(),
        "worker errors after DROP TABLE:\n{}",
        errors.join("\n")
    );
}

/// 5b. DROP EXTENSION etlify takes the capture triggers (and their shared function) off
///     user tables; writes go on; the extension can be created again and works.
#[test]
fn drop_extension_removes_the_capture_triggers_and_writes_go_on() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    env.db
        .batch_execute(
            r#"CREATE SCHEMA "Other";
               CREATE TABLE "Other".things (id int PRIMARY KEY, email text);
               CREATE FUNCTION "Other".thing_payload(t "Other".things) RETURNS jsonb LANGUAGE sql
                 AS $$ SELECT jsonb_build_object('email', t.email) $$;
               SELECT etlify.sync_table('hubspot', '"Other".things', 'contacts', 'email', '"Other".thing_payload');"#,
        )
        .unwrap();
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    assert_eq!(triggers_on(&mut env.db, "users").len(), 4);
    assert_eq!(triggers_on(&mut env.db, r#""Other".things"#).len(), 4);

    env.db
        .batch_execute("DROP EXTENSION etlify")
        .unwrap_or_else(|e| panic!("DROP EXTENSION etlify: {}", error_text(&e)));
    let left: Vec<String> = env
        .db
        .query(
            "SELECT tgrelid::regclass::text || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(left.is_empty(), "triggers left behind: {left:?}");
    assert_eq!(
        count(
            &mut env.db,
            "SELECT count(*) FROM pg_proc WHERE proname LIKE '\\_capture%'"
        ),
        0,
        "capture function left behind"
    );
    assert_eq!(
        count(
            &mut env.db,
            "SELECT count(*) FROM pg_extension WHERE extname = 'etlify'"
        ),
        0
    );

    // writes to the formerly synced tables succeed, also for a non-superuser
    env.db
        .batch_execute(
            "CREATE ROLE app_writer LOGIN;
             GRANT INSERT, UPDATE, DELETE, TRUNCATE ON users TO app_writer;",
        )
        .unwrap();
    insert_users(&mut env.db, [2, 3]);
    env.db
        .batch_execute(
            r#"UPDATE users SET first_name = 'Gone' WHERE id = 1;
               DELETE FROM users WHERE id = 2;
               INSERT INTO "Other".things VALUES (1, 't1@example.com');
               UPDATE "Other".things SET email = 't1b@example.com';
               DELETE FROM "Other".things;
               TRUNCATE "Other".things;"#,
        )
        .unwrap_or_else(|e| panic!("writes after DROP EXTENSION: {}", error_text(&e)));
    let mut w = env.cluster.connect_as("app_writer");
    w.batch_execute(
        "INSERT INTO users (id, email) VALUES (9, 'w9@example.com');
         UPDATE users SET note = 'w';
         DELETE FROM users;
         TRUNCATE users;",
    )
    .unwrap_or_else(|e| panic!("app_writer after DROP EXTENSION: {}", error_text(&e)));

    // the extension comes back and the worker serves it again
    let objects = env.mock.objects("contacts").len();
    env.db
        .batch_execute("CREATE EXTENSION etlify")
        .unwrap_or_else(|e| panic!("CREATE EXTENSION again: {}", error_text(&e)));
    etlify_e2e::fixtures::register_crm(&mut env.db, "hubspot", &env.mock, "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [10]);
    wait_users_state(&mut env.db, &[10], "synced");
    assert!(env.mock.find("contacts", "email", &email(10)).is_some());
    assert_eq!(env.mock.objects("contacts").len(), objects + 1);
}

/// 6. etlify.sync() waits on its latch: statement_timeout and pg_cancel_backend end
///    it at once, and the request slot it held is given back.
#[test]
fn sync_is_interruptible_by_statement_timeout_and_cancel() {
    let mut env = Env::start("", "");
    insert_users(&mut env.db, 1..=3);
    // nothing queued: only etlify.sync() sends these records
    map_users(&mut env.db, ", backfill => false");
    env.cluster.wait_worker_pid();
    env.mock.set_faults(json!({"delay_ms": 3000}));

    // statement_timeout
    env.db
        .batch_execute("SET statement_timeout = '300ms'")
        .unwrap();
    let t0 = Instant::now();
    let err = env
        .db
        .query_one("SELECT etlify.sync('hubspot', 'users', '1')", &[])
        .expect_err("sync must be cut off by statement_timeout");
    let took = t0.elapsed();
    assert_error(
        &err,
        &SqlState::QUERY_CANCELED,
        "statement timeout",
        "sync('1')",
    );
    assert!(
        took < Duration::from_millis(2500),
        "sync() ended {took:?} after it started, statement_timeout = 300ms"
    );
    eprintln!("sync() cut off by statement_timeout after {took:?}");

    // more abandoned requests than there are request slots (32): none may stay taken
    env.db
        .batch_execute("SET statement_timeout = '40ms'")
        .unwrap();
    for i in 0..40 {
        let t = Instant::now();
        let err = env
            .db
            .query_one("SELECT etlify.sync('hubspot', 'users', '1')", &[])
            .expect_err("sync must be cut off by statement_timeout");
        assert_error(&err, &SqlState::QUERY_CANCELED, "", &format!("round {i}"));
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "round {i}: {:?}",
            t.elapsed()
        );
    }
    env.db.batch_execute("RESET statement_timeout").unwrap();

    // pg_cancel_backend from another session
    let conninfo = env.cluster.conninfo("postgres");
    let (pid_tx, pid_rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let mut c = Client::connect(&conninfo, NoTls).expect("connect");
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        pid_tx.send(pid).unwrap();
        let r = c.query_one("SELECT etlify.sync('hubspot', 'users', '2')", &[]);
        (r.map(|row| row.get::<_, String>(0)), Instant::now())
    });
    let pid = pid_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("waiter pid");
    wait_for(
        Duration::from_secs(10),
        "sync('2') waiting in its backend",
        || {
            let n = count(
                &mut env.db,
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active' \
                 AND query LIKE '%etlify.sync%'"
                ),
            );
            (n == 1).then_some(())
        },
    );
    thread::sleep(Duration::from_millis(200)); // well inside the wait
    let cancelled_at = Instant::now();
    assert_eq!(
        scalar(&mut env.db, &format!("pg_cancel_backend({pid})")).as_deref(),
        Some("true")
    );
    let (result, ended) = waiter.join().expect("waiter thread");
    let err = result.expect_err("sync('2') must be cancelled");
    assert_error(&err, &SqlState::QUERY_CANCELED, "user request", "sync('2')");
    let after = ended.saturating_duration_since(cancelled_at);
    assert!(after < Duration::from_millis(2500), "cancel took {after:?}");
    eprintln!("sync() cancelled {after:?} after pg_cancel_backend");

    // without the delay, a later sync() gets a slot and its answer
    env.mock.set_faults(json!({}));
    env.db
        .batch_execute("SET statement_timeout = '30s'")
        .unwrap();
    // synced by this call, or by the other worker on the commit already
    let v = scalar(&mut env.db, "etlify.sync('hubspot', 'users', '3')");
    assert!(
        matches!(v.as_deref(), Some("synced" | "not_modified")),
        "{v:?}"
    );
    assert!(env.mock.find("contacts", "email", &email(3)).is_some());
    // the abandoned ones were still reconciled (or are now): nothing lost
    for k in ["1", "2"] {
        let r = scalar(
            &mut env.db,
            &format!("etlify.sync('hubspot', 'users', '{k}')"),
        );
        assert!(
            matches!(r.as_deref(), Some("synced" | "not_modified")),
            "sync({k}) = {r:?}"
        );
    }
    assert_eq!(env.mock.objects("contacts").len(), 3);
}

/// 7. A composite primary key is a declaration error naming the table; nothing is
///    installed.
#[test]
fn composite_primary_key_is_rejected_and_nothing_installed() {
    let mut env = Env::start("", "");
    env.db
        .batch_execute(
            "CREATE TABLE memberships (org_id int, user_id int, email text, PRIMARY KEY (org_id, user_id));
             INSERT INTO memberships VALUES (1, 1, 'm@example.com');
             CREATE FUNCTION membership_payload(m memberships) RETURNS jsonb LANGUAGE sql
               AS $$ SELECT jsonb_build_object('email', m.email) $$;",
        )
        .unwrap();
    let before = etlify_snapshot(&mut env.db);
    let err = env
        .db
        .batch_execute(
            "SELECT etlify.sync_table('hubspot', 'memberships', 'contacts', 'email', 'membership_payload')",
        )
        .expect_err("a composite primary key must be rejected");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.severity(), "ERROR");
    let text = error_text(&err);
    assert!(
        text.contains("memberships"),
        "the error names the table: {text}"
    );
    assert!(
        text.to_lowercase().contains("composite") || text.to_lowercase().contains("primary key"),
        "the error says why: {text}"
    );
    assert_eq!(etlify_snapshot(&mut env.db), before, "nothing installed");
    assert!(triggers_on(&mut env.db, "memberships").is_empty());
    assert_eq!(
        count(&mut env.db, "SELECT count(*) FROM etlify.mappings"),
        0
    );
    env.db
        .batch_execute("INSERT INTO memberships VALUES (1, 2, 'n@example.com')")
        .unwrap();
    assert_eq!(count(&mut env.db, "SELECT count(*) FROM etlify.changes"), 0);
    assert!(env.mock.crm_requests().is_empty());
}

/// DDL on synced tables while the worker drains them: DROP TABLE, TRUNCATE and
/// unsync_table never deadlock with the worker (each once did: the worker held
/// queue rows while waiting for the table, and DROP's cleanup waited for those
/// rows), and no table leaves anything behind.
#[test]
fn ddl_on_synced_tables_never_deadlocks_with_the_worker() {
    let mut env = Env::start("", "");
    env.db
        .batch_execute("SET statement_timeout = '20s'")
        .unwrap();
    for i in 0..12 {
        let t = format!("ddl_{i}");
        env.db
            .batch_execute(&format!(
                "CREATE TABLE {t} (id bigserial PRIMARY KEY, email text);
                 CREATE FUNCTION {t}_payload(r {t}) RETURNS jsonb LANGUAGE sql
                   AS $$ SELECT jsonb_build_object('email', r.email) $$;
                 SELECT etlify.sync_table('hubspot', '{t}', 'contacts', 'email', '{t}_payload');
                 INSERT INTO {t} (email) SELECT '{t}-' || g || '@example.com' FROM generate_series(1, 3000) g;"
            ))
            .unwrap();
        // let the worker get busy with it
        std::thread::sleep(Duration::from_millis(15 * (i % 5)));
        let ddl = match i % 3 {
            0 => format!("TRUNCATE {t}; DROP TABLE {t} CASCADE"),
            1 => format!("SELECT etlify.unsync_table('hubspot', '{t}'); DROP TABLE {t} CASCADE"),
            _ => format!("DROP TABLE {t} CASCADE"),
        };
        if let Err(e) = env.db.batch_execute(&ddl) {
            panic!("{ddl}: {}\n{}", error_text(&e), env.cluster.log());
        }
    }
    wait_for_default("no state left of the dropped tables", || {
        let left = count(
            &mut env.db,
            "SELECT (SELECT count(*) FROM etlify.mappings WHERE source::text LIKE 'ddl%')
                  + (SELECT count(*) FROM etlify.forgotten)
                  + (SELECT count(*) FROM etlify.queue q WHERE NOT EXISTS
                       (SELECT 1 FROM etlify.mappings m WHERE m.id = q.mapping_id))
                  + (SELECT count(*) FROM etlify.records r WHERE NOT EXISTS
                       (SELECT 1 FROM etlify.mappings m WHERE m.id = r.mapping_id))",
        );
        (left == 0).then_some(())
    });
    assert!(!env.cluster.log().contains("deadlock detected"));
}
