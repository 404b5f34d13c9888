//! A tiny blocking HTTP client for the tests (ureq with HTTP errors as plain responses).
#![allow(dead_code)]

use serde_json::Value;
use std::time::Duration;

pub use etlify_mock::{Config, MockServer};

pub struct Resp {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Client {
    agent: ureq::Agent,
    pub base: String,
    pub token: Option<String>,
}

impl Client {
    pub fn new(base: String) -> Self {
        Self::with_timeout(base, None)
    }

    pub fn with_timeout(base: String, timeout: Option<Duration>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(timeout)
            .build()
            .into();
        Client {
            agent,
            base,
            token: Some("test-token".into()),
        }
    }

    pub fn try_req(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Resp, ureq::Error> {
        let url = format!("{}{}", self.base, path);
        let mut b = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            b = b.header("Authorization", format!("Bearer {t}"));
        }
        let resp = match body {
            Some(body) => self.agent.run(
                b.header("Content-Type", "application/json")
                    .body(body.as_bytes().to_vec())
                    .unwrap(),
            )?,
            None => self.agent.run(b.body(()).unwrap())?,
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().read_to_string()?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub fn req(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let body = body.map(|b| b.to_string());
        self.try_req(method, path, body.as_deref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.req("POST", path, Some(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> Resp {
        self.req("PUT", path, Some(body))
    }

    pub fn objects(&self, t: &str) -> Vec<Value> {
        let r = self.get(&format!("/__mock/objects/{t}"));
        assert_eq!(r.status, 200);
        r.json()["results"].as_array().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<Value> {
        self.get("/__mock/requests").json()["requests"]
            .as_array()
            .unwrap()
            .clone()
    }
}

pub fn start(config: Config) -> (MockServer, Client) {
    let server = MockServer::start(config).expect("mock starts");
    let client = Client::new(server.url());
    (server, client)
}

pub fn start_default() -> (MockServer, Client) {
    start(Config::default())
}
