//! HubSpot CRM v3 objects (contacts, companies, deals, custom objects: same paths).
//!
//! Writes go through the batch endpoints only: `batch/update` for records that already
//! have a crm_id (so a changed email updates the same contact, principle 2),
//! `batch/upsert` by id_property for the others (so a resend never creates a duplicate),
//! `batch/archive` for deletes; associations through the v4 batch endpoints
//! (`associations`). Who is to blame for what is decided in `attribution`; a batch
//! refused whole comes back `Rejected`, for `crate::bisect` to split. Records naming one
//! object twice are held back (`Retry`) before sending, as HubSpot refuses such a batch.
//! Lookups (`find`: the object an unanswered upsert may have created) go through
//! `batch/read` by id_property, each value asked for once.

mod associations;
mod attribution;
mod models;

use crate::adapter::{
    batch_size, CrmAdapter, CrmSettings, Delete, Find, Link, Outcome, Report, ReportBuilder,
    RequestLog, Upsert,
};
use crate::config::AdapterConfig;
use crate::http::{ClientSettings, HttpClient, LimitHeaderNames, Pacer, Reply};
use attribution::{attribute, broken, Name, Op};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// HubSpot refuses more than 100 inputs per batch request.
const MAX_BATCH: usize = 100;
const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(30_000);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(5_000);

const LIMIT_HEADERS: LimitHeaderNames = LimitHeaderNames {
    interval_ms: "x-hubspot-ratelimit-interval-milliseconds",
    max: "x-hubspot-ratelimit-max",
    remaining: "x-hubspot-ratelimit-remaining",
    daily: "x-hubspot-ratelimit-daily",
    daily_remaining: "x-hubspot-ratelimit-daily-remaining",
};

/// `register_crm(..., config => …)` for `adapter => 'hubspot'`.
#[derive(Debug, Clone)]
pub(crate) struct HubspotConfig {
    /// No trailing slash.
    pub base_url: String,
    pub client: ClientSettings,
}

impl HubspotConfig {
    pub(crate) fn parse(config: &serde_json::Value) -> Result<Self, String> {
        let config = AdapterConfig::new(
            "hubspot",
            config,
            &["base_url", "timeout_ms", "connect_timeout_ms"],
        )?;
        Ok(HubspotConfig {
            base_url: config.base_url("base_url", DEFAULT_BASE_URL)?,
            client: ClientSettings {
                timeout: config.millis("timeout_ms", DEFAULT_TIMEOUT)?,
                connect_timeout: config.millis("connect_timeout_ms", DEFAULT_CONNECT_TIMEOUT)?,
            },
        })
    }
}

pub(crate) struct HubspotAdapter {
    client: HttpClient,
    base_url: String,
    batch_size: usize,
    timeout: Duration,
}

impl HubspotAdapter {
    pub(crate) fn new(settings: &CrmSettings, pacer: Box<dyn Pacer>) -> Result<Self, String> {
        let config = HubspotConfig::parse(&settings.config)?;
        let batch_size = batch_size(settings.batch_size, MAX_BATCH)?;
        // Without a token every request is a 401: say so once, here, rather than retry
        // forever.
        let secret = settings
            .secret
            .as_deref()
            // A token pasted with a trailing newline is still the token.
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or("the hubspot adapter needs a secret: a private app access token")?;
        Ok(HubspotAdapter {
            timeout: config.client.timeout,
            client: HttpClient::new(config.client, Some(secret), LIMIT_HEADERS, pacer)?,
            base_url: config.base_url,
            batch_size,
        })
    }

    /// `{base_url}/crm/v3/objects/{object_type}/{endpoint}`
    fn objects_url(&self, object_type: &str, op: Op) -> String {
        format!(
            "{}/crm/v3/objects/{}/{}",
            self.base_url,
            path_segment(object_type),
            op.endpoint()
        )
    }

    /// Sends one batch request to `url` and records its outcome for the inputs at
    /// `indices` (positions in the caller's items), which the CRM knows as `names`.
    fn send(
        &mut self,
        report: &mut ReportBuilder,
        url: &str,
        op: Op,
        indices: &[usize],
        names: &[Name],
        body: Vec<u8>,
    ) {
        if let Some(reason) = report.misconfiguration() {
            // The next request would meet the same token, scopes or base_url.
            let reason = reason.to_owned();
            report.retry(indices, &reason);
            return;
        }
        if report.paused() {
            // The CRM just asked us to slow down; sending more now would only earn
            // another 429 (or hit a broken CRM again).
            report.retry(indices, "not sent: the CRM asked to pause");
            return;
        }
        let exchange = match self.client.post_json(url, &body) {
            Ok(exchange) => exchange,
            Err(reason) => {
                report.retry(indices, &self.client.mask(&format!("not sent: {reason}")));
                return;
            }
        };
        let (http_status, verdict) = match &exchange.reply {
            Reply::Response {
                status,
                limits,
                body,
            } => (Some(*status), attribute(op, names, *status, limits, body)),
            Reply::Broken { status, error } => (*status, broken(names.len(), error)),
        };
        report.log(RequestLog {
            operation: op.operation().to_owned(),
            records: names.len(),
            http_status,
            duration_ms: exchange.duration_ms,
            error: verdict.error.as_deref().map(|e| self.client.mask(e)),
        });
        if let Some(reason) = &verdict.misconfigured {
            // Naming the URL shows a wrong base_url at a glance, and which object type
            // a token lacks the scope for.
            let reason = self.client.mask(&format!("{reason} (POST {url})"));
            report.retry(indices, &reason);
            report.misconfigured(reason);
        } else {
            for (&i, outcome) in indices.iter().zip(verdict.outcomes) {
                report.set(i, self.mask_outcome(outcome));
            }
        }
        if let Some(pause) = verdict.pause {
            report.pause(pause);
        }
        if verdict.daily_limit {
            report.daily_limit_reached();
        }
    }

    /// A CRM (or a proxy) could echo the token back in an error message.
    fn mask_outcome(&self, outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Failed { error } => Outcome::Failed {
                error: self.client.mask(&error),
            },
            Outcome::Retry { error } => Outcome::Retry {
                error: self.client.mask(&error),
            },
            Outcome::Stale { error } => Outcome::Stale {
                error: self.client.mask(&error),
            },
            Outcome::Rejected { error } => Outcome::Rejected {
                error: self.client.mask(&error),
            },
            done @ (Outcome::Synced { .. } | Outcome::Deleted) => done,
        }
    }
}

impl CrmAdapter for HubspotAdapter {
    fn max_batch_size(&self) -> usize {
        self.batch_size
    }

    /// Twice the client's timeout (a request it gave up on may still be served),
    /// and a margin for the time between the note and the request.
    fn unanswered_settle(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(5)
    }

    fn upsert(&mut self, object_type: &str, id_property: &str, items: &[Upsert]) -> Report {
        let mut report = ReportBuilder::new(items.iter().map(|i| i.key.as_str()));
        let mut updates = Vec::new();
        let mut upserts = Vec::new();
        // HubSpot refuses a whole batch naming one object twice ("Duplicate IDs"; an
        // email is unique ignoring case), and would apply only one of the two writes
        // anyway: the later records wait for a later batch, where they land on the same
        // object.
        let mut first_update = Dedupe::default();
        let mut first_upsert = Dedupe::default();
        for (i, item) in items.iter().enumerate() {
            match item.crm_id.as_deref() {
                Some(id) if !id.is_empty() && !first_update.first(id) => {
                    report.set(i, deferred("crm_id"));
                }
                Some(id) if !id.is_empty() => updates.push(i),
                _ if item.id_value.trim().is_empty() => {
                    // HubSpot would refuse the whole batch for it.
                    report.set(
                        i,
                        Outcome::Failed {
                            error: format!(
                                "the payload has no value for id_property '{id_property}'"
                            ),
                        },
                    );
                }
                _ if !first_upsert.first(&item.id_value) => {
                    report.set(i, deferred(&format!("{id_property} ignoring case")));
                }
                _ => upserts.push(i),
            }
        }
        // Defensive: the caller should not pass more than max_batch_size().
        for chunk in updates.chunks(self.batch_size) {
            let batch: Vec<&Upsert> = chunk.iter().map(|&i| &items[i]).collect();
            let ids: Vec<Name> = batch
                .iter()
                .map(|u| Name::Id(u.crm_id.as_deref().unwrap_or_default()))
                .collect();
            let body = models::update_body(&batch);
            let url = self.objects_url(object_type, Op::Update);
            self.send(&mut report, &url, Op::Update, chunk, &ids, body);
        }
        for chunk in upserts.chunks(self.batch_size) {
            let batch: Vec<&Upsert> = chunk.iter().map(|&i| &items[i]).collect();
            let ids: Vec<Name> = batch.iter().map(|u| Name::Id(&u.id_value)).collect();
            let body = models::upsert_body(id_property, &batch);
            let op = Op::Upsert { id_property };
            let url = self.objects_url(object_type, op);
            self.send(&mut report, &url, op, chunk, &ids, body);
        }
        report.finish()
    }

    fn delete(&mut self, object_type: &str, items: &[Delete]) -> Report {
        let mut report = ReportBuilder::new(items.iter().map(|i| i.key.as_str()));
        let indices: Vec<usize> = (0..items.len()).collect();
        for chunk in indices.chunks(self.batch_size) {
            let batch: Vec<&Delete> = chunk.iter().map(|&i| &items[i]).collect();
            let ids: Vec<Name> = batch.iter().map(|d| Name::Id(&d.crm_id)).collect();
            let body = models::archive_body(&batch);
            let url = self.objects_url(object_type, Op::Archive);
            self.send(&mut report, &url, Op::Archive, chunk, &ids, body);
        }
        report.finish()
    }

    fn find(&mut self, object_type: &str, id_property: &str, items: &[Find]) -> Report {
        let mut report = ReportBuilder::new(items.iter().map(|i| i.key.as_str()));
        // HubSpot refuses a batch naming one value twice ("Duplicate IDs"; an email is
        // unique ignoring case): each value is asked for once, and the items sharing it
        // get its answer.
        let mut first_with: HashMap<String, usize> = HashMap::new();
        let mut asked = Vec::new();
        let mut copies = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if item.id_value.trim().is_empty() {
                // upsert never sends a blank value, so it created nothing to find; and
                // HubSpot would refuse the whole batch for it.
                report.set(i, Outcome::Deleted);
                continue;
            }
            match first_with.entry(folded(&item.id_value)) {
                Entry::Occupied(first) => copies.push((i, *first.get())),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                    asked.push(i);
                }
            }
        }
        let op = Op::Read { id_property };
        let url = self.objects_url(object_type, op);
        for chunk in asked.chunks(self.batch_size) {
            let values: Vec<&str> = chunk.iter().map(|&i| items[i].id_value.as_str()).collect();
            let names: Vec<Name> = values.iter().map(|&v| Name::Id(v)).collect();
            let body = models::read_body(id_property, &values);
            self.send(&mut report, &url, op, chunk, &names, body);
        }
        for (i, first) in copies {
            report.same_as(i, first);
        }
        report.finish()
    }

    fn associate(&mut self, from_type: &str, to_type: &str, links: &[Link]) -> Report {
        associations::associate(self, from_type, to_type, links)
    }

    fn dissociate(&mut self, from_type: &str, to_type: &str, links: &[Link]) -> Report {
        associations::dissociate(self, from_type, to_type, links)
    }
}

/// Names already in a batch, compared the way HubSpot compares them: ignoring case
/// (emails are unique case-insensitively; crm ids are digits) and surrounding blanks.
#[derive(Default)]
struct Dedupe(HashSet<String>);

impl Dedupe {
    /// Whether `name` is new to the batch (and remembers it).
    fn first(&mut self, name: &str) -> bool {
        self.0.insert(folded(name))
    }
}

/// A name as HubSpot compares it within a batch.
fn folded(name: &str) -> String {
    name.trim().to_lowercase()
}

/// A record held back because another one of its batch names the same object.
fn deferred(what: &str) -> Outcome {
    Outcome::Retry {
        error: format!("deferred: another record in this batch has the same {what}"),
    }
}

/// Object types are names like `contacts`, `p12345_cars` or `2-123456`; anything else
/// is percent-encoded so it cannot change the path.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_defaults() {
        let c = HubspotConfig::parse(&json!({})).unwrap();
        assert_eq!(c.base_url, "https://api.hubapi.com");
        assert_eq!(c.client.timeout, Duration::from_secs(30));
        assert_eq!(c.client.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn object_types_cannot_escape_the_path() {
        assert_eq!(path_segment("contacts"), "contacts");
        assert_eq!(path_segment("2-123456"), "2-123456");
        assert_eq!(path_segment("p1_cars"), "p1_cars");
        assert_eq!(path_segment("../x?y=1"), "..%2Fx%3Fy%3D1");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn dedupe_ignores_case_and_blanks() {
        let mut d = Dedupe::default();
        assert!(d.first("Ann@X.io"));
        assert!(!d.first("ann@x.io "));
        assert!(d.first("bob@x.io"));
        assert_eq!(
            deferred("email ignoring case"),
            Outcome::Retry {
                error: "deferred: another record in this batch has the same email ignoring case"
                    .into()
            }
        );
    }
}
