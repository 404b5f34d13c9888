//! sync_stale's records, read beside the source instead of probed key by key.
//!
//! A mapping's records are written in about the order its rows are read: the
//! backfill queues the rows in their physical order, and claims take them in
//! queue order. So reading the records in their own physical order, a window
//! ahead of the source's scan, finds most of a batch's records without an index
//! probe (one probe per key was a third of a 1M-row re-check). A record that is
//! not in the window (rows and records out of step) is probed as before, so the
//! window only saves work, it never decides. It holds at most `CAPACITY` records;
//! the oldest unclaimed ones leave first.

use crate::datums;
use pgrx::prelude::*;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;

/// Records held ahead of the scan.
const CAPACITY: usize = 20_000;

/// A record's sync state, as the drain compares it.
#[derive(Default)]
pub struct Known {
    pub state: Option<String>,
    pub crm_id: Option<String>,
    pub digest: Option<Vec<u8>>,
}

impl Known {
    /// A record as both readers select it: key, state, crm_id, digest.
    pub fn read(r: &pgrx::spi::SpiHeapTupleData<'_>) -> Option<(String, Known)> {
        let known = Known {
            state: datums::text(r, 2),
            crm_id: datums::text(r, 3),
            digest: datums::bytes(r, 4),
        };
        Some((datums::text(r, 1)?, known))
    }

    /// Gives a row its record's state.
    pub fn apply(self, row: &mut etlify_core::plan::Claimed) {
        row.state = self.state;
        row.crm_id = self.crm_id;
        row.digest = self.digest;
    }
}

pub struct Window {
    /// The records cursor (superuser's, not the owner's: it reads etlify.records).
    cursor: String,
    held: FxHashMap<String, Known>,
    /// Keys in the order they were read, for eviction (some may be gone from `held`).
    order: VecDeque<String>,
    exhausted: bool,
}

impl Window {
    pub fn open(mapping_id: i32) -> Window {
        let cursor = Spi::connect(|c| {
            c.open_cursor(
                "SELECT r.key, r.state, r.crm_id, r.digest FROM etlify.records r \
                 WHERE r.mapping_id OPERATOR(pg_catalog.=) $1",
                &[mapping_id.into()],
            )
            .detach_into_name()
        });
        Window {
            cursor,
            held: FxHashMap::default(),
            order: VecDeque::new(),
            exhausted: false,
        }
    }

    /// Takes the records of `keys` that the window holds, after reading ahead as
    /// far as it may; None for the ones it does not hold.
    pub fn take(&mut self, keys: &[&str]) -> Vec<Option<Known>> {
        self.fill();
        keys.iter().map(|k| self.held.remove(*k)).collect()
    }

    /// Closes the cursor (a portal otherwise lives until the transaction ends).
    /// Not a Drop: it runs SPI, which must not run while an error unwinds.
    pub fn close(self) {
        Spi::connect(|c| c.find_cursor(&self.cursor).map(drop)).ok();
    }

    fn fill(&mut self) {
        // the oldest records never claimed (their rows come later than the
        // window reaches, or never) make room for the next ones
        while self.held.len() >= CAPACITY {
            match self.order.pop_front() {
                Some(k) => drop(self.held.remove(&k)),
                None => break,
            }
        }
        if self.order.len() > 2 * CAPACITY {
            // keys already taken: drop them from the eviction order now and then
            self.order.retain(|k| self.held.contains_key(k));
        }
        if self.exhausted {
            return;
        }
        let want = (CAPACITY - self.held.len()) as i64;
        let read: Vec<(String, Known)> = Spi::connect(|c| {
            let mut cur = c.find_cursor(&self.cursor)?;
            let rows = cur.fetch(want)?.filter_map(|r| Known::read(&r)).collect();
            // kept open for the next fill; this connection frees the rows
            let _ = cur.detach_into_name();
            Ok::<_, pgrx::spi::SpiError>(rows)
        })
        .unwrap_or_else(|e| pgrx::error!("etlify.sync_stale: reading records: {e}"));
        if (read.len() as i64) < want {
            self.exhausted = true;
        }
        for (k, known) in read {
            self.order.push_back(k.clone());
            self.held.insert(k, known);
        }
    }
}
