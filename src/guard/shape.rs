//! Statement shapes: a simple-protocol text with its constants taken out.
//!
//! Applications that speak the simple protocol inline their values
//! (`UPDATE account SET balance = balance + 25 WHERE id = 7`), so nearly every text is new and
//! a cache keyed by text never hits. A shape puts a placeholder `$n` where each number or
//! plain string constant stands as an operand (after `=`, `(`, `,` or an operator). Texts that
//! differ only in those constants share one shape, hence one analysis, which
//! [`Shape::instantiate`] maps back onto the text: offsets shifted, each placeholder's value
//! read back as the literal it replaced.
//!
//! What the scan is not sure of stays in the shape as written: constants after a keyword,
//! typed literals (`DATE '...'`), escape and Unicode strings, adjacent strings that PostgreSQL
//! concatenates. A text that has placeholders of its own has no shape; nor does one read with
//! `standard_conforming_strings = off` (the caller checks). An instantiated analysis that
//! refuses a statement is not trusted: the caller analyses the text itself.

use std::ops::Range;

use smallvec::SmallVec;

use super::keywords::is_reserved;

/// A text with its operand constants replaced by `$1`, `$2`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub text: String,
    /// Inline for up to three constants: one allocation fewer per text on the usual
    /// statements.
    literals: SmallVec<[Lit; 3]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lit {
    /// The placeholder in the shape.
    shape: Range<usize>,
    /// The constant in the original text, a unary sign included.
    text: Range<usize>,
    kind: LitKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LitKind {
    Number { negative: bool },
    Quoted,
}

/// The previous token, as far as the next constant cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prev {
    /// Start of text, `(`, `,`, an operator character: an operand may follow.
    OperandSlot,
    /// A reserved keyword (`WHERE`, `AND`, `THEN`, ...): a sign after it is unary.
    Keyword,
    /// A word not looked up yet: a keyword or a name. Only a sign after it tells the two
    /// apart, so the lookup waits for one.
    Word,
    /// A column, a constant, `)`: a sign after it is a binary operator.
    Operand,
    Other,
}

/// Byte classes, one table lookup per byte (the scan runs on every simple-protocol text that
/// may touch a guarded table).
const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT: u8 = 4;
const OPERATOR: u8 = 8;

const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_whitespace() {
            t[b] |= SPACE;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            t[b] |= IDENT_START | IDENT;
        }
        if c.is_ascii_digit() || c == b'$' {
            t[b] |= IDENT;
        }
        if matches!(
            c,
            b'+' | b'-'
                | b'*'
                | b'/'
                | b'<'
                | b'>'
                | b'='
                | b'~'
                | b'!'
                | b'@'
                | b'#'
                | b'%'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
        ) {
            t[b] |= OPERATOR;
        }
        b += 1;
    }
    t
};

#[inline]
fn is_space(b: u8) -> bool {
    CLASSES[b as usize] & SPACE != 0
}

#[inline]
fn is_ident_start(b: u8) -> bool {
    CLASSES[b as usize] & IDENT_START != 0
}

#[inline]
fn is_ident_char(b: u8) -> bool {
    CLASSES[b as usize] & IDENT != 0
}

#[inline]
fn is_operator_char(b: u8) -> bool {
    CLASSES[b as usize] & OPERATOR != 0
}

/// End of a quoted token starting at `start` (`'` or `"`, the quote doubled inside; with
/// `backslash`, `\` escapes the next byte). None when it is not closed.
fn quoted_end(b: &[u8], start: usize, backslash: bool) -> Option<usize> {
    let q = b[start];
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            c if c == q => {
                if b.get(i + 1) == Some(&q) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// End of a comment starting at `i` (`--` or a nested `/* */`), if one starts there.
fn comment_end(b: &[u8], i: usize) -> Option<Option<usize>> {
    match (b[i], b.get(i + 1)) {
        (b'-', Some(b'-')) => Some(Some(
            b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p + 1),
        )),
        (b'/', Some(b'*')) => {
            let mut depth = 0usize;
            let mut j = i;
            while j + 1 < b.len() {
                match (b[j], b[j + 1]) {
                    (b'/', b'*') => {
                        depth += 1;
                        j += 2;
                    }
                    (b'*', b'/') => {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            return Some(Some(j));
                        }
                    }
                    _ => j += 1,
                }
            }
            Some(None)
        }
        _ => None,
    }
}

/// The first byte after `i` that is not whitespace or comment.
fn next_significant(b: &[u8], mut i: usize) -> Option<u8> {
    while i < b.len() {
        if is_space(b[i]) {
            i += 1;
        } else if let Some(end) = comment_end(b, i) {
            i = end?;
        } else {
            return Some(b[i]);
        }
    }
    None
}

/// End of a dollar-quoted string starting at `i` (`$tag$ ... $tag$`), or None when `$` does
/// not open one there or it is not closed, or when it is a placeholder of the text's own (`$`
/// and a digit: such a text has no shape).
fn dollar_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let tag_len = b[i + 1..].iter().position(|&c| c == b'$')?;
    let tag = &b[i..i + tag_len + 2];
    if !tag[1..tag.len() - 1]
        .iter()
        .all(|&c| is_ident_char(c) && c != b'$')
    {
        return None;
    }
    let body = i + tag.len();
    b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map(|p| body + p + tag.len())
}

/// End of a number starting at `i`: digits, a fraction, an exponent.
fn number_end(b: &[u8], mut i: usize) -> usize {
    let digits = |b: &[u8], mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    i = digits(b, i);
    if i < b.len() && b[i] == b'.' {
        i = digits(b, i + 1);
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            i = digits(b, j);
        }
    }
    i
}

/// The shape of `sql`, or None when it has no constant to take out or cannot have a shape.
pub fn shape(sql: &str) -> Option<Shape> {
    let b = sql.as_bytes();
    let mut out = Builder::new(sql);
    let mut prev = Prev::OperandSlot;
    // The token before the last one, and where a sign that may be unary started.
    let mut before_sign = Prev::Other;
    let mut sign_at: Option<usize> = None;
    // The last word, for a `Prev::Word`.
    let mut word = 0..0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if is_space(c) {
            i += 1;
            continue;
        }
        if (c == b'-' || c == b'/')
            && let Some(end) = comment_end(b, i)
        {
            i = end?;
            continue;
        }
        let sign = sign_at.take();
        let this = match c {
            b'\'' => {
                i = out.string(i, prev == Prev::OperandSlot && sign.is_none())?;
                Prev::Operand
            }
            b'"' => {
                i = quoted_end(b, i, false)?;
                Prev::Operand
            }
            b'$' => {
                i = dollar_end(b, i)?;
                Prev::Operand
            }
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                let sign = sign.filter(|_| before_sign != Prev::Operand);
                i = out.number(i, prev == Prev::OperandSlot, sign)?;
                Prev::Operand
            }
            c if is_ident_start(c) => {
                let (end, is_word) = word_end(b, i)?;
                if is_word {
                    word = i..end;
                }
                i = end;
                if is_word { Prev::Word } else { Prev::Operand }
            }
            b'(' | b',' => {
                i += 1;
                Prev::OperandSlot
            }
            b'+' | b'-' if !b.get(i + 1).copied().is_some_and(is_operator_char) => {
                sign_at = Some(i);
                before_sign = before_a_sign(prev, sql, &word);
                i += 1;
                Prev::OperandSlot
            }
            c if is_operator_char(c) => {
                i += 1;
                Prev::OperandSlot
            }
            b')' | b']' => {
                i += 1;
                Prev::Operand
            }
            _ => {
                i += 1;
                Prev::Other
            }
        };
        prev = this;
    }
    out.finish()
}

/// A word starting at `start` (a keyword or a name), or a string with a prefix glued to it:
/// `E'..'` (backslash escapes), `B'..'`, `X'..'`, `N'..'`, or a typed literal such as
/// `date'..'`, kept as written. Its end, and whether it is a word; None when the string is not
/// closed.
fn word_end(b: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut i = start;
    while i < b.len() && is_ident_char(b[i]) {
        i += 1;
    }
    if b.get(i) == Some(&b'\'') {
        let escapes = i - start == 1 && (b[start] | 0x20) == b'e';
        return Some((quoted_end(b, i, escapes)?, false));
    }
    Some((i, true))
}

/// What the token before a `+` or `-` says about it: after a reserved keyword the sign is
/// unary, after a name it is a binary operator. `word` is the last word, for a `Prev::Word`.
fn before_a_sign(prev: Prev, sql: &str, word: &Range<usize>) -> Prev {
    match prev {
        Prev::Word if is_reserved(&sql[word.clone()]) => Prev::Keyword,
        Prev::Word => Prev::Operand,
        p => p,
    }
}

/// Writes a shape as its constants are found.
struct Builder<'a> {
    sql: &'a str,
    text: String,
    literals: SmallVec<[Lit; 3]>,
    /// How much of `sql` is in `text` already.
    copied: usize,
}

impl<'a> Builder<'a> {
    fn new(sql: &'a str) -> Builder<'a> {
        Builder {
            sql,
            text: String::new(),
            literals: SmallVec::new(),
            copied: 0,
        }
    }

    /// A `'...'` string at `i`: taken out when it stands as an operand (`operand`) and is
    /// neither glued to a prefix nor continued by another string. Its end, or None when it is
    /// not closed.
    fn string(&mut self, i: usize, operand: bool) -> Option<usize> {
        let b = self.sql.as_bytes();
        let end = quoted_end(b, i, false)?;
        // `U&'...'` and `x'...'`-like prefixes are glued to the quote; a string
        // followed by another is continued by it.
        let glued = i > 0 && (is_ident_char(b[i - 1]) || b[i - 1] == b'&');
        if operand && !glued && next_significant(b, end) != Some(b'\'') {
            self.push(i..end, LitKind::Quoted)?;
        }
        Some(end)
    }

    /// A number at `i`: taken out when it stands as an operand (`operand`) and nothing is
    /// glued to it, with the unary `sign` before it if any. Its end.
    fn number(&mut self, i: usize, operand: bool, sign: Option<usize>) -> Option<usize> {
        let b = self.sql.as_bytes();
        let end = number_end(b, i);
        let glued = b.get(end).is_some_and(|&n| is_ident_char(n) || n == b'.');
        if !glued && operand {
            match sign {
                // A unary sign belongs to the constant (`id = -5`).
                Some(s) if b[s + 1..i].iter().all(|&c| is_space(c)) => self.push(
                    s..end,
                    LitKind::Number {
                        negative: b[s] == b'-',
                    },
                )?,
                Some(_) => {}
                None => self.push(i..end, LitKind::Number { negative: false })?,
            }
        }
        Some(end)
    }

    /// Replaces the constant at `range` (after any before it) by the next placeholder.
    fn push(&mut self, range: Range<usize>, kind: LitKind) -> Option<()> {
        let n = u16::try_from(self.literals.len() + 1).ok()?;
        if self.literals.is_empty() {
            self.text.reserve(self.sql.len() + 8);
        }
        self.text.push_str(&self.sql[self.copied..range.start]);
        let at = self.text.len();
        self.text.push('$');
        self.text.push_str(itoa::Buffer::new().format(n));
        self.literals.push(Lit {
            shape: at..self.text.len(),
            text: range.clone(),
            kind,
        });
        self.copied = range.end;
        Some(())
    }

    /// The shape, or None when no constant was taken out.
    fn finish(mut self) -> Option<Shape> {
        if self.literals.is_empty() {
            return None;
        }
        self.text.push_str(&self.sql[self.copied..]);
        Some(Shape {
            text: self.text,
            literals: self.literals,
        })
    }
}

mod instantiate;

#[cfg(test)]
mod tests;
