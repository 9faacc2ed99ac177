//! The statements the proxy prepares for guarded writes, spoken byte by byte: a named write is
//! bound in full only when it checks a version, SQL `DEALLOCATE` closes the full form too, a
//! skipped re-`Parse` leaves the lean statement in use, a `Parse` the server refuses leaves the
//! statement it has guarded, and an unnamed write sent again and again is kept prepared,
//! answers exactly as the server itself and still checks the version.

mod common;
use common::guards::*;
use common::wire::*;
use common::*;

/// A named guarded write is prepared as the client wrote it (plus its bump) and, under a name
/// of the proxy's, in full; a `Bind` that checks a version goes to the full form, even in the
/// batch that prepares both, and closing the statement closes both.
#[tokio::test]
async fn named_write_is_bound_in_full_only_when_it_checks_a_version() {
    let db = invoice_db("pl_named_lean", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    bump_version(&db, 7).await;
    let write = |id: &str| {
        [
            bind_text("", "add_one", &[id]),
            describe(b'P', ""),
            execute("", 0),
        ]
        .concat()
    };
    // Row 7 is tracked and stale: a conflict, in the batch that prepares the statement.
    raw.send(
        &[
            parse(
                "add_one",
                "UPDATE invoice SET total = total + 1 WHERE id = $1",
                &[],
            ),
            write("7"),
            sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs[0], Reply::ParseComplete, "one ParseComplete: {msgs:?}");
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Reply::Error(code, _) if code == "40001")),
        "{msgs:?}"
    );
    // Row 8 is not tracked: the client's statement, bumped, without RETURNING.
    raw.send(&[write("8"), sync()].concat()).await;
    let msgs = raw.until_ready().await;
    assert_eq!(
        msgs,
        vec![
            Reply::BindComplete,
            Reply::NoData,
            cc("UPDATE 1"),
            Reply::Ready('I')
        ]
    );
    // After a re-read, row 7 is written through the full form and its new version learnt:
    // the second write of it is no conflict.
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    for _ in 0..2 {
        raw.send(&[write("7"), sync()].concat()).await;
        let msgs = raw.until_ready().await;
        assert_eq!(
            msgs,
            vec![
                Reply::BindComplete,
                Reply::NoData,
                cc("UPDATE 1"),
                Reply::Ready('I')
            ]
        );
    }
    let direct = db.direct().await;
    let versions: Vec<i64> = direct
        .query(
            "SELECT version FROM invoice WHERE id IN (7, 8) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![3, 1], "every write bumped its row");
    // Closing the statement closes its full form too.
    raw.send(&[close(b'S', "add_one"), sync()].concat()).await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs, vec![Reply::Other('3'), Reply::Ready('I')]);
    raw.send(&query(
        "SELECT count(*) FROM pg_prepared_statements \
         WHERE name = 'add_one' OR name LIKE 'optlock\\_full\\_%'",
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.contains(&Reply::DataRow(vec![Some("0".into())])),
        "{msgs:?}"
    );
}

/// SQL `DEALLOCATE` of a named statement closes its full form too, at the start of the next
/// extended-protocol batch, unseen by the client. A `DEALLOCATE` that fails (in an aborted
/// transaction) leaves the statement, and the proxy keeps guarding it.
#[tokio::test]
async fn sql_deallocate_closes_the_full_form_and_a_failed_one_keeps_the_guard() {
    let db = invoice_db("pl_dealloc", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    let count = "SELECT count(*) FROM pg_prepared_statements \
                 WHERE name = 'add_one' OR name LIKE 'optlock\\_full\\_%'";
    raw.send(
        &[
            parse(
                "add_one",
                "UPDATE invoice SET total = total + 1 WHERE id = $1",
                &[],
            ),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::ParseComplete, Reply::Ready('I')]
    );
    raw.send(&query(count)).await;
    assert!(
        raw.until_ready()
            .await
            .contains(&Reply::DataRow(vec![Some("2".into())])),
        "the client's statement and its full form"
    );
    // Row 7 is read, then changed by another session.
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    bump_version(&db, 7).await;
    // A DEALLOCATE in an aborted transaction fails: the statement is still there, and still
    // checks the version.
    raw.send(&query("BEGIN; SELECT 1/0")).await;
    raw.until_ready().await;
    raw.send(&query("DEALLOCATE add_one")).await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Reply::Error(code, _) if code == "25P02")),
        "{msgs:?}"
    );
    raw.send(&query("ROLLBACK")).await;
    raw.until_ready().await;
    raw.send(&[bind_text("", "add_one", &["7"]), execute("", 0), sync()].concat())
        .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Reply::Error(code, _) if code == "40001")),
        "the stale write still conflicts: {msgs:?}"
    );
    // A DEALLOCATE that succeeds: the next batch closes the full form first, and the client
    // sees only its own replies.
    raw.send(&query("DEALLOCATE add_one")).await;
    raw.until_ready().await;
    raw.send(
        &[
            parse("", count, &[]),
            bind_text("", "", &[]),
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
            Reply::DataRow(vec![Some("0".into())]),
            cc("SELECT 1"),
            Reply::Ready('I')
        ]
    );
}

/// A `Bind` of the unnamed statement that went lean, for a row the session tracks, prepares it
/// again in full. When an earlier error in the batch makes the server skip that `Parse`, the
/// server keeps the lean statement, and so does the session: the next `Bind` of it works.
#[tokio::test]
async fn skipped_reparse_of_a_lean_statement_leaves_the_lean_one_in_use() {
    let db = invoice_db("pl_reparse_skip", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    // Row 8 is not tracked: the unnamed statement goes lean.
    raw.send(
        &[
            parse(
                "",
                "UPDATE invoice SET total = total + 1 WHERE id = $1",
                &[],
            ),
            bind_text("", "", &["8"]),
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
    // Row 7 is read in the extended protocol (a simple query would drop the unnamed
    // statement).
    raw.send(
        &[
            parse("read", "SELECT id, version FROM invoice WHERE id = $1", &[]),
            bind_text("", "read", &["7"]),
            describe(b'P', ""),
            execute("", 0),
            sync(),
        ]
        .concat(),
    )
    .await;
    raw.until_ready().await;
    // An error first; then a Bind of row 7 (tracked), whose full Parse the server skips.
    raw.send(
        &[
            parse("bad", "SELECT 1/0", &[]),
            bind_text("", "bad", &[]),
            execute("", 0),
            bind_text("", "", &["7"]),
            execute("", 0),
            sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Reply::Error(code, _) if code == "22012")),
        "{msgs:?}"
    );
    // The lean statement is still the server's: bound as it is, for both rows.
    for id in ["8", "7"] {
        raw.send(&[bind_text("", "", &[id]), execute("", 0), sync()].concat())
            .await;
        assert_eq!(
            raw.until_ready().await,
            vec![Reply::BindComplete, cc("UPDATE 1"), Reply::Ready('I')],
            "row {id}"
        );
    }
}

/// What the session knows of a statement name follows what the server did with the `Parse`:
/// a second `Parse` of a name the server already has fails there, and the statement the
/// server keeps stays guarded; a `Parse` that fails leaves no statement, and its `Bind` gets
/// the server's own "does not exist" under the client's name.
#[tokio::test]
async fn a_parse_the_server_refuses_leaves_the_statement_it_has_guarded() {
    let db = invoice_db("pl_parse_refused", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    raw.send(
        &[
            parse(
                "add_one",
                "UPDATE invoice SET total = total + 1 WHERE id = $1",
                &[],
            ),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::ParseComplete, Reply::Ready('I')]
    );
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    bump_version(&db, 7).await;
    // The same name again, for a read: the server says it exists already.
    raw.send(&[parse("add_one", "SELECT 1", &[]), sync()].concat())
        .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Reply::Error(code, _) if code == "42P05")),
        "{msgs:?}"
    );
    // The server's statement is still the write, and still checks the version.
    raw.send(&[bind_text("", "add_one", &["7"]), execute("", 0), sync()].concat())
        .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Reply::Error(code, _) if code == "40001")),
        "the stale write must conflict: {msgs:?}"
    );
    // A guarded write the server cannot prepare: its Bind fails under the client's name.
    raw.send(
        &[
            parse(
                "broken",
                "UPDATE invoice SET no_such_column = 1 WHERE id = $1",
                &[],
            ),
            sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Reply::Error(code, _) if code == "42703")),
        "{msgs:?}"
    );
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    raw.send(&[bind_text("", "broken", &["7"]), execute("", 0), sync()].concat())
        .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter().any(|m| matches!(m, Reply::Error(code, text)
            if code == "26000" && text.contains("\"broken\""))),
        "{msgs:?}"
    );
}

/// The exchanges [`an_unnamed_write_kept_prepared_answers_as_the_server_itself`] compares, each
/// batch's replies in order. The row written is read first (a write that checks a version
/// goes in full), and each text is sent twice, so the proxy keeps it prepared; with `probe`,
/// the script checks that it did.
async fn kept_script(raw: &mut Raw, probe: bool) -> Vec<Vec<Reply>> {
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    let broken = "UPDATE invoice SET total = no_such_column WHERE id = $1";
    let pbe_write = |id: &str| {
        [
            parse("", write, &[]),
            bind_text("", "", &[id]),
            describe(b'P', ""),
            execute("", 0),
            sync(),
        ]
        .concat()
    };
    let mut out = Vec::new();
    let mut batch = async |raw: &mut Raw, bytes: Vec<u8>| {
        raw.send(&bytes).await;
        out.push(raw.until_ready().await);
    };
    // The proxy bumps versions, the server alone does not: the reads are not compared.
    let read = async |raw: &mut Raw| {
        raw.send(&query(
            "SELECT id, total, version FROM invoice WHERE id = 6",
        ))
        .await;
        raw.until_ready().await;
    };
    read(raw).await;
    for _ in 0..3 {
        batch(raw, pbe_write("6")).await;
    }
    if probe {
        let kept =
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'optlock\\_full\\_%'";
        raw.send(&query(kept)).await;
        let msgs = raw.until_ready().await;
        assert!(
            msgs.contains(&Reply::DataRow(vec![Some("1".into())])),
            "the write is kept prepared: {msgs:?}"
        );
    }
    // Its description: the client's one parameter, no rows.
    batch(
        raw,
        [parse("", write, &[]), describe(b'S', ""), sync()].concat(),
    )
    .await;
    // The unnamed statement bound again without a new Parse, to another row.
    batch(
        raw,
        [bind_text("", "", &["5"]), execute("", 0), sync()].concat(),
    )
    .await;
    // In an aborted transaction the Parse itself fails.
    batch(raw, query("BEGIN")).await;
    batch(raw, query("SELECT 1/0")).await;
    batch(raw, pbe_write("6")).await;
    batch(raw, query("ROLLBACK")).await;
    // A simple query drops the unnamed statement: binding it fails.
    batch(raw, pbe_write("6")).await;
    batch(raw, query("SELECT 1")).await;
    batch(
        raw,
        [bind_text("", "", &["6"]), execute("", 0), sync()].concat(),
    )
    .await;
    batch(raw, pbe_write("6")).await;
    // A text the server cannot prepare: its Parse fails, and leaves no unnamed statement
    // (not even the one before it).
    for _ in 0..3 {
        batch(raw, [pbe("SELECT 42"), sync()].concat()).await;
        batch(raw, [parse("", broken, &[]), sync()].concat()).await;
        batch(
            raw,
            [bind_text("", "", &["6"]), execute("", 0), sync()].concat(),
        )
        .await;
    }
    // DISCARD ALL drops prepared statements; the write goes on.
    batch(raw, pbe_write("6")).await;
    batch(raw, query("DISCARD ALL")).await;
    read(raw).await;
    batch(raw, pbe_write("6")).await;
    batch(raw, pbe_write("6")).await;
    batch(
        raw,
        [bind_text("", "", &["6"]), execute("", 0), sync()].concat(),
    )
    .await;
    out
}

/// An unnamed guarded write sent again and again (libpq's `PQexecParams`) is kept prepared
/// under a name of the proxy's, and the client cannot tell: every reply, error and command tag
/// is the server's own, in an aborted transaction, after a simple query dropped the unnamed
/// statement, for a text the server refuses, and across `DISCARD ALL`.
#[tokio::test]
async fn an_unnamed_write_kept_prepared_answers_as_the_server_itself() {
    let db = invoice_db("pl_kept_exact", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut direct = db.raw().await;
    let expected = kept_script(&mut direct, false).await;
    let mut raw = proxy.raw(&db.name).await;
    let got = kept_script(&mut raw, true).await;
    assert_eq!(got, expected);
    assert!(
        got[3].contains(&Reply::Params(1)) && got[3].contains(&Reply::NoData),
        "{:?}",
        got[3]
    );
    // Each run wrote row 6 nine times and row 5 once (bumped by the proxy only).
    assert_eq!(version_of(&db, 6).await, 9);
    assert_eq!(version_of(&db, 5).await, 1);
}

/// The kept statement still checks the version: a row changed by someone else since the
/// session read it is a conflict, and the session's own writes never are.
#[tokio::test]
async fn an_unnamed_write_kept_prepared_still_checks_the_version() {
    let db = invoice_db("pl_kept_check", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    read_row(&mut raw, 6).await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    let batch = [
        parse("", write, &[]),
        bind_text("", "", &["6"]),
        execute("", 0),
        sync(),
    ]
    .concat();
    for _ in 0..3 {
        raw.send(&batch).await;
        assert_eq!(
            raw.until_ready().await,
            vec![
                Reply::ParseComplete,
                Reply::BindComplete,
                cc("UPDATE 1"),
                Reply::Ready('I')
            ]
        );
    }
    raw.send(&query(
        "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'optlock\\_full\\_%'",
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.contains(&Reply::DataRow(vec![Some("1".into())])),
        "the write is kept prepared: {msgs:?}"
    );
    bump_directly(&db, 6).await;
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
    assert_eq!(version_of(&db, 6).await, 4);
}
