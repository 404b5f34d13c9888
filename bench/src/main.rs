//! etlify benchmark: drain throughput, trigger write overhead, commit-to-CRM latency
//! and the worker's memory, each printed next to a baseline measured in the same run
//! (the machine is two shared cores: medians and ratios, never single timings).
//! Run it with `scripts/bench.sh [--rows N] [--quick] [--stats]`.

mod ceiling;
mod drain;
mod env;
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
    run(&opts);
    ExitCode::SUCCESS
}

fn phase(name: &str) {
    eprintln!("==> {name}");
}

fn run(opts: &Opts) {
    let rows = opts.rows;
    let load_at_start = header::loadavg();

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
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/results.md");
    let md = format!(
        "# etlify benchmark results\n\n{}\n{}\n{}",
        header.markdown(),
        table::markdown(&rows_out),
        details
            .lines()
            .map(|l| format!("{l}  \n"))
            .collect::<String>()
    );
    match std::fs::write(path, md) {
        Ok(()) => println!("written to {path}"),
        Err(e) => eprintln!("etlify-bench: cannot write {path}: {e}"),
    }
    drop(b);
}
