//! Command-line options. Hand-parsed: a handful of flags do not justify a parser crate.

pub const USAGE: &str =
    "usage: etlify-bench [--rows N] [--quick] [--stats] [--soak] [--soak-secs N]
                    [--only main|fire|soak[,...]]
  --rows N        rows drained and updated in bulk (default 100000; 10000 with --quick);
                  sync_stale re-checks 1,000,000 unchanged rows (100,000 with --quick);
                  also the backlog of the 1-vs-2-workers drains (20000 with --quick)
  --quick         smoke run: 10k rows, fewer and shorter A/B rounds, fewer latency samples,
                  shorter under-fire windows, a 45 s soak
  --stats         also preload pg_stat_statements and print the drain's top statements
                  (adds overhead: compare figures only between runs with the same flags)
  --soak          also run the soak (writes, faults, a rate limit and SIGKILLs, then an
                  exactness check) after the other parts: 180 s by default
  --soak-secs N   the soak's writing time in seconds (implies --soak unless --only says)
  --only PARTS    run only these parts: main (drain, overhead, latency, memory, groups),
                  fire (rate-limit use, 1 vs 2 workers, latency beside a hung CRM), soak.
                  Without it: main and fire (and soak with --soak).
                  bench/results.md keeps one section per part: a run rewrites only its own";

/// Which parts of the benchmark run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parts {
    pub main: bool,
    pub fire: bool,
    pub soak: bool,
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub parts: Parts,
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
    /// Under fire: seconds each rate-limit variant is measured for.
    pub fire_secs: u64,
    /// Under fire: drains per worker count (1 and 2 workers).
    pub fire_rounds: usize,
    /// Under fire: the backlog drained with 1 and with 2 workers.
    pub fire_rows: i64,
    /// Soak: seconds of writing under faults and kills.
    pub soak_secs: u64,
}

fn parse_parts(v: &str) -> Result<Parts, String> {
    let mut p = Parts {
        main: false,
        fire: false,
        soak: false,
    };
    for part in v.split(',').map(str::trim) {
        match part {
            "main" => p.main = true,
            "fire" => p.fire = true,
            "soak" => p.soak = true,
            other => return Err(format!("--only: unknown part {other:?} (main, fire, soak)")),
        }
    }
    Ok(p)
}

/// The value of `flag`: written `--flag=value`, or the next argument.
fn value(
    flag: &str,
    inline: Option<String>,
    args: &mut impl Iterator<Item = String>,
) -> Result<String, String> {
    inline
        .or_else(|| args.next())
        .ok_or_else(|| format!("{flag} needs a value"))
}

/// `v` read as a number no smaller than `min`.
fn at_least<T>(flag: &str, v: String, min: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let n: T = v.parse().map_err(|_| format!("bad {flag}: {v}"))?;
    if n < min {
        return Err(format!("{flag} must be at least {min}, got {n}"));
    }
    Ok(n)
}

impl Opts {
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Opts, String> {
        let mut rows = None;
        let mut quick = false;
        let mut stats = false;
        let mut only = None;
        let mut soak = false;
        let mut soak_secs = None;
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            match flag.as_str() {
                "--rows" => rows = Some(at_least(&flag, value(&flag, inline, &mut args)?, 100)?),
                "--only" => only = Some(parse_parts(&value(&flag, inline, &mut args)?)?),
                "--soak" => soak = true,
                "--soak-secs" => {
                    soak_secs = Some(at_least(&flag, value(&flag, inline, &mut args)?, 10)?);
                    soak = true;
                }
                "--quick" => quick = true,
                "--stats" => stats = true,
                "--help" | "-h" => return Err(String::new()),
                other => return Err(format!("unknown argument: {other}")),
            }
        }
        let parts = only.unwrap_or(Parts {
            main: true,
            fire: true,
            soak,
        });
        Ok(if quick {
            Opts {
                parts,
                fire_secs: 12,
                fire_rounds: 2,
                fire_rows: rows.unwrap_or(20_000),
                soak_secs: soak_secs.unwrap_or(45),
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
                parts,
                fire_secs: 30,
                fire_rounds: 3,
                fire_rows: rows.unwrap_or(100_000),
                soak_secs: soak_secs.unwrap_or(180),
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
