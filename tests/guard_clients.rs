//! Real clients through the guard: psql shows a conflict with its DETAIL and HINT lines, and
//! pgbench runs a read-modify-write script on a few hot rows in `-M simple`, `extended` and
//! `prepared`, retrying conflicts (`--max-tries`) with no failed transaction and no lost
//! update.

mod common;
use common::*;

const GUARD: &str = r#"
[[guard]]
table = "public.acct"
key = ["id"]
"#;

async fn setup(db: &TestDb) {
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE acct (id int primary key, balance int not null default 0, version bigint not null default 0);
             INSERT INTO acct (id) SELECT g FROM generate_series(1, 3) g;",
        )
        .await
        .unwrap();
}

// Multi-threaded: psql runs as a blocking child process while the proxy serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_the_conflict_with_detail_and_hint() {
    let db = TestDb::new("c_psql").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(GUARD).await;
    let port = proxy.addr.port().to_string();
    let (uh, up) = split_addr(&upstream());
    // One psql session reads, another session (a psql straight to the server, run from this
    // psql with \!) changes the row, then the first writes.
    let other = format!(
        "\\! psql -X -q -h {uh} -p {up} -U postgres -d {} -c 'UPDATE acct SET balance = 5, version = version + 1 WHERE id = 1'",
        db.name
    );
    let (ok, out, err) = run(
        "psql",
        &[
            "-X",
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
            "SELECT id, balance, version FROM acct WHERE id = 1",
            "-c",
            &other,
            "-c",
            "UPDATE acct SET balance = 7 WHERE id = 1",
        ],
    );
    assert!(!ok, "psql must fail: {out}");
    assert!(
        err.contains("ERROR:  optimistic lock conflict on public.acct (id)=(1)\n"),
        "{err}"
    );
    assert!(
        err.contains(
            "DETAIL:  the row was changed by another transaction: expected version 0, found 1\n"
        ),
        "{err}"
    );
    assert!(
        err.contains("HINT:  reload the row and apply the change again"),
        "{err}"
    );
    assert!(!err.contains("CONTEXT:"), "no PL/pgSQL context: {err}");
    // Re-read and write: clean.
    let (ok, out, err) = run(
        "psql",
        &[
            "-X",
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
            "SELECT id, balance, version FROM acct WHERE id = 1",
            "-c",
            "UPDATE acct SET balance = 7 WHERE id = 1",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.ends_with("UPDATE 1\n"), "{out}");
    // A pinned stale version in a multi-statement text: the text stops at the conflict.
    let (ok, _, err) = run(
        "psql",
        &[
            "-X",
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
            "UPDATE acct SET balance = 0 WHERE id = 2 AND version = 5; SELECT 'not reached'",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("ERROR:  optimistic lock conflict on public.acct (id)=(2)"),
        "{err}"
    );
    assert!(
        err.contains(
            "DETAIL:  the row was changed by another transaction: expected version 5, found 0"
        ),
        "{err}"
    );
}

/// Runs pgbench in `mode` and returns (processed, failed, retried).
fn pgbench(proxy: &Proxy, db: &str, mode: &str, script: &std::path::Path) -> (u64, u64, u64) {
    let port = proxy.addr.port().to_string();
    let (ok, out, err) = run(
        "pgbench",
        &[
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-M",
            mode,
            "-c",
            "4",
            "-j",
            "4",
            "-T",
            "5",
            "--max-tries=1000",
            "--failures-detailed",
            "-f",
            script.to_str().unwrap(),
            db,
        ],
    );
    assert!(ok, "pgbench -M {mode}: {out}\n{err}");
    let number = |prefix: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| {
                rest.trim()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .unwrap_or_else(|| panic!("no {prefix:?} in pgbench output:\n{out}\n{err}"))
    };
    let processed = number("number of transactions actually processed:");
    let failed = number("number of failed transactions:");
    let retried = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions retried:"))
        .map_or(0, |rest| {
            rest.trim()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        });
    (processed, failed, retried)
}

/// 4 clients, 5 s, 3 hot rows: every conflict is retried, none fails, no increment is lost.
async fn pgbench_read_modify_write(mode: &str) {
    let db = TestDb::new(&format!("c_pgb_{mode}")).await;
    setup(&db).await;
    let proxy = Proxy::with_guards(GUARD).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("rmw.sql");
    // The application computes the new balance from what it read: without the guard,
    // concurrent clients overwrite each other's increments.
    std::fs::write(
        &script,
        "\\set id random(1, 3)\n\
         SELECT id, balance, version FROM acct WHERE id = :id \\gset\n\
         UPDATE acct SET balance = :balance + 1 WHERE id = :id;\n",
    )
    .unwrap();
    let (processed, failed, retried) = pgbench(&proxy, &db.name, mode, &script);
    eprintln!("pgbench -M {mode}: {processed} processed, {retried} retried, {failed} failed");
    assert_eq!(failed, 0, "-M {mode}: no transaction fails");
    assert!(processed > 0, "-M {mode}");
    let sum: i64 = db
        .direct()
        .await
        .query_one("SELECT sum(balance)::int8 FROM acct", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        sum as u64, processed,
        "-M {mode}: every processed transaction's increment is there"
    );
}

// Multi-threaded: pgbench runs as a blocking child process while the proxy serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgbench_simple_loses_no_update() {
    pgbench_read_modify_write("simple").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgbench_extended_loses_no_update() {
    pgbench_read_modify_write("extended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgbench_prepared_loses_no_update() {
    pgbench_read_modify_write("prepared").await;
}
