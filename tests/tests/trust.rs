//! Trust (issue 9): no path to superuser, nothing for other roles, keys that do
//! not depend on the writer's session, no lost change and no wrong CRM object when
//! keys move, tables are renamed or inherited, and one broken mapping stalls nothing.
//! Each test reproduces an attack or a loss that the previous design allowed.

use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

use etlify_e2e::fixtures::{
    email, error_text, insert_users, map_users, register_crm, scalar, status_of, statuses,
    wait_users_state,
};
use etlify_e2e::mock::id_of;
use etlify_e2e::{wait_for_default, Env};
use postgres::error::SqlState;
use postgres::Client;
use serde_json::{json, Value};

fn prop<'a>(o: &'a Value, p: &str) -> Option<&'a str> {
    o["properties"][p].as_str()
}

fn exec(db: &mut Client, sql: &str) {
    db.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
}

fn count(db: &mut Client, sql: &str) -> i64 {
    scalar(db, sql)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{sql}: not a count"))
}

/// Asserts that `sql` fails with SQLSTATE `state` (one of `states`) and a message
/// containing `text`.
fn assert_fails(db: &mut Client, sql: &str, states: &[SqlState], text: &str) {
    match db.batch_execute(sql) {
        Ok(()) => panic!("{sql}: succeeded, expected an error"),
        Err(e) => {
            let message = error_text(&e);
            assert!(
                states.iter().any(|s| e.code() == Some(s)),
                "{sql}: SQLSTATE {:?}: {message}",
                e.code()
            );
            assert!(message.contains(text), "{sql}: {message}");
            // CONTEXT lines, if any, name what the user called, never etlify's
            // helpers or internal SQL
            let context = e.as_db_error().and_then(|d| d.where_()).unwrap_or("");
            assert!(
                !context.contains("etlify._") && !context.contains("SQL statement"),
                "{sql}: {message}\nCONTEXT: {context}"
            );
            assert!(
                !message.contains("panicked")
                    && !message.contains("backtrace")
                    && !message.contains("  0: "),
                "{sql}: {message}"
            );
        }
    }
}

fn is_superuser(db: &mut Client, role: &str) -> bool {
    scalar(
        db,
        &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{role}'"),
    )
    .as_deref()
        == Some("true")
}

/// The live contact with this email, once it satisfies `ok`.
fn wait_contact(env: &Env, mail: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for_default(&format!("contact {mail}: {what}"), || {
        env.mock.find("contacts", "email", mail).filter(|o| ok(o))
    })
}

/// B8, and the suspected persistence of settings (13): a serializer and a sync_if
/// that try every way back to the worker's superuser fail, the role stays what it
/// was, and nothing they set outlives them.
#[test]
fn serializers_and_sync_if_run_restricted_as_their_owner() {
    let mut env = Env::start("", "");
    exec(
        &mut env.db,
        r#"
        CREATE ROLE app_owner LOGIN NOSUPERUSER;
        GRANT etlify_admin TO app_owner;
        CREATE TABLE esc (id int PRIMARY KEY, how text NOT NULL, email text NOT NULL);
        ALTER TABLE esc OWNER TO app_owner;
        CREATE FUNCTION esc_payload(e esc) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN
            IF e.how = 'set_config_role' THEN
                PERFORM set_config('role', 'none', true);
                EXECUTE 'ALTER ROLE app_owner SUPERUSER';
            ELSIF e.how = 'set_role' THEN
                EXECUTE 'SET ROLE postgres';
                EXECUTE 'ALTER ROLE app_owner SUPERUSER';
            ELSIF e.how = 'reset_role' THEN
                EXECUTE 'RESET ROLE';
                EXECUTE 'ALTER ROLE app_owner SUPERUSER';
            ELSIF e.how = 'session_authorization' THEN
                EXECUTE 'SET SESSION AUTHORIZATION postgres';
                EXECUTE 'ALTER ROLE app_owner SUPERUSER';
            ELSIF e.how = 'settings' THEN
                PERFORM set_config('statement_timeout', '1', false);
                PERFORM set_config('search_path', 'nowhere', false);
                PERFORM set_config('work_mem', '64kB', false);
            END IF;
            RETURN jsonb_build_object('email', e.email,
                'runs_as', current_user::text,
                'timeout', current_setting('statement_timeout'),
                'work_mem', current_setting('work_mem'));
        END
        $$;
        ALTER FUNCTION esc_payload(esc) OWNER TO app_owner;

        CREATE TABLE esc_if (id int PRIMARY KEY, email text NOT NULL);
        ALTER TABLE esc_if OWNER TO app_owner;
        CREATE FUNCTION esc_check(i int) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            IF i = 1 THEN
                PERFORM set_config('role', 'none', true);
                EXECUTE 'ALTER ROLE app_owner SUPERUSER';
            END IF;
            RETURN true;
        END
        $$;
        ALTER FUNCTION esc_check(int) OWNER TO app_owner;
        CREATE FUNCTION esc_if_payload(e esc_if) RETURNS jsonb LANGUAGE sql AS
            $$ SELECT jsonb_build_object('email', e.email) $$;
        ALTER FUNCTION esc_if_payload(esc_if) OWNER TO app_owner;
        "#,
    );
    let mut owner = env.cluster.connect_as("app_owner");
    exec(
        &mut owner,
        "SELECT etlify.sync_table('hubspot', 'esc', 'contacts', 'email', 'esc_payload');
         SELECT etlify.sync_table('hubspot', 'esc_if', 'contacts', 'email', 'esc_if_payload',
                                  sync_if => 'esc_check(id)');",
    );
    exec(
        &mut owner,
        "INSERT INTO esc VALUES (1, 'set_config_role', 'e1@x.test'), (2, 'set_role', 'e2@x.test'),
                                (3, 'reset_role', 'e3@x.test'), (4, 'session_authorization', 'e4@x.test'),
                                (5, 'settings', 'e5@x.test');
         INSERT INTO esc_if VALUES (1, 'if1@x.test'), (2, 'if2@x.test');",
    );
    let failed = wait_for_default("the four escapes fail", || {
        let s = statuses(&mut env.db, "hubspot", "esc");
        (["1", "2", "3", "4"]
            .iter()
            .all(|k| s.get(*k).is_some_and(|r| r.error_count > 0)))
        .then_some(s)
    });
    for k in ["1", "2", "3", "4"] {
        let e = failed[k].last_error.clone().unwrap_or_default();
        assert!(
            e.contains("within security-restricted operation")
                || e.contains("within security-definer function"),
            "escape {k}: {e}"
        );
    }
    wait_for_default("sync_if escape fails", || {
        status_of(&mut env.db, "hubspot", "esc_if", "1").filter(|s| s.error_count > 0)
    });
    assert!(!is_superuser(&mut env.db, "app_owner"));

    // the settings row synced as the owner; what it set is gone for the next row
    let c5 = wait_contact(&env, "e5@x.test", "synced", |_| true);
    assert_eq!(prop(&c5, "runs_as"), Some("app_owner"), "{c5}");
    exec(
        &mut owner,
        "INSERT INTO esc VALUES (6, 'plain', 'e6@x.test')",
    );
    let c6 = wait_contact(&env, "e6@x.test", "synced", |_| true);
    assert_ne!(prop(&c6, "timeout"), Some("1ms"), "{c6}");
    assert_ne!(prop(&c6, "work_mem"), Some("64kB"), "{c6}");
    wait_contact(&env, "if2@x.test", "synced", |_| true);
    // and the worker goes on serving the other mappings
    insert_users(&mut env.db, [1]);
    map_users(&mut env.db, ", backfill => true");
    wait_users_state(&mut env.db, &[1], "synced");
    assert!(!is_superuser(&mut env.db, "app_owner"));
}

/// B9: a role with CREATE on public plants exact-type twins of the functions and
/// operators etlify's SQL calls. None of them ever runs, whatever etlify does.
#[test]
fn planted_twins_in_public_never_run() {
    let mut env = Env::start("", "");
    exec(
        &mut env.db,
        r#"
        CREATE ROLE mallory LOGIN NOSUPERUSER;
        GRANT CREATE ON SCHEMA public TO mallory;
        CREATE TABLE public.hijacked (what text, by_role text);
        GRANT INSERT ON public.hijacked TO PUBLIC;
        "#,
    );
    let mut m = env.cluster.connect_as("mallory");
    // each twin notes that it ran, tries to make mallory superuser, then behaves
    exec(
        &mut m,
        r#"
        CREATE FUNCTION public.hijack(what text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO public.hijacked VALUES (what, current_user);
            BEGIN
                EXECUTE 'ALTER ROLE mallory SUPERUSER';
            EXCEPTION WHEN OTHERS THEN NULL;
            END;
        END $$;
        CREATE FUNCTION public.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
        CREATE FUNCTION public.unnest(a bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('unnest(bigint[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
        CREATE FUNCTION public.format(f text, a text) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('format(text,text)'); RETURN pg_catalog.format(f, a); END $$;
        CREATE FUNCTION public.format(f text, a bigint) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('format(text,bigint)'); RETURN pg_catalog.format(f, a); END $$;
        CREATE FUNCTION public.format(f text, a integer) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('format(text,integer)'); RETURN pg_catalog.format(f, a); END $$;
        CREATE FUNCTION public.nextval(s text) RETURNS bigint LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('nextval(text)'); RETURN pg_catalog.nextval(s::regclass); END $$;
        CREATE FUNCTION public.cardinality(a text[]) RETURNS int LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('cardinality(text[])'); RETURN pg_catalog.cardinality(a); END $$;
        CREATE FUNCTION public.array_fill(v text, d int[]) RETURNS text[] LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('array_fill(text,int[])'); RETURN pg_catalog.array_fill(v, d); END $$;
        CREATE FUNCTION public.power(a int, b double precision) RETURNS double precision LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('power(int,float8)'); RETURN pg_catalog.power(a::float8, b); END $$;
        CREATE FUNCTION public.jsonb_build_object(a text, b bigint) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('jsonb_build_object(text,bigint)'); RETURN pg_catalog.jsonb_build_object(a, b); END $$;
        CREATE FUNCTION public.make_interval(secs numeric) RETURNS interval LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('make_interval(numeric)'); RETURN pg_catalog.make_interval(secs => secs::float8); END $$;
        CREATE FUNCTION public.hijack_cat(a text[], b text) RETURNS text[] LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('||(text[],text)'); RETURN pg_catalog.array_append(a, b); END $$;
        CREATE OPERATOR public.|| (LEFTARG = text[], RIGHTARG = text, FUNCTION = public.hijack_cat);
        CREATE FUNCTION public.hijack_eq(a bigint, b text) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('=(bigint,text)'); RETURN a::text = b; END $$;
        CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = text, FUNCTION = public.hijack_eq);
        CREATE FUNCTION public.hijack_agg(s text[], v text) RETURNS text[] LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('array_agg(text)'); RETURN pg_catalog.array_append(s, v); END $$;
        CREATE AGGREGATE public.array_agg(text) (SFUNC = public.hijack_agg, STYPE = text[]);
        CREATE FUNCTION public.hijack_agg8(s bigint[], v bigint) RETURNS bigint[] LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.hijack('array_agg(bigint)'); RETURN pg_catalog.array_append(s, v); END $$;
        CREATE AGGREGATE public.array_agg(bigint) (SFUNC = public.hijack_agg8, STYPE = bigint[]);
        "#,
    );
    // everything etlify does, by the worker and inline (rows are written with
    // plain VALUES: the test's own fixtures would call the twins themselves)
    map_users(&mut env.db, "");
    exec(
        &mut env.db,
        "INSERT INTO users (id, email, first_name) VALUES (1, 'user1@example.com', 'F1'),
           (2, 'user2@example.com', 'F2'), (3, 'user3@example.com', 'F3'),
           (4, 'user4@example.com', 'F4'), (5, 'user5@example.com', 'F5')",
    );
    wait_users_state(&mut env.db, &[1, 2, 3, 4, 5], "synced");
    exec(
        &mut env.db,
        "UPDATE users SET first_name = 'Changed' WHERE id <= 2; DELETE FROM users WHERE id = 5;",
    );
    wait_users_state(&mut env.db, &[5], "deleted");
    for sql in [
        "SELECT etlify.sync('hubspot', 'users', '1')",
        "SELECT etlify.delete('hubspot', 'users', '2')",
        "SELECT etlify.enqueue('hubspot', 'users', '3')",
        "SELECT etlify.reset_errors('hubspot', 'users', NULL)",
        "SELECT etlify.crm_id('hubspot', 'users', '1')",
        "SELECT etlify.sync_stale('hubspot', async => false)",
        "SELECT etlify.sync_stale('hubspot', force => true)",
        "SELECT etlify.drain()",
        "SELECT * FROM etlify.sync_status",
        "SELECT * FROM etlify.overview",
        "SELECT * FROM etlify.sync_log",
        "TRUNCATE users",
    ] {
        exec(&mut env.db, sql);
    }
    exec(
        &mut env.db,
        "INSERT INTO users (id, email) VALUES (6, 'user6@example.com'), (7, 'user7@example.com')",
    );
    wait_users_state(&mut env.db, &[6, 7], "synced");
    exec(
        &mut env.db,
        "SELECT etlify.unsync_table('hubspot', 'users');
         SELECT etlify.register_crm('hubspot', 'null');",
    );
    thread::sleep(Duration::from_millis(600));
    let hijacked = scalar(
        &mut env.db,
        "SELECT coalesce(string_agg(DISTINCT what || ' as ' || by_role, ', '), '') FROM public.hijacked",
    )
    .unwrap_or_default();
    assert_eq!(hijacked, "", "planted functions ran");
    assert!(!is_superuser(&mut env.db, "mallory"));
}

/// B10, B11: a role outside etlify_admin can do nothing through etlify; a member
/// declares mappings on its own tables only, and sees only what it may read.
#[test]
fn other_roles_can_do_nothing_through_etlify() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    exec(
        &mut env.db,
        r#"
        CREATE ROLE nobody LOGIN NOSUPERUSER;
        CREATE ROLE adm LOGIN NOSUPERUSER;
        GRANT etlify_admin TO adm;
        GRANT CREATE ON SCHEMA public TO adm;
        CREATE TABLE theirs (id int PRIMARY KEY, email text);
        CREATE FUNCTION theirs_payload(t theirs) RETURNS jsonb LANGUAGE sql AS
            $$ SELECT jsonb_build_object('email', t.email) $$;
        GRANT SELECT ON theirs TO adm;
        "#,
    );
    let denied = [SqlState::INSUFFICIENT_PRIVILEGE];
    let mut n = env.cluster.connect_as("nobody");
    for sql in [
        "SELECT etlify.register_crm('x', 'null')",
        "SELECT etlify.sync_table('hubspot', 'users', 'contacts', 'email', 'user_payload')",
        "SELECT etlify.unsync_table('hubspot', 'users')",
        "SELECT etlify.sync('hubspot', 'users', '1')",
        "SELECT etlify.delete('hubspot', 'users', '1')",
        "SELECT etlify.enqueue('hubspot', 'users', '1')",
        "SELECT etlify.reset_errors('hubspot')",
        "SELECT etlify.crm_id('hubspot', 'users', '1')",
        "SELECT etlify.drain()",
        "SELECT etlify.sync_stale()",
        "SELECT * FROM etlify.sync_status",
        "SELECT * FROM etlify.overview",
        "SELECT * FROM etlify.sync_log",
        "SELECT * FROM etlify.crms",
        "SELECT * FROM etlify.crm_secrets",
        "SELECT * FROM etlify.queue",
        "INSERT INTO etlify.changes (mapping_id, keys) VALUES (1, ARRAY['1'])",
        "INSERT INTO etlify.queue (mapping_id, key, change_seq) VALUES (1, '1', 1)",
    ] {
        assert_fails(&mut n, sql, &denied, "permission denied");
    }
    // internal functions: not callable by anyone else (whatever their arguments);
    // by etlify_admin only the other halves of sync_table and sync_stale, which
    // check their caller themselves, and etlify._home (where this database is),
    // _version and _crm_budget (a CRM's live state), which crm_status reads
    let for_admins = [
        "_declare_mapping",
        "_sync_stale",
        "_home",
        "_version",
        "_crm_budget",
    ];
    let internal: Vec<(String, String)> = env
        .db
        .query(
            "SELECT p.oid::regprocedure::text, p.proname::text FROM pg_proc p
              WHERE p.pronamespace = 'etlify'::regnamespace AND p.proname LIKE '\\_%'
                AND p.prorettype <> 'trigger'::regtype AND p.prorettype <> 'event_trigger'::regtype",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(internal.len() > for_admins.len());
    for (f, name) in &internal {
        let can = scalar(
            &mut env.db,
            &format!("has_function_privilege('nobody', '{f}', 'EXECUTE')"),
        );
        assert_eq!(can.as_deref(), Some("false"), "nobody may execute {f}");
        let can = scalar(
            &mut env.db,
            &format!("has_function_privilege('adm', '{f}', 'EXECUTE')"),
        );
        let expected = if for_admins.contains(&name.as_str()) {
            "true"
        } else {
            "false"
        };
        assert_eq!(can.as_deref(), Some(expected), "adm's EXECUTE on {f}");
    }

    // a member of etlify_admin: not on a table it does not own
    let mut a = env.cluster.connect_as("adm");
    assert_fails(
        &mut a,
        "SELECT etlify.sync_table('hubspot', 'theirs', 'contacts', 'email', 'theirs_payload')",
        &denied,
        "theirs",
    );
    assert_fails(
        &mut a,
        "SELECT etlify.unsync_table('hubspot', 'users')",
        &denied,
        "users",
    );
    // nor the CRM ids or sync state of a table it cannot read
    assert_fails(
        &mut a,
        "SELECT etlify.crm_id('hubspot', 'users', '1')",
        &denied,
        "users",
    );
    assert_fails(
        &mut a,
        "SELECT etlify.sync('hubspot', 'users', '1')",
        &denied,
        "users",
    );
    assert_eq!(
        count(&mut a, "SELECT count(*) FROM etlify.sync_status"),
        0,
        "adm sees sync state of users"
    );
    assert_fails(
        &mut a,
        "SELECT * FROM etlify.crm_secrets",
        &denied,
        "permission denied",
    );
    // on its own table: yes
    exec(
        &mut a,
        r#"
        CREATE TABLE mine (id int PRIMARY KEY, email text);
        CREATE FUNCTION mine_payload(t mine) RETURNS jsonb LANGUAGE sql AS
            $$ SELECT jsonb_build_object('email', t.email) $$;
        INSERT INTO mine VALUES (1, 'mine1@x.test');
        SELECT etlify.sync_table('hubspot', 'mine', 'contacts', 'email', 'mine_payload');
        "#,
    );
    wait_contact(&env, "mine1@x.test", "synced", |_| true);
    wait_for_default("adm sees its record", || {
        (count(
            &mut a,
            "SELECT count(*) FROM etlify.sync_status WHERE state = 'synced'",
        ) == 1)
            .then_some(())
    });
    let id = scalar(&mut a, "SELECT etlify.crm_id('hubspot', 'mine', '1')");
    assert!(id.is_some());
    assert_eq!(
        scalar(&mut a, "SELECT etlify.sync('hubspot', 'mine', '1')").as_deref(),
        Some("not_modified")
    );
    // the mapping runs as adm: a serializer reading a table adm cannot read fails
    assert_eq!(
        scalar(
            &mut env.db,
            "SELECT owner::text FROM etlify.mappings WHERE source = 'mine'::regclass"
        )
        .as_deref(),
        Some("adm")
    );
}

/// B11: change rows that cannot be absorbed (a NULL key, a key too long for the
/// queue's index) are discarded with a log line; every mapping goes on.
#[test]
fn change_rows_the_worker_cannot_absorb_stall_nothing() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    let id = scalar(
        &mut env.db,
        "SELECT id FROM etlify.mappings WHERE source = 'users'::regclass",
    )
    .unwrap();
    exec(
        &mut env.db,
        &format!(
            "INSERT INTO etlify.changes (mapping_id, keys) VALUES ({id}, ARRAY[NULL]::text[]);
             INSERT INTO etlify.changes (mapping_id, keys) VALUES ({id}, ARRAY[repeat('9', 9000)]);
             INSERT INTO etlify.changes (mapping_id, keys) VALUES (987654, ARRAY['1']);"
        ),
    );
    insert_users(&mut env.db, 1..=3);
    wait_users_state(&mut env.db, &[1, 2, 3], "synced");
    wait_for_default("the bad change rows are gone", || {
        (count(&mut env.db, "SELECT count(*) FROM etlify.changes") == 0).then_some(())
    });
    let log = env.cluster.log();
    assert!(log.contains("discarded"), "no log line for discarded keys");
}

/// A2, 7c: a key's text is the same whatever the writer's DateStyle, TimeZone,
/// IntervalStyle or extra_float_digits, and every `key` argument is parsed by the
/// key's type into that text.
#[test]
fn keys_are_canonical_whatever_the_session() {
    let mut env = Env::start("", "");
    exec(
        &mut env.db,
        r#"
        CREATE TABLE dk (k date PRIMARY KEY, email text NOT NULL);
        CREATE TABLE tk (k timestamptz PRIMARY KEY, email text NOT NULL);
        CREATE TABLE ik (k interval PRIMARY KEY, email text NOT NULL);
        CREATE TABLE fk (k float8 PRIMARY KEY, email text NOT NULL);
        CREATE FUNCTION dk_p(r dk) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('email', r.email) $$;
        CREATE FUNCTION tk_p(r tk) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('email', r.email) $$;
        CREATE FUNCTION ik_p(r ik) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('email', r.email) $$;
        CREATE FUNCTION fk_p(r fk) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('email', r.email) $$;
        SELECT etlify.sync_table('hubspot', 'dk', 'contacts', 'email', 'dk_p');
        SELECT etlify.sync_table('hubspot', 'tk', 'contacts', 'email', 'tk_p');
        SELECT etlify.sync_table('hubspot', 'ik', 'contacts', 'email', 'ik_p');
        SELECT etlify.sync_table('hubspot', 'fk', 'contacts', 'email', 'fk_p');
        "#,
    );
    exec(
        &mut env.db,
        "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'America/New_York';
         SET IntervalStyle = 'sql_standard'; SET extra_float_digits = -10;
         INSERT INTO dk VALUES ('2024-01-02', 'd1@x.test'), ('2024-01-20', 'd2@x.test');
         INSERT INTO tk VALUES ('2024-01-02 10:00:00+00', 't1@x.test');
         INSERT INTO ik VALUES ('-1 days -02:00:00', 'i1@x.test');
         INSERT INTO fk VALUES (0.1234567890123, 'f1@x.test');",
    );
    for (table, key) in [
        ("dk", "2024-01-02"),
        ("dk", "2024-01-20"),
        ("tk", "2024-01-02 10:00:00+00"),
        ("ik", "-1 days -02:00:00"),
        ("fk", "0.1234567890123"),
    ] {
        let s = wait_for_default(&format!("{table} {key} synced"), || {
            status_of(&mut env.db, "hubspot", table, key).filter(|s| s.state == "synced")
        });
        assert!(s.crm_id.is_some());
    }
    // another session's settings: the same records, no second one
    exec(
        &mut env.db,
        "SET DateStyle = 'German'; SET TimeZone = 'Asia/Tokyo'; SET IntervalStyle = 'iso_8601';
         SET extra_float_digits = 0;
         UPDATE dk SET email = email; UPDATE tk SET email = 'changed-' || email;
         UPDATE ik SET email = 'changed-' || email; UPDATE fk SET email = 'changed-' || email;",
    );
    for mail in [
        "changed-t1@x.test",
        "changed-i1@x.test",
        "changed-f1@x.test",
    ] {
        wait_contact(&env, mail, "updated", |_| true);
    }
    for (table, n) in [("dk", 2), ("tk", 1), ("ik", 1), ("fk", 1)] {
        assert_eq!(
            statuses(&mut env.db, "hubspot", table).len(),
            n,
            "{table}: {:?}",
            statuses(&mut env.db, "hubspot", table)
        );
    }
    // key arguments: parsed by the key's type in the caller's settings, canonical after
    exec(&mut env.db, "SET DateStyle = 'SQL, DMY'");
    assert_eq!(
        scalar(
            &mut env.db,
            "SELECT etlify.sync('hubspot', 'dk', '02/01/2024')"
        )
        .as_deref(),
        Some("not_modified")
    );
    exec(&mut env.db, "RESET ALL");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    let before = env.mock.crm_inputs();
    for k in ["01", " 1", "+1"] {
        assert_eq!(
            scalar(
                &mut env.db,
                &format!("SELECT etlify.sync('hubspot', 'users', '{k}')")
            )
            .as_deref(),
            Some("not_modified"),
            "sync of key {k:?}"
        );
        assert_eq!(
            scalar(
                &mut env.db,
                &format!("SELECT etlify.crm_id('hubspot', 'users', '{k}')")
            ),
            scalar(&mut env.db, "SELECT etlify.crm_id('hubspot', 'users', '1')"),
        );
    }
    assert_eq!(
        env.mock.crm_inputs(),
        before,
        "non-canonical keys were sent"
    );
    assert_eq!(statuses(&mut env.db, "hubspot", "users").len(), 1);
    let bad = [SqlState::INVALID_TEXT_REPRESENTATION];
    for sql in [
        "SELECT etlify.crm_id('hubspot', 'users', 'x')",
        "SELECT etlify.reset_errors('hubspot', 'users', 'x')",
        "SELECT etlify.sync('hubspot', 'users', 'x')",
        "SELECT etlify.enqueue('hubspot', 'users', '1.5')",
    ] {
        assert_fails(&mut env.db, sql, &bad, "is not a valid bigint");
    }
}

/// A4: an inherited table's children are not the source: the serializer reads ONLY
/// the source, and its CRM objects are never those of a child's rows.
#[test]
fn inheritance_children_are_not_the_source() {
    let mut env = Env::start("", "");
    exec(
        &mut env.db,
        r#"
        CREATE TABLE inh (id int PRIMARY KEY, email text NOT NULL, note text);
        CREATE TABLE inh_child () INHERITS (inh);
        CREATE FUNCTION inh_p(r inh) RETURNS jsonb LANGUAGE sql AS
            $$ SELECT jsonb_build_object('email', r.email, 'lastname', r.note) $$;
        INSERT INTO inh VALUES (1, 'p1@x.test', 'a'), (2, 'p2@x.test', 'b');
        INSERT INTO inh_child VALUES (1, 'c1@x.test', 'c');
        SELECT etlify.sync_table('hubspot', 'inh', 'contacts', 'email', 'inh_p');
        "#,
    );
    let p1 = wait_contact(&env, "p1@x.test", "synced", |_| true);
    let p2 = wait_contact(&env, "p2@x.test", "synced", |_| true);
    exec(&mut env.db, "UPDATE inh SET note = note || ' v2'");
    wait_contact(&env, "p2@x.test", "v2", |o| {
        prop(o, "lastname") == Some("b v2")
    });
    wait_contact(&env, "p1@x.test", "v2", |o| {
        prop(o, "lastname") == Some("a v2")
    });
    let s = wait_for_default("inh records synced", || {
        let s = statuses(&mut env.db, "hubspot", "inh");
        (s.len() == 2 && s.values().all(|r| r.state == "synced")).then_some(s)
    });
    assert_eq!(s["1"].crm_id, id_of(&p1));
    assert_eq!(s["2"].crm_id, id_of(&p2));
    exec(&mut env.db, "DELETE FROM ONLY inh WHERE id = 2");
    wait_for_default("p2 archived", || {
        env.mock
            .archived("contacts")
            .iter()
            .any(|o| prop(o, "email") == Some("p2@x.test"))
            .then_some(())
    });
    thread::sleep(Duration::from_millis(500));
    assert!(env.mock.find("contacts", "email", "p1@x.test").is_some());
    assert!(env.mock.find("contacts", "email", "c1@x.test").is_none());
    assert_eq!(env.mock.archived("contacts").len(), 1);
}

/// A5: a request carries its database. `delete()` in a database the worker does not
/// serve never reaches the worker's database (same mapping id in both), and runs
/// inline instead of waiting.
#[test]
fn requests_stay_in_their_database() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [3]);
    wait_users_state(&mut env.db, &[3], "synced");
    exec(&mut env.db, "CREATE DATABASE app2");
    let mut app2 = env.cluster.connect_db("postgres", "app2");
    exec(
        &mut app2,
        r#"
        CREATE EXTENSION etlify;
        CREATE TABLE other (id int PRIMARY KEY, email text NOT NULL);
        CREATE FUNCTION other_p(r other) RETURNS jsonb LANGUAGE sql AS
            $$ SELECT jsonb_build_object('email', r.email) $$;
        INSERT INTO other VALUES (3, 'other3@x.test');
        "#,
    );
    register_crm(&mut app2, "hubspot", &env.mock, "");
    exec(
        &mut app2,
        "SELECT etlify.sync_table('hubspot', 'other', 'contacts', 'email', 'other_p')",
    );
    assert_eq!(
        scalar(&mut app2, "SELECT id FROM etlify.mappings"),
        scalar(&mut env.db, "SELECT id FROM etlify.mappings"),
        "the test needs the same mapping id in both databases"
    );
    assert_eq!(
        scalar(&mut app2, "SELECT etlify.sync('hubspot', 'other', '3')").as_deref(),
        Some("synced")
    );
    wait_contact(&env, "other3@x.test", "synced", |_| true);
    assert_eq!(
        scalar(&mut app2, "SELECT etlify.delete('hubspot', 'other', '3')").as_deref(),
        Some("deleted")
    );
    assert!(env
        .mock
        .find("contacts", "email", "other3@x.test")
        .is_none());
    assert!(
        env.mock.find("contacts", "email", &email(3)).is_some(),
        "the other database's contact was archived"
    );
    assert_eq!(
        scalar(&mut env.db, "SELECT state FROM etlify.sync_status").as_deref(),
        Some("synced")
    );
}

/// A6, 12a: renaming the table, its schema or the serializer never breaks sync;
/// dropping the serializer is refused while a mapping uses it.
#[test]
fn renames_are_followed_and_the_serializer_cannot_be_dropped() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1, 2]);
    wait_users_state(&mut env.db, &[1, 2], "synced");
    exec(
        &mut env.db,
        "ALTER TABLE users RENAME TO users_old;
         ALTER FUNCTION user_payload(users_old) RENAME TO user_payload_v2;
         CREATE SCHEMA crm_src; ALTER TABLE users_old SET SCHEMA crm_src;
         ALTER FUNCTION user_payload_v2(crm_src.users_old) SET SCHEMA crm_src;
         ALTER SCHEMA crm_src RENAME TO crm_src2;
         UPDATE crm_src2.users_old SET first_name = 'Renamed' WHERE id = 1;",
    );
    wait_contact(&env, &email(1), "renamed", |o| {
        prop(o, "firstname") == Some("Renamed")
    });
    assert_fails(
        &mut env.db,
        "DROP FUNCTION crm_src2.user_payload_v2(crm_src2.users_old)",
        &[SqlState::DEPENDENT_OBJECTS_STILL_EXIST],
        "user_payload_v2",
    );
    exec(
        &mut env.db,
        "INSERT INTO crm_src2.users_old (id, email, first_name) VALUES (3, 'user3@example.com', 'Three')",
    );
    wait_contact(&env, &email(3), "synced", |_| true);
    wait_for_default("every record synced, none failed", || {
        let s = statuses(&mut env.db, "hubspot", "crm_src2.users_old");
        (s.len() == 3
            && s.values()
                .all(|r| r.state == "synced" && r.error_count == 0))
        .then_some(())
    });
}

/// 7a: TRUNCATE (and DELETE) while the first batch of a backfill is in flight:
/// the CRM ends up holding nothing for rows that are gone.
#[test]
fn truncate_during_a_first_batch_leaves_no_object_behind() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    env.mock.set_faults(json!({"delay_ms": 1500}));
    insert_users(&mut env.db, 1..=250);
    wait_for_default("a batch in flight", || {
        (env.mock.inflight() > 0).then_some(())
    });
    exec(&mut env.db, "TRUNCATE users");
    env.mock.set_faults(json!({}));
    wait_for_default("no live contact", || {
        let live = env.mock.objects("contacts").len();
        let pending = count(
            &mut env.db,
            "SELECT count(*) FROM etlify.sync_status WHERE state NOT IN ('deleted', 'synced')",
        );
        (live == 0 && pending == 0).then_some(())
    });
    let synced = count(
        &mut env.db,
        "SELECT count(*) FROM etlify.sync_status WHERE state = 'synced'",
    );
    assert_eq!(synced, 0, "records say synced for rows that are gone");

    env.mock.set_faults(json!({"delay_ms": 1500}));
    insert_users(&mut env.db, 300..=399);
    wait_for_default("a batch in flight", || {
        (env.mock.inflight() > 0).then_some(())
    });
    exec(&mut env.db, "DELETE FROM users");
    env.mock.set_faults(json!({}));
    wait_for_default("no live contact after DELETE", || {
        (env.mock.objects("contacts").is_empty()
            && count(
                &mut env.db,
                "SELECT count(*) FROM etlify.sync_status WHERE state = 'synced'",
            ) == 0)
            .then_some(())
    });
}

/// The contact id of each user row, by key, from sync_status; asserts every row's
/// record is synced to the live contact that carries the row's email.
fn assert_rows_match_contacts(env: &mut Env) -> BTreeMap<i64, String> {
    let rows: Vec<(i64, String)> = env
        .db
        .query("SELECT id, email FROM users ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let s = statuses(&mut env.db, "hubspot", "users");
    let mut out = BTreeMap::new();
    for (id, mail) in rows {
        let rec = s
            .get(&id.to_string())
            .unwrap_or_else(|| panic!("no record for row {id}: {s:?}"));
        let contact = env
            .mock
            .find("contacts", "email", &mail)
            .unwrap_or_else(|| panic!("no live contact for row {id} ({mail})"));
        assert_eq!(rec.crm_id, id_of(&contact), "row {id}");
        out.insert(id, rec.crm_id.clone().unwrap());
    }
    out
}

/// A1: primary-key moves keep their CRM object, however they happen and whatever
/// the claims: single-row, bulk over many claims, chained, swapped through a
/// temporary key, with the match key changed in the same statement.
#[test]
fn primary_key_moves_keep_their_crm_object() {
    let mut env = Env::start("etlify.claim_size = 1", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 100..=140);
    let keys: Vec<i64> = (100..=140).collect();
    wait_users_state(&mut env.db, &keys, "synced");
    let before = assert_rows_match_contacts(&mut env);
    let settle = |env: &mut Env| {
        wait_for_default("nothing pending", || {
            (count(
                &mut env.db,
                "SELECT count(*) FROM etlify.sync_status WHERE state NOT IN ('synced', 'deleted')",
            ) == 0
                && count(&mut env.db, "SELECT count(*) FROM etlify.changes") == 0)
                .then_some(())
        });
        thread::sleep(Duration::from_millis(400));
    };

    exec(&mut env.db, "UPDATE users SET id = 1 WHERE id = 100");
    exec(
        &mut env.db,
        "BEGIN;
         UPDATE users SET id = 0 WHERE id = 101;
         UPDATE users SET id = 101 WHERE id = 102;
         UPDATE users SET id = 102 WHERE id = 0;
         UPDATE users SET id = 2000 WHERE id = 103;
         UPDATE users SET id = 3000 WHERE id = 2000;
         COMMIT;",
    );
    exec(
        &mut env.db,
        "UPDATE users SET id = 4000, email = 'moved104@x.test' WHERE id = 104",
    );
    exec(
        &mut env.db,
        "UPDATE users SET id = id - 5000 WHERE id BETWEEN 110 AND 140",
    );
    settle(&mut env);
    assert!(
        env.mock.archived("contacts").is_empty(),
        "contacts archived while their rows exist: {:?}",
        env.mock.archived("contacts")
    );
    let after = assert_rows_match_contacts(&mut env);
    assert_eq!(after[&1], before[&100]);
    assert_eq!(after[&101], before[&102]);
    assert_eq!(after[&102], before[&101]);
    assert_eq!(after[&3000], before[&103]);
    assert_eq!(after[&4000], before[&104]);
    for k in 110..=140 {
        assert_eq!(after[&(k - 5000)], before[&k], "row {k}");
    }
    assert_eq!(env.mock.objects("contacts").len(), 41);
}

/// C12: a mapping whose owner was dropped, a FOR ALL TABLES publication and a lock
/// held on one synced table stall nothing else.
#[test]
fn one_broken_mapping_stalls_nothing_else() {
    let mut env = Env::start("", "");
    exec(
        &mut env.db,
        r#"
        CREATE PUBLICATION everything FOR ALL TABLES;
        CREATE ROLE gone LOGIN NOSUPERUSER;
        GRANT etlify_admin TO gone;
        CREATE TABLE orphan (id int PRIMARY KEY, email text NOT NULL);
        ALTER TABLE orphan OWNER TO gone;
        CREATE FUNCTION orphan_p(r orphan) RETURNS jsonb LANGUAGE sql AS
            $$ SELECT jsonb_build_object('email', r.email) $$;
        CREATE TABLE locked (id int PRIMARY KEY, email text NOT NULL);
        CREATE FUNCTION locked_p(r locked) RETURNS jsonb LANGUAGE sql AS
            $$ SELECT jsonb_build_object('email', r.email) $$;
        INSERT INTO locked VALUES (1, 'locked1@x.test');
        SELECT etlify.sync_table('hubspot', 'locked', 'contacts', 'email', 'locked_p', backfill => false);
        "#,
    );
    let mut g = env.cluster.connect_as("gone");
    exec(
        &mut g,
        "SELECT etlify.sync_table('hubspot', 'orphan', 'contacts', 'email', 'orphan_p')",
    );
    drop(g);
    exec(
        &mut env.db,
        "REASSIGN OWNED BY gone TO postgres; DROP OWNED BY gone; DROP ROLE gone;
         INSERT INTO orphan VALUES (1, 'orphan1@x.test');",
    );
    // an idle transaction holds a lock on one synced table with pending records
    let mut holder = env.cluster.client();
    exec(
        &mut holder,
        "BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE;",
    );
    exec(
        &mut env.db,
        "SELECT etlify.enqueue('hubspot', 'locked', '1')",
    );
    thread::sleep(Duration::from_millis(500));
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=3);
    wait_users_state(&mut env.db, &[1, 2, 3], "synced");
    exec(&mut env.db, "UPDATE users SET first_name = 'Again'");
    wait_for_default("users updated", || {
        let o = env.mock.objects("contacts");
        (o.iter()
            .filter(|c| prop(c, "firstname") == Some("Again"))
            .count()
            == 3)
            .then_some(())
    });
    let o = wait_for_default("the orphaned mapping says why", || {
        status_of(&mut env.db, "hubspot", "orphan", "1").filter(|s| s.last_error.is_some())
    });
    assert!(
        o.last_error.as_deref().unwrap_or("").contains("owner"),
        "{o:?}"
    );
    exec(&mut holder, "COMMIT");
    wait_contact(&env, "locked1@x.test", "synced after the lock", |_| true);
}

/// 7b: numbers reach the CRM exactly as the serializer wrote them (no f64 on the
/// way), and the digest is over that same text.
#[test]
fn numbers_reach_the_crm_exactly() {
    let mut env = Env::start("", "");
    exec(
        &mut env.db,
        r#"
        CREATE TABLE amounts (id int PRIMARY KEY, email text NOT NULL, big numeric, fine numeric);
        CREATE FUNCTION amounts_p(r amounts) RETURNS jsonb LANGUAGE sql AS
            $$ SELECT jsonb_build_object('email', r.email, 'big', r.big, 'fine', r.fine) $$;
        INSERT INTO amounts VALUES (1, 'n1@x.test', 123456789012345678901234, 12345678.123456789012345);
        SELECT etlify.sync_table('hubspot', 'amounts', 'contacts', 'email', 'amounts_p');
        "#,
    );
    let c = wait_contact(&env, "n1@x.test", "synced", |_| true);
    assert_eq!(prop(&c, "big"), Some("123456789012345678901234"), "{c}");
    assert_eq!(prop(&c, "fine"), Some("12345678.123456789012345"), "{c}");
    // a change in the last digit is a change
    exec(
        &mut env.db,
        "UPDATE amounts SET fine = 12345678.123456789012346",
    );
    wait_contact(&env, "n1@x.test", "last digit", |o| {
        prop(o, "fine") == Some("12345678.123456789012346")
    });
}

/// 13b (suspected, disproved by this test): sync() calls cancelled while the
/// worker cannot serve (it waits on a hung CRM) never use up the request slots.
#[test]
fn cancelled_sync_calls_never_use_up_the_request_slots() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    env.mock.set_faults(json!({"hang_ms": 4000}));
    exec(
        &mut env.db,
        "UPDATE users SET first_name = 'Hang' WHERE id = 1",
    );
    wait_for_default("the worker waits on the CRM", || {
        (env.mock.inflight() > 0).then_some(())
    });
    let mut c = env.cluster.client();
    exec(&mut c, "SET statement_timeout = '30ms'");
    for _ in 0..40 {
        let e = c
            .batch_execute("SELECT etlify.sync('hubspot', 'users', '1')")
            .expect_err("sync() while the worker waits");
        assert_eq!(
            e.code(),
            Some(&SqlState::QUERY_CANCELED),
            "{}",
            error_text(&e)
        );
    }
    env.mock.set_faults(json!({}));
    exec(&mut c, "SET statement_timeout = '20s'");
    let started = std::time::Instant::now();
    insert_users(&mut env.db, [2]);
    // the second worker may have sent it on the commit already
    let v = scalar(&mut c, "SELECT etlify.sync('hubspot', 'users', '2')");
    assert!(
        matches!(v.as_deref(), Some("synced" | "not_modified")),
        "{v:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A3: writes aimed at any partition are captured (sub-partitions, partitions
/// created or attached after sync_table, COPY, TRUNCATE of one partition), and a
/// partition that is detached or dropped takes its rows' CRM objects with it.
#[test]
fn writes_to_partitions_are_captured() {
    let mut env = Env::start("", "");
    exec(
        &mut env.db,
        r#"
        CREATE TABLE pusers (id int PRIMARY KEY, email text NOT NULL, note text) PARTITION BY RANGE (id);
        CREATE TABLE pusers_lo PARTITION OF pusers FOR VALUES FROM (0) TO (100);
        CREATE TABLE pusers_hi PARTITION OF pusers FOR VALUES FROM (100) TO (1000) PARTITION BY RANGE (id);
        CREATE TABLE pusers_hi_a PARTITION OF pusers_hi FOR VALUES FROM (100) TO (500);
        CREATE FUNCTION pusers_p(r pusers) RETURNS jsonb LANGUAGE sql AS
            $$ SELECT jsonb_build_object('email', r.email, 'lastname', r.note) $$;
        INSERT INTO pusers VALUES (1, 'p1@x.test', NULL), (150, 'p150@x.test', NULL);
        SELECT etlify.sync_table('hubspot', 'pusers', 'contacts', 'email', 'pusers_p');
        "#,
    );
    wait_contact(&env, "p1@x.test", "backfilled", |_| true);
    wait_contact(&env, "p150@x.test", "backfilled", |_| true);
    exec(
        &mut env.db,
        r#"
        INSERT INTO pusers_lo VALUES (2, 'p2@x.test', NULL);
        INSERT INTO pusers_hi_a VALUES (151, 'p151@x.test', NULL);
        COPY pusers_lo (id, email) FROM PROGRAM 'printf "3\tp3@x.test\n"';
        UPDATE pusers_lo SET note = 'lo' WHERE id = 1;
        "#,
    );
    for m in ["p2@x.test", "p151@x.test", "p3@x.test"] {
        wait_contact(&env, m, "written to a partition", |_| true);
    }
    wait_contact(&env, "p1@x.test", "updated in a partition", |o| {
        prop(o, "lastname") == Some("lo")
    });
    let archived = |env: &Env, m: &str| {
        env.mock
            .archived("contacts")
            .iter()
            .any(|o| prop(o, "email") == Some(m))
    };
    exec(&mut env.db, "DELETE FROM pusers_hi_a WHERE id = 151");
    wait_for_default("p151 archived", || {
        archived(&env, "p151@x.test").then_some(())
    });

    // partitions that join later
    exec(
        &mut env.db,
        r#"
        CREATE TABLE pusers_mid PARTITION OF pusers FOR VALUES FROM (1000) TO (2000);
        INSERT INTO pusers_mid VALUES (1001, 'p1001@x.test', NULL);
        CREATE TABLE pusers_x (LIKE pusers);
        INSERT INTO pusers_x VALUES (2001, 'p2001@x.test', NULL);
        ALTER TABLE pusers ATTACH PARTITION pusers_x FOR VALUES FROM (2000) TO (3000);
        "#,
    );
    wait_contact(&env, "p1001@x.test", "in a new partition", |_| true);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.mock.find("contacts", "email", "p2001@x.test").is_none() {
        if std::time::Instant::now() > deadline {
            let q = scalar(
                &mut env.db,
                "SELECT string_agg(format('%s', q), ' | ') FROM etlify.queue q",
            );
            let st = statuses(&mut env.db, "hubspot", "pusers");
            let trg = scalar(&mut env.db, "SELECT string_agg(tgrelid::regclass || '.' || tgname, ' ') FROM pg_trigger WHERE NOT tgisinternal");
            let ch = scalar(
                &mut env.db,
                "SELECT string_agg(format('%s', c), ' | ') FROM etlify.changes c",
            );
            panic!(
                "p2001 never synced; queue {q:?}; changes {ch:?}; triggers {trg:?}; status {st:?}"
            );
        }
        thread::sleep(Duration::from_millis(50));
    }

    // partitions whose rows leave
    exec(&mut env.db, "TRUNCATE pusers_mid");
    wait_for_default("p1001 archived", || {
        archived(&env, "p1001@x.test").then_some(())
    });
    exec(&mut env.db, "ALTER TABLE pusers DETACH PARTITION pusers_x");
    wait_for_default("p2001 archived", || {
        archived(&env, "p2001@x.test").then_some(())
    });
    exec(&mut env.db, "DROP TABLE pusers_hi_a");
    wait_for_default("p150 archived", || {
        archived(&env, "p150@x.test").then_some(())
    });
    // what stays is live, and the detached table is no longer captured
    exec(
        &mut env.db,
        "INSERT INTO pusers_x VALUES (2002, 'p2002@x.test', NULL)",
    );
    thread::sleep(Duration::from_millis(600));
    assert!(env.mock.find("contacts", "email", "p2002@x.test").is_none());
    let mut live: Vec<String> = env
        .mock
        .objects("contacts")
        .iter()
        .filter_map(|o| prop(o, "email").map(str::to_string))
        .collect();
    live.sort();
    assert_eq!(live, ["p1@x.test", "p2@x.test", "p3@x.test"]);
}

/// 12a: switching etlify.enabled off in the middle of a backlog stops the worker
/// within a second, not when the backlog is empty.
#[test]
fn switching_off_stops_the_worker_mid_backlog() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    env.mock.set_faults(json!({"delay_ms": 100}));
    insert_users(&mut env.db, 1..=20_000);
    wait_for_default("the drain is under way", || {
        (env.mock.crm_requests().len() >= 5).then_some(())
    });
    exec(&mut env.db, "ALTER SYSTEM SET etlify.enabled = off");
    exec(&mut env.db, "SELECT pg_reload_conf()");
    thread::sleep(Duration::from_millis(1200));
    let stopped_at = env.mock.crm_requests().len();
    thread::sleep(Duration::from_millis(2000));
    let later = env.mock.crm_requests().len();
    assert!(
        later <= stopped_at + 1,
        "the worker went on sending: {stopped_at} then {later} requests"
    );
    assert!(
        count(
            &mut env.db,
            "SELECT count(*) FROM etlify.sync_status WHERE state = 'pending'"
        ) > 10_000
    );
    exec(&mut env.db, "ALTER SYSTEM RESET etlify.enabled");
    exec(&mut env.db, "SELECT pg_reload_conf()");
    env.mock.set_faults(json!({}));
}

/// 12: a payload over etlify.max_payload_size fails its record (never loaded into
/// the worker whole); the others of the batch, and other mappings, go on.
#[test]
fn oversized_payloads_fail_alone() {
    let mut env = Env::start("", "");
    exec(
        &mut env.db,
        r#"
        CREATE TABLE fat (id int PRIMARY KEY, email text NOT NULL, big boolean NOT NULL);
        CREATE FUNCTION fat_p(r fat) RETURNS jsonb LANGUAGE sql AS $$
            SELECT jsonb_build_object('email', r.email,
                                      'blob', CASE WHEN r.big THEN repeat('x', 2000000) ELSE 'small' END)
        $$;
        INSERT INTO fat SELECT i, 'fat' || i || '@x.test', i % 2 = 0 FROM generate_series(1, 40) i;
        SELECT etlify.sync_table('hubspot', 'fat', 'contacts', 'email', 'fat_p');
        "#,
    );
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    let s = wait_for_default("every fat record tried", || {
        let s = statuses(&mut env.db, "hubspot", "fat");
        (s.len() == 40 && s.values().all(|r| r.state == "synced" || r.error_count > 0)).then_some(s)
    });
    for i in 1..=40 {
        let r = &s[&i.to_string()];
        if i % 2 == 0 {
            let e = r.last_error.clone().unwrap_or_default();
            assert!(e.contains("etlify.max_payload_size"), "{i}: {r:?}");
        } else {
            assert_eq!(r.state, "synced", "{i}: {r:?}");
        }
    }
    wait_users_state(&mut env.db, &[1], "synced");
    assert_eq!(env.mock.objects("contacts").len(), 21);
}

/// D16: errors a user reads carry a real SQLSTATE and no Rust backtrace, even when
/// the server's environment sets RUST_BACKTRACE.
#[test]
fn user_errors_have_a_sqlstate_and_no_backtrace() {
    // the clusters this process starts inherit it
    std::env::set_var("RUST_BACKTRACE", "1");
    let mut env = Env::start("", "");
    map_users(&mut env.db, ", watch => '{email,first_name}'");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    for (sql, state, text) in [
        (
            "SELECT etlify.drain(max_records => -1)",
            SqlState::INVALID_PARAMETER_VALUE,
            "max_records",
        ),
        (
            "SELECT etlify.drain('nope')",
            SqlState::UNDEFINED_OBJECT,
            "nope",
        ),
        (
            "SELECT etlify.register_crm('x', 'hubspot', '{\"frob\": 1}', secret => 't')",
            SqlState::INVALID_PARAMETER_VALUE,
            "frob",
        ),
        (
            "SELECT etlify.sync('hubspot', 'users', 'one')",
            SqlState::INVALID_TEXT_REPRESENTATION,
            "one",
        ),
        (
            "SELECT etlify.sync('nope', 'users', '1')",
            SqlState::UNDEFINED_OBJECT,
            "nope",
        ),
        (
            "SELECT etlify.register_crm('x', 'hubspot')",
            SqlState::INVALID_PARAMETER_VALUE,
            "needs a secret",
        ),
        (
            "SELECT etlify.sync_table('hubspot', 'users', 'contacts', 'email', 'user_payload')",
            SqlState::DUPLICATE_OBJECT,
            "already synced",
        ),
        (
            "SELECT etlify.sync_stale(batch_size => 0)",
            SqlState::INVALID_PARAMETER_VALUE,
            "batch_size",
        ),
        (
            "SELECT etlify.reset_errors('hubspot', 'users', 'x')",
            SqlState::INVALID_TEXT_REPRESENTATION,
            "\"x\"",
        ),
    ] {
        assert_fails(&mut env.db, sql, &[state], text);
    }
    // a cancelled sync() while the worker waits on the CRM
    env.mock.set_faults(json!({"hang_ms": 3000}));
    exec(
        &mut env.db,
        "UPDATE users SET first_name = 'Hang' WHERE id = 1",
    );
    wait_for_default("the worker waits on the CRM", || {
        (env.mock.inflight() > 0).then_some(())
    });
    exec(&mut env.db, "SET statement_timeout = '200ms'");
    assert_fails(
        &mut env.db,
        "SELECT etlify.sync('hubspot', 'users', '1')",
        &[SqlState::QUERY_CANCELED],
        "statement timeout",
    );
    exec(&mut env.db, "RESET statement_timeout");
    env.mock.set_faults(json!({}));
    // the key or a watched column cannot be renamed or dropped under a mapping
    for ddl in [
        "ALTER TABLE users RENAME COLUMN first_name TO given_name",
        "ALTER TABLE users DROP COLUMN first_name",
        "ALTER TABLE users RENAME COLUMN id TO user_id",
    ] {
        assert_fails(
            &mut env.db,
            ddl,
            &[SqlState::DEPENDENT_OBJECTS_STILL_EXIST],
            "watched column of its mapping",
        );
    }
    // other columns can
    exec(
        &mut env.db,
        "ALTER TABLE users RENAME COLUMN note TO remark",
    );
    exec(
        &mut env.db,
        "UPDATE users SET first_name = 'After' WHERE id = 1",
    );
    wait_contact(&env, &email(1), "synced after the refused DDL", |o| {
        prop(o, "firstname") == Some("After")
    });
}

/// A7: writes that statement triggers never see. On a logical-replication
/// subscriber, apply fires row triggers only: with etlify.capture_on_subscriber the
/// mapping captures them; before, sync_stale repairs what was missed.
#[test]
fn a_subscriber_captures_replicated_writes() {
    let mut env = Env::start("wal_level = logical", "");
    map_users(&mut env.db, "");
    exec(&mut env.db, "CREATE DATABASE pub");
    let mut p = env.cluster.connect_db("postgres", "pub");
    exec(
        &mut p,
        "CREATE TABLE users (id bigint PRIMARY KEY, email text, first_name text, last_name text,
                             active boolean NOT NULL DEFAULT true, note text);
         CREATE PUBLICATION users_pub FOR TABLE users;",
    );
    exec(
        &mut p,
        "SELECT pg_create_logical_replication_slot('users_sub', 'pgoutput')",
    );
    let conn = env.cluster.conninfo_db("postgres", "pub");
    exec(
        &mut env.db,
        &format!(
            "CREATE SUBSCRIPTION users_sub CONNECTION '{conn}' PUBLICATION users_pub
             WITH (create_slot = false, slot_name = 'users_sub')"
        ),
    );
    let replicated = |env: &mut Env, id: i64| {
        wait_for_default(&format!("row {id} replicated"), || {
            (count(
                &mut env.db,
                &format!("SELECT count(*) FROM users WHERE id = {id}"),
            ) == 1)
                .then_some(())
        })
    };
    // without the option, apply's writes are not seen
    exec(
        &mut p,
        "INSERT INTO users (id, email) VALUES (1, 'user1@example.com')",
    );
    replicated(&mut env, 1);
    thread::sleep(Duration::from_millis(600));
    assert!(env.mock.find("contacts", "email", &email(1)).is_none());
    // sync_stale repairs it; the option captures what comes next
    exec(
        &mut env.db,
        "SELECT etlify.sync_stale('hubspot');
         SELECT etlify.capture_on_subscriber('hubspot', 'users');",
    );
    wait_contact(&env, &email(1), "repaired by sync_stale", |_| true);
    exec(
        &mut p,
        "INSERT INTO users (id, email) VALUES (2, 'user2@example.com');
         UPDATE users SET first_name = 'Replicated' WHERE id = 1;",
    );
    wait_contact(&env, &email(2), "replicated insert", |_| true);
    wait_contact(&env, &email(1), "replicated update", |o| {
        prop(o, "firstname") == Some("Replicated")
    });
    exec(
        &mut p,
        "UPDATE users SET id = 20 WHERE id = 2; DELETE FROM users WHERE id = 1",
    );
    wait_for_default("replicated delete archived", || {
        env.mock
            .find("contacts", "email", &email(1))
            .is_none()
            .then_some(())
    });
    wait_users_state(&mut env.db, &[20], "synced");
    assert!(env.mock.find("contacts", "email", &email(2)).is_some());
    assert_eq!(env.mock.archived("contacts").len(), 1);
    exec(&mut env.db, "DROP SUBSCRIPTION users_sub");
}

/// 12a: a transaction that called drain() and stays open (its locks on the queue,
/// the records and the request log held) stalls neither the worker's other records
/// nor its log; its own keys follow once it ends.
#[test]
fn an_open_drain_transaction_stalls_nothing_else() {
    let mut env = Env::start("etlify.sync_log_size = 2", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=3);
    wait_users_state(&mut env.db, &[1, 2, 3], "synced");
    // key 1 dirty (the worker switched off meanwhile); an inline drain handles it
    // and its transaction stays open
    let mut open = env.cluster.client();
    exec(&mut open, "ALTER SYSTEM SET etlify.enabled = off");
    exec(&mut open, "SELECT pg_reload_conf()");
    thread::sleep(Duration::from_millis(500));
    exec(
        &mut env.db,
        "UPDATE users SET first_name = 'Inline' WHERE id = 1",
    );
    exec(&mut open, "BEGIN; SELECT etlify.drain();");
    exec(&mut env.db, "ALTER SYSTEM RESET etlify.enabled");
    exec(&mut env.db, "SELECT pg_reload_conf()");
    // changes of key 1 (locked by the open transaction) and of keys 2 and 3
    exec(
        &mut env.db,
        "UPDATE users SET first_name = 'Later' WHERE id = 1;
         UPDATE users SET first_name = 'Free' WHERE id IN (2, 3);",
    );
    for i in [2, 3] {
        wait_contact(&env, &email(i), "updated while a drain() is open", |o| {
            prop(o, "firstname") == Some("Free")
        });
    }
    exec(&mut open, "COMMIT");
    wait_contact(&env, &email(1), "updated once the drain() ended", |o| {
        prop(o, "firstname") == Some("Later")
    });
}

/// C12: a serializer that takes too long fails its own record (the worker arms a
/// statement timeout around it, as Postgres does for client statements only); the
/// rest of its batch and the other mappings go on.
#[test]
fn a_slow_serializer_fails_alone() {
    let mut env = Env::start("etlify.serializer_timeout = '500ms'", "");
    exec(
        &mut env.db,
        r#"
        CREATE TABLE slow (id int PRIMARY KEY, email text NOT NULL);
        CREATE FUNCTION slow_p(r slow) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN
            IF r.id = 2 THEN PERFORM pg_sleep(30); END IF;
            RETURN jsonb_build_object('email', r.email);
        END $$;
        INSERT INTO slow VALUES (1, 's1@x.test'), (2, 's2@x.test'), (3, 's3@x.test');
        SELECT etlify.sync_table('hubspot', 'slow', 'contacts', 'email', 'slow_p');
        "#,
    );
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    wait_contact(&env, "s1@x.test", "synced", |_| true);
    wait_contact(&env, "s3@x.test", "synced", |_| true);
    let s = wait_for_default("the slow record failed", || {
        status_of(&mut env.db, "hubspot", "slow", "2").filter(|s| s.error_count > 0)
    });
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("statement timeout"),
        "{s:?}"
    );
}

/// B8/B9: a role that runs drain() inline cannot feed another role's serializer
/// tables of its own: the serializer's search_path puts pg_temp last.
#[test]
fn an_inline_drain_cannot_feed_a_serializer_temporary_tables() {
    let mut env = Env::start_without_worker("", "");
    exec(
        &mut env.db,
        r#"
        CREATE TABLE labels (id bigint PRIMARY KEY, label text);
        INSERT INTO labels VALUES (1, 'real');
        CREATE FUNCTION labelled(u users) RETURNS jsonb LANGUAGE sql STABLE AS $$
            SELECT jsonb_build_object('email', u.email,
                                      'lastname', (SELECT label FROM labels WHERE id = u.id))
        $$;
        SELECT etlify.sync_table('hubspot', 'users', 'contacts', 'email', 'labelled');
        CREATE ROLE adm2 LOGIN NOSUPERUSER;
        GRANT etlify_admin TO adm2;
        GRANT SELECT ON users TO adm2;
        "#,
    );
    insert_users(&mut env.db, [1]);
    let mut a = env.cluster.connect_as("adm2");
    exec(
        &mut a,
        "CREATE TEMP TABLE labels (id bigint, label text);
         INSERT INTO labels VALUES (1, 'planted');
         SELECT etlify.drain();",
    );
    let c = wait_contact(&env, &email(1), "synced", |_| true);
    assert_eq!(prop(&c, "lastname"), Some("real"), "{c}");
}

/// 15: an error where the worker checks for the extension (here: pg_extension
/// held locked, under a lock_timeout) used to end the worker outside its round
/// handler, leaving sync() callers to wait on a dead worker. It costs the round
/// now; the worker stays, and serves sync() meanwhile.
#[test]
fn an_error_outside_a_mapping_round_keeps_the_worker_serving() {
    let mut env = Env::start("lock_timeout = '200ms'", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    let pid = env.cluster.worker_pid().expect("a worker");
    let mut holder = env.cluster.client();
    exec(
        &mut holder,
        "BEGIN; LOCK TABLE pg_catalog.pg_extension IN ACCESS EXCLUSIVE MODE;",
    );
    thread::sleep(Duration::from_millis(1500));
    exec(
        &mut env.db,
        "UPDATE users SET first_name = 'Served' WHERE id = 1",
    );
    exec(&mut env.db, "SET statement_timeout = '10s'");
    // synced by this call, or by the other worker on the commit already
    let v = scalar(&mut env.db, "SELECT etlify.sync('hubspot', 'users', '1')");
    assert!(
        matches!(v.as_deref(), Some("synced" | "not_modified")),
        "{v:?}"
    );
    exec(&mut env.db, "RESET statement_timeout");
    exec(&mut holder, "COMMIT");
    assert_eq!(
        env.cluster.worker_pid(),
        Some(pid),
        "the worker was restarted"
    );
    wait_contact(&env, &email(1), "served", |o| {
        prop(o, "firstname") == Some("Served")
    });
}

/// A1: a parked record whose key moves: the new key is tried again (its row
/// changed), and the old key ends up deleted, not pending forever.
#[test]
fn a_parked_record_that_moves_leaves_nothing_pending() {
    let mut env = Env::start("", ", max_sync_errors => 1");
    exec(
        &mut env.db,
        r#"
        CREATE TABLE picky (id int PRIMARY KEY, email text NOT NULL, bad boolean NOT NULL);
        CREATE FUNCTION picky_p(r picky) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN
            IF r.bad THEN RAISE EXCEPTION 'bad row %', r.id; END IF;
            RETURN jsonb_build_object('email', r.email);
        END $$;
        INSERT INTO picky VALUES (1, 'pk1@x.test', true);
        SELECT etlify.sync_table('hubspot', 'picky', 'contacts', 'email', 'picky_p');
        "#,
    );
    wait_for_default("record 1 parked", || {
        status_of(&mut env.db, "hubspot", "picky", "1").filter(|s| s.state == "parked")
    });
    exec(
        &mut env.db,
        "UPDATE picky SET id = 500, bad = false WHERE id = 1",
    );
    wait_contact(&env, "pk1@x.test", "synced under the new key", |_| true);
    wait_for_default("the old key deleted, the new one synced", || {
        let s = statuses(&mut env.db, "hubspot", "picky");
        (s.get("1").is_some_and(|r| r.state == "deleted")
            && s.get("500").is_some_and(|r| r.state == "synced"))
        .then_some(())
    });
}

/// A commit that lands while the worker is between its transaction's start and its
/// claim is claimed by it: the rows it loads must be the ones that commit wrote, not
/// the worker's older view. Here a partition attached with rows (which no trigger
/// saw) commits while the worker's claim waits for the table: its row was read as
/// missing and dropped as `noop`, never to be sent.
#[test]
fn a_commit_during_the_claim_is_loaded_as_committed() {
    let mut env = Env::start("etlify.claim_size = 2", "");
    exec(
        &mut env.db,
        r#"
        CREATE TABLE pusers (id int PRIMARY KEY, email text NOT NULL, note text) PARTITION BY RANGE (id);
        CREATE TABLE pusers_lo PARTITION OF pusers FOR VALUES FROM (0) TO (100);
        CREATE FUNCTION pusers_p(r pusers) RETURNS jsonb LANGUAGE sql AS
            $$ SELECT jsonb_build_object('email', r.email, 'lastname', r.note) $$;
        INSERT INTO pusers VALUES (1, 'p1@x.test', NULL), (2, 'p2@x.test', NULL);
        SELECT etlify.sync_table('hubspot', 'pusers', 'contacts', 'email', 'pusers_p');
        "#,
    );
    wait_contact(&env, "p2@x.test", "backfilled", |_| true);
    // key 1 in flight, key 2 pending behind it, and the table locked meanwhile
    env.mock.set_faults(json!({"delay_ms": 1500}));
    exec(&mut env.db, "UPDATE pusers SET note = 'a' WHERE id = 1");
    wait_for_default("key 1 in flight", || {
        (env.mock.inflight() > 0).then_some(())
    });
    exec(&mut env.db, "UPDATE pusers SET note = 'b' WHERE id = 2");
    let mut locker = env.cluster.client();
    exec(
        &mut locker,
        "BEGIN; LOCK TABLE pusers IN ACCESS EXCLUSIVE MODE",
    );
    env.mock.set_faults(json!({}));
    wait_for_default("the worker's claim waiting for the table", || {
        (count(
            &mut env.db,
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'pusers'::regclass",
        ) > 0)
            .then_some(())
    });
    exec(
        &mut locker,
        r#"
        CREATE TABLE pusers_x (LIKE pusers);
        INSERT INTO pusers_x VALUES (2001, 'p2001@x.test', 'x');
        ALTER TABLE pusers ATTACH PARTITION pusers_x FOR VALUES FROM (2000) TO (3000);
        COMMIT;
        "#,
    );
    wait_contact(&env, "p2@x.test", "updated", |o| {
        prop(o, "lastname") == Some("b")
    });
    wait_contact(
        &env,
        "p2001@x.test",
        "attached while the claim waited",
        |o| prop(o, "lastname") == Some("x"),
    );
}

/// A user's DDL that meets the worker in a deadlock is never the one aborted: the
/// worker checks for deadlocks first (a short deadlock_timeout), gives its round
/// up and sends the record again after the DDL. Here DROP TABLE staff locks staff,
/// then firms (its foreign key's trigger), while the worker serializes a firm and
/// then reads staff.
#[test]
fn ddl_that_deadlocks_with_the_worker_goes_through() {
    let mut env = Env::start("", "");
    exec(
        &mut env.db,
        r#"
        CREATE TABLE firms (id int PRIMARY KEY, email text NOT NULL);
        CREATE TABLE staff (id int PRIMARY KEY, firm int REFERENCES firms);
        CREATE FUNCTION firm_p(r firms) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_sleep(0.6);
            RETURN jsonb_build_object('email', r.email, 'lastname',
                (SELECT count(*) FROM staff s WHERE s.firm = r.id)::text);
        END $$;
        SELECT etlify.sync_table('hubspot', 'firms', 'contacts', 'email', 'firm_p');
        INSERT INTO firms VALUES (1, 'f1@x.test');
        "#,
    );
    wait_for_default("the worker serializing firm 1", || {
        (count(
            &mut env.db,
            "SELECT count(*) FROM pg_stat_activity
              WHERE backend_type = 'etlify sync worker' AND wait_event = 'PgSleep'",
        ) > 0)
            .then_some(())
    });
    env.db
        .batch_execute("DROP TABLE staff")
        .unwrap_or_else(|e| panic!("DROP TABLE staff: {}", error_text(&e)));
    // the serializer now fails on the missing table: that is the record's error,
    // and the worker goes on serving
    let s = wait_for_default("firm 1 failed on the dropped table", || {
        status_of(&mut env.db, "hubspot", "firms", "1").filter(|s| s.error_count > 0)
    });
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("staff"),
        "{s:?}"
    );
}

/// B10: a member may run etlify._capture in a trigger of its own (CREATE TRIGGER
/// needs EXECUTE, and a member restores its tables' capture triggers from a dump),
/// and may give it another mapping's id. Keys it marks dirty cost a re-check of
/// that mapping's rows, no more; the key moves it reports are another matter: they
/// hand CRM objects from one key to another. Moves are applied only when they come
/// from the mapping's own source table (or one of its partitions).
#[test]
fn a_member_trigger_cannot_move_another_mapping_objects() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    let before = status_of(&mut env.db, "hubspot", "users", "1")
        .and_then(|s| s.crm_id)
        .expect("user 1 has a CRM id");
    let victim = count(
        &mut env.db,
        "SELECT id FROM etlify.mappings WHERE source = 'users'::regclass",
    );
    exec(
        &mut env.db,
        "CREATE ROLE mallory LOGIN NOSUPERUSER; GRANT etlify_admin TO mallory; \
         GRANT CREATE ON SCHEMA public TO mallory",
    );
    let mut m = env.cluster.connect_as("mallory");
    exec(
        &mut m,
        &format!(
            "CREATE TABLE mine (id bigint PRIMARY KEY); INSERT INTO mine VALUES (1);
             CREATE TRIGGER rogue AFTER UPDATE ON mine REFERENCING OLD TABLE AS o NEW TABLE AS n
                FOR EACH STATEMENT EXECUTE FUNCTION etlify._capture('{victim}', 'id');
             UPDATE mine SET id = 2;"
        ),
    );
    wait_for_default("the rogue change absorbed and drained", || {
        (count(
            &mut env.db,
            "SELECT (SELECT count(*) FROM etlify.changes)
                  + (SELECT count(*) FROM etlify.queue WHERE claimed_by IS NULL)",
        ) == 0)
            .then_some(())
    });
    // a round more, for whatever the drain would send
    exec(&mut env.db, "SELECT etlify.drain()");
    let s = status_of(&mut env.db, "hubspot", "users", "1").expect("user 1's record");
    assert_eq!(s.state, "synced", "{s:?}");
    assert_eq!(s.crm_id.as_deref(), Some(before.as_str()), "{s:?}");
    assert!(
        env.mock.archived("contacts").is_empty(),
        "archived: {:?}",
        env.mock.archived("contacts")
    );
    assert!(
        env.mock.by_id("contacts", &before).is_some(),
        "user 1's contact is live"
    );
    assert_eq!(
        scalar(
            &mut env.db,
            "SELECT count(*) FROM etlify.records WHERE key = '2'"
        )
        .as_deref(),
        Some("0"),
        "no record for a key the source never had"
    );
}
