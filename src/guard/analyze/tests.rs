//! The analysis of whole texts: how they split into statements, transaction control, and
//! which statements pin a read. The guarded writes' own details are in [`writes`].

use std::sync::Arc;

use super::*;
use crate::config::{Config, TableName};
use crate::guard::fixtures::guards;
use crate::guard::{GuardedWrite, Target, ValueRef, WriteOp};

mod spellings;
mod writes;

fn one(sql: &str) -> Action {
    let a = analyze(sql, &guards());
    assert_eq!(a.statements.len(), 1, "{sql}: {a:?}");
    a.statements.into_iter().next().unwrap().action
}

fn write(sql: &str) -> GuardedWrite {
    match one(sql) {
        Action::Write(w) => Arc::unwrap_or_clone(w),
        other => panic!("{sql}: expected a guarded write, got {other:?}"),
    }
}

fn refused(sql: &str) -> (TableName, String) {
    match one(sql) {
        Action::Refuse { table, reason, .. } => (table, reason),
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    }
}

fn passes(sql: &str) {
    assert_eq!(one(sql), Action::Pass { tx_control: false }, "{sql}");
}

fn lit(s: &str) -> ValueRef {
    ValueRef::Literal(s.into())
}

fn key(values: &[ValueRef]) -> Target {
    Target::Key(values.to_vec())
}

/// The statements of a text as (text, tx_control, is a write).
fn split(sql: &str) -> Vec<(&str, bool, bool)> {
    analyze(sql, &guards())
        .statements
        .into_iter()
        .map(|s| {
            let (tx, w) = match s.action {
                Action::Pass { tx_control } => (tx_control, false),
                Action::Write(_) => (false, true),
                Action::Refuse { .. } => panic!("{sql}: refused"),
            };
            (&sql[s.range], tx, w)
        })
        .collect()
}

#[test]
fn splits_top_level_statements_with_exact_ranges() {
    let sql = "BEGIN;\n  UPDATE invoice SET total = 1 WHERE id = 1 ;COMMIT  ";
    assert_eq!(
        split(sql),
        vec![
            ("BEGIN", true, false),
            ("UPDATE invoice SET total = 1 WHERE id = 1", false, true),
            ("COMMIT", true, false),
        ]
    );
}

#[test]
fn semicolons_in_strings_comments_and_dollar_quotes_do_not_split() {
    let sql = "SELECT 'a;b', E'c\\';d', \"x;y\" FROM t -- e;f\n; /* g; /* h; */ i; */ SELECT $$j;k$$, $fn$ ; $$ ; $fn$ ;";
    assert_eq!(
        split(sql),
        vec![
            (
                "SELECT 'a;b', E'c\\';d', \"x;y\" FROM t -- e;f\n",
                false,
                false
            ),
            (
                "/* g; /* h; */ i; */ SELECT $$j;k$$, $fn$ ; $$ ; $fn$",
                false,
                false
            ),
        ]
    );
}

#[test]
fn semicolons_inside_parentheses_do_not_split() {
    let sql = "SELECT (SELECT 1 ; ); SELECT 2";
    let st = analyze(sql, &guards()).statements;
    assert_eq!(st.len(), 2);
    assert_eq!(&sql[st[0].range.clone()], "SELECT (SELECT 1 ; )");
}

#[test]
fn each_pinned_read_names_its_statement() {
    let sql = "BEGIN;; SELECT total FROM invoice WHERE id = 4; SELECT 1; \
               select * from invoice i where i.id = 5; SELECT * FROM invoice";
    let a = analyze(sql, &guards());
    let reads: Vec<(usize, Vec<ValueRef>)> = a
        .reads
        .iter()
        .map(|r| (r.statement, r.key.clone()))
        .collect();
    assert_eq!(
        reads,
        vec![
            (1, vec![ValueRef::Literal("4".into())]),
            (3, vec![ValueRef::Literal("5".into())]),
        ]
    );
    assert_eq!(a.lone_read(), None, "a lone read is one statement");
    let lone = analyze("SELECT version FROM invoice WHERE id = $1", &guards());
    assert_eq!(lone.lone_read().map(|r| r.statement), Some(0));
}

#[test]
fn empty_statements_and_comment_only_texts_produce_nothing() {
    assert!(analyze("", &guards()).statements.is_empty());
    assert!(analyze(" ;; ;\n", &guards()).statements.is_empty());
    assert!(
        analyze("-- only a comment\n; /* and another */", &guards())
            .statements
            .is_empty()
    );
    assert_eq!(split(";;SELECT 1;;"), vec![("SELECT 1", false, false)]);
}

#[test]
fn begin_atomic_bodies_stay_in_one_statement() {
    let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END; SELECT 3";
    let st = split(sql);
    assert_eq!(st.len(), 2, "{st:?}");
    assert!(st[0].0.ends_with("SELECT 2; END"));
    assert_eq!(st[1].0, "SELECT 3");
}

#[test]
fn transaction_control_is_recognised() {
    for sql in [
        "BEGIN",
        "begin transaction isolation level serializable",
        "START TRANSACTION",
        "COMMIT",
        "commit and chain",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT s1",
        "RELEASE SAVEPOINT s1",
        "ROLLBACK TO SAVEPOINT s1",
        "PREPARE TRANSACTION 'tx1'",
        "COMMIT PREPARED 'tx1'",
        "ROLLBACK PREPARED 'tx1'",
        "/* leading comment */ COMMIT",
    ] {
        assert_eq!(
            one(sql),
            Action::Pass { tx_control: true },
            "{sql} is transaction control"
        );
    }
    for sql in [
        "SELECT 1",
        "PREPARE p AS SELECT 1",
        "START",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SELECT 'BEGIN'",
        "\"begin\"",
    ] {
        assert_eq!(one(sql), Action::Pass { tx_control: false }, "{sql}");
    }
}

#[test]
fn tx_control_also_for_guarded_texts() {
    // The prefilter matches the whole text; each statement is still judged on its own.
    assert_eq!(
        split("BEGIN; UPDATE invoice SET total = 2 WHERE id = 9; END"),
        vec![
            ("BEGIN", true, false),
            ("UPDATE invoice SET total = 2 WHERE id = 9", false, true),
            ("END", true, false),
        ]
    );
}

#[test]
fn byte_ranges_survive_multibyte_text() {
    let sql = "SELECT 'héllo wörld ✓ 😀';\nUPDATE invoice SET note = 'naïve ☃' WHERE id = 'ключ'; SELECT 'ß'";
    assert_eq!(
        split(sql),
        vec![
            ("SELECT 'héllo wörld ✓ 😀'", false, false),
            (
                "UPDATE invoice SET note = 'naïve ☃' WHERE id = 'ключ'",
                false,
                true
            ),
            ("SELECT 'ß'", false, false),
        ]
    );
    let w = write("/* ✓ */ UPDATE invoice SET note = '☃' WHERE id = 'ключ'");
    assert_eq!(w.target, key(&[lit("ключ")]));
}

#[test]
fn no_guards_means_everything_passes() {
    let g = GuardSet::new(&Config::default());
    let a = analyze("UPDATE invoice SET total = 1; BEGIN", &g);
    assert_eq!(
        a.statements
            .iter()
            .map(|s| s.action.clone())
            .collect::<Vec<_>>(),
        vec![
            Action::Pass { tx_control: false },
            Action::Pass { tx_control: true }
        ]
    );
    assert!(a.passes_unchanged());
}

#[test]
fn only_is_masked_only_where_it_names_a_table() {
    assert!(parses("UPDATE ONLY invoice SET a = 1"));
    assert!(parses(
        "DELETE FROM ONLY invoice i USING ONLY x WHERE i.id = x.id"
    ));
    assert!(parses("SELECT * FROM t FETCH FIRST 1 ROWS ONLY"));
    assert!(parses("BEGIN READ ONLY"));
    assert!(!parses("UPDATE invoice SET a = 1 WHERE"));
}
