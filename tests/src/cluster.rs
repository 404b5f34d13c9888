//! A throwaway PostgreSQL 15 cluster owned by the `postgres` OS user.
//!
//! `initdb` runs once per test process into a template directory; every cluster is
//! a `cp -a` of it. Each cluster listens on a free port of 127.0.0.1 and on a unix
//! socket inside its own directory, logs to `<dir>/postgres.log`, and is stopped by
//! its postmaster PID and deleted on `Drop`.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const EXTENSION_CONTROL: &str = "/usr/share/postgresql/15/extension/etlify.control";
const DIR_PREFIX: &str = "etlify-e2e-";

static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct Cluster {
    dir: PathBuf,
    port: u16,
    postmaster_pid: Option<i32>,
}

impl Cluster {
    /// A cluster with `shared_preload_libraries = 'etlify'` (the sync worker runs),
    /// `etlify.database = 'postgres'`, `etlify.naptime = '200ms'`,
    /// `etlify.retry_backoff = '200ms'`, then `extra_conf` (later lines win).
    pub fn start(extra_conf: &str) -> Cluster {
        require_extension();
        Self::start_with(true, extra_conf)
    }

    /// The same without the preload line: the extension can be created but no worker
    /// runs; `etlify.drain()` does the worker's job inline.
    pub fn start_without_preload(extra_conf: &str) -> Cluster {
        require_extension();
        Self::start_with(false, extra_conf)
    }

    /// A plain cluster (no preload, no check that the extension is installed): to
    /// check the harness itself.
    pub fn start_plain(extra_conf: &str) -> Cluster {
        Self::start_with(false, extra_conf)
    }

    fn start_with(preload: bool, extra_conf: &str) -> Cluster {
        let template = template();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{n}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("remove old cluster dir");
        }
        fs::create_dir_all(&dir).expect("create cluster dir");
        let data = dir.join("data");
        run_ok(Command::new("cp").arg("-a").arg(template).arg(&data));
        chown_postgres(&dir);

        let mut conf = String::from("\n# --- etlify-e2e harness ---\n");
        conf += "listen_addresses = '127.0.0.1'\n";
        conf += &format!("unix_socket_directories = '{}'\n", dir.display());
        conf += "fsync = off\nfull_page_writes = off\n";
        conf += "shared_buffers = '32MB'\nmax_connections = 40\n";
        conf += "log_line_prefix = '%m [%p] %b: '\nlog_min_messages = info\n";
        conf += "lc_messages = 'C'\n";
        if preload {
            conf += "shared_preload_libraries = 'etlify'\n";
        }
        conf += "etlify.database = 'postgres'\n";
        conf += "etlify.naptime = '200ms'\n";
        conf += "etlify.retry_backoff = '200ms'\n";
        conf += "# --- extra ---\n";
        conf += extra_conf;
        conf += "\n";

        let mut cluster = Cluster {
            dir,
            port: 0,
            postmaster_pid: None,
        };
        let conf_path = data.join("postgresql.conf");
        let base_conf = fs::read_to_string(&conf_path).expect("read postgresql.conf");
        // A free port can be taken by someone else between our probe and the
        // postmaster's bind: retry with another one.
        let mut last_err = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            let text = format!("{base_conf}{conf}port = {}\n", cluster.port);
            fs::write(&conf_path, text).expect("write postgresql.conf");
            match cluster.pg_ctl(&["-w", "-t", "60", "-l", &cluster.log_path_str(), "start"]) {
                Ok(_) => {
                    cluster.postmaster_pid = cluster.read_postmaster_pid();
                    return cluster;
                }
                Err(e) => {
                    last_err = e;
                    if !cluster.log().contains("could not bind") {
                        break;
                    }
                }
            }
        }
        panic!(
            "could not start cluster in {}: {last_err}\n--- server log ---\n{}",
            cluster.dir.display(),
            cluster.log()
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        self.postmaster_pid
    }

    /// libpq-style connection string for `role` on database `postgres` over TCP.
    pub fn conninfo(&self, role: &str) -> String {
        self.conninfo_db(role, "postgres")
    }

    /// libpq-style connection string for `role` on database `db` over TCP.
    pub fn conninfo_db(&self, role: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={role} dbname={db} connect_timeout=10 application_name=etlify-e2e",
            self.port
        )
    }

    /// A new connection as superuser `postgres`. Retries for up to 60 s while the
    /// server is starting or recovering from a crash.
    pub fn client(&self) -> Client {
        self.connect_as("postgres")
    }

    /// A new connection as `role` (authentication is `trust`).
    pub fn connect_as(&self, role: &str) -> Client {
        self.connect_db(role, "postgres")
    }

    /// A new connection as `role` to database `db` (retries like [`Cluster::client`]).
    pub fn connect_db(&self, role: &str, db: &str) -> Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match Client::connect(&self.conninfo_db(role, db), NoTls) {
                Ok(c) => return c,
                Err(e) => {
                    let transient = e.as_db_error().is_none_or(|db| {
                        // 57P03 cannot_connect_now: starting up / recovering
                        db.code().code() == "57P03"
                    });
                    if !transient || Instant::now() > deadline {
                        panic!(
                            "cannot connect to cluster on port {} as {role}: {e}",
                            self.port
                        );
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// A PostgreSQL client program of [`PG_BIN`] (`pg_dump`, `psql`, `createdb`, ...)
    /// set to reach this cluster over TCP as superuser `postgres` (`-h`, `-p`, `-U`
    /// given; add the database and the rest).
    pub fn tool(&self, program: &str) -> Command {
        let mut cmd = Command::new(format!("{PG_BIN}/{program}"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .current_dir(&self.dir);
        cmd
    }

    /// Runs [`Cluster::tool`] `program` with `args`; panics with its output unless it
    /// exits 0. Returns its stdout and stderr.
    pub fn run_tool(&self, program: &str, args: &[&str]) -> (String, String) {
        let out = self
            .tool(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            panic!(
                "{program} {args:?} failed ({}):\n{stdout}{stderr}",
                out.status
            );
        }
        (stdout, stderr)
    }

    /// `pg_ctl restart -m fast`: a clean shutdown and start.
    pub fn restart(&mut self) {
        self.pg_ctl(&[
            "-w",
            "-t",
            "60",
            "-m",
            "fast",
            "-l",
            &self.log_path_str(),
            "restart",
        ])
        .unwrap_or_else(|e| panic!("pg_ctl restart: {e}\n{}", self.log()));
        self.postmaster_pid = self.read_postmaster_pid();
    }

    /// `pg_ctl stop -m immediate` then start: like a power loss (crash recovery at start).
    pub fn crash_restart(&mut self) {
        self.pg_ctl(&["-w", "-t", "60", "-m", "immediate", "stop"])
            .unwrap_or_else(|e| panic!("pg_ctl stop: {e}\n{}", self.log()));
        self.pg_ctl(&["-w", "-t", "60", "-l", &self.log_path_str(), "start"])
            .unwrap_or_else(|e| panic!("pg_ctl start: {e}\n{}", self.log()));
        self.postmaster_pid = self.read_postmaster_pid();
    }

    /// `pg_ctl reload` (SIGHUP to the postmaster, which forwards it).
    pub fn reload(&self) {
        self.pg_ctl(&["reload"])
            .unwrap_or_else(|e| panic!("pg_ctl reload: {e}"));
    }

    /// Appends lines to postgresql.conf (takes effect on [`Cluster::reload`] or restart).
    pub fn append_conf(&self, lines: &str) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(f, "\n{lines}").expect("append postgresql.conf");
    }

    /// PID of the etlify sync worker, if one runs.
    pub fn worker_pid(&self) -> Option<i32> {
        self.worker_pids().into_iter().next()
    }

    /// PIDs of every etlify sync worker (not the short-lived inline-send note workers).
    pub fn worker_pids(&self) -> Vec<i32> {
        let mut c = self.client();
        c.query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'etlify sync worker%' ORDER BY pid",
            &[],
        )
        .expect("query pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    /// Kills the etlify worker with `signal` (by its PID). For SIGKILL, the postmaster
    /// then resets every backend (crash recovery): this waits until it has done so and
    /// a new worker runs, so that connections made afterwards survive. Returns the old
    /// and the new worker PID.
    pub fn kill_worker(&self, signal: i32) -> (i32, i32) {
        const RESET: &str = "all server processes terminated; reinitializing";
        let resets = self.log().matches(RESET).count();
        let old = self.wait_worker_pid();
        assert_eq!(
            unsafe { libc::kill(old, signal) },
            0,
            "kill({old}, {signal}): {}",
            std::io::Error::last_os_error()
        );
        if signal == libc::SIGKILL {
            crate::wait_for(
                Duration::from_secs(30),
                "the postmaster's crash reset",
                || (self.log().matches(RESET).count() > resets).then_some(()),
            );
        }
        let new = crate::wait_for(Duration::from_secs(30), "a new etlify worker", || {
            self.worker_pid().filter(|p| *p != old)
        });
        (old, new)
    }

    /// Waits until an etlify worker shows up in `pg_stat_activity`.
    pub fn wait_worker_pid(&self) -> i32 {
        crate::wait_for(
            Duration::from_secs(30),
            "an etlify worker in pg_stat_activity",
            || self.worker_pid(),
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn log_path_str(&self) -> String {
        self.log_path().display().to_string()
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn read_postmaster_pid(&self) -> Option<i32> {
        fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, String> {
        let data = self.data_dir();
        let mut cmd = as_postgres(&format!("{PG_BIN}/pg_ctl"));
        cmd.arg("-D").arg(&data).args(args).current_dir(&self.dir);
        let out = cmd.output().map_err(|e| format!("spawn pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(format!(
                "pg_ctl {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn stop(&mut self) {
        let pid = self.read_postmaster_pid().or(self.postmaster_pid);
        let _ = self.pg_ctl(&["-w", "-t", "30", "-m", "immediate", "stop"]);
        if let Some(pid) = pid {
            // pg_ctl stop waits for the postmaster to exit; if it did not, kill it by PID.
            if process_alive(pid) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while process_alive(pid) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop and clean up first, print last: printing may fail (a closed pipe) and
        // must not leave a server or a directory behind.
        self.stop();
        let log = if thread::panicking() {
            Some(self.log())
        } else {
            None
        };
        if std::env::var_os("ETLIFY_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        if let Some(log) = log {
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(300);
            eprintln!(
                "--- server log of {} (last {} lines) ---\n{}\n--- end of server log ---",
                self.dir.display(),
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
    }
}

/// Panics with a clear message when the extension is not installed.
pub fn require_extension() {
    if !Path::new(EXTENSION_CONTROL).exists() {
        panic!(
            "{EXTENSION_CONTROL} is missing: the etlify extension is not installed into the \
             system PostgreSQL 15. Run scripts/setup.sh (it runs `cargo pgrx install --release \
             --pg-config /usr/lib/postgresql/15/bin/pg_config`)."
        );
    }
}

/// A command that runs `program` as the `postgres` OS user (initdb refuses root).
fn as_postgres(program: &str) -> Command {
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn postgres_ids() -> (libc::uid_t, libc::gid_t) {
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        panic!("no `postgres` OS user: install postgresql-15 (scripts/setup.sh)");
    }
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn chown_postgres(path: &Path) {
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown cluster dir");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

pub fn process_alive(pid: i32) -> bool {
    // kill(pid, 0) succeeds for a live process; a zombie still counts as alive for
    // kill(), so look at /proc as well.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .map(|rest| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

extern "C" fn remove_template_at_exit() {
    if let Some(t) = TEMPLATE.get() {
        if let Some(parent) = t.parent() {
            let _ = fs::remove_dir_all(parent);
        }
    }
}

/// The per-process template data directory (initdb runs once per test process).
fn template() -> &'static Path {
    TEMPLATE.get_or_init(|| {
        if !Path::new(PG_BIN).join("initdb").exists() {
            panic!("{PG_BIN}/initdb is missing: install postgresql-15 (scripts/setup.sh)");
        }
        remove_stale_dirs();
        let base =
            std::env::temp_dir().join(format!("{DIR_PREFIX}{}-template", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).expect("create template dir");
        chown_postgres(&base);
        let data = base.join("data");
        run_ok(
            as_postgres(&format!("{PG_BIN}/initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "--auth=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ])
                .current_dir(&base),
        );
        unsafe { libc::atexit(remove_template_at_exit) };
        data
    })
}

/// Removes clusters left behind by test processes that died without running `Drop`
/// (stopping their postmaster by the PID in its postmaster.pid first).
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if owner == std::process::id() as i32 || process_alive(owner) {
            continue;
        }
        let dir = entry.path();
        let data = dir.join("data");
        if let Ok(pidfile) = fs::read_to_string(data.join("postmaster.pid")) {
            if let Some(pid) = pidfile
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
            {
                if process_alive(pid) {
                    let _ = as_postgres(&format!("{PG_BIN}/pg_ctl"))
                        .arg("-D")
                        .arg(&data)
                        .args(["-w", "-m", "immediate", "stop"])
                        .current_dir("/")
                        .output();
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
