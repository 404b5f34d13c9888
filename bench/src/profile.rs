//! `--stats`: pg_stat_statements over the drain, to see which of etlify's
//! statements the worker spends its time in. With track = all a nested statement is
//! counted both alone and inside the function that ran it.

use etlify_e2e::report::query_table;

use crate::env::Bench;

pub const CONF: &str = "shared_preload_libraries = 'etlify,pg_stat_statements'\n\
                        pg_stat_statements.track = all\n";

pub fn setup(b: &mut Bench) {
    b.exec("CREATE EXTENSION pg_stat_statements");
}

/// The top statements by total time since the last reset (the drain's start).
pub fn top(b: &mut Bench) -> String {
    query_table(
        &mut b.db,
        "SELECT calls, round(total_exec_time::numeric, 1) AS total_ms, \
                round(mean_exec_time::numeric, 3) AS mean_ms, rows, \
                left(regexp_replace(query, '\\s+', ' ', 'g'), 100) AS query \
           FROM pg_stat_statements \
          WHERE query NOT LIKE '%pg_stat_statements%' \
          ORDER BY total_exec_time DESC LIMIT 15",
    )
}
