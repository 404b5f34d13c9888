//! Crashes lose nothing and duplicate nothing: a worker killed with SIGKILL in the
//! middle of a drain, or the whole server stopped in immediate mode, and the
//! postmaster restarts the worker.

use std::collections::BTreeMap;

use etlify_e2e::fixtures::{email, insert_users, map_users, register_with_timeout, statuses};
use etlify_e2e::mock::id_of;
use etlify_e2e::soak::{write_until, Lcg};
use etlify_e2e::{wait_for_default, Env};
use serde_json::{json, Value};

/// Waits until the mock holds exactly `n` contacts and every user 1..=n is synced
/// with the crm_id of the contact that has its email; returns email → contact.
fn wait_all_synced(env: &mut Env, n: i64) -> BTreeMap<String, Value> {
    let contacts = wait_for_default(&format!("{n} contacts"), || {
        let o = env.mock.objects("contacts");
        (o.len() as i64 == n).then_some(o)
    });
    let by_email: BTreeMap<String, Value> = contacts
        .into_iter()
        .map(|c| (c["properties"]["email"].as_str().unwrap().to_string(), c))
        .collect();
    assert_eq!(by_email.len() as i64, n, "one contact per email");
    let keys: Vec<i64> = (1..=n).collect();
    let st = etlify_e2e::fixtures::wait_users_state(&mut env.db, &keys, "synced");
    for i in 1..=n {
        let c = by_email
            .get(&email(i))
            .unwrap_or_else(|| panic!("no contact for user {i}"));
        assert_eq!(st[&i.to_string()].crm_id, id_of(c), "user {i}'s crm_id");
    }
    by_email
}

fn no_conflicts(env: &Env) {
    let reqs = env.mock.crm_requests();
    assert!(
        reqs.iter().all(|r| r["status"] != json!(409)),
        "a resend conflicted with an existing object: {reqs:?}"
    );
    assert!(env.mock.archived("contacts").is_empty());
}

#[test]
fn sigkill_mid_drain_loses_nothing_and_duplicates_nothing() {
    let mut env = Env::start("", ", batch_size => 10");
    map_users(&mut env.db, "");
    env.mock.set_faults(json!({ "delay_ms": 400 }));
    insert_users(&mut env.db, 1..=50);
    wait_for_default("a batch in flight", || {
        (env.mock.inflight() >= 1).then_some(())
    });
    // a change committed just before the crash must survive it too
    env.db
        .execute(
            "UPDATE users SET first_name = 'BeforeCrash' WHERE id = 1",
            &[],
        )
        .unwrap();
    let (pid, new_pid) = env.cluster.kill_worker(libc::SIGKILL);
    assert_ne!(new_pid, pid);
    env.mock.set_faults(json!({}));
    env.db = env.cluster.client(); // the postmaster reset every backend
    let by_email = wait_all_synced(&mut env, 50);
    assert_eq!(
        by_email[&email(1)]["properties"]["firstname"],
        "BeforeCrash"
    );
    assert_eq!(by_email[&email(50)]["properties"]["firstname"], "First50");
    no_conflicts(&env);
    assert!(
        env.cluster.log().contains("terminated by signal 9"),
        "the postmaster saw the worker die"
    );
}

#[test]
fn worker_is_restarted_by_the_postmaster_after_a_crash() {
    let mut env = Env::start("", "");
    map_users(&mut env.db, "");
    let pid = env.cluster.wait_worker_pid();
    let row = env
        .db
        .query_one(
            "SELECT backend_type, datname::text FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "etlify sync worker");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("postgres"));

    let (old, new_pid) = env.cluster.kill_worker(libc::SIGKILL);
    assert_eq!(old, pid);
    assert_ne!(new_pid, pid);
    env.db = env.cluster.client();
    insert_users(&mut env.db, [1]);
    wait_all_synced(&mut env, 1);
    // etlify.workers = 2 by default: both are back, and no more
    wait_for_default("both workers", || {
        (env.cluster.worker_pids().len() == 2).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(env.cluster.worker_pids().len(), 2, "exactly two workers");
}

#[test]
fn immediate_shutdown_mid_drain_loses_nothing() {
    let mut env = Env::start("", ", batch_size => 10");
    map_users(&mut env.db, "");
    env.mock.set_faults(json!({ "delay_ms": 400 }));
    insert_users(&mut env.db, 1..=30);
    wait_for_default("a batch in flight", || {
        (env.mock.inflight() >= 1).then_some(())
    });
    env.cluster.crash_restart();
    env.mock.set_faults(json!({}));
    env.db = env.cluster.client();
    env.cluster.wait_worker_pid();
    wait_all_synced(&mut env, 30);
    no_conflicts(&env);
    let st = statuses(&mut env.db, "hubspot", "users");
    assert_eq!(st.len(), 30);
}

#[test]
fn clean_restart_keeps_sync_state_and_pending_changes() {
    let mut env = Env::start("etlify.enabled = off", "");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=3);
    // recorded while the workers idle
    let st = statuses(&mut env.db, "hubspot", "users");
    assert_eq!(st.len(), 3);
    assert!(st.values().all(|s| s.state == "pending"), "{st:?}");

    env.cluster.append_conf("etlify.enabled = on");
    env.cluster.restart();
    env.db = env.cluster.client();
    wait_all_synced(&mut env, 3);
    let before = env.mock.crm_requests().len();

    // after another restart the state is still there: nothing is sent again
    env.cluster.restart();
    env.db = env.cluster.client();
    env.cluster.wait_worker_pid();
    insert_users(&mut env.db, [4]);
    wait_all_synced(&mut env, 4);
    let reqs = env.mock.crm_requests();
    assert_eq!(reqs.len(), before + 1, "only user 4 was sent: {reqs:?}");
}

/// Item 6 of "under fire": two workers, a writer, 10% of requests answered 503 and
/// every answer slowed; a worker SIGKILLed, or the whole server stopped in
/// immediate mode, at random points. Afterwards the CRM holds exactly the
/// serializer's output for every row, nothing twice, and nothing stays claimed.
#[test]
fn kills_at_random_points_with_two_workers_a_writer_and_faults_end_exact() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = Lcg(seed);
    let mut env = Env::start("etlify.workers = 2", ", batch_size => 10");
    map_users(&mut env.db, "");
    insert_users(&mut env.db, 1..=300);
    env.mock
        .set_faults(json!({ "error_rate": 0.1, "error_status": 503, "delay_ms": 20 }));
    let conninfo = env.cluster.conninfo("postgres");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let writer = std::thread::spawn(move || write_until(&conninfo, seed, until));
    let mut kills = Vec::new();
    while std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(500 + rng.below(2000)));
        if rng.below(3) == 0 {
            env.cluster.crash_restart();
            kills.push("immediate shutdown");
        } else {
            env.cluster.kill_worker(libc::SIGKILL);
            kills.push("SIGKILL of a worker");
        }
    }
    let writes = writer.join().unwrap();
    eprintln!("{writes} writes, kills: {kills:?}");
    assert!(writes > 100, "the writer wrote: {writes}");
    env.mock.set_faults(json!({}));
    env.db = env.cluster.client();
    env.cluster.wait_worker_pid();
    let diffs = etlify_e2e::exact::wait_users_exact(
        &mut env.db,
        &env.mock,
        std::time::Duration::from_secs(90),
    );
    assert!(diffs.is_empty(), "seed {seed}, kills {kills:?}: {diffs:#?}");
    let conflicts = env.mock.crm_requests();
    assert!(
        conflicts.iter().all(|r| r["status"] != json!(409)),
        "a resend conflicted with an existing object"
    );
}

/// An upsert whose answer never came (here a timeout; a worker killed mid-request
/// is the same) may still have made its object. If the row is then deleted, or its
/// email changes, before a resend, that object must not be left behind: the
/// record looks it up by the email it was sent (once the request has surely
/// landed), then archives it, or writes the new email to it.
#[test]
fn an_unanswered_upsert_leaves_no_object_behind() {
    let mut env = Env::start("", "");
    // the settle time follows the client's timeout: 2 × 1 s + 5 s
    register_with_timeout(&mut env.db, &env.mock, 1000);
    map_users(&mut env.db, "");
    env.mock
        .set_faults(json!({ "delay_ms": 2500, "operations": ["batch/upsert"] }));
    insert_users(&mut env.db, [1, 2, 3]);
    wait_for_default("the upsert sent", || {
        env.mock
            .crm_requests()
            .iter()
            .any(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("batch/upsert"))
            })
            .then_some(())
    });
    // what was sent is landing; the worker has given up on it, and meanwhile:
    env.db
        .batch_execute(
            "DELETE FROM users WHERE id = 1;
             UPDATE users SET email = 'changed2@example.com' WHERE id = 2;",
        )
        .unwrap();
    env.mock.set_faults(json!({}));
    let diffs = etlify_e2e::exact::wait_users_exact(
        &mut env.db,
        &env.mock,
        std::time::Duration::from_secs(40),
    );
    assert!(diffs.is_empty(), "{diffs:#?}");
    assert_eq!(env.mock.objects("contacts").len(), 2);
    let archived = env.mock.archived("contacts");
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert_eq!(
        archived[0]["properties"]["email"].as_str(),
        Some(email(1).as_str())
    );
    // the lookups by the emails sent show in the request log
    assert!(
        env.mock.crm_requests().iter().any(|r| r["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("batch/read"))),
        "no look-up"
    );
}
