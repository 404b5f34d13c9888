//! One error type for what etlify's Rust code reports to users, each with a real
//! SQLSTATE, raised in one place as a Postgres error (never as a Rust panic).

use pgrx::pg_sys::panic::ErrorReport;
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

    /// Raises it as a Postgres ERROR.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "");
        if let Some(h) = self.hint {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR does not return")
    }
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
