//! etlify.sync() and etlify.delete() hand their key to the worker and wait on
//! their latch: no HTTP in user backends, and Ctrl-C or statement_timeout still
//! interrupt the wait.
//!
//! A small table of request slots lives in shared memory. A backend fills a free
//! slot, wakes the worker and sleeps; the worker serves pending slots before each
//! batch, writes the verdict and sets the requester's latch. A requester that
//! gives up (cancel) marks its slot abandoned, and the worker frees it.

use crate::engine::Engine;
use crate::worker::WorkerHost;
use crate::{latch, wake};
use etlify_core::plan::{Intent, Verdict};
use pgrx::prelude::*;
use pgrx::{PGRXSharedMemory, PgLwLock, PgTryBuilder};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub const SLOTS: usize = 32;
/// Longest key (bytes) that fits a slot; longer keys are synced inline.
pub const KEY_MAX: usize = 512;

const FREE: u8 = 0;
const PENDING: u8 = 1;
const TAKEN: u8 = 2;
const DONE: u8 = 3;
const ABANDONED: u8 = 4;

#[derive(Copy, Clone)]
pub struct Slot {
    state: u8,
    remove: bool,
    verdict: u8,
    /// The requester's database: mapping ids are per database, and a worker serves
    /// only its own.
    database: pg_sys::Oid,
    mapping_id: i32,
    requester: i32,
    /// The worker that took it (TAKEN).
    taker: u8,
    ticket: u64,
    key_len: u16,
    key: [u8; KEY_MAX],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            state: FREE,
            remove: false,
            verdict: 0,
            database: pg_sys::InvalidOid,
            mapping_id: 0,
            requester: -1,
            taker: 0,
            ticket: 0,
            key_len: 0,
            key: [0; KEY_MAX],
        }
    }
}

#[derive(Copy, Clone)]
pub struct Requests {
    next_ticket: u64,
    slots: [Slot; SLOTS],
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            next_ticket: 1,
            slots: [Slot::default(); SLOTS],
        }
    }
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for Requests {}

pub static REQUESTS: PgLwLock<Requests> = unsafe { PgLwLock::new(c"etlify_requests") };

/// True when a worker serving this database can take the request; else the
/// caller syncs inline.
pub fn worker_available(key: &str) -> bool {
    wake::SHMEM_READY.load(Ordering::Relaxed)
        && !wake::transaction_enqueued()
        && wake::worker_serves(unsafe { pg_sys::MyDatabaseId })
        && crate::gucs::enabled()
        && key.len() <= KEY_MAX
}

/// Frees (or abandons) the slot when the wait ends, including by an ERROR
/// (cancel, statement_timeout) unwinding through it.
struct Held {
    index: usize,
    ticket: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut r = REQUESTS.exclusive();
        let s = &mut r.slots[self.index];
        if s.ticket == self.ticket {
            // nobody waits any more: a slot the worker has taken is freed by the
            // worker once it is done with it; any other is free at once (so that
            // cancelled calls never use up the slots)
            s.state = if s.state == TAKEN { ABANDONED } else { FREE };
        }
    }
}

/// Backend side: asks the worker and waits for its verdict.
pub fn request(mapping_id: i32, key: &str, remove: bool) -> Verdict {
    let held = loop {
        if let Some(h) = try_fill(mapping_id, key, remove) {
            break h;
        }
        // every slot busy: wait for one to free up
        latch::backend_wait(Duration::from_millis(10));
    };
    // unconditionally: a pending commit wake may be one the worker is already past
    wake::set_worker_latch();
    loop {
        {
            let r = REQUESTS.share();
            let s = &r.slots[held.index];
            if s.ticket == held.ticket && s.state == DONE {
                let v = Verdict::from_code(s.verdict).unwrap_or(Verdict::Failed);
                drop(r);
                drop(held);
                return v;
            }
        }
        latch::backend_wait(Duration::from_millis(100));
    }
}

fn try_fill(mapping_id: i32, key: &str, remove: bool) -> Option<Held> {
    let mut r = REQUESTS.exclusive();
    let ticket = r.next_ticket;
    let index = r.slots.iter().position(|s| s.state == FREE)?;
    r.next_ticket += 1;
    let s = &mut r.slots[index];
    s.state = PENDING;
    s.remove = remove;
    // SAFETY: set in every backend connected to a database.
    s.database = unsafe { pg_sys::MyDatabaseId };
    s.mapping_id = mapping_id;
    // SAFETY: MyProc is set in every backend.
    s.requester = unsafe { (*pg_sys::MyProc).pgprocno };
    s.ticket = ticket;
    s.key_len = key.len() as u16;
    s.key[..key.len()].copy_from_slice(key.as_bytes());
    Some(Held { index, ticket })
}

/// Worker side: serves every pending request of its database. Called before each
/// batch. A request to a CRM that enough other workers are busy with (a CRM that
/// hangs, say) is left to them or to a later call.
pub fn serve(engine: &mut Engine<WorkerHost>) {
    // SAFETY: the worker is connected to its database.
    let database = unsafe { pg_sys::MyDatabaseId };
    let worker = engine.host().index;
    let mut deferred = Vec::new();
    loop {
        let taken = {
            let mut r = REQUESTS.exclusive();
            let mut found = None;
            for (i, s) in r.slots.iter_mut().enumerate() {
                if s.state == PENDING
                    && s.database == database
                    && !deferred.contains(&s.ticket)
                    && found.is_none()
                {
                    s.state = TAKEN;
                    s.taker = worker as u8;
                    let key = String::from_utf8_lossy(&s.key[..s.key_len as usize]).into_owned();
                    found = Some((i, s.ticket, s.mapping_id, key, s.remove));
                }
            }
            found
        };
        let Some((index, ticket, mapping_id, key, remove)) = taken else {
            return;
        };
        let intent = if remove {
            Intent::Delete
        } else {
            Intent::Reconcile
        };
        // an error (the mapping was removed meanwhile, …) still answers the caller
        let verdict = PgTryBuilder::new(AssertUnwindSafe(|| engine.one(mapping_id, &key, intent)))
            .catch_others(|e| {
                crate::worker::recover(e, worker);
                Some(Verdict::Failed)
            })
            .execute();
        let requester = {
            let mut r = REQUESTS.exclusive();
            let s = &mut r.slots[index];
            if s.ticket != ticket {
                None
            } else if s.state == ABANDONED {
                s.state = FREE;
                None
            } else if let Some(verdict) = verdict {
                s.state = DONE;
                s.verdict = verdict.code();
                Some(s.requester)
            } else {
                s.state = PENDING;
                deferred.push(ticket);
                None
            }
        };
        if let Some(p) = requester.filter(|p| *p >= 0) {
            latch::set_proc_latch(p);
        }
    }
}

/// Worker start: requests this worker's previous incarnation took but never
/// answered go back to pending (a sibling's are still being served).
pub fn requeue_taken(worker: usize) {
    let mut r = REQUESTS.exclusive();
    for s in r.slots.iter_mut() {
        if s.state == TAKEN && s.taker as usize == worker {
            s.state = PENDING;
        }
    }
}
