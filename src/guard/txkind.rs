//! What a transaction-control statement does to the transaction block of a multi-statement
//! simple `Query` ([`TxKind`]), told from its first words.
//!
//! PostgreSQL runs the statements of such a `Query` in one *implicit* transaction block, and
//! treats transaction control there differently from inside `BEGIN ... COMMIT`: `BEGIN` turns
//! the block explicit, `COMMIT`, `ROLLBACK` and `PREPARE TRANSACTION` end it with a warning,
//! and savepoints and `AND CHAIN` fail. The engine reproduces that when it runs such a text
//! step by step (see `engine::guarded::block`).

use std::ops::Range;

use super::lex::Lexed;

/// A transaction-control statement, by what it does in an implicit transaction block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKind {
    /// `BEGIN`, `START TRANSACTION` (with any modes): the block becomes explicit.
    Begin,
    /// `COMMIT`, `END` (optionally `AND NO CHAIN`): commits the block, warning that no
    /// transaction was in progress.
    Commit,
    /// `ROLLBACK`, `ABORT` (optionally `AND NO CHAIN`): rolls the block back, with the same
    /// warning.
    Rollback,
    /// `PREPARE TRANSACTION 'gid'`: prepares the block, with the same warning.
    Prepare,
    /// `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`, and `COMMIT`/`ROLLBACK ... AND CHAIN`: an error
    /// ("... can only be used in transaction blocks") that rolls the block back.
    BlockOnly,
}

/// The kind of the transaction-control statement `sql` (one statement); `None` for any other
/// statement, `COMMIT PREPARED` and `ROLLBACK PREPARED` included (they end no transaction of
/// the session), and for a text the lexer rejects.
pub fn tx_kind(sql: &str) -> Option<TxKind> {
    let lexed = Lexed::new(sql).ok()?;
    lexed.tx_kind(&(0..lexed.toks.len()))
}

impl Lexed<'_> {
    /// The kind of the transaction-control statement in tokens `r`.
    pub(super) fn tx_kind(&self, r: &Range<usize>) -> Option<TxKind> {
        let words: Vec<usize> = (r.start..r.end)
            .filter(|&i| !super::lex::is_trivia(self.token(i)))
            .take(6)
            .collect();
        let is = |n: usize, w: &str| words.get(n).is_some_and(|&i| self.is_word(i, w));
        let first = *words.first()?;
        if self.is_word(first, "begin") {
            return (!is(1, "atomic")).then_some(TxKind::Begin);
        }
        if self.is_word(first, "start") {
            return is(1, "transaction").then_some(TxKind::Begin);
        }
        if self.is_word(first, "prepare") {
            return is(1, "transaction").then_some(TxKind::Prepare);
        }
        if self.is_word(first, "savepoint") || self.is_word(first, "release") {
            return Some(TxKind::BlockOnly);
        }
        let commit = self.is_word(first, "commit") || self.is_word(first, "end");
        if !commit && !self.is_word(first, "rollback") && !self.is_word(first, "abort") {
            return None;
        }
        // `[WORK | TRANSACTION]`, then `PREPARED`, `TO [SAVEPOINT]` or `AND [NO] CHAIN`.
        let next = if is(1, "work") || is(1, "transaction") {
            2
        } else {
            1
        };
        if is(next, "prepared") {
            return None;
        }
        if is(next, "to") || is(next, "and") && is(next + 1, "chain") {
            return Some(TxKind::BlockOnly);
        }
        Some(if commit {
            TxKind::Commit
        } else {
            TxKind::Rollback
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_their_first_words() {
        for (sql, kind) in [
            ("BEGIN", Some(TxKind::Begin)),
            (
                "begin work isolation level serializable",
                Some(TxKind::Begin),
            ),
            ("START TRANSACTION READ ONLY", Some(TxKind::Begin)),
            ("BEGIN ATOMIC", None),
            ("start", None),
            ("COMMIT", Some(TxKind::Commit)),
            ("end transaction", Some(TxKind::Commit)),
            ("Commit /* c */ Work And No Chain", Some(TxKind::Commit)),
            ("COMMIT AND CHAIN", Some(TxKind::BlockOnly)),
            ("end -- c\n and chain", Some(TxKind::BlockOnly)),
            ("COMMIT PREPARED 'x'", None),
            ("ROLLBACK", Some(TxKind::Rollback)),
            ("abort work", Some(TxKind::Rollback)),
            ("ROLLBACK TRANSACTION AND NO CHAIN", Some(TxKind::Rollback)),
            ("ROLLBACK AND CHAIN", Some(TxKind::BlockOnly)),
            ("abort and chain", Some(TxKind::BlockOnly)),
            ("ROLLBACK TO x", Some(TxKind::BlockOnly)),
            ("rollback work to savepoint x", Some(TxKind::BlockOnly)),
            ("ROLLBACK PREPARED 'x'", None),
            ("SAVEPOINT x", Some(TxKind::BlockOnly)),
            ("RELEASE SAVEPOINT x", Some(TxKind::BlockOnly)),
            ("release x", Some(TxKind::BlockOnly)),
            ("PREPARE TRANSACTION 'x'", Some(TxKind::Prepare)),
            ("PREPARE q AS SELECT 1", None),
            ("\"commit\"", None),
            ("SELECT 1", None),
            ("", None),
        ] {
            assert_eq!(tx_kind(sql), kind, "{sql}");
        }
    }
}
