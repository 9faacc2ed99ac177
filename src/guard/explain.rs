//! `EXPLAIN`, read from its tokens: whether it runs the statement it explains (`ANALYZE`, in
//! any of PostgreSQL's spellings) and where that statement starts.
//!
//! PostgreSQL accepts `EXPLAIN ANALYZE [VERBOSE] stmt`, `EXPLAIN ANALYSE ...` and an option
//! list, `EXPLAIN (ANALYZE, FORMAT JSON) stmt`, whose `ANALYZE` (or `ANALYSE`, or `"analyze"`)
//! takes an optional boolean: nothing, `true`/`on`/`1` or `false`/`off`/`0`, as a word, a
//! quoted name or a string, in any case. The last `ANALYZE` option wins, and one whose value
//! is not a boolean makes the server refuse the statement before it runs. Whatever this file
//! cannot read for sure counts as `ANALYZE` on: the guarded write it explains is refused.

use sqlparser::tokenizer::{Token, TokenWithSpan};

use super::lex::is_trivia;

/// Whether an `EXPLAIN` runs its statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Analyze {
    /// Plans only: nothing runs.
    Off,
    /// Runs the statement (or may: a spelling this file cannot read for sure).
    On,
    /// An `ANALYZE` option with a value that is not a boolean: the server refuses the
    /// statement before running it.
    Invalid,
}

/// An `EXPLAIN` statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Explain {
    pub(super) analyze: Analyze,
    /// Index (in the statement's tokens) of the first token of the explained statement.
    pub(super) inner: usize,
}

/// The `EXPLAIN` that `toks` (one statement's tokens, as the parser is given them) is, if any.
pub(super) fn explain(toks: &[TokenWithSpan]) -> Option<Explain> {
    let sig = |from: usize| (from..toks.len()).find(|&j| !is_trivia(&toks[j].token));
    let word = |i: usize, w: &str| matches!(&toks[i].token, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    let first = sig(0)?;
    if !word(first, "explain") {
        return None;
    }
    let Some(next) = sig(first + 1) else {
        return Some(Explain {
            analyze: Analyze::Off,
            inner: toks.len(),
        });
    };
    if word(next, "analyze") || word(next, "analyse") {
        let after = sig(next + 1).unwrap_or(toks.len());
        let inner = match after < toks.len() && word(after, "verbose") {
            true => after + 1,
            false => after,
        };
        return Some(Explain {
            analyze: Analyze::On,
            inner,
        });
    }
    if word(next, "verbose") {
        return Some(Explain {
            analyze: Analyze::Off,
            inner: next + 1,
        });
    }
    if matches!(toks[next].token, Token::LParen) && is_option_list(toks, sig(next + 1)) {
        return Some(option_list(toks, next));
    }
    Some(Explain {
        analyze: Analyze::Off,
        inner: next,
    })
}

/// Whether the `(` after `EXPLAIN` opens an option list (its first token is `first`), not a
/// parenthesised `SELECT`: an option name is never a reserved word that starts a query.
fn is_option_list(toks: &[TokenWithSpan], first: Option<usize>) -> bool {
    let Some(first) = first else {
        return true;
    };
    match &toks[first].token {
        Token::Word(w) if w.quote_style.is_none() => !["select", "with", "values", "table"]
            .iter()
            .any(|k| w.value.eq_ignore_ascii_case(k)),
        Token::LParen => false,
        _ => true,
    }
}

/// Reads the option list whose `(` is token `open`.
fn option_list(toks: &[TokenWithSpan], open: usize) -> Explain {
    let mut analyze = Analyze::Off;
    let mut invalid = false;
    // A nested parenthesis is no option PostgreSQL accepts: read as on, to be safe.
    let mut nested = false;
    let mut option: Vec<&Token> = Vec::new();
    let mut i = open + 1;
    loop {
        let Some(t) = toks.get(i).map(|t| &t.token) else {
            // No closing parenthesis: the server rejects the text.
            return Explain {
                analyze: Analyze::On,
                inner: toks.len(),
            };
        };
        i += 1;
        match t {
            Token::Comma | Token::RParen => {
                match option_value(&option) {
                    None => {}
                    Some(Analyze::Invalid) => invalid = true,
                    Some(v) => analyze = v,
                }
                option.clear();
                if matches!(t, Token::RParen) {
                    break;
                }
            }
            t if is_trivia(t) => {}
            Token::LParen => nested = true,
            t => option.push(t),
        }
    }
    let analyze = match (nested, invalid) {
        (true, _) => Analyze::On,
        (false, true) => Analyze::Invalid,
        (false, false) => analyze,
    };
    Explain { analyze, inner: i }
}

/// What one option (its tokens, comments left out) says of `ANALYZE`; `None` for another
/// option.
fn option_value(option: &[&Token]) -> Option<Analyze> {
    let (name, arg) = option.split_first()?;
    let named_analyze = match name {
        Token::Word(w) => {
            w.value.eq_ignore_ascii_case("analyze") || w.value.eq_ignore_ascii_case("analyse")
        }
        // A nested parenthesis, a string: not an option this file knows how to read.
        _ => true,
    };
    if !named_analyze {
        return None;
    }
    Some(match arg {
        [] => Analyze::On,
        [Token::Word(w)] => boolean(&w.value),
        [Token::SingleQuotedString(s)] if !s.contains('\\') => boolean(s),
        [Token::DollarQuotedString(s)] => boolean(&s.value),
        [Token::Number(n, false)] => integer(n, false),
        [Token::Minus, Token::Number(n, false)] => integer(n, true),
        [Token::Plus, Token::Number(n, false)] => integer(n, false),
        _ => Analyze::On,
    })
}

/// A boolean written as a word or a string: PostgreSQL compares it with `true`, `false`,
/// `on` and `off` ignoring case.
fn boolean(s: &str) -> Analyze {
    if ["false", "off"].iter().any(|b| s.eq_ignore_ascii_case(b)) {
        Analyze::Off
    } else if ["true", "on"].iter().any(|b| s.eq_ignore_ascii_case(b)) || !s.is_ascii() {
        // Case folding beyond ASCII depends on the server's locale.
        Analyze::On
    } else {
        Analyze::Invalid
    }
}

/// A boolean written as a number: the integers 0 and 1 (signs and leading zeros allowed);
/// any other plain decimal is refused by the server. Other spellings (hexadecimal,
/// underscores) count as on.
fn integer(n: &str, negative: bool) -> Analyze {
    if !n.bytes().all(|b| b.is_ascii_digit()) {
        let decimal = n
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E'));
        return if decimal && n.bytes().any(|b| b.is_ascii_digit()) {
            Analyze::Invalid
        } else {
            Analyze::On
        };
    }
    match n.trim_start_matches('0') {
        "" => Analyze::Off,
        "1" if !negative => Analyze::On,
        _ => Analyze::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::lex::Lexed;

    fn of(sql: &str) -> Option<(Analyze, String)> {
        let lexed = Lexed::new(sql).unwrap();
        let toks = lexed.parser_tokens(&(0..lexed.toks.len()));
        explain(&toks).map(|e| {
            let rest: String = toks[e.inner..]
                .iter()
                .map(|t| t.token.to_string())
                .collect();
            (e.analyze, rest.trim().to_string())
        })
    }

    fn analyze(sql: &str) -> Analyze {
        of(sql).unwrap_or_else(|| panic!("{sql}: not an EXPLAIN")).0
    }

    #[test]
    fn every_spelling_of_analyze_runs_the_statement() {
        for sql in [
            "EXPLAIN ANALYZE UPDATE t SET a = 1",
            "explain analyse update t set a = 1",
            "EXPLAIN ANALYZE VERBOSE UPDATE t SET a = 1",
            "EXPLAIN /* c */ ANALYSE -- x\n UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE) UPDATE t SET a = 1",
            "EXPLAIN (ANALYSE) UPDATE t SET a = 1",
            "EXPLAIN (analyze true) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE ON) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE 1) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE +1) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE 001) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE 'On') UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE \"TRUE\") UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE $$on$$) UPDATE t SET a = 1",
            "EXPLAIN (FORMAT JSON, ANALYSE) UPDATE t SET a = 1",
            "EXPLAIN ( /* a */ \"analyze\" /* b */ , costs off) UPDATE t SET a = 1",
            "EXPLAIN (U&\"an\\0061lyze\") UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE off, ANALYZE) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE E'of\\146') UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE 0x1) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE $1) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE UPDATE t SET a = 1",
        ] {
            assert_eq!(analyze(sql), Analyze::On, "{sql}");
        }
    }

    #[test]
    fn analyze_switched_off_or_absent_plans_only() {
        for sql in [
            "EXPLAIN UPDATE t SET a = 1",
            "EXPLAIN VERBOSE UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE false) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE OFF) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE 0) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE -0) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE 'Off') UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE \"false\") UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE, ANALYZE off) UPDATE t SET a = 1",
            "EXPLAIN (COSTS off, FORMAT JSON) UPDATE t SET a = 1",
            "EXPLAIN (SELECT 1)",
        ] {
            assert_eq!(analyze(sql), Analyze::Off, "{sql}");
        }
        assert_eq!(of("UPDATE t SET a = 1"), None);
        assert_eq!(of("SELECT explain FROM t"), None);
    }

    #[test]
    fn a_value_that_is_not_a_boolean_is_the_servers_error() {
        for sql in [
            "EXPLAIN (ANALYZE 'yes') UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE maybe) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE 2) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE -1) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE 1.0) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE on, ANALYZE 'nope') UPDATE t SET a = 1",
        ] {
            assert_eq!(analyze(sql), Analyze::Invalid, "{sql}");
        }
    }

    #[test]
    fn the_explained_statement_starts_after_the_options() {
        let (_, inner) = of("EXPLAIN (ANALYZE, FORMAT JSON) UPDATE t SET a = 1").unwrap();
        assert_eq!(inner, "UPDATE t SET a = 1");
        let (_, inner) = of("EXPLAIN ANALYZE VERBOSE DELETE FROM t").unwrap();
        assert_eq!(inner, "DELETE FROM t");
        let (_, inner) = of("EXPLAIN (SELECT 1)").unwrap();
        assert_eq!(inner, "(SELECT 1)");
    }
}
