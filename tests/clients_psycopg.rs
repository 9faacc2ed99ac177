//! psycopg 3 (Python) through the proxy: server-side parameters, COPY, pipeline mode, and the
//! conflict error's SQLSTATE and diagnostics as the driver exposes them.

mod common;
use common::guards::INVOICE;
use common::*;

#[tokio::test]
async fn psycopg_sees_exact_results_and_the_conflict_error() {
    let (has_psycopg, _, err) = run("python3", &["-c", "import psycopg"]);
    assert!(
        has_psycopg,
        "psycopg is needed for this test (pip install 'psycopg[binary]'; .ci/run installs it): {err}"
    );
    let db = TestDb::new("psycopg").await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/psycopg_check.py"
    );
    let conninfo = proxy.conninfo(&db.name);
    let (ok, out, err) = tokio::task::spawn_blocking(move || run("python3", &[script, &conninfo]))
        .await
        .unwrap();
    assert!(ok, "psycopg check failed:\n{out}\n{err}");
    assert_eq!(out.trim(), "ok");
}
