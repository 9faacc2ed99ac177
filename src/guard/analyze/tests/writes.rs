//! The guarded writes the analysis finds: their table, key, pinned version and clauses, and
//! the writes it refuses or passes.

use super::*;

#[test]
fn tells_writes_that_may_act_without_rows() {
    for (sql, acts) in [
        ("UPDATE invoice SET total = 1 WHERE id = 42", false),
        (
            "UPDATE invoice SET total = round(2.5), note = now() WHERE id = 42",
            false,
        ),
        (
            "UPDATE invoice SET total = 1 WHERE id = 42 RETURNING upper(note)",
            false,
        ),
        (
            "UPDATE invoice i SET total = c.x FROM customer c WHERE i.id = 42",
            false,
        ),
        (
            "UPDATE invoice SET total = 1 WHERE id = 42 AND note = 'a(b'",
            false,
        ),
        ("DELETE FROM invoice WHERE id = 42", false),
        (
            "UPDATE invoice SET total = 1 WHERE id = 42 AND audit()",
            true,
        ),
        ("UPDATE invoice SET total = 1 WHERE id IN (SELECT 42)", true),
        (
            "UPDATE invoice i SET total = 1 FROM f() c WHERE i.id = 42",
            true,
        ),
        (
            "WITH c AS (SELECT 1) UPDATE invoice SET total = 1 WHERE id = 42",
            true,
        ),
        (
            "DELETE FROM invoice USING f() c WHERE invoice.id = 42",
            true,
        ),
        ("DELETE FROM invoice WHERE id = 42 AND audit()", true),
    ] {
        assert_eq!(write(sql).splice.may_act_without_rows, acts, "{sql}");
    }
}

#[test]
fn plain_updates_and_deletes_with_every_spelling_of_the_table() {
    for sql in [
        "UPDATE invoice SET total = 1 WHERE id = 42",
        "update INVOICE set total = 1 where ID = 42",
        "UPDATE public.invoice SET total = 1 WHERE id = 42",
        "UPDATE Public.Invoice SET total = 1 WHERE invoice.id = 42",
        "UPDATE \"public\".\"invoice\" SET total = 1 WHERE \"id\" = 42",
        "UPDATE ONLY invoice SET total = 1 WHERE id = 42",
        "UPDATE ONLY public.invoice SET total = 1 WHERE public.invoice.id = 42",
        "UPDATE ONLY (invoice) SET total = 1 WHERE id = 42",
        "UPDATE ONLY ( public.invoice ) AS i SET total = 1 WHERE i.id = 42",
        "UPDATE invoice * SET total = 1 WHERE id = 42",
        "UPDATE invoice AS i SET total = 1 WHERE i.id = 42",
        "UPDATE invoice i SET total = 1 WHERE i.id = 42",
        "UPDATE invoice i SET total = c.x FROM customer c WHERE c.id = i.customer_id AND i.id = 42",
        "WITH c AS (SELECT 1) UPDATE invoice SET total = 1 WHERE id = 42",
        "UPDATE invoice SET total = 1 WHERE id = 42 RETURNING *",
        "-- why\nUPDATE invoice SET total = 1 WHERE id = 42 -- done",
    ] {
        let w = write(sql);
        assert_eq!((w.guard, w.op), (0, WriteOp::Update), "{sql}");
        assert_eq!(w.target, key(&[lit("42")]), "{sql}");
        assert!(!w.splice.in_cte, "{sql}");
    }
    for sql in [
        "DELETE FROM invoice WHERE id = 42",
        "DELETE FROM ONLY public.invoice WHERE id = 42",
        "DELETE FROM ONLY (invoice) WHERE id = 42",
        "delete from Invoice AS i where i.id = 42",
        "DELETE FROM invoice i USING customer c WHERE i.customer_id = c.id AND i.id = 42 RETURNING i.*",
    ] {
        let w = write(sql);
        assert_eq!((w.guard, w.op), (0, WriteOp::Delete), "{sql}");
        assert_eq!(w.target, key(&[lit("42")]), "{sql}");
    }
}

#[test]
fn quoted_names_keep_their_case() {
    let g = GuardSet::new(
        &Config::parse(
            "[[guard]]\ntable = 'public.\"Invoice\"'\nkey = [\"id\"]\n",
            "t.toml",
        )
        .unwrap(),
    );
    let action = |sql: &str| analyze(sql, &g).statements.remove(0).action;
    assert!(matches!(
        action("UPDATE \"Invoice\" SET a = 1 WHERE id = 1"),
        Action::Write(_)
    ));
    assert_eq!(
        action("UPDATE Invoice SET a = 1 WHERE id = 1"),
        Action::Pass { tx_control: false },
        "unquoted Invoice folds to invoice, another table"
    );
    // And the reverse: `"invoice"` is public.invoice, `"INVOICE"` is not.
    assert!(matches!(
        one("UPDATE \"invoice\" SET a = 1 WHERE id = 1"),
        Action::Write(_)
    ));
    passes("UPDATE \"INVOICE\" SET a = 1 WHERE id = 1");
    passes("UPDATE other.invoice SET a = 1 WHERE id = 1");
}

#[test]
fn the_erp_case_resolves_the_quoted_table_with_a_space() {
    let w = write("UPDATE \"tabSales Invoice\" SET grand_total = 10 WHERE name = 'SINV-0001'");
    assert_eq!((w.guard, w.op), (1, WriteOp::Update));
    assert_eq!(w.target, key(&[lit("SINV-0001")]));
    assert_eq!(w.pinned, None);
    assert!(!w.sets_version);
    assert_eq!(w.splice.qualifier, "\"tabSales Invoice\"");
    let w = write("UPDATE \"tabSales Invoice\" SET x = 1");
    assert_eq!(w.target, Target::Bulk);
    // Frappe's own `modified` check pins the version.
    let w = write(
        "UPDATE \"tabSales Invoice\" SET grand_total = 10, modified = now() WHERE name = 'SINV-0002' AND modified = '2024-05-01 10:00:00.123456'",
    );
    assert_eq!(w.target, key(&[lit("SINV-0002")]));
    assert_eq!(w.pinned, Some(lit("2024-05-01 10:00:00.123456")));
    assert!(w.sets_version);
}

#[test]
fn key_values_from_literals_strings_params_and_casts() {
    let cases: &[(&str, ValueRef)] = &[
        ("id = 42", lit("42")),
        ("42 = id", lit("42")),
        ("id = -7", lit("-7")),
        ("id = 'A''B'", lit("A'B")),
        ("id = E'a\\\\b\\'c'", lit("a\\b'c")),
        ("id = '42'::int", lit("42")),
        ("id = CAST('43' AS bigint)", lit("43")),
        ("id = $1", ValueRef::Param(1)),
        ("id = $2::text", ValueRef::Param(2)),
        ("(id = ($3))", ValueRef::Param(3)),
        ("id = 1.50", lit("1.50")),
        ("invoice.id = 9", lit("9")),
        ("id = $$dollar$$", lit("dollar")),
    ];
    for (cond, value) in cases {
        let sql = format!("UPDATE invoice SET total = 1 WHERE {cond}");
        assert_eq!(
            write(&sql).target,
            key(std::slice::from_ref(value)),
            "{sql}"
        );
    }
}

#[test]
fn anything_but_one_key_is_bulk() {
    for cond in [
        "",
        " WHERE id IN (1, 2)",
        " WHERE id = 1 OR id = 2",
        " WHERE id > 5",
        " WHERE id = other_id",
        " WHERE id = 1 + 1",
        " WHERE id = 1 AND id = 2",
        " WHERE NOT (id = 1)",
        " WHERE customer.id = 1",
        " WHERE total = 1",
        " WHERE (id = 1 OR total = 2) AND total = 3",
    ] {
        let sql = format!("UPDATE invoice SET total = 1{cond}");
        assert_eq!(write(&sql).target, Target::Bulk, "{sql}");
    }
    // Parentheses and extra conjuncts do not hide the key.
    let w = write("UPDATE invoice SET total = 1 WHERE (total > 0 AND (id = 5)) AND (a OR b)");
    assert_eq!(w.target, key(&[lit("5")]));
    // The same value twice is still one key.
    let w = write("UPDATE invoice SET total = 1 WHERE id = 5 AND id = 5");
    assert_eq!(w.target, key(&[lit("5")]));
}

#[test]
fn composite_keys_come_in_guard_order() {
    let w = write("UPDATE shop.line SET qty = 2 WHERE line_no = 3 AND invoice_id = $1");
    assert_eq!(w.guard, 2);
    assert_eq!(w.target, key(&[ValueRef::Param(1), lit("3")]));
    let w = write("UPDATE shop.line SET qty = 2 WHERE line_no = 3");
    assert_eq!(w.target, Target::Bulk);
    // No schema: the name alone resolves.
    assert_eq!(
        write("DELETE FROM line WHERE invoice_id = 1 AND line_no = 1").guard,
        2
    );
    passes("UPDATE public.line SET qty = 2");
}

#[test]
fn pinned_versions_and_set_version() {
    let w = write("UPDATE invoice SET total = 1 WHERE id = 1 AND version = 7");
    assert_eq!(w.pinned, Some(lit("7")));
    assert!(!w.sets_version);
    let w = write("UPDATE invoice SET total = $1, version = $3 WHERE id = $2 AND version = $4");
    assert_eq!(w.target, key(&[ValueRef::Param(2)]));
    assert_eq!(w.pinned, Some(ValueRef::Param(4)));
    assert!(w.sets_version);
    assert_eq!(w.max_param, 4);
    let w = write("UPDATE invoice SET (total, version) = (1, 8) WHERE version = 7");
    assert_eq!(
        (w.target.clone(), w.pinned.clone()),
        (Target::Bulk, Some(lit("7")))
    );
    assert!(w.sets_version);
    let w = write("UPDATE invoice SET total = 1 WHERE id = 1 OR version = 7");
    assert_eq!(w.pinned, None);
    let w = write("UPDATE invoice SET total = 1 WHERE id = 1 AND version = version");
    assert_eq!(w.pinned, None);
    // xmin pins too.
    let w = write("UPDATE accounts SET abalance = 0 WHERE aid = 1 AND xmin = '1234'");
    assert_eq!((w.guard, w.pinned), (3, Some(lit("1234"))));
    let w = write("UPDATE accounts SET abalance = 0 WHERE aid = $1 AND xmin = $2");
    assert_eq!(w.pinned, Some(ValueRef::Param(2)));
}

#[test]
fn returning_and_max_param() {
    assert!(write("UPDATE invoice SET total = 1 RETURNING id").client_returning);
    assert!(!write("UPDATE invoice SET total = 1 WHERE id = 1").client_returning);
    assert!(write("DELETE FROM invoice RETURNING *").client_returning);
    let w = write("UPDATE invoice SET note = '$9' WHERE id = $1 AND total = $12 -- $13");
    assert_eq!(w.max_param, 12);
    assert_eq!(write("UPDATE invoice SET total = 1").max_param, 0);
}

#[test]
fn data_modifying_ctes() {
    let w =
        write("WITH x AS (UPDATE invoice SET total = 1 WHERE id = 3 RETURNING *) SELECT * FROM x");
    assert_eq!(
        (w.op, w.target.clone()),
        (WriteOp::Update, key(&[lit("3")]))
    );
    assert!(w.splice.in_cte);
    assert!(w.client_returning);
    let w = write("WITH d AS MATERIALIZED (DELETE FROM invoice WHERE id = 3) SELECT 1");
    assert_eq!(w.op, WriteOp::Delete);
    assert!(w.splice.in_cte);
    // An unguarded write beside it is fine.
    let w = write(
        "WITH a AS (UPDATE customer SET n = 1 RETURNING id), b AS (UPDATE invoice SET total = 0 WHERE id = 1) SELECT * FROM a",
    );
    assert!(w.splice.in_cte);
}

#[test]
fn upserts_are_bumped_never_checked() {
    let w = write(
        "INSERT INTO invoice (id, total) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total",
    );
    assert_eq!((w.guard, w.op), (0, WriteOp::Upsert));
    assert_eq!((w.target.clone(), w.pinned.clone()), (Target::Bulk, None));
    assert!(!w.sets_version && !w.client_returning);
    let w = write(
        "INSERT INTO invoice AS t (id, version) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET version = t.version + 1 WHERE t.id = $1 RETURNING t.id",
    );
    assert!(w.sets_version && w.client_returning);
    assert_eq!(w.splice.qualifier, "t");
    passes("INSERT INTO invoice (id) VALUES (1)");
    passes("INSERT INTO invoice (id) VALUES (1) ON CONFLICT DO NOTHING");
    passes("INSERT INTO invoice SELECT * FROM staging WHERE x");
}

#[test]
fn refuses_what_it_cannot_rewrite() {
    let (t, r) = refused(
        "MERGE INTO invoice t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET total = s.total",
    );
    assert_eq!(t.to_string(), "public.invoice");
    assert!(r.contains("MERGE"), "{r}");
    let (_, r) = refused("UPDATE invoice SET total = 1 WHERE CURRENT OF c1");
    assert!(
        r.contains("CURRENT OF") && r.contains("public.invoice"),
        "{r}"
    );
    let (_, r) = refused("DELETE FROM invoice WHERE CURRENT OF c1");
    assert!(r.contains("CURRENT OF"), "{r}");
    let (t, r) = refused("UPDATE \"tabSales Invoice\" SET x = 1 WHERE name = 'a' FROBNICATE");
    assert_eq!(t.name, "tabSales Invoice");
    assert_eq!(
        r,
        "optlock cannot parse this statement, and it may write guarded table public.\"tabSales Invoice\""
    );
    let (_, r) = refused(
        "WITH a AS (UPDATE invoice SET total = 1 WHERE id = 1), b AS (DELETE FROM shop.line WHERE line_no = 1) SELECT 1",
    );
    assert!(r.contains("several guarded writes"), "{r}");
    assert!(
        r.contains("public.invoice") && r.contains("shop.line"),
        "{r}"
    );
    let (_, r) =
        refused("WITH a AS (UPDATE invoice SET total = 1) DELETE FROM invoice WHERE id = 2");
    assert!(r.contains("several guarded writes"), "{r}");
    let (_, r) = refused("EXPLAIN ANALYZE UPDATE invoice SET total = 1");
    assert!(r.contains("EXPLAIN ANALYZE"), "{r}");
    refused("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM invoice WHERE id = 1");
    refused("PREPARE p (int) AS UPDATE invoice SET total = 1 WHERE id = $1");
    refused("CREATE RULE r AS ON INSERT TO invoice DO ALSO UPDATE invoice SET total = 0");
    refused("CREATE OR REPLACE RULE r AS ON INSERT TO invoice DO ALSO DELETE FROM invoice");
    // Not a position PostgreSQL runs a rewritable write from.
    refused("COPY (DELETE FROM invoice WHERE id = 1 RETURNING *) TO STDOUT");
    // The tokenizer itself gives up: still refused.
    refused("UPDATE invoice SET note = 'unterminated WHERE id = 1");
}

#[test]
fn passes_reads_unguarded_writes_and_mere_mentions() {
    passes("SELECT * FROM invoice WHERE id = 1");
    passes("SELECT * FROM invoice WHERE id = 1 FOR UPDATE");
    passes("SELECT * FROM invoice FOR NO KEY UPDATE SKIP LOCKED");
    passes("UPDATE customer SET total = (SELECT sum(total) FROM invoice) WHERE id = 1");
    passes("DELETE FROM customer WHERE id NOT IN (SELECT customer_id FROM invoice)");
    passes("SELECT 1 -- UPDATE invoice SET total = 0");
    passes("SELECT 'UPDATE invoice SET total = 0'");
    passes("/* delete from invoice */ SELECT 1");
    passes("COPY invoice FROM STDIN");
    passes("COPY invoice (id, total) TO STDOUT WITH (FORMAT csv)");
    passes("EXPLAIN UPDATE invoice SET total = 1");
    passes("EXPLAIN (ANALYZE false) UPDATE invoice SET total = 1");
    passes("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ UPDATE invoice SET total = 0 $$");
    passes("DO $$ BEGIN UPDATE invoice SET total = 0; END $$");
    passes("CREATE TABLE note (invoice_id int REFERENCES invoice ON DELETE CASCADE)");
    passes("GRANT UPDATE ON invoice TO clerk");
    passes(
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC UPDATE invoice SET total = 0; END",
    );
    passes("CREATE TRIGGER t BEFORE UPDATE OR DELETE ON invoice FOR EACH ROW EXECUTE FUNCTION f()");
    passes(
        "ALTER TABLE line ADD FOREIGN KEY (inv) REFERENCES invoice ON UPDATE CASCADE ON DELETE CASCADE NOT VALID FROBNICATE",
    );
    // Unparseable, names the table, but only reads (row locks are no write).
    passes("SELECT * FROM invoice FOR UPDATE OF invoice FROBNICATE");
    passes("SELECT 'unterminated FROM invoice");
}

#[test]
fn unicode_escaped_names_of_a_guarded_table_are_that_table() {
    for sql in [
        "UPDATE U&\"\\0069nvoice\" SET total = 1 WHERE id = 1",
        "UPDATE u&\"inv\\+00006Fice\" SET total = 1 WHERE id = 1",
        "UPDATE public.U&\"!0069nvoice\" UESCAPE '!' SET total = 1 WHERE id = 1",
        "UPDATE U&\"#0069nvoice\" /* c */ UESCAPE\n'#' AS i SET total = 1 WHERE i.id = 1",
        "DELETE FROM U&\"public\".U&\"\\0069nvoice\" WHERE id = 1",
        "UPDATE invoice SET total = 1 WHERE U&\"\\0069d\" = 1",
    ] {
        let w = write(sql);
        assert_eq!(w.guard, 0, "{sql}");
        assert_eq!(w.target, key(&[lit("1")]), "{sql}");
    }
    passes("UPDATE U&\"\\0063ustomer\" SET total = 1 WHERE id = 1");
    // Escapes PostgreSQL rejects: the name is unknown, and the write fails closed.
    let (t, reason) = refused("UPDATE U&\"\\00g9nvoice\" SET total = 1 WHERE id = 1");
    assert_eq!(t.to_string(), "public.invoice");
    assert!(reason.contains("cannot parse"), "{reason}");
    refused("UPDATE U&\"!0069nvoice\" UESCAPE 'a' SET total = 1");
}

#[test]
fn explain_that_runs_a_guarded_write_is_refused_in_every_spelling() {
    for sql in [
        "EXPLAIN ANALYSE UPDATE invoice SET total = 1 WHERE id = 1",
        "EXPLAIN (ANALYSE) UPDATE invoice SET total = 1 WHERE id = 1",
        "EXPLAIN (FORMAT JSON, ANALYSE) UPDATE invoice SET total = 1 WHERE id = 1",
        "EXPLAIN (ANALYZE true) DELETE FROM invoice WHERE id = 1",
        "EXPLAIN (ANALYZE on, COSTS off) UPDATE invoice SET total = 1",
        "EXPLAIN (ANALYZE 1) UPDATE invoice SET total = 1",
        "EXPLAIN /* a */ ANALYZE /* b */ VERBOSE UPDATE invoice SET total = 1",
        "EXPLAIN (\"analyze\") UPDATE invoice SET total = 1",
        "EXPLAIN (ANALYZE off, ANALYZE) UPDATE invoice SET total = 1",
        "EXPLAIN ANALYZE WITH u AS (UPDATE invoice SET total = 1 WHERE id = 1 RETURNING id) SELECT * FROM u",
        "EXPLAIN ANALYZE UPDATE U&\"\\0069nvoice\" SET total = 1",
        "EXPLAIN ANALYZE MERGE INTO invoice t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "EXPLAIN ANALYZE UPDATE invoice SET total = WHERE",
    ] {
        let (t, r) = refused(sql);
        assert_eq!(t.to_string(), "public.invoice", "{sql}");
        assert!(
            r.contains("EXPLAIN ANALYZE") && r.contains("public.invoice"),
            "{sql}: {r}"
        );
    }
}

#[test]
fn explain_that_only_plans_or_that_the_server_rejects_passes() {
    for sql in [
        "EXPLAIN UPDATE invoice SET total = 1 WHERE id = 1",
        "EXPLAIN VERBOSE UPDATE invoice SET total = 1 WHERE id = 1",
        "EXPLAIN (ANALYZE false) UPDATE invoice SET total = 1",
        "EXPLAIN (ANALYZE OFF, FORMAT JSON) UPDATE invoice SET total = 1",
        "EXPLAIN (ANALYZE 0) UPDATE invoice SET total = 1",
        "EXPLAIN (ANALYZE 'off') UPDATE invoice SET total = 1",
        "EXPLAIN (ANALYZE, ANALYZE false) UPDATE invoice SET total = 1",
        "EXPLAIN (ANALYZE 'yes') UPDATE invoice SET total = 1",
        "EXPLAIN ANALYZE UPDATE customer SET total = 1",
        "EXPLAIN ANALYZE SELECT * FROM invoice WHERE id = 1",
    ] {
        passes(sql);
    }
}
