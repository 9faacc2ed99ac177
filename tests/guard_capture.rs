//! Read capture: a `SELECT` of a guarded table teaches its rows' versions whatever it lists.
//! The proxy adds each table instance's key and version columns to the statement's output
//! and removes them before the client sees anything.
//!
//! - The naive read-modify-write (`SELECT balance ... WHERE id = 1`, another session writes,
//!   then `UPDATE ... SET balance = 5 WHERE id = 1`) conflicts with counter, timestamp and
//!   `xmin` guards, in the simple and extended protocols, text and binary.
//! - Joins (each instance on its own, a self-join), `SELECT *`, `FOR UPDATE`, reads through a
//!   view and a partition teach the versions of the rows they read.
//! - What the client receives is byte for byte what it receives directly: `RowDescription`,
//!   `DataRow`, `Describe` replies, `CommandComplete`, suspended portals, a `Bind` with one
//!   result format per column (and one with a wrong count); reads that are not captured
//!   (`DISTINCT`, `GROUP BY`, `count(*)`, a user-defined aggregate, `UNION`, a window) too.
//! - tokio-postgres, which keeps the row description of each prepared statement, works.

mod common;
use common::wire::{Msg, Raw, bind, describe, execute, parse, query, sync};
use common::{Proxy, TestDb, code};
use tokio_postgres::Client;

const SETUP: &str = "
CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL, version bigint NOT NULL DEFAULT 0);
CREATE TABLE acct_ts (id int PRIMARY KEY, balance int NOT NULL,
    modified timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE acct_x (id int PRIMARY KEY, balance int NOT NULL);
INSERT INTO acct (id, balance) SELECT g, 100 + g FROM generate_series(1, 20) g;
INSERT INTO acct_ts (id, balance) SELECT g, 100 + g FROM generate_series(1, 20) g;
INSERT INTO acct_x (id, balance) SELECT g, 100 + g FROM generate_series(1, 20) g;
CREATE VIEW acct_v AS SELECT * FROM acct;
CREATE TABLE part (id int PRIMARY KEY, balance int NOT NULL, version bigint NOT NULL DEFAULT 0)
    PARTITION BY RANGE (id);
CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (0) TO (100);
INSERT INTO part (id, balance) SELECT g, 100 + g FROM generate_series(1, 20) g;
CREATE AGGREGATE my_sum(int) (sfunc = int4pl, stype = int);";

const GUARDS: &str = r#"
[[guard]]
table = "acct"
key = ["id"]

[[guard]]
table = "acct_ts"
key = ["id"]
version = "modified"
kind = "timestamp"

[[guard]]
table = "acct_x"
key = ["id"]
version = "xmin"

[[guard]]
table = "part"
key = ["id"]
"#;

/// The three guard kinds' tables.
const TABLES: [&str; 3] = ["acct", "acct_ts", "acct_x"];

async fn setup(prefix: &str) -> (TestDb, Proxy) {
    let db = TestDb::new(prefix).await;
    db.direct().await.batch_execute(SETUP).await.unwrap();
    (db, Proxy::with_guards(GUARDS).await)
}

/// Another session (through the proxy, which bumps the version) changes row `id` of `table`.
async fn other_writes(b: &Client, table: &str, id: i32) {
    let table = if table == "part_1" { "part" } else { table };
    b.simple_query(&format!(
        "UPDATE {table} SET balance = balance + 1 WHERE id = {id}"
    ))
    .await
    .unwrap();
}

/// A's naive write of row `id` of `table` (simple protocol) conflicts.
async fn stale_write_conflicts(a: &Client, table: &str, id: i32, what: &str) {
    let err = a
        .simple_query(&format!("UPDATE {table} SET balance = 5 WHERE id = {id}"))
        .await
        .expect_err(what);
    assert_eq!(code(&err), "40001", "{what}: {err}");
}

#[tokio::test]
async fn the_naive_read_modify_write_conflicts_with_every_kind_and_protocol() {
    let (db, proxy) = setup("cap_rmw").await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    for table in TABLES {
        // Simple protocol, text.
        let rows = a
            .simple_query(&format!("SELECT balance FROM {table} WHERE id = 1"))
            .await
            .unwrap();
        assert_eq!(common::rows(&rows), [[Some("101".to_string())]], "{table}");
        other_writes(&b, table, 1).await;
        stale_write_conflicts(&a, table, 1, &format!("{table}: simple")).await;
        // Extended protocol, binary results (tokio-postgres asks binary for every column).
        let rows = a
            .query(&format!("SELECT balance FROM {table} WHERE id = $1"), &[&2])
            .await
            .unwrap();
        assert_eq!((rows.len(), rows[0].len()), (1, 1), "{table}");
        assert_eq!(rows[0].get::<_, i32>(0), 102);
        other_writes(&b, table, 2).await;
        let err = a
            .execute(
                &format!("UPDATE {table} SET balance = 5 WHERE id = $1"),
                &[&2],
            )
            .await
            .expect_err("extended, binary");
        assert_eq!(code(&err), "40001", "{table}: {err}");
        // A read that names no row: every row it returns is tracked.
        a.simple_query(&format!(
            "SELECT balance FROM {table} WHERE balance > 0 ORDER BY id LIMIT 5"
        ))
        .await
        .unwrap();
        other_writes(&b, table, 4).await;
        stale_write_conflicts(&a, table, 4, &format!("{table}: unpinned read")).await;
        // A row read and not changed since is written without conflict.
        a.simple_query(&format!("UPDATE {table} SET balance = 9 WHERE id = 5"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn extended_text_reads_teach_too() {
    let (db, proxy) = setup("cap_text").await;
    let mut raw = proxy.raw(&db.name).await;
    let b = proxy.client(&db.name).await;
    for (i, table) in TABLES.iter().enumerate() {
        let id = (10 + i).to_string();
        let sql = format!("SELECT balance FROM {table} WHERE id = $1");
        raw.send(
            &[
                parse("", &sql, &[]),
                bind("", "", &[Some(id.as_bytes())], &[]),
                describe(b'P', ""),
                execute("", 0),
                sync(),
            ]
            .concat(),
        )
        .await;
        let msgs = raw.read_until(b'Z', 1).await;
        assert!(msgs.iter().any(|m| m.tag == b'D'), "{msgs:?}");
        other_writes(&b, table, 10 + i as i32).await;
        raw.send(&query(format!(
            "UPDATE {table} SET balance = 5 WHERE id = {id}"
        )))
        .await;
        let msgs = raw.read_until(b'Z', 1).await;
        let error = msgs.iter().find(|m| m.tag == b'E').map(|m| m.field(b'C'));
        assert_eq!(error, Some(Some("40001".into())), "{table}: {msgs:?}");
    }
}

#[tokio::test]
async fn joins_select_star_for_update_views_and_partitions_teach_each_instance() {
    let (db, proxy) = setup("cap_forms").await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    // A self-join: both instances' rows are tracked, each with its own version.
    let rows = a
        .simple_query(
            "SELECT x.balance, y.balance FROM acct x JOIN acct y ON y.id = x.id + 1 WHERE x.id = 1",
        )
        .await
        .unwrap();
    assert_eq!(
        common::rows(&rows),
        [[Some("101".to_string()), Some("102".to_string())]]
    );
    other_writes(&b, "acct", 2).await;
    stale_write_conflicts(&a, "acct", 2, "second instance of a self-join").await;
    other_writes(&b, "acct", 1).await;
    stale_write_conflicts(&a, "acct", 1, "first instance of a self-join").await;
    // A comma join of two guarded tables, and `SELECT *` of an xmin guard.
    a.simple_query("SELECT * FROM acct_x, acct_ts t WHERE acct_x.id = 3 AND t.id = 3")
        .await
        .unwrap();
    other_writes(&b, "acct_x", 3).await;
    other_writes(&b, "acct_ts", 3).await;
    stale_write_conflicts(&a, "acct_x", 3, "comma join, xmin").await;
    stale_write_conflicts(&a, "acct_ts", 3, "comma join, timestamp").await;
    // FOR UPDATE (in autocommit: the lock ends with the read).
    a.simple_query("SELECT balance FROM acct WHERE id = 6 FOR UPDATE")
        .await
        .unwrap();
    other_writes(&b, "acct", 6).await;
    stale_write_conflicts(&a, "acct", 6, "FOR UPDATE").await;
    // Through a view and through a partition (extended protocol).
    for (relation, id) in [("acct_v", 7), ("part_1", 8)] {
        let rows = a
            .query(
                &format!("SELECT balance FROM {relation} WHERE id = $1"),
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(rows[0].len(), 1);
        other_writes(&b, relation, id).await;
        let table = if relation == "acct_v" { "acct" } else { "part" };
        stale_write_conflicts(&a, table, id, relation).await;
    }
}

/// Two raw sessions on the same database, directly and through the proxy: each batch gets
/// the same bytes from both.
struct Twins {
    direct: Raw,
    proxied: Raw,
}

impl Twins {
    async fn open(db: &TestDb, proxy: &Proxy) -> Twins {
        Twins {
            direct: db.raw().await,
            proxied: proxy.raw(&db.name).await,
        }
    }

    /// Sends `bytes` (ending with `readies` `Sync`s or `Query`s) both ways; the replies must
    /// be the same bytes. Returns them.
    async fn same(&mut self, what: &str, bytes: &[u8], readies: usize) -> Vec<Msg> {
        self.direct.send(bytes).await;
        self.proxied.send(bytes).await;
        let d = self.direct.read_until(b'Z', readies).await;
        let p = self.proxied.read_until(b'Z', readies).await;
        assert_eq!(p, d, "{what}: the replies differ through the proxy");
        d
    }
}

#[tokio::test]
async fn simple_queries_reply_byte_for_byte() {
    let (db, proxy) = setup("cap_bytes_s").await;
    let mut t = Twins::open(&db, &proxy).await;
    for sql in [
        "SELECT balance FROM acct WHERE id = 1",
        "SELECT * FROM acct_x WHERE id < 4 ORDER BY id",
        "SELECT *, balance AS version FROM acct_ts ORDER BY version LIMIT 2 OFFSET 1",
        "SELECT a.balance, b.id FROM acct a JOIN acct b ON b.id = a.id + 1 WHERE a.id < 3 ORDER BY 1",
        "SELECT balance FROM acct_v WHERE id = 2 FOR UPDATE",
        "SELECT balance FROM part_1, acct_x WHERE part_1.id = acct_x.id AND acct_x.id = 5",
        "SELECT balance FROM acct WHERE id = 1; SELECT 1; SELECT * FROM acct_x WHERE id = 99",
        "SELECT lower('A'), balance::text FROM acct WHERE id = 3",
        // Not captured: the reads stay as the client wrote them.
        "SELECT DISTINCT balance FROM acct WHERE id < 3 ORDER BY 1",
        "SELECT balance, count(*) FROM acct GROUP BY balance ORDER BY 1 LIMIT 2",
        "SELECT count(*) FROM acct WHERE id = 1",
        "SELECT my_sum(balance) FROM acct",
        "SELECT 1 FROM acct ORDER BY my_sum(balance)",
        "SELECT balance FROM acct WHERE id = 1 UNION SELECT balance FROM acct_x WHERE id = 2",
        "SELECT id, sum(balance) OVER (ORDER BY id) FROM acct WHERE id < 4",
        "SELECT * FROM (SELECT balance FROM acct) s ORDER BY 1 LIMIT 2",
        // An error stays the server's.
        "SELECT nope FROM acct",
    ] {
        t.same(sql, &query(sql), 1).await;
    }
}

/// Parse and Describe of a named statement, then a Bind with `formats` and `param`, Describe
/// of its portal, and Executes of at most `limit` rows (0: all), in one batch.
fn named_batch(sql: &str, param: &str, formats: &[i16], limit: i32) -> Vec<u8> {
    let mut b = [
        parse("s1", sql, &[]),
        describe(b'S', "s1"),
        bind("p1", "s1", &[Some(param.as_bytes())], formats),
        describe(b'P', "p1"),
    ]
    .concat();
    for _ in 0..4 {
        b.extend(execute("p1", limit));
    }
    b.extend(sync());
    b
}

#[tokio::test]
async fn extended_replies_byte_for_byte() {
    let (db, proxy) = setup("cap_bytes_x").await;
    let mut t = Twins::open(&db, &proxy).await;
    for (sql, param, formats, limit) in [
        ("SELECT balance FROM acct WHERE id = $1", "1", &[][..], 0),
        (
            "SELECT balance FROM acct_ts WHERE id < $1 ORDER BY id",
            "9",
            &[1][..],
            3,
        ),
        (
            "SELECT * FROM acct_x WHERE id < $1 ORDER BY id",
            "5",
            &[1, 0][..],
            2,
        ),
        (
            "SELECT id, balance FROM acct_v WHERE id < $1 ORDER BY id",
            "4",
            &[0, 1][..],
            0,
        ),
        // A Bind whose format count the server rejects: the error is the same.
        (
            "SELECT id, balance FROM acct WHERE id < $1",
            "4",
            &[0, 1, 1][..],
            0,
        ),
        (
            "SELECT x.balance FROM acct x, acct y WHERE y.id = x.id AND x.id = $1",
            "2",
            &[][..],
            0,
        ),
        (
            "SELECT my_sum(balance) FROM acct WHERE id < $1",
            "3",
            &[1][..],
            0,
        ),
    ] {
        let what = format!("{sql} {formats:?} {limit}");
        t.same(&what, &named_batch(sql, param, formats, limit), 1)
            .await;
        let close = [common::wire::close(b'S', "s1"), sync()].concat();
        t.same(&what, &close, 1).await;
    }
    // libpq's PQexecParams: the unnamed statement with its portal described.
    let sql = "SELECT balance, id FROM part_1 WHERE id = $1";
    let batch = [
        parse("", sql, &[]),
        bind("", "", &[Some(b"3")], &[1]),
        describe(b'P', ""),
        execute("", 0),
        sync(),
    ]
    .concat();
    t.same("unnamed", &batch, 1).await;
    // A statement described in one batch and bound in the next, as tokio-postgres does.
    t.same(
        "prepared",
        &[parse("s2", sql, &[23]), describe(b'S', "s2"), sync()].concat(),
        1,
    )
    .await;
    let batch = [bind("", "s2", &[Some(b"4")], &[0]), execute("", 0), sync()].concat();
    t.same("bound", &batch, 1).await;
}

#[tokio::test]
async fn tokio_postgres_keeps_its_row_descriptions() {
    let (db, proxy) = setup("cap_tokio").await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    let stmt = a
        .prepare("SELECT balance, id FROM acct_x WHERE id = ANY($1) ORDER BY id")
        .await
        .unwrap();
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["balance", "id"]);
    for _ in 0..3 {
        let rows = a.query(&stmt, &[&vec![1i32, 2]]).await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].len(), 2);
        assert_eq!(
            (rows[1].get::<_, i32>(0), rows[1].get::<_, i32>(1)),
            (102, 2)
        );
    }
    other_writes(&b, "acct_x", 2).await;
    stale_write_conflicts(&a, "acct_x", 2, "prepared statement").await;
    // Read again, the row's new version is known: the write goes through.
    a.query(&stmt, &[&vec![2i32]]).await.unwrap();
    a.execute("UPDATE acct_x SET balance = 7 WHERE id = $1", &[&2])
        .await
        .unwrap();
    // A transaction with a row lock, as an ORM reads before it writes.
    let mut c = proxy.client(&db.name).await;
    let tx = c.transaction().await.unwrap();
    let row = tx
        .query_one("SELECT * FROM acct WHERE id = $1 FOR UPDATE", &[&11])
        .await
        .unwrap();
    assert_eq!(row.len(), 3);
    tx.execute("UPDATE acct SET balance = $1 WHERE id = $2", &[&1, &11])
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn what_the_database_says_keeps_reads_as_they_are() {
    let (db, proxy) = setup("cap_catalog").await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    // An aggregate created through the proxy after A logged in: A's next read calling it is
    // not captured (it would fail, or group otherwise).
    b.batch_execute("CREATE AGGREGATE late_sum(int) (sfunc = int4pl, stype = int)")
        .await
        .unwrap();
    let rows = a
        .simple_query("SELECT late_sum(balance) FROM acct WHERE id < 3")
        .await
        .unwrap();
    assert_eq!(common::rows(&rows), [[Some("203".to_string())]]);
    let row = a
        .query_one("SELECT late_sum(balance) FROM acct WHERE id < $1", &[&3])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 203);
    // Another schema's `acct` without the guard's columns, first on the search path: a read
    // that names `acct` unqualified means that one, and gets nothing added.
    let c = proxy.client(&db.name).await;
    c.batch_execute(
        "CREATE SCHEMA other; CREATE TABLE other.acct (id int, balance int);
         INSERT INTO other.acct VALUES (1, 7)",
    )
    .await
    .unwrap();
    a.batch_execute("SET search_path = other, public")
        .await
        .unwrap();
    let rows = a
        .simple_query("SELECT balance FROM acct WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(common::rows(&rows), [[Some("7".to_string())]]);
    let row = a
        .query_one("SELECT * FROM acct WHERE id = $1", &[&1])
        .await
        .unwrap();
    assert_eq!(row.len(), 2);
    // Named with its schema, the guarded table is still captured.
    a.simple_query("SELECT balance FROM public.acct WHERE id = 12")
        .await
        .unwrap();
    other_writes(&b, "acct", 12).await;
    stale_write_conflicts(&a, "public.acct", 12, "schema-qualified read").await;
}

/// Every message of the replies to `sql` prepared, bound, described and run in one
/// extended batch: (type, body).
async fn raw_extended(raw: &mut Raw, sql: &str) -> Vec<(u8, Vec<u8>)> {
    let mut batch = parse("", sql, &[]);
    batch.extend(bind("", "", &[], &[]));
    batch.extend(describe(b'P', ""));
    batch.extend(execute("", 0));
    batch.extend(sync());
    raw.send(&batch).await;
    messages_until_ready(raw).await
}

/// Every message up to `ReadyForQuery`: (type, body).
async fn messages_until_ready(raw: &mut Raw) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let m = raw.read_msg().await.expect("a reply");
        let done = m.tag == b'Z';
        out.push((m.tag, m.body().to_vec()));
        if done {
            return out;
        }
    }
}

/// Every message of the reply to a simple `Query` up to `ReadyForQuery`: (type, body).
async fn raw_reply(raw: &mut Raw, sql: &str) -> Vec<(u8, Vec<u8>)> {
    raw.send(&query(sql)).await;
    messages_until_ready(raw).await
}

#[tokio::test]
async fn copy_of_a_select_to_stdout_teaches_and_reads_the_same() {
    let (db, proxy) = setup("cap_copy").await;
    let b = proxy.client(&db.name).await;
    for table in TABLES {
        for (i, options) in ["", " (FORMAT binary)", " WITH (FORMAT text, NULL 'none')"]
            .iter()
            .enumerate()
        {
            let id = 1 + i as i32;
            let sql = format!(
                "COPY (SELECT balance, 'a\tb' AS t FROM {table} WHERE id IN ({id}, 10) ORDER BY id) TO STDOUT{options}"
            );
            let mut direct = db.raw().await;
            let want = raw_reply(&mut direct, &sql).await;
            let mut a = proxy.raw(&db.name).await;
            let got = raw_reply(&mut a, &sql).await;
            assert_eq!(got, want, "{sql}");
            assert!(got.iter().any(|(t, _)| *t == b'd'), "{sql}: rows came");
            // The COPY taught the row's version: another session's write makes A's stale.
            other_writes(&b, table, id).await;
            let reply = raw_reply(
                &mut a,
                &format!("UPDATE {table} SET balance = 5 WHERE id = {id}"),
            )
            .await;
            let err = reply
                .iter()
                .find(|(t, _)| *t == b'E')
                .unwrap_or_else(|| panic!("{sql}: no conflict: {reply:?}"));
            assert!(String::from_utf8_lossy(&err.1).contains("40001"), "{sql}");
        }
    }
    // CSV is relayed as it is (not captured): same bytes, nothing learned.
    let sql = "COPY (SELECT balance FROM acct WHERE id = 5) TO STDOUT (FORMAT csv)";
    let want = raw_reply(&mut db.raw().await, sql).await;
    assert_eq!(raw_reply(&mut proxy.raw(&db.name).await, sql).await, want);
}

#[tokio::test]
async fn a_cursor_s_fetches_teach_and_read_the_same() {
    let (db, proxy) = setup("cap_cursor").await;
    let b = proxy.client(&db.name).await;
    for table in TABLES {
        for (i, declare) in [
            "DECLARE c CURSOR FOR",
            "DECLARE \"Big C\" BINARY NO SCROLL CURSOR WITHOUT HOLD FOR",
        ]
        .iter()
        .enumerate()
        {
            let name = if i == 0 { "c" } else { "\"Big C\"" };
            let (id, other) = (1 + 2 * i as i32, 2 + 2 * i as i32);
            let statements = [
                "BEGIN".to_string(),
                format!(
                    "{declare} SELECT balance, 'x' AS t FROM {table} WHERE id IN ({id}, {other}) ORDER BY id"
                ),
                format!("FETCH NEXT FROM {name}"),
                format!("fetch forward 5 in {name};"),
                "COMMIT".to_string(),
            ];
            let mut direct = db.raw().await;
            let mut a = proxy.raw(&db.name).await;
            for sql in &statements[..3] {
                let want = raw_reply(&mut direct, sql).await;
                assert_eq!(raw_reply(&mut a, sql).await, want, "{sql}");
            }
            // A FETCH prepared in the extended protocol, described and run (in text, a
            // BINARY cursor's too: the Bind's formats decide).
            let fetch = format!("FETCH FORWARD 1 FROM {name}");
            let want = raw_extended(&mut direct, &fetch).await;
            assert_eq!(raw_extended(&mut a, &fetch).await, want, "{fetch}");
            for sql in &statements[3..] {
                let want = raw_reply(&mut direct, sql).await;
                assert_eq!(raw_reply(&mut a, sql).await, want, "{sql}");
            }
            // The FETCHes taught both rows' versions: writes after another session's are stale.
            for row in [id, other] {
                other_writes(&b, table, row).await;
                let reply = raw_reply(
                    &mut a,
                    &format!("UPDATE {table} SET balance = 5 WHERE id = {row}"),
                )
                .await;
                let err = reply
                    .iter()
                    .find(|(t, _)| *t == b'E')
                    .unwrap_or_else(|| panic!("{table} {declare} row {row}: no conflict"));
                assert!(String::from_utf8_lossy(&err.1).contains("40001"), "{table}");
            }
        }
    }
}

#[tokio::test]
async fn a_cursor_with_hold_outlives_its_transaction_until_closed() {
    let (db, proxy) = setup("cap_hold").await;
    let mut direct = db.raw().await;
    let mut a = proxy.raw(&db.name).await;
    for sql in [
        "DECLARE h CURSOR WITH HOLD FOR SELECT balance FROM acct WHERE id < 4 ORDER BY id",
        "FETCH NEXT FROM h",
        "FETCH 2 FROM h",
        "CLOSE h",
        "BEGIN",
        "DECLARE h CURSOR FOR SELECT 1 AS one",
        "FETCH h",
        "COMMIT",
    ] {
        let want = raw_reply(&mut direct, sql).await;
        assert_eq!(raw_reply(&mut a, sql).await, want, "{sql}");
    }
}

#[tokio::test]
async fn reads_in_a_query_that_also_writes_teach_too() {
    let (db, proxy) = setup("cap_mixed").await;
    let b = proxy.client(&db.name).await;
    for table in TABLES {
        // Byte for byte as directly, the write planned after the read it follows.
        let sql = format!(
            "SELECT balance, 'x' AS t FROM {table} WHERE id = 7; UPDATE {table} SET balance = 1 WHERE id = 8; SELECT balance FROM {table} WHERE id = 9"
        );
        let mut direct = db.raw().await;
        let want = raw_reply(&mut direct, &sql).await;
        let mut a = proxy.raw(&db.name).await;
        let got = raw_reply(&mut a, &sql).await;
        let tags = |r: &[(u8, Vec<u8>)]| r.iter().map(|(t, _)| *t).collect::<Vec<u8>>();
        assert_eq!(tags(&got), tags(&want), "{sql}");
        let rows = |r: &[(u8, Vec<u8>)]| {
            r.iter()
                .filter(|(t, _)| matches!(t, b'T' | b'D' | b'C'))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(rows(&got), rows(&want), "{sql}");
        // Rows 7 and 9 were read: a write after another session's is stale.
        for row in [7, 9] {
            other_writes(&b, table, row).await;
            let reply = raw_reply(
                &mut a,
                &format!("UPDATE {table} SET balance = 5 WHERE id = {row}"),
            )
            .await;
            assert!(
                reply
                    .iter()
                    .any(|(t, body)| *t == b'E' && String::from_utf8_lossy(body).contains("40001")),
                "{table} row {row}: no conflict: {reply:?}"
            );
        }
        // A write right after a read of its row in the same text expects what was read.
        other_writes(&b, table, 10).await;
        let reply = raw_reply(
            &mut a,
            &format!("SELECT balance FROM {table} WHERE id = 10; UPDATE {table} SET balance = 6 WHERE id = 10"),
        )
        .await;
        assert!(!reply.iter().any(|(t, _)| *t == b'E'), "{table}: {reply:?}");
    }
}

/// A captured read of one row that finds none forgets the row, in both protocols and
/// whatever the session tracked of the table: after another session deleted the row and
/// inserted it again, the session's write is held to nothing it no longer shows, so it goes
/// through (no false conflict). A row the session never tracked stays unknown too.
#[tokio::test]
async fn a_pinned_read_that_finds_no_row_forgets_it() {
    let (db, proxy) = setup("cap_forget").await;
    let direct = db.direct().await;
    let a = proxy.client(&db.name).await;
    for table in TABLES {
        // Rows 11 (simple protocol) and 12 (extended, a prepared statement) are tracked.
        a.simple_query(&format!("SELECT balance FROM {table} WHERE id = 11"))
            .await
            .unwrap();
        let read = a
            .prepare(&format!("SELECT balance FROM {table} WHERE id = $1"))
            .await
            .unwrap();
        assert_eq!(a.query(&read, &[&12]).await.unwrap().len(), 1);
        // Another session deletes them; this session's reads find nothing.
        direct
            .batch_execute(&format!("DELETE FROM {table} WHERE id IN (11, 12)"))
            .await
            .unwrap();
        let rows = a
            .simple_query(&format!("SELECT balance FROM {table} WHERE id = 11"))
            .await
            .unwrap();
        assert!(common::rows(&rows).is_empty(), "{table}");
        assert!(a.query(&read, &[&12]).await.unwrap().is_empty(), "{table}");
        // They come back with other versions; this session's blind writes go through.
        let version = match table {
            "acct" => ", version",
            _ => "",
        };
        let value = match table {
            "acct" => ", 41",
            _ => "",
        };
        direct
            .batch_execute(&format!(
                "INSERT INTO {table} (id, balance{version}) VALUES (11, 7{value}), (12, 7{value})"
            ))
            .await
            .unwrap();
        let n = a
            .execute(
                &format!("UPDATE {table} SET balance = 8 WHERE id = $1"),
                &[&11],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}: row 11 was forgotten: {e}"));
        assert_eq!(n, 1, "{table}");
        a.simple_query(&format!("UPDATE {table} SET balance = 8 WHERE id = 12"))
            .await
            .unwrap_or_else(|e| panic!("{table}: row 12 was forgotten: {e}"));
    }
}

/// The error code of the `ErrorResponse` among `msgs`, if any.
fn error_code(msgs: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = msgs.iter().find(|(tag, _)| *tag == b'E')?;
    let field = body.split(|&b| b == 0).find(|f| f.first() == Some(&b'C'))?;
    Some(String::from_utf8_lossy(&field[1..]).into_owned())
}

/// A text prepared again reuses what its first `Parse` planned only while the guards it was
/// planned under stand: after a reload that makes the table's version `xmin`, the same read
/// adds `xmin`, so a write of a row nobody changed goes through and one of a row another
/// session changed conflicts. (A table no other relation writes through: nothing else
/// makes the session plan its texts again.)
#[tokio::test]
async fn a_read_prepared_again_follows_a_reload_of_its_guard() {
    let db = TestDb::new("cap_reparse").await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE solo (id int PRIMARY KEY, balance int NOT NULL,
                 version bigint NOT NULL DEFAULT 0);
             INSERT INTO solo (id, balance) SELECT g, 100 FROM generate_series(1, 5) g;",
        )
        .await
        .unwrap();
    let counter = "[[guard]]\ntable = \"solo\"\nkey = [\"id\"]\n";
    let proxy = Proxy::with_guards(counter).await;
    let mut raw = proxy.raw(&db.name).await;
    let read = "SELECT balance FROM solo WHERE id = 3";
    let write = "UPDATE solo SET balance = balance + 10 WHERE id = 3";
    for _ in 0..3 {
        let msgs = raw_extended(&mut raw, read).await;
        assert_eq!(error_code(&msgs), None, "{msgs:?}");
    }
    let xmin = format!("{counter}version = \"xmin\"\n");
    let mut config = (*proxy.shared.settings().config).clone();
    config.guards = optlock::config::Config::parse(&xmin, "test.toml")
        .unwrap()
        .guards;
    proxy.shared.replace_config(config);
    for _ in 0..3 {
        let msgs = raw_extended(&mut raw, read).await;
        assert_eq!(error_code(&msgs), None, "{msgs:?}");
    }
    let msgs = raw_reply(&mut raw, write).await;
    assert_eq!(error_code(&msgs), None, "a row nobody changed: {msgs:?}");
    for _ in 0..2 {
        raw_extended(&mut raw, read).await;
    }
    direct
        .batch_execute("UPDATE solo SET balance = balance + 1 WHERE id = 3")
        .await
        .unwrap();
    let msgs = raw_reply(&mut raw, write).await;
    assert_eq!(
        error_code(&msgs).as_deref(),
        Some("40001"),
        "a row another session changed: {msgs:?}"
    );
}
