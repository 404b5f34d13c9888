//! What the capture triggers cost writers: the same UPDATEs on `users` (mapped) and
//! on `users_plain` (identical, no mapping), alternated A/B then B/A so drift and
//! noise hit both sides alike. The worker is off (etlify.enabled = off): on two
//! cores a draining worker would steal the writer's core, and this measures the
//! writer path only. The queue is emptied before each run so runs are comparable.

use std::fs;
use std::time::Instant;

use etlify_e2e::fixtures::error_text;

use crate::env::{Bench, MAPPED, PLAIN};
use crate::{interrupt, pgbench, stats};

/// Figures of the mapped table and of the plain one, one per run.
#[derive(Debug, Default, Clone)]
pub struct AB {
    pub mapped: Vec<f64>,
    pub plain: Vec<f64>,
}

impl AB {
    pub fn mapped_median(&self) -> f64 {
        stats::median(&self.mapped)
    }
    pub fn plain_median(&self) -> f64 {
        stats::median(&self.plain)
    }
    fn push(&mut self, table: &str, v: f64) {
        if table == MAPPED {
            self.mapped.push(v)
        } else {
            self.plain.push(v)
        }
    }
}

/// Even rounds run the mapped table first, odd rounds the plain one.
fn order(round: usize) -> [&'static str; 2] {
    if round.is_multiple_of(2) {
        [MAPPED, PLAIN]
    } else {
        [PLAIN, MAPPED]
    }
}

/// Same starting point for every run: empty queue, vacuumed table, fresh checkpoint
/// (so no checkpoint's writes land in the middle of one side only).
fn prepare(b: &mut Bench, table: &str) {
    interrupt::check();
    b.exec("TRUNCATE etlify.queue, etlify.changes");
    b.exec(&format!("VACUUM {table}"));
    b.exec("CHECKPOINT");
}

/// Worker off, the latency phase's extra rows gone, both tables packed alike.
pub fn setup(b: &mut Bench, rows: i64) {
    b.set_worker(false);
    b.exec(&format!("DELETE FROM {MAPPED} WHERE id > {rows}"));
    b.exec("TRUNCATE etlify.queue, etlify.changes");
    b.exec(&format!("VACUUM FULL ANALYZE {MAPPED}, {PLAIN}"));
    let (m, p) = (
        b.count(&format!("SELECT count(*) FROM {MAPPED}")),
        b.count(&format!("SELECT count(*) FROM {PLAIN}")),
    );
    assert_eq!(
        (m, p),
        (rows, rows),
        "both tables should hold the same rows"
    );
}

/// Single-row UPDATE throughput (pgbench, one connection, prepared), TPS per run.
pub fn single(b: &mut Bench, rows: i64, rounds: usize, secs: u32) -> AB {
    let scripts: Vec<(&str, std::path::PathBuf)> = [MAPPED, PLAIN]
        .into_iter()
        .map(|t| {
            let path = b.cluster.dir().join(format!("update-{t}.sql"));
            let script = format!(
                "\\set id random(1, {rows})\nUPDATE {t} SET first_name = md5(random()::text) WHERE id = :id;\n"
            );
            fs::write(&path, script).expect("write pgbench script");
            (t, path)
        })
        .collect();
    let mut ab = AB::default();
    for round in 0..rounds {
        for table in order(round) {
            prepare(b, table);
            let script = &scripts.iter().find(|(t, _)| *t == table).expect("script").1;
            ab.push(table, pgbench::tps(b.cluster.port(), script, secs));
        }
    }
    ab
}

/// A `rows`-row UPDATE in one statement, seconds per run; also the rows the mapped
/// table's trigger enqueued (every row: each one really changed).
pub fn bulk(b: &mut Bench, rounds: usize) -> (AB, i64) {
    let mut ab = AB::default();
    let mut enqueued = 0;
    for round in 0..rounds {
        for table in order(round) {
            prepare(b, table);
            let sql = format!("UPDATE {table} SET first_name = first_name || 'x'");
            let start = Instant::now();
            b.db.execute(&sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
            ab.push(table, start.elapsed().as_secs_f64());
            if table == MAPPED {
                enqueued = b.queued();
            }
        }
    }
    b.exec("TRUNCATE etlify.queue, etlify.changes");
    (ab, enqueued)
}

/// Single-row UPDATEs in a session that has run a bulk UPDATE of each table first,
/// timed one by one (µs), alternating tables. Guards against per-session state a
/// bulk statement leaves behind: an earlier PL/pgSQL trigger kept the plan of its
/// first run, and one made for a bulk statement cost every later single-row
/// statement of that session a JIT compile.
pub fn single_after_bulk(b: &mut Bench, rows: i64, samples: usize) -> AB {
    let mut db = b.cluster.client();
    for table in [MAPPED, PLAIN] {
        prepare(b, table);
    }
    // No TRUNCATE, VACUUM or ANALYZE of etlify's tables from here on: any of them
    // invalidates cached plans and would hide such per-session state.
    for table in [MAPPED, PLAIN] {
        let sql = format!("UPDATE {table} SET first_name = first_name || 'x'");
        db.batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    }
    let stmts: Vec<(&str, postgres::Statement)> = [MAPPED, PLAIN]
        .into_iter()
        .map(|t| {
            let sql = format!("UPDATE {t} SET first_name = md5(random()::text) WHERE id = $1");
            (t, db.prepare(&sql).expect("prepare update"))
        })
        .collect();
    let mut ab = AB::default();
    for k in 0..samples {
        interrupt::check();
        for table in order(k) {
            let stmt = &stmts.iter().find(|(t, _)| *t == table).expect("stmt").1;
            let id = 1 + (k as i64 * 7919) % rows;
            let start = Instant::now();
            db.execute(stmt, &[&id])
                .unwrap_or_else(|e| panic!("update {table}: {}", error_text(&e)));
            ab.push(table, start.elapsed().as_secs_f64() * 1e6);
        }
    }
    ab
}
