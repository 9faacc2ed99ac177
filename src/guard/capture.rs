//! Read capture: which table instances of a `SELECT` get their key and version columns added
//! to the statement's output, and where those columns go in its text.
//!
//! A top-level plain `SELECT` whose `FROM` names guarded tables (joins, comma joins, `WHERE`,
//! `ORDER BY`, `LIMIT`/`OFFSET`, `FOR UPDATE/SHARE` allowed) is captured: after its last
//! select-list item the proxy appends, for each guarded table instance of its `FROM`, the
//! instance's key columns and version column, qualified by the instance's alias or its name as
//! written. Each added column gets an alias of the proxy's, so that an `ORDER BY` naming an
//! output column never finds it ambiguous. Adding columns must never change what the
//! statement returns, so nothing is captured under `DISTINCT`, `GROUP BY`, `HAVING`, window
//! functions, set operations, `SELECT ... INTO`, or from a table that is only in a subquery or
//! a CTE. Aggregates are told by name by the session (user-defined ones included), so the
//! analysis records the names of the functions the select list and `ORDER BY` call
//! ([`Capture::calls`]).
//!
//! The AST decides, the tokens locate: the insertion point is the end of the select list, at
//! the `FROM` of the statement's own `SELECT`, and the number of top-level commas before it
//! must agree with the AST's select list.

use std::ops::ControlFlow;

use sqlparser::ast::{
    self, Expr, FunctionArguments, GroupByExpr, OrderByKind, SelectFlavor, SetExpr, TableFactor,
    TableWithJoins,
};
use sqlparser::tokenizer::Token;

use super::keywords::{fold_ident, written};
use super::lex::Lexed;
use super::resolve::{name_parts, resolve};
use super::{Capture, CaptureTable, CopyFormat, CursorDecl, GuardSet};

/// The name each added column gets: one no client spells, so that an `ORDER BY` of an output
/// column never meets one of the proxy's, and a result's `RowDescription` tells the proxy's
/// columns apart.
pub const COLUMN_NAME: &str = "?optlock?";

/// [`COLUMN_NAME`] as SQL.
pub const COLUMN_ALIAS: &str = "\"?optlock?\"";

/// The capture of a statement text holding one parsed statement (as statement 0, offsets in
/// `lexed`'s text), if it reads guarded tables in a form capture keeps exact.
pub(super) fn capture(stmt: &ast::Statement, lexed: &Lexed, guards: &GuardSet) -> Option<Capture> {
    let mut cursor = None;
    let (query, copy) = match stmt {
        ast::Statement::Query(query) => (query, None),
        ast::Statement::Declare { stmts } => {
            let [declare] = stmts.as_slice() else {
                return None;
            };
            let (Some(ast::DeclareType::Cursor), Some(query), [name]) = (
                &declare.declare_type,
                &declare.for_query,
                declare.names.as_slice(),
            ) else {
                return None;
            };
            cursor = Some(CursorDecl {
                name: fold_ident(name),
                hold: declare.hold == Some(true),
            });
            (query, None)
        }
        ast::Statement::Copy {
            source: ast::CopySource::Query(query),
            to: true,
            target: ast::CopyTarget::Stdout,
            options,
            legacy_options,
            ..
        } => (query, Some(copy_format(options, legacy_options)?)),
        _ => return None,
    };
    let select = plain_select(query)?;
    let ctes: Vec<String> = query
        .with
        .iter()
        .flat_map(|w| &w.cte_tables)
        .map(|c| fold_ident(&c.alias.name))
        .collect();
    let mut items = Items::default();
    for from in &select.from {
        items.table_with_joins(from, guards, &ctes)?;
    }
    if items.tables.is_empty() || has_duplicates(&items.exposed) {
        return None;
    }
    let calls = calls(&select.projection, query.order_by.as_ref())?;
    let at = select_list_end(lexed, select)?;
    Some(Capture {
        statement: 0,
        at,
        tables: items.tables,
        calls,
        copy,
        cursor,
    })
}

/// The format of a `COPY ... TO STDOUT` with these options, when the proxy can take columns
/// off its rows: text with the tab delimiter and no header line (any `NULL` string or
/// `ENCODING`: neither changes where a tab is), or binary. CSV is not captured (a field may
/// hold the delimiter in quotes).
fn copy_format(
    options: &[ast::CopyOption],
    legacy: &[ast::CopyLegacyOption],
) -> Option<CopyFormat> {
    let mut format = CopyFormat::Text;
    for o in options {
        match o {
            ast::CopyOption::Format(f) => {
                format = match fold_ident(f).as_str() {
                    "text" => CopyFormat::Text,
                    "binary" => CopyFormat::Binary,
                    _ => return None,
                }
            }
            ast::CopyOption::Delimiter('\t') | ast::CopyOption::Header(false) => {}
            ast::CopyOption::Null(_) | ast::CopyOption::Encoding(_) => {}
            _ => return None,
        }
    }
    for o in legacy {
        match o {
            ast::CopyLegacyOption::Binary => format = CopyFormat::Binary,
            _ => return None,
        }
    }
    Some(format)
}

/// The query's `SELECT` when it is one whose output columns can be added to without changing
/// its result (see the module's doc).
fn plain_select(query: &ast::Query) -> Option<&ast::Select> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let query_ok = query.for_clause.is_none()
        && query.settings.is_none()
        && query.format_clause.is_none()
        && query.pipe_operators.is_empty();
    let group_by = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) => exprs.is_empty() && modifiers.is_empty(),
        GroupByExpr::All(_) => false,
    };
    let select_ok = select.distinct.is_none()
        && select.into.is_none()
        && select.having.is_none()
        && select.named_window.is_empty()
        && group_by
        && !select.projection.is_empty()
        && select.flavor == SelectFlavor::Standard
        && select.optimizer_hints.is_empty()
        && select.select_modifiers.is_none()
        && select.top.is_none()
        && select.exclude.is_none()
        && select.lateral_views.is_empty()
        && select.prewhere.is_none()
        && select.connect_by.is_empty()
        && select.cluster_by.is_empty()
        && select.distribute_by.is_empty()
        && select.sort_by.is_empty()
        && select.qualify.is_none()
        && select.value_table_mode.is_none();
    (query_ok && select_ok).then_some(select.as_ref())
}

/// What the `FROM` list exposes: the names its items are referred to by, and the guarded
/// table instances among them.
#[derive(Default)]
struct Items {
    exposed: Vec<String>,
    tables: Vec<CaptureTable>,
}

impl Items {
    /// One `FROM` item and its joins. `None` when the item cannot be captured safely.
    fn table_with_joins(
        &mut self,
        twj: &TableWithJoins,
        guards: &GuardSet,
        ctes: &[String],
    ) -> Option<()> {
        self.factor(&twj.relation, guards, ctes)?;
        for join in &twj.joins {
            self.factor(&join.relation, guards, ctes)?;
        }
        Some(())
    }

    fn factor(&mut self, f: &TableFactor, guards: &GuardSet, ctes: &[String]) -> Option<()> {
        match f {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                with_ordinality,
                partitions,
                json_path,
                index_hints,
                ..
            } => {
                let parts = name_parts(name)?;
                let exposed = match alias {
                    Some(a) => fold_ident(&a.name),
                    None => fold_ident(parts.last()?),
                };
                self.exposed.push(exposed.clone());
                let plain = args.is_none()
                    && with_hints.is_empty()
                    && version.is_none()
                    && !with_ordinality
                    && partitions.is_empty()
                    && json_path.is_none()
                    && index_hints.is_empty();
                // A one-part name that a CTE of the statement has is that CTE.
                let cte = parts.len() == 1 && ctes.contains(&exposed);
                if !plain || cte || alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
                    return Some(());
                }
                let Some(guard) = resolve(name, guards) else {
                    return Some(());
                };
                if guards.refusals.get(guard).is_none_or(Option::is_some) {
                    return Some(());
                }
                let qualifier = match alias {
                    Some(a) => written(&a.name),
                    None => parts
                        .iter()
                        .map(|i| written(i))
                        .collect::<Vec<_>>()
                        .join("."),
                };
                self.tables.push(CaptureTable {
                    guard,
                    qualifier,
                    unqualified: parts.len() == 1,
                });
                Some(())
            }
            // Inside a join with an alias, the tables' own names are hidden.
            TableFactor::NestedJoin {
                table_with_joins,
                alias: None,
            } => self.table_with_joins(table_with_joins, guards, ctes),
            other => {
                if let Some(alias) = factor_alias(other) {
                    self.exposed.push(fold_ident(&alias.name));
                }
                Some(())
            }
        }
    }
}

/// The alias of a `FROM` item other than a table.
fn factor_alias(f: &TableFactor) -> Option<&ast::TableAlias> {
    match f {
        TableFactor::Derived { alias, .. }
        | TableFactor::TableFunction { alias, .. }
        | TableFactor::Function { alias, .. }
        | TableFactor::UNNEST { alias, .. }
        | TableFactor::JsonTable { alias, .. }
        | TableFactor::NestedJoin { alias, .. } => alias.as_ref(),
        _ => None,
    }
}

fn has_duplicates(names: &[String]) -> bool {
    names
        .iter()
        .enumerate()
        .any(|(i, n)| names[..i].contains(n))
}

/// The names (folded, last part) of the functions the select list and `ORDER BY` call, each
/// once; `None` when one is certainly an aggregate or a window function (`OVER`, `FILTER`,
/// `WITHIN GROUP`), or the `ORDER BY` is not plain expressions.
fn calls(projection: &[ast::SelectItem], order_by: Option<&ast::OrderBy>) -> Option<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    let mut visit = |e: &Expr| -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            let aggregate_only = f.over.is_some()
                || f.filter.is_some()
                || !f.within_group.is_empty()
                || matches!(&f.args, FunctionArguments::List(l)
                    if !l.clauses.is_empty() || l.duplicate_treatment.is_some());
            if aggregate_only {
                return ControlFlow::Break(());
            }
            let Some(name) = name_parts(&f.name).and_then(|p| p.last().map(|i| fold_ident(i)))
            else {
                return ControlFlow::Break(());
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
        ControlFlow::Continue(())
    };
    if projection
        .iter()
        .any(|item| ast::visit_expressions(item, &mut visit).is_break())
    {
        return None;
    }
    if let Some(order_by) = order_by {
        let OrderByKind::Expressions(exprs) = &order_by.kind else {
            return None;
        };
        if order_by.interpolate.is_some()
            || exprs
                .iter()
                .any(|e| ast::visit_expressions(e, &mut visit).is_break())
        {
            return None;
        }
    }
    Some(names)
}

/// Where the select list of `select` ends in the text: the end of its last item, before the
/// `FROM` of this `SELECT` (the first `FROM` outside parentheses that is not part of `IS
/// [NOT] DISTINCT FROM`). `None` unless the top-level commas before it agree with the AST.
fn select_list_end(lexed: &Lexed, select: &ast::Select) -> Option<usize> {
    let at = select.select_token.0.span.start;
    let first = lexed
        .toks
        .binary_search_by_key(&at, |t| t.span.start)
        .ok()?;
    let end = lexed.toks.len();
    let mut depth = 0i32;
    let mut commas = 0usize;
    for i in first + 1..end {
        match lexed.token(i) {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            Token::Comma if depth == 0 => commas += 1,
            Token::Word(_) if depth == 0 && lexed.is_word(i, "from") => {
                let after_distinct = lexed
                    .prev_sig(i, first)
                    .is_some_and(|p| lexed.is_word(p, "distinct"));
                if after_distinct {
                    continue;
                }
                if commas + 1 != select.projection.len() {
                    return None;
                }
                let last = lexed.prev_sig(i, first + 1)?;
                return Some(lexed.spans[last].end);
            }
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    None
}

/// Appends the columns of `tables` (a capture's, those the session takes) to `out`: for each,
/// its key columns and version column, qualified, each with [`COLUMN_ALIAS`].
pub fn push_columns<'a>(
    out: &mut impl std::fmt::Write,
    tables: impl IntoIterator<Item = &'a CaptureTable>,
    guards: &GuardSet,
) {
    for t in tables {
        let names = &guards.sql_names[t.guard];
        for column in names.key.iter().chain(std::iter::once(&names.version)) {
            // Writing to a String or a BytesMut never fails; plain `write_str`s (no
            // formatting machinery) keep this cheap on the per-query path.
            for part in [", ", &t.qualifier, ".", column, " AS ", COLUMN_ALIAS] {
                let _ = out.write_str(part);
            }
        }
    }
}

/// The number of columns [`push_columns`] appends for `tables`.
pub fn added_columns<'a>(
    tables: impl IntoIterator<Item = &'a CaptureTable>,
    guards: &GuardSet,
) -> usize {
    tables
        .into_iter()
        .map(|t| guards.guards[t.guard].key.len() + 1)
        .sum()
}

#[cfg(test)]
mod tests;
