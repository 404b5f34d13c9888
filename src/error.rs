//! One error type for what etlify's Rust code reports to users, each with a real
//! SQLSTATE, raised in one place as a Postgres error (never as a Rust panic).

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug)]
pub struct Error {
    code: PgSqlErrorCode,
    message: String,
    hint: Option<String>,
}

impl Error {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// A bad argument or declaration (22023).
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
    }

    /// Something named that does not exist (42704).
    pub fn undefined(message: impl Into<String>) -> Error {
        Error::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, message)
    }

    /// A bug or a broken installation (XX000).
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// Raises it as a Postgres ERROR, without CONTEXT lines: the message names the
    /// user's objects, and the lines would show etlify's internal SQL and helper
    /// functions (whoever catches the error restores the context stack).
    pub fn raise(self) -> ! {
        // SAFETY: a plain global of the backend; every PG_TRY/PG_CATCH (and pgrx's
        // guard) saves and restores it around errors
        unsafe { pgrx::pg_sys::error_context_stack = std::ptr::null_mut() };
        let mut report = ErrorReport::new(self.code, self.message, "");
        if let Some(h) = self.hint {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR does not return")
    }
}

/// `PERFORM etlify._raise(sqlstate, message, hint)`: how etlify's SQL functions
/// report a user's mistake (see `Error::raise`; a PL/pgSQL RAISE would add
/// CONTEXT lines naming etlify's helpers).
#[pg_extern(volatile, parallel_safe)]
fn _raise(sqlstate: &str, message: &str, hint: default!(Option<&str>, "NULL")) {
    let code = match sqlstate.as_bytes() {
        b if b.len() == 5
            && b.iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()) =>
        {
            // MAKE_SQLSTATE: six bits per character
            b.iter().enumerate().fold(0i32, |acc, (i, c)| {
                acc + ((((*c as i32) - ('0' as i32)) & 0x3F) << (6 * i))
            })
        }
        _ => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32,
    };
    let mut e = Error::new(PgSqlErrorCode::from(code), message);
    if let Some(h) = hint {
        e = e.with_hint(h);
    }
    e.raise()
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Rust backtraces are for developers: pgrx attaches one to the DETAIL of every
/// error it passes on when the server's environment sets RUST_BACKTRACE (as some
/// machines do), and a user would then read 30 lines of frames. Called from
/// _PG_init, before anything captured a backtrace (the setting is read once).
pub fn quiet_backtraces() {
    // SAFETY (set_var): _PG_init runs single-threaded, before any thread exists.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
}
