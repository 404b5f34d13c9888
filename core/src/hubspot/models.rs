//! HubSpot's JSON, both ways.
//!
//! Requests are built from borrowed inputs (no copy of the properties). Responses are
//! read leniently: the docs say every error field is optional, and a proxy in front of
//! the CRM can answer anything. A field of an unexpected type reads as absent, a
//! malformed list entry is skipped; only a body that is not a JSON object at all is
//! "unreadable".

use crate::adapter::{Delete, Label, Link, Upsert};
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Serialize)]
struct Inputs<T> {
    inputs: Vec<T>,
}

#[derive(Serialize)]
struct UpdateInput<'a> {
    id: &'a str,
    properties: &'a Map<String, Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpsertInput<'a> {
    id_property: &'a str,
    id: &'a str,
    properties: &'a Map<String, Value>,
}

/// `{id}`: an archive's crm_id, a read's id_property value.
#[derive(Serialize)]
struct IdInput<'a> {
    id: &'a str,
}

fn to_body<T: Serialize>(inputs: Vec<T>) -> Vec<u8> {
    serde_json::to_vec(&Inputs { inputs }).expect("string keys and JSON values always serialize")
}

/// `batch/update`: `{inputs:[{id: crm_id, properties}]}`. Only items with a crm_id.
pub(crate) fn update_body(items: &[&Upsert]) -> Vec<u8> {
    to_body(
        items
            .iter()
            .map(|item| UpdateInput {
                id: item.crm_id.as_deref().unwrap_or_default(),
                properties: &item.properties,
            })
            .collect(),
    )
}

/// `batch/upsert`: `{inputs:[{idProperty, id: id_value, properties}]}`.
pub(crate) fn upsert_body(id_property: &str, items: &[&Upsert]) -> Vec<u8> {
    to_body(
        items
            .iter()
            .map(|item| UpsertInput {
                id_property,
                id: &item.id_value,
                properties: &item.properties,
            })
            .collect(),
    )
}

/// `batch/archive`: `{inputs:[{id: crm_id}]}`.
pub(crate) fn archive_body(items: &[&Delete]) -> Vec<u8> {
    to_body(
        items
            .iter()
            .map(|item| IdInput { id: &item.crm_id })
            .collect(),
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReadRequest<'a> {
    id_property: &'a str,
    properties: [&'a str; 1],
    inputs: Vec<IdInput<'a>>,
}

/// `batch/read` by id_property: `{idProperty, properties: [idProperty], inputs:[{id:
/// value}]}`. Asking for the id_property is what lets each result be matched to its
/// input (results come in no promised order).
pub(crate) fn read_body(id_property: &str, values: &[&str]) -> Vec<u8> {
    let request = ReadRequest {
        id_property,
        properties: [id_property],
        inputs: values.iter().map(|&id| IdInput { id }).collect(),
    };
    serde_json::to_vec(&request).expect("strings always serialize")
}

#[derive(Serialize)]
struct ObjectId<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct DefaultLinkInput<'a> {
    from: ObjectId<'a>,
    to: ObjectId<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AssociationType<'a> {
    association_category: &'a str,
    association_type_id: i64,
}

#[derive(Serialize)]
struct LabelledLinkInput<'a> {
    from: ObjectId<'a>,
    to: ObjectId<'a>,
    types: Vec<AssociationType<'a>>,
}

#[derive(Serialize)]
struct UnlinkInput<'a> {
    from: ObjectId<'a>,
    to: Vec<ObjectId<'a>>,
}

/// Entries by key, in order of first appearance, with the values of every item sharing
/// the key (no duplicates): several links may be one input.
fn group<K: PartialEq, V: PartialEq>(items: impl Iterator<Item = (K, V)>) -> Vec<(K, Vec<V>)> {
    let mut groups: Vec<(K, Vec<V>)> = Vec::new();
    for (k, v) in items {
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, vs)) if vs.contains(&v) => {}
            Some((_, vs)) => vs.push(v),
            None => groups.push((k, vec![v])),
        }
    }
    groups
}

/// v4 `batch/associate/default`: `{inputs:[{from:{id}, to:{id}}]}`, one input per pair.
pub(crate) fn associate_default_body(links: &[&Link]) -> Vec<u8> {
    let pairs = group(
        links
            .iter()
            .map(|l| ((l.from_id.as_str(), l.to_id.as_str()), ())),
    );
    to_body(
        pairs
            .into_iter()
            .map(|((from, to), _)| DefaultLinkInput {
                from: ObjectId { id: from },
                to: ObjectId { id: to },
            })
            .collect(),
    )
}

/// v4 `batch/create`: `{inputs:[{from:{id}, to:{id}, types:[{associationCategory,
/// associationTypeId}]}]}`, one input per pair carrying its links' labels.
pub(crate) fn associate_labelled_body(links: &[&Link]) -> Vec<u8> {
    let pairs = group(links.iter().filter_map(|l| {
        let label: &Label = l.label.as_ref()?;
        Some(((l.from_id.as_str(), l.to_id.as_str()), label))
    }));
    to_body(
        pairs
            .into_iter()
            .map(|((from, to), labels)| LabelledLinkInput {
                from: ObjectId { id: from },
                to: ObjectId { id: to },
                types: labels
                    .into_iter()
                    .map(|l| AssociationType {
                        association_category: &l.category,
                        association_type_id: l.type_id,
                    })
                    .collect(),
            })
            .collect(),
    )
}

/// v4 `batch/archive`: `{inputs:[{from:{id}, to:[{id}]}]}`, one input per from object.
pub(crate) fn dissociate_body(links: &[&Link]) -> Vec<u8> {
    let froms = group(links.iter().map(|l| (l.from_id.as_str(), l.to_id.as_str())));
    to_body(
        froms
            .into_iter()
            .map(|(from, tos)| UnlinkInput {
                from: ObjectId { id: from },
                to: tos.into_iter().map(|id| ObjectId { id }).collect(),
            })
            .collect(),
    )
}

/// A batch response, or an error response: HubSpot's error bodies are a single error
/// entry at the top level, batch responses carry `results` and `errors`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Response {
    #[serde(deserialize_with = "lenient_list")]
    pub results: Vec<ResultRecord>,
    #[serde(deserialize_with = "lenient_list")]
    pub errors: Vec<ErrorEntry>,
    #[serde(flatten)]
    pub top: ErrorEntry,
}

impl Response {
    /// None when the body is not a JSON object (HTML from a proxy, empty, truncated).
    pub(crate) fn parse(body: &[u8]) -> Option<Response> {
        match serde_json::from_slice::<Value>(body).ok()? {
            v @ Value::Object(_) => serde_json::from_value(v).ok(),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ResultRecord {
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
    /// Values are strings in HubSpot's answers; kept as JSON to read them leniently.
    pub properties: Value,
    /// v4 associations: `{from:{id}, to:{id}}` …
    pub from: Value,
    pub to: Value,
    /// … or, for labelled ones, `fromObjectId`/`toObjectId`.
    #[serde(rename = "fromObjectId", deserialize_with = "lenient_string")]
    pub from_object_id: Option<String>,
    #[serde(rename = "toObjectId", deserialize_with = "lenient_string")]
    pub to_object_id: Option<String>,
}

impl ResultRecord {
    pub(crate) fn property(&self, name: &str) -> Option<String> {
        self.properties.get(name).and_then(text)
    }

    /// The two objects of an association result.
    pub(crate) fn link(&self) -> Option<(String, String)> {
        let end = |obj: &Value, flat: &Option<String>| {
            obj.get("id").and_then(text).or_else(|| flat.clone())
        };
        Some((
            end(&self.from, &self.from_object_id)?,
            end(&self.to, &self.to_object_id)?,
        ))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorEntry {
    #[serde(deserialize_with = "lenient_string")]
    pub category: Option<String>,
    /// 429 bodies say `errorType: "RATE_LIMIT"` instead of a category.
    #[serde(rename = "errorType", deserialize_with = "lenient_string")]
    pub error_type: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub message: Option<String>,
    /// `TEN_SECONDLY_ROLLING`, `DAILY`, `SECONDLY` on 429s.
    #[serde(rename = "policyName", deserialize_with = "lenient_string")]
    pub policy_name: Option<String>,
    /// `{ids:[…]}` names the failing inputs; other shapes (`propertyName`,
    /// `objectWriteTraceId`) do not concern us.
    pub context: Value,
}

impl ErrorEntry {
    pub(crate) fn category(&self) -> Option<&str> {
        self.category.as_deref().or(self.error_type.as_deref())
    }

    /// The inputs this error names, as the CRM spelled them.
    pub(crate) fn ids(&self) -> Vec<String> {
        match self.context.get("ids") {
            Some(Value::Array(ids)) => ids.iter().filter_map(text).collect(),
            // A lone id instead of a list: read it too.
            Some(one) => text(one).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// "CATEGORY: message", or whichever half is there.
    pub(crate) fn summary(&self) -> Option<String> {
        match (self.category(), self.message.as_deref()) {
            (Some(c), Some(m)) => Some(format!("{c}: {m}")),
            (Some(c), None) => Some(c.to_owned()),
            (None, Some(m)) => Some(m.to_owned()),
            (None, None) => None,
        }
    }
}

/// Strings as they are, numbers as they print (ids sometimes come back as numbers).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(text(&Value::deserialize(d)?))
}

fn lenient_list<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| serde_json::from_value(item).ok())
            .collect(),
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn upsert(key: &str, crm_id: Option<&str>, id_value: &str, props: Value) -> Upsert {
        Upsert {
            key: key.into(),
            crm_id: crm_id.map(Into::into),
            id_value: id_value.into(),
            properties: props.as_object().unwrap().clone(),
        }
    }

    fn json_of(body: Vec<u8>) -> Value {
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn update_body_addresses_by_crm_id() {
        let a = upsert(
            "1",
            Some("101"),
            "a@b.c",
            json!({"email": "a@b.c", "age": 42}),
        );
        assert_eq!(
            json_of(update_body(&[&a])),
            json!({"inputs": [{"id": "101", "properties": {"email": "a@b.c", "age": 42}}]})
        );
    }

    #[test]
    fn upsert_body_addresses_by_id_property() {
        let a = upsert(
            "1",
            None,
            "a@b.c",
            json!({"email": "a@b.c", "firstname": "Ann"}),
        );
        let b = upsert(
            "2",
            None,
            "b@b.c",
            json!({"email": "b@b.c", "vip": true, "n": null}),
        );
        assert_eq!(
            json_of(upsert_body("email", &[&a, &b])),
            json!({"inputs": [
                {"idProperty": "email", "id": "a@b.c", "properties": {"email": "a@b.c", "firstname": "Ann"}},
                {"idProperty": "email", "id": "b@b.c", "properties": {"email": "b@b.c", "vip": true, "n": null}}
            ]})
        );
    }

    #[test]
    fn archive_body_lists_ids() {
        let d = Delete {
            key: "1".into(),
            crm_id: "101".into(),
        };
        assert_eq!(
            json_of(archive_body(&[&d])),
            json!({"inputs": [{"id": "101"}]})
        );
    }

    #[test]
    fn read_body_asks_for_the_id_property() {
        assert_eq!(
            json_of(read_body("email", &["Ann@x.io", "bob@x.io"])),
            json!({"idProperty": "email", "properties": ["email"], "inputs": [{"id": "Ann@x.io"}, {"id": "bob@x.io"}]})
        );
    }

    fn link(from: &str, to: &str, label: Option<(&str, i64)>) -> Link {
        Link {
            key: format!("{from}-{to}"),
            from_id: from.into(),
            to_id: to.into(),
            label: label.map(|(category, type_id)| Label {
                category: category.into(),
                type_id,
            }),
        }
    }

    #[test]
    fn associate_default_body_has_one_input_per_pair() {
        let (a, b, again) = (
            link("1", "2", None),
            link("1", "3", None),
            link("1", "2", None),
        );
        assert_eq!(
            json_of(associate_default_body(&[&a, &b, &again])),
            json!({"inputs": [
                {"from": {"id": "1"}, "to": {"id": "2"}},
                {"from": {"id": "1"}, "to": {"id": "3"}}
            ]})
        );
    }

    #[test]
    fn associate_labelled_body_groups_a_pairs_labels() {
        let primary = link("7", "9", Some(("HUBSPOT_DEFINED", 5)));
        let custom = link("7", "9", Some(("USER_DEFINED", 12)));
        let other = link("8", "9", Some(("HUBSPOT_DEFINED", 5)));
        let twice = link("7", "9", Some(("HUBSPOT_DEFINED", 5)));
        assert_eq!(
            json_of(associate_labelled_body(&[
                &primary, &other, &custom, &twice
            ])),
            json!({"inputs": [
                {"from": {"id": "7"}, "to": {"id": "9"}, "types": [
                    {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 5},
                    {"associationCategory": "USER_DEFINED", "associationTypeId": 12}
                ]},
                {"from": {"id": "8"}, "to": {"id": "9"}, "types": [
                    {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 5}
                ]}
            ]})
        );
    }

    #[test]
    fn dissociate_body_has_one_input_per_from_object() {
        let links = [
            link("1", "2", None),
            link("4", "2", Some(("HUBSPOT_DEFINED", 5))),
            link("1", "3", Some(("HUBSPOT_DEFINED", 5))),
            link("1", "2", Some(("HUBSPOT_DEFINED", 5))),
        ];
        let refs: Vec<&Link> = links.iter().collect();
        assert_eq!(
            json_of(dissociate_body(&refs)),
            json!({"inputs": [
                {"from": {"id": "1"}, "to": [{"id": "2"}, {"id": "3"}]},
                {"from": {"id": "4"}, "to": [{"id": "2"}]}
            ]})
        );
    }

    #[test]
    fn association_results_in_both_shapes() {
        let body = br#"{"status":"COMPLETE","results":[
            {"from":{"id":"1"},"to":{"id":"2"},"associationSpec":{"associationCategory":"HUBSPOT_DEFINED","associationTypeId":341}},
            {"fromObjectTypeId":"0-3","fromObjectId":3,"toObjectTypeId":"0-2","toObjectId":"4","labels":[]},
            {"from":{"id":"5"}}
        ]}"#;
        let r = Response::parse(body).unwrap();
        let links: Vec<_> = r.results.iter().map(ResultRecord::link).collect();
        assert_eq!(
            links,
            [
                Some(("1".into(), "2".into())),
                Some(("3".into(), "4".into())),
                None
            ]
        );
    }

    #[test]
    fn parses_a_207() {
        let body = br#"{"status":"COMPLETE","results":[{"id":"101","properties":{"email":"a@b.c","hs_object_id":101},"createdAt":"2024-01-01T00:00:00Z","archived":false,"new":false}],
            "numErrors":1,"errors":[{"status":"error","category":"OBJECT_NOT_FOUND","message":"Object not found.  objectId are usually numeric.","context":{"ids":["102", 103]}}],
            "startedAt":"2024-01-01T00:00:00Z","completedAt":"2024-01-01T00:00:01Z"}"#;
        let r = Response::parse(body).unwrap();
        assert_eq!(r.results.len(), 1);
        assert_eq!(r.results[0].id.as_deref(), Some("101"));
        assert_eq!(r.results[0].property("email").as_deref(), Some("a@b.c"));
        assert_eq!(
            r.results[0].property("hs_object_id").as_deref(),
            Some("101")
        );
        assert_eq!(r.errors[0].ids(), ["102", "103"]);
        assert_eq!(
            r.errors[0].summary().as_deref(),
            Some("OBJECT_NOT_FOUND: Object not found.  objectId are usually numeric.")
        );
    }

    #[test]
    fn odd_fields_read_as_absent() {
        let body = br#"{"results":{"oops":1},"errors":[7,{"message":12,"context":{"ids":"42"}}],"category":["x"],"message":null}"#;
        let r = Response::parse(body).unwrap();
        assert!(r.results.is_empty());
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].ids(), ["42"]);
        assert_eq!(r.errors[0].summary().as_deref(), Some("12"));
        assert_eq!(r.top.summary(), None);
    }

    #[test]
    fn non_objects_are_unreadable() {
        for body in [
            &b""[..],
            b"<html><body>502 Bad Gateway</body></html>",
            b"[]",
            b"\"ok\"",
            br#"{"results":[{"id":"1""#,
        ] {
            assert!(
                Response::parse(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn rate_limit_body_uses_error_type() {
        let body = br#"{"status":"error","message":"You have reached your daily limit.","errorType":"RATE_LIMIT","correlationId":"c0ffee","policyName":"DAILY"}"#;
        let r = Response::parse(body).unwrap();
        assert_eq!(r.top.category(), Some("RATE_LIMIT"));
        assert_eq!(r.top.policy_name.as_deref(), Some("DAILY"));
    }
}
