//! Protocol pass-through with tokio-postgres: simple and extended queries, reused prepared
//! statements, transactions and aborted transactions, pipelined queries with a failure in the
//! middle, COPY in and out (and a failing COPY), LISTEN/NOTIFY between two proxied sessions,
//! binary results of many types, 10 MB values both ways and a 2 MB query text.

mod common;
use common::*;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

#[tokio::test]
async fn simple_queries_return_rows_tags_and_errors() {
    let db = TestDb::new("proto_simple").await;
    let proxy = Proxy::plain().await;
    let c = proxy.client(&db.name).await;
    let msgs = c
        .simple_query(
            "CREATE TABLE t (id int primary key, v text); \
             INSERT INTO t VALUES (1, 'a'), (2, NULL); \
             SELECT id, v FROM t ORDER BY id; \
             UPDATE t SET v = 'z' WHERE id > 0",
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&msgs),
        vec![
            vec![Some("1".into()), Some("a".into())],
            vec![Some("2".into()), None]
        ]
    );
    assert_eq!(rows_affected(&msgs), vec![0, 2, 2, 2]);
    let e = c.simple_query("SELECT * FROM missing").await.unwrap_err();
    assert_eq!(code(&e), "42P01");
    let e = c
        .simple_query("SELECT 1; SELECT 1/0; SELECT 3")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22012");
    let msgs = c.simple_query("SELECT 'still fine'").await.unwrap();
    assert_eq!(rows(&msgs), vec![vec![Some("still fine".into())]]);
}

#[tokio::test]
async fn extended_queries_and_reused_prepared_statements() {
    let db = TestDb::new("proto_ext").await;
    let proxy = Proxy::plain().await;
    let c = proxy.client(&db.name).await;
    c.batch_execute("CREATE TABLE t (id int primary key, v text)")
        .await
        .unwrap();
    let ins = c.prepare("INSERT INTO t VALUES ($1, $2)").await.unwrap();
    let sel = c.prepare("SELECT v FROM t WHERE id = $1").await.unwrap();
    for i in 0..50i32 {
        assert_eq!(c.execute(&ins, &[&i, &format!("v{i}")]).await.unwrap(), 1);
    }
    for i in (0..50i32).rev() {
        let row = c.query_one(&sel, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("v{i}"));
    }
    // A unique violation through a reused statement, then the statement still works.
    let e = c.execute(&ins, &[&1i32, &"dup"]).await.unwrap_err();
    assert_eq!(code(&e), "23505");
    assert_eq!(c.execute(&ins, &[&100i32, &"ok"]).await.unwrap(), 1);
    // Unnamed statements (query with a string) interleaved with the named ones.
    let n: i64 = c
        .query_one("SELECT count(*) FROM t WHERE id < $1", &[&10i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10);
    // A portal read in chunks (Execute with a row limit, PortalSuspended).
    let mut tx_client = proxy.client(&db.name).await;
    let tx = tx_client.transaction().await.unwrap();
    let stmt = tx.prepare("SELECT id FROM t ORDER BY id").await.unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 7).await.unwrap();
        if rows.is_empty() {
            break;
        }
        seen.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    tx.commit().await.unwrap();
    let mut expected: Vec<i32> = (0..50).collect();
    expected.push(100);
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn transactions_commit_rollback_and_abort() {
    let db = TestDb::new("proto_tx").await;
    let proxy = Proxy::plain().await;
    let mut c = proxy.client(&db.name).await;
    c.batch_execute("CREATE TABLE t (id int primary key)")
        .await
        .unwrap();

    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    tx.commit().await.unwrap();

    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    tx.rollback().await.unwrap();

    c.batch_execute("BEGIN").await.unwrap();
    c.execute("INSERT INTO t VALUES (3)", &[]).await.unwrap();
    let e = c
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23505");
    let e = c.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(code(&e), "25P02");
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), "25P02");
    // COMMIT of an aborted transaction reports ROLLBACK.
    let msgs = c.simple_query("COMMIT").await.unwrap();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(0))),
        "COMMIT completes"
    );
    let ids: Vec<i32> = c
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1]);
    // The aborted one again, closed by ROLLBACK this time.
    c.batch_execute("BEGIN; INSERT INTO t VALUES (4)")
        .await
        .unwrap();
    assert!(c.batch_execute("SELECT 1/0").await.is_err());
    assert_eq!(
        code(&c.batch_execute("SELECT 1").await.unwrap_err()),
        "25P02"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn pipelined_queries_with_an_error_in_the_middle() {
    let db = TestDb::new("proto_pipe").await;
    let proxy = Proxy::plain().await;
    let c = proxy.client(&db.name).await;
    let div = c.prepare("SELECT 100 / $1::int").await.unwrap();
    let echo = c.prepare("SELECT $1::text || '!'").await.unwrap();
    for round in 0..20 {
        // tokio-postgres writes all of them before reading any reply.
        let word = format!("r{round}");
        let word_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&word];
        let (a, b, d, e) = futures_util::join!(
            c.query_one(&div, &[&4i32]),
            c.query_one(&div, &[&0i32]),
            c.query_one(&echo, &word_param),
            c.query("SELECT generate_series(1, 3)", &[]),
        );
        assert_eq!(a.unwrap().get::<_, i32>(0), 25);
        assert_eq!(code(&b.unwrap_err()), "22012");
        assert_eq!(d.unwrap().get::<_, String>(0), format!("r{round}!"));
        let e: Vec<i32> = e.unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(e, vec![1, 2, 3]);
    }
    // Many small queries in flight at once.
    let futs = (0..200i32).map(|i| {
        let c = &c;
        let div = &div;
        async move {
            let r = c.query_one(div, &[&(i % 5)]).await;
            (i, r)
        }
    });
    for (i, r) in futures_util::future::join_all(futs).await {
        match i % 5 {
            0 => assert_eq!(code(&r.unwrap_err()), "22012"),
            d => assert_eq!(r.unwrap().get::<_, i32>(0), 100 / d),
        }
    }
}

#[tokio::test]
async fn copy_in_and_out() {
    let db = TestDb::new("proto_copy").await;
    let proxy = Proxy::plain().await;
    let c = proxy.client(&db.name).await;
    c.batch_execute("CREATE TABLE t (id int primary key, v text)")
        .await
        .unwrap();

    // COPY IN: many rows over many CopyData messages, some of them large.
    let sink = c.copy_in("COPY t (id, v) FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut expected = String::new();
    for chunk in 0..40 {
        let mut data = String::new();
        for i in 0..250 {
            let id = chunk * 250 + i;
            let v = if id % 1000 == 0 {
                "x".repeat(100_000)
            } else {
                format!("row {id}\\twith tab")
            };
            data.push_str(&format!("{id}\t{v}\n"));
        }
        expected.push_str(&data);
        sink.send(Bytes::from(data)).await.unwrap();
    }
    let n = sink.as_mut().finish().await.unwrap();
    assert_eq!(n, 10_000);

    // COPY OUT gives back the very same bytes.
    let stream = c
        .copy_out("COPY (SELECT id, v FROM t ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(out.len(), expected.len());
    assert!(out == expected.as_bytes(), "COPY OUT differs from COPY IN");

    // Binary COPY OUT round trip through COPY IN.
    c.batch_execute("CREATE TABLE t2 (LIKE t)").await.unwrap();
    let bin: Vec<Bytes> = c
        .copy_out("COPY t TO STDOUT (FORMAT binary)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let sink = c
        .copy_in("COPY t2 FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for b in bin {
        sink.send(b).await.unwrap();
    }
    assert_eq!(sink.as_mut().finish().await.unwrap(), 10_000);
    let same: bool = c
        .query_one(
            "SELECT NOT EXISTS (SELECT * FROM t EXCEPT SELECT * FROM t2)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(same);
}

#[tokio::test]
async fn copy_error_leaves_session_usable() {
    let db = TestDb::new("proto_copyerr").await;
    let proxy = Proxy::plain().await;
    let c = proxy.client(&db.name).await;
    c.batch_execute("CREATE TABLE t (id int primary key, v text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut err = None;
    for data in ["1\tone\n", "not-a-number\ttwo\n", "3\tthree\n"] {
        if let Err(e) = sink.send(Bytes::from(data)).await {
            err = Some(e);
            break;
        }
    }
    let e = match err {
        Some(e) => e,
        None => sink.as_mut().finish().await.unwrap_err(),
    };
    assert_eq!(code(&e), "22P02");
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // COPY IN dropped without finish sends CopyFail.
    {
        let sink = c.copy_in::<_, Bytes>("COPY t FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"5\tfive\n")).await.unwrap();
    }
    // COPY OUT of a failing query.
    let e = c
        .copy_out("COPY (SELECT 1/0) TO STDOUT")
        .await
        .err()
        .expect("copy out of a failing query fails");
    assert_eq!(code(&e), "22012");
    c.batch_execute("INSERT INTO t VALUES (9, 'after')")
        .await
        .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn listen_notify_between_proxied_sessions() {
    let db = TestDb::new("proto_notify").await;
    let proxy = Proxy::plain().await;
    let (listener, mut conn) = tokio_postgres::connect(&proxy.conninfo(&db.name), NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let sender = proxy.client(&db.name).await;
    sender.batch_execute("NOTIFY jobs, 'first'").await.unwrap();
    sender
        .execute("SELECT pg_notify('jobs', $1)", &[&"second"])
        .await
        .unwrap();
    // Inside a transaction: delivered on commit only.
    sender
        .batch_execute("BEGIN; NOTIFY jobs, 'third'; COMMIT")
        .await
        .unwrap();
    sender
        .batch_execute("BEGIN; NOTIFY jobs, 'never'; ROLLBACK")
        .await
        .unwrap();
    sender.batch_execute("NOTIFY jobs, 'fourth'").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("notification within 10 s")
            .expect("connection open");
        got.push(n);
    }
    let payloads: Vec<&str> = got.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(payloads, vec!["first", "second", "third", "fourth"]);
    assert!(got.iter().all(|(ch, _)| ch == "jobs"));
    // The listener is still a working session.
    let one: i32 = listener.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn binary_results_of_many_types() {
    let db = TestDb::new("proto_types").await;
    let proxy = Proxy::plain().await;
    let c = proxy.client(&db.name).await;
    let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    let row = c
        .query_one(
            "SELECT $1::bool, $2::\"char\", $3::int2, $4::int4, $5::int8, $6::float4, $7::float8, \
             $8::text, $9::varchar, $10::bytea, $11::oid, $12::timestamptz, $13::inet, \
             $14::int4[], $15::text[], $16::name, $17::int8",
            &[
                &true,
                &(-7i8),
                &i16::MIN,
                &i32::MAX,
                &i64::MIN,
                &1.5f32,
                &f64::MAX,
                &"héllo ☃",
                &"",
                &vec![0u8, 1, 254, 255],
                &4_000_000_000u32,
                &t,
                &"10.1.2.3".parse::<std::net::IpAddr>().unwrap(),
                &vec![Some(1i32), None, Some(-3)],
                &vec!["a", "b,c", "\"q\""],
                &"a_name",
                &None::<i64>,
            ],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i8>(1), -7);
    assert_eq!(row.get::<_, i16>(2), i16::MIN);
    assert_eq!(row.get::<_, i32>(3), i32::MAX);
    assert_eq!(row.get::<_, i64>(4), i64::MIN);
    assert_eq!(row.get::<_, f32>(5), 1.5);
    assert_eq!(row.get::<_, f64>(6), f64::MAX);
    assert_eq!(row.get::<_, String>(7), "héllo ☃");
    assert_eq!(row.get::<_, String>(8), "");
    assert_eq!(row.get::<_, Vec<u8>>(9), vec![0, 1, 254, 255]);
    assert_eq!(row.get::<_, u32>(10), 4_000_000_000);
    assert_eq!(row.get::<_, SystemTime>(11), t);
    assert_eq!(row.get::<_, std::net::IpAddr>(12).to_string(), "10.1.2.3");
    assert_eq!(
        row.get::<_, Vec<Option<i32>>>(13),
        vec![Some(1), None, Some(-3)]
    );
    assert_eq!(row.get::<_, Vec<String>>(14), vec!["a", "b,c", "\"q\""]);
    assert_eq!(row.get::<_, String>(15), "a_name");
    assert_eq!(row.get::<_, Option<i64>>(16), None);

    // Server-computed values, binary, compared with their text form from a simple query.
    let sql = "SELECT 'NaN'::float8, '-Infinity'::float4, now() - now() = interval '0', \
               '2000-01-01'::timestamp, '1999-12-31 23:59:59.999999+00'::timestamptz, \
               array[1,2,3,4], 'fe80::1/64'::inet";
    let r = c.query_one(sql, &[]).await.unwrap();
    assert!(r.get::<_, f64>(0).is_nan());
    assert_eq!(r.get::<_, f32>(1), f32::NEG_INFINITY);
    assert!(r.get::<_, bool>(2));
    let ts: SystemTime = r.get(3);
    assert_eq!(
        ts.duration_since(UNIX_EPOCH).unwrap().as_secs(),
        946_684_800
    );
    let ts: SystemTime = r.get(4);
    assert_eq!(
        ts.duration_since(UNIX_EPOCH).unwrap().as_micros(),
        946_684_799_999_999
    );
    assert_eq!(r.get::<_, Vec<i32>>(5), vec![1, 2, 3, 4]);
    let text = rows(&c.simple_query(sql).await.unwrap());
    assert_eq!(text[0][0].as_deref(), Some("NaN"));
    assert_eq!(text[0][1].as_deref(), Some("-Infinity"));
    assert_eq!(text[0][5].as_deref(), Some("{1,2,3,4}"));
    assert_eq!(text[0][6].as_deref(), Some("fe80::1/64"));
}

#[tokio::test]
async fn ten_megabyte_values_both_ways() {
    let db = TestDb::new("proto_large").await;
    let proxy = Proxy::plain().await;
    let c = proxy.client(&db.name).await;
    c.batch_execute("CREATE TABLE big (id int primary key, b bytea, t text)")
        .await
        .unwrap();
    let blob: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let text: String = (0..10 * 1024 * 1024u32)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    c.execute("INSERT INTO big VALUES (1, $1, $2)", &[&blob, &text])
        .await
        .unwrap();
    let row = c
        .query_one("SELECT b, t, md5(b), md5(t) FROM big WHERE id = 1", &[])
        .await
        .unwrap();
    assert!(row.get::<_, Vec<u8>>(0) == blob, "bytea came back changed");
    assert!(row.get::<_, String>(1) == text, "text came back changed");
    // The server saw exactly what was sent: compare its digests with a direct connection's.
    let direct = db.direct().await;
    let d = direct
        .query_one("SELECT md5(b), md5(t) FROM big WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(2), d.get::<_, String>(0));
    assert_eq!(row.get::<_, String>(3), d.get::<_, String>(1));
    // Text format through a simple query (the bytea as hex, 20 MB on the wire).
    let msgs = c
        .simple_query("SELECT t, b FROM big WHERE id = 1")
        .await
        .unwrap();
    let values = rows(&msgs);
    assert!(values[0][0].as_deref() == Some(text.as_str()));
    let hex = values[0][1].as_deref().unwrap();
    assert_eq!(hex.len(), 2 + 2 * blob.len());
    assert!(hex.starts_with("\\x"));
    // A 10 MB value sent inline in a simple query.
    let msgs = c
        .simple_query(&format!(
            "SELECT length('{text}'), md5('{text}') = md5(t) FROM big"
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(&msgs),
        vec![vec![Some((10 * 1024 * 1024).to_string()), Some("t".into())]]
    );
}

#[tokio::test]
async fn two_megabyte_query_text() {
    let db = TestDb::new("proto_bigsql").await;
    let proxy = Proxy::plain().await;
    let c = proxy.client(&db.name).await;
    // 2 MB of SQL: a long IN list.
    let list: Vec<String> = (0..400_000).map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT count(*) FROM generate_series(1, 10) g WHERE g IN ({})",
        list.join(",")
    );
    assert!(sql.len() > 2_000_000);
    let msgs = c.simple_query(&sql).await.unwrap();
    assert_eq!(rows(&msgs), vec![vec![Some("10".into())]]);
    let n: i64 = c.query_one(sql.as_str(), &[]).await.unwrap().get(0);
    assert_eq!(n, 10);
    let comment = format!("/* {} */ SELECT 42", "x".repeat(2 * 1024 * 1024));
    let v: i32 = c.query_one(comment.as_str(), &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}
