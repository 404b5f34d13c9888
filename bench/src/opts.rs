//! Command-line options. Hand-parsed: five flags do not justify a parser crate.

pub const USAGE: &str = "usage: etlify-bench [--rows N] [--quick] [--stats]
  --rows N   rows drained and updated in bulk (default 100000; 10000 with --quick);
             sync_stale re-checks 1,000,000 unchanged rows (100,000 with --quick)
  --quick    smoke run: 10k rows, fewer and shorter A/B rounds, fewer latency samples
  --stats    also preload pg_stat_statements and print the drain's top statements
             (adds overhead: compare figures only between runs with the same flags)";

#[derive(Debug, Clone)]
pub struct Opts {
    pub rows: i64,
    pub quick: bool,
    pub stats: bool,
    /// A/B rounds of the single-row UPDATE test (pgbench), and seconds per run.
    pub single_rounds: usize,
    pub single_secs: u32,
    /// The same without durability: a smaller, informative run.
    pub nosync_rounds: usize,
    pub nosync_secs: u32,
    /// A/B rounds of the bulk UPDATE.
    pub bulk_rounds: usize,
    /// Runs of the mock-ceiling loop (each on a fresh mock).
    pub ceiling_rounds: usize,
    /// Single-row INSERTs timed from commit to the CRM.
    pub latency_samples: usize,
    /// Single-row UPDATEs per table in a session that ran a bulk UPDATE before.
    pub after_bulk_samples: usize,
    /// Unchanged rows sync_stale re-checks.
    pub stale_rows: i64,
}

impl Opts {
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Opts, String> {
        let mut rows = None;
        let mut quick = false;
        let mut stats = false;
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            match flag.as_str() {
                "--rows" => {
                    let v = inline
                        .or_else(|| args.next())
                        .ok_or("--rows needs a value")?;
                    let n: i64 = v.parse().map_err(|_| format!("bad --rows: {v}"))?;
                    if n < 100 {
                        return Err(format!("--rows must be at least 100, got {n}"));
                    }
                    rows = Some(n);
                }
                "--quick" => quick = true,
                "--stats" => stats = true,
                "--help" | "-h" => return Err(String::new()),
                other => return Err(format!("unknown argument: {other}")),
            }
        }
        Ok(if quick {
            Opts {
                rows: rows.unwrap_or(10_000),
                quick,
                stats,
                single_rounds: 2,
                single_secs: 3,
                nosync_rounds: 1,
                nosync_secs: 3,
                bulk_rounds: 2,
                ceiling_rounds: 1,
                latency_samples: 50,
                after_bulk_samples: 20,
                stale_rows: 100_000,
            }
        } else {
            Opts {
                rows: rows.unwrap_or(100_000),
                quick,
                stats,
                single_rounds: 5,
                single_secs: 10,
                nosync_rounds: 3,
                nosync_secs: 5,
                bulk_rounds: 3,
                ceiling_rounds: 3,
                latency_samples: 200,
                after_bulk_samples: 50,
                stale_rows: 1_000_000,
            }
        })
    }
}
