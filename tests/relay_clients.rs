//! Real clients through the relay: pgbench (initialisation with COPY, then select-only runs in
//! simple, extended and prepared mode, a read-write run and pipeline mode), psql's `\copy`
//! both ways, its cancel on SIGINT and its report of a session ended by the server, pg_dump
//! and a restore with psql, and 200 concurrent tokio-postgres sessions.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::Cluster;
use common::*;
use optlock::config::Config;

/// Runs a command off the runtime that serves the proxy.
async fn run_async(cmd: &'static str, args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(cmd, &args)
    })
    .await
    .unwrap()
}

fn target(proxy_or_port: u16, db: &str) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &proxy_or_port.to_string(),
        "-U",
        "postgres",
        "-d",
        db,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn args(head: &[&str], tail: &[String]) -> Vec<String> {
    head.iter()
        .map(|s| s.to_string())
        .chain(tail.iter().cloned())
        .collect()
}

#[tokio::test]
async fn pgbench_through_the_proxy() {
    let db = TestDb::new("clients_pgbench").await;
    let proxy = Proxy::plain().await;
    let to = target(proxy.addr.port(), &db.name);
    let (ok, out, err) = run_async("pgbench", args(&["-i", "-s", "1", "-q"], &to)).await;
    assert!(ok, "pgbench -i: {out}\n{err}");
    let direct = db.direct().await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100_000);

    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) = run_async(
            "pgbench",
            args(&["-S", "-T", "2", "-c", "4", "-j", "2", "-M", mode], &to),
        )
        .await;
        assert!(ok, "pgbench -M {mode}: {out}\n{err}");
        assert!(
            out.contains("number of failed transactions: 0"),
            "pgbench -M {mode}: {out}\n{err}"
        );
        assert!(
            !out.contains("number of transactions actually processed: 0/"),
            "pgbench -M {mode} did no work: {out}"
        );
    }
    // The default read-write script: transactions with updates, inserts and a select.
    let (ok, out, err) = run_async(
        "pgbench",
        args(&["-T", "2", "-c", "2", "-j", "2", "-M", "prepared"], &to),
    )
    .await;
    assert!(ok, "pgbench read-write: {out}\n{err}");
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    let history: i64 = direct
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert!(history > 0);
    // The balances stay consistent: every transaction was applied whole.
    let consistent: bool = direct
        .query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history) \
               AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(consistent);
}

#[tokio::test]
async fn psql_copy_in_and_out() {
    let db = TestDb::new("clients_copy").await;
    let proxy = Proxy::plain().await;
    db.direct()
        .await
        .batch_execute("CREATE TABLE t (id int primary key, name text, note text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let mut csv = String::new();
    for i in 0..5000 {
        // Written the way COPY writes CSV, so the file comes back byte for byte.
        let note = if i % 500 == 0 {
            "z".repeat(150_000)
        } else {
            format!("\"\"\"quoted, with comma\"\" and é {i}\"")
        };
        csv.push_str(&format!("{i},name {i},{note}\n"));
    }
    std::fs::write(&input, &csv).unwrap();
    let to = target(proxy.addr.port(), &db.name);
    let (ok, out, err) = run_async(
        "psql",
        args(
            &["-X", "-v", "ON_ERROR_STOP=1", "-c"],
            &[format!("\\copy t FROM '{}' (FORMAT csv)", input.display())],
        )
        .into_iter()
        .chain(to.clone())
        .collect(),
    )
    .await;
    assert!(ok, "\\copy in: {err}");
    assert_eq!(out.trim(), "COPY 5000");
    let (ok, _, err) = run_async(
        "psql",
        args(
            &["-X", "-v", "ON_ERROR_STOP=1", "-c"],
            &[format!(
                "\\copy (SELECT * FROM t ORDER BY id) TO '{}' (FORMAT csv)",
                output.display()
            )],
        )
        .into_iter()
        .chain(to.clone())
        .collect(),
    )
    .await;
    assert!(ok, "\\copy out: {err}");
    let back = std::fs::read_to_string(&output).unwrap();
    assert!(back == csv, "\\copy out differs from \\copy in");
    // A failing \copy reports the server's error and leaves nothing behind.
    std::fs::write(&input, "1,dup,x\n").unwrap();
    let (ok, _, err) = run_async(
        "psql",
        args(
            &["-X", "-v", "ON_ERROR_STOP=1", "-c"],
            &[format!("\\copy t FROM '{}' (FORMAT csv)", input.display())],
        )
        .into_iter()
        .chain(to)
        .collect(),
    )
    .await;
    assert!(!ok);
    assert!(err.contains("duplicate key value"), "{err}");
}

#[tokio::test]
async fn psql_reports_a_terminated_session_like_postgres() {
    let db = TestDb::new("clients_term").await;
    let proxy = Proxy::plain().await;
    let sql = "SELECT pg_terminate_backend(pg_backend_pid())".to_string();
    let dbname = format!("dbname={} sslmode=disable", db.name);
    // Plain on both legs: the shared server would otherwise negotiate TLS with psql.
    let head = ["-X", "-c"];
    let direct = run_async(
        "psql",
        args(&head, std::slice::from_ref(&sql))
            .into_iter()
            .chain(target(PG_PORT, &dbname))
            .collect(),
    )
    .await;
    let relayed = run_async(
        "psql",
        args(&head, &[sql])
            .into_iter()
            .chain(target(proxy.addr.port(), &dbname))
            .collect(),
    )
    .await;
    assert!(direct.2.contains("terminating connection"), "{direct:?}");
    assert_eq!(relayed, direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions() {
    const SESSIONS: usize = 200;
    // The shared server allows too few connections; a throwaway one allows enough.
    let cluster = Cluster::start_with(
        &["host all all 127.0.0.1/32 trust"],
        &["max_connections = 250"],
    );
    let proxy = Proxy::start(Config {
        upstream: cluster.addr(),
        ..Config::default()
    })
    .await;
    let watcher = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        cluster.port
    ))
    .await;
    watcher
        .batch_execute("CREATE TABLE hits (session int primary key, n int)")
        .await
        .unwrap();
    let connected = Arc::new(tokio::sync::Barrier::new(SESSIONS + 1));
    let done = Arc::new(tokio::sync::Barrier::new(SESSIONS + 1));
    let conninfo = proxy.conninfo("postgres");
    let mut tasks = Vec::new();
    for i in 0..SESSIONS as i32 {
        let (connected, done, conninfo) = (connected.clone(), done.clone(), conninfo.clone());
        tasks.push(tokio::spawn(async move {
            let c = connect(&conninfo).await;
            connected.wait().await;
            let v: i32 = c
                .query_one("SELECT $1::int * 2", &[&i])
                .await
                .unwrap()
                .get(0);
            assert_eq!(v, i * 2);
            c.execute("INSERT INTO hits VALUES ($1, 1)", &[&i])
                .await
                .unwrap();
            c.batch_execute(&format!(
                "BEGIN; UPDATE hits SET n = n + 1 WHERE session = {i}; COMMIT"
            ))
            .await
            .unwrap();
            let n: i32 = c
                .query_one("SELECT n FROM hits WHERE session = $1", &[&i])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 2);
            done.wait().await;
        }));
    }
    let all = async {
        connected.wait().await;
        let open: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(open > SESSIONS as i64, "{open} backends open at once");
        done.wait().await;
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(90), all)
        .await
        .expect("200 sessions finish");
    let total: i64 = watcher
        .query_one("SELECT sum(n) FROM hits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 2 * SESSIONS as i64);
}

#[tokio::test]
async fn pgbench_pipeline_mode() {
    let db = TestDb::new("clients_pipeline").await;
    let proxy = Proxy::plain().await;
    db.direct()
        .await
        .batch_execute("CREATE TABLE p (id int primary key, n int); INSERT INTO p SELECT g, 0 FROM generate_series(1, 100) g")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("pipeline.sql");
    let mut text = String::from("\\set id random(1, 100)\n\\startpipeline\n");
    for _ in 0..20 {
        text.push_str("SELECT n FROM p WHERE id = :id;\n");
        text.push_str("UPDATE p SET n = n + 1 WHERE id = :id;\n");
    }
    text.push_str("\\endpipeline\n");
    std::fs::write(&script, text).unwrap();
    let to = target(proxy.addr.port(), &db.name);
    for mode in ["extended", "prepared"] {
        let (ok, out, err) = run_async(
            "pgbench",
            args(
                &["-n", "-t", "50", "-c", "2", "-M", mode, "-f"],
                &[script.display().to_string()],
            )
            .into_iter()
            .chain(to.clone())
            .collect(),
        )
        .await;
        assert!(ok, "pgbench pipeline -M {mode}: {out}\n{err}");
        assert!(out.contains("number of failed transactions: 0"), "{out}");
    }
    let total: i64 = db
        .direct()
        .await
        .query_one("SELECT sum(n) FROM p", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 2 * 2 * 50 * 20);
}

#[tokio::test]
async fn psql_cancels_on_interrupt() {
    let db = TestDb::new("clients_cancel").await;
    let proxy = Proxy::plain().await;
    // psql gets SIGINT after a second and sends a CancelRequest through the proxy.
    let mut a = vec![
        "-s".to_string(),
        "INT".to_string(),
        "1".to_string(),
        "psql".to_string(),
        "-X".to_string(),
        "-c".to_string(),
        "SELECT pg_sleep(30)".to_string(),
    ];
    a.extend(target(proxy.addr.port(), &db.name));
    let (ok, _, err) = run_async("timeout", a).await;
    assert!(!ok);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
}

#[tokio::test]
async fn pg_dump_and_restore_through_the_proxy() {
    let source = TestDb::new("clients_dump_src").await;
    let target_db = TestDb::new("clients_dump_dst").await;
    let proxy = Proxy::plain().await;
    source
        .direct()
        .await
        .batch_execute(
            "CREATE TABLE a (id int primary key, t text, b bytea, j jsonb); \
             INSERT INTO a SELECT g, 'row ' || g, decode(md5(g::text), 'hex'), \
                 jsonb_build_object('g', g) FROM generate_series(1, 5000) g; \
             CREATE VIEW v AS SELECT id FROM a WHERE id % 2 = 0; \
             CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql AS 'SELECT x + 1';",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump.sql");
    let (ok, _, err) = run_async(
        "pg_dump",
        args(
            &["-f", dump.to_str().unwrap()],
            &target(proxy.addr.port(), &source.name),
        ),
    )
    .await;
    assert!(ok, "pg_dump: {err}");
    let (ok, _, err) = run_async(
        "psql",
        args(
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                dump.to_str().unwrap(),
            ],
            &target(proxy.addr.port(), &target_db.name),
        ),
    )
    .await;
    assert!(ok, "restore: {err}");
    let check = "SELECT md5(string_agg(a::text, ',' ORDER BY id)) || (SELECT count(*) FROM v) || f(1) FROM a";
    let src: String = source
        .direct()
        .await
        .query_one(check, &[])
        .await
        .unwrap()
        .get(0);
    let dst: String = target_db
        .direct()
        .await
        .query_one(check, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dst, src);
}
