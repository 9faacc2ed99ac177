//! Session pooling (`pool_mode = "session"`, `auth_type = "trust"`) against the shared server:
//! a second client gets the first one's server connection, reset (its `SET`, prepared
//! statement, temporary table and `LISTEN` gone), with guard state of its own; a pooled
//! connection the server terminated is replaced; a full pool makes clients wait, then refuses
//! them after `query_wait_timeout`; `max_client_conn`; `SHOW POOLS`; a connection reused by a
//! client on another session thread moves to that thread's reactor and serves it.

mod common;

use common::guards::{INVOICE, bump_version, invoice_db, version_of};
use common::*;
use optlock::config::Config;
use tokio_postgres::Client;

/// A pooled proxy (`default_pool_size = 1` unless `extra` says otherwise).
async fn pooled(db_setup: &str, extra: &str) -> Proxy {
    let extra = if extra.contains("default_pool_size") {
        extra.to_string()
    } else {
        format!("default_pool_size = 1\n{extra}")
    };
    let toml = format!("pool_mode = \"session\"\nauth_type = \"trust\"\n{extra}\n{db_setup}");
    Proxy::start(Config::parse(&toml, "test.toml").expect("test config")).await
}

async fn pid(c: &Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Drops a client and waits until its server connection is idle in the pool again.
async fn leave(proxy: &Proxy, c: Client) {
    drop(c);
    wait_idle(proxy, 1).await;
}

/// Waits (without a deadline of its own: the test's) until `n` server connections are idle.
async fn wait_idle(proxy: &Proxy, n: usize) {
    loop {
        let idle: usize = proxy.shared.pools.rows().iter().map(|r| r.sv_idle).sum();
        if idle >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_reuses_the_connection_reset() {
    let db = TestDb::new("pool_reuse").await;
    let proxy = pooled("", "").await;
    let a = proxy.client(&db.name).await;
    let first = pid(&a).await;
    a.batch_execute(
        "SET work_mem = '7MB'; PREPARE held AS SELECT 1; \
         CREATE TEMP TABLE scratch (x int); LISTEN somewhere",
    )
    .await
    .unwrap();
    leave(&proxy, a).await;

    let b = proxy.client(&db.name).await;
    assert_eq!(
        pid(&b).await,
        first,
        "the pooled server connection is reused"
    );
    let row = b
        .query_one(
            "SELECT current_setting('work_mem'), \
                    (SELECT count(*) FROM pg_prepared_statements WHERE name = 'held'), \
                    to_regclass('pg_temp.scratch') IS NULL, \
                    (SELECT count(*) FROM pg_listening_channels())",
            &[],
        )
        .await
        .unwrap();
    assert_ne!(row.get::<_, String>(0), "7MB", "SET is reset");
    assert_eq!(row.get::<_, i64>(1), 0, "prepared statements are gone");
    assert!(row.get::<_, bool>(2), "the temporary table is gone");
    assert_eq!(row.get::<_, i64>(3), 0, "LISTEN is gone");

    // SHOW POOLS lists the pool, its client and server.
    let rows = proxy.console_rows("SHOW POOLS");
    let mine = rows
        .iter()
        .find(|r| r[0] == db.name)
        .unwrap_or_else(|| panic!("no pool of {} in {rows:?}", db.name));
    assert_eq!(&mine[1..6], ["postgres", "1", "0", "1", "0"], "{rows:?}");
    // The pool's events are counted.
    let stats = proxy.console_rows("SHOW STATS");
    let count = |name: &str| -> String {
        stats
            .iter()
            .find(|r| r[0] == name)
            .map(|r| r[1].clone())
            .unwrap_or_else(|| panic!("no {name} in {stats:?}"))
    };
    assert_eq!(count("pool_events_total{event=\"opened\"}"), "1");
    assert_eq!(count("pool_events_total{event=\"reused\"}"), "1");
}

/// Clients handed to two session threads in turn share one pooled server connection: each
/// reuse on the other thread moves the socket to that thread's reactor, and the client is
/// served there (a statement that waits on the server, and one that fails, included).
/// (Multi-threaded: the console's `psql` blocks a thread while the proxy accepts it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reused_on_another_session_thread_serves_its_client() {
    let db = TestDb::new("pool_threads").await;
    let toml = "pool_mode = \"session\"\nauth_type = \"trust\"\ndefault_pool_size = 1\n";
    let config = Config::parse(toml, "test.toml").expect("test config");
    let proxy = Proxy::with_session_threads(config, 2).await;
    let mut first = None;
    for i in 0..6 {
        let c = proxy.client(&db.name).await;
        let p = pid(&c).await;
        assert_eq!(
            *first.get_or_insert(p),
            p,
            "client {i}: the one connection is reused"
        );
        let row = c
            .query_one(
                "SELECT pg_sleep(0.02)::text || $1::text",
                &[&format!("{i}")],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), format!("{i}"));
        let err = c.simple_query("SELECT 1/0").await.unwrap_err();
        assert_eq!(code(&err), "22012");
        c.simple_query("SELECT 1").await.unwrap();
        leave(&proxy, c).await;
    }
    let stats = proxy.console_rows("SHOW STATS");
    let reused = stats
        .iter()
        .find(|r| r[0] == "pool_events_total{event=\"reused\"}")
        .map(|r| r[1].clone());
    assert_eq!(reused.as_deref(), Some("5"), "{stats:?}");
}

#[tokio::test]
async fn guard_state_is_the_clients_not_the_connections() {
    let db = invoice_db("pool_guard", 2, "").await;
    let proxy = pooled(INVOICE, "").await;
    let a = proxy.client(&db.name).await;
    let first = pid(&a).await;
    // A reads row 1 at version 0 (tracked), then leaves.
    a.query("SELECT * FROM invoice WHERE id = 1", &[])
        .await
        .unwrap();
    leave(&proxy, a).await;
    // Someone else moves the row on.
    bump_version(&db, 1).await;
    // B, on the same server connection, never read the row: its write is not checked against
    // A's version.
    let b = proxy.client(&db.name).await;
    assert_eq!(pid(&b).await, first);
    let n = b
        .execute("UPDATE invoice SET total = 11 WHERE id = 1", &[])
        .await
        .expect("a write of a row this client never read");
    assert_eq!(n, 1);
    assert_eq!(version_of(&db, 1).await, 2);
    // B's own read-modify-write is still checked.
    b.query("SELECT * FROM invoice WHERE id = 2", &[])
        .await
        .unwrap();
    bump_version(&db, 2).await;
    let e = b
        .execute("UPDATE invoice SET total = 12 WHERE id = 2", &[])
        .await
        .expect_err("a stale write");
    assert_eq!(code(&e), "40001");
}

#[tokio::test]
async fn a_connection_the_server_ended_while_pooled_is_replaced() {
    let db = TestDb::new("pool_dead").await;
    let proxy = pooled("", "").await;
    let a = proxy.client(&db.name).await;
    let first = pid(&a).await;
    leave(&proxy, a).await;
    let admin = db.direct().await;
    let ended: bool = admin
        .query_one("SELECT pg_terminate_backend($1, 10000)", &[&first])
        .await
        .unwrap()
        .get(0);
    assert!(ended);
    let b = proxy.client(&db.name).await;
    let second = pid(&b).await;
    assert_ne!(second, first);
    let one: i32 = b.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn a_full_pool_makes_clients_wait_then_refuses_them() {
    let db = TestDb::new("pool_full").await;
    let proxy = pooled("", "query_wait_timeout = 0.3").await;
    let a = proxy.client(&db.name).await;
    let first = pid(&a).await;
    // The pool's one connection is A's: B waits, and is refused after query_wait_timeout.
    let e = tokio_postgres::connect(&proxy.conninfo(&db.name), tokio_postgres::NoTls)
        .await
        .err()
        .expect("no connection free");
    assert_eq!(code(&e), "53300", "{e:?}");
    let msg = e.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("query_wait_timeout"), "{msg}");
    // A client that waits while A leaves gets A's connection.
    let waiter = tokio::spawn({
        let info = proxy.conninfo(&db.name);
        async move {
            let c = connect(&info).await;
            pid(&c).await
        }
    });
    loop {
        if proxy.shared.pools.rows().iter().any(|r| r.cl_waiting == 1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(a);
    // (query_wait_timeout is short: the waiter may also have timed out on a slow machine, so
    // only a success is checked for the pid.)
    if let Ok(p) = waiter.await {
        assert_eq!(p, first);
    }
}

/// A `[[pool]]` entry sizes its database's pools in place of `default_pool_size` (here 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_entry_overrides_default_pool_size() {
    let db = TestDb::new("pool_sized").await;
    let other = TestDb::new("pool_unsized").await;
    let proxy = pooled(
        &format!("[[pool]]\ndatabase = \"{}\"\npool_size = 2\n", db.name),
        "query_wait_timeout = 0.3",
    )
    .await;
    // Two clients at once on the sized database: two server connections.
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    assert_ne!(pid(&a).await, pid(&b).await);
    // The other database keeps default_pool_size = 1: a second client is refused.
    let _c = proxy.client(&other.name).await;
    let e = tokio_postgres::connect(&proxy.conninfo(&other.name), tokio_postgres::NoTls)
        .await
        .err()
        .expect("the other database's pool is full");
    assert_eq!(code(&e), "53300", "{e:?}");
    let msg = e.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("all 1 of its pool are in use"), "{msg}");
    let rows = proxy.console_rows("SHOW POOLS");
    let size = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .map(|r| r[7].clone())
            .unwrap_or_else(|| panic!("no pool of {name} in {rows:?}"))
    };
    assert_eq!(size(&db.name), "2");
    assert_eq!(size(&other.name), "1");
}

#[tokio::test]
async fn max_client_conn_refuses_one_more_client() {
    let db = TestDb::new("pool_max").await;
    let proxy = pooled("", "max_client_conn = 1").await;
    let _a = proxy.client(&db.name).await;
    let e = tokio_postgres::connect(&proxy.conninfo(&db.name), tokio_postgres::NoTls)
        .await
        .err()
        .expect("max_client_conn reached");
    assert_eq!(code(&e), "53300", "{e:?}");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("max_client_conn"),
        "{e:?}"
    );
}

#[tokio::test]
async fn different_startup_parameters_get_different_connections() {
    let db = TestDb::new("pool_params").await;
    let proxy = pooled("", "default_pool_size = 2").await;
    let a = proxy.client_as(&db.name, "one").await;
    let first = pid(&a).await;
    leave(&proxy, a).await;
    let b = proxy.client_as(&db.name, "two").await;
    assert_ne!(pid(&b).await, first);
    let name: String = b
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "two");
}

#[tokio::test]
async fn cancel_keys_are_the_clients_own() {
    let db = TestDb::new("pool_cancel").await;
    let proxy = pooled("", "").await;
    let a = proxy.client(&db.name).await;
    let old_token = a.cancel_token();
    leave(&proxy, a).await;
    let b = proxy.client(&db.name).await;
    let pid = pid(&b).await;
    let token = b.cancel_token();
    let sleeping = tokio::spawn(async move { b.batch_execute("SELECT pg_sleep(60)").await });
    let admin = db.direct().await;
    while !active(&admin, pid).await {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The key A kept cancels nothing of B's (the proxy closes the request at once)...
    old_token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("the proxy takes the request");
    assert!(active(&admin, pid).await, "B's statement still runs");
    // ...B's own key does.
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = sleeping.await.unwrap().expect_err("cancelled");
    assert_eq!(code(&e), "57014", "{e:?}");
}

/// True while backend `pid` runs a statement.
async fn active(admin: &Client, pid: i32) -> bool {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
            &[&pid],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}
