//! Upserts whose answer never arrived.
//!
//! A record with no CRM id is written by `batch/upsert` on its id_property value
//! (an email): if the answer is lost (the worker killed mid-request, a timeout),
//! the CRM may hold an object etlify does not know the id of. Sending the same
//! value again lands on that object, so nothing is lost while the row keeps its
//! value. But if the row is deleted, or its value changes, before an answer is
//! recorded, the object would be orphaned (a contact left behind, or a duplicate
//! beside the one the next upsert creates). So the value is noted before the
//! request (etlify._unanswered) and forgotten once an answer is recorded; a claim
//! that finds a note for a row that is gone or has another value first looks the
//! object up by the noted value, and then archives or updates it by its id.
//!
//! A request whose answer was lost may still be landing: the look-up waits until
//! the note is older than the CRM's settle time, or a "not found" could come too
//! early.

use crate::plan::{Claimed, Intent};
use serde_json::Value;
use std::time::Duration;

/// The note of a claimed record: the value sent, and how long ago it was claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct Unanswered {
    pub value: String,
    pub age: Duration,
}

/// What a claimed record's note asks for before its plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// No note, or one that the plan's own request settles (same value).
    Nothing,
    /// Too early to look the object up: try again after this long.
    Wait(Duration),
    /// Look up the object holding this id_property value.
    Find(String),
}

/// A payload's id_property value as the CRM is sent it (a string or a number).
pub fn id_value(payload: &Value, id_property: &str) -> Option<String> {
    match payload.get(id_property) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Two id_property values name the same object: HubSpot compares emails ignoring
/// case and surrounding blanks.
pub fn same(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

/// Whether the record will be upserted by its id_property value, and by which.
fn upserted_as(c: &Claimed, id_property: &str, intent: Intent) -> Option<String> {
    let sent = intent == Intent::Reconcile
        && c.crm_id.is_none()
        && c.present
        && c.included
        && c.error.is_none()
        && c.waits.is_none();
    sent.then(|| c.payload.as_ref().and_then(|p| id_value(p, id_property)))
        .flatten()
}

pub fn check(c: &Claimed, id_property: &str, intent: Intent, settle: Duration) -> Check {
    // with a CRM id, writes and archives go by it: nothing can be orphaned
    let (None, Some(u)) = (&c.crm_id, &c.unanswered) else {
        return Check::Nothing;
    };
    let gone = intent == Intent::Delete || !c.present;
    if !gone {
        match upserted_as(c, id_property, intent) {
            // the upsert by the same value lands on the object, if there is one
            Some(v) if same(&v, &u.value) => return Check::Nothing,
            Some(_) => {}
            // nothing is sent for it now (sync_if, a wait, a serializer error)
            None => return Check::Nothing,
        }
    }
    match settle.checked_sub(u.age) {
        Some(left) if !left.is_zero() => Check::Wait(left),
        _ => Check::Find(u.value.clone()),
    }
}

/// The note to write for a claimed record before its request: the value it will
/// be upserted by. None: leave its note as it is (a different older value is
/// looked up first, by [`check`]; a record not upserted writes nothing).
pub fn note(c: &Claimed, id_property: &str, intent: Intent) -> Option<String> {
    let v = upserted_as(c, id_property, intent)?;
    match &c.unanswered {
        Some(u) if !same(&u.value, &v) => None,
        _ => Some(v),
    }
}

/// The note once the look-up found no object for the old value: the value the
/// record will now be upserted by, or none at all.
pub fn renote(c: &Claimed, id_property: &str, intent: Intent) -> Option<String> {
    upserted_as(c, id_property, intent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SETTLE: Duration = Duration::from_secs(60);

    fn row(payload: Value, unanswered: Option<(&str, u64)>) -> Claimed {
        Claimed {
            key: "1".into(),
            present: true,
            included: true,
            payload: Some(payload),
            unanswered: unanswered.map(|(v, secs)| Unanswered {
                value: v.into(),
                age: Duration::from_secs(secs),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn no_note_or_a_crm_id_needs_nothing() {
        let c = row(json!({"email": "a@x.io"}), None);
        assert_eq!(
            check(&c, "email", Intent::Reconcile, SETTLE),
            Check::Nothing
        );
        let mut c = row(json!({"email": "b@x.io"}), Some(("a@x.io", 100)));
        c.crm_id = Some("7".into());
        assert_eq!(
            check(&c, "email", Intent::Reconcile, SETTLE),
            Check::Nothing
        );
        assert_eq!(note(&c, "email", Intent::Reconcile), None);
    }

    #[test]
    fn the_same_value_again_settles_itself() {
        let c = row(json!({"email": "A@x.io "}), Some(("a@x.io", 1)));
        assert_eq!(
            check(&c, "email", Intent::Reconcile, SETTLE),
            Check::Nothing
        );
        assert_eq!(
            note(&c, "email", Intent::Reconcile).as_deref(),
            Some("A@x.io ")
        );
    }

    #[test]
    fn a_gone_row_or_a_new_value_is_looked_up_once_settled() {
        let mut gone = row(json!({}), Some(("a@x.io", 100)));
        gone.present = false;
        gone.payload = None;
        assert_eq!(
            check(&gone, "email", Intent::Reconcile, SETTLE),
            Check::Find("a@x.io".into())
        );
        let moved = row(json!({"email": "b@x.io"}), Some(("a@x.io", 100)));
        assert_eq!(
            check(&moved, "email", Intent::Reconcile, SETTLE),
            Check::Find("a@x.io".into())
        );
        // the old note stays until the look-up says what became of it
        assert_eq!(note(&moved, "email", Intent::Reconcile), None);
        assert_eq!(
            renote(&moved, "email", Intent::Reconcile).as_deref(),
            Some("b@x.io")
        );
        let early = row(json!({"email": "b@x.io"}), Some(("a@x.io", 45)));
        assert_eq!(
            check(&early, "email", Intent::Reconcile, SETTLE),
            Check::Wait(Duration::from_secs(15))
        );
        // etlify.delete() of a row that exists: the object goes too
        let deleted = row(json!({"email": "a@x.io"}), Some(("a@x.io", 100)));
        assert_eq!(
            check(&deleted, "email", Intent::Delete, SETTLE),
            Check::Find("a@x.io".into())
        );
        assert_eq!(renote(&deleted, "email", Intent::Delete), None);
    }

    #[test]
    fn a_record_not_sent_now_keeps_its_note_untouched() {
        let mut skipped = row(json!({"email": "b@x.io"}), Some(("a@x.io", 100)));
        skipped.included = false;
        assert_eq!(
            check(&skipped, "email", Intent::Reconcile, SETTLE),
            Check::Nothing
        );
        assert_eq!(note(&skipped, "email", Intent::Reconcile), None);
        let broken = row(json!({"name": "no email"}), Some(("a@x.io", 100)));
        assert_eq!(
            check(&broken, "email", Intent::Reconcile, SETTLE),
            Check::Nothing
        );
    }

    #[test]
    fn numbers_are_values_too() {
        assert_eq!(id_value(&json!({"n": 12}), "n").as_deref(), Some("12"));
        assert_eq!(id_value(&json!({"n": " "}), "n"), None);
        assert_eq!(id_value(&json!({"n": null}), "n"), None);
    }
}
