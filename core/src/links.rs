//! Associations of a record's CRM object with the objects of the records it
//! references (sync dependencies with `"associate"`): what the CRM must be asked
//! to add or remove so that it holds what the references say now.

use crate::adapter::{Label, Link};

/// One sync dependency of a record, as the claim found it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LinkState {
    pub position: i32,
    /// The referenced records' object type; None while their table is not synced.
    pub to_type: Option<String>,
    /// The CRM id the record's object must be associated with (the dependency
    /// associates, its reference is not NULL, and that record has a CRM id).
    pub want: Option<String>,
    /// None: the default association; Some: a labelled one.
    pub label: Option<Label>,
    /// The association etlify made before: from which object, to which.
    pub held_from: Option<String>,
    pub held_to: Option<String>,
}

/// A request to make for one record's dependency.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkOp {
    pub key: String,
    pub position: i32,
    pub to_type: String,
    pub link: Link,
    /// Remove every association between the two objects (else: add this one).
    pub remove: bool,
}

/// What etlify holds for a record's dependency after the requests: `to_id` None
/// when it holds none (`etlify._linked`).
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub key: String,
    pub position: i32,
    pub from_id: String,
    pub to_id: Option<String>,
}

impl Held {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "key": self.key,
            "position": self.position,
            "from_id": self.from_id,
            "to_id": self.to_id,
        })
    }
}

/// The requests that bring the associations of `key`'s object `from_id` in line
/// with `states`, and what is known held without asking (an association made from
/// an object the record no longer has, or to a table no longer synced, is
/// forgotten: there is nothing etlify can remove it from).
pub fn diff(key: &str, from_id: &str, states: &[LinkState]) -> (Vec<LinkOp>, Vec<Held>) {
    let mut ops = Vec::new();
    let mut forgotten = Vec::new();
    for s in states {
        let held = match (&s.held_from, &s.held_to) {
            (Some(f), Some(t)) if f == from_id => Some(t.clone()),
            (Some(_), Some(_)) => {
                forgotten.push(Held {
                    key: key.to_string(),
                    position: s.position,
                    from_id: from_id.to_string(),
                    to_id: None,
                });
                None
            }
            _ => None,
        };
        if held == s.want {
            continue;
        }
        let Some(to_type) = s.to_type.clone() else {
            if held.is_some() {
                forgotten.push(Held {
                    key: key.to_string(),
                    position: s.position,
                    from_id: from_id.to_string(),
                    to_id: None,
                });
            }
            continue;
        };
        let op = |to_id: &str, label: Option<Label>, remove: bool| LinkOp {
            key: key.to_string(),
            position: s.position,
            to_type: to_type.clone(),
            link: Link {
                key: String::new(),
                from_id: from_id.to_string(),
                to_id: to_id.to_string(),
                label,
            },
            remove,
        };
        if let Some(old) = &held {
            ops.push(op(old, None, true));
        }
        if let Some(new) = &s.want {
            ops.push(op(new, s.label.clone(), false));
        }
    }
    (ops, forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(want: Option<&str>, held: Option<(&str, &str)>) -> LinkState {
        LinkState {
            position: 1,
            to_type: Some("companies".into()),
            want: want.map(str::to_string),
            label: None,
            held_from: held.map(|h| h.0.to_string()),
            held_to: held.map(|h| h.1.to_string()),
        }
    }

    #[test]
    fn nothing_to_do_when_the_crm_holds_what_is_wanted() {
        let (ops, held) = diff("k", "D1", &[state(Some("C1"), Some(("D1", "C1")))]);
        assert!(ops.is_empty() && held.is_empty());
        let (ops, held) = diff("k", "D1", &[state(None, None)]);
        assert!(ops.is_empty() && held.is_empty());
    }

    #[test]
    fn a_new_reference_adds_and_a_moved_one_removes_the_old_first() {
        let (ops, _) = diff("k", "D1", &[state(Some("C1"), None)]);
        assert_eq!(ops.len(), 1);
        assert!(!ops[0].remove && ops[0].link.to_id == "C1" && ops[0].link.from_id == "D1");

        let (ops, _) = diff("k", "D1", &[state(Some("C2"), Some(("D1", "C1")))]);
        assert_eq!(ops.len(), 2);
        assert!(ops[0].remove && ops[0].link.to_id == "C1");
        assert!(!ops[1].remove && ops[1].link.to_id == "C2");
    }

    #[test]
    fn a_reference_set_to_null_removes() {
        let (ops, _) = diff("k", "D1", &[state(None, Some(("D1", "C1")))]);
        assert_eq!(ops.len(), 1);
        assert!(ops[0].remove && ops[0].link.to_id == "C1");
    }

    #[test]
    fn an_association_of_a_former_object_is_forgotten_not_removed() {
        let (ops, held) = diff("k", "D2", &[state(Some("C1"), Some(("D1", "C1")))]);
        assert_eq!(ops.len(), 1);
        assert!(!ops[0].remove && ops[0].link.from_id == "D2");
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].to_id, None);
    }

    #[test]
    fn a_table_no_longer_synced_forgets_what_it_held() {
        let mut s = state(None, Some(("D1", "C1")));
        s.to_type = None;
        let (ops, held) = diff("k", "D1", &[s]);
        assert!(ops.is_empty());
        assert_eq!(held.len(), 1);
    }
}
