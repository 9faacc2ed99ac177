//! Canonical values, the conflict error and the catalog checks against a real PostgreSQL
//! server (127.0.0.1:5432, user postgres). Every test creates its own database and drops it.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use optlock::config::{Config, TableName};
use optlock::guard::conflict::{ConflictInfo, HIDDEN_FIELDS, raise_block, raise_block_if_changed};
use optlock::guard::values::{canonical_binary, canonical_text};
use optlock::protocol::backend::{self, error_field};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const SERVER: &str = "host=127.0.0.1 port=5432 user=postgres";

async fn connect(conninfo: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Runs `body` with a fresh database (its conninfo), then drops the database, even when the
/// body panics.
async fn with_db<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "optlock_catalog_{}_{}_{}",
        std::process::id(),
        nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let admin = connect(&format!("{SERVER} dbname=postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let result = tokio::spawn(body(format!("{SERVER} dbname={name}"))).await;
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

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
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

async fn text_value(client: &Client, sql: &str) -> String {
    simple_rows(client, sql).await[0][0].clone().unwrap()
}

#[tokio::test]
async fn canonical_values_match_postgres() {
    with_db(|url| async move {
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
    })
    .await;
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
    with_db(|url| async move {
        let c = connect(&url).await;
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

        let e = raise(&c, &info(public("invoice"), &["id"], Some(&["42"]), "7", "version"), "40001").await;
        assert_eq!(e.code().code(), "40001");
        assert_eq!(e.message(), "optimistic lock conflict on public.invoice (id)=(42)");
        assert_eq!(
            e.detail(),
            Some("the row was changed by another transaction: expected version 7, found 8")
        );
        assert_eq!(e.hint(), Some("reload the row and apply the change again"));
        assert_eq!(e.schema(), Some("public"));
        assert_eq!(e.table(), Some("invoice"));
        assert_eq!(e.constraint(), Some("optlock"));
        assert_eq!(e.severity(), "ERROR");

        let e = raise(&c, &info(public("invoice"), &["id"], Some(&["43"]), "7", "version"), "40001").await;
        assert_eq!(e.message(), "optimistic lock conflict on public.invoice (id)=(43)");
        assert_eq!(e.detail(), Some("the row no longer exists"));

        let e = raise(&c, &info(public("invoice"), &["id"], None, "7", "version"), "40P01").await;
        assert_eq!(e.code().code(), "40P01");
        assert_eq!(e.message(), "optimistic lock conflict on public.invoice (id)=(?)");
        assert_eq!(
            e.detail(),
            Some("the row was changed or deleted by another transaction: expected version 7")
        );

        let key = "it's \\ $optlock$ x";
        for scs in ["on", "off"] {
            c.batch_execute(&format!("SET standard_conforming_strings = {scs}"))
                .await
                .unwrap();
            let e = raise(&c, &info(public("note"), &["k"], Some(&[key]), "2", "version"), "40001").await;
            assert_eq!(e.message(), format!("optimistic lock conflict on public.note (k)=({key})"));
            assert_eq!(
                e.detail(),
                Some("the row was changed by another transaction: expected version 2, found 3")
            );
            assert_eq!(e.table(), Some("note"));
        }

        let sales = public("tabSales Invoice");
        let e = raise(
            &c,
            &info(sales, &["name"], Some(&["SINV-0001"]), "2024-01-01 10:00:00", "modified"),
            "40001",
        )
        .await;
        assert_eq!(
            e.message(),
            "optimistic lock conflict on public.\"tabSales Invoice\" (name)=(SINV-0001)"
        );
        assert_eq!(
            e.detail(),
            Some("the row was changed by another transaction: expected version 2024-01-01 10:00:00, found 2024-01-01 10:00:00.123456")
        );
        assert_eq!(e.table(), Some("tabSales Invoice"));

        let xmin = text_value(&c, "SELECT xmin::text FROM line").await;
        let e = raise(&c, &info(public("line"), &["a", "b"], Some(&["1", "x"]), "1", "xmin"), "40001").await;
        assert_eq!(e.message(), "optimistic lock conflict on public.line (a, b)=(1, x)");
        assert_eq!(
            e.detail().unwrap(),
            format!("the row was changed by another transaction: expected version 1, found {xmin}")
        );

        // The checking variant stays silent when the row is at the expected version.
        let at_8 = info(public("invoice"), &["id"], Some(&["42"]), "8", "version");
        c.batch_execute(&raise_block_if_changed(&at_8, "40001"))
            .await
            .expect("row unchanged: no error");
        let e = raise_sql(&c, &raise_block_if_changed(&info(public("invoice"), &["id"], Some(&["042"]), "7", "version"), "40001")).await;
        assert_eq!(e.detail(), Some("the row was changed by another transaction: expected version 7, found 8"));
        assert_eq!(e.code().code(), "40001");
        let e = raise_sql(&c, &raise_block_if_changed(&info(public("invoice"), &["id"], Some(&["44"]), "8", "version"), "40001")).await;
        assert_eq!(e.detail(), Some("the row no longer exists"));
        let e = raise_sql(&c, &raise_block_if_changed(&info(public("invoice"), &["id"], None, "8", "version"), "40001")).await;
        assert_eq!(e.code().code(), "40001");
        let line_xmin = info(public("line"), &["a", "b"], Some(&["1", "x"]), &xmin, "xmin");
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
        let block = raise_block(&info(public("invoice"), &["id"], Some(&["42"]), "7", "version"), "40001");
        let err = c
            .batch_execute(&format!("UPDATE invoice SET version = 100; {block}; UPDATE invoice SET version = 200"))
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "40001");
        assert_eq!(text_value(&c, "SELECT version::text FROM invoice").await, "8");
    })
    .await;
}

/// The ErrorResponse body the server sends for `sql`, read off a raw protocol connection.
async fn raw_error_body(conninfo: &str, sql: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = conninfo.rsplit("dbname=").next().unwrap();
    let mut sock = tokio::net::TcpStream::connect("127.0.0.1:5432")
        .await
        .unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608u32.to_be_bytes());
    startup.extend_from_slice(format!("user\0postgres\0database\0{db}\0\0").as_bytes());
    let mut msg = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&startup);
    sock.write_all(&msg).await.unwrap();
    async fn read_until_ready(sock: &mut tokio::net::TcpStream) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let tag = sock.read_u8().await.unwrap();
            let len = sock.read_u32().await.unwrap() as usize;
            let mut body = vec![0; len - 4];
            sock.read_exact(&mut body).await.unwrap();
            out.push((tag, body));
            if tag == b'Z' {
                return out;
            }
        }
    }
    read_until_ready(&mut sock).await;
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    sock.write_all(&q).await.unwrap();
    let msgs = read_until_ready(&mut sock).await;
    msgs.into_iter()
        .find(|(t, _)| *t == b'E')
        .expect("an ErrorResponse")
        .1
}

#[tokio::test]
async fn raised_conflict_body_is_stripped_of_context() {
    with_db(|url| async move {
        let c = connect(&url).await;
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
        let body = raw_error_body(&url, &block).await;
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
    })
    .await;
}

fn config(text: &str) -> Config {
    Config::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[tokio::test]
async fn resolve_matches_row_description() {
    with_db(|url| async move {
        let c = connect(&url).await;
        c.batch_execute(
            "CREATE TABLE invoice (id int PRIMARY KEY, note text, version bigint NOT NULL DEFAULT 0);
             CREATE TABLE \"tabSales Invoice\" (name varchar(140) PRIMARY KEY,
                 modified timestamp(6) NOT NULL DEFAULT now());
             CREATE DOMAIN ver AS int8;
             CREATE DOMAIN ver2 AS ver;
             CREATE TABLE dom (a text, b int, version ver2 NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
             CREATE TABLE accounts (aid int PRIMARY KEY, abalance int);
             ALTER TABLE invoice DROP COLUMN note;
             CREATE TABLE nover (id int PRIMARY KEY);",
        )
        .await
        .unwrap();
        let cfg = config(
            r#"
[[guard]]
table = "invoice"
key = ["id"]
[[guard]]
table = 'public."tabSales Invoice"'
key = ["name"]
version = "modified"
kind = "timestamp"
[[guard]]
table = "nope"
key = ["id"]
[[guard]]
table = "dom"
key = ["b", "a"]
[[guard]]
table = "accounts"
key = ["aid"]
version = "xmin"
[[guard]]
table = "nover"
key = ["id"]
"#,
        );
        let resolved = optlock::catalog::resolve::resolve(&c, &cfg.guards)
            .await
            .unwrap();
        assert_eq!(resolved.len(), 4);
        assert!(resolved.get(2).is_none(), "missing table is absent");
        assert!(resolved.get(5).is_none(), "missing version column is absent");

        // Every guarded column of a result is recognised by (table OID, attnum), aliases or not.
        for (sql, guard) in [
            ("SELECT i.version AS v, i.id AS k FROM invoice i", 0),
            ("SELECT modified, name FROM \"tabSales Invoice\"", 1),
            ("SELECT d.version, d.a, d.b FROM dom d", 3),
            ("SELECT xmin, aid, abalance FROM accounts", 4),
        ] {
            let stmt = c.prepare(sql).await.unwrap();
            let g = &cfg.guards[guard];
            let mut keys_seen = 0;
            let mut version_seen = false;
            for col in stmt.columns() {
                let oid = col.table_oid().expect("a table column");
                let (i, r) = resolved.by_table_oid(oid).expect("guarded table");
                assert_eq!(i, guard, "{sql}");
                let attnum = col.column_id().unwrap();
                if let Some(pos) = r.key_position(attnum) {
                    assert_eq!(r.key_types[pos], col.type_().oid(), "{sql} {}", col.name());
                    keys_seen += 1;
                } else if r.is_version(attnum) {
                    assert_eq!(r.version_type, col.type_().oid(), "{sql} {}", col.name());
                    version_seen = true;
                }
            }
            assert_eq!(keys_seen, g.key.len(), "{sql}");
            assert!(version_seen, "{sql}");
        }
        let accounts = resolved.get(4).unwrap();
        assert_eq!(accounts.version_type, 28);
        assert!(accounts.version_attnum < 0);
        assert_eq!(resolved.get(3).unwrap().version_type, 20, "domains resolve to the base type");

        // No guards: still a valid query.
        let none = optlock::catalog::resolve::resolve(&c, &[]).await.unwrap();
        assert!(none.is_empty());
    })
    .await;
}

use optlock::catalog::check::{Finding, Severity, all_ok, check, render_human, render_json};

async fn findings(c: &Client, toml: &str) -> Vec<Finding> {
    check(&config(toml).guards, c).await
}

fn guard_toml(table: &str, key: &str, version: &str, kind: &str) -> String {
    format!(
        "[[guard]]\ntable = '{table}'\nkey = {key}\nversion = \"{version}\"\nkind = \"{kind}\"\n"
    )
}

/// The one error for a guard, applying its DDL (if any) and checking again.
async fn expect_error(c: &Client, toml: &str, message_part: &str) -> Finding {
    let f = findings(c, toml).await;
    assert_eq!(f.len(), 1, "{f:#?}");
    let f = f.into_iter().next().unwrap();
    assert_eq!(f.severity, Severity::Error, "{f:#?}");
    assert!(f.message.contains(message_part), "{f:#?}");
    if let Some(ddl) = &f.ddl {
        c.batch_execute(ddl)
            .await
            .unwrap_or_else(|e| panic!("{ddl}: {e:?}"));
        let again = findings(c, toml).await;
        assert!(all_ok(&again), "after {ddl}: {again:#?}");
    }
    f
}

#[tokio::test]
async fn check_finds_each_problem_and_its_fix() {
    with_db(|url| async move {
        let c = connect(&url).await;
        c.batch_execute(
            "CREATE TABLE invoice (id int PRIMARY KEY, version bigint NOT NULL DEFAULT 0);
             INSERT INTO invoice VALUES (1, 0);
             CREATE TABLE \"tabSales Invoice\" (name varchar(140) PRIMARY KEY,
                 modified timestamp(6) NOT NULL DEFAULT now());
             CREATE TABLE line (a int, b text, qty int, version numeric NOT NULL DEFAULT 0,
                 UNIQUE (b, a));
             CREATE TABLE accounts (aid int PRIMARY KEY);
             CREATE TABLE k1 (id int PRIMARY KEY, version int NOT NULL DEFAULT 0);
             CREATE TABLE k2 (id int PRIMARY KEY, code text, version int NOT NULL DEFAULT 0);
             INSERT INTO k2 VALUES (1, 'a');
             CREATE TABLE k3 (id int PRIMARY KEY);
             INSERT INTO k3 VALUES (1);
             CREATE TABLE k4 (id int PRIMARY KEY, version int DEFAULT 0);
             INSERT INTO k4 VALUES (1, NULL);
             CREATE TABLE k5 (id int PRIMARY KEY, version int NOT NULL);
             CREATE TABLE k6 (id int PRIMARY KEY, modified timestamptz NOT NULL DEFAULT now());
             CREATE TABLE k7 (id int PRIMARY KEY, version text NOT NULL DEFAULT '0');
             INSERT INTO k7 VALUES (1, '4');
             CREATE TABLE k8 (id int, version int NOT NULL DEFAULT 0);
             CREATE UNIQUE INDEX ON k8 (id) WHERE id > 0;
             CREATE VIEW v AS SELECT * FROM invoice;
             CREATE TABLE k9 (id int PRIMARY KEY, modified timestamp);
             CREATE TABLE k10 (id int PRIMARY KEY, modified date NOT NULL DEFAULT now());",
        )
        .await
        .unwrap();

        let good = [
            guard_toml("invoice", r#"["id"]"#, "version", "counter"),
            guard_toml(
                r#"public."tabSales Invoice""#,
                r#"["name"]"#,
                "modified",
                "timestamp",
            ),
            guard_toml("line", r#"["a", "b"]"#, "version", "counter"),
            guard_toml("accounts", r#"["aid"]"#, "xmin", "xmin"),
        ]
        .concat();
        let f = findings(&c, &good).await;
        assert_eq!(f.len(), 4, "{f:#?}");
        assert!(all_ok(&f), "{f:#?}");
        assert!(f[0].message.contains("primary key"), "{f:#?}");
        assert!(f[2].message.contains("unique"), "{f:#?}");
        let human = render_human(&f);
        assert_eq!(human.lines().count(), 4, "{human}");
        assert!(human.starts_with("ok    public.invoice: "), "{human}");
        let json: serde_json::Value = serde_json::from_str(&render_json(&f)).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["findings"][1]["table"], "public.\"tabSales Invoice\"");

        let f = expect_error(
            &c,
            &guard_toml("nope", r#"["id"]"#, "version", "counter"),
            "does not exist",
        )
        .await;
        assert_eq!(f.table, "public.nope");
        let f = expect_error(
            &c,
            &guard_toml("nope.x", r#"["id"]"#, "version", "counter"),
            "schema nope does not exist",
        )
        .await;
        assert!(f.ddl.is_none());

        let f = expect_error(
            &c,
            &guard_toml("k1", r#"["idx"]"#, "version", "counter"),
            "key column idx does not exist",
        )
        .await;
        assert_eq!(f.config.as_deref(), Some(r#"key = ["id"]"#));

        let f = expect_error(
            &c,
            &guard_toml("k2", r#"["code"]"#, "version", "counter"),
            "neither the primary key nor a unique",
        )
        .await;
        assert_eq!(
            f.ddl.as_deref(),
            Some("ALTER TABLE public.k2 ADD UNIQUE (code);")
        );
        assert_eq!(f.config.as_deref(), Some(r#"key = ["id"]"#));

        let f = expect_error(
            &c,
            &guard_toml("k3", r#"["id"]"#, "version", "counter"),
            "version column version does not exist",
        )
        .await;
        assert_eq!(
            f.ddl.as_deref(),
            Some("ALTER TABLE public.k3 ADD COLUMN version bigint NOT NULL DEFAULT 0;")
        );

        let f = expect_error(
            &c,
            &guard_toml("k4", r#"["id"]"#, "version", "counter"),
            "nullable",
        )
        .await;
        assert!(
            f.ddl
                .as_deref()
                .unwrap()
                .contains("ALTER TABLE public.k4 ALTER COLUMN version SET NOT NULL;")
        );

        let f = expect_error(
            &c,
            &guard_toml("k5", r#"["id"]"#, "version", "counter"),
            "no default",
        )
        .await;
        assert_eq!(
            f.ddl.as_deref(),
            Some("ALTER TABLE public.k5 ALTER COLUMN version SET DEFAULT 0;")
        );

        let f = expect_error(
            &c,
            &guard_toml("k6", r#"["id"]"#, "modified", "counter"),
            "does not fit kind \"counter\"",
        )
        .await;
        assert_eq!(f.config.as_deref(), Some(r#"kind = "timestamp""#));
        assert!(f.ddl.is_none());

        let f = expect_error(
            &c,
            &guard_toml("k7", r#"["id"]"#, "version", "counter"),
            "is text",
        )
        .await;
        assert_eq!(
            f.ddl.as_deref(),
            Some(
                "ALTER TABLE public.k7 ALTER COLUMN version DROP DEFAULT, \
                 ALTER COLUMN version TYPE bigint USING version::bigint, \
                 ALTER COLUMN version SET DEFAULT 0;"
            )
        );

        let f = expect_error(
            &c,
            &guard_toml("k8", r#"["id"]"#, "version", "counter"),
            "neither",
        )
        .await;
        assert!(f.config.is_none());

        expect_error(
            &c,
            &guard_toml("v", r#"["id"]"#, "version", "counter"),
            "is a view",
        )
        .await;
        expect_error(
            &c,
            &guard_toml("k10", r#"["id"]"#, "modified", "timestamp"),
            "is date",
        )
        .await;

        // Two problems of one column: both reported, both fixed.
        let k9 = guard_toml("k9", r#"["id"]"#, "modified", "timestamp");
        let f = findings(&c, &k9).await;
        assert_eq!(f.len(), 2, "{f:#?}");
        for x in &f {
            c.batch_execute(x.ddl.as_deref().unwrap()).await.unwrap();
        }
        assert!(all_ok(&findings(&c, &k9).await));

        // A column of the other kind is checked as that kind too.
        c.batch_execute("CREATE TABLE k11 (id int PRIMARY KEY, updated_at timestamptz)")
            .await
            .unwrap();
        let f = findings(&c, &guard_toml("k11", r#"["id"]"#, "updated_at", "counter")).await;
        assert_eq!(f.len(), 3, "{f:#?}");
        assert_eq!(f[0].config.as_deref(), Some(r#"kind = "timestamp""#));
        assert!(
            f[1].ddl
                .as_deref()
                .unwrap()
                .contains("SET updated_at = now()"),
            "{f:#?}"
        );
        assert_eq!(
            f[2].ddl.as_deref(),
            Some("ALTER TABLE public.k11 ALTER COLUMN updated_at SET DEFAULT now();")
        );

        // The CLI entry point.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optlock.toml");
        std::fs::write(&path, &good).unwrap();
        assert!(
            optlock::catalog::check::run_check(&path, &url, true)
                .await
                .unwrap()
        );
        std::fs::write(&path, guard_toml("nope", r#"["id"]"#, "version", "counter")).unwrap();
        assert!(
            !optlock::catalog::check::run_check(&path, &url, false)
                .await
                .unwrap()
        );
    })
    .await;
}

#[tokio::test]
async fn suggest_writes_guards_that_pass_check() {
    with_db(|url| async move {
        let c = connect(&url).await;
        c.batch_execute(
            "CREATE TABLE invoice (id int PRIMARY KEY, version bigint NOT NULL DEFAULT 0);
             CREATE TABLE \"tabSales Invoice\" (name varchar(140) PRIMARY KEY,
                 modified timestamp(6) NOT NULL DEFAULT now(), \"Version\" text);
             CREATE TABLE accounts (aid int PRIMARY KEY, abalance int);
             CREATE TABLE posts (id int PRIMARY KEY, updated_at timestamptz);
             CREATE TABLE log (msg text);
             CREATE TABLE \"Line\" (a int, \"B\" text, lock_version int NOT NULL DEFAULT 0,
                 PRIMARY KEY (\"B\", a));
             CREATE SCHEMA shop;
             CREATE TABLE shop.item (id uuid PRIMARY KEY, row_version smallint NOT NULL DEFAULT 1);",
        )
        .await
        .unwrap();
        let text = optlock::catalog::suggest::suggest(&c, None, &[]).await.unwrap();
        let cfg = config(&text);
        assert_eq!(cfg.guards.len(), 6, "{text}");
        let f = check(&cfg.guards, &c).await;
        assert!(all_ok(&f), "{text}\n{f:#?}");
        let g = |name: &str| cfg.guards.iter().find(|g| g.table.name == name).unwrap();
        assert_eq!(g("invoice").version, "version");
        assert_eq!(g("tabSales Invoice").version, "modified");
        assert_eq!(g("tabSales Invoice").kind, optlock::config::VersionKind::Timestamp);
        assert_eq!(g("accounts").version, "xmin");
        assert_eq!(g("posts").version, "xmin");
        assert_eq!(g("Line").key, vec!["B".to_string(), "a".to_string()]);
        assert_eq!(g("Line").version, "lock_version");
        assert_eq!(g("item").table.schema, "shop");
        assert!(text.contains("# public.log: skipped, no primary key"), "{text}");
        assert!(text.contains("# column updated_at not used as the version: it is nullable"), "{text}");
        assert!(text.contains("# column \"Version\" not used as the version"), "{text}");

        let text = optlock::catalog::suggest::suggest(
            &c,
            Some("public"),
            &["invoice".into(), "public.accounts".into(), "missing".into(), "item".into()],
        )
        .await
        .unwrap();
        let cfg = config(&text);
        let names: Vec<&str> = cfg.guards.iter().map(|g| g.table.name.as_str()).collect();
        assert_eq!(names, vec!["accounts", "invoice"], "{text}");
        assert!(text.contains("# missing: skipped, no such table in schema public"), "{text}");
        assert!(text.contains("# item: skipped"), "{text}");
    })
    .await;
}

#[tokio::test]
async fn resolve_tells_tables_whose_writes_act_without_rows() {
    with_db(|url| async move {
        let c = connect(&url).await;
        c.batch_execute(
            "CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
             CREATE TABLE plain (id int PRIMARY KEY, version int);
             CREATE TABLE row_trigger (id int PRIMARY KEY, version int);
             CREATE TRIGGER t AFTER UPDATE ON row_trigger FOR EACH ROW EXECUTE FUNCTION noop();
             CREATE TABLE insert_trigger (id int PRIMARY KEY, version int);
             CREATE TRIGGER t AFTER INSERT ON insert_trigger EXECUTE FUNCTION noop();
             CREATE TABLE update_trigger (id int PRIMARY KEY, version int);
             CREATE TRIGGER t AFTER UPDATE ON update_trigger EXECUTE FUNCTION noop();
             ALTER TABLE update_trigger DISABLE TRIGGER t;
             CREATE TABLE delete_trigger (id int PRIMARY KEY, version int);
             CREATE TRIGGER t BEFORE DELETE ON delete_trigger EXECUTE FUNCTION noop();
             CREATE TABLE ruled (id int PRIMARY KEY, version int);
             CREATE RULE r AS ON UPDATE TO ruled DO ALSO NOTIFY ruled;
             CREATE VIEW a_view AS SELECT * FROM plain;",
        )
        .await
        .unwrap();
        let tables = [
            ("plain", false),
            ("row_trigger", false),
            ("insert_trigger", false),
            ("update_trigger", true),
            ("delete_trigger", true),
            ("ruled", true),
            ("a_view", true),
        ];
        let text: String = tables
            .iter()
            .map(|(t, _)| format!("[[guard]]\ntable = \"{t}\"\nkey = [\"id\"]\n"))
            .collect();
        let cfg = config(&text);
        let resolved = optlock::catalog::resolve::resolve(&c, &cfg.guards)
            .await
            .unwrap();
        for (i, (table, acts)) in tables.iter().enumerate() {
            let r = resolved.get(i).unwrap_or_else(|| panic!("{table} resolved"));
            assert_eq!(r.acts_without_rows, *acts, "{table}");
        }
    })
    .await;
}
