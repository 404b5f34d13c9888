//! Settings (postgresql.conf or SET) and their typed accessors.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;
use std::time::Duration;

/// Database the worker serves. Postmaster-only: the worker connects once.
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Longest sleep when no change wakes the worker.
/// Sync workers; at most MAX_WORKERS.
pub static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub const MAX_WORKERS: i32 = 16;
pub static NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// Global switch: off, workers idle while triggers keep recording changes.
pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Delay before the first retry of a failed record; doubles per failure.
pub static RETRY_BACKOFF_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
/// Cap of that delay.
pub static RETRY_BACKOFF_MAX_MS: GucSetting<i32> = GucSetting::<i32>::new(3_600_000);
/// Rows kept in etlify.sync_log.
pub static SYNC_LOG_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Records claimed per round and mapping (a multiple of the adapter's batch size).
pub static CLAIM_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// Longest a batch of serializer calls may run in the worker, in ms (0: no limit).
pub static SERIALIZER_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
/// Largest payload a record may have, in kB (as jsonb): a bigger one fails its record.
pub static MAX_PAYLOAD_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);

pub fn init(preloaded: bool) {
    // A postmaster-only setting can be defined only while the postmaster loads us;
    // without the preload there is no worker to configure.
    if preloaded {
        GucRegistry::define_string_guc(
            c"etlify.database",
            c"Database the etlify sync worker serves.",
            c"The worker connects to this database at start; changing it needs a restart.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"etlify.workers",
            c"Sync workers draining disjoint records in parallel.",
            c"Each CRM's rate limit is shared by all of them; changing it needs a restart.",
            &WORKERS,
            1,
            MAX_WORKERS,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"etlify.naptime",
        c"Longest sleep of the sync worker when no change wakes it.",
        c"Committed changes wake the worker at once; this bounds the wait for retries that come due.",
        &NAPTIME_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"etlify.enabled",
        c"Global switch of the sync workers.",
        c"Off: workers idle, triggers still record changes, which are sent once it is on again.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"etlify.retry_backoff",
        c"Delay before the first retry of a failed record.",
        c"Doubles with every further failure, up to etlify.retry_backoff_max.",
        &RETRY_BACKOFF_MS,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"etlify.retry_backoff_max",
        c"Longest delay between two attempts of a failed record.",
        c"",
        &RETRY_BACKOFF_MAX_MS,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"etlify.sync_log_size",
        c"Number of requests kept in etlify.sync_log.",
        c"",
        &SYNC_LOG_SIZE,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"etlify.claim_size",
        c"Records the drain claims per round and mapping.",
        c"Larger rounds amortize the two transactions around each round of requests.",
        &CLAIM_SIZE,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"etlify.serializer_timeout",
        c"Longest the worker lets a mapping's serializer run over one batch (0: no limit).",
        c"A batch that runs longer is retried row by row with the same limit; the rows that still time out fail.",
        &SERIALIZER_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"etlify.max_payload_size",
        c"Largest payload a record may have; a bigger one fails that record.",
        c"Bounds the worker's memory (at most etlify.claim_size payloads of this size) and the requests' size.",
        &MAX_PAYLOAD_KB,
        1,
        1024 * 1024,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
}

pub fn serializer_timeout_ms() -> i32 {
    SERIALIZER_TIMEOUT_MS.get().max(0)
}

pub fn max_payload_bytes() -> i64 {
    MAX_PAYLOAD_KB.get().max(1) as i64 * 1024
}

pub fn database() -> String {
    DATABASE
        .get()
        .and_then(|s| s.into_string().ok())
        .unwrap_or_else(|| "postgres".into())
}

/// Workers started (1 without the preload: inline callers are one at a time).
pub fn workers() -> usize {
    WORKERS.get().clamp(1, MAX_WORKERS) as usize
}

pub fn naptime() -> Duration {
    Duration::from_millis(NAPTIME_MS.get().max(1) as u64)
}

pub fn enabled() -> bool {
    ENABLED.get()
}

pub fn claim_size() -> usize {
    CLAIM_SIZE.get().max(1) as usize
}
