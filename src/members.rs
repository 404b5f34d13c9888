//! The capture trigger of a mapping's members (sync groups, sql/dependencies.sql).
//!
//! `CREATE TRIGGER … AFTER {INSERT|UPDATE|DELETE|TRUNCATE} ON <member> … FOR EACH
//! STATEMENT EXECUTE FUNCTION etlify._capture_member('<mapping>', '<position>',
//! '<role>')`. Per statement it runs one query over the statement's transition
//! tables (etlify._member_sql: a join for belongs_to and through, the user's query
//! for the escape hatch), which answers the keys of the source records the
//! changed rows feed, and appends them to etlify.changes like the source's own
//! capture does. A company renamed under 100,000 users is one such query.
//!
//! The query holds the user's SQL (`where`, `keys`), and reads the source or the
//! join table: it runs as the mapping's owner, security-restricted, with the
//! mapping's search_path, and spells keys under the canonical settings (keys.rs).
//! If it fails, the writer's statement still succeeds: every record of the
//! mapping is re-checked instead, and a warning says why.

use crate::capture::Sink;
use crate::error::Error;
use crate::restricted;
use pgrx::prelude::*;
use pgrx::PgTrigger;
use rustc_hash::FxHashSet;
use std::cell::RefCell;
use std::collections::HashMap;

/// What a member's trigger runs for one event.
#[derive(Clone)]
struct Plan {
    owner: pg_sys::Oid,
    search_path: String,
    sql: String,
    /// The changed rows hold the source keys in this column: read them from the
    /// transition tables, no query (etlify._member_plan says when).
    direct: Option<Direct>,
}

#[derive(Clone)]
struct Direct {
    column: String,
    /// The columns whose change counts for an UPDATE; None: every column.
    watch: Option<Vec<String>>,
}

type PlanKey = (i32, i32, String, &'static str);

thread_local! {
    /// Plans by (mapping, position, role, event), with the count of invalidation
    /// messages this backend had processed when they were built: any catalog
    /// change since (a rename, a new column, a new declaration) rebuilds them.
    static PLANS: RefCell<HashMap<PlanKey, (u64, Option<Plan>)>> = RefCell::new(HashMap::new());
}

#[pg_trigger]
fn _capture_member<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, Error> {
    capture(trigger).unwrap_or_else(|e| e.raise());
    Ok(None)
}

fn capture(trigger: &PgTrigger<'_>) -> Result<(), Error> {
    let bad = |what: String| Error::invalid(format!("etlify: member capture trigger {what}"));
    let args = trigger.extra_args().map_err(|e| bad(e.to_string()))?;
    let [mapping, position, role] = args.as_slice() else {
        return Err(bad("needs (mapping id, position, role)".into()));
    };
    let mapping_id: i32 = mapping
        .parse()
        .map_err(|_| bad(format!("has a bad mapping id {mapping:?}")))?;
    let position: i32 = position
        .parse()
        .map_err(|_| bad(format!("has a bad position {position:?}")))?;
    let event = trigger.event();
    // SAFETY: a trigger's relation is valid for the duration of the call.
    let mut sink = Sink::new(mapping_id, unsafe {
        (*trigger.trigger_data().tg_relation).rd_id
    });
    if event.fired_by_truncate() {
        // which records had members is gone with the rows: re-check them all
        sink.truncated = true;
        sink.flush()?;
        crate::wake::_wake();
        return Ok(());
    }
    let event = if event.fired_by_insert() {
        "INSERT"
    } else if event.fired_by_update() {
        "UPDATE"
    } else {
        "DELETE"
    };
    let Some(plan) = plan(mapping_id, position, role, event)? else {
        // the mapping is gone (its trigger goes with unsync_table)
        return Ok(());
    };
    let td: *const pg_sys::TriggerData = trigger.trigger_data();
    let direct = match &plan.direct {
        // SAFETY: an AFTER statement trigger's relation and transition tables are
        // valid for the call
        Some(d) => unsafe { direct_keys(td, d, event)? },
        None => None,
    };
    let keys = match direct {
        Some(keys) => Ok(keys),
        None => {
            let path = restricted::owner_search_path(&plan.search_path);
            let mut settings = vec![(c"search_path", path.as_str())];
            settings.extend(crate::keys::CANONICAL);
            restricted::as_role(plan.owner, &settings, || {
                restricted::in_subtransaction(|| source_keys(td, &plan.sql))
            })
        }
    };
    match keys {
        Ok(keys) => {
            for k in keys {
                sink.key(k)?;
            }
        }
        Err(e) => {
            warning!(
                "etlify: cannot tell which records of mapping {mapping_id} this change feeds \
                 (dependency {position}): {e}; all of its records will be re-checked"
            );
            sink.truncated = true;
        }
    }
    sink.flush()?;
    if sink.wrote {
        crate::wake::_wake();
    }
    Ok(())
}

/// The keys the statement's changed rows feed, read through its transition tables.
fn source_keys(td: *const pg_sys::TriggerData, sql: &str) -> Vec<String> {
    Spi::connect(|client| {
        // SAFETY: an AFTER trigger's data is valid for the call; registering it
        // makes the transition tables visible to this SPI connection by name
        unsafe { pg_sys::SPI_register_trigger_data(td.cast_mut()) };
        client
            .select(sql, None, &[])
            .and_then(|t| t.first().get::<Vec<String>>(1))
            .unwrap_or_else(|e| pgrx::error!("{e}"))
            .unwrap_or_default()
    })
}

fn plan(
    mapping_id: i32,
    position: i32,
    role: &str,
    event: &'static str,
) -> Result<Option<Plan>, Error> {
    // SAFETY: plain backend globals, on the main thread inside a transaction
    let generation = unsafe {
        pg_sys::AcceptInvalidationMessages();
        pg_sys::SharedInvalidMessageCounter
    };
    let key = (mapping_id, position, role.to_string(), event);
    if let Some(p) = PLANS.with(|c| {
        c.borrow()
            .get(&key)
            .filter(|(g, _)| *g == generation)
            .map(|(_, p)| p.clone())
    }) {
        return Ok(p);
    }
    let built = Spi::connect(|client| {
        let row = client
            .select(
                "SELECT owner, search_path, sql, direct_col::text, direct_watch \
                 FROM etlify._member_plan($1, $2, $3, $4)",
                None,
                &[
                    mapping_id.into(),
                    position.into(),
                    role.into(),
                    event.into(),
                ],
            )?
            .first();
        Ok::<_, pgrx::spi::SpiError>(
            match (
                row.get::<pg_sys::Oid>(1)?,
                row.get::<String>(2)?,
                row.get::<String>(3)?,
            ) {
                (Some(owner), Some(search_path), Some(sql)) => Some(Plan {
                    owner,
                    search_path,
                    sql,
                    direct: row.get::<String>(4)?.map(|column| Direct {
                        column,
                        watch: row.get::<Vec<String>>(5).ok().flatten(),
                    }),
                }),
                _ => None,
            },
        )
    })
    .map_err(|e| Error::internal(format!("etlify: member capture trigger: {e}")))?;
    PLANS.with(|c| c.borrow_mut().insert(key, (generation, built.clone())));
    Ok(built)
}

/// The source keys of a statement's changed rows, read from the transition tables
/// when they hold the keys in a column (`Direct`): an inserted or deleted row's
/// value, an updated row's old value if a counted column changed, and its new one
/// if that column did. None when the tables do not pair up as an UPDATE's do (the
/// query then decides).
///
/// # Safety
/// `td` is an AFTER statement trigger's data, valid for the call.
unsafe fn direct_keys(
    td: *const pg_sys::TriggerData,
    direct: &Direct,
    event: &str,
) -> Result<Option<Vec<String>>, Error> {
    use crate::capture::{all_columns, attr, column, each_row, same_value, walk_pairs, KeyText};
    let td = &*td;
    let tupdesc = (*td.tg_relation).rd_att;
    let col = column(tupdesc, &direct.column)?;
    let col_type = crate::capture::attribute(tupdesc, (col.attno - 1) as usize).atttypid;
    let text = KeyText::new(tupdesc, &col);
    // a bulk statement names few records many times: each value is spelled once
    let mut by_value: FxHashSet<u64> = FxHashSet::default();
    let mut spelled: FxHashSet<String> = FxHashSet::default();
    let mut take = |slot: *mut pg_sys::TupleTableSlot| {
        if let Some(d) = attr(slot, col.attno) {
            if col.byval {
                if by_value.insert(d.value() as u64) {
                    spelled.insert(text.spell(d));
                }
            } else {
                spelled.insert(text.spell(d));
            }
        }
    };
    let complete = crate::keys::spelled(col_type, || match event {
        "INSERT" => {
            each_row(td.tg_newtable, tupdesc, &mut take);
            Ok::<_, Error>(true)
        }
        "DELETE" => {
            each_row(td.tg_oldtable, tupdesc, &mut take);
            Ok(true)
        }
        _ => {
            let counted = match &direct.watch {
                None => all_columns(tupdesc),
                Some(names) => names
                    .iter()
                    .map(|n| column(tupdesc, n))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            walk_pairs(td.tg_oldtable, td.tg_newtable, tupdesc, |os, ns| {
                if !counted.iter().all(|c| same_value(os, ns, c)) {
                    take(os);
                    if !same_value(os, ns, &col) {
                        take(ns);
                    }
                }
                Ok(())
            })
        }
    })?;
    Ok(complete.then(|| spelled.into_iter().collect()))
}
