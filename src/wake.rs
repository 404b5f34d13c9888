//! Wake the sync worker when a transaction that recorded changes commits.
//!
//! The capture triggers call `etlify._wake()` once per statement that enqueued
//! something. The first call in a transaction registers a commit callback; on
//! COMMIT it sets the worker's latch, on abort nothing happens (a rolled-back
//! change is never sent, and the worker is not disturbed for it).

use crate::gucs::MAX_WORKERS;
use pgrx::prelude::*;
use pgrx::{register_xact_callback, PGRXSharedMemory, PgAtomic, PgLwLock, PgXactCallbackEvent};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// The running workers: pgprocno + 1 of worker i+1 in `procs[i]` (0: not running),
/// and the database they serve.
#[derive(Copy, Clone, Default)]
pub struct Workers {
    procs: [i32; MAX_WORKERS as usize],
    database: u32,
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for Workers {}

pub static WORKERS: PgLwLock<Workers> = unsafe { PgLwLock::new(c"etlify_workers") };

/// Set by the first commit that wakes the worker, cleared by the worker when it
/// starts a round: later commits see it set and skip the signal (a kill() per
/// commit showed as the writers' largest cost). No wake is lost: commit callbacks
/// run once the commit is visible, and the worker clears the flag before it reads.
pub static WAKE_PENDING: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"etlify_wake_pending") };

/// Set in _PG_init when loaded through shared_preload_libraries: only then does
/// the shared memory above exist.
pub static SHMEM_READY: AtomicBool = AtomicBool::new(false);

thread_local! {
    static WAKE_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Called by the capture triggers and by enqueue-like functions.
#[pg_extern(volatile, parallel_unsafe)]
pub fn _wake() {
    if !SHMEM_READY.load(Ordering::Relaxed) || WAKE_REGISTERED.with(|w| w.replace(true)) {
        return;
    }
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        WAKE_REGISTERED.with(|w| w.set(false));
        wake_worker();
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || {
        WAKE_REGISTERED.with(|w| w.set(false));
    });
}

/// True when the current transaction has marked records dirty. Some of those
/// paths (enqueue, reset_errors, TRUNCATE) hold queue rows until it ends, and the
/// worker must not be asked to wait on them while this backend waits on the
/// worker. (Changes captured by the trigger hold no queue row; they set this
/// too, which only sends such a transaction's sync() inline.)
pub fn transaction_enqueued() -> bool {
    WAKE_REGISTERED.with(|w| w.get())
}

/// Wakes the worker for committed changes, unless a wake is already pending.
pub fn wake_worker() {
    if !SHMEM_READY.load(Ordering::Relaxed) || WAKE_PENDING.get().swap(true, Ordering::SeqCst) {
        return;
    }
    set_worker_latch();
}

/// The worker starts a round: commits from now on must wake it again.
pub fn round_started() {
    WAKE_PENDING.get().store(false, Ordering::SeqCst);
}

/// Sets every running worker's latch: the idle ones start a round, the busy ones
/// see it after theirs.
pub fn set_worker_latch() {
    if !SHMEM_READY.load(Ordering::Relaxed) {
        return;
    }
    let procs = WORKERS.share().procs;
    for proc in procs.into_iter().filter(|p| *p > 0) {
        crate::latch::set_proc_latch(proc - 1);
    }
}

/// Whether a running worker serves `database`.
pub fn worker_serves(database: pg_sys::Oid) -> bool {
    let w = WORKERS.share();
    w.database == database.to_u32() && w.procs.iter().any(|p| *p > 0)
}

/// Called by worker `index` (1-based) once connected. Whatever way it exits, the
/// exit hook clears its slot, so that no backend waits on a worker that is gone.
pub fn register_worker(index: usize) {
    // SAFETY: MyProc and MyDatabaseId are set for every connected process.
    let (procno, database) = unsafe { ((*pg_sys::MyProc).pgprocno, pg_sys::MyDatabaseId) };
    {
        let mut w = WORKERS.exclusive();
        w.database = database.to_u32();
        w.procs[index - 1] = procno + 1;
    }
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(index)) };
}

unsafe extern "C-unwind" fn on_exit(_code: i32, arg: pg_sys::Datum) {
    unregister_worker(arg.value());
}

pub fn unregister_worker(index: usize) {
    WORKERS.exclusive().procs[index - 1] = 0;
}
