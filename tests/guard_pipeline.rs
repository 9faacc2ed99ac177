//! Extended-protocol batches through the proxy, spoken byte by byte: a conflict in the middle of
//! a batch stops the rest of it and nothing of it commits (in autocommit and inside `BEGIN`,
//! where a checked write's `Sync` goes out with it), a successful batch keeps every command tag
//! exact, an unnamed statement is reused across batches after a conflict, reads in a pipelined
//! `Describe`/`Execute` are tracked, per-column result formats survive the proxy's `RETURNING`,
//! and an error before a checked write does not stall the batch.

mod common;
use common::guards::*;
use common::wire::*;
use common::*;

#[tokio::test]
async fn conflict_in_an_autocommit_pipeline_stops_the_batch() {
    let db = invoice_db("pl_auto", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    read_row(&mut raw, 1).await;
    bump_directly(&db, 1).await;
    let batch = [
        pbe("INSERT INTO audit VALUES (1)"),
        pbe("UPDATE invoice SET total = 2 WHERE id = 1"),
        pbe("INSERT INTO audit VALUES (2)"),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Reply::ParseComplete,
            Reply::BindComplete,
            cc("INSERT 0 1"),
            Reply::ParseComplete,
            Reply::BindComplete,
            conflict(1),
            Reply::Ready('I'),
        ]
    );
    assert_eq!(
        audit(&db).await,
        Vec::<i32>::new(),
        "nothing of the batch committed"
    );
    let total: String = db
        .direct()
        .await
        .query_one("SELECT total::text FROM invoice WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, "110");
    // The session is usable: a simple query right after.
    raw.send(&query("SELECT 1")).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Reply::RowDescription(1),
            Reply::DataRow(vec![Some("1".into())]),
            cc("SELECT 1"),
            Reply::Ready('I')
        ]
    );
}

#[tokio::test]
async fn conflict_in_a_pipeline_inside_begin_aborts_the_transaction() {
    let db = invoice_db("pl_tx", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    read_row(&mut raw, 2).await;
    bump_directly(&db, 2).await;
    raw.send(&query("BEGIN")).await;
    assert_eq!(
        raw.until_ready().await,
        vec![cc("BEGIN"), Reply::Ready('T')]
    );
    let batch = [
        pbe("INSERT INTO audit VALUES (1)"),
        pbe("UPDATE invoice SET total = 2 WHERE id = 2"),
        pbe("INSERT INTO audit VALUES (2)"),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Reply::ParseComplete,
            Reply::BindComplete,
            cc("INSERT 0 1"),
            Reply::ParseComplete,
            Reply::BindComplete,
            conflict(2),
            Reply::Ready('E'),
        ]
    );
    // Later statements fail until the transaction ends; COMMIT reports ROLLBACK.
    raw.send(&[pbe("SELECT 1"), sync()].concat()).await;
    let msgs = raw.until_ready().await;
    assert!(
        matches!(&msgs[0], Reply::Error(code, _) if code == "25P02"),
        "{msgs:?}"
    );
    assert_eq!(msgs.last(), Some(&Reply::Ready('E')));
    raw.send(&query("COMMIT")).await;
    assert_eq!(
        raw.until_ready().await,
        vec![cc("ROLLBACK"), Reply::Ready('I')]
    );
    assert_eq!(audit(&db).await, Vec::<i32>::new());
}

#[tokio::test]
async fn successful_pipeline_keeps_exact_command_tags() {
    let db = invoice_db("pl_ok", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    read_row(&mut raw, 1).await;
    read_row(&mut raw, 5).await;
    let batch = [
        pbe("INSERT INTO audit VALUES (3)"),
        // Checked against the version read above.
        pbe("UPDATE invoice SET total = 2 WHERE id = 1"),
        // The same row again: the session's own write advanced its tracked version.
        pbe("UPDATE invoice SET total = 3 WHERE id = 1 RETURNING total"),
        // At the expected version, but the other condition matches nothing: no conflict.
        pbe("UPDATE invoice SET total = 0 WHERE id = 5 AND total = 999"),
        // Blind and bulk writes.
        pbe("DELETE FROM invoice WHERE id = 2"),
        pbe("UPDATE invoice SET total = 0 WHERE id IN (3, 4)"),
        pbe("INSERT INTO audit VALUES (4)"),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    let p = || [Reply::ParseComplete, Reply::BindComplete];
    let expected: Vec<Reply> = [
        p().to_vec(),
        vec![cc("INSERT 0 1")],
        p().to_vec(),
        vec![cc("UPDATE 1")],
        p().to_vec(),
        vec![Reply::DataRow(vec![Some("3".into())]), cc("UPDATE 1")],
        p().to_vec(),
        vec![cc("UPDATE 0")],
        p().to_vec(),
        vec![cc("DELETE 1")],
        p().to_vec(),
        vec![cc("UPDATE 2")],
        p().to_vec(),
        vec![cc("INSERT 0 1")],
        vec![Reply::Ready('I')],
    ]
    .concat();
    assert_eq!(raw.until_ready().await, expected);
    assert_eq!(audit(&db).await, vec![3, 4]);
    let v: Vec<(i32, i64)> = db
        .direct()
        .await
        .query(
            "SELECT id, version FROM invoice WHERE id <= 5 ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(v, vec![(1, 2), (3, 1), (4, 1), (5, 0)]);
}

#[tokio::test]
async fn unnamed_statement_is_reused_across_batches_after_a_conflict() {
    let db = invoice_db("pl_unnamed", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    read_row(&mut raw, 6).await;
    bump_directly(&db, 6).await;
    let batch = [
        parse(
            "",
            "UPDATE invoice SET total = total + 1 WHERE id = $1",
            &[],
        ),
        bind_text("", "", &["6"]),
        execute("", 0),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Reply::ParseComplete,
            Reply::BindComplete,
            conflict(6),
            Reply::Ready('I')
        ]
    );
    // Re-read (with a named statement), then bind the unnamed statement again, no Parse.
    read_row(&mut raw, 6).await;
    let again = [bind_text("", "", &["6"]), execute("", 0), sync()].concat();
    raw.send(&again).await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::BindComplete, cc("UPDATE 1"), Reply::Ready('I')]
    );
    // Own write tracked: once more without a re-read, still clean.
    raw.send(&again).await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::BindComplete, cc("UPDATE 1"), Reply::Ready('I')]
    );
    // Another change: the reused statement conflicts again.
    bump_directly(&db, 6).await;
    raw.send(&again).await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::BindComplete, conflict(6), Reply::Ready('I')]
    );
    // And a different row through the same unnamed statement is its own check.
    raw.send(&[bind_text("", "", &["7"]), execute("", 0), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::BindComplete, cc("UPDATE 1"), Reply::Ready('I')]
    );
    assert_eq!(version_of(&db, 6).await, 4);
}

/// libpq's `PQexecParams` (and `pgbench -M extended`) sends Parse, Bind, Describe(portal),
/// Execute and Sync in one write: the rows it reads must be tracked like any other.
#[tokio::test]
async fn reads_in_a_pipelined_describe_execute_are_tracked() {
    let db = invoice_db("pl_readpipe", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    read_row_pipelined(&mut raw, 3).await;
    bump_directly(&db, 3).await;
    raw.send(&[pbe("UPDATE invoice SET total = 2 WHERE id = 3"), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Reply::ParseComplete,
            Reply::BindComplete,
            conflict(3),
            Reply::Ready('I')
        ]
    );
}

/// Bind with one result format per column of the client's `RETURNING` (as pgjdbc sends them):
/// the proxy's own columns must not disturb them, and it still reads the new version.
#[tokio::test]
async fn per_column_result_formats_with_returning() {
    let db = invoice_db("pl_formats", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    read_row(&mut raw, 8).await;
    // RETURNING id (binary int4), total (text).
    let batch = [
        parse(
            "",
            "UPDATE invoice SET total = 5 WHERE id = 8 RETURNING id, total",
            &[],
        ),
        bind("", "", &[], &[1, 0]),
        describe(b'P', ""),
        execute("", 0),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Reply::ParseComplete,
            Reply::BindComplete,
            Reply::RowDescription(2),
            Reply::DataRow(vec![
                Some(String::from_utf8_lossy(&8i32.to_be_bytes()).into_owned()),
                Some("5".into())
            ]),
            cc("UPDATE 1"),
            Reply::Ready('I')
        ]
    );
    // The session's own write was tracked: a later change by another session conflicts.
    bump_directly(&db, 8).await;
    raw.send(&[pbe("UPDATE invoice SET total = 6 WHERE id = 8"), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Reply::ParseComplete,
            Reply::BindComplete,
            conflict(8),
            Reply::Ready('I')
        ]
    );
}

#[tokio::test]
async fn an_error_before_a_checked_write_does_not_stall_the_batch() {
    let db = invoice_db("pl_stall", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    read_row(&mut raw, 2).await;
    // The Bind fails on the server (not a number), so the checked write's Execute, which the
    // rest of the batch waits for, is skipped by the server.
    let batch = [
        parse("", "UPDATE invoice SET total = $2 WHERE id = $1", &[]),
        bind_text("", "", &["2", "not a number"]),
        execute("", 0),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    let replies = tokio::time::timeout(std::time::Duration::from_secs(10), raw.until_ready())
        .await
        .expect("the batch ends instead of waiting forever");
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert_eq!(replies[0], Reply::ParseComplete);
    assert!(
        matches!(&replies[1], Reply::Error(code, _) if code == "22P02"),
        "{replies:?}"
    );
    assert_eq!(replies[2], Reply::Ready('I'));
}

/// Inside a transaction block a checked write's `Sync` goes out with it (it ends nothing
/// there), while what the client sent after the `Sync` waits for the row count: a conflict
/// still comes before the batch's `ReadyForQuery`, aborts the transaction, and a `COMMIT`
/// pipelined behind it reports `ROLLBACK`.
#[tokio::test]
async fn checked_write_in_a_transaction_block_is_one_round_trip_and_still_aborts() {
    let db = invoice_db("pl_tx_sync", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    for sql in [
        "BEGIN",
        "INSERT INTO audit VALUES (1)",
        "SELECT id, version FROM invoice WHERE id IN (3, 4)",
    ] {
        raw.send(&query(sql)).await;
        raw.until_ready().await;
    }
    let write = |id: &str| {
        [
            parse(
                "",
                "UPDATE invoice SET total = total + 1 WHERE id = $1",
                &[],
            ),
            bind_text("", "", &[id]),
            describe(b'P', ""),
            execute("", 0),
            sync(),
        ]
        .concat()
    };
    raw.send(&write("4")).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Reply::ParseComplete,
            Reply::BindComplete,
            Reply::NoData,
            cc("UPDATE 1"),
            Reply::Ready('T')
        ]
    );
    // Another session changes row 3 (this one has not locked it).
    bump_version(&db, 3).await;
    raw.send(&[write("3"), query("COMMIT")].concat()).await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs.len(), 5, "{msgs:?}");
    assert!(
        matches!(&msgs[3], Reply::Error(code, _) if code == "40001"),
        "{msgs:?}"
    );
    assert_eq!(msgs[4], Reply::Ready('E'));
    assert_eq!(
        raw.until_ready().await,
        vec![cc("ROLLBACK"), Reply::Ready('I')]
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
