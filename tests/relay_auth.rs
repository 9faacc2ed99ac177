//! Authentication and TLS through the relay, against a throwaway cluster that demands
//! passwords: SCRAM-SHA-256, md5 and cleartext logins (right password in, wrong password gets
//! the server's own 28P01 and nothing else), a login left unfinished, and TLS on the client
//! side (sslmode=require with a configured certificate, plain still allowed, 'N' without one).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::cluster::Cluster;
use common::wire::{self, Msg, Raw};
use common::*;
use optlock::config::{Config, TlsConfig};
use tokio_postgres::NoTls;

fn password_cluster() -> Cluster {
    let c = Cluster::start(&[
        "host all postgres 127.0.0.1/32 trust",
        "host all md5user 127.0.0.1/32 md5",
        "host all plainuser 127.0.0.1/32 password",
        "host all all 127.0.0.1/32 scram-sha-256",
    ]);
    c.psql(
        "CREATE ROLE scramuser LOGIN PASSWORD 'scram secret'; \
         CREATE ROLE plainuser LOGIN PASSWORD 'plain secret'; \
         SET password_encryption = 'md5'; \
         CREATE ROLE md5user LOGIN PASSWORD 'md5 secret'",
    );
    let stored = c.psql(
        "SELECT rolname || ':' || left(rolpassword, 3) FROM pg_authid \
         WHERE rolname IN ('scramuser', 'md5user') ORDER BY 1",
    );
    assert_eq!(stored.trim(), "md5user:md5\nscramuser:SCR");
    c
}

async fn proxy_for(cluster: &Cluster, tls: Option<TlsConfig>) -> Proxy {
    Proxy::start(Config {
        upstream: cluster.addr(),
        tls,
        ..Config::default()
    })
    .await
}

fn conninfo(proxy: &Proxy, user: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password='{password}' dbname=postgres",
        proxy.addr.port()
    )
}

async fn login(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn assert_logs_in(proxy: &Proxy, user: &str, password: &str) {
    let c = login(&conninfo(proxy, user, password))
        .await
        .unwrap_or_else(|e| panic!("{user} with the right password: {e}"));
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, user);
}

async fn assert_refused(proxy: &Proxy, user: &str, password: &str) {
    let e = login(&conninfo(proxy, user, password))
        .await
        .err()
        .unwrap_or_else(|| panic!("{user} with a wrong password logged in"));
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    assert_eq!(db.code().code(), "28P01", "{db:?}");
    assert_eq!(db.severity(), "FATAL");
    assert!(
        db.message()
            .contains(&format!("authentication failed for user \"{user}\"")),
        "{}",
        db.message()
    );
}

#[tokio::test]
async fn password_logins_pass_through() {
    let cluster = password_cluster();
    let proxy = proxy_for(&cluster, None).await;
    assert_logs_in(&proxy, "scramuser", "scram secret").await;
    assert_refused(&proxy, "scramuser", "scram wrong").await;
    assert_logs_in(&proxy, "md5user", "md5 secret").await;
    assert_refused(&proxy, "md5user", "md5 wrong").await;
    assert_logs_in(&proxy, "plainuser", "plain secret").await;
    assert_refused(&proxy, "plainuser", "plain wrong").await;
    // libpq's side of the exchange too.
    let port = proxy.addr.port();
    let (ok, out, err) = psql_conn(
        format!(
            "host=127.0.0.1 port={port} user=scramuser password='scram secret' dbname=postgres"
        ),
        "SELECT current_user",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "scramuser");
    let (ok, _, err) = psql_conn(
        format!("host=127.0.0.1 port={port} user=md5user password=nope dbname=postgres"),
        "SELECT 1",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("password authentication failed"), "{err}");

    // One cluster serves the rest (each cluster costs seconds on a small machine).
    successful_cleartext_login_reply_matches_the_servers(&cluster).await;
    scram_over_tls_to_the_proxy(&cluster).await;
    unfinished_login_is_closed_after_client_login_timeout(&cluster).await;
}

/// The whole reply stream of a cleartext-password login with `password`, to EOF or the first
/// ReadyForQuery.
async fn cleartext_login(addr: &str, password: &str) -> Vec<Msg> {
    let mut raw = Raw::connect(addr).await;
    raw.send(&wire::startup(&[
        ("user", "plainuser"),
        ("database", "postgres"),
    ]))
    .await;
    let first = raw.read_msg().await.expect("an authentication request");
    assert_eq!(first.tag, b'R');
    assert_eq!(
        first.body(),
        &3i32.to_be_bytes(),
        "AuthenticationCleartextPassword"
    );
    raw.send(&wire::password(password)).await;
    let mut out = vec![first];
    while let Some(m) = raw.read_msg().await {
        let done = m.tag == b'Z';
        out.push(m);
        if done {
            break;
        }
    }
    out
}

#[tokio::test]
async fn failed_login_reply_is_exactly_the_servers() {
    let cluster = password_cluster();
    let proxy = proxy_for(&cluster, None).await;
    let direct = cleartext_login(&cluster.addr(), "plain wrong").await;
    let relayed = cleartext_login(&proxy.addr.to_string(), "plain wrong").await;
    assert_eq!(direct.last().unwrap().field(b'C').as_deref(), Some("28P01"));
    assert_eq!(relayed, direct);
}

async fn successful_cleartext_login_reply_matches_the_servers(cluster: &Cluster) {
    let proxy = proxy_for(cluster, None).await;
    let mask = |mut msgs: Vec<Msg>| -> Vec<Msg> {
        wire::mask_keys(&mut msgs);
        msgs
    };
    let direct = mask(cleartext_login(&cluster.addr(), "plain secret").await);
    let relayed = mask(cleartext_login(&proxy.addr.to_string(), "plain secret").await);
    assert_eq!(direct.last().unwrap().tag, b'Z');
    assert_eq!(relayed, direct);
}

async fn unfinished_login_is_closed_after_client_login_timeout(cluster: &Cluster) {
    let proxy = Proxy::start(Config {
        upstream: cluster.addr(),
        client_login_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    let mut raw = Raw::connect(&proxy.addr.to_string()).await;
    raw.send(&wire::startup(&[
        ("user", "scramuser"),
        ("database", "postgres"),
    ]))
    .await;
    let sasl = raw.read_msg().await.expect("AuthenticationSASL");
    assert_eq!(sasl.tag, b'R');
    assert_eq!(&sasl.body()[..4], &10i32.to_be_bytes());
    // Never answer: the proxy ends the session (at most with an error), within the timeout.
    let rest = raw.read_to_end().await;
    assert!(rest.iter().all(|m| m.tag == b'E'), "{rest:?}");
    // And the half-open server backend is gone.
    let watcher = cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'scramuser'");
    let mut n = watcher.trim().to_string();
    for _ in 0..100 {
        if n == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        n = cluster
            .psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'scramuser'")
            .trim()
            .to_string();
    }
    assert_eq!(n, "0");
}

/// psql with a full conninfo string, off the runtime that serves the proxy.
async fn psql_conn(conninfo: String, sql: &str) -> (bool, String, String) {
    let sql = sql.to_string();
    tokio::task::spawn_blocking(move || {
        run(
            "psql",
            &["-X", "-At", "-v", "ON_ERROR_STOP=1", &conninfo, "-c", &sql],
        )
    })
    .await
    .unwrap()
}

fn self_signed(dir: &std::path::Path) -> TlsConfig {
    let cert: PathBuf = dir.join("cert.pem");
    let key: PathBuf = dir.join("key.pem");
    let (ok, _, err) = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-days",
            "1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    assert!(ok, "openssl: {err}");
    TlsConfig { cert, key }
}

#[tokio::test]
async fn tls_to_the_proxy() {
    let db = TestDb::new("auth_tls").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(Config {
        tls: Some(self_signed(dir.path())),
        ..Config::default()
    })
    .await;
    let port = proxy.addr.port();
    let base = format!(
        "host=127.0.0.1 port={port} user=postgres dbname={}",
        db.name
    );

    let (ok, out, err) = psql_conn(format!("{base} sslmode=require"), "SELECT 1").await;
    assert!(ok, "sslmode=require: {err}");
    assert_eq!(out.trim(), "1");
    let (ok, out, err) = psql_conn(format!("{base} sslmode=require"), "\\conninfo").await;
    assert!(ok, "{err}");
    assert!(out.contains("SSL connection"), "{out}");
    // Large results and a large query over TLS.
    let (ok, out, err) = psql_conn(
        format!("{base} sslmode=require"),
        &format!(
            "SELECT length('{}'), repeat('y', 3000000)",
            "x".repeat(100_000)
        ),
    )
    .await;
    assert!(ok, "{err}");
    let (len, ys) = out.trim().split_once('|').unwrap();
    assert_eq!(len, "100000");
    assert_eq!(ys.len(), 3_000_000);
    assert!(ys.bytes().all(|b| b == b'y'));
    // psql's cancel on SIGINT (a plain CancelRequest) reaches a TLS session's backend.
    let conninfo = format!("{base} sslmode=require");
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        run(
            "timeout",
            &[
                "-s",
                "INT",
                "1",
                "psql",
                "-X",
                &conninfo,
                "-c",
                "SELECT pg_sleep(30)",
            ],
        )
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
    // Plain connections are still served.
    let (ok, out, err) = psql_conn(format!("{base} sslmode=disable"), "\\conninfo").await;
    assert!(ok, "sslmode=disable: {err}");
    assert!(!out.contains("SSL connection"), "{out}");
    let (ok, out, _) = psql_conn(format!("{base} sslmode=prefer"), "SELECT 2").await;
    assert!(ok);
    assert_eq!(out.trim(), "2");

    // Without TLS configured the proxy answers 'N'.
    let plain = Proxy::plain().await;
    let base = format!(
        "host=127.0.0.1 port={} user=postgres dbname={}",
        plain.addr.port(),
        db.name
    );
    let (ok, _, err) = psql_conn(format!("{base} sslmode=require"), "SELECT 1").await;
    assert!(!ok, "sslmode=require without a certificate must fail");
    assert!(err.contains("server does not support SSL"), "{err}");
    let (ok, out, _) = psql_conn(format!("{base} sslmode=prefer"), "SELECT 3").await;
    assert!(ok);
    assert_eq!(out.trim(), "3");
}

async fn scram_over_tls_to_the_proxy(cluster: &Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(cluster, Some(self_signed(dir.path()))).await;
    let port = proxy.addr.port();
    for (user, pw) in [("scramuser", "scram secret"), ("md5user", "md5 secret")] {
        let (ok, out, err) = psql_conn(
            format!(
                "host=127.0.0.1 port={port} user={user} password='{pw}' dbname=postgres sslmode=require"
            ),
            "SELECT current_user",
        )
        .await;
        assert!(ok, "{user} over TLS: {err}");
        assert_eq!(out.trim(), user);
    }
    let (ok, _, err) = psql_conn(
        format!(
            "host=127.0.0.1 port={port} user=scramuser password=wrong dbname=postgres sslmode=require"
        ),
        "SELECT 1",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("password authentication failed"), "{err}");
}

/// Accepts any server certificate (the test's own self-signed one), still checking signatures.
#[derive(Debug)]
struct AcceptAnyCert(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// SSLRequest, 'S', then a TLS handshake: a raw protocol connection over TLS.
async fn raw_tls(addr: &str) -> Raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A small receive window keeps the proxy's socket to this client small and full.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let mut tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
    tcp.write_all(&wire::ssl_request()).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake with the proxy");
    Raw::over(tls)
}

#[tokio::test]
async fn large_results_to_a_slow_tls_reader_arrive_whole() {
    use tokio::io::AsyncReadExt;
    let db = TestDb::new("auth_tls_slow").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(Config {
        tls: Some(self_signed(dir.path())),
        ..Config::default()
    })
    .await;
    let mut raw = raw_tls(&proxy.addr.to_string()).await;
    raw.send(&wire::startup(&[
        ("user", "postgres"),
        ("database", &db.name),
    ]))
    .await;
    raw.read_until(b'Z', 1).await;
    // Replies larger than the socket to the client, read at a steady pace slower than the
    // proxy sends: the socket stays full, and the end of each reply is written while it is.
    for round in 0..10 {
        raw.send(&wire::query(
            b"SELECT repeat('x', 1000) FROM generate_series(1, 300)",
        ))
        .await;
        let mut got: Vec<u8> = Vec::with_capacity(400_000);
        let mut chunk = vec![0u8; 4 * 1024];
        let ready = [b'Z', 0, 0, 0, 5, b'I'];
        while !got.ends_with(&ready) {
            let n = tokio::time::timeout(Duration::from_secs(10), raw.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "round {round}: the reply stalled after {} bytes; it ends with {:?}",
                        got.len(),
                        &got[got.len().saturating_sub(16)..]
                    )
                })
                .unwrap();
            assert!(n > 0, "EOF after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(got.len() > 300_000);
    }
}
