//! Under fire: one rate limit per CRM shared by every worker and backend, faults that
//! are the CRM's and not the records', poisoned batches split, misconfigurations and
//! quotas shown in crm_status, a hung or slow CRM isolated, SIGTERM mid-request.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etlify_e2e::fixtures::{
    email, insert_users, map_users, register_crm, scalar, statuses, user_status, wait_users_state,
    TOKEN, USERS,
};
use etlify_e2e::mock::{answered, arrivals, densest};
use etlify_e2e::{wait_for, wait_for_default, Env, Mock};
use postgres::Client;
use serde_json::json;

fn crm_status(db: &mut Client, crm: &str) -> BTreeMap<String, Option<String>> {
    let row = db
        .query_one(
            "SELECT state, paused_until::text, pause_reason, rate_limit::text, rate_period::text,
                    requests_last_period::text, throttled_total::text, daily_used::text,
                    daily_limit::text
               FROM etlify.crm_status WHERE crm = $1",
            &[&crm],
        )
        .expect("crm_status");
    [
        "state",
        "paused_until",
        "pause_reason",
        "rate_limit",
        "rate_period",
        "requests_last_period",
        "throttled_total",
        "daily_used",
        "daily_limit",
    ]
    .iter()
    .enumerate()
    .map(|(i, c)| (c.to_string(), row.get::<_, Option<String>>(i)))
    .collect()
}

fn state_of(db: &mut Client, crm: &str) -> String {
    crm_status(db, crm)["state"].clone().unwrap_or_default()
}

/// Item 1: two workers and a backend draining inline share one rolling window: the
/// mock, enforcing it, never answers 429, and no window holds more than the limit.
/// The limit is not configured: it is learned from the CRM's headers. The backend
/// fills a window first; the workers, started within it, wait for it to roll.
#[test]
fn two_workers_and_a_drain_share_one_rolling_window_learned_from_the_crm() {
    let mock = Mock::start(&[
        "--token",
        TOKEN,
        "--rate-limit",
        "12",
        "--rate-interval-ms",
        "2000",
    ]);
    let cluster = etlify_e2e::Cluster::start("etlify.workers = 2\netlify.enabled = off");
    let mut db = cluster.client();
    db.batch_execute("CREATE EXTENSION etlify").unwrap();
    db.batch_execute(USERS).unwrap();
    register_crm(&mut db, "hubspot", &mock, ", batch_size => 5");
    map_users(&mut db, "");
    insert_users(&mut db, 1..=300);
    // the backend alone: 12 requests of 5 fill the window
    let n = scalar(&mut db, "SELECT etlify.drain(max_records => 60)->>'synced'");
    assert_eq!(n.as_deref(), Some("60"));
    // the workers start within that window, and a backend keeps draining beside them
    cluster.append_conf("etlify.enabled = on");
    cluster.reload();
    let mut other = cluster.client();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let started = Instant::now();
            while mock.stats()["objects"]["contacts"].as_u64() != Some(300)
                && started.elapsed() < Duration::from_secs(120)
            {
                other
                    .batch_execute("SELECT etlify.drain(max_records => 10)")
                    .unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    });
    assert_eq!(mock.objects("contacts").len(), 300);
    let reqs = mock.crm_requests();
    assert_eq!(answered(&reqs, 429), 0, "no 429: {reqs:?}");
    // the mock counts arrivals; no window of its interval held more than its max
    let densest = densest(&arrivals(&reqs), 2_000_000);
    assert!(densest <= 12, "{densest}");
    let s = crm_status(&mut db, "hubspot");
    assert_eq!(s["state"].as_deref(), Some("ok"), "{s:?}");
    assert_eq!(s["rate_limit"].as_deref(), Some("12"), "learned: {s:?}");
    assert_eq!(
        s["rate_period"].as_deref(),
        Some("00:00:02"),
        "learned: {s:?}"
    );
    assert_eq!(s["throttled_total"].as_deref(), Some("0"), "{s:?}");
}

/// Item 3: a batch the CRM refuses as a whole for one record (400 "Property values
/// were not valid", 409 conflict, naming no input) is split until that record is
/// found: only it fails, the others are synced.
#[test]
fn a_batch_refused_as_a_whole_is_bisected_to_its_poisoned_records() {
    let mut env = Env::start("", ", max_sync_errors => 1");
    env.mock
        .set_faults(json!({ "reject_ids": { email(17): 400, email(60): 409 } }));
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=100);
    wait_for_default("98 contacts", || {
        (env.mock.objects("contacts").len() == 98).then_some(())
    });
    let st = wait_for_default("two parked", || {
        let st = statuses(&mut env.db, "hubspot", "users");
        (st.values().filter(|s| s.state == "parked").count() == 2).then_some(st)
    });
    let parked: Vec<&String> = st
        .iter()
        .filter(|(_, s)| s.state == "parked")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(parked, ["17", "60"]);
    assert!(
        st["17"]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("not valid"),
        "{:?}",
        st["17"]
    );
    assert!(
        st["60"]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("already exists"),
        "{:?}",
        st["60"]
    );
    assert_eq!(st.values().filter(|s| s.state == "synced").count(), 98);
    // one culprit in 100 costs at most 1 + 2·⌈log2 100⌉ requests; two, at most twice that
    let reqs = env.mock.crm_requests();
    assert!(reqs.len() <= 1 + 2 * 2 * 7, "{} requests", reqs.len());
}

/// Item 3: two rows whose emails differ only by case in one batch: HubSpot would
/// refuse the batch ("Duplicate IDs"); the second goes in a later batch instead.
#[test]
fn emails_equal_ignoring_case_in_one_batch_do_not_poison_it() {
    let mut env = Env::start("", ", max_sync_errors => 1");
    map_users(&mut env.db, "");
    env.db
        .batch_execute(
            "INSERT INTO users (id, email, first_name)
             SELECT i, 'user' || i || '@example.com', 'F' || i FROM generate_series(1, 50) i;
             INSERT INTO users (id, email, first_name) VALUES (51, 'USER7@example.com', 'Upper');",
        )
        .unwrap();
    let st = wait_users_state(&mut env.db, &(1..=51).collect::<Vec<_>>(), "synced");
    assert_eq!(st.len(), 51);
    assert_eq!(st["51"].crm_id, st["7"].crm_id, "one contact for both rows");
    assert_eq!(env.mock.objects("contacts").len(), 50);
    assert!(st.values().all(|s| s.error_count == 0), "{st:?}");
    assert_eq!(answered(&env.mock.crm_requests(), 400), 0);
}

/// Item 3: a wrong base_url (every request 404) or a refused token pauses the CRM with
/// the reason: crm_status shows it, pending records carry it in last_error, nothing
/// counts against them; resume lifts the pause and everything goes.
#[test]
fn a_misconfigured_crm_is_paused_with_its_reason_and_counts_against_nobody() {
    let mut env = Env::start("", ", max_sync_errors => 1");
    let url = format!("{}/wrong/path", env.mock.url());
    env.db
        .execute(
            "SELECT etlify.register_crm('hubspot', 'hubspot', config => jsonb_build_object('base_url', $1::text),
                    secret => $2, max_sync_errors => 1)",
            &[&url, &TOKEN],
        )
        .unwrap();
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=200);
    let s = wait_for_default("paused", || {
        let s = crm_status(&mut env.db, "hubspot");
        (s["state"].as_deref() == Some("paused")).then_some(s)
    });
    let reason = s["pause_reason"].clone().unwrap_or_default();
    assert!(reason.contains("base_url"), "{s:?}");
    assert!(s["paused_until"].is_some(), "{s:?}");
    std::thread::sleep(Duration::from_secs(2));
    let st = statuses(&mut env.db, "hubspot", "users");
    assert_eq!(st.len(), 200);
    assert!(
        st.values()
            .all(|s| s.state == "pending" && s.error_count == 0),
        "{st:?}"
    );
    assert!(st.values().any(|s| s
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("base_url"))));
    // the pause holds: one request, not one per batch
    assert!(env.mock.requests().len() <= 2, "{:?}", env.mock.requests());

    // fixed: registering again lifts the pause
    register_crm(&mut env.db, "hubspot", &env.mock, ", max_sync_errors => 1");
    wait_users_state(&mut env.db, &(1..=200).collect::<Vec<_>>(), "synced");
    assert_eq!(state_of(&mut env.db, "hubspot"), "ok");

    // a token the CRM refuses (401): paused, shown, and resume() asks again at once
    register_crm(
        &mut env.db,
        "hubspot",
        &env.mock,
        ", secret => 'revoked-token'",
    );
    env.db
        .execute("UPDATE users SET first_name = 'Again' WHERE id <= 3", &[])
        .unwrap();
    let s = wait_for_default("paused by the 401", || {
        let s = crm_status(&mut env.db, "hubspot");
        (s["state"].as_deref() == Some("paused")).then_some(s)
    });
    assert!(
        s["pause_reason"]
            .as_deref()
            .unwrap_or("")
            .contains("secret"),
        "{s:?}"
    );
    let before = env.mock.requests().len();
    env.db
        .batch_execute("SELECT etlify.resume('hubspot')")
        .unwrap();
    wait_for_default("asked again after resume", || {
        (env.mock.requests().len() > before).then_some(())
    });
    for k in 1..=3 {
        let s = user_status(&mut env.db, k).unwrap();
        assert_eq!((s.state.as_str(), s.error_count), ("pending", 0), "{s:?}");
    }
}

/// Item 1: a daily quota used up puts the CRM in state `quota`, with the figures.
#[test]
fn a_spent_daily_quota_shows_as_quota() {
    let mut env = Env::start("", ", batch_size => 10");
    env.mock.set_faults(json!({ "rate_limit": { "daily": 3 } }));
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=50);
    let s = wait_for_default("quota", || {
        let s = crm_status(&mut env.db, "hubspot");
        (s["state"].as_deref() == Some("quota")).then_some(s)
    });
    assert_eq!(s["daily_limit"].as_deref(), Some("3"), "{s:?}");
    assert_eq!(s["daily_used"].as_deref(), Some("3"), "{s:?}");
    assert!(
        s["pause_reason"].as_deref().unwrap_or("").contains("daily"),
        "{s:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    // no request hammers a spent quota
    let reqs = env.mock.crm_requests();
    assert!(reqs.len() <= 5, "{reqs:?}");
    assert_eq!(env.mock.objects("contacts").len(), 30);
}

/// Item 3: a failed record is retried when its backoff ends, not up to a naptime later.
#[test]
fn a_failed_record_is_retried_at_its_next_attempt_not_a_naptime_later() {
    let mut env = Env::start(
        "etlify.naptime = '60s'\netlify.retry_backoff = '500ms'",
        ", max_sync_errors => 5",
    );
    map_users(&mut env.db, "");
    env.mock
        .set_faults(json!({ "fail_ids": { email(1): "Property values were not valid" } }));
    insert_users(&mut env.db, [1]);
    wait_for_default("a failure", || {
        user_status(&mut env.db, 1).filter(|s| s.state == "failed")
    });
    env.mock.set_faults(json!({}));
    let started = Instant::now();
    wait_users_state(&mut env.db, &[1], "synced");
    // the backoff is 500 ms; the naptime a minute
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// Two CRMs on two mocks: `slow` hangs (or lets one request through per 30 s),
/// `hubspot` is healthy. The healthy one's changes and sync() calls go as if the
/// other did not exist.
fn two_crms() -> (Env, Mock) {
    let mut env = Env::start("", "");
    let slow = Mock::start(&["--token", TOKEN]);
    env.db
        .batch_execute(
            "CREATE TABLE leads (id bigint PRIMARY KEY, email text);
             CREATE FUNCTION lead_payload(l leads) RETURNS jsonb LANGUAGE sql STABLE
                 AS $$ SELECT jsonb_build_object('email', l.email) $$;",
        )
        .unwrap();
    register_crm(&mut env.db, "slow", &slow, ", batch_size => 1");
    env.db
        .batch_execute(
            "SELECT etlify.sync_table('slow', 'leads', 'contacts', 'email', 'lead_payload')",
        )
        .unwrap();
    map_users(&mut env.db, "");
    (env, slow)
}

fn healthy_while_the_other_stalls(env: &mut Env) {
    // the stalled CRM holds one worker; the other serves the healthy CRM
    for round in 0..3 {
        let id = 100 + round;
        let started = Instant::now();
        insert_users(&mut env.db, [id]);
        wait_for(Duration::from_secs(10), "a healthy delivery", || {
            env.mock.find("contacts", "email", &email(id))
        });
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        env.db
            .execute("UPDATE users SET first_name = 'S' WHERE id = $1", &[&id])
            .unwrap();
        let v = scalar(
            &mut env.db,
            &format!("SELECT etlify.sync('hubspot', 'users', '{id}')"),
        );
        assert!(
            matches!(v.as_deref(), Some("synced" | "not_modified")),
            "{v:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
    }
}

/// Item 2: a CRM that hangs never delays another CRM's deliveries or sync() calls.
#[test]
fn a_hung_crm_holds_up_no_other_crm() {
    let (mut env, slow) = two_crms();
    slow.set_faults(json!({ "hang_ms": 60_000 }));
    env.db
        .batch_execute("INSERT INTO leads SELECT i, 'lead' || i || '@example.com' FROM generate_series(1, 20) i")
        .unwrap();
    wait_for_default("a request hanging", || (slow.inflight() > 0).then_some(()));
    healthy_while_the_other_stalls(&mut env);
    assert_eq!(slow.inflight(), 1, "one worker on the hung CRM, not both");
}

/// Item 2: a CRM whose own rate limit makes its records wait (1 request per 30 s)
/// holds up no other CRM.
#[test]
fn a_crm_slowed_by_its_own_rate_limit_holds_up_no_other_crm() {
    let (mut env, slow) = two_crms();
    register_crm(
        &mut env.db,
        "slow",
        &slow,
        ", batch_size => 1, rate_limit => 1, rate_period => '30 s'",
    );
    env.db
        .batch_execute("INSERT INTO leads SELECT i, 'lead' || i || '@example.com' FROM generate_series(1, 20) i")
        .unwrap();
    wait_for_default("the first lead", || {
        slow.find("contacts", "email", "lead1@example.com")
    });
    healthy_while_the_other_stalls(&mut env);
    assert_eq!(slow.objects("contacts").len(), 1, "the limit holds");
    let s = crm_status(&mut env.db, "slow");
    assert_eq!(s["requests_last_period"].as_deref(), Some("1"), "{s:?}");
}

/// Item 5: SIGTERM stops the workers within a second even while a request hangs
/// (the mock answers after a minute); the record goes out after the restart.
#[test]
fn sigterm_stops_the_workers_mid_request() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    env.mock.set_faults(json!({ "hang_ms": 60_000 }));
    insert_users(&mut env.db, [1]);
    wait_for_default("a request hanging", || {
        (env.mock.inflight() > 0).then_some(())
    });
    let started = Instant::now();
    // a fast shutdown sends SIGTERM to the workers and waits for them
    env.cluster.restart();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "shutdown waited {took:?} for the hung request"
    );
    env.mock.set_faults(json!({}));
    env.db = env.cluster.client();
    wait_users_state(&mut env.db, &[1], "synced");
    assert_eq!(env.mock.objects("contacts").len(), 1);
    let log = env.cluster.log();
    assert!(log.contains("etlify sync worker 1 stopped"), "{log}");
}

/// Item 2: sync() of a key that another worker is sending waits for that worker,
/// rather than sending beside it and recording over its claim (recording a retry
/// once cleared the other worker's claim, and a later change of the key was then
/// never sent: the trust suite's cancelled sync() caught it, one run in two).
/// The newest payload is what the CRM ends with.
#[test]
fn sync_of_a_key_in_flight_at_another_worker_waits_for_it() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, [1]);
    wait_users_state(&mut env.db, &[1], "synced");
    env.mock
        .set_faults(json!({ "hang_ms": 3000, "operations": ["batch/update"] }));
    env.db
        .execute("UPDATE users SET first_name = 'Older' WHERE id = 1", &[])
        .unwrap();
    wait_for_default("the older payload in flight", || {
        (env.mock.inflight() > 0).then_some(())
    });
    env.mock.set_faults(json!({}));
    env.db
        .execute("UPDATE users SET first_name = 'Newer' WHERE id = 1", &[])
        .unwrap();
    let v = scalar(&mut env.db, "SELECT etlify.sync('hubspot', 'users', '1')");
    assert_eq!(v.as_deref(), Some("synced"));
    wait_users_state(&mut env.db, &[1], "synced");
    std::thread::sleep(Duration::from_millis(500));
    let c = env
        .mock
        .find("contacts", "email", &email(1))
        .expect("the contact");
    assert_eq!(c["properties"]["firstname"], "Newer", "{c}");
}
