//! The decision: with sqlparser's AST, which statements write a guarded table, and whether
//! such a write can be rewritten (one guarded write, in a position the rewrite handles) or is
//! refused.

use std::ops::ControlFlow;

use sqlparser::ast::{
    self, FromTable, ObjectName, OnConflictAction, OnInsert, SetExpr, TableFactor, TableObject,
    Visit, Visitor,
};
use sqlparser::tokenizer::Location;

use super::resolve::resolve;
use super::{Action, GuardSet, WriteOp};

/// The kind of a guarded write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FoundOp {
    Write(WriteOp),
    Merge,
}

/// A write to a guarded table somewhere in a statement.
pub(super) struct Found {
    /// Index of the guard in [`GuardSet::guards`].
    pub(super) guard: usize,
    pub(super) op: FoundOp,
    /// Where its first keyword (`UPDATE`, `DELETE`, `INSERT`, `MERGE`) starts.
    pub(super) at: Location,
    /// The (sub)statement that writes.
    pub(super) stmt: ast::Statement,
}

/// Collects the guarded writes anywhere in a statement (CTEs and subqueries included).
struct Collector<'g> {
    guards: &'g GuardSet,
    found: Vec<Found>,
}

impl Visitor for Collector<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &ast::Statement) -> ControlFlow<()> {
        let hit = match stmt {
            ast::Statement::Update(u) => match &u.table.relation {
                TableFactor::Table { name, .. } => resolve(name, self.guards).map(|g| {
                    (
                        g,
                        FoundOp::Write(WriteOp::Update),
                        u.update_token.0.span.start,
                    )
                }),
                _ => None,
            },
            ast::Statement::Delete(d) => delete_target(d)
                .and_then(|(name, _)| resolve(name, self.guards))
                .map(|g| {
                    (
                        g,
                        FoundOp::Write(WriteOp::Delete),
                        d.delete_token.0.span.start,
                    )
                }),
            ast::Statement::Insert(i) => match (&i.table, &i.on) {
                (
                    TableObject::TableName(name),
                    Some(OnInsert::OnConflict(ast::OnConflict {
                        action: OnConflictAction::DoUpdate(_),
                        ..
                    })),
                ) => resolve(name, self.guards).map(|g| {
                    (
                        g,
                        FoundOp::Write(WriteOp::Upsert),
                        i.insert_token.0.span.start,
                    )
                }),
                _ => None,
            },
            ast::Statement::Merge(m) => match &m.table {
                TableFactor::Table { name, .. } => resolve(name, self.guards)
                    .map(|g| (g, FoundOp::Merge, m.merge_token.0.span.start)),
                _ => None,
            },
            _ => None,
        };
        if let Some((guard, op, at)) = hit {
            self.found.push(Found {
                guard,
                op,
                at,
                stmt: stmt.clone(),
            });
        }
        ControlFlow::Continue(())
    }
}

/// The target of a `DELETE`, with its alias.
pub(super) fn delete_target(d: &ast::Delete) -> Option<(&ObjectName, Option<&ast::TableAlias>)> {
    let from = match &d.from {
        FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
    };
    match &from.first()?.relation {
        TableFactor::Table { name, alias, .. } => Some((name, alias.as_ref())),
        _ => None,
    }
}

/// Where the write of a (sub)statement starts, when it is an UPDATE, DELETE or INSERT.
fn write_start(stmt: &ast::Statement) -> Option<Location> {
    match stmt {
        ast::Statement::Update(u) => Some(u.update_token.0.span.start),
        ast::Statement::Delete(d) => Some(d.delete_token.0.span.start),
        ast::Statement::Insert(i) => Some(i.insert_token.0.span.start),
        _ => None,
    }
}

/// Where the write of a query body starts, when it is an UPDATE, DELETE or INSERT.
fn body_write_start(body: &SetExpr) -> Option<Location> {
    match body {
        SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Insert(s) => write_start(s),
        _ => None,
    }
}

/// Whether a write at `at` can be rewritten: `Some(false)` for the statement itself (also
/// after a `WITH`), `Some(true)` for a data-modifying CTE of the top-level `WITH`.
fn rewritable_position(top: &ast::Statement, at: Location) -> Option<bool> {
    if write_start(top) == Some(at) {
        return Some(false);
    }
    let ast::Statement::Query(q) = top else {
        return None;
    };
    if body_write_start(&q.body) == Some(at) {
        return Some(false);
    }
    let with = q.with.as_ref()?;
    with.cte_tables
        .iter()
        .any(|cte| body_write_start(&cte.query.body) == Some(at))
        .then_some(true)
}

/// What [`decide`] says about a parsed statement.
pub(super) enum Decision {
    /// Passed or refused as it stands.
    Done(Action),
    /// The statement's one guarded write, to rewrite once its clauses are located.
    Rewrite {
        write: Box<Found>,
        /// The write is a data-modifying CTE of the top-level `WITH`.
        in_cte: bool,
    },
}

/// Decides a statement sqlparser parsed.
pub(super) fn decide(top: &ast::Statement, guards: &GuardSet, tx_control: bool) -> Decision {
    let pass = Decision::Done(Action::Pass { tx_control });
    let in_explain = match top {
        // Writes inside function, procedure and trigger bodies run on the server, out of reach.
        ast::Statement::CreateFunction(_)
        | ast::Statement::CreateProcedure { .. }
        | ast::Statement::CreateTrigger(_) => return pass,
        // `EXPLAIN` is read from its tokens before parsing (see `explain.rs`); one that reaches
        // here counts as running its statement.
        ast::Statement::Explain { .. } => true,
        _ => false,
    };
    let mut collector = Collector {
        guards,
        found: Vec::new(),
    };
    let _ = top.visit(&mut collector);
    let mut found = collector.found;
    if found.is_empty() {
        return pass;
    }
    if let Some(refusal) = refusal(top, &found, in_explain, guards) {
        return Decision::Done(refusal);
    }
    let write = found.swap_remove(0);
    match rewritable_position(top, write.at) {
        Some(in_cte) => Decision::Rewrite {
            write: Box::new(write),
            in_cte,
        },
        None => {
            let table = guards.guards[write.guard].table.clone();
            Decision::Done(Action::Refuse {
                unparsed: false,
                reason: format!(
                    "optlock cannot rewrite a write to guarded table {table} in this position"
                ),
                table,
            })
        }
    }
}

/// The refusal of a statement whose guarded writes (`found`, at least one) cannot carry a
/// version check, whatever their position.
fn refusal(
    top: &ast::Statement,
    found: &[Found],
    in_explain: bool,
    guards: &GuardSet,
) -> Option<Action> {
    let table = |f: &Found| guards.guards[f.guard].table.clone();
    let first = &found[0];
    if let Some((f, reason)) = found
        .iter()
        .find_map(|f| Some((f, guards.refusals.get(f.guard)?.as_ref()?)))
    {
        // Named by the guarded table it reaches: the client is told to write that one.
        return Some(Action::Refuse {
            unparsed: false,
            table: guards.guards[guards.roots[f.guard]].table.clone(),
            reason: reason.clone(),
        });
    }
    if let Some(m) = found.iter().find(|f| f.op == FoundOp::Merge) {
        return Some(Action::Refuse {
            unparsed: false,
            table: table(m),
            reason: format!(
                "MERGE cannot carry a version check; optlock refuses it on guarded table {}",
                table(m)
            ),
        });
    }
    if found.len() > 1 {
        let names: Vec<String> = found.iter().map(|f| table(f).to_string()).collect();
        return Some(Action::Refuse {
            unparsed: false,
            table: table(first),
            reason: format!(
                "several guarded writes in one statement ({}); optlock checks one per statement",
                names.join(", ")
            ),
        });
    }
    if in_explain {
        return Some(Action::Refuse {
            unparsed: false,
            table: table(first),
            reason: format!(
                "EXPLAIN ANALYZE runs the write without a version check; optlock refuses it on guarded table {}",
                table(first)
            ),
        });
    }
    if matches!(top, ast::Statement::Prepare { .. }) {
        return Some(Action::Refuse {
            unparsed: false,
            table: table(first),
            reason: format!(
                "a guarded write in SQL-level PREPARE cannot carry a version check (use the protocol's Parse instead); guarded table {}",
                table(first)
            ),
        });
    }
    None
}
