//! The result rows, from the figures each part measured, and the raw figures
//! behind their medians.

use crate::ceiling::Ceiling;
use crate::drain::{Drain, Redrain};
use crate::fire::{Fire, RATE_MAX, RATE_MS};
use crate::groups::Groups;
use crate::latency::Latency;
use crate::opts::Opts;
use crate::overhead::AB;
use crate::rss::mb;
use crate::soak::{self, Soak, CONVERGE_LIMIT, ERROR_RATE};
use crate::stats::{max, median, percentile};
use crate::table::{cost_ratio, thousands, Row, Target};

pub struct Figures<'a> {
    pub opts: &'a Opts,
    pub ceiling: &'a Ceiling,
    pub drain: &'a Drain,
    pub redrain: &'a Redrain,
    pub latency: &'a Latency,
    pub single: &'a AB,
    pub bulk: &'a AB,
    pub bulk_enqueued: i64,
    pub after_bulk: &'a AB,
    pub nosync: &'a AB,
    pub groups: &'a Groups,
}

fn per_s(x: f64) -> String {
    format!("{} rec/s", thousands(x))
}

fn ms(x: f64) -> String {
    format!("{x:.1} ms")
}

fn list(v: &[f64], unit: &str, digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
        + unit
}

impl Figures<'_> {
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = self.drain_rows();
        rows.extend(self.overhead_rows());
        rows.extend(self.latency_rows());
        rows.extend(self.memory_rows());
        rows.extend(self.group_rows());
        rows
    }

    fn group_rows(&self) -> Vec<Row> {
        let g = self.groups;
        let stale = g.stale_median();
        let serializer = median(&g.serializer_rates);
        let member = median(&g.member_mapped) / median(&g.member_plain);
        vec![
            Row::new(
                format!(
                    "sync_stale over {} unchanged rows",
                    thousands(g.stale_rows as f64)
                ),
                format!("{} rows/s", thousands(stale)),
                format!("{} rows/s (the serializer alone)", thousands(serializer)),
                format!("{:.2}×", stale / serializer),
                (Target::AtLeast(200_000.0), "≥ 200,000 rows/s"),
                stale,
            ),
            Row::new(
                "↳ requests and queue rows it caused",
                format!("{} + {}", g.stale_requests, g.stale_enqueued),
                "—",
                "—",
                (Target::AtMost(0.0), "0"),
                (g.stale_requests + g.stale_enqueued) as f64,
            ),
            Row::new(
                "↳ peak backend VmRSS during sync_stale",
                mb(g.stale_peak.vm_rss_kb),
                format!("{} (idle backend)", mb(g.idle_backend.vm_rss_kb)),
                format!(
                    "{:.1}×",
                    g.stale_peak.vm_rss_kb as f64 / g.idle_backend.vm_rss_kb.max(1) as f64
                ),
                (Target::Info, "—"),
                0.0,
            ),
            // its own memory: VmRSS also counts the shared buffers the scan touched
            Row::new(
                "↳ peak backend RssAnon during sync_stale",
                mb(g.stale_peak.rss_anon_kb),
                format!("{} (idle backend)", mb(g.idle_backend.rss_anon_kb)),
                format!(
                    "{:.1}×",
                    g.stale_peak.rss_anon_kb as f64 / g.idle_backend.rss_anon_kb.max(1) as f64
                ),
                (Target::AtMost(100.0 * 1024.0), "≤ 100 MB (bounded)"),
                g.stale_peak.rss_anon_kb as f64,
            ),
            Row::new(
                format!(
                    "{}-row UPDATE of a has_many member (s, mapped)",
                    thousands(g.member_rows as f64)
                ),
                format!("{:.3} s", median(&g.member_mapped)),
                format!("{:.3} s (no dependency)", median(&g.member_plain)),
                cost_ratio(member),
                (Target::AtMost(1.5), "≤ 1.5×"),
                member,
            ),
            Row::new(
                format!(
                    "company rename under {} people, commit to all delivered",
                    thousands(g.fanout as f64)
                ),
                format!("{:.2} s", g.fanout_secs),
                format!("{:.2} s (as many people changed directly)", g.plain_secs),
                format!("{:.2}×", g.fanout_secs / g.plain_secs),
                (Target::Info, "—"),
                0.0,
            ),
        ]
    }

    fn drain_rows(&self) -> Vec<Row> {
        let (d, r, c) = (self.drain, self.redrain, self.ceiling);
        let n = d.rows;
        let min_requests = (n + 99) / 100;
        vec![
            Row::new(
                format!("drain throughput ({} records)", thousands(n as f64)),
                per_s(d.records_per_s),
                format!("{} (mock ceiling)", per_s(c.records_per_s)),
                format!("{:.2}×", d.records_per_s / c.records_per_s),
                (Target::AtLeast(10_000.0), "≥ 10,000 rec/s"),
                d.records_per_s,
            ),
            Row::new(
                "↳ CRM requests of the drain",
                d.requests.to_string(),
                format!("{min_requests} (batches of 100)"),
                format!("{:.2}×", d.requests as f64 / min_requests as f64),
                (Target::Info, "—"),
                0.0,
            ),
            Row::new(
                format!(
                    "↳ rows enqueued by an unchanged UPDATE of {}",
                    thousands(n as f64)
                ),
                r.enqueued_by_unchanged_update.to_string(),
                "—",
                "—",
                (Target::AtMost(0.0), "0"),
                r.enqueued_by_unchanged_update as f64,
            ),
            Row::new(
                "re-drain of unchanged records (digest skip)",
                per_s(r.records_per_s),
                format!("{} (first drain)", per_s(d.records_per_s)),
                format!("{:.2}×", r.records_per_s / d.records_per_s),
                (Target::Info, "—"),
                0.0,
            ),
            Row::new(
                "↳ CRM requests of the re-drain",
                r.requests.to_string(),
                "—",
                "—",
                (Target::AtMost(0.0), "0"),
                r.requests as f64,
            ),
        ]
    }

    fn overhead_rows(&self) -> Vec<Row> {
        let (s, bk, ns, ab) = (self.single, self.bulk, self.nosync, self.after_bulk);
        // cost ratios: how much longer an UPDATE takes with the mapping (≥ 1: slower)
        let single = s.plain_median() / s.mapped_median();
        let bulk = bk.mapped_median() / bk.plain_median();
        let nosync = ns.plain_median() / ns.mapped_median();
        let after_bulk = ab.mapped_median() / ab.plain_median();
        vec![
            Row::new(
                "single-row UPDATE, durable (tps, mapped)",
                format!("{} tps", thousands(s.mapped_median())),
                format!("{} tps (no mapping)", thousands(s.plain_median())),
                cost_ratio(single),
                (Target::AtMost(1.15), "≤ +15%"),
                single,
            ),
            Row::new(
                format!(
                    "{}-row UPDATE, durable (s, mapped)",
                    thousands(self.opts.rows as f64)
                ),
                format!("{:.3} s", bk.mapped_median()),
                format!("{:.3} s (no mapping)", bk.plain_median()),
                cost_ratio(bulk),
                (Target::AtMost(1.5), "≤ 1.5×"),
                bulk,
            ),
            Row::new(
                "single-row UPDATE after a bulk one, same session (µs)",
                format!("{:.0} µs", ab.mapped_median()),
                format!("{:.0} µs (no mapping)", ab.plain_median()),
                cost_ratio(after_bulk),
                (Target::AtMost(1.15), "≤ +15%"),
                after_bulk,
            ),
            Row::new(
                "single-row UPDATE, not durable (tps, mapped)",
                format!("{} tps", thousands(ns.mapped_median())),
                format!("{} tps (no mapping)", thousands(ns.plain_median())),
                cost_ratio(nosync),
                (Target::Info, "— (CPU cost only)"),
                0.0,
            ),
        ]
    }

    fn latency_rows(&self) -> Vec<Row> {
        let (l, rtt) = (&self.latency.ms, &self.ceiling.single_rtt_ms);
        let row = |name: &str, v: f64, base: f64, target: (Target, &str)| {
            Row::new(
                name,
                ms(v),
                format!("{} (1-record request)", ms(base)),
                format!("{:.1}×", v / base),
                target,
                v,
            )
        };
        vec![
            row(
                "commit-to-CRM latency p50",
                percentile(l, 50.0),
                percentile(rtt, 50.0),
                (Target::AtMost(50.0), "≤ 50 ms"),
            ),
            row(
                "commit-to-CRM latency p99",
                percentile(l, 99.0),
                percentile(rtt, 99.0),
                (Target::AtMost(250.0), "≤ 250 ms"),
            ),
            row(
                "commit-to-CRM latency max",
                max(l),
                max(rtt),
                (Target::Info, "—"),
            ),
        ]
    }

    fn memory_rows(&self) -> Vec<Row> {
        let d = self.drain;
        let (peak, idle) = (d.peak, d.idle_backend);
        vec![
            Row::new(
                "peak worker VmRSS while draining",
                mb(peak.vm_rss_kb),
                format!("{} (idle backend)", mb(idle.vm_rss_kb)),
                format!(
                    "{:.1}×",
                    peak.vm_rss_kb as f64 / idle.vm_rss_kb.max(1) as f64
                ),
                (Target::AtMost(100.0 * 1024.0), "≤ 100 MB"),
                peak.vm_rss_kb as f64,
            ),
            Row::new(
                "peak worker RssAnon while draining",
                mb(peak.rss_anon_kb),
                format!("{} (idle backend)", mb(idle.rss_anon_kb)),
                format!(
                    "{:.1}×",
                    peak.rss_anon_kb as f64 / idle.rss_anon_kb.max(1) as f64
                ),
                (Target::Info, "—"),
                0.0,
            ),
        ]
    }

    /// The raw figures behind the medians, and anything odd seen on the way.
    pub fn details(&self) -> String {
        let (d, r, c, l) = (self.drain, self.redrain, self.ceiling, self.latency);
        let mut out = String::from("details:\n");
        out += &format!("  mock ceiling runs: {}\n", list(&c.runs, " rec/s", 0));
        out += &format!(
            "  drain: {:.2} s for {} records; re-drain: {:.2} s\n",
            d.secs, d.rows, r.secs
        );
        out += &format!(
            "  single-row UPDATE durable, tps per run: mapped {}; plain {}\n",
            list(&self.single.mapped, "", 0),
            list(&self.single.plain, "", 0)
        );
        out += &format!(
            "  bulk UPDATE, s per run: mapped {}; plain {}; rows enqueued by the mapped one: {}\n",
            list(&self.bulk.mapped, "", 3),
            list(&self.bulk.plain, "", 3),
            self.bulk_enqueued
        );
        out += &format!(
            "  single-row UPDATE after a bulk one in the same session: {} each, µs at p90: mapped {:.0}, plain {:.0}\n",
            self.after_bulk.mapped.len(),
            percentile(&self.after_bulk.mapped, 90.0),
            percentile(&self.after_bulk.plain, 90.0)
        );
        let g = self.groups;
        out += &format!(
            "  sync_stale, rows/s per run: {}; the serializer alone: {}\n",
            list(&g.stale_rates, "", 0),
            list(&g.serializer_rates, "", 0)
        );
        out += &format!("  fan-out: {}\n", g.fanout_log);
        out += &format!(
            "  has_many member UPDATE, s per run: mapped {}; plain {}\n",
            list(&g.member_mapped, "", 3),
            list(&g.member_plain, "", 3)
        );
        out += &format!(
            "  single-row UPDATE not durable (fsync, synchronous_commit, full_page_writes off), tps per run: mapped {}; plain {}\n",
            list(&self.nosync.mapped, "", 0),
            list(&self.nosync.plain, "", 0)
        );
        out += &format!(
            "  latency: {} samples, median {:.1} ms, min {:.1} ms; {} requests carried more than one record\n",
            l.ms.len(),
            median(&l.ms),
            l.ms.iter().copied().fold(f64::INFINITY, f64::min),
            l.shared_requests
        );
        out += &format!(
            "  worker memory: idle before the drain VmRSS {} / RssAnon {}; {} samples every 50 ms while draining\n",
            mb(d.worker_idle.vm_rss_kb),
            mb(d.worker_idle.rss_anon_kb),
            d.samples
        );
        if d.worker_restarted {
            out += "  WARNING: the worker's PID changed during the drain (crash and restart?): see the server log\n";
        }
        out
    }
}

/// Rows of the under-fire part.
pub fn fire_rows(f: &Fire) -> Vec<Row> {
    let mut rows = Vec::new();
    for u in &f.util {
        let r = u.ratios();
        let (med, min) = if r.is_empty() {
            (0.0, 0.0)
        } else {
            (median(&r), r.iter().copied().fold(f64::INFINITY, f64::min))
        };
        rows.push(Row::new(
            format!("rate-limit use, {} (accepted / window)", u.variant),
            format!(
                "median {:.1}%, min {:.1}% ({} windows)",
                med * 100.0,
                min * 100.0,
                r.len()
            ),
            format!(
                "{RATE_MAX} per {:.0} s (the mock's limit)",
                RATE_MS as f64 / 1000.0
            ),
            format!("{med:.2}× (min {min:.2}×)"),
            (Target::AtLeast(0.95), "median ≥ 95%"),
            med,
        ));
        rows.push(Row::new(
            "↳ 429 answers",
            u.n429.to_string(),
            format!("{} requests", u.requests),
            "—",
            (Target::AtMost(0.0), "0"),
            u.n429 as f64,
        ));
    }
    let s = &f.speedup;
    let (one, two) = (s.with(1), s.with(2));
    let pairs = s.pair_ratios();
    let ratio = median(&two) / median(&one);
    rows.push(Row::new(
        format!(
            "drain, {} records, etlify.workers = 2",
            thousands(s.rows as f64)
        ),
        per_s(median(&two)),
        format!("{} (etlify.workers = 1)", per_s(median(&one))),
        format!(
            "{ratio:.2}× (pairs {:.2}–{:.2}×)",
            pairs.iter().copied().fold(f64::INFINITY, f64::min),
            max(&pairs)
        ),
        (Target::Info, "—"),
        ratio,
    ));
    let (b, h) = (&f.hung.baseline.ms, &f.hung.hung.ms);
    let (b50, h50, b99, h99) = (
        percentile(b, 50.0),
        percentile(h, 50.0),
        percentile(b, 99.0),
        percentile(h, 99.0),
    );
    rows.push(Row::new(
        "commit-to-CRM p50, another CRM hung",
        ms(h50),
        format!("{} (other CRM healthy)", ms(b50)),
        format!("{:.2}×", h50 / b50),
        (Target::AtMost(50.0), "≤ 50 ms"),
        h50,
    ));
    rows.push(Row::new(
        "commit-to-CRM p99, another CRM hung",
        ms(h99),
        format!("{} (other CRM healthy)", ms(b99)),
        format!("{:.2}×", h99 / b99),
        (Target::AtMost(250.0), "≤ 250 ms"),
        h99,
    ));
    rows
}

pub fn fire_details(f: &Fire) -> String {
    let mut out = String::from("details:\n");
    for u in &f.util {
        out += &format!(
            "  {}: {:.1} s, backlog {} records ({} left at the end), accepted per window: {}; densest sliding {} ms window: {} accepted; {} requests, {} 429s; the backend's drain(): {} calls, {} records, {} errors\n",
            u.variant,
            u.secs,
            u.backlog,
            u.left,
            u.windows.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
            RATE_MS,
            u.densest,
            u.requests,
            u.n429,
            u.drain_calls,
            u.drain_records,
            u.drain_errors
        );
        out += &format!("    crm_status at the end: {}\n", u.status);
        if u.left == 0 {
            out += "    WARNING: the backlog ran out before the end: utilisation is understated\n";
        }
        for e in &u.excerpt {
            out += &format!("    {e}\n");
        }
    }
    let s = &f.speedup;
    out += &format!(
        "  1 vs 2 workers, rec/s in run order: {}; CRM requests per drain: {}; the first drain (creates, 1 worker, not counted): {:.0} rec/s; 2÷1 per pair: {}\n",
        s.order
            .iter()
            .zip(&s.rates)
            .map(|(w, r)| format!("{w}w {r:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        s.requests.iter().map(i64::to_string).collect::<Vec<_>>().join(", "),
        s.warmup,
        list(&s.pair_ratios(), "", 2)
    );
    let hg = &f.hung;
    for (name, l) in [
        ("other CRM healthy", &hg.baseline),
        ("other CRM hung", &hg.hung),
    ] {
        out += &format!(
            "  latency, {name}: {} samples, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} requests carried more than one record\n",
            l.ms.len(),
            percentile(&l.ms, 50.0),
            percentile(&l.ms, 99.0),
            max(&l.ms),
            l.shared_requests
        );
    }
    out += &format!(
        "  hung CRM: requests hanging at its mock {} before and {} after the measurement; crm_status: {}\n",
        hg.inflight_before, hg.inflight_after, hg.status
    );
    out
}

pub fn soak_rows(s: &Soak) -> Vec<Row> {
    vec![
        Row::new(
            format!(
                "soak, {:.0} s, {} SIGKILLs: the CRM holds exactly the rows",
                s.secs,
                s.kills.len()
            ),
            if s.exact() {
                "exact".to_string()
            } else {
                format!("NOT EXACT: {} differences", s.diffs.len())
            },
            format!("{} rows, {} contacts", s.rows, s.contacts),
            "—",
            (Target::AtMost(0.0), "exact"),
            s.diffs.len() as f64,
        ),
        Row::new(
            "↳ time to converge after the writes stopped",
            match s.converge_secs {
                Some(t) => format!("{t:.1} s"),
                None => format!("> {} s", CONVERGE_LIMIT.as_secs()),
            },
            "—",
            "—",
            (Target::Info, "—"),
            0.0,
        ),
        Row::new(
            "↳ writes, CRM requests",
            format!(
                "{} writes, {} requests",
                thousands(s.writes as f64),
                thousands(s.requests as f64)
            ),
            "—",
            "—",
            (Target::Info, "—"),
            0.0,
        ),
        Row::new(
            "↳ 5xx injected",
            s.n5xx.to_string(),
            format!("{:.0}% of requests asked", ERROR_RATE * 100.0),
            format!("{:.1}%", 100.0 * s.n5xx as f64 / s.requests.max(1) as f64),
            (Target::Info, "—"),
            0.0,
        ),
        Row::new(
            "↳ 429 answers",
            s.n429.to_string(),
            format!(
                "{} within {} s after a kill",
                s.n429_after_kill,
                2 * soak::RATE_MS / 1000
            ),
            "—",
            (Target::Info, "—"),
            0.0,
        ),
    ]
}

pub fn soak_details(s: &Soak) -> String {
    let mut out = String::from("details:\n");
    out += &format!(
        "  seed {}; kills at {} s; 409 conflicts: {}\n",
        s.seed,
        list(&s.kills, "", 0),
        s.n409
    );
    out += &format!("  crm_status at the end: {}\n", s.status);
    for e in s.excerpt429.iter().take(20) {
        out += &format!("  {e}\n");
    }
    if !s.exact() {
        out += &format!(
            "  !!! SOAK FAILED: the CRM does not hold exactly the rows ({} differences):\n",
            s.diffs.len()
        );
        for d in s.diffs.iter().take(50) {
            out += &format!("  !!!   {d}\n");
        }
        if s.diffs.len() > 50 {
            out += &format!("  !!!   … and {} more\n", s.diffs.len() - 50);
        }
    }
    out
}
