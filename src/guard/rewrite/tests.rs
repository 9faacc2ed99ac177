//! The rendering of guarded writes: what each statement becomes with a given expected version.

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
    let sql = "SELECT 'ünï ✓'; UPDATE invoice SET note = 'naïve ☃ 😀' WHERE id = 'ключ'; SELECT 2";
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
    let sql = "WITH x AS (UPDATE invoice SET total = 1 WHERE id = 3 RETURNING *) SELECT * FROM x";
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
    let sql =
        "WITH c AS (SELECT 5 AS id) UPDATE invoice SET total = 0 FROM c WHERE invoice.id = c.id";
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

/// Renders the only guarded write of `sql` without a check, bumping as `bump` says.
fn render_bump(sql: &str, bump: Bump) -> String {
    let g = guards();
    let a = analyze(sql, &g);
    let Action::Write(w) = &a.statements[0].action else {
        panic!("{sql}: {a:?}");
    };
    let mut out = String::new();
    w.render_with(sql, &g, Expected::None, false, bump, &mut out);
    assert!(parses(&out), "the rendered statement does not parse: {out}");
    out
}

#[test]
fn bumps_follow_the_column() {
    assert_eq!(
        render_bump(
            "UPDATE invoice SET total = 1 WHERE id = 1",
            Bump::Sequence(16400)
        ),
        "UPDATE invoice SET total = 1, version = nextval('16400'::regclass) WHERE id = 1"
    );
    // A sequence says nothing to a timestamp; a step says nothing to a counter.
    assert_eq!(
        render_bump(
            "UPDATE invoice SET total = 1 WHERE id = 1",
            Bump::Step(1_000_000)
        ),
        "UPDATE invoice SET total = 1, version = invoice.version + 1 WHERE id = 1"
    );
    let ts = "UPDATE \"tabSales Invoice\" SET grand_total = 10 WHERE name = 'x'";
    assert_eq!(
        render_bump(ts, Bump::Step(1_000_000)),
        "UPDATE \"tabSales Invoice\" SET grand_total = 10, modified = GREATEST(clock_timestamp(), \"tabSales Invoice\".modified + interval '1000000 microseconds') WHERE name = 'x'"
    );
    for bump in [Bump::Plain, Bump::Sequence(1), Bump::Step(1)] {
        assert!(
            render_bump(ts, bump).contains("+ interval '1 microsecond')"),
            "{bump:?}"
        );
    }
}

#[test]
fn known_rows_are_checked_per_row() {
    let rows = vec![
        (vec!["1".to_string()], "7".to_string()),
        (vec!["x\"y'z\\".to_string()], "8".to_string()),
    ];
    let out = render(
        "UPDATE invoice SET total = 1 WHERE id IN (1, 2)",
        Expected::Rows(&rows),
    );
    assert_eq!(
        out,
        "UPDATE invoice SET total = 1, version = invoice.version + 1 WHERE (id IN (1, 2)) AND \
         CASE WHEN array_position(E'{\"1\",\"x\\\\\"y''z\\\\\\\\\"}', invoice.id) IS NULL THEN true \
         WHEN array_position(E'{\"1\",\"x\\\\\"y''z\\\\\\\\\"}', invoice.id) = \
         ANY(array_positions('{\"7\",\"8\"}', invoice.version)) THEN true \
         WHEN (id IN (1, 2)) THEN current_setting(concat('optlock.conflict:', invoice.version, '#', \
         array_position(E'{\"1\",\"x\\\\\"y''z\\\\\\\\\"}', invoice.id), '#')) IS NULL ELSE false END \
         RETURNING invoice.id, invoice.version"
    );
    // No WHERE: every row is checked, and a changed known row raises.
    let out = render("DELETE FROM invoice", Expected::Rows(&rows[..1]));
    assert!(out.contains(" WHERE CASE WHEN array_position('{\"1\"}', invoice.id) IS NULL"));
    assert!(out.ends_with("THEN true ELSE current_setting(concat('optlock.conflict:', invoice.version, '#', array_position('{\"1\"}', invoice.id), '#')) IS NULL END"), "{out}");
    // A composite key: the row's position from row comparisons.
    let pair = vec![(vec!["1".to_string(), "2".to_string()], "3".to_string())];
    let out = render(
        "UPDATE shop.line SET qty = 1 WHERE invoice_id > 0",
        Expected::Rows(&pair),
    );
    assert!(
        out.contains(
            "CASE WHEN (shop.line.invoice_id, shop.line.line_no) = ('1', '2') THEN 1 END IS NULL"
        ),
        "{out}"
    );
    // An upsert checks the row its DO UPDATE writes.
    let out = render(
        "INSERT INTO invoice AS t (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET total = 2",
        Expected::Rows(&rows[..1]),
    );
    assert!(
        out.contains(
            "SET total = 2, version = t.version + 1 WHERE CASE WHEN array_position('{\"1\"}', t.id)"
        ),
        "{out}"
    );
}
