//! Transaction control in a SQL text: the `BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`
//! and `ROLLBACK TO` statements it holds, in text order, with savepoint names as PostgreSQL
//! folds them.
//!
//! The session pairs each with the command tag the server answers it with, to learn where a
//! transaction or savepoint ended and whether it committed (the tags alone do not tell
//! `ROLLBACK TO` from `ROLLBACK`, nor name a savepoint).

use sqlparser::tokenizer::Token;

use super::keywords::fold;
use super::lex::Lexed;

/// PostgreSQL truncates names to this many bytes (`NAMEDATALEN - 1`).
const NAME_LEN: usize = 63;

/// One transaction-control statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxOp {
    /// `BEGIN`, `START TRANSACTION` (tag `BEGIN` or `START TRANSACTION`).
    Begin,
    /// `COMMIT`, `END` (tag `COMMIT`, or `ROLLBACK` in a failed transaction).
    Commit,
    /// `ROLLBACK`, `ABORT` (tag `ROLLBACK`).
    Rollback,
    /// `ROLLBACK TO [SAVEPOINT] name` (tag `ROLLBACK`).
    RollbackTo(Option<Box<str>>),
    /// `SAVEPOINT name` (tag `SAVEPOINT`).
    Savepoint(Option<Box<str>>),
    /// `RELEASE [SAVEPOINT] name` (tag `RELEASE`).
    Release(Option<Box<str>>),
    /// `PREPARE TRANSACTION` (tag `PREPARE TRANSACTION`, or `ROLLBACK` in a failed one).
    Prepare,
    /// A text the lexer rejects: what it holds is unknown.
    Unknown,
}

/// Words that start a transaction-control statement.
const STARTS: [&[u8]; 9] = [
    b"savepoint",
    b"release",
    b"rollback",
    b"abort",
    b"commit",
    b"end",
    b"begin",
    b"start",
    b"prepare",
];

/// False when `sql` surely holds no transaction-control statement: no statement of it (the
/// text's start, or after a `;`) starts with one of their words. Cheap, without lexing (a `;`
/// in a literal, or a comment before a statement, only makes it say true), so that texts which
/// merely spell such a word (a column `release_date`) are not lexed each time they are sent.
pub fn may_hold_tx(sql: &[u8]) -> bool {
    let starts = std::iter::once(0).chain(
        sql.iter()
            .enumerate()
            .filter(|&(_, &b)| b == b';')
            .map(|(i, _)| i + 1),
    );
    for at in starts {
        let rest = &sql[at..];
        let rest = &rest[rest
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(rest.len())..];
        if rest.starts_with(b"/*") || rest.starts_with(b"--") {
            return true;
        }
        let word_len = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b >= 0x80))
            .unwrap_or(rest.len());
        let word = &rest[..word_len];
        if STARTS.iter().any(|w| word.eq_ignore_ascii_case(w)) {
            return true;
        }
    }
    false
}

/// The transaction-control statements of `sql`, in order (statements of other kinds, and
/// `COMMIT PREPARED` / `ROLLBACK PREPARED`, which end no transaction of this session, are left
/// out).
pub fn tx_ops(sql: &str) -> Vec<TxOp> {
    let Ok(lexed) = Lexed::new(sql) else {
        return vec![TxOp::Unknown];
    };
    lexed
        .split()
        .into_iter()
        .filter_map(|r| statement_op(&lexed, r.start, r.end))
        .collect()
}

/// The operation of the statement in tokens `start..end`.
fn statement_op(l: &Lexed<'_>, start: usize, end: usize) -> Option<TxOp> {
    let mut words = Words { l, at: start, end };
    let first = words.next()?;
    let is = |i: usize, w: &str| l.is_word(i, w);
    let op = if is(first, "begin") {
        match words.peek() {
            Some(i) if is(i, "atomic") => return None,
            _ => TxOp::Begin,
        }
    } else if is(first, "start") {
        words.next().filter(|&i| is(i, "transaction"))?;
        TxOp::Begin
    } else if is(first, "commit") || is(first, "end") {
        match words.peek() {
            Some(i) if is(i, "prepared") => return None,
            _ => TxOp::Commit,
        }
    } else if is(first, "abort") {
        TxOp::Rollback
    } else if is(first, "rollback") {
        words.skip_if(&["work", "transaction"]);
        match words.peek() {
            Some(i) if is(i, "prepared") => return None,
            Some(i) if is(i, "to") => {
                words.next();
                words.skip_if(&["savepoint"]);
                TxOp::RollbackTo(words.name())
            }
            _ => TxOp::Rollback,
        }
    } else if is(first, "savepoint") {
        TxOp::Savepoint(words.name())
    } else if is(first, "release") {
        words.skip_if(&["savepoint"]);
        TxOp::Release(words.name())
    } else if is(first, "prepare") {
        words.next().filter(|&i| is(i, "transaction"))?;
        TxOp::Prepare
    } else {
        return None;
    };
    Some(op)
}

/// The significant tokens of one statement.
struct Words<'l, 'a> {
    l: &'l Lexed<'a>,
    at: usize,
    end: usize,
}

impl Words<'_, '_> {
    fn peek(&self) -> Option<usize> {
        self.l.next_sig(self.at, self.end)
    }

    fn next(&mut self) -> Option<usize> {
        let i = self.peek()?;
        self.at = i + 1;
        Some(i)
    }

    /// Skips the next token when it is one of `words`.
    fn skip_if(&mut self, words: &[&str]) {
        if let Some(i) = self.peek()
            && words.iter().any(|w| self.l.is_word(i, w))
        {
            self.at = i + 1;
        }
    }

    /// The savepoint name that comes next, folded and truncated as PostgreSQL does; `None`
    /// when it cannot be told.
    fn name(&mut self) -> Option<Box<str>> {
        let i = self.next()?;
        let name = match self.l.token(i) {
            Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("u") => {
                // `U&"..."`: the tokenizer splits it into `U`, `&` and a quoted word.
                let amp = self
                    .next()
                    .filter(|&j| matches!(self.l.token(j), Token::Ampersand));
                let quoted = amp.and_then(|_| self.next());
                match quoted {
                    // With its `UESCAPE 'c'` clause, if any.
                    Some(q) => self.l.unicode_ident(q, self.end)?.name?,
                    None => "u".to_string(),
                }
            }
            Token::Word(w) => fold(&w.value, w.quote_style),
            _ => return None,
        };
        Some(truncate(name).into())
    }
}

/// A name cut to [`NAME_LEN`] bytes, on a character boundary.
fn truncate(mut name: String) -> String {
    if name.len() > NAME_LEN {
        let mut cut = NAME_LEN;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::TxOp::*;
    use super::*;

    fn name(s: &str) -> Option<Box<str>> {
        Some(s.into())
    }

    #[test]
    fn statements_in_order() {
        let ops = tx_ops(
            "begin; select 1; SAVEPOINT A; update t set x = 1; RELEASE sp_2;\n\
             rollback to a; ROLLBACK WORK TO SAVEPOINT \"Mixed\"\"q\"; commit and chain; \
             end; abort; rollback transaction; start transaction isolation level serializable; \
             prepare transaction 'x'; commit prepared 'x'; rollback prepared 'y'",
        );
        assert_eq!(
            ops,
            vec![
                Begin,
                Savepoint(name("a")),
                Release(name("sp_2")),
                RollbackTo(name("a")),
                RollbackTo(name("Mixed\"q")),
                Commit,
                Commit,
                Rollback,
                Rollback,
                Begin,
                Prepare,
            ]
        );
    }

    #[test]
    fn names_fold_and_truncate() {
        assert_eq!(
            tx_ops("release savepoint \"A b\"; /* c */ savepoint -- x\n Sp"),
            vec![Release(name("A b")), Savepoint(name("sp"))]
        );
        assert_eq!(
            tx_ops("savepoint U&\"d\\0061t\""),
            vec![Savepoint(name("dat"))]
        );
        assert_eq!(
            tx_ops("savepoint U&\"d!0061t\" UESCAPE '!'; rollback to \"dat\""),
            vec![Savepoint(name("dat")), RollbackTo(name("dat"))]
        );
        let long = "x".repeat(70);
        assert_eq!(
            tx_ops(&format!("savepoint {long}")),
            vec![Savepoint(name(&"x".repeat(63)))]
        );
        assert_eq!(tx_ops("savepoint"), vec![Savepoint(None)]);
    }

    #[test]
    fn cheap_check_finds_every_statement_start() {
        for sql in [
            "ROLLBACK",
            "  savepoint a",
            "select 1; Release a",
            "select 1;\n\tEND",
            "/* c */ rollback to a",
            "select 1; -- c\n commit",
            "BEGIN",
        ] {
            assert!(may_hold_tx(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT release_date FROM t",
            "select 1; select rollback_count from t",
            "UPDATE t SET savepoints = 1",
            "",
        ] {
            assert!(!may_hold_tx(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn other_statements_hold_none() {
        assert!(tx_ops("select 'rollback to a'; -- savepoint b").is_empty());
        assert!(tx_ops("create function f() returns int begin atomic select 1; end").is_empty());
        assert!(tx_ops("prepare p as select 1; start x").is_empty());
    }
}
