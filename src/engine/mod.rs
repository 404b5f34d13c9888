//! The drain: claim → serialize → digest → plan → send → record.
//!
//! Runs in two hosts (`Host`): the worker gives each SQL step its own transaction,
//! so no transaction is open while the CRM is called (worker.rs); inline callers
//! (etlify.drain, etlify.sync without the worker) run every step in the caller's
//! transaction (api.rs).

mod links;
mod pacer;
pub mod store;

use crate::budgets::{self, CrmKey};
use etlify_core::adapter::{self, CrmAdapter, CrmSettings, Find, Outcome, Report, RequestLog};
use etlify_core::bisect::bisect;
use etlify_core::http::{Answer, Wait};
use etlify_core::links::Held;
use etlify_core::plan::{plan, Claimed, Intent, PlannedDelete, PlannedUpsert, Resolved, Verdict};
use etlify_core::unanswered::{self, Check};
use pacer::{BudgetPacer, Reservation, Sleeper};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use store::Work;

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
    /// The worker's number (1-based) when the host is a worker.
    fn worker(self) -> Option<usize>;
    /// Runs one SQL step (in a transaction of its own, or in the caller's).
    fn step<R>(self, f: impl FnOnce() -> R) -> R;
    /// Sleeps while a rate limit asks to; false when asked to stop.
    fn sleeper(self) -> Sleeper;
    /// Whether a request in flight must be abandoned (the process is stopping).
    fn interrupted(self) -> fn() -> bool;
    /// Between two batches of a drain (the worker serves waiting sync() callers).
    fn between_batches(self, engine: &mut Engine<Self>);
    /// Runs one mapping's round; what an error in it costs is the host's call.
    fn isolate(self, round: impl FnOnce() -> Vec<Resolved>) -> Vec<Resolved>;
    /// Called before the CRM is asked to write or archive these keys of a mapping;
    /// with each, the id_property value it is upserted by when it has no CRM id.
    fn before_send(self, mapping_id: i32, sends: Vec<(String, Option<String>)>);
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
    /// Its budget in shared memory (budgets.rs).
    key: CrmKey,
    /// A place in the rolling window taken before claiming; the round's first
    /// request uses it, or it is given back.
    reserved: Reservation,
}

pub struct Engine<H: Host> {
    host: H,
    crms: HashMap<String, Crm>,
    /// The earliest time something a drain left for later is due: a CRM it
    /// skipped (paused, or its window full), or a record's retry. The worker naps
    /// no longer than that; kept until it has passed.
    pub wake_at: Option<i64>,
}

impl<H: Host> Engine<H> {
    pub fn new(host: H) -> Self {
        Engine {
            host,
            crms: HashMap::new(),
            wake_at: None,
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
        // a wake-up still ahead stays: a drain that finds nothing ready (woken by
        // another commit meanwhile) must not forget the retry it was for
        let now = budgets::now_us();
        self.wake_at = self.wake_at.filter(|&at| at > now);
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
            let cap = round_cap(&work);
            let mut claimed_any = false;
            for w in &work {
                if budget == 0 || stop() {
                    break;
                }
                host.between_batches(self);
                // a disabled CRM is paused, and a held one (this database is a
                // copy) waits for etlify.resume(): their records stay pending
                if !w.enabled || w.held {
                    continue;
                }
                // a CRM that is paused or whose window is full is skipped, never
                // waited for: the others' records go meanwhile
                if let Err(until) = self.reserve(w) {
                    self.wake_no_later(until);
                    continue;
                }
                // with two CRMs or more, one of them never takes every worker: a
                // CRM that hangs holds one worker, not the others' deliveries
                let entered = host.worker().map(|i| (i, CrmKey::of(w)));
                if let Some((i, key)) = &entered {
                    if !budgets::enter(key, *i, cap) {
                        self.unreserve(w);
                        continue;
                    }
                }
                let limit = crate::gucs::claim_size().min(budget);
                // an error in one mapping (a lock, a broken declaration) costs
                // that mapping its round, never the others theirs (in the worker)
                let results = host.isolate(|| self.round(w, limit, stop));
                self.unreserve(w);
                if let Some((i, key)) = &entered {
                    budgets::leave(key, *i);
                }
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

    fn wake_no_later(&mut self, at: i64) {
        self.wake_at = Some(self.wake_at.map_or(at, |t| t.min(at)));
    }

    /// Takes a place in the CRM's window for the round's first request; Err(until)
    /// when the CRM may not be called before then.
    fn reserve(&mut self, w: &Work) -> Result<(), i64> {
        let key = CrmKey::of(w);
        let at = budgets::with(&key, |b, now| b.take(now).map(|()| now)).map_err(Wait::until)?;
        match self.crm(w) {
            Ok(crm) => crm.reserved.set(Some(at)),
            // the round says why the CRM cannot be used (and pauses it)
            Err(_) => budgets::with(&key, |b, _| b.give_back(at)),
        }
        Ok(())
    }

    /// Gives back a reservation the round did not use (nothing had to be sent).
    fn unreserve(&mut self, w: &Work) {
        if let Some(crm) = self.crms.get(&w.crm) {
            if let Some(at) = crm.reserved.take() {
                budgets::with(&crm.key, |b, _| b.give_back(at));
            }
        }
    }

    /// Claims records of a mapping (the ready ones, or `keys`), and notes in the
    /// same transaction the values those without a CRM id will be upserted by
    /// (etlify_core::unanswered): committed before any request goes.
    fn claim(
        &self,
        w: &Work,
        limit: usize,
        keys: Option<Vec<String>>,
        intent: Intent,
    ) -> Vec<Claimed> {
        let host = self.host;
        host.step(|| {
            let rows = store::claim(w.mapping_id, limit, host.claimer(), keys);
            store::note_unanswered(w.mapping_id, notes(w, &rows, intent));
            rows
        })
    }

    /// One claim of a mapping, sent and recorded: a result per claimed record.
    fn round(&mut self, w: &Work, limit: usize, stop: &dyn Fn() -> bool) -> Vec<Resolved> {
        let host = self.host;
        let rows = self.claim(w, limit, None, Intent::Reconcile);
        if rows.is_empty() {
            return Vec::new();
        }
        let (results, logs, held) = self.process(w, rows, Intent::Reconcile, stop);
        let retry_in = host.step(|| {
            let retry_in = store::record(w.mapping_id, host.claimer(), &results);
            store::linked(w.mapping_id, &held);
            store::log(&w.crm, w.source, logs);
            retry_in
        });
        if let Some(d) = retry_in {
            self.wake_no_later(budgets::now_us() + d.as_micros() as i64);
        }
        results
    }

    pub fn host(&self) -> H {
        self.host
    }

    /// etlify.sync / etlify.delete of one key: the verdict for it. None (in a
    /// worker only) when as many other workers as may are busy with its CRM, or
    /// when another claimer is sending the key: the request waits for later.
    pub fn one(&mut self, mapping_id: i32, key: &str, intent: Intent) -> Option<Verdict> {
        let host = self.host;
        let work = host.step(|| store::work(None));
        let cap = round_cap(&work);
        let Some(w) = work.into_iter().find(|w| w.mapping_id == mapping_id) else {
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
            return Some(Verdict::Disabled);
        }
        let Some(index) = host.worker() else {
            // inline: wait until the claimer that is sending this key is done (a
            // cancel or statement_timeout ends the wait)
            loop {
                if let Some(v) = self.one_of(&w, key, intent) {
                    return Some(v);
                }
                crate::latch::backend_wait(Duration::from_millis(50));
            }
        };
        let crm_key = CrmKey::of(&w);
        if !budgets::enter(&crm_key, index, cap) {
            return None;
        }
        // an error unwinds past this: recover() forgets the worker's rounds
        let verdict = self.one_of(&w, key, intent);
        budgets::leave(&crm_key, index);
        verdict
    }

    /// None when another claimer is sending the key now: sending it beside that
    /// one could land the older payload last.
    fn one_of(&mut self, w: &Work, key: &str, intent: Intent) -> Option<Verdict> {
        let host = self.host;
        let mapping_id = w.mapping_id;
        host.step(store::settle_inline_sends);
        // a stale crm_id is forgotten by the first attempt and upserted by the second
        for _ in 0..2 {
            let rows = self.claim(w, 1, Some(vec![key.to_string()]), intent);
            if rows.iter().any(|r| r.seq.is_none()) {
                return None;
            }
            let (results, logs, held) = self.process(w, rows, intent, &|| false);
            host.step(|| {
                store::record(mapping_id, host.claimer(), &results);
                store::linked(mapping_id, &held);
                store::log(&w.crm, w.source, logs);
            });
            match results.first().map(|r| r.verdict) {
                Some(Verdict::Stale) if intent == Intent::Reconcile => continue,
                Some(v) => return Some(v),
                None => return Some(Verdict::Noop),
            }
        }
        Some(Verdict::Failed)
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
            let key = CrmKey::of(w);
            let reserved = Reservation::default();
            let pacer = BudgetPacer::new(
                key.clone(),
                self.host.sleeper(),
                self.host.interrupted(),
                reserved.clone(),
            );
            let adapter = adapter::build(&settings, Box::new(pacer))?;
            self.crms.insert(
                w.crm.clone(),
                Crm {
                    version: w.crm_version.clone(),
                    adapter,
                    key,
                    reserved,
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
        let mut results = Vec::new();
        let mut logs = Vec::new();
        let rows = self.unanswered(w, rows, intent, &mut results, &mut logs, stop);
        let p = plan(rows, &w.id_property, w.enabled, intent);
        results.extend(p.done);
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

    /// Records whose earlier upsert by id_property was never answered, and whose
    /// row is gone or has another value now (etlify_core::unanswered): the object
    /// that upsert may have made is looked up by the value it was sent, and then
    /// archived or updated by its id, like any record's. Those it is too early for
    /// wait; the rest go on to the plan (SQL only in host steps).
    fn unanswered(
        &mut self,
        w: &Work,
        rows: Vec<Claimed>,
        intent: Intent,
        results: &mut Vec<Resolved>,
        logs: &mut Vec<Value>,
        stop: &dyn Fn() -> bool,
    ) -> Vec<Claimed> {
        if !w.enabled || rows.iter().all(|c| c.unanswered.is_none()) {
            return rows;
        }
        let host = self.host;
        let Ok(crm) = self.crm(w) else {
            return rows; // the sends say why
        };
        let settle = crm.adapter.unanswered_settle();
        let mut kept = Vec::with_capacity(rows.len());
        let mut finds = Vec::new();
        for c in rows {
            match unanswered::check(&c, &w.id_property, intent, settle) {
                Check::Nothing => kept.push(c),
                Check::Wait(after) => {
                    let why = format!(
                        "an earlier upsert by {} was never answered: the object it may have made is looked up once that request has surely landed",
                        w.id_property
                    );
                    results.push(retry(&c.key, c.seq, &why, after));
                }
                Check::Find(value) => finds.push((c, value)),
            }
        }
        if finds.is_empty() {
            return kept;
        }
        if let Some((reason, wait)) = hold(crm, stop) {
            results.extend(
                finds
                    .iter()
                    .map(|(c, _)| retry(&c.key, c.seq, &reason, wait)),
            );
            return kept;
        }
        let items: Vec<Find> = finds
            .iter()
            .map(|(c, v)| Find {
                key: c.key.clone(),
                id_value: v.clone(),
            })
            .collect();
        let report = crm.adapter.find(&w.object_type, &w.id_property, &items);
        let by_key = absorb(crm, &report, logs);
        let (mut found, mut absent) = (Vec::new(), Vec::new());
        for (c, _) in finds {
            match by_key.get(c.key.as_str()) {
                Some(Outcome::Synced { crm_id }) => found.push((c, crm_id.clone())),
                Some(Outcome::Deleted) => absent.push(c),
                // not knowing is never the record's fault: it is looked up again
                Some(
                    Outcome::Retry { error }
                    | Outcome::Failed { error }
                    | Outcome::Rejected { error }
                    | Outcome::Stale { error },
                ) => results.push(retry(
                    &c.key,
                    c.seq,
                    &format!("looking up the object of an unanswered upsert: {error}"),
                    report.pause.unwrap_or(DEFAULT_RETRY),
                )),
                None => results.push(retry(
                    &c.key,
                    c.seq,
                    "the adapter returned no outcome for this record",
                    DEFAULT_RETRY,
                )),
            }
        }
        // an object another record holds is that record's, never this one's
        let ids = found.iter().map(|(_, id)| id.clone()).collect();
        let held = host.step(|| store::held_ids(w.mapping_id, ids));
        for (mut c, id) in found {
            if held.contains(&id) {
                absent.push(c);
            } else {
                c.crm_id = Some(id);
                kept.push(c);
            }
        }
        // no object by the old value: the note becomes the value the record is
        // upserted by now (before that request goes), or goes
        let renotes = absent
            .iter()
            .map(|c| (c.key.clone(), unanswered::renote(c, &w.id_property, intent)))
            .collect();
        host.step(|| store::note_unanswered(w.mapping_id, renotes));
        kept.extend(absent);
        kept
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
                let answer = Answer {
                    misconfigured: Some(&error),
                    ..Answer::default()
                };
                budgets::with(&CrmKey::of(w), |b, now| b.answered(now, &answer));
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
        let sends = upserts.iter().map(|u| {
            let by_value = u.item.crm_id.is_none().then(|| u.item.id_value.clone());
            (u.item.key.clone(), by_value)
        });
        let sends = sends.chain(deletes.iter().map(|d| (d.item.key.clone(), None)));
        host.before_send(w.mapping_id, sends.collect());
        let batch = crm.adapter.max_batch_size().max(1);
        // CRM ids that upserts of this batch landed on. Upserts go first: when a
        // primary key changed, the new key's upsert (by id_property) finds the old
        // key's object, and the old key's delete must then leave it alone.
        let mut claimed_ids = std::collections::HashSet::new();

        for chunk in upserts.chunks(batch) {
            if let Some((reason, wait)) = hold(crm, stop) {
                results.extend(
                    chunk
                        .iter()
                        .map(|u| retry(&u.item.key, u.seq, &reason, wait)),
                );
                continue;
            }
            let items: Vec<_> = chunk.iter().map(|u| u.item.clone()).collect();
            // a batch refused as a whole is split until the refused records are found
            let adapter = &mut crm.adapter;
            let report = bisect(&items, |u| &u.key, &mut |part| {
                adapter.upsert(&w.object_type, &w.id_property, part)
            });
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
                    other => Resolved {
                        refused: u.item.crm_id.is_none()
                            && matches!(other, Some(Outcome::Failed { .. })),
                        ..settle(&u.item.key, u.seq, other, &report)
                    },
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
            if let Some((reason, wait)) = hold(crm, stop) {
                results.extend(
                    chunk
                        .iter()
                        .map(|d| retry(&d.item.key, d.seq, &reason, wait)),
                );
                continue;
            }
            let items: Vec<_> = chunk.iter().map(|d| d.item.clone()).collect();
            let adapter = &mut crm.adapter;
            let report = bisect(&items, |d| &d.key, &mut |part| {
                adapter.delete(&w.object_type, part)
            });
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

/// The notes to write for claimed records before their requests (see
/// etlify_core::unanswered): none for a disabled CRM, which sends nothing.
fn notes(w: &Work, rows: &[Claimed], intent: Intent) -> Vec<(String, Option<String>)> {
    if !w.enabled {
        return Vec::new();
    }
    rows.iter()
        .filter_map(|c| {
            let v = unanswered::note(c, &w.id_property, intent)?;
            Some((c.key.clone(), Some(v)))
        })
        .collect()
}

/// How many workers may be in a round on one CRM at once: all of them when the
/// database syncs to one CRM, all but one when it syncs to several.
fn round_cap(work: &[Work]) -> u32 {
    let workers = crate::gucs::workers() as u32;
    let mut crms: Vec<&str> = work
        .iter()
        .filter(|w| w.enabled && !w.held)
        .map(|w| w.crm.as_str())
        .collect();
    crms.sort_unstable();
    crms.dedup();
    if crms.len() > 1 {
        workers.saturating_sub(1).max(1)
    } else {
        workers.max(1)
    }
}

/// Why the next request must not go now, and for how long, if it must not: asked to
/// stop, the CRM paused, or its window full for longer than a request waits (the
/// records then wait in the queue, not in a worker).
fn hold(crm: &Crm, stop: &dyn Fn() -> bool) -> Option<(String, Duration)> {
    if stop() {
        return Some(("stopped before sending".into(), Duration::ZERO));
    }
    // the round's first request has its place in the window already
    let reserved = crm.reserved.get().is_some();
    budgets::with(&crm.key, |b, now| match b.check(now) {
        Err(Wait::Paused { until, .. }) => {
            let why = match b.reason() {
                "" => "the CRM asked to pause".to_owned(),
                reason => format!("the CRM is paused: {reason}"),
            };
            Some((why, budgets::until(until)))
        }
        // a short wait for the window is the request's own (the pacer waits it out)
        Err(Wait::Window { until }) if !reserved && budgets::until(until) > pacer::MAX_WAIT => {
            Some((
                "waiting for the CRM's rate limit".to_owned(),
                budgets::until(until),
            ))
        }
        _ => None,
    })
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

/// Tells the CRM's budget what the report's answers said (pauses, 429s, outages) and
/// takes its request log; returns its outcomes by key.
fn absorb<'a>(
    crm: &Crm,
    report: &'a Report,
    logs: &mut Vec<Value>,
) -> HashMap<&'a str, &'a Outcome> {
    let statuses = || report.requests.iter().map(|r| r.http_status);
    let answer = Answer {
        ok: statuses().any(|s| s.is_some_and(|s| (200..300).contains(&s))),
        throttled: statuses().filter(|s| *s == Some(429)).count() as u32,
        faulted: statuses().any(|s| s.is_none_or(|s| matches!(s, 423 | 477 | 500..=599))),
        asked: report.pause,
        misconfigured: report.misconfigured.as_deref(),
        daily_reached: report.daily_limit_reached,
        said: report
            .requests
            .iter()
            .rev()
            .find_map(|r| r.error.as_deref()),
    };
    if !report.requests.is_empty() || report.pause.is_some() {
        budgets::with(&crm.key, |b, now| b.answered(now, &answer));
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
        // bisect() leaves none; should one come through, it fails like a lone refusal
        Some(Outcome::Failed { error } | Outcome::Rejected { error }) => Resolved {
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
