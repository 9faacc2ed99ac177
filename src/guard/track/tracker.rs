//! The [`Tracker`]: the version of each guarded row one session has seen, bounded.
//!
//! It maps (guard index, key values) to the canonical version text last seen for that row on
//! this session, holds at most `limit` rows and drops the least recently used one first; a
//! dropped row reads as "nothing known", never as a wrong version. Keys are encoded into one
//! string (guard index and length-prefixed parts, so no two different keys share an encoding
//! whatever the key text contains); lookups reuse a scratch buffer and do not allocate. Every
//! change is recorded in the [`Journal`].

use std::num::NonZeroUsize;

use lru::LruCache;
use smol_str::SmolStr;

use super::journal::{Entry, Journal};
use crate::guard::TableId;

/// The versions one session has seen.
#[derive(Debug)]
pub struct Tracker {
    pub(super) rows: LruCache<SmolStr, SmolStr>,
    /// How many rows of each table are tracked, by [`TableId`]: a write or read of a table the
    /// session tracks nothing of needs no key lookup.
    pub(super) per_table: Vec<u32>,
    scratch: String,
    /// What the changes since the last commit point replaced.
    pub(super) journal: Journal,
}

/// An LRU map of at most `cap` entries whose table grows with its entries: most sessions track
/// a handful of rows, and a table sized for `track_limit` up front would cost every session
/// (every pooled client included) its allocation and clearing at start and end.
fn lazy_lru<K: std::hash::Hash + Eq, V>(cap: NonZeroUsize) -> LruCache<K, V> {
    let mut lru = LruCache::unbounded();
    lru.resize(cap);
    lru
}

impl Tracker {
    /// A tracker holding at most `limit` rows (at least one).
    pub fn new(limit: usize) -> Tracker {
        Tracker {
            rows: lazy_lru(NonZeroUsize::new(limit).unwrap_or(NonZeroUsize::MIN)),
            per_table: Vec::new(),
            scratch: String::new(),
            // Room for a transaction's own changes after a `RESET ALL` of a full tracker.
            journal: Journal::new(limit.saturating_mul(2)),
        }
    }

    /// Records that the row `key_parts` of guard `guard` has version `version` (inserted, or
    /// replaced and made most recently used).
    pub fn observe<S: AsRef<str>>(&mut self, guard: TableId, key_parts: &[S], version: &str) {
        encode(&mut self.scratch, guard, key_parts);
        if let Some((k, v)) = self.rows.get_key_value_mut(self.scratch.as_str()) {
            if **v != *version {
                let was = std::mem::replace(v, version.into());
                self.journal.record(Entry::Was(k.clone(), was));
            }
            return;
        }
        let key = SmolStr::new(self.scratch.as_str());
        if let Some((dropped, was)) = self.rows.push(key.clone(), version.into()) {
            if let Some(table) = table_of(&dropped) {
                self.count(table, -1);
            }
            self.journal.record(Entry::Was(dropped, was));
        }
        self.journal.record(Entry::Added(key));
        self.count(guard, 1);
    }

    pub(super) fn count(&mut self, table: TableId, delta: i32) {
        if self.per_table.len() <= table.0 {
            self.per_table.resize(table.0 + 1, 0);
        }
        let n = &mut self.per_table[table.0];
        *n = n.saturating_add_signed(delta);
    }

    /// True when the session tracks at least one row of `table`.
    pub fn tracks_table(&self, table: TableId) -> bool {
        self.per_table.get(table.0).is_some_and(|&n| n > 0)
    }

    /// Records the version a write of this session gave the row, when the session tracks the
    /// row: its own writes advance what it knows, and never conflict with themselves. A row
    /// the session never read stays unknown (its own blind write is not a read).
    pub fn advance<S: AsRef<str>>(&mut self, guard: TableId, key_parts: &[S], version: &str) {
        if !self.tracks_table(guard) {
            return;
        }
        encode(&mut self.scratch, guard, key_parts);
        if let Some((k, v)) = self.rows.get_key_value_mut(self.scratch.as_str())
            && **v != *version
        {
            let was = std::mem::replace(v, version.into());
            self.journal.record(Entry::Was(k.clone(), was));
        }
    }

    /// The version this session last saw for the row, if still tracked; marks it recently used.
    pub fn expected<S: AsRef<str>>(&mut self, guard: TableId, key_parts: &[S]) -> Option<&str> {
        if !self.tracks_table(guard) {
            return None;
        }
        encode(&mut self.scratch, guard, key_parts);
        self.rows.get(self.scratch.as_str()).map(|v| &**v)
    }

    /// Forgets one row (e.g. after this session deleted it).
    pub fn forget<S: AsRef<str>>(&mut self, guard: TableId, key_parts: &[S]) {
        if !self.tracks_table(guard) {
            return;
        }
        encode(&mut self.scratch, guard, key_parts);
        if let Some((k, was)) = self.rows.pop_entry(self.scratch.as_str()) {
            self.count(guard, -1);
            self.journal.record(Entry::Was(k, was));
        }
    }

    /// Forgets every row of `table` (after a write of it whose new versions the session
    /// cannot see).
    pub fn forget_table(&mut self, table: TableId) {
        if !self.tracks_table(table) {
            return;
        }
        let keys: Vec<SmolStr> = self
            .rows
            .iter()
            .filter(|(k, _)| table_of(k) == Some(table))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some((k, was)) = self.rows.pop_entry(&k) {
                self.journal.record(Entry::Was(k, was));
            }
        }
        self.per_table[table.0] = 0;
    }

    /// Forgets every row (`DISCARD ALL`, `RESET ALL`): journaled like any change, so a
    /// transaction that did not commit gives them back, as it gives back its settings.
    pub fn clear(&mut self) {
        // Most recent first: undone in reverse, the order of use comes back too.
        while let Some((k, was)) = self.rows.pop_mru() {
            self.journal.record(Entry::Was(k, was));
        }
        self.per_table.clear();
    }

    /// Forgets every row and the journal: the end of a transaction with
    /// `track = "transaction"`.
    pub fn forget_all(&mut self) {
        self.rows.clear();
        self.per_table.clear();
        self.journal.reset();
    }

    /// Up to `max` rows of `table` with their versions, most recently used first, without
    /// marking them used: what a write whose rows the proxy cannot name checks per row (see
    /// [`crate::guard::rewrite::Known`]). Scans the tracker; called only for such writes.
    pub fn table_rows(&self, table: TableId, max: usize) -> Vec<(Vec<String>, String)> {
        if !self.tracks_table(table) {
            return Vec::new();
        }
        self.rows
            .iter()
            .filter(|(k, _)| table_of(k) == Some(table))
            .filter_map(|(k, v)| Some((decode(k)?, v.to_string())))
            .take(max)
            .collect()
    }

    /// How many rows are tracked.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The most rows this tracker holds.
    pub fn limit(&self) -> usize {
        self.rows.cap().get()
    }
}

/// The table an encoded key belongs to (the digits before the first `:`).
pub(super) fn table_of(encoded: &str) -> Option<TableId> {
    let digits = encoded.split(':').next()?;
    digits.parse().ok().map(TableId)
}

/// The key parts of an encoded key (see [`encode`]).
fn decode(encoded: &str) -> Option<Vec<String>> {
    let (_, mut rest) = encoded.split_once(':')?;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        parts.push(tail.get(..len)?.to_string());
        rest = tail
            .get(len..)?
            .strip_prefix(':')
            .unwrap_or(tail.get(len..)?);
    }
    Some(parts)
}

fn encode<S: AsRef<str>>(buf: &mut String, guard: TableId, key_parts: &[S]) {
    buf.clear();
    let mut digits = itoa::Buffer::new();
    buf.push_str(digits.format(guard.0));
    for part in key_parts {
        let part = part.as_ref();
        buf.push(':');
        buf.push_str(digits.format(part.len()));
        buf.push(':');
        buf.push_str(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_writes_advance_only_what_was_read() {
        let mut t = Tracker::new(10);
        t.advance(TableId(0), &["1"], "5");
        assert_eq!(
            t.expected(TableId(0), &["1"]),
            None,
            "a blind write is not a read"
        );
        t.observe(TableId(0), &["1"], "5");
        t.advance(TableId(0), &["1"], "6");
        assert_eq!(t.expected(TableId(0), &["1"]), Some("6"));
    }

    #[test]
    fn observe_expected_forget() {
        let mut t = Tracker::new(10);
        assert_eq!(t.expected(TableId(0), &["42"]), None);
        t.observe(TableId(0), &["42"], "7");
        assert_eq!(t.expected(TableId(0), &["42"]), Some("7"));
        assert_eq!(t.expected(TableId(1), &["42"]), None, "other guard");
        t.observe(TableId(0), &["42"], "8");
        assert_eq!(t.expected(TableId(0), &["42"]), Some("8"));
        assert_eq!(t.len(), 1);
        t.forget(TableId(0), &["42"]);
        assert_eq!(t.expected(TableId(0), &["42"]), None);
        assert!(t.is_empty());
    }

    #[test]
    fn keys_with_separators_stay_apart() {
        let mut t = Tracker::new(10);
        t.observe(TableId(0), &["a:1:b"], "1");
        t.observe(TableId(0), &["a", "b"], "2");
        t.observe(TableId(0), &["a:1", "b"], "3");
        t.observe(TableId(1), &["2"], "4");
        t.observe(TableId(12), &[""], "5");
        t.observe(TableId(1), &["2:"], "6");
        assert_eq!(t.expected(TableId(0), &["a:1:b"]), Some("1"));
        assert_eq!(t.expected(TableId(0), &["a", "b"]), Some("2"));
        assert_eq!(t.expected(TableId(0), &["a:1", "b"]), Some("3"));
        assert_eq!(t.expected(TableId(1), &["2"]), Some("4"));
        assert_eq!(t.expected(TableId(12), &[""]), Some("5"));
        assert_eq!(t.expected(TableId(1), &["2:"]), Some("6"));
        assert_eq!(t.expected::<&str>(TableId(1), &[]), None);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn least_recently_used_is_dropped() {
        let mut t = Tracker::new(3);
        t.observe(TableId(0), &["1"], "a");
        t.observe(TableId(0), &["2"], "b");
        t.observe(TableId(0), &["3"], "c");
        // Reading 1 makes 2 the least recently used.
        assert_eq!(t.expected(TableId(0), &["1"]), Some("a"));
        t.observe(TableId(0), &["4"], "d");
        assert_eq!(t.len(), 3);
        assert_eq!(t.expected(TableId(0), &["2"]), None);
        assert_eq!(t.expected(TableId(0), &["1"]), Some("a"));
        assert_eq!(t.expected(TableId(0), &["3"]), Some("c"));
        assert_eq!(t.expected(TableId(0), &["4"]), Some("d"));
        // Refreshing 1 by observing keeps it over 3.
        t.observe(TableId(0), &["3"], "c2");
        t.observe(TableId(0), &["1"], "a2");
        t.observe(TableId(0), &["5"], "e");
        assert_eq!(t.expected(TableId(0), &["4"]), None);
        assert_eq!(t.expected(TableId(0), &["1"]), Some("a2"));
        assert_eq!(t.expected(TableId(0), &["3"]), Some("c2"));
    }

    #[test]
    fn many_rows_stay_bounded_and_never_wrong() {
        let mut t = Tracker::new(100);
        for i in 0..10_000u32 {
            let k = i.to_string();
            t.observe(TableId(0), &[&k], &(i * 2).to_string());
        }
        assert_eq!(t.len(), 100);
        for i in 0..10_000u32 {
            let k = i.to_string();
            let want = (i * 2).to_string();
            match t.expected(TableId(0), &[&k]) {
                None => {}
                Some(v) => assert_eq!(v, want),
            }
        }
    }

    #[test]
    fn rows_are_counted_per_table() {
        let mut t = Tracker::new(2);
        assert!(!t.tracks_table(TableId(3)));
        t.observe(TableId(3), &["1"], "5");
        t.observe(TableId(3), &["1"], "6"); // the same row again
        t.observe(TableId(12), &["1"], "5");
        assert!(t.tracks_table(TableId(3)) && t.tracks_table(TableId(12)));
        t.forget(TableId(3), &["1"]);
        assert!(!t.tracks_table(TableId(3)));
        t.forget(TableId(3), &["1"]); // not tracked: nothing to count down
        t.observe(TableId(3), &["2"], "1");
        t.observe(TableId(4), &["2"], "1"); // the limit drops table 12's row
        assert!(!t.tracks_table(TableId(12)), "a dropped row is counted out");
        assert!(t.tracks_table(TableId(3)) && t.tracks_table(TableId(4)));
        assert_eq!(t.expected(TableId(12), &["1"]), None);
        t.clear();
        assert!(!t.tracks_table(TableId(3)) && !t.tracks_table(TableId(4)));
    }

    #[test]
    fn a_table_s_rows_are_listed_most_recent_first() {
        let mut t = Tracker::new(10);
        t.observe(TableId(1), &["a:1:b"], "1");
        t.observe(TableId(2), &["x"], "9");
        t.observe(TableId(1), &["", "c"], "2");
        t.observe(TableId(1), &["3"], "3");
        let rows = t.table_rows(TableId(1), 10);
        let want = |k: &[&str], v: &str| (k.iter().map(|s| s.to_string()).collect(), v.into());
        assert_eq!(
            rows,
            vec![
                want(&["3"], "3"),
                want(&["", "c"], "2"),
                want(&["a:1:b"], "1")
            ]
        );
        assert_eq!(t.table_rows(TableId(1), 1).len(), 1);
        assert!(t.table_rows(TableId(3), 10).is_empty());
    }

    #[test]
    fn clear_forgets_everything() {
        let mut t = Tracker::new(0);
        assert_eq!(t.limit(), 1);
        t.observe(TableId(0), &["1"], "a");
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.expected(TableId(0), &["1"]), None);
    }
}
