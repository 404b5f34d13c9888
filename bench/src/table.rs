//! The result table: `metric | value | baseline | ratio | target | verdict`, as aligned
//! text for the terminal and as markdown for bench/results.md.

use etlify_e2e::report;

/// A figure's target, checked against the row's value (not its ratio) unless the
/// target is itself a ratio.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
    /// Measured to be read, not judged.
    Info,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub verdict: &'static str,
}

impl Row {
    /// `judged` is the number the target applies to; `target_text` says it in words.
    pub fn new(
        metric: impl Into<String>,
        value: impl Into<String>,
        baseline: impl Into<String>,
        ratio: impl Into<String>,
        (target, target_text): (Target, &str),
        judged: f64,
    ) -> Row {
        let verdict = match target {
            Target::AtLeast(t) if judged >= t => "met",
            Target::AtMost(t) if judged <= t => "met",
            Target::Info => "info",
            _ => "missed",
        };
        Row {
            metric: metric.into(),
            value: value.into(),
            baseline: baseline.into(),
            ratio: ratio.into(),
            target: target_text.to_string(),
            verdict,
        }
    }
}

const HEADER: [&str; 6] = ["metric", "value", "baseline", "ratio", "target", "verdict"];

fn cells(r: &Row) -> Vec<String> {
    vec![
        r.metric.clone(),
        r.value.clone(),
        r.baseline.clone(),
        r.ratio.clone(),
        r.target.clone(),
        r.verdict.to_string(),
    ]
}

pub fn text(rows: &[Row]) -> String {
    let header: Vec<String> = HEADER.iter().map(|s| s.to_string()).collect();
    let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
    report::table(&header, &body)
}

pub fn markdown(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n", HEADER.join(" | "));
    out += &format!("|{}\n", "---|".repeat(HEADER.len()));
    for r in rows {
        let c: Vec<String> = cells(r).iter().map(|s| s.replace('|', "\\|")).collect();
        out += &format!("| {} |\n", c.join(" | "));
    }
    out
}

/// `1234567.8` → `1,234,568`: throughput figures are read at a glance.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A cost ratio (≥ 1 means slower) with its overhead in percent.
pub fn cost_ratio(r: f64) -> String {
    format!("{r:.2}× ({:+.0}%)", (r - 1.0) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(1234567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
        assert_eq!(cost_ratio(1.05), "1.05× (+5%)");
    }

    #[test]
    fn verdicts() {
        let r = Row::new("m", "v", "b", "r", (Target::AtMost(1.5), "≤ 1.5×"), 1.2);
        assert_eq!(r.verdict, "met");
        let r = Row::new("m", "v", "b", "r", (Target::AtLeast(10.0), "≥ 10"), 9.0);
        assert_eq!(r.verdict, "missed");
        let r = Row::new("m", "v", "b", "r", (Target::Info, "—"), 9.0);
        assert_eq!(r.verdict, "info");
        assert!(markdown(&[r]).contains("| m | v | b | r | — | info |"));
    }
}
