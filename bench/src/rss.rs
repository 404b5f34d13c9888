//! Memory of a Postgres process from /proc/<pid>/status. VmRSS counts the shared
//! buffers the process touched; RssAnon is its own (private, anonymous) memory, the
//! figure a leak or an unbounded batch would grow.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub vm_rss_kb: u64,
    pub rss_anon_kb: u64,
}

impl Mem {
    pub fn max(self, o: Mem) -> Mem {
        Mem {
            vm_rss_kb: self.vm_rss_kb.max(o.vm_rss_kb),
            rss_anon_kb: self.rss_anon_kb.max(o.rss_anon_kb),
        }
    }
}

/// `None` once the process is gone.
pub fn read(pid: i32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Mem {
        vm_rss_kb: field("VmRSS:")?,
        rss_anon_kb: field("RssAnon:")?,
    })
}

/// Samples a process every 50 ms on a thread until dropped or [`Sampler::finish`]ed.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(Mem, usize)>>,
}

impl Sampler {
    pub fn start(pid: i32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut peak = Mem::default();
            let mut samples = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Some(m) = read(pid) {
                    peak = peak.max(m);
                    samples += 1;
                }
                thread::sleep(Duration::from_millis(50));
            }
            (peak, samples)
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Peak figures and the number of samples taken.
    pub fn finish(mut self) -> (Mem, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("joined once")
            .join()
            .expect("sampler thread")
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}
