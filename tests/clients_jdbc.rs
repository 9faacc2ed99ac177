//! pgjdbc (Java) through the proxy: server-side prepared statements, a batch, and the conflict
//! error's SQLSTATE and `ServerErrorMessage` fields.

mod common;
use common::guards::INVOICE;
use common::*;

const JAR: &str = "/usr/share/java/postgresql.jar";

#[tokio::test]
async fn pgjdbc_sees_exact_results_and_the_conflict_error() {
    assert!(
        std::path::Path::new(JAR).exists(),
        "pgjdbc is needed for this test: apt-get install libpostgresql-jdbc-java (.ci/run does it)"
    );
    let build = tempfile::tempdir().unwrap();
    let out_dir = build.path().to_str().unwrap().to_string();
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/jdbc/Check.java");
    let (ok, _, err) = run("javac", &["-cp", JAR, "-d", &out_dir, source]);
    assert!(ok, "javac failed: {err}");
    let db = TestDb::new("jdbc").await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let url = format!(
        "jdbc:postgresql://{}:{}/{}?sslmode=disable",
        proxy.addr.ip(),
        proxy.addr.port(),
        db.name
    );
    let classpath = format!("{JAR}:{out_dir}");
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || run("java", &["-cp", &classpath, "Check", &url]))
            .await
            .unwrap();
    assert!(ok, "pgjdbc check failed:\n{out}\n{err}");
    assert_eq!(out.trim(), "ok");
}
