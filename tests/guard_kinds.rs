//! Version kinds and value formats against a real PostgreSQL: `timestamp` versions (strictly
//! advancing), `xmin` guards (no version column), the ERP case (`"tabSales Invoice"` keyed by
//! text `name`, versioned by `modified`), binary result rows with int8, text and uuid keys, and
//! the scope of tracked reads (`track = "transaction"`, `DISCARD ALL`, `RESET ALL`,
//! `track_limit`).

mod common;
use common::guards::{INVOICE, bump_version, invoice_db};
use common::*;
use tokio_postgres::{Client, SimpleQueryMessage};

async fn text_of(c: &Client, sql: &str) -> String {
    match &c.simple_query(sql).await.unwrap()[..] {
        [
            SimpleQueryMessage::RowDescription(_),
            SimpleQueryMessage::Row(r),
            ..,
        ] => r.get(0).unwrap().to_string(),
        other => panic!("{sql}: {other:?}"),
    }
}

// ---------------------------------------------------------------- timestamp

const DOC: &str = r#"
[[guard]]
table = "public.doc"
key = ["id"]
version = "modified"
kind = "timestamp"
"#;

#[tokio::test]
async fn timestamp_kind_conflicts_and_strictly_advances() {
    let db = TestDb::new("k_ts").await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE doc (id int primary key, body text, modified timestamp(6) not null default now());
             INSERT INTO doc (id, body) SELECT g, 'x' FROM generate_series(1, 3) g;",
        )
        .await
        .unwrap();
    let proxy = Proxy::with_guards(DOC).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    a.simple_query("SELECT id, modified FROM doc WHERE id = 1")
        .await
        .unwrap();
    b.simple_query("UPDATE doc SET body = 'b' WHERE id = 1")
        .await
        .unwrap();
    let err = a
        .simple_query("UPDATE doc SET body = 'a' WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "40001");
    let detail = err.as_db_error().unwrap().detail().unwrap().to_string();
    assert!(
        detail.starts_with("the row was changed by another transaction: expected version "),
        "{detail}"
    );
    a.simple_query("SELECT * FROM doc WHERE id = 1")
        .await
        .unwrap();
    let r = a
        .simple_query("UPDATE doc SET body = 'a' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);

    // Two writes in one implicit transaction (same now()): each strictly advances.
    let before = text_of(&direct, "SELECT modified::text FROM doc WHERE id = 2").await;
    let r = a
        .simple_query(
            "UPDATE doc SET body = '1' WHERE id = 2 RETURNING modified::text; UPDATE doc SET body = '2' WHERE id = 2 RETURNING modified::text",
        )
        .await
        .unwrap();
    let stamps: Vec<String> = r
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(stamps.len(), 2);
    let strictly: bool = direct
        .query_one(
            "SELECT $1::text::timestamp < $2::text::timestamp AND $2::text::timestamp < $3::text::timestamp",
            &[&before, &stamps[0], &stamps[1]],
        )
        .await
        .unwrap()
        .get(0);
    assert!(strictly, "{before} < {stamps:?}");
    // A version ahead of the clock still advances (by one microsecond at least).
    direct
        .batch_execute("UPDATE doc SET modified = '2999-01-01 00:00:00.5' WHERE id = 3")
        .await
        .unwrap();
    a.execute("UPDATE doc SET body = 'f' WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(
        text_of(&direct, "SELECT modified::text FROM doc WHERE id = 3").await,
        "2999-01-01 00:00:00.500001"
    );
    // Extended protocol with binary rows reads the timestamp and conflicts too.
    a.query("SELECT id, modified FROM doc WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    b.execute("UPDATE doc SET body = 'g' WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    let err = a
        .execute("UPDATE doc SET body = 'h' WHERE id = $1", &[&3i32])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "40001");
    assert_eq!(
        err.as_db_error().unwrap().detail(),
        Some(
            "the row was changed by another transaction: expected version 2999-01-01 00:00:00.500001, found 2999-01-01 00:00:00.500002"
        )
    );
}

// ---------------------------------------------------------------- xmin

const ACCOUNTS: &str = r#"
[[guard]]
table = "public.accounts"
key = ["aid"]
version = "xmin"
kind = "xmin"
"#;

#[tokio::test]
async fn xmin_guard_without_a_version_column() {
    let db = TestDb::new("k_xmin").await;
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE accounts (aid int primary key, abalance int not null);
             INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 3) g;",
        )
        .await
        .unwrap();
    let proxy = Proxy::with_guards(ACCOUNTS).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    let blind = proxy.client(&db.name).await;

    // Read with xmin (simple protocol), another session writes: conflict.
    a.simple_query("SELECT aid, abalance, xmin FROM accounts WHERE aid = 1")
        .await
        .unwrap();
    b.simple_query("UPDATE accounts SET abalance = abalance + 1 WHERE aid = 1")
        .await
        .unwrap();
    let err = a
        .simple_query("UPDATE accounts SET abalance = abalance + 10 WHERE aid = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "40001");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "optimistic lock conflict on public.accounts (aid)=(1)"
    );
    // A session that never read xmin is allowed (blind); so is one that read without it.
    let r = blind
        .simple_query("UPDATE accounts SET abalance = abalance + 100 WHERE aid = 1")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);
    let c = proxy.client(&db.name).await;
    c.simple_query("SELECT aid, abalance FROM accounts WHERE aid = 1")
        .await
        .unwrap();
    let r = c
        .simple_query("UPDATE accounts SET abalance = abalance + 1 WHERE aid = 1")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);
    // After a re-read, own writes advance the tracked xmin: repeats never conflict.
    a.simple_query("SELECT xmin, * FROM accounts WHERE aid = 1")
        .await
        .unwrap();
    for _ in 0..3 {
        let r = a
            .simple_query("UPDATE accounts SET abalance = abalance + 10 WHERE aid = 1")
            .await
            .unwrap();
        assert_eq!(rows_affected(&r), vec![1]);
    }
    for _ in 0..3 {
        let n = a
            .execute(
                "UPDATE accounts SET abalance = abalance + 10 WHERE aid = $1",
                &[&1i32],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    let bal: i32 = a
        .query_one("SELECT abalance FROM accounts WHERE aid = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bal, 1 + 100 + 1 + 60);

    // Extended protocol, binary xid.
    a.query(
        "SELECT aid, xmin AS row_version FROM accounts WHERE aid = $1",
        &[&2i32],
    )
    .await
    .unwrap();
    b.execute("UPDATE accounts SET abalance = 5 WHERE aid = $1", &[&2i32])
        .await
        .unwrap();
    let err = a
        .execute("UPDATE accounts SET abalance = 6 WHERE aid = $1", &[&2i32])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "40001");
    let bal: i32 = a
        .query_one("SELECT abalance FROM accounts WHERE aid = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bal, 5);
}

// ---------------------------------------------------------------- ERP

const ERP: &str = r#"
[[guard]]
table = 'public."tabSales Invoice"'
key = ["name"]
version = "modified"
kind = "timestamp"
"#;

#[tokio::test]
async fn erp_sales_invoice_read_then_write() {
    let db = TestDb::new("k_erp").await;
    db.direct()
        .await
        .batch_execute(
            r#"CREATE TABLE "tabSales Invoice" (name varchar(140) primary key, grand_total numeric(21,9) not null default 0,
                   docstatus smallint not null default 0, modified timestamp(6) not null default now());
               INSERT INTO "tabSales Invoice" (name, grand_total) VALUES ('SINV-0001', 100), ('SINV-0002', 200);"#,
        )
        .await
        .unwrap();
    let proxy = Proxy::with_guards(ERP).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    let message = "optimistic lock conflict on public.\"tabSales Invoice\" (name)=(SINV-0001)";

    // Simple protocol, the way Frappe writes (quoted names, backquotes translated).
    a.simple_query(r#"SELECT "name", "grand_total", "modified" FROM "tabSales Invoice" WHERE "name" = 'SINV-0001'"#)
        .await
        .unwrap();
    b.simple_query(
        r#"UPDATE "tabSales Invoice" SET "grand_total" = 150 WHERE "name" = 'SINV-0001'"#,
    )
    .await
    .unwrap();
    let err = a
        .simple_query(r#"UPDATE "tabSales Invoice" SET "docstatus" = 1 WHERE "name" = 'SINV-0001'"#)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "40001");
    assert_eq!(err.as_db_error().unwrap().message(), message);
    assert_eq!(err.as_db_error().unwrap().table(), Some("tabSales Invoice"));
    a.simple_query(r#"SELECT * FROM "tabSales Invoice" WHERE name = 'SINV-0001'"#)
        .await
        .unwrap();
    let r = a
        .simple_query(r#"UPDATE "tabSales Invoice" SET "docstatus" = 1 WHERE "name" = 'SINV-0001'"#)
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);

    // Extended protocol, text key as a parameter, binary rows.
    a.query(
        r#"SELECT name, modified FROM "tabSales Invoice" WHERE name = $1"#,
        &[&"SINV-0001"],
    )
    .await
    .unwrap();
    // b wrote this row before a did: b re-reads first, or b would conflict itself.
    b.query(
        r#"SELECT name, modified FROM "tabSales Invoice" WHERE name = $1"#,
        &[&"SINV-0001"],
    )
    .await
    .unwrap();
    b.execute(
        r#"UPDATE "tabSales Invoice" SET grand_total = 175 WHERE name = $1"#,
        &[&"SINV-0001"],
    )
    .await
    .unwrap();
    let err = a
        .execute(
            r#"UPDATE "tabSales Invoice" SET docstatus = 2 WHERE name = $1"#,
            &[&"SINV-0001"],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), "40001");
    assert_eq!(err.as_db_error().unwrap().message(), message);
    a.query(
        r#"SELECT * FROM "tabSales Invoice" WHERE name = $1"#,
        &[&"SINV-0001"],
    )
    .await
    .unwrap();
    let n = a
        .execute(
            r#"UPDATE "tabSales Invoice" SET docstatus = 2 WHERE name = $1"#,
            &[&"SINV-0001"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // A stale literal-keyed write in the extended protocol too.
    a.query(r#"SELECT name, modified FROM "tabSales Invoice""#, &[])
        .await
        .unwrap();
    b.simple_query(r#"UPDATE "tabSales Invoice" SET grand_total = 1 WHERE name = 'SINV-0002'"#)
        .await
        .unwrap();
    let err = a
        .execute(
            r#"UPDATE "tabSales Invoice" SET docstatus = 1 WHERE name = 'SINV-0002'"#,
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("optimistic lock conflict on public.\"tabSales Invoice\" (name)=(SINV-0002)")
    );
    let total: String = a
        .query_one(
            r#"SELECT grand_total::text FROM "tabSales Invoice" WHERE name = 'SINV-0002'"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, "1.000000000");
}

// ---------------------------------------------------------------- key types, binary rows

#[tokio::test]
async fn binary_rows_track_int8_text_and_uuid_keys() {
    let db = TestDb::new("k_keys").await;
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE big (id bigint primary key, v int not null default 0, version int not null default 0);
             INSERT INTO big (id) VALUES (9000000000), (-5);
             CREATE TABLE named (code text primary key, v int not null default 0, version bigint not null default 0);
             INSERT INTO named (code) VALUES ('a''b c'), ('Ünï');
             CREATE TABLE uu (id uuid primary key, v int not null default 0, version numeric not null default 0);
             INSERT INTO uu (id) VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');",
        )
        .await
        .unwrap();
    let proxy = Proxy::with_guards(
        r#"
[[guard]]
table = "public.big"
key = ["id"]
[[guard]]
table = "public.named"
key = ["code"]
[[guard]]
table = "public.uu"
key = ["id"]
"#,
    )
    .await;
    let a = proxy.client(&db.name).await;
    let direct = db.direct().await;

    // int8 key: parameter, literal, negative literal.
    for (id, write) in [
        (9000000000i64, "UPDATE big SET v = v + 1 WHERE id = $1"),
        (
            -5i64,
            "UPDATE big SET v = v + 1 WHERE id = -5 AND $1::int8 IS NOT NULL",
        ),
    ] {
        a.query("SELECT id, version FROM big WHERE id = $1", &[&id])
            .await
            .unwrap();
        direct
            .execute("UPDATE big SET version = version + 1 WHERE id = $1", &[&id])
            .await
            .unwrap();
        let err = a.execute(write, &[&id]).await.unwrap_err();
        assert_eq!(code(&err), "40001", "{write}");
        a.query("SELECT * FROM big WHERE id = $1", &[&id])
            .await
            .unwrap();
        assert_eq!(a.execute(write, &[&id]).await.unwrap(), 1, "{write}");
    }
    // The literal spelling in the simple protocol sees the binary-read version too.
    a.query(
        "SELECT id, version FROM big WHERE id = $1",
        &[&9000000000i64],
    )
    .await
    .unwrap();
    direct
        .execute(
            "UPDATE big SET version = version + 1 WHERE id = 9000000000",
            &[],
        )
        .await
        .unwrap();
    let err = a
        .simple_query("UPDATE big SET v = 0 WHERE id = 9000000000")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "40001");

    // text key with a quote, a space and non-ASCII.
    for key in ["a'b c", "Ünï"] {
        a.query("SELECT code, version FROM named WHERE code = $1", &[&key])
            .await
            .unwrap();
        direct
            .execute(
                "UPDATE named SET version = version + 1 WHERE code = $1",
                &[&key],
            )
            .await
            .unwrap();
        let err = a
            .execute("UPDATE named SET v = 1 WHERE code = $1", &[&key])
            .await
            .unwrap_err();
        assert_eq!(code(&err), "40001");
        assert_eq!(
            err.as_db_error().unwrap().message(),
            format!("optimistic lock conflict on public.named (code)=({key})")
        );
        let lit = format!(
            "UPDATE named SET v = 2 WHERE code = '{}'",
            key.replace('\'', "''")
        );
        let err = a.simple_query(&lit).await.unwrap_err();
        assert_eq!(code(&err), "40001", "{lit}");
        a.query("SELECT * FROM named WHERE code = $1", &[&key])
            .await
            .unwrap();
        assert_eq!(rows_affected(&a.simple_query(&lit).await.unwrap()), vec![1]);
    }

    // uuid key (binary rows), numeric version; the literal may be written in upper case.
    let id = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    a.query(
        "SELECT id, version FROM uu WHERE id = $1::text::uuid",
        &[&id],
    )
    .await
    .unwrap();
    direct
        .execute("UPDATE uu SET version = version + 1", &[])
        .await
        .unwrap();
    let literal = format!("UPDATE uu SET v = 1 WHERE id = '{id}'");
    let err = a.execute(literal.as_str(), &[]).await.unwrap_err();
    assert_eq!(code(&err), "40001");
    let err = a
        .simple_query(&format!(
            "UPDATE uu SET v = 1 WHERE id = '{}'",
            id.to_uppercase()
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "40001");
    a.query("SELECT * FROM uu", &[]).await.unwrap();
    assert_eq!(a.execute(literal.as_str(), &[]).await.unwrap(), 1);
    let v: String = direct
        .query_one("SELECT version::text FROM uu", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "2");
}

// ---------------------------------------------------------------- scope

#[tokio::test]
async fn transaction_scope_forgets_reads_at_transaction_end() {
    let db = invoice_db("k_txscope", 5, "").await;
    let proxy = Proxy::with_guards(&format!("track = \"transaction\"\n{INVOICE}")).await;
    let a = proxy.client(&db.name).await;
    // Autocommit read, then write: nothing known, allowed (bumped).
    a.simple_query("SELECT * FROM invoice WHERE id = 1")
        .await
        .unwrap();
    bump_version(&db, 1).await;
    let r = a
        .simple_query("UPDATE invoice SET total = 1 WHERE id = 1")
        .await
        .expect("the read was forgotten at the end of its transaction");
    assert_eq!(rows_affected(&r), vec![1]);
    a.query("SELECT id, version FROM invoice WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    bump_version(&db, 1).await;
    assert_eq!(
        a.execute("UPDATE invoice SET total = 2 WHERE id = $1", &[&1i32])
            .await
            .unwrap(),
        1
    );
    // Inside one transaction: remembered, conflict.
    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query("SELECT * FROM invoice WHERE id = 2")
        .await
        .unwrap();
    bump_version(&db, 2).await;
    let err = a
        .simple_query("UPDATE invoice SET total = 1 WHERE id = 2")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "40001");
    a.batch_execute("ROLLBACK").await.unwrap();
    // Extended protocol inside a transaction, and its own writes within it.
    a.batch_execute("BEGIN").await.unwrap();
    a.query("SELECT id, version FROM invoice WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(
        a.execute("UPDATE invoice SET total = 1 WHERE id = $1", &[&3i32])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        a.execute("UPDATE invoice SET total = 2 WHERE id = $1", &[&3i32])
            .await
            .unwrap(),
        1
    );
    a.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.query("SELECT id, version FROM invoice WHERE id = $1", &[&4i32])
        .await
        .unwrap();
    bump_version(&db, 4).await;
    let err = a
        .execute("UPDATE invoice SET total = 1 WHERE id = $1", &[&4i32])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "40001");
    a.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn discard_all_and_reset_all_forget_reads() {
    let db = invoice_db("k_discard", 5, "").await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    // Control: remembered across statements by default.
    a.simple_query("SELECT * FROM invoice WHERE id = 1")
        .await
        .unwrap();
    bump_version(&db, 1).await;
    let err = a
        .simple_query("UPDATE invoice SET total = 1 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "40001");
    for (id, forget) in [
        (2, "DISCARD ALL"),
        (3, "RESET ALL"),
        (4, "discard all;"),
        (5, "  reset ALL"),
    ] {
        a.simple_query(&format!("SELECT * FROM invoice WHERE id = {id}"))
            .await
            .unwrap();
        bump_version(&db, id).await;
        a.simple_query(forget).await.unwrap();
        let r = a
            .simple_query(&format!("UPDATE invoice SET total = 1 WHERE id = {id}"))
            .await
            .unwrap_or_else(|e| panic!("after {forget:?}: {e:?}"));
        assert_eq!(rows_affected(&r), vec![1]);
    }
}

/// Pools and drivers that reset a connection may send `DISCARD ALL` with Parse/Bind/Execute.
#[tokio::test]
async fn discard_all_in_the_extended_protocol_forgets_reads() {
    let db = invoice_db("k_discardx", 5, "").await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    a.query("SELECT id, version FROM invoice WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    bump_version(&db, 1).await;
    a.execute("DISCARD ALL", &[]).await.unwrap();
    assert_eq!(
        a.execute("UPDATE invoice SET total = 3 WHERE id = $1", &[&1i32])
            .await
            .expect("DISCARD ALL sent with Parse/Bind/Execute forgets too"),
        1
    );
}

#[tokio::test]
async fn track_limit_drops_the_least_recently_read_row() {
    let db = invoice_db("k_limit", 5, "").await;
    let proxy = Proxy::with_guards(&format!("track_limit = 2\n{INVOICE}")).await;
    let a = proxy.client(&db.name).await;
    a.simple_query("SELECT id, version FROM invoice WHERE id <= 3 ORDER BY id")
        .await
        .unwrap();
    for id in 1..=3 {
        bump_version(&db, id).await;
    }
    // The last two rows read are still known: conflicts.
    for id in [2, 3] {
        let err = a
            .simple_query(&format!("UPDATE invoice SET total = 1 WHERE id = {id}"))
            .await
            .unwrap_err();
        assert_eq!(code(&err), "40001", "row {id}");
    }
    // The first row read was dropped: nothing known, allowed and bumped.
    let r = a
        .simple_query("UPDATE invoice SET total = 1 WHERE id = 1")
        .await
        .expect("a dropped entry means nothing known");
    assert_eq!(rows_affected(&r), vec![1]);
    let v: i64 = db
        .direct()
        .await
        .query_one("SELECT version FROM invoice WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2);
}

/// A key parameter whose type is not the key column's (`$1::text::uuid`, the way drivers
/// without a uuid type send it): the proxy must still find the row's key.
#[tokio::test]
async fn key_parameter_cast_from_text_is_still_checked() {
    let db = TestDb::new("k_castkey").await;
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE uu (id uuid primary key, v int not null default 0, version int not null default 0);
             INSERT INTO uu (id) VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');",
        )
        .await
        .unwrap();
    let proxy = Proxy::with_guards("[[guard]]\ntable = \"uu\"\nkey = [\"id\"]\n").await;
    let a = proxy.client(&db.name).await;
    let id = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    a.query(
        "SELECT id, version FROM uu WHERE id = $1::text::uuid",
        &[&id],
    )
    .await
    .unwrap();
    db.direct()
        .await
        .batch_execute("UPDATE uu SET version = version + 1")
        .await
        .unwrap();
    let r = a
        .execute("UPDATE uu SET v = 1 WHERE id = $1::text::uuid", &[&id])
        .await;
    assert_eq!(
        r.map_err(|e| code(&e)),
        Err("40001".to_string()),
        "a stale write keyed by a cast parameter must conflict"
    );
}

/// `DISCARD ALL` after a comment or another statement in the same simple query (pgbouncer's
/// `server_reset_query` may be configured so) forgets too.
#[tokio::test]
async fn discard_all_after_a_comment_or_statement_forgets_reads() {
    let db = invoice_db("k_discardc", 5, "").await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let a = proxy.client(&db.name).await;
    for (id, forget) in [
        (1, "/* reset */ DISCARD ALL"),
        (2, "-- pool reset\nRESET ALL"),
        (3, "SELECT 1; RESET ALL"),
    ] {
        a.simple_query(&format!("SELECT * FROM invoice WHERE id = {id}"))
            .await
            .unwrap();
        bump_version(&db, id).await;
        a.simple_query(forget).await.unwrap();
        a.simple_query(&format!("UPDATE invoice SET total = 1 WHERE id = {id}"))
            .await
            .unwrap_or_else(|e| panic!("after {forget:?}: {e:?}"));
    }
}
