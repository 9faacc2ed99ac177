//! The shared test fixture. This module owns the server side: the upstream address, a database
//! made for one test and dropped with it, an in-process proxy on a random port started with
//! given guards (or from a config file), client connections directly and through the proxy,
//! the proxy's metrics over HTTP, and small readers of tokio-postgres replies. Its submodules:
//! [`wire`] the raw protocol client, [`guards`] the shared guard configs and the tables they
//! guard, [`cluster`] a throwaway PostgreSQL cluster, [`certs`] test certificates and a cluster
//! with `ssl = on`, [`binary`] the `optlock` executable, [`scenario`] the differential
//! two-session harness (directly vs through the proxy).
#![allow(dead_code)]

pub mod binary;
pub mod certs;
pub mod cluster;
pub mod guards;
pub mod scenario;
pub mod wire;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use optlock::config::Config;
use optlock::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use binary::ConfigFile;
use wire::Raw;

/// The shared local PostgreSQL every test may use (never altered globally).
pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;

pub fn upstream() -> String {
    std::env::var("OPTLOCK_TEST_UPSTREAM").unwrap_or_else(|_| format!("{PG_HOST}:{PG_PORT}"))
}

/// The host and port of `host:port`.
pub fn split_addr(addr: &str) -> (String, u16) {
    let (h, p) = addr.rsplit_once(':').expect("host:port");
    (h.to_string(), p.parse().expect("port"))
}

/// A port nobody listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
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

    /// The conninfo of a direct connection.
    pub fn conninfo(&self) -> String {
        let (host, port) = split_addr(&self.upstream);
        format!("host={host} port={port} user=postgres dbname={}", self.name)
    }

    /// A raw protocol session straight to the server, logged in.
    pub async fn raw(&self) -> Raw {
        Raw::open(&self.upstream, &self.name).await
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
    /// Where `GET /metrics` answers, when the config has `metrics_listen`.
    pub metrics: Option<SocketAddr>,
    /// The config file of a proxy started by [`Proxy::from_file`].
    pub file: Option<ConfigFile>,
}

impl Proxy {
    /// Starts a proxy in front of the test upstream with `config` (listen is replaced).
    pub async fn start(mut config: Config) -> Proxy {
        config.listen = "127.0.0.1:0".into();
        if config.upstream == optlock::config::DEFAULT_UPSTREAM {
            config.upstream = upstream();
        }
        let server = Server::bind(config, None).await.expect("bind proxy");
        Proxy::run(server, None)
    }

    /// Starts a proxy whose sessions run on `threads` threads of their own, as the binary's
    /// (`--workers`), handed out in turn.
    pub async fn with_session_threads(mut config: Config, threads: usize) -> Proxy {
        config.listen = "127.0.0.1:0".into();
        if config.upstream == optlock::config::DEFAULT_UPSTREAM {
            config.upstream = upstream();
        }
        let server = Server::bind(config, None)
            .await
            .expect("bind proxy")
            .with_session_threads(threads)
            .expect("session threads");
        Proxy::run(server, None)
    }

    /// Starts a proxy from a config file holding `toml` after `listen` (a random port) and
    /// `upstream` lines, so that `RELOAD` has a file to read.
    pub async fn from_file(toml: &str, upstream: &str) -> Proxy {
        let text = format!("listen = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{toml}");
        let file = ConfigFile::new(&text);
        let config = Config::load(&file.path).expect("test config");
        let server = Server::bind(config, Some(file.path.clone()))
            .await
            .expect("bind proxy");
        Proxy::run(server, Some(file))
    }

    fn run(server: Server, file: Option<ConfigFile>) -> Proxy {
        let addr = server.local_addr().unwrap();
        let metrics = server.metrics_addr();
        let shutdown = server.shutdown_handle();
        let shared = server.shared.clone();
        let task = tokio::spawn(server.run());
        Proxy {
            addr,
            shutdown,
            task,
            shared,
            metrics,
            file,
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

    /// [`Proxy::conninfo`] with an `application_name`.
    pub fn conninfo_as(&self, db: &str, app: &str) -> String {
        format!("{} application_name={app}", self.conninfo(db))
    }

    /// A tokio-postgres client connected through the proxy.
    pub async fn client(&self, db: &str) -> Client {
        connect(&self.conninfo(db)).await
    }

    /// A tokio-postgres client connected through the proxy with an `application_name`.
    pub async fn client_as(&self, db: &str, app: &str) -> Client {
        connect(&self.conninfo_as(db, app)).await
    }

    /// A raw protocol session through the proxy, logged in.
    pub async fn raw(&self, db: &str) -> Raw {
        Raw::open(&self.addr.to_string(), db).await
    }

    /// The config file of a proxy started by [`Proxy::from_file`].
    pub fn config_file(&self) -> &ConfigFile {
        self.file
            .as_ref()
            .expect("a proxy started from a config file")
    }

    /// psql on the admin console (database `optlock`) as `postgres`: (success, stdout,
    /// stderr), as [`binary::psql_at`] runs it.
    pub fn console(&self, sql: &str) -> (bool, String, String) {
        binary::psql_at(self.addr.port(), "postgres", "optlock", sql)
    }

    /// The rows of a console command that must succeed, each split on `|`.
    pub fn console_rows(&self, sql: &str) -> Vec<Vec<String>> {
        let (ok, out, err) = self.console(sql);
        assert!(ok, "{sql}: {err}");
        out.lines()
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect()
    }

    /// Asks the server to shut down; whether it was still there to be asked.
    pub fn shutdown(&self) -> bool {
        self.shutdown.send(true).is_ok()
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

/// The rows of a simple query's replies, each value as text.
pub fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// The row counts of a simple query's statements.
pub fn rows_affected(msgs: &[SimpleQueryMessage]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

/// The SQLSTATE of an error (or what the error is, when it has none).
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e:?}"))
}

/// `GET path` over HTTP/1.1 (the proxy's metrics listener answers and closes): the head and
/// the body of the response.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(binary::PATIENCE, s.read_to_end(&mut raw))
        .await
        .expect("the HTTP server answers and closes")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

/// The value of one sample line (`name{labels} value`) of a metrics body.
pub fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series}:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}
