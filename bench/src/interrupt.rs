//! Ctrl-C and SIGTERM turn into a panic at the next wait, so the Drop guards of the
//! cluster, the mocks and pgbench run instead of the process dying with them alive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // only an atomic store: async-signal-safe
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Panics (unwinding through the guards) once a stop was asked for.
pub fn check() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        panic!("interrupted: stopping what the benchmark started");
    }
}

/// A sleep that notices an interrupt within 50 ms.
pub fn sleep(d: Duration) {
    let end = Instant::now() + d;
    loop {
        check();
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}
