//! A record's key is its primary-key value as text, and that text must not depend
//! on who wrote it. A type's output function reads session settings (DateStyle,
//! TimeZone, IntervalStyle, extra_float_digits): a date captured as `02/01/2024`
//! under `SQL, DMY` reads back as 1 February elsewhere. So every key is spelled
//! under the settings below, wherever it is spelled (the capture trigger, the
//! backfill, the `key` arguments of the SQL API), and read back by its type's input
//! function, which accepts this form under any setting.

use pgrx::prelude::*;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::ffi::{CStr, CString};

/// The settings keys are spelled under. sql/catalog.sql's backfill uses the same.
pub const CANONICAL: [(&CStr, &str); 4] = [
    (c"DateStyle", "ISO, YMD"),
    (c"TimeZone", "UTC"),
    (c"IntervalStyle", "postgres"),
    (c"extra_float_digits", "1"),
];

/// Whether a type's text form depends on the session's settings: date and time
/// types, intervals and floats (looked through domains).
pub fn setting_sensitive(type_oid: pg_sys::Oid) -> bool {
    // asked by every captured statement: remembered per type (a type's base type
    // and category never change)
    thread_local! {
        static SENSITIVE: RefCell<FxHashMap<pg_sys::Oid, bool>> = RefCell::new(FxHashMap::default());
    }
    if let Some(known) = SENSITIVE.with(|m| m.borrow().get(&type_oid).copied()) {
        return known;
    }
    // SAFETY: catalog lookups inside a transaction.
    let base = unsafe { pg_sys::getBaseType(type_oid) };
    // typcategory 'D' (date/time) and 'T' (timespan), and the two float types
    let category = unsafe { pg_sys::TypeCategory(base) } as u8;
    let sensitive = category == b'D'
        || category == b'T'
        || base == pg_sys::FLOAT4OID
        || base == pg_sys::FLOAT8OID;
    SENSITIVE.with(|m| m.borrow_mut().insert(type_oid, sensitive));
    sensitive
}

/// Runs `f` under the canonical settings if keys of this type need them.
pub fn spelled<R>(type_oid: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    if setting_sensitive(type_oid) {
        crate::restricted::with_settings(&CANONICAL, f)
    } else {
        f()
    }
}

/// A type's output function, writing values as Rust strings: how a key is
/// spelled, by the capture trigger and by etlify._canonical_key alike.
pub struct Output(pg_sys::Oid);

impl Output {
    /// # Safety
    /// Inside a transaction (a catalog lookup).
    pub unsafe fn of_type(type_oid: pg_sys::Oid) -> Output {
        let mut out_fn = pg_sys::InvalidOid;
        let mut varlena = false;
        pg_sys::getTypeOutputInfo(type_oid, &mut out_fn, &mut varlena);
        Output(out_fn)
    }

    /// # Safety
    /// `d` is a valid datum of the type.
    pub unsafe fn spell(&self, d: pg_sys::Datum) -> String {
        let c = pg_sys::OidOutputFunctionCall(self.0, d);
        let s = CStr::from_ptr(c).to_string_lossy().into_owned();
        pg_sys::pfree(c.cast());
        s
    }
}

/// A `key` argument of the SQL API, parsed by the key's type under the caller's
/// settings (`'02/01/2024'` means what the caller means) and spelled canonically:
/// `'01'`, `' 1'` and `'+1'` are all key `1`. An invalid key raises 22P02.
#[pg_extern(stable, parallel_safe)]
fn _canonical_key(key_type: pg_sys::Oid, key: &str) -> String {
    let mut input = pg_sys::InvalidOid;
    let mut ioparam = pg_sys::InvalidOid;
    let Ok(text) = CString::new(key) else {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            "etlify: a key must not contain NUL bytes"
        );
    };
    // SAFETY: type lookups and I/O function calls inside a transaction; the input
    // function raises a Postgres ERROR for invalid text.
    unsafe {
        pg_sys::getTypeInputInfo(key_type, &mut input, &mut ioparam);
        let datum = pg_sys::OidInputFunctionCall(input, text.as_ptr().cast_mut(), ioparam, -1);
        let output = Output::of_type(key_type);
        spelled(key_type, || output.spell(datum))
    }
}

/// A table's name as `search_path` shows it (qualified unless visible there), for
/// results a caller reads. Only regclass's output function runs under that path.
#[pg_extern(stable, parallel_safe)]
fn _name_in_path(rel: pg_sys::Oid, search_path: &str) -> String {
    crate::restricted::with_settings(&[(c"search_path", search_path)], || {
        Spi::get_one_with_args::<String>(
            "SELECT $1::pg_catalog.regclass::pg_catalog.text",
            &[rel.into()],
        )
        .ok()
        .flatten()
        .unwrap_or_default()
    })
}
