//! Prometheus metrics over HTTP: a proxy whose `metrics_listen` asks for port 0 reports the
//! bound address, and `GET /metrics` counts guarded writes by table and outcome, sessions and
//! bytes after real traffic.

mod common;

use std::time::Duration;

use common::guards::{INVOICE, invoice_db, provoke_conflict};
use common::{Proxy, http_get, sample};
use optlock::config::Config;

/// `public.customer` guarded by `xmin`, beside the invoice guard.
const CUSTOMER: &str = r#"
[[guard]]
table = "public.customer"
key = ["id"]
version = "xmin"
"#;

#[tokio::test]
async fn metrics_count_conflicts_sessions_and_bytes() {
    let db = invoice_db(
        "metrics",
        2,
        "CREATE TABLE customer (id int primary key, name text);",
    )
    .await;
    let config = format!("metrics_listen = \"127.0.0.1:0\"\n{INVOICE}{CUSTOMER}");
    let proxy = Proxy::start(Config::parse(&config, "metrics.toml").unwrap()).await;
    let metrics = proxy.metrics.expect("metrics listener bound");
    assert_ne!(metrics.port(), 0, "the bound port, not the one asked for");

    // Before any traffic: the series exist, at zero.
    let (head, body) = http_get(metrics, "/metrics").await;
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

    let a = proxy.client_as(&db.name, "a").await;
    let b = proxy.client_as(&db.name, "b").await;
    provoke_conflict(&a, &b).await;
    // An unguarded write and a read add nothing to the guarded counters.
    b.batch_execute("INSERT INTO customer VALUES (1, 'x'); SELECT * FROM customer")
        .await
        .unwrap();

    let (_, body) = http_get(metrics, "/metrics").await;
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
        let (_, body) = http_get(metrics, "/metrics").await;
        active = sample(&body, "optlock_sessions_active");
        if active == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(active, 0.0);

    let (head, _) = http_get(metrics, "/nothing").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    assert!(proxy.shutdown(), "the server is still running");
    tokio::time::timeout(Duration::from_secs(60), proxy.task)
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
        "metrics_listen = \"127.0.0.1:0\"\nupstream_connect_timeout = 10\n",
        "m.toml",
    )
    .unwrap();
    config.upstream = dead_addr.to_string();
    let proxy = Proxy::start(config).await;
    let metrics = proxy.metrics.unwrap();

    let err = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=x",
            proxy.addr.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("no upstream");
    assert_eq!(err.code().map(|c| c.code()), Some("08006"), "{err}");
    let (_, body) = http_get(metrics, "/metrics").await;
    assert_eq!(
        sample(&body, "optlock_upstream_connect_failures_total"),
        1.0
    );
    proxy.shutdown();
}
