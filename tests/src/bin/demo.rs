//! etlify demo: a throwaway PostgreSQL 15 cluster with etlify preloaded and the mock
//! CRM registered as HubSpot. A `users` table is mirrored as HubSpot contacts; rows
//! are inserted, updated and deleted step by step while the demo prints what the
//! CRM holds and what etlify's views say. Everything it starts is stopped at the end.
//!
//! Run with `scripts/demo.sh` (or `cargo run --release -p etlify-e2e --bin etlify-demo`
//! once the extension is installed and the mock built).

use std::time::Duration;

use etlify_e2e::fixtures::{error_text, pending_count};
use etlify_e2e::report::{objects_table, query_table};
use etlify_e2e::{wait_for, Cluster, Mock};
use postgres::Client;

const SETUP_SQL: &str = r#"CREATE EXTENSION etlify;

CREATE TABLE users (
    id         bigint PRIMARY KEY,
    email      text NOT NULL,
    first_name text,
    last_name  text,
    active     boolean NOT NULL DEFAULT true,
    note       text
);

-- the CRM payload of a user: HubSpot contact properties
CREATE FUNCTION contact_payload(u users) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('email', u.email,
                              'firstname', u.first_name,
                              'lastname', u.last_name)
$$;"#;

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

fn show_state(db: &mut Client, mock: &Mock) {
    println!(
        "\n  CRM (mock) — GET {}/__mock/objects/contacts",
        mock.url()
    );
    print_indented(&objects_table(&mock.objects("contacts")));
    let archived = mock.archived("contacts");
    if !archived.is_empty() {
        println!("  CRM (mock) — archived contacts");
        print_indented(&objects_table(&archived));
    }
    println!("  etlify.overview");
    print_indented(&query_table(
        db,
        "SELECT crm, source, synced, pending, failed, parked, skipped, \
         to_char(last_synced_at, 'HH24:MI:SS.MS') AS last_synced_at FROM etlify.overview",
    ));
    println!("  etlify.sync_status");
    print_indented(&query_table(
        db,
        "SELECT crm, source, key, state, crm_id, to_char(last_synced_at, 'HH24:MI:SS.MS') AS last_synced_at, \
         error_count, last_error FROM etlify.sync_status ORDER BY key::bigint",
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
        "create the extension, a users table and its serializer",
    );
    run(&mut db, SETUP_SQL);
    let worker = cluster.wait_worker_pid();
    println!("  sync worker running: pid {worker} (backend_type 'etlify sync worker')");

    step(
        &mut n,
        "register the mock as HubSpot and mirror users as contacts",
    );
    let register = format!(
        "SELECT etlify.register_crm('hubspot', 'hubspot',\n    config => jsonb_build_object('base_url', '{}'),\n    secret => 'demo-token');",
        mock.url()
    );
    run(&mut db, &register);
    run(
        &mut db,
        "SELECT etlify.sync_table('hubspot', 'users', 'contacts',\n    id_property => 'email', serializer => 'contact_payload',\n    watch => ARRAY['email', 'first_name', 'last_name']);",
    );

    step(&mut n, "insert three users");
    run(
        &mut db,
        "INSERT INTO users (id, email, first_name, last_name) VALUES\n    (1, 'ada@example.com', 'Ada', 'Lovelace'),\n    (2, 'grace@example.com', 'Grace', 'Hopper'),\n    (3, 'alan@example.com', 'Alan', 'Turing');",
    );
    settle(&mut db);
    show_state(&mut db, &mock);

    step(
        &mut n,
        "update a name, change an email, touch an unwatched column",
    );
    run(
        &mut db,
        "UPDATE users SET last_name = 'King' WHERE id = 1;\nUPDATE users SET email = 'grace.hopper@example.com' WHERE id = 2;  -- same contact, updated in place\nUPDATE users SET note = 'VIP' WHERE id = 3;  -- not watched: nothing sent",
    );
    settle(&mut db);
    show_state(&mut db, &mock);

    step(&mut n, "delete a user");
    run(&mut db, "DELETE FROM users WHERE id = 3;");
    settle(&mut db);
    show_state(&mut db, &mock);

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
