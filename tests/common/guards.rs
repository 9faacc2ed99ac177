//! The guard configs the tests share and the tables they guard: `public.invoice` (key `id`,
//! counter `version`) and its set-up in a database of the test's own, reads and changes of its
//! rows made directly (as another session makes them), a conflict provoked between two
//! sessions, and the reads a raw client makes so that the proxy tracks a row.

use tokio_postgres::Client;

use super::TestDb;
use super::wire::{Raw, Reply, bind_text, close, describe, execute, parse, sync};

/// `public.invoice` guarded by its `id`, versioned by its counter column `version`.
pub const INVOICE: &str = r#"
[[guard]]
table = "public.invoice"
key = ["id"]
version = "version"
"#;

/// A table no guard covers, for writes that commit, or not, along with guarded ones.
pub const AUDIT: &str = "CREATE TABLE audit (n int);";

/// SQL creating the invoice table, with rows `1..=rows` (total 10, version 0).
pub fn invoice_table(rows: i32) -> String {
    let mut sql = "CREATE TABLE invoice (id int primary key, total numeric not null, \
                   version bigint not null default 0);"
        .to_string();
    if rows > 0 {
        sql.push_str(&format!(
            "\nINSERT INTO invoice (id, total) SELECT g, 10 FROM generate_series(1, {rows}) g;"
        ));
    }
    sql
}

/// A database of the test's own (named after `prefix`, dropped with the value) holding the
/// invoice table with rows `1..=rows`, then whatever the SQL in `more` creates.
pub async fn invoice_db(prefix: &str, rows: i32, more: &str) -> TestDb {
    let db = TestDb::new(prefix).await;
    db.direct()
        .await
        .batch_execute(&format!("{}\n{more}", invoice_table(rows)))
        .await
        .unwrap();
    db
}

/// The version of invoice row `id`, read directly.
pub async fn version_of(db: &TestDb, id: i32) -> i64 {
    db.one("SELECT version FROM invoice WHERE id = $1", &[&id])
        .await
}

/// The version of invoice row `id` as `c` reads it (through the proxy, a tracked read).
pub async fn version_read_by(c: &Client, id: i32) -> i64 {
    c.query_one("SELECT version FROM invoice WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

/// Another session moves invoice row `id` on: its version + 1, directly.
pub async fn bump_version(db: &TestDb, id: i32) {
    db.direct()
        .await
        .execute(
            "UPDATE invoice SET version = version + 1 WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
}

/// Another session changes invoice row `id`: total + 100 and version + 1, directly.
pub async fn bump_directly(db: &TestDb, id: i32) {
    db.direct()
        .await
        .execute(
            "UPDATE invoice SET total = total + 100, version = version + 1 WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
}

/// The numbers in the audit table, in order, read directly.
pub async fn audit(db: &TestDb) -> Vec<i32> {
    db.direct()
        .await
        .query("SELECT n FROM audit ORDER BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Through the proxy: A reads invoice row 1, B changes it, A's write conflicts.
pub async fn provoke_conflict(a: &Client, b: &Client) {
    a.simple_query("SELECT id, version FROM invoice WHERE id = 1")
        .await
        .unwrap();
    b.simple_query("UPDATE invoice SET total = 20 WHERE id = 1")
        .await
        .unwrap();
    let err = a
        .simple_query("UPDATE invoice SET total = 30 WHERE id = 1")
        .await
        .expect_err("a conflict");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err}");
}

/// The conflict error on invoice row `id`, as a raw client sees it.
pub fn conflict(id: i32) -> Reply {
    Reply::Error(
        "40001".into(),
        format!("optimistic lock conflict on public.invoice (id)=({id})"),
    )
}

/// Reads invoice row `id` the way tokio-postgres does (Parse and Describe of a named statement
/// in one round trip, Bind and Execute in the next; a named statement, so an unnamed one
/// survives), so the proxy tracks its version.
pub async fn read_row(raw: &mut Raw, id: i32) -> Vec<Reply> {
    let sql = "SELECT id, total, version FROM invoice WHERE id = $1";
    raw.send(&[parse("rd", sql, &[]), describe(b'S', "rd"), sync()].concat())
        .await;
    raw.until_ready().await;
    let batch = [
        bind_text("", "rd", &[&id.to_string()]),
        execute("", 0),
        close(b'S', "rd"),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter().any(|m| matches!(m, Reply::DataRow(_))),
        "{msgs:?}"
    );
    msgs
}

/// Reads invoice row `id` the way libpq's `PQexecParams` does: Parse, Bind, Describe (portal),
/// Execute and Sync in one write.
pub async fn read_row_pipelined(raw: &mut Raw, id: i32) -> Vec<Reply> {
    let batch = [
        parse(
            "",
            "SELECT id, total, version FROM invoice WHERE id = $1",
            &[],
        ),
        bind_text("", "", &[&id.to_string()]),
        describe(b'P', ""),
        execute("", 0),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter().any(|m| matches!(m, Reply::DataRow(_))),
        "{msgs:?}"
    );
    msgs
}
