//! Logins the proxy checks itself in pooled mode, against a throwaway cluster that demands
//! passwords: secrets read with `auth_query` (as `auth_user`) or from `auth_file`; SCRAM-SHA-256
//! and md5 logins in with the right password (the server connection opened with the client's
//! SCRAM key, or the md5 hash, and reused by the next login), refused with PostgreSQL's own
//! `28P01` for a wrong password and an unknown user.

mod common;

use common::binary::ConfigFile;
use common::cluster::Cluster;
use common::*;
use optlock::config::Config;
use tokio_postgres::{Client, NoTls};

fn password_cluster() -> Cluster {
    let c = Cluster::start(&[
        "host all postgres 127.0.0.1/32 trust",
        "host all md5user 127.0.0.1/32 md5",
        "host all all 127.0.0.1/32 scram-sha-256",
    ]);
    c.psql(
        "CREATE ROLE scramuser LOGIN PASSWORD 'scram secret'; \
         CREATE ROLE fileuser LOGIN PASSWORD 'file secret'; \
         SET password_encryption = 'md5'; \
         CREATE ROLE md5user LOGIN PASSWORD 'md5 secret'",
    );
    c
}

async fn proxy(cluster: &Cluster, auth: &str) -> Proxy {
    let toml = format!(
        "upstream = \"{}\"\npool_mode = \"session\"\ndefault_pool_size = 2\n{auth}",
        cluster.addr()
    );
    Proxy::start(Config::parse(&toml, "test.toml").expect("test config")).await
}

fn conninfo(proxy: &Proxy, user: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password='{password}' dbname=postgres",
        proxy.addr.port()
    )
}

async fn login(proxy: &Proxy, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&conninfo(proxy, user, password), NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Logs in, checks who the server says the user is, and returns the backend pid.
async fn logs_in(proxy: &Proxy, user: &str, password: &str) -> i32 {
    let c = login(proxy, user, password)
        .await
        .unwrap_or_else(|e| panic!("{user} with the right password: {e}"));
    let row = c
        .query_one("SELECT current_user::text, pg_backend_pid()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), user);
    let pid = row.get(1);
    drop(c);
    // Until its connection is idle again.
    while proxy.shared.pools.rows().iter().all(|r| r.sv_idle == 0) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    pid
}

async fn refused(proxy: &Proxy, user: &str, password: &str) {
    let e = login(proxy, user, password)
        .await
        .err()
        .unwrap_or_else(|| panic!("{user} with a wrong password logged in"));
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    assert_eq!(db.code().code(), "28P01", "{db:?}");
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(
        db.message(),
        format!("password authentication failed for user \"{user}\"")
    );
}

// psql runs synchronously: the proxy needs a thread of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_checked_by_the_proxy() {
    let cluster = password_cluster();

    // SCRAM, secrets from pg_shadow: the server connection is opened with the client's key.
    let scram = proxy(
        &cluster,
        "auth_type = \"scram-sha-256\"\nauth_user = \"postgres\"",
    )
    .await;
    let first = logs_in(&scram, "scramuser", "scram secret").await;
    assert_eq!(logs_in(&scram, "scramuser", "scram secret").await, first);
    refused(&scram, "scramuser", "scram wrong").await;
    refused(&scram, "nobody", "whatever").await;
    // An md5 hash cannot check a SCRAM login (PostgreSQL refuses it the same way).
    refused(&scram, "md5user", "md5 secret").await;
    // libpq's side of the exchange too.
    let (ok, out, err) = run(
        "psql",
        &[
            "-X",
            "-At",
            &conninfo(&scram, "scramuser", "scram secret"),
            "-c",
            "SELECT current_user",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "scramuser");

    // md5: the server connection is opened with the hash from pg_shadow; a SCRAM secret makes
    // the login SCRAM, as in PostgreSQL.
    let md5 = proxy(&cluster, "auth_type = \"md5\"\nauth_user = \"postgres\"").await;
    let first = logs_in(&md5, "md5user", "md5 secret").await;
    assert_eq!(logs_in(&md5, "md5user", "md5 secret").await, first);
    refused(&md5, "md5user", "md5 wrong").await;
    logs_in(&md5, "scramuser", "scram secret").await;
    refused(&md5, "scramuser", "scram wrong").await;

    // auth_file: a password, which serves both the client's check and the server login.
    let file = ConfigFile::new("\"fileuser\" \"file secret\"\n; a comment\n");
    let listed = proxy(
        &cluster,
        &format!(
            "auth_type = \"scram-sha-256\"\nauth_file = \"{}\"",
            file.path_str()
        ),
    )
    .await;
    logs_in(&listed, "fileuser", "file secret").await;
    refused(&listed, "fileuser", "file wrong").await;
    refused(&listed, "scramuser", "scram secret").await;
}

/// An `auth_query` that does not answer within `auth_query_timeout` refuses the client with a
/// clear error (the shared server trusts `auth_user`; the query sleeps).
#[tokio::test]
async fn a_slow_auth_query_times_out_with_a_clear_error() {
    let toml = "pool_mode = \"session\"\nauth_type = \"md5\"\nauth_user = \"postgres\"\n\
                auth_dbname = \"postgres\"\nauth_query_timeout = 0.3\n\
                auth_query = \"SELECT usename, passwd FROM pg_shadow, pg_sleep(5) WHERE usename=$1\"";
    let proxy = Proxy::start(Config::parse(toml, "test.toml").expect("test config")).await;
    let started = std::time::Instant::now();
    let e = login(&proxy, "postgres", "anything")
        .await
        .err()
        .expect("refused: the secret was not found in time");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(
        db.message(),
        "optlock: auth_query did not answer within auth_query_timeout (0.3 s) for user \"postgres\""
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "refused after {:?}",
        started.elapsed()
    );
}
