//! The prefilter: a cheap scan that tells which texts may touch a guarded table.
//!
//! One Aho-Corasick DFA (ASCII case-insensitive, walked by hand: a table lookup per byte) holds
//! the bare name of every guarded table, the words that start a write (`update`, `delete`,
//! `merge`, `insert`) and the words of the session commands that make a session forget what it
//! tracked (`discard`, `reset`, `deallocate`), and the words of the transaction control whose
//! statement text the session needs (`savepoint`, `release`, `rollback`: savepoint names, and
//! `ROLLBACK TO` told from `ROLLBACK`). One pass over a text tells all four. A text
//! that lacks a name or a write word cannot write a guarded table and never reaches the
//! parser. The scan is substring-based on purpose (a `U&"` identifier counts as a name: its
//! escapes may spell one): a false positive only costs a parse, a false negative would let a
//! write through unguarded.

use aho_corasick::automaton::Automaton;
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind};

use crate::config::Guard;

/// Words whose presence means a statement may write.
const WRITE_WORDS: [&str; 4] = ["update", "delete", "merge", "insert"];
/// Words of the session commands `DISCARD`, `RESET` and `DEALLOCATE`.
const SESSION_WORDS: [&str; 3] = ["discard", "reset", "deallocate"];
/// Words of `SAVEPOINT`, `RELEASE` and `ROLLBACK [TO]`.
const TX_WORDS: [&str; 3] = ["savepoint", "release", "rollback"];

/// What one scan of a text found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Found {
    /// The bare name of a guarded table (or a `U&"` identifier).
    pub name: bool,
    /// A word that starts a write.
    pub write: bool,
    /// A word that starts a session command.
    pub session: bool,
    /// A word of savepoint handling or `ROLLBACK` (see [`crate::guard::txcontrol`]).
    pub tx: bool,
}

impl Found {
    fn from_bits(bits: u8) -> Found {
        Found {
            name: bits & NAME != 0,
            write: bits & WRITE != 0,
            session: bits & SESSION != 0,
            tx: bits & TX != 0,
        }
    }

    /// A name and a write word: the text may write a guarded table.
    pub fn may_write_guarded(self) -> bool {
        self.name && self.write
    }
}

/// What a pattern tells, as bits of [`Prefilter::kinds`].
const NAME: u8 = 1;
const WRITE: u8 = 2;
const SESSION: u8 = 4;
const TX: u8 = 8;
const ALL: u8 = NAME | WRITE | SESSION | TX;

#[derive(Debug)]
pub struct Prefilter {
    /// Table names, then [`WRITE_WORDS`], [`SESSION_WORDS`] and [`TX_WORDS`].
    automaton: Option<DFA>,
    /// The kind of each pattern, by pattern index.
    kinds: Vec<u8>,
}

impl Prefilter {
    pub fn new(guards: &[Guard]) -> Prefilter {
        if guards.is_empty() {
            return Prefilter {
                automaton: None,
                kinds: Vec::new(),
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
        let mut kinds = vec![NAME; patterns.len()];
        patterns.extend(WRITE_WORDS.iter().map(|w| w.to_string()));
        patterns.extend(SESSION_WORDS.iter().map(|w| w.to_string()));
        patterns.extend(TX_WORDS.iter().map(|w| w.to_string()));
        kinds.resize(kinds.len() + WRITE_WORDS.len(), WRITE);
        kinds.resize(kinds.len() + SESSION_WORDS.len(), SESSION);
        kinds.resize(kinds.len() + TX_WORDS.len(), TX);
        // Standard semantics and no prefilter: every match state is reported, and only match
        // states are special, so the loop in `scan` takes one branch per byte.
        let automaton = DFA::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .start_kind(aho_corasick::StartKind::Unanchored)
            .build(&patterns)
            .expect("table names and keywords form a valid automaton");
        Prefilter {
            automaton: Some(automaton),
            kinds,
        }
    }

    /// Scans `sql` once for every kind of pattern. With no guard configured nothing is found.
    pub fn scan(&self, sql: &[u8]) -> Found {
        let Some(ac) = &self.automaton else {
            return Found::default();
        };
        let Ok(mut state) = ac.start_state(Anchored::No) else {
            // Not expected with this configuration; finding everything is the safe answer.
            return Found::from_bits(ALL);
        };
        let mut bits = 0u8;
        for &b in sql {
            state = ac.next_state(Anchored::No, state, b);
            if ac.is_special(state) && ac.is_match(state) {
                // A match state reports every pattern that ends here, overlapping ones too.
                for i in 0..ac.match_len(state) {
                    bits |= self.kinds[ac.match_pattern(state, i).as_usize()];
                }
                if bits == ALL {
                    break;
                }
            }
        }
        Found::from_bits(bits)
    }

    /// True when `sql` contains the bare name of a guarded table and a write word.
    pub fn may_write_guarded(&self, sql: &[u8]) -> bool {
        self.scan(sql).may_write_guarded()
    }

    /// True when `sql` contains the bare name of a guarded table.
    pub fn names_guarded(&self, sql: &[u8]) -> bool {
        self.scan(sql).name
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
            mode: crate::config::GuardMode::Enforce,
            scope: Vec::new(),
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
    fn one_scan_tells_names_writes_and_session_commands() {
        let p = Prefilter::new(&[guard("invoice")]);
        let f = p.scan(b"UPDATE invoice SET a = 1");
        assert_eq!(
            f,
            Found {
                name: true,
                write: true,
                session: false,
                tx: false
            }
        );
        assert!(f.may_write_guarded());
        let f = p.scan(b"select 1; DEALLOCATE ALL");
        assert!(f.session && !f.name && !f.write && !f.may_write_guarded());
        assert!(p.scan(b"discard all").session);
        assert!(p.scan(b"RESET ALL").session);
        assert!(p.scan(b"ROLLBACK TO a").tx && p.scan(b"release x").tx);
        assert!(p.scan(b"SAVEPOINT a").tx && !p.scan(b"COMMIT").tx);
        assert!(p.scan(b"SELECT * FROM Invoice").name);
        assert_eq!(p.scan(b"BEGIN"), Found::default());
        assert_eq!(Prefilter::new(&[]).scan(b"DISCARD ALL"), Found::default());
    }

    /// The hand-walked automaton finds exactly what a naive case-insensitive substring search
    /// finds, overlaps and repeats included, on texts glued from names, words and noise.
    #[test]
    fn agrees_with_a_naive_substring_search() {
        // `last_update` ends in a write word: one match state reports both kinds.
        let guards = [
            guard("invoice"),
            guard("inv"),
            guard("update_log"),
            guard("a\"b"),
            guard("last_update"),
        ];
        let p = Prefilter::new(&guards);
        let pieces = [
            "INVOICE",
            "inv",
            "Update",
            "update_lo",
            "g",
            "DELETE",
            "merge",
            "insert",
            "Discard",
            "reset",
            "dealLOCATE",
            "SAVEpoint",
            "release",
            "rollBACK",
            "a\"\"b",
            "U&\"",
            " ",
            ";",
            "x",
            "in",
            "voice",
            "upd",
            "ate",
            "a",
            "\"b",
            "last_",
        ];
        let naive = |text: &str| {
            let t = text.to_ascii_lowercase();
            let any = |ws: &[&str]| ws.iter().any(|w| t.contains(w));
            Found {
                name: any(&[
                    "invoice",
                    "inv",
                    "update_log",
                    "a\"b",
                    "a\"\"b",
                    "u&\"",
                    "last_update",
                ]),
                write: any(&WRITE_WORDS),
                session: any(&SESSION_WORDS),
                tx: any(&TX_WORDS),
            }
        };
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            let mut text = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bits = seed;
            for _ in 0..(seed % 9) {
                text.push_str(pieces[(bits % pieces.len() as u64) as usize]);
                bits /= pieces.len() as u64;
            }
            assert_eq!(p.scan(text.as_bytes()), naive(&text), "{text:?}");
        }
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
