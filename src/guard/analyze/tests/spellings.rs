//! A spelling fuzzer: generated forms of one guarded write (names quoted, qualified, escaped
//! or reached through a view alias; any keyword case, comments and white space between the
//! words; every way of naming the row; inside a data-modifying `WITH`; with `RETURNING`) must
//! each be checked or refused, never passed unchecked.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::guard::Alias;

/// The guards of the fixtures, with a view of `public.invoice` as a session would find it.
fn guards_with_view() -> Arc<GuardSet> {
    guards().with_aliases(vec![Alias {
        table: TableName {
            schema: "public".into(),
            name: "invoice_v".into(),
        },
        guard: 0,
        refusal: None,
    }])
}

/// Ways to name the guarded table (or its view) in a write.
const TABLES: &[&str] = &[
    "invoice",
    "INVOICE",
    "Invoice",
    "public.invoice",
    "PUBLIC.Invoice",
    "\"invoice\"",
    "public.\"invoice\"",
    "\"public\".\"invoice\"",
    "U&\"\\0069nvoice\"",
    "ONLY invoice",
    "ONLY public.invoice",
    "invoice_v",
    "public.INVOICE_V",
];

/// Ways to say which rows (`{q}` is the column qualifier, empty or `alias.`).
const CONDITIONS: &[&str] = &[
    "{q}id = 7",
    "7 = {q}id",
    "{q}id IN (7)",
    "{q}id = ANY(ARRAY[7])",
    "{q}id = ANY('{7}'::int[])",
    "{q}id BETWEEN 7 AND 7",
    "({q}id) = (7)",
    "{q}id = 7::int",
    "{q}id = '7'",
    "{q}id = 3 + 4",
    "{q}id = 7.0",
    "{q}id <= 7",
    "{q}id = 7 AND {q}total > 0",
    "NOT ({q}id <> 7)",
    "{q}id = $1",
];

fn keyword(word: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(word.to_string()),
        Just(word.to_ascii_lowercase()),
        Just(format!("{}{}", &word[..1], word[1..].to_ascii_lowercase())),
    ]
}

/// White space, or a comment, between two words.
fn gap() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(" ".to_string()),
        1 => Just("\n\t ".to_string()),
        1 => Just(" /* c */ ".to_string()),
        1 => Just(" /* a /* nested */ one */ ".to_string()),
        1 => Just(" -- a comment\n".to_string()),
    ]
}

prop_compose! {
    fn guarded_write()(
        update in any::<bool>(),
        table in 0..TABLES.len(),
        alias in 0..3usize,
        condition in 0..CONDITIONS.len(),
        wrap in 0..4usize,
        kw in (keyword("UPDATE"), keyword("SET"), keyword("WHERE"), keyword("DELETE"), keyword("FROM")),
        gaps in prop::collection::vec(gap(), 8),
    ) -> String {
        let (upd, set, whr, del, from) = kw;
        let (name, q) = match alias {
            0 => (TABLES[table].to_string(), String::new()),
            1 => (format!("{}{}i", TABLES[table], gaps[0]), "i.".to_string()),
            _ => (format!("{}{}AS{}i", TABLES[table], gaps[0], gaps[1]), "i.".to_string()),
        };
        let cond = CONDITIONS[condition].replace("{q}", &q);
        let g = |i: usize| gaps[i].as_str();
        let stmt = if update {
            format!("{upd}{}{name}{}{set}{}total = 1{}{whr}{}{cond}", g(2), g(3), g(4), g(5), g(6))
        } else {
            format!("{del}{}{from}{}{name}{}{whr}{}{cond}", g(2), g(3), g(5), g(6))
        };
        match wrap {
            0 => stmt,
            1 => format!("{stmt}{}RETURNING *", g(7)),
            2 => format!("WITH w AS ({stmt} RETURNING {q}id){}SELECT count(*) FROM w", g(7)),
            _ => format!("{stmt};"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_spelling_of_a_guarded_write_is_checked_or_refused(sql in guarded_write()) {
        let analysis = analyze(&sql, &guards_with_view());
        prop_assert!(!analysis.statements.is_empty(), "{sql}: no statement");
        for s in &analysis.statements {
            prop_assert!(
                !matches!(s.action, Action::Pass { .. }),
                "{sql}: passed unchecked"
            );
            if let Action::Write(w) = &s.action {
                prop_assert_eq!(guards_with_view().roots[w.guard], 0, "{}: another guard", sql);
            }
        }
    }
}
