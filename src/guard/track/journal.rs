//! The tracker's journal: what each change of the tracked versions replaced, so that what a
//! session learned inside a transaction or savepoint that did not commit can be undone.
//!
//! Entries are appended as the tracker changes ([`Entry::Added`] for a row it did not track,
//! [`Entry::Was`] for a row whose version changed or that was dropped) with a [`Entry::Mark`]
//! for each savepoint. Keys and versions are [`SmolStr`]s (a short one is held inline, a long
//! one shared), and a replaced version is moved here, so journaling a change allocates nothing
//! beyond the entry itself. The journal holds at most `limit` entries (twice the tracker's);
//! beyond that it stops recording and says so ([`Journal::overflowed`]): the tracker then
//! forgets everything instead of undoing.

use smol_str::SmolStr;

/// Entries whose room the journal keeps between transactions.
const KEPT_ROOM: usize = 256;

/// One journaled change, or a savepoint.
#[derive(Debug)]
pub(super) enum Entry {
    /// The row was not tracked before.
    Added(SmolStr),
    /// The row was tracked with this version before.
    Was(SmolStr, SmolStr),
    /// A savepoint, by its name as PostgreSQL folds it (`None` when unknown).
    Mark(Option<Box<str>>),
}

/// The changes made since the last commit point.
#[derive(Debug)]
pub(super) struct Journal {
    pub(super) entries: Vec<Entry>,
    /// Entries were left out (the journal was full): undoing is not exact.
    pub(super) overflowed: bool,
    limit: usize,
}

impl Journal {
    pub(super) fn new(limit: usize) -> Journal {
        Journal {
            entries: Vec::new(),
            overflowed: false,
            limit: limit.max(1),
        }
    }

    /// Records an entry, unless the journal is full.
    #[inline]
    pub(super) fn record(&mut self, e: Entry) {
        if self.overflowed {
            return;
        }
        if self.entries.len() >= self.limit {
            self.overflowed = true;
            return;
        }
        self.entries.push(e);
    }

    /// Index of the most recent savepoint named `name`.
    pub(super) fn mark(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .rposition(|e| matches!(e, Entry::Mark(Some(n)) if &**n == name))
    }

    /// Forgets every entry (a commit point).
    pub(super) fn reset(&mut self) {
        if !self.entries.is_empty() {
            self.entries.clear();
            // A large transaction's room is given back; a small one's is kept for the next.
            if self.entries.capacity() > KEPT_ROOM {
                self.entries.shrink_to(KEPT_ROOM);
            }
        }
        self.overflowed = false;
    }
}
