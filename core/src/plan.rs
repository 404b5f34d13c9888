//! What to do with each claimed record, decided from the row as it is now
//! (reconcile to the current row, not to the event) and the sync state.
//! Pure: the extension feeds it rows from `etlify._claim` and sends what it says.

use crate::adapter::{Delete, Upsert};
use crate::digest::digest;
use serde_json::Value;

/// One row of `etlify._claim`.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    pub key: String,
    /// The queue's change number when claimed; None for a key that was not dirty.
    pub seq: Option<i64>,
    /// Sync state before this attempt (None: never attempted).
    pub state: Option<String>,
    pub crm_id: Option<String>,
    pub digest: Option<Vec<u8>>,
    /// The source row exists.
    pub present: bool,
    /// sync_if holds for the row.
    pub included: bool,
    pub payload: Option<Value>,
    /// The serializer raised an error for this row.
    pub error: Option<String>,
    /// Another record, not in this claim, holds the same CRM object.
    pub shared: bool,
    /// A record it depends on has no CRM id yet (sync_dependencies).
    pub waits: Option<Wait>,
    /// Its associations with the records it references (not planned here: the
    /// engine takes them before planning, see crate::links).
    pub links: Vec<crate::links::LinkState>,
    /// An earlier upsert of this key by id_property that was never answered
    /// (crate::unanswered).
    pub unanswered: Option<crate::unanswered::Unanswered>,
}

/// What a buffered record waits for: the referenced key of its sync dependency at
/// `position`, and why that record has no CRM id (for `last_error`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wait {
    pub position: i32,
    pub key: String,
    pub reason: String,
}

/// What became of a record: the one list of outcomes. `as_str` gives the words
/// `etlify._record` and the views understand, `answer` what `sync()`/`delete()`
/// return, `counted_as` the key of `drain()`'s counts, `code` the byte that
/// carries it through shared memory (src/requests.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Synced,
    NotModified,
    Skipped,
    Deleted,
    Noop,
    Disabled,
    Failed,
    /// The CRM could not take it now; the record stays pending.
    Retry,
    /// The CRM no longer knows the stored id: forgotten, upserted again.
    Stale,
    /// Waiting for a record it depends on to get a CRM id.
    Buffered,
}

impl Verdict {
    /// Every verdict; its position is its `code`.
    pub const ALL: [Verdict; 10] = [
        Verdict::Synced,
        Verdict::NotModified,
        Verdict::Skipped,
        Verdict::Deleted,
        Verdict::Noop,
        Verdict::Disabled,
        Verdict::Failed,
        Verdict::Retry,
        Verdict::Stale,
        Verdict::Buffered,
    ];

    /// The keys of `drain()`'s counts, in the order they are shown.
    pub const COUNTED: [Verdict; 9] = [
        Verdict::Synced,
        Verdict::NotModified,
        Verdict::Skipped,
        Verdict::Deleted,
        Verdict::Noop,
        Verdict::Failed,
        Verdict::Retry,
        Verdict::Disabled,
        Verdict::Buffered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Synced => "synced",
            Verdict::NotModified => "not_modified",
            Verdict::Skipped => "skipped",
            Verdict::Deleted => "deleted",
            Verdict::Noop => "noop",
            Verdict::Disabled => "disabled",
            Verdict::Failed => "failed",
            Verdict::Retry => "retry",
            Verdict::Stale => "stale",
            Verdict::Buffered => "buffered",
        }
    }

    /// The result word of `sync()`/`delete()` (the contract's list): a record the
    /// CRM could not take now stays pending, and the call answers `failed`.
    pub fn answer(self) -> &'static str {
        match self {
            Verdict::Retry | Verdict::Stale => "failed",
            v => v.as_str(),
        }
    }

    /// The count of `drain()` it adds to: a stale record is re-sent at once by
    /// the same drain, and counts as retried.
    pub fn counted_as(self) -> Verdict {
        match self {
            Verdict::Stale => Verdict::Retry,
            v => v,
        }
    }

    pub fn code(self) -> u8 {
        Verdict::ALL.iter().position(|v| *v == self).unwrap_or(0) as u8
    }

    pub fn from_code(code: u8) -> Option<Verdict> {
        Verdict::ALL.get(code as usize).copied()
    }
}

/// A record's result, as `etlify._record` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub key: String,
    pub seq: Option<i64>,
    pub verdict: Verdict,
    pub crm_id: Option<String>,
    pub digest: Option<[u8; 32]>,
    pub error: Option<String>,
    pub retry_ms: Option<u64>,
    pub waits: Option<Wait>,
    /// The CRM answered this record's upsert by id_property with a refusal: it
    /// made no object, and the note of an unanswered upsert goes
    /// (crate::unanswered). (A success records the CRM id, which does the same.)
    pub refused: bool,
}

impl Resolved {
    pub fn new(c: &Claimed, verdict: Verdict) -> Self {
        Resolved::of(&c.key, c.seq, verdict)
    }

    /// A verdict for a key (and the change number it was claimed at), nothing else.
    pub fn of(key: &str, seq: Option<i64>, verdict: Verdict) -> Self {
        Resolved {
            key: key.to_string(),
            seq,
            verdict,
            crm_id: None,
            digest: None,
            error: None,
            retry_ms: None,
            waits: None,
            refused: false,
        }
    }

    pub fn failed(c: &Claimed, error: impl Into<String>) -> Self {
        Resolved {
            error: Some(error.into()),
            ..Resolved::new(c, Verdict::Failed)
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "key": self.key,
            "seq": self.seq,
            "outcome": self.verdict.as_str(),
            "crm_id": self.crm_id,
            "digest": self.digest.map(|d| hex(&d)),
            "error": self.error,
            "retry_ms": self.retry_ms,
            "waits_position": self.waits.as_ref().map(|w| w.position),
            "waits_key": self.waits.as_ref().map(|w| &w.key),
            "refused": self.refused,
        })
    }
}

/// An upsert to send, with what to record once it succeeds.
#[derive(Debug, Clone)]
pub struct PlannedUpsert {
    pub item: Upsert,
    pub seq: Option<i64>,
    pub digest: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct PlannedDelete {
    pub item: Delete,
    pub seq: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub done: Vec<Resolved>,
    pub upserts: Vec<PlannedUpsert>,
    pub deletes: Vec<PlannedDelete>,
}

/// How the caller wants the records handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Bring the CRM in line with the row (drain, sync).
    Reconcile,
    /// Remove the CRM object whatever the row says (etlify.delete).
    Delete,
}

pub fn plan(rows: Vec<Claimed>, id_property: &str, crm_enabled: bool, intent: Intent) -> Plan {
    let mut out = Plan::default();
    // CRM objects that a row of this batch that exists (or an earlier delete of
    // this batch) already accounts for: the object of a row that exists is never
    // archived, and an object is archived once.
    let kept: std::collections::HashSet<String> = rows
        .iter()
        .filter(|c| c.present && intent == Intent::Reconcile)
        .filter_map(|c| c.crm_id.clone())
        .collect();
    let mut archived = std::collections::HashSet::new();
    for mut c in rows {
        if !crm_enabled {
            // enabled => false: as if every call succeeded, nothing sent, no sync state
            out.done.push(Resolved::new(&c, Verdict::Disabled));
            continue;
        }
        if intent == Intent::Delete || !c.present {
            match &c.crm_id {
                // the object now belongs to another record (a key that moved, or
                // rows that share the id property): this key no longer has one
                Some(id)
                    if intent == Intent::Reconcile
                        && (c.shared || kept.contains(id) || !archived.insert(id.clone())) =>
                {
                    out.done.push(Resolved::new(&c, Verdict::Deleted))
                }
                Some(id) => out.deletes.push(PlannedDelete {
                    item: Delete {
                        key: c.key.clone(),
                        crm_id: id.clone(),
                    },
                    seq: c.seq,
                }),
                None => out.done.push(Resolved::new(&c, Verdict::Noop)),
            }
            continue;
        }
        if !c.included {
            out.done.push(Resolved::new(&c, Verdict::Skipped));
            continue;
        }
        // held back before anything else is looked at: its payload may well
        // depend on the id it waits for
        if let Some(w) = c.waits.take() {
            out.done.push(Resolved {
                error: Some(w.reason.clone()),
                waits: Some(w),
                ..Resolved::new(&c, Verdict::Buffered)
            });
            continue;
        }
        if let Some(e) = &c.error {
            out.done.push(Resolved::failed(&c, e.clone()));
            continue;
        }
        // taken, not cloned: a re-check of a million unchanged rows builds no copies
        let payload = match c.payload.take() {
            Some(Value::Object(map)) => Value::Object(map),
            None | Some(Value::Null) => {
                out.done
                    .push(Resolved::failed(&c, "serializer returned NULL"));
                continue;
            }
            Some(other) => {
                out.done.push(Resolved::failed(
                    &c,
                    format!(
                        "serializer returned a JSON {}, expected an object",
                        json_kind(&other)
                    ),
                ));
                continue;
            }
        };
        let id_value = match crate::unanswered::id_value(&payload, id_property) {
            Some(v) => v,
            None => {
                out.done.push(Resolved::failed(
                    &c,
                    format!(
                        "payload has no value for \"{id_property}\", the mapping's id_property"
                    ),
                ));
                continue;
            }
        };
        let d = digest(&payload);
        // The digest is written only when the CRM accepted the payload, so an equal
        // digest with a known crm_id means the CRM already holds exactly this.
        if c.crm_id.is_some() && c.digest.as_deref() == Some(&d[..]) {
            out.done.push(Resolved::new(&c, Verdict::NotModified));
            continue;
        }
        let Value::Object(properties) = payload else {
            unreachable!("matched as an object above")
        };
        out.upserts.push(PlannedUpsert {
            item: Upsert {
                key: c.key.clone(),
                crm_id: c.crm_id.clone(),
                id_value,
                properties,
            },
            seq: c.seq,
            digest: d,
        });
    }
    out
}

/// What `sync_stale` found in a batch of records (see `stale`).
#[derive(Debug, Default, PartialEq)]
pub struct Stale {
    /// Records the drain would do something for: send, archive, or record a
    /// state their rows no longer have.
    pub differ: Vec<String>,
    /// Of those, the ones whose row cannot be serialized (the drain fails them).
    pub errors: usize,
}

/// Which records of a batch differ from what their CRM is known to hold: the plan
/// of a drain, without its requests. A record differs unless the drain would find
/// it `not_modified`, `skipped` again, or nothing to archive.
pub fn stale(rows: Vec<Claimed>, id_property: &str) -> Stale {
    // the common case first, without planning: a payload the CRM holds exactly
    let rows: Vec<Claimed> = rows.into_iter().filter(|c| !unchanged(c)).collect();
    let states: std::collections::HashMap<String, Option<String>> = rows
        .iter()
        .map(|c| (c.key.clone(), c.state.clone()))
        .collect();
    let p = plan(rows, id_property, true, Intent::Reconcile);
    let mut out = Stale::default();
    for r in p.done {
        let was = states.get(&r.key).cloned().flatten();
        let same = match r.verdict {
            Verdict::NotModified => true,
            Verdict::Skipped => was.as_deref() == Some("skipped"),
            Verdict::Noop | Verdict::Deleted => matches!(was.as_deref(), None | Some("deleted")),
            _ => false,
        };
        if r.verdict == Verdict::Failed {
            out.errors += 1;
        }
        if !same {
            out.differ.push(r.key);
        }
    }
    out.differ.extend(p.upserts.into_iter().map(|u| u.item.key));
    out.differ.extend(p.deletes.into_iter().map(|d| d.item.key));
    out
}

/// A row whose payload is the one its CRM object was last written with, which
/// plan() finds `not_modified`: an equal digest is recorded only for a payload the
/// CRM accepted, so the payload is an object with its id property. Cheaper than
/// planning (no copies), for re-checks of millions of unchanged rows.
fn unchanged(c: &Claimed) -> bool {
    match (&c.payload, &c.crm_id, &c.digest) {
        (Some(p), Some(_), Some(d))
            if c.present && c.included && c.error.is_none() && c.waits.is_none() =>
        {
            p.is_object() && digest(p)[..] == d[..]
        }
        _ => false,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(key: &str, payload: Value) -> Claimed {
        Claimed {
            key: key.into(),
            seq: Some(7),
            present: true,
            included: true,
            payload: Some(payload),
            ..Default::default()
        }
    }

    #[test]
    fn new_row_is_upserted_by_id_property() {
        let p = plan(
            vec![row("1", json!({"email": "a@b.c", "n": 1}))],
            "email",
            true,
            Intent::Reconcile,
        );
        assert_eq!(p.upserts.len(), 1);
        assert_eq!(p.upserts[0].item.id_value, "a@b.c");
        assert_eq!(p.upserts[0].item.crm_id, None);
        assert_eq!(p.upserts[0].seq, Some(7));
        assert!(p.done.is_empty() && p.deletes.is_empty());
    }

    #[test]
    fn what_stale_skips_unplanned_the_plan_finds_not_modified() {
        let payload = json!({"email": "a@b.c", "n": 1});
        let mut r = row("1", payload.clone());
        r.crm_id = Some("42".into());
        r.digest = Some(digest(&payload).to_vec());
        assert!(unchanged(&r));
        let p = plan(vec![r.clone()], "email", true, Intent::Reconcile);
        assert_eq!(p.done[0].verdict, Verdict::NotModified);
        assert!(stale(vec![r.clone()], "email").differ.is_empty());
        // anything else is planned
        r.payload = Some(json!({"email": "a@b.c", "n": 2}));
        assert!(!unchanged(&r));
        assert_eq!(stale(vec![r], "email").differ, vec!["1".to_string()]);
    }

    #[test]
    fn unchanged_payload_is_not_modified() {
        let payload = json!({"email": "a@b.c", "n": 1});
        let mut r = row("1", payload.clone());
        r.crm_id = Some("42".into());
        r.digest = Some(digest(&payload).to_vec());
        r.state = Some("failed".into());
        let p = plan(vec![r.clone()], "email", true, Intent::Reconcile);
        assert_eq!(p.done[0].verdict, Verdict::NotModified);

        // changed payload: an update addressed by the known crm_id
        r.payload = Some(json!({"email": "a@b.c", "n": 2}));
        let p = plan(vec![r.clone()], "email", true, Intent::Reconcile);
        assert_eq!(p.upserts.len(), 1);
        assert_eq!(p.upserts[0].item.crm_id.as_deref(), Some("42"));

        // same digest but no crm_id (never accepted, or forgotten): send
        r.payload = Some(payload);
        r.crm_id = None;
        let p = plan(vec![r], "email", true, Intent::Reconcile);
        assert_eq!(p.upserts.len(), 1);
    }

    #[test]
    fn absent_row_deletes_by_crm_id_or_is_a_noop() {
        let mut gone = row("1", Value::Null);
        gone.present = false;
        gone.payload = None;
        let mut gone_synced = gone.clone();
        gone_synced.key = "2".into();
        gone_synced.crm_id = Some("99".into());
        let p = plan(vec![gone, gone_synced], "email", true, Intent::Reconcile);
        assert_eq!(p.done[0].verdict, Verdict::Noop);
        assert_eq!(p.deletes.len(), 1);
        assert_eq!(p.deletes[0].item.crm_id, "99");
    }

    #[test]
    fn an_object_another_record_holds_is_never_archived() {
        let gone = |key: &str, id: &str, shared: bool| Claimed {
            key: key.into(),
            crm_id: Some(id.into()),
            shared,
            ..Default::default()
        };
        let mut present = row("9", json!({"email": "a@b.c"}));
        present.crm_id = Some("7".into());
        let p = plan(
            vec![
                gone("1", "5", true),
                gone("2", "7", false),
                gone("3", "8", false),
                gone("4", "8", false),
                present,
            ],
            "email",
            true,
            Intent::Reconcile,
        );
        let handed: Vec<_> = p.done.iter().map(|r| (r.key.as_str(), r.verdict)).collect();
        assert_eq!(
            handed,
            vec![
                ("1", Verdict::Deleted),
                ("2", Verdict::Deleted),
                ("4", Verdict::Deleted)
            ]
        );
        assert_eq!(p.deletes.len(), 1);
        assert_eq!(p.deletes[0].item.key, "3");
        // an explicit delete archives what it is asked to
        let p = plan(vec![gone("1", "5", true)], "email", true, Intent::Delete);
        assert_eq!(p.deletes.len(), 1);
    }

    #[test]
    fn explicit_delete_ignores_the_row() {
        let mut r = row("1", json!({"email": "a@b.c"}));
        r.crm_id = Some("5".into());
        let p = plan(vec![r], "email", true, Intent::Delete);
        assert_eq!(p.deletes.len(), 1);
    }

    #[test]
    fn bad_payloads_fail_alone() {
        let mut excluded = row("3", json!({"email": "x"}));
        excluded.included = false;
        let mut broken = row("5", Value::Null);
        broken.error = Some("serializer failed: division by zero".into());
        let p = plan(
            vec![
                row("1", json!({"name": "no email"})),
                row("2", json!([1, 2])),
                excluded,
                row("4", json!({"email": "ok@x.y"})),
                broken,
                row("6", Value::Null),
            ],
            "email",
            true,
            Intent::Reconcile,
        );
        let verdicts: Vec<_> = p.done.iter().map(|r| (r.key.as_str(), r.verdict)).collect();
        assert_eq!(
            verdicts,
            vec![
                ("1", Verdict::Failed),
                ("2", Verdict::Failed),
                ("3", Verdict::Skipped),
                ("5", Verdict::Failed),
                ("6", Verdict::Failed)
            ]
        );
        assert!(p.done[0].error.as_deref().unwrap().contains("\"email\""));
        assert!(p.done[1].error.as_deref().unwrap().contains("array"));
        assert_eq!(p.upserts.len(), 1);
    }

    #[test]
    fn disabled_crm_sends_nothing() {
        let p = plan(
            vec![row("1", json!({"email": "a"}))],
            "email",
            false,
            Intent::Reconcile,
        );
        assert_eq!(p.done[0].verdict, Verdict::Disabled);
        assert!(p.upserts.is_empty());
    }

    #[test]
    fn numeric_id_values_are_accepted() {
        let p = plan(
            vec![row("1", json!({"ext_id": 12}))],
            "ext_id",
            true,
            Intent::Reconcile,
        );
        assert_eq!(p.upserts[0].item.id_value, "12");
    }

    #[test]
    fn hex_encodes() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }

    #[test]
    fn verdicts_have_one_word_one_code_and_one_count() {
        let words: std::collections::HashSet<_> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
        assert_eq!(words.len(), Verdict::ALL.len());
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_code(v.code()), Some(v));
            assert!(Verdict::COUNTED.contains(&v.counted_as()), "{v:?}");
            assert!(
                [
                    "synced",
                    "not_modified",
                    "skipped",
                    "buffered",
                    "deleted",
                    "noop",
                    "disabled",
                    "failed"
                ]
                .contains(&v.answer()),
                "{v:?}"
            );
        }
        assert_eq!(Verdict::from_code(Verdict::ALL.len() as u8), None);
    }

    #[test]
    fn stale_finds_what_a_drain_would_change() {
        let payload = json!({"email": "a@x", "n": 1});
        let synced = |key: &str, p: &Value| Claimed {
            state: Some("synced".into()),
            crm_id: Some(format!("id-{key}")),
            digest: Some(digest(p).to_vec()),
            ..row(key, p.clone())
        };
        let changed = json!({"email": "a@x", "n": 2});
        let mut gone = synced("gone", &payload);
        gone.present = false;
        let mut skipped = synced("skipped", &payload);
        skipped.state = Some("skipped".into());
        skipped.included = false;
        let mut newly_skipped = synced("newly_skipped", &payload);
        newly_skipped.included = false;
        let mut broken = synced("broken", &payload);
        broken.error = Some("boom".into());
        let mut absent = row("absent", payload.clone());
        absent.present = false;
        let s = stale(
            vec![
                synced("same", &payload),
                Claimed {
                    payload: Some(changed),
                    ..synced("changed", &payload)
                },
                row("new", payload.clone()),
                gone,
                skipped,
                newly_skipped,
                broken,
                absent,
            ],
            "email",
        );
        let mut differ = s.differ.clone();
        differ.sort();
        assert_eq!(
            differ,
            ["broken", "changed", "gone", "new", "newly_skipped"]
        );
        assert_eq!(s.errors, 1);
    }
}
