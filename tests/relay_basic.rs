//! Pass-through basics: simple and extended queries, errors, transactions through the proxy.

mod common;
use common::*;

#[tokio::test]
async fn simple_and_extended_queries_pass_through() {
    let db = TestDb::new("basic").await;
    let proxy = Proxy::plain().await;
    let c = proxy.client(&db.name).await;
    c.batch_execute(
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    )
    .await
    .unwrap();
    let rows = c
        .query("SELECT v FROM t WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "b");
    let err = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    // The session is still usable after the error.
    let n = c
        .execute("UPDATE t SET v = 'c' WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(n, 1);
}
