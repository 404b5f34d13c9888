//! Finding the records that poisoned a batch.
//!
//! A CRM may refuse a whole batch for one record without naming it (HubSpot: a 409
//! CONFLICT "Contact already exists", a VALIDATION_ERROR naming only a property). The
//! adapter then answers [`Outcome::Rejected`] for every input, which counts against
//! nobody. [`bisect`] sends such inputs again in halves until each refusal is down to a
//! lone input, which the adapter blames (`Failed`, or `Stale`/`Deleted`), while the
//! innocent ones go through. One culprit among n inputs costs at most 1 + 2·⌈log2 n⌉
//! requests.
//!
//! Pure and generic: `send` is whatever makes one adapter call (an upsert, a delete),
//! so this is tested with a fake CRM and used by the engine with the real one.

use crate::adapter::{shorten, Outcome, Report};
use std::time::Duration;

/// Error texts stored per record: as long as the adapters'.
const MAX_ERROR_CHARS: usize = 500;

/// Sends `items`, then the ones whose outcome is `Rejected` again in halves, recursively,
/// until the refused inputs are isolated. `key` names an item in the merged report when
/// `send` gave it no outcome (an adapter bug).
///
/// The merged report has exactly one outcome per item, in input order (duplicate keys
/// are told apart by position), every request log of every send in the order they were
/// made, the longest pause, the first misconfiguration and whether any send reached the
/// daily limit.
///
/// Once a send comes back paused, misconfigured or over the daily limit, nothing more is
/// sent: the items still `Rejected` become `Retry`, naming why. A `Rejected` for an item
/// sent alone (an adapter should have blamed it) becomes `Failed`: no split can narrow it
/// down further. So no `Rejected` is ever left in the result.
pub fn bisect<T: Clone>(
    items: &[T],
    key: impl Fn(&T) -> &str,
    send: &mut dyn FnMut(&[T]) -> Report,
) -> Report {
    let mut merged = Merged::new(items.len());
    // Groups of positions in `items` to send next; depth first, left half first, so the
    // requests come in input order.
    let mut todo: Vec<Vec<usize>> = vec![(0..items.len()).collect()];
    while let Some(group) = todo.pop() {
        if group.is_empty() {
            continue;
        }
        if let Some(why) = merged.stop_reason() {
            for &i in &group {
                merged.hold_back(i, &why);
            }
            continue;
        }
        let batch: Vec<T> = group.iter().map(|&i| items[i].clone()).collect();
        let report = send(&batch);
        let refused = merged.absorb(&group, report);
        match refused.len() {
            0 => {}
            // Sent alone and still refused unnamed: as much the record's fault as can be
            // found out.
            _ if group.len() == 1 => merged.blame_lone(group[0]),
            1 => todo.push(refused),
            n => {
                let (left, right) = refused.split_at(n.div_ceil(2));
                todo.push(right.to_vec());
                todo.push(left.to_vec());
            }
        }
    }
    if let Some(why) = merged.stop_reason() {
        // Refused by the send that asked to stop: they were never split.
        for i in 0..items.len() {
            merged.hold_back(i, &why);
        }
    }
    merged.finish(items, key)
}

/// The report being put together, outcomes by position.
struct Merged {
    outcomes: Vec<Option<Outcome>>,
    report: Report,
}

impl Merged {
    fn new(len: usize) -> Self {
        Merged {
            outcomes: vec![None; len],
            report: Report::default(),
        }
    }

    /// Takes in the answer for the items at `group`; returns those it left `Rejected`.
    fn absorb(&mut self, group: &[usize], report: Report) -> Vec<usize> {
        let Report {
            outcomes,
            requests,
            pause,
            misconfigured,
            daily_limit_reached,
        } = report;
        self.report.requests.extend(requests);
        if let Some(p) = pause {
            let longest = self.report.pause.map_or(p, |q| q.max(p));
            self.report.pause = Some(longest);
        }
        if self.report.misconfigured.is_none() {
            self.report.misconfigured = misconfigured;
        }
        self.report.daily_limit_reached |= daily_limit_reached;
        let mut refused = Vec::new();
        let mut answered = outcomes.into_iter().map(|(_, o)| o);
        for &i in group {
            let outcome = answered.next().unwrap_or_else(|| Outcome::Retry {
                error: "etlify bug: the adapter gave this record no outcome".into(),
            });
            if matches!(outcome, Outcome::Rejected { .. }) {
                refused.push(i);
            }
            self.outcomes[i] = Some(outcome);
        }
        refused
    }

    /// Why no more requests go out, if they don't.
    fn stop_reason(&self) -> Option<String> {
        let r = &self.report;
        if let Some(reason) = &r.misconfigured {
            Some(format!("the CRM is misconfigured: {reason}"))
        } else if r.daily_limit_reached {
            Some("the CRM's daily limit is reached".into())
        } else {
            r.pause.map(|p| {
                format!(
                    "the CRM asked to pause ({})",
                    humanize(p).unwrap_or_else(|| "briefly".into())
                )
            })
        }
    }

    /// A record still refused with its batch, or not sent at all, when sending stopped.
    fn hold_back(&mut self, i: usize, why: &str) {
        let error = match &self.outcomes[i] {
            Some(Outcome::Rejected { error }) => {
                format!("not applied: refused with its batch ({error}); not split further: {why}")
            }
            Some(_) => return,
            None => format!("not sent: {why}"),
        };
        self.outcomes[i] = Some(Outcome::Retry {
            error: shorten(&error, MAX_ERROR_CHARS),
        });
    }

    fn blame_lone(&mut self, i: usize) {
        if let Some(Outcome::Rejected { error }) = self.outcomes[i].take() {
            self.outcomes[i] = Some(Outcome::Failed { error });
        }
    }

    fn finish<T>(mut self, items: &[T], key: impl Fn(&T) -> &str) -> Report {
        self.report.outcomes = items
            .iter()
            .zip(self.outcomes)
            .map(|(item, outcome)| {
                let outcome = outcome.unwrap_or_else(|| Outcome::Retry {
                    error: "etlify bug: bisection gave this record no outcome".into(),
                });
                (key(item).to_owned(), outcome)
            })
            .collect();
        self.report
    }
}

/// "10 s", "1.5 s"; None for zero.
fn humanize(d: Duration) -> Option<String> {
    (!d.is_zero()).then(|| format!("{} s", d.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::RequestLog;
    use std::collections::HashSet;

    /// Called with each batch sent; may put a pause, misconfiguration or daily flag on
    /// its report.
    type Twist = Box<dyn FnMut(&[u32], &mut Report)>;

    /// A fake CRM: a batch holding a poisoned item is refused whole, naming nobody; an
    /// item alone is blamed (rule 1 of the adapters). Every call is one request.
    struct Crm {
        poisoned: HashSet<u32>,
        twist: Twist,
        calls: Vec<Vec<u32>>,
    }

    impl Crm {
        fn new(poisoned: &[u32]) -> Self {
            Crm {
                poisoned: poisoned.iter().copied().collect(),
                twist: Box::new(|_, _| {}),
                calls: Vec::new(),
            }
        }

        fn send(&mut self, batch: &[Item]) -> Report {
            let batch: Vec<u32> = batch.iter().map(|i| i.n).collect();
            let batch = batch.as_slice();
            self.calls.push(batch.to_vec());
            let refused = batch.iter().any(|i| self.poisoned.contains(i));
            let outcome = |i: &u32| match (refused, batch.len()) {
                (false, _) => Outcome::Synced {
                    crm_id: format!("c{i}"),
                },
                (true, 1) => Outcome::Failed {
                    error: "HTTP 409: CONFLICT".into(),
                },
                (true, _) => Outcome::Rejected {
                    error: "HTTP 409: CONFLICT".into(),
                },
            };
            let mut report = Report {
                outcomes: batch.iter().map(|i| (i.to_string(), outcome(i))).collect(),
                requests: vec![RequestLog {
                    operation: "batch/upsert".into(),
                    records: batch.len(),
                    http_status: Some(if refused { 409 } else { 200 }),
                    duration_ms: 1.0,
                    error: None,
                }],
                ..Report::default()
            };
            (self.twist)(batch, &mut report);
            report
        }

        fn run(&mut self, ns: &[u32]) -> Report {
            let items: Vec<Item> = ns
                .iter()
                .map(|&n| Item {
                    n,
                    key: n.to_string(),
                })
                .collect();
            bisect(&items, |i| &i.key, &mut |batch| self.send(batch))
        }
    }

    #[derive(Clone)]
    struct Item {
        n: u32,
        key: String,
    }

    fn synced(i: u32) -> Outcome {
        Outcome::Synced {
            crm_id: format!("c{i}"),
        }
    }

    fn conflict() -> Outcome {
        Outcome::Failed {
            error: "HTTP 409: CONFLICT".into(),
        }
    }

    fn expected(items: &[u32], poisoned: &[u32]) -> Vec<(String, Outcome)> {
        items
            .iter()
            .map(|&i| {
                let o = if poisoned.contains(&i) {
                    conflict()
                } else {
                    synced(i)
                };
                (i.to_string(), o)
            })
            .collect()
    }

    #[test]
    fn one_poisoned_in_a_hundred_is_found_in_few_requests() {
        let items: Vec<u32> = (0..100).collect();
        for culprit in [0, 37, 50, 99] {
            let mut crm = Crm::new(&[culprit]);
            let report = crm.run(&items);
            assert_eq!(report.outcomes, expected(&items, &[culprit]));
            // ⌈log2 100⌉ = 7 levels of two halves each, plus the first send.
            assert!(
                report.requests.len() <= 1 + 2 * 7,
                "{}",
                report.requests.len()
            );
            assert_eq!(report.requests.len(), crm.calls.len());
            assert_eq!((report.pause, report.misconfigured), (None, None));
        }
    }

    #[test]
    fn a_clean_batch_is_sent_once() {
        let items: Vec<u32> = (0..10).collect();
        let mut crm = Crm::new(&[]);
        let report = crm.run(&items);
        assert_eq!(report.outcomes, expected(&items, &[]));
        assert_eq!(crm.calls, vec![items]);
    }

    #[test]
    fn two_poisoned_are_both_found() {
        let items: Vec<u32> = (0..100).collect();
        for poisoned in [[3, 4], [10, 90], [0, 99]] {
            let mut crm = Crm::new(&poisoned);
            let report = crm.run(&items);
            assert_eq!(report.outcomes, expected(&items, &poisoned));
            assert!(report.requests.len() <= 1 + 2 * 2 * 7);
        }
    }

    #[test]
    fn all_poisoned_are_all_failed_and_nothing_is_sent_twice_alone() {
        let items: Vec<u32> = (0..8).collect();
        let mut crm = Crm::new(&items);
        let report = crm.run(&items);
        assert_eq!(report.outcomes, expected(&items, &items));
        // A full binary tree: 1 + 2 + 4 + 8 sends.
        assert_eq!(crm.calls.len(), 15);
        let alone: Vec<_> = crm.calls.iter().filter(|c| c.len() == 1).collect();
        assert_eq!(alone.len(), 8);
    }

    #[test]
    fn order_is_kept_and_requests_come_left_first() {
        let items = [5, 1, 9, 3];
        let mut crm = Crm::new(&[9]);
        let report = crm.run(&items);
        assert_eq!(report.outcomes, expected(&items, &[9]));
        assert_eq!(
            crm.calls,
            vec![vec![5, 1, 9, 3], vec![5, 1], vec![9, 3], vec![9], vec![3]]
        );
    }

    #[test]
    fn duplicate_keys_are_told_apart_by_position() {
        let ns: Vec<u32> = (0..6).collect();
        let items: Vec<Item> = ns
            .iter()
            .map(|&n| Item {
                n,
                key: "same".into(),
            })
            .collect();
        let mut crm = Crm::new(&[4]);
        let report = bisect(&items, |i| &i.key, &mut |batch| {
            let mut r = crm.send(batch);
            for (k, _) in &mut r.outcomes {
                *k = "same".into();
            }
            r
        });
        let outcomes: Vec<_> = report.outcomes.iter().map(|(_, o)| o.clone()).collect();
        let want: Vec<_> = expected(&ns, &[4]).into_iter().map(|(_, o)| o).collect();
        assert_eq!(outcomes, want);
        assert!(report.outcomes.iter().all(|(k, _)| k == "same"));
    }

    #[test]
    fn a_pause_mid_bisection_stops_it_and_retries_the_refused() {
        let items: Vec<u32> = (0..8).collect();
        let mut crm = Crm::new(&[6]);
        // The third request (the right half, 4..8) earns a 429.
        let mut n = 0;
        crm.twist = Box::new(move |batch, report| {
            n += 1;
            if n == 3 {
                report.pause = Some(Duration::from_secs(10));
                for (_, o) in &mut report.outcomes {
                    *o = Outcome::Retry {
                        error: "HTTP 429: RATE_LIMIT".into(),
                    };
                }
                assert_eq!(batch, [4, 5, 6, 7]);
            }
        });
        let report = crm.run(&items);
        assert_eq!(crm.calls.len(), 3);
        assert_eq!(report.pause, Some(Duration::from_secs(10)));
        for (i, (_, o)) in report.outcomes.iter().enumerate() {
            match i {
                0..=3 => assert_eq!(*o, synced(i as u32)),
                _ => assert_eq!(
                    *o,
                    Outcome::Retry {
                        error: "HTTP 429: RATE_LIMIT".into()
                    }
                ),
            }
        }
    }

    #[test]
    fn a_pause_leaves_the_unsplit_refused_to_retry_naming_why() {
        let items: Vec<u32> = (0..8).collect();
        let mut crm = Crm::new(&[1, 6]);
        // The left half comes back refused and asking for a pause: the right half is
        // never sent, the left is not split.
        let mut n = 0;
        crm.twist = Box::new(move |_, report| {
            n += 1;
            if n == 2 {
                report.pause = Some(Duration::from_millis(1500));
            }
        });
        let report = crm.run(&items);
        assert_eq!(crm.calls.len(), 2);
        for (_, o) in &report.outcomes {
            let Outcome::Retry { error } = o else {
                panic!("{o:?}")
            };
            assert!(
                error.starts_with("not applied: refused with its batch (HTTP 409: CONFLICT); not split further: the CRM asked to pause (1.5 s)"),
                "{error}"
            );
        }
    }

    #[test]
    fn misconfigured_or_daily_stop_at_once() {
        let items: Vec<u32> = (0..4).collect();
        for daily in [false, true] {
            let mut crm = Crm::new(&[0]);
            crm.twist = Box::new(move |_, report| {
                if daily {
                    report.daily_limit_reached = true;
                } else {
                    report.misconfigured = Some("HTTP 401: check the secret".into());
                }
            });
            let report = crm.run(&items);
            assert_eq!(crm.calls.len(), 1);
            assert_eq!(report.daily_limit_reached, daily);
            let why = if daily {
                "the CRM's daily limit is reached"
            } else {
                "the CRM is misconfigured: HTTP 401: check the secret"
            };
            for (_, o) in &report.outcomes {
                assert!(
                    matches!(o, Outcome::Retry { error } if error.ends_with(why)),
                    "{o:?}"
                );
            }
        }
    }

    #[test]
    fn a_lone_rejected_becomes_failed() {
        // An adapter that never blames: bisection still ends, with everyone Failed.
        let items: Vec<u32> = (0..3).collect();
        let mut calls = 0;
        let report = bisect(&items, |_| "k", &mut |batch| {
            calls += 1;
            Report {
                outcomes: batch
                    .iter()
                    .map(|_| {
                        let error = "HTTP 400: nope".into();
                        ("k".into(), Outcome::Rejected { error })
                    })
                    .collect(),
                ..Report::default()
            }
        });
        assert_eq!(calls, 5);
        let want = Outcome::Failed {
            error: "HTTP 400: nope".into(),
        };
        assert!(report.outcomes.iter().all(|(_, o)| *o == want));
    }

    #[test]
    fn a_short_report_retries_what_it_left_out() {
        let items = [1u32, 2];
        let report = bisect(&items, |_| "k", &mut |_| Report {
            outcomes: vec![("k".into(), Outcome::Deleted)],
            ..Report::default()
        });
        assert_eq!(report.outcomes[0].1, Outcome::Deleted);
        assert!(
            matches!(&report.outcomes[1].1, Outcome::Retry { error } if error.contains("etlify bug"))
        );
    }

    #[test]
    fn nothing_to_send_sends_nothing() {
        let report = bisect(&[] as &[u32], |_| "k", &mut |_| panic!("sent"));
        assert!(report.outcomes.is_empty() && report.requests.is_empty());
    }
}
