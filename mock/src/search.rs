//! `POST /crm/v3/objects/{t}/search`: filter groups (OR of ANDs), sorts, paging by offset.
//! Values compare numerically when both sides are numbers or dates (so a millisecond
//! timestamp filter works against ISO `lastmodifieddate`), else as case-insensitive strings.

use crate::clock::parse_iso_ms;
use crate::errors::{self, ApiError};
use crate::render::ObjView;
use crate::state::{Obj, Store};
use serde::Deserialize;
use serde_json::Value;
use std::cmp::Ordering;
use std::sync::Mutex;

pub const MAX_LIMIT: usize = 200;
/// HubSpot won't page past this many results.
pub const MAX_RESULTS: usize = 10_000;

#[derive(Deserialize)]
struct SearchBody {
    #[serde(default, rename = "filterGroups")]
    groups: Vec<GroupIn>,
    #[serde(default)]
    sorts: Vec<SortIn>,
    #[serde(default)]
    properties: Vec<String>,
    #[serde(default)]
    limit: Option<Value>,
    #[serde(default)]
    after: Option<Value>,
    #[serde(default)]
    query: Option<String>,
}

#[derive(Deserialize)]
struct GroupIn {
    #[serde(default)]
    filters: Vec<FilterIn>,
}

#[derive(Deserialize)]
struct FilterIn {
    #[serde(rename = "propertyName")]
    property: String,
    operator: String,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    values: Option<Vec<Value>>,
    #[serde(default, rename = "highValue")]
    high: Option<Value>,
}

/// Sorts come as `{propertyName, direction}` or, in older clients, as `"prop"` / `"-prop"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum SortIn {
    Obj {
        #[serde(rename = "propertyName")]
        property: String,
        #[serde(default)]
        direction: Option<String>,
    },
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Operator {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Between,
    In,
    NotIn,
    HasProperty,
    NotHasProperty,
    ContainsToken,
    NotContainsToken,
}

struct Filter {
    property: String,
    op: Operator,
    value: String,
    values: Vec<String>,
    high: String,
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn compile(f: FilterIn) -> Result<Filter, ApiError> {
    use Operator::*;
    let op = match f.operator.as_str() {
        "EQ" => Eq,
        "NEQ" => Neq,
        "LT" => Lt,
        "LTE" => Lte,
        "GT" => Gt,
        "GTE" => Gte,
        "BETWEEN" => Between,
        "IN" => In,
        "NOT_IN" => NotIn,
        "HAS_PROPERTY" => HasProperty,
        "NOT_HAS_PROPERTY" => NotHasProperty,
        "CONTAINS_TOKEN" => ContainsToken,
        "NOT_CONTAINS_TOKEN" => NotContainsToken,
        other => {
            return Err(errors::validation(format!(
                "Invalid operator {other} for property {}",
                f.property
            )))
        }
    };
    let value = f.value.as_ref().and_then(scalar);
    let values: Vec<String> = f.values.iter().flatten().filter_map(scalar).collect();
    let high = f.high.as_ref().and_then(scalar);
    let missing = |what: &str| {
        errors::validation(format!(
            "There was a problem with the request: filter on {} with operator {} requires {what}",
            f.property, f.operator
        ))
    };
    match op {
        In | NotIn if values.is_empty() => return Err(missing("values")),
        Between if value.is_none() || high.is_none() => return Err(missing("value and highValue")),
        Eq | Neq | Lt | Lte | Gt | Gte | ContainsToken | NotContainsToken if value.is_none() => {
            return Err(missing("value"))
        }
        _ => {}
    }
    Ok(Filter {
        property: f.property,
        op,
        value: value.unwrap_or_default(),
        values,
        high: high.unwrap_or_default(),
    })
}

/// Sort/compare key of one value.
#[derive(Debug)]
enum Key {
    Num(f64),
    Str(String),
}

fn key(s: &str) -> Key {
    if let Ok(n) = s.trim().parse::<f64>() {
        if n.is_finite() {
            return Key::Num(n);
        }
    }
    match parse_iso_ms(s.trim()) {
        Some(ms) => Key::Num(ms as f64),
        None => Key::Str(s.to_lowercase()),
    }
}

fn cmp_keys(a: &Key, b: &Key) -> Ordering {
    match (a, b) {
        (Key::Num(x), Key::Num(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Key::Str(x), Key::Str(y)) => x.cmp(y),
        (Key::Num(_), Key::Str(_)) => Ordering::Less,
        (Key::Str(_), Key::Num(_)) => Ordering::Greater,
    }
}

/// Compares a stored value with a filter value: numerically if both are numbers/dates.
fn compare(stored: &str, wanted: &str) -> Ordering {
    match (key(stored), key(wanted)) {
        (Key::Num(x), Key::Num(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => stored.to_lowercase().cmp(&wanted.to_lowercase()),
    }
}

/// `*` wildcard match (case already folded by the caller).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// HubSpot tokenizes on whitespace and punctuation; the whole value also counts as a token
/// (so `*@example.com` matches an email).
fn contains_token(value: &str, pattern: &str) -> bool {
    let value = value.to_lowercase();
    let pattern = pattern.to_lowercase();
    let matches = |tok: &str| glob(&pattern, tok);
    matches(&value)
        || value.split_whitespace().any(matches)
        || value
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
            .any(matches)
}

fn matches(obj: &Obj, f: &Filter) -> bool {
    use Operator::*;
    let v = obj.prop(&f.property);
    let v = v.as_deref();
    let cmp = |want: &str| v.map(|s| compare(s, want));
    match f.op {
        HasProperty => v.is_some(),
        NotHasProperty => v.is_none(),
        Eq => cmp(&f.value) == Some(Ordering::Equal),
        Neq => cmp(&f.value) != Some(Ordering::Equal),
        Lt => cmp(&f.value) == Some(Ordering::Less),
        Lte => matches!(cmp(&f.value), Some(Ordering::Less | Ordering::Equal)),
        Gt => cmp(&f.value) == Some(Ordering::Greater),
        Gte => matches!(cmp(&f.value), Some(Ordering::Greater | Ordering::Equal)),
        Between => {
            matches!(cmp(&f.value), Some(Ordering::Greater | Ordering::Equal))
                && matches!(cmp(&f.high), Some(Ordering::Less | Ordering::Equal))
        }
        In => f.values.iter().any(|w| cmp(w) == Some(Ordering::Equal)),
        NotIn => !f.values.iter().any(|w| cmp(w) == Some(Ordering::Equal)),
        ContainsToken => v.is_some_and(|s| contains_token(s, &f.value)),
        NotContainsToken => !v.is_some_and(|s| contains_token(s, &f.value)),
    }
}

fn usize_of(v: &Option<Value>, default: usize, what: &str) -> Result<usize, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| errors::validation(format!("{what} must be a non-negative integer"))),
        Some(Value::String(s)) if s.is_empty() => Ok(default),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| errors::validation(format!("{what} must be a non-negative integer"))),
        _ => Err(errors::validation(format!(
            "{what} must be a non-negative integer"
        ))),
    }
}

pub fn search(store: &Mutex<Store>, object_type: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let b: SearchBody = serde_json::from_slice(body).map_err(|e| errors::invalid_json(&e))?;
    let limit = usize_of(&b.limit, 10, "limit")?;
    if limit > MAX_LIMIT {
        return Err(errors::validation(format!(
            "limit must be less than or equal to {MAX_LIMIT}, got {limit}"
        )));
    }
    let after = usize_of(&b.after, 0, "after")?;
    if after >= MAX_RESULTS {
        return Err(errors::validation(format!(
            "Paging past {MAX_RESULTS} results is not supported (after={after})"
        )));
    }
    let groups: Vec<Vec<Filter>> = b
        .groups
        .into_iter()
        .map(|g| g.filters.into_iter().map(compile).collect())
        .collect::<Result<_, _>>()?;
    let sorts: Vec<(String, bool)> = b
        .sorts
        .into_iter()
        .map(|s| match s {
            SortIn::Obj {
                property,
                direction,
            } => {
                let desc = direction.is_some_and(|d| d.eq_ignore_ascii_case("DESCENDING"));
                (property, desc)
            }
            SortIn::Str(s) => match s.strip_prefix('-') {
                Some(p) => (p.to_owned(), true),
                None => (s, false),
            },
        })
        .collect();
    let query = b.query.map(|q| q.to_lowercase()).filter(|q| !q.is_empty());
    let props = (!b.properties.is_empty()).then_some(b.properties.as_slice());

    let store = crate::lock(store);
    let Some(ts) = store.types.get(object_type) else {
        return Ok(br#"{"total":0,"results":[]}"#.to_vec());
    };
    let mut hits: Vec<&Obj> = ts
        .objects
        .values()
        .filter(|o| o.is_live())
        .filter(|o| groups.is_empty() || groups.iter().any(|g| g.iter().all(|f| matches(o, f))))
        .filter(|o| match &query {
            None => true,
            Some(q) => {
                o.id.to_string() == *q || o.props.values().any(|v| v.to_lowercase().contains(q))
            }
        })
        .collect();
    if !sorts.is_empty() {
        // Keys computed once per hit, not once per comparison.
        let mut keyed: Vec<(Vec<Option<Key>>, &Obj)> = hits
            .into_iter()
            .map(|o| {
                (
                    sorts
                        .iter()
                        .map(|(p, _)| o.prop(p).map(|v| key(&v)))
                        .collect(),
                    o,
                )
            })
            .collect();
        keyed.sort_by(|(ka, a), (kb, b)| {
            for (i, (_, desc)) in sorts.iter().enumerate() {
                let ord = match (&ka[i], &kb[i]) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Less,
                    (Some(_), None) => Ordering::Greater,
                    (Some(x), Some(y)) => cmp_keys(x, y),
                };
                let ord = if *desc { ord.reverse() } else { ord };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            a.id.cmp(&b.id)
        });
        hits = keyed.into_iter().map(|(_, o)| o).collect();
    }
    let total = hits.len();
    let end = (after + limit).min(total).min(MAX_RESULTS);
    let page = hits.get(after.min(total)..end).unwrap_or(&[]);
    let views: Vec<ObjView> = page
        .iter()
        .map(|o| ObjView {
            obj: o,
            props,
            new: None,
            trace: None,
        })
        .collect();
    let mut out = Vec::with_capacity(512 * views.len() + 64);
    out.extend_from_slice(format!("{{\"total\":{total},\"results\":").as_bytes());
    serde_json::to_writer(&mut out, &views).expect("in-memory write");
    if end < total {
        out.extend_from_slice(
            format!(",\"paging\":{{\"next\":{{\"after\":\"{end}\"}}}}").as_bytes(),
        );
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_globs() {
        assert!(contains_token("John Smith", "smith"));
        assert!(contains_token("john@acme.com", "*@acme.com"));
        assert!(contains_token("john@acme.com", "acme"));
        assert!(!contains_token("john@acme.com", "acm"));
        assert!(contains_token("john@acme.com", "acm*"));
        assert!(glob("a*c", "abbbc"));
        assert!(!glob("a*c", "abbb"));
    }

    #[test]
    fn compares_numbers_and_dates() {
        assert_eq!(compare("10", "9"), Ordering::Greater);
        assert_eq!(
            compare("2019-10-31T00:00:00.001Z", "1572480000000"),
            Ordering::Greater
        );
        assert_eq!(compare("Alice", "alice"), Ordering::Equal);
    }
}
