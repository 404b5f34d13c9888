//! Fault-injection configuration, set with `PUT /__mock/faults`. A PUT replaces the whole
//! config, so tests never inherit a half-cleared state from an earlier one.
//!
//! `operations` narrows every fault but `rate_limit` to some requests: an entry is an
//! operation name from `hubspot::OPERATIONS` (`batch/upsert`, `associations/batch/create`,
//! …) or a group of them (`batch`, `associations`, `associations/batch`). Without it the
//! faults hit every API request.

use crate::hubspot::OPERATIONS;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)] // a typo'd fault silently doing nothing would hide test bugs
pub struct FaultConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_next: Option<Vec<FailSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_ids: Option<BTreeMap<String, String>>,
    /// Refuse a whole batch holding one of these ids, naming none of its inputs, with
    /// this status (400 VALIDATION_ERROR or 409 CONFLICT), as HubSpot does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_ids: Option<BTreeMap<String, u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hang_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<String>>,
}

/// One scripted whole-request failure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FailSpec {
    pub status: u16,
    /// Seconds, sent as a `Retry-After` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Overrides the default error message / category of the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// The rolling window's maximum; without it the window is reported, not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// An enforced daily quota, counted since start or the last reset; without it
    /// 1,000,000 is reported and nothing enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u64>,
}

fn default_interval_ms() -> u64 {
    crate::ratelimit::DEFAULT_INTERVAL_MS
}

fn check_status(status: u16, what: &str) -> Result<(), String> {
    if (400..=599).contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "{what} must be an HTTP error status (400-599), got {status}"
        ))
    }
}

impl FaultConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = self.error_rate {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("error_rate must be within 0.0..=1.0, got {r}"));
            }
        }
        if let Some(s) = self.error_status {
            check_status(s, "error_status")?;
        }
        for f in self.fail_next.iter().flatten() {
            check_status(f.status, "fail_next[].status")?;
        }
        for (id, &status) in self.reject_ids.iter().flatten() {
            if !matches!(status, 400 | 409) {
                return Err(format!(
                    "reject_ids: the status for '{id}' must be 400 or 409, got {status}"
                ));
            }
        }
        if let Some(rl) = self.rate_limit {
            if rl.interval_ms == 0 {
                return Err("rate_limit.interval_ms must be > 0".into());
            }
        }
        if let Some(ops) = &self.operations {
            if ops.is_empty() {
                return Err(
                    "operations must not be empty (leave it out to target every request)".into(),
                );
            }
            // Like unknown fields: a misspelt operation would silently disable the faults.
            for entry in ops {
                if !OPERATIONS.iter().any(|op| selects(entry, op)) {
                    return Err(format!(
                        "operations: unknown operation '{entry}' (expected one of: {}, or a group such as 'batch' or 'associations')",
                        OPERATIONS.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the faults apply to a request of `operation` (None: no route matched).
    pub fn targets(&self, operation: Option<&str>) -> bool {
        match &self.operations {
            None => true,
            Some(entries) => {
                operation.is_some_and(|op| entries.iter().any(|entry| selects(entry, op)))
            }
        }
    }

    /// Total artificial latency; `hang_ms` is the same mechanism, named for intent.
    pub fn delay_ms(&self) -> u64 {
        self.delay_ms
            .unwrap_or(0)
            .saturating_add(self.hang_ms.unwrap_or(0))
    }
}

/// `entry` names `op` itself or a group it belongs to (`associations` selects
/// `associations/batch/create`, not `associationsfoo`).
fn selects(entry: &str, op: &str) -> bool {
    op.strip_prefix(entry)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_validates_and_echoes() {
        let c: FaultConfig = serde_json::from_str(
            r#"{"delay_ms":5,"fail_next":[{"status":500,"retry_after":2}],"fail_ids":{"a@b.c":"nope"},"rate_limit":{"max":3,"interval_ms":1000}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        let echoed = serde_json::to_value(&c).unwrap();
        assert_eq!(echoed["fail_next"][0]["retry_after"], 2);
        assert!(echoed.get("error_rate").is_none());
        assert!(serde_json::from_str::<FaultConfig>(r#"{"delay":5}"#).is_err());
        let bad: FaultConfig = serde_json::from_str(r#"{"error_rate":1.5}"#).unwrap();
        assert!(bad.validate().is_err());
        let null: FaultConfig = serde_json::from_str(r#"{"rate_limit":null}"#).unwrap();
        assert_eq!(null, FaultConfig::default());
        let c: FaultConfig = serde_json::from_str(
            r#"{"reject_ids":{"a@b.c":409,"7":400},"rate_limit":{"daily":5}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        let echoed = serde_json::to_value(&c).unwrap();
        assert_eq!(
            echoed["rate_limit"],
            serde_json::json!({"interval_ms": 10000, "daily": 5})
        );
        let bad: FaultConfig = serde_json::from_str(r#"{"reject_ids":{"a":500}}"#).unwrap();
        assert_eq!(
            bad.validate().unwrap_err(),
            "reject_ids: the status for 'a' must be 400 or 409, got 500"
        );
    }

    #[test]
    fn operations_select_names_and_groups() {
        let c = |ops: &[&str]| FaultConfig {
            operations: Some(ops.iter().map(|s| s.to_string()).collect()),
            ..FaultConfig::default()
        };
        assert!(FaultConfig::default().targets(None));
        assert!(FaultConfig::default().targets(Some("batch/upsert")));
        let assoc = c(&["associations"]);
        assoc.validate().unwrap();
        assert!(assoc.targets(Some("associations/batch/create")));
        assert!(assoc.targets(Some("associations/default")));
        assert!(!assoc.targets(Some("batch/upsert")));
        assert!(!assoc.targets(None));
        let two = c(&["batch/upsert", "associations/batch/archive"]);
        two.validate().unwrap();
        assert!(two.targets(Some("batch/upsert")));
        assert!(!two.targets(Some("batch/update")));
        assert!(!two.targets(Some("associations/batch/create")));
        assert!(c(&["batch"]).targets(Some("batch/archive")));
        for bad in [
            &["association"][..],
            &["batch/"],
            &["associations/batch/associate/defaults"],
            &[],
        ] {
            assert!(c(bad).validate().is_err(), "{bad:?}");
        }
    }
}
