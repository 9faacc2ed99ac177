//! Pass-through basics: simple and extended queries, errors, transactions through the proxy.

mod common;
use common::*;

#[tokio::test]
async fn simple_and_extended_queries_pass_through() {
    let db = TestDb::new("basic").await;
    let proxy = Proxy::plain().await;
    let c = proxy.client(&db.name).await;
    c.batch_execute(
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    )
    .await
    .unwrap();
    let rows = c
        .query("SELECT v FROM t WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "b");
    let err = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    // The session is still usable after the error.
    let n = c
        .execute("UPDATE t SET v = 'c' WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// The directory of the local server's Unix-domain socket, from `unix_socket_directories`.
async fn socket_dir(direct: &tokio_postgres::Client) -> String {
    let dirs: String = direct
        .query_one("SHOW unix_socket_directories", &[])
        .await
        .unwrap()
        .get(0);
    let dir = dirs
        .split(',')
        .map(str::trim)
        .find(|d| d.starts_with('/'))
        .unwrap_or_else(|| panic!("the test server listens on no Unix socket ({dirs:?})"))
        .to_string();
    let file = format!("{dir}/.s.PGSQL.{PG_PORT}");
    assert!(
        std::path::Path::new(&file).exists(),
        "no socket file at {file}"
    );
    dir
}

#[tokio::test]
async fn upstream_through_a_unix_socket() {
    let db = TestDb::new("unix_upstream").await;
    let direct = db.direct().await;
    let dir = socket_dir(&direct).await;
    for upstream in [dir.clone(), format!("{dir}/.s.PGSQL.{PG_PORT}")] {
        let config = optlock::config::Config {
            upstream: upstream.clone(),
            ..Default::default()
        };
        let proxy = Proxy::start(config).await;
        let c = proxy.client(&db.name).await;
        // A socket connection has no client address on the server side.
        let row = c
            .query_one("SELECT inet_client_addr() IS NULL, $1::text", &[&"via"])
            .await
            .unwrap();
        assert!(
            row.get::<_, bool>(0),
            "{upstream}: the server saw a TCP peer"
        );
        assert_eq!(row.get::<_, String>(1), "via");

        // A CancelRequest goes through the same socket to the right backend.
        let token = c.cancel_token();
        let sleep = c.prepare("SELECT pg_sleep(30)").await.unwrap();
        let query = c.query_one(&sleep, &[]);
        let cancel = async {
            for _ in 0..400 {
                let busy: bool = direct
                    .query_one(
                        "SELECT count(*) = 1 FROM pg_stat_activity WHERE state = 'active' \
                         AND query = 'SELECT pg_sleep(30)' AND datname = current_database()",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if busy {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        };
        let (r, ()) = tokio::join!(query, cancel);
        assert_eq!(r.unwrap_err().code().unwrap().code(), "57014");
        proxy.shutdown();
    }

    // A socket path with no server behind it: a FATAL that names the path.
    let config = optlock::config::Config {
        upstream: "/nonexistent/optlock-test".into(),
        ..Default::default()
    };
    let proxy = Proxy::start(config).await;
    let err = tokio_postgres::connect(&proxy.conninfo(&db.name), tokio_postgres::NoTls)
        .await
        .err()
        .expect("no upstream: the login fails");
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "08006");
    assert!(
        db_err
            .message()
            .contains("/nonexistent/optlock-test/.s.PGSQL.5432"),
        "{}",
        db_err.message()
    );
}
