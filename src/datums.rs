//! Values read from SPI rows without keeping them until the transaction ends.
//!
//! pgrx's `get` converts a column's value in the parent of the SPI connection's
//! memory context, so that it outlives the connection; for an atomic connection
//! that parent is TopTransactionContext. A by-reference value (a jsonb payload, a
//! bytea digest, a text to detoast) then stays allocated until the transaction
//! ends: a sync_stale over a million rows kept 400 MB that way (measured with
//! pg_log_backend_memory_contexts), and so did a long inline drain(). These
//! wrappers convert in the current context, freed when the connection ends, into
//! values Rust owns.

use pgrx::datum::{FromDatum, IntoDatum};
use pgrx::memcxt::PgMemoryContexts;
use pgrx::{pg_sys, JsonB};

/// A `text` column.
pub struct Text(pub String);
/// A `jsonb` column.
pub struct Json(pub serde_json::Value);
/// A `bytea` column.
pub struct Bytes(pub Vec<u8>);
/// A `text[]` column.
pub struct TextArray(pub Vec<Option<String>>);

macro_rules! in_current_context {
    ($wrapper:ident, $inner:ty, $oid:expr, $unwrap:expr, $wrap:expr) => {
        impl FromDatum for $wrapper {
            unsafe fn from_polymorphic_datum(
                datum: pg_sys::Datum,
                is_null: bool,
                typoid: pg_sys::Oid,
            ) -> Option<Self> {
                // SAFETY: the caller's promise, passed on
                unsafe { <$inner>::from_polymorphic_datum(datum, is_null, typoid) }.map($wrap)
            }

            unsafe fn from_datum_in_memory_context(
                _parent: PgMemoryContexts,
                datum: pg_sys::Datum,
                is_null: bool,
                typoid: pg_sys::Oid,
            ) -> Option<Self> {
                // the point of this type: not in `_parent`
                unsafe { Self::from_polymorphic_datum(datum, is_null, typoid) }
            }
        }

        impl IntoDatum for $wrapper {
            fn into_datum(self) -> Option<pg_sys::Datum> {
                let inner: $inner = $unwrap(self);
                inner.into_datum()
            }

            fn type_oid() -> pg_sys::Oid {
                $oid
            }
        }
    };
}

in_current_context!(Text, String, pg_sys::TEXTOID, |t: Text| t.0, Text);
in_current_context!(
    Json,
    JsonB,
    pg_sys::JSONBOID,
    |j: Json| JsonB(j.0),
    |j: JsonB| Json(j.0)
);
in_current_context!(Bytes, Vec<u8>, pg_sys::BYTEAOID, |b: Bytes| b.0, Bytes);
in_current_context!(
    TextArray,
    Vec<Option<String>>,
    pg_sys::TEXTARRAYOID,
    |a: TextArray| a.0,
    TextArray
);

type Row<'a> = pgrx::spi::SpiHeapTupleData<'a>;

/// Column `i` (1-based) of `r` as text.
pub fn text(r: &Row<'_>, i: usize) -> Option<String> {
    r.get::<Text>(i).ok().flatten().map(|t| t.0)
}

/// Column `i` (1-based) of `r` as JSON.
pub fn json(r: &Row<'_>, i: usize) -> Option<serde_json::Value> {
    r.get::<Json>(i).ok().flatten().map(|j| j.0)
}

/// Column `i` (1-based) of `r` as bytes.
pub fn bytes(r: &Row<'_>, i: usize) -> Option<Vec<u8>> {
    r.get::<Bytes>(i).ok().flatten().map(|b| b.0)
}

/// Column `i` (1-based) of `r` as a text array.
pub fn texts(r: &Row<'_>, i: usize) -> Option<Vec<Option<String>>> {
    r.get::<TextArray>(i).ok().flatten().map(|a| a.0)
}
