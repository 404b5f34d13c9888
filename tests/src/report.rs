//! Plain-text tables of query results and mock objects, for the demo and benchmarks.

use postgres::{Client, SimpleQueryMessage};
use serde_json::Value;

/// Runs `sql` (simple protocol: every value as text) and formats the rows as an
/// aligned table.
pub fn query_table(db: &mut Client, sql: &str) -> String {
    let msgs = db
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", crate::fixtures::error_text(&e)));
    let mut header: Vec<String> = Vec::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            if header.is_empty() {
                header = r.columns().iter().map(|c| c.name().to_string()).collect();
            }
            rows.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("∅").to_string())
                    .collect(),
            );
        }
    }
    if header.is_empty() {
        return "(no rows)\n".into();
    }
    table(&header, &rows)
}

/// The mock's live objects of type `t` as a table: id, then every property.
pub fn objects_table(objects: &[Value]) -> String {
    let mut props: Vec<String> = Vec::new();
    for o in objects {
        if let Some(m) = o["properties"].as_object() {
            for k in m.keys() {
                if !props.contains(k)
                    && !k.starts_with("hs_")
                    && k != "createdate"
                    && k != "lastmodifieddate"
                {
                    props.push(k.clone());
                }
            }
        }
    }
    let mut header = vec!["id".to_string()];
    header.extend(props.iter().cloned());
    let rows: Vec<Vec<String>> = objects
        .iter()
        .map(|o| {
            let mut row = vec![crate::mock::id_of(o).unwrap_or_default()];
            for p in &props {
                row.push(o["properties"][p].as_str().unwrap_or("").to_string());
            }
            row
        })
        .collect();
    if rows.is_empty() {
        return "(no objects)\n".into();
    }
    table(&header, &rows)
}

/// Formats `rows` under `header` with columns padded to their widest cell.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header) + "\n";
    out += &widths
        .iter()
        .map(|w| "-".repeat(*w))
        .collect::<Vec<_>>()
        .join("-+-");
    out += "\n";
    for r in rows {
        out += &line(r);
        out += "\n";
    }
    out
}
