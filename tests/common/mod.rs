//! Test harness: a throwaway database on the local PostgreSQL, an in-process proxy on a
//! random port, and client connections through it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use optlock::config::Config;
use optlock::server::Server;
use tokio::sync::watch;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, NoTls};

/// The shared local PostgreSQL every test may use (never altered globally).
pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;

pub fn upstream() -> String {
    std::env::var("OPTLOCK_TEST_UPSTREAM").unwrap_or_else(|_| format!("{PG_HOST}:{PG_PORT}"))
}

fn split_addr(addr: &str) -> (String, u16) {
    let (h, p) = addr.rsplit_once(':').expect("host:port");
    (h.to_string(), p.parse().expect("port"))
}

/// A database created for one test and dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    upstream: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub async fn new(prefix: &str) -> TestDb {
        Self::on(&upstream(), prefix).await
    }

    pub async fn on(upstream: &str, prefix: &str) -> TestDb {
        let name = format!(
            "optlock_{prefix}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect_direct_to(upstream, "postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        TestDb {
            name,
            upstream: upstream.to_string(),
        }
    }

    /// A direct connection (not through the proxy).
    pub async fn direct(&self) -> Client {
        connect_direct_to(&self.upstream, &self.name).await
    }

    /// The one value a query returns, run directly.
    pub async fn one<T>(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> T
    where
        T: for<'a> FromSql<'a>,
    {
        self.direct()
            .await
            .query_one(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (host, port) = split_addr(&self.upstream);
        let _ = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                &host,
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
            ])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

pub async fn connect_direct_to(upstream: &str, db: &str) -> Client {
    let (host, port) = split_addr(upstream);
    connect(&format!(
        "host={host} port={port} user=postgres dbname={db}"
    ))
    .await
}

pub async fn connect(conninfo: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// An optlock server running inside the test process.
pub struct Proxy {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub shared: std::sync::Arc<optlock::relay::Shared>,
}

impl Proxy {
    /// Starts a proxy in front of the test upstream with `config` (listen is replaced).
    pub async fn start(mut config: Config) -> Proxy {
        config.listen = "127.0.0.1:0".into();
        if config.upstream == optlock::config::DEFAULT_UPSTREAM {
            config.upstream = upstream();
        }
        let server = Server::bind(config, None).await.expect("bind proxy");
        let addr = server.listener.local_addr().unwrap();
        let shutdown = server.shutdown_handle();
        let shared = server.shared.clone();
        let task = tokio::spawn(server.run());
        Proxy {
            addr,
            shutdown,
            task,
            shared,
        }
    }

    pub async fn with_guards(toml: &str) -> Proxy {
        Proxy::start(Config::parse(toml, "test.toml").expect("test config")).await
    }

    pub async fn plain() -> Proxy {
        Proxy::start(Config::default()).await
    }

    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.addr.ip(),
            self.addr.port()
        )
    }

    /// A tokio-postgres client connected through the proxy.
    pub async fn client(&self, db: &str) -> Client {
        connect(&self.conninfo(db)).await
    }

    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Runs a command-line client (psql, pgbench) and returns (success, stdout, stderr).
pub fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// psql through the proxy: `psql -X -At -h .. -p .. -U postgres -d db -c sql`.
pub fn psql(proxy: &Proxy, db: &str, sql: &str) -> (bool, String, String) {
    let port = proxy.addr.port().to_string();
    run(
        "psql",
        &[
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ],
    )
}
