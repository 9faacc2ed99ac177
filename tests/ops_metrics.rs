//! Prometheus metrics over HTTP: a proxy whose `metrics_listen` asks for port 0 reports the
//! bound address, and `GET /metrics` counts guarded writes by table and outcome, sessions and
//! bytes after real traffic.

mod common;

use std::time::Duration;

use common::{TestDb, connect, upstream};
use optlock::config::Config;
use optlock::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
metrics_listen = "127.0.0.1:0"
listen = "127.0.0.1:0"

[[guard]]
table = "public.invoice"
key = ["id"]
version = "version"

[[guard]]
table = "public.customer"
key = ["id"]
version = "xmin"
"#;

async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("the metrics server answers and closes")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

/// The value of one sample line (`name{labels} value`).
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series}:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_conflicts_sessions_and_bytes() {
    let db = TestDb::new("metrics").await;
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE invoice (id int primary key, total numeric not null, version bigint not null default 0);
             INSERT INTO invoice (id, total) VALUES (1, 10), (2, 10);
             CREATE TABLE customer (id int primary key, name text);",
        )
        .await
        .unwrap();
    let mut config = Config::parse(CONFIG, "metrics.toml").unwrap();
    config.upstream = upstream();
    let server = Server::bind(config, None).await.unwrap();
    let addr = server.local_addr().unwrap();
    let metrics = server.metrics_addr().expect("metrics listener bound");
    assert_ne!(metrics.port(), 0, "the bound port, not the one asked for");
    let stop = server.shutdown_handle();
    let task = tokio::spawn(server.run());

    // Before any traffic: the series exist, at zero.
    let (head, body) = get(metrics, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert_eq!(
        sample(
            &body,
            "optlock_guarded_writes_total{table=\"public.invoice\",outcome=\"conflict\"}"
        ),
        0.0
    );
    assert_eq!(sample(&body, "optlock_sessions_total"), 0.0);

    let conninfo = |app: &str| {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={} application_name={app}",
            addr.port(),
            db.name
        )
    };
    let a = connect(&conninfo("a")).await;
    let b = connect(&conninfo("b")).await;
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
    assert_eq!(err.code().map(|c| c.code()), Some("40001"));
    // An unguarded write and a read add nothing to the guarded counters.
    b.batch_execute("INSERT INTO customer VALUES (1, 'x'); SELECT * FROM customer")
        .await
        .unwrap();

    let (_, body) = get(metrics, "/metrics").await;
    assert!(
        body.lines().any(|l| l
            == "optlock_guarded_writes_total{table=\"public.invoice\",outcome=\"conflict\"} 1"),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "optlock_guarded_writes_total{table=\"public.invoice\",outcome=\"rewritten\"}"
        ) >= 2.0
    );
    assert_eq!(
        sample(
            &body,
            "optlock_guarded_writes_total{table=\"public.invoice\",outcome=\"refused\"}"
        ),
        0.0
    );
    assert_eq!(
        sample(
            &body,
            "optlock_guarded_writes_total{table=\"public.customer\",outcome=\"rewritten\"}"
        ),
        0.0
    );
    assert_eq!(sample(&body, "optlock_sessions_total"), 2.0);
    assert_eq!(sample(&body, "optlock_sessions_active"), 2.0);
    assert_eq!(
        sample(&body, "optlock_statements_total"),
        4.0,
        "four simple queries"
    );
    assert!(sample(&body, "optlock_bytes_total{direction=\"client_to_server\"}") > 0.0);
    assert!(sample(&body, "optlock_bytes_total{direction=\"server_to_client\"}") > 0.0);
    assert_eq!(
        sample(&body, "optlock_upstream_connect_failures_total"),
        0.0
    );
    assert!(
        body.contains("optlock_added_latency_seconds_count"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));

    // Sessions that end leave the active gauge.
    drop(a);
    drop(b);
    let mut active = f64::NAN;
    for _ in 0..600 {
        let (_, body) = get(metrics, "/metrics").await;
        active = sample(&body, "optlock_sessions_active");
        if active == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(active, 0.0);

    let (head, _) = get(metrics, "/nothing").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn upstream_connect_failures_are_counted() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let mut config = Config::parse(
        "metrics_listen = \"127.0.0.1:0\"\nlisten = \"127.0.0.1:0\"\nupstream_connect_timeout = 10\n",
        "m.toml",
    )
    .unwrap();
    config.upstream = dead_addr.to_string();
    let server = Server::bind(config, None).await.unwrap();
    let addr = server.local_addr().unwrap();
    let metrics = server.metrics_addr().unwrap();
    let stop = server.shutdown_handle();
    tokio::spawn(server.run());

    let err = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={} user=postgres dbname=x", addr.port()),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("no upstream");
    assert_eq!(err.code().map(|c| c.code()), Some("08006"), "{err}");
    let (_, body) = get(metrics, "/metrics").await;
    assert_eq!(
        sample(&body, "optlock_upstream_connect_failures_total"),
        1.0
    );
    let _ = stop.send(true);
}
