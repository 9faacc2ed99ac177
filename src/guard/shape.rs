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
use std::sync::Arc;

use super::keywords::is_reserved;
use super::{Action, Analysis, PinnedRead, Target, ValueRef};

/// A text with its operand constants replaced by `$1`, `$2`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub text: String,
    literals: Vec<Lit>,
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
/// not open one there or it is not closed.
fn dollar_end(b: &[u8], i: usize) -> Option<usize> {
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
    let mut out = Builder {
        sql,
        text: String::new(),
        literals: Vec::new(),
        copied: 0,
    };
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
        let slot_before_sign = before_sign;
        let this = match c {
            b'\'' => {
                let end = quoted_end(b, i, false)?;
                // `U&'...'` and `x'...'`-like prefixes are glued to the quote; a string
                // followed by another is continued by it.
                let glued = i > 0 && (is_ident_char(b[i - 1]) || b[i - 1] == b'&');
                if prev == Prev::OperandSlot
                    && sign.is_none()
                    && !glued
                    && next_significant(b, end) != Some(b'\'')
                {
                    out.push(i..end, LitKind::Quoted)?;
                }
                i = end;
                Prev::Operand
            }
            b'"' => {
                i = quoted_end(b, i, false)?;
                Prev::Operand
            }
            b'$' => {
                if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    return None; // a placeholder of the text's own
                }
                i = dollar_end(b, i)?;
                Prev::Operand
            }
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                let end = number_end(b, i);
                let glued = b.get(end).is_some_and(|&n| is_ident_char(n) || n == b'.');
                if !glued && prev == Prev::OperandSlot {
                    match sign {
                        // A unary sign belongs to the constant (`id = -5`).
                        Some(s)
                            if slot_before_sign != Prev::Operand
                                && b[s + 1..i].iter().all(|&c| is_space(c)) =>
                        {
                            out.push(
                                s..end,
                                LitKind::Number {
                                    negative: b[s] == b'-',
                                },
                            )?
                        }
                        Some(_) if slot_before_sign != Prev::Operand => {}
                        _ => out.push(i..end, LitKind::Number { negative: false })?,
                    }
                }
                i = end;
                Prev::Operand
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident_char(b[i]) {
                    i += 1;
                }
                if b.get(i) == Some(&b'\'') {
                    // A prefixed string: E'..' (backslash escapes), B'..', X'..', N'..', or
                    // a typed literal such as date'..': kept as written.
                    let escapes = i - start == 1 && (b[start] | 0x20) == b'e';
                    i = quoted_end(b, i, escapes)?;
                    Prev::Operand
                } else {
                    word = start..i;
                    Prev::Word
                }
            }
            b'(' | b',' => {
                i += 1;
                Prev::OperandSlot
            }
            b'+' | b'-' if !b.get(i + 1).copied().is_some_and(is_operator_char) => {
                sign_at = Some(i);
                before_sign = match prev {
                    Prev::Word if is_reserved(&sql[word.clone()]) => Prev::Keyword,
                    Prev::Word => Prev::Operand,
                    p => p,
                };
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

/// Writes a shape as its constants are found.
struct Builder<'a> {
    sql: &'a str,
    text: String,
    literals: Vec<Lit>,
    /// How much of `sql` is in `text` already.
    copied: usize,
}

impl Builder<'_> {
    /// Replaces the constant at `range` (after any before it) by the next placeholder.
    fn push(&mut self, range: Range<usize>, kind: LitKind) -> Option<()> {
        let n = u16::try_from(self.literals.len() + 1).ok()?;
        if self.literals.is_empty() {
            self.text.reserve(self.sql.len() + 8);
            self.literals.reserve(4);
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

impl Shape {
    /// The offset in the original text of `p`, an offset in the shape (None inside a
    /// placeholder).
    fn map(&self, p: usize) -> Option<usize> {
        let mut delta: isize = 0;
        for l in &self.literals {
            if p <= l.shape.start {
                break;
            }
            if p < l.shape.end {
                return None;
            }
            delta += l.text.len() as isize - l.shape.len() as isize;
        }
        p.checked_add_signed(delta)
    }

    fn map_range(&self, r: &Range<usize>) -> Option<Range<usize>> {
        Some(self.map(r.start)?..self.map(r.end)?)
    }

    /// The literal a placeholder stands for, as the analysis of the text would give it.
    fn value(&self, sql: &str, v: &ValueRef) -> Option<ValueRef> {
        let ValueRef::Param(n) = v else {
            return Some(v.clone());
        };
        let lit = self.literals.get(usize::from(*n).checked_sub(1)?)?;
        let text = &sql[lit.text.clone()];
        Some(ValueRef::Literal(match lit.kind {
            LitKind::Quoted => text[1..text.len() - 1].replace("''", "'"),
            LitKind::Number { negative } => {
                let digits = text.trim_start_matches(['+', '-']).trim_start();
                if negative {
                    format!("-{digits}")
                } else {
                    digits.to_string()
                }
            }
        }))
    }

    /// True when [`Shape::instantiate`] maps `shaped` onto a text of this shape. Checked
    /// without building anything: a caller may decide from the shape's analysis alone, and
    /// instantiate only what it needs.
    pub fn trusts(&self, shaped: &Analysis) -> bool {
        let value = |v: &ValueRef| match v {
            ValueRef::Param(n) => usize::from(*n)
                .checked_sub(1)
                .is_some_and(|i| i < self.literals.len()),
            ValueRef::Literal(_) => true,
        };
        let write = |w: &super::GuardedWrite| {
            let s = &w.splice;
            let key = match &w.target {
                Target::Key(vals) => vals.iter().all(value),
                Target::Bulk => true,
            };
            key && w.pinned.as_ref().is_none_or(value)
                && self.map_range(&s.statement).is_some()
                && s.set_end.is_none_or(|e| self.map(e).is_some())
                && s.condition
                    .as_ref()
                    .is_none_or(|c| self.map_range(c).is_some())
                && self.map(s.where_at).is_some()
                && self.map(s.returning_at).is_some()
        };
        !shaped.read_unparsed
            && shaped.statements.iter().all(|st| {
                self.map_range(&st.range).is_some()
                    && match &st.action {
                        Action::Pass { .. } => true,
                        Action::Refuse { .. } => false,
                        Action::Write(w) => write(w),
                    }
            })
            && shaped.reads.iter().all(|r| r.key.iter().all(value))
    }

    /// The pinned read of the original text, from the pinned read of its shape.
    pub fn instantiate_read(&self, read: &PinnedRead, sql: &str) -> Option<PinnedRead> {
        Some(PinnedRead {
            key: read
                .key
                .iter()
                .map(|v| self.value(sql, v))
                .collect::<Option<_>>()?,
            ..read.clone()
        })
    }

    /// The analysis of the original text, from the analysis of its shape. None when the
    /// shape's analysis refuses a statement (the text itself decides that) or cannot be
    /// mapped back.
    pub fn instantiate(&self, shaped: &Analysis, sql: &str) -> Option<Analysis> {
        if shaped.read_unparsed {
            return None;
        }
        let mut out = shaped.clone();
        for st in &mut out.statements {
            st.range = self.map_range(&st.range)?;
            match &mut st.action {
                Action::Pass { .. } => {}
                Action::Refuse { .. } => return None,
                Action::Write(w) => {
                    let w = Arc::make_mut(w);
                    if let Target::Key(vals) = &mut w.target {
                        for v in vals.iter_mut() {
                            *v = self.value(sql, v)?;
                        }
                    }
                    if let Some(p) = &mut w.pinned {
                        *p = self.value(sql, p)?;
                    }
                    w.max_param = 0;
                    let s = &mut w.splice;
                    s.statement = self.map_range(&s.statement)?;
                    if let Some(e) = &mut s.set_end {
                        *e = self.map(*e)?;
                    }
                    if let Some(c) = &mut s.condition {
                        *c = self.map_range(c)?;
                    }
                    s.where_at = self.map(s.where_at)?;
                    s.returning_at = self.map(s.returning_at)?;
                }
            }
        }
        for read in &mut out.reads {
            *read = self.instantiate_read(read, sql)?;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::analyze::analyze;
    use crate::guard::fixtures::guards;

    fn shaped(sql: &str) -> String {
        shape(sql).map(|s| s.text).unwrap_or_default()
    }

    #[test]
    fn operand_constants_become_placeholders() {
        assert_eq!(
            shaped("UPDATE accounts SET abalance = abalance + 2926 WHERE aid = 351987"),
            "UPDATE accounts SET abalance = abalance + $1 WHERE aid = $2"
        );
        assert_eq!(
            shaped("UPDATE invoice SET note = 'it''s' WHERE id = -7;"),
            "UPDATE invoice SET note = $1 WHERE id = $2;"
        );
        assert_eq!(
            shaped("INSERT INTO h VALUES (41, 5, 1.5e3, .5, CURRENT_TIMESTAMP)"),
            "INSERT INTO h VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"
        );
    }

    #[test]
    fn unsure_constants_stay() {
        for sql in [
            "SELECT 1",
            "SELECT * FROM t LIMIT 5",
            "SELECT DATE '2024-01-01', INTERVAL '1 day', E'a\\'b', U&'d\\0061t', x'1F'",
            "SELECT 'a'\n'b'",
            "SELECT $$ = 5 $$, $q$ '$q$",
            "SELECT 1abc, 0x1F, t1.c",
            "-- = 5\nSELECT /* = 'x' /* nested */ */ a",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
        assert_eq!(shape("UPDATE t SET a = $1 WHERE id = 5"), None);
        assert_eq!(shape("SELECT 'open"), None);
        assert_eq!(shaped("SELECT a - 5, - 6"), "SELECT a - $1, $2");
        assert_eq!(shaped("SELECT 7 WHERE x = +5"), "SELECT 7 WHERE x = $1");
        assert_eq!(
            shaped("SELECT x = - /* c */ 5, 6"),
            "SELECT x = - /* c */ 5, $1"
        );
    }

    /// The instantiated analysis of a shape is the analysis of the text itself.
    #[test]
    fn instantiated_analysis_equals_direct_analysis() {
        let g = guards();
        let corpus = [
            "UPDATE invoice SET total = total + 25 WHERE id = 7",
            "update public.invoice set total = 1.50, note = 'O''Brien' where id = '7' returning id",
            "UPDATE invoice SET total = 3 WHERE id = -7",
            "UPDATE invoice SET total = 3 WHERE -7 = id",
            "UPDATE invoice SET total = 3 WHERE id = - 7 AND total > 0",
            "UPDATE invoice SET total = 3 WHERE id = +7",
            "UPDATE invoice SET total = 3 WHERE id = 7::int AND version = 4",
            "UPDATE invoice SET total = 3 WHERE id IN (1, 2, 3)",
            "UPDATE invoice i SET total = i.total * 2 WHERE i.id = (5)",
            "DELETE FROM invoice WHERE id = 12; SELECT 1; UPDATE invoice SET total = 0 WHERE id = 13",
            "BEGIN; UPDATE invoice SET total = 9 WHERE id = 1; COMMIT",
            "UPDATE \"tabSales Invoice\" SET grand_total = 10 WHERE name = 'SINV-0001'",
            "UPDATE \"tabSales Invoice\" SET grand_total = 10 WHERE name = 'SINV-1' AND modified = '2024-05-01 10:00:00.123456'",
            "UPDATE shop.line SET qty = 2 WHERE invoice_id = 4 AND line_no = 1",
            "UPDATE accounts SET abalance = abalance + -2926 WHERE aid = 351987",
            "INSERT INTO invoice (id, total) VALUES (1, 5) ON CONFLICT (id) DO UPDATE SET total = 5",
            "WITH x AS (UPDATE invoice SET total = 1 WHERE id = 2 RETURNING id) SELECT * FROM x",
            "UPDATE invoice SET total = 1 /* = 5 */ WHERE id = 2 -- trailing = 'x'\n",
            "UPDATE invoice SET note = $$ = 5 $$ WHERE id = 2",
            "UPDATE invoice SET note = E'a\\'b', total = 2 WHERE id = 3",
            "UPDATE invoice SET issued = DATE '2024-01-01' WHERE id = 3",
            "UPDATE invoice SET total = 1 FROM other o WHERE invoice.id = o.id AND o.k = 4",
            "UPDATE ONLY invoice SET total = 1 WHERE id = 5",
            "SELECT total, version FROM invoice WHERE id = 7",
            "SELECT abalance FROM accounts WHERE aid = 351987;",
            "SELECT * FROM invoice WHERE id = 'x' || 'y'",
            "UPDATE orders SET \"order\" = 1 WHERE \"Order ID\" = 5",
        ];
        let mut instantiated = 0;
        for sql in corpus {
            let direct = analyze(sql, &g);
            let Some(shape) = shape(sql) else {
                continue;
            };
            let from_shape = analyze(&shape.text, &g);
            assert_eq!(
                shape.trusts(&from_shape),
                shape.instantiate(&from_shape, sql).is_some(),
                "{sql}"
            );
            if let Some(a) = shape.instantiate(&from_shape, sql) {
                assert_eq!(a, direct, "{sql}\nshape: {}", shape.text);
                instantiated += 1;
            }
        }
        assert!(instantiated >= 24, "only {instantiated} texts instantiated");
    }

    #[test]
    fn a_read_whose_shape_does_not_parse_is_not_trusted() {
        let g = guards();
        let sql = "SELECT total::numeric(10, 2) FROM invoice WHERE id = 7";
        let shape = shape(sql).expect("has constants");
        assert_eq!(
            shape.text,
            "SELECT total::numeric($1, $2) FROM invoice WHERE id = $3"
        );
        let shaped = analyze(&shape.text, &g);
        assert!(shaped.read_unparsed);
        assert!(shape.instantiate(&shaped, sql).is_none());
        assert!(!shape.trusts(&shaped));
        assert!(analyze(sql, &g).lone_read().is_some());
    }

    #[test]
    fn a_refusing_shape_is_not_trusted() {
        let g = guards();
        let sql = "MERGE INTO invoice USING (SELECT 1 AS id) s ON invoice.id = s.id \
                   WHEN MATCHED THEN UPDATE SET total = 5";
        let shape = shape(sql).expect("has constants");
        assert!(shape.instantiate(&analyze(&shape.text, &g), sql).is_none());
        assert!(!shape.trusts(&analyze(&shape.text, &g)));
    }
}
