//! Latches: waking another process, and a backend waiting on its own.

use pgrx::prelude::*;
use std::time::Duration;

/// Sets the latch of the process in PGPROC slot `procno`.
pub fn set_proc_latch(procno: i32) {
    // SAFETY: ProcGlobal is set up by the postmaster before any backend runs, and a
    // PGPROC slot (with its latch) lives as long as the cluster.
    unsafe {
        let p = (*pg_sys::ProcGlobal).allProcs.add(procno as usize);
        pg_sys::SetLatch(&raw mut (*p).procLatch);
    }
}

/// Sleeps on this backend's latch for up to `d`. A cancel or statement_timeout
/// raises an ERROR here, so every wait of a user's backend stays interruptible.
pub fn backend_wait(d: Duration) {
    let ms = d.as_millis().clamp(1, i64::MAX as u128) as std::ffi::c_long;
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}
