//! HubSpot's v4 associations API: routing, bodies, validation and answers.
//!
//! - `POST /crm/v4/associations/{from}/{to}/batch/associate/default` `{inputs:[{from:{id}, to:{id}}]}`
//! - `POST /crm/v4/associations/{from}/{to}/batch/create` `{inputs:[{from:{id}, to:{id}, types:[{associationCategory, associationTypeId}]}]}`
//! - `POST /crm/v4/associations/{from}/{to}/batch/archive` `{inputs:[{from:{id}, to:[{id}]}]}` → 204
//! - `POST /crm/v4/associations/{from}/{to}/batch/read` `{inputs:[{id, after?}]}` (no paging: every association comes back)
//! - `PUT /crm/v4/objects/{from}/{fromId}/associations/default/{to}/{toId}`
//!
//! Batches take at most 1,000 inputs. Like the v3 batches, a problem with the request
//! (malformed JSON or association types, unknown object type, too many inputs) is a 400
//! for the whole batch, and a problem with one input (an object that does not exist or
//! is archived, a `fail_ids` id) is a 207 with `errors[].context.ids` naming it.

use crate::association_store::{self, canonical_type, AssocType, Category, ObjKey};
use crate::batch::{complete, input_error, missing_objects, too_many_inputs, usable_id, ErrEntry};
use crate::clock::now_ms;
use crate::errors::{self, ApiError};
use crate::hubspot::{count_inputs, id_string, parse, Ctx, Op, Reply, RouteError};
use crate::query::percent_decode;
use crate::state::Store;
use axum::http::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// HubSpot's cap on v4 batch inputs (read since 2025-02; associate and create are
/// documented higher by some, 1,000 is safe for all).
pub const MAX_INPUTS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AssocBatch {
    AssociateDefault,
    Create,
    Archive,
    Read,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AssocOp {
    /// `from` is the route's object type.
    Batch { to: String, op: AssocBatch },
    /// One default association.
    Default {
        from_id: String,
        to: String,
        to_id: String,
    },
}

impl AssocOp {
    /// Names for the fault config's `operations` (see `hubspot::OPERATIONS`).
    pub fn name(&self) -> &'static str {
        match self {
            AssocOp::Batch { op, .. } => match op {
                AssocBatch::AssociateDefault => "associations/batch/associate/default",
                AssocBatch::Create => "associations/batch/create",
                AssocBatch::Archive => "associations/batch/archive",
                AssocBatch::Read => "associations/batch/read",
            },
            AssocOp::Default { .. } => "associations/default",
        }
    }
}

/// Maps a `/crm/v4/...` path to an operation; `from`'s type is returned as the route's
/// object type.
pub fn route<'a>(method: &Method, path: &'a str) -> Result<(&'a str, Op), RouteError> {
    use RouteError::*;
    let rest = path.strip_prefix("/crm/v4/").ok_or(NotFound)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(NotFound);
    }
    let (from, op, allowed) = match segs[..] {
        ["associations", from, to, "batch", ref tail @ ..] => {
            let op = match tail {
                ["associate", "default"] => AssocBatch::AssociateDefault,
                ["create"] => AssocBatch::Create,
                ["archive"] => AssocBatch::Archive,
                ["read"] => AssocBatch::Read,
                _ => return Err(NotFound),
            };
            let to = to.to_owned();
            (from, AssocOp::Batch { to, op }, Method::POST)
        }
        ["objects", from, from_id, "associations", "default", to, to_id] => {
            let op = AssocOp::Default {
                from_id: percent_decode(from_id, false),
                to: to.to_owned(),
                to_id: percent_decode(to_id, false),
            };
            (from, op, Method::PUT)
        }
        _ => return Err(NotFound),
    };
    if *method != allowed {
        return Err(MethodNotAllowed);
    }
    Ok((from, Op::Associations(op)))
}

pub fn handle(ctx: &Ctx, op: AssocOp, body: &[u8]) -> Reply {
    match op {
        AssocOp::Batch { to, op } => match op {
            AssocBatch::AssociateDefault | AssocBatch::Create => {
                associate_batch(ctx, &to, op, body)
            }
            AssocBatch::Archive => archive(ctx, &to, body),
            AssocBatch::Read => read(ctx, &to, body),
        },
        AssocOp::Default { from_id, to, to_id } => single_default(ctx, &from_id, &to, &to_id),
    }
}

// ---------------------------------------------------------------------------------------
// Request bodies

#[derive(Deserialize)]
struct Inputs<T> {
    inputs: Vec<T>,
}

#[derive(Deserialize)]
struct ObjRef {
    #[serde(default)]
    id: Option<Value>,
}

/// `to` is one object in associate/create, a list in archive. `Many` goes first: serde
/// would also read a list as a struct (by position).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<ObjRef>),
    One(ObjRef),
}

#[derive(Deserialize)]
struct LinkInput {
    #[serde(default)]
    from: Option<ObjRef>,
    #[serde(default)]
    to: Option<OneOrMany>,
    #[serde(default)]
    types: Option<Vec<TypeSpec>>,
}

/// Read as JSON values so a wrong type is answered with HubSpot's words, not serde's.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeSpec {
    #[serde(default)]
    association_category: Value,
    #[serde(default)]
    association_type_id: Value,
}

/// Parses the body and checks the batch cap, the first two things HubSpot refuses a batch for.
fn parse_batch<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<Vec<T>, Reply> {
    let inputs: Inputs<T> = parse(body).map_err(|e| Reply::err(e, count_inputs(body) as usize))?;
    let n = inputs.inputs.len();
    if n > MAX_INPUTS {
        return Err(Reply::err(too_many_inputs(MAX_INPUTS), n));
    }
    Ok(inputs.inputs)
}

fn parse_type(spec: &TypeSpec) -> Result<AssocType, String> {
    let category = spec
        .association_category
        .as_str()
        .and_then(Category::parse)
        .ok_or_else(|| {
            format!(
                "associationCategory must be one of HUBSPOT_DEFINED, USER_DEFINED, INTEGRATOR_DEFINED, got {}",
                spec.association_category
            )
        })?;
    // Jackson, behind HubSpot's API, also takes an integer written as a string.
    let type_id = match &spec.association_type_id {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        format!(
            "associationTypeId must be an integer, got {}",
            spec.association_type_id
        )
    })?;
    Ok(AssocType { category, type_id })
}

// ---------------------------------------------------------------------------------------
// Shared checks

/// Both ends' store names, or the 400 HubSpot answers for a type it cannot resolve.
/// Custom types are known once they hold objects.
fn resolve_types(store: &Store, from: &str, to: &str) -> Result<(String, String), ApiError> {
    let known = |t: &str| {
        let c = canonical_type(t).into_owned();
        if association_store::is_standard_type(&c) || store.types.contains_key(&c) {
            Ok(c)
        } else {
            Err(errors::validation(format!(
                "Unable to infer object type from: {t}"
            )))
        }
    };
    Ok((known(from)?, known(to)?))
}

/// The live object `id` of `object_type`, or None after recording an OBJECT_NOT_FOUND
/// naming it (unknown, archived, or not a number).
fn live_object(
    store: &Store,
    object_type: &str,
    id: &str,
    errors: &mut Vec<ErrEntry>,
) -> Option<ObjKey> {
    let found = store
        .types
        .get(object_type)
        .and_then(|ts| ts.find(None, id));
    if found.is_none() {
        errors.push(input_error(
            "OBJECT_NOT_FOUND",
            missing_objects(object_type),
            Some(id),
            None,
        ));
    }
    found.map(|oid| (object_type.to_owned(), oid))
}

// ---------------------------------------------------------------------------------------
// Associate (default and labelled)

#[derive(Serialize)]
struct IdRef {
    id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    association_category: Category,
    association_type_id: i64,
}

impl From<AssocType> for Spec {
    fn from(t: AssocType) -> Self {
        Spec {
            association_category: t.category,
            association_type_id: t.type_id,
        }
    }
}

/// One association made: `associationSpec` for a default one, `associationTypes` (what
/// the input asked for) for a labelled one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Made {
    from: IdRef,
    to: IdRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    association_spec: Option<Spec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    association_types: Vec<Spec>,
}

/// One input to associate; `types` None asks for the default type.
struct Wanted {
    from: Option<String>,
    to: Option<String>,
    types: Option<Vec<AssocType>>,
}

/// Applies every input it can under one store lock. Err: the batch as a whole is refused.
fn associate(
    ctx: &Ctx,
    to_type: &str,
    wanted: Vec<Wanted>,
) -> Result<(Vec<Made>, Vec<ErrEntry>), ApiError> {
    let mut store = ctx.store();
    let (from_t, to_t) = resolve_types(&store, ctx.object_type, to_type)?;
    let default = association_store::default_type(&from_t, &to_t);
    for w in &wanted {
        match &w.types {
            None if default.is_none() => {
                return Err(errors::validation(format!(
                    "No default association type from {from_t} to {to_t} (etlify-mock knows those between contacts, companies and deals)"
                )))
            }
            None => {}
            Some(types) => {
                for &t in types {
                    association_store::check_type(&from_t, &to_t, t).map_err(errors::validation)?;
                }
            }
        }
    }
    let mut errors = Vec::new();
    let mut made = Vec::with_capacity(wanted.len());
    for w in wanted {
        // One error per input: the first thing wrong with it.
        let Some(from_id) = usable_id(ctx, w.from.as_deref(), &mut errors) else {
            continue;
        };
        let Some(to_id) = usable_id(ctx, w.to.as_deref(), &mut errors) else {
            continue;
        };
        let Some(from) = live_object(&store, &from_t, from_id, &mut errors) else {
            continue;
        };
        let Some(to) = live_object(&store, &to_t, to_id, &mut errors) else {
            continue;
        };
        let labelled = w.types.is_some();
        let types = w.types.unwrap_or_else(|| default.into_iter().collect());
        for &t in &types {
            store.associations.add(&from, &to, t);
        }
        let (from, to) = (
            IdRef {
                id: from.1.to_string(),
            },
            IdRef {
                id: to.1.to_string(),
            },
        );
        made.push(if !labelled {
            Made {
                from,
                to,
                association_spec: types.first().map(|&t| t.into()),
                association_types: Vec::new(),
            }
        } else {
            Made {
                from,
                to,
                association_spec: None,
                association_types: types.into_iter().map(Spec::from).collect(),
            }
        });
    }
    Ok((made, errors))
}

fn associate_batch(ctx: &Ctx, to_type: &str, op: AssocBatch, body: &[u8]) -> Reply {
    let started = now_ms();
    let inputs: Vec<LinkInput> = match parse_batch(body) {
        Ok(i) => i,
        Err(reply) => return reply,
    };
    let n = inputs.len();
    let mut wanted = Vec::with_capacity(n);
    for input in inputs {
        let to = match input.to {
            None => None,
            Some(OneOrMany::One(r)) => id_string(&r.id),
            Some(OneOrMany::Many(_)) => {
                let e = errors::validation("Invalid input JSON: `to` must be an object {id}");
                return Reply::err(e, n);
            }
        };
        let types = match (op, input.types) {
            (AssocBatch::AssociateDefault, _) => None,
            (_, Some(specs)) if !specs.is_empty() => {
                match specs.iter().map(parse_type).collect::<Result<Vec<_>, _>>() {
                    Ok(types) => Some(types),
                    Err(msg) => return Reply::err(errors::validation(msg), n),
                }
            }
            _ => {
                let e = errors::validation("Each input needs at least one association type");
                return Reply::err(e, n);
            }
        };
        wanted.push(Wanted {
            from: input.from.and_then(|r| id_string(&r.id)),
            to,
            types,
        });
    }
    match associate(ctx, to_type, wanted) {
        Ok((made, errors)) => complete(made, &errors, started, 200, n),
        Err(e) => Reply::err(e, n),
    }
}

/// A batch of one, answered like a single-object call: an error is the whole answer.
fn single_default(ctx: &Ctx, from_id: &str, to_type: &str, to_id: &str) -> Reply {
    let started = now_ms();
    let wanted = vec![Wanted {
        from: Some(from_id.to_owned()),
        to: Some(to_id.to_owned()),
        types: None,
    }];
    match associate(ctx, to_type, wanted) {
        Ok((_, mut errors)) if !errors.is_empty() => {
            Reply::err(errors.remove(0).into_api_error(), 1)
        }
        Ok((made, _)) => complete(made, &[], started, 200, 1),
        Err(e) => Reply::err(e, 1),
    }
}

// ---------------------------------------------------------------------------------------
// Archive and read

/// Removes every association between each `from` and its `to` objects. 204, also for
/// objects that do not exist (as the v3 batch archive); 207 only for scripted failures.
fn archive(ctx: &Ctx, to_type: &str, body: &[u8]) -> Reply {
    let started = now_ms();
    let inputs: Vec<LinkInput> = match parse_batch(body) {
        Ok(i) => i,
        Err(reply) => return reply,
    };
    let n = inputs.len();
    let mut store = ctx.store();
    let (from_t, to_t) = match resolve_types(&store, ctx.object_type, to_type) {
        Ok(t) => t,
        Err(e) => return Reply::err(e, n),
    };
    let mut errors = Vec::new();
    for input in inputs {
        let from = input.from.and_then(|r| id_string(&r.id));
        let Some(from) = usable_id(ctx, from.as_deref(), &mut errors) else {
            continue;
        };
        let tos = match input.to {
            None => Vec::new(),
            Some(OneOrMany::One(r)) => vec![r],
            Some(OneOrMany::Many(rs)) => rs,
        };
        for r in tos {
            let to = id_string(&r.id);
            let Some(to) = usable_id(ctx, to.as_deref(), &mut errors) else {
                continue;
            };
            // A pair that cannot exist (ids that are not numbers) has nothing to remove.
            if let (Ok(f), Ok(t)) = (from.trim().parse::<u64>(), to.trim().parse::<u64>()) {
                store
                    .associations
                    .remove_pair(&(from_t.clone(), f), &(to_t.clone(), t));
            }
        }
    }
    if errors.is_empty() {
        return Reply::ok(204, Vec::new(), n);
    }
    complete(Vec::<Made>::new(), &errors, started, 200, n)
}

#[derive(Deserialize)]
struct ReadInput {
    #[serde(default)]
    id: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReadType {
    category: Category,
    type_id: i64,
    label: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReadTo {
    to_object_id: u64,
    association_types: Vec<ReadType>,
}

#[derive(Serialize)]
struct ReadResult {
    from: IdRef,
    to: Vec<ReadTo>,
}

fn read(ctx: &Ctx, to_type: &str, body: &[u8]) -> Reply {
    let started = now_ms();
    let inputs: Vec<ReadInput> = match parse_batch(body) {
        Ok(i) => i,
        Err(reply) => return reply,
    };
    let n = inputs.len();
    let store = ctx.store();
    let (from_t, to_t) = match resolve_types(&store, ctx.object_type, to_type) {
        Ok(t) => t,
        Err(e) => return Reply::err(e, n),
    };
    let mut errors = Vec::new();
    let mut results = Vec::with_capacity(n);
    for input in inputs {
        let id = id_string(&input.id);
        let Some(id) = usable_id(ctx, id.as_deref(), &mut errors) else {
            continue;
        };
        let Some(from) = live_object(&store, &from_t, id, &mut errors) else {
            continue;
        };
        let to = store
            .associations
            .of(&from, &to_t)
            .into_iter()
            .map(|(to_object_id, types)| ReadTo {
                to_object_id,
                association_types: types
                    .into_iter()
                    .map(|t| ReadType {
                        category: t.category,
                        type_id: t.type_id,
                        label: association_store::label(&from_t, &to_t, t),
                    })
                    .collect(),
            })
            .collect();
        results.push(ReadResult {
            from: IdRef {
                id: from.1.to_string(),
            },
            to,
        });
    }
    complete(results, &errors, started, 200, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(m: Method, p: &str) -> Result<(&str, Op), RouteError> {
        route(&m, p)
    }

    fn batch(to: &str, op: AssocBatch) -> Op {
        Op::Associations(AssocOp::Batch { to: to.into(), op })
    }

    #[test]
    fn routes() {
        assert_eq!(
            r(
                Method::POST,
                "/crm/v4/associations/deals/companies/batch/associate/default"
            ),
            Ok(("deals", batch("companies", AssocBatch::AssociateDefault)))
        );
        assert_eq!(
            r(Method::POST, "/crm/v4/associations/0-1/0-2/batch/create/"),
            Ok(("0-1", batch("0-2", AssocBatch::Create)))
        );
        assert_eq!(
            r(
                Method::POST,
                "/crm/v4/associations/deals/contacts/batch/archive"
            ),
            Ok(("deals", batch("contacts", AssocBatch::Archive)))
        );
        assert_eq!(
            r(
                Method::POST,
                "/crm/v4/associations/deals/contacts/batch/read"
            ),
            Ok(("deals", batch("contacts", AssocBatch::Read)))
        );
        assert_eq!(
            r(
                Method::PUT,
                "/crm/v4/objects/contacts/1/associations/default/companies/2"
            ),
            Ok((
                "contacts",
                Op::Associations(AssocOp::Default {
                    from_id: "1".into(),
                    to: "companies".into(),
                    to_id: "2".into()
                })
            ))
        );
        assert_eq!(
            r(
                Method::GET,
                "/crm/v4/associations/deals/contacts/batch/read"
            ),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            r(
                Method::POST,
                "/crm/v4/objects/contacts/1/associations/default/companies/2"
            ),
            Err(RouteError::MethodNotAllowed)
        );
        for nope in [
            "/crm/v4/associations/deals/contacts/batch/upsert",
            "/crm/v4/associations/deals/contacts/batch/associate",
            "/crm/v4/associations//contacts/batch/read",
            "/crm/v4/objects/contacts",
            "/crm/v4/objects/contacts/1/associations/companies/2",
        ] {
            assert_eq!(r(Method::POST, nope), Err(RouteError::NotFound), "{nope}");
        }
    }

    #[test]
    fn type_specs_must_be_well_formed() {
        let spec = |c: Value, id: Value| TypeSpec {
            association_category: c,
            association_type_id: id,
        };
        assert_eq!(
            parse_type(&spec("USER_DEFINED".into(), 12.into())),
            Ok(AssocType {
                category: Category::User,
                type_id: 12
            })
        );
        assert_eq!(
            parse_type(&spec("HUBSPOT_DEFINED".into(), "5".into())),
            Ok(AssocType::hubspot(5))
        );
        assert!(parse_type(&spec("hubspot_defined".into(), 5.into())).is_err());
        assert!(parse_type(&spec(Value::Null, 5.into())).is_err());
        assert!(parse_type(&spec("HUBSPOT_DEFINED".into(), 5.5.into())).is_err());
        assert!(parse_type(&spec("HUBSPOT_DEFINED".into(), Value::Null)).is_err());
    }
}
