//! Statement analysis, the entry point: splits a SQL text into top-level statements (`lex`),
//! decides with sqlparser's AST which of them write a guarded table (`decide`), locates the
//! clauses a rewrite splices into (`locate`), and finds the reads that pin one row
//! ([`super::reads`]). Texts and statements sqlparser rejects are decided from their words
//! (`unparsed`).
//!
//! The AST decides, the tokens locate: the rewritten text is always the client's own text with
//! insertions, never SQL re-rendered from the AST.

use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::decide::{Decision, decide};
use super::explain::{Analyze, explain};
use super::lex::Lexed;
use super::locate::guarded_write;
use super::reads::read_facts;
use super::unparsed::{unparsed, untokenizable};
use super::{Action, Analysis, Capture, GuardSet, PinnedRead, Statement};

/// Analyses a SQL text (a simple `Query` string or one `Parse` statement).
pub fn analyze(sql: &str, guards: &GuardSet) -> Analysis {
    let lexed = match Lexed::new(sql) {
        Ok(lexed) => lexed,
        Err(()) => return untokenizable(sql, guards),
    };
    let mut statements = Vec::new();
    for segment in lexed.split() {
        let Some(toks) = lexed.trim(segment) else {
            continue;
        };
        let range = lexed.spans[toks.start].start..lexed.spans[toks.end - 1].end;
        let action = analyze_statement(&lexed, toks, guards);
        statements.push(Statement { range, action });
    }
    let mut analysis = Analysis {
        statements,
        reads: Vec::new(),
        read_unparsed: false,
        shared: Vec::new(),
        captures: Vec::new(),
    };
    add_reads(sql, &mut analysis, guards);
    analysis
}

/// The reads among the passed statements that name a guarded table: those that pin one row
/// of it, whether one of those statements could not be parsed as a read, the guards one of
/// them reads in more than one instance ([`Analysis::shared`]), and their captures.
fn add_reads(sql: &str, analysis: &mut Analysis, guards: &GuardSet) {
    let Analysis {
        statements,
        reads,
        read_unparsed,
        shared,
        captures,
    } = analysis;
    for (i, st) in statements.iter().enumerate() {
        let text = &sql[st.range.clone()];
        if st.action == (Action::Pass { tx_control: false })
            && guards.prefilter.names_guarded(text.as_bytes())
        {
            match read_facts(text, guards) {
                Ok(facts) => {
                    if let Some(read) = facts.pinned {
                        reads.push(PinnedRead {
                            statement: i,
                            ..read
                        });
                    }
                    for g in facts.shared {
                        if !shared.contains(&g) {
                            shared.push(g);
                        }
                    }
                    if let Some(c) = facts.capture {
                        captures.push(Capture {
                            statement: i,
                            at: st.range.start + c.at,
                            ..c
                        });
                    }
                }
                Err(_) => *read_unparsed = true,
            }
        }
    }
}

fn analyze_statement(lexed: &Lexed, r: Range<usize>, guards: &GuardSet) -> Action {
    let tx_control = lexed.tx_control(&r);
    let text = &lexed.text[lexed.spans[r.start].start..lexed.spans[r.end - 1].end];
    if !guards.prefilter.may_write_guarded(text.as_bytes()) {
        return Action::Pass { tx_control };
    }
    let tokens = lexed.parser_tokens(&r);
    if let Some(e) = explain(&tokens) {
        return explained(lexed, r.start + e.inner..r.end, e.analyze, guards);
    }
    let parsed = Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(tokens)
        .parse_statements();
    match parsed {
        Ok(mut stmts) if stmts.len() == 1 => {
            let stmt = stmts.pop().expect("one statement");
            match decide(&stmt, guards, tx_control) {
                Decision::Done(action) => action,
                Decision::Rewrite { write, in_cte } => {
                    guarded_write(&write, in_cte, lexed, &r, guards)
                }
            }
        }
        _ => unparsed(lexed, &r, guards, tx_control),
    }
}

/// An `EXPLAIN` of the statement at tokens `inner`: refused when it runs (`analyze`) a
/// statement that writes a guarded table, passed otherwise (planning runs nothing, and the
/// server refuses an `ANALYZE` that is not a boolean before running anything).
fn explained(lexed: &Lexed, inner: Range<usize>, analyze: Analyze, guards: &GuardSet) -> Action {
    let pass = Action::Pass { tx_control: false };
    let Some(inner) = lexed.trim(inner).filter(|_| analyze == Analyze::On) else {
        return pass;
    };
    let table = match analyze_statement(lexed, inner, guards) {
        Action::Pass { .. } => return pass,
        Action::Refuse { table, .. } => table,
        Action::Write(w) => guards.guards[w.guard].table.clone(),
    };
    Action::Refuse {
        unparsed: false,
        reason: format!(
            "EXPLAIN ANALYZE runs the write without a version check; optlock refuses it on guarded table {table}"
        ),
        table,
    }
}

/// True when sqlparser parses `sql` (with the same allowances as the analysis: `ONLY`).
#[cfg(test)]
pub(crate) fn parses(sql: &str) -> bool {
    let Ok(lexed) = Lexed::new(sql) else {
        return false;
    };
    let all = 0..lexed.toks.len();
    Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(lexed.parser_tokens(&all))
        .parse_statements()
        .is_ok_and(|s| !s.is_empty())
}

#[cfg(test)]
mod tests;
