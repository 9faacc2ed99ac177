use super::*;
use crate::guard::analyze::analyze;
use crate::guard::cache::AnalysisCache;
use crate::guard::fixtures::guards;

/// The text with every capture's columns added, as the session sends it when it takes them
/// all; `None` when the text has no capture.
fn captured(sql: &str) -> Option<String> {
    let g = guards();
    let a = analyze(sql, &g);
    if a.captures.is_empty() {
        return None;
    }
    let mut out = String::new();
    let mut copied = 0;
    for c in &a.captures {
        out.push_str(&sql[copied..c.at]);
        push_columns(&mut out, &c.tables, &g);
        copied = c.at;
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

fn calls_of(sql: &str) -> Vec<String> {
    let a = analyze(sql, &guards());
    a.captures[0].calls.clone()
}

const A: &str = "AS \"?optlock?\"";

#[test]
fn the_alias_is_the_name_quoted() {
    assert_eq!(COLUMN_ALIAS, format!("\"{COLUMN_NAME}\""));
}

#[test]
fn a_read_gets_each_instances_key_and_version() {
    let cases = [
        (
            "SELECT total FROM invoice WHERE id = 1",
            format!("SELECT total, invoice.id {A}, invoice.version {A} FROM invoice WHERE id = 1"),
        ),
        (
            "select * from public.invoice i where i.id = $1 for update",
            format!(
                "select *, i.id {A}, i.version {A} from public.invoice i where i.id = $1 for update"
            ),
        ),
        (
            "SELECT a.total /* c */ FROM invoice a JOIN invoice b ON b.id = a.id + 1 ORDER BY 1 LIMIT 3",
            format!(
                "SELECT a.total, a.id {A}, a.version {A}, b.id {A}, b.version {A} /* c */ FROM invoice a JOIN invoice b ON b.id = a.id + 1 ORDER BY 1 LIMIT 3"
            ),
        ),
        (
            "SELECT n FROM accounts, other o, \"Invoice\" WHERE o.aid = accounts.aid",
            format!(
                "SELECT n, accounts.aid {A}, accounts.xmin {A} FROM accounts, other o, \"Invoice\" WHERE o.aid = accounts.aid"
            ),
        ),
        (
            "SELECT x IS DISTINCT FROM y, (SELECT 1 FROM invoice) FROM shop.line l",
            format!(
                "SELECT x IS DISTINCT FROM y, (SELECT 1 FROM invoice), l.invoice_id {A}, l.line_no {A}, l.version {A} FROM shop.line l"
            ),
        ),
        (
            "WITH x AS (SELECT 1) SELECT \"Order ID\" FROM x, orders ORDER BY \"Order ID\"",
            format!(
                "WITH x AS (SELECT 1) SELECT \"Order ID\", orders.\"Order ID\" {A}, orders.\"order\" {A} FROM x, orders ORDER BY \"Order ID\""
            ),
        ),
        (
            "SELECT 1; SELECT total FROM (invoice JOIN x USING (id)) OFFSET 2",
            format!(
                "SELECT 1; SELECT total, invoice.id {A}, invoice.version {A} FROM (invoice JOIN x USING (id)) OFFSET 2"
            ),
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(captured(sql).as_deref(), Some(want.as_str()), "{sql}");
    }
}

#[test]
fn reads_whose_result_added_columns_could_change_are_not_captured() {
    for sql in [
        "SELECT DISTINCT total FROM invoice",
        "SELECT DISTINCT ON (id) total FROM invoice",
        "SELECT total FROM invoice GROUP BY total",
        "SELECT 1 FROM invoice HAVING true",
        "SELECT sum(total) OVER () FROM invoice",
        "SELECT total, row_number() OVER w FROM invoice WINDOW w AS (ORDER BY id)",
        "SELECT count(DISTINCT total) FROM invoice",
        "SELECT count(*) FILTER (WHERE total > 1) FROM invoice",
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY total) FROM invoice",
        "SELECT string_agg(x, ',' ORDER BY x) FROM invoice",
        "SELECT total FROM invoice UNION SELECT total FROM invoice",
        "SELECT total INTO t2 FROM invoice",
        "VALUES (1)",
        "TABLE invoice",
        "SELECT * FROM (SELECT * FROM invoice) s",
        "WITH s AS (SELECT * FROM invoice) SELECT * FROM s",
        "WITH invoice AS (SELECT 1 AS n) SELECT n FROM invoice",
        "SELECT * FROM (invoice i JOIN x ON true) AS j",
        "SELECT * FROM invoice AS i(a, b, c)",
        "SELECT * FROM invoice, other.invoice",
        "SELECT * FROM other",
        "SELECT 1",
        "(SELECT total FROM invoice)",
        "EXPLAIN SELECT total FROM invoice",
        "UPDATE invoice SET total = 1 WHERE id = 1",
        "SELECT * FROM invoice WHERE id IN (SELECT id FROM invoice) FOR UPDATE OF invoice NOWAIT; SELECT 1 FROM invoice GROUP BY ()",
    ] {
        let a = analyze(sql, &guards());
        let late: Vec<_> = a.captures.iter().filter(|c| c.statement > 0).collect();
        let first_ok = sql.starts_with("SELECT * FROM invoice WHERE id IN");
        assert!(
            late.is_empty() && (first_ok || a.captures.is_empty()),
            "{sql}: {:?}",
            a.captures
        );
    }
}

#[test]
fn the_functions_called_are_recorded_for_the_session_to_judge() {
    assert_eq!(
        calls_of("SELECT lower(n), count(*), public.f(g(1)) FROM invoice ORDER BY h(id)"),
        ["lower", "count", "f", "g", "h"]
    );
    assert!(calls_of("SELECT total + 1, id::text FROM invoice").is_empty());
}

#[test]
fn instances_remember_how_they_were_named() {
    let a = analyze(
        "SELECT 1 FROM invoice, public.\"tabSales Invoice\" s, shop.line",
        &guards(),
    );
    let t: Vec<(usize, &str, bool)> = a.captures[0]
        .tables
        .iter()
        .map(|t| (t.guard, t.qualifier.as_str(), t.unqualified))
        .collect();
    assert_eq!(
        t,
        [
            (0, "invoice", true),
            (1, "s", false),
            (2, "shop.line", false)
        ]
    );
    assert_eq!(added_columns(&a.captures[0].tables, &guards()), 2 + 2 + 3);
}

#[test]
fn a_capture_survives_the_texts_shape() {
    let g = guards();
    let mut cache = AnalysisCache::new();
    for (id, s) in [(7, "x"), (12345, "a longer string")] {
        let sql = format!("SELECT total, '{s}' FROM invoice WHERE id = {id} LIMIT 10");
        let simple = cache.get_or_analyze_simple(&sql, &g, true);
        assert!(matches!(simple, crate::guard::cache::Simple::Shaped(..)));
        let c = &simple.kinds().captures[0];
        let at = simple.capture_at(c).unwrap();
        assert_eq!(&sql[..at], format!("SELECT total, '{s}'"), "{sql}");
    }
    assert_eq!(cache.len(), 1, "one shape");
}

#[test]
fn copy_of_a_select_to_stdout_is_captured_in_text_and_binary() {
    let copy_of = |sql: &str| analyze(sql, &guards()).captures.first().map(|c| c.copy);
    assert_eq!(
        copy_of("COPY (SELECT total FROM invoice WHERE id < 5) TO STDOUT"),
        Some(Some(CopyFormat::Text))
    );
    assert_eq!(
        copy_of("copy (select total from invoice) to stdout with (format binary)"),
        Some(Some(CopyFormat::Binary))
    );
    assert_eq!(
        copy_of(
            "COPY (SELECT total FROM invoice) TO STDOUT (FORMAT text, NULL 'x', ENCODING 'UTF8')"
        ),
        Some(Some(CopyFormat::Text))
    );
    assert_eq!(
        copy_of("COPY (SELECT total FROM invoice) TO STDOUT BINARY"),
        Some(Some(CopyFormat::Binary))
    );
    let sql = "COPY (SELECT i.total FROM invoice i) TO STDOUT";
    let text = captured(sql).expect("captured");
    assert!(text.starts_with("COPY (SELECT i.total, i.id "), "{text}");
    assert!(text.ends_with(") TO STDOUT"), "{text}");
    // Forms whose rows the proxy cannot take columns off, or that are not reads to stdout.
    for sql in [
        "COPY (SELECT total FROM invoice) TO STDOUT (FORMAT csv)",
        "COPY (SELECT total FROM invoice) TO STDOUT (DELIMITER ',')",
        "COPY (SELECT total FROM invoice) TO STDOUT (HEADER)",
        "COPY (SELECT total FROM invoice) TO '/tmp/x'",
        "COPY invoice TO STDOUT",
        "COPY (SELECT DISTINCT total FROM invoice) TO STDOUT",
    ] {
        assert_eq!(copy_of(sql), None, "{sql}");
    }
}

#[test]
fn the_query_of_a_cursor_is_captured_under_the_cursor_s_name() {
    let cursor_of = |sql: &str| {
        analyze(sql, &guards())
            .captures
            .first()
            .map(|c| c.cursor.clone().map(|d| d.name))
    };
    for (sql, name) in [
        ("DECLARE c CURSOR FOR SELECT total FROM invoice", "c"),
        (
            "declare \"My C\" binary no scroll cursor without hold for select * from invoice where id > 2",
            "My C",
        ),
        (
            "DECLARE Cur SCROLL CURSOR WITH HOLD FOR SELECT total FROM invoice",
            "cur",
        ),
    ] {
        assert_eq!(cursor_of(sql), Some(Some(name.to_string())), "{sql}");
    }
    let text = captured("DECLARE c CURSOR FOR SELECT total FROM invoice").unwrap();
    assert!(
        text.starts_with("DECLARE c CURSOR FOR SELECT total, invoice.id "),
        "{text}"
    );
    assert_eq!(
        cursor_of("DECLARE c CURSOR FOR SELECT DISTINCT total FROM invoice"),
        None
    );
}
