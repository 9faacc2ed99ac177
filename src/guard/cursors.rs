//! Cursor names in statement texts: which cursor a `FETCH` reads, and which cursor names the
//! statements of a text declare or close. The session keeps the cursors declared with a
//! captured query by name (see [`crate::guard::capture`]); a name declared again or closed by
//! any statement must stop carrying the proxy's columns.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Span, Token, Tokenizer, Word};

use super::keywords::fold_ident;

/// What a statement does to cursor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorTouch {
    /// `DECLARE name ...`
    Declared(String),
    /// `CLOSE name`
    Closed(String),
    /// `CLOSE ALL`, `DISCARD ALL`
    ClosedAll,
}

impl CursorTouch {
    /// True when it declares or closes `name`.
    pub fn touches(&self, name: &str) -> bool {
        match self {
            CursorTouch::Declared(n) | CursorTouch::Closed(n) => n == name,
            CursorTouch::ClosedAll => true,
        }
    }
}

/// True when a text of one statement may declare or close cursors: its first word (after
/// white space and comments) is `DECLARE`, `CLOSE` or `DISCARD`. One look at the text's start.
pub fn may_touch_cursors(sql: &[u8]) -> bool {
    let mut s = sql;
    loop {
        s = s.trim_ascii_start();
        if let Some(rest) = s.strip_prefix(b"--") {
            s = match rest.iter().position(|&b| b == b'\n') {
                Some(at) => &rest[at + 1..],
                None => return false,
            };
        } else if let Some(rest) = s.strip_prefix(b"/*") {
            s = match rest.windows(2).position(|w| w == b"*/") {
                Some(at) => &rest[at + 2..],
                None => return false,
            };
        } else {
            break;
        }
    }
    let word = s
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .map_or(s, |end| &s[..end]);
    [&b"declare"[..], b"close", b"discard"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

/// The cursor a text of one `FETCH` statement reads from (its name as PostgreSQL folds it):
/// `FETCH [direction] [FROM | IN] name`, the name always last. None for anything else (a
/// `MOVE` returns no rows; several statements are not followed).
pub fn fetched_cursor(sql: &str) -> Option<String> {
    let tokens = words(sql)?;
    let mut statements = statements(&tokens);
    let (first, rest) = statements.next()?;
    if statements.next().is_some() || !is_keyword(first, "fetch") {
        return None;
    }
    match rest.last()? {
        Token::Word(w) => Some(fold(w)),
        _ => None,
    }
}

/// The cursor names the statements of `sql` declare (`DECLARE name ...`) or close (`CLOSE
/// name`, `CLOSE ALL`, `DISCARD ALL`), in text order. Cursors opened or closed inside
/// functions are not seen. Cheap for texts that spell none of these words.
pub fn touched_cursors(sql: &str) -> Vec<CursorTouch> {
    let mut touched = Vec::new();
    if !["declare", "close", "discard"]
        .iter()
        .any(|w| contains_ignore_case(sql.as_bytes(), w.as_bytes()))
    {
        return touched;
    }
    let Some(tokens) = words(sql) else {
        return touched;
    };
    for (first, rest) in statements(&tokens) {
        let next = match rest.first() {
            Some(Token::Word(w)) => w,
            _ => continue,
        };
        let all = next.quote_style.is_none() && next.value.eq_ignore_ascii_case("all");
        if is_keyword(first, "declare") {
            touched.push(CursorTouch::Declared(fold(next)));
        } else if is_keyword(first, "close") {
            touched.push(match all {
                true => CursorTouch::ClosedAll,
                false => CursorTouch::Closed(fold(next)),
            });
        } else if is_keyword(first, "discard") && all {
            touched.push(CursorTouch::ClosedAll);
        }
    }
    touched
}

/// The tokens of `sql` without whitespace and comments; None when it does not tokenize.
fn words(sql: &str) -> Option<Vec<Token>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    Some(
        tokens
            .into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect(),
    )
}

/// Each non-empty statement of `tokens` (split at semicolons) as its first word and the
/// tokens after it; a statement that does not start with a word is left out.
fn statements(tokens: &[Token]) -> impl Iterator<Item = (&Word, &[Token])> {
    tokens
        .split(|t| *t == Token::SemiColon)
        .filter(|s| !s.is_empty())
        .filter_map(|s| match s {
            [Token::Word(w), rest @ ..] => Some((w, rest)),
            _ => None,
        })
}

fn is_keyword(w: &Word, keyword: &str) -> bool {
    w.quote_style.is_none() && w.value.eq_ignore_ascii_case(keyword)
}

fn fold(w: &Word) -> String {
    fold_ident(&w.clone().into_ident(Span::empty()))
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_names_its_cursor_last() {
        for (sql, name) in [
            ("FETCH c", Some("c")),
            ("fetch forward 2000 from \"My C\";", Some("My C")),
            ("FETCH ABSOLUTE -1 IN Cur", Some("cur")),
            ("FETCH NEXT FROM c /* why */ ;", Some("c")),
            ("/* first */ FETCH 5 c;;", Some("c")),
            ("MOVE NEXT FROM c", None),
            ("FETCH c; SELECT 1", None),
            ("SELECT fetch FROM t", None),
            ("\"fetch\" c", None),
        ] {
            assert_eq!(fetched_cursor(sql).as_deref(), name, "{sql}");
        }
    }

    #[test]
    fn declares_and_closes_are_found_in_every_statement() {
        let closed = |n: &str| CursorTouch::Closed(n.to_string());
        let declared = |n: &str| CursorTouch::Declared(n.to_string());
        for (sql, touched) in [
            ("CLOSE c;", vec![closed("c")]),
            ("close \"My C\"", vec![closed("My C")]),
            ("CLOSE ALL", vec![CursorTouch::ClosedAll]),
            ("CLOSE \"all\"", vec![closed("all")]),
            ("SELECT 1; discard all", vec![CursorTouch::ClosedAll]),
            ("DISCARD PLANS", vec![]),
            (
                "close C; Declare c BINARY cursor with hold for select 1, 2",
                vec![closed("c"), declared("c")],
            ),
            (
                "BEGIN; /* x */ DECLARE \"Q\" NO SCROLL CURSOR FOR SELECT 1; FETCH 1 FROM \"Q\"",
                vec![declared("Q")],
            ),
            ("SELECT 'close c', declare FROM t", vec![]),
            ("SELECT 1", vec![]),
        ] {
            assert_eq!(touched_cursors(sql), touched, "{sql}");
        }
    }

    #[test]
    fn a_statement_that_may_touch_cursors_starts_with_its_word() {
        for (sql, may) in [
            ("DECLARE c CURSOR FOR SELECT 1", true),
            ("  -- why\n /* a */ close c", true),
            ("Discard All", true),
            ("closed", false),
            ("SELECT 1 -- close", false),
            ("/* unterminated close", false),
            ("-- close", false),
            ("", false),
        ] {
            assert_eq!(may_touch_cursors(sql.as_bytes()), may, "{sql}");
        }
    }
}
