//! node-postgres through the proxy: extended and simple queries, a transaction aborted by a
//! conflict, and the conflict error's fields as the driver exposes them.

mod common;
use common::guards::INVOICE;
use common::*;

#[tokio::test]
async fn node_postgres_sees_exact_results_and_the_conflict_error() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/node");
    assert!(
        std::path::Path::new(dir).join("node_modules/pg").exists(),
        "node-postgres is needed for this test: npm install --prefix {dir} (.ci/run does it)"
    );
    let db = TestDb::new("nodepg").await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let url = format!(
        "postgres://postgres@{}:{}/{}",
        proxy.addr.ip(),
        proxy.addr.port(),
        db.name
    );
    let script = format!("{dir}/check.js");
    let (ok, out, err) = tokio::task::spawn_blocking(move || run("node", &[&script, &url]))
        .await
        .unwrap();
    assert!(ok, "node-postgres check failed:\n{out}\n{err}");
    assert_eq!(out.trim(), "ok");
}
