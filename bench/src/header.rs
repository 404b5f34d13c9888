//! The header printed above the table: when, on what machine, with which settings.

use crate::env::Bench;
use crate::opts::Opts;

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// `name=value` of each setting, as the server reports it now.
pub fn settings(b: &mut Bench, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n}={}", b.show(n)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub struct Header {
    lines: Vec<(String, String)>,
    /// Filled in once the write-overhead part switched durability on.
    pub durable: String,
}

impl Header {
    pub fn read(b: &mut Bench, opts: &Opts, load_at_start: String) -> Header {
        let version = b.show("server_version");
        let now =
            b.db.query_one("SELECT to_char(now(), 'YYYY-MM-DD HH24:MI:SS TZ')", &[])
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_default();
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let base = settings(
            b,
            &[
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "shared_buffers",
                "etlify.naptime",
                "etlify.claim_size",
            ],
        );
        let mode = match (opts.quick, opts.stats) {
            (false, false) => "full",
            (true, false) => "quick (smoke run: fewer rounds, not for comparison)",
            (false, true) => {
                "full, with pg_stat_statements (slower: compare only with --stats runs)"
            }
            (true, true) => "quick, with pg_stat_statements",
        };
        let lines = vec![
            ("run".into(), format!("{now}, {mode}, rows={}", opts.rows)),
            ("machine".into(), format!("nproc={nproc}, {}, load average at start {load_at_start}", cpu_model())),
            ("postgres".into(), format!("PostgreSQL {version}, e2e harness cluster (etlify preloaded, 127.0.0.1)")),
            ("drain, latency, memory".into(), format!("harness defaults: {base}")),
            ("mock".into(), "etlify-mock without rate limit; HubSpot batch size 100".into()),
            ("A/B rounds".into(), format!(
                "single-row UPDATE {}×{} s durable + {}×{} s not durable (pgbench -c 1 -M prepared), bulk UPDATE {}×, {} single-row UPDATEs after a bulk one, mock ceiling {}×; medians",
                opts.single_rounds, opts.single_secs, opts.nosync_rounds, opts.nosync_secs, opts.bulk_rounds, opts.after_bulk_samples, opts.ceiling_rounds)),
        ];
        Header {
            lines,
            durable: String::new(),
        }
    }

    fn all(&self) -> Vec<(String, String)> {
        let mut v = self.lines.clone();
        v.push((
            "ratio".into(),
            "value / baseline; for UPDATEs the cost ratio: time with the mapping / time without (1.10× = +10%)".into(),
        ));
        v.push((
            "write overhead".into(),
            format!(
                "{}; worker disabled (etlify.enabled = off) so only the writer path is measured, queue emptied before each run",
                self.durable
            ),
        ));
        v
    }

    pub fn text(&self) -> String {
        self.all()
            .iter()
            .map(|(k, v)| format!("{k:<24} {v}\n"))
            .collect()
    }

    pub fn markdown(&self) -> String {
        self.all()
            .iter()
            .map(|(k, v)| format!("- **{k}**: {v}\n"))
            .collect()
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` now, from date(1) (the parts without a server at hand).
fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// The header of the under-fire and soak parts: when, on what, then `extra`.
pub fn part(
    opts: &Opts,
    load_at_start: &str,
    extra: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mode = if opts.quick {
        "quick (smoke run: shorter, not for comparison)"
    } else {
        "full"
    };
    let mut v = vec![
        ("run".to_string(), format!("{}, {mode}", now_utc())),
        (
            "machine".to_string(),
            format!(
                "nproc={nproc}, {}, load average at start {load_at_start}",
                cpu_model()
            ),
        ),
        (
            "postgres".to_string(),
            "e2e harness clusters (etlify preloaded, 127.0.0.1; fsync=off, shared_buffers=32MB, etlify.naptime=200ms, etlify.retry_backoff=200ms), a fresh one per measurement".to_string(),
        ),
    ];
    v.extend(extra);
    v
}

pub fn lines_text(lines: &[(String, String)]) -> String {
    lines
        .iter()
        .map(|(k, v)| format!("{k:<24} {v}\n"))
        .collect()
}

pub fn lines_markdown(lines: &[(String, String)]) -> String {
    lines
        .iter()
        .map(|(k, v)| format!("- **{k}**: {v}\n"))
        .collect()
}
