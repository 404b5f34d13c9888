//! The change-capture trigger, shared by every mapping.
//!
//! `CREATE TRIGGER … AFTER {INSERT|UPDATE|DELETE|TRUNCATE} … FOR EACH STATEMENT
//! EXECUTE FUNCTION etlify._capture('<mapping id>', '<key column>', '<watched
//! column>', …)`, with transition tables for the first three. Per statement it
//! reads the transition tables directly (no SQL), keeps the keys whose watched
//! values changed, and appends one row to etlify.changes (straight into the heap).
//! Writers pay a few microseconds, not a query plan over the transition tables.
//!
//! Columns are named, not numbered, in the trigger's arguments: names survive
//! pg_dump/restore, attribute numbers do not.

use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{PgMemoryContexts, PgTrigger};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::ffi::CStr;

thread_local! {
    static APPEND: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

type CaptureError = crate::error::Error;

/// A column the trigger reads: where it is and how to compare its values.
pub(crate) struct Column {
    pub(crate) attno: i32,
    pub(crate) byval: bool,
    len: i16,
}

impl Column {
    fn of(att: &pg_sys::FormData_pg_attribute) -> Column {
        Column {
            attno: att.attnum as i32,
            byval: att.attbyval,
            len: att.attlen,
        }
    }
}

/// Attribute `i` (0-based) of a tuple descriptor.
pub(crate) unsafe fn attribute<'a>(
    tupdesc: pg_sys::TupleDesc,
    i: usize,
) -> &'a pg_sys::FormData_pg_attribute {
    &*(*tupdesc).attrs.as_ptr().add(i)
}

/// Keys per change row: a bulk statement's keys are flushed in rows of this many,
/// so that a writer's memory stays bounded whatever the statement's size.
const FLUSH_KEYS: usize = 65_536;

/// Errors are raised as Postgres errors with their SQLSTATE (error.rs), not
/// returned: pgrx would report a returned error as a trigger panic.
#[pg_trigger]
fn _capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, CaptureError> {
    capture(trigger).unwrap_or_else(|e| e.raise());
    Ok(None)
}

fn capture(trigger: &PgTrigger<'_>) -> Result<(), CaptureError> {
    let bad = |what: String| CaptureError::invalid(format!("etlify: capture trigger {what}"));
    let args = trigger.extra_args().map_err(|e| bad(e.to_string()))?;
    let (mapping_id, key_name, watch) = match args.as_slice() {
        [m, k, rest @ ..] => (
            m.parse::<i32>()
                .map_err(|_| bad(format!("has a bad mapping id {m:?}")))?,
            k.as_str(),
            rest,
        ),
        _ => {
            return Err(bad(
                "needs (mapping id, key column, watched columns…)".into()
            ))
        }
    };
    let td = trigger.trigger_data();
    // SAFETY: a trigger's relation is valid for the duration of the call.
    let mut sink = Sink::new(mapping_id, unsafe { (*td.tg_relation).rd_id });

    if trigger.event().fired_by_truncate() {
        // every record the CRM may hold becomes a delete (etlify._absorb)
        sink.truncated = true;
        sink.flush()?;
        crate::wake::_wake();
        return Ok(());
    }

    // SAFETY: an AFTER trigger's relation and transition tables are valid for the
    // duration of the call.
    unsafe {
        let tupdesc = (*td.tg_relation).rd_att;
        let key = column(tupdesc, key_name)?;
        let key_type = attribute(tupdesc, (key.attno - 1) as usize).atttypid;
        let event = trigger.event();
        let watched = if event.fired_by_update() {
            if watch.is_empty() {
                all_columns(tupdesc)
            } else {
                watch
                    .iter()
                    .map(|name| column(tupdesc, name))
                    .collect::<Result<Vec<_>, _>>()?
            }
        } else {
            Vec::new()
        };
        // keys are spelled the same whatever the writer's settings (keys.rs)
        crate::keys::spelled(key_type, || {
            if td.tg_event & pg_sys::TRIGGER_EVENT_ROW != 0 {
                // a row trigger (etlify.capture_on_subscriber): one row at a time
                let text = KeyText::new(tupdesc, &key);
                let row = RowSlot::of(td.tg_trigtuple, tupdesc);
                if event.fired_by_update() {
                    let new = RowSlot::of(td.tg_newtuple, tupdesc);
                    updated(row.0, new.0, &key, &watched, &text, &mut sink)
                } else {
                    text.of(row.0, &key).map_or(Ok(()), |k| sink.key(k))
                }
            } else if event.fired_by_insert() {
                keys_of(td.tg_newtable, tupdesc, &key, &mut sink)
            } else if event.fired_by_delete() {
                keys_of(td.tg_oldtable, tupdesc, &key, &mut sink)
            } else {
                changed_keys(
                    td.tg_oldtable,
                    td.tg_newtable,
                    tupdesc,
                    &key,
                    &watched,
                    &mut sink,
                )
            }
        })?;
    }
    sink.flush()?;
    if sink.wrote {
        crate::wake::_wake();
    }
    Ok(())
}

/// What one statement changed, appended to etlify.changes in rows of at most
/// FLUSH_KEYS keys.
pub(crate) struct Sink {
    mapping_id: i32,
    /// The table whose trigger fired (etlify._absorb checks it against the
    /// mapping's source before applying moves).
    rel: pg_sys::Oid,
    keys: Vec<String>,
    /// Primary-key moves as pairs: old, new, old, new, …
    moves: Vec<String>,
    /// Every record of the mapping may have changed: the drain re-checks them all.
    pub(crate) truncated: bool,
    pub(crate) wrote: bool,
}

impl Sink {
    pub(crate) fn new(mapping_id: i32, rel: pg_sys::Oid) -> Sink {
        Sink {
            mapping_id,
            rel,
            keys: Vec::new(),
            moves: Vec::new(),
            truncated: false,
            wrote: false,
        }
    }

    pub(crate) fn key(&mut self, key: String) -> Result<(), CaptureError> {
        self.keys.push(key);
        if self.keys.len() >= FLUSH_KEYS {
            // the array datums and the tuple of a flush in the middle of a statement
            // are freed right after, in a context of their own: the trigger call's
            // context keeps everything until the call ends (about 60 bytes per key
            // of a bulk statement). The last flush needs none: that context is
            // reset after the call.
            let mut context = PgMemoryContexts::new("etlify capture");
            // SAFETY: the flush allocates nothing that outlives it.
            unsafe { context.switch_to(|_| self.flush()) }?;
        }
        Ok(())
    }

    /// A row whose primary key changed: both keys are dirty, and the record (its
    /// CRM object) moves from the old key to the new one.
    fn moved(&mut self, old: String, new: String) -> Result<(), CaptureError> {
        self.moves.push(old.clone());
        self.moves.push(new.clone());
        self.keys.push(old);
        self.key(new)
    }

    pub(crate) fn flush(&mut self) -> Result<(), CaptureError> {
        if self.keys.is_empty() && !self.truncated {
            return Ok(());
        }
        let keys = std::mem::take(&mut self.keys);
        let moves = (!self.moves.is_empty()).then(|| std::mem::take(&mut self.moves));
        append(self.mapping_id, self.rel, keys, moves, self.truncated)?;
        self.truncated = false;
        self.wrote = true;
        Ok(())
    }
}

/// Appends one row to etlify.changes. The table has no index, no trigger and no
/// constraint but NOT NULL, so the row is written straight into the heap (the
/// executor behind SPI cost writers more than the insert itself); no privilege is
/// checked, so writers need none on etlify's tables. If the table ever has an
/// index or a trigger, or another shape, the kept SPI plan does it as the table's
/// owner. Moves and truncates are numbered (etlify.change_seq): their order matters.
fn append(
    mapping_id: i32,
    rel_id: pg_sys::Oid,
    keys: Vec<String>,
    moves: Option<Vec<String>>,
    truncated: bool,
) -> Result<(), CaptureError> {
    // SAFETY: called from a trigger, inside a transaction, on the main thread.
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"etlify".as_ptr(), true);
        let relid = pg_sys::get_relname_relid(c"changes".as_ptr(), schema);
        if relid == pg_sys::InvalidOid {
            return Err(CaptureError::internal(
                "etlify: capture trigger cannot find etlify.changes; is the extension installed?",
            ));
        }
        let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
        let rel = pg_sys::table_open(relid, lock);
        let form = &*(*rel).rd_rel;
        let owner = form.relowner;
        let seq = (moves.is_some() || truncated)
            .then(|| crate::restricted::as_owner(owner, || next_change_seq(schema)));
        let att = |i: usize| attribute((*rel).rd_att, i).atttypid;
        let plain = !form.relhasindex
            && !form.relhastriggers
            && (*(*rel).rd_att).natts == 7
            && (0..7).map(att).eq([
                pg_sys::INT4OID,
                pg_sys::TEXTARRAYOID,
                pg_sys::TIMESTAMPTZOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::BOOLOID,
                pg_sys::INT8OID,
                pg_sys::REGCLASSOID,
            ]);
        if plain {
            let mut values = [
                pg_sys::Datum::from(mapping_id),
                keys.into_datum().expect("an array of keys is not NULL"),
                pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp()),
                moves
                    .clone()
                    .and_then(|m| m.into_datum())
                    .unwrap_or(pg_sys::Datum::from(0)),
                pg_sys::Datum::from(truncated),
                pg_sys::Datum::from(seq.unwrap_or(0)),
                pg_sys::Datum::from(rel_id),
            ];
            let mut nulls = [
                false,
                false,
                false,
                moves.is_none(),
                false,
                seq.is_none(),
                false,
            ];
            let tuple =
                pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::simple_heap_insert(rel, tuple);
            pg_sys::heap_freetuple(tuple);
            pg_sys::table_close(rel, lock);
            return Ok(());
        }
        pg_sys::table_close(rel, lock);
        crate::restricted::as_owner(owner, || {
            append_spi(mapping_id, rel_id, keys, moves, truncated, seq)
        })
    }
}

/// nextval('etlify.change_seq').
unsafe fn next_change_seq(schema: pg_sys::Oid) -> i64 {
    let relid = pg_sys::get_relname_relid(c"change_seq".as_ptr(), schema);
    pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[relid.into_datum()])
        .expect("nextval returns a value")
}

/// The general way: INSERT through a plan kept for the session (run as the owner
/// of etlify.changes, see append).
fn append_spi(
    mapping_id: i32,
    rel: pg_sys::Oid,
    keys: Vec<String>,
    moves: Option<Vec<String>>,
    truncated: bool,
    seq: Option<i64>,
) -> Result<(), CaptureError> {
    let err = |e: pgrx::spi::SpiError| {
        CaptureError::internal(format!(
            "etlify: capture trigger cannot record changes: {e}"
        ))
    };
    Spi::connect_mut(|client| {
        APPEND.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                let stmt = client
                    .prepare_mut(
                        "INSERT INTO etlify.changes (mapping_id, keys, moves, truncated, seq, rel) \
                         VALUES ($1, $2, $3, $4, $5, $6::oid::regclass)",
                        &[
                            PgBuiltInOids::INT4OID.into(),
                            PgBuiltInOids::TEXTARRAYOID.into(),
                            PgBuiltInOids::TEXTARRAYOID.into(),
                            PgBuiltInOids::BOOLOID.into(),
                            PgBuiltInOids::INT8OID.into(),
                            PgBuiltInOids::OIDOID.into(),
                        ],
                    )
                    .map_err(err)?;
                *slot = Some(stmt.keep());
            }
            let stmt = slot.as_ref().expect("prepared above");
            client
                .update(
                    stmt,
                    None,
                    &[
                        mapping_id.into(),
                        keys.into(),
                        moves.into(),
                        truncated.into(),
                        seq.into(),
                        rel.into(),
                    ],
                )
                .map(drop)
                .map_err(err)
        })
    })
}

pub(crate) unsafe fn column(
    tupdesc: pg_sys::TupleDesc,
    name: &str,
) -> Result<Column, CaptureError> {
    (0..(*tupdesc).natts as usize)
        .map(|i| attribute(tupdesc, i))
        .find(|att| {
            !att.attisdropped
                && CStr::from_ptr(att.attname.data.as_ptr()).to_bytes() == name.as_bytes()
        })
        .map(Column::of)
        .ok_or_else(|| {
            CaptureError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("etlify: capture trigger cannot find column \"{name}\"; was it renamed or dropped?"),
            )
            .with_hint("Declare the mapping again: etlify.unsync_table(), then etlify.sync_table().")
        })
}

pub(crate) unsafe fn all_columns(tupdesc: pg_sys::TupleDesc) -> Vec<Column> {
    (0..(*tupdesc).natts as usize)
        .map(|i| attribute(tupdesc, i))
        .filter(|att| !att.attisdropped)
        .map(Column::of)
        .collect()
}

/// Reads a transition table row by row, with a read pointer of its own (other
/// triggers of the statement read the same store).
struct Reader {
    store: *mut pg_sys::Tuplestorestate,
    ptr: i32,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Reader {
    unsafe fn open(
        store: *mut pg_sys::Tuplestorestate,
        tupdesc: pg_sys::TupleDesc,
    ) -> Option<Reader> {
        if store.is_null() {
            return None;
        }
        let ptr = pg_sys::tuplestore_alloc_read_pointer(store, 0);
        pg_sys::tuplestore_select_read_pointer(store, ptr);
        pg_sys::tuplestore_rescan(store);
        let slot = pg_sys::MakeSingleTupleTableSlot(tupdesc, &pg_sys::TTSOpsMinimalTuple);
        Some(Reader { store, ptr, slot })
    }

    /// The next row; valid until the next call.
    unsafe fn next(&mut self) -> Option<*mut pg_sys::TupleTableSlot> {
        pg_sys::tuplestore_select_read_pointer(self.store, self.ptr);
        pg_sys::tuplestore_gettupleslot(self.store, true, false, self.slot).then_some(self.slot)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // SAFETY: made by MakeSingleTupleTableSlot in open(), dropped once.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.slot) };
    }
}

/// Walks a transition table, calling `f` with each row in a slot.
pub(crate) unsafe fn each_row(
    store: *mut pg_sys::Tuplestorestate,
    tupdesc: pg_sys::TupleDesc,
    mut f: impl FnMut(*mut pg_sys::TupleTableSlot),
) {
    if let Some(mut r) = Reader::open(store, tupdesc) {
        while let Some(slot) = r.next() {
            f(slot);
        }
    }
}

pub(crate) unsafe fn attr(slot: *mut pg_sys::TupleTableSlot, attno: i32) -> Option<pg_sys::Datum> {
    let mut isnull = false;
    let d = pg_sys::slot_getattr(slot, attno, &mut isnull);
    (!isnull).then_some(d)
}

/// The key's text form, read from a slot (spelled by keys.rs, under the canonical
/// settings where the type needs them: see capture()).
pub(crate) struct KeyText(crate::keys::Output);

impl KeyText {
    pub(crate) unsafe fn new(tupdesc: pg_sys::TupleDesc, key: &Column) -> Self {
        let att = attribute(tupdesc, (key.attno - 1) as usize);
        KeyText(crate::keys::Output::of_type(att.atttypid))
    }

    unsafe fn of(&self, slot: *mut pg_sys::TupleTableSlot, key: &Column) -> Option<String> {
        attr(slot, key.attno).map(|d| self.spell(d))
    }

    pub(crate) unsafe fn spell(&self, d: pg_sys::Datum) -> String {
        self.0.spell(d)
    }
}

unsafe fn keys_of(
    store: *mut pg_sys::Tuplestorestate,
    tupdesc: pg_sys::TupleDesc,
    key: &Column,
    sink: &mut Sink,
) -> Result<(), CaptureError> {
    let text = KeyText::new(tupdesc, key);
    let mut result = Ok(());
    each_row(store, tupdesc, |slot| {
        if let (Ok(()), Some(k)) = (&result, text.of(slot, key)) {
            result = sink.key(k);
        }
    });
    result
}

/// Keys of an UPDATE whose watched values changed, and the rows whose primary key
/// changed (a move: both keys are dirty, and the record goes with the row).
unsafe fn changed_keys(
    old: *mut pg_sys::Tuplestorestate,
    new: *mut pg_sys::Tuplestorestate,
    tupdesc: pg_sys::TupleDesc,
    key: &Column,
    watched: &[Column],
    sink: &mut Sink,
) -> Result<(), CaptureError> {
    let text = KeyText::new(tupdesc, key);
    // a pair whose key differs is a move
    let paired = walk_pairs(old, new, tupdesc, |os, ns| {
        updated(os, ns, key, watched, &text, sink)
    })?;
    if paired {
        return Ok(());
    }
    // the two tables do not pair up: dirty every key that appears or disappears,
    // without moves (never seen for an UPDATE; kept as the safe way)
    let keys = if key.byval {
        // int, bigint, …: match rows by the key's datum and spell out only the keys
        // that changed (most rows of a bulk statement did not)
        let ident = |slot| attr(slot, key.attno).map(|d| d.value() as u64);
        let spell = |k: u64| text.spell(pg_sys::Datum::from(k as usize));
        diff(old, new, tupdesc, watched, ident, spell)
    } else {
        diff(old, new, tupdesc, watched, |slot| text.of(slot, key), |k| k)
    };
    keys.into_iter().try_for_each(|k| sink.key(k))
}

/// An UPDATE stores each row's old and new version together, so the two tables
/// list the same rows in the same order: calls `f` pair by pair, in place, no
/// allocation. False when the two tables do not have the same number of rows.
pub(crate) unsafe fn walk_pairs<E>(
    old: *mut pg_sys::Tuplestorestate,
    new: *mut pg_sys::Tuplestorestate,
    tupdesc: pg_sys::TupleDesc,
    mut f: impl FnMut(*mut pg_sys::TupleTableSlot, *mut pg_sys::TupleTableSlot) -> Result<(), E>,
) -> Result<bool, E> {
    let (Some(mut o), Some(mut n)) = (Reader::open(old, tupdesc), Reader::open(new, tupdesc))
    else {
        return Ok(false);
    };
    loop {
        match (o.next(), n.next()) {
            (None, None) => return Ok(true),
            (Some(os), Some(ns)) => f(os, ns)?,
            _ => return Ok(false),
        }
    }
}

/// One updated row, old and new version: its key if a watched value changed, a
/// move if its key changed.
unsafe fn updated(
    old: *mut pg_sys::TupleTableSlot,
    new: *mut pg_sys::TupleTableSlot,
    key: &Column,
    watched: &[Column],
    text: &KeyText,
    sink: &mut Sink,
) -> Result<(), CaptureError> {
    if same_value(old, new, key) {
        if !watched.iter().all(|c| same_value(old, new, c)) {
            if let Some(k) = text.of(new, key) {
                sink.key(k)?;
            }
        }
        return Ok(());
    }
    match (text.of(old, key), text.of(new, key)) {
        (Some(a), Some(b)) => sink.moved(a, b),
        (a, b) => a.into_iter().chain(b).try_for_each(|k| sink.key(k)),
    }
}

/// A row trigger's tuple in a slot of its own, for the functions above.
struct RowSlot(*mut pg_sys::TupleTableSlot);

impl RowSlot {
    unsafe fn of(tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> RowSlot {
        let slot = pg_sys::MakeSingleTupleTableSlot(tupdesc, &pg_sys::TTSOpsHeapTuple);
        pg_sys::ExecStoreHeapTuple(tuple, slot, false);
        RowSlot(slot)
    }
}

impl Drop for RowSlot {
    fn drop(&mut self) {
        // SAFETY: made by MakeSingleTupleTableSlot in of(), dropped once; the tuple
        // belongs to the trigger manager (stored with shouldFree = false).
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.0) };
    }
}

/// Whether a column holds the same value in two rows: equal binary images.
pub(crate) unsafe fn same_value(
    a: *mut pg_sys::TupleTableSlot,
    b: *mut pg_sys::TupleTableSlot,
    c: &Column,
) -> bool {
    match (attr(a, c.attno), attr(b, c.attno)) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            // an unchanged toasted value keeps its toast pointer: equal without
            // fetching it
            if c.len == -1 {
                let raw = |d: pg_sys::Datum| {
                    let p = d.cast_mut_ptr::<pg_sys::varlena>();
                    std::slice::from_raw_parts(p.cast::<u8>(), pgrx::varlena::varsize_any(p))
                };
                if raw(x) == raw(y) {
                    return true;
                }
            }
            with_image(x, c, |ix| with_image(y, c, |iy| ix == iy))
        }
        _ => false,
    }
}

/// Calls `f` with a value's binary image: equal images mean equal values.
/// (Different images of equal values, e.g. 1.0 and 1.00, only cost a check that
/// finds the payload unchanged.) Toasted values are compared by content.
unsafe fn with_image<R>(d: pg_sys::Datum, c: &Column, f: impl FnOnce(&[u8]) -> R) -> R {
    if c.byval {
        f(&(d.value() as u64).to_ne_bytes())
    } else if c.len > 0 {
        f(std::slice::from_raw_parts(
            d.cast_mut_ptr::<u8>(),
            c.len as usize,
        ))
    } else if c.len == -1 {
        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
        let r = f(pgrx::varlena::varlena_to_byte_slice(v));
        if v != d.cast_mut_ptr() {
            pg_sys::pfree(v.cast());
        }
        r
    } else {
        f(CStr::from_ptr(d.cast_mut_ptr()).to_bytes())
    }
}

/// Old rows by identity → the images of their watched values (one buffer per row,
/// copied out: the slot is reused); then each new row against its old one.
unsafe fn diff<K: std::hash::Hash + Eq>(
    old: *mut pg_sys::Tuplestorestate,
    new: *mut pg_sys::Tuplestorestate,
    tupdesc: pg_sys::TupleDesc,
    watched: &[Column],
    ident: impl Fn(*mut pg_sys::TupleTableSlot) -> Option<K>,
    spell: impl Fn(K) -> String,
) -> Vec<String> {
    let mut before: FxHashMap<K, Vec<u8>> = FxHashMap::default();
    each_row(old, tupdesc, |slot| {
        if let Some(k) = ident(slot) {
            let mut images = Vec::new();
            for c in watched {
                push_image(&mut images, slot, c);
            }
            before.insert(k, images);
        }
    });
    let mut keys = Vec::new();
    let mut images = Vec::new();
    each_row(new, tupdesc, |slot| {
        let Some(k) = ident(slot) else { return };
        match before.remove(&k) {
            Some(old_images) => {
                images.clear();
                for c in watched {
                    push_image(&mut images, slot, c);
                }
                if images != old_images {
                    keys.push(spell(k));
                }
            }
            None => keys.push(spell(k)),
        }
    });
    // keys that no longer exist after the statement
    keys.extend(before.into_keys().map(spell));
    keys
}

/// Appends a value's binary image to `out`, length-prefixed (NULL: a marker).
unsafe fn push_image(out: &mut Vec<u8>, slot: *mut pg_sys::TupleTableSlot, c: &Column) {
    match attr(slot, c.attno) {
        None => out.extend_from_slice(&u32::MAX.to_ne_bytes()),
        Some(d) => with_image(d, c, |bytes| {
            out.extend_from_slice(&(bytes.len() as u32).to_ne_bytes());
            out.extend_from_slice(bytes);
        }),
    }
}
