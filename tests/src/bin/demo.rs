//! etlify demo: a throwaway PostgreSQL 15 cluster with etlify preloaded and the mock
//! CRM registered as HubSpot. Companies, users (contacts that carry their company's
//! name and their investments total) and deals (which need their company's CRM id
//! and are associated with it) are mirrored; rows are inserted, updated and deleted
//! step by step while the demo prints what the CRM holds and what etlify's views
//! say, including a deal buffered until its company reaches the CRM. Everything it
//! starts is stopped at the end.
//!
//! Run with `scripts/demo.sh` (or `cargo run --release -p etlify-e2e --bin etlify-demo`
//! once the extension is installed and the mock built).

use std::time::Duration;

use etlify_e2e::fixtures::{error_text, pending_count};
use etlify_e2e::report::{objects_table, query_table, table};
use etlify_e2e::{wait_for, Cluster, Mock};
use postgres::Client;

const SETUP_SQL: &str = r#"CREATE EXTENSION etlify;

CREATE TABLE companies (
    id     bigint PRIMARY KEY,
    name   text NOT NULL,
    domain text UNIQUE              -- NULL until known: such a company is not synced
);
CREATE TABLE users (
    id         bigint PRIMARY KEY,
    email      text NOT NULL,
    first_name text,
    last_name  text,
    company_id bigint REFERENCES companies,
    note       text
);
CREATE TABLE investments (
    id      bigint PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users,
    amount  numeric(12,2) NOT NULL
);
CREATE TABLE deals (
    id         bigint PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES companies,
    title      text NOT NULL,
    amount     numeric(12,2)
);

-- the CRM payloads: HubSpot company, contact and deal properties
CREATE FUNCTION company_payload(c companies) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('domain', c.domain, 'name', c.name)
$$;
CREATE FUNCTION contact_payload(u users) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'email', u.email, 'firstname', u.first_name, 'lastname', u.last_name,
        'company', (SELECT c.name FROM companies c WHERE c.id = u.company_id),
        'total_invested', (SELECT coalesce(sum(i.amount), 0)::text FROM investments i WHERE i.user_id = u.id))
$$;
CREATE FUNCTION deal_payload(d deals) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'deal_ref', 'deal-' || d.id,
        'dealname', d.title || ' (' || c.name || ')',
        'amount', d.amount::text,
        'company_crm_id', etlify.crm_id('hubspot', 'companies', c.id::text))
      FROM companies c WHERE c.id = d.company_id
$$;"#;

const MAP_SQL: &str = r#"SELECT etlify.sync_table('hubspot', 'companies', 'companies', 'domain', 'company_payload',
    sync_if => 'domain IS NOT NULL');
SELECT etlify.sync_table('hubspot', 'users', 'contacts', 'email', 'contact_payload',
    watch        => ARRAY['email', 'first_name', 'last_name', 'company_id'],
    dependencies => '["investments", {"table": "companies", "watch": ["name"]}]');
SELECT etlify.sync_table('hubspot', 'deals', 'deals', 'deal_ref', 'deal_payload',
    dependencies      => '["companies"]',
    sync_dependencies => '[{"table": "companies", "associate": true}]');"#;

fn step(n: &mut u32, title: &str) {
    *n += 1;
    println!("\n━━━ {n}. {title} ━━━");
}

fn show_sql(sql: &str) {
    for line in sql.lines() {
        println!("  sql> {line}");
    }
}

fn run(db: &mut Client, sql: &str) {
    show_sql(sql);
    db.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{}", error_text(&e)));
}

/// Waits until the worker has nothing pending (changes are sent within milliseconds).
fn settle(db: &mut Client) {
    wait_for(
        Duration::from_secs(30),
        "the worker to send every change",
        || (pending_count(db, "hubspot") == 0).then_some(()),
    );
}

fn show_objects(mock: &Mock, object_type: &str) {
    println!(
        "\n  CRM (mock) — GET {}/__mock/objects/{object_type}",
        mock.url()
    );
    print_indented(&objects_table(&mock.objects(object_type)));
    let archived = mock.archived(object_type);
    if !archived.is_empty() {
        println!("  CRM (mock) — archived {object_type}");
        print_indented(&objects_table(&archived));
    }
}

fn show_associations(mock: &Mock) {
    println!("  CRM (mock) — deal → company associations");
    let rows: Vec<Vec<String>> = mock
        .associations("deals", "companies")
        .iter()
        .map(|a| {
            let types = a["types"].as_array().map_or(String::new(), |t| {
                t.iter()
                    .map(|t| format!("{} {}", t["category"].as_str().unwrap_or(""), t["type_id"]))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            vec![
                a["from"].as_str().unwrap_or("").to_string(),
                a["to"].as_str().unwrap_or("").to_string(),
                types,
            ]
        })
        .collect();
    let header = ["deal", "company", "types"].map(String::from);
    print_indented(&table(&header, &rows));
}

fn show_state(db: &mut Client, mock: &Mock) {
    for t in ["companies", "contacts", "deals"] {
        show_objects(mock, t);
    }
    show_associations(mock);
    println!("  etlify.overview");
    print_indented(&query_table(
        db,
        "SELECT crm, source, synced, pending, buffered, failed, parked, skipped, \
         to_char(last_synced_at, 'HH24:MI:SS.MS') AS last_synced_at FROM etlify.overview ORDER BY source::text",
    ));
    println!("  etlify.sync_status");
    print_indented(&query_table(
        db,
        "SELECT crm, source, key, state, crm_id, to_char(last_synced_at, 'HH24:MI:SS.MS') AS last_synced_at, \
         error_count, last_error FROM etlify.sync_status ORDER BY source::text, key::bigint",
    ));
    println!("  etlify.crm_status (the rate limit is HubSpot's own, learned from its answers)");
    print_indented(&query_table(
        db,
        "SELECT crm, state, rate_limit, rate_period, requests_last_period, throttled_total, \
         daily_used, daily_limit, pause_reason FROM etlify.crm_status",
    ));
    println!("  etlify.sync_log (newest first)");
    print_indented(&query_table(
        db,
        "SELECT to_char(at, 'HH24:MI:SS.MS') AS at, crm, source, operation, records, http_status, \
         round(duration_ms::numeric, 1) AS duration_ms, error FROM etlify.sync_log LIMIT 8",
    ));
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
    println!();
}

fn main() {
    let mut n = 0;
    step(
        &mut n,
        "start the mock CRM and a throwaway PostgreSQL 15 cluster",
    );
    let mock = Mock::start(&["--token", "demo-token"]);
    println!("  mock CRM: {} (pid {})", mock.url(), mock.pid());
    let cluster = Cluster::start("");
    println!(
        "  cluster: {} on 127.0.0.1:{} (postmaster pid {}), shared_preload_libraries = 'etlify'",
        cluster.data_dir().display(),
        cluster.port(),
        cluster.postmaster_pid().unwrap_or(0)
    );
    let mut db = cluster.client();

    step(
        &mut n,
        "create the extension, four tables and their serializers",
    );
    run(&mut db, SETUP_SQL);
    cluster.wait_worker_pid();
    let workers = etlify_e2e::wait_for_default("both sync workers", || {
        let pids = cluster.worker_pids();
        (pids.len() == 2).then_some(pids)
    });
    println!(
        "  sync workers running (etlify.workers = 2): pids {workers:?} (backend_type 'etlify sync worker')"
    );

    step(
        &mut n,
        "register the mock as HubSpot; mirror companies, users (as contacts) and deals",
    );
    let register = format!(
        "SELECT etlify.register_crm('hubspot', 'hubspot',\n    config => jsonb_build_object('base_url', '{}'),\n    secret => 'demo-token');",
        mock.url()
    );
    run(&mut db, &register);
    run(&mut db, MAP_SQL);

    step(
        &mut n,
        "insert two companies, three users, their investments and a deal",
    );
    run(
        &mut db,
        "INSERT INTO companies VALUES (1, 'Acme', 'acme.example'), (2, 'Globex', 'globex.example');\n\
         INSERT INTO users (id, email, first_name, last_name, company_id) VALUES\n    \
         (1, 'ada@example.com', 'Ada', 'Lovelace', 1),\n    \
         (2, 'grace@example.com', 'Grace', 'Hopper', 1),\n    \
         (3, 'alan@example.com', 'Alan', 'Turing', 2);\n\
         INSERT INTO investments VALUES (1, 1, 1000), (2, 1, 250), (3, 3, 500);\n\
         INSERT INTO deals VALUES (10, 1, 'Anvils', 1200);  -- sent after Acme, with its CRM id, then associated",
    );
    settle(&mut db);
    show_state(&mut db, &mock);

    step(
        &mut n,
        "sync groups: a new investment, a company rename, an unwatched column",
    );
    run(
        &mut db,
        "INSERT INTO investments VALUES (4, 3, 75);              -- Alan's total_invested: 575.00\n\
         UPDATE companies SET name = 'Acme Inc' WHERE id = 1;   -- Ada, Grace and the Anvils deal\n\
         UPDATE users SET note = 'VIP' WHERE id = 3;            -- not watched: nothing sent",
    );
    settle(&mut db);
    show_state(&mut db, &mock);

    step(
        &mut n,
        "dependency order: a deal for a company that is not in the CRM yet is buffered",
    );
    run(
        &mut db,
        "INSERT INTO companies (id, name) VALUES (3, 'Initech');  -- no domain: skipped by sync_if\n\
         INSERT INTO deals VALUES (11, 3, 'Staplers', 300);",
    );
    wait_for(Duration::from_secs(30), "the deal to be buffered", || {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM etlify.sync_status WHERE state = 'buffered'",
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or(0);
        (n == 1).then_some(())
    });
    println!("  etlify.sync_status (deals)");
    print_indented(&query_table(
        &mut db,
        "SELECT key, state, crm_id, last_error FROM etlify.sync_status \
         WHERE source = 'deals'::regclass ORDER BY key::bigint",
    ));
    run(
        &mut db,
        "UPDATE companies SET domain = 'initech.example' WHERE id = 3;  -- Initech syncs; its deal follows",
    );
    settle(&mut db);
    show_state(&mut db, &mock);

    step(
        &mut n,
        "a deal moves to another company: its association moves",
    );
    run(&mut db, "UPDATE deals SET company_id = 2 WHERE id = 10;");
    settle(&mut db);
    show_objects(&mock, "deals");
    show_associations(&mock);

    step(
        &mut n,
        "change an email (same contact, updated in place), delete a user",
    );
    run(
        &mut db,
        "UPDATE users SET email = 'grace.hopper@example.com' WHERE id = 2;\n\
         DELETE FROM investments WHERE user_id = 3;\n\
         DELETE FROM users WHERE id = 3;",
    );
    settle(&mut db);
    show_objects(&mock, "contacts");

    step(&mut n, "sync / delete on demand");
    for sql in [
        "SELECT etlify.sync('hubspot', 'users', '1')",
        "SELECT etlify.delete('hubspot', 'users', '1')",
        "SELECT etlify.sync('hubspot', 'users', '1')",
    ] {
        let r: Option<String> = db
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{}", error_text(&e)))
            .get(0);
        println!("  sql> {sql};  →  {}", r.unwrap_or_default());
    }
    show_state(&mut db, &mock);

    step(&mut n, "stop everything");
    let stats = mock.stats();
    println!("  mock stats: {stats}");
    drop(db);
    drop(cluster);
    drop(mock);
    println!("  cluster and mock stopped (by PID), cluster directory removed. Done.");
}
