//! The harness itself, against a plain cluster (no extension needed) and the mock.

use std::time::Duration;

use etlify_e2e::{wait_for, Cluster};

#[test]
fn plain_cluster_starts_restarts_reloads_and_stops() {
    let mut cluster = Cluster::start_plain("application_name = 'harness'");
    let dir = cluster.dir().to_path_buf();
    let pid = cluster.postmaster_pid().expect("postmaster pid");
    let mut db = cluster.client();
    let row = db.query_one("SELECT current_user::text, current_setting('fsync'), current_setting('application_name')", &[]).unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert_eq!(row.get::<_, String>(1), "off");
    db.batch_execute("CREATE ROLE app LOGIN").unwrap();
    let mut app = cluster.connect_as("app");
    let who: String = app
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, "app");

    cluster.append_conf("work_mem = '7MB'");
    cluster.reload();
    wait_for(Duration::from_secs(10), "work_mem reloaded", || {
        let v: String = cluster
            .client()
            .query_one("SHOW work_mem", &[])
            .unwrap()
            .get(0);
        (v == "7MB").then_some(())
    });

    cluster.restart();
    assert_ne!(
        cluster.postmaster_pid(),
        Some(pid),
        "restart gives a new postmaster"
    );
    let n: i64 = cluster
        .client()
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = 'app'", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    cluster.crash_restart();
    assert!(cluster
        .log()
        .contains("database system is ready to accept connections"));
    assert_eq!(cluster.worker_pid(), None);

    let pid = cluster.postmaster_pid().unwrap();
    drop(app);
    drop(db);
    drop(cluster);
    assert!(!dir.exists(), "cluster dir removed on drop");
    assert!(
        !etlify_e2e::cluster::process_alive(pid),
        "postmaster stopped on drop"
    );
}
