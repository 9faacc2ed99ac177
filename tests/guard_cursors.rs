//! Read capture through server-side cursors, beyond the simple-protocol `DECLARE`
//! (`tests/guard_capture.rs` has that one):
//!
//! - A `DECLARE ... CURSOR FOR SELECT` of a guarded table sent in the extended protocol (with a
//!   parameter, by tokio-postgres, and by hand) is captured: its `FETCH`es, in either protocol,
//!   read byte for byte as directly and teach the rows' versions.
//! - A cursor name that comes to mean another cursor (closed and declared again in one
//!   `Query`, in the extended protocol, or by a function) reads exactly as directly: the
//!   proxy takes nothing off rows whose description does not show its columns, with or
//!   without a `Describe` from the client.

mod common;
use common::wire::{Raw, bind, describe, execute, parse, query, sync};
use common::{Proxy, TestDb, code};

const SETUP: &str = "
CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL, version bigint NOT NULL DEFAULT 0);
CREATE TABLE acct_x (id int PRIMARY KEY, balance int NOT NULL);
INSERT INTO acct (id, balance) SELECT g, 100 + g FROM generate_series(1, 20) g;
INSERT INTO acct_x (id, balance) SELECT g, 100 + g FROM generate_series(1, 20) g;";

const GUARDS: &str = r#"
[[guard]]
table = "acct"
key = ["id"]

[[guard]]
table = "acct_x"
key = ["id"]
version = "xmin"
"#;

async fn setup(prefix: &str) -> (TestDb, Proxy) {
    let db = TestDb::new(prefix).await;
    db.direct().await.batch_execute(SETUP).await.unwrap();
    (db, Proxy::with_guards(GUARDS).await)
}

/// Every message up to `ReadyForQuery`: (type, body).
async fn until_ready(raw: &mut Raw) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let m = raw.read_msg().await.expect("a reply");
        out.push((m.tag, m.body().to_vec()));
        if m.tag == b'Z' {
            return out;
        }
    }
}

/// The replies to a simple `Query`.
async fn simple(raw: &mut Raw, sql: &str) -> Vec<(u8, Vec<u8>)> {
    raw.send(&query(sql)).await;
    until_ready(raw).await
}

/// The replies to `sql` prepared unnamed, bound, run and synced, with a `Describe` of the
/// portal when `described`.
async fn extended(raw: &mut Raw, sql: &str, described: bool) -> Vec<(u8, Vec<u8>)> {
    let mut batch = parse("", sql, &[]);
    batch.extend(bind("", "", &[], &[]));
    if described {
        batch.extend(describe(b'P', ""));
    }
    batch.extend(execute("", 0));
    batch.extend(sync());
    raw.send(&batch).await;
    until_ready(raw).await
}

/// One step of a script run on two raw sessions.
enum Step<'a> {
    Simple(&'a str),
    Extended(&'a str, bool),
}

/// Runs `steps` directly and through the proxy: every reply must be the same bytes. Returns
/// the proxy's session.
async fn same_replies(db: &TestDb, proxy: &Proxy, steps: &[Step<'_>]) -> Raw {
    let mut direct = db.raw().await;
    let mut a = proxy.raw(&db.name).await;
    for step in steps {
        let (want, got, sql) = match *step {
            Step::Simple(sql) => (
                simple(&mut direct, sql).await,
                simple(&mut a, sql).await,
                sql,
            ),
            Step::Extended(sql, d) => (
                extended(&mut direct, sql, d).await,
                extended(&mut a, sql, d).await,
                sql,
            ),
        };
        assert_eq!(got, want, "{sql}");
    }
    a
}

/// Another session changes row `id`, and A's write of it, planned on what A read, conflicts.
async fn stale_after_other_write(proxy: &Proxy, db: &TestDb, a: &mut Raw, table: &str, id: i32) {
    let b = proxy.client(&db.name).await;
    b.simple_query(&format!(
        "UPDATE {table} SET balance = balance + 1 WHERE id = {id}"
    ))
    .await
    .unwrap();
    let reply = simple(
        a,
        &format!("UPDATE {table} SET balance = 5 WHERE id = {id}"),
    )
    .await;
    assert!(
        reply
            .iter()
            .any(|(t, body)| *t == b'E' && String::from_utf8_lossy(body).contains("40001")),
        "{table} row {id}: no conflict: {reply:?}"
    );
}

#[tokio::test]
async fn a_cursor_declared_in_the_extended_protocol_teaches_and_reads_the_same() {
    let (db, proxy) = setup("cur_ext").await;
    for table in ["acct", "acct_x"] {
        let declare = format!(
            "DECLARE c CURSOR FOR SELECT balance, 'x' AS t FROM {table} WHERE id IN (1, 2, 3) ORDER BY id"
        );
        let mut a = same_replies(
            &db,
            &proxy,
            &[
                Step::Simple("BEGIN"),
                Step::Extended(&declare, true),
                Step::Extended("FETCH 1 FROM c", true),
                Step::Extended("FETCH NEXT IN c", false),
                Step::Simple("FETCH c"),
                Step::Simple("COMMIT"),
            ],
        )
        .await;
        for id in [1, 2, 3] {
            stale_after_other_write(&proxy, &db, &mut a, table, id).await;
        }
    }
}

#[tokio::test]
async fn tokio_postgres_cursors_with_a_parameter_teach() {
    let (db, proxy) = setup("cur_tokio").await;
    for table in ["acct", "acct_x"] {
        let mut a = proxy.client(&db.name).await;
        let tx = a.transaction().await.unwrap();
        tx.execute(
            &format!("DECLARE cur CURSOR FOR SELECT balance FROM {table} WHERE id = $1"),
            &[&7],
        )
        .await
        .unwrap();
        let rows = tx.query("FETCH ALL FROM cur", &[]).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].len(), 1, "{table}: the client's columns only");
        let balance: i32 = rows[0].get(0);
        tx.commit().await.unwrap();
        let b = proxy.client(&db.name).await;
        b.execute(
            &format!("UPDATE {table} SET balance = balance + 1 WHERE id = 7"),
            &[],
        )
        .await
        .unwrap();
        let err = a
            .execute(
                &format!("UPDATE {table} SET balance = $1 WHERE id = 7"),
                &[&(balance + 10)],
            )
            .await
            .expect_err("the FETCH taught the row's version");
        assert_eq!(code(&err), "40001", "{table}: {err}");
        // Read again (through a cursor), the row is written.
        let tx = a.transaction().await.unwrap();
        tx.execute(
            &format!("DECLARE cur CURSOR FOR SELECT balance FROM {table} WHERE id = $1"),
            &[&7],
        )
        .await
        .unwrap();
        tx.query("FETCH ALL FROM cur", &[]).await.unwrap();
        tx.execute(
            &format!("UPDATE {table} SET balance = 107 WHERE id = 7"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{table}: a write after reading again: {e}"));
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn a_cursor_name_that_comes_to_mean_another_cursor_reads_as_it_is() {
    let (db, proxy) = setup("cur_reuse").await;
    let captured =
        "DECLARE c CURSOR WITH HOLD FOR SELECT balance FROM acct WHERE id < 4 ORDER BY id";
    // Three plain columns: as many as the client's column and the two capture adds.
    let other =
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1 AS a, 2 AS b, 3 AS c FROM generate_series(1, 5)";
    let by_function = "DO $$ DECLARE r refcursor := 'c'; BEGIN CLOSE r; \
        OPEN r FOR SELECT 4 AS a, 5 AS b, 6 AS c FROM generate_series(1, 5); END $$";
    let fetches = [
        Step::Extended("FETCH 1 FROM c", true),
        Step::Extended("FETCH 1 FROM c", false),
        Step::Simple("FETCH 1 FROM c"),
    ];
    let mut steps = vec![Step::Simple(captured), Step::Simple("FETCH 1 FROM c")];
    // Closed and declared again in one Query.
    let again = format!("CLOSE c; {other}");
    steps.push(Step::Simple(&again));
    steps.extend(fetches.iter().map(clone_step));
    // Declared again in the extended protocol.
    steps.extend([Step::Simple("CLOSE c"), Step::Simple(captured)]);
    steps.extend([
        Step::Extended("CLOSE c", false),
        Step::Extended(other, true),
    ]);
    steps.extend(fetches.iter().map(clone_step));
    // Closed and opened again by a function, which the proxy does not see.
    steps.extend([Step::Simple("CLOSE c"), Step::Simple("BEGIN")]);
    steps.extend([Step::Simple(captured), Step::Simple(by_function)]);
    steps.extend(fetches.iter().map(clone_step));
    steps.push(Step::Simple("COMMIT"));
    // A captured cursor declared and closed in one Query is not remembered.
    let gone = format!("{captured}; CLOSE c");
    steps.push(Step::Simple(&gone));
    steps.push(Step::Simple(other));
    steps.extend(fetches.iter().map(clone_step));
    same_replies(&db, &proxy, &steps).await;
}

fn clone_step<'a>(s: &Step<'a>) -> Step<'a> {
    match *s {
        Step::Simple(sql) => Step::Simple(sql),
        Step::Extended(sql, d) => Step::Extended(sql, d),
    }
}
