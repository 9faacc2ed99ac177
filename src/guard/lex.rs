//! Lexing: a SQL text's tokens with their byte ranges, split into top-level statements, and
//! the token navigation the analysis locates clauses with.
//!
//! Also the tokens the parser is given: PostgreSQL syntax sqlparser does not accept is blanked
//! to whitespace there, so every position stays where it was.

use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Whitespace};

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Word;

use super::keywords::{decode_unicode_escapes, decode_unicode_escapes_with};

/// The text's tokens with their byte ranges.
pub(super) struct Lexed<'a> {
    pub(super) text: &'a str,
    pub(super) toks: Vec<TokenWithSpan>,
    pub(super) spans: Vec<Range<usize>>,
}

impl<'a> Lexed<'a> {
    /// Tokenizes `text`; `Err` when the tokenizer rejects it.
    pub(super) fn new(text: &'a str) -> Result<Lexed<'a>, ()> {
        let toks = Tokenizer::new(&PostgreSqlDialect {}, text)
            .tokenize_with_location()
            .map_err(|_| ())?;
        let spans = byte_spans(text, &toks).ok_or(())?;
        Ok(Lexed { text, toks, spans })
    }

    pub(super) fn token(&self, i: usize) -> &Token {
        &self.toks[i].token
    }

    /// Token index ranges of the top-level statements (separators excluded).
    pub(super) fn split(&self) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut depth, mut block) = (0usize, 0i32, 0i32);
        for i in 0..self.toks.len() {
            match self.token(i) {
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen | Token::RBracket => depth -= 1,
                Token::SemiColon if depth <= 0 && block <= 0 => {
                    out.push(start..i);
                    start = i + 1;
                    depth = 0;
                    block = 0;
                }
                // `BEGIN ATOMIC ... END` (SQL-standard function bodies) holds `;`s; `CASE ... END`
                // nests inside it.
                Token::Word(_)
                    if self.is_word(i, "begin")
                        && self
                            .next_sig(i + 1, self.toks.len())
                            .is_some_and(|j| self.is_word(j, "atomic")) =>
                {
                    block += 1
                }
                Token::Word(_) if block > 0 && self.is_word(i, "case") => block += 1,
                Token::Word(_) if block > 0 && self.is_word(i, "end") => block -= 1,
                _ => {}
            }
        }
        out.push(start..self.toks.len());
        out
    }

    /// Drops surrounding whitespace (not comments); `None` when nothing but comments remain.
    pub(super) fn trim(&self, r: Range<usize>) -> Option<Range<usize>> {
        let toks = &self.toks[r.clone()];
        toks.iter().position(|t| !is_trivia(&t.token))?;
        let first = toks.iter().position(|t| !is_space(&t.token))?;
        let mut last = r.start + toks.iter().rposition(|t| !is_space(&t.token))?;
        // A trailing `--` comment keeps the newline that ends it: whatever follows the
        // statement must not land inside the comment.
        if matches!(
            self.token(last),
            Token::Whitespace(Whitespace::SingleLineComment { .. })
        ) && last + 1 < r.end
            && matches!(self.token(last + 1), Token::Whitespace(Whitespace::Newline))
        {
            last += 1;
        }
        Some(r.start + first..last + 1)
    }

    /// Token `i` is the unquoted keyword or name `word` (any case).
    pub(super) fn is_word(&self, i: usize, word: &str) -> bool {
        matches!(self.token(i), Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
    }

    /// First token at or after `i` (before `end`) that is not whitespace or a comment.
    pub(super) fn next_sig(&self, i: usize, end: usize) -> Option<usize> {
        (i..end).find(|&j| !is_trivia(self.token(j)))
    }

    /// Last token before `i` (at or after `lo`) that is not whitespace or a comment.
    pub(super) fn prev_sig(&self, i: usize, lo: usize) -> Option<usize> {
        (lo..i).rev().find(|&j| !is_trivia(self.token(j)))
    }

    /// Transaction control, decided from the first words.
    pub(super) fn tx_control(&self, r: &Range<usize>) -> bool {
        let Some(first) = self.next_sig(r.start, r.end) else {
            return false;
        };
        let second = self.next_sig(first + 1, r.end);
        let second_is = |w: &str| second.is_some_and(|j| self.is_word(j, w));
        if self.is_word(first, "start") || self.is_word(first, "prepare") {
            return second_is("transaction");
        }
        if self.is_word(first, "begin") {
            return !second_is("atomic");
        }
        ["commit", "end", "rollback", "abort", "savepoint", "release"]
            .iter()
            .any(|w| self.is_word(first, w))
    }

    /// Highest `$n` among the tokens.
    pub(super) fn max_param(&self, r: &Range<usize>) -> u16 {
        r.clone()
            .filter_map(|i| match self.token(i) {
                Token::Placeholder(p) => param_number(p),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// The tokens the parser sees: `ONLY` and a `*` after the target name, and the index
    /// predicate of `ON CONFLICT (cols) WHERE ...` (PostgreSQL syntax sqlparser does not
    /// accept) become spaces, so every position stays where it was; a `U&"..."` identifier
    /// becomes the quoted name it spells.
    pub(super) fn parser_tokens(&self, r: &Range<usize>) -> Vec<TokenWithSpan> {
        let mut out: Vec<TokenWithSpan> = self.toks[r.clone()].to_vec();
        self.decode_unicode_idents(r, &mut out);
        for i in r.clone() {
            self.blank_only(i, r, &mut out);
        }
        for i in r.clone() {
            self.blank_star(i, r, &mut out);
        }
        for i in r.clone() {
            if let Some(predicate) = self.conflict_predicate(i, r) {
                for t in &mut out[predicate.start - r.start..predicate.end - r.start] {
                    if !is_trivia(&t.token) {
                        blank(t);
                    }
                }
            }
        }
        out
    }

    /// Blanks `ONLY` at token `i` when it precedes a table name, with the parentheses or the
    /// `*` that may come with the name. `out` holds the tokens of `r`.
    fn blank_only(&self, i: usize, r: &Range<usize>, out: &mut [TokenWithSpan]) {
        if !self.is_word(i, "only") {
            return;
        }
        let Some(p) = self.prev_sig(i, r.start) else {
            return;
        };
        if !(["update", "from", "join", "using"]
            .iter()
            .any(|w| self.is_word(p, w))
            || matches!(self.token(p), Token::Comma))
        {
            return;
        }
        blank(&mut out[i - r.start]);
        // `ONLY (name)`: the parentheses only group the name; sqlparser would read them
        // as a nested join and miss the target.
        if let Some(open) = self.next_sig(i + 1, r.end)
            && matches!(self.token(open), Token::LParen)
            && let Some(name) = self.next_sig(open + 1, r.end)
            && let Some(last) = self.name_end(name, r.end)
            && let Some(close) = self.next_sig(last + 1, r.end)
            && matches!(self.token(close), Token::RParen)
        {
            blank(&mut out[open - r.start]);
            blank(&mut out[close - r.start]);
            return;
        }
        // `ONLY name *`: the `*` is a legacy spelling of the default.
        if let Some(name) = self.next_sig(i + 1, r.end)
            && let Some(last) = self.name_end(name, r.end)
            && let Some(star) = self.next_sig(last + 1, r.end)
            && matches!(self.token(star), Token::Mul)
        {
            blank(&mut out[star - r.start]);
        }
    }

    /// Blanks the `*` of `UPDATE name * SET` / `DELETE FROM name * ...` (without `ONLY`) when
    /// token `i` is that `UPDATE` or `FROM`. `out` holds the tokens of `r`.
    fn blank_star(&self, i: usize, r: &Range<usize>, out: &mut [TokenWithSpan]) {
        let delete_from = self.is_word(i, "from")
            && self
                .prev_sig(i, r.start)
                .is_some_and(|p| self.is_word(p, "delete"));
        if !(self.is_word(i, "update") || delete_from) {
            return;
        }
        if let Some(name) = self.next_sig(i + 1, r.end)
            && let Some(last) = self.name_end(name, r.end)
            && let Some(star) = self.next_sig(last + 1, r.end)
            && matches!(self.token(star), Token::Mul)
            && self
                .next_sig(star + 1, r.end)
                .is_none_or(|a| matches!(self.token(a), Token::Word(_) | Token::RParen))
        {
            blank(&mut out[star - r.start]);
        }
    }

    /// `ON CONFLICT (cols) WHERE predicate DO ...` when token `i` is that `CONFLICT`: the
    /// tokens from `WHERE` up to `DO`. The index predicate only picks the arbiter index, and
    /// sqlparser does not accept it.
    fn conflict_predicate(&self, i: usize, r: &Range<usize>) -> Option<Range<usize>> {
        if !(self.is_word(i, "conflict")
            && self
                .prev_sig(i, r.start)
                .is_some_and(|p| self.is_word(p, "on")))
        {
            return None;
        }
        let open = self.next_sig(i + 1, r.end)?;
        if !matches!(self.token(open), Token::LParen) {
            return None;
        }
        let close = self.first_at_depth_zero(open..r.end, |_| true)?;
        let where_kw = self.next_sig(close + 1, r.end)?;
        if !self.is_word(where_kw, "where") {
            return None;
        }
        let do_kw = self.first_at_depth_zero(where_kw..r.end, |j| self.is_word(j, "do"))?;
        Some(where_kw..do_kw)
    }

    /// The first token of `tokens` that leaves the parentheses balanced (counted from the
    /// first) and meets `pred`.
    fn first_at_depth_zero(
        &self,
        tokens: Range<usize>,
        pred: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut depth = 0;
        tokens.into_iter().find(|&j| {
            match self.token(j) {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                _ => {}
            }
            depth == 0 && pred(j)
        })
    }

    /// The last token of a (qualified) name starting at token `i`: `word (. word)*`.
    fn name_end(&self, i: usize, end: usize) -> Option<usize> {
        if !matches!(self.token(i), Token::Word(_)) {
            return None;
        }
        let mut last = i;
        while let Some(dot) = self.next_sig(last + 1, end)
            && matches!(self.token(dot), Token::Period)
            && let Some(word) = self.next_sig(dot + 1, end)
            && matches!(self.token(word), Token::Word(_))
        {
            last = word;
        }
        Some(last)
    }

    /// The `U&"..."` identifier whose quoted word is token `i` (the tokenizer splits it into
    /// `U`, `&` and a quoted word), with its `UESCAPE 'c'` clause if one follows before token
    /// `end`. `None` for any other token.
    pub(super) fn unicode_ident(&self, i: usize, end: usize) -> Option<UnicodeIdent> {
        let Token::Word(w) = self.token(i) else {
            return None;
        };
        w.quote_style?;
        let amp = i.checked_sub(1)?;
        let u = i.checked_sub(2)?;
        if !matches!(self.token(amp), Token::Ampersand) || !self.is_word(u, "u") {
            return None;
        }
        // No space between `U`, `&` and the quote.
        if self.spans[u].end != self.spans[amp].start || self.spans[amp].end != self.spans[i].start
        {
            return None;
        }
        let clause = self
            .next_sig(i + 1, end)
            .filter(|&k| self.is_word(k, "uescape"))
            .map(|k| (k, self.next_sig(k + 1, end)));
        let (name, uescape) = match clause {
            None => (decode_unicode_escapes(&w.value), None),
            Some((k, Some(lit))) => match self.token(lit) {
                Token::SingleQuotedString(e) if e.chars().count() == 1 => {
                    let esc = e.chars().next().expect("one char");
                    (decode_unicode_escapes_with(&w.value, esc), Some(k..lit + 1))
                }
                _ => (None, Some(k..lit + 1)),
            },
            Some((k, None)) => (None, Some(k..k + 1)),
        };
        Some(UnicodeIdent {
            prefix: u..i,
            name,
            uescape,
        })
    }

    /// Gives the parser each `U&"..."` identifier of `r` as the quoted name it spells: its
    /// `U&` and `UESCAPE` clause become spaces. One whose escapes are malformed stays as it
    /// is, and the parser rejects it.
    fn decode_unicode_idents(&self, r: &Range<usize>, out: &mut [TokenWithSpan]) {
        for i in r.clone() {
            let Some(UnicodeIdent {
                prefix,
                name: Some(name),
                uescape,
            }) = self.unicode_ident(i, r.end)
            else {
                continue;
            };
            out[i - r.start].token = Token::Word(Word {
                value: name,
                quote_style: Some('"'),
                keyword: Keyword::NoKeyword,
            });
            for j in prefix.chain(uescape.unwrap_or_default()) {
                blank(&mut out[j - r.start]);
            }
        }
    }
}

/// A `U&"..."` identifier (see [`Lexed::unicode_ident`]).
pub(super) struct UnicodeIdent {
    /// The tokens `U` and `&` before the quoted word.
    pub(super) prefix: Range<usize>,
    /// The name it spells; `None` when its escapes or its escape character are malformed
    /// (PostgreSQL rejects the text).
    pub(super) name: Option<String>,
    /// The tokens of its `UESCAPE 'c'` clause.
    pub(super) uescape: Option<Range<usize>>,
}

fn is_space(t: &Token) -> bool {
    matches!(
        t,
        Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)
    )
}

pub(super) fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

/// The number of a `$n` placeholder (`u16::MAX` when larger).
pub(super) fn param_number(p: &str) -> Option<u16> {
    let digits = p.strip_prefix('$')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        digits
            .parse::<u32>()
            .map_or(u16::MAX, |n| n.min(u16::MAX as u32) as u16),
    )
}

/// Makes a token a space for the parser.
fn blank(t: &mut TokenWithSpan) {
    t.token = Token::Whitespace(Whitespace::Space);
}

/// Byte ranges of the tokens. Locations count lines from `\n` and columns in chars; tokens are
/// contiguous, so one forward walk over the text converts them all.
fn byte_spans(text: &str, toks: &[TokenWithSpan]) -> Option<Vec<Range<usize>>> {
    let mut chars = text.char_indices();
    let (mut pos, mut line, mut col) = (0usize, 1u64, 1u64);
    let mut advance_to = |loc: Location| -> Option<usize> {
        while (line, col) < (loc.line, loc.column) {
            let (i, c) = chars.next()?;
            pos = i + c.len_utf8();
            if c == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        ((line, col) == (loc.line, loc.column)).then_some(pos)
    };
    let mut out = Vec::with_capacity(toks.len());
    for t in toks {
        let start = advance_to(t.span.start)?;
        let end = advance_to(t.span.end)?;
        out.push(start..end);
    }
    Some(out)
}
