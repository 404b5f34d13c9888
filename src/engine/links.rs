//! After a batch's records are written: their associations with the objects of
//! the records they reference (sync dependencies with `"associate"`), batched per
//! object type like the records. What to ask is etlify_core::links::diff's call;
//! this sends it and turns the answers into the records' results.

use super::{absorb, hold, Crm, DEFAULT_RETRY};
use crate::engine::store::Work;
use etlify_core::adapter::{Link, Outcome, Report};
use etlify_core::bisect::bisect;
use etlify_core::links::{diff, Held, LinkOp, LinkState};
use etlify_core::plan::{Resolved, Verdict};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A record's associations as the claim found them, with the CRM id it had then.
pub(super) struct Wanted {
    pub crm_id: Option<String>,
    pub links: Vec<LinkState>,
}

/// Makes and removes the associations of the records of `results` that are in
/// the CRM now (synced or not modified). A failed request fails its record (the
/// payload stays recorded as sent: a retry only asks for the associations again),
/// or leaves it pending when the CRM could not take it now. Returns what the CRM
/// holds now, for etlify._linked.
pub(super) fn associate(
    crm: &mut Crm,
    w: &Work,
    mut wanted: HashMap<String, Wanted>,
    results: &mut [Resolved],
    logs: &mut Vec<Value>,
    stop: &dyn Fn() -> bool,
) -> Vec<Held> {
    let mut ops = Vec::new();
    let mut held = Vec::new();
    for r in results.iter() {
        let Some(want) = wanted.remove(&r.key) else {
            continue;
        };
        let from = match r.verdict {
            Verdict::Synced => r.crm_id.clone(),
            Verdict::NotModified => want.crm_id,
            _ => None,
        };
        if let Some(from) = from {
            let (o, h) = diff(&r.key, &from, &want.links);
            ops.extend(o);
            held.extend(h);
        }
    }
    if ops.is_empty() {
        return held;
    }
    // the first failure of each record, and the (key, position) pairs whose old
    // association is still there (their new one waits: both would be held)
    let mut failures: HashMap<String, (Outcome, Option<Duration>)> = HashMap::new();
    let mut stuck: HashSet<(String, i32)> = HashSet::new();
    let (removes, adds): (Vec<_>, Vec<_>) = ops.into_iter().partition(|o| o.remove);
    for remove in [true, false] {
        let batch: Vec<&LinkOp> = if remove { &removes } else { &adds }
            .iter()
            .filter(|o| !stuck.contains(&(o.key.clone(), o.position)))
            .collect();
        let mut by_type: HashMap<&str, Vec<&LinkOp>> = HashMap::new();
        for o in batch {
            by_type.entry(o.to_type.as_str()).or_default().push(o);
        }
        let size = crm.adapter.max_batch_size().max(1);
        for (to_type, ops) in by_type {
            for chunk in ops.chunks(size) {
                let outcomes = send(crm, w, to_type, chunk, remove, logs, stop);
                for (o, (outcome, pause)) in chunk.iter().zip(outcomes) {
                    let done = matches!(
                        (&outcome, remove),
                        (Outcome::Deleted, true) | (Outcome::Synced { .. }, false)
                    );
                    if done {
                        held.push(Held {
                            key: o.key.clone(),
                            position: o.position,
                            from_id: o.link.from_id.clone(),
                            to_id: (!remove).then(|| o.link.to_id.clone()),
                        });
                    } else {
                        stuck.insert((o.key.clone(), o.position));
                        let outcome = explain(outcome, o, remove);
                        failures.entry(o.key.clone()).or_insert((outcome, pause));
                    }
                }
            }
        }
    }
    for r in results.iter_mut() {
        let Some((outcome, pause)) = failures.remove(&r.key) else {
            continue;
        };
        // r.crm_id stays: the object is the record's now, whatever became of its
        // associations (a not-modified record keeps the one it had: _record)
        let (verdict, error, retry_ms) = match outcome {
            Outcome::Retry { error } => (
                Verdict::Retry,
                error,
                Some(pause.unwrap_or(DEFAULT_RETRY).as_millis() as u64),
            ),
            Outcome::Failed { error } | Outcome::Stale { error } | Outcome::Rejected { error } => {
                (Verdict::Failed, error, None)
            }
            Outcome::Synced { .. } | Outcome::Deleted => continue,
        };
        r.verdict = verdict;
        r.error = Some(error);
        r.retry_ms = retry_ms;
    }
    held
}

/// One request's outcomes, in `ops` order, with the pause the CRM asked for.
fn send(
    crm: &mut Crm,
    w: &Work,
    to_type: &str,
    ops: &[&LinkOp],
    remove: bool,
    logs: &mut Vec<Value>,
    stop: &dyn Fn() -> bool,
) -> Vec<(Outcome, Option<Duration>)> {
    if let Some((reason, wait)) = hold(crm, stop) {
        let pause = Some(wait);
        return ops
            .iter()
            .map(|_| {
                (
                    Outcome::Retry {
                        error: reason.clone(),
                    },
                    pause,
                )
            })
            .collect();
    }
    let links: Vec<Link> = ops
        .iter()
        .enumerate()
        .map(|(i, o)| Link {
            key: i.to_string(),
            ..o.link.clone()
        })
        .collect();
    // a batch refused as a whole is split until the refused links are found
    let adapter = &mut crm.adapter;
    let report: Report = bisect(&links, |l| &l.key, &mut |part| {
        if remove {
            adapter.dissociate(&w.object_type, to_type, part)
        } else {
            adapter.associate(&w.object_type, to_type, part)
        }
    });
    let by_key = absorb(crm, &report, logs);
    (0..ops.len())
        .map(|i| {
            let outcome = by_key.get(i.to_string().as_str()).map(|o| (*o).clone());
            let outcome = outcome.unwrap_or(Outcome::Retry {
                error: "the adapter returned no outcome for this association".into(),
            });
            (outcome, report.pause)
        })
        .collect()
}

/// A failed association's error names the association.
fn explain(outcome: Outcome, o: &LinkOp, remove: bool) -> Outcome {
    let what = if remove {
        format!(
            "removing the association with {} {}",
            o.to_type, o.link.to_id
        )
    } else {
        format!("associating with {} {}", o.to_type, o.link.to_id)
    };
    match outcome {
        Outcome::Retry { error } => Outcome::Retry {
            error: format!("{what}: {error}"),
        },
        Outcome::Failed { error } | Outcome::Stale { error } | Outcome::Rejected { error } => {
            Outcome::Failed {
                error: format!("{what} failed: {error}"),
            }
        }
        Outcome::Synced { .. } | Outcome::Deleted => Outcome::Failed {
            error: format!("{what}: the CRM answered something else"),
        },
    }
}
