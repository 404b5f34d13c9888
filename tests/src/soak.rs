//! A writer that keeps changing the `users` fixture through crashes: the crash tests
//! and the benchmark's soak run it beside the workers.

use std::thread;
use std::time::{Duration, Instant};

/// A small deterministic generator (no crate for it): the seed is printed, so that
/// a failing run can be replayed.
pub struct Lcg(pub u64);

impl Lcg {
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Writes inserts, updates (names and emails) and deletes of `users` until `until`,
/// through every crash: a statement the crash broke is simply not retried. Users
/// 1..=300 are updated and deleted, new ones inserted from 1001 up. Returns the
/// number of statements that succeeded.
pub fn write_until(conninfo: &str, seed: u64, until: Instant) -> u64 {
    let mut rng = Lcg(seed);
    let mut done = 0;
    let mut next_id = 1000;
    let mut db: Option<postgres::Client> = None;
    while Instant::now() < until {
        let c = match db.as_mut() {
            Some(c) => c,
            None => match postgres::Client::connect(conninfo, postgres::NoTls) {
                Ok(c) => db.insert(c),
                Err(_) => {
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let id = 1 + rng.below(300) as i64;
        let sql = match rng.below(10) {
            0..=4 => format!(
                "UPDATE users SET first_name = 'n{}' WHERE id = {id}",
                rng.below(1000)
            ),
            5 => format!(
                "UPDATE users SET email = 'moved{id}.{}@example.com' WHERE id = {id}",
                rng.below(1000)
            ),
            6 => format!("DELETE FROM users WHERE id = {id}"),
            7 => format!(
                "UPDATE users SET last_name = 'l{}' WHERE id BETWEEN {id} AND {}",
                rng.below(1000),
                id + 20
            ),
            _ => {
                next_id += 1;
                format!(
                    "INSERT INTO users (id, email, first_name) VALUES ({next_id}, 'new{next_id}@example.com', 'x')"
                )
            }
        };
        match c.batch_execute(&sql) {
            Ok(()) => done += 1,
            Err(e) if c.is_closed() || e.as_db_error().is_none() => db = None,
            Err(_) => {}
        }
        thread::sleep(Duration::from_millis(5));
    }
    done
}
