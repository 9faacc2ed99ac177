//! Rendering a guarded write: the original text with the version predicate, the bump and the
//! proxy's `RETURNING` columns spliced in at token positions found by [`super::analyze`].
//!
//! Everything the client wrote stays byte for byte (comments, literals, dollar quotes,
//! whitespace); the renderer only inserts.

use std::ops::Range;

use super::{GuardSet, GuardedWrite, Target, WriteOp};
use crate::config::{VersionKind, write_ident};

/// Where the rewrite splices into the statement text (byte offsets into the analysed text).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Splice {
    /// The whole statement (the same range as its [`super::Statement`]).
    pub statement: Range<usize>,
    /// End of the last assignment of the `SET` list (of `DO UPDATE SET` for an upsert), where
    /// the bump goes. `None` for `DELETE`.
    pub set_end: Option<usize>,
    /// The `WHERE` condition (without the keyword), when the write has one.
    pub condition: Option<Range<usize>>,
    /// Where ` WHERE ...` goes when the write has no `WHERE`.
    pub where_at: usize,
    /// End of the write (of its `RETURNING` list when it has one): where the proxy's columns go.
    /// Trailing comments come after it.
    pub returning_at: usize,
    /// SQL text that qualifies the target's columns: the alias if any, else the table name as
    /// the client wrote it.
    pub qualifier: String,
    /// The write is a data-modifying CTE (`WITH x AS (UPDATE ...) SELECT ...`): its row count
    /// is not the statement's command tag and its `RETURNING` rows are not the statement's
    /// result, so the proxy appends no columns to it.
    pub in_cte: bool,
    /// The statement holds a parenthesis outside its `SET` list and `RETURNING` (in a `WITH`,
    /// `FROM`/`USING` or `WHERE`): a call or subquery there runs even when no row matches.
    /// (`SET` and `RETURNING` run only for the rows written.)
    pub may_act_without_rows: bool,
}

/// The expected version a rendered write checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected<'a> {
    /// No predicate: the statement pins its own version, or none is known.
    None,
    /// A version the session read, as text.
    Literal(&'a str),
    /// A parameter the proxy binds; a NULL binding means "unknown" and matches any version.
    Param(u16),
}

/// An identifier as SQL: quoted when [`quote_ident`](crate::config::quote_ident) would, or when
/// it is a reserved word.
fn ident(name: &str) -> String {
    let mut out = String::new();
    push_ident(&mut out, name);
    out
}

/// Appends an identifier as SQL (see [`write_ident`]; reserved words are quoted too), without
/// allocating.
fn push_ident(out: &mut String, name: &str) {
    if RESERVED.binary_search(&name).is_ok() {
        out.push('"');
        out.push_str(name);
        out.push('"');
    } else {
        let _ = write_ident(out, name);
    }
}

/// A guard's column names as SQL, quoted where needed: made once per guard set, so the
/// rewrite only copies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlNames {
    pub version: String,
    pub key: Vec<String>,
}

impl SqlNames {
    pub fn of(guard: &crate::config::Guard) -> SqlNames {
        SqlNames {
            version: ident(&guard.version),
            key: guard.key.iter().map(|k| ident(k)).collect(),
        }
    }
}

/// True when `word` (any case) is one of PostgreSQL's reserved or type/function-name keywords.
pub(super) fn is_reserved(word: &str) -> bool {
    let w = word.as_bytes();
    // Most words are names: most are told apart by their length and first letter alone.
    let Some(&first) = w.first() else {
        return false;
    };
    let letter = first.to_ascii_lowercase().wrapping_sub(b'a');
    if w.len() > LONGEST_RESERVED || letter >= 26 || RESERVED_STARTS[w.len()] & (1 << letter) == 0 {
        return false;
    }
    if w.len() > 16 {
        return RESERVED
            .iter()
            .any(|k| k.len() > 16 && k.as_bytes().eq_ignore_ascii_case(w));
    }
    RESERVED_KEYS.binary_search(&reserved_key(w)).is_ok()
}

/// A word of at most 16 bytes as a number that sorts as the word does (ASCII lowercase,
/// big-endian, zero-padded: no word holds a zero byte). Only the first 16 bytes count.
const fn reserved_key(w: &[u8]) -> u128 {
    let mut key = 0u128;
    let mut i = 0;
    while i < 16 {
        key <<= 8;
        if i < w.len() {
            key |= w[i].to_ascii_lowercase() as u128;
        }
        i += 1;
    }
    key
}

/// [`RESERVED`] as [`reserved_key`]s, in the same (sorted) order: a binary search compares
/// numbers, not strings.
const RESERVED_KEYS: [u128; RESERVED.len()] = {
    let mut keys = [0u128; RESERVED.len()];
    let mut i = 0;
    while i < RESERVED.len() {
        keys[i] = reserved_key(RESERVED[i].as_bytes());
        i += 1;
    }
    keys
};

/// Length of the longest word in [`RESERVED`] (`current_timestamp`).
const LONGEST_RESERVED: usize = 17;

/// For each length, one bit per first letter (`a` = bit 0) of the [`RESERVED`] words of that
/// length.
const RESERVED_STARTS: [u32; LONGEST_RESERVED + 1] = {
    let mut starts = [0u32; LONGEST_RESERVED + 1];
    let mut i = 0;
    while i < RESERVED.len() {
        let w = RESERVED[i].as_bytes();
        starts[w.len()] |= 1 << (w[0] - b'a');
        i += 1;
    }
    starts
};

/// PostgreSQL's reserved and type/function-name keywords (sorted): not usable as a bare column
/// name in a `SET` list.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// A string literal: `'...'` with `'` doubled, or `E'...'` when it holds a backslash.
fn push_literal(out: &mut String, v: &str) {
    if !v.contains(['\'', '\\']) {
        out.push('\'');
        out.push_str(v);
        out.push('\'');
        return;
    }
    if v.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in v.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// What the server's error says when a keyed write finds its row at another version: the
/// predicate calls `current_setting` with a name that no setting has, made of this marker, the
/// version found (nothing for NULL) and `#`, so the statement fails on the spot with SQLSTATE
/// 42704 and the version in the message. The relay turns that error into the conflict error
/// (see [`conflict::found_in_error`](super::conflict::found_in_error)). The name is built with
/// `concat`, which the server resolves and runs in about half the time of `||` over
/// `coalesce(version::text, ...)`; the server parses and plans a write sent as text again on
/// every execution, so that cost is paid per write.
pub const CONFLICT_MARKER: &str = "optlock.conflict:";

/// The rest of the version check of a keyed write, after `CASE WHEN <version> = <expected>`:
/// `THEN true`; a row that meets the statement's own condition `cond` at another version
/// raises (see [`CONFLICT_MARKER`]); any other row does not match. `CASE` keeps the order:
/// only a row the statement would write can raise, whatever order the planner evaluates the
/// conditions in.
fn push_raise_when(out: &mut String, q: &str, version: &str, cond: &str) {
    out.push_str(" THEN true WHEN (");
    out.push_str(cond);
    out.push_str(") THEN current_setting(concat('");
    out.push_str(CONFLICT_MARKER);
    out.push_str("', ");
    push_column(out, q, version);
    out.push_str(", '#')) IS NULL ELSE false END");
}

/// Appends `q.column`; `column` is already SQL (see [`SqlNames`]).
fn push_column(out: &mut String, q: &str, column: &str) {
    out.push_str(q);
    out.push('.');
    out.push_str(column);
}

/// Appends the placeholder `$n`.
fn push_param(out: &mut String, n: u16) {
    out.push('$');
    out.push_str(itoa::Buffer::new().format(n));
}

impl GuardedWrite {
    /// Appends the rewritten statement (only this statement's range of `text`) to `out`.
    pub fn render(&self, text: &str, guards: &GuardSet, expected: Expected<'_>, out: &mut String) {
        self.render_with(text, guards, expected, true, out);
    }

    /// [`GuardedWrite::render`], leaving out the proxy's `RETURNING` columns when `returning`
    /// is false (nothing the session tracks can change).
    pub fn render_with(
        &self,
        text: &str,
        guards: &GuardSet,
        expected: Expected<'_>,
        returning: bool,
        out: &mut String,
    ) {
        let guard = &guards.guards[self.guard];
        let s = &self.splice;
        let q = s.qualifier.as_str();
        let names = &guards.sql_names[self.guard];
        let version = names.version.as_str();
        let mut at = s.statement.start;
        let mut copy_to = |out: &mut String, pos: usize| {
            out.push_str(&text[at..pos]);
            at = pos;
        };

        if let Some(set_end) = s.set_end
            && self.adds_bump(guards)
        {
            match guard.kind {
                VersionKind::Counter => {
                    copy_to(out, set_end);
                    out.push_str(", ");
                    out.push_str(version);
                    out.push_str(" = ");
                    push_column(out, q, version);
                    out.push_str(" + 1");
                }
                VersionKind::Timestamp => {
                    copy_to(out, set_end);
                    out.push_str(", ");
                    out.push_str(version);
                    out.push_str(" = GREATEST(clock_timestamp(), ");
                    push_column(out, q, version);
                    out.push_str(" + interval '1 microsecond')");
                }
                VersionKind::Xmin => {}
            }
        }

        if self.op != WriteOp::Upsert && expected != Expected::None {
            // A keyed write outside WITH whose condition calls nothing (no parenthesis: no
            // function, no subquery, so evaluating it twice changes nothing) fails on the spot
            // when its row is found at another version (see [`CONFLICT_MARKER`]). Any other
            // write only filters on the version, and 0 rows is checked afterwards.
            let raising = match (&self.target, s.in_cte, &s.condition) {
                (Target::Key(_), false, Some(cond)) if !text[cond.clone()].contains('(') => {
                    Some(&text[cond.clone()])
                }
                _ => None,
            };
            match &s.condition {
                Some(cond) => {
                    copy_to(out, cond.start);
                    out.push('(');
                    copy_to(out, cond.end);
                    out.push_str(") AND ");
                }
                None => {
                    copy_to(out, s.where_at);
                    out.push_str(" WHERE ");
                }
            }
            match (expected, raising) {
                (Expected::None, _) => {} // nothing to check: not reached (see above)
                (Expected::Literal(v), None) => {
                    push_column(out, q, version);
                    out.push_str(" = ");
                    push_literal(out, v);
                }
                (Expected::Param(n), None) => {
                    out.push('(');
                    push_column(out, q, version);
                    out.push_str(" = ");
                    push_param(out, n);
                    out.push_str(" OR ");
                    push_param(out, n);
                    out.push_str(" IS NULL)");
                }
                (Expected::Literal(v), Some(cond)) => {
                    out.push_str("CASE WHEN ");
                    push_column(out, q, version);
                    out.push_str(" = ");
                    push_literal(out, v);
                    push_raise_when(out, q, version, cond);
                }
                (Expected::Param(n), Some(cond)) => {
                    // The comparison first: it gives the parameter its type.
                    out.push_str("CASE WHEN ");
                    push_column(out, q, version);
                    out.push_str(" = ");
                    push_param(out, n);
                    out.push_str(" THEN true WHEN ");
                    push_param(out, n);
                    out.push_str(" IS NULL");
                    push_raise_when(out, q, version, cond);
                }
            }
        }

        if returning && self.added_columns(guards) > 0 {
            copy_to(out, s.returning_at);
            out.push_str(if self.client_returning {
                ", "
            } else {
                " RETURNING "
            });
            for k in &names.key {
                push_column(out, q, k);
                out.push_str(", ");
            }
            push_column(out, q, version);
        }
        copy_to(out, s.statement.end);
    }

    /// True when the rewrite bumps the version in the statement's `SET` (not for `xmin`, which
    /// the server bumps, nor when the statement sets the version itself).
    pub fn adds_bump(&self, guards: &GuardSet) -> bool {
        self.splice.set_end.is_some()
            && !self.sets_version
            && guards.guards[self.guard].kind != VersionKind::Xmin
    }

    /// Number of columns the proxy appends to the result rows (key columns + version); none
    /// for a delete, or a write inside `WITH` (its `RETURNING` feeds the statement).
    pub fn added_columns(&self, guards: &GuardSet) -> usize {
        if self.op == WriteOp::Delete || self.splice.in_cte {
            0
        } else {
            guards.guards[self.guard].key.len() + 1
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    use crate::guard::Action;
    use crate::guard::analyze::{analyze, parses};

    use crate::guard::fixtures::guards;

    /// Renders the only guarded write of `sql` and checks the result still parses.
    fn render(sql: &str, expected: Expected<'_>) -> String {
        let g = guards();
        let a = analyze(sql, &g);
        let writes: Vec<&GuardedWrite> = a
            .statements
            .iter()
            .filter_map(|s| match &s.action {
                Action::Write(w) => Some(w.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(writes.len(), 1, "{sql}: {a:?}");
        // Rendering appends: what is already in `out` stays.
        let mut out = String::from("<");
        writes[0].render(sql, &g, expected, &mut out);
        let out = out.strip_prefix('<').unwrap().to_string();
        assert!(parses(&out), "the rendered statement does not parse: {out}");
        out
    }

    const LIT: Expected<'static> = Expected::Literal("7");

    #[test]
    fn no_prefix_of_a_guarded_write_panics() {
        let g = guards();
        let mut writes = 0;
        for sql in [
            "WITH x AS (UPDATE ONLY public.invoice AS i SET total = (SELECT 1), tags[1] = 2 FROM c WHERE i.id = $1 AND version = 'v' RETURNING *) SELECT * FROM x -- é",
            "INSERT INTO invoice AS t (id) VALUES (1) ON CONFLICT (id) WHERE t.open DO UPDATE SET total = 1 WHERE t.id = 1 RETURNING t.id; DELETE FROM shop.line USING x WHERE line_no = 1",
            "UPDATE \"tabSales Invoice\" SET grand_total = 10 /* ☃ */ WHERE name = E'SINV\\'1' OR x IS DISTINCT FROM y",
        ] {
            let mut ends: Vec<usize> = sql.char_indices().map(|(i, _)| i).collect();
            ends.push(sql.len());
            for end in ends {
                let text = &sql[..end];
                for st in analyze(text, &g).statements {
                    assert!(text.is_char_boundary(st.range.start) && st.range.end <= text.len());
                    if let Action::Write(w) = st.action {
                        writes += 1;
                        for expected in [Expected::None, LIT, Expected::Param(9)] {
                            let mut out = String::new();
                            w.render(text, &g, expected, &mut out);
                            assert!(out.starts_with(text[st.range.clone()].get(..6).unwrap_or("")));
                        }
                    }
                }
            }
        }
        assert!(writes > 50, "{writes} prefixes were guarded writes");
    }

    #[test]
    fn update_gets_bump_predicate_and_returning() {
        assert_eq!(
            render("UPDATE invoice SET total = 1 WHERE id = 42", LIT),
            "UPDATE invoice SET total = 1, version = invoice.version + 1 WHERE (id = 42) AND CASE WHEN invoice.version = '7' THEN true WHEN (id = 42) THEN current_setting(concat('optlock.conflict:', invoice.version, '#')) IS NULL ELSE false END RETURNING invoice.id, invoice.version"
        );
        assert_eq!(
            render("UPDATE invoice SET total = 1 WHERE id = 42", Expected::None),
            "UPDATE invoice SET total = 1, version = invoice.version + 1 WHERE id = 42 RETURNING invoice.id, invoice.version"
        );
        assert_eq!(
            render(
                "UPDATE invoice SET total = $2 WHERE id = $1",
                Expected::Param(3)
            ),
            "UPDATE invoice SET total = $2, version = invoice.version + 1 WHERE (id = $1) AND CASE WHEN invoice.version = $3 THEN true WHEN $3 IS NULL THEN true WHEN (id = $1) THEN current_setting(concat('optlock.conflict:', invoice.version, '#')) IS NULL ELSE false END RETURNING invoice.id, invoice.version"
        );
    }

    #[test]
    fn or_conditions_are_wrapped_and_missing_where_is_added() {
        assert_eq!(
            render("UPDATE invoice SET total = 0 WHERE id = 1 OR id = 2", LIT),
            "UPDATE invoice SET total = 0, version = invoice.version + 1 WHERE (id = 1 OR id = 2) AND invoice.version = '7' RETURNING invoice.id, invoice.version"
        );
        assert_eq!(
            render("UPDATE invoice SET total = 0", LIT),
            "UPDATE invoice SET total = 0, version = invoice.version + 1 WHERE invoice.version = '7' RETURNING invoice.id, invoice.version"
        );
        assert_eq!(
            render("DELETE FROM invoice", Expected::Param(1)),
            "DELETE FROM invoice WHERE (invoice.version = $1 OR $1 IS NULL)"
        );
    }

    #[test]
    fn alias_qualifies_everything_and_client_returning_comes_first() {
        assert_eq!(
            render(
                "UPDATE ONLY public.invoice AS i SET total = 1 WHERE i.id = $1 RETURNING i.total, *",
                Expected::Param(2)
            ),
            "UPDATE ONLY public.invoice AS i SET total = 1, version = i.version + 1 WHERE (i.id = $1) AND CASE WHEN i.version = $2 THEN true WHEN $2 IS NULL THEN true WHEN (i.id = $1) THEN current_setting(concat('optlock.conflict:', i.version, '#')) IS NULL ELSE false END RETURNING i.total, *, i.id, i.version"
        );
        assert_eq!(
            render("update Public.Invoice inv set total=1 where inv.id=5", LIT),
            "update Public.Invoice inv set total=1, version = inv.version + 1 where (inv.id=5) AND CASE WHEN inv.version = '7' THEN true WHEN (inv.id=5) THEN current_setting(concat('optlock.conflict:', inv.version, '#')) IS NULL ELSE false END RETURNING inv.id, inv.version"
        );
        assert_eq!(
            render("UPDATE public.invoice SET total = 1 WHERE id = 5", LIT),
            "UPDATE public.invoice SET total = 1, version = public.invoice.version + 1 WHERE (id = 5) AND CASE WHEN public.invoice.version = '7' THEN true WHEN (id = 5) THEN current_setting(concat('optlock.conflict:', public.invoice.version, '#')) IS NULL ELSE false END RETURNING public.invoice.id, public.invoice.version"
        );
    }

    #[test]
    fn from_joins_and_subqueries_do_not_confuse_the_splice_points() {
        assert_eq!(
            render(
                "UPDATE invoice i SET total = c.credit, flag = i.a IS DISTINCT FROM c.b * 2 FROM customer c WHERE c.id = i.customer_id AND i.id = 3 RETURNING c.name",
                LIT
            ),
            "UPDATE invoice i SET total = c.credit, flag = i.a IS DISTINCT FROM c.b * 2, version = i.version + 1 FROM customer c WHERE (c.id = i.customer_id AND i.id = 3) AND CASE WHEN i.version = '7' THEN true WHEN (c.id = i.customer_id AND i.id = 3) THEN current_setting(concat('optlock.conflict:', i.version, '#')) IS NULL ELSE false END RETURNING c.name, i.id, i.version"
        );
        assert_eq!(
            render(
                "UPDATE invoice SET total = (SELECT sum(x) FROM line WHERE line.inv = invoice.id), tags = ARRAY[(SELECT 1 FROM t WHERE z)] WHERE id IN (SELECT id FROM t WHERE y) ",
                LIT
            ),
            "UPDATE invoice SET total = (SELECT sum(x) FROM line WHERE line.inv = invoice.id), tags = ARRAY[(SELECT 1 FROM t WHERE z)], version = invoice.version + 1 WHERE (id IN (SELECT id FROM t WHERE y)) AND invoice.version = '7' RETURNING invoice.id, invoice.version"
        );
        // `WHERE` with nothing after it is a syntax error: never rewritten.
        assert!(matches!(
            analyze("UPDATE invoice SET total = 1 WHERE", &guards()).statements[0].action,
            Action::Refuse { .. }
        ));
    }

    #[test]
    fn delete_gets_only_the_predicate() {
        let g = guards();
        let sql = "DELETE FROM invoice USING customer c WHERE invoice.customer_id = c.id AND invoice.id = 9 RETURNING invoice.*";
        assert_eq!(
            render(sql, LIT),
            "DELETE FROM invoice USING customer c WHERE (invoice.customer_id = c.id AND invoice.id = 9) AND CASE WHEN invoice.version = '7' THEN true WHEN (invoice.customer_id = c.id AND invoice.id = 9) THEN current_setting(concat('optlock.conflict:', invoice.version, '#')) IS NULL ELSE false END RETURNING invoice.*"
        );
        let a = analyze(sql, &g);
        let Action::Write(w) = &a.statements[0].action else {
            panic!("{a:?}")
        };
        assert_eq!(w.added_columns(&g), 0);
        assert_eq!(
            render("DELETE FROM invoice WHERE id = 9", Expected::None),
            "DELETE FROM invoice WHERE id = 9"
        );
    }

    #[test]
    fn trailing_comments_stay_after_the_insertions() {
        assert_eq!(
            render("UPDATE invoice SET total = 1 WHERE id = 1 -- done", LIT),
            "UPDATE invoice SET total = 1, version = invoice.version + 1 WHERE (id = 1) AND CASE WHEN invoice.version = '7' THEN true WHEN (id = 1) THEN current_setting(concat('optlock.conflict:', invoice.version, '#')) IS NULL ELSE false END RETURNING invoice.id, invoice.version -- done"
        );
        assert_eq!(
            render(
                "UPDATE invoice SET total = 1 /* a */ WHERE /* b */ id = 1 /* c */\n",
                LIT
            ),
            "UPDATE invoice SET total = 1, version = invoice.version + 1 /* a */ WHERE /* b */ (id = 1) AND CASE WHEN invoice.version = '7' THEN true WHEN (id = 1) THEN current_setting(concat('optlock.conflict:', invoice.version, '#')) IS NULL ELSE false END RETURNING invoice.id, invoice.version /* c */"
        );
        assert_eq!(
            render("UPDATE invoice SET total = 1 -- where?\n", LIT),
            "UPDATE invoice SET total = 1, version = invoice.version + 1 WHERE invoice.version = '7' RETURNING invoice.id, invoice.version -- where?\n"
        );
    }

    #[test]
    fn only_the_statement_range_is_rendered_and_multibyte_text_is_kept() {
        let sql =
            "SELECT 'ünï ✓'; UPDATE invoice SET note = 'naïve ☃ 😀' WHERE id = 'ключ'; SELECT 2";
        assert_eq!(
            render(sql, Expected::Literal("2024-01-01 00:00:00+00")),
            "UPDATE invoice SET note = 'naïve ☃ 😀', version = invoice.version + 1 WHERE (id = 'ключ') AND CASE WHEN invoice.version = '2024-01-01 00:00:00+00' THEN true WHEN (id = 'ключ') THEN current_setting(concat('optlock.conflict:', invoice.version, '#')) IS NULL ELSE false END RETURNING invoice.id, invoice.version"
        );
    }

    #[test]
    fn expected_literals_are_escaped() {
        assert_eq!(
            render(
                "DELETE FROM invoice WHERE id = 1",
                Expected::Literal("it's")
            ),
            "DELETE FROM invoice WHERE (id = 1) AND CASE WHEN invoice.version = 'it''s' THEN true WHEN (id = 1) THEN current_setting(concat('optlock.conflict:', invoice.version, '#')) IS NULL ELSE false END"
        );
        assert_eq!(
            render(
                "DELETE FROM invoice WHERE id = 1",
                Expected::Literal("a\\'b")
            ),
            "DELETE FROM invoice WHERE (id = 1) AND CASE WHEN invoice.version = E'a\\\\''b' THEN true WHEN (id = 1) THEN current_setting(concat('optlock.conflict:', invoice.version, '#')) IS NULL ELSE false END"
        );
    }

    #[test]
    fn the_erp_case_with_a_timestamp_version() {
        assert_eq!(
            render(
                "UPDATE \"tabSales Invoice\" SET grand_total = 10 WHERE name = 'SINV-0001'",
                Expected::Literal("2024-05-01 10:00:00.123456")
            ),
            "UPDATE \"tabSales Invoice\" SET grand_total = 10, modified = GREATEST(clock_timestamp(), \"tabSales Invoice\".modified + interval '1 microsecond') WHERE (name = 'SINV-0001') AND CASE WHEN \"tabSales Invoice\".modified = '2024-05-01 10:00:00.123456' THEN true WHEN (name = 'SINV-0001') THEN current_setting(concat('optlock.conflict:', \"tabSales Invoice\".modified, '#')) IS NULL ELSE false END RETURNING \"tabSales Invoice\".name, \"tabSales Invoice\".modified"
        );
    }

    #[test]
    fn a_set_version_is_not_bumped_again() {
        assert_eq!(
            render(
                "UPDATE invoice SET total = 1, version = 8 WHERE id = 1 AND version = 7",
                Expected::None
            ),
            "UPDATE invoice SET total = 1, version = 8 WHERE id = 1 AND version = 7 RETURNING invoice.id, invoice.version"
        );
    }

    #[test]
    fn xmin_needs_no_bump() {
        assert_eq!(
            render(
                "UPDATE accounts SET abalance = abalance + 1 WHERE aid = 1",
                Expected::Literal("1234")
            ),
            "UPDATE accounts SET abalance = abalance + 1 WHERE (aid = 1) AND CASE WHEN accounts.xmin = '1234' THEN true WHEN (aid = 1) THEN current_setting(concat('optlock.conflict:', accounts.xmin, '#')) IS NULL ELSE false END RETURNING accounts.aid, accounts.xmin"
        );
    }

    /// The check fails on the spot only where the condition can be evaluated twice safely:
    /// a condition that calls a function or holds a subquery, or a write inside WITH, only
    /// filters on the version.
    #[test]
    fn a_condition_with_calls_or_a_cte_write_only_filters_on_the_version() {
        assert_eq!(
            render(
                "UPDATE accounts SET abalance = 1 WHERE aid = 1 AND now() > '2020-01-01'",
                Expected::Literal("1234")
            ),
            "UPDATE accounts SET abalance = 1 WHERE (aid = 1 AND now() > '2020-01-01') AND accounts.xmin = '1234' RETURNING accounts.aid, accounts.xmin"
        );
        let cte = render(
            "WITH u AS (UPDATE accounts SET abalance = 1 WHERE aid = 1 RETURNING 1) SELECT * FROM u",
            Expected::Literal("1234"),
        );
        assert!(cte.contains("AND accounts.xmin = '1234'"), "{cte}");
        assert!(!cte.contains("current_setting"), "{cte}");
    }

    /// A line comment inside the condition ends at its newline, in the copy inside the `CASE`
    /// too; one at the end of the statement stays after the insertions.
    #[test]
    fn line_comments_in_and_after_the_condition_stay_harmless() {
        let out = render(
            "UPDATE accounts SET abalance = 1 WHERE aid = 1 -- the key\n AND abalance > 0 -- end",
            Expected::Literal("1234"),
        );
        assert!(
            out.contains("WHEN (aid = 1 -- the key\n AND abalance > 0) THEN current_setting"),
            "{out}"
        );
        assert!(out.ends_with("-- end"), "{out}");
    }

    #[test]
    fn identifiers_are_quoted_when_needed() {
        assert_eq!(ident("version"), "version");
        assert_eq!(ident("order"), "\"order\"");
        assert_eq!(ident("Order ID"), "\"Order ID\"");
        assert!(
            RESERVED.windows(2).all(|w| w[0] < w[1]),
            "sorted for binary search"
        );
        assert_eq!(
            RESERVED.iter().map(|w| w.len()).max(),
            Some(LONGEST_RESERVED)
        );
        assert!(
            RESERVED_KEYS.windows(2).all(|w| w[0] < w[1]),
            "keys sorted as the words, none cut to a duplicate"
        );
        for w in RESERVED {
            assert!(
                is_reserved(w) && is_reserved(&w.to_ascii_uppercase()),
                "{w}"
            );
        }
        assert!(is_reserved("WHERE") && is_reserved("Current_Timestamp") && is_reserved("as"));
        assert!(!is_reserved("current_timestamps") && !is_reserved("abalance") && !is_reserved(""));
        assert_eq!(
            render("UPDATE orders SET total = 1 WHERE \"Order ID\" = 5", LIT),
            "UPDATE orders SET total = 1, \"order\" = orders.\"order\" + 1 WHERE (\"Order ID\" = 5) AND CASE WHEN orders.\"order\" = '7' THEN true WHEN (\"Order ID\" = 5) THEN current_setting(concat('optlock.conflict:', orders.\"order\", '#')) IS NULL ELSE false END RETURNING orders.\"Order ID\", orders.\"order\""
        );
    }

    #[test]
    fn composite_keys_are_all_returned() {
        assert_eq!(
            render(
                "UPDATE shop.line l SET qty = 2 WHERE l.invoice_id = 1 AND l.line_no = 2",
                Expected::None
            ),
            "UPDATE shop.line l SET qty = 2, version = l.version + 1 WHERE l.invoice_id = 1 AND l.line_no = 2 RETURNING l.invoice_id, l.line_no, l.version"
        );
    }

    #[test]
    fn data_modifying_ctes_get_bump_and_predicate_but_no_columns() {
        let g = guards();
        let sql =
            "WITH x AS (UPDATE invoice SET total = 1 WHERE id = 3 RETURNING *) SELECT * FROM x";
        assert_eq!(
            render(sql, LIT),
            "WITH x AS (UPDATE invoice SET total = 1, version = invoice.version + 1 WHERE (id = 3) AND invoice.version = '7' RETURNING *) SELECT * FROM x"
        );
        let Action::Write(w) = &analyze(sql, &g).statements[0].action else {
            panic!()
        };
        assert_eq!(w.added_columns(&g), 0);
        assert_eq!(
            render("WITH d AS (DELETE FROM invoice) SELECT 1", LIT),
            "WITH d AS (DELETE FROM invoice WHERE invoice.version = '7') SELECT 1"
        );
        // A WITH prefix on the write itself is not a CTE write.
        let sql = "WITH c AS (SELECT 5 AS id) UPDATE invoice SET total = 0 FROM c WHERE invoice.id = c.id";
        assert_eq!(
            render(sql, Expected::None),
            "WITH c AS (SELECT 5 AS id) UPDATE invoice SET total = 0, version = invoice.version + 1 FROM c WHERE invoice.id = c.id RETURNING invoice.id, invoice.version"
        );
        let Action::Write(w) = &analyze(sql, &g).statements[0].action else {
            panic!()
        };
        assert_eq!(w.added_columns(&g), 2);
    }

    #[test]
    fn upserts_bump_in_do_update_and_return_the_version() {
        assert_eq!(
            render(
                "INSERT INTO invoice (id, total) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total",
                LIT
            ),
            "INSERT INTO invoice (id, total) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total, version = invoice.version + 1 RETURNING invoice.id, invoice.version"
        );
        assert_eq!(
            render(
                "INSERT INTO invoice AS t (id, total) SELECT id, total FROM staging WHERE ok ON CONFLICT (id) WHERE t.open DO UPDATE SET total = EXCLUDED.total WHERE t.total < 100 RETURNING t.total",
                Expected::None
            ),
            "INSERT INTO invoice AS t (id, total) SELECT id, total FROM staging WHERE ok ON CONFLICT (id) WHERE t.open DO UPDATE SET total = EXCLUDED.total, version = t.version + 1 WHERE t.total < 100 RETURNING t.total, t.id, t.version"
        );
        assert_eq!(
            render(
                "INSERT INTO \"tabSales Invoice\" (name) VALUES ('a') ON CONFLICT ON CONSTRAINT pk DO UPDATE SET grand_total = 0",
                Expected::None
            ),
            "INSERT INTO \"tabSales Invoice\" (name) VALUES ('a') ON CONFLICT ON CONSTRAINT pk DO UPDATE SET grand_total = 0, modified = GREATEST(clock_timestamp(), \"tabSales Invoice\".modified + interval '1 microsecond') RETURNING \"tabSales Invoice\".name, \"tabSales Invoice\".modified"
        );
    }
}
