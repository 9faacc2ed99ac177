//! Every spelling of a guarded write against a real PostgreSQL: schema-qualified or not, quoted
//! and unquoted names with case folding, `ONLY`, aliases, `FROM`/`USING` joins, `RETURNING`
//! (the client sees only its own columns), data-modifying CTEs, `INSERT ... ON CONFLICT DO
//! UPDATE`; plain `INSERT`, `COPY` and reads that merely mention a guarded name pass untouched.
//! Each keyed spelling conflicts after another session's change and writes cleanly after a
//! re-read.

mod common;
use common::guards::{INVOICE, invoice_db};
use common::*;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The quoted, capitalised table beside `public.invoice`, guarded the same way.
const QUOTED_INVOICE: &str = r#"
[[guard]]
table = 'public."Invoice"'
key = ["id"]
version = "version"
"#;

/// Beside the invoice table (rows 1 to 20): "Invoice" (rows 1 to 5), `other` joined to
/// invoices, and `audit`.
const TABLES: &str = r#"CREATE TABLE "Invoice" (id int primary key, total numeric not null, version bigint not null default 0);
    INSERT INTO "Invoice" (id, total) SELECT g, 10 FROM generate_series(1, 5) g;
    -- The two tables' versions differ, so a write resolved to the wrong one shows.
    UPDATE invoice SET version = 100;
    CREATE TABLE other (id int primary key, invoice_id int not null, amount numeric not null);
    INSERT INTO other SELECT g + 100, g, g * 2 FROM generate_series(1, 20) g;
    CREATE TABLE audit (n int);"#;

/// A database of the test's own with the tables above, and a proxy guarding both invoice
/// tables.
async fn setup(prefix: &str) -> (TestDb, Proxy) {
    let db = invoice_db(prefix, 20, TABLES).await;
    let proxy = Proxy::with_guards(&format!("{INVOICE}{QUOTED_INVOICE}")).await;
    (db, proxy)
}

/// `version` of row `id` in `table` (SQL spelling), read directly.
async fn version(db: &TestDb, table: &str, id: i32) -> Option<i64> {
    db.direct()
        .await
        .query_opt(
            &format!("SELECT version FROM {table} WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Another session changes the row (directly, bumping its version as a guarded write would).
async fn other_session_changes(db: &TestDb, table: &str, id: i32) {
    let n = db
        .direct()
        .await
        .execute(
            &format!(
                "UPDATE {table} SET total = total + 1000, version = version + 1 WHERE id = $1"
            ),
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// The session reads row `id`, another session changes it, `write` conflicts (and changes
/// nothing); after a re-read the same `write` goes through with `tag` rows and bumps the
/// version (checked when `bumps`).
async fn conflict_then_clean(db: &TestDb, a: &Client, table: &str, id: i32, write: &str, tag: u64) {
    a.simple_query(&format!("SELECT * FROM {table} WHERE id = {id}"))
        .await
        .unwrap();
    other_session_changes(db, table, id).await;
    let changed = version(db, table, id).await.unwrap();
    let err = a
        .simple_query(write)
        .await
        .expect_err(&format!("{write}: a stale write must conflict"));
    let e = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{write}: {err:?}"));
    assert_eq!(e.code().code(), "40001", "{write}: {e:?}");
    assert!(
        e.message()
            .starts_with("optimistic lock conflict on public."),
        "{write}: {}",
        e.message()
    );
    assert!(
        e.message().ends_with(&format!("(id)=({id})")),
        "{}",
        e.message()
    );
    assert_eq!(
        version(db, table, id).await,
        Some(changed),
        "{write}: the conflicting write changed nothing"
    );
    a.simple_query(&format!("SELECT * FROM {table} WHERE id = {id}"))
        .await
        .unwrap();
    let r = a
        .simple_query(write)
        .await
        .unwrap_or_else(|e| panic!("{write} after a re-read: {e:?}"));
    assert_eq!(rows_affected(&r).last(), Some(&tag), "{write}");
    if !write
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("delete")
    {
        assert_eq!(
            version(db, table, id).await,
            Some(changed + 1),
            "{write}: bumped once"
        );
    } else {
        assert_eq!(version(db, table, id).await, None, "{write}: deleted");
    }
}

#[tokio::test]
async fn update_and_delete_spellings_conflict_and_then_write() {
    let (db, proxy) = setup("sp_spell").await;
    let a = proxy.client(&db.name).await;
    let cases: &[(i32, &str)] = &[
        (1, "UPDATE invoice SET total = total + 1 WHERE id = 1"),
        (
            2,
            "UPDATE public.invoice SET total = total + 1 WHERE id = 2",
        ),
        (3, "UPDATE INVOICE SET TOTAL = TOTAL + 1 WHERE ID = 3"),
        (
            4,
            "update public.Invoice set total = total + 1 where id = 4",
        ),
        (
            5,
            "UPDATE \"invoice\" SET total = total + 1 WHERE \"id\" = 5",
        ),
        (6, "UPDATE public.\"invoice\" SET total = 1 WHERE 6 = id"),
        (7, "UPDATE ONLY invoice SET total = total + 1 WHERE id = 7"),
        (8, "UPDATE public.invoice * SET total = 2 WHERE id = 8"),
        (19, "DELETE FROM ONLY (invoice) WHERE id = 19"),
        (
            20,
            "UPDATE ONLY (public.invoice) SET total = 2 WHERE id = 20",
        ),
        (9, "UPDATE invoice i SET total = i.total + 1 WHERE i.id = 9"),
        (
            10,
            "UPDATE invoice AS inv SET total = inv.total + 1 WHERE inv.id = 10 AND inv.total > 0",
        ),
        (
            11,
            "UPDATE invoice i SET total = o.amount FROM other o WHERE o.invoice_id = i.id AND i.id = 11",
        ),
        (
            12,
            "UPDATE public.invoice SET total = other.amount FROM other WHERE other.invoice_id = invoice.id AND invoice.id = 12",
        ),
        (
            13,
            "/* leading comment */ UPDATE invoice SET total = 3 WHERE id = 13 -- trailing",
        ),
        (14, "DELETE FROM invoice WHERE id = 14"),
        (15, "DELETE FROM ONLY public.invoice AS d WHERE d.id = 15"),
        (
            16,
            "DELETE FROM invoice i USING other o WHERE o.invoice_id = i.id AND i.id = 16",
        ),
        (17, "UPDATE invoice SET total = '17' WHERE id = '17'"),
        (18, "UPDATE invoice SET total = 18 WHERE id = 18::int"),
    ];
    for (id, write) in cases {
        conflict_then_clean(&db, &a, "invoice", *id, write, 1).await;
    }
}

#[tokio::test]
async fn quoted_capitalised_table_is_its_own_guard() {
    let (db, proxy) = setup("sp_quoted").await;
    let a = proxy.client(&db.name).await;
    conflict_then_clean(
        &db,
        &a,
        "\"Invoice\"",
        1,
        "UPDATE \"Invoice\" SET total = total + 1 WHERE id = 1",
        1,
    )
    .await;
    conflict_then_clean(
        &db,
        &a,
        "\"Invoice\"",
        2,
        "UPDATE public.\"Invoice\" AS x SET total = 5 WHERE x.id = 2",
        1,
    )
    .await;
    conflict_then_clean(
        &db,
        &a,
        "\"Invoice\"",
        3,
        "DELETE FROM public.\"Invoice\" WHERE id = 3",
        1,
    )
    .await;
    // Unquoted `Invoice` folds to `invoice`: the other table, the other guard.
    a.simple_query("SELECT * FROM \"Invoice\" WHERE id = 4")
        .await
        .unwrap();
    a.simple_query("SELECT * FROM invoice WHERE id = 4")
        .await
        .unwrap();
    other_session_changes(&db, "\"Invoice\"", 4).await;
    let r = a
        .simple_query("UPDATE Invoice SET total = 1 WHERE id = 4")
        .await
        .expect("the unquoted name is the lower-case table, read at its current version");
    assert_eq!(rows_affected(&r), vec![1]);
    assert_eq!(version(&db, "invoice", 4).await, Some(101));
    assert_eq!(version(&db, "\"Invoice\"", 4).await, Some(1));
    let err = a
        .simple_query("UPDATE \"Invoice\" SET total = 1 WHERE id = 4")
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("optimistic lock conflict on public.\"Invoice\" (id)=(4)")
    );
}

#[tokio::test]
async fn join_keyed_only_through_the_other_table_is_checked_per_row() {
    let (db, proxy) = setup("sp_bulkjoin").await;
    let a = proxy.client(&db.name).await;
    a.simple_query("SELECT * FROM invoice WHERE id IN (1, 2)")
        .await
        .unwrap();
    other_session_changes(&db, "invoice", 1).await;
    // Row 1 is stale for this session: the write names no key of its own, but the server
    // checks each row it touches against what the session read.
    let e = a
        .simple_query(
            "UPDATE invoice i SET total = 0 FROM other o WHERE o.invoice_id = i.id AND o.id = 101",
        )
        .await
        .expect_err("a stale row written through a join conflicts");
    assert_eq!(code(&e), "40001");
    assert_eq!(version(&db, "invoice", 1).await, Some(101));
    let r = a
        .simple_query("DELETE FROM invoice USING other WHERE other.invoice_id = invoice.id AND other.id = 102")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);
    assert_eq!(version(&db, "invoice", 2).await, None);
    // A bulk write's bumps are this session's own: its later keyed write does not conflict.
    a.simple_query("SELECT * FROM invoice WHERE id = 3")
        .await
        .unwrap();
    a.simple_query("UPDATE invoice SET total = 7 WHERE id IN (3, 4)")
        .await
        .unwrap();
    let r = a
        .simple_query("UPDATE invoice SET total = 8 WHERE id = 3")
        .await
        .expect("the session's own bulk bump is tracked");
    assert_eq!(rows_affected(&r), vec![1]);
    assert_eq!(version(&db, "invoice", 3).await, Some(102));
}

#[tokio::test]
async fn returning_shows_only_the_clients_columns() {
    let (db, proxy) = setup("sp_ret").await;
    let a = proxy.client(&db.name).await;

    // Simple protocol.
    let r = a
        .simple_query("UPDATE invoice SET total = 42 WHERE id = 1 RETURNING total")
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![vec![Some("42".to_string())]]);
    let desc = r.iter().find_map(|m| match m {
        SimpleQueryMessage::RowDescription(d) => Some(d.clone()),
        _ => None,
    });
    let names: Vec<&str> = desc.as_ref().unwrap().iter().map(|c| c.name()).collect();
    assert_eq!(names, vec!["total"]);
    assert_eq!(rows_affected(&r), vec![1]);
    let r = a
        .simple_query("UPDATE invoice i SET total = 43 WHERE i.id = 1 RETURNING *")
        .await
        .unwrap();
    assert_eq!(
        rows(&r),
        vec![vec![
            Some("1".to_string()),
            Some("43".to_string()),
            Some("102".to_string())
        ]],
        "RETURNING * shows the new version, and nothing after it"
    );
    let r = a
        .simple_query(
            "UPDATE invoice SET total = 44 WHERE id = 1 RETURNING version AS v, id * 2 AS twice",
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&r),
        vec![vec![Some("103".to_string()), Some("2".to_string())]]
    );
    let r = a
        .simple_query("DELETE FROM invoice WHERE id = 20 RETURNING id")
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![vec![Some("20".to_string())]]);

    // Extended protocol (binary rows).
    let rs = a
        .query(
            "UPDATE invoice SET total = $2::text::numeric WHERE id = $1 RETURNING total::text",
            &[&2i32, &"45"],
        )
        .await
        .unwrap();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].len(), 1);
    assert_eq!(rs[0].get::<_, String>(0), "45");
    let rs = a
        .query(
            "UPDATE invoice SET total = 46 WHERE id = $1 RETURNING id, version",
            &[&2i32],
        )
        .await
        .unwrap();
    assert_eq!(rs[0].len(), 2);
    assert_eq!(rs[0].get::<_, i32>(0), 2);
    assert_eq!(rs[0].get::<_, i64>(1), 102);
    let st = a
        .prepare("UPDATE invoice SET total = total + 1 WHERE id = $1 RETURNING total, id")
        .await
        .unwrap();
    assert_eq!(st.columns().len(), 2);
    assert_eq!(st.columns()[0].name(), "total");
    assert_eq!(st.columns()[1].name(), "id");
    assert_eq!(st.params().len(), 1);
    let st = a
        .prepare("UPDATE invoice SET total = total + 1 WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(st.columns().len(), 0, "no RETURNING: no columns");
    let st = a
        .prepare("DELETE FROM invoice WHERE id = $1 RETURNING *")
        .await
        .unwrap();
    assert_eq!(st.columns().len(), 3);
    let rs = a.query(&st, &[&19i32]).await.unwrap();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].len(), 3);

    // A stale write with RETURNING still conflicts, in both protocols.
    a.simple_query("SELECT * FROM invoice WHERE id = 3")
        .await
        .unwrap();
    other_session_changes(&db, "invoice", 3).await;
    let err = a
        .simple_query("UPDATE invoice SET total = 0 WHERE id = 3 RETURNING total")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001");
    let err = a
        .query(
            "UPDATE invoice SET total = 0 WHERE id = $1 RETURNING total",
            &[&3i32],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001");
    // After a re-read, the RETURNING write goes through and sees its own columns.
    a.query("SELECT id, version FROM invoice WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    let rs = a
        .query(
            "UPDATE invoice SET total = 0 WHERE id = $1 RETURNING version",
            &[&3i32],
        )
        .await
        .unwrap();
    assert_eq!(rs[0].len(), 1);
    assert_eq!(rs[0].get::<_, i64>(0), 102);
}

#[tokio::test]
async fn data_modifying_cte_is_bumped() {
    let (db, proxy) = setup("sp_cte").await;
    let a = proxy.client(&db.name).await;
    let r = a
        .simple_query(
            "WITH u AS (UPDATE invoice SET total = total + 1 WHERE id = 1 RETURNING *) SELECT id, version FROM u",
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&r),
        vec![vec![Some("1".to_string()), Some("101".to_string())]],
        "the CTE's RETURNING shows the bumped version and only the client's columns"
    );
    let rs = a
        .query(
            "WITH u AS (UPDATE invoice SET total = total + 1 WHERE id = $1 RETURNING id, total) SELECT count(*) FROM u",
            &[&2i32],
        )
        .await
        .unwrap();
    assert_eq!(rs[0].get::<_, i64>(0), 1);
    assert_eq!(version(&db, "invoice", 2).await, Some(101));
    // A bulk write in a CTE is bumped too.
    a.simple_query("WITH d AS (UPDATE invoice SET total = 0 WHERE id IN (3, 4) RETURNING 1) SELECT count(*) FROM d")
        .await
        .unwrap();
    assert_eq!(version(&db, "invoice", 3).await, Some(101));
    assert_eq!(version(&db, "invoice", 4).await, Some(101));
}

/// `total` of invoice `id`, read directly.
async fn total(db: &TestDb, id: i32) -> String {
    db.one("SELECT total::text FROM invoice WHERE id = $1", &[&id])
        .await
}

/// A keyed write inside a data-modifying CTE, on a row this session read at an older version.
/// The statement's row count is not the CTE's, so the proxy checks and locks the row first:
/// the stale write is a conflict, as anywhere else, and does not apply.
#[tokio::test]
async fn stale_write_in_a_cte_is_a_conflict() {
    let (db, proxy) = setup("sp_ctestale").await;
    let a = proxy.client(&db.name).await;
    a.simple_query("SELECT * FROM invoice WHERE id = 5")
        .await
        .unwrap();
    other_session_changes(&db, "invoice", 5).await;
    let e = a
        .simple_query(
            "WITH u AS (UPDATE invoice SET total = -1 WHERE id = 5 RETURNING id) SELECT count(*) FROM u",
        )
        .await
        .unwrap_err();
    let db_err = e.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "40001", "{db_err:?}");
    assert_eq!(
        db_err.detail(),
        Some("the row was changed by another transaction: expected version 100, found 101")
    );
    assert_ne!(total(&db, 5).await, "-1", "the stale CTE write applied");
    // The session is usable afterwards: the wrapping transaction was rolled back.
    a.simple_query("SELECT 1").await.unwrap();

    // Extended protocol, same.
    a.query("SELECT id, version FROM invoice WHERE id = $1", &[&6i32])
        .await
        .unwrap();
    other_session_changes(&db, "invoice", 6).await;
    let e = a
        .query(
            "WITH u AS (UPDATE invoice SET total = -1 WHERE id = $1 RETURNING id) SELECT count(*) FROM u",
            &[&6i32],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "40001", "{e:?}");
    assert_ne!(total(&db, 6).await, "-1", "the stale CTE write applied");

    // A deleted row: the conflict says so.
    a.simple_query("SELECT * FROM invoice WHERE id = 7")
        .await
        .unwrap();
    db.direct()
        .await
        .execute("DELETE FROM invoice WHERE id = 7", &[])
        .await
        .unwrap();
    let e = a
        .simple_query("WITH u AS (UPDATE invoice SET total = -1 WHERE id = 7 RETURNING id) SELECT count(*) FROM u")
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().detail(),
        Some("the row no longer exists")
    );
}

/// Inside the client's transaction the CTE conflict aborts it, like any error; a CTE write of
/// a row still at the version the session read goes through, and its next one too (the
/// session follows its own write).
#[tokio::test]
async fn cte_write_checks_in_a_transaction_and_never_conflicts_with_itself() {
    let (db, proxy) = setup("sp_ctetx").await;
    let a = proxy.client(&db.name).await;
    a.simple_query("SELECT * FROM invoice WHERE id IN (8, 9)")
        .await
        .unwrap();
    for round in 0..2 {
        let r = a
            .simple_query("WITH u AS (UPDATE invoice SET total = total + 1 WHERE id = 8 RETURNING id) SELECT count(*) FROM u")
            .await
            .unwrap();
        assert_eq!(rows(&r), vec![vec![Some("1".to_string())]], "round {round}");
        let rs = a
            .query(
                "WITH u AS (UPDATE invoice SET total = total + 1 WHERE id = $1 RETURNING id) SELECT count(*) FROM u",
                &[&8i32],
            )
            .await
            .unwrap();
        assert_eq!(rs[0].get::<_, i64>(0), 1, "round {round}");
    }
    assert_eq!(version(&db, "invoice", 8).await, Some(104));
    assert_eq!(total(&db, 8).await, "14");
    // A bulk write inside WITH changes rows the session read: it writes them next without a
    // conflict with itself, in both protocols (a named statement too).
    a.simple_query("SELECT * FROM invoice WHERE id IN (11, 12)")
        .await
        .unwrap();
    a.simple_query("WITH u AS (UPDATE invoice SET total = 0 WHERE id IN (11, 12) RETURNING 1) SELECT count(*) FROM u")
        .await
        .unwrap();
    a.simple_query("UPDATE invoice SET total = 1 WHERE id = 11")
        .await
        .unwrap();
    let bulk = a
        .prepare("WITH u AS (UPDATE invoice SET total = 2 WHERE id = ANY($1) RETURNING 1) SELECT count(*) FROM u")
        .await
        .unwrap();
    a.query(&bulk, &[&vec![11i32, 12]]).await.unwrap();
    a.execute("UPDATE invoice SET total = 3 WHERE id = $1", &[&12i32])
        .await
        .unwrap();
    assert_eq!(version(&db, "invoice", 12).await, Some(103));
    // That bulk write made the session forget every invoice row it knew (it cannot see which
    // rows changed): row 9 is read again.
    a.simple_query("SELECT * FROM invoice WHERE id = 9")
        .await
        .unwrap();

    // Another session changes row 9 while this one is inside BEGIN.
    a.simple_query("BEGIN").await.unwrap();
    a.simple_query("UPDATE invoice SET total = 0 WHERE id = 10")
        .await
        .unwrap();
    other_session_changes(&db, "invoice", 9).await;
    let e = a
        .query(
            "WITH u AS (UPDATE invoice SET total = -1 WHERE id = $1 RETURNING id) SELECT count(*) FROM u",
            &[&9i32],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "40001", "{e:?}");
    let e = a.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(
        e.code().unwrap().code(),
        "25P02",
        "the transaction is aborted"
    );
    let r = a.simple_query("COMMIT").await.unwrap();
    assert!(
        r.iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))),
        "{r:?}"
    );
    assert_eq!(
        total(&db, 10).await,
        "10",
        "nothing of the transaction committed"
    );
    assert_ne!(total(&db, 9).await, "-1");
}

#[tokio::test]
async fn upsert_bumps_and_the_session_keeps_its_own_version() {
    let (db, proxy) = setup("sp_upsert").await;
    let a = proxy.client(&db.name).await;
    a.simple_query("SELECT * FROM invoice WHERE id = 1")
        .await
        .unwrap();
    let r = a
        .simple_query(
            "INSERT INTO invoice (id, total) VALUES (1, 5) ON CONFLICT (id) DO UPDATE SET total = invoice.total + EXCLUDED.total",
        )
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);
    assert_eq!(rows(&r), Vec::<Vec<Option<String>>>::new(), "no rows shown");
    assert_eq!(version(&db, "invoice", 1).await, Some(101));
    // The session's later write expects the version its own upsert produced.
    let r = a
        .simple_query("UPDATE invoice SET total = 0 WHERE id = 1")
        .await
        .expect("a session's own upsert does not make its next write conflict");
    assert_eq!(rows_affected(&r), vec![1]);
    assert_eq!(version(&db, "invoice", 1).await, Some(102));
    // Extended, with an alias and the client's own RETURNING.
    a.query("SELECT id, version FROM invoice WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    let rs = a
        .query(
            "INSERT INTO invoice AS i (id, total) VALUES ($1, 5) ON CONFLICT (id) DO UPDATE SET total = i.total + 1 RETURNING total::text",
            &[&2i32],
        )
        .await
        .unwrap();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].len(), 1);
    assert_eq!(rs[0].get::<_, String>(0), "11");
    assert_eq!(version(&db, "invoice", 2).await, Some(101));
    let n = a
        .execute("UPDATE invoice SET total = 1 WHERE id = $1", &[&2i32])
        .await
        .expect("own upsert tracked (extended)");
    assert_eq!(n, 1);
    // The insert path of an upsert: the default version.
    a.simple_query(
        "INSERT INTO invoice (id, total) VALUES (50, 1) ON CONFLICT (id) DO UPDATE SET total = 2",
    )
    .await
    .unwrap();
    assert_eq!(version(&db, "invoice", 50).await, Some(0));
    // ON CONFLICT DO NOTHING is not a guarded write.
    let r = a
        .simple_query("INSERT INTO invoice (id, total) VALUES (50, 9) ON CONFLICT DO NOTHING")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![0]);
    // Another session's upsert is a change this session's stale write sees.
    a.simple_query("SELECT * FROM invoice WHERE id = 50")
        .await
        .unwrap();
    let b = proxy.client(&db.name).await;
    b.simple_query(
        "INSERT INTO invoice (id, total) VALUES (50, 1) ON CONFLICT (id) DO UPDATE SET total = 3",
    )
    .await
    .unwrap();
    let err = a
        .simple_query("UPDATE invoice SET total = 4 WHERE id = 50")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001");
}

// Multi-threaded: psql runs as a blocking child process while the proxy serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_copy_and_mentions_pass_untouched() {
    let (db, proxy) = setup("sp_plain").await;
    let a = proxy.client(&db.name).await;
    let r = a
        .simple_query("INSERT INTO invoice (id, total) VALUES (100, 1), (101, 2)")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![2]);
    let r = a
        .simple_query("INSERT INTO invoice (id, total) VALUES (102, 1) RETURNING *")
        .await
        .unwrap();
    assert_eq!(
        rows(&r),
        vec![vec![
            Some("102".to_string()),
            Some("1".to_string()),
            Some("0".to_string())
        ]]
    );
    let n = a
        .execute(
            "INSERT INTO invoice (id, total, version) VALUES ($1, 1, 7)",
            &[&103i32],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(version(&db, "invoice", 100).await, Some(0));
    assert_eq!(
        version(&db, "invoice", 103).await,
        Some(7),
        "an explicit version is kept"
    );
    // COPY ... FROM STDIN through the proxy (psql's client-side copy).
    let port = proxy.addr.port().to_string();
    let mut child = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            &db.name,
            "-c",
            "COPY invoice (id, total) FROM STDIN",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"200\t5\n201\t6\n\\.\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(version(&db, "invoice", 200).await, Some(0));
    assert_eq!(version(&db, "invoice", 201).await, Some(0));
    // COPY TO works too.
    let (ok, out, err) = psql(
        &proxy,
        &db.name,
        "COPY (SELECT id, version FROM invoice WHERE id = 201) TO STDOUT",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "201\t0\n");
    // Reads that merely mention a guarded name and a write word pass unchanged.
    let r = a
        .simple_query("SELECT 'UPDATE invoice SET total = 0' AS s -- delete from invoice\n")
        .await
        .unwrap();
    assert_eq!(
        rows(&r),
        vec![vec![Some("UPDATE invoice SET total = 0".to_string())]]
    );
    let r = a
        .simple_query("/* update invoice set version = 0 */ SELECT count(*) FROM invoice WHERE total::text <> 'delete'")
        .await
        .unwrap();
    assert_eq!(rows(&r).len(), 1);
    let rs = a
        .query(
            "SELECT $1::text AS s, 'update \"Invoice\" set x = 1' AS t",
            &[&"DELETE FROM invoice"],
        )
        .await
        .unwrap();
    assert_eq!(rs[0].get::<_, String>(0), "DELETE FROM invoice");
    assert_eq!(rs[0].get::<_, String>(1), "update \"Invoice\" set x = 1");
    let r = a
        .simple_query("SELECT id FROM invoice WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![vec![Some("1".to_string())]]);
    // Nothing above changed a version.
    let n: i64 = db
        .direct()
        .await
        .query_one(
            "SELECT count(*) FROM invoice WHERE id <= 20 AND version <> 100",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn unicode_escaped_name_of_a_guarded_table_is_guarded() {
    let (db, proxy) = setup("sp_uescape").await;
    let a = proxy.client(&db.name).await;
    // U&"\0069nvoice" is `invoice`: guarded like any other spelling of it.
    a.simple_query(r#"SELECT id, version FROM U&"\0069nvoice" WHERE id = 1"#)
        .await
        .unwrap();
    let r = a
        .simple_query(r#"UPDATE U&"\0069nvoice" SET total = 0 WHERE id = 1"#)
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);
    assert_eq!(version(&db, "invoice", 1).await, Some(101), "bumped");
    // The session knows version 101; another session moves the row on: a conflict.
    other_session_changes(&db, "invoice", 1).await;
    let err = a
        .execute(
            r#"DELETE FROM U&"!0069nvoice" UESCAPE '!' WHERE id = $1"#,
            &[&1i32],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001", "{err:?}");
    assert_eq!(version(&db, "invoice", 1).await, Some(102));
    // A unicode-escaped name of an unguarded table passes.
    let r = a
        .simple_query(r#"UPDATE U&"\006Fther" SET amount = 0 WHERE id = 101"#)
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);
}
