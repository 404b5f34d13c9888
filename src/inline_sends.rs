//! Inline sends that survive a rollback.
//!
//! `etlify.drain()`, and `sync()`/`delete()` when no worker can take them, call the
//! CRM from the caller's backend, inside the caller's transaction. If that
//! transaction rolls back, the CRM keeps what was sent while the records' digests
//! roll back, and the next drain would find nothing to send. So before each
//! request the keys are noted, with the (sub)transaction that sends them, in
//! `etlify.inline_sends`, by a transaction that commits on its own: a short-lived
//! background worker (the only way Postgres offers to commit beside an open
//! transaction; dynamic workers need no preload). Once the sender's transaction has
//! ended without committing, `etlify._settle_inline_sends` (run at the start of
//! every drain) makes those records dirty again, their digests forgotten.
//!
//! The request travels in a dynamic shared memory segment: the keys of one batch
//! do not fit in a worker's 128 bytes of `bgw_extra`.

use crate::error::Error;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use serde::{Deserialize, Serialize};
use std::panic::AssertUnwindSafe;

/// Room for the note worker's answer (an error message, truncated).
const REPLY_MAX: usize = 2048;

#[derive(Serialize, Deserialize)]
struct Note {
    database: u32,
    xid: u64,
    mapping_id: i32,
    keys: Vec<String>,
    /// Per key, the id_property value of an upsert that has no CRM id yet: if the
    /// transaction rolls back, the object it makes is looked up by that value
    /// (etlify_core::unanswered).
    values: Vec<Option<String>>,
}

/// The segment's layout: request length (8 bytes), request (JSON), then the reply:
/// status (1 byte: 0 none, 1 noted, 2 failed), message length (4 bytes), message.
struct Segment {
    base: *mut u8,
    request_len: usize,
}

impl Segment {
    fn reply_at(&self) -> *mut u8 {
        // SAFETY: the segment was sized for request plus reply (see note)
        unsafe { self.base.add(8 + self.request_len) }
    }

    fn write_reply(&self, ok: bool, message: &str) {
        let msg = &message.as_bytes()[..message.len().min(REPLY_MAX)];
        // SAFETY: within the reply area
        unsafe {
            let at = self.reply_at();
            std::ptr::copy_nonoverlapping((msg.len() as u32).to_ne_bytes().as_ptr(), at.add(1), 4);
            std::ptr::copy_nonoverlapping(msg.as_ptr(), at.add(5), msg.len());
            *at = if ok { 1 } else { 2 };
        }
    }

    fn read_reply(&self) -> (u8, String) {
        // SAFETY: within the reply area, written by the note worker
        unsafe {
            let at = self.reply_at();
            let mut len = [0u8; 4];
            std::ptr::copy_nonoverlapping(at.add(1), len.as_mut_ptr(), 4);
            let len = (u32::from_ne_bytes(len) as usize).min(REPLY_MAX);
            let msg = std::slice::from_raw_parts(at.add(5), len);
            (*at, String::from_utf8_lossy(msg).into_owned())
        }
    }
}

/// Notes that this (sub)transaction is about to send `keys` of `mapping_id` (with
/// the id_property value of those upserted by it), and waits until the note is
/// committed. Raises an error (and nothing is sent) if it cannot be.
pub fn note(mapping_id: i32, sends: Vec<(String, Option<String>)>) {
    if sends.is_empty() || extension_is_new() {
        return;
    }
    let (keys, values) = sends.into_iter().unzip();
    // SAFETY: plain calls inside a transaction; the segment belongs to this
    // transaction's resource owner until it is detached below
    unsafe {
        let note = Note {
            database: pg_sys::MyDatabaseId.to_u32(),
            xid: pg_sys::GetCurrentFullTransactionId().value,
            mapping_id,
            keys,
            values,
        };
        let request = serde_json::to_vec(&note).expect("a note serializes");
        let size = 8 + request.len() + 5 + REPLY_MAX;
        let seg = pg_sys::dsm_create(size, 0);
        let base = pg_sys::dsm_segment_address(seg) as *mut u8;
        std::ptr::copy_nonoverlapping((request.len() as u64).to_ne_bytes().as_ptr(), base, 8);
        std::ptr::copy_nonoverlapping(request.as_ptr(), base.add(8), request.len());
        let segment = Segment {
            base,
            request_len: request.len(),
        };
        *segment.reply_at() = 0;
        let handle = pg_sys::dsm_segment_handle(seg);

        let worker = BackgroundWorkerBuilder::new("etlify inline-send note")
            .set_type("etlify inline-send note")
            .set_library("etlify")
            .set_function("etlify_note_main")
            .enable_spi_access()
            .set_restart_time(None)
            .set_argument(Some(pg_sys::Datum::from(handle as usize)))
            .set_notify_pid(pg_sys::MyProcPid)
            .load_dynamic();
        let problem = match worker {
            Err(_) => Some("no background worker slot is free".to_string()),
            Ok(w) => match w.wait_for_shutdown() {
                Err(status) => Some(format!("the note worker did not run ({status:?})")),
                Ok(()) => match segment.read_reply() {
                    (1, _) => None,
                    (2, message) => Some(message),
                    _ => Some("the note worker exited without an answer".into()),
                },
            },
        };
        pg_sys::dsm_detach(seg);
        if let Some(problem) = problem {
            Error::new(
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                format!("etlify: cannot note an inline send before calling the CRM: {problem}"),
            )
            .with_hint(
                "Inline sends need one free background worker slot for a moment \
                 (max_worker_processes).",
            )
            .raise();
        }
    }
}

/// The extension was created by this very transaction: no other transaction can
/// see its tables, and if this one rolls back, every record goes with it (nothing
/// is left to mark dirty).
fn extension_is_new() -> bool {
    let xmin = Spi::get_one::<pg_sys::TransactionId>(
        "SELECT xmin FROM pg_catalog.pg_extension WHERE extname = 'etlify'",
    )
    .ok()
    .flatten();
    // SAFETY: a plain lookup in this backend's transaction state
    xmin.is_some_and(|x| unsafe { pg_sys::TransactionIdIsCurrentTransactionId(x) })
}

/// The note worker: commits the note it was handed, answers, and exits.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn etlify_note_main(arg: pg_sys::Datum) {
    // a worker starts with signals blocked: SIGALRM (lock_timeout) and SIGTERM
    // (shutdown: die at once, the default handler) must get through
    unsafe { pg_sys::BackgroundWorkerUnblockSignals() };
    // SAFETY: the handle comes from `note`, which waits for this worker to exit
    // before it detaches (and so destroys) the segment
    let seg = unsafe { pg_sys::dsm_attach(arg.value() as pg_sys::dsm_handle) };
    if seg.is_null() {
        // the sender is gone (cancelled): nothing to note for it
        return;
    }
    let segment = unsafe {
        let base = pg_sys::dsm_segment_address(seg) as *mut u8;
        let mut len = [0u8; 8];
        std::ptr::copy_nonoverlapping(base, len.as_mut_ptr(), 8);
        Segment {
            base,
            request_len: u64::from_ne_bytes(len) as usize,
        }
    };
    let request = unsafe { std::slice::from_raw_parts(segment.base.add(8), segment.request_len) };
    let note: Note = match serde_json::from_slice(request) {
        Ok(n) => n,
        Err(e) => {
            segment.write_reply(false, &format!("unreadable note: {e}"));
            unsafe { pg_sys::dsm_detach(seg) };
            return;
        }
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(note.database)), None);
    let result = PgTryBuilder::new(AssertUnwindSafe(|| {
        crate::worker::transaction(|| {
            Spi::run_with_args(
                "SELECT etlify._note_inline_sends($1::pg_catalog.text::pg_catalog.xid8, $2, $3, $4)",
                &[
                    note.xid.to_string().into(),
                    note.mapping_id.into(),
                    note.keys.clone().into(),
                    note.values.clone().into(),
                ],
            )
        })
        .map_err(|e| e.to_string())
    }))
    .catch_others(|e| {
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(crate::restricted::message(&e))
    })
    .execute();
    match result {
        Ok(()) => segment.write_reply(true, ""),
        Err(e) => segment.write_reply(false, &e),
    }
    unsafe { pg_sys::dsm_detach(seg) };
}
