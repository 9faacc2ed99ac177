//! Faults and cancellation through the relay: CancelRequest reaching the right backend, an
//! upstream that refuses connections or goes away mid-session and comes back, malformed and
//! oversize client messages, a client that never logs in, and a client that vanishes inside
//! a transaction (its backend must end and release its locks).

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::wire::{self, Raw};
use common::*;
use optlock::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

const PATIENCE: Duration = Duration::from_secs(20);

/// Waits until `sql` (a boolean query on `client`) is true, polling.
async fn wait_for(client: &tokio_postgres::Client, sql: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ok: bool = client.query_one(sql, &[]).await.unwrap().get(0);
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still false after {PATIENCE:?}: {sql}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn cancel_request_reaches_the_right_backend() {
    let db = TestDb::new("fault_cancel").await;
    let proxy = Proxy::plain().await;
    let direct = db.direct().await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    a.batch_execute("SET application_name = 'sleeper_a'")
        .await
        .unwrap();
    b.batch_execute("SET application_name = 'sleeper_b'")
        .await
        .unwrap();
    let token_a = a.cancel_token();
    let token_b = b.cancel_token();
    let qa = tokio::spawn(async move { a.simple_query("SELECT pg_sleep(30)").await.map(|_| a) });
    // Prepared first, so the statement is active only while it executes.
    let sleep_b = b.prepare("SELECT pg_sleep(30)").await.unwrap();
    let qb = tokio::spawn(async move { b.query(&sleep_b, &[]).await.map(|_| b) });
    let active = |name: &str| {
        format!(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = '{name}' \
             AND state = 'active' AND query LIKE '%pg_sleep%'"
        )
    };
    wait_for(&direct, &active("sleeper_a")).await;
    wait_for(&direct, &active("sleeper_b")).await;

    token_a.cancel_query(NoTls).await.unwrap();
    let e = tokio::time::timeout(PATIENCE, qa)
        .await
        .expect("cancelled query ends")
        .unwrap()
        .expect_err("cancelled query fails");
    assert_eq!(code(&e), "57014");
    // The other session's query was not touched.
    let still: bool = direct
        .query_one(&active("sleeper_b"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(still, "cancelling session a must not cancel session b");
    token_b.cancel_query(NoTls).await.unwrap();
    let e = tokio::time::timeout(PATIENCE, qb)
        .await
        .expect("cancelled query ends")
        .unwrap()
        .expect_err("cancelled query fails");
    assert_eq!(code(&e), "57014");

    // A cancelled session goes on working.
    let c = proxy.client(&db.name).await;
    let token = c.cancel_token();
    let sleep_c = c.prepare("SELECT pg_sleep(30)").await.unwrap();
    let q = c.query_one(&sleep_c, &[]);
    let cancel = async {
        wait_for(
            &direct,
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE state = 'active' \
             AND query = 'SELECT pg_sleep(30)' AND backend_type = 'client backend'",
        )
        .await;
        token.cancel_query(NoTls).await.unwrap();
    };
    let (r, ()) = tokio::join!(q, cancel);
    assert_eq!(code(&r.unwrap_err()), "57014");
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `CancelRequest`'s connection ends once the server has acted on it, as it does directly:
/// a client that waits for that end before its next statement (pgjdbc after a query timeout)
/// must not have the cancel land on that statement. Directly the signal reaches the idle
/// backend, which ignores it; had the proxy closed the cancel connection before the server
/// had the request, the cancel would arrive during the next `pg_sleep`.
#[tokio::test]
async fn cancel_connection_ends_once_the_server_acted_on_it() {
    let db = TestDb::new("fault_cancel_end").await;
    let proxy = Proxy::plain().await;
    for (target, addr) in [("direct", upstream()), ("optlock", proxy.addr.to_string())] {
        let (mut session, login) = Raw::login(&addr, "postgres", &db.name).await;
        let key = login
            .iter()
            .find(|m| m.tag == b'K')
            .expect("BackendKeyData")
            .body()
            .to_vec();
        for round in 0..5 {
            let mut cancel = Raw::connect(&addr).await;
            cancel.send(&wire::cancel_request(&key)).await;
            assert!(
                cancel.read_to_end().await.is_empty(),
                "{target}: a reply to a cancel"
            );
            session.send(&wire::query("SELECT pg_sleep(0.2)")).await;
            let replies = session.until_ready().await;
            assert!(
                !replies.iter().any(|r| matches!(r, wire::Reply::Error(..))),
                "{target}, round {round}: the cancel landed on the next statement: {replies:?}"
            );
        }
    }
}

#[tokio::test]
async fn refused_upstream_gives_a_clean_fatal_error() {
    let port = closed_port();
    let upstream = format!("127.0.0.1:{port}");
    let proxy = Proxy::start(Config {
        upstream: upstream.clone(),
        ..Config::default()
    })
    .await;
    for _ in 0..2 {
        let e = tokio_postgres::connect(&proxy.conninfo("postgres"), NoTls)
            .await
            .err()
            .expect("no upstream: login fails");
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("not a server error: {e}"));
        assert_eq!(db.severity(), "FATAL");
        assert_eq!(db.code().code(), "08006");
        assert!(
            db.message().contains(&upstream),
            "message names the upstream: {}",
            db.message()
        );
    }
    // psql reports it the same way (run off the runtime that serves the proxy).
    let port = proxy.addr.port().to_string();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        run(
            "psql",
            &[
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-c",
                "SELECT 1",
            ],
        )
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(err.contains(&upstream), "{err}");
    assert!(!proxy.task.is_finished(), "the proxy keeps running");
}

#[tokio::test]
async fn upstream_restart_mid_session() {
    let mut cluster = Cluster::start(&["host all all 127.0.0.1/32 trust"]);
    let proxy = Proxy::start(Config {
        upstream: cluster.addr(),
        ..Config::default()
    })
    .await;
    let idle = proxy.client("postgres").await;
    let busy = proxy.client("postgres").await;
    let one: i32 = idle.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let sleeping = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(30)").await });
    let watcher = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        cluster.port
    ))
    .await;
    wait_for(
        &watcher,
        "SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'",
    )
    .await;
    drop(watcher);

    cluster.stop();
    let r = tokio::time::timeout(PATIENCE, sleeping)
        .await
        .expect("the running query ends when the server stops")
        .unwrap();
    let e = r.expect_err("the running query fails");
    assert!(
        e.is_closed() || matches!(code(&e).as_str(), "57P01" | "08006"),
        "unexpected error: {e:?}"
    );
    let e = tokio::time::timeout(PATIENCE, idle.simple_query("SELECT 1"))
        .await
        .expect("no hang")
        .expect_err("the idle session lost its server");
    assert!(
        e.is_closed() || matches!(code(&e).as_str(), "57P01" | "08006"),
        "unexpected error: {e:?}"
    );
    // While the server is down: a clean 08006.
    let e = tokio_postgres::connect(&proxy.conninfo("postgres"), NoTls)
        .await
        .err()
        .expect("server down: login fails");
    assert_eq!(code(&e), "08006");

    cluster.start_again();
    let c = proxy.client("postgres").await;
    let two: i32 = c.query_one("SELECT 1 + 1", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);
}

/// What a raw client reads to the end after `bytes`, sent once logged in and after one
/// answered query, at `addr`.
async fn read_after(
    addr: &str,
    db: &str,
    bytes: &[u8],
) -> Vec<(u8, Option<String>, Option<String>)> {
    let (mut raw, _) = Raw::login(addr, "postgres", db).await;
    raw.send(&wire::query(b"SELECT 1")).await;
    raw.read_until(b'Z', 1).await;
    raw.send(bytes).await;
    raw.read_to_end()
        .await
        .iter()
        .map(|m| (m.tag, m.field(b'C'), m.field(b'M')))
        .collect()
}

#[tokio::test]
async fn frames_postgresql_ends_the_session_on_end_it_as_directly() {
    let db = TestDb::new("fault_malformed").await;
    db.direct()
        .await
        .batch_execute(&common::guards::invoice_table(1))
        .await
        .unwrap();
    let proxy = Proxy::with_guards(common::guards::INVOICE).await;
    let bystander = proxy.client(&db.name).await;
    let mut sync_too_long = vec![b'S'];
    sync_too_long.extend_from_slice(&20_004u32.to_be_bytes());
    sync_too_long.extend_from_slice(&[0; 64]);
    let mut guarded_with_more = wire::query(b"UPDATE invoice SET total = 0 WHERE id = 1");
    guarded_with_more.extend_from_slice(b"x");
    let len = (guarded_with_more.len() - 1) as u32;
    guarded_with_more[1..5].copy_from_slice(&len.to_be_bytes());
    let cases: [(&str, Vec<u8>); 5] = [
        ("a length below 4", vec![b'Q', 0, 0, 0, 2]),
        (
            "a type byte no client sends",
            [b"z".as_slice(), &wire::sync()].concat(),
        ),
        (
            "a short message claiming more than 10000 bytes",
            sync_too_long,
        ),
        // PostgreSQL refuses it before running it ("invalid message format") and goes on.
        (
            "a guarded Query with bytes after its text",
            [guarded_with_more, wire::terminate()].concat(),
        ),
        (
            "the same as the only message of a Parse",
            [
                wire::parse("", "UPDATE invoice SET total = 0 WHERE id = 1\0x", &[]),
                wire::sync(),
                wire::terminate(),
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let direct = read_after(&upstream(), &db.name, &bytes).await;
        let through = read_after(&proxy.addr.to_string(), &db.name, &bytes).await;
        assert_eq!(through, direct, "{what}");
    }
    let total: i32 = db
        .one("SELECT total::int FROM invoice WHERE id = 1", &[])
        .await;
    assert_ne!(total, 0, "nothing malformed ran");
    let two: i32 = bystander.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);
    // No server backend is left behind.
    let direct = db.direct().await;
    wait_for(
        &direct,
        "SELECT count(*) = 2 FROM pg_stat_activity WHERE datname = current_database()",
    )
    .await;
}

#[tokio::test]
async fn oversize_message_is_refused() {
    let db = TestDb::new("fault_oversize").await;
    let proxy = Proxy::start(Config {
        max_message_size: 1024,
        ..Config::default()
    })
    .await;
    let c = proxy.client(&db.name).await;
    let small = format!("SELECT '{}'", "a".repeat(900));
    assert_eq!(c.simple_query(&small).await.unwrap().len(), 3);
    let big = format!("SELECT '{}'", "b".repeat(4096));
    let e = c.simple_query(&big).await.unwrap_err();
    let db_err = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    assert_eq!(db_err.severity(), "FATAL");
    assert_eq!(db_err.code().code(), "08P01");
    assert!(
        db_err.message().contains("max_message_size"),
        "{}",
        db_err.message()
    );
    assert!(c.simple_query("SELECT 1").await.is_err(), "session ended");
    // Other sessions are fine.
    let c2 = proxy.client(&db.name).await;
    assert_eq!(c2.simple_query(&small).await.unwrap().len(), 3);
}

async fn expect_eof(s: &mut tokio::net::TcpStream) {
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Err(_) => panic!("the proxy did not close a silent client"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    // Whatever came before the end is at most an error message.
    assert!(
        got.is_empty() || got[0] == b'E',
        "unexpected bytes: {got:?}"
    );
}

#[tokio::test]
async fn silent_clients_are_dropped_after_client_login_timeout() {
    let proxy = Proxy::start(Config {
        client_login_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    let addr = proxy.addr.to_string();
    // Sends nothing at all.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Sends half a startup packet.
    let mut partial = tokio::net::TcpStream::connect(&addr).await.unwrap();
    partial.write_all(&[0, 0, 0, 40, 0, 3]).await.unwrap();
    // Asks for TLS, hears 'N', then says nothing.
    let mut ssl = tokio::net::TcpStream::connect(&addr).await.unwrap();
    ssl.write_all(&wire::ssl_request()).await.unwrap();
    let mut n = [0u8; 1];
    ssl.read_exact(&mut n).await.unwrap();
    assert_eq!(&n, b"N");
    expect_eof(&mut silent).await;
    expect_eof(&mut partial).await;
    expect_eof(&mut ssl).await;
    // A real client still logs in.
    let c = proxy.client("postgres").await;
    assert_eq!(c.simple_query("SELECT 1").await.unwrap().len(), 3);
}

#[tokio::test]
async fn vanished_client_releases_its_transaction() {
    let db = TestDb::new("fault_vanish").await;
    let proxy = Proxy::plain().await;
    let direct = db.direct().await;
    direct
        .batch_execute("CREATE TABLE t (id int primary key, v int); INSERT INTO t VALUES (1, 0)")
        .await
        .unwrap();
    let (client, conn) = tokio_postgres::connect(&proxy.conninfo(&db.name), NoTls)
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    client
        .batch_execute("BEGIN; UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    let locked: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state = 'idle in transaction'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(locked, 1);
    // The client disappears without a Terminate: its socket is simply closed.
    conn_task.abort();
    let _ = conn_task.await;
    drop(client);

    wait_for(
        &direct,
        "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid()",
    )
    .await;
    direct
        .batch_execute("SET lock_timeout = '10s'")
        .await
        .unwrap();
    assert_eq!(
        direct
            .execute("UPDATE t SET v = 2 WHERE id = 1", &[])
            .await
            .unwrap(),
        1
    );
    let v: i32 = direct
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2, "the vanished client's update was rolled back");
}

/// Sends `sql` and Terminate in one go and leaves at once, without reading any reply.
async fn fire_and_forget(addr: &str, db: &str, sql: &str) {
    let (mut raw, _) = Raw::login(addr, "postgres", db).await;
    let mut bytes = wire::query(sql.as_bytes());
    bytes.extend_from_slice(&wire::terminate());
    raw.send(&bytes).await;
    drop(raw);
}

#[tokio::test]
async fn last_statement_of_a_departing_client_still_runs() {
    let db = TestDb::new("fault_depart").await;
    let proxy = Proxy::plain().await;
    let direct = db.direct().await;
    direct
        .batch_execute("CREATE TABLE t (id int primary key, payload text)")
        .await
        .unwrap();
    let payload = "p".repeat(4 * 1024 * 1024);
    // Several clients at once, so the server reads slower than they write: directly, the
    // server reads each whole statement after its client left and runs it; through the proxy
    // it must too.
    for (first, addr) in [(1, upstream()), (25, proxy.addr.to_string())] {
        let sends = (first..first + 24).map(|id| {
            let (addr, db, payload) = (&addr, &db.name, &payload);
            async move {
                let sql = format!("INSERT INTO t VALUES ({id}, '{payload}')");
                fire_and_forget(addr, db, &sql).await
            }
        });
        futures_util::future::join_all(sends).await;
    }
    wait_for(
        &direct,
        "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid()",
    )
    .await;
    let ids: Vec<i32> = direct
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let direct_ids: Vec<i32> = ids.iter().copied().filter(|&id| id <= 24).collect();
    assert_eq!(
        direct_ids,
        (1..=24).collect::<Vec<i32>>(),
        "direct statements were lost"
    );
    assert_eq!(
        ids,
        (1..=48).collect::<Vec<i32>>(),
        "relayed statements were lost"
    );
}

#[tokio::test]
async fn shutdown_drains_open_transactions() {
    let db = TestDb::new("fault_drain").await;
    let proxy = Proxy::plain().await;
    let direct = db.direct().await;
    direct
        .batch_execute("CREATE TABLE t (id int primary key)")
        .await
        .unwrap();
    let (mut idle, _) = Raw::login(&proxy.addr.to_string(), "postgres", &db.name).await;
    let in_tx = proxy.client(&db.name).await;
    in_tx
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let busy = proxy.client(&db.name).await;
    busy.batch_execute("SET application_name = 'busy'")
        .await
        .unwrap();
    // One simple Query: an extended-protocol client would be idle between its Sync points.
    let running = tokio::spawn(async move {
        let r = busy
            .simple_query("SELECT pg_sleep(1)::text || 'done'")
            .await;
        let value = r.map(|msgs| {
            msgs.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                    _ => None,
                })
                .unwrap_or_default()
        });
        (value, busy)
    });
    wait_for(
        &direct,
        "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'busy' \
         AND state = 'active'",
    )
    .await;

    proxy.shutdown();
    // The idle session is closed at once with 57P01.
    let msgs = idle.read_to_end().await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("57P01"));
    assert_eq!(msgs[0].field(b'S').as_deref(), Some("FATAL"));
    // New clients are turned away.
    assert!(
        tokio_postgres::connect(&proxy.conninfo(&db.name), NoTls)
            .await
            .is_err()
    );
    // The running statement finishes and its answer is delivered.
    let (r, busy) = tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the running statement ends")
        .unwrap();
    assert_eq!(r.unwrap(), "done");
    // The open transaction goes on to its end.
    in_tx
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    in_tx.batch_execute("COMMIT").await.unwrap();
    let n: i64 = direct
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // Then both sessions are closed, and the proxy stops.
    for c in [&in_tx, &busy] {
        let e = tokio::time::timeout(PATIENCE, c.simple_query("SELECT 1"))
            .await
            .expect("no hang")
            .expect_err("closed after draining");
        assert!(e.is_closed() || code(&e) == "57P01", "{e:?}");
    }
    let task = proxy.task;
    let stopped = tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the proxy stops once drained");
    stopped.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_waits_for_an_unsynced_extended_batch() {
    let db = TestDb::new("fault_drain_batch").await;
    let proxy = Proxy::plain().await;
    let direct = db.direct().await;
    direct
        .batch_execute("CREATE TABLE t (id int primary key)")
        .await
        .unwrap();
    let (mut raw, _) = Raw::login(&proxy.addr.to_string(), "postgres", &db.name).await;
    // Parse, Bind, Execute and Flush: the INSERT ran inside the batch's implicit transaction,
    // which commits at Sync.
    let mut batch = wire::parse("", "INSERT INTO t VALUES (1)", &[]);
    batch.extend(wire::bind("", "", &[], &[]));
    batch.extend(wire::execute("", 0));
    batch.extend(wire::flush());
    raw.send(&batch).await;
    raw.read_until(b'C', 1).await;

    proxy.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    raw.send(&wire::sync()).await;
    let replies = raw.read_until(b'Z', 1).await;
    assert!(
        replies.iter().all(|m| m.tag != b'E'),
        "the batch was cut off: {replies:?}"
    );
    let n: i64 = direct
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the batch committed at its Sync");
    // Now idle: closed.
    let rest = raw.read_to_end().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].field(b'C').as_deref(), Some("57P01"));
}

/// A stand-in server (without TLS) that logs the client in, answers its first `Query` with `FATAL 57P01`
/// and then resets the connection (as a terminated backend's socket does when written to).
async fn fatal_then_reset(listener: tokio::net::TcpListener) {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    s.read_exact(&mut startup).await.unwrap();
    if startup == 80877103u32.to_be_bytes() {
        // An SSLRequest: this server has no TLS.
        s.write_all(b"N").await.unwrap();
        s.read_exact(&mut len).await.unwrap();
        startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut startup).await.unwrap();
    }
    let mut login = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
    login.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    s.write_all(&login).await.unwrap();
    let mut q = [0u8; 5];
    s.read_exact(&mut q).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(q[1..5].try_into().unwrap()) as usize - 4];
    s.read_exact(&mut body).await.unwrap();
    let fields =
        b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";
    let mut fatal = vec![b'E'];
    fatal.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    fatal.extend_from_slice(fields);
    s.write_all(&fatal).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SO_LINGER 0: the close is a reset, which is what this server does.
    #[allow(deprecated)]
    s.set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

#[tokio::test]
async fn a_reset_after_the_servers_fatal_adds_no_error_of_the_proxys() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(fatal_then_reset(listener));
    let proxy = Proxy::start(Config {
        upstream,
        ..Config::default()
    })
    .await;
    let mut raw = Raw::open(&proxy.addr.to_string(), "postgres").await;
    raw.send(&wire::query("SELECT 1")).await;
    let codes: Vec<String> = raw
        .read_to_end()
        .await
        .iter()
        .filter_map(|m| match m.reply() {
            Some(wire::Reply::Error(code, _)) => Some(code),
            _ => None,
        })
        .collect();
    assert_eq!(codes, ["57P01"], "the server's FATAL alone");
    server.await.unwrap();
}
