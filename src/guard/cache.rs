//! The analysis cache: each SQL text is analysed once per guard set, and applications that send
//! the same statements over and over hit a bounded map (least recently used dropped first).
//!
//! A lookup hashes the `&str` itself and does not allocate; only a miss stores a copy of the
//! text. The cache belongs to one session and one guard set: clear it when guards reload.

use std::borrow::Cow;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

use super::analyze::analyze;
use super::shape::{Shape, shape};
use super::{Analysis, Capture, GuardSet, PinnedRead};

/// Entries kept by [`AnalysisCache::new`].
pub const DEFAULT_CAPACITY: usize = 4096;

/// Texts longer than this are analysed every time instead of being kept (bulk `INSERT`s with
/// megabytes of `VALUES` would otherwise pin their text in memory).
pub const MAX_CACHED_TEXT: usize = 16 * 1024;

/// The analysis of a simple-protocol text, as [`AnalysisCache::get_or_analyze_simple`] finds
/// it.
#[derive(Debug)]
pub enum Simple {
    /// The analysis of the text itself.
    Text(Arc<Analysis>),
    /// The analysis of the text's shape, which the shape [trusts](Shape::trusts): its
    /// statements and their actions hold for the text, but its offsets and values are the
    /// shape's until instantiated.
    Shaped(Shape, Arc<Analysis>),
}

impl Simple {
    /// The statements and what to do with each (offsets and values may be the shape's).
    pub fn kinds(&self) -> &Analysis {
        match self {
            Simple::Text(a) | Simple::Shaped(_, a) => a,
        }
    }

    /// The analysis of the text itself.
    pub fn of_text(self, sql: &str, guards: &GuardSet) -> Arc<Analysis> {
        match self {
            Simple::Text(a) => a,
            Simple::Shaped(shape, a) => Arc::new(
                shape
                    .instantiate(&a, sql)
                    .unwrap_or_else(|| analyze(sql, guards)),
            ),
        }
    }

    /// The text's pinned reads, with the text's key values.
    pub fn reads(&self, sql: &str) -> Option<Cow<'_, [PinnedRead]>> {
        match self {
            Simple::Text(a) => Some(Cow::Borrowed(&a.reads)),
            Simple::Shaped(shape, a) => a
                .reads
                .iter()
                .map(|r| shape.instantiate_read(r, sql))
                .collect::<Option<Vec<_>>>()
                .map(Cow::Owned),
        }
    }

    /// Where the columns of `capture` (one of [`Simple::kinds`]'s) go in the text itself.
    pub fn capture_at(&self, capture: &Capture) -> Option<usize> {
        match self {
            Simple::Text(_) => Some(capture.at),
            Simple::Shaped(shape, _) => shape.map_offset(capture.at),
        }
    }
}

pub struct AnalysisCache {
    entries: LruCache<Box<str>, Arc<Analysis>>,
}

impl std::fmt::Debug for AnalysisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalysisCache")
            .field("len", &self.entries.len())
            .field("cap", &self.entries.cap())
            .finish()
    }
}

impl Default for AnalysisCache {
    fn default() -> Self {
        AnalysisCache::new()
    }
}

impl AnalysisCache {
    pub fn new() -> AnalysisCache {
        AnalysisCache::with_capacity(DEFAULT_CAPACITY)
    }

    pub fn with_capacity(capacity: usize) -> AnalysisCache {
        // The table grows with its entries (a session that runs a few statements does not
        // pay for `capacity` slots at its start and end); `capacity` only bounds it.
        let mut entries = LruCache::unbounded();
        entries.resize(NonZeroUsize::new(capacity.max(1)).expect("at least one"));
        AnalysisCache { entries }
    }

    /// The analysis of `sql` under `guards`, from the cache when it was seen before.
    pub fn get_or_analyze(&mut self, sql: &str, guards: &GuardSet) -> Arc<Analysis> {
        if let Some(hit) = self.entries.get(sql) {
            return hit.clone();
        }
        let analysis = Arc::new(analyze(sql, guards));
        if sql.len() <= MAX_CACHED_TEXT {
            self.entries.put(sql.into(), analysis.clone());
        }
        analysis
    }

    /// The analysis of a simple-protocol text. A text with constants is looked up by its
    /// [`shape`](super::shape), so texts that differ only in their constants are analysed once;
    /// `conforming` is the session's `standard_conforming_strings` (off: backslashes escape
    /// in plain strings, and the text is looked up as it is).
    pub fn get_or_analyze_simple(
        &mut self,
        sql: &str,
        guards: &GuardSet,
        conforming: bool,
    ) -> Simple {
        if conforming && let Some(shape) = shape(sql) {
            let shaped = self.get_or_analyze(&shape.text, guards);
            if shape.trusts(&shaped) {
                return Simple::Shaped(shape, shaped);
            }
        }
        Simple::Text(self.get_or_analyze(sql, guards))
    }

    /// Forgets every analysis (the guard set changed).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::guard::Action;

    fn guards(toml: &str) -> Arc<GuardSet> {
        GuardSet::new(&Config::parse(toml, "test.toml").unwrap())
    }

    const INVOICE: &str = "[[guard]]\ntable = \"public.invoice\"\nkey = [\"id\"]\n";

    #[test]
    fn a_text_is_analysed_once() {
        let g = guards(INVOICE);
        let mut cache = AnalysisCache::new();
        let sql = "UPDATE invoice SET total = 1 WHERE id = 1";
        let a = cache.get_or_analyze(sql, &g);
        let b = cache.get_or_analyze(&String::from(sql), &g);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.len(), 1);
        assert!(matches!(a.statements[0].action, Action::Write(_)));
        let c = cache.get_or_analyze("SELECT 1", &g);
        assert!(c.passes_unchanged());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn texts_differing_in_constants_share_one_analysis() {
        let g = guards(INVOICE);
        let mut cache = AnalysisCache::new();
        for id in 1..=50 {
            let sql = format!("UPDATE invoice SET total = total + {id} WHERE id = {id}");
            let a = cache
                .get_or_analyze_simple(&sql, &g, true)
                .of_text(&sql, &g);
            let Action::Write(w) = &a.statements[0].action else {
                panic!("{sql}: not a guarded write");
            };
            assert_eq!(
                w.target,
                crate::guard::Target::Key(vec![crate::guard::ValueRef::Literal(id.to_string())])
            );
        }
        assert_eq!(cache.len(), 1, "one shape for all fifty texts");
        // Without standard_conforming_strings each text is its own entry.
        cache.get_or_analyze_simple("UPDATE invoice SET total = 1 WHERE id = 2", &g, false);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn clear_forgets_analyses_made_under_old_guards() {
        let mut cache = AnalysisCache::new();
        let sql = "UPDATE invoice SET total = 1 WHERE id = 1";
        let a = cache.get_or_analyze(sql, &guards(""));
        assert!(a.passes_unchanged());
        cache.clear();
        assert!(cache.is_empty());
        let b = cache.get_or_analyze(sql, &guards(INVOICE));
        assert!(!b.passes_unchanged());
    }

    #[test]
    fn bounded_least_recently_used_first() {
        let g = guards(INVOICE);
        let mut cache = AnalysisCache::with_capacity(2);
        let one = cache.get_or_analyze("SELECT 1", &g);
        let two = cache.get_or_analyze("SELECT 2", &g);
        cache.get_or_analyze("SELECT 1", &g); // now the most recent
        cache.get_or_analyze("SELECT 3", &g); // drops SELECT 2
        assert_eq!(cache.len(), 2);
        assert!(Arc::ptr_eq(&one, &cache.get_or_analyze("SELECT 1", &g)));
        assert!(!Arc::ptr_eq(&two, &cache.get_or_analyze("SELECT 2", &g)));
    }

    #[test]
    fn long_texts_are_not_kept() {
        let g = guards(INVOICE);
        let mut cache = AnalysisCache::new();
        let sql = format!("SELECT '{}'", "x".repeat(MAX_CACHED_TEXT));
        let a = cache.get_or_analyze(&sql, &g);
        assert_eq!(a.statements.len(), 1);
        assert!(cache.is_empty());
    }
}
