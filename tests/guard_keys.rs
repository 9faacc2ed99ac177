//! Writes whose key is not a plain literal (`IN`, `= ANY`, `BETWEEN`, row comparisons,
//! expressions, other numeric spellings, `COLLATE`, `U&` strings, concatenation, joins, no
//! `WHERE`, upserts) are checked row by row: every row such a write touches that the session
//! has read must still be at the version it read, or the write is a conflict. Run directly and
//! through the proxy with `common::scenario`.

mod common;
use common::scenario::{Scenario, Step, Who::*, conflict, rows_of, same};
use common::wire::Reply;
use common::{Proxy, TestDb};

const SETUP: &str =
    "CREATE TABLE item (id int PRIMARY KEY, qty int, version int NOT NULL DEFAULT 0);
INSERT INTO item (id, qty) VALUES (1, 100), (2, 200), (3, 300);
CREATE TABLE doc (name text PRIMARY KEY, body text, version int NOT NULL DEFAULT 0);
INSERT INTO doc (name, body) VALUES ('INV-1', 'a'), ('INV-2', 'b');
CREATE TABLE line (a int, b int, qty int, version int NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
INSERT INTO line (a, b, qty) VALUES (1, 1, 10), (1, 2, 20);
CREATE TABLE stamp (id int PRIMARY KEY, qty int,
    modified timestamptz NOT NULL DEFAULT '2020-01-01 00:00:00+00');
INSERT INTO stamp (id, qty) VALUES (1, 1), (2, 2);
CREATE TABLE sys (id int PRIMARY KEY, qty int);
INSERT INTO sys VALUES (1, 1), (2, 2);";

const GUARDS: &str = r#"
[[guard]]
table = "public.item"
key = ["id"]

[[guard]]
table = "public.doc"
key = ["name"]

[[guard]]
table = "public.line"
key = ["a", "b"]

[[guard]]
table = "public.stamp"
key = ["id"]
version = "modified"
kind = "timestamp"

[[guard]]
table = "public.sys"
key = ["id"]
version = "xmin"
kind = "xmin"
"#;

const STATE: &str = "SELECT 'item', id::text, qty::text FROM item
UNION ALL SELECT 'doc', name, body FROM doc
UNION ALL SELECT 'line', a || '/' || b, qty::text FROM line
UNION ALL SELECT 'stamp', id::text, qty::text FROM stamp
UNION ALL SELECT 'sys', id::text, qty::text FROM sys ORDER BY 1, 2";

fn scenario(name: &'static str, steps: Vec<Step>) -> Scenario<'static> {
    Scenario {
        name,
        setup: SETUP,
        guards: GUARDS,
        steps,
        state: STATE,
        proxy_state: None,
    }
}

/// One spelling of a write of one row: the table's read, another session's write of the row,
/// and the write itself.
struct Spelling {
    read: &'static str,
    other: &'static str,
    write: &'static str,
}

const fn item(write: &'static str) -> Spelling {
    Spelling {
        read: "SELECT * FROM item WHERE id = 1",
        other: "UPDATE item SET qty = qty WHERE id = 1",
        write,
    }
}

const fn doc(write: &'static str) -> Spelling {
    Spelling {
        read: "SELECT * FROM doc WHERE name = 'INV-1'",
        other: "UPDATE doc SET body = body WHERE name = 'INV-1'",
        write,
    }
}

const SPELLINGS: &[Spelling] = &[
    item("UPDATE item SET qty = 5 WHERE id IN (1)"),
    item("UPDATE item SET qty = 5 WHERE id = ANY(ARRAY[1])"),
    item("UPDATE item SET qty = 5 WHERE id = ANY('{1}'::int[])"),
    item("UPDATE item SET qty = 5 WHERE id BETWEEN 1 AND 1"),
    item("UPDATE item SET qty = 5 WHERE (id, qty) = (1, 100)"),
    item("UPDATE item SET qty = 5 WHERE id = 0+1"),
    item("UPDATE item SET qty = 5 WHERE id = 1.0"),
    item("UPDATE item SET qty = 5 WHERE id = 1e0"),
    item("UPDATE item SET qty = 5 WHERE id = 1.0::float8"),
    item("UPDATE item SET qty = 5 WHERE id = '1.0'::numeric"),
    item("UPDATE item i SET qty = 5 FROM (VALUES (1)) v(k) WHERE i.id = v.k"),
    item("UPDATE item SET qty = 5 WHERE id <= 1"),
    item("UPDATE item SET qty = qty + 1"),
    item("DELETE FROM item WHERE id IN (1, 3)"),
    item("WITH w AS (UPDATE item SET qty = 5 WHERE id IN (1) RETURNING id) SELECT count(*) FROM w"),
    item(
        "INSERT INTO item (id, qty) VALUES (1, 5) ON CONFLICT (id) DO UPDATE SET qty = excluded.qty",
    ),
    item(
        "INSERT INTO item AS t (id, qty) VALUES (1, 5) ON CONFLICT (id) DO UPDATE SET qty = 7 WHERE t.qty > 0",
    ),
    doc("UPDATE doc SET body = 'x' WHERE name = 'INV-1' COLLATE \"C\""),
    doc("UPDATE doc SET body = 'x' WHERE name = U&'INV\\002D1'"),
    doc("UPDATE doc SET body = 'x' WHERE name = 'INV-' || '1'"),
    doc("UPDATE doc SET body = 'x' WHERE name IN ('INV-1', 'INV-9')"),
    doc("UPDATE doc SET body = 'x' WHERE lower(name) = 'inv-1'"),
    Spelling {
        read: "SELECT * FROM line WHERE a = 1",
        other: "UPDATE line SET qty = qty WHERE a = 1 AND b = 2",
        write: "UPDATE line SET qty = 5 WHERE (a, b) IN ((1, 2))",
    },
    Spelling {
        read: "SELECT * FROM stamp",
        other: "UPDATE stamp SET qty = qty WHERE id = 2",
        write: "UPDATE stamp SET qty = 5 WHERE id IN (2)",
    },
];

#[tokio::test]
async fn every_spelling_of_a_stale_write_conflicts() {
    for s in SPELLINGS {
        let mut sc = scenario(
            s.write,
            vec![same(A, s.read), same(B, s.other), conflict(A, s.write)],
        );
        // The conflict stops the write: the state is the one before it.
        let before = scenario(s.write, vec![same(A, s.read), same(B, s.other)]);
        sc.proxy_state = Some(before.run(None).await.state);
        sc.check().await;
    }
}

#[tokio::test]
async fn no_spelling_conflicts_without_another_write() {
    for s in SPELLINGS {
        scenario(
            s.write,
            vec![
                same(A, s.read),
                same(B, s.read),
                same(A, s.write),
                same(A, s.write),
            ],
        )
        .check()
        .await;
    }
}

#[tokio::test]
async fn a_write_of_several_read_rows_checks_each() {
    let mut s = scenario(
        "IN (1, 2) after row 2 changed",
        vec![
            same(A, "SELECT * FROM item WHERE id IN (1, 2)"),
            same(B, "UPDATE item SET qty = 7 WHERE id = 2"),
            conflict(A, "UPDATE item SET qty = 0 WHERE id IN (1, 2)"),
        ],
    );
    s.proxy_state = Some(rows_of(&[
        &["doc", "INV-1", "a"],
        &["doc", "INV-2", "b"],
        &["item", "1", "100"],
        &["item", "2", "7"],
        &["item", "3", "300"],
        &["line", "1/1", "10"],
        &["line", "1/2", "20"],
        &["stamp", "1", "1"],
        &["stamp", "2", "2"],
        &["sys", "1", "1"],
        &["sys", "2", "2"],
    ]));
    s.check().await;
}

#[tokio::test]
async fn rows_not_read_and_own_writes_do_not_conflict() {
    scenario(
        "unread rows follow the policies; own writes advance",
        vec![
            same(A, "SELECT * FROM item WHERE id = 1"),
            same(B, "UPDATE item SET qty = 7 WHERE id IN (2, 3)"),
            same(A, "UPDATE item SET qty = qty + 1 WHERE id IN (1, 2, 3)"),
            same(A, "UPDATE item SET qty = qty + 1 WHERE id BETWEEN 1 AND 3"),
            same(
                A,
                "BEGIN; UPDATE item SET qty = 1 WHERE id = ANY(ARRAY[1, 2]); COMMIT",
            ),
            same(B, "SELECT id, qty FROM item ORDER BY id"),
            same(A, "UPDATE item SET qty = 2 WHERE id > 0"),
        ],
    )
    .check()
    .await;
}

#[tokio::test]
async fn a_conflict_in_a_transaction_aborts_it() {
    let s = scenario(
        "conflict inside BEGIN",
        vec![
            same(A, "BEGIN"),
            same(A, "SELECT * FROM item WHERE id = 2"),
            same(B, "UPDATE item SET qty = 9 WHERE id = 2"),
            same(A, "UPDATE item SET qty = 1 WHERE id = 1"),
            conflict(A, "UPDATE item SET qty = 2 WHERE id IN (1, 2)"),
            same(A, "COMMIT"),
        ],
    );
    // Directly COMMIT commits; through the proxy the conflict aborted the transaction.
    let through = s.run(Some(&Proxy::with_guards(GUARDS).await)).await;
    let has = |i: usize, f: &dyn Fn(&Reply) -> bool| through.replies[i].iter().any(f);
    assert!(has(4, &|r| matches!(r, Reply::Error(c, _) if c == "40001")));
    assert!(has(
        5,
        &|r| matches!(r, Reply::CommandComplete(t) if t == "ROLLBACK")
    ));
    let row = |k: &str, v: &str| vec![Some("item".to_string()), Some(k.into()), Some(v.into())];
    assert!(through.state.contains(&row("1", "100")));
    assert!(through.state.contains(&row("2", "9")));
}

#[tokio::test]
async fn the_conflict_names_the_changed_row() {
    let proxy = Proxy::with_guards(GUARDS).await;
    let db = TestDb::new("keys_detail").await;
    db.direct().await.batch_execute(SETUP).await.unwrap();
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    a.simple_query("SELECT * FROM item WHERE id IN (1, 2, 3)")
        .await
        .unwrap();
    b.simple_query("UPDATE item SET qty = 1 WHERE id = 2")
        .await
        .unwrap();
    let e = a
        .simple_query("UPDATE item SET qty = 0 WHERE id BETWEEN 1 AND 3")
        .await
        .unwrap_err();
    let e = e.as_db_error().expect("a server error");
    assert_eq!(e.code().code(), "40001");
    assert_eq!(
        e.message(),
        "optimistic lock conflict on public.item (id)=(2)"
    );
    assert_eq!(
        e.detail(),
        Some("the row was changed by another transaction: expected version 0, found 1")
    );
    assert_eq!(e.constraint(), Some("optlock"));
}

#[tokio::test]
async fn xmin_versions_are_checked_per_row() {
    let proxy = Proxy::with_guards(GUARDS).await;
    let db = TestDb::new("keys_xmin").await;
    db.direct().await.batch_execute(SETUP).await.unwrap();
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    let write = "UPDATE sys SET qty = 5 WHERE id = ANY(ARRAY[1, 2])";
    a.simple_query("SELECT xmin, * FROM sys").await.unwrap();
    a.simple_query(write)
        .await
        .expect("nothing changed since the read");
    a.simple_query(write)
        .await
        .expect("its own write advanced the versions");
    b.simple_query("UPDATE sys SET qty = qty WHERE id = 2")
        .await
        .unwrap();
    let e = a.simple_query(write).await.unwrap_err();
    let e = e.as_db_error().expect("a server error");
    assert_eq!(e.code().code(), "40001");
    assert_eq!(
        e.message(),
        "optimistic lock conflict on public.sys (id)=(2)"
    );
}

#[tokio::test]
async fn extended_protocol_writes_are_checked_per_row() {
    let proxy = Proxy::with_guards(GUARDS).await;
    let db = TestDb::new("keys_extended").await;
    db.direct().await.batch_execute(SETUP).await.unwrap();
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    let one = vec![1i32];
    let writes: [(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]); 8] = [
        (
            "UPDATE item SET qty = $1 WHERE id = ANY($2)",
            &[&5i32, &one],
        ),
        (
            "UPDATE item SET qty = $1 WHERE id IN ($2, $3)",
            &[&5i32, &1i32, &9i32],
        ),
        (
            "UPDATE item SET qty = 5 WHERE id BETWEEN $1 AND $2",
            &[&1i32, &1i32],
        ),
        ("UPDATE item SET qty = 5 WHERE id = $1 + 0", &[&1i32]),
        (
            "INSERT INTO item (id, qty) VALUES ($1, 5) ON CONFLICT (id) DO UPDATE SET qty = 6",
            &[&1i32],
        ),
        // Keys bound as another type than the column's.
        ("UPDATE item SET qty = 5 WHERE id = $1::float8", &[&1.0f64]),
        ("UPDATE item SET qty = 5 WHERE id = $1::int8", &[&1i64]),
        (
            "DELETE FROM item WHERE id = $1::float4 AND qty < 0",
            &[&1.0f32],
        ),
    ];
    for (sql, params) in writes {
        a.query("SELECT * FROM item WHERE id = $1", &[&1i32])
            .await
            .unwrap();
        a.execute(sql, params).await.expect(sql);
        a.execute(sql, params)
            .await
            .expect("its own write advanced the version");
        b.execute("UPDATE item SET qty = qty WHERE id = 1", &[])
            .await
            .unwrap();
        let e = a.execute(sql, params).await.expect_err(sql);
        let e = e.as_db_error().expect("a server error");
        assert_eq!(e.code().code(), "40001", "{sql}: {e:?}");
        assert_eq!(
            e.message(),
            "optimistic lock conflict on public.item (id)=(1)"
        );
    }
}

#[tokio::test]
async fn a_bound_key_the_proxy_cannot_read_fails_closed_once_rows_are_known() {
    let proxy = Proxy::with_guards(GUARDS).await;
    let db = TestDb::new("keys_unreadable").await;
    db.direct().await.batch_execute(SETUP).await.unwrap();
    let a = proxy.client(&db.name).await;
    let sql = "UPDATE item SET qty = 5 WHERE id = $1::bool::int";
    // Nothing known of the table: nothing to check, it runs.
    assert_eq!(a.execute(sql, &[&true]).await.unwrap(), 1);
    a.query("SELECT * FROM item", &[]).await.unwrap();
    let e = a.execute(sql, &[&true]).await.expect_err(sql);
    let e = e.as_db_error().expect("a server error");
    assert_eq!(e.code().code(), "0A000", "{e:?}");
    assert!(
        e.message().contains("cannot read this write's key"),
        "{e:?}"
    );
    // A NULL key names no row: it runs, as directly.
    assert_eq!(a.execute(sql, &[&None::<bool>]).await.unwrap(), 0);
}
