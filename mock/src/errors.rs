//! HubSpot-shaped error bodies. Clients branch on `category` (and on `errorType`/`policyName`
//! for 429s), so these mirror the documented shapes exactly.

use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A finished non-2xx answer: status plus JSON body.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub body: Vec<u8>,
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random-looking v4-UUID-shaped id. Uniqueness is all that matters (clients log it),
/// so a counter through a mixer is enough and needs no RNG crate or lock.
pub fn correlation_id() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| crate::clock::now_us() as u64 ^ u64::from(std::process::id()));
    let a = splitmix64(seed ^ COUNTER.fetch_add(1, Ordering::Relaxed));
    let b = splitmix64(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// Field order as HubSpot sends it (a struct, since `json!` would sort the keys).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    status: &'static str,
    message: &'a str,
    correlation_id: String,
    category: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Value>,
}

fn body(message: &str, category: &str, context: Option<Value>) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        status: "error",
        message,
        correlation_id: correlation_id(),
        category,
        context,
    })
    .expect("in-memory write")
}

pub fn error(status: u16, category: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        body: body(&message.into(), category, None),
    }
}

pub fn error_with_context(
    status: u16,
    category: &str,
    message: impl Into<String>,
    context: Value,
) -> ApiError {
    ApiError {
        status,
        body: body(&message.into(), category, Some(context)),
    }
}

pub fn validation(message: impl Into<String>) -> ApiError {
    error(400, "VALIDATION_ERROR", message)
}

pub fn unauthorized() -> ApiError {
    error(
        401,
        "INVALID_AUTHENTICATION",
        "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
    )
}

/// The documented 429 body; note it has `errorType`/`policyName` and no `category`.
pub fn rate_limited() -> ApiError {
    limit_reached(
        "You have reached your ten_secondly_rolling limit.",
        "TEN_SECONDLY_ROLLING",
    )
}

/// The 429 once the day's quota is spent.
pub fn daily_limit_reached() -> ApiError {
    limit_reached("You have reached your daily limit.", "DAILY")
}

fn limit_reached(message: &'static str, policy_name: &'static str) -> ApiError {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct RateLimitBody {
        status: &'static str,
        message: &'static str,
        error_type: &'static str,
        correlation_id: String,
        policy_name: &'static str,
    }
    ApiError {
        status: 429,
        body: serde_json::to_vec(&RateLimitBody {
            status: "error",
            message,
            error_type: "RATE_LIMIT",
            correlation_id: correlation_id(),
            policy_name,
        })
        .expect("in-memory write"),
    }
}

/// No endpoint at this path: HubSpot's router answers before any object is looked up, so
/// the body has no `category` (in particular not OBJECT_NOT_FOUND, which clients read as
/// "this record is gone").
pub fn unknown_route(method: &str, path: &str) -> ApiError {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct RouteBody {
        status: &'static str,
        message: String,
        correlation_id: String,
    }
    ApiError {
        status: 404,
        body: serde_json::to_vec(&RouteBody {
            status: "error",
            message: format!("Unable to route {method} request to {path}"),
            correlation_id: correlation_id(),
        })
        .expect("in-memory write"),
    }
}

/// A batch refused whole for one input, naming none (`reject_ids`): a 400 naming only
/// the offending property, or a 409 naming the object the input collides with.
pub fn batch_refused(
    status: u16,
    object_type: &str,
    (property, value): (&str, &str),
    existing_id: u64,
) -> ApiError {
    if status == 409 {
        return error(
            409,
            "CONFLICT",
            format!(
                "{} already exists. Existing ID: {existing_id}",
                crate::hubspot::singular(object_type),
            ),
        );
    }
    let detail = serde_json::json!([{
        "isValid": false,
        "message": format!("{value} was not one of the allowed options"),
        "error": "INVALID_OPTION",
        "name": property,
    }]);
    validation(format!("Property values were not valid: {detail}"))
}

pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
    error(
        405,
        "VALIDATION_ERROR",
        format!("HTTP method {method} is not supported by {path}"),
    )
}

pub fn invalid_json(err: &serde_json::Error) -> ApiError {
    validation(format!(
        "Invalid input JSON on line {}, column {}: {err}",
        err.line(),
        err.column()
    ))
}

/// Body of an injected failure (faults endpoint / error_rate). 429 gets the rate-limit body
/// so clients exercise their real 429 path.
pub fn injected(status: u16, message: Option<&str>, category: Option<&str>) -> ApiError {
    if status == 429 && message.is_none() && category.is_none() {
        return rate_limited();
    }
    let default_category = match status {
        400 => "VALIDATION_ERROR",
        401 => "INVALID_AUTHENTICATION",
        403 => "MISSING_SCOPES",
        404 => "OBJECT_NOT_FOUND",
        409 => "CONFLICT",
        423 => "LOCKED",
        429 => "RATE_LIMITS",
        _ => "INTERNAL_ERROR",
    };
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let message = message
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{reason} (fault injected by etlify-mock)"));
    error(status, category.unwrap_or(default_category), message)
}
