//! Undoing what a transaction or savepoint that did not commit taught the [`Tracker`]: the
//! journal's entries replayed backwards ([`Tracker::rollback`], [`Tracker::rollback_to`]),
//! or dropped at a commit point ([`Tracker::commit`]).

use smol_str::SmolStr;

use super::journal::Entry;
use super::tracker::{Tracker, table_of};

impl Tracker {
    /// A savepoint was set (`name` as PostgreSQL folds it; `None` when unknown).
    pub fn savepoint(&mut self, name: Option<&str>) {
        self.journal.record(Entry::Mark(name.map(Into::into)));
    }

    /// `RELEASE SAVEPOINT name`: the savepoint and those set after it are gone; their changes
    /// belong to the enclosing level. False when the savepoint is unknown.
    pub fn release(&mut self, name: &str) -> bool {
        let Some(at) = self.journal.mark(name) else {
            return false;
        };
        let mut i = 0;
        self.journal.entries.retain(|e| {
            let keep = i < at || !matches!(e, Entry::Mark(_));
            i += 1;
            keep
        });
        true
    }

    /// `ROLLBACK TO SAVEPOINT name`: what was learned since the savepoint is undone; the
    /// savepoint stays. False when the savepoint is unknown (nothing is undone then).
    pub fn rollback_to(&mut self, name: &str) -> bool {
        if self.journal.overflowed {
            self.forget_everything();
            return true;
        }
        let Some(at) = self.journal.mark(name) else {
            return false;
        };
        self.undo_to(at + 1);
        true
    }

    /// The transaction committed: what it learned stays.
    pub fn commit(&mut self) {
        self.journal.reset();
    }

    /// The transaction did not commit: what it learned is undone.
    pub fn rollback(&mut self) {
        if self.journal.overflowed {
            self.forget_everything();
            return;
        }
        self.undo_to(0);
        self.journal.reset();
    }

    /// Whether the transaction commits is unknown (`PREPARE TRANSACTION`, a savepoint the
    /// tracker did not see set): every row it changed is forgotten, as "nothing known" is
    /// true either way.
    pub fn forget_touched(&mut self) {
        if self.journal.overflowed {
            self.forget_everything();
            return;
        }
        let entries = std::mem::take(&mut self.journal.entries);
        for e in &entries {
            if let Entry::Added(k) | Entry::Was(k, _) = e {
                self.drop_row(k);
            }
        }
        self.journal.entries = entries;
        self.journal.entries.retain(|e| matches!(e, Entry::Mark(_)));
    }

    /// How many entries the journal holds (changes and savepoints).
    pub fn journaled(&self) -> usize {
        self.journal.entries.len()
    }

    /// Undoes the journal's entries from the last back to index `len`, which stays.
    fn undo_to(&mut self, len: usize) {
        while self.journal.entries.len() > len {
            match self.journal.entries.pop() {
                Some(Entry::Added(k)) => self.drop_row(&k),
                Some(Entry::Was(k, was)) => self.restore_row(k, was),
                Some(Entry::Mark(_)) | None => {}
            }
        }
    }

    /// Forgets everything, the journal too (undoing an incomplete journal).
    fn forget_everything(&mut self) {
        self.rows.clear();
        self.per_table.clear();
        self.journal.reset();
    }

    /// Drops a row without journaling it.
    fn drop_row(&mut self, key: &str) {
        if self.rows.pop(key).is_some()
            && let Some(table) = table_of(key)
        {
            self.count(table, -1);
        }
    }

    /// Puts a row's earlier version back without journaling it.
    fn restore_row(&mut self, key: SmolStr, was: SmolStr) {
        if let Some(v) = self.rows.get_mut(&*key) {
            *v = was;
            return;
        }
        let table = table_of(&key);
        if let Some((dropped, _)) = self.rows.push(key, was)
            && let Some(t) = table_of(&dropped)
        {
            self.count(t, -1);
        }
        if let Some(t) = table {
            self.count(t, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tracker;
    use crate::guard::TableId;

    const T: TableId = TableId(0);

    fn v(t: &mut Tracker, key: &str) -> Option<String> {
        t.expected(T, &[key]).map(str::to_string)
    }

    #[test]
    fn rollback_gives_back_what_was_known() {
        let mut t = Tracker::new(10);
        t.observe(T, &["1"], "0");
        t.commit();
        t.advance(T, &["1"], "1");
        t.observe(T, &["2"], "5");
        t.forget(T, &["1"]);
        t.observe(T, &["1"], "7");
        t.rollback();
        assert_eq!(v(&mut t, "1").as_deref(), Some("0"));
        assert_eq!(v(&mut t, "2"), None);
        assert_eq!(t.len(), 1);
        assert!(!t.tracks_table(TableId(1)));
        t.observe(T, &["2"], "5");
        t.commit();
        t.rollback();
        assert_eq!(v(&mut t, "2").as_deref(), Some("5"), "committed stays");
    }

    #[test]
    fn savepoints_nest_by_name() {
        let mut t = Tracker::new(10);
        t.observe(T, &["1"], "0");
        t.savepoint(Some("a"));
        t.advance(T, &["1"], "1");
        t.savepoint(Some("a"));
        t.advance(T, &["1"], "2");
        t.savepoint(Some("b"));
        t.advance(T, &["1"], "3");
        assert!(t.rollback_to("a"), "the most recent `a`");
        assert_eq!(v(&mut t, "1").as_deref(), Some("1"));
        t.advance(T, &["1"], "4");
        assert!(t.rollback_to("a"), "kept after ROLLBACK TO");
        assert_eq!(v(&mut t, "1").as_deref(), Some("1"));
        assert!(!t.rollback_to("b"), "gone with the rollback to `a`");
        assert!(t.release("a"));
        assert!(t.rollback_to("a"), "the outer `a`");
        assert_eq!(v(&mut t, "1").as_deref(), Some("0"));
        t.rollback();
        assert_eq!(v(&mut t, "1"), None, "read inside the transaction");
    }

    #[test]
    fn release_merges_into_the_enclosing_level() {
        let mut t = Tracker::new(10);
        t.savepoint(Some("a"));
        t.savepoint(Some("b"));
        t.observe(T, &["1"], "0");
        t.savepoint(Some("c"));
        assert!(t.release("b"));
        assert!(!t.release("c"), "released with b");
        assert!(t.rollback_to("a"));
        assert_eq!(v(&mut t, "1"), None);
        assert!(!t.release("x"));
    }

    #[test]
    fn clear_and_evictions_are_given_back() {
        let mut t = Tracker::new(3);
        t.observe(T, &["1"], "a");
        t.observe(T, &["2"], "b");
        t.observe(T, &["3"], "c");
        t.commit();
        t.observe(T, &["4"], "d"); // drops 1
        t.clear();
        assert!(t.is_empty());
        t.observe(T, &["5"], "e");
        t.rollback();
        assert_eq!(t.len(), 3);
        assert_eq!(v(&mut t, "1").as_deref(), Some("a"));
        assert_eq!(v(&mut t, "2").as_deref(), Some("b"));
        assert_eq!(v(&mut t, "3").as_deref(), Some("c"));
        assert_eq!(v(&mut t, "4"), None);
        assert_eq!(v(&mut t, "5"), None);
        t.forget_all();
        t.rollback();
        assert!(t.is_empty() && !t.tracks_table(T));
    }

    #[test]
    fn a_full_journal_forgets_instead_of_undoing() {
        let mut t = Tracker::new(3);
        t.observe(T, &["1"], "a");
        t.commit();
        for i in 0..10 {
            t.advance(T, &["1"], &i.to_string());
        }
        assert_eq!(t.journaled(), 6, "bounded by twice the limit");
        t.rollback();
        assert!(t.is_empty(), "nothing known rather than a wrong version");
        t.observe(T, &["1"], "a");
        t.commit();
        t.advance(T, &["1"], "b");
        t.forget_touched();
        assert_eq!(v(&mut t, "1"), None);
    }
}
