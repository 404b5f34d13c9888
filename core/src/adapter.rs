//! What every CRM adapter promises the worker, and how one is chosen and built.
//!
//! An adapter turns a batch of upserts or deletes into requests, and every input into
//! exactly one [`Outcome`]: the worker records outcomes without knowing any vendor.
//! Blame is the adapter's job (principle 7): `Failed` counts against the record,
//! `Retry`, `Stale` and `Rejected` do not. A `Rejected` batch is split by
//! [`crate::bisect`] until the CRM's refusal lands on the records that earned it.

use crate::http::Pacer;
use crate::{hubspot, null};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Upsert {
    pub key: String,
    pub crm_id: Option<String>,
    pub id_value: String,
    pub properties: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    pub key: String,
    pub crm_id: String,
}

/// A record whose earlier upsert by id_property was never answered: the CRM may hold
/// an object whose id_property is `id_value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Find {
    pub key: String,
    pub id_value: String,
}

/// An association between two CRM objects (HubSpot v4 associations).
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// Opaque to the adapter: names this link in the report's outcomes (the engine
    /// puts the record's key and the dependency's position in it).
    pub key: String,
    pub from_id: String,
    pub to_id: String,
    /// None: the default (unlabelled) association; Some: a labelled one.
    pub label: Option<Label>,
}

/// A labelled association type, e.g. HUBSPOT_DEFINED 5 (deal to company, primary).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label {
    pub category: String,
    pub type_id: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Synced {
        crm_id: String,
    },
    /// Archived, or already gone.
    Deleted,
    /// The record's fault: counts toward max_sync_errors.
    Failed {
        error: String,
    },
    /// Not the record's fault (429, 5xx, 423, 477, timeout, network; auth/config too, with
    /// [`Report::misconfigured`] set): retry later, not counted.
    Retry {
        error: String,
    },
    /// The stored crm_id is unknown to the CRM: forget it, upsert by id_property next time, not counted.
    Stale {
        error: String,
    },
    /// Refused together with the rest of its batch; the CRM named no input (a 409
    /// CONFLICT, a VALIDATION_ERROR naming only a property, a batch too large). Not
    /// counted: some other record of the batch may be the culprit. Adapters only answer
    /// it for requests of two inputs or more (a lone input refused is that input's
    /// fault), so [`crate::bisect::bisect`] can always narrow it down to `Failed`.
    Rejected {
        error: String,
    },
}

#[derive(Debug, Clone)]
pub struct RequestLog {
    /// e.g. "batch/upsert"
    pub operation: String,
    pub records: usize,
    /// None when no response arrived.
    pub http_status: Option<u16>,
    pub duration_ms: f64,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct Report {
    /// (key, outcome): exactly one per input item, every input accounted for, in input order.
    pub outcomes: Vec<(String, Outcome)>,
    /// One per HTTP request made.
    pub requests: Vec<RequestLog>,
    /// The CRM asked us to slow down (Retry-After, 429 interval headers, 5xx): caller waits this long before the next request to this CRM.
    pub pause: Option<Duration>,
    /// The CRM cannot be used as registered (401, 403, no such route, a redirect): why,
    /// naming what to check. Waiting will not fix it: the engine pauses the CRM with this
    /// reason until an operator fixes the registration or resumes it. Every input of the
    /// call is `Retry`.
    pub misconfigured: Option<String>,
    /// A 429 on the daily quota: nothing more goes through until it resets (midnight in
    /// the account's time zone, which the CRM does not say).
    pub daily_limit_reached: bool,
}

pub trait CrmAdapter {
    /// Records per request.
    fn max_batch_size(&self) -> usize;
    /// How long a request whose answer never came may still be landing in the CRM:
    /// an object it made is looked up only after this (crate::unanswered), or the
    /// look-up could miss it.
    fn unanswered_settle(&self) -> Duration {
        Duration::from_secs(65)
    }
    /// Items with crm_id: update addressed by crm_id; without: upsert by id_property = id_value.
    /// The caller passes at most max_batch_size() items; the adapter may make more than one request (e.g. one update + one upsert).
    fn upsert(&mut self, object_type: &str, id_property: &str, items: &[Upsert]) -> Report;
    fn delete(&mut self, object_type: &str, items: &[Delete]) -> Report;
    /// Looks objects up by their id_property value; an outcome per item, in input order:
    /// `Synced { crm_id }` when a live (not archived) object has that value, `Deleted` when
    /// none has, `Retry`/`Failed`/… on errors, exactly as for the other calls (pauses,
    /// misconfiguration, request log).
    ///
    /// The default answers `Deleted` for every item, without a request: an adapter that
    /// cannot look objects up must be one whose upserts leave nothing behind to find
    /// (the null adapter keeps nothing), so a lost answer cost nothing.
    fn find(&mut self, object_type: &str, id_property: &str, items: &[Find]) -> Report {
        let _ = (object_type, id_property);
        Report {
            outcomes: items
                .iter()
                .map(|f| (f.key.clone(), Outcome::Deleted))
                .collect(),
            ..Report::default()
        }
    }
    /// Creates the associations `from_type` → `to_type` of `links`; an outcome per
    /// link: `Synced { crm_id: to_id }` when it exists now (created, or there already).
    fn associate(&mut self, from_type: &str, to_type: &str, links: &[Link]) -> Report {
        let _ = (from_type, to_type);
        unsupported(links, "associations")
    }
    /// Removes every association between each link's two objects (the label is not
    /// looked at); an outcome per link: `Deleted` when none is left (also when there
    /// was none).
    fn dissociate(&mut self, from_type: &str, to_type: &str, links: &[Link]) -> Report {
        let _ = (from_type, to_type);
        unsupported(links, "associations")
    }
}

/// What an adapter without `what` answers for every link: the record's fault (the
/// declaration asks for something this CRM cannot do).
fn unsupported(links: &[Link], what: &str) -> Report {
    Report {
        outcomes: links
            .iter()
            .map(|l| {
                let error = format!("this CRM's adapter does not support {what}");
                (l.key.clone(), Outcome::Failed { error })
            })
            .collect(),
        ..Report::default()
    }
}

pub struct CrmSettings {
    pub adapter: String,
    pub config: serde_json::Value,
    pub secret: Option<String>,
    pub batch_size: Option<usize>,
}

/// Adapters that can be built today.
const AVAILABLE: [&str; 2] = ["hubspot", "null"];
/// Adapters the SQL API already names (ROADMAP item 3).
const PLANNED: [&str; 3] = ["airtable", "salesforce", "webhook"];

/// Validates the adapter name and its config (unknown adapter, bad base_url, unknown keys, wrong types → Err naming the culprit).
pub fn validate(adapter: &str, config: &serde_json::Value) -> Result<(), String> {
    match adapter {
        "hubspot" => hubspot::HubspotConfig::parse(config).map(drop),
        "null" => null::NullAdapter::parse_config(config),
        other => Err(unknown_adapter(other)),
    }
}

/// Whether a secret can be sent at all: it travels in an HTTP header, which
/// carries visible ASCII only. Checked when it is registered, so that a token
/// pasted with a newline or a typographic quote is refused at once, not retried
/// by the worker forever. The error never shows the secret.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if secret.trim().is_empty() {
        return Err("the secret is empty".into());
    }
    if secret.trim() != secret {
        return Err("the secret starts or ends with whitespace".into());
    }
    match secret.chars().position(|c| !(' '..='~').contains(&c)) {
        Some(i) => {
            let c = secret.chars().nth(i).unwrap_or_default();
            let what = if c.is_control() {
                "a control character"
            } else {
                "a character that is not ASCII"
            };
            Err(format!(
                "the secret has {what} at position {} (an HTTP header carries visible ASCII only)",
                i + 1
            ))
        }
        None => Ok(()),
    }
}

/// Builds the adapter. Adapters known now: "hubspot", "null".
pub fn build(settings: &CrmSettings, pacer: Box<dyn Pacer>) -> Result<Box<dyn CrmAdapter>, String> {
    match settings.adapter.as_str() {
        "hubspot" => Ok(Box::new(hubspot::HubspotAdapter::new(settings, pacer)?)),
        "null" => Ok(Box::new(null::NullAdapter::new(settings)?)),
        other => Err(unknown_adapter(other)),
    }
}

fn unknown_adapter(name: &str) -> String {
    if PLANNED.contains(&name) {
        format!("adapter '{name}' is not available yet")
    } else {
        format!(
            "unknown adapter '{name}' (expected one of: {})",
            AVAILABLE.join(", ")
        )
    }
}

/// The `batch_size` setting may lower the adapter's maximum, never raise it.
pub(crate) fn batch_size(requested: Option<usize>, max: usize) -> Result<usize, String> {
    match requested {
        None => Ok(max),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(format!("batch_size must be between 1 and {max}, got {n}")),
    }
}

/// Collects one outcome per input, whatever order requests and answers come in, and
/// turns them into a [`Report`] in input order.
pub(crate) struct ReportBuilder {
    keys: Vec<String>,
    outcomes: Vec<Option<Outcome>>,
    requests: Vec<RequestLog>,
    pause: Option<Duration>,
    misconfigured: Option<String>,
    daily_limit_reached: bool,
}

impl ReportBuilder {
    pub(crate) fn new<'a>(keys: impl Iterator<Item = &'a str>) -> Self {
        let keys: Vec<String> = keys.map(str::to_owned).collect();
        ReportBuilder {
            outcomes: vec![None; keys.len()],
            keys,
            requests: Vec::new(),
            pause: None,
            misconfigured: None,
            daily_limit_reached: false,
        }
    }

    pub(crate) fn set(&mut self, index: usize, outcome: Outcome) {
        self.outcomes[index] = Some(outcome);
    }

    /// Input `index` gets the outcome already set for input `other` (the two name the
    /// same object, and only one of them was sent).
    pub(crate) fn same_as(&mut self, index: usize, other: usize) {
        self.outcomes[index] = self.outcomes[other].clone();
    }

    /// The inputs at `indices` were not applied, through no fault of theirs.
    pub(crate) fn retry(&mut self, indices: &[usize], error: &str) {
        for &i in indices {
            self.set(
                i,
                Outcome::Retry {
                    error: error.to_owned(),
                },
            );
        }
    }

    pub(crate) fn log(&mut self, request: RequestLog) {
        self.requests.push(request);
    }

    /// Several requests may ask for a pause: the longest wins.
    pub(crate) fn pause(&mut self, pause: Duration) {
        self.pause = Some(self.pause.map_or(pause, |p| p.max(pause)));
    }

    /// Once the CRM asked for a pause, the rest of this call is not sent.
    pub(crate) fn paused(&self) -> bool {
        self.pause.is_some()
    }

    /// The CRM cannot be used as registered; the first reason is kept (it names the
    /// request that found out).
    pub(crate) fn misconfigured(&mut self, reason: String) {
        self.misconfigured.get_or_insert(reason);
    }

    /// Why the rest of this call is not sent, when the CRM is misconfigured.
    pub(crate) fn misconfiguration(&self) -> Option<&str> {
        self.misconfigured.as_deref()
    }

    pub(crate) fn daily_limit_reached(&mut self) {
        self.daily_limit_reached = true;
    }

    pub(crate) fn finish(self) -> Report {
        debug_assert!(
            self.outcomes.iter().all(Option::is_some),
            "an input has no outcome"
        );
        let outcomes = self
            .keys
            .into_iter()
            .zip(self.outcomes)
            .map(|(key, outcome)| {
                // Unreachable by construction; if it ever happens the record is retried,
                // never silently marked as done.
                let outcome = outcome.unwrap_or_else(|| Outcome::Retry {
                    error: "etlify bug: the adapter gave this record no outcome".into(),
                });
                (key, outcome)
            })
            .collect();
        Report {
            outcomes,
            requests: self.requests,
            pause: self.pause,
            misconfigured: self.misconfigured,
            daily_limit_reached: self.daily_limit_reached,
        }
    }
}

/// Error texts end up in `last_error` and `sync_log`: keep them readable there.
pub(crate) fn shorten(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max_chars) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Unpaced;
    use serde_json::json;

    fn settings(adapter: &str, config: serde_json::Value) -> CrmSettings {
        CrmSettings {
            adapter: adapter.into(),
            config,
            secret: Some("pat-secret".into()),
            batch_size: None,
        }
    }

    #[test]
    fn validate_names_unknown_and_planned_adapters() {
        assert_eq!(
            validate("airtable", &json!({})),
            Err("adapter 'airtable' is not available yet".into())
        );
        assert_eq!(
            validate("salesforce", &json!({})),
            Err("adapter 'salesforce' is not available yet".into())
        );
        assert_eq!(
            validate("webhook", &json!({})),
            Err("adapter 'webhook' is not available yet".into())
        );
        assert_eq!(
            validate("x", &json!({})),
            Err("unknown adapter 'x' (expected one of: hubspot, null)".into())
        );
        assert_eq!(
            validate("HubSpot", &json!({})),
            Err("unknown adapter 'HubSpot' (expected one of: hubspot, null)".into())
        );
    }

    #[test]
    fn validate_accepts_good_configs() {
        assert_eq!(validate("null", &json!({})), Ok(()));
        assert_eq!(validate("null", &serde_json::Value::Null), Ok(()));
        assert_eq!(validate("hubspot", &json!({})), Ok(()));
        assert_eq!(
            validate(
                "hubspot",
                &json!({"base_url": "http://127.0.0.1:8025/", "timeout_ms": 2000, "connect_timeout_ms": 500})
            ),
            Ok(())
        );
    }

    #[test]
    fn validate_names_the_culprit() {
        let err =
            |adapter: &str, config: serde_json::Value| validate(adapter, &config).unwrap_err();
        assert_eq!(
            err("null", json!({"base_url": "http://x"})),
            "null config: unknown key 'base_url' (the null adapter takes no settings)"
        );
        assert_eq!(
            err("hubspot", json!({"baseurl": "http://x"})),
            "hubspot config: unknown key 'baseurl' (expected: base_url, connect_timeout_ms, timeout_ms)"
        );
        assert_eq!(
            err("hubspot", json!(["base_url"])),
            "hubspot config must be a JSON object, got an array"
        );
        assert_eq!(
            err("hubspot", json!({"base_url": 8080})),
            "hubspot config: base_url must be a string, got a number"
        );
        assert_eq!(
            err("hubspot", json!({"timeout_ms": "30s"})),
            "hubspot config: timeout_ms must be a whole number of milliseconds between 1 and 600000, got \"30s\""
        );
        assert_eq!(
            err("hubspot", json!({"connect_timeout_ms": 0})),
            "hubspot config: connect_timeout_ms must be a whole number of milliseconds between 1 and 600000, got 0"
        );
        assert_eq!(
            err("hubspot", json!({"timeout_ms": 1.5})),
            "hubspot config: timeout_ms must be a whole number of milliseconds between 1 and 600000, got 1.5"
        );
    }

    #[test]
    fn validate_rejects_bad_base_urls() {
        for (url, why) in [
            ("api.hubapi.com", "must start with http:// or https://"),
            (
                "ftp://api.hubapi.com",
                "must start with http:// or https://",
            ),
            ("http://", "has no host"),
            (
                "https://user:pw@api.hubapi.com",
                "must not contain credentials",
            ),
            (
                "https://api.hubapi.com/?x=1",
                "must not have a query or fragment",
            ),
            (
                "https://api.hubapi.com/#x",
                "must not have a query or fragment",
            ),
            ("https://api hubapi.com", "is not a valid URL"),
            ("", "must start with http:// or https://"),
        ] {
            let err = validate("hubspot", &json!({ "base_url": url })).unwrap_err();
            assert_eq!(
                err,
                format!("hubspot config: base_url '{url}' {why}"),
                "{url}"
            );
        }
    }

    #[test]
    fn build_checks_batch_size_and_secret() {
        let mut s = settings("hubspot", json!({}));
        assert_eq!(build(&s, Box::new(Unpaced)).unwrap().max_batch_size(), 100);
        s.batch_size = Some(25);
        assert_eq!(build(&s, Box::new(Unpaced)).unwrap().max_batch_size(), 25);
        for bad in [0, 101] {
            s.batch_size = Some(bad);
            assert_eq!(
                build(&s, Box::new(Unpaced)).err(),
                Some(format!("batch_size must be between 1 and 100, got {bad}"))
            );
        }
        s.batch_size = None;
        s.secret = None;
        assert_eq!(
            build(&s, Box::new(Unpaced)).err(),
            Some("the hubspot adapter needs a secret: a private app access token".into())
        );
        s.adapter = "airtable".into();
        assert_eq!(
            build(&s, Box::new(Unpaced)).err(),
            Some("adapter 'airtable' is not available yet".into())
        );
        let null = settings("null", json!({}));
        assert!(build(&null, Box::new(Unpaced)).is_ok());
    }

    #[test]
    fn report_builder_keeps_input_order_and_the_longest_pause() {
        let mut b = ReportBuilder::new(["a", "b"].into_iter());
        assert!(!b.paused());
        b.set(1, Outcome::Deleted);
        b.set(0, Outcome::Synced { crm_id: "1".into() });
        b.pause(Duration::from_secs(1));
        b.pause(Duration::from_secs(10));
        b.pause(Duration::from_secs(2));
        let r = b.finish();
        assert_eq!(
            r.outcomes,
            vec![
                ("a".into(), Outcome::Synced { crm_id: "1".into() }),
                ("b".into(), Outcome::Deleted)
            ]
        );
        assert_eq!(r.pause, Some(Duration::from_secs(10)));
        assert_eq!((r.misconfigured, r.daily_limit_reached), (None, false));
    }

    #[test]
    fn report_builder_keeps_the_first_misconfiguration() {
        let mut b = ReportBuilder::new(["a"].into_iter());
        b.set(0, Outcome::Deleted);
        assert_eq!(b.misconfiguration(), None);
        b.misconfigured("HTTP 401: check the secret".into());
        b.misconfigured("HTTP 403: check the scopes".into());
        b.daily_limit_reached();
        assert_eq!(b.misconfiguration(), Some("HTTP 401: check the secret"));
        let r = b.finish();
        assert_eq!(
            r.misconfigured.as_deref(),
            Some("HTTP 401: check the secret")
        );
        assert!(r.daily_limit_reached);
    }

    #[test]
    fn secrets_that_cannot_be_sent_are_refused_without_being_shown() {
        assert!(check_secret("pat-na1-0123abcd").is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("   ", "empty"),
            (" pat-1", "whitespace"),
            ("pat-1\n", "whitespace"),
            ("pat\u{7}1", "control character at position 4"),
            ("pat-“1”", "not ASCII at position 5"),
        ] {
            let e = check_secret(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(bad.trim().is_empty() || !e.contains(bad.trim()), "{e}");
        }
    }

    #[test]
    fn shorten_cuts_on_char_boundaries() {
        assert_eq!(shorten("  short  ", 10), "short");
        assert_eq!(shorten("ééééé", 3), "ééé…");
        assert_eq!(shorten("abc", 3), "abc");
    }
}
