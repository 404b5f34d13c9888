//! Reading an adapter's `config` jsonb: every mistake is an error that names the key,
//! so `register_crm` can refuse it at declaration time instead of the worker failing later.

use serde_json::{Map, Value};
use std::time::Duration;

/// Timeouts above this would hold a Postgres worker (and its shutdown) for too long.
const MAX_TIMEOUT_MS: u64 = 600_000;

pub(crate) struct AdapterConfig<'a> {
    adapter: &'static str,
    map: Option<&'a Map<String, Value>>,
}

impl<'a> AdapterConfig<'a> {
    /// `null` is an empty config; anything but an object is an error; so is any key not
    /// in `known` (a typo must not be silently ignored).
    pub(crate) fn new(
        adapter: &'static str,
        config: &'a Value,
        known: &[&str],
    ) -> Result<Self, String> {
        let map = match config {
            Value::Null => None,
            Value::Object(map) => Some(map),
            other => {
                return Err(format!(
                    "{adapter} config must be a JSON object, got {}",
                    kind(other)
                ))
            }
        };
        if let Some(unknown) = map.and_then(|m| m.keys().find(|k| !known.contains(&k.as_str()))) {
            let expected = if known.is_empty() {
                format!("the {adapter} adapter takes no settings")
            } else {
                let mut names = known.to_vec();
                names.sort_unstable();
                format!("expected: {}", names.join(", "))
            };
            return Err(format!(
                "{adapter} config: unknown key '{unknown}' ({expected})"
            ));
        }
        Ok(AdapterConfig { adapter, map })
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    fn error(&self, message: String) -> String {
        format!("{} config: {message}", self.adapter)
    }

    /// A positive whole number of milliseconds, at most ten minutes.
    pub(crate) fn millis(&self, key: &str, default: Duration) -> Result<Duration, String> {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        match value.as_u64() {
            Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Ok(Duration::from_millis(ms)),
            _ => Err(self.error(format!(
                "{key} must be a whole number of milliseconds between 1 and {MAX_TIMEOUT_MS}, got {value}"
            ))),
        }
    }

    /// An http(s) base URL without credentials, query or fragment; returned without a
    /// trailing slash so paths can be appended as `{base}/crm/…`.
    pub(crate) fn base_url(&self, key: &str, default: &str) -> Result<String, String> {
        let url = match self.get(key) {
            None => return Ok(default.to_owned()),
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(self.error(format!("{key} must be a string, got {}", kind(other))))
            }
        };
        let bad = |why: &str| Err(self.error(format!("{key} '{url}' {why}")));
        let Some(rest) = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
        else {
            return bad("must start with http:// or https://");
        };
        if url.contains(['?', '#']) {
            return bad("must not have a query or fragment");
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            // They would be sent to every request and shown in every error.
            return bad("must not contain credentials");
        }
        if authority.is_empty() {
            return bad("has no host");
        }
        match ureq::http::Uri::try_from(url) {
            Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => {}
            _ => return bad("is not a valid URL"),
        }
        Ok(url.trim_end_matches('/').to_owned())
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_apply_to_missing_and_null_keys() {
        let config = json!({"timeout_ms": null});
        let c = AdapterConfig::new("x", &config, &["timeout_ms", "base_url"]).unwrap();
        assert_eq!(
            c.millis("timeout_ms", Duration::from_secs(3)),
            Ok(Duration::from_secs(3))
        );
        assert_eq!(
            c.base_url("base_url", "https://d.example"),
            Ok("https://d.example".into())
        );
    }

    #[test]
    fn base_url_loses_its_trailing_slashes_and_keeps_a_path() {
        let config = json!({"base_url": "http://127.0.0.1:9/prefix//"});
        let c = AdapterConfig::new("x", &config, &["base_url"]).unwrap();
        assert_eq!(
            c.base_url("base_url", ""),
            Ok("http://127.0.0.1:9/prefix".into())
        );
    }
}
