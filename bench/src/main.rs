//! etlify benchmark: drain throughput, trigger write overhead, commit-to-CRM latency
//! and the worker's memory, each printed next to a baseline measured in the same run
//! (the machine is two shared cores: medians and ratios, never single timings); then
//! "under fire" (rate-limit use, 1 vs 2 workers, latency beside a hung CRM) and, when
//! asked, a soak. Run it with `scripts/bench.sh [--rows N] [--quick] [--stats]
//! [--soak] [--only main|fire|soak]`.

mod ceiling;
mod drain;
mod env;
mod fire;
mod groups;
mod header;
mod interrupt;
mod latency;
mod opts;
mod overhead;
mod pgbench;
mod profile;
mod report;
mod rss;
mod soak;
mod stats;
mod table;

use std::process::ExitCode;

use env::Bench;
use opts::{Opts, USAGE};

/// Durability of the write-overhead part: what a production server runs with.
const DURABLE: [(&str, &str); 3] = [
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
];
/// No durability at all, for the informative round that shows the triggers' CPU
/// cost alone (with fsync on, waiting for the disk hides part of it).
const NOT_DURABLE: [(&str, &str); 3] = [
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
];

fn main() -> ExitCode {
    let opts = match Opts::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("etlify-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    interrupt::install();
    if run(&opts) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub fn phase(name: &str) {
    eprintln!("==> {name}");
}

const RESULTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results.md");
const TITLE: &str = "# etlify benchmark results\n\n";
/// The parts of bench/results.md, in order; a run rewrites only the parts it ran.
const PARTS: [&str; 3] = ["main", "fire", "soak"];

fn marker(part: &str) -> String {
    format!("<!-- bench:{part} -->\n")
}

/// Runs the parts asked for; false when the soak did not end exact.
fn run(opts: &Opts) -> bool {
    let load_at_start = header::loadavg();
    let mut sections = Vec::new();
    let mut ok = true;
    if opts.parts.main {
        sections.push(("main", run_main(opts, load_at_start.clone())));
    }
    if opts.parts.fire {
        let f = fire::measure(opts);
        let lines = header::part(
            opts,
            &load_at_start,
            vec![
                ("rate-limit use".into(), format!(
                    "mock --rate-limit {} --rate-interval-ms {} (a rolling window; HubSpot's real one is 10 s, 2 s gives several windows per run), \
                     etlify.workers = 2, batch_size {}, a backlog that outlasts the run, and a backend calling etlify.drain(max_records => {}) every {} ms; \
                     {} s per variant; use = requests the mock accepted per fixed {} s window counted from the first request (the first window and the last partial one left out) ÷ {}",
                    fire::RATE_MAX, fire::RATE_MS, fire::UTIL_BATCH, fire::DRAIN_MAX, fire::DRAIN_PAUSE_MS,
                    opts.fire_secs, fire::RATE_MS / 1000, fire::RATE_MAX)),
                ("1 vs 2 workers".into(), format!(
                    "mock --rate-limit 1000000 --rate-interval-ms 1000 (never reached; without it the mock's headers say 190 per 10 s and etlify learns and keeps that limit), no rate_limit registered, batch size 100; {} records updated then drained (etlify.enabled off → on) {} times with each etlify.workers value, a restart between, order 1,2 2,1 …; ratio = median(2) ÷ median(1), range over adjacent pairs",
                    opts.fire_rows, opts.fire_rounds)),
                ("hung CRM".into(), format!(
                    "two mocks, etlify.workers = 2: users → hubspot (healthy), leads → hung (mock hang_ms {}, registration timeout_ms {}, {} leads pending), both mocks with --rate-limit 1000000 --rate-interval-ms 1000 (else the 190/10 s their headers say would bind), no rate_limit registered; {} paced single-row INSERTs into users timed commit → mock, first with the second CRM healthy (its backlog drained), then hung",
                    fire::HANG_MS, fire::TIMEOUT_MS, fire::LEADS, opts.latency_samples)),
            ],
        );
        sections.push((
            "fire",
            print_part(
                "Under fire",
                &lines,
                &report::fire_rows(&f),
                &report::fire_details(&f),
            ),
        ));
    }
    if opts.parts.soak {
        let s = soak::run(opts);
        let lines = header::part(
            opts,
            &load_at_start,
            vec![(
                "soak".into(),
                format!(
                    "etlify.workers = 2, batch_size {}, 300 users then the crash test's writer (tests/src/soak.rs) for {} s; mock: error_rate {} (status {}), delay_ms {}, rolling limit {} per {} ms; a worker SIGKILLed every {}–{} s; then faults cleared (the rate limit stays) and the CRM checked against the rows until exact (at most {} s)",
                    soak::BATCH, opts.soak_secs, soak::ERROR_RATE, soak::ERROR_STATUS, soak::DELAY_MS,
                    soak::RATE_MAX, soak::RATE_MS, soak::KILL_MIN_MS / 1000,
                    (soak::KILL_MIN_MS + soak::KILL_JITTER_MS) / 1000, soak::CONVERGE_LIMIT.as_secs()
                ),
            )],
        );
        sections.push((
            "soak",
            print_part(
                "Soak",
                &lines,
                &report::soak_rows(&s),
                &report::soak_details(&s),
            ),
        ));
        if !s.exact() {
            ok = false;
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SOAK FAILED: the CRM does not hold exactly the rows ({} differences, seed {})\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
                s.diffs.len(),
                s.seed
            );
        }
    }
    write_results(&sections);
    ok
}

/// Prints a part's header, table and details; returns them as markdown.
fn print_part(
    title: &str,
    lines: &[(String, String)],
    rows: &[table::Row],
    details: &str,
) -> String {
    println!(
        "\n== {title} ==\n{}\n{}\n{details}",
        header::lines_text(lines),
        table::text(rows)
    );
    format!(
        "## {title}\n\n{}\n{}\n{}",
        header::lines_markdown(lines),
        table::markdown(rows),
        md_lines(details)
    )
}

fn md_lines(text: &str) -> String {
    text.lines().map(|l| format!("{l}  \n")).collect()
}

/// The sections of bench/results.md as it is (a file without markers is all `main`).
fn read_sections() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(RESULTS).unwrap_or_default();
    let body = text.strip_prefix(TITLE).unwrap_or(&text);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut current = "main".to_string();
    let mut buf = String::new();
    for line in body.split_inclusive('\n') {
        if let Some(part) = line
            .trim()
            .strip_prefix("<!-- bench:")
            .and_then(|l| l.strip_suffix(" -->"))
        {
            if !buf.trim().is_empty() {
                out.push((current.clone(), std::mem::take(&mut buf)));
            }
            buf.clear();
            current = part.to_string();
        } else {
            buf.push_str(line);
        }
    }
    if !buf.trim().is_empty() {
        out.push((current, buf));
    }
    out
}

/// Rewrites the sections this run produced, keeps the others.
fn write_results(new: &[(&str, String)]) {
    let old = read_sections();
    let mut md = String::from(TITLE);
    for part in PARTS {
        let text = new
            .iter()
            .find(|(p, _)| *p == part)
            .map(|(_, t)| t.clone())
            .or_else(|| old.iter().find(|(p, _)| p == part).map(|(_, t)| t.clone()));
        if let Some(t) = text {
            md += &marker(part);
            md += t.trim_end();
            md += "\n\n";
        }
    }
    match std::fs::write(RESULTS, md.trim_end().to_string() + "\n") {
        Ok(()) => println!("written to {RESULTS}"),
        Err(e) => eprintln!("etlify-bench: cannot write {RESULTS}: {e}"),
    }
}

/// The drain, overhead, latency, memory and sync-group parts; prints them and
/// returns them as markdown.
fn run_main(opts: &Opts, load_at_start: String) -> String {
    let rows = opts.rows;

    phase("mock ceiling (plain HTTP loop, fresh mocks)");
    let ceiling = ceiling::measure(rows, opts.ceiling_rounds, opts.latency_samples);

    phase("cluster and schema");
    let extra = if opts.stats { profile::CONF } else { "" };
    let mut b = Bench::start(extra);
    if opts.stats {
        profile::setup(&mut b);
    }
    let mut header = header::Header::read(&mut b, opts, load_at_start);

    phase(&format!("drain of {rows} records (worker memory sampled)"));
    let drain = drain::first(&mut b, rows, opts.stats);
    let top = opts.stats.then(|| profile::top(&mut b));

    phase("unchanged UPDATE, then the same rows drained again (digest skip)");
    let redrain = drain::unchanged(&mut b, rows);

    phase(&format!(
        "commit-to-CRM latency, {} paced INSERTs",
        opts.latency_samples
    ));
    if opts.stats {
        b.exec("SELECT pg_stat_statements_reset()");
    }
    let latency = latency::measure(&mut b, rows + 1_000_000, opts.latency_samples);
    let top_latency = opts.stats.then(|| profile::top(&mut b));

    phase("trigger write overhead: durable settings, worker off");
    overhead::setup(&mut b, rows);
    b.set_system(&DURABLE);
    header.durable = header::settings(&mut b, &["fsync", "synchronous_commit", "full_page_writes"]);
    let single = overhead::single(&mut b, rows, opts.single_rounds, opts.single_secs);
    let (bulk, bulk_enqueued) = overhead::bulk(&mut b, opts.bulk_rounds);
    let after_bulk = overhead::single_after_bulk(&mut b, rows, opts.after_bulk_samples);

    phase("trigger write overhead without durability (CPU cost only)");
    b.set_system(&NOT_DURABLE);
    let nosync = overhead::single(&mut b, rows, opts.nosync_rounds, opts.nosync_secs);

    phase("sync groups: sync_stale over unchanged rows, a member's bulk UPDATE, a fan-out");
    b.set_system(&DURABLE);
    b.set_worker(true);
    let groups = groups::measure(&mut b, opts.stale_rows, rows, rows, opts.bulk_rounds);

    let figures = report::Figures {
        opts,
        ceiling: &ceiling,
        drain: &drain,
        redrain: &redrain,
        latency: &latency,
        single: &single,
        bulk: &bulk,
        bulk_enqueued,
        after_bulk: &after_bulk,
        nosync: &nosync,
        groups: &groups,
    };
    let rows_out = figures.rows();
    let header_text = header.text();
    let details = figures.details();
    println!("\n{header_text}\n{}\n{details}", table::text(&rows_out));
    if let (Some(drain), Some(latency)) = (top, top_latency) {
        println!("pg_stat_statements during the drain (track = all):\n{drain}");
        println!("pg_stat_statements during the latency phase (track = all):\n{latency}");
    }
    let md = format!(
        "{}\n{}\n{}",
        header.markdown(),
        table::markdown(&rows_out),
        md_lines(&details)
    );
    drop(b);
    md
}
