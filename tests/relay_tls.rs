//! TLS on both legs, against throwaway clusters with `ssl = on` and a CA made in the test:
//! every `upstream_tls` mode against a server with TLS and without, verification failures as
//! clear login errors (08006, the upstream and the reason, and a log line), the client
//! policies, SCRAM, md5 and certificate logins over TLS on both legs (and what channel binding
//! does), `SHOW SESSIONS`' two columns, certificate reload with sessions open, and
//! `pgbench -M prepared` through TLS on both legs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::binary::{ConfigFile, Running, psql_at, run_optlock};
use common::certs::{Certs, raw_tls};
use common::cluster::Cluster;
use common::wire::{self, Raw};
use common::*;
use optlock::config::{ClientTlsMode, Config, UpstreamTls, UpstreamTlsMode};
use tokio_postgres::NoTls;

/// A proxy in front of `upstream` with TLS towards it as `mode` (CA file `ca`, when given).
async fn proxy_to(
    upstream: String,
    mode: UpstreamTlsMode,
    ca: Option<&str>,
    certs: &Certs,
) -> Proxy {
    Proxy::start(Config {
        upstream,
        upstream_tls: UpstreamTls {
            mode,
            ca_file: ca.map(|c| certs.path(c)),
            client_cert: None,
        },
        ..Config::default()
    })
    .await
}

/// Whether the server's side of a session through `proxy` is encrypted (`pg_stat_ssl`), or
/// the login error: `SQLSTATE: message`.
async fn server_leg(proxy: &Proxy) -> Result<bool, String> {
    let conninfo = format!("{} connect_timeout=20", proxy.conninfo("postgres"));
    let (client, conn) = match tokio_postgres::connect(&conninfo, NoTls).await {
        Ok(c) => c,
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("not a server error: {e:?}"));
            return Err(format!("{}: {}", db.code().code(), db.message()));
        }
    };
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

/// Asserts a login error: 08006, naming the upstream, with `reason` in it.
fn assert_refused(got: Result<bool, String>, upstream: &str, reason: &str) {
    let e = got.expect_err("the login must fail");
    assert!(e.starts_with("08006: "), "{e}");
    assert!(e.contains(&format!("upstream server at {upstream}")), "{e}");
    assert!(e.contains(reason), "{e}");
}

#[tokio::test]
async fn upstream_modes_against_a_server_with_and_without_tls() {
    use UpstreamTlsMode::*;
    let certs = Certs::new();
    let cluster = certs.cluster(&["host all all 127.0.0.0/8 trust"]);
    let (at1, at2) = (cluster.addr(), format!("127.0.0.2:{}", cluster.port));
    let by_name = format!("localhost:{}", cluster.port);
    for (mode, ca, addr, encrypted) in [
        (Disable, None, &at1, false),
        (Prefer, None, &at1, true),
        (Require, None, &at1, true),
        (VerifyCa, Some("ca.crt"), &at1, true),
        // verify-ca checks the chain, not the name.
        (VerifyCa, Some("ca.crt"), &at2, true),
        (VerifyFull, Some("ca.crt"), &at1, true),
        (VerifyFull, Some("ca.crt"), &by_name, true),
    ] {
        let proxy = proxy_to(addr.clone(), mode, ca, &certs).await;
        assert_eq!(server_leg(&proxy).await, Ok(encrypted), "{mode} to {addr}");
    }
    // Verification failures: no session, and the client is told which server and why.
    let proxy = proxy_to(at2.clone(), VerifyFull, Some("ca.crt"), &certs).await;
    assert_refused(server_leg(&proxy).await, &at2, "not valid for name");
    for mode in [VerifyCa, VerifyFull] {
        let proxy = proxy_to(at1.clone(), mode, Some("other_ca.crt"), &certs).await;
        assert_refused(server_leg(&proxy).await, &at1, "UnknownIssuer");
    }
    // A Unix-domain socket carries no TLS, whatever the default.
    let socket = cluster.socket_dir().to_str().unwrap().to_string();
    let proxy = proxy_to(
        format!("{socket}/.s.PGSQL.{}", cluster.port),
        Prefer,
        None,
        &certs,
    )
    .await;
    assert_eq!(server_leg(&proxy).await, Ok(false), "socket");

    // The same server without TLS.
    cluster.psql("ALTER SYSTEM SET ssl = off");
    cluster.psql("SELECT pg_reload_conf()");
    let direct = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        cluster.port
    );
    wait_until(|| !psql_conn(&format!("{direct} sslmode=require"), "SELECT 1").0);
    for (mode, ca) in [(Disable, None), (Prefer, None)] {
        let proxy = proxy_to(at1.clone(), mode, ca, &certs).await;
        assert_eq!(server_leg(&proxy).await, Ok(false), "{mode} without TLS");
    }
    for (mode, ca) in [
        (Require, None),
        (VerifyCa, Some("ca.crt")),
        (VerifyFull, Some("ca.crt")),
    ] {
        let proxy = proxy_to(at1.clone(), mode, ca, &certs).await;
        assert_refused(server_leg(&proxy).await, &at1, "refused TLS");
    }
    refusal_is_logged(&at1).await;
}

/// The process logs the refusal it sends the client.
async fn refusal_is_logged(upstream: &str) {
    let file = ConfigFile::new(&format!(
        "upstream = \"{upstream}\"\nupstream_tls = \"require\"\n"
    ));
    let mut proxy = Running::serve(&file.path, &[]);
    proxy.wait_ready();
    let port = proxy.port;
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || psql_at(port, "postgres", "postgres", "SELECT 1"))
            .await
            .unwrap();
    assert!(!ok && err.contains("refused TLS"), "{err}");
    proxy.wait_for_log("upstream connection failed", 0);
    let log = proxy.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("upstream connection failed"))
        .unwrap();
    assert!(
        line.contains(upstream) && line.contains("refused TLS"),
        "{line}"
    );
}

/// Retries `ok` for up to ten seconds.
fn wait_until(mut ok: impl FnMut() -> bool) {
    for _ in 0..100 {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("condition not reached in 10 s");
}

/// psql with a full conninfo string and no password prompt, given at most 30 s:
/// (success, stdout, stderr).
fn psql_conn(conninfo: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("timeout")
        .args([
            "30",
            "psql",
            "-X",
            "-At",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            conninfo,
        ])
        .args(["-c", sql])
        .env("PGPASSFILE", "/nonexistent")
        .env_remove("PGPASSWORD")
        .env_remove("PGSSLMODE")
        .env_remove("PGCHANNELBINDING")
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`psql_conn`] off the runtime that serves the proxy.
async fn psql_async(conninfo: String, sql: &'static str) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || psql_conn(&conninfo, sql))
        .await
        .unwrap()
}

/// What `\conninfo` says of psql's own connection, and the server's side through the proxy.
const BOTH_LEGS: &str =
    "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[tokio::test]
async fn client_policies() {
    let certs = Certs::new();
    let start = |mode: ClientTlsMode| {
        Proxy::start(Config {
            tls: Some(certs.pair("proxy")),
            client_tls: mode,
            metrics_listen: Some("127.0.0.1:0".into()),
            ..Config::default()
        })
    };
    let tls_in = |out: &str| out.contains("SSL connection");
    // disable: the certificate is not offered.
    let proxy = start(ClientTlsMode::Disable).await;
    let base = proxy.conninfo("postgres");
    let (ok, _, err) = psql_async(format!("{base} sslmode=require"), "SELECT 1").await;
    assert!(!ok && err.contains("server does not support SSL"), "{err}");
    let (ok, out, err) = psql_async(format!("{base} sslmode=prefer"), "\\conninfo").await;
    assert!(ok && !tls_in(&out), "{out}{err}");
    // allow: either.
    let proxy = start(ClientTlsMode::Allow).await;
    let base = proxy.conninfo("postgres");
    let (ok, out, err) = psql_async(format!("{base} sslmode=require"), "\\conninfo").await;
    assert!(ok && tls_in(&out), "{out}{err}");
    let (ok, out, err) = psql_async(format!("{base} sslmode=disable"), "\\conninfo").await;
    assert!(ok && !tls_in(&out), "{out}{err}");
    // require: plain text is refused with an error that says so, the console included.
    let proxy = start(ClientTlsMode::Require).await;
    let base = proxy.conninfo("postgres");
    for db in ["postgres", "optlock"] {
        let conninfo = format!("{} sslmode=disable", proxy.conninfo(db));
        let (ok, _, err) = psql_async(conninfo, "SELECT 1").await;
        assert!(
            !ok && err.contains("optlock accepts only TLS connections"),
            "{err}"
        );
    }
    // A verify-full client checks optlock's certificate (for 127.0.0.1, signed by the CA).
    let verify = format!(
        "{base} sslmode=verify-full sslrootcert={}",
        certs.file("ca.crt")
    );
    let (ok, out, err) = psql_async(verify, "\\conninfo").await;
    assert!(ok && tls_in(&out), "{out}{err}");
    let (_, body) = http_get(proxy.metrics.unwrap(), "/metrics").await;
    assert_eq!(
        sample(&body, "optlock_client_errors_total{reason=\"tls\"}"),
        2.0
    );
}

fn login_cluster(certs: &Certs) -> Cluster {
    let c = certs.cluster(&[
        "hostssl all certuser 127.0.0.0/8 cert",
        "host all postgres 127.0.0.0/8 trust",
        "host all md5user 127.0.0.0/8 md5",
        "host all scramuser 127.0.0.0/8 scram-sha-256",
    ]);
    c.psql(
        "CREATE ROLE scramuser LOGIN PASSWORD 'scram secret'; CREATE ROLE certuser LOGIN; \
         SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5 secret'",
    );
    c
}

/// A proxy showing clients `cert`, verifying the server fully, and presenting the client
/// certificate `client` when the server asks for one.
async fn tls_proxy(certs: &Certs, cluster: &Cluster, cert: &str) -> Proxy {
    Proxy::start(Config {
        upstream: cluster.addr(),
        tls: Some(certs.pair(cert)),
        client_tls: ClientTlsMode::Require,
        upstream_tls: UpstreamTls {
            mode: UpstreamTlsMode::VerifyFull,
            ca_file: Some(certs.path("ca.crt")),
            client_cert: Some(certs.pair("client")),
        },
        ..Config::default()
    })
    .await
}

#[tokio::test]
async fn logins_over_tls_on_both_legs() {
    let certs = Certs::new();
    let cluster = login_cluster(&certs);
    let proxy = tls_proxy(&certs, &cluster, "proxy").await;
    let port = proxy.addr.port();
    let conn = |user: &str, extra: &str| {
        format!("host=127.0.0.1 port={port} dbname=postgres user={user} sslmode=require {extra}")
    };
    for (user, extra) in [
        ("md5user", "password='md5 secret'"),
        (
            "scramuser",
            "password='scram secret' channel_binding=disable",
        ),
        // optlock's client certificate logs it in.
        ("certuser", ""),
    ] {
        let (ok, out, err) = psql_async(conn(user, extra), BOTH_LEGS).await;
        assert!(ok, "{user}: {err}");
        assert_eq!(out.trim(), format!("{user} true"), "{user}");
    }
    let (ok, _, err) = psql_async(
        conn("scramuser", "password=wrong channel_binding=disable"),
        "",
    )
    .await;
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    // A client that binds, or says it could, is told why it cannot, at once.
    for binding in ["prefer", "require"] {
        let extra = format!("password='scram secret' channel_binding={binding}");
        let (ok, _, err) = psql_async(conn("scramuser", &extra), "SELECT 1").await;
        assert!(!ok, "channel_binding={binding} logged in");
        assert!(
            err.contains("SCRAM channel binding cannot pass through optlock"),
            "{err}"
        );
    }
    sessions_show_both_legs(&certs, &proxy).await;
    binding_passes_with_the_servers_certificate(&certs, &cluster).await;
    binding_is_not_needed_with_one_plain_leg(&cluster).await;
    pgbench_prepared_over_tls(&proxy).await;
    server_gone_without_tls_goodbye(&certs, cluster, &proxy).await;
}

/// A server stopped at once (its backends exit without TLS's close_notify) ends a session
/// as a closed socket does: after what the server said, the client is told it closed.
async fn server_gone_without_tls_goodbye(certs: &Certs, cluster: Cluster, proxy: &Proxy) {
    let (mut raw, _) = raw_tls(certs, &proxy.addr.to_string()).await;
    raw.send(&wire::startup(&[
        ("user", "postgres"),
        ("database", "postgres"),
    ]))
    .await;
    raw.read_until(b'Z', 1).await;
    drop(cluster);
    let rest = raw.read_to_end().await;
    let errors: Vec<String> = rest.iter().filter_map(|m| m.field(b'M')).collect();
    assert!(
        errors
            .last()
            .is_some_and(|e| e.contains("closed the connection unexpectedly")),
        "{rest:?}"
    );
}

/// `SHOW SESSIONS` tells, per session, whether each leg is encrypted.
async fn sessions_show_both_legs(certs: &Certs, proxy: &Proxy) {
    let (mut tls, _) = raw_tls(certs, &proxy.addr.to_string()).await;
    tls.send(&wire::startup(&[
        ("user", "postgres"),
        ("database", "postgres"),
    ]))
    .await;
    tls.read_until(b'Z', 1).await;
    let console = format!("{} sslmode=require", proxy.conninfo("optlock"));
    let (ok, out, err) = psql_async(console, "SHOW SESSIONS").await;
    assert!(ok, "{err}");
    assert_eq!(
        raw_session_row(&out)[10..12],
        ["TLSv1.3", "TLSv1.3"],
        "{out}"
    );
}

/// The row of `SHOW SESSIONS` (psql -At) of the raw session: the one without an
/// application_name (psql's may still be listed for a moment after they ended).
fn raw_session_row(out: &str) -> Vec<&str> {
    out.lines()
        .map(|l| l.split('|').collect::<Vec<_>>())
        .find(|r| r[3].is_empty())
        .unwrap_or_else(|| panic!("{out}"))
}

/// With the server's own certificate, SCRAM-SHA-256-PLUS passes through optlock.
async fn binding_passes_with_the_servers_certificate(certs: &Certs, cluster: &Cluster) {
    let proxy = tls_proxy(certs, cluster, "server").await;
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=postgres user=scramuser password='scram secret' \
         sslmode=require channel_binding=require",
        proxy.addr.port()
    );
    let (ok, out, err) = psql_async(conninfo, BOTH_LEGS).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "scramuser true");
}

/// With one leg in plain text nothing binds across optlock: SCRAM logs in as usual, to the
/// admin console too, and `SHOW SESSIONS` tells which leg is encrypted.
async fn binding_is_not_needed_with_one_plain_leg(cluster: &Cluster) {
    let proxy = Proxy::start(Config {
        upstream: cluster.addr(),
        admin_users: vec!["scramuser".into()],
        ..Config::default()
    })
    .await;
    let conninfo = |db: &str| {
        format!(
            "host=127.0.0.1 port={} dbname={db} user=scramuser password='scram secret'",
            proxy.addr.port()
        )
    };
    let (ok, out, err) = psql_async(conninfo("postgres"), BOTH_LEGS).await;
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "scramuser true",
        "a plain client, the server over TLS"
    );
    let (_raw, _) = Raw::login(&proxy.addr.to_string(), "postgres", "postgres").await;
    let (ok, out, err) = psql_async(conninfo("optlock"), "SHOW SESSIONS").await;
    assert!(ok, "{err}");
    let row = raw_session_row(&out);
    assert_eq!(row[10..12], ["off", "TLSv1.3"], "{out}");
}

/// `pgbench -M prepared` through a proxy that allows nothing but TLS on either leg.
async fn pgbench_prepared_over_tls(proxy: &Proxy) {
    let port = proxy.addr.port().to_string();
    let run = move |args: &[&str]| {
        let out = Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .env("PGSSLMODE", "require")
            .output()
            .expect("run pgbench");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pgbench {args:?}: {text}");
        text
    };
    let out = tokio::task::spawn_blocking(move || {
        run(&["-i", "-q", "-s", "1"]);
        run(&["-n", "-M", "prepared", "-c", "2", "-j", "2", "-T", "2"])
    })
    .await
    .unwrap();
    let processed = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(processed > 0, "{out}");
    assert!(out.contains("number of failed transactions: 0"), "{out}");
}

#[tokio::test]
async fn certificate_reload_keeps_sessions_open() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        dir.path().join("optlock.crt"),
        dir.path().join("optlock.key"),
    );
    let install = |name: &str| {
        std::fs::copy(certs.path(&format!("{name}.crt")), &cert).unwrap();
        std::fs::copy(certs.path(&format!("{name}.key")), &key).unwrap();
    };
    install("proxy");
    let file = ConfigFile::new(&format!(
        "upstream = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        upstream(),
        cert.display(),
        key.display()
    ));
    let mut proxy = Running::serve(&file.path, &[]);
    proxy.wait_ready();
    let addr = format!("127.0.0.1:{}", proxy.port);
    let (mut before, shown) = session(&certs, &addr).await;
    assert_eq!(shown, certs.der("proxy"));

    // SIGHUP: new sessions get the new certificate, the open one goes on.
    install("impostor");
    proxy.signal("HUP");
    proxy.wait_for_log("TLS certificates read again", 0);
    assert_eq!(select_one(&mut before).await, "1");
    let (mut after, shown) = session(&certs, &addr).await;
    assert_eq!(shown, certs.der("impostor"));

    // A file that cannot be read fails the reload (RELOAD here) and changes nothing.
    std::fs::write(&cert, "not a certificate").unwrap();
    let port = proxy.port;
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || psql_at(port, "postgres", "optlock", "RELOAD"))
            .await
            .unwrap();
    assert!(!ok && err.contains("no PEM certificate"), "{err}");
    assert!(err.contains(&cert.display().to_string()), "{err}");
    let (_, shown) = session(&certs, &addr).await;
    assert_eq!(shown, certs.der("impostor"));
    assert_eq!(select_one(&mut before).await, "1");
    assert_eq!(select_one(&mut after).await, "1");
}

/// A session over TLS, logged in, and the certificate the proxy showed.
async fn session(certs: &Certs, addr: &str) -> (Raw, Vec<u8>) {
    let (mut raw, leaf) = raw_tls(certs, addr).await;
    raw.send(&wire::startup(&[
        ("user", "postgres"),
        ("database", "postgres"),
    ]))
    .await;
    let login = raw.read_until(b'Z', 1).await;
    assert!(login.iter().all(|m| m.tag != b'E'), "{login:?}");
    (raw, leaf)
}

/// `SELECT 1` on a raw session: the value.
async fn select_one(raw: &mut Raw) -> String {
    raw.send(&wire::query("SELECT 1")).await;
    let msgs = raw.read_until(b'Z', 1).await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    String::from_utf8_lossy(&row.body()[row.body().len() - 1..]).into_owned()
}

#[test]
fn check_warns_of_a_remote_upstream_without_verify_full() {
    let (host, port) = split_addr(&upstream());
    let url = format!("postgres://postgres@{host}:{port}/postgres");
    let check = |toml: &str| {
        let file = ConfigFile::new(toml);
        let (status, _, err) =
            run_optlock(&["check", "--config", file.path_str(), "--database-url", &url]);
        assert!(status.success(), "a warning is not a failure: {err}");
        err
    };
    let err = check("upstream = \"db.example.com:5432\"\n");
    assert!(
        err.contains("the upstream server db.example.com:5432 is on another host")
            && err.contains("upstream_tls = \"prefer\"")
            && err.contains("verify-full"),
        "{err}"
    );
    let err = check("upstream = \"10.1.2.3:5432\"\nupstream_tls = \"require\"\n");
    assert!(
        err.contains("without checking that the certificate names that host"),
        "{err}"
    );
    let full = "upstream = \"db.example.com:5432\"\nupstream_tls = \"verify-full\"\n\
                upstream_tls_ca_file = \"/etc/optlock/ca.crt\"\n";
    assert!(!check(full).contains("warning"));
    assert!(!check("upstream = \"127.0.0.1:5432\"\n").contains("warning"));
}
