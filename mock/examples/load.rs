//! Load check: N keep-alive clients sending 100-input batch upserts as fast as they can.
//!
//! `cargo run --release -p etlify-mock --example load -- [URL] [CLIENTS] [SECONDS]`
//! Without URL an in-process mock is started (sharing the CPU with the clients).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (_server, url) = match args.first().filter(|a| a.starts_with("http")) {
        Some(u) => (None, u.trim_end_matches('/').to_owned()),
        None => {
            let s =
                etlify_mock::MockServer::start(etlify_mock::Config::default()).expect("start mock");
            let u = s.url();
            (Some(s), u)
        }
    };
    let clients: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);

    // Prebuilt bodies so the clients spend their CPU on HTTP, not on JSON building. A key
    // space of 20 bodies x 100 emails per client: the first pass creates, later ones update.
    let bodies: Vec<Vec<String>> = (0..clients)
        .map(|c| {
            (0..20)
                .map(|b| {
                    let inputs: Vec<serde_json::Value> = (0..100)
                        .map(|i| {
                            serde_json::json!({"idProperty": "email", "id": format!("c{c}-b{b}-i{i}@load.test"),
                                "properties": {"firstname": format!("F{i}"), "lastname": "Load", "score": i, "company": "Acme"}})
                        })
                        .collect();
                    serde_json::json!({ "inputs": inputs }).to_string()
                })
                .collect()
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = bodies
        .into_iter()
        .map(|bodies| {
            let (stop, done, url) = (stop.clone(), done.clone(), url.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut lat = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let mut r = agent
                        .post(format!("{url}/crm/v3/objects/contacts/batch/upsert"))
                        .header("Authorization", "Bearer load")
                        .content_type("application/json")
                        .send(bodies[i % bodies.len()].as_str())
                        .expect("request");
                    assert_eq!(r.status().as_u16(), 200);
                    let _ = r.body_mut().read_to_vec().expect("body");
                    lat.push(t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let n = lat.len();
    let pct = |p: f64| lat[((n as f64 * p) as usize).min(n - 1)];
    println!(
        "{clients} clients, {secs}s: {n} batch upserts = {:.0} req/s, {:.0} records/s; latency p50 {:?} p99 {:?}",
        n as f64 / elapsed,
        n as f64 * 100.0 / elapsed,
        pct(0.5),
        pct(0.99)
    );
}
