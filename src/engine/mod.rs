//! The drain: claim → serialize → digest → plan → send → record.
//!
//! Runs in two hosts (`Host`): the worker gives each SQL step its own transaction,
//! so no transaction is open while the CRM is called (worker.rs); inline callers
//! (etlify.drain, etlify.sync without the worker) run every step in the caller's
//! transaction (api.rs).

mod links;
mod pacer;
pub mod store;

use etlify_core::adapter::{self, CrmAdapter, CrmSettings, Outcome, Report, RequestLog};
use etlify_core::links::Held;
use etlify_core::plan::{plan, Claimed, Intent, PlannedDelete, PlannedUpsert, Resolved, Verdict};
use pacer::{LocalPacer, Sleeper};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use store::Work;

/// The worker's claim token. Claims are committed before HTTP; a worker that dies
/// leaves them behind, and the next worker releases them at start.
pub const WORKER_CLAIMER: &str = "worker";

/// Change rows (statements) absorbed per transaction.
const ABSORB_ROWS: usize = 1000;

/// Delay before retrying records the CRM could not take, when it gave no hint.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);

/// Who runs the drain: the worker, or a backend inline (etlify.drain(), sync()
/// without a worker). The engine knows nothing else of its hosts.
pub trait Host: Copy + 'static {
    /// The claim token committed before HTTP; None for callers that hold the
    /// queue rows locked in their own transaction instead.
    fn claimer(self) -> Option<&'static str>;
    /// Runs one SQL step (in a transaction of its own, or in the caller's).
    fn step<R>(self, f: impl FnOnce() -> R) -> R;
    /// Sleeps while a rate limit asks to; false when asked to stop.
    fn sleeper(self) -> Sleeper;
    /// Between two batches of a drain (the worker serves waiting sync() callers).
    fn between_batches(self, engine: &mut Engine<Self>);
    /// Runs one mapping's round; what an error in it costs is the host's call.
    fn isolate(self, round: impl FnOnce() -> Vec<Resolved>) -> Vec<Resolved>;
    /// Called before the CRM is asked to write or archive `keys` of a mapping.
    fn before_send(self, mapping_id: i32, keys: Vec<String>);
}

/// What a drain did, by outcome.
#[derive(Debug, Default, Clone)]
pub struct Counts(HashMap<&'static str, u64>);

impl Counts {
    fn add(&mut self, results: &[Resolved]) {
        for r in results {
            *self.0.entry(r.verdict.counted_as().as_str()).or_default() += 1;
        }
    }

    pub fn to_json(&self) -> Value {
        let counts = Verdict::COUNTED.iter().map(|v| {
            let n = self.0.get(v.as_str()).copied().unwrap_or(0);
            (v.as_str().to_string(), json!(n))
        });
        Value::Object(counts.collect())
    }
}

struct Crm {
    version: String,
    adapter: Box<dyn CrmAdapter>,
    paused_until: Option<Instant>,
    /// 429s in a row: each doubles the least pause after the next one.
    throttled: u32,
}

/// The least pause after a 429, whatever its Retry-After says ("0" once earned
/// 1,028 requests in 3 s), doubled for each 429 in a row up to THROTTLE_MAX.
const THROTTLE_MIN: Duration = Duration::from_secs(1);
const THROTTLE_MAX: Duration = Duration::from_secs(60);

/// The pause after the `n`th 429 in a row (n ≥ 1), at least `asked`.
fn throttle_pause(n: u32, asked: Option<Duration>) -> Duration {
    let floor = THROTTLE_MIN
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(THROTTLE_MAX);
    asked.unwrap_or_default().max(floor)
}

pub struct Engine<H: Host> {
    host: H,
    crms: HashMap<String, Crm>,
}

impl<H: Host> Engine<H> {
    pub fn new(host: H) -> Self {
        Engine {
            host,
            crms: HashMap::new(),
        }
    }

    /// Drains ready records of every mapping (or of one CRM's), round after round,
    /// until nothing is ready, `max_records` were handled, or `stop()` says so.
    pub fn drain(
        &mut self,
        crm: Option<&str>,
        max_records: Option<usize>,
        stop: &dyn Fn() -> bool,
    ) -> Counts {
        let host = self.host;
        let mut counts = Counts::default();
        let mut budget = max_records.unwrap_or(usize::MAX);
        host.step(store::collect_forgotten);
        host.step(store::settle_inline_sends);
        host.step(store::release_buffered);
        loop {
            // writers' change rows first, in bounded transactions
            while host.step(|| store::absorb(ABSORB_ROWS)) >= ABSORB_ROWS as i64 {
                if stop() {
                    return counts;
                }
            }
            let work = host.step(|| store::work(crm));
            let mut claimed_any = false;
            for w in &work {
                if budget == 0 || stop() {
                    break;
                }
                host.between_batches(self);
                // a disabled CRM is paused, and a held one (this database is a
                // copy) waits for etlify.resume(): their records stay pending
                if !w.enabled || w.held || self.paused(w) {
                    continue;
                }
                let limit = crate::gucs::claim_size().min(budget);
                // an error in one mapping (a lock, a broken declaration) costs
                // that mapping its round, never the others theirs (in the worker)
                let results = host.isolate(|| self.round(w, limit, stop));
                if results.is_empty() {
                    continue;
                }
                claimed_any = true;
                // one result per claimed record
                budget = budget.saturating_sub(results.len());
                counts.add(&results);
            }
            if !claimed_any || budget == 0 || stop() {
                return counts;
            }
        }
    }

    /// One claim of a mapping, sent and recorded: a result per claimed record.
    fn round(&mut self, w: &Work, limit: usize, stop: &dyn Fn() -> bool) -> Vec<Resolved> {
        let host = self.host;
        let rows = host.step(|| store::claim(w.mapping_id, limit, host.claimer(), None));
        if rows.is_empty() {
            return Vec::new();
        }
        let (results, logs, held) = self.process(w, rows, Intent::Reconcile, stop);
        host.step(|| {
            store::record(w.mapping_id, host.claimer(), &results);
            store::linked(w.mapping_id, &held);
            store::log(&w.crm, w.source, logs);
        });
        results
    }

    /// etlify.sync / etlify.delete of one key: the verdict for it.
    pub fn one(&mut self, mapping_id: i32, key: &str, intent: Intent) -> Verdict {
        let host = self.host;
        let Some(w) = host
            .step(|| store::work(None))
            .into_iter()
            .find(|w| w.mapping_id == mapping_id)
        else {
            crate::error::Error::undefined(format!(
                "etlify: mapping {mapping_id} no longer exists"
            ))
            .raise();
        };
        if w.held && w.enabled {
            crate::error::Error::new(
                pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "etlify: CRM \"{}\" is held: this database is a copy of the one it was registered in",
                    w.crm
                ),
            )
            .with_hint(format!(
                "If this copy may write to that CRM, run etlify.resume('{}').",
                w.crm.replace('\'', "''")
            ))
            .raise();
        }
        if !w.enabled {
            // a disabled CRM is paused: nothing is sent, and the record stays (or
            // becomes) pending, to go out when the CRM is enabled again
            host.step(|| store::dirty(mapping_id, key));
            return Verdict::Disabled;
        }
        host.step(store::settle_inline_sends);
        // a stale crm_id is forgotten by the first attempt and upserted by the second
        for _ in 0..2 {
            let rows = host
                .step(|| store::claim(mapping_id, 1, host.claimer(), Some(vec![key.to_string()])));
            let (results, logs, held) = self.process(&w, rows, intent, &|| false);
            host.step(|| {
                store::record(mapping_id, host.claimer(), &results);
                store::linked(mapping_id, &held);
                store::log(&w.crm, w.source, logs);
            });
            match results.first().map(|r| r.verdict) {
                Some(Verdict::Stale) if intent == Intent::Reconcile => continue,
                Some(v) => return v,
                None => return Verdict::Noop,
            }
        }
        Verdict::Failed
    }

    /// Whether the CRM asked to pause and the pause still runs. Registering the
    /// CRM again lifts it (a new registration builds a new adapter, see crm()).
    fn paused(&self, w: &Work) -> bool {
        self.crms
            .get(&w.crm)
            .filter(|c| c.version == w.crm_version)
            .and_then(|c| c.paused_until)
            .is_some_and(|t| t > Instant::now())
    }

    /// The CRM's adapter, built once and rebuilt when its registration changes.
    fn crm(&mut self, w: &Work) -> Result<&mut Crm, String> {
        let fresh = self
            .crms
            .get(&w.crm)
            .is_some_and(|c| c.version == w.crm_version);
        if !fresh {
            let settings = CrmSettings {
                adapter: w.adapter.clone(),
                config: w.config.clone(),
                secret: w.secret.clone(),
                batch_size: w.batch_size.map(|n| n.max(1) as usize),
            };
            let pacer = LocalPacer::new(w.rate_limit, w.rate_period_ms, self.host.sleeper());
            let adapter = adapter::build(&settings, Box::new(pacer))?;
            self.crms.insert(
                w.crm.clone(),
                Crm {
                    version: w.crm_version.clone(),
                    adapter,
                    paused_until: None,
                    throttled: 0,
                },
            );
        }
        Ok(self.crms.get_mut(&w.crm).expect("inserted above"))
    }

    /// Plans a claimed batch and sends what must be sent. No SQL in here: in the
    /// worker this runs with no transaction open.
    /// Returns a result per record, the requests made, and the associations the CRM
    /// holds now.
    fn process(
        &mut self,
        w: &Work,
        mut rows: Vec<Claimed>,
        intent: Intent,
        stop: &dyn Fn() -> bool,
    ) -> (Vec<Resolved>, Vec<Value>, Vec<Held>) {
        // associations are made once the records are written (engine/links.rs)
        let wanted: HashMap<String, links::Wanted> = rows
            .iter_mut()
            .filter(|c| !c.links.is_empty())
            .map(|c| {
                let links = std::mem::take(&mut c.links);
                let crm_id = c.crm_id.clone();
                (c.key.clone(), links::Wanted { crm_id, links })
            })
            .collect();
        let p = plan(rows, &w.id_property, w.enabled, intent);
        let mut results = p.done;
        let mut logs = Vec::new();
        if !p.upserts.is_empty() || !p.deletes.is_empty() {
            self.send(w, p.upserts, p.deletes, &mut results, &mut logs, stop);
        }
        if wanted.is_empty() || intent == Intent::Delete {
            return (results, logs, Vec::new());
        }
        let held = match self.crm(w) {
            Ok(crm) => links::associate(crm, w, wanted, &mut results, &mut logs, stop),
            Err(_) => Vec::new(), // the records' sends said why already
        };
        (results, logs, held)
    }

    /// Sends a batch's upserts, then its deletes, adding a result per record.
    fn send(
        &mut self,
        w: &Work,
        upserts: Vec<PlannedUpsert>,
        deletes: Vec<PlannedDelete>,
        results: &mut Vec<Resolved>,
        logs: &mut Vec<Value>,
        stop: &dyn Fn() -> bool,
    ) {
        let host = self.host;
        let crm = match self.crm(w) {
            Ok(c) => c,
            Err(e) => {
                // a registration the adapter cannot use: the CRM's fault, not the records'
                let error = format!("CRM \"{}\" cannot be used: {e}", w.crm);
                logs.push(log_entry(&RequestLog {
                    operation: "configure".into(),
                    records: upserts.len() + deletes.len(),
                    http_status: None,
                    duration_ms: 0.0,
                    error: Some(error.clone()),
                }));
                for u in &upserts {
                    results.push(retry(&u.item.key, u.seq, &error, Duration::from_secs(60)));
                }
                for d in &deletes {
                    results.push(retry(&d.item.key, d.seq, &error, Duration::from_secs(60)));
                }
                return;
            }
        };
        let keys = upserts.iter().map(|u| u.item.key.clone());
        let keys = keys.chain(deletes.iter().map(|d| d.item.key.clone()));
        host.before_send(w.mapping_id, keys.collect());
        let batch = crm.adapter.max_batch_size().max(1);
        // CRM ids that upserts of this batch landed on. Upserts go first: when a
        // primary key changed, the new key's upsert (by id_property) finds the old
        // key's object, and the old key's delete must then leave it alone.
        let mut claimed_ids = std::collections::HashSet::new();

        for chunk in upserts.chunks(batch) {
            if let Some(reason) = hold(crm, stop) {
                results.extend(
                    chunk
                        .iter()
                        .map(|u| retry(&u.item.key, u.seq, &reason, remaining(crm))),
                );
                continue;
            }
            let items: Vec<_> = chunk.iter().map(|u| u.item.clone()).collect();
            let report = crm.adapter.upsert(&w.object_type, &w.id_property, &items);
            let by_key = absorb(crm, &report, logs);
            for u in chunk {
                results.push(match by_key.get(u.item.key.as_str()) {
                    Some(Outcome::Synced { crm_id }) => {
                        claimed_ids.insert(crm_id.clone());
                        Resolved {
                            crm_id: Some(crm_id.clone()),
                            digest: Some(u.digest),
                            ..Resolved::of(&u.item.key, u.seq, Verdict::Synced)
                        }
                    }
                    other => settle(&u.item.key, u.seq, other, &report),
                });
            }
        }
        let (kept, handed_over): (Vec<_>, Vec<_>) = deletes
            .into_iter()
            .partition(|d| !claimed_ids.contains(&d.item.crm_id));
        // the object now belongs to another key: this key no longer has one
        results.extend(
            handed_over
                .iter()
                .map(|d| Resolved::of(&d.item.key, d.seq, Verdict::Deleted)),
        );
        for chunk in kept.chunks(batch) {
            if let Some(reason) = hold(crm, stop) {
                results.extend(
                    chunk
                        .iter()
                        .map(|d| retry(&d.item.key, d.seq, &reason, remaining(crm))),
                );
                continue;
            }
            let items: Vec<_> = chunk.iter().map(|d| d.item.clone()).collect();
            let report = crm.adapter.delete(&w.object_type, &items);
            let by_key = absorb(crm, &report, logs);
            for d in chunk {
                results.push(settle(
                    &d.item.key,
                    d.seq,
                    by_key.get(d.item.key.as_str()),
                    &report,
                ));
            }
        }
    }
}

/// Why the next request must not go now, if it must not.
fn hold(crm: &Crm, stop: &dyn Fn() -> bool) -> Option<String> {
    if stop() {
        return Some("stopped before sending".into());
    }
    if crm.paused_until.is_some_and(|t| t > Instant::now()) {
        return Some("the CRM asked to slow down".into());
    }
    None
}

fn remaining(crm: &Crm) -> Duration {
    crm.paused_until
        .map(|t| t.saturating_duration_since(Instant::now()))
        .unwrap_or_default()
}

/// A request as `etlify._log` takes it.
fn log_entry(r: &RequestLog) -> Value {
    json!({
        "operation": r.operation,
        "records": r.records,
        "http_status": r.http_status,
        "duration_ms": r.duration_ms,
        "error": r.error,
    })
}

/// Takes a report's pause and request log; returns its outcomes by key.
fn absorb<'a>(
    crm: &mut Crm,
    report: &'a Report,
    logs: &mut Vec<Value>,
) -> HashMap<&'a str, &'a Outcome> {
    let status = |f: fn(u16) -> bool| report.requests.iter().any(|r| r.http_status.is_some_and(f));
    let mut pause = report.pause;
    if status(|s| s == 429) {
        crm.throttled = crm.throttled.saturating_add(1);
        pause = Some(throttle_pause(crm.throttled, pause));
    } else if status(|s| (200..300).contains(&s)) {
        crm.throttled = 0;
    }
    if let Some(p) = pause {
        crm.paused_until = Some(Instant::now() + p);
    }
    logs.extend(report.requests.iter().map(log_entry));
    report
        .outcomes
        .iter()
        .map(|(k, o)| (k.as_str(), o))
        .collect()
}

fn retry(key: &str, seq: Option<i64>, error: &str, after: Duration) -> Resolved {
    Resolved {
        error: Some(error.to_string()),
        retry_ms: Some(after.as_millis() as u64),
        ..Resolved::of(key, seq, Verdict::Retry)
    }
}

/// Every outcome but a successful upsert (which also carries the digest).
fn settle(key: &str, seq: Option<i64>, outcome: Option<&&Outcome>, report: &Report) -> Resolved {
    match outcome {
        Some(Outcome::Synced { crm_id }) => Resolved {
            crm_id: Some(crm_id.clone()),
            ..Resolved::of(key, seq, Verdict::Synced)
        },
        Some(Outcome::Deleted) => Resolved::of(key, seq, Verdict::Deleted),
        Some(Outcome::Failed { error }) => Resolved {
            error: Some(error.clone()),
            ..Resolved::of(key, seq, Verdict::Failed)
        },
        Some(Outcome::Retry { error }) => {
            retry(key, seq, error, report.pause.unwrap_or(DEFAULT_RETRY))
        }
        Some(Outcome::Stale { error }) => Resolved {
            error: Some(error.clone()),
            ..Resolved::of(key, seq, Verdict::Stale)
        },
        None => retry(
            key,
            seq,
            "the adapter returned no outcome for this record",
            DEFAULT_RETRY,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_pauses_at_least_a_second_doubling_in_a_row() {
        let zero = Some(Duration::ZERO);
        assert_eq!(throttle_pause(1, zero), Duration::from_secs(1));
        assert_eq!(throttle_pause(2, zero), Duration::from_secs(2));
        assert_eq!(throttle_pause(3, None), Duration::from_secs(4));
        assert_eq!(throttle_pause(40, zero), THROTTLE_MAX);
        // a longer Retry-After wins
        assert_eq!(
            throttle_pause(1, Some(Duration::from_secs(9))),
            Duration::from_secs(9)
        );
    }
}
