//! What a session learns of the versions of the rows its batches read and write, spoken byte by
//! byte: a write first bound to a row it never read goes unchecked but a read row is checked,
//! a write pipelined (extended or simple, or in the same query) behind the read of its row
//! learns the row's new version, a prepared read without the version is followed once the
//! table is tracked, and two writes of one row in one query do not conflict with each other.

mod common;
use common::guards::*;
use common::wire::*;
use common::*;

/// An unnamed statement whose first `Bind` names a row the session never read goes without
/// version check (bumped all the same); bound later to a row the session did read, it is
/// checked, and a stale version is a conflict.
#[tokio::test]
async fn unnamed_statement_first_bound_to_an_unread_row_is_checked_for_a_read_one() {
    let db = invoice_db("pl_lean", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    read_row(&mut raw, 6).await;
    let sql = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    raw.send(
        &[
            parse("", sql, &[]),
            bind_text("", "", &["7"]),
            execute("", 0),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Reply::ParseComplete,
            Reply::BindComplete,
            cc("UPDATE 1"),
            Reply::Ready('I')
        ]
    );
    // What the server ran: the bump, without version predicate or RETURNING.
    let direct = db.direct().await;
    let ran: String = direct
        .query_one(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        ran.starts_with("UPDATE invoice SET total = total + 1,"),
        "{ran}"
    );
    assert!(
        ran.contains("version") && !ran.contains("RETURNING"),
        "{ran}"
    );
    bump_directly(&db, 6).await;
    raw.send(&[bind_text("", "", &["6"]), execute("", 0), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::BindComplete, conflict(6), Reply::Ready('I')]
    );
    let versions: Vec<i64> = direct
        .query(
            "SELECT version FROM invoice WHERE id IN (6, 7) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Row 6: bumped once directly, the stale write did not apply; row 7: bumped by the write.
    assert_eq!(versions, vec![1, 1]);
}

#[tokio::test]
async fn unnamed_write_pipelined_after_a_read_of_its_row_learns_its_new_version() {
    let db = invoice_db("pl_lean_race", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    // The read and the write go in one batch: when the write is parsed the read's row has not
    // come back yet, so the session does not track the row at that moment.
    let batch = [
        parse(
            "",
            "SELECT id, total, version FROM invoice WHERE id = $1",
            &[],
        ),
        bind_text("", "", &["7"]),
        describe(b'P', ""),
        execute("", 0),
        parse(
            "",
            "UPDATE invoice SET total = total + 1 WHERE id = $1",
            &[],
        ),
        bind_text("", "", &["7"]),
        execute("", 0),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
    // The session's own write moved the row on: writing it again is no conflict.
    raw.send(
        &[
            pbe("UPDATE invoice SET total = total + 1 WHERE id = 7"),
            sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
    assert_eq!(
        version_of(&db, 7).await,
        2,
        "both writes applied, each bumped the version"
    );
}

#[tokio::test]
async fn simple_write_pipelined_after_a_read_of_its_row_learns_its_new_version() {
    let db = invoice_db("pl_simple_race", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    // Two simple queries sent back to back: when the write is looked at, the read's row has
    // not come back yet, so the session does not track the row at that moment.
    raw.send(
        &[
            query("SELECT id, total, version FROM invoice WHERE id = 7"),
            query("UPDATE invoice SET total = total + 1 WHERE id = 7"),
        ]
        .concat(),
    )
    .await;
    raw.until_ready().await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
    // The session's own write moved the row on: writing it again is no conflict.
    raw.send(&query("UPDATE invoice SET total = total + 1 WHERE id = 7"))
        .await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
    assert_eq!(
        version_of(&db, 7).await,
        2,
        "both writes applied, each bumped the version"
    );
}

/// A prepared read that cannot show the version is not followed while the session tracks
/// nothing of its table; once the session tracks the row, the same statement's next read
/// (without the version) makes it forget the row, so the write after it is not held to a
/// version the session no longer shows.
#[tokio::test]
async fn prepared_read_without_the_version_is_followed_once_the_table_is_tracked() {
    let db = invoice_db("pl_read_follow", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    let read = |id: &str| {
        [
            bind_text("", "total_of", &[id]),
            describe(b'P', ""),
            execute("", 0),
            sync(),
        ]
        .concat()
    };
    raw.send(
        &[
            parse("total_of", "SELECT total FROM invoice WHERE id = $1", &[]),
            read("7"),
        ]
        .concat(),
    )
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.contains(&Reply::DataRow(vec![Some("10".into())])),
        "{msgs:?}"
    );
    // The session now tracks row 7 ...
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    // ... another session changes it, and this session reads it again, without the version.
    bump_version(&db, 7).await;
    raw.send(&read("7")).await;
    raw.until_ready().await;
    // The row is forgotten: the write is blind, and goes through.
    raw.send(&query("UPDATE invoice SET total = 1 WHERE id = 7"))
        .await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
}

#[tokio::test]
async fn write_after_a_read_of_its_row_in_the_same_query_learns_its_new_version() {
    let db = invoice_db("pl_same_query", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    // One query: when its steps are planned, the read's row has not come back yet.
    raw.send(&query(
        "SELECT id, total, version FROM invoice WHERE id = 7; \
         UPDATE invoice SET total = total + 1 WHERE id = 7",
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
    raw.send(&query("UPDATE invoice SET total = total + 1 WHERE id = 7"))
        .await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
}

#[tokio::test]
async fn two_writes_of_one_tracked_row_in_one_query_do_not_conflict_with_each_other() {
    let db = invoice_db("pl_two_writes", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    // The second write expects the version the first one gave the row.
    raw.send(&query(
        "UPDATE invoice SET total = total + 1 WHERE id = 7; \
         UPDATE invoice SET total = total + 1 WHERE id = 7",
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert_eq!(
        msgs.iter().filter(|m| **m == cc("UPDATE 1")).count(),
        2,
        "{msgs:?}"
    );
    // A stale row still conflicts inside such a query.
    bump_version(&db, 7).await;
    raw.send(&query(
        "UPDATE invoice SET total = 0 WHERE id = 7; UPDATE invoice SET total = 0 WHERE id = 8",
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Reply::Error(code, _) if code == "40001")),
        "{msgs:?}"
    );
}
