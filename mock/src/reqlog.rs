//! The request log behind `GET /__mock/requests`: lets tests and benchmarks see exactly what
//! a client sent (retries, batch sizes, timing) without instrumenting the client.

use axum::http::Method;
use serde::ser::{Serialize, SerializeStruct, Serializer};
use std::collections::VecDeque;

pub const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub method: Method,
    pub path: String,
    /// 0 while the request is still being handled.
    pub status: u16,
    pub inputs: u32,
    pub received_at_us: i64,
    pub completed_at_us: i64,
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Entry", 7)?;
        st.serialize_field("seq", &self.seq)?;
        st.serialize_field("method", self.method.as_str())?;
        st.serialize_field("path", &self.path)?;
        st.serialize_field("status", &self.status)?;
        st.serialize_field("inputs", &self.inputs)?;
        st.serialize_field("received_at_us", &self.received_at_us)?;
        st.serialize_field("completed_at_us", &self.completed_at_us)?;
        st.end()
    }
}

/// Entries are appended at arrival (so `seq` is arrival order) and filled in at completion.
#[derive(Debug)]
pub struct RequestLog {
    entries: VecDeque<Entry>,
    /// Never reset, so a request still in flight across a reset can't update a newer entry.
    next_seq: u64,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            entries: VecDeque::new(),
            next_seq: 1,
        }
    }
}

impl RequestLog {
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn start(&mut self, method: Method, path: String, received_at_us: i64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            seq,
            method,
            path,
            status: 0,
            inputs: 0,
            received_at_us,
            completed_at_us: 0,
        });
        seq
    }

    pub fn finish(&mut self, seq: u64, status: u16, inputs: u32, completed_at_us: i64) {
        let Some(first) = self.entries.front().map(|e| e.seq) else {
            return;
        };
        // Seqs are contiguous within the deque, so the slot is found by arithmetic.
        let Some(idx) = seq.checked_sub(first) else {
            return;
        };
        if let Some(e) = self.entries.get_mut(idx as usize) {
            if e.seq == seq {
                e.status = status;
                e.inputs = inputs;
                e.completed_at_us = completed_at_us;
            }
        }
    }

    /// Completed requests with `seq > since`, in arrival order. In-flight ones are left out so
    /// every listed entry has its final status.
    pub fn completed_since(&self, since: u64) -> impl Iterator<Item = &Entry> {
        let first = self.entries.front().map(|e| e.seq).unwrap_or(0);
        let skip = if since < first {
            0
        } else {
            (since - first + 1).min(self.entries.len() as u64) as usize
        };
        self.entries.iter().skip(skip).filter(|e| e.status != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_order_and_since() {
        let mut log = RequestLog::default();
        let a = log.start(Method::POST, "/a".into(), 1);
        let b = log.start(Method::GET, "/b".into(), 2);
        log.finish(b, 200, 0, 3);
        assert_eq!(log.completed_since(0).count(), 1);
        log.finish(a, 207, 100, 4);
        let seqs: Vec<u64> = log.completed_since(0).map(|e| e.seq).collect();
        assert_eq!(seqs, vec![a, b]);
        let seqs: Vec<u64> = log.completed_since(a).map(|e| e.seq).collect();
        assert_eq!(seqs, vec![b]);
        assert_eq!(log.completed_since(b).count(), 0);
        log.clear();
        log.finish(a, 500, 0, 5); // stale completion after a reset: ignored
        assert_eq!(log.completed_since(0).count(), 0);
        let c = log.start(Method::GET, "/c".into(), 6);
        assert!(c > b);
    }
}
