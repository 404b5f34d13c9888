//! Who is to blame: one HubSpot answer (status, rate-limit headers, body) turned into one
//! outcome per input. Pure functions, so every rule below is unit-tested without HTTP.
//!
//! The rule of thumb (ARCHITECTURE principle 7): an input the CRM names as wrong is
//! `Failed` (or `Stale`/`Deleted` when the CRM says the object is gone); anything the
//! records cannot be blamed for (limits, outages, an unreadable answer) is `Retry` with a
//! pause, never counted against them. A refusal naming no input is `Rejected` for a batch
//! (`crate::bisect` finds the culprits) and the lone input's fault for a request of one.
//! Credentials, scopes and a wrong base_url are the registration's fault: every input is
//! `Retry` and the verdict says the CRM is `misconfigured`.

use super::models::{ErrorEntry, Response};
use crate::adapter::{shorten, Outcome};
use crate::http::RateLimitHeaders;
use std::collections::HashMap;
use std::time::Duration;

/// 401/403, no such route: a token, scope or base_url problem that only a human fixes;
/// don't hammer the CRM (the engine also pauses it until an operator acts).
pub(crate) const AUTH_PAUSE: Duration = Duration::from_secs(60);
/// 429 without Retry-After or interval header: HubSpot's window is ten seconds.
pub(crate) const RATE_LIMIT_PAUSE: Duration = Duration::from_secs(10);
/// 429 on the daily quota: it resets at midnight (account time zone), which the
/// response does not say; asking every five minutes costs nothing.
pub(crate) const DAILY_LIMIT_PAUSE: Duration = Duration::from_secs(300);
/// 423 Locked: HubSpot documents ~2 s for concurrent bulk upserts.
pub(crate) const LOCKED_PAUSE: Duration = Duration::from_secs(2);
/// 5xx, 477 without Retry-After, timeouts, connection failures, unreadable answers.
pub(crate) const OUTAGE_PAUSE: Duration = Duration::from_secs(1);
/// A 1xx/3xx: a wrong base_url (http for https, a proxy's login page).
pub(crate) const MISCONFIGURED_PAUSE: Duration = Duration::from_secs(60);
/// A Retry-After longer than this is more likely a bug than a plan.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// Error texts stored per record and per request.
const MAX_ERROR_CHARS: usize = 500;

const NO_RESULT: &str = "no result for this record in the CRM's response";

/// Which batch endpoint answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Op<'a> {
    /// Inputs named by crm_id.
    Update,
    /// Inputs named by their id_property value.
    Upsert { id_property: &'a str },
    /// Inputs named by crm_id.
    Archive,
    /// Inputs named by their id_property value; results echo it in their properties.
    Read { id_property: &'a str },
    /// v4 `batch/associate/default`; inputs are links, named by both objects' ids.
    AssociateDefault,
    /// v4 `batch/create` (labelled links).
    AssociateLabelled,
    /// v4 `batch/archive`: removes every association between each link's objects.
    Dissociate,
}

impl Op<'_> {
    /// The path below the objects (v3) or the pair of object types (v4).
    pub(crate) fn endpoint(self) -> &'static str {
        match self {
            Op::Update => "batch/update",
            Op::Upsert { .. } => "batch/upsert",
            Op::Read { .. } => "batch/read",
            Op::Archive | Op::Dissociate => "batch/archive",
            Op::AssociateDefault => "batch/associate/default",
            Op::AssociateLabelled => "batch/create",
        }
    }

    /// The request log's name for it.
    pub(crate) fn operation(self) -> &'static str {
        match self {
            Op::Update | Op::Upsert { .. } | Op::Read { .. } | Op::Archive => self.endpoint(),
            Op::AssociateDefault => "associations/batch/associate/default",
            Op::AssociateLabelled => "associations/batch/create",
            Op::Dissociate => "associations/batch/archive",
        }
    }

    /// Archives: whatever the CRM does not name as failed is gone.
    fn removes(self) -> bool {
        matches!(self, Op::Archive | Op::Dissociate)
    }

    fn associates(self) -> bool {
        matches!(self, Op::AssociateDefault | Op::AssociateLabelled)
    }

    fn reads(self) -> bool {
        matches!(self, Op::Read { .. })
    }
}

/// How the CRM names one input in its answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Name<'a> {
    /// crm_id (update, archive) or id_property value (upsert, read).
    Id(&'a str),
    /// An association: errors name either object, results the pair.
    Link { from: &'a str, to: &'a str },
}

/// A plain id passes as it is.
impl<'a> From<&'a str> for Name<'a> {
    fn from(id: &'a str) -> Self {
        Name::Id(id)
    }
}

/// One answer's verdict: `outcomes[i]` is for `names[i]`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Verdict {
    pub outcomes: Vec<Outcome>,
    pub pause: Option<Duration>,
    /// For the request log: None when every input went through.
    pub error: Option<String>,
    /// The CRM cannot be used as registered (401, 403, no such route, 1xx/3xx): why,
    /// and what to check.
    pub misconfigured: Option<String>,
    /// A 429 with policyName DAILY.
    pub daily_limit: bool,
}

/// `names[i]` names input i the way the CRM will: crm_id for update/archive, id_value for
/// upsert and read, both objects' ids for a link.
pub(crate) fn attribute<'a>(
    op: Op,
    names: &[impl Into<Name<'a>> + Copy],
    status: u16,
    limits: &RateLimitHeaders,
    body: &[u8],
) -> Verdict {
    let names: Vec<Name> = names.iter().map(|&n| n.into()).collect();
    let ids = names.as_slice();
    let parsed = Response::parse(body);
    let crm_says = || describe(status, parsed.as_ref(), body);
    match status {
        200..=299 => accepted(op, ids, status, parsed, body),
        401 | 403 => misconfigured(
            ids.len(),
            format!("{}; check the secret and the app's scopes", crm_says()),
            AUTH_PAUSE,
        ),
        404 if !routed(parsed.as_ref()) => misconfigured(
            ids.len(),
            format!("{}; the CRM has no such route: check base_url", crm_says()),
            MISCONFIGURED_PAUSE,
        ),
        // A read that found anything answers 200/207 with results; a 404 naming objects
        // not found says it found none (not only the ones it names: it returns nothing).
        404 if op.reads() => Verdict {
            outcomes: vec![Outcome::Deleted; ids.len()],
            ..Verdict::default()
        },
        429 => {
            let daily = parsed
                .as_ref()
                .and_then(|p| p.top.policy_name.as_deref())
                .is_some_and(|p| p.eq_ignore_ascii_case("DAILY"));
            let pause = limits.retry_after.unwrap_or(if daily {
                DAILY_LIMIT_PAUSE
            } else {
                limits
                    .interval_ms
                    .filter(|&ms| ms > 0)
                    .map_or(RATE_LIMIT_PAUSE, Duration::from_millis)
            });
            Verdict {
                daily_limit: daily,
                ..everyone_retries(ids.len(), crm_says(), pause)
            }
        }
        423 => everyone_retries(
            ids.len(),
            crm_says(),
            limits.retry_after.unwrap_or(LOCKED_PAUSE),
        ),
        477 | 500..=599 => everyone_retries(
            ids.len(),
            crm_says(),
            limits.retry_after.unwrap_or(OUTAGE_PAUSE),
        ),
        400..=499 => rejected(op, ids, parsed.as_ref(), crm_says()),
        // 1xx/3xx (and nonsense): http for https, a proxy's login page.
        _ => misconfigured(
            ids.len(),
            format!("{}; check base_url", crm_says()),
            MISCONFIGURED_PAUSE,
        ),
    }
}

/// A 404 from HubSpot's object endpoints says OBJECT_NOT_FOUND; anything else (an HTML
/// page, an empty body, HubSpot's "Unable to route …") means the request reached no
/// endpoint, so no record is to blame: base_url (or a proxy in front) is wrong.
fn routed(parsed: Option<&Response>) -> bool {
    let Some(r) = parsed else { return false };
    let unrouted = r
        .top
        .message
        .as_deref()
        .is_some_and(|m| m.starts_with("Unable to route"));
    !unrouted && (not_found(&r.top) || r.errors.iter().any(not_found))
}

/// The registration is wrong: every input is retried once a human fixed it.
fn misconfigured(count: usize, reason: String, pause: Duration) -> Verdict {
    let verdict = everyone_retries(count, reason, pause);
    Verdict {
        misconfigured: verdict.error.clone(),
        ..verdict
    }
}

/// No usable answer (timeout, connection refused, body cut short): nobody's fault.
pub(crate) fn broken(count: usize, error: &str) -> Verdict {
    everyone_retries(count, error.to_owned(), OUTAGE_PAUSE)
}

fn everyone_retries(count: usize, error: String, pause: Duration) -> Verdict {
    let error = shorten(&error, MAX_ERROR_CHARS);
    Verdict {
        outcomes: vec![
            Outcome::Retry {
                error: error.clone()
            };
            count
        ],
        pause: Some(pause.min(MAX_PAUSE)),
        error: Some(error),
        ..Verdict::default()
    }
}

/// 2xx. Update/upsert: each input needs a result (→ Synced) or an error naming it;
/// archives: everything not named in an error is gone; associations: everything not named
/// in an error exists, unless an error names no input (then only results count).
fn accepted(op: Op, ids: &[Name], status: u16, parsed: Option<Response>, body: &[u8]) -> Verdict {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; ids.len()];
    let index = InputIndex::new(ids);
    let Some(response) = parsed else {
        if op.removes() {
            // 204 has no body; whatever else came with a 2xx, the archive happened.
            return Verdict {
                outcomes: vec![Outcome::Deleted; ids.len()],
                ..Verdict::default()
            };
        }
        // The CRM may have applied the batch: resending is harmless (upserts by
        // id_property, updates by crm_id, associations exist once, reads change
        // nothing), blaming the records is not.
        return everyone_retries(
            ids.len(),
            format!(
                "unreadable response from the CRM: {}",
                describe(status, None, body)
            ),
            OUTAGE_PAUSE,
        );
    };

    // Results that name no input: a read must not call an input not found when one of
    // these may be its object.
    let mut unplaced = 0;
    for result in &response.results {
        if op.associates() {
            // HubSpot echoes a link as {from:{id}, to:{id}} or fromObjectId/toObjectId.
            let Some((from, to)) = result.link() else {
                continue;
            };
            for i in index.find_link(&from, &to) {
                outcomes[i] = Some(link_synced(ids[i]));
            }
            continue;
        }
        let Some(crm_id) = &result.id else { continue };
        let name = match op {
            Op::Update => Some(crm_id.clone()),
            // HubSpot lowercases emails: InputIndex compares case-insensitively.
            Op::Upsert { id_property } | Op::Read { id_property } => result.property(id_property),
            _ => None,
        };
        let mut placed = false;
        for i in name.iter().flat_map(|n| index.find(n)) {
            placed = true;
            outcomes[i] = Some(Outcome::Synced {
                crm_id: crm_id.clone(),
            });
        }
        unplaced += usize::from(!placed);
    }
    // A lone input with a lone result is unambiguous even when the result does not echo
    // the id_property.
    if let ([None], [result], []) = (&outcomes[..], &response.results[..], &response.errors[..]) {
        if let (Some(crm_id), Op::Upsert { .. } | Op::Read { .. }) = (&result.id, op) {
            outcomes[0] = Some(Outcome::Synced {
                crm_id: crm_id.clone(),
            });
            unplaced = 0;
        }
    }

    let mut unattributed = false;
    // An error naming no input that is not a "not found": it may be about any input
    // without a result.
    let mut unexplained = false;
    for error in &response.errors {
        let outcome = blame(op, error, None);
        let named: Vec<usize> = error.ids().iter().flat_map(|id| index.find(id)).collect();
        unattributed |= named.is_empty();
        unexplained |= named.is_empty() && !not_found(error);
        for i in named {
            // A result for the same input wins: the object exists and took the write.
            outcomes[i].get_or_insert_with(|| outcome.clone());
        }
    }

    let mut unanswered = 0;
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .zip(ids)
        .map(|(o, &name)| match o {
            Some(o) => o,
            None if op.removes() => Outcome::Deleted,
            // The CRM said COMPLETE and named every failure: the rest went through, in
            // whatever shape its results came.
            None if op.associates() && !unattributed => link_synced(name),
            // HubSpot leaves out what it did not find (or names it in an OBJECT_NOT_FOUND
            // error whose ids do not match): not found, unless the answer holds something
            // this input could be.
            None if op.reads() && unplaced == 0 && !unexplained => Outcome::Deleted,
            None => {
                unanswered += 1;
                Outcome::Failed {
                    error: NO_RESULT.into(),
                }
            }
        })
        .collect();
    let failed = outcomes
        .iter()
        .filter(|o| !matches!(o, Outcome::Synced { .. } | Outcome::Deleted))
        .count();
    let error = (failed > 0).then(|| {
        // The CRM's own words when some failure is from its errors[], else ours.
        let first = response
            .errors
            .iter()
            .find_map(ErrorEntry::summary)
            .filter(|_| failed > unanswered)
            .unwrap_or_else(|| NO_RESULT.into());
        shorten(
            &format!(
                "HTTP {status}: {failed} of {} records not applied; first: {first}",
                ids.len()
            ),
            MAX_ERROR_CHARS,
        )
    });
    Verdict {
        outcomes,
        error,
        ..Verdict::default()
    }
}

/// 4xx other than auth, limits and unknown routes: the CRM refused the request. Inputs
/// it names take the blame; the others were refused along with them and are retried.
/// When it names none, a lone input is to blame as if named; a batch is `Rejected`, for
/// `crate::bisect` to split until the refusal lands on the inputs that earned it (a 409
/// CONFLICT or a VALIDATION_ERROR naming only a property is one record's doing, and
/// failing the batch with it would count it against 99 innocent records).
fn rejected(op: Op, ids: &[Name], parsed: Option<&Response>, crm_says: String) -> Verdict {
    let index = InputIndex::new(ids);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; ids.len()];
    let entries = || {
        parsed
            .into_iter()
            .flat_map(|r| std::iter::once(&r.top).chain(&r.errors))
    };
    for error in entries() {
        let outcome = blame(op, error, Some(&crm_says));
        for i in error.ids().iter().flat_map(|id| index.find(id)) {
            outcomes[i].get_or_insert_with(|| outcome.clone());
        }
    }
    let error = shorten(&crm_says, MAX_ERROR_CHARS);
    let outcomes = if outcomes.iter().all(Option::is_none) {
        if let [_] = ids {
            // The input was refused and it was alone: its own fault (or, for a 404
            // OBJECT_NOT_FOUND, its object is gone).
            let entry = entries().find(|e| e.category().is_some());
            let outcome = match entry {
                Some(entry) => blame_as(op, entry, error.clone()),
                None => Outcome::Failed {
                    error: error.clone(),
                },
            };
            vec![outcome]
        } else {
            vec![
                Outcome::Rejected {
                    error: error.clone()
                };
                ids.len()
            ]
        }
    } else {
        let bystander = Outcome::Retry {
            error: shorten(
                &format!(
                    "not applied: the CRM refused the batch because of other records ({crm_says})"
                ),
                MAX_ERROR_CHARS,
            ),
        };
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| bystander.clone()))
            .collect()
    };
    Verdict {
        outcomes,
        error: Some(error),
        ..Verdict::default()
    }
}

/// What an error entry naming an input means for it. `fallback` stands in for an entry
/// that says nothing itself.
fn blame(op: Op, error: &ErrorEntry, fallback: Option<&str>) -> Outcome {
    let text = error
        .summary()
        .or(fallback.map(str::to_owned))
        .unwrap_or_else(|| "the CRM reported an error without a message".into());
    blame_as(op, error, shorten(&text, MAX_ERROR_CHARS))
}

/// `blame`, with the text to record.
fn blame_as(op: Op, error: &ErrorEntry, text: String) -> Outcome {
    let gone = not_found(error);
    match op {
        // The stored crm_id points at nothing (merged, deleted in HubSpot): the worker
        // forgets it and upserts by id_property next time.
        Op::Update if gone => Outcome::Stale { error: text },
        // Already gone is what we wanted; an object that is gone has no associations left.
        Op::Archive | Op::Dissociate if gone => Outcome::Deleted,
        // No live object has the value: nothing to find.
        Op::Read { .. } if gone => Outcome::Deleted,
        // An association to an object that does not exist: the record points at it.
        _ => Outcome::Failed { error: text },
    }
}

/// The CRM says the object named is gone, or never was.
fn not_found(error: &ErrorEntry) -> bool {
    error
        .category()
        .is_some_and(|c| c.eq_ignore_ascii_case("OBJECT_NOT_FOUND"))
}

/// A link that exists: its outcome names the object it points to.
fn link_synced(name: Name) -> Outcome {
    let crm_id = match name {
        Name::Link { to, .. } | Name::Id(to) => to.to_owned(),
    };
    Outcome::Synced { crm_id }
}

/// "HTTP 400: VALIDATION_ERROR: …", from the parsed body or, failing that, the raw one.
fn describe(status: u16, parsed: Option<&Response>, body: &[u8]) -> String {
    let said = parsed
        .and_then(|r| {
            r.top
                .summary()
                .or_else(|| r.errors.iter().find_map(ErrorEntry::summary))
        })
        .unwrap_or_else(|| snippet(body));
    format!("HTTP {status}: {said}")
}

/// The start of a body that is not what we expected, on one line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4 * 200)]);
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        "empty body".into()
    } else {
        shorten(&one_line, 200)
    }
}

/// Inputs by the name the CRM uses for them, compared case-insensitively (HubSpot
/// lowercases emails; crm ids are digits). Several inputs may share a name: links that
/// share an object, for one.
struct InputIndex {
    by_id: HashMap<String, Vec<usize>>,
    by_link: HashMap<(String, String), Vec<usize>>,
}

impl InputIndex {
    fn new(names: &[Name]) -> Self {
        let mut index = InputIndex {
            by_id: HashMap::with_capacity(names.len()),
            by_link: HashMap::new(),
        };
        for (i, name) in names.iter().enumerate() {
            let mut add = |id: &str| {
                let slot = index.by_id.entry(normalize(id)).or_default();
                if slot.last() != Some(&i) {
                    slot.push(i);
                }
            };
            match *name {
                Name::Id(id) => add(id),
                Name::Link { from, to } => {
                    add(from);
                    add(to);
                    let key = (normalize(from), normalize(to));
                    index.by_link.entry(key).or_default().push(i);
                }
            }
        }
        index
    }

    fn find(&self, id: &str) -> impl Iterator<Item = usize> + '_ {
        self.by_id
            .get(&normalize(id))
            .into_iter()
            .flatten()
            .copied()
    }

    /// Links between these two objects, whichever way the CRM reports the pair
    /// (associations are bidirectional).
    fn find_link(&self, a: &str, b: &str) -> Vec<usize> {
        let (a, b) = (normalize(a), normalize(b));
        let mut found: Vec<usize> = [(a.clone(), b.clone()), (b, a)]
            .iter()
            .filter_map(|key| self.by_link.get(key))
            .flatten()
            .copied()
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }
}

fn normalize(id: &str) -> String {
    id.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSERT: Op = Op::Upsert {
        id_property: "email",
    };

    fn no_limits() -> RateLimitHeaders {
        RateLimitHeaders::default()
    }

    fn synced(id: &str) -> Outcome {
        Outcome::Synced { crm_id: id.into() }
    }

    fn failed(e: &str) -> Outcome {
        Outcome::Failed { error: e.into() }
    }

    fn is_retry(o: &Outcome) -> bool {
        matches!(o, Outcome::Retry { .. })
    }

    #[test]
    fn upsert_200_matches_results_by_id_property_ignoring_case() {
        let body = br#"{"status":"COMPLETE","results":[
            {"id":"202","properties":{"email":"bob@example.com","createdate":"2024-01-01T00:00:00Z"},"new":true},
            {"id":"201","properties":{"email":"ann@example.com"},"new":false}
        ],"startedAt":"2024-01-01T00:00:00Z","completedAt":"2024-01-01T00:00:00Z"}"#;
        let v = attribute(
            UPSERT,
            &["Ann@Example.com", "bob@example.com"],
            200,
            &no_limits(),
            body,
        );
        assert_eq!(v.outcomes, vec![synced("201"), synced("202")]);
        assert_eq!((v.pause, v.error), (None, None));
    }

    #[test]
    fn update_200_matches_results_by_id() {
        let body = br#"{"status":"COMPLETE","results":[{"id":"2","properties":{}},{"id":"1","properties":{}}]}"#;
        let v = attribute(Op::Update, &["1", "2"], 200, &no_limits(), body);
        assert_eq!(v.outcomes, vec![synced("1"), synced("2")]);
    }

    #[test]
    fn a_lone_upsert_result_without_the_id_property_is_still_matched() {
        let body = br#"{"results":[{"id":"9","properties":{"firstname":"Ann"}}]}"#;
        let v = attribute(UPSERT, &["a@b.c"], 200, &no_limits(), body);
        assert_eq!(v.outcomes, vec![synced("9")]);
        // With two inputs nothing is guessed.
        let v = attribute(UPSERT, &["a@b.c", "b@b.c"], 200, &no_limits(), body);
        assert_eq!(v.outcomes, vec![failed(NO_RESULT), failed(NO_RESULT)]);
    }

    #[test]
    fn update_207_with_context_ids() {
        let body = br#"{"status":"COMPLETE","results":[{"id":"1","properties":{"email":"a@b.c"}}],
            "numErrors":2,"errors":[
              {"status":"error","category":"OBJECT_NOT_FOUND","message":"Object not found.  objectId are usually numeric.","context":{"ids":["2"]}},
              {"status":"error","category":"VALIDATION_ERROR","message":"Property values were not valid: [{\"isValid\":false,\"message\":\"\\\"x\\\" is not a valid integer\",\"error\":\"INVALID_INTEGER\",\"name\":\"age\"}]","context":{"ids":["3"]}}
            ]}"#;
        let v = attribute(Op::Update, &["1", "2", "3", "4"], 207, &no_limits(), body);
        assert_eq!(v.outcomes[0], synced("1"));
        assert_eq!(
            v.outcomes[1],
            Outcome::Stale {
                error: "OBJECT_NOT_FOUND: Object not found.  objectId are usually numeric.".into()
            }
        );
        assert!(
            matches!(&v.outcomes[2], Outcome::Failed { error } if error.starts_with("VALIDATION_ERROR: Property values were not valid")),
            "{:?}",
            v.outcomes[2]
        );
        assert_eq!(v.outcomes[3], failed(NO_RESULT));
        assert_eq!(v.pause, None);
        assert_eq!(
            v.error.as_deref(),
            Some("HTTP 207: 3 of 4 records not applied; first: OBJECT_NOT_FOUND: Object not found.  objectId are usually numeric.")
        );
    }

    #[test]
    fn upsert_207_names_inputs_by_id_value() {
        let body = br#"{"status":"COMPLETE","results":[{"id":"201","properties":{"email":"ann@example.com"}}],
            "errors":[{"status":"error","category":"VALIDATION_ERROR","message":"Property values were not valid","context":{"ids":["bad@example.com"]}}]}"#;
        let v = attribute(
            UPSERT,
            &["ann@example.com", "BAD@example.com"],
            207,
            &no_limits(),
            body,
        );
        assert_eq!(
            v.outcomes,
            vec![
                synced("201"),
                failed("VALIDATION_ERROR: Property values were not valid")
            ]
        );
    }

    #[test]
    fn a_result_wins_over_an_error_for_the_same_input() {
        let body =
            br#"{"results":[{"id":"1"}],"errors":[{"category":"X","context":{"ids":["1"]}}]}"#;
        let v = attribute(Op::Update, &["1"], 207, &no_limits(), body);
        assert_eq!(v.outcomes, vec![synced("1")]);
    }

    fn rejected(e: &str) -> Outcome {
        Outcome::Rejected { error: e.into() }
    }

    #[test]
    fn batch_limit_400_rejects_the_batch() {
        let body = br#"{"status":"error","message":"The maximum number of inputs supported in a batch is 100. Please reduce the number of items and try again","correlationId":"3d1c","category":"VALIDATION_ERROR"}"#;
        let v = attribute(UPSERT, &["a@b.c", "b@b.c"], 400, &no_limits(), body);
        let expected = "HTTP 400: VALIDATION_ERROR: The maximum number of inputs supported in a batch is 100. Please reduce the number of items and try again";
        assert_eq!(v.outcomes, vec![rejected(expected), rejected(expected)]);
        assert_eq!(v.error.as_deref(), Some(expected));
        assert_eq!(
            (v.pause, v.misconfigured, v.daily_limit),
            (None, None, false)
        );
    }

    #[test]
    fn validation_400_naming_a_property_only_rejects_the_batch() {
        let body = br#"{"status":"error","message":"Property values were not valid: [{\"isValid\":false,\"message\":\"abc is not a valid integer\",\"error\":\"INVALID_INTEGER\",\"name\":\"age\"}]","correlationId":"c","category":"VALIDATION_ERROR",
            "errors":[{"message":"\"abc\" is not a valid integer","code":"INVALID_INTEGER","context":{"propertyName":["age"]}}]}"#;
        let v = attribute(Op::Update, &["1", "2"], 400, &no_limits(), body);
        assert!(
            v.outcomes.iter().all(
                |o| matches!(o, Outcome::Rejected { error } if error.starts_with("HTTP 400: VALIDATION_ERROR: Property values were not valid"))
            ),
            "{:?}",
            v.outcomes
        );
        // Alone, the input is the one at fault.
        let v = attribute(Op::Update, &["1"], 400, &no_limits(), body);
        assert!(
            matches!(&v.outcomes[0], Outcome::Failed { error } if error.starts_with("HTTP 400: VALIDATION_ERROR: Property values were not valid")),
            "{:?}",
            v.outcomes
        );
    }

    #[test]
    fn a_lone_input_refused_unnamed_is_blamed_as_if_named() {
        let gone = br#"{"status":"error","message":"Object not found.  objectId are usually numeric.","correlationId":"x","category":"OBJECT_NOT_FOUND"}"#;
        let text = "HTTP 404: OBJECT_NOT_FOUND: Object not found.  objectId are usually numeric.";
        let v = attribute(Op::Update, &["7"], 404, &no_limits(), gone);
        assert_eq!(v.outcomes, vec![Outcome::Stale { error: text.into() }]);
        let v = attribute(Op::Archive, &["7"], 404, &no_limits(), gone);
        assert_eq!(v.outcomes, vec![Outcome::Deleted]);
        let v = attribute(UPSERT, &["a@b.c"], 404, &no_limits(), gone);
        assert_eq!(v.outcomes, vec![failed(text)]);
        // Several inputs: bisection finds the stale ids; nobody is failed for them.
        for op in [Op::Update, Op::Archive, UPSERT] {
            let v = attribute(op, &["7", "8"], 404, &no_limits(), gone);
            assert_eq!(v.outcomes, vec![rejected(text), rejected(text)], "{op:?}");
            assert_eq!(v.misconfigured, None);
        }
        let conflict = br#"{"status":"error","message":"Contact already exists. Existing ID: 5","correlationId":"y","category":"CONFLICT"}"#;
        let v = attribute(UPSERT, &["a@b.c"], 409, &no_limits(), conflict);
        assert_eq!(
            v.outcomes,
            vec![failed(
                "HTTP 409: CONFLICT: Contact already exists. Existing ID: 5"
            )]
        );
        // No category at all: still the lone input's fault.
        let v = attribute(
            Op::Update,
            &["7"],
            400,
            &no_limits(),
            b"<html>Bad Request</html>",
        );
        assert_eq!(
            v.outcomes,
            vec![failed("HTTP 400: <html>Bad Request</html>")]
        );
    }

    #[test]
    fn duplicate_400_naming_inputs_fails_them_and_retries_the_rest() {
        let body = br#"{"status":"error","message":"Duplicate IDs found in batch input: [a@b.c]. IDs must be unique","category":"VALIDATION_ERROR","context":{"ids":["a@b.c"]}}"#;
        let v = attribute(
            UPSERT,
            &["a@b.c", "z@b.c", "A@B.C"],
            400,
            &no_limits(),
            body,
        );
        let culprit = failed(
            "VALIDATION_ERROR: Duplicate IDs found in batch input: [a@b.c]. IDs must be unique",
        );
        assert_eq!(v.outcomes[0], culprit);
        assert_eq!(v.outcomes[2], culprit);
        assert!(
            matches!(&v.outcomes[1], Outcome::Retry { error } if error.starts_with("not applied: the CRM refused the batch because of other records")),
            "{:?}",
            v.outcomes[1]
        );
        assert_eq!(v.pause, None);
    }

    #[test]
    fn update_404_naming_ids_makes_them_stale() {
        let body = br#"{"status":"error","message":"Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.","correlationId":"x","context":{"ids":["77"]},"category":"OBJECT_NOT_FOUND"}"#;
        let v = attribute(Op::Update, &["76", "77"], 404, &no_limits(), body);
        assert!(is_retry(&v.outcomes[0]));
        assert!(matches!(v.outcomes[1], Outcome::Stale { .. }));
    }

    #[test]
    fn conflict_409_rejects_the_batch_with_the_crm_message() {
        let body = br#"{"status":"error","message":"Contact already exists. Existing ID: 37765128953","correlationId":"y","category":"CONFLICT"}"#;
        let v = attribute(Op::Update, &["1", "2"], 409, &no_limits(), body);
        let expected =
            rejected("HTTP 409: CONFLICT: Contact already exists. Existing ID: 37765128953");
        assert_eq!(v.outcomes, vec![expected.clone(), expected]);
    }

    #[test]
    fn rate_limited_429_retries_with_the_interval_header() {
        let body = br#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","correlationId":"z","policyName":"TEN_SECONDLY_ROLLING"}"#;
        let limits = RateLimitHeaders {
            interval_ms: Some(10_000),
            max: Some(100),
            remaining: Some(0),
            ..RateLimitHeaders::default()
        };
        let v = attribute(UPSERT, &["a@b.c", "b@b.c"], 429, &limits, body);
        let expected = "HTTP 429: RATE_LIMIT: You have reached your ten_secondly_rolling limit.";
        assert_eq!(
            v.outcomes,
            vec![
                Outcome::Retry {
                    error: expected.into()
                };
                2
            ]
        );
        assert_eq!(v.pause, Some(Duration::from_secs(10)));
        assert_eq!(v.error.as_deref(), Some(expected));
        assert!(!v.daily_limit);
    }

    #[test]
    fn the_daily_limit_is_told_apart() {
        let body = br#"{"status":"error","message":"You have reached your daily limit.","errorType":"RATE_LIMIT","correlationId":"z","policyName":"DAILY"}"#;
        let v = attribute(UPSERT, &["a@b.c", "b@b.c"], 429, &no_limits(), body);
        assert!(v.daily_limit);
        assert!(v.outcomes.iter().all(is_retry));
        assert_eq!(v.pause, Some(DAILY_LIMIT_PAUSE));
        assert_eq!(v.misconfigured, None);
    }

    #[test]
    fn retry_after_wins_and_is_capped() {
        let limits = |secs| RateLimitHeaders {
            interval_ms: Some(10_000),
            retry_after: Some(Duration::from_secs(secs)),
            ..RateLimitHeaders::default()
        };
        for status in [429, 423, 477, 500, 502, 503, 504, 521, 524] {
            let v = attribute(UPSERT, &["a"], status, &limits(3), b"");
            assert_eq!(v.pause, Some(Duration::from_secs(3)), "{status}");
            assert!(is_retry(&v.outcomes[0]), "{status}");
        }
        let v = attribute(UPSERT, &["a"], 503, &limits(86_400), b"");
        assert_eq!(v.pause, Some(MAX_PAUSE));
    }

    #[test]
    fn pauses_without_retry_after() {
        let pause =
            |status, body: &[u8]| attribute(Op::Update, &["1"], status, &no_limits(), body).pause;
        assert_eq!(pause(429, b"{}"), Some(RATE_LIMIT_PAUSE));
        assert_eq!(
            pause(429, br#"{"message":"You have reached your daily limit.","errorType":"RATE_LIMIT","policyName":"DAILY"}"#),
            Some(DAILY_LIMIT_PAUSE)
        );
        assert_eq!(pause(423, b""), Some(LOCKED_PAUSE));
        assert_eq!(pause(477, b""), Some(OUTAGE_PAUSE));
        assert_eq!(pause(502, b"<html>Bad Gateway</html>"), Some(OUTAGE_PAUSE));
        assert_eq!(pause(401, b""), Some(AUTH_PAUSE));
        assert_eq!(pause(403, b""), Some(AUTH_PAUSE));
        assert_eq!(pause(301, b""), Some(MISCONFIGURED_PAUSE));
    }

    #[test]
    fn auth_failures_are_not_the_records_fault() {
        let body = br#"{"status":"error","message":"Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview","correlationId":"a","category":"INVALID_AUTHENTICATION"}"#;
        let v = attribute(UPSERT, &["a@b.c"], 401, &no_limits(), body);
        assert!(
            matches!(&v.outcomes[0], Outcome::Retry { error } if error.starts_with("HTTP 401: INVALID_AUTHENTICATION: Authentication credentials not found.") && error.ends_with("check the secret and the app's scopes")),
            "{:?}",
            v.outcomes[0]
        );
        assert_eq!(v.misconfigured, v.error);
        let v = attribute(UPSERT, &["a@b.c"], 403, &no_limits(), br#"{"status":"error","message":"This app hasn't been granted all required scopes to make this call.","category":"MISSING_SCOPES"}"#);
        assert_eq!(
            v.misconfigured.as_deref(),
            Some("HTTP 403: MISSING_SCOPES: This app hasn't been granted all required scopes to make this call.; check the secret and the app's scopes")
        );
        assert!(is_retry(&v.outcomes[0]));
    }

    #[test]
    fn a_404_that_is_no_object_not_found_is_a_wrong_base_url() {
        for body in [
            &b""[..],
            b"<html><body>Not Found</body></html>",
            br#"{"status":"error","message":"Unable to route POST request to /v3/objects/contacts/batch/upsert","correlationId":"c"}"#,
            // The route-not-found message wins over a category.
            br#"{"status":"error","message":"Unable to route POST request to /x","category":"OBJECT_NOT_FOUND"}"#,
            br#"{"status":"error","message":"not here"}"#,
        ] {
            for names in [&["7"][..], &["7", "8"]] {
                let v = attribute(Op::Update, names, 404, &no_limits(), body);
                assert!(v.outcomes.iter().all(is_retry), "{body:?}");
                let reason = v.misconfigured.unwrap();
                assert!(
                    reason.starts_with("HTTP 404: ") && reason.ends_with("; the CRM has no such route: check base_url"),
                    "{reason}"
                );
                assert_eq!(v.pause, Some(MISCONFIGURED_PAUSE));
            }
        }
        // Inside a batch response: a routed 404.
        let body = br#"{"status":"error","message":"m","errors":[{"category":"OBJECT_NOT_FOUND","context":{"ids":["8"]}}]}"#;
        let v = attribute(Op::Update, &["7", "8"], 404, &no_limits(), body);
        assert_eq!(v.misconfigured, None);
        assert!(matches!(v.outcomes[1], Outcome::Stale { .. }));
    }

    #[test]
    fn redirects_are_a_wrong_base_url() {
        for status in [101, 301, 302, 307, 308] {
            let v = attribute(UPSERT, &["a", "b"], status, &no_limits(), b"");
            assert!(v.outcomes.iter().all(is_retry), "{status}");
            assert_eq!(
                v.misconfigured,
                Some(format!("HTTP {status}: empty body; check base_url"))
            );
        }
    }

    #[test]
    fn server_errors_show_the_start_of_an_html_body() {
        let body = b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body>cloudflare</body>\n</html>\n";
        let v = attribute(UPSERT, &["a", "b"], 502, &no_limits(), body);
        let expected = "HTTP 502: <html> <head><title>502 Bad Gateway</title></head> <body>cloudflare</body> </html>";
        assert_eq!(
            v.outcomes,
            vec![
                Outcome::Retry {
                    error: expected.into()
                };
                2
            ]
        );
        let v = attribute(UPSERT, &["a"], 503, &no_limits(), b"");
        assert_eq!(v.error.as_deref(), Some("HTTP 503: empty body"));
    }

    #[test]
    fn an_unreadable_2xx_is_retried_not_blamed() {
        for body in [
            &b""[..],
            b"<html>ok</html>",
            br#"{"results":[{"id":"1","#,
            &[0xff, 0xfe, 0x00],
        ] {
            let v = attribute(UPSERT, &["a@b.c"], 200, &no_limits(), body);
            assert!(is_retry(&v.outcomes[0]), "{body:?}");
            assert_eq!(v.pause, Some(OUTAGE_PAUSE));
            assert!(v
                .error
                .unwrap()
                .starts_with("unreadable response from the CRM: HTTP 200: "));
        }
    }

    #[test]
    fn an_odd_4xx_body_rejects_the_batch_without_panicking() {
        for body in [
            &b""[..],
            b"<html>Bad Request</html>",
            b"{\"truncated",
            b"null",
        ] {
            let v = attribute(UPSERT, &["a@b.c", "b"], 400, &no_limits(), body);
            assert!(v
                .outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Rejected { .. })));
            let v = attribute(UPSERT, &["a@b.c"], 400, &no_limits(), body);
            assert!(matches!(v.outcomes[0], Outcome::Failed { .. }));
        }
    }

    #[test]
    fn archive_204_deletes_everyone() {
        let v = attribute(Op::Archive, &["1", "2"], 204, &no_limits(), b"");
        assert_eq!(v.outcomes, vec![Outcome::Deleted, Outcome::Deleted]);
        assert_eq!(v.error, None);
    }

    #[test]
    fn archive_errors_not_found_is_deleted_others_fail() {
        let body = br#"{"status":"COMPLETE","results":[],"errors":[
            {"category":"OBJECT_NOT_FOUND","message":"gone","context":{"ids":["1"]}},
            {"category":"VALIDATION_ERROR","message":"nope","context":{"ids":["2"]}}]}"#;
        let v = attribute(Op::Archive, &["1", "2", "3"], 207, &no_limits(), body);
        assert_eq!(
            v.outcomes,
            vec![
                Outcome::Deleted,
                failed("VALIDATION_ERROR: nope"),
                Outcome::Deleted
            ]
        );
        assert!(v.error.is_some());
        let body = br#"{"category":"OBJECT_NOT_FOUND","message":"gone","context":{"ids":["5"]}}"#;
        let v = attribute(Op::Archive, &["5", "6"], 404, &no_limits(), body);
        assert_eq!(v.outcomes[0], Outcome::Deleted);
        assert!(is_retry(&v.outcomes[1]));
    }

    #[test]
    fn broken_exchanges_retry_everyone() {
        let v = broken(3, "timed out (global)");
        assert_eq!(
            v.outcomes,
            vec![
                Outcome::Retry {
                    error: "timed out (global)".into()
                };
                3
            ]
        );
        assert_eq!(v.pause, Some(OUTAGE_PAUSE));
    }

    fn link<'a>(from: &'a str, to: &'a str) -> Name<'a> {
        Name::Link { from, to }
    }

    #[test]
    fn association_ops_name_their_endpoints() {
        let names = |op: Op| (op.endpoint(), op.operation());
        assert_eq!(
            names(Op::AssociateDefault),
            (
                "batch/associate/default",
                "associations/batch/associate/default"
            )
        );
        assert_eq!(
            names(Op::AssociateLabelled),
            ("batch/create", "associations/batch/create")
        );
        assert_eq!(
            names(Op::Dissociate),
            ("batch/archive", "associations/batch/archive")
        );
        assert_eq!(names(Op::Archive), ("batch/archive", "batch/archive"));
    }

    #[test]
    fn associate_200_syncs_every_link_to_its_target() {
        let links = [link("1", "10"), link("1", "11"), link("2", "10")];
        // Results in either shape, either direction, or none at all: COMPLETE without
        // errors means every link exists.
        for body in [
            &br#"{"status":"COMPLETE","results":[{"from":{"id":"1"},"to":{"id":"10"}},{"from":{"id":"11"},"to":{"id":"1"}},{"fromObjectId":2,"toObjectId":10}]}"#[..],
            br#"{"status":"COMPLETE","results":[]}"#,
            br#"{"status":"COMPLETE","results":[{"fromObjectTypeId":"0-3","labels":[]}]}"#,
        ] {
            let v = attribute(Op::AssociateDefault, &links, 200, &no_limits(), body);
            assert_eq!(v.outcomes, vec![synced("10"), synced("11"), synced("10")]);
            assert_eq!(v.error, None);
        }
    }

    #[test]
    fn associate_207_fails_exactly_the_links_named() {
        // An unknown from object fails every link from it, and only those.
        let body = br#"{"status":"COMPLETE","results":[{"from":{"id":"2"},"to":{"id":"10"}}],"numErrors":1,
            "errors":[{"status":"error","category":"OBJECT_NOT_FOUND","message":"Could not get some DEALS objects, they may be deleted or not exist. Check that ids are valid.","context":{"ids":["99"]}}]}"#;
        let links = [
            link("99", "10"),
            link("2", "10"),
            link("99", "11"),
            link("3", "12"),
        ];
        let v = attribute(Op::AssociateLabelled, &links, 207, &no_limits(), body);
        let culprit = failed("OBJECT_NOT_FOUND: Could not get some DEALS objects, they may be deleted or not exist. Check that ids are valid.");
        assert_eq!(
            v.outcomes,
            vec![culprit.clone(), synced("10"), culprit, synced("12")]
        );
        assert_eq!(v.pause, None);
        assert!(v
            .error
            .unwrap()
            .starts_with("HTTP 207: 2 of 4 records not applied; first: OBJECT_NOT_FOUND"));
        // The to object can be the one named, too; a result for the pair still wins.
        let body = br#"{"results":[{"from":{"id":"1"},"to":{"id":"7"}}],"errors":[{"category":"OBJECT_NOT_FOUND","context":{"ids":["7","8"]}}]}"#;
        let v = attribute(
            Op::AssociateDefault,
            &[link("1", "7"), link("1", "8")],
            207,
            &no_limits(),
            body,
        );
        assert_eq!(v.outcomes, vec![synced("7"), failed("OBJECT_NOT_FOUND")]);
    }

    #[test]
    fn associate_errors_naming_nobody_leave_only_results_synced() {
        let body = br#"{"results":[{"from":{"id":"1"},"to":{"id":"7"}}],"errors":[{"category":"VALIDATION_ERROR","message":"something","context":{"fromObjectId":["1"]}}]}"#;
        let v = attribute(
            Op::AssociateDefault,
            &[link("1", "7"), link("1", "8")],
            207,
            &no_limits(),
            body,
        );
        assert_eq!(v.outcomes, vec![synced("7"), failed(NO_RESULT)]);
    }

    #[test]
    fn association_refusals_and_outages() {
        let links = [link("1", "7"), link("2", "8")];
        let body = br#"{"status":"error","message":"The maximum number of inputs supported in a batch is 1000. Please reduce the number of items and try again","category":"VALIDATION_ERROR"}"#;
        let v = attribute(Op::AssociateDefault, &links, 400, &no_limits(), body);
        assert!(v.outcomes.iter().all(
            |o| matches!(o, Outcome::Rejected { error } if error.contains("maximum number of inputs"))
        ));
        for op in [Op::AssociateDefault, Op::AssociateLabelled, Op::Dissociate] {
            for status in [429, 500, 502, 503] {
                let v = attribute(op, &links, status, &no_limits(), b"");
                assert!(v.outcomes.iter().all(is_retry), "{op:?} {status}");
                assert!(v.pause.is_some());
            }
        }
        // An unreadable 2xx: the links may exist; asking again is harmless.
        let v = attribute(Op::AssociateDefault, &links, 200, &no_limits(), b"<html>");
        assert!(v.outcomes.iter().all(is_retry));
    }

    #[test]
    fn dissociate_deletes_unless_a_failure_is_named() {
        let links = [link("1", "7"), link("2", "8"), link("3", "9")];
        let v = attribute(Op::Dissociate, &links, 204, &no_limits(), b"");
        assert_eq!(v.outcomes, vec![Outcome::Deleted; 3]);
        assert_eq!(v.error, None);
        let body = br#"{"status":"COMPLETE","results":[],"errors":[
            {"category":"OBJECT_NOT_FOUND","message":"gone","context":{"ids":["1"]}},
            {"category":"VALIDATION_ERROR","message":"nope","context":{"ids":["8"]}}]}"#;
        let v = attribute(Op::Dissociate, &links, 207, &no_limits(), body);
        assert_eq!(
            v.outcomes,
            vec![
                Outcome::Deleted,
                failed("VALIDATION_ERROR: nope"),
                Outcome::Deleted
            ]
        );
        // A 404 for an object: nothing is left to remove; the rest were refused with it.
        let body = br#"{"status":"error","category":"OBJECT_NOT_FOUND","message":"gone","context":{"ids":["9"]}}"#;
        let v = attribute(Op::Dissociate, &links, 404, &no_limits(), body);
        assert_eq!(v.outcomes[2], Outcome::Deleted);
        assert!(is_retry(&v.outcomes[0]) && is_retry(&v.outcomes[1]));
    }

    const READ: Op = Op::Read {
        id_property: "email",
    };

    #[test]
    fn read_names_its_endpoint() {
        assert_eq!(
            (READ.endpoint(), READ.operation()),
            ("batch/read", "batch/read")
        );
    }

    #[test]
    fn read_200_matches_results_by_id_property_ignoring_case() {
        // HubSpot lowercases emails and promises no order.
        let body = br#"{"status":"COMPLETE","results":[
            {"id":"202","properties":{"email":"bob@example.com","hs_object_id":"202"},"archived":false},
            {"id":"201","properties":{"email":"ann@example.com"},"archived":false}
        ],"startedAt":"2024-01-01T00:00:00Z","completedAt":"2024-01-01T00:00:00Z"}"#;
        let v = attribute(
            READ,
            &[" Ann@Example.com", "bob@example.com"],
            200,
            &no_limits(),
            body,
        );
        assert_eq!(v.outcomes, vec![synced("201"), synced("202")]);
        assert_eq!(
            v,
            Verdict {
                outcomes: v.outcomes.clone(),
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn read_207_not_found_is_deleted_not_an_error() {
        // The ids not found in one entry (HubSpot's way) or one entry each (the mock's).
        for errors in [
            r#"[{"status":"error","category":"OBJECT_NOT_FOUND","message":"Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.","context":{"ids":["bob@x.io","cy@x.io"]}}]"#,
            r#"[{"status":"error","category":"OBJECT_NOT_FOUND","context":{"ids":["bob@x.io"]}},{"status":"error","category":"OBJECT_NOT_FOUND","context":{"ids":["cy@x.io"]}}]"#,
        ] {
            let body = format!(
                r#"{{"status":"COMPLETE","results":[{{"id":"7","properties":{{"email":"ann@x.io"}}}}],"numErrors":1,"errors":{errors}}}"#
            );
            let v = attribute(
                READ,
                &["bob@x.io", "Ann@x.io", "CY@x.io"],
                207,
                &no_limits(),
                body.as_bytes(),
            );
            assert_eq!(
                v.outcomes,
                vec![Outcome::Deleted, synced("7"), Outcome::Deleted]
            );
            assert_eq!((v.error, v.pause, v.misconfigured), (None, None, None));
        }
    }

    #[test]
    fn read_inputs_left_out_are_not_found_unless_the_answer_is_unclear() {
        // Left out of a complete answer: not found.
        let body =
            br#"{"status":"COMPLETE","results":[{"id":"7","properties":{"email":"ann@x.io"}}]}"#;
        let v = attribute(READ, &["ann@x.io", "bob@x.io"], 200, &no_limits(), body);
        assert_eq!(v.outcomes, vec![synced("7"), Outcome::Deleted]);
        let v = attribute(
            READ,
            &["bob@x.io"],
            207,
            &no_limits(),
            br#"{"results":[],"errors":[{"category":"OBJECT_NOT_FOUND"}]}"#,
        );
        assert_eq!(v.outcomes, vec![Outcome::Deleted]);
        // A result that echoes no value may be either input's object: neither is gone.
        let body = br#"{"results":[{"id":"7","properties":{}},{"id":"8","properties":{"email":"bob@x.io"}}]}"#;
        let v = attribute(
            READ,
            &["ann@x.io", "bob@x.io", "cy@x.io"],
            200,
            &no_limits(),
            body,
        );
        assert_eq!(
            v.outcomes,
            vec![failed(NO_RESULT), synced("8"), failed(NO_RESULT)]
        );
        // Alone with one result, the input is that object.
        let v = attribute(
            READ,
            &["ann@x.io"],
            200,
            &no_limits(),
            br#"{"results":[{"id":"7"}]}"#,
        );
        assert_eq!(v.outcomes, vec![synced("7")]);
        // An error naming nobody that is no "not found" may be about any input left out.
        let body = br#"{"results":[{"id":"8","properties":{"email":"bob@x.io"}}],"errors":[{"category":"VALIDATION_ERROR","message":"odd"}]}"#;
        let v = attribute(READ, &["ann@x.io", "bob@x.io"], 207, &no_limits(), body);
        assert_eq!(v.outcomes, vec![failed(NO_RESULT), synced("8")]);
        // One naming an input is that input's.
        let body = br#"{"results":[],"errors":[{"category":"VALIDATION_ERROR","message":"odd","context":{"ids":["ann@x.io"]}}]}"#;
        let v = attribute(READ, &["ann@x.io", "bob@x.io"], 207, &no_limits(), body);
        assert_eq!(
            v.outcomes,
            vec![failed("VALIDATION_ERROR: odd"), Outcome::Deleted]
        );
    }

    #[test]
    fn read_404_not_found_finds_nothing_but_a_route_404_is_misconfigured() {
        for body in [
            &br#"{"status":"error","message":"Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.","category":"OBJECT_NOT_FOUND","context":{"ids":["a@x.io"]}}"#[..],
            br#"{"status":"error","message":"Object not found.","category":"OBJECT_NOT_FOUND"}"#,
        ] {
            let v = attribute(READ, &["a@x.io", "b@x.io"], 404, &no_limits(), body);
            assert_eq!(v.outcomes, vec![Outcome::Deleted; 2]);
            assert_eq!((v.error, v.pause, v.misconfigured), (None, None, None));
        }
        let body = br#"{"status":"error","message":"Unable to route POST request to /crm/v3/objects/contacts/batch/read","correlationId":"c"}"#;
        let v = attribute(READ, &["a@x.io", "b@x.io"], 404, &no_limits(), body);
        assert!(v.outcomes.iter().all(is_retry));
        assert!(v
            .misconfigured
            .unwrap()
            .ends_with("the CRM has no such route: check base_url"));
        assert_eq!(v.pause, Some(MISCONFIGURED_PAUSE));
    }

    #[test]
    fn read_429_and_outages_are_retried() {
        let body = br#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}"#;
        let v = attribute(READ, &["a@x.io", "b@x.io"], 429, &no_limits(), body);
        assert!(v.outcomes.iter().all(is_retry));
        assert_eq!(v.pause, Some(RATE_LIMIT_PAUSE));
        for status in [500, 502, 503] {
            let v = attribute(READ, &["a@x.io"], status, &no_limits(), b"");
            assert!(is_retry(&v.outcomes[0]), "{status}");
        }
        // An unreadable 2xx: asking again is harmless, saying "not found" is not.
        let v = attribute(READ, &["a@x.io"], 200, &no_limits(), b"<html>");
        assert!(is_retry(&v.outcomes[0]));
    }

    #[test]
    fn long_messages_are_shortened() {
        let long = "x".repeat(5000);
        let body = format!(r#"{{"category":"CONFLICT","message":"{long}"}}"#);
        let v = attribute(Op::Update, &["1"], 409, &no_limits(), body.as_bytes());
        let Outcome::Failed { error } = &v.outcomes[0] else {
            panic!()
        };
        assert_eq!(error.chars().count(), MAX_ERROR_CHARS + 1);
    }
}
