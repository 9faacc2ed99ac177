//! The log of recent optimistic-lock conflicts, for `SHOW CONFLICTS`: a bounded ring that keeps
//! the newest entries and forgets the oldest. Recording one takes a short mutex; conflicts are
//! rare next to statements.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::events::Conflict;

/// How many conflicts a [`ConflictLog::default`] keeps.
pub const DEFAULT_CAPACITY: usize = 1000;

/// The most recent conflicts of the process. Share it as `Arc<ConflictLog>`.
#[derive(Debug)]
pub struct ConflictLog {
    capacity: usize,
    entries: Mutex<VecDeque<Conflict>>,
    total: AtomicU64,
}

impl Default for ConflictLog {
    fn default() -> Self {
        ConflictLog::new(DEFAULT_CAPACITY)
    }
}

impl ConflictLog {
    /// A log that keeps the newest `capacity` conflicts (at least one).
    pub fn new(capacity: usize) -> ConflictLog {
        let capacity = capacity.max(1);
        ConflictLog {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(64))),
            total: AtomicU64::new(0),
        }
    }

    /// Adds a conflict, forgetting the oldest one when full.
    pub fn record(&self, conflict: Conflict) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        entries.push_back(conflict);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The conflicts kept, newest first.
    pub fn recent(&self) -> Vec<Conflict> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().rev().cloned().collect()
    }

    /// How many conflicts were recorded since start, including those forgotten.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(n: u32) -> Conflict {
        Conflict {
            at: std::time::SystemTime::now(),
            table: "public.invoice".into(),
            key: format!("(id)=({n})"),
            expected: "7".into(),
            found: Some("8".into()),
            client_addr: "127.0.0.1:5000".parse().unwrap(),
            user: "pos".into(),
            application_name: "till".into(),
            outcome: crate::events::Outcome::Conflict,
            reason: None,
        }
    }

    #[test]
    fn ring_keeps_only_the_newest() {
        let log = ConflictLog::new(3);
        assert!(log.recent().is_empty());
        for n in 1..=5 {
            log.record(conflict(n));
        }
        let keys: Vec<String> = log.recent().into_iter().map(|c| c.key).collect();
        assert_eq!(keys, ["(id)=(5)", "(id)=(4)", "(id)=(3)"]);
        assert_eq!(log.total(), 5);
        assert_eq!(log.capacity(), 3);
    }

    #[test]
    fn zero_capacity_still_keeps_the_last() {
        let log = ConflictLog::new(0);
        log.record(conflict(1));
        log.record(conflict(2));
        assert_eq!(log.recent().len(), 1);
        assert_eq!(log.recent()[0].key, "(id)=(2)");
        assert_eq!(ConflictLog::default().capacity(), DEFAULT_CAPACITY);
    }
}
