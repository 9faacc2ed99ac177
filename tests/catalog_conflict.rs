//! Canonical values and the conflict error against a real PostgreSQL server: values in their
//! canonical text and binary forms compare as the server compares them, the conflict is raised
//! by the server with every field the client sees, and its body is stripped of context. Every
//! test creates its own database and drops it.

mod common;

use common::wire;
use common::{TestDb, connect, rows};
use optlock::config::TableName;
use optlock::guard::conflict::{ConflictInfo, HIDDEN_FIELDS, raise_block, raise_block_if_changed};
use optlock::guard::values::{canonical_binary, canonical_text};
use optlock::protocol::backend::{self, error_field};
use tokio_postgres::Client;
use tokio_postgres::types::{FromSql, Type};

/// A column's raw bytes in binary format.
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

async fn simple_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    rows(
        &client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )
}

async fn text_value(client: &Client, sql: &str) -> String {
    simple_rows(client, sql).await[0][0].clone().unwrap()
}

#[tokio::test]
async fn canonical_values_match_postgres() {
    let db = TestDb::new("catalog").await;
    let url = db.conninfo();
    let utc = connect(&url).await;
    utc.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'")
        .await
        .unwrap();
    let kolkata = connect(&url).await;
    kolkata
        .batch_execute("SET TimeZone = 'Asia/Kolkata'")
        .await
        .unwrap();
    let new_york = connect(&url).await;
    new_york
        .batch_execute("SET TimeZone = 'America/New_York'")
        .await
        .unwrap();

    let timestamps = [
        "2000-01-01 00:00:00",
        "1999-12-31 23:59:59.999999",
        "1970-01-01 00:00:00",
        "1900-02-28 12:00:00",
        "1883-11-18 11:59:59.5",
        "2024-02-29 23:59:59.5",
        "2000-02-29 00:00:00",
        "1600-02-29 00:00:00.000001",
        "2100-03-01 01:02:03.04",
        "0001-01-01 00:00:00",
        "0001-12-31 23:59:59.999999 BC",
        "0001-01-01 00:00:00 BC",
        "0401-02-29 00:00:00 BC",
        "4713-01-01 00:00:00 BC",
        "294276-12-31 23:59:59.999999",
        "infinity",
        "-infinity",
    ];
    let mut cases: Vec<(&str, String)> = Vec::new();
    for t in timestamps {
        cases.push(("timestamp", format!("'{t}'")));
        cases.push(("timestamp(6)", format!("'{t}'")));
        cases.push(("timestamptz", format!("'{t}+00'")));
    }
    cases.push(("timestamptz", "'2024-02-29 23:30:00.25-05:30'".into()));
    for d in [
        "2024-02-29",
        "1900-03-01",
        "4713-01-01 BC",
        "5874897-12-31",
        "infinity",
    ] {
        cases.push(("date", format!("'{d}'")));
    }
    for n in ["-32768", "0", "32767"] {
        cases.push(("int2", n.into()));
    }
    for n in ["-2147483648", "42", "2147483647"] {
        cases.push(("int4", n.into()));
    }
    for n in ["-9223372036854775808", "9223372036854775807", "-1"] {
        cases.push(("int8", n.into()));
    }
    cases.push(("oid", "4294967295".into()));
    cases.push(("xid", "'4294967295'".into()));
    cases.push(("xid", "'7'".into()));
    for n in [
        "0",
        "-1.50",
        "12345678.000100",
        "0.0001",
        "0.00000000000000000001",
        "10000",
        "99999999999999999999.99",
        "-0.5",
        "1e30",
        "'NaN'",
        "'Infinity'",
        "'-Infinity'",
    ] {
        cases.push(("numeric", n.into()));
    }
    cases.push(("uuid", "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'".into()));
    cases.push(("text", "'it''s \\ \"ünï\" $x$'".into()));
    cases.push(("varchar(20)", "'SINV-0001'".into()));
    cases.push(("char(6)", "'ab'".into()));
    cases.push(("name", "'pg_class'".into()));
    cases.push(("bool", "true".into()));
    cases.push(("bool", "false".into()));

    for (ty, expr) in &cases {
        let value = format!("({expr})::{ty}");
        let stmt = utc.prepare(&format!("SELECT {value}")).await.unwrap();
        let type_oid = stmt.columns()[0].type_().oid();
        let row = utc.query_one(&stmt, &[]).await.unwrap();
        let raw: Raw = row.get(0);
        let raw = raw.0.unwrap();
        let from_binary = canonical_binary(type_oid, &raw)
            .unwrap_or_else(|| panic!("{value}: binary {raw:?} not decoded"));
        let mut text = text_value(&utc, &format!("SELECT {value}")).await;
        if type_oid == 1042 {
            text.truncate(text.trim_end_matches(' ').len());
        }
        assert_eq!(from_binary, text, "{value}: binary vs PostgreSQL's text");
        assert_eq!(
            canonical_text(type_oid, text.as_bytes()).as_deref(),
            Some(text.as_str()),
            "{value}: text is canonical"
        );
        // The canonical text means the same value to PostgreSQL.
        let same = text_value(
            &utc,
            &format!(
                "SELECT ({}::text)::{ty} IS NOT DISTINCT FROM {value}",
                optlock::guard::values::quote_literal(&from_binary)
            ),
        )
        .await;
        assert_eq!(same, "t", "{value}: {from_binary} parses back");
        if type_oid == 1184 {
            for other in [&kolkata, &new_york] {
                let local = text_value(other, &format!("SELECT {value}")).await;
                assert_eq!(
                    canonical_text(type_oid, local.as_bytes()).as_deref(),
                    Some(from_binary.as_str()),
                    "{value}: {local} in another time zone"
                );
            }
        }
    }
    assert_eq!(canonical_text(23, b"042").as_deref(), Some("42"));
}

fn info(
    table: TableName,
    key_columns: &[&str],
    key_values: Option<&[&str]>,
    expected: &str,
    version_column: &str,
) -> ConflictInfo {
    ConflictInfo {
        table,
        key_columns: key_columns.iter().map(|s| s.to_string()).collect(),
        key_values: key_values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        expected: expected.into(),
        version_column: version_column.into(),
    }
}

fn public(name: &str) -> TableName {
    TableName {
        schema: "public".into(),
        name: name.into(),
    }
}

/// Runs the raise block in a transaction; returns the error and checks the transaction is
/// aborted afterwards.
async fn raise(
    client: &Client,
    info: &ConflictInfo,
    sqlstate: &str,
) -> tokio_postgres::error::DbError {
    raise_sql(client, &raise_block(info, sqlstate)).await
}

async fn raise_sql(client: &Client, block: &str) -> tokio_postgres::error::DbError {
    client.batch_execute("BEGIN").await.unwrap();
    let err = client
        .batch_execute(block)
        .await
        .expect_err("the block raises");
    let db = err.as_db_error().expect("a server error").clone();
    let next = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(next.code().unwrap().code(), "25P02", "transaction aborted");
    client.batch_execute("ROLLBACK").await.unwrap();
    db
}

#[tokio::test]
async fn conflict_is_raised_by_the_server() {
    let db = TestDb::new("catalog").await;
    let c = db.direct().await;
    c.batch_execute(
        "CREATE TABLE invoice (id int PRIMARY KEY, version int NOT NULL DEFAULT 0);
             INSERT INTO invoice VALUES (42, 8);
             CREATE TABLE note (k text PRIMARY KEY, version bigint NOT NULL DEFAULT 0);
             INSERT INTO note VALUES (E'it''s \\\\ $optlock$ x', 3);
             CREATE TABLE \"tabSales Invoice\" (name varchar(140) PRIMARY KEY,
                 modified timestamp(6) NOT NULL DEFAULT now());
             INSERT INTO \"tabSales Invoice\" VALUES ('SINV-0001', '2024-01-01 10:00:00.123456');
             CREATE TABLE line (a int, b text, qty int, PRIMARY KEY (a, b));
             INSERT INTO line VALUES (1, 'x', 5);",
    )
    .await
    .unwrap();

    let e = raise(
        &c,
        &info(public("invoice"), &["id"], Some(&["42"]), "7", "version"),
        "40001",
    )
    .await;
    assert_eq!(e.code().code(), "40001");
    assert_eq!(
        e.message(),
        "optimistic lock conflict on public.invoice (id)=(42)"
    );
    assert_eq!(
        e.detail(),
        Some("the row was changed by another transaction: expected version 7, found 8")
    );
    assert_eq!(e.hint(), Some("reload the row and apply the change again"));
    assert_eq!(e.schema(), Some("public"));
    assert_eq!(e.table(), Some("invoice"));
    assert_eq!(e.constraint(), Some("optlock"));
    assert_eq!(e.severity(), "ERROR");

    let e = raise(
        &c,
        &info(public("invoice"), &["id"], Some(&["43"]), "7", "version"),
        "40001",
    )
    .await;
    assert_eq!(
        e.message(),
        "optimistic lock conflict on public.invoice (id)=(43)"
    );
    assert_eq!(e.detail(), Some("the row no longer exists"));

    let e = raise(
        &c,
        &info(public("invoice"), &["id"], None, "7", "version"),
        "40P01",
    )
    .await;
    assert_eq!(e.code().code(), "40P01");
    assert_eq!(
        e.message(),
        "optimistic lock conflict on public.invoice (id)=(?)"
    );
    assert_eq!(
        e.detail(),
        Some("the row was changed or deleted by another transaction: expected version 7")
    );

    let key = "it's \\ $optlock$ x";
    for scs in ["on", "off"] {
        c.batch_execute(&format!("SET standard_conforming_strings = {scs}"))
            .await
            .unwrap();
        let e = raise(
            &c,
            &info(public("note"), &["k"], Some(&[key]), "2", "version"),
            "40001",
        )
        .await;
        assert_eq!(
            e.message(),
            format!("optimistic lock conflict on public.note (k)=({key})")
        );
        assert_eq!(
            e.detail(),
            Some("the row was changed by another transaction: expected version 2, found 3")
        );
        assert_eq!(e.table(), Some("note"));
    }

    let sales = public("tabSales Invoice");
    let e = raise(
        &c,
        &info(
            sales,
            &["name"],
            Some(&["SINV-0001"]),
            "2024-01-01 10:00:00",
            "modified",
        ),
        "40001",
    )
    .await;
    assert_eq!(
        e.message(),
        "optimistic lock conflict on public.\"tabSales Invoice\" (name)=(SINV-0001)"
    );
    assert_eq!(
        e.detail(),
        Some(
            "the row was changed by another transaction: expected version 2024-01-01 10:00:00, found 2024-01-01 10:00:00.123456"
        )
    );
    assert_eq!(e.table(), Some("tabSales Invoice"));

    let xmin = text_value(&c, "SELECT xmin::text FROM line").await;
    let e = raise(
        &c,
        &info(public("line"), &["a", "b"], Some(&["1", "x"]), "1", "xmin"),
        "40001",
    )
    .await;
    assert_eq!(
        e.message(),
        "optimistic lock conflict on public.line (a, b)=(1, x)"
    );
    assert_eq!(
        e.detail().unwrap(),
        format!("the row was changed by another transaction: expected version 1, found {xmin}")
    );

    // The checking variant stays silent when the row is at the expected version.
    let at_8 = info(public("invoice"), &["id"], Some(&["42"]), "8", "version");
    c.batch_execute(&raise_block_if_changed(&at_8, "40001"))
        .await
        .expect("row unchanged: no error");
    let e = raise_sql(
        &c,
        &raise_block_if_changed(
            &info(public("invoice"), &["id"], Some(&["042"]), "7", "version"),
            "40001",
        ),
    )
    .await;
    assert_eq!(
        e.detail(),
        Some("the row was changed by another transaction: expected version 7, found 8")
    );
    assert_eq!(e.code().code(), "40001");
    let e = raise_sql(
        &c,
        &raise_block_if_changed(
            &info(public("invoice"), &["id"], Some(&["44"]), "8", "version"),
            "40001",
        ),
    )
    .await;
    assert_eq!(e.detail(), Some("the row no longer exists"));
    let e = raise_sql(
        &c,
        &raise_block_if_changed(
            &info(public("invoice"), &["id"], None, "8", "version"),
            "40001",
        ),
    )
    .await;
    assert_eq!(e.code().code(), "40001");
    let line_xmin = info(
        public("line"),
        &["a", "b"],
        Some(&["1", "x"]),
        &xmin,
        "xmin",
    );
    c.batch_execute(&raise_block_if_changed(&line_xmin, "40001"))
        .await
        .expect("xmin unchanged: no error");
    let sales_at = info(
        public("tabSales Invoice"),
        &["name"],
        Some(&["SINV-0001"]),
        "2024-01-01 10:00:00.123456",
        "modified",
    );
    c.batch_execute(&raise_block_if_changed(&sales_at, "40001"))
        .await
        .expect("timestamp unchanged: no error");

    // In an implicit transaction nothing of the batch commits.
    let block = raise_block(
        &info(public("invoice"), &["id"], Some(&["42"]), "7", "version"),
        "40001",
    );
    let err = c
        .batch_execute(&format!(
            "UPDATE invoice SET version = 100; {block}; UPDATE invoice SET version = 200"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001");
    assert_eq!(
        text_value(&c, "SELECT version::text FROM invoice").await,
        "8"
    );
}

/// The ErrorResponse body the server sends for `sql`, read off a raw protocol connection.
async fn raw_error_body(db: &TestDb, sql: &str) -> Vec<u8> {
    let mut raw = db.raw().await;
    raw.send(&wire::query(sql)).await;
    let msgs = raw.read_until(b'Z', 1).await;
    msgs.into_iter()
        .find(|m| m.tag == b'E')
        .expect("an ErrorResponse")
        .body()
        .to_vec()
}

#[tokio::test]
async fn raised_conflict_body_is_stripped_of_context() {
    let db = TestDb::new("catalog").await;
    let c = db.direct().await;
    c.batch_execute(
        "CREATE TABLE invoice (id int PRIMARY KEY, version int NOT NULL DEFAULT 0);
             INSERT INTO invoice VALUES (42, 8);",
    )
    .await
    .unwrap();
    let block = raise_block(
        &info(public("invoice"), &["id"], Some(&["42"]), "7", "version"),
        "40001",
    );
    let body = raw_error_body(&db, &block).await;
    let field =
        |b: &[u8], code| error_field(b, code).map(|v| String::from_utf8(v.to_vec()).unwrap());
    assert!(
        field(&body, b'W').unwrap().contains("PL/pgSQL"),
        "the server adds context"
    );
    let mut out = bytes::BytesMut::new();
    backend::write_without_fields(&mut out, backend::ERROR_RESPONSE, &body, HIDDEN_FIELDS);
    let clean = out[5..].to_vec();
    for code in HIDDEN_FIELDS {
        assert_eq!(field(&clean, *code), None, "field {}", *code as char);
    }
    assert_eq!(clean.last(), Some(&0));
    for code in [b'S', b'V', b'C', b'M', b'D', b'H', b's', b't', b'n'] {
        assert_eq!(
            field(&clean, code),
            field(&body, code),
            "field {}",
            code as char
        );
    }
    assert_eq!(field(&clean, b'C').as_deref(), Some("40001"));
    assert_eq!(field(&clean, b'n').as_deref(), Some("optlock"));
    assert_eq!(
        field(&clean, b'M').as_deref(),
        Some("optimistic lock conflict on public.invoice (id)=(42)")
    );
}
