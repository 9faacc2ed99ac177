//! The admin console (virtual database `optlock`) through psql against an in-process proxy:
//! every `SHOW` command, `RELOAD` from a config file, unknown commands, who may log in, and a
//! SCRAM login refused by the server itself before the console answers anything.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::binary::{PATIENCE, psql_at, psql_with_password};
use common::cluster::Cluster;
use common::guards::{INVOICE, invoice_db, provoke_conflict};
use common::wire::{Msg, Raw, query, startup};
use common::{Proxy, split_addr, upstream};
use tokio_postgres::NoTls;

/// A proxy started from a config file holding `toml` (so that `RELOAD` has a file to read).
async fn served(toml: &str) -> Proxy {
    Proxy::from_file(toml, &upstream()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_guards_config_help_and_version() {
    let served = served(&format!("track_limit = 77\n{INVOICE}")).await;

    let guards = served.console_rows("SHOW GUARDS");
    assert_eq!(
        guards,
        vec![vec![
            "public.invoice",
            "id",
            "version",
            "counter",
            "allow",
            "bump",
            "enforce",
            ""
        ]]
    );

    let config = served.console_rows("show config");
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

    let help = served.console_rows("SHOW HELP");
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

    let version = served.console_rows("SHOW VERSION");
    assert_eq!(
        version,
        vec![vec![format!("optlock {}", env!("CARGO_PKG_VERSION"))]]
    );

    // Several commands in one query string run in turn.
    let both = served.console_rows("SHOW VERSION; SHOW GUARDS");
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(both[0], version[0]);
    assert_eq!(both[1], guards[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_sessions_lists_other_open_sessions() {
    let db = invoice_db("adm_sess", 3, "").await;
    let served = served(INVOICE).await;
    let till = served.client_as(&db.name, "till-7").await;
    let pid: i32 = till
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    till.simple_query("SELECT id, version FROM invoice")
        .await
        .unwrap();

    let sessions = served.console_rows("SHOW SESSIONS");
    let mine: Vec<&Vec<String>> = sessions.iter().filter(|r| r[2] == db.name).collect();
    assert_eq!(mine.len(), 1, "{sessions:?}");
    let s = mine[0];
    // id|user|database|application_name|client_addr|backend_pid|state|connected_at|statements|
    // tracked_versions|client_tls|server_tls|guards
    assert_eq!(s.len(), 13, "{s:?}");
    assert_eq!(s[12], "public.invoice=enforce");
    assert_eq!(s[1], "postgres");
    assert_eq!(s[3], "till-7");
    assert!(s[4].starts_with("127.0.0.1:"), "{s:?}");
    assert_eq!(s[5], pid.to_string());
    assert_eq!(s[6], "idle");
    assert!(s[7].ends_with("+00"), "{s:?}");
    assert!(s[8].parse::<u64>().unwrap() >= 2, "{s:?}");
    assert_eq!(s[9], "3", "three rows read, three versions tracked: {s:?}");
    // A plain client; the server's leg follows its `ssl` (upstream_tls = "prefer").
    assert_eq!(s[10], "off", "{s:?}");
    assert!(s[11] == "off" || s[11].starts_with("TLSv1."), "{s:?}");

    // A session in a transaction says so.
    till.batch_execute("BEGIN").await.unwrap();
    let sessions = served.console_rows("SHOW SESSIONS");
    let s = sessions.iter().find(|r| r[2] == db.name).unwrap();
    assert_eq!(s[6], "in transaction", "{s:?}");

    // A closed session leaves the list.
    drop(till);
    let start = Instant::now();
    loop {
        let sessions = served.console_rows("SHOW SESSIONS");
        if !sessions.iter().any(|r| r[2] == db.name) {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "still listed: {sessions:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_conflicts_and_stats_after_a_conflict() {
    let db = invoice_db("adm_confl", 3, "").await;
    let served = served(INVOICE).await;
    assert!(served.console_rows("SHOW CONFLICTS").is_empty());

    let a = served.client_as(&db.name, "till-a").await;
    let b = served.client_as(&db.name, "till-b").await;
    provoke_conflict(&a, &b).await;

    let conflicts = served.console_rows("SHOW CONFLICTS");
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let c = &conflicts[0];
    // time|table|key|expected|found|client_addr|user|application_name|outcome|reason
    assert_eq!(c.len(), 10, "{c:?}");
    assert_eq!((c[8].as_str(), c[9].as_str()), ("conflict", ""));
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
    let conflicts = served.console_rows("SHOW CONFLICTS");
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert_eq!(conflicts[0][2], "(id)=(2)", "newest first: {conflicts:?}");
    assert_eq!(conflicts[0][4], "", "no row found: {conflicts:?}");

    let stats = served.console_rows("SHOW STATS");
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
    let served = served("").await;
    assert!(served.console_rows("SHOW GUARDS").is_empty());

    let base = std::fs::read_to_string(&served.config_file().path).unwrap();
    served.config_file().rewrite(&format!("{base}{INVOICE}"));
    let (ok, out, err) = served.console("RELOAD");
    assert!(ok, "{err}");
    assert!(
        err.contains("reloaded") && err.contains("1 guarded table"),
        "the notice says what was loaded: {err}"
    );
    assert_eq!(out.trim(), "RELOAD", "psql prints the command tag");
    assert_eq!(served.console_rows("SHOW GUARDS")[0][0], "public.invoice");

    // Line 6 of the file: `key = []`.
    served.config_file().rewrite(&format!(
        "{base}[[guard]]\ntable = \"public.other\"\nkey = []\n"
    ));
    let key_line = std::fs::read_to_string(&served.config_file().path)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("key = []"))
        .unwrap()
        + 1;
    let (ok, _, err) = served.console("RELOAD");
    assert!(!ok);
    assert!(err.contains("F0000"), "config_file_error: {err}");
    let at = format!("{}:{key_line}:", served.config_file().path.display());
    assert!(err.contains(&at), "names file and line ({at}): {err}");
    assert!(err.contains("key must name at least one column"), "{err}");
    assert_eq!(
        served.console_rows("SHOW GUARDS")[0][0],
        "public.invoice",
        "the previous config stays in force"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_are_clean_errors() {
    let served = served(INVOICE).await;
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
    let c = served.client_as("optlock", "ext").await;
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
        let (host, port) = split_addr(&upstream());
        let port = port.to_string();
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
    let served = served("admin_users = [\"postgres\", \"optlock_ghost\"]\n").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_is_checked_by_the_server_before_the_console_answers() {
    if !Cluster::available() {
        eprintln!("skipped: no PostgreSQL binaries");
        return;
    }
    // SCRAM authentication for TCP logins, and a password for postgres.
    let cluster = Cluster::start(&["host all all 127.0.0.1/32 scram-sha-256"]);
    cluster.psql("ALTER ROLE postgres PASSWORD 's3cret-pw'");
    let upstream = cluster.addr();
    let served = Proxy::from_file("", &upstream).await;
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

/// Reads backend messages until `ReadyForQuery` number `readies`, or up to an error.
async fn read_messages(raw: &mut Raw, readies: usize) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < readies {
        let m = raw.read_msg().await.expect("a message");
        if m.tag == b'Z' {
            seen += 1;
        }
        let fatal = m.tag == b'E';
        out.push(m);
        if fatal {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_with_the_startup_packet_is_answered_by_the_console() {
    let served = served(INVOICE).await;
    let mut raw = Raw::connect(&served.addr.to_string()).await;
    let mut bytes = startup(&[
        ("user", "postgres"),
        ("database", "optlock"),
        ("application_name", "pipelined"),
    ]);
    bytes.extend(query("SHOW GUARDS"));
    raw.send(&bytes).await;

    let messages = tokio::time::timeout(PATIENCE, read_messages(&mut raw, 2))
        .await
        .expect("the console answers the pipelined command");
    let tags: Vec<u8> = messages.iter().map(|m| m.tag).collect();
    assert_eq!(tags.first(), Some(&b'R'), "authentication first");
    assert!(!tags.contains(&b'E'), "{messages:?}");
    let after_login = tags.iter().position(|&t| t == b'Z').unwrap();
    assert_eq!(
        &tags[after_login..],
        b"ZTDCZ",
        "login, then the console's answer: {messages:?}"
    );
    let row = messages[after_login + 2].body();
    assert!(
        String::from_utf8_lossy(row).contains("public.invoice"),
        "{row:?}"
    );
}
