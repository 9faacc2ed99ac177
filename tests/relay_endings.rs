//! How sessions end, and batches the server answers only in part: each case runs once
//! directly against PostgreSQL and once through the proxy, and a raw client must read the
//! same (and leave no server backend behind).

mod common;
use std::time::Duration;

use common::guards::{INVOICE, invoice_db};
use common::wire::*;
use common::*;
use tokio::io::AsyncWriteExt;

/// What a raw client reads until the connection ends, as replies (login noise left out).
async fn replies_to_end(raw: &mut Raw) -> Vec<Reply> {
    raw.read_to_end()
        .await
        .iter()
        .filter_map(|m| m.reply())
        .collect()
}

/// Runs `case` against PostgreSQL directly and through a proxy guarding the invoice table,
/// and returns both results.
async fn both<F, Fut, T>(db: &TestDb, case: F) -> (T, T)
where
    F: Fn(String, String) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let proxy = Proxy::with_guards(INVOICE).await;
    let direct = case(upstream(), db.name.clone()).await;
    let through = case(proxy.addr.to_string(), db.name.clone()).await;
    (direct, through)
}

/// True when no server backend of the test's database other than `except`'s is left after
/// `within`.
async fn no_backend_left(db: &TestDb, within: Duration) -> bool {
    let check = db.direct().await;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n: i64 = check
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            let left = check
                .query(
                    "SELECT pid, state, backend_type, query FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&db.name],
                )
                .await
                .unwrap();
            for r in left {
                let (pid, state, query): (i32, Option<String>, Option<String>) =
                    (r.get(0), r.get(1), r.get(3));
                eprintln!("left behind: pid {pid} state {state:?} query {query:?}");
            }
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bytes_after_terminate_read_as_an_end_not_an_error() {
    let db = invoice_db("end_trailing", 1, "").await;
    for delay_us in [0u64, 500, 5_000] {
        let (direct, through) = both(&db, |addr, name| async move {
            let mut raw = Raw::open(&addr, &name).await;
            raw.send(&terminate()).await;
            tokio::time::sleep(Duration::from_micros(delay_us)).await;
            // The client may find the socket already reset; either way it reads nothing.
            let _ = raw.stream.write_all(&pbe("SELECT 1")).await;
            let _ = raw.stream.write_all(&sync()).await;
            replies_to_end(&mut raw).await
        })
        .await;
        assert_eq!(direct, Vec::<Reply>::new(), "directly, after {delay_us} µs");
        assert_eq!(through, direct, "through the proxy, after {delay_us} µs");
    }
    assert!(no_backend_left(&db, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn startup_and_terminate_in_one_write_read_the_login_then_the_end() {
    let db = invoice_db("end_startup_x", 1, "").await;
    let (direct, through) = both(&db, |addr, name| async move {
        let mut raw = Raw::connect(&addr).await;
        let mut bytes = startup(&[("user", "postgres"), ("database", &name)]);
        bytes.extend(terminate());
        raw.send(&bytes).await;
        replies_to_end(&mut raw).await
    })
    .await;
    assert_eq!(direct, vec![Reply::Ready('I')]);
    assert_eq!(through, direct);
}

#[tokio::test]
async fn terminate_before_the_startup_packet_closes_silently() {
    let db = TestDb::new("end_early_x").await;
    let (direct, through) = both(&db, |addr, _| async move {
        let mut raw = Raw::connect(&addr).await;
        raw.send(&terminate()).await;
        raw.read_to_end().await.len()
    })
    .await;
    assert_eq!(
        direct, 0,
        "PostgreSQL says nothing to an impossible startup length"
    );
    assert_eq!(through, 0);
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_results() {
    let db = invoice_db("end_half", 2, "").await;
    let (direct, through) = both(&db, |addr, name| async move {
        let mut raw = Raw::open(&addr, &name).await;
        raw.send(&query("SELECT id FROM invoice ORDER BY id")).await;
        raw.stream.shutdown().await.unwrap();
        replies_to_end(&mut raw).await
    })
    .await;
    assert_eq!(
        direct,
        vec![
            Reply::RowDescription(1),
            Reply::DataRow(vec![Some("1".into())]),
            Reply::DataRow(vec![Some("2".into())]),
            cc("SELECT 2"),
            Reply::Ready('I'),
        ]
    );
    assert_eq!(through, direct);
}

/// A batch with no `Sync`, then the client leaves (closing, or half-closing): PostgreSQL ends
/// the backend and rolls back; through the proxy the backend must go too, and its lock with it.
#[tokio::test]
async fn a_client_leaving_mid_batch_leaves_no_backend() {
    let db = invoice_db("end_unsynced", 1, "").await;
    let proxy = Proxy::with_guards(INVOICE).await;
    for half_close in [false, true] {
        for batch in [
            [pbe("SELECT 1")].concat(),
            [
                query("BEGIN"),
                pbe("UPDATE invoice SET total = 99 WHERE id = 1"),
            ]
            .concat(),
            [pbe("UPDATE invoice SET total = 99 WHERE id = 1")].concat(),
        ] {
            let mut raw = Raw::open(&proxy.addr.to_string(), &db.name).await;
            raw.send(&batch).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if half_close {
                raw.stream.shutdown().await.unwrap();
                raw.read_to_end().await;
            } else {
                drop(raw);
            }
            assert!(
                no_backend_left(&db, Duration::from_secs(1)).await,
                "a backend stayed after the client left (half-close: {half_close})"
            );
        }
    }
    let total: String = db
        .one("SELECT total::text FROM invoice WHERE id = 1", &[])
        .await;
    assert_eq!(total, "10", "nothing of the unsynced batches committed");
}

/// A simple `Query` between an error in an extended batch and its `Sync` is skipped by the
/// server like the rest of the batch; the proxy must answer exactly as PostgreSQL does (and not
/// wait for a reply that never comes).
#[tokio::test]
async fn a_query_after_an_error_before_sync_is_skipped_as_postgresql_skips_it() {
    let db = invoice_db("end_err_query", 1, "").await;
    let guarded = "UPDATE invoice SET total = 5 WHERE id = 1";
    for first in [
        pbe("SELECT 1/0"),
        describe(b'S', "no_such_statement"),
        [parse("", "SELECT 1/0", &[]), bind_text("", "", &[])].concat(),
    ] {
        let (direct, through) = both(&db, |addr, name| {
            let batch = [first.clone(), query(guarded), sync()].concat();
            async move {
                let mut raw = Raw::open(&addr, &name).await;
                raw.send(&batch).await;
                let replies = raw.until_ready().await;
                // The session goes on normally afterwards.
                raw.send(&query("SELECT total::text FROM invoice WHERE id = 1"))
                    .await;
                (replies, raw.until_ready().await)
            }
        })
        .await;
        assert!(
            matches!(direct.0.last(), Some(Reply::Ready('I'))),
            "directly: {direct:?}"
        );
        assert_eq!(through, direct);
    }
    // Without an error first, the Query runs (and is guarded) between the batch and its Sync.
    let (direct, through) = both(&db, |addr, name| async move {
        let mut raw = Raw::open(&addr, &name).await;
        raw.send(&[pbe("SELECT 1"), query(guarded), sync()].concat())
            .await;
        let mut replies = raw.until_ready().await;
        replies.extend(raw.until_ready().await);
        replies
    })
    .await;
    assert!(direct.contains(&cc("UPDATE 1")), "directly: {direct:?}");
    assert_eq!(through, direct);
    assert!(no_backend_left(&db, Duration::from_secs(2)).await);
}

/// `COPY ... FROM STDIN` in the same Query as a guarded write, either order, inside a
/// transaction block or not: the copy data goes through and replies and state match.
#[tokio::test]
async fn copy_from_stdin_beside_a_guarded_write_runs_as_directly() {
    let db = invoice_db("end_copy", 1, "CREATE TABLE audit (n int);").await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = 1";
    let copy = "COPY audit FROM STDIN";
    for text in [
        format!("{copy}; {write}"),
        format!("{write}; {copy}"),
        format!("BEGIN; {write}; {copy}; COMMIT"),
    ] {
        let (direct, through) = both(&db, |addr, name| {
            let text = text.clone();
            async move {
                let mut raw = Raw::open(&addr, &name).await;
                raw.send(&query(&text)).await;
                let mut got = Vec::new();
                loop {
                    let m = raw.read_msg().await.expect("reply");
                    if m.tag == b'G' {
                        raw.send(&[copy_data(b"1\n"), copy_done()].concat()).await;
                    }
                    if let Some(r) = m.reply() {
                        let done = matches!(r, Reply::Ready(_));
                        got.push(r);
                        if done {
                            break;
                        }
                    }
                }
                got
            }
        })
        .await;
        assert!(direct.contains(&cc("COPY 1")), "{text}: {direct:?}");
        assert_eq!(through, direct, "{text}");
    }
    let (total, copied): (String, i64) = {
        let c = db.direct().await;
        let row = c
            .query_one(
                "SELECT (SELECT total::text FROM invoice WHERE id = 1), (SELECT count(*) FROM audit)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (total.as_str(), copied),
        ("16", 6),
        "each text ran once directly, once through"
    );
}

/// Every client the proxy refuses or drops is counted under its reason, and only those.
#[tokio::test]
async fn refused_clients_are_counted_by_reason() {
    let db = invoice_db("end_counters", 1, "").await;
    let config = format!(
        "metrics_listen = \"127.0.0.1:0\"\nmax_message_size = 1024\nclient_login_timeout = 0.5\n{INVOICE}"
    );
    let proxy =
        Proxy::start(optlock::config::Config::parse(&config, "counters.toml").unwrap()).await;
    let addr = proxy.addr.to_string();
    let counter = |reason: &str| format!("optlock_client_errors_total{{reason=\"{reason}\"}}");
    // An impossible startup length (a Terminate first): protocol.
    let mut raw = Raw::connect(&addr).await;
    raw.send(&terminate()).await;
    raw.read_to_end().await;
    // A frame longer than max_message_size after login: message_too_large.
    let mut raw = Raw::open(&addr, &db.name).await;
    raw.send(&query("SELECT '".to_string() + &"x".repeat(2000) + "'"))
        .await;
    let end = raw.read_to_end().await;
    assert_eq!(
        end.last().and_then(|m| m.field(b'C')).as_deref(),
        Some("08P01")
    );
    // A length below 4 after login: protocol.
    let mut raw = Raw::open(&addr, &db.name).await;
    raw.send(&[b'Q', 0, 0, 0, 2]).await;
    raw.read_to_end().await;
    // No startup packet at all within client_login_timeout: login_timeout.
    let mut raw = Raw::connect(&addr).await;
    raw.read_to_end().await;
    // A client that just leaves, with or without its Terminate: nothing counted.
    let mut raw = Raw::open(&addr, &db.name).await;
    raw.send(&terminate()).await;
    raw.read_to_end().await;
    drop(Raw::open(&addr, &db.name).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body) = http_get(proxy.metrics.unwrap(), "/metrics").await;
    assert_eq!(sample(&body, &counter("protocol")), 2.0, "{body}");
    assert_eq!(sample(&body, &counter("message_too_large")), 1.0);
    assert_eq!(sample(&body, &counter("login_timeout")), 1.0);
    assert_eq!(sample(&body, &counter("tls")), 0.0);
}

#[tokio::test]
async fn a_statement_sent_during_copy_from_stdin_ends_the_session_as_directly() {
    let db = invoice_db("end_copy_query", 1, common::guards::AUDIT).await;
    for (what, next) in [
        (
            "a guarded Query",
            query("UPDATE invoice SET total = 1 WHERE id = 1"),
        ),
        ("a plain Query", query("SELECT 1")),
        (
            "an extended guarded write",
            [
                parse("", "UPDATE invoice SET total = $1 WHERE id = 1", &[]),
                bind_text("", "", &["1"]),
                execute("", 0),
                sync(),
            ]
            .concat(),
        ),
    ] {
        let (direct, through) = both(&db, |addr, name| {
            let next = next.clone();
            async move {
                let mut raw = Raw::open(&addr, &name).await;
                raw.send(&query("COPY audit FROM STDIN")).await;
                raw.send(&copy_data(b"1\n")).await;
                // Flush and Sync are ignored during COPY; the next message is not.
                raw.send(&[flush(), sync(), next].concat()).await;
                replies_to_end(&mut raw).await
            }
        })
        .await;
        assert_eq!(through, direct, "{what}");
        assert!(
            direct
                .iter()
                .any(|r| matches!(r, Reply::Error(c, _) if c == "08P01")),
            "{what}: {direct:?}"
        );
    }
    let total: i32 = db
        .one("SELECT total::int FROM invoice WHERE id = 1", &[])
        .await;
    assert_eq!(total, 10, "nothing sent during the COPY ran");
    assert!(no_backend_left(&db, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn a_client_that_half_closes_before_its_login_ended_gets_everything_answered() {
    let db = invoice_db("end_half_login", 2, "").await;
    let (direct, through) = both(&db, |addr, name| async move {
        let mut raw = Raw::connect(&addr).await;
        let bytes = [
            startup(&[("user", "postgres"), ("database", &name)]),
            query("SELECT id FROM invoice ORDER BY id"),
            query("UPDATE invoice SET total = total WHERE id = 1"),
        ]
        .concat();
        raw.send(&bytes).await;
        raw.stream.shutdown().await.unwrap();
        replies_to_end(&mut raw).await
    })
    .await;
    assert!(
        direct
            .iter()
            .any(|r| matches!(r, Reply::CommandComplete(t) if t == "UPDATE 1")),
        "{direct:?}"
    );
    assert_eq!(through, direct);
    assert!(no_backend_left(&db, Duration::from_secs(2)).await);
}

/// Every byte a raw client reads after sending `bytes` at once, to the end (the keys of
/// `BackendKeyData` and the server's parameter values aside: they differ per session).
async fn raw_bytes_to_end(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    out
}

#[tokio::test]
async fn refused_startups_read_as_postgresql_refuses_them() {
    let db = invoice_db("end_startups", 1, "").await;
    let no_user = startup(&[("database", &db.name)]);
    let v4 = startup_version(4 << 16, &[("user", "postgres"), ("database", &db.name)]);
    let v2 = startup_version(2 << 16, &[("user", "postgres"), ("database", &db.name)]);
    let proxy = Proxy::with_guards(INVOICE).await;
    for (what, bytes) in [
        ("no user", no_user),
        ("protocol 4.0", v4),
        ("protocol 2.0", v2),
    ] {
        let direct = raw_bytes_to_end(&upstream(), &bytes).await;
        let through = raw_bytes_to_end(&proxy.addr.to_string(), &bytes).await;
        // The bytes as text, an error by its severity, code and message (PostgreSQL adds
        // its source file and line).
        let text = |b: &[u8]| {
            let t = String::from_utf8_lossy(b).replace('\0', "|");
            t.split('|')
                .filter(|f| !["F", "L", "R"].iter().any(|c| f.starts_with(c)) || f.len() < 2)
                .collect::<Vec<_>>()
                .join("|")
                .chars()
                .skip(if b.first() == Some(&b'E') && b.len() > 5 && b[1] == 0 {
                    5
                } else {
                    0
                })
                .collect::<String>()
        };
        assert!(!direct.is_empty(), "{what}: PostgreSQL answers");
        assert_eq!(text(&through), text(&direct), "{what}");
    }
    // A startup sent behind an SSLRequest, before its answer: PostgreSQL without TLS (as
    // this proxy has none) answers `N`, then refuses the bytes that came unencrypted.
    let ssl_then_startup = [
        ssl_request(),
        startup(&[("user", "postgres"), ("database", &db.name)]),
    ]
    .concat();
    let through = raw_bytes_to_end(&proxy.addr.to_string(), &ssl_then_startup).await;
    let text = String::from_utf8_lossy(&through);
    assert!(
        text.starts_with("NE")
            && text.contains("C08P01")
            && text.contains("received unencrypted data after SSL request"),
        "{text:?}"
    );
    // The longest startup packet PostgreSQL takes: 10000 bytes after the length word.
    let padded = |n: usize| {
        let mut p = startup(&[
            ("user", "postgres"),
            ("database", &db.name),
            ("options", ""),
        ]);
        let fill = n - p.len();
        let at = p.len() - 2;
        p.splice(at..at, std::iter::repeat_n(b' ', fill));
        let len = p.len() as u32;
        p[..4].copy_from_slice(&len.to_be_bytes());
        p
    };
    let longest = padded(10_004);
    let logged_in = |b: Vec<u8>| b.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']);
    assert!(logged_in(
        raw_bytes_to_end_after(&upstream(), &longest).await
    ));
    assert!(logged_in(
        raw_bytes_to_end_after(&proxy.addr.to_string(), &longest).await
    ));
}

/// [`raw_bytes_to_end`] for a login: a `Terminate` follows, so the session ends.
async fn raw_bytes_to_end_after(addr: &str, startup: &[u8]) -> Vec<u8> {
    raw_bytes_to_end(addr, &[startup, &terminate()].concat()).await
}

#[tokio::test]
async fn a_client_that_half_closes_during_copy_from_stdin_reads_what_postgresql_says() {
    let db = invoice_db("end_copy_half", 1, common::guards::AUDIT).await;
    let (direct, through) = both(&db, |addr, name| async move {
        let mut raw = Raw::open(&addr, &name).await;
        raw.send(&[query("COPY audit FROM STDIN"), copy_data(b"1\n")].concat())
            .await;
        raw.stream.shutdown().await.unwrap();
        replies_to_end(&mut raw).await
    })
    .await;
    assert!(
        direct
            .iter()
            .any(|r| matches!(r, Reply::Error(c, _) if c == "08006")),
        "{direct:?}"
    );
    assert_eq!(through, direct);
    assert!(no_backend_left(&db, Duration::from_secs(2)).await);
}

/// A CopyFail sent outside COPY (PostgreSQL ignores it) while an unrelated Parse is still
/// answered, then a COPY FROM STDIN and a guarded Query: the server is in the COPY when the
/// Query arrives and ends the session; the proxy must know it is in the COPY too (and not hold
/// the Query for a reply that never comes, keeping the backend).
#[tokio::test]
async fn a_copy_fail_outside_copy_does_not_end_a_later_copy() {
    let db = invoice_db("end_copy_fail_early", 1, common::guards::AUDIT).await;
    let (direct, through) = both(&db, |addr, name| async move {
        let mut raw = Raw::open(&addr, &name).await;
        raw.send(
            &[
                parse("s1", "BEGIN", &[]),
                copy_fail("fuzz"),
                query("COPY audit FROM STDIN"),
                query("UPDATE invoice SET total = total + 1 WHERE id = 1"),
                terminate(),
            ]
            .concat(),
        )
        .await;
        replies_to_end(&mut raw).await
    })
    .await;
    assert!(
        direct
            .iter()
            .any(|r| matches!(r, Reply::Error(c, _) if c == "08P01")),
        "{direct:?}"
    );
    assert_eq!(through, direct);
    assert!(no_backend_left(&db, Duration::from_secs(2)).await);
}

/// During COPY FROM STDIN PostgreSQL judges a message by its type byte alone: one COPY does
/// not take fails the COPY and ends the session at once, whether the rest of the frame comes
/// or the client half-closes first.
#[tokio::test]
async fn a_type_byte_copy_refuses_ends_the_session_at_once() {
    let db = invoice_db("end_copy_type", 1, common::guards::AUDIT).await;
    for half_close in [false, true] {
        let (direct, through) = both(&db, |addr, name| async move {
            let mut raw = Raw::open(&addr, &name).await;
            raw.send(&query("COPY audit FROM STDIN")).await;
            raw.read_until(b'G', 1).await;
            raw.send(&[0xed, 0x04, 0x75, 0xef, 0x8b, 0xbf]).await;
            if half_close {
                raw.stream.shutdown().await.unwrap();
            }
            replies_to_end(&mut raw).await
        })
        .await;
        assert!(
            direct
                .iter()
                .any(|r| matches!(r, Reply::Error(c, m) if c == "08P01" && m.contains("0xED"))),
            "{direct:?}"
        );
        assert_eq!(through, direct, "half-close: {half_close}");
    }
    assert!(no_backend_left(&db, Duration::from_secs(2)).await);
}

/// An invalid type byte sent behind the startup packet, then a half-close: PostgreSQL logs the
/// client in, then ends the session on that byte ("invalid frontend message type"); the proxy
/// must not drop the unfinished frame at the client's end.
#[tokio::test]
async fn an_invalid_type_byte_behind_the_login_is_judged_by_the_server() {
    let db = invoice_db("end_type_login", 1, "").await;
    let (direct, through) = both(&db, |addr, name| async move {
        let mut raw = Raw::connect(&addr).await;
        let bytes = [
            startup(&[("user", "postgres"), ("database", &name)]),
            vec![0x40, 0x01, 0x59, 0x61, 0x18, 0x42, 0xfc],
        ]
        .concat();
        raw.send(&bytes).await;
        raw.stream.shutdown().await.unwrap();
        replies_to_end(&mut raw).await
    })
    .await;
    assert!(
        direct.iter().any(|r| matches!(
            r,
            Reply::Error(c, m) if c == "08P01" && m.starts_with("invalid frontend message type")
        )),
        "{direct:?}"
    );
    assert_eq!(through, direct);
}

/// A client that sends a large pipeline and its goodbye (Terminate, or a half-close) and reads
/// only later: PostgreSQL delivers every reply before it closes; so must the proxy, with
/// replies still buffered in it when the server's end comes.
#[tokio::test]
async fn a_slow_reader_saying_goodbye_behind_a_pipeline_reads_every_reply() {
    let db = invoice_db("end_slow_goodbye", 1, "").await;
    for terminate_it in [true, false] {
        let (direct, through) = both(&db, |addr, name| async move {
            let mut raw = Raw::open(&addr, &name).await;
            let q = query("SELECT g, repeat('x', 100) FROM generate_series(1, 200) g");
            let mut bytes = q.repeat(46);
            if terminate_it {
                bytes.extend(terminate());
            }
            raw.send(&bytes).await;
            if !terminate_it {
                raw.stream.shutdown().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            replies_to_end(&mut raw).await
        })
        .await;
        assert_eq!(direct.len(), 46 * 203, "terminate: {terminate_it}");
        assert!(
            through == direct,
            "terminate: {terminate_it}: {} replies of {}, the last {:?}",
            through.len(),
            direct.len(),
            through.last()
        );
    }
}

/// Messages sent behind copy data that fails the COPY: PostgreSQL fails it on the data before
/// it reads them, so it runs them as usual after the COPY's error (a half-close then ends the
/// session). The proxy must await and relay their replies, guarded statements included.
#[tokio::test]
async fn statements_behind_copy_data_that_fails_run_as_directly() {
    let db = invoice_db("end_copy_fails", 6, common::guards::AUDIT).await;
    for next in [
        [
            parse("s1", "SELECT 'é', 'ü'", &[]),
            query("CREATE TEMP TABLE IF NOT EXISTS t (n int)"),
        ]
        .concat(),
        [
            parse("", "SELECT 1/0", &[]),
            query(
                "SELECT id, version FROM invoice WHERE id = 6; \
                 UPDATE invoice SET total = total + 1 WHERE id = 6",
            ),
            query("RESET ALL"),
        ]
        .concat(),
    ] {
        let (direct, through) = both(&db, |addr, name| {
            let next = next.clone();
            async move {
                let mut raw = Raw::open(&addr, &name).await;
                raw.send(&query("COPY audit FROM STDIN")).await;
                raw.read_until(b'G', 1).await;
                raw.send(&[copy_data(b"x\n"), next].concat()).await;
                raw.stream.shutdown().await.unwrap();
                replies_to_end(&mut raw).await
            }
        })
        .await;
        assert!(
            direct
                .iter()
                .any(|r| matches!(r, Reply::Error(c, _) if c == "22P02")),
            "{direct:?}"
        );
        assert_eq!(through, direct);
    }
    assert!(no_backend_left(&db, Duration::from_secs(2)).await);
}

/// A batch, then a length PostgreSQL refuses with many more bytes behind it: the server
/// answers the batch and closes with those bytes unread, so the proxy's next write to it
/// fails. What the server said before must still reach the client.
#[tokio::test]
async fn replies_sent_before_the_server_stopped_reading_reach_the_client() {
    let db = invoice_db("end_write_fails", 1, "").await;
    let (direct, through) = both(&db, |addr, name| async move {
        let mut raw = Raw::open(&addr, &name).await;
        raw.send(&[pbe("SELECT 1/0"), sync(), vec![b'S', 0, 0, 0, 0]].concat())
            .await;
        let big = query(format!("SELECT '{}'", "x".repeat(60_000)));
        for _ in 0..8 {
            let _ = raw.stream.write_all(&big).await;
        }
        let _ = raw.stream.shutdown().await;
        replies_to_end(&mut raw).await
    })
    .await;
    assert!(
        direct
            .iter()
            .any(|r| matches!(r, Reply::Error(c, _) if c == "22012")),
        "{direct:?}"
    );
    assert_eq!(through, direct);
}

/// A message COPY refuses, sent in part during COPY FROM STDIN (its type byte and less than
/// its length), then a Terminate: PostgreSQL ends the session on the type byte alone, without
/// waiting for the rest (the fuzzer's session 7965).
#[tokio::test]
async fn a_message_copy_refuses_sent_in_part_ends_the_session_at_once() {
    let db = invoice_db("end_copy_part", 1, common::guards::AUDIT).await;
    for wait_for_copy in [true, false] {
        let (direct, through) = both(&db, |addr, name| async move {
            let mut raw = Raw::open(&addr, &name).await;
            raw.send(&query("COPY audit FROM STDIN")).await;
            if wait_for_copy {
                raw.read_until(b'G', 1).await;
            }
            let d = describe(b'P', "");
            raw.send(&[&d[..4], &terminate()[..]].concat()).await;
            replies_to_end(&mut raw).await
        })
        .await;
        assert!(
            direct
                .iter()
                .any(|r| matches!(r, Reply::Error(c, m) if c == "08P01" && m.contains("0x44"))),
            "{direct:?}"
        );
        assert_eq!(through, direct, "waiting for the COPY: {wait_for_copy}");
    }
    assert!(no_backend_left(&db, Duration::from_secs(2)).await);
}

/// COPY data that fails the COPY, a pipeline behind it, a Bind that fails, a Query that waits
/// for the Bind's reply and a Terminate (the fuzzer's session 17511): PostgreSQL skips the
/// Query up to a Sync that never comes and ends at the Terminate; through the proxy the same.
#[tokio::test]
async fn a_query_behind_a_failed_copy_and_a_failing_bind_is_skipped_as_directly() {
    let db = invoice_db("end_copy_bind", 1, common::guards::AUDIT).await;
    let (direct, through) = both(&db, |addr, name| async move {
        let mut raw = Raw::open(&addr, &name).await;
        let mut bytes = [query("COPY audit FROM STDIN"), sync(), copy_data(b"x\n")].concat();
        for _ in 0..28 {
            bytes.extend(query(
                "SELECT g, repeat('x', 100) FROM generate_series(1, 200) g",
            ));
        }
        bytes.extend(bind_text("", "nope", &["11"]));
        bytes.extend(query("COPY audit FROM STDIN"));
        bytes.extend(terminate());
        raw.send(&bytes).await;
        replies_to_end(&mut raw).await
    })
    .await;
    assert!(
        direct
            .iter()
            .any(|r| matches!(r, Reply::Error(c, _) if c == "26000")),
        "{direct:?}"
    );
    assert_eq!(through, direct);
    assert!(no_backend_left(&db, Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dropped_before_its_shutdown_stops_listening() {
    // The first session thread runs the accept loop: dropping the server's task must stop
    // it and close the listener, as dropping a server that accepts on its own task does.
    let proxy = Proxy::with_session_threads(optlock::config::Config::default(), 2).await;
    let addr = proxy.addr;
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("the proxy accepts while it runs");
    let task = proxy.task;
    task.abort();
    let _ = task.await;
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "{addr} still accepts after the server was dropped");
}
