//! Whether the CRM holds exactly what the serializers say, for the `users` fixture:
//! the check that ends the crash tests and the benchmark's soak.

use std::collections::BTreeMap;

use postgres::Client;
use serde_json::Value;

use crate::mock::id_of;
use crate::Mock;

/// Differences between `users` (through `user_payload`) and the mock's contacts,
/// and anything etlify still holds claimed or queued; empty when exact.
///
/// Exact means: every row with an email has one live contact, which the row's
/// record names and whose properties include the row's payload; no other live
/// contact exists (a deleted row's contact is archived, nothing is duplicated); no
/// record is claimed or queued, none failed or parked.
pub fn users_differences(db: &mut Client, mock: &Mock) -> Vec<String> {
    let mut diffs = Vec::new();
    let rows: BTreeMap<i64, (Value, Option<String>)> = db
        .query(
            "SELECT u.id, user_payload(u)::text, s.crm_id::text
               FROM users u
               LEFT JOIN etlify.sync_status s
                 ON s.crm = 'hubspot' AND s.source = 'users'::regclass AND s.key = u.id::text
              WHERE u.email IS NOT NULL",
            &[],
        )
        .expect("users and their records")
        .iter()
        .map(|r| {
            let payload: String = r.get(1);
            let payload = serde_json::from_str(&payload).expect("a json payload");
            (r.get::<_, i64>(0), (payload, r.get::<_, Option<String>>(2)))
        })
        .collect();
    let contacts: BTreeMap<String, Value> = mock
        .objects("contacts")
        .into_iter()
        .filter_map(|o| Some((id_of(&o)?, o)))
        .collect();
    let mut named = std::collections::BTreeSet::new();
    for (id, (payload, crm_id)) in &rows {
        let Some(crm_id) = crm_id else {
            diffs.push(format!("user {id}: no crm_id"));
            continue;
        };
        if !named.insert(crm_id.clone()) {
            diffs.push(format!("user {id}: contact {crm_id} is another row's too"));
        }
        let Some(contact) = contacts.get(crm_id) else {
            diffs.push(format!(
                "user {id}: contact {crm_id} is not live in the CRM"
            ));
            continue;
        };
        for (k, v) in payload.as_object().into_iter().flatten() {
            let want = v
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            let have = contact["properties"][k].as_str();
            // the mock lowercases emails, as HubSpot does
            let same = if k == "email" {
                have.map(str::to_lowercase) == Some(want.to_lowercase())
            } else {
                have == Some(want.as_str())
            };
            if !same {
                diffs.push(format!(
                    "user {id}: {k} is {have:?} in the CRM, {want:?} in the row"
                ));
            }
        }
    }
    for (crm_id, c) in &contacts {
        if !named.contains(crm_id) {
            let email = c["properties"]["email"].as_str().unwrap_or("?");
            diffs.push(format!("contact {crm_id} ({email}) belongs to no row"));
        }
    }
    let left: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM etlify.queue) + (SELECT count(*) FROM etlify.records
                      WHERE state IN ('failed', 'parked', 'pending', 'buffered'))",
            &[],
        )
        .expect("queue")
        .get(0);
    if left > 0 {
        let claimed: i64 = db
            .query_one(
                "SELECT count(*) FROM etlify.queue WHERE claimed_by IS NOT NULL",
                &[],
            )
            .expect("claims")
            .get(0);
        diffs.push(format!(
            "{left} records still queued or unsettled, {claimed} claimed"
        ));
    }
    diffs
}

/// Waits up to `within` for [`users_differences`] to be empty; returns what is
/// left (empty when exact).
pub fn wait_users_exact(db: &mut Client, mock: &Mock, within: std::time::Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    let mut diffs = users_differences(db, mock);
    while !diffs.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(250));
        diffs = users_differences(db, mock);
    }
    diffs
}
