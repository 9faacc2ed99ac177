//! The `optlock serve` process under operation: SIGHUP reloads guards into sessions that stay
//! open, a broken file is refused with file and line while the old guards keep working, and
//! SIGTERM drains (idle sessions closed with 57P01, open transactions may still commit, exit 0).

mod common;

use std::time::{Duration, Instant};

use common::binary::{ConfigFile, PATIENCE, Running};
use common::guards::{INVOICE, invoice_db};
use common::{TestDb, http_get, upstream};
use tokio_postgres::{Client, NoTls};

/// `public.audit` guarded by `xmin`, beside the invoice guard.
const AUDIT: &str = r#"
[[guard]]
table = "public.audit"
key = ["id"]
version = "xmin"
"#;

fn base() -> String {
    format!(
        "upstream = \"{}\"\nadmin_users = [\"postgres\"]\nshutdown_timeout = 120\n",
        upstream()
    )
}

/// A database of the test's own with the invoice table (rows 1 to 5) and `audit`.
async fn setup(prefix: &str) -> TestDb {
    invoice_db(
        prefix,
        5,
        "CREATE TABLE audit (id int primary key, note text);",
    )
    .await
}

/// A client whose connection's end (error or not) can be awaited.
struct Conn {
    client: Client,
    ended: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

async fn open(conninfo: &str) -> Conn {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"));
    let ended = tokio::spawn(conn);
    Conn { client, ended }
}

/// The body of `GET /metrics`.
async fn metrics(port: u16) -> String {
    let (head, body) = http_get(([127, 0, 0, 1], port).into(), "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\r\n\r\n{body}");
    body
}

/// Polls the console until `SHOW GUARDS` lists exactly `tables`.
fn wait_for_guards(proc: &Running, tables: &[&str]) {
    let start = Instant::now();
    loop {
        let (ok, out, err) = proc.psql("optlock", "SHOW GUARDS");
        let listed: Vec<&str> = out.lines().filter_map(|l| l.split('|').next()).collect();
        if ok && listed == tables {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "SHOW GUARDS never listed {tables:?}: {out}{err}\n{}",
            proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `a` reads row `id`, `b` changes it, then `a` writes it: the result of `a`'s write.
async fn read_change_write(
    a: &Client,
    b: &Client,
    id: i32,
) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error> {
    a.simple_query(&format!("SELECT id, version FROM invoice WHERE id = {id}"))
        .await
        .unwrap();
    b.simple_query(&format!(
        "UPDATE invoice SET total = total + 1 WHERE id = {id}"
    ))
    .await
    .unwrap();
    a.simple_query(&format!("UPDATE invoice SET total = 99 WHERE id = {id}"))
        .await
}

fn assert_conflict(
    r: Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
    what: &str,
) {
    match r {
        Ok(_) => panic!("{what}: the write went through, no conflict"),
        Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{what}: {e}"),
    }
}

/// Reload into open sessions, for a session that already had guards when it started and for
/// one that had none.
async fn reload_reaches_open_sessions(initial_guards: &str, prefix: &str) {
    let db = setup(prefix).await;
    let file = ConfigFile::new(&format!("{}{initial_guards}", base()));
    let mut proc = Running::serve(&file.path, &[]);
    proc.wait_ready();
    let a = open(&format!(
        "{} application_name=till-a",
        proc.conninfo(&db.name)
    ))
    .await;
    let b = open(&proc.conninfo(&db.name)).await;
    // Unguarded: the lost update goes through.
    read_change_write(&a.client, &b.client, 1).await.unwrap();
    // Statements prepared before the reload: in the protocol, and with SQL PREPARE.
    let write = a
        .client
        .prepare("UPDATE invoice SET total = total + 1 WHERE id = $1")
        .await
        .unwrap();
    a.client
        .batch_execute("PREPARE bump AS UPDATE invoice SET total = total + 1 WHERE id = 5")
        .await
        .unwrap();

    file.rewrite(&format!("{}{initial_guards}{INVOICE}", base()));
    let mark = proc.stderr().len();
    proc.signal("HUP");
    proc.wait_for_log("reloaded", mark);
    let mut expected = vec![];
    if !initial_guards.is_empty() {
        expected.push("public.audit");
    }
    expected.push("public.invoice");
    wait_for_guards(&proc, &expected);

    // The same open sessions, not reconnected: the guard applies to their next statements.
    assert_conflict(
        read_change_write(&a.client, &b.client, 2).await,
        "read-then-write in a session opened before the reload",
    );

    // A statement prepared before the reload is guarded from its next use on, through the
    // client's own handle.
    let read4 = "SELECT id, version FROM invoice WHERE id = 4";
    a.client.simple_query(read4).await.unwrap();
    b.client
        .simple_query("UPDATE invoice SET total = total + 1 WHERE id = 4")
        .await
        .unwrap();
    let e = a
        .client
        .execute(&write, &[&4i32])
        .await
        .expect_err("a stale write by a statement prepared before the reload");
    assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{e}");
    a.client.simple_query(read4).await.unwrap();
    assert_eq!(a.client.execute(&write, &[&4i32]).await.unwrap(), 1);
    // One made with PREPARE cannot be rewritten: it is gone rather than unguarded.
    let e = a
        .client
        .batch_execute("EXECUTE bump")
        .await
        .expect_err("EXECUTE of a statement deallocated at the reload");
    assert_eq!(e.code().map(|c| c.code()), Some("26000"), "{e}");

    // The conflict is one log line saying what, where and who.
    proc.wait_for_log("optimistic lock conflict", 0);
    let log = proc.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("optimistic lock conflict"))
        .unwrap_or_else(|| panic!("no conflict line:\n{log}"));
    for part in [
        "table=public.invoice",
        "key=(id)=(2)",
        "expected=0",
        "found=1",
        "client=127.0.0.1:",
        "user=postgres",
        "application_name=till-a",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }

    // A broken file: refused with file and line, the running guards stay.
    file.rewrite(&format!(
        "{}{INVOICE}[[guard]]\ntable = \"public.audit\"\nkey = []\n",
        base()
    ));
    let key_line = std::fs::read_to_string(&file.path)
        .unwrap()
        .lines()
        .position(|l| l == "key = []")
        .unwrap()
        + 1;
    let mark = proc.stderr().len();
    proc.signal("HUP");
    proc.wait_for_log("reload failed", mark);
    let log = proc.stderr()[mark..].to_string();
    let at = format!("{}:{key_line}:", file.path.display());
    assert!(
        log.contains(&at),
        "the log names file and line ({at}):\n{log}"
    );
    assert!(log.contains("key must name at least one column"), "{log}");
    wait_for_guards(&proc, &expected);
    assert_conflict(
        read_change_write(&a.client, &b.client, 3).await,
        "the guards in force before the broken reload",
    );

    // RELOAD from the console reports the same error.
    let (ok, _, err) = proc.psql("optlock", "RELOAD");
    assert!(!ok);
    assert!(
        err.contains(&at),
        "RELOAD names file and line ({at}): {err}"
    );
    assert!(err.contains("F0000"), "{err}");

    // Both sessions lived through all of it.
    assert!(!a.ended.is_finished() && !b.ended.is_finished());
    a.client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn sighup_adds_a_guard_to_sessions_that_already_had_guards() {
    reload_reaches_open_sessions(AUDIT, "hup_some").await;
}

#[tokio::test]
async fn sighup_adds_the_first_guard_to_open_sessions() {
    reload_reaches_open_sessions("", "hup_none").await;
}

#[tokio::test]
async fn sigterm_drains_sessions_then_exits_zero() {
    let db = setup("drain").await;
    let metrics_port = common::free_port();
    let file = ConfigFile::new(&format!(
        "{}metrics_listen = \"127.0.0.1:{metrics_port}\"\n{INVOICE}",
        base()
    ));
    let mut proc = Running::serve(&file.path, &[]);
    proc.wait_ready();
    let idle = open(&proc.conninfo(&db.name)).await;
    let busy = open(&proc.conninfo(&db.name)).await;
    let console = open(&proc.conninfo("optlock")).await;
    idle.client.simple_query("SELECT 1").await.unwrap();
    console.client.simple_query("SHOW SESSIONS").await.unwrap();
    busy.client
        .batch_execute("BEGIN; UPDATE invoice SET total = 42 WHERE id = 1")
        .await
        .unwrap();

    proc.signal("TERM");
    // The idle session is told why and closed.
    let end = tokio::time::timeout(PATIENCE, idle.ended)
        .await
        .expect("the idle session is closed")
        .unwrap();
    let err = end.expect_err("closed with an error");
    assert_eq!(err.code().map(|c| c.code()), Some("57P01"), "{err}");
    // So is an admin console: it holds no transaction.
    let end = tokio::time::timeout(PATIENCE, console.ended)
        .await
        .expect("the console is closed")
        .unwrap();
    let err = end.expect_err("closed with an error");
    assert_eq!(err.code().map(|c| c.code()), Some("57P01"), "{err}");
    // No new session gets to work once draining: refused, or closed right after its login.
    if let Ok((late, conn)) = tokio_postgres::connect(&proc.conninfo(&db.name), NoTls).await {
        let end = tokio::time::timeout(PATIENCE, conn).await.expect("closed");
        let err = end.expect_err("closed with an error");
        assert_eq!(err.code().map(|c| c.code()), Some("57P01"), "{err}");
        drop(late);
    }

    // /metrics still answers while draining, down to the one session left.
    let start = Instant::now();
    loop {
        let body = metrics(metrics_port).await;
        if body.lines().any(|l| l == "optlock_sessions_active 1") {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The open transaction finishes its work and commits.
    busy.client
        .simple_query("UPDATE invoice SET total = total + 1 WHERE id = 2")
        .await
        .unwrap();
    busy.client.batch_execute("COMMIT").await.unwrap();
    let end = tokio::time::timeout(PATIENCE, busy.ended)
        .await
        .expect("the session is closed after its transaction")
        .unwrap();
    let err = end.expect_err("closed with an error");
    assert_eq!(err.code().map(|c| c.code()), Some("57P01"), "{err}");

    let status = proc.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", proc.stderr());
    let log = proc.stderr();
    assert!(log.contains("optlock stopped"), "{log}");
    assert!(!log.contains("shutdown_timeout reached"), "{log}");

    let direct = db.direct().await;
    let totals: Vec<String> = direct
        .simple_query("SELECT total::text FROM invoice WHERE id IN (1, 2) ORDER BY id")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(totals, ["42", "11"], "the drained transaction committed");
}

#[tokio::test]
async fn sigterm_closes_a_transaction_left_open_after_shutdown_timeout() {
    let db = setup("drain_to").await;
    let file = ConfigFile::new(&format!(
        "upstream = \"{}\"\nshutdown_timeout = 1\n{INVOICE}",
        upstream()
    ));
    let mut proc = Running::serve(&file.path, &[]);
    proc.wait_ready();
    let stuck = open(&proc.conninfo(&db.name)).await;
    stuck
        .client
        .batch_execute("BEGIN; UPDATE invoice SET total = 7 WHERE id = 1")
        .await
        .unwrap();
    proc.signal("TERM");
    let status = proc.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", proc.stderr());
    assert!(
        proc.stderr().contains("shutdown_timeout reached"),
        "{}",
        proc.stderr()
    );
    let _ = tokio::time::timeout(PATIENCE, stuck.ended).await;
    // The transaction never committed.
    let direct = db.direct().await;
    let start = Instant::now();
    loop {
        let total: String = direct
            .simple_query("SELECT total::text FROM invoice WHERE id = 1")
            .await
            .unwrap()
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
                _ => None,
            })
            .unwrap();
        assert_eq!(total, "10");
        // The server notices the closed connection a little later; wait for its backend to go.
        let left: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "the upstream backend stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sighup_keeps_the_versions_sessions_read_before_it() {
    let db = setup("hup_keep").await;
    let file = ConfigFile::new(&format!("{}{INVOICE}", base()));
    let mut proc = Running::serve(&file.path, &[]);
    proc.wait_ready();
    let a = open(&proc.conninfo(&db.name)).await;
    let b = open(&proc.conninfo(&db.name)).await;
    // A loads the row (a form opened before the reload)...
    a.client
        .simple_query("SELECT id, version FROM invoice WHERE id = 1")
        .await
        .unwrap();
    // ...the DBA reloads an unchanged file...
    let mark = proc.stderr().len();
    proc.signal("HUP");
    proc.wait_for_log("reloaded", mark);
    // ...B changes the row, and A's save must still conflict.
    b.client
        .simple_query("UPDATE invoice SET total = total + 1 WHERE id = 1")
        .await
        .unwrap();
    assert_conflict(
        a.client
            .simple_query("UPDATE invoice SET total = 99 WHERE id = 1")
            .await,
        "a write whose read came before a reload of the same guards",
    );
}

/// A statement prepared (rewritten) under a guard that a reload keeps goes on working: it is
/// prepared again from the client's own text, not from the server's rewritten one.
#[tokio::test]
async fn sighup_keeps_statements_prepared_under_the_same_guard_working() {
    let db = setup("hup_same_stmt").await;
    let file = ConfigFile::new(&format!("{}{INVOICE}", base()));
    let mut proc = Running::serve(&file.path, &[]);
    proc.wait_ready();
    let a = open(&proc.conninfo(&db.name)).await;
    let write = a
        .client
        .prepare("UPDATE invoice SET total = total + 1 WHERE id = $1 RETURNING total")
        .await
        .unwrap();
    a.client
        .simple_query("SELECT id, version FROM invoice WHERE id = 3")
        .await
        .unwrap();
    assert_eq!(a.client.query(&write, &[&3i32]).await.unwrap().len(), 1);
    file.rewrite(&format!("{}{INVOICE}{AUDIT}", base()));
    let mark = proc.stderr().len();
    proc.signal("HUP");
    proc.wait_for_log("reloaded", mark);
    wait_for_guards(&proc, &["public.invoice", "public.audit"]);
    for _ in 0..2 {
        let rows = a.client.query(&write, &[&3i32]).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].len(), 1, "the client's own columns only");
    }
    let b = open(&proc.conninfo(&db.name)).await;
    b.client
        .simple_query("UPDATE invoice SET total = 0 WHERE id = 3")
        .await
        .unwrap();
    let e = a
        .client
        .query(&write, &[&3i32])
        .await
        .expect_err("the statement is still guarded after the reload");
    assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{e}");
}

/// An unnamed guarded write kept prepared by the proxy (sent again and again, as libpq's
/// `PQexecParams` does) goes on working across a reload and is guarded under the new guards:
/// the kept statement is closed and another is prepared under them.
#[tokio::test]
async fn sighup_prepares_kept_unnamed_writes_again() {
    let db = setup("hup_kept").await;
    let file = ConfigFile::new(&format!("{}{INVOICE}", base()));
    let mut proc = Running::serve(&file.path, &[]);
    proc.wait_ready();
    let a = open(&proc.conninfo(&db.name)).await;
    let b = open(&proc.conninfo(&db.name)).await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    let int4 = tokio_postgres::types::Type::INT4;
    let kept = "SELECT coalesce(array_agg(name::text), '{}') FROM pg_prepared_statements \
                WHERE name LIKE 'optlock\\_full\\_%'";
    let kept_names =
        async |c: &Client| -> Vec<String> { c.query_one(kept, &[]).await.unwrap().get(0) };
    // A row the session read: its writes check the version, go in full, and are kept.
    let read_then_write = async |c: &Client| {
        c.simple_query("SELECT id, version FROM invoice WHERE id = 3")
            .await
            .unwrap();
        for _ in 0..3 {
            c.query_typed(write, &[(&3i32, int4.clone())])
                .await
                .unwrap();
        }
    };
    read_then_write(&a.client).await;
    let before = kept_names(&a.client).await;
    assert_eq!(before.len(), 1, "the write is kept prepared: {before:?}");
    file.rewrite(&format!("{}{INVOICE}{AUDIT}", base()));
    let mark = proc.stderr().len();
    proc.signal("HUP");
    proc.wait_for_log("reloaded", mark);
    wait_for_guards(&proc, &["public.invoice", "public.audit"]);
    // The session picks the reload up, resolves the new guards and reads the row again.
    a.client.simple_query("SELECT 1").await.unwrap();
    read_then_write(&a.client).await;
    let after = kept_names(&a.client).await;
    assert!(
        after.len() == 1 && after != before,
        "the old one closed, a new one kept: {before:?} then {after:?}"
    );
    let version: i64 = b
        .client
        .query_one("SELECT version FROM invoice WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 6, "every write bumped");
    a.client
        .simple_query("SELECT id, version FROM invoice WHERE id = 3")
        .await
        .unwrap();
    b.client
        .simple_query("UPDATE invoice SET total = 0 WHERE id = 3")
        .await
        .unwrap();
    let e = a
        .client
        .query_typed(write, &[(&3i32, int4.clone())])
        .await
        .expect_err("a stale write through the kept statement");
    assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{e}");
}

/// A write bound before a reload that reorders the guards runs after it: its `Execute` and its
/// conflict are counted under its own table, not under the guard now at its old position.
#[tokio::test]
async fn writes_bound_before_a_reload_are_counted_under_their_own_table() {
    let db = setup("hup_count").await;
    let metrics_port = common::free_port();
    let config = |guards: &str| {
        format!(
            "{}metrics_listen = \"127.0.0.1:{metrics_port}\"\n{guards}",
            base()
        )
    };
    let file = ConfigFile::new(&config(&format!("{INVOICE}{AUDIT}")));
    let mut proc = Running::serve(&file.path, &[]);
    proc.wait_ready();
    let count = async |table: &str, outcome: &str| -> u64 {
        let series =
            format!("optlock_guarded_writes_total{{table=\"{table}\",outcome=\"{outcome}\"}} ");
        let body = metrics(metrics_port).await;
        body.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .unwrap_or_else(|| panic!("no {series} in {body}"))
            .parse()
            .unwrap()
    };
    let mut a = open(&proc.conninfo(&db.name)).await;
    // Rows the session read: its writes of them check the version, counted at `Execute`.
    a.client
        .simple_query("SELECT id, version FROM invoice WHERE id IN (3, 4)")
        .await
        .unwrap();
    let write = a
        .client
        .prepare("UPDATE invoice SET total = total + 1 WHERE id = $1")
        .await
        .unwrap();
    let tx = a.client.transaction().await.unwrap();
    let ok = tx.bind(&write, &[&3i32]).await.unwrap();
    let stale = tx.bind(&write, &[&4i32]).await.unwrap();
    let rewritten = count("public.invoice", "rewritten").await;
    assert_eq!(count("public.invoice", "conflict").await, 0);

    file.rewrite(&config(&format!("{AUDIT}{INVOICE}")));
    let mark = proc.stderr().len();
    proc.signal("HUP");
    proc.wait_for_log("reloaded", mark);
    wait_for_guards(&proc, &["public.audit", "public.invoice"]);
    // Changed behind the proxy's back (a write through it would count too).
    db.direct()
        .await
        .simple_query("UPDATE invoice SET total = 0, version = version + 1 WHERE id = 4")
        .await
        .unwrap();
    tx.query_portal(&ok, 0).await.unwrap();
    let e = tx
        .query_portal(&stale, 0)
        .await
        .expect_err("row 4 changed since the session read it");
    assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{e}");
    drop(tx);
    assert_eq!(count("public.invoice", "rewritten").await, rewritten + 2);
    assert_eq!(count("public.invoice", "conflict").await, 1);
    for outcome in ["rewritten", "conflict"] {
        assert_eq!(count("public.audit", outcome).await, 0, "{outcome}");
    }
}
