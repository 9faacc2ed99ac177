//! The prefilter: a cheap scan that tells which texts may touch a guarded table.
//!
//! One Aho-Corasick automaton (ASCII case-insensitive) holds the bare name of every guarded
//! table and the words that start a write (`update`, `delete`, `merge`, `insert`). A text that
//! lacks either kind of match cannot write a guarded table and never reaches the parser. The
//! scan is substring-based on purpose (a `U&"` identifier counts as a name: its escapes may
//! spell one): a false positive only costs a parse, a false negative
//! would let a write through unguarded.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::config::Guard;

/// Words whose presence means a statement may write.
const WRITE_WORDS: [&str; 4] = ["update", "delete", "merge", "insert"];

#[derive(Debug)]
pub struct Prefilter {
    /// Patterns `0..names` are table names, the rest are [`WRITE_WORDS`].
    automaton: Option<AhoCorasick>,
    names: usize,
}

impl Prefilter {
    pub fn new(guards: &[Guard]) -> Prefilter {
        if guards.is_empty() {
            return Prefilter {
                automaton: None,
                names: 0,
            };
        }
        let mut patterns: Vec<String> = Vec::new();
        for g in guards {
            patterns.push(g.table.name.clone());
            // A name with a double quote is written with the quote doubled inside `"..."`.
            if g.table.name.contains('"') {
                patterns.push(g.table.name.replace('"', "\"\""));
            }
        }
        // A `U&"..."` identifier may spell any name with escapes: it counts as a name.
        patterns.push("u&\"".to_string());
        let names = patterns.len();
        patterns.extend(WRITE_WORDS.iter().map(|w| w.to_string()));
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .expect("table names and write words form a valid automaton");
        Prefilter {
            automaton: Some(automaton),
            names,
        }
    }

    /// True when `sql` contains the bare name of a guarded table and a write word.
    pub fn may_write_guarded(&self, sql: &[u8]) -> bool {
        let Some(ac) = &self.automaton else {
            return false;
        };
        let (mut name, mut word) = (false, false);
        for m in ac.find_overlapping_iter(sql) {
            if m.pattern().as_usize() < self.names {
                name = true;
            } else {
                word = true;
            }
            if name && word {
                return true;
            }
        }
        false
    }

    /// True when `sql` contains the bare name of a guarded table.
    pub fn names_guarded(&self, sql: &[u8]) -> bool {
        let Some(ac) = &self.automaton else {
            return false;
        };
        ac.find_overlapping_iter(sql)
            .any(|m| m.pattern().as_usize() < self.names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BulkPolicy, TableName, UnversionedPolicy, VersionKind};

    fn guard(name: &str) -> Guard {
        Guard {
            table: TableName {
                schema: "public".into(),
                name: name.into(),
            },
            key: vec!["id".into()],
            version: "version".into(),
            kind: VersionKind::Counter,
            unversioned: UnversionedPolicy::Allow,
            bulk: BulkPolicy::Bump,
        }
    }

    #[test]
    fn no_guards_never_match() {
        let p = Prefilter::new(&[]);
        assert!(!p.may_write_guarded(b"UPDATE invoice SET a = 1"));
        assert!(!p.names_guarded(b"invoice"));
    }

    #[test]
    fn needs_a_name_and_a_write_word() {
        let p = Prefilter::new(&[guard("invoice"), guard("tabSales Invoice")]);
        assert!(p.may_write_guarded(b"UPDATE invoice SET a = 1"));
        assert!(p.may_write_guarded(b"delete from PUBLIC.INVOICE"));
        assert!(p.may_write_guarded(b"MeRgE INTO Invoice t USING s ON true"));
        assert!(p.may_write_guarded(b"insert into invoice values (1) on conflict (id) do nothing"));
        assert!(p.may_write_guarded(b"UPDATE \"tabSales Invoice\" SET grand_total = 10"));
        assert!(!p.may_write_guarded(b"SELECT * FROM invoice"));
        assert!(!p.may_write_guarded(b"UPDATE customer SET a = 1"));
        assert!(!p.may_write_guarded(b"BEGIN"));
        assert!(!p.may_write_guarded(b""));
        assert!(p.names_guarded(b"select * from INVOICE"));
        assert!(p.names_guarded(b"select * from \"TABSALES invoice\""));
        assert!(!p.names_guarded(b"UPDATE customer SET a = 1"));
    }

    #[test]
    fn overlapping_name_and_word_both_count() {
        // The table name contains a write word: both must still be seen.
        let p = Prefilter::new(&[guard("update_log")]);
        assert!(p.may_write_guarded(b"UPDATE update_log SET a = 1"));
        assert!(
            p.may_write_guarded(b"update_log"),
            "the name contains `update`"
        );
        assert!(!p.may_write_guarded(b"SELECT 1 FROM update_lo"));
        let p = Prefilter::new(&[guard("inv")]);
        assert!(p.may_write_guarded(b"DELETE FROM inv"));
    }

    #[test]
    fn unicode_escaped_identifiers_count_as_names() {
        let p = Prefilter::new(&[guard("invoice")]);
        assert!(p.may_write_guarded(b"UPDATE U&\"\\0069nvoice\" SET a = 1"));
        assert!(p.may_write_guarded(b"delete from u&\"x\""));
        assert!(!p.may_write_guarded(b"SELECT U&\"x\""));
    }

    #[test]
    fn doubled_quotes_in_a_name_are_found() {
        let p = Prefilter::new(&[guard("a\"b")]);
        assert!(p.names_guarded(b"UPDATE \"a\"\"b\" SET x = 1"));
        assert!(p.may_write_guarded(b"UPDATE \"a\"\"b\" SET x = 1"));
    }
}
