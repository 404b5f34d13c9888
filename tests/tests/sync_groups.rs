//! Sync groups (issue 11): tables named in `dependencies` mark the source records
//! they feed dirty, by every form of the contract, end to end against the mock.

use etlify_e2e::fixtures::{error_text, scalar};
use etlify_e2e::{wait_for_default, Env};
use postgres::error::SqlState;
use postgres::Client;
use serde_json::Value;
use std::thread;
use std::time::Duration;

const PEOPLE: &str = r#"
CREATE TABLE companies (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE people (id bigint PRIMARY KEY, email text NOT NULL, company_id bigint REFERENCES companies);
CREATE TABLE investments (id bigint PRIMARY KEY, person_id bigint REFERENCES people,
                          amount numeric NOT NULL, note text);
CREATE FUNCTION person_payload(p people) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'email', p.email,
    'company', (SELECT c.name FROM companies c WHERE c.id = p.company_id),
    'total', (SELECT coalesce(sum(i.amount), 0)::text FROM investments i WHERE i.person_id = p.id))
$$;
INSERT INTO companies VALUES (1, 'Acme'), (2, 'Beta');
INSERT INTO people VALUES (1, 'p1@x.test', 1), (2, 'p2@x.test', 1), (3, 'p3@x.test', 2);
INSERT INTO investments VALUES (1, 1, 100, NULL), (2, 1, 50, NULL), (3, 3, 7, NULL);
"#;

fn exec(db: &mut Client, sql: &str) {
    db.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
}

fn prop(o: &Value, p: &str) -> Option<String> {
    o["properties"][p].as_str().map(str::to_string)
}

/// Waits until the contact with `email` has property `p` = `v`.
fn wait_prop(env: &Env, email: &str, p: &str, v: &str) {
    wait_for_default(&format!("{email}: {p} = {v}"), || {
        env.mock
            .find("contacts", "email", email)
            .filter(|o| prop(o, p).as_deref() == Some(v))
            .map(drop)
    });
}

/// Waits until nothing is pending, then returns the CRM inputs sent so far.
fn settled(env: &mut Env) -> u64 {
    wait_for_default("nothing pending", || {
        let n = scalar(
            &mut env.db,
            "SELECT (SELECT count(*) FROM etlify.queue) + (SELECT count(*) FROM etlify.changes)",
        );
        (n.as_deref() == Some("0")).then_some(())
    });
    env.mock.crm_inputs()
}

fn map_people(env: &mut Env, deps: &str) {
    exec(&mut env.db, PEOPLE);
    exec(
        &mut env.db,
        &format!(
            "SELECT etlify.sync_table('hubspot', 'people', 'contacts', 'email', 'person_payload', \
             dependencies => '{deps}')"
        ),
    );
    wait_prop(env, "p1@x.test", "total", "150");
    wait_prop(env, "p3@x.test", "total", "7");
}

/// has_many by foreign key (investments → people) and belongs_to by foreign key
/// (people → companies): inserts, updates, moves, deletes and TRUNCATE of a
/// member, and a company rename that fans out to its people only.
#[test]
fn members_by_foreign_key_dirty_the_records_they_feed() {
    let mut env = Env::start("", "");
    map_people(&mut env, r#"["investments", "companies"]"#);
    let before = settled(&mut env);

    exec(
        &mut env.db,
        "UPDATE investments SET amount = 200 WHERE id = 1",
    );
    wait_prop(&env, "p1@x.test", "total", "250");
    assert_eq!(settled(&mut env), before + 1, "only p1 is sent");

    // a moved investment dirties its old and its new person
    exec(
        &mut env.db,
        "UPDATE investments SET person_id = 2 WHERE id = 2",
    );
    wait_prop(&env, "p1@x.test", "total", "200");
    wait_prop(&env, "p2@x.test", "total", "50");

    // a deleted one dirties its former person
    exec(&mut env.db, "DELETE FROM investments WHERE id = 3");
    wait_prop(&env, "p3@x.test", "total", "0");

    // belongs_to: a company rename reaches its people, and only them
    let before = settled(&mut env);
    exec(
        &mut env.db,
        "UPDATE companies SET name = 'Acme Corp' WHERE id = 1",
    );
    wait_prop(&env, "p1@x.test", "company", "Acme Corp");
    wait_prop(&env, "p2@x.test", "company", "Acme Corp");
    assert_eq!(settled(&mut env), before + 2, "p3 (Beta) is not sent");

    // TRUNCATE of a member: every record is re-checked, and what changed is sent
    exec(&mut env.db, "TRUNCATE investments");
    wait_prop(&env, "p1@x.test", "total", "0");
    wait_prop(&env, "p2@x.test", "total", "0");
}

/// `watch`: only the named member columns (and the reference) dirty the record.
#[test]
fn watch_limits_what_dirties_a_record() {
    let mut env = Env::start("", "");
    map_people(
        &mut env,
        r#"[{"table": "investments", "watch": ["amount"]}]"#,
    );
    let before = settled(&mut env);
    exec(&mut env.db, "UPDATE investments SET note = 'ignored'");
    thread::sleep(Duration::from_millis(800));
    assert_eq!(
        scalar(&mut env.db, "SELECT count(*) FROM etlify.changes").as_deref(),
        Some("0"),
        "a change of an unwatched column records nothing"
    );
    assert_eq!(settled(&mut env), before);
    exec(
        &mut env.db,
        "UPDATE investments SET amount = 1 WHERE id = 3",
    );
    wait_prop(&env, "p3@x.test", "total", "1");
}

/// through (many-to-many), column + where (polymorphic), source_column
/// (belongs_to without a foreign key) and the keys escape hatch.
#[test]
fn explicit_forms_find_their_records() {
    let mut env = Env::start("", "");
    exec(&mut env.db, PEOPLE);
    exec(
        &mut env.db,
        r#"
        CREATE TABLE teams (id bigint PRIMARY KEY, name text NOT NULL);
        CREATE TABLE memberships (person_id bigint REFERENCES people, team_id bigint REFERENCES teams,
                                  PRIMARY KEY (person_id, team_id));
        CREATE TABLE notes (id bigint PRIMARY KEY, notable_type text NOT NULL, notable_id bigint, body text);
        CREATE TABLE regions (code text PRIMARY KEY, label text NOT NULL);
        ALTER TABLE people ADD COLUMN region text;
        CREATE TABLE audit (id bigint PRIMARY KEY, subject text NOT NULL, tag text);
        INSERT INTO teams VALUES (1, 'Red');
        INSERT INTO regions VALUES ('eu', 'Europe');
        UPDATE people SET region = 'eu' WHERE id = 2;
        CREATE OR REPLACE FUNCTION person_payload(p people) RETURNS jsonb LANGUAGE sql STABLE AS $$
          SELECT jsonb_build_object(
            'email', p.email,
            'teams', (SELECT coalesce(string_agg(t.name, ',' ORDER BY t.name), 'none')
                        FROM memberships m JOIN teams t ON t.id = m.team_id WHERE m.person_id = p.id),
            'notes', (SELECT count(*)::text FROM notes n WHERE n.notable_type = 'Person' AND n.notable_id = p.id),
            'region', (SELECT r.label FROM regions r WHERE r.code = p.region),
            'tags', (SELECT coalesce(string_agg(a.tag, ',' ORDER BY a.id), 'none') FROM audit a
                      WHERE a.subject = 'person:' || p.id))
        $$;
        SELECT etlify.sync_table('hubspot', 'people', 'contacts', 'email', 'person_payload',
          dependencies => '[{"table": "teams", "through": "memberships"},
                            {"table": "notes", "column": "notable_id", "where": "notable_type = ''Person''"},
                            {"table": "regions", "source_column": "region"},
                            {"table": "audit", "keys": "SELECT split_part(subject, '':'', 2) FROM changed WHERE subject LIKE ''person:%''"}]');
        "#,
    );
    wait_prop(&env, "p2@x.test", "region", "Europe");
    wait_prop(&env, "p1@x.test", "teams", "none");

    // the join table's rows, then the far side's
    exec(&mut env.db, "INSERT INTO memberships VALUES (1, 1), (3, 1)");
    wait_prop(&env, "p1@x.test", "teams", "Red");
    wait_prop(&env, "p3@x.test", "teams", "Red");
    exec(&mut env.db, "UPDATE teams SET name = 'Crimson'");
    wait_prop(&env, "p1@x.test", "teams", "Crimson");
    wait_prop(&env, "p3@x.test", "teams", "Crimson");
    exec(&mut env.db, "DELETE FROM memberships WHERE person_id = 3");
    wait_prop(&env, "p3@x.test", "teams", "none");

    // polymorphic: only rows that pass `where`, and rows that leave it
    let before = settled(&mut env);
    exec(
        &mut env.db,
        "INSERT INTO notes VALUES (1, 'Person', 2, 'hi'), (2, 'Company', 1, 'not a person')",
    );
    wait_prop(&env, "p2@x.test", "notes", "1");
    assert_eq!(
        settled(&mut env),
        before + 1,
        "the Company note dirties nothing"
    );
    exec(
        &mut env.db,
        "UPDATE notes SET notable_type = 'Company' WHERE id = 1",
    );
    wait_prop(&env, "p2@x.test", "notes", "0");

    // source_column: people.region holds the region's key
    exec(&mut env.db, "UPDATE regions SET label = 'Europa'");
    wait_prop(&env, "p2@x.test", "region", "Europa");

    // the escape hatch reads `changed`
    exec(
        &mut env.db,
        "INSERT INTO audit VALUES (1, 'person:3', 'vip'), (2, 'company:1', 'x')",
    );
    wait_prop(&env, "p3@x.test", "tags", "vip");
    exec(
        &mut env.db,
        "UPDATE audit SET subject = 'person:1' WHERE id = 1",
    );
    wait_prop(&env, "p1@x.test", "tags", "vip");
    wait_prop(&env, "p3@x.test", "tags", "none");
}

/// One table may feed several mappings, of several CRMs.
#[test]
fn a_table_feeds_several_mappings() {
    let mut env = Env::start("", "");
    let second = etlify_e2e::Mock::start(&["--token", etlify_e2e::fixtures::TOKEN]);
    etlify_e2e::fixtures::register_crm(&mut env.db, "other", &second, "");
    map_people(&mut env, r#"["investments"]"#);
    exec(
        &mut env.db,
        r#"
        CREATE FUNCTION company_payload(c companies) RETURNS jsonb LANGUAGE sql STABLE AS $$
          SELECT jsonb_build_object('domain', c.id || '.example', 'name', c.name,
            'invested', (SELECT coalesce(sum(i.amount), 0)::text FROM investments i
                           JOIN people p ON p.id = i.person_id WHERE p.company_id = c.id))
        $$;
        SELECT etlify.sync_table('other', 'companies', 'companies', 'domain', 'company_payload',
          dependencies => '[{"table": "investments", "keys": "SELECT p.company_id FROM changed c JOIN people p ON p.id = c.person_id"}]');
        SELECT etlify.sync_table('other', 'people', 'contacts', 'email', 'person_payload',
          dependencies => '["investments"]');
        "#,
    );
    let company = |v: &str| {
        wait_for_default(&format!("company 1 invested {v}"), || {
            second
                .find("companies", "domain", "1.example")
                .filter(|o| prop(o, "invested").as_deref() == Some(v))
                .map(drop)
        })
    };
    company("150");
    exec(
        &mut env.db,
        "UPDATE investments SET amount = 1000 WHERE id = 1",
    );
    company("1050");
    wait_prop(&env, "p1@x.test", "total", "1050");
    wait_for_default("p1 in the other CRM", || {
        second
            .find("contacts", "email", "p1@x.test")
            .filter(|o| prop(o, "total").as_deref() == Some("1050"))
            .map(drop)
    });
}

/// Declaration mistakes name the culprit and install nothing; the columns that
/// tie a member to its records cannot be renamed, nor a member table dropped,
/// while the mapping names them; unsync_table removes the members' triggers.
#[test]
fn dependencies_are_checked_and_kept_consistent() {
    let mut env = Env::start("", "");
    exec(&mut env.db, PEOPLE);
    exec(
        &mut env.db,
        r#"
        CREATE TABLE loose (id bigint PRIMARY KEY, person bigint);
        CREATE TABLE twice (id bigint PRIMARY KEY, a bigint REFERENCES people, b bigint REFERENCES people);
        CREATE ROLE outsider;
        CREATE TABLE private (id bigint PRIMARY KEY, person_id bigint REFERENCES people);
        ALTER TABLE private OWNER TO outsider;
        "#,
    );
    let declare = |db: &mut Client, deps: &str| {
        db.batch_execute(&format!(
            "SELECT etlify.sync_table('hubspot', 'people', 'contacts', 'email', 'person_payload', \
             dependencies => '{deps}')"
        ))
    };
    for (deps, state, text) in [
        (
            r#"["nope"]"#,
            SqlState::UNDEFINED_TABLE,
            "\"nope\" does not exist",
        ),
        (
            r#"["loose"]"#,
            SqlState::INVALID_COLUMN_REFERENCE,
            "no foreign keys tie",
        ),
        (
            r#"["twice"]"#,
            SqlState::INVALID_COLUMN_REFERENCE,
            "twice.a references",
        ),
        (
            r#"[{"table": "loose", "column": "nobody"}]"#,
            SqlState::UNDEFINED_COLUMN,
            "\"nobody\"",
        ),
        (
            r#"[{"table": "loose", "column": "person", "through": "loose"}]"#,
            SqlState::INVALID_PARAMETER_VALUE,
            "at most one",
        ),
        (
            r#"[{"table": "loose", "colum": "person"}]"#,
            SqlState::INVALID_PARAMETER_VALUE,
            "unknown key colum",
        ),
        (
            r#"[{"table": "loose", "keys": "SELECT nothing FROM changed"}]"#,
            SqlState::INVALID_PARAMETER_VALUE,
            "nothing",
        ),
        (
            r#"[{"table": "loose", "column": "person", "where": "no_such_column"}]"#,
            SqlState::INVALID_PARAMETER_VALUE,
            "no_such_column",
        ),
        (
            r#"{"table": "loose"}"#,
            SqlState::INVALID_PARAMETER_VALUE,
            "JSON array",
        ),
    ] {
        match declare(&mut env.db, deps) {
            Ok(()) => panic!("{deps}: accepted"),
            Err(e) => {
                assert_eq!(e.code(), Some(&state), "{deps}: {}", error_text(&e));
                assert!(error_text(&e).contains(text), "{deps}: {}", error_text(&e));
            }
        }
    }
    let left = scalar(
        &mut env.db,
        "SELECT (SELECT count(*) FROM etlify.mappings) + (SELECT count(*) FROM etlify.members) \
         + (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'etlify%')",
    );
    assert_eq!(left.as_deref(), Some("0"), "nothing half-installed");

    // a member of etlify_admin declaring over a table it cannot read
    exec(
        &mut env.db,
        "CREATE ROLE adm LOGIN; GRANT etlify_admin TO adm; ALTER TABLE people OWNER TO adm; \
         ALTER FUNCTION person_payload(people) OWNER TO adm; \
         GRANT SELECT ON companies, investments TO adm; GRANT CREATE ON SCHEMA public TO adm",
    );
    let mut adm = env.cluster.connect_as("adm");
    let e = declare(&mut adm, r#"["private"]"#).unwrap_err();
    assert_eq!(
        e.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{}",
        error_text(&e)
    );

    declare(&mut env.db, r#"["investments", "companies"]"#).unwrap();
    for (ddl, text) in [
        (
            "ALTER TABLE investments RENAME COLUMN person_id TO who",
            "person_id",
        ),
        (
            "ALTER TABLE people RENAME COLUMN company_id TO firm",
            "company_id",
        ),
        ("DROP TABLE investments", "investments"),
    ] {
        let e = env.db.batch_execute(ddl).unwrap_err();
        assert_eq!(
            e.code(),
            Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST),
            "{ddl}: {}",
            error_text(&e)
        );
        assert!(error_text(&e).contains(text), "{ddl}: {}", error_text(&e));
    }
    // other columns may change; capture goes on (the table's name too, but the
    // serializer reads it by name)
    exec(
        &mut env.db,
        "ALTER TABLE investments RENAME COLUMN note TO remark",
    );
    exec(
        &mut env.db,
        "UPDATE investments SET amount = 5 WHERE id = 3",
    );
    wait_prop(&env, "p3@x.test", "total", "5");
    // a renamed member is still captured: the record is tried again (and its
    // serializer, which names the old table, now fails)
    exec(&mut env.db, "ALTER TABLE investments RENAME TO stakes");
    exec(&mut env.db, "UPDATE stakes SET amount = 6 WHERE id = 3");
    wait_for_default("p3 tried again", || {
        etlify_e2e::fixtures::status_of(&mut env.db, "hubspot", "people", "3").filter(|s| {
            s.last_error
                .as_deref()
                .unwrap_or("")
                .contains("investments")
        })
    });

    exec(
        &mut env.db,
        "SELECT etlify.unsync_table('hubspot', 'people')",
    );
    let left = scalar(
        &mut env.db,
        "SELECT (SELECT count(*) FROM etlify.members) \
         + (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'etlify%')",
    );
    assert_eq!(left.as_deref(), Some("0"));
    exec(&mut env.db, "DROP TABLE stakes");
}

/// A failing key query (here a `where` that divides by zero on some rows) never
/// fails the writer: every record of the mapping is re-checked instead.
#[test]
fn a_failing_member_query_rechecks_instead_of_failing_the_writer() {
    let mut env = Env::start("", "");
    map_people(
        &mut env,
        r#"[{"table": "investments", "where": "1 / (amount::int - 13) <> 0"}]"#,
    );
    exec(
        &mut env.db,
        "INSERT INTO investments VALUES (9, 2, 13, NULL)",
    );
    wait_prop(&env, "p2@x.test", "total", "13");
}

/// A partitioned member: writes aimed at a partition are captured, also in a
/// partition created after the declaration.
#[test]
fn partitioned_members_are_captured() {
    let mut env = Env::start("", "");
    exec(
        &mut env.db,
        &PEOPLE.replace(
            "CREATE TABLE investments (id bigint PRIMARY KEY, person_id bigint REFERENCES people,\n                          amount numeric NOT NULL, note text);",
            "CREATE TABLE investments (id bigint PRIMARY KEY, person_id bigint REFERENCES people,
                                      amount numeric NOT NULL, note text) PARTITION BY RANGE (id);
             CREATE TABLE investments_lo PARTITION OF investments FOR VALUES FROM (0) TO (100);",
        ),
    );
    exec(
        &mut env.db,
        "SELECT etlify.sync_table('hubspot', 'people', 'contacts', 'email', 'person_payload', \
         dependencies => '[\"investments\"]')",
    );
    wait_prop(&env, "p1@x.test", "total", "150");
    exec(
        &mut env.db,
        "UPDATE investments_lo SET amount = 1 WHERE id = 1",
    );
    wait_prop(&env, "p1@x.test", "total", "51");
    exec(
        &mut env.db,
        "CREATE TABLE investments_hi PARTITION OF investments FOR VALUES FROM (100) TO (200)",
    );
    exec(
        &mut env.db,
        "INSERT INTO investments_hi VALUES (150, 2, 9, NULL)",
    );
    wait_prop(&env, "p2@x.test", "total", "9");
}

/// A member whose rows hold the source keys is captured from the transition
/// tables (src/members.rs, no query): its keys are spelled as keys are, whatever
/// the writer's DateStyle and TimeZone, and an update that changes nothing
/// counted names no record.
#[test]
fn member_keys_are_spelled_canonically_under_any_datestyle() {
    let mut env = Env::start_without_worker("", "");
    exec(
        &mut env.db,
        "CREATE TABLE days (d date PRIMARY KEY, label text NOT NULL);
         CREATE TABLE events (id int PRIMARY KEY, day date REFERENCES days, name text, note text);
         CREATE FUNCTION day_payload(x days) RETURNS jsonb LANGUAGE sql AS $$
           SELECT jsonb_build_object('email', x.label || '@x.test') $$;
         INSERT INTO days VALUES ('2024-01-02', 'jan2'), ('2024-02-01', 'feb1');
         SELECT etlify.sync_table('hubspot', 'days', 'contacts', 'email', 'day_payload', backfill => false,
                                  dependencies => '[{\"table\": \"events\", \"watch\": [\"name\"]}]');
         SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Pacific/Auckland';
         INSERT INTO events VALUES (1, '02/01/2024', 'a', NULL), (2, '02/01/2024', 'b', NULL);
         UPDATE events SET note = 'not watched';
         UPDATE events SET day = '01/02/2024' WHERE id = 2;",
    );
    let keys = scalar(
        &mut env.db,
        "SELECT string_agg(k, ',' ORDER BY k) FROM etlify.changes, unnest(keys) k",
    );
    // the insert names 2 January once; the move names both days; the unwatched
    // update names nothing
    assert_eq!(keys.as_deref(), Some("2024-01-02,2024-01-02,2024-02-01"));
}
