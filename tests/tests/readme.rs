//! The README's "Use" section, run exactly as written (issue 10, item 1): its
//! postgresql.conf lines start the cluster, its SQL session runs in the database
//! they name, against the mock CRM in place of HubSpot, and so does its worked
//! example of serializers that read other tables (item 2).

use etlify_e2e::cluster::Cluster;
use etlify_e2e::fixtures::error_text;
use etlify_e2e::{wait_for_default, Mock};

/// The fenced blocks of the README's "## Use" section: (language, text).
fn use_blocks() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read README.md");
    let start = readme.find("\n## Use\n").expect("a Use section");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut blocks = Vec::new();
    let mut lines = section[..end].lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let mut text = String::new();
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                text.push_str(l);
                text.push('\n');
            }
            blocks.push((lang.trim().to_string(), text));
        }
    }
    blocks
}

#[test]
fn the_readme_use_section_works_as_written() {
    let blocks = use_blocks();
    let conf = &blocks
        .iter()
        .find(|(lang, _)| lang.is_empty())
        .expect("a postgresql.conf block")
        .1;
    let sql = &blocks
        .iter()
        .find(|(lang, _)| lang == "sql")
        .expect("an SQL block")
        .1;
    assert!(conf.contains("etlify.database = 'app'"), "{conf}");
    assert!(sql.contains("http://127.0.0.1:8080") && sql.contains("'pat-xxx'"));

    let mock = Mock::start(&["--token", "pat-xxx"]);
    // the harness preloads etlify; the README's lines come last and win
    let cluster = Cluster::start(conf);
    cluster
        .client()
        .batch_execute("CREATE DATABASE app")
        .expect("create the database etlify.database names");
    let mut app = cluster.connect_db("postgres", "app");
    let sql = sql.replace("http://127.0.0.1:8080", mock.url());
    for statement in split_statements(&sql) {
        app.batch_execute(&statement)
            .unwrap_or_else(|e| panic!("{statement}\n: {}", error_text(&e)));
    }
    // the worker serves app: the rows reach the CRM by themselves
    wait_for_default("Ada King and Grace Hopper in the CRM", || {
        let ada = mock.find("contacts", "email", "ada@example.com")?;
        mock.find("contacts", "email", "grace@example.com")?;
        (ada["properties"]["lastname"].as_str() == Some("King")).then_some(())
    });
    assert_eq!(
        mock.objects("contacts").len(),
        2,
        "the row without email is skipped"
    );

    // the worked example: deals that carry their company's name and CRM id
    let example = &blocks
        .iter()
        .find(|(lang, text)| lang == "sql" && text.contains("CREATE TABLE companies"))
        .expect("the deals and companies example")
        .1;
    for statement in split_statements(example) {
        app.batch_execute(&statement)
            .unwrap_or_else(|e| panic!("{statement}\n: {}", error_text(&e)));
    }
    let company = wait_for_default("the company in the CRM", || {
        mock.find("companies", "domain", "acme.example")
    });
    let company_id = company["id"].as_str().expect("an id").to_string();
    let deal = wait_for_default("the deal in the CRM", || {
        mock.find("deals", "deal_ref", "deal-10")
    });
    assert_eq!(
        deal["properties"]["company_crm_id"].as_str(),
        Some(company_id.as_str()),
        "{deal}"
    );
    // ... and is associated with it
    let deal_id = deal["id"].as_str().expect("an id").to_string();
    wait_for_default("the deal associated with its company", || {
        let links = mock.associations("deals", "companies");
        links
            .iter()
            .any(|l| {
                l["from"].as_str() == Some(deal_id.as_str())
                    && l["to"].as_str() == Some(company_id.as_str())
            })
            .then_some(())
    });
    // the company's rename reaches the deal through its dependency
    wait_for_default("the deal renamed with its company", || {
        mock.find("deals", "deal_ref", "deal-10")
            .filter(|d| d["properties"]["dealname"].as_str() == Some("Anvils (Acme Inc)"))
    });

    wait_for_default("nothing needs attention", || {
        let n: i64 = app
            .query_one(
                "SELECT count(*) FROM etlify.sync_status WHERE state IN ('pending', 'failed', 'parked', 'buffered')",
                &[],
            )
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    });
}

/// The SQL block's statements, one by one as psql would send them (a statement
/// ends with a semicolon at the end of a line outside a dollar-quoted body).
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_body = false;
    for line in sql.lines() {
        current.push_str(line);
        current.push('\n');
        in_body ^= line.matches("$$").count() % 2 == 1;
        let code = line.split("--").next().unwrap_or("").trim_end();
        if !in_body && code.ends_with(';') {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}
