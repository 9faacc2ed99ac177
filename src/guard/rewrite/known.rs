//! The check of a write against every row the session knows of its table
//! ([`Expected::Rows`](super::Expected::Rows), or bound as two text-array parameters,
//! [`Expected::RowParams`](super::Expected::RowParams)): for a write whose rows the proxy cannot name from its text
//! (`id IN (1, 2)`, `= ANY(...)`, `BETWEEN`, `id = 0 + 1`, a join, no `WHERE`, an upsert's
//! `DO UPDATE`), the server checks each row the write touches.
//!
//! The known rows go into the statement as array literals whose element type the server takes
//! from the column they are compared with (`array_position('{"1","2"}', t.id)`: an untyped
//! literal becomes `int[]` for an `int` key), so keys and versions compare as the columns'
//! own types, never as text. Per row:
//!
//! ```sql
//! CASE WHEN <position> IS NULL THEN true                               -- nothing known
//!      WHEN <position> = ANY(array_positions('{"7","3"}', t.version)) THEN true  -- as read
//!      WHEN (<condition>) THEN current_setting(concat('optlock.conflict:', t.version, '#',
//!                                                     <position>, '#')) IS NULL
//!      ELSE false END
//! ```
//!
//! `<position>` is the row's 1-based position in the list: `array_position` over the key
//! array for a one-column key; a `CASE` over row comparisons (`(t.a, t.b) = ('1', '2')`) for
//! a composite key, whose list is kept shorter ([`known_cap`]). A known row found at another
//! version that meets the write's own condition fails the statement on the spot, naming the
//! version found and the row's position, which tells the proxy the key and the version it
//! expected (see [`crate::guard::conflict::found_in_error`]). The condition is evaluated again
//! only for such a row (`CASE` keeps the order), and the statement fails then anyway.

use super::{
    CONFLICT_MARKER, GuardedWrite, Renderer, push_column, push_literal, push_observed, push_param,
};

/// How many known rows a write with a one-column key lists: the session's most recently used
/// ones. A row left out counts as "nothing known", as a row the tracker dropped does.
pub const MAX_KNOWN: usize = 1000;

/// How many known rows a write with a composite key lists (each costs a comparison per row
/// the write touches).
pub const MAX_KNOWN_COMPOSITE: usize = 64;

/// How many known rows a write lists for a key of `key_columns` columns.
pub fn known_cap(key_columns: usize) -> usize {
    if key_columns == 1 {
        MAX_KNOWN
    } else {
        MAX_KNOWN_COMPOSITE
    }
}

/// Appends one element of an array literal: double-quoted, `"` and `\` escaped.
fn push_element(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The text of an array of `values` (`{"1","2"}`): the content of the literal, or a bound
/// text parameter's value.
pub fn array_text<'v>(values: impl Iterator<Item = &'v str>) -> String {
    let mut array = String::from("{");
    for (i, v) in values.enumerate() {
        if i > 0 {
            array.push(',');
        }
        push_element(&mut array, v);
    }
    array.push('}');
    array
}

/// Appends an untyped array literal of `values` as a SQL string literal.
fn push_array<'v>(out: &mut String, values: impl Iterator<Item = &'v str>) {
    push_literal(out, &array_text(values));
}

/// Where the known rows come from.
#[derive(Clone, Copy)]
pub(super) enum KnownList<'a> {
    /// Listed in the statement.
    Literal(&'a [(Vec<String>, String)]),
    /// Bound as parameters: `$n` the keys, `$n+1` the versions (a one-column key).
    Params(u16),
}

/// The SQL of a row's 1-based position in `rows` (NULL when not listed). `key` holds the key
/// columns as SQL, `q` the target's qualifier.
fn position(q: &str, key: &[String], list: KnownList<'_>) -> String {
    let mut out = String::new();
    if let [column] = key {
        out.push_str("array_position(");
        match list {
            KnownList::Literal(rows) => {
                let keys = rows.iter().filter_map(|(k, _)| k.first());
                push_array(&mut out, keys.map(String::as_str))
            }
            KnownList::Params(n) => push_param(&mut out, n),
        }
        out.push_str(", ");
        push_column(&mut out, q, column);
        out.push(')');
        return out;
    }
    let KnownList::Literal(rows) = list else {
        out.push_str("NULL"); // not rendered: parameters are for a one-column key
        return out;
    };
    out.push_str("CASE");
    let mut n = itoa::Buffer::new();
    for (i, (values, _)) in rows.iter().enumerate() {
        out.push_str(" WHEN (");
        for (j, column) in key.iter().enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            push_column(&mut out, q, column);
        }
        out.push_str(") = (");
        for (j, v) in values.iter().enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            push_literal(&mut out, v);
        }
        out.push_str(") THEN ");
        out.push_str(n.format(i + 1));
    }
    out.push_str(" END");
    out
}

impl Renderer<'_> {
    /// The check of every row `write` touches against the known `rows` (see the module
    /// comment); `key` holds the key columns as SQL.
    pub(super) fn known_rows(&mut self, write: &GuardedWrite, list: KnownList<'_>, key: &[String]) {
        let s = &write.splice;
        let text = self.text;
        let cond = s.condition.clone().map(|c| &text[c]);
        self.open_check(s);
        let (q, version) = (self.q, self.version);
        let at = position(q, key, list);
        if self.observe {
            self.observed_rows(list, &at);
            return;
        }
        let out = &mut *self.out;
        out.push_str("CASE WHEN ");
        out.push_str(&at);
        out.push_str(" IS NULL THEN true WHEN ");
        out.push_str(&at);
        out.push_str(" = ANY(array_positions(");
        match list {
            KnownList::Literal(rows) => push_array(out, rows.iter().map(|(_, v)| v.as_str())),
            KnownList::Params(n) => push_param(out, n + 1),
        }
        out.push_str(", ");
        push_column(out, q, version);
        out.push_str(")) THEN true ");
        match cond {
            Some(cond) => {
                out.push_str("WHEN (");
                out.push_str(cond);
                out.push_str(") THEN ");
            }
            None => out.push_str("ELSE "),
        }
        out.push_str("current_setting(concat('");
        out.push_str(CONFLICT_MARKER);
        out.push_str("', ");
        push_column(out, q, version);
        out.push_str(", '#', ");
        out.push_str(&at);
        out.push_str(", '#')) IS NULL");
        if cond.is_some() {
            out.push_str(" ELSE false");
        }
        out.push_str(" END");
    }

    /// The observed check of every row against the known rows: a row at another version
    /// than the one listed records its version and its position in the list (see
    /// [`super::OBSERVED_SETTING`]); every row is written as the client asked.
    fn observed_rows(&mut self, list: KnownList<'_>, at: &str) {
        let (q, version) = (self.q, self.version);
        let matched = |out: &mut String| {
            out.push_str(at);
            out.push_str(" IS NULL OR ");
            out.push_str(at);
            out.push_str(" = ANY(array_positions(");
            match list {
                KnownList::Literal(rows) => push_array(out, rows.iter().map(|(_, v)| v.as_str())),
                KnownList::Params(n) => push_param(out, n + 1),
            }
            out.push_str(", ");
            push_column(out, q, version);
            out.push_str("))");
        };
        let more = |out: &mut String| {
            out.push_str(", ");
            out.push_str(at);
            out.push_str(", '#'");
        };
        push_observed(self.out, matched, q, version, more);
    }
}
