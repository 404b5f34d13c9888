//! The one HTTP client: every adapter's requests go through [`HttpClient::post_json`],
//! so pacing, timeouts, signal masking, size caps and secret masking are in one place.

mod budget;
mod pacer;
mod signals;

pub use budget::{Answer, Budget, Limit, PauseKind, Status, Wait};
pub(crate) use pacer::LimitHeaderNames;
pub use pacer::{Pacer, RateLimitHeaders, Unpaced};

use signals::SignalsBlocked;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};
use ureq::http::HeaderValue;
use ureq::typestate::WithBody;
use ureq::{Agent, RequestBuilder};

/// A CRM answer bigger than this is not a batch of 100 records: refuse it rather than
/// let a broken or hostile server fill the Postgres process's memory.
pub(crate) const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// Stands in for the secret wherever it could otherwise be shown.
const MASK: &str = "********";

/// How the agent connects. Built from each adapter's config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientSettings {
    /// Whole exchange: connect, send, wait, read the body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

pub(crate) struct HttpClient {
    /// Built once: it keeps the connection pool (keep-alive) across requests.
    agent: Agent,
    authorization: Option<HeaderValue>,
    secret: Option<String>,
    limit_names: LimitHeaderNames,
    pacer: Box<dyn Pacer>,
}

/// What came back for one request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A complete response (any status).
    Response {
        status: u16,
        limits: RateLimitHeaders,
        body: Vec<u8>,
    },
    /// No usable response: timeout, connection failure, or a body that could not be
    /// read. `status` is set when the headers arrived but the body did not.
    Broken { status: Option<u16>, error: String },
}

#[derive(Debug)]
pub(crate) struct Exchange {
    pub reply: Reply,
    pub duration_ms: f64,
}

impl HttpClient {
    pub(crate) fn new(
        settings: ClientSettings,
        secret: Option<&str>,
        limit_names: LimitHeaderNames,
        pacer: Box<dyn Pacer>,
    ) -> Result<Self, String> {
        let config = Agent::config_builder()
            // Error bodies say which records failed: we want them, not an Err.
            .http_status_as_error(false)
            // Loopback (the mock) and small JSON requests pay ~40 ms per request to
            // Nagle + delayed ACK without it. ureq's default, pinned here on purpose.
            .no_delay(true)
            .timeout_global(Some(settings.timeout))
            .timeout_connect(Some(settings.connect_timeout))
            // An API that redirects is misconfigured (http:// for https://, a wrong
            // base_url): show the 3xx instead of following it.
            .max_redirects(0)
            .user_agent(concat!("etlify/", env!("CARGO_PKG_VERSION")))
            .accept("application/json")
            .build();
        let authorization = secret
            .map(|s| {
                let mut value = HeaderValue::from_str(&format!("Bearer {s}"))
                    .map_err(|_| "the secret contains characters not allowed in an HTTP header")?;
                value.set_sensitive(true);
                Ok::<_, String>(value)
            })
            .transpose()?;
        Ok(HttpClient {
            agent: Agent::new_with_config(config),
            authorization,
            secret: secret.filter(|s| !s.is_empty()).map(str::to_owned),
            limit_names,
            pacer,
        })
    }

    /// POSTs a JSON body once the pacer allows it. `Err(reason)` when the pacer refused:
    /// nothing was sent. Errors in the reply have the secret masked.
    ///
    /// The request runs on a thread of its own while this one waits and asks the pacer
    /// every few milliseconds whether to stop: SIGTERM stops a worker within a second
    /// even when the CRM hangs. An abandoned request's fate is unknown, which every
    /// write of ours tolerates (they are retried, and upserts, archives and
    /// associations are idempotent).
    pub(crate) fn post_json(&mut self, url: &str, body: &[u8]) -> Result<Exchange, String> {
        self.pacer.acquire()?;
        let mut request = self.agent.post(url).content_type("application/json");
        if let Some(auth) = &self.authorization {
            request = request.header("authorization", auth.clone());
        }
        let names = self.limit_names;
        let body = body.to_vec();
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        let spawned = {
            // the thread inherits this mask: it never takes a Postgres signal
            let _blocked = SignalsBlocked::new();
            thread::Builder::new()
                .name("etlify-http".into())
                .spawn(move || {
                    // the receiver may be gone (abandoned): nothing to do then
                    let _ = tx.send(exchange(request, &body, &names));
                })
        };
        let reply = match spawned {
            Err(e) => Reply::Broken {
                status: None,
                error: format!("cannot start the request: {e}"),
            },
            Ok(_) => loop {
                match rx.recv_timeout(POLL) {
                    Ok(reply) => break reply,
                    Err(mpsc::RecvTimeoutError::Timeout) if self.pacer.interrupted() => {
                        break Reply::Broken {
                            status: None,
                            error:
                                "interrupted: the process is stopping; the answer was not awaited"
                                    .into(),
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        break Reply::Broken {
                            status: None,
                            error: "the request's thread ended without an answer".into(),
                        }
                    }
                }
            },
        };
        let reply = match reply {
            Reply::Broken { status, error } => Reply::Broken {
                status,
                error: self.mask(&error),
            },
            ok => ok,
        };
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Reply::Response { status, limits, .. } = &reply {
            self.pacer.observe(*status, limits);
        }
        Ok(Exchange { reply, duration_ms })
    }

    /// Replaces the secret wherever it appears in `text` (an error message that quotes a
    /// request, a CRM that echoes a header back).
    pub(crate) fn mask(&self, text: &str) -> String {
        mask_secret(text, self.secret.as_deref())
    }
}

/// Masks the secret where it stands as a token of its own: an occurrence inside a
/// longer word is not the secret (with a secret of a few characters, masking every
/// occurrence would blank random parts of a message).
fn mask_secret(text: &str, secret: Option<&str>) -> String {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return text.to_owned();
    };
    let token = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    for (at, _) in text.match_indices(secret) {
        if at < rest {
            continue; // overlaps a masked occurrence
        }
        let end = at + secret.len();
        let open = text[..at].chars().next_back().is_none_or(|c| !token(c));
        let closed = text[end..].chars().next().is_none_or(|c| !token(c));
        if open && closed {
            out.push_str(&text[rest..at]);
            out.push_str(MASK);
            rest = end;
        }
    }
    out.push_str(&text[rest..]);
    out
}

/// How often a request's waiter asks whether to stop.
const POLL: Duration = Duration::from_millis(20);

/// One request and its answer, on the request's thread (no Postgres here).
fn exchange(request: RequestBuilder<WithBody>, body: &[u8], names: &LimitHeaderNames) -> Reply {
    match request.send(body) {
        Err(e) => Reply::Broken {
            status: None,
            error: describe(&e),
        },
        Ok(mut response) => {
            let status = response.status().as_u16();
            let headers = response.headers();
            let limits = RateLimitHeaders::from_lookup(
                |name| headers.get(name).and_then(|v| v.to_str().ok()),
                names,
                SystemTime::now(),
            );
            // Read to the end even for errors: the connection then goes back to
            // the pool, and error bodies name the failing records.
            match response
                .body_mut()
                .with_config()
                .limit(MAX_RESPONSE_BYTES)
                .read_to_vec()
            {
                Ok(body) => Reply::Response {
                    status,
                    limits,
                    body,
                },
                Err(e) => Reply::Broken {
                    status: Some(status),
                    error: format!("reading the response: {}", describe(&e)),
                },
            }
        }
    }
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(which) => format!("timed out ({which})"),
        ureq::Error::BodyExceedsLimit(limit) => {
            format!("response larger than {limit} bytes")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_of_the_secret() {
        assert_eq!(
            mask_secret(
                "Bearer pat-na1-xyz failed; token pat-na1-xyz",
                Some("pat-na1-xyz")
            ),
            "Bearer ******** failed; token ********"
        );
        assert_eq!(mask_secret("nothing here", Some("pat")), "nothing here");
        // a short secret is masked where it stands alone, not inside other words
        assert_eq!(
            mask_secret("a bad request: a=1 (status 400)", Some("a")),
            "******** bad request: ********=1 (status 400)"
        );
        assert_eq!(
            mask_secret("token xyz, xyzzy, Bearer xyz", Some("xyz")),
            "token ********, xyzzy, Bearer ********"
        );
        assert_eq!(mask_secret("\"xyz\"", Some("xyz")), "\"********\"");
        assert_eq!(mask_secret("empty secret", Some("")), "empty secret");
        assert_eq!(mask_secret("no secret", None), "no secret");
    }

    #[test]
    fn a_secret_that_cannot_be_a_header_is_refused_without_showing_it() {
        let settings = ClientSettings {
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        };
        let names = LimitHeaderNames {
            interval_ms: "x-i",
            max: "x-m",
            remaining: "x-r",
            daily: "x-d",
            daily_remaining: "x-dr",
        };
        let Err(e) = HttpClient::new(settings, Some("tok\nen"), names, Box::new(Unpaced)) else {
            panic!("accepted a newline in a header");
        };
        assert!(!e.contains("tok"), "{e}");
    }
}
