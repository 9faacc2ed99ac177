//! The admin console (virtual database `optlock`) through psql against an in-process proxy:
//! every `SHOW` command, `RELOAD` from a config file, unknown commands, who may log in, and a
//! SCRAM login refused by the server itself before the console answers anything.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::binary::{ConfigFile, PATIENCE, psql_at, psql_with_password};
use common::{TestDb, connect, upstream};
use optlock::config::Config;
use optlock::server::Server;
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

const INVOICE: &str = r#"
[[guard]]
table = "public.invoice"
key = ["id"]
version = "version"
"#;

/// An in-process proxy started from a config file (so that `RELOAD` has a file to read).
struct Served {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    file: ConfigFile,
}

impl Served {
    async fn start(toml: &str) -> Served {
        Served::start_on(toml, &upstream()).await
    }

    async fn start_on(toml: &str, upstream: &str) -> Served {
        let text = format!("listen = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{toml}");
        let file = ConfigFile::new(&text);
        let config = Config::load(&file.path).expect("test config");
        let server = Server::bind(config, Some(file.path.clone()))
            .await
            .expect("bind");
        let addr = server.local_addr().unwrap();
        let stop = server.shutdown_handle();
        tokio::spawn(server.run());
        Served { addr, stop, file }
    }

    fn console(&self, sql: &str) -> (bool, String, String) {
        psql_at(self.addr.port(), "postgres", "optlock", sql)
    }

    /// The rows of a console command that must succeed, each split on `|`.
    fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let (ok, out, err) = self.console(sql);
        assert!(ok, "{sql}: {err}");
        out.lines()
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect()
    }

    fn conninfo(&self, db: &str, app: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} application_name={app}",
            self.addr.port()
        )
    }

    async fn client(&self, db: &str, app: &str) -> Client {
        connect(&self.conninfo(db, app)).await
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn invoice_db(prefix: &str) -> TestDb {
    let db = TestDb::new(prefix).await;
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE invoice (id int primary key, total numeric not null, version bigint not null default 0);
             INSERT INTO invoice (id, total) SELECT g, 10 FROM generate_series(1, 3) g;",
        )
        .await
        .unwrap();
    db
}

/// A reads row 1, B changes it, A's write conflicts.
async fn provoke_conflict(a: &Client, b: &Client) {
    a.simple_query("SELECT id, version FROM invoice WHERE id = 1")
        .await
        .unwrap();
    b.simple_query("UPDATE invoice SET total = 20 WHERE id = 1")
        .await
        .unwrap();
    let err = a
        .simple_query("UPDATE invoice SET total = 30 WHERE id = 1")
        .await
        .expect_err("a conflict");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_guards_config_help_and_version() {
    let served = Served::start(&format!("track_limit = 77\n{INVOICE}")).await;

    let guards = served.rows("SHOW GUARDS");
    assert_eq!(
        guards,
        vec![vec![
            "public.invoice",
            "id",
            "version",
            "counter",
            "allow",
            "bump"
        ]]
    );

    let config = served.rows("show config");
    let get = |k: &str| {
        config
            .iter()
            .find(|r| r[0] == k)
            .unwrap_or_else(|| panic!("SHOW CONFIG lists {k}: {config:?}"))
            .clone()
    };
    assert_eq!(get("track_limit"), ["track_limit", "77", "10000"]);
    assert_eq!(get("upstream")[1], upstream());
    assert_eq!(
        get("listen")[1],
        served.addr.to_string(),
        "the bound address, not port 0"
    );
    assert_eq!(get("admin_users")[1], "postgres");
    assert_eq!(get("conflict_sqlstate")[1..], ["40001", "40001"]);
    assert_eq!(get("guard")[1], "1 guarded tables");
    assert_eq!(get("metrics_listen")[1..], ["", ""], "unset is NULL");

    let help = served.rows("SHOW HELP");
    let commands: Vec<&str> = help.iter().map(|r| r[0].as_str()).collect();
    for c in [
        "SHOW GUARDS",
        "SHOW STATS",
        "SHOW SESSIONS",
        "SHOW CONFLICTS",
        "SHOW CONFIG",
        "SHOW VERSION",
        "SHOW HELP",
        "RELOAD",
    ] {
        assert!(commands.contains(&c), "SHOW HELP lists {c}: {help:?}");
    }
    assert!(help.iter().all(|r| r.len() == 2 && !r[1].is_empty()));

    let version = served.rows("SHOW VERSION");
    assert_eq!(
        version,
        vec![vec![format!("optlock {}", env!("CARGO_PKG_VERSION"))]]
    );

    // Several commands in one query string run in turn.
    let both = served.rows("SHOW VERSION; SHOW GUARDS");
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(both[0], version[0]);
    assert_eq!(both[1], guards[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_sessions_lists_other_open_sessions() {
    let db = invoice_db("adm_sess").await;
    let served = Served::start(INVOICE).await;
    let till = served.client(&db.name, "till-7").await;
    let pid: i32 = till
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    till.simple_query("SELECT id, version FROM invoice")
        .await
        .unwrap();

    let sessions = served.rows("SHOW SESSIONS");
    let mine: Vec<&Vec<String>> = sessions.iter().filter(|r| r[2] == db.name).collect();
    assert_eq!(mine.len(), 1, "{sessions:?}");
    let s = mine[0];
    // id|user|database|application_name|client_addr|backend_pid|state|connected_at|statements|tracked_versions
    assert_eq!(s.len(), 10, "{s:?}");
    assert_eq!(s[1], "postgres");
    assert_eq!(s[3], "till-7");
    assert!(s[4].starts_with("127.0.0.1:"), "{s:?}");
    assert_eq!(s[5], pid.to_string());
    assert_eq!(s[6], "idle");
    assert!(s[7].ends_with("+00"), "{s:?}");
    assert!(s[8].parse::<u64>().unwrap() >= 2, "{s:?}");
    assert_eq!(s[9], "3", "three rows read, three versions tracked: {s:?}");

    // A session in a transaction says so.
    till.batch_execute("BEGIN").await.unwrap();
    let sessions = served.rows("SHOW SESSIONS");
    let s = sessions.iter().find(|r| r[2] == db.name).unwrap();
    assert_eq!(s[6], "in transaction", "{s:?}");

    // A closed session leaves the list.
    drop(till);
    let start = Instant::now();
    loop {
        let sessions = served.rows("SHOW SESSIONS");
        if !sessions.iter().any(|r| r[2] == db.name) {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "still listed: {sessions:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_conflicts_and_stats_after_a_conflict() {
    let db = invoice_db("adm_confl").await;
    let served = Served::start(INVOICE).await;
    assert!(served.rows("SHOW CONFLICTS").is_empty());

    let a = served.client(&db.name, "till-a").await;
    let b = served.client(&db.name, "till-b").await;
    provoke_conflict(&a, &b).await;

    let conflicts = served.rows("SHOW CONFLICTS");
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let c = &conflicts[0];
    // time|table|key|expected|found|client_addr|user|application_name
    assert_eq!(c.len(), 8, "{c:?}");
    assert!(c[0].ends_with("+00"), "{c:?}");
    assert_eq!(c[1], "public.invoice");
    assert_eq!(c[2], "(id)=(1)");
    assert_eq!(c[3], "0", "expected version");
    assert_eq!(c[4], "1", "found version");
    assert!(c[5].starts_with("127.0.0.1:"), "{c:?}");
    assert_eq!(c[6], "postgres");
    assert_eq!(c[7], "till-a");

    // A deleted row: found is NULL.
    a.simple_query("SELECT id, version FROM invoice WHERE id = 2")
        .await
        .unwrap();
    b.simple_query("DELETE FROM invoice WHERE id = 2")
        .await
        .unwrap();
    let err = a
        .simple_query("UPDATE invoice SET total = 1 WHERE id = 2")
        .await
        .expect_err("a conflict on a deleted row");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"));
    let conflicts = served.rows("SHOW CONFLICTS");
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert_eq!(conflicts[0][2], "(id)=(2)", "newest first: {conflicts:?}");
    assert_eq!(conflicts[0][4], "", "no row found: {conflicts:?}");

    let stats = served.rows("SHOW STATS");
    let stat = |k: &str| -> u64 {
        stats
            .iter()
            .find(|r| r[0] == k)
            .unwrap_or_else(|| panic!("SHOW STATS lists {k}: {stats:?}"))[1]
            .parse()
            .unwrap()
    };
    assert_eq!(
        stat("guarded_writes_total{table=\"public.invoice\",outcome=\"conflict\"}"),
        2
    );
    assert!(stat("guarded_writes_total{table=\"public.invoice\",outcome=\"rewritten\"}") >= 2);
    assert_eq!(
        stat("guarded_writes_total{table=\"public.invoice\",outcome=\"refused\"}"),
        0
    );
    assert_eq!(stat("sessions_active"), 2);
    assert!(stat("sessions_total") >= 2);
    assert!(stat("statements_total") >= 6);
    assert!(stat("bytes_total{direction=\"client_to_server\"}") > 0);
    assert!(stat("bytes_total{direction=\"server_to_client\"}") > 0);
    assert_eq!(stat("upstream_connect_failures_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reads_the_file_and_a_bad_file_changes_nothing() {
    let served = Served::start("").await;
    assert!(served.rows("SHOW GUARDS").is_empty());

    let base = std::fs::read_to_string(&served.file.path).unwrap();
    served.file.rewrite(&format!("{base}{INVOICE}"));
    let (ok, out, err) = served.console("RELOAD");
    assert!(ok, "{err}");
    assert!(
        err.contains("reloaded") && err.contains("1 guarded table"),
        "the notice says what was loaded: {err}"
    );
    assert_eq!(out.trim(), "RELOAD", "psql prints the command tag");
    assert_eq!(served.rows("SHOW GUARDS")[0][0], "public.invoice");

    // Line 6 of the file: `key = []`.
    served.file.rewrite(&format!(
        "{base}[[guard]]\ntable = \"public.other\"\nkey = []\n"
    ));
    let key_line = std::fs::read_to_string(&served.file.path)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("key = []"))
        .unwrap()
        + 1;
    let (ok, _, err) = served.console("RELOAD");
    assert!(!ok);
    assert!(err.contains("F0000"), "config_file_error: {err}");
    let at = format!("{}:{key_line}:", served.file.path.display());
    assert!(err.contains(&at), "names file and line ({at}): {err}");
    assert!(err.contains("key must name at least one column"), "{err}");
    assert_eq!(
        served.rows("SHOW GUARDS")[0][0],
        "public.invoice",
        "the previous config stays in force"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_are_clean_errors() {
    let served = Served::start(INVOICE).await;
    for sql in ["SELECT 1", "SHOW GUARD", "DROP TABLE invoice"] {
        let (ok, out, err) = served.console(sql);
        assert!(!ok, "{sql}");
        assert!(out.is_empty(), "{sql}: {out}");
        assert!(err.contains("ERROR:  42601:"), "{sql}: {err}");
        assert!(err.contains("unknown command"), "{sql}: {err}");
        assert!(err.contains("SHOW HELP"), "{sql}: {err}");
    }
    // The console keeps serving the same session after an error.
    let out = Command::new("psql")
        .args([
            "-X",
            "-At",
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            &served.addr.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "optlock",
            "-c",
            "SELECT 1",
            "-c",
            "SHOW VERSION",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown command"), "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("optlock {}", env!("CARGO_PKG_VERSION")),
        "SHOW VERSION after the error: {stderr}"
    );

    // The extended protocol is refused politely, and the session stays usable.
    let c = served.client("optlock", "ext").await;
    let err = c.query("SHOW VERSION", &[]).await.expect_err("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err}");
    let rows = c.simple_query("SHOW VERSION").await.unwrap();
    assert!(
        rows.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
    );
}

/// The server's (or the proxy's) own words in an error.
fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// A login role on the local server, dropped when the value is dropped.
struct Role(&'static str);

impl Role {
    async fn create(name: &'static str) -> Role {
        let admin = common::connect_direct_to(&upstream(), "postgres").await;
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN"
            ))
            .await
            .unwrap();
        Role(name)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let (host, port) = upstream()
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.to_string()))
            .unwrap();
        let _ = Command::new("psql")
            .args([
                "-X", "-q", "-h", &host, "-p", &port, "-U", "postgres", "-d", "postgres", "-c",
            ])
            .arg(format!("DROP ROLE IF EXISTS {}", self.0))
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_users_open_the_console() {
    let _role = Role::create("optlock_nobody").await;
    let served = Served::start("admin_users = [\"postgres\", \"optlock_ghost\"]\n").await;
    let port = served.addr.port();

    // A real login role that is not an admin user: refused before any password exchange.
    let err = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=optlock_nobody dbname=optlock"),
        NoTls,
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");
    assert!(db_message(&err).contains("admin_users"), "{err:?}");
    let (ok, _, stderr) = psql_at(port, "optlock_nobody", "optlock", "SHOW GUARDS");
    assert!(!ok);
    assert!(
        stderr.contains("may not open the optlock admin console"),
        "{stderr}"
    );

    // The same role reaches its own databases through the proxy as usual.
    let (ok, out, stderr) = psql_at(port, "optlock_nobody", "postgres", "SELECT current_user");
    assert!(ok, "{stderr}");
    assert_eq!(out.trim(), "optlock_nobody");

    // An admin user the server does not know: the server's own refusal.
    let err = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=optlock_ghost dbname=optlock"),
        NoTls,
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err:?}");
    assert!(
        db_message(&err).contains("role \"optlock_ghost\" does not exist"),
        "{err:?}"
    );

    // The admin user gets in.
    let (ok, _, stderr) = psql_at(port, "postgres", "optlock", "SHOW VERSION");
    assert!(ok, "{stderr}");
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway PostgreSQL cluster owned by the `postgres` OS user, with SCRAM authentication
/// for TCP logins; stopped and removed when dropped.
struct ScramCluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl ScramCluster {
    fn start(password: &str) -> Option<ScramCluster> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            eprintln!("skipped: no PostgreSQL binaries in {PG_BIN}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = |args: &[&str]| {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .output()
                .expect("runuser");
            assert!(
                out.status.success(),
                "{args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let root = dir.path().to_str().unwrap().to_string();
        let ok = Command::new("chown")
            .args(["postgres:postgres", &root])
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown {root}");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, format!("{password}\n")).unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres", pwfile.to_str().unwrap()])
            .status();
        let data = format!("{root}/data");
        as_postgres(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            &data,
            "-U",
            "postgres",
            "-A",
            "scram-sha-256",
            "--pwfile",
            pwfile.to_str().unwrap(),
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        let port = common::free_port();
        let cluster = ScramCluster { dir, port };
        as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            &data,
            "-l",
            &format!("{root}/log"),
            "-w",
            "-t",
            "60",
            "-o",
            &format!("-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"),
            "start",
        ]);
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for ScramCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_is_checked_by_the_server_before_the_console_answers() {
    let Some(cluster) = ScramCluster::start("s3cret-pw") else {
        return;
    };
    let upstream = format!("127.0.0.1:{}", cluster.port);
    let served = Served::start_on("", &upstream).await;
    let port = served.addr.port();

    // No password at all: the server asks for one and psql, told never to prompt, gives up.
    let (ok, out, err) = psql_with_password(port, "postgres", "optlock", "SHOW VERSION", None);
    assert!(!ok && out.is_empty(), "{out}{err}");
    assert!(err.contains("no password supplied"), "{err}");

    // A wrong password: the server's own authentication error, and nothing from the console.
    let (ok, out, err) =
        psql_with_password(port, "postgres", "optlock", "SHOW VERSION", Some("wrong"));
    assert!(!ok && out.is_empty(), "{out}{err}");
    assert!(
        err.contains("password authentication failed for user \"postgres\""),
        "{err}"
    );
    let e = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres password=wrong dbname=optlock"),
        NoTls,
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(e.code().map(|c| c.code()), Some("28P01"), "{e}");

    // The right password opens the console.
    let (ok, out, err) = psql_with_password(
        port,
        "postgres",
        "optlock",
        "SHOW VERSION",
        Some("s3cret-pw"),
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("optlock "), "{out}");
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres password=s3cret-pw dbname=optlock"),
        NoTls,
    )
    .await
    .expect("login");
    tokio::spawn(conn);
    let rows = client.simple_query("SHOW GUARDS").await.unwrap();
    assert!(
        matches!(
            rows.last(),
            Some(tokio_postgres::SimpleQueryMessage::CommandComplete(0))
        ),
        "{}",
        rows.len()
    );
}

/// Reads backend messages until `ReadyForQuery` number `readies`: (tag, body) each.
async fn read_messages(sock: &mut tokio::net::TcpStream, readies: usize) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < readies {
        let tag = sock.read_u8().await.expect("a message");
        let len = sock.read_i32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        sock.read_exact(&mut body).await.unwrap();
        if tag == b'Z' {
            seen += 1;
        }
        let fatal = tag == b'E';
        out.push((tag, body));
        if fatal {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_with_the_startup_packet_is_answered_by_the_console() {
    use tokio::io::AsyncWriteExt;
    let served = Served::start(INVOICE).await;
    let mut sock = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let mut startup = Vec::new();
    let params = b"user\0postgres\0database\0optlock\0application_name\0pipelined\0\0";
    startup.extend_from_slice(&((8 + params.len()) as i32).to_be_bytes());
    startup.extend_from_slice(&196608i32.to_be_bytes());
    startup.extend_from_slice(params);
    let sql = b"SHOW GUARDS\0";
    startup.push(b'Q');
    startup.extend_from_slice(&((4 + sql.len()) as i32).to_be_bytes());
    startup.extend_from_slice(sql);
    sock.write_all(&startup).await.unwrap();

    let messages = tokio::time::timeout(PATIENCE, read_messages(&mut sock, 2))
        .await
        .expect("the console answers the pipelined command");
    let tags: Vec<u8> = messages.iter().map(|m| m.0).collect();
    assert_eq!(tags.first(), Some(&b'R'), "authentication first");
    assert!(!tags.contains(&b'E'), "{messages:?}");
    let after_login = tags.iter().position(|&t| t == b'Z').unwrap();
    assert_eq!(
        &tags[after_login..],
        b"ZTDCZ",
        "login, then the console's answer: {messages:?}"
    );
    let row = &messages[after_login + 2].1;
    assert!(
        String::from_utf8_lossy(row).contains("public.invoice"),
        "{row:?}"
    );
}
