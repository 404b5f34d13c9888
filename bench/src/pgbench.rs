//! pgbench as a child process, killed by PID if the benchmark stops early.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::interrupt;

pub const PGBENCH: &str = "/usr/lib/postgresql/15/bin/pgbench";

/// Kills (by its PID) and reaps the child on drop: a panic or an interrupt mid-run.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `script` on one connection, prepared statements, for `secs` seconds against
/// 127.0.0.1:`port`. Returns the TPS pgbench reports (without connection time).
pub fn tps(port: u16, script: &Path, secs: u32) -> f64 {
    assert!(
        Path::new(PGBENCH).exists(),
        "{PGBENCH} is missing (postgresql-15)"
    );
    let child = Command::new(PGBENCH)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args([
            "-n",
            "-c",
            "1",
            "-j",
            "1",
            "-M",
            "prepared",
            "-T",
            &secs.to_string(),
        ])
        .arg("-f")
        .arg(script)
        .arg("postgres")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {PGBENCH}: {e}"));
    let mut guard = ChildGuard(Some(child));
    let deadline = Instant::now() + Duration::from_secs(secs as u64 + 60);
    loop {
        interrupt::check();
        let running = guard.0.as_mut().expect("child");
        // its output is a few lines: it fits the pipe until we read it below
        if running.try_wait().expect("pgbench status").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "pgbench did not finish in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = guard
        .0
        .take()
        .expect("child")
        .wait_with_output()
        .expect("pgbench output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_tps(&stdout).unwrap_or_else(|| panic!("no tps line in pgbench output:\n{stdout}"))
}

/// `tps = 1234.567890 (without initial connection time)`.
fn parse_tps(out: &str) -> Option<f64> {
    out.lines()
        .find(|l| l.starts_with("tps = ") && l.contains("without initial connection time"))?
        .strip_prefix("tps = ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_pgbench_15_output() {
        let out = "latency average = 0.290 ms\ninitial connection time = 4.2 ms\n\
                   tps = 3446.181818 (without initial connection time)\n";
        assert_eq!(super::parse_tps(out), Some(3446.181818));
    }
}
