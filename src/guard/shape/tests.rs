//! Shapes of simple-protocol texts, and their analyses mapped back onto the texts.

use super::*;
use crate::guard::analyze::analyze;
use crate::guard::fixtures::guards;

fn shaped(sql: &str) -> String {
    shape(sql).map(|s| s.text).unwrap_or_default()
}

#[test]
fn operand_constants_become_placeholders() {
    assert_eq!(
        shaped("UPDATE accounts SET abalance = abalance + 2926 WHERE aid = 351987"),
        "UPDATE accounts SET abalance = abalance + $1 WHERE aid = $2"
    );
    assert_eq!(
        shaped("UPDATE invoice SET note = 'it''s' WHERE id = -7;"),
        "UPDATE invoice SET note = $1 WHERE id = $2;"
    );
    assert_eq!(
        shaped("INSERT INTO h VALUES (41, 5, 1.5e3, .5, CURRENT_TIMESTAMP)"),
        "INSERT INTO h VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"
    );
}

#[test]
fn unsure_constants_stay() {
    for sql in [
        "SELECT 1",
        "SELECT * FROM t LIMIT 5",
        "SELECT DATE '2024-01-01', INTERVAL '1 day', E'a\\'b', U&'d\\0061t', x'1F'",
        "SELECT 'a'\n'b'",
        "SELECT $$ = 5 $$, $q$ '$q$",
        "SELECT 1abc, 0x1F, t1.c",
        "-- = 5\nSELECT /* = 'x' /* nested */ */ a",
    ] {
        assert_eq!(shape(sql), None, "{sql}");
    }
    assert_eq!(shape("UPDATE t SET a = $1 WHERE id = 5"), None);
    assert_eq!(shape("SELECT 'open"), None);
    assert_eq!(shaped("SELECT a - 5, - 6"), "SELECT a - $1, $2");
    assert_eq!(shaped("SELECT 7 WHERE x = +5"), "SELECT 7 WHERE x = $1");
    assert_eq!(
        shaped("SELECT x = - /* c */ 5, 6"),
        "SELECT x = - /* c */ 5, $1"
    );
}

/// The instantiated analysis of a shape is the analysis of the text itself.
#[test]
fn instantiated_analysis_equals_direct_analysis() {
    let g = guards();
    let corpus = [
        "UPDATE invoice SET total = total + 25 WHERE id = 7",
        "update public.invoice set total = 1.50, note = 'O''Brien' where id = '7' returning id",
        "UPDATE invoice SET total = 3 WHERE id = -7",
        "UPDATE invoice SET total = 3 WHERE -7 = id",
        "UPDATE invoice SET total = 3 WHERE id = - 7 AND total > 0",
        "UPDATE invoice SET total = 3 WHERE id = +7",
        "UPDATE invoice SET total = 3 WHERE id = 7::int AND version = 4",
        "UPDATE invoice SET total = 3 WHERE id IN (1, 2, 3)",
        "UPDATE invoice i SET total = i.total * 2 WHERE i.id = (5)",
        "DELETE FROM invoice WHERE id = 12; SELECT 1; UPDATE invoice SET total = 0 WHERE id = 13",
        "BEGIN; UPDATE invoice SET total = 9 WHERE id = 1; COMMIT",
        "UPDATE \"tabSales Invoice\" SET grand_total = 10 WHERE name = 'SINV-0001'",
        "UPDATE \"tabSales Invoice\" SET grand_total = 10 WHERE name = 'SINV-1' AND modified = '2024-05-01 10:00:00.123456'",
        "UPDATE shop.line SET qty = 2 WHERE invoice_id = 4 AND line_no = 1",
        "UPDATE accounts SET abalance = abalance + -2926 WHERE aid = 351987",
        "INSERT INTO invoice (id, total) VALUES (1, 5) ON CONFLICT (id) DO UPDATE SET total = 5",
        "WITH x AS (UPDATE invoice SET total = 1 WHERE id = 2 RETURNING id) SELECT * FROM x",
        "UPDATE invoice SET total = 1 /* = 5 */ WHERE id = 2 -- trailing = 'x'\n",
        "UPDATE invoice SET note = $$ = 5 $$ WHERE id = 2",
        "UPDATE invoice SET note = E'a\\'b', total = 2 WHERE id = 3",
        "UPDATE invoice SET issued = DATE '2024-01-01' WHERE id = 3",
        "UPDATE invoice SET total = 1 FROM other o WHERE invoice.id = o.id AND o.k = 4",
        "UPDATE ONLY invoice SET total = 1 WHERE id = 5",
        "SELECT total, version FROM invoice WHERE id = 7",
        "SELECT abalance FROM accounts WHERE aid = 351987;",
        "SELECT * FROM invoice WHERE id = 'x' || 'y'",
        "UPDATE orders SET \"order\" = 1 WHERE \"Order ID\" = 5",
    ];
    let mut instantiated = 0;
    for sql in corpus {
        let direct = analyze(sql, &g);
        let Some(shape) = shape(sql) else {
            continue;
        };
        let from_shape = analyze(&shape.text, &g);
        assert_eq!(
            shape.trusts(&from_shape),
            shape.instantiate(&from_shape, sql).is_some(),
            "{sql}"
        );
        if let Some(a) = shape.instantiate(&from_shape, sql) {
            assert_eq!(a, direct, "{sql}\nshape: {}", shape.text);
            instantiated += 1;
        }
    }
    assert!(instantiated >= 24, "only {instantiated} texts instantiated");
}

#[test]
fn a_read_whose_shape_does_not_parse_is_not_trusted() {
    let g = guards();
    let sql = "SELECT total::numeric(10, 2) FROM invoice WHERE id = 7";
    let shape = shape(sql).expect("has constants");
    assert_eq!(
        shape.text,
        "SELECT total::numeric($1, $2) FROM invoice WHERE id = $3"
    );
    let shaped = analyze(&shape.text, &g);
    assert!(shaped.read_unparsed);
    assert!(shape.instantiate(&shaped, sql).is_none());
    assert!(!shape.trusts(&shaped));
    assert!(analyze(sql, &g).lone_read().is_some());
}

#[test]
fn a_refusing_shape_is_not_trusted() {
    let g = guards();
    let sql = "MERGE INTO invoice USING (SELECT 1 AS id) s ON invoice.id = s.id \
               WHEN MATCHED THEN UPDATE SET total = 5";
    let shape = shape(sql).expect("has constants");
    assert!(shape.instantiate(&analyze(&shape.text, &g), sql).is_none());
    assert!(!shape.trusts(&analyze(&shape.text, &g)));
}
