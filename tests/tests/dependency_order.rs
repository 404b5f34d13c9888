//! Dependency order (issue 11): `sync_dependencies` hold a record back
//! (`buffered`) until the records it references have a CRM id, release it in the
//! same drain round when both are pending, and name what it waits for.

use etlify_e2e::fixtures::{error_text, json, register_crm, scalar, status_of};
use etlify_e2e::{wait_for_default, Env};
use postgres::error::SqlState;
use postgres::Client;
use serde_json::Value;

const DEALS: &str = r#"
CREATE TABLE companies (id bigint PRIMARY KEY, domain text, listed boolean NOT NULL DEFAULT true);
CREATE TABLE deals (id bigint PRIMARY KEY, ref text NOT NULL, amount int NOT NULL,
                    company_id bigint REFERENCES companies);
CREATE FUNCTION company_payload(c companies) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object('domain', c.domain)
$$;
CREATE FUNCTION deal_payload(d deals) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object('deal_ref', d.ref, 'amount', d.amount::text,
                            'company_crm_id', etlify.crm_id('hubspot', 'companies', d.company_id::text))
$$;
INSERT INTO companies VALUES (1, 'acme.test'), (2, 'beta.test');
INSERT INTO deals VALUES (10, 'D-10', 100, 1), (11, 'D-11', 200, 2), (12, 'D-12', 300, NULL);
"#;

const MAP_COMPANIES: &str =
    "SELECT etlify.sync_table('hubspot', 'companies', 'companies', 'domain', \
                             'company_payload', sync_if => 'listed')";
const MAP_DEALS: &str =
    "SELECT etlify.sync_table('hubspot', 'deals', 'deals', 'deal_ref', 'deal_payload', \
                         sync_dependencies => '[\"companies\"]')";

fn exec(db: &mut Client, sql: &str) {
    db.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
}

fn drain(db: &mut Client) -> Value {
    json(db, "SELECT etlify.drain()")
}

fn state(db: &mut Client, source: &str, key: &str) -> (String, Option<String>) {
    let s = status_of(db, "hubspot", source, key)
        .unwrap_or_else(|| panic!("{source} {key}: no status"));
    (s.state, s.last_error)
}

/// The deal objects the mock holds, by deal_ref: their company_crm_id property.
fn deal_companies(env: &Env) -> Vec<(String, Option<String>)> {
    let mut v: Vec<_> = env
        .mock
        .objects("deals")
        .iter()
        .map(|o| {
            let p = &o["properties"];
            (
                p["deal_ref"].as_str().unwrap_or_default().to_string(),
                p["company_crm_id"].as_str().map(str::to_string),
            )
        })
        .collect();
    v.sort();
    v
}

fn company_id(env: &Env, domain: &str) -> String {
    let o = env
        .mock
        .find("companies", "domain", domain)
        .expect("company in the CRM");
    o["id"].as_str().expect("id").to_string()
}

/// How many inputs of requests to `path_part` the mock received.
fn inputs_to(env: &Env, path_part: &str) -> u64 {
    env.mock
        .crm_requests()
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.contains(path_part)))
        .map(|r| r["inputs"].as_u64().unwrap_or(1))
        .sum()
}

/// The deals mapping is declared first, so that only the dependency order can put
/// companies before them: one drain writes both, each deal once, with its id.
#[test]
fn a_record_and_the_one_it_needs_go_out_in_one_round() {
    let mut env = Env::start_without_worker("", "");
    exec(&mut env.db, DEALS);
    exec(&mut env.db, MAP_DEALS);
    exec(&mut env.db, MAP_COMPANIES);
    let counts = drain(&mut env.db);
    assert_eq!(counts["synced"], 5, "{counts}");
    assert_eq!(counts["buffered"], 0, "{counts}");
    let (acme, beta) = (company_id(&env, "acme.test"), company_id(&env, "beta.test"));
    assert_eq!(
        deal_companies(&env),
        vec![
            ("D-10".into(), Some(acme)),
            ("D-11".into(), Some(beta)),
            ("D-12".into(), None), // a NULL reference is no dependency
        ]
    );
    assert_eq!(
        inputs_to(&env, "/objects/deals/"),
        3,
        "each deal written once"
    );
}

/// A referenced record that is skipped, parked or missing leaves its dependents
/// buffered with a last_error naming it; once it syncs, they go out.
#[test]
fn a_dependent_waits_for_a_skipped_parked_or_missing_reference() {
    let mut env = Env::start_without_worker("", ", max_sync_errors => 1");
    exec(&mut env.db, DEALS);
    exec(
        &mut env.db,
        "UPDATE companies SET listed = false WHERE id = 1; UPDATE companies SET domain = NULL WHERE id = 2;",
    );
    exec(&mut env.db, MAP_COMPANIES);
    exec(&mut env.db, MAP_DEALS);
    let counts = drain(&mut env.db);
    assert_eq!(counts["buffered"], 2, "{counts}");
    let (s, e) = state(&mut env.db, "deals", "10");
    assert_eq!(s, "buffered");
    let e = e.unwrap_or_default();
    assert!(
        e.contains("companies 1") && e.contains("skipped by sync_if"),
        "{e}"
    );
    let (s, e) = state(&mut env.db, "deals", "11");
    assert_eq!(s, "buffered");
    let e = e.unwrap_or_default();
    assert!(e.contains("companies 2") && e.contains("parked"), "{e}");
    assert_eq!(state(&mut env.db, "deals", "12").0, "synced");
    assert_eq!(
        scalar(
            &mut env.db,
            "SELECT buffered FROM etlify.overview WHERE source = 'deals'::regclass"
        )
        .as_deref(),
        Some("2")
    );
    assert!(
        env.mock.find("deals", "deal_ref", "D-10").is_none(),
        "not sent before its company"
    );

    // a reference to a row that does not exist
    exec(&mut env.db, "ALTER TABLE deals DROP CONSTRAINT deals_company_id_fkey; UPDATE deals SET company_id = 99 WHERE id = 12");
    drain(&mut env.db);
    drain(&mut env.db);
    let (s, e) = state(&mut env.db, "deals", "12");
    assert_eq!(s, "buffered");
    assert!(e.unwrap_or_default().contains("companies 99"));

    // the references sync: their dependents follow in the same drain
    exec(
        &mut env.db,
        "UPDATE companies SET listed = true WHERE id = 1",
    );
    exec(
        &mut env.db,
        "UPDATE companies SET domain = 'beta.test' WHERE id = 2",
    );
    exec(
        &mut env.db,
        "SELECT etlify.reset_errors('hubspot', 'companies')",
    );
    drain(&mut env.db);
    assert_eq!(state(&mut env.db, "deals", "10").0, "synced");
    assert_eq!(state(&mut env.db, "deals", "11").0, "synced");
    let (acme, beta) = (company_id(&env, "acme.test"), company_id(&env, "beta.test"));
    assert_eq!(
        deal_companies(&env),
        vec![
            ("D-10".into(), Some(acme)),
            ("D-11".into(), Some(beta)),
            ("D-12".into(), None),
        ]
    );
    assert_eq!(
        inputs_to(&env, "/objects/deals/"),
        3,
        "each deal written once"
    );
}

/// A table that is not synced yet may be named: its dependents wait for it.
#[test]
fn a_forward_reference_waits_for_its_table_to_be_synced() {
    let mut env = Env::start_without_worker("", "");
    exec(&mut env.db, DEALS);
    exec(&mut env.db, MAP_DEALS);
    drain(&mut env.db);
    let (s, e) = state(&mut env.db, "deals", "10");
    assert_eq!(s, "buffered");
    let e = e.unwrap_or_default();
    assert!(
        e.contains("companies is not synced to CRM \"hubspot\""),
        "{e}"
    );
    exec(&mut env.db, MAP_COMPANIES);
    drain(&mut env.db);
    assert_eq!(state(&mut env.db, "deals", "10").0, "synced");
    assert_eq!(state(&mut env.db, "deals", "11").0, "synced");
    assert_eq!(
        inputs_to(&env, "/objects/deals/"),
        3,
        "each deal written once"
    );
}

/// `"crm"` names another CRM: the deal waits for the company's id there.
#[test]
fn a_dependency_in_another_crm() {
    let mut env = Env::start_without_worker("", "");
    register_crm(&mut env.db, "other", &env.mock, "");
    exec(&mut env.db, DEALS);
    exec(
        &mut env.db,
        "SELECT etlify.sync_table('hubspot', 'deals', 'deals', 'deal_ref', 'deal_payload', \
         sync_dependencies => '[{\"table\": \"companies\", \"crm\": \"other\"}]')",
    );
    exec(&mut env.db, "SELECT etlify.sync_table('hubspot', 'companies', 'companies', 'domain', 'company_payload')");
    drain(&mut env.db);
    let (s, e) = state(&mut env.db, "deals", "10");
    assert_eq!(s, "buffered", "synced to hubspot is not enough");
    assert!(e.unwrap_or_default().contains("in CRM \"other\""));
    exec(
        &mut env.db,
        "SELECT etlify.sync_table('other', 'companies', 'companies', 'domain', 'company_payload')",
    );
    drain(&mut env.db);
    assert_eq!(state(&mut env.db, "deals", "10").0, "synced");
}

/// With the worker: a company and its deal inserted in one transaction reach the
/// CRM in order, the deal once, with the company's id; sync() answers buffered.
#[test]
fn the_worker_sends_referenced_records_first() {
    let mut env = Env::start("", "");
    exec(&mut env.db, DEALS);
    exec(&mut env.db, MAP_DEALS);
    exec(&mut env.db, MAP_COMPANIES);
    wait_for_default("deals synced", || {
        (state(&mut env.db, "deals", "11").0 == "synced").then_some(())
    });
    exec(
        &mut env.db,
        "BEGIN; INSERT INTO companies VALUES (3, 'gamma.test'); \
         INSERT INTO deals VALUES (13, 'D-13', 5, 3); COMMIT;",
    );
    wait_for_default("deal 13 synced", || {
        (state(&mut env.db, "deals", "13").0 == "synced").then_some(())
    });
    let gamma = company_id(&env, "gamma.test");
    let d = env.mock.find("deals", "deal_ref", "D-13").expect("deal");
    assert_eq!(
        d["properties"]["company_crm_id"].as_str(),
        Some(gamma.as_str())
    );
    assert_eq!(
        inputs_to(&env, "/objects/deals/"),
        4,
        "each deal written once"
    );

    // sync() of a deal whose company is not in the CRM: buffered, and the company
    // is enqueued; the worker then sends both
    exec(
        &mut env.db,
        "INSERT INTO companies VALUES (4, 'delta.test', false)",
    );
    exec(&mut env.db, "INSERT INTO deals VALUES (14, 'D-14', 5, 4)");
    let r = scalar(&mut env.db, "SELECT etlify.sync('hubspot', 'deals', '14')");
    assert_eq!(r.as_deref(), Some("buffered"));
    exec(
        &mut env.db,
        "UPDATE companies SET listed = true WHERE id = 4",
    );
    wait_for_default("deal 14 released", || {
        (state(&mut env.db, "deals", "14").0 == "synced").then_some(())
    });
}

/// Every mistake in a declaration is an error naming the culprit, and nothing is
/// half-installed; a cycle is refused at the declaration that closes it.
#[test]
fn bad_sync_dependencies_are_refused() {
    let mut env = Env::start_without_worker("", "");
    exec(&mut env.db, DEALS);
    exec(
        &mut env.db,
        "CREATE TABLE pairs (id int PRIMARY KEY, a bigint REFERENCES companies, b bigint REFERENCES companies, \
                             t text, d date);
         CREATE FUNCTION pair_payload(p pairs) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('k', p.id) $$;",
    );
    let declare = |db: &mut Client, source: &str, ser: &str, deps: &str| {
        db.batch_execute(&format!(
            "SELECT etlify.sync_table('hubspot', '{source}', '{source}', 'k', '{ser}', sync_dependencies => '{deps}')"
        ))
        .err()
        .map(|e| (e.code().cloned(), error_text(&e)))
    };
    let cases: &[(&str, &str, SqlState, &str)] = &[
        (
            "pairs",
            r#"["companies"]"#,
            SqlState::INVALID_COLUMN_REFERENCE,
            "pairs_a_fkey (a), pairs_b_fkey (b)",
        ),
        (
            "pairs",
            r#"["nope"]"#,
            SqlState::UNDEFINED_TABLE,
            "\"nope\" does not exist",
        ),
        (
            "pairs",
            r#"[{"table": "companies", "source_column": "zz"}]"#,
            SqlState::UNDEFINED_COLUMN,
            "\"zz\"",
        ),
        (
            "pairs",
            r#"[{"table": "companies", "source_column": "t"}]"#,
            SqlState::DATATYPE_MISMATCH,
            "type text",
        ),
        (
            "pairs",
            r#"[{"table": "companies", "source_column": "a", "via": 1}]"#,
            SqlState::INVALID_PARAMETER_VALUE,
            "unknown key via",
        ),
        (
            "pairs",
            r#"[{"table": "companies", "source_column": "a", "crm": "zz"}]"#,
            SqlState::UNDEFINED_OBJECT,
            "unknown CRM \"zz\"",
        ),
        (
            "pairs",
            r#"[{"table": "companies", "source_column": "a", "associate": {"type_id": 5}}]"#,
            SqlState::INVALID_PARAMETER_VALUE,
            "associate is true",
        ),
        (
            "pairs",
            r#"{"table": "companies"}"#,
            SqlState::INVALID_PARAMETER_VALUE,
            "must be a JSON array",
        ),
        (
            "pairs",
            r#"[{"table": "pairs", "source_column": "id"}]"#,
            SqlState::INVALID_RECURSION,
            "cycle",
        ),
    ];
    for (source, deps, code, needle) in cases {
        let (c, e) = declare(&mut env.db, source, "pair_payload", deps)
            .unwrap_or_else(|| panic!("{deps}: accepted"));
        assert_eq!(c.as_ref(), Some(code), "{deps}: {e}");
        assert!(e.contains(needle), "{deps}: {e}");
        assert!(!e.contains("CONTEXT"), "{e}");
    }
    assert_eq!(
        scalar(&mut env.db, "SELECT count(*) FROM etlify.mappings").as_deref(),
        Some("0")
    );
    assert_eq!(
        scalar(&mut env.db, "SELECT count(*) FROM etlify.needs").as_deref(),
        Some("0")
    );

    // a role may only wait for the records of a table it can read
    exec(
        &mut env.db,
        "CREATE ROLE dep_adm LOGIN IN ROLE etlify_admin; CREATE TABLE mine (id int PRIMARY KEY, c bigint);
         ALTER TABLE mine OWNER TO dep_adm;
         CREATE FUNCTION mine_payload(m mine) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('k', m.id) $$;
         ALTER FUNCTION mine_payload(mine) OWNER TO dep_adm;",
    );
    let mut adm = env.cluster.connect_as("dep_adm");
    let e = adm
        .batch_execute(
            "SELECT etlify.sync_table('hubspot', 'mine', 'mine', 'k', 'mine_payload', \
             sync_dependencies => '[{\"table\": \"companies\", \"source_column\": \"c\"}]')",
        )
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{}",
        error_text(&e)
    );
    assert!(
        error_text(&e).contains("permission denied for table public.companies"),
        "{}",
        error_text(&e)
    );
    drop(adm);

    // companies → deals → companies: refused when the second closes the cycle
    exec(
        &mut env.db,
        "ALTER TABLE companies ADD COLUMN top_deal bigint;
         SELECT etlify.sync_table('hubspot', 'deals', 'deals', 'deal_ref', 'deal_payload', sync_dependencies => '[\"companies\"]');",
    );
    let (c, e) = declare(
        &mut env.db,
        "companies",
        "company_payload",
        r#"[{"table": "deals", "source_column": "top_deal"}]"#,
    )
    .expect("the cycle is refused");
    assert_eq!(c, Some(SqlState::INVALID_RECURSION), "{e}");
    assert!(
        e.contains("companies → public.deals → public.companies"),
        "{e}"
    );
    assert_eq!(
        scalar(&mut env.db, "SELECT count(*) FROM etlify.mappings").as_deref(),
        Some("1")
    );

    // a referenced table and a reference column stay while a mapping needs them
    let e = env
        .db
        .batch_execute("ALTER TABLE deals DROP COLUMN company_id")
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST),
        "{}",
        error_text(&e)
    );
    let e = env
        .db
        .batch_execute("ALTER TABLE deals RENAME COLUMN company_id TO c")
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST),
        "{}",
        error_text(&e)
    );
    exec(&mut env.db, "DROP TABLE pairs CASCADE");
    let e = env
        .db
        .batch_execute("DROP TABLE companies CASCADE")
        .unwrap_err();
    assert!(
        error_text(&e).contains("holds records that the records of public.deals"),
        "{}",
        error_text(&e)
    );
    // unsynced, the table may go
    exec(
        &mut env.db,
        "SELECT etlify.unsync_table('hubspot', 'deals')",
    );
    assert_eq!(
        scalar(&mut env.db, "SELECT count(*) FROM etlify.needs").as_deref(),
        Some("0")
    );
    exec(&mut env.db, "DROP TABLE companies CASCADE");
}

/// `(from, to, type ids)` of the deal → company associations the mock holds.
fn deal_links(env: &Env) -> Vec<(String, String, Vec<i64>)> {
    env.mock
        .associations("deals", "companies")
        .iter()
        .map(|a| {
            let mut types: Vec<i64> = a["types"]
                .as_array()
                .map(|t| t.iter().filter_map(|t| t["type_id"].as_i64()).collect())
                .unwrap_or_default();
            types.sort();
            (
                a["from"].as_str().unwrap_or_default().to_string(),
                a["to"].as_str().unwrap_or_default().to_string(),
                types,
            )
        })
        .collect()
}

/// `"associate"`: default and labelled associations, made after the record is
/// written, moved when the reference moves, removed when it goes; a failed one
/// fails its record without sending the payload again.
#[test]
fn associations_follow_their_references() {
    let mut env = Env::start_without_worker("", "");
    exec(&mut env.db, DEALS);
    exec(
        &mut env.db,
        "ALTER TABLE deals ADD COLUMN partner_id bigint REFERENCES companies;
         UPDATE deals SET partner_id = 2 WHERE id = 10;",
    );
    exec(&mut env.db, MAP_COMPANIES);
    exec(
        &mut env.db,
        r#"SELECT etlify.sync_table('hubspot', 'deals', 'deals', 'deal_ref', 'deal_payload',
             sync_dependencies => '[{"table": "companies", "source_column": "company_id", "associate": true},
                                    {"table": "companies", "source_column": "partner_id",
                                     "associate": {"category": "HUBSPOT_DEFINED", "type_id": 5}}]')"#,
    );
    drain(&mut env.db);
    let (c1, c2) = (company_id(&env, "acme.test"), company_id(&env, "beta.test"));
    let deal = |env: &Env, r: &str| -> String {
        let o = env.mock.find("deals", "deal_ref", r).expect("deal");
        o["id"].as_str().expect("id").to_string()
    };
    let (d10, d11) = (deal(&env, "D-10"), deal(&env, "D-11"));
    let mut want = vec![
        (d10.clone(), c1.clone(), vec![341]),
        (d10.clone(), c2.clone(), vec![5, 341]), // a label comes with the default type
        (d11.clone(), c2.clone(), vec![341]),
    ];
    want.sort();
    assert_eq!(deal_links(&env), want);
    assert_eq!(
        scalar(&mut env.db, "SELECT count(*) FROM etlify.links").as_deref(),
        Some("3")
    );
    let writes = inputs_to(&env, "/objects/deals/");

    // a reference that goes removes its association; one that moves moves it
    exec(
        &mut env.db,
        "UPDATE deals SET company_id = NULL WHERE id = 10",
    );
    exec(&mut env.db, "UPDATE deals SET company_id = 1 WHERE id = 11");
    drain(&mut env.db);
    let mut want = vec![
        (d10.clone(), c2.clone(), vec![5, 341]),
        (d11.clone(), c1.clone(), vec![341]),
    ];
    want.sort();
    assert_eq!(deal_links(&env), want);

    // a failed association fails its record; the retry asks for it alone
    let writes_before = inputs_to(&env, "/objects/deals/");
    assert!(writes_before > writes);
    env.mock.set_faults(serde_json::json!({
        "fail_ids": {d11.clone(): "no such deal today"},
        "operations": ["associations/batch/associate/default"]
    }));
    exec(&mut env.db, "UPDATE deals SET company_id = 2 WHERE id = 11");
    drain(&mut env.db);
    let (s, e) = state(&mut env.db, "deals", "11");
    assert_eq!(s, "failed");
    let e = e.unwrap_or_default();
    assert!(
        e.contains("associating with companies") && e.contains("no such deal today"),
        "{e}"
    );
    let writes_failed = inputs_to(&env, "/objects/deals/");
    env.mock.set_faults(serde_json::json!({}));
    let r = scalar(&mut env.db, "SELECT etlify.sync('hubspot', 'deals', '11')");
    assert_eq!(
        r.as_deref(),
        Some("not_modified"),
        "the payload went out before"
    );
    assert_eq!(
        inputs_to(&env, "/objects/deals/"),
        writes_failed,
        "not sent again"
    );
    assert!(deal_links(&env).contains(&(d11.clone(), c2.clone(), vec![341])));
    assert!(!deal_links(&env)
        .iter()
        .any(|(f, t, _)| *f == d11 && *t == c1));

    // an archived deal takes its associations with it
    exec(&mut env.db, "DELETE FROM deals WHERE id = 11");
    drain(&mut env.db);
    assert!(!deal_links(&env).iter().any(|(f, ..)| *f == d11));
    assert_eq!(
        scalar(
            &mut env.db,
            "SELECT count(*) FROM etlify.links WHERE key = '11'"
        )
        .as_deref(),
        Some("0")
    );
}

/// A reference is spelled as keys are, whatever the writer's DateStyle: a date
/// key written under `SQL, DMY` names the same record.
#[test]
fn a_date_reference_under_another_datestyle() {
    let mut env = Env::start_without_worker("", "");
    exec(
        &mut env.db,
        "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Pacific/Auckland';
         CREATE TABLE days (d date PRIMARY KEY, label text NOT NULL);
         CREATE TABLE events (id int PRIMARY KEY, day date REFERENCES days, name text NOT NULL);
         CREATE FUNCTION day_payload(x days) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('domain', x.label) $$;
         CREATE FUNCTION event_payload(e events) RETURNS jsonb LANGUAGE sql AS $$
           SELECT jsonb_build_object('deal_ref', e.name, 'day_crm_id', etlify.crm_id('hubspot', 'days', e.day::text)) $$;
         SELECT etlify.sync_table('hubspot', 'events', 'deals', 'deal_ref', 'event_payload', sync_dependencies => '[\"days\"]');
         SELECT etlify.sync_table('hubspot', 'days', 'companies', 'domain', 'day_payload');
         INSERT INTO days VALUES ('02/01/2024', 'second-of-january');
         INSERT INTO events VALUES (1, '02/01/2024', 'E-1');",
    );
    let counts = drain(&mut env.db);
    assert_eq!(counts["synced"], 2, "{counts}");
    assert_eq!(state(&mut env.db, "events", "1").0, "synced");
    let day = company_id(&env, "second-of-january");
    let e = env.mock.find("deals", "deal_ref", "E-1").expect("event");
    assert_eq!(e["properties"]["day_crm_id"].as_str(), Some(day.as_str()));
}
