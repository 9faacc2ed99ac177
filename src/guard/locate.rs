//! Clause location: where the `SET` list, `WHERE` condition and `RETURNING` list of a guarded
//! write sit in the statement text, found with the tokenizer's positions and checked against
//! the AST, and the [`Splice`] and [`GuardedWrite`] made from them.
//!
//! The AST decides, the tokens locate: the rewritten text is always the client's own text with
//! insertions, never SQL re-rendered from the AST.

use std::ops::Range;
use std::sync::Arc;

use sqlparser::ast::{
    self, AssignmentTarget, Expr, Ident, ObjectName, OnConflictAction, OnInsert, TableFactor,
    TableObject,
};
use sqlparser::tokenizer::{Location, Token};

use super::decide::{Found, FoundOp, delete_target};
use super::keywords::{fold_ident, written};
use super::lex::Lexed;
use super::predicate::key_and_pin;
use super::resolve::{TargetName, name_parts};
use super::rewrite::Splice;
use super::{Action, GuardSet, GuardedWrite, Target, WriteOp};

/// The guarded write a statement's one write becomes, or its refusal when its clauses cannot
/// be located.
pub(super) fn guarded_write(
    found: &Found,
    in_cte: bool,
    lexed: &Lexed,
    r: &Range<usize>,
    guards: &GuardSet,
) -> Action {
    match build_write(found, in_cte, lexed, r, guards) {
        Some(w) => Action::Write(Arc::new(w)),
        None => {
            let table = guards.guards[found.guard].table.clone();
            Action::Refuse {
                unparsed: false,
                reason: format!(
                    "optlock cannot locate the clauses of this write to guarded table {table}"
                ),
                table,
            }
        }
    }
}

/// The guarded write `found` is: its clauses from the AST, their positions from the tokens
/// (the two must agree), the splice points, and the key and version its condition fixes.
fn build_write(
    found: &Found,
    in_cte: bool,
    lexed: &Lexed,
    r: &Range<usize>,
    guards: &GuardSet,
) -> Option<GuardedWrite> {
    let guard = &guards.guards[found.guard];
    let FoundOp::Write(op) = found.op else {
        return None;
    };
    let clauses = match (op, &found.stmt) {
        (WriteOp::Update, ast::Statement::Update(u)) => Clauses::update(u, &guard.version)?,
        (WriteOp::Delete, ast::Statement::Delete(d)) => Clauses::delete(d)?,
        (WriteOp::Upsert, ast::Statement::Insert(i)) => Clauses::upsert(i, &guard.version)?,
        _ => return None,
    };
    let scope = Scope::new(lexed, r, found.at)?;
    let keywords = Keywords::locate(&scope, op)?;
    if !keywords.agree_with(&clauses, &scope) {
        return None;
    }
    let qualifier = qualifier(clauses.name, clauses.alias)?;
    let splice = keywords.splice(&scope, qualifier, in_cte)?;
    let target = TargetName {
        alias: clauses.alias.map(fold_ident),
        name: name_parts(clauses.name)?.last().map(|i| fold_ident(i))?,
        schema: guard.table.schema.clone(),
    };
    let (target, pinned) = match op {
        WriteOp::Upsert => (Target::Bulk, None),
        _ => key_and_pin(clauses.selection, &target, &guard.key, &guard.version),
    };
    Some(GuardedWrite {
        guard: found.guard,
        op,
        target,
        pinned,
        sets_version: clauses.sets_version,
        client_returning: clauses.returning,
        max_param: lexed.max_param(r),
        splice,
    })
}

/// What the AST says about the clauses of one write, made by one constructor per operation.
struct Clauses<'s> {
    /// The target table and its alias, as the client wrote them.
    name: &'s ObjectName,
    alias: Option<&'s Ident>,
    /// The `WHERE` condition (of `DO UPDATE` for an upsert).
    selection: Option<&'s Expr>,
    /// An `UPDATE ... FROM`.
    from: bool,
    returning: bool,
    /// The `SET` list (of `DO UPDATE SET` for an upsert) assigns the version column.
    sets_version: bool,
}

impl<'s> Clauses<'s> {
    fn update(u: &'s ast::Update, version: &str) -> Option<Clauses<'s>> {
        let TableFactor::Table { name, alias, .. } = &u.table.relation else {
            return None;
        };
        Some(Clauses {
            name,
            alias: alias.as_ref().map(|a| &a.name),
            selection: u.selection.as_ref(),
            from: u.from.is_some(),
            returning: u.returning.is_some(),
            sets_version: assigns(&u.assignments, version),
        })
    }

    fn delete(d: &'s ast::Delete) -> Option<Clauses<'s>> {
        let (name, alias) = delete_target(d)?;
        Some(Clauses {
            name,
            alias: alias.map(|a| &a.name),
            selection: d.selection.as_ref(),
            from: false,
            returning: d.returning.is_some(),
            sets_version: false,
        })
    }

    /// `INSERT ... ON CONFLICT DO UPDATE`.
    fn upsert(ins: &'s ast::Insert, version: &str) -> Option<Clauses<'s>> {
        let TableObject::TableName(name) = &ins.table else {
            return None;
        };
        let Some(OnInsert::OnConflict(ast::OnConflict {
            action: OnConflictAction::DoUpdate(du),
            ..
        })) = &ins.on
        else {
            return None;
        };
        Some(Clauses {
            name,
            alias: ins.table_alias.as_ref().map(|a| &a.alias),
            selection: du.selection.as_ref(),
            from: false,
            returning: ins.returning.is_some(),
            sets_version: assigns(&du.assignments, version),
        })
    }
}

/// Whether an assignment list assigns `column`.
fn assigns(assignments: &[ast::Assignment], column: &str) -> bool {
    let names = |n: &ObjectName| {
        name_parts(n)
            .and_then(|p| p.last().map(|i| fold_ident(i)))
            .is_some_and(|c| c == column)
    };
    assignments.iter().any(|a| match &a.target {
        AssignmentTarget::ColumnName(n) => names(n),
        AssignmentTarget::Tuple(ns) => ns.iter().any(names),
    })
}

/// SQL text that qualifies the target's columns: the alias if any, else the table name as
/// written.
fn qualifier(name: &ObjectName, alias: Option<&Ident>) -> Option<String> {
    if let Some(a) = alias {
        return Some(written(a));
    }
    let parts = name_parts(name)?;
    Some(
        parts
            .iter()
            .map(|i| written(i))
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// The tokens of one write in its statement: a write may sit in parentheses (a CTE), so its
/// clauses are the keywords at its own paren depth, up to where it ends.
struct Scope<'l, 'a> {
    lexed: &'l Lexed<'a>,
    /// The statement's tokens.
    r: Range<usize>,
    /// The write's first keyword (`UPDATE`, `DELETE`, `INSERT`).
    first: usize,
    /// Paren depth before each token of the statement.
    depths: Vec<i32>,
    /// Paren depth of the write's first keyword.
    depth: i32,
    /// Where the write ends: its closing parenthesis, or the statement's end.
    end: usize,
}

impl<'l, 'a> Scope<'l, 'a> {
    /// The write whose first keyword starts at `at`.
    fn new(lexed: &'l Lexed<'a>, r: &Range<usize>, at: Location) -> Option<Scope<'l, 'a>> {
        let first = r.start
            + lexed.toks[r.clone()]
                .binary_search_by_key(&at, |t| t.span.start)
                .ok()?;
        let mut depths = Vec::with_capacity(r.len());
        let mut depth = 0i32;
        for i in r.clone() {
            depths.push(depth);
            match lexed.token(i) {
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen | Token::RBracket => depth -= 1,
                _ => {}
            }
        }
        let depth = depths[first - r.start];
        let end = (first + 1..r.end)
            .find(|&i| {
                depths[i - r.start] == depth
                    && matches!(lexed.token(i), Token::RParen | Token::RBracket)
            })
            .unwrap_or(r.end);
        Some(Scope {
            lexed,
            r: r.clone(),
            first,
            depths,
            depth,
            end,
        })
    }

    /// Token `i` is at the write's own depth.
    fn at_depth(&self, i: usize) -> bool {
        self.depths[i - self.r.start] == self.depth
    }

    /// The first keyword `word` at the write's depth, from token `from` to the write's end.
    fn find(&self, from: usize, word: &str) -> Option<usize> {
        (from..self.end).find(|&i| self.at_depth(i) && self.lexed.is_word(i, word))
    }

    /// End of the last significant token of the write before token `i`.
    fn before(&self, i: usize) -> Option<usize> {
        self.lexed
            .prev_sig(i, self.first)
            .map(|j| self.lexed.spans[j].end)
    }

    /// The `SET` of an upsert's `DO UPDATE SET` at the write's own depth (DO is reserved:
    /// nothing else uses it).
    fn do_update_set(&self) -> Option<usize> {
        let (lexed, end) = (self.lexed, self.end);
        let do_kw = (self.first + 1..end).find(|&i| {
            self.at_depth(i)
                && lexed.is_word(i, "do")
                && lexed
                    .next_sig(i + 1, end)
                    .filter(|&j| lexed.is_word(j, "update"))
                    .and_then(|j| lexed.next_sig(j + 1, end))
                    .is_some_and(|j| lexed.is_word(j, "set"))
        })?;
        lexed.next_sig(lexed.next_sig(do_kw + 1, end)? + 1, end)
    }

    /// The `FROM` of an `UPDATE ... FROM` at the write's depth, after token `after` (not the
    /// one of `IS DISTINCT FROM`).
    fn update_from(&self, after: usize) -> Option<usize> {
        (after..self.end).find(|&i| {
            self.at_depth(i)
                && self.lexed.is_word(i, "from")
                && !self
                    .lexed
                    .prev_sig(i, self.first)
                    .is_some_and(|p| self.lexed.is_word(p, "distinct"))
        })
    }

    /// Whether a token of `tokens` is an opening parenthesis.
    fn has_paren(&self, tokens: Range<usize>) -> bool {
        tokens
            .into_iter()
            .any(|i| matches!(self.lexed.token(i), Token::LParen))
    }
}

/// Where the clause keywords of a write sit, at the write's own depth.
struct Keywords {
    /// `SET` (of `DO UPDATE SET` for an upsert); `None` for `DELETE`.
    set: Option<usize>,
    /// `FROM` of an `UPDATE ... FROM`.
    from: Option<usize>,
    where_kw: Option<usize>,
    returning: Option<usize>,
}

impl Keywords {
    fn locate(scope: &Scope, op: WriteOp) -> Option<Keywords> {
        let set = match op {
            WriteOp::Update => Some(scope.find(scope.first + 1, "set")?),
            WriteOp::Upsert => Some(scope.do_update_set()?),
            WriteOp::Delete => None,
        };
        // Clause keywords at the write's depth, after SET (or after DELETE).
        let after = set.unwrap_or(scope.first) + 1;
        let from = match op {
            WriteOp::Update => scope.update_from(after),
            _ => None,
        };
        let where_kw = scope.find(after, "where");
        let returning = scope.find(where_kw.unwrap_or(after), "returning");
        Some(Keywords {
            set,
            from,
            where_kw,
            returning,
        })
    }

    /// The AST and the tokens agree on which clauses exist, and the condition is not `WHERE
    /// CURRENT OF` (no condition to extend).
    fn agree_with(&self, clauses: &Clauses, scope: &Scope) -> bool {
        let current_of = self.where_kw.is_some_and(|w| {
            scope
                .lexed
                .next_sig(w + 1, scope.end)
                .is_some_and(|j| scope.lexed.is_word(j, "current"))
        });
        self.from.is_some() == clauses.from
            && self.where_kw.is_some() == clauses.selection.is_some()
            && self.returning.is_some() == clauses.returning
            && !current_of
    }

    /// The splice points of the write; `None` unless they come in text order.
    fn splice(&self, scope: &Scope, qualifier: String, in_cte: bool) -> Option<Splice> {
        let lexed = scope.lexed;
        let body_end = self.returning.unwrap_or(scope.end);
        let set_end = match self.set {
            Some(_) => Some(scope.before(self.from.or(self.where_kw).unwrap_or(body_end))?),
            None => None,
        };
        let condition = match self.where_kw {
            Some(w) => {
                let first = lexed.next_sig(w + 1, body_end)?;
                Some(lexed.spans[first].start..scope.before(body_end)?)
            }
            None => None,
        };
        let where_at = scope.before(body_end)?;
        let returning_at = scope.before(scope.end)?;
        // Insertions go in text order.
        let points = [
            set_end,
            condition.as_ref().map(|c| c.start),
            condition.as_ref().map(|c| c.end),
            Some(where_at),
            Some(returning_at),
        ];
        if !points.iter().flatten().is_sorted() {
            return None;
        }
        Some(Splice {
            statement: lexed.spans[scope.r.start].start..lexed.spans[scope.r.end - 1].end,
            set_end,
            condition,
            where_at,
            returning_at,
            qualifier,
            in_cte,
            may_act_without_rows: self.may_act_without_rows(scope, body_end),
        })
    }

    /// The statement holds a parenthesis outside the write's `SET` list and `RETURNING` (see
    /// [`Splice::may_act_without_rows`]); `body_end` is where the `RETURNING` list starts.
    fn may_act_without_rows(&self, scope: &Scope, body_end: usize) -> bool {
        match self.set {
            Some(set) => {
                scope.has_paren(scope.r.start..set)
                    || scope.has_paren(self.from.or(self.where_kw).unwrap_or(body_end)..body_end)
            }
            None => scope.has_paren(scope.r.start..body_end),
        }
    }
}
