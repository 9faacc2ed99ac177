//! Statements the tokenizer or the parser rejects: decided from their words alone, failing
//! closed (refused when they may write a guarded table).

use std::ops::Range;

use sqlparser::tokenizer::Token;

use super::keywords::fold;
use super::lex::{Lexed, is_trivia};
use super::{Action, Analysis, GuardSet, Statement};
use crate::config::{Guard, TableName};

/// A text the tokenizer rejects: one statement, refused when it may write a guarded table.
pub(super) fn untokenizable(sql: &str, guards: &GuardSet) -> Analysis {
    let start = sql.len() - sql.trim_start().len();
    let end = sql.trim_end().len();
    if start >= end {
        return Analysis {
            statements: vec![],
            reads: Vec::new(),
            read_unparsed: false,
            shared: Vec::new(),
            captures: Vec::new(),
        };
    }
    let action = if guards.prefilter.may_write_guarded(sql.as_bytes()) {
        let lower = sql.to_ascii_lowercase();
        let guard = guards
            .guards
            .iter()
            .find(|g| lower.contains(&g.table.name.to_ascii_lowercase()))
            .unwrap_or(&guards.guards[0]);
        Action::Refuse {
            table: guard.table.clone(),
            reason: cannot_parse(&guard.table),
            unparsed: true,
        }
    } else {
        let word: String = sql[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect::<String>()
            .to_ascii_lowercase();
        Action::Pass {
            tx_control: matches!(
                word.as_str(),
                "begin" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release"
            ),
        }
    };
    Analysis {
        statements: vec![Statement {
            range: start..end,
            action,
        }],
        reads: Vec::new(),
        read_unparsed: false,
        shared: Vec::new(),
        captures: Vec::new(),
    }
}

/// Why a statement that may write a guarded table and cannot be parsed is refused.
fn cannot_parse(table: &TableName) -> String {
    format!("optlock cannot parse this statement, and it may write guarded table {table}")
}

/// A statement the parser rejects: refused when it names a guarded table and a write.
pub(super) fn unparsed(
    lexed: &Lexed,
    r: &Range<usize>,
    guards: &GuardSet,
    tx_control: bool,
) -> Action {
    // DDL does not write rows: function and procedure bodies (`BEGIN ATOMIC ...`) and trigger
    // definitions run later, out of reach. A rule is refused: its actions would run unguarded.
    let mut words = r.clone().filter(|&i| !is_trivia(lexed.token(i))).take(4);
    if let Some(first) = words.next()
        && ["create", "alter", "drop", "comment", "grant", "revoke"]
            .iter()
            .any(|w| lexed.is_word(first, w))
    {
        let rule = words
            .filter(|&i| !(lexed.is_word(i, "or") || lexed.is_word(i, "replace")))
            .take(1)
            .any(|i| lexed.is_word(i, "rule"));
        if !rule {
            return Action::Pass { tx_control };
        }
    }
    let scan = Scan::new(lexed, r.clone(), guards);
    match scan.table {
        Some(g) if scan.writes => Action::Refuse {
            table: g.table.clone(),
            unparsed: !scan.current_of,
            reason: if scan.current_of {
                format!(
                    "WHERE CURRENT OF cannot carry a version check; optlock refuses it on guarded table {}",
                    g.table
                )
            } else {
                cannot_parse(&g.table)
            },
        },
        _ => Action::Pass { tx_control },
    }
}

/// What the words of an unparsed statement say about guarded writes.
struct Scan<'g> {
    /// The first guarded table named.
    table: Option<&'g Guard>,
    /// A write word (`UPDATE`, `DELETE`, `MERGE`, `INSERT`) that is not a row lock or a
    /// foreign-key action.
    writes: bool,
    /// `CURRENT OF`: a write through a cursor.
    current_of: bool,
}

impl<'g> Scan<'g> {
    /// Scans the words of the statement at tokens `r`.
    fn new(lexed: &Lexed, r: Range<usize>, guards: &'g GuardSet) -> Scan<'g> {
        let mut scan = Scan {
            table: None,
            writes: false,
            current_of: false,
        };
        for i in r.clone() {
            let Token::Word(w) = lexed.token(i) else {
                continue;
            };
            if scan.table.is_none() {
                scan.table = match lexed.unicode_ident(i, r.end) {
                    Some(u) => match u.name {
                        Some(name) => guards.guards.iter().find(|g| g.table.name == name),
                        // Malformed escapes: the name it spells is unknown.
                        None => guards.guards.first(),
                    },
                    None => {
                        let folded = fold(&w.value, w.quote_style);
                        guards.guards.iter().find(|g| g.table.name == folded)
                    }
                };
            }
            if w.quote_style.is_some() {
                continue;
            }
            if ["update", "delete", "merge", "insert"]
                .iter()
                .any(|k| w.value.eq_ignore_ascii_case(k))
            {
                // `FOR [NO KEY] UPDATE` locks rows, `ON UPDATE/DELETE` is a foreign-key action.
                let locking = lexed
                    .prev_sig(i, r.start)
                    .is_some_and(|p| ["for", "key", "on"].iter().any(|k| lexed.is_word(p, k)));
                scan.writes |= !locking;
            }
            if lexed.is_word(i, "current")
                && lexed
                    .next_sig(i + 1, r.end)
                    .is_some_and(|j| lexed.is_word(j, "of"))
            {
                scan.current_of = true;
            }
        }
        scan
    }
}
