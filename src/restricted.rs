//! Running other roles' SQL inside a superuser process, and settings that must not
//! leak either way.
//!
//! A mapping's serializer and sync_if are its owner's code. The worker (and every
//! etlify function that drains inline) runs as a superuser, so they run the way
//! Postgres runs index expressions during VACUUM: as the owner, in a
//! security-restricted operation (SET ROLE, SET SESSION AUTHORIZATION and RESET
//! ROLE fail there), inside a GUC nest level that undoes every setting they change,
//! session-level ones included. `SET LOCAL ROLE` is no sandbox: the code can
//! `set_config('role', 'none', true)` its way back.

use pgrx::pg_sys;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::PgTryBuilder;
use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::panic::AssertUnwindSafe;

thread_local! {
    /// The role `as_role` runs code as, while it does.
    static ACTING_FOR: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

/// Runs `f` as `role` in a security-restricted operation, with `settings` applied
/// inside a GUC nest level; the caller's identity, security context and every
/// setting are restored afterwards, also when `f` raises an ERROR.
pub fn as_role<R>(role: pg_sys::Oid, settings: &[(&CStr, &str)], f: impl FnOnce() -> R) -> R {
    as_user(role, pg_sys::SECURITY_RESTRICTED_OPERATION as i32, || {
        let outer = ACTING_FOR.with(|a| a.replace(Some(role)));
        PgTryBuilder::new(AssertUnwindSafe(|| with_settings(settings, f)))
            .finally(|| ACTING_FOR.with(|a| a.set(outer)))
            .execute()
    })
}

/// The search_path a mapping's SQL runs with: the one recorded at sync_table, with
/// pg_temp searched last. Otherwise the session's temporary tables would come
/// first, and whoever runs an inline drain() could feed another role's serializer
/// tables of its own.
pub fn owner_search_path(recorded: &str) -> String {
    if recorded.trim().is_empty() {
        "pg_temp".into()
    } else {
        format!("{recorded}, pg_temp")
    }
}

/// Runs `f` as the owner of etlify's tables, for etlify's own fixed SQL only (the
/// capture trigger writing etlify.changes for a writer who has no privilege there).
pub fn as_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    as_user(owner, 0, f)
}

/// Runs `f` with `role` as the current user and `flags` added to the security
/// context; both are restored on every exit.
fn as_user<R>(role: pg_sys::Oid, flags: i32, f: impl FnOnce() -> R) -> R {
    let mut save_user = pg_sys::InvalidOid;
    let mut save_sec = 0;
    // SAFETY: plain calls into Postgres on the main thread, inside a transaction.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut save_user, &mut save_sec);
        pg_sys::SetUserIdAndSecContext(
            role,
            save_sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | flags,
        );
    }
    PgTryBuilder::new(AssertUnwindSafe(f))
        .finally(|| unsafe { pg_sys::SetUserIdAndSecContext(save_user, save_sec) })
        .execute()
}

/// Runs `f` with `settings` applied inside a GUC nest level, restored afterwards.
pub fn with_settings<R>(settings: &[(&CStr, &str)], f: impl FnOnce() -> R) -> R {
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    PgTryBuilder::new(AssertUnwindSafe(|| {
        apply(settings);
        f()
    }))
    .finally(|| unsafe { pg_sys::AtEOXact_GUC(false, nest) })
    .execute()
}

fn apply(settings: &[(&CStr, &str)]) {
    for (name, value) in settings {
        let value = CString::new(*value).unwrap_or_default();
        // SAFETY: NUL-terminated strings; the setting is saved and restored by the
        // nest level (GUC_ACTION_SAVE, as a function's SET clause does).
        unsafe {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                pgrx::PgLogLevel::ERROR as i32,
                false,
            );
        }
    }
}

/// Runs `f` in a subtransaction: Ok with its result, or Err with the message of the
/// ERROR it raised (the subtransaction is rolled back, the caller's goes on). This
/// is what a PL/pgSQL `BEGIN … EXCEPTION` block does.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    subtransaction(f, |_| false)
}

/// [`in_subtransaction`] for a mapping's own code (serializers, references): its
/// errors are its records', except a conflict with another transaction (a
/// deadlock, a serialization failure), which is no record's fault. That one is
/// raised again, after the subtransaction is rolled back: it costs the round,
/// whose records are claimed again later with nothing counted against them. (A
/// deadlock settled inside the subtransaction alone would leave the locks the
/// round took before it held, and the same deadlock would come back.)
pub fn in_subtransaction_for_records<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    subtransaction(f, |e| {
        let code = match e {
            pg_sys::panic::CaughtError::PostgresError(r)
            | pg_sys::panic::CaughtError::ErrorReport(r) => r.sql_error_code(),
            pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport.sql_error_code(),
        };
        matches!(
            code,
            PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
                | PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
        )
    })
}

fn subtransaction<R>(
    f: impl FnOnce() -> R,
    raise_again: fn(&pg_sys::panic::CaughtError) -> bool,
) -> Result<R, String> {
    // SAFETY: the standard internal-subtransaction dance (see pl_exec.c): begin,
    // then release or roll back, restoring memory context and resource owner.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        PgTryBuilder::new(AssertUnwindSafe(|| {
            let r = f();
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            Ok(r)
        }))
        .catch_others(|e| {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            if raise_again(&e) {
                e.rethrow()
            }
            Err(message(&e))
        })
        .execute()
    }
}

/// Runs `f` under one snapshot taken now, as a new statement would, and keeps it
/// for every statement `f` runs.
///
/// Taken now: pgrx runs a statement read-only when the (sub)transaction has no xid
/// yet, and a read-only statement reads the active snapshot, which in the worker is
/// the one its transaction started with. A claim commits keys that other
/// transactions committed after that; their rows must be read as committed, not as
/// missing (a new row would be dropped, a live one archived).
///
/// Kept: a statement that is not read-only takes a snapshot of its own under READ
/// COMMITTED. The payloads and what they wait for (etlify._await) must agree: a deal
/// serialized before its company had a CRM id, then checked after another worker
/// synced the company, went out without the company's id. For the length of `f`,
/// the transaction's snapshot is the one taken here, as under REPEATABLE READ
/// (GetTransactionSnapshot then returns it). `f` must not write: under REPEATABLE
/// READ a write that meets a concurrent update fails instead of waiting.
/// An error inside pops the snapshot with the (sub)transaction it aborts.
pub fn one_snapshot<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: pushed and popped around `f` at the same nesting level; the isolation
    // level is a plain global, restored whatever way `f` ends
    unsafe {
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let saved = unsafe { pg_sys::XactIsoLevel };
    let pin = saved < pg_sys::XACT_REPEATABLE_READ as i32;
    if pin {
        unsafe { pg_sys::XactIsoLevel = pg_sys::XACT_REPEATABLE_READ as i32 };
    }
    let r = PgTryBuilder::new(AssertUnwindSafe(f))
        .finally(|| {
            if pin {
                unsafe { pg_sys::XactIsoLevel = saved };
            }
        })
        .execute();
    unsafe { pg_sys::PopActiveSnapshot() };
    r
}

// utils/timeout.h, which pgrx does not bind. Neither function raises an error.
extern "C-unwind" {
    fn enable_timeout_after(id: i32, delay_ms: i32);
    fn disable_timeout(id: i32, keep_indicator: bool);
}
/// TimeoutId's STATEMENT_TIMEOUT (PostgreSQL 15).
const STATEMENT_TIMEOUT: i32 = 3;

/// Runs `f` under a statement timeout of `ms` in a background worker (where
/// Postgres arms none: statement_timeout is armed for client statements only), so
/// that one mapping's slow serializer cannot hold up every other mapping. In a
/// backend the caller's own statement_timeout applies.
pub fn bounded<R>(ms: i32, f: impl FnOnce() -> R) -> R {
    // SAFETY: a global set once at process start.
    if ms <= 0 || !unsafe { pg_sys::IsBackgroundWorker } {
        return f();
    }
    // SAFETY: arming and disarming a timeout of this process; its handler only
    // sets the interrupt flags that the next CHECK_FOR_INTERRUPTS acts on.
    unsafe { enable_timeout_after(STATEMENT_TIMEOUT, ms) };
    PgTryBuilder::new(AssertUnwindSafe(f))
        .finally(|| unsafe { disable_timeout(STATEMENT_TIMEOUT, false) })
        .execute()
}

/// The message of a caught error, for `last_error` and the log.
pub fn message(e: &pg_sys::panic::CaughtError) -> String {
    match e {
        pg_sys::panic::CaughtError::PostgresError(r)
        | pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_string(),
        pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}

/// Whom etlify's own SECURITY DEFINER functions check: the role a mapping's code
/// runs as while it runs (a serializer calling etlify.crm_id), else the role this
/// session acts as outside every security-definer function.
#[pgrx::pg_extern(volatile, parallel_safe)]
fn _caller() -> pg_sys::Oid {
    // SAFETY: set for every backend once it is connected.
    ACTING_FOR
        .with(|a| a.get())
        .unwrap_or_else(|| unsafe { pg_sys::GetOuterUserId() })
}

/// Plans `sql` (a mapping's fetch statement, with sync_if and the serializer) as
/// `role` with `search_path`, in a security-restricted operation: sync_table's
/// check that the caller's SQL parses, names real columns and functions, and is one
/// statement. Nothing is executed.
#[pgrx::pg_extern(volatile)]
fn _check_fetch(role: pg_sys::Oid, search_path: &str, sql: &str) {
    let path = owner_search_path(search_path);
    as_role(role, &[(c"search_path", path.as_str())], || {
        pgrx::Spi::connect(|client| {
            client
                .prepare(sql, &[pg_sys::TEXTARRAYOID.into(), pg_sys::INT8OID.into()])
                .map(drop)
                .unwrap_or_else(|e| pgrx::error!("{e}"));
        })
    });
}
