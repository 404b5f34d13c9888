//! End-to-end harness for etlify: a throwaway PostgreSQL 15 cluster with the
//! extension preloaded ([`Cluster`]), the mock CRM ([`Mock`]), a deadline-based
//! poller ([`wait_for`]) and a few SQL fixtures ([`fixtures`]).
//!
//! The tests in `tests/tests/*.rs` and the benchmark reuse it. Everything the
//! harness starts is stopped by PID in `Drop`, also when a test panics; on a
//! panic the server log and the mock's request log are printed to help debugging.

pub mod cluster;
pub mod exact;
pub mod fixtures;
pub mod mock;
pub mod report;
pub mod soak;
pub mod wait;

pub use cluster::Cluster;
pub use mock::Mock;
pub use wait::{wait_for, wait_for_default, wait_for_every, DEFAULT_TIMEOUT};

/// `Cluster` + `Mock` + a superuser connection with the extension created and the
/// mock registered as CRM `hubspot` (adapter `hubspot`). The most common starting
/// point of a test.
pub struct Env {
    pub db: postgres::Client,
    pub mock: Mock,
    pub cluster: Cluster,
}

impl Env {
    /// Preloaded cluster (plus `extra_conf`), a mock that wants [`fixtures::TOKEN`], `CREATE
    /// EXTENSION etlify`, the `users` fixture and `hubspot` registered with
    /// `register_opts` appended to the `register_crm` call (e.g. `", max_sync_errors => 2"`).
    pub fn start(extra_conf: &str, register_opts: &str) -> Env {
        let mock = Mock::start(&["--token", fixtures::TOKEN]);
        let cluster = Cluster::start(extra_conf);
        Self::finish(cluster, mock, register_opts)
    }

    /// Like [`Env::start`] but without `shared_preload_libraries`: no worker runs,
    /// `etlify.drain()` / `etlify.sync()` do the work inline.
    pub fn start_without_worker(extra_conf: &str, register_opts: &str) -> Env {
        let mock = Mock::start(&["--token", fixtures::TOKEN]);
        let cluster = Cluster::start_without_preload(extra_conf);
        Self::finish(cluster, mock, register_opts)
    }

    fn finish(cluster: Cluster, mock: Mock, register_opts: &str) -> Env {
        let mut db = cluster.client();
        db.batch_execute("CREATE EXTENSION etlify")
            .expect("CREATE EXTENSION etlify");
        db.batch_execute(fixtures::USERS).expect("users fixture");
        fixtures::register_crm(&mut db, "hubspot", &mock, register_opts);
        Env { db, mock, cluster }
    }
}
