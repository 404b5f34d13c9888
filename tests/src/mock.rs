//! The mock CRM (`etlify-mock`) as a child process, with its admin API.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::Value;

pub struct Mock {
    child: Child,
    url: String,
    agent: ureq::Agent,
    stderr: Arc<Mutex<String>>,
}

/// Where the mock binary is: `$ETLIFY_MOCK_BIN`, else `etlify-mock` next to the
/// running executable or one directory up (test executables live in
/// `target/release/deps/`, the demo in `target/release/`).
pub fn mock_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ETLIFY_MOCK_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    for candidate in [dir.join("etlify-mock"), dir.join("../etlify-mock")] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "etlify-mock not found next to {} (nor in its parent directory): build it with \
         `cargo build --release -p etlify-mock` or set ETLIFY_MOCK_BIN",
        exe.display()
    );
}

impl Mock {
    /// Spawns `etlify-mock --port 0 <args>` and waits for its
    /// `etlify-mock listening on http://127.0.0.1:PORT` line.
    pub fn start(args: &[&str]) -> Mock {
        let bin = mock_bin();
        let mut cmd = Command::new(&bin);
        if !args.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // If this process dies without running Drop (killed test run, Ctrl-C in the
        // demo), the kernel kills the mock too. Note: the signal fires when the *thread*
        // that spawned the mock exits, so keep a Mock on the thread that started it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));

        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let mut pipe = child.stderr.take().unwrap();
            let sink = stderr.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first.and_then(|l| l.ok()));
            // keep draining so the mock never blocks on a full pipe
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(line)) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "etlify-mock did not announce its address ({other:?}); stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let url = line
            .trim()
            .strip_prefix("etlify-mock listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from etlify-mock: {line:?}"))
            .trim_end_matches('/')
            .to_string();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mock = Mock {
            child,
            url,
            agent,
            stderr,
        };
        let health = mock.get("/__mock/health");
        let _ = health; // any 2xx JSON or text is fine; get() panics otherwise
        mock
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the mock wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn get(&self, path: &str) -> Value {
        self.try_get(path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_get(&self, path: &str) -> Result<Value, String> {
        let url = format!("{}{path}", self.url);
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(|e| format!("GET {url}: reading body: {e}"))?;
        if !(200..300).contains(&status) {
            return Err(format!("GET {url} -> {status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let url = format!("{}{path}", self.url);
        let result = match (method, body) {
            ("POST", None) => self.agent.post(&url).send_empty(),
            ("POST", Some(b)) => self.agent.post(&url).send_json(b),
            ("PUT", Some(b)) => self.agent.put(&url).send_json(b),
            ("PUT", None) => self.agent.put(&url).send_empty(),
            _ => unreachable!("{method}"),
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if !(200..300).contains(&status) {
            panic!("{method} {url} -> {status}: {text}");
        }
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }

    /// Forgets every object, request and fault.
    pub fn reset(&self) {
        self.send("POST", "/__mock/reset", None);
    }

    /// Live (non-archived) objects of type `t`.
    pub fn objects(&self, t: &str) -> Vec<Value> {
        results(self.get(&format!("/__mock/objects/{t}")))
    }

    /// Archived objects of type `t`.
    pub fn archived(&self, t: &str) -> Vec<Value> {
        results(self.get(&format!("/__mock/objects/{t}?archived=true")))
    }

    /// Every completed request the mock received (in-flight ones are not listed yet):
    /// `{seq, method, path, status, inputs (a count), received_at_us, completed_at_us}`.
    pub fn requests(&self) -> Vec<Value> {
        match self.get("/__mock/requests") {
            Value::Object(mut m) => match m.remove("requests") {
                Some(Value::Array(a)) => a,
                other => panic!("/__mock/requests: no requests array: {other:?}"),
            },
            other => panic!("/__mock/requests: unexpected {other}"),
        }
    }

    /// Completed requests with `seq > since` (`GET /__mock/requests?since=SEQ`): cheaper
    /// than [`Mock::requests`] when polling for the next request of a long run.
    pub fn requests_since(&self, since: u64) -> Vec<Value> {
        match self.get(&format!("/__mock/requests?since={since}")) {
            Value::Object(mut m) => match m.remove("requests") {
                Some(Value::Array(a)) => a,
                other => panic!("/__mock/requests: no requests array: {other:?}"),
            },
            other => panic!("/__mock/requests: unexpected {other}"),
        }
    }

    /// Requests to the CRM API (paths under `/crm/`), in arrival order.
    pub fn crm_requests(&self) -> Vec<Value> {
        let mut r: Vec<Value> = self
            .requests()
            .into_iter()
            .filter(|r| r["path"].as_str().unwrap_or("").starts_with("/crm/"))
            .collect();
        r.sort_by_key(|r| r["seq"].as_u64().unwrap_or(0));
        r
    }

    /// Total number of inputs (records) over every completed CRM request.
    pub fn crm_inputs(&self) -> u64 {
        self.crm_requests()
            .iter()
            .map(|r| r["inputs"].as_u64().unwrap_or(0))
            .sum()
    }

    /// Requests currently being handled (`stats().inflight`).
    pub fn inflight(&self) -> u64 {
        self.stats()["inflight"].as_u64().unwrap_or(0)
    }

    pub fn stats(&self) -> Value {
        self.get("/__mock/stats")
    }

    /// Replaces the fault configuration (`json!({})` clears it).
    pub fn set_faults(&self, faults: Value) {
        self.send("PUT", "/__mock/faults", Some(&faults));
    }

    /// The live object of type `t` whose property `prop` equals `value`.
    pub fn find(&self, t: &str, prop: &str, value: &str) -> Option<Value> {
        self.objects(t)
            .into_iter()
            .find(|o| o["properties"][prop].as_str() == Some(value))
    }

    /// The live object of type `t` with this CRM id.
    /// The associations the mock holds from `from` objects to `to` objects
    /// (`GET /__mock/associations/{from}/{to}`): `{from, to, types: [{category, type_id}]}`.
    pub fn associations(&self, from: &str, to: &str) -> Vec<Value> {
        match self.get(&format!("/__mock/associations/{from}/{to}")) {
            Value::Array(a) => a,
            other => panic!("/__mock/associations/{from}/{to}: unexpected {other}"),
        }
    }

    pub fn by_id(&self, t: &str, id: &str) -> Option<Value> {
        self.objects(t)
            .into_iter()
            .find(|o| id_of(o).as_deref() == Some(id))
    }
}

/// How many requests of a request log ([`Mock::requests`]) were answered `status`.
pub fn answered(reqs: &[Value], status: u64) -> usize {
    reqs.iter()
        .filter(|r| r["status"].as_u64() == Some(status))
        .count()
}

/// The arrival times (`received_at_us`) of a request log's requests, sorted.
pub fn arrivals(reqs: &[Value]) -> Vec<i64> {
    let mut at: Vec<i64> = reqs
        .iter()
        .filter_map(|r| r["received_at_us"].as_i64())
        .collect();
    at.sort_unstable();
    at
}

/// The most of the sorted arrival times `at` that any window of `period_us` holds:
/// what a rolling rate limit of that period counts at its worst.
pub fn densest(at: &[i64], period_us: i64) -> usize {
    (0..at.len())
        .map(|i| at[i..].partition_point(|&t| t < at[i] + period_us))
        .max()
        .unwrap_or(0)
}

/// An object's `id` as text (the mock may send it as a string or a number).
pub fn id_of(o: &Value) -> Option<String> {
    match &o["id"] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn results(v: Value) -> Vec<Value> {
    match v {
        Value::Object(mut m) => match m.remove("results") {
            Some(Value::Array(a)) => a,
            other => panic!("mock objects: no results array: {other:?}"),
        },
        other => panic!("mock objects: unexpected {other}"),
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        // best effort: the last requests the mock saw (must not panic here)
        let summary = if thread::panicking() {
            Some(match self.try_get("/__mock/requests") {
                Ok(v) => {
                    let reqs = v["requests"].as_array().cloned().unwrap_or_default();
                    let from = reqs.len().saturating_sub(40);
                    reqs[from..]
                        .iter()
                        .map(|r| {
                            format!(
                                "#{} {} {} -> {} inputs={} received_at_us={}",
                                r["seq"],
                                r["method"],
                                r["path"],
                                r["status"],
                                r["inputs"],
                                r["received_at_us"]
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                }
                Err(e) => format!("(could not fetch the request log: {e})"),
            })
        } else {
            None
        };
        // Kill before printing: printing may fail and must not leave the mock behind.
        // Child::kill sends SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(summary) = summary {
            eprintln!(
                "--- mock {} requests (last 40) ---\n{summary}\n--- mock stderr ---\n{}\n--- end of mock ---",
                self.url,
                self.stderr()
            );
        }
    }
}
