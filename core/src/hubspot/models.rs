//! HubSpot's JSON, both ways.
//!
//! Requests are built from borrowed inputs (no copy of the properties). Responses are
//! read leniently: the docs say every error field is optional, and a proxy in front of
//! the CRM can answer anything. A field of an unexpected type reads as absent, a
//! malformed list entry is skipped; only a body that is not a JSON object at all is
//! "unreadable".

use crate::adapter::{Delete, Upsert};
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

#[derive(Serialize)]
struct ArchiveInput<'a> {
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
            .map(|item| ArchiveInput { id: &item.crm_id })
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
}

impl ResultRecord {
    pub(crate) fn property(&self, name: &str) -> Option<String> {
        self.properties.get(name).and_then(text)
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
