//! The request pipeline for every CRM API call: admission (log, auth, rate limit, faults),
//! injected delay, the handler, then rate-limit headers and the log entry's completion.

use crate::clock::now_us;
use crate::control::{Kind, Outcome};
use crate::errors;
use crate::hubspot::{self, Ctx, Reply, RouteError};
use crate::query::Query;
use crate::ratelimit::RateHeaders;
use crate::{lock, App};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Request bodies above this are refused; a 100-input batch is far below it.
const MAX_BODY: usize = 64 * 1024 * 1024;

pub async fn api(State(app): State<Arc<App>>, req: Request) -> Response {
    // Unknown admin paths are not API requests: no log entry, no faults.
    if req.uri().path().starts_with("/__mock") {
        let e = errors::unknown_route(req.method().as_str(), req.uri().path());
        return respond(404, e.body, None, None);
    }
    // Handled in its own task so a client that gives up (e.g. times out during an injected
    // delay) does not cancel the write: like the real service, the request still completes
    // and shows in the log.
    match tokio::spawn(handle(app, req)).await {
        Ok(resp) => resp,
        Err(_) => respond(
            500,
            errors::injected(500, Some("internal error"), None).body,
            None,
            None,
        ),
    }
}

fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
    else {
        return false;
    };
    match &app.token {
        Some(expected) => token == expected,
        None => !token.is_empty(),
    }
}

async fn handle(app: Arc<App>, req: Request) -> Response {
    let received = now_us();
    app.inflight.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let route = hubspot::route(&parts.method, path);
    let operation = route.as_ref().ok().map(|(_, op)| op.name());
    let kind = match &route {
        Err(_) => Kind::Unrouted,
        Ok((_, hubspot::Op::Search)) => Kind::Search,
        Ok(_) => Kind::Counted,
    };
    let authed = authorized(&app, &parts.headers);
    let body = axum::body::to_bytes(body, MAX_BODY).await;
    let adm = lock(&app.control).admit(
        parts.method.clone(),
        path.to_owned(),
        kind,
        operation,
        authed,
        received,
    );
    if !adm.delay.is_zero() {
        tokio::time::sleep(adm.delay).await;
    }
    let mut retry_after = None;
    let reply = match (route, body) {
        (Err(RouteError::NotFound), _) => {
            err_reply(errors::unknown_route(parts.method.as_str(), path), 0)
        }
        (Err(RouteError::MethodNotAllowed), _) => {
            err_reply(errors::method_not_allowed(parts.method.as_str(), path), 0)
        }
        _ if !authed => err_reply(errors::unauthorized(), 0),
        (Ok(_), Err(_)) => err_reply(
            errors::error(
                413,
                "VALIDATION_ERROR",
                "Request body too large or unreadable",
            ),
            0,
        ),
        (Ok((object_type, op)), Ok(bytes)) => match adm.outcome {
            Outcome::Reject {
                error,
                retry_after: ra,
            } => {
                retry_after = ra;
                err_reply(error, hubspot::count_inputs(&bytes))
            }
            Outcome::Proceed => {
                let ctx = Ctx {
                    store: &app.store,
                    object_type,
                    query: Query::parse(parts.uri.query()),
                    fail_ids: adm.fail_ids.as_deref(),
                    reject_ids: adm.reject_ids.as_deref(),
                };
                hubspot::handle(&ctx, op, &bytes)
            }
        },
    };
    let status = reply.status;
    let resp = respond(status, reply.body, adm.rate, retry_after);
    lock(&app.control)
        .log
        .finish(adm.seq, status, reply.inputs, now_us());
    app.inflight.fetch_sub(1, Ordering::Relaxed);
    if app.verbose {
        eprintln!(
            "etlify-mock: {} {} -> {} ({} inputs, {} us)",
            parts.method,
            parts.uri,
            status,
            reply.inputs,
            now_us() - received
        );
    }
    resp
}

fn err_reply(e: errors::ApiError, inputs: u32) -> Reply {
    Reply {
        status: e.status,
        body: e.body,
        inputs,
    }
}

static RL_INTERVAL: HeaderName =
    HeaderName::from_static("x-hubspot-ratelimit-interval-milliseconds");
static RL_MAX: HeaderName = HeaderName::from_static("x-hubspot-ratelimit-max");
static RL_REMAINING: HeaderName = HeaderName::from_static("x-hubspot-ratelimit-remaining");
static RL_DAILY: HeaderName = HeaderName::from_static("x-hubspot-ratelimit-daily");
static RL_DAILY_REMAINING: HeaderName =
    HeaderName::from_static("x-hubspot-ratelimit-daily-remaining");

pub fn respond(
    status: u16,
    body: Vec<u8>,
    rate: Option<RateHeaders>,
    retry_after: Option<u64>,
) -> Response {
    let empty = body.is_empty();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    if !empty {
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=utf-8"),
        );
    }
    if let Some(r) = rate {
        h.insert(RL_INTERVAL.clone(), HeaderValue::from(r.interval_ms));
        h.insert(RL_MAX.clone(), HeaderValue::from(r.max));
        h.insert(RL_REMAINING.clone(), HeaderValue::from(r.remaining));
        h.insert(RL_DAILY.clone(), HeaderValue::from(r.daily));
        h.insert(
            RL_DAILY_REMAINING.clone(),
            HeaderValue::from(r.daily_remaining),
        );
    }
    if let Some(secs) = retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
