//! Rendering a guarded write: the original text with the version predicate, the bump and the
//! proxy's `RETURNING` columns spliced in at token positions found by the analysis (`locate`).
//!
//! Everything the client wrote stays byte for byte (comments, literals, dollar quotes,
//! whitespace); the renderer only inserts.

use std::ops::Range;

use super::keywords::is_reserved_lowercase;
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
    /// Every row the session knows of the table (key parts and version, canonical text), for
    /// a write whose rows the proxy cannot name from its text: the server checks each row the
    /// write touches against this list (see [`known`]).
    Rows(&'a [(Vec<String>, String)]),
    /// [`Expected::Rows`] as two parameters the proxy binds, `$n` (the keys) and `$n+1` (the
    /// versions), text arrays; NULLs check nothing. For a one-column key only.
    RowParams(u16),
}

/// How the bump moves a version forward, as the session's catalog says (see
/// [`crate::catalog::resolve::ResolvedGuard::bump`]). Versions never repeat for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bump {
    /// The kind's own: a counter `+ 1`, a timestamp the clock (at least a microsecond on).
    #[default]
    Plain,
    /// A counter whose default draws from the sequence with this OID: the bump draws from it
    /// too, so no insert can later start the key again at a version it had.
    Sequence(u32),
    /// A timestamp of lower precision: the clock, at least this many microseconds (the
    /// column's smallest step) on, so the rounded value still moves.
    Step(u32),
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
    if is_reserved_lowercase(name) {
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

/// The setting an observed check writes for each row it lets through (observe mode: the
/// write keeps the client's effect): empty when the row is at the expected version (or
/// nothing is expected of it), else the version found and `#`, and for a check of the known
/// rows the row's position in their list and `#` (`7#`, `7#3#`). Set with `set_config(...,
/// true)` in the `WHERE`, so it is evaluated on the row version the write replaces (again,
/// after a concurrent update), and read back by the first column the proxy appends to the
/// write's `RETURNING`, which PostgreSQL evaluates for that row right after.
pub const OBSERVED_SETTING: &str = "optlock.observed";

/// Appends `set_config('optlock.observed', CASE WHEN <matched> THEN '' ELSE
/// concat(<version>, '#'<more>) END, true) IS NOT NULL` with `matched` and `more` written by
/// the closures: always true, so the row is written as the client asked.
fn push_observed(
    out: &mut String,
    matched: impl FnOnce(&mut String),
    q: &str,
    version: &str,
    more: impl FnOnce(&mut String),
) {
    out.push_str("set_config('");
    out.push_str(OBSERVED_SETTING);
    out.push_str("', CASE WHEN ");
    matched(out);
    out.push_str(" THEN '' ELSE concat(");
    push_column(out, q, version);
    out.push_str(", '#'");
    more(out);
    out.push_str(") END, true) IS NOT NULL");
}

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
        self.render_with(text, guards, expected, true, Bump::Plain, out);
    }

    /// [`GuardedWrite::render`], leaving out the proxy's key and version `RETURNING` columns
    /// when `returning` is false (nothing the session tracks can change), bumping as `bump`
    /// says. Returns how many columns the proxy appended to the result: the observed column
    /// of an observed check (see [`OBSERVED_SETTING`]), then the key and version columns.
    pub fn render_with(
        &self,
        text: &str,
        guards: &GuardSet,
        expected: Expected<'_>,
        returning: bool,
        bump: Bump,
        out: &mut String,
    ) -> usize {
        let s = &self.splice;
        let names = &guards.sql_names[self.guard];
        let observed = self.observes(guards, expected);
        let mut r = Renderer {
            text,
            out,
            at: s.statement.start,
            q: s.qualifier.as_str(),
            version: names.version.as_str(),
            observe: observed,
        };
        if let Some(set_end) = s.set_end
            && self.adds_bump(guards)
        {
            r.bump(guards.guards[self.guard].kind, bump, set_end);
        }
        match expected {
            Expected::None => {}
            Expected::Rows(rows) => r.known_rows(self, KnownList::Literal(rows), &names.key),
            Expected::RowParams(n) => r.known_rows(self, KnownList::Params(n), &names.key),
            _ if self.op == WriteOp::Upsert => {}
            _ => r.check(self, expected),
        }
        let columns = if returning {
            self.added_columns(guards)
        } else {
            0
        };
        if columns > 0 || observed {
            r.returning(
                s.returning_at,
                self.client_returning,
                &names.key[..],
                columns > 0,
            );
        }
        r.copy_to(s.statement.end);
        columns + observed as usize
    }

    /// True when a rendering with `expected` checks versions in observe mode: the check
    /// records what it finds ([`OBSERVED_SETTING`]) instead of filtering or raising, and the
    /// proxy reads it from the first column it appends. Never inside `WITH`, whose
    /// `RETURNING` feeds the statement, nor for an upsert.
    pub fn observes(&self, guards: &GuardSet, expected: Expected<'_>) -> bool {
        // An upsert's inserted rows run no check: their RETURNING would read another row's.
        !matches!(expected, Expected::None)
            && self.op != WriteOp::Upsert
            && !self.splice.in_cte
            && guards.guards[self.guard].observes()
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

/// One rendering in progress: the statement's text, copied to `out` up to each insertion in
/// turn.
struct Renderer<'a> {
    text: &'a str,
    out: &'a mut String,
    /// How much of `text` is in `out` already.
    at: usize,
    /// SQL that qualifies the target's columns (see [`Splice::qualifier`]).
    q: &'a str,
    /// The version column as SQL.
    version: &'a str,
    /// The check observes instead of filtering or raising (see [`OBSERVED_SETTING`]).
    observe: bool,
}

impl Renderer<'_> {
    /// Copies the text up to `pos`.
    fn copy_to(&mut self, pos: usize) {
        self.out.push_str(&self.text[self.at..pos]);
        self.at = pos;
    }

    /// Appends the target's `column` (already SQL), qualified.
    fn column(&mut self, column: &str) {
        push_column(self.out, self.q, column);
    }

    /// The version bump, at the end of the `SET` list.
    fn bump(&mut self, kind: VersionKind, bump: Bump, set_end: usize) {
        if kind == VersionKind::Xmin {
            return;
        }
        self.copy_to(set_end);
        self.out.push_str(", ");
        self.out.push_str(self.version);
        self.out.push_str(" = ");
        match (kind, bump) {
            (VersionKind::Counter, Bump::Sequence(seq)) => {
                // The OID as a string: any OID, whatever the search_path.
                self.out.push_str("nextval('");
                self.out.push_str(itoa::Buffer::new().format(seq));
                self.out.push_str("'::regclass)");
            }
            (VersionKind::Counter, _) => {
                self.column(self.version);
                self.out.push_str(" + 1");
            }
            (_, Bump::Step(micros)) if micros > 1 => {
                self.out.push_str("GREATEST(clock_timestamp(), ");
                self.column(self.version);
                self.out.push_str(" + interval '");
                self.out.push_str(itoa::Buffer::new().format(micros));
                self.out.push_str(" microseconds')");
            }
            _ => {
                self.out.push_str("GREATEST(clock_timestamp(), ");
                self.column(self.version);
                self.out.push_str(" + interval '1 microsecond')");
            }
        }
    }

    /// The version check: `(condition) AND check`, or ` WHERE check` when the write has no
    /// condition.
    fn check(&mut self, write: &GuardedWrite, expected: Expected<'_>) {
        let s = &write.splice;
        let text = self.text;
        // A keyed write outside WITH whose condition calls nothing (no parenthesis: no
        // function, no subquery, so evaluating it twice changes nothing) fails on the spot
        // when its row is found at another version (see [`CONFLICT_MARKER`]). Any other
        // write only filters on the version, and 0 rows is checked afterwards.
        let raising = match (&write.target, s.in_cte, &s.condition) {
            (Target::Key(_), false, Some(cond)) if !text[cond.clone()].contains('(') => {
                Some(&text[cond.clone()])
            }
            _ => None,
        };
        self.open_check(s);
        if self.observe {
            self.observed(expected);
        } else {
            self.expected(expected, raising);
        }
    }

    /// The observed check of the version against `expected` (a literal or a parameter): it
    /// records what it finds and lets every row through.
    fn observed(&mut self, expected: Expected<'_>) {
        let (q, version) = (self.q, self.version);
        let matched = |out: &mut String| {
            push_column(out, q, version);
            out.push_str(" = ");
            match expected {
                Expected::Literal(v) => push_literal(out, v),
                Expected::Param(n) => {
                    push_param(out, n);
                    out.push_str(" OR ");
                    push_param(out, n);
                    out.push_str(" IS NULL");
                }
                // Not reached: other forms are checked row by row (`known_rows`).
                _ => out.push_str("NULL"),
            }
        };
        push_observed(self.out, matched, q, version, |_| {});
    }

    /// Copies the text up to where a check goes, and opens it: `(condition) AND `, or
    /// ` WHERE ` when the write has no condition.
    fn open_check(&mut self, s: &Splice) {
        match &s.condition {
            Some(cond) => {
                self.copy_to(cond.start);
                self.out.push('(');
                self.copy_to(cond.end);
                self.out.push_str(") AND ");
            }
            None => {
                self.copy_to(s.where_at);
                self.out.push_str(" WHERE ");
            }
        }
    }

    /// The check of the version against `expected`; with `raising` (the write's condition),
    /// a row that meets it at another version raises the conflict.
    fn expected(&mut self, expected: Expected<'_>, raising: Option<&str>) {
        let (q, version) = (self.q, self.version);
        let out = &mut *self.out;
        match (expected, raising) {
            // Nothing to check, or the known rows: not reached (see `render_with`).
            (Expected::None | Expected::Rows(_) | Expected::RowParams(_), _) => {}
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

    /// The proxy's `RETURNING` columns, after the client's own `RETURNING` list when there is
    /// one: the observed setting when the check observes, then (with `rows`) the key columns
    /// and the version.
    fn returning(
        &mut self,
        returning_at: usize,
        client_returning: bool,
        key: &[String],
        rows: bool,
    ) {
        self.copy_to(returning_at);
        self.out.push_str(if client_returning {
            ", "
        } else {
            " RETURNING "
        });
        if self.observe {
            self.out.push_str("current_setting('");
            self.out.push_str(OBSERVED_SETTING);
            self.out.push_str("', true)");
            if rows {
                self.out.push_str(", ");
            }
        }
        if rows {
            for k in key {
                self.column(k);
                self.out.push_str(", ");
            }
            self.column(self.version);
        }
    }
}

mod known;
use known::KnownList;
pub use known::{array_text, known_cap};
#[cfg(test)]
mod tests;
