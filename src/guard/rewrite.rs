//! Rendering a guarded write: the original text with the version predicate, the bump and the
//! proxy's `RETURNING` columns spliced in at token positions found by [`super::analyze`].
//!
//! Everything the client wrote stays byte for byte (comments, literals, dollar quotes,
//! whitespace); the renderer only inserts.

use std::borrow::Cow;
use std::ops::Range;

use super::{GuardSet, GuardedWrite, WriteOp};
use crate::config::{VersionKind, quote_ident};

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

/// An identifier as SQL: quoted when `quote_ident` would, or when it is a reserved word.
fn ident(name: &str) -> Cow<'_, str> {
    let quoted = quote_ident(name);
    if quoted.starts_with('"') {
        return Cow::Owned(quoted);
    }
    if RESERVED.binary_search(&name).is_ok() {
        return Cow::Owned(format!("\"{name}\""));
    }
    Cow::Borrowed(name)
}

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
    if v.contains('\\') {
        out.push_str("E'");
        out.push_str(&v.replace('\\', "\\\\").replace('\'', "''"));
    } else {
        out.push('\'');
        out.push_str(&v.replace('\'', "''"));
    }
    out.push('\'');
}

impl GuardedWrite {
    /// Appends the rewritten statement (only this statement's range of `text`) to `out`.
    pub fn render(&self, text: &str, guards: &GuardSet, expected: Expected<'_>, out: &mut String) {
        let guard = &guards.guards[self.guard];
        let s = &self.splice;
        let q = s.qualifier.as_str();
        let version = ident(&guard.version);
        let mut at = s.statement.start;
        let mut copy_to = |out: &mut String, pos: usize| {
            out.push_str(&text[at..pos]);
            at = pos;
        };

        if let Some(set_end) = s.set_end
            && !self.sets_version
        {
            let bump = match guard.kind {
                VersionKind::Counter => Some(format!(", {version} = {q}.{version} + 1")),
                VersionKind::Timestamp => Some(format!(
                    ", {version} = GREATEST(clock_timestamp(), {q}.{version} + interval '1 microsecond')"
                )),
                VersionKind::Xmin => None,
            };
            if let Some(bump) = bump {
                copy_to(out, set_end);
                out.push_str(&bump);
            }
        }

        if self.op != WriteOp::Upsert {
            let mut predicate = String::new();
            match expected {
                Expected::None => {}
                Expected::Literal(v) => {
                    predicate = format!("{q}.{version} = ");
                    push_literal(&mut predicate, v);
                }
                Expected::Param(n) => {
                    predicate = format!("({q}.{version} = ${n} OR ${n} IS NULL)");
                }
            }
            if !predicate.is_empty() {
                match &s.condition {
                    Some(cond) => {
                        copy_to(out, cond.start);
                        out.push('(');
                        copy_to(out, cond.end);
                        out.push_str(") AND ");
                        out.push_str(&predicate);
                    }
                    None => {
                        copy_to(out, s.where_at);
                        out.push_str(" WHERE ");
                        out.push_str(&predicate);
                    }
                }
            }
        }

        if self.added_columns(guards) > 0 {
            copy_to(out, s.returning_at);
            out.push_str(if self.client_returning {
                ", "
            } else {
                " RETURNING "
            });
            for k in &guard.key {
                out.push_str(q);
                out.push('.');
                out.push_str(&ident(k));
                out.push_str(", ");
            }
            out.push_str(q);
            out.push('.');
            out.push_str(&version);
        }
        copy_to(out, s.statement.end);
    }

    /// Number of columns the proxy appends to the result rows (key columns + version).
    pub fn added_columns(&self, guards: &GuardSet) -> usize {
        if self.op == WriteOp::Delete || self.splice.in_cte {
            0
        } else {
            guards.guards[self.guard].key.len() + 1
        }
    }
}
