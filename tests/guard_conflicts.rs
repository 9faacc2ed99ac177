//! Guarded writes against a real PostgreSQL: conflicts, no false conflicts, policies, and the
//! conflict error's fields and atomicity.

mod common;
use common::guards::*;
use common::*;
use tokio_postgres::{Client, SimpleQueryMessage};

#[tokio::test]
async fn read_then_write_conflicts_in_autocommit_simple() {
    let db = invoice_db("g_auto", 5, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    a.simple_query("SELECT id, total, version FROM invoice WHERE id = 1")
        .await
        .unwrap();
    b.simple_query("SELECT * FROM invoice WHERE id = 1")
        .await
        .unwrap();
    let r = b
        .simple_query("UPDATE invoice SET total = 20 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);
    let err = a
        .simple_query("UPDATE invoice SET total = 30 WHERE id = 1")
        .await
        .unwrap_err();
    let e = err.as_db_error().expect("a server error");
    assert_eq!(e.code().code(), "40001");
    assert_eq!(
        e.message(),
        "optimistic lock conflict on public.invoice (id)=(1)"
    );
    assert_eq!(
        e.detail(),
        Some("the row was changed by another transaction: expected version 0, found 1")
    );
    assert_eq!(e.hint(), Some("reload the row and apply the change again"));
    assert_eq!(e.schema(), Some("public"));
    assert_eq!(e.table(), Some("invoice"));
    assert_eq!(e.constraint(), Some("optlock"));
    assert!(
        e.where_().is_none(),
        "no PL/pgSQL context leaks: {:?}",
        e.where_()
    );
    let total: String = match &db
        .direct()
        .await
        .simple_query("SELECT total FROM invoice WHERE id = 1")
        .await
        .unwrap()[1]
    {
        SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_string(),
        _ => panic!(),
    };
    assert_eq!(total, "20", "the second writer did not overwrite the first");
    // After reloading, the write goes through.
    a.simple_query("SELECT * FROM invoice WHERE id = 1")
        .await
        .unwrap();
    let r = a
        .simple_query("UPDATE invoice SET total = 30 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);
}

#[tokio::test]
async fn read_then_write_conflicts_extended_with_binary_rows() {
    let db = invoice_db("g_ext", 5, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    // tokio-postgres reads rows in binary format.
    let v: i64 = a
        .query_one("SELECT version FROM invoice i WHERE i.id = $1", &[&2i32])
        .await
        .map(|r| r.get(0))
        .unwrap_or_default();
    assert_eq!(v, 0);
    a.query("SELECT id, version FROM invoice WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    let n = b
        .execute(
            "UPDATE invoice SET total = total + 1 WHERE id = $1",
            &[&2i32],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let err = a
        .execute(
            "UPDATE invoice SET total = total + 1 WHERE id = $1",
            &[&2i32],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001", "{err:?}");
    // The prepared statement's parameter count is the client's own.
    let st = a
        .prepare("UPDATE invoice SET total = total + $2::int4 WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(st.params().len(), 2);
    // Own writes never conflict with themselves.
    a.query("SELECT id, version FROM invoice WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    for _ in 0..3 {
        let n = a.execute(&st, &[&2i32, &5i32]).await.unwrap();
        assert_eq!(n, 1);
    }
    assert_eq!(version_read_by(&a, 2).await, 4);
}

#[tokio::test]
async fn conflict_inside_transaction_aborts_it() {
    let db = invoice_db("g_tx", 5, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query("INSERT INTO audit VALUES (1)")
        .await
        .unwrap();
    a.simple_query("SELECT * FROM invoice WHERE id = 3")
        .await
        .unwrap();
    b.simple_query("SELECT * FROM invoice WHERE id = 3")
        .await
        .unwrap();
    b.simple_query("UPDATE invoice SET total = 1 WHERE id = 3")
        .await
        .unwrap();
    let err = a
        .simple_query("UPDATE invoice SET total = 2 WHERE id = 3")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001");
    let err = a.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(
        err.code().unwrap().code(),
        "25P02",
        "the transaction is aborted on the server"
    );
    let r = a.simple_query("COMMIT").await.unwrap();
    assert!(
        r.iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
    );
    let audit = db
        .direct()
        .await
        .query("SELECT * FROM audit", &[])
        .await
        .unwrap();
    assert!(
        audit.is_empty(),
        "nothing of the aborted transaction committed"
    );
}

#[tokio::test]
async fn multi_statement_query_is_atomic() {
    let db = invoice_db("g_multi", 5, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    a.simple_query("SELECT * FROM invoice WHERE id = 4")
        .await
        .unwrap();
    b.simple_query("SELECT * FROM invoice WHERE id = 4")
        .await
        .unwrap();
    b.simple_query("UPDATE invoice SET total = 1 WHERE id = 4")
        .await
        .unwrap();
    let err = a
        .simple_query(
            "INSERT INTO audit VALUES (1); UPDATE invoice SET total = 2 WHERE id = 4; INSERT INTO audit VALUES (2)",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001");
    let direct = db.direct().await;
    assert!(
        direct
            .query("SELECT * FROM audit", &[])
            .await
            .unwrap()
            .is_empty()
    );
    // The session is idle and usable afterwards.
    let r = a.simple_query("SELECT 1; SELECT 2").await.unwrap();
    assert_eq!(
        r.iter()
            .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
            .count(),
        2
    );
    // A successful multi-statement text keeps exact tags.
    a.simple_query("SELECT * FROM invoice WHERE id = 4")
        .await
        .unwrap();
    let r = a
        .simple_query("INSERT INTO audit VALUES (3); UPDATE invoice SET total = 5 WHERE id = 4; DELETE FROM audit")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1, 1, 1]);
}

#[tokio::test]
async fn pinned_deleted_disjoint_blind_and_bulk() {
    let db = invoice_db("g_misc", 5, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    // Blind write: allowed and bumped.
    let r = a
        .simple_query("UPDATE invoice SET total = 11 WHERE id = 5")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);
    assert_eq!(version_read_by(&a, 5).await, 1);
    // Pinned stale version: conflict, and apps that ignored UPDATE 0 now see it.
    let err = a
        .simple_query("UPDATE invoice SET total = 12 WHERE id = 5 AND version = 0")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001");
    let r = a
        .simple_query("UPDATE invoice SET total = 12, version = 2 WHERE id = 5 AND version = 1")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);
    assert_eq!(
        version_read_by(&a, 5).await,
        2,
        "a SET that assigns the version is not bumped again"
    );
    // Non-matching other conditions are not a conflict.
    a.simple_query("SELECT * FROM invoice WHERE id = 5")
        .await
        .unwrap();
    let r = a
        .simple_query("UPDATE invoice SET total = 13 WHERE id = 5 AND total = 999")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![0]);
    // Deleted row.
    a.simple_query("SELECT * FROM invoice WHERE id = 1")
        .await
        .unwrap();
    b.simple_query("DELETE FROM invoice WHERE id = 1")
        .await
        .unwrap();
    let err = a
        .simple_query("UPDATE invoice SET total = 1 WHERE id = 1")
        .await
        .unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(e.detail(), Some("the row no longer exists"));
    // Disjoint rows never conflict.
    a.simple_query("SELECT * FROM invoice WHERE id = 2")
        .await
        .unwrap();
    b.simple_query("SELECT * FROM invoice WHERE id = 3")
        .await
        .unwrap();
    b.simple_query("UPDATE invoice SET total = 1 WHERE id = 3")
        .await
        .unwrap();
    a.simple_query("UPDATE invoice SET total = 1 WHERE id = 2")
        .await
        .unwrap();
    // Bulk writes bump every row they touch.
    let before2 = version_read_by(&a, 2).await;
    let before3 = version_read_by(&a, 3).await;
    let r = a
        .simple_query("UPDATE invoice SET total = 0 WHERE id IN (2, 3)")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![2]);
    assert_eq!(version_read_by(&a, 2).await, before2 + 1);
    assert_eq!(version_read_by(&a, 3).await, before3 + 1);
}

#[tokio::test]
async fn reject_policies_and_fail_closed() {
    let db = invoice_db("g_reject", 5, AUDIT).await;
    let proxy = Proxy::with_guards(
        r#"
[[guard]]
table = "invoice"
key = ["id"]
unversioned = "reject"
bulk = "reject"
"#,
    )
    .await;
    let a = proxy.client(&db.name).await;
    let err = a
        .simple_query("UPDATE invoice SET total = 1 WHERE id = 1")
        .await
        .unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(e.code().code(), "55000");
    assert!(
        e.hint()
            .unwrap()
            .contains("read the row on this connection first"),
        "{e:?}"
    );
    a.simple_query("SELECT id, version FROM invoice WHERE id = 1")
        .await
        .unwrap();
    a.simple_query("UPDATE invoice SET total = 1 WHERE id = 1")
        .await
        .unwrap();
    let err = a.simple_query("DELETE FROM invoice").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "55000");
    let err = a
        .simple_query(
            "MERGE INTO invoice i USING (SELECT 1 AS id) s ON i.id = s.id WHEN MATCHED THEN UPDATE SET total = 0",
        )
        .await
        .unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(e.code().code(), "0A000");
    assert!(e.message().contains("public.invoice"), "{}", e.message());
    // Extended protocol: refused at Bind, the session stays usable.
    let err = a
        .execute("UPDATE invoice SET total = 2 WHERE id = $1", &[&3i32])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "55000", "{err:?}");
    let n: i64 = a
        .query_one("SELECT count(*) FROM invoice", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
}

async fn run(c: &Client, sql: &str, extended: bool) -> Result<(), tokio_postgres::Error> {
    if extended {
        c.execute(sql, &[]).await.map(|_| ())
    } else {
        c.simple_query(sql).await.map(|_| ())
    }
}

#[tokio::test]
async fn versions_read_without_the_key_are_tracked_and_refreshed() {
    let db = invoice_db("g_pinned", 5, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    for (round, extended) in [(0, false), (1, true)] {
        let id = 2 + round;
        let read = format!("SELECT total, version FROM invoice WHERE id = {id}");
        let write = format!("UPDATE invoice SET total = total + 1 WHERE id = {id}");
        run(&a, &read, extended).await.unwrap();
        run(&b, &write, extended).await.unwrap();
        let err = run(&a, &write, extended).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "40001", "round {round}");
        // Reading the row again (still without its key) refreshes the version: no livelock.
        run(&a, &read, extended).await.unwrap();
        run(&a, &write, extended)
            .await
            .expect("a write after a fresh read goes through");
        // A read that shows no version forgets it: the next write is unversioned, not stale.
        run(&b, &read, extended).await.unwrap();
        run(&b, &write, extended).await.unwrap();
        let read_total = format!("SELECT total FROM invoice WHERE id = {id}");
        run(&a, &read_total, extended).await.unwrap();
        run(&a, &write, extended)
            .await
            .expect("nothing known: allowed");
    }
}

/// A read that spells a write word (`FOR UPDATE`, a column named `updated_at`) is still a
/// read: its versions are followed in both protocols.
#[tokio::test]
async fn a_read_for_update_is_followed() {
    let db = invoice_db("g_for_update", 5, AUDIT).await;
    db.direct()
        .await
        .batch_execute(
            "ALTER TABLE invoice ADD COLUMN updated_at timestamptz;
             INSERT INTO invoice (id, total) VALUES (6, 10);",
        )
        .await
        .unwrap();
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    for (round, extended) in [(0, false), (1, true)] {
        for (n, read) in [
            "SELECT total, version FROM invoice WHERE id = {id} FOR UPDATE",
            "SELECT version, updated_at FROM invoice WHERE id = {id}",
            "SELECT id, version FROM invoice WHERE id = {id} FOR NO KEY UPDATE",
        ]
        .into_iter()
        .enumerate()
        {
            let id = 1 + 3 * round + n;
            let read = read.replace("{id}", &id.to_string());
            let write = format!("UPDATE invoice SET total = total + 1 WHERE id = {id}");
            run(&a, &read, extended).await.unwrap();
            run(&b, &write, extended).await.unwrap();
            let err = run(&a, &write, extended).await.unwrap_err();
            assert_eq!(
                err.code().map(|c| c.code()),
                Some("40001"),
                "{read} (extended: {extended})"
            );
        }
    }
}

/// A query of several statements reads versions without their keys too: each result is the
/// one of its own statement, whether the query passes as written (no guarded write in it) or
/// runs as a script (a guarded write after the read).
#[tokio::test]
async fn versions_read_without_the_key_in_a_query_of_several_statements_are_tracked() {
    let db = invoice_db("g_pinned_multi", 5, AUDIT).await;
    db.direct()
        .await
        .batch_execute("UPDATE invoice SET version = 7 WHERE id = 4")
        .await
        .unwrap();
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    let expect_conflict = |err: tokio_postgres::Error, detail: &str| {
        let e = err.as_db_error().expect("a server error");
        assert_eq!(e.code().code(), "40001");
        assert_eq!(e.detail(), Some(detail));
    };

    // Passed as written: a transaction around the read, and two reads whose results must not
    // be mixed up (row 4 is at version 7, row 5 at 0).
    a.simple_query(
        "BEGIN; SELECT version FROM invoice WHERE id = 4; \
         SELECT total, version FROM invoice WHERE id = 5; COMMIT",
    )
    .await
    .unwrap();
    for id in [4, 5] {
        b.simple_query(&format!("UPDATE invoice SET total = 1 WHERE id = {id}"))
            .await
            .unwrap();
    }
    let err = a
        .simple_query("UPDATE invoice SET total = 2 WHERE id = 4")
        .await
        .unwrap_err();
    expect_conflict(
        err,
        "the row was changed by another transaction: expected version 7, found 8",
    );
    let err = a
        .simple_query("UPDATE invoice SET total = 2 WHERE id = 5")
        .await
        .unwrap_err();
    expect_conflict(
        err,
        "the row was changed by another transaction: expected version 0, found 1",
    );

    // A script: the read, then the write, in one query. The write finds the version read and
    // goes through; the session now knows the version it wrote.
    let r = a
        .simple_query(
            "SELECT total, version FROM invoice WHERE id = 3; \
             UPDATE invoice SET total = total + 1 WHERE id = 3",
        )
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1, 1]);
    b.simple_query("UPDATE invoice SET total = 5 WHERE id = 3")
        .await
        .unwrap();
    let err = a
        .simple_query("UPDATE invoice SET total = 6 WHERE id = 3")
        .await
        .unwrap_err();
    expect_conflict(
        err,
        "the row was changed by another transaction: expected version 1, found 2",
    );
    assert_eq!(version_of(&db, 3).await, 2);
}

/// A write that waits for another transaction's lock on its row, which then commits a new
/// version: the server re-checks the row and the write conflicts on the spot, in both
/// protocols, with the version the other transaction committed. A write whose statement
/// calls a function is checked the other way (0 rows, then the raise) with the same error.
#[tokio::test]
async fn a_write_that_waited_for_a_lock_conflicts_with_the_committed_version() {
    let db = invoice_db("g_waited", 5, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    a.simple_query("SELECT * FROM invoice WHERE id IN (1, 2, 3)")
        .await
        .unwrap();
    let statements: [(&str, i32); 3] = [
        ("UPDATE invoice SET total = 99 WHERE id = 1", 1),
        ("UPDATE invoice SET total = 99 WHERE id = $1", 2),
        (
            "UPDATE invoice SET total = 99 WHERE id = 3 AND now() IS NOT NULL",
            3,
        ),
    ];
    for (sql, id) in statements {
        let other = db.direct().await;
        other.batch_execute("BEGIN").await.unwrap();
        other
            .execute(
                "UPDATE invoice SET total = total + 1, version = version + 1 WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let write = async {
            if sql.contains('$') {
                a.execute(sql, &[&id]).await.map(|_| ())
            } else {
                a.simple_query(sql).await.map(|_| ())
            }
        };
        let commit = async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            other.batch_execute("COMMIT").await.unwrap();
        };
        let (r, ()) = tokio::join!(write, commit);
        let e = r.expect_err(sql);
        let e = e.as_db_error().expect("a server error");
        assert_eq!(e.code().code(), "40001", "{sql}: {e:?}");
        assert_eq!(
            e.detail(),
            Some("the row was changed by another transaction: expected version 0, found 1"),
            "{sql}"
        );
        assert_eq!(e.table(), Some("invoice"));
        assert_eq!(e.constraint(), Some("optlock"));
        assert!(e.where_().is_none(), "{sql}: no PL/pgSQL context");
        assert_eq!(version_of(&db, id).await, 1, "{sql}");
    }
}

#[tokio::test]
async fn a_row_found_with_a_null_version_conflicts_and_says_so() {
    let db = TestDb::new("g_null_version").await;
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE ledger (id int primary key, amount int, version bigint);
             INSERT INTO ledger VALUES (1, 0, 4);",
        )
        .await
        .unwrap();
    let proxy = Proxy::with_guards(
        r#"
[[guard]]
table = "public.ledger"
key = ["id"]
version = "version"
"#,
    )
    .await;
    let a = proxy.client(&db.name).await;
    a.simple_query("SELECT amount, version FROM ledger WHERE id = 1")
        .await
        .unwrap();
    db.direct()
        .await
        .batch_execute("UPDATE ledger SET version = NULL WHERE id = 1")
        .await
        .unwrap();
    let err = a
        .simple_query("UPDATE ledger SET amount = 5 WHERE id = 1")
        .await
        .unwrap_err();
    let e = err.as_db_error().expect("a server error");
    assert_eq!(e.code().code(), "40001");
    assert_eq!(
        e.detail(),
        Some("the row was changed by another transaction: expected version 4, found NULL")
    );
    let amount: i32 = db
        .direct()
        .await
        .query_one("SELECT amount FROM ledger WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(amount, 0, "the write did not go through");
}

/// A write that matches no row still fires the statement-level triggers of its table. When
/// that 0-row write is a conflict (the row was deleted), the trigger's work is undone with it,
/// as an error raised inside the statement would undo it; a 0-row write that is no conflict
/// keeps it. A table without such triggers gives the same answers (the proxy may then raise
/// the conflict after the write's implicit transaction committed nothing). Autocommit, both
/// protocols.
#[tokio::test]
async fn a_conflict_on_a_deleted_row_undoes_its_statement_triggers() {
    let db = TestDb::new("g_stmt_trigger").await;
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE audit (op text);
             CREATE FUNCTION audit_stmt() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN INSERT INTO audit VALUES (TG_OP); RETURN NULL; END $$;
             CREATE TABLE loud (id int primary key, amount int, version bigint not null default 0);
             CREATE TRIGGER audit AFTER UPDATE ON loud FOR EACH STATEMENT EXECUTE FUNCTION audit_stmt();
             CREATE TABLE quiet (id int primary key, amount int, version bigint not null default 0);
             INSERT INTO loud (id, amount) SELECT g, 0 FROM generate_series(1, 4) g;
             INSERT INTO quiet (id, amount) SELECT g, 0 FROM generate_series(1, 4) g;",
        )
        .await
        .unwrap();
    let proxy = Proxy::with_guards(
        r#"
[[guard]]
table = "public.loud"
key = ["id"]
version = "version"

[[guard]]
table = "public.quiet"
key = ["id"]
version = "version"
"#,
    )
    .await;
    let audit_rows = || async {
        let n: i64 = db
            .direct()
            .await
            .query_one("SELECT count(*) FROM audit", &[])
            .await
            .unwrap()
            .get(0);
        n
    };
    let a = proxy.client(&db.name).await;
    for table in ["loud", "quiet"] {
        for (id, extended) in [(1, false), (2, true)] {
            let what = format!("{table}, extended: {extended}");
            a.simple_query(&format!(
                "SELECT amount, version FROM {table} WHERE id = {id}"
            ))
            .await
            .unwrap();
            db.direct()
                .await
                .execute(&format!("DELETE FROM {table} WHERE id = {id}"), &[])
                .await
                .unwrap();
            let before = audit_rows().await;
            let sql = format!("UPDATE {table} SET amount = 5 WHERE id = $1");
            let err = if extended {
                a.execute(&sql, &[&id]).await.map(|_| ())
            } else {
                a.simple_query(&sql.replace("$1", &id.to_string()))
                    .await
                    .map(|_| ())
            }
            .expect_err(&what);
            let e = err.as_db_error().expect("a server error");
            assert_eq!(e.code().code(), "40001", "{what}");
            assert_eq!(e.detail(), Some("the row no longer exists"), "{what}");
            assert_eq!(
                audit_rows().await,
                before,
                "{what}: the trigger's work is undone"
            );

            // A 0-row write that is no conflict: the row is at the version read, the rest of
            // the condition does not hold. PostgreSQL fires the trigger and commits it.
            let id = id + 2;
            a.simple_query(&format!(
                "SELECT amount, version FROM {table} WHERE id = {id}"
            ))
            .await
            .unwrap();
            let sql = format!("UPDATE {table} SET amount = 5 WHERE id = $1 AND amount = 99");
            let n = if extended {
                a.execute(&sql, &[&id]).await.unwrap()
            } else {
                rows_affected(
                    &a.simple_query(&sql.replace("$1", &id.to_string()))
                        .await
                        .unwrap(),
                )[0]
            };
            assert_eq!(n, 0, "{what}");
            let fired = if table == "loud" { 1 } else { 0 };
            assert_eq!(audit_rows().await, before + fired, "{what}");
            // The session goes on.
            a.simple_query("SELECT 1").await.unwrap();
        }
    }
}
