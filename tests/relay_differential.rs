//! Differential tests: the same hand-built frontend bytes are sent straight to PostgreSQL and
//! through the proxy, and the two reply streams (from the start-up to the end of the
//! connection) must be byte-identical, BackendKeyData contents aside. Scripts cover extended
//! pipelines with errors, unnamed and named statements and portals, Describe, Close, Flush,
//! multi-statement simple queries, empty queries, COPY both ways (large rows and mid-stream
//! errors included), FunctionCall, a LATIN1 client encoding, large rows, thousands of messages
//! in one write, bytes trickling in one at a time, protocol version negotiation, queries sent
//! behind the startup packet, a refused startup, a session ended by the server and a client
//! that half-closes its connection.

mod common;

use common::wire::*;
use common::*;

/// One step of a script: bytes to send, or how far to read (until the n-th message of a tag).
enum Step {
    Send(Vec<u8>),
    Until(u8, usize),
}
use Step::*;

/// Sends many messages as one write, as a pipelining client does.
fn batch(msgs: &[Vec<u8>]) -> Step {
    Send(msgs.concat())
}

/// Runs a script on a fresh connection to `addr` and returns every reply up to EOF, the
/// BackendKeyData contents zeroed. The script ends with Terminate unless `ends_itself`.
async fn run_script(addr: &str, db: &str, steps: &[Step], ends_itself: bool) -> Vec<Msg> {
    let mut raw = Raw::connect(addr).await;
    raw.send(&startup(&[
        ("user", "postgres"),
        ("database", db),
        ("application_name", "differential"),
    ]))
    .await;
    let mut out = raw.read_until(b'Z', 1).await;
    for step in steps {
        match step {
            Send(bytes) => raw.send(bytes).await,
            Until(tag, n) => out.extend(raw.read_until(*tag, *n).await),
        }
    }
    if !ends_itself {
        raw.send(&terminate()).await;
    }
    out.extend(raw.read_to_end().await);
    mask_keys(&mut out);
    out
}

/// Runs the script directly and through the proxy and compares the replies.
async fn differential(db: &TestDb, proxy: &Proxy, steps: &[Step], ends_itself: bool) -> Vec<Msg> {
    let direct = run_script(&upstream(), &db.name, steps, ends_itself).await;
    let relayed = run_script(&proxy.addr.to_string(), &db.name, steps, ends_itself).await;
    if let Some(i) = (0..direct.len().max(relayed.len())).find(|&i| direct.get(i) != relayed.get(i))
    {
        let from = i.saturating_sub(3);
        panic!(
            "replies differ at message {i} (direct has {}, relayed {}):\n direct:  {:?}\n relayed: {:?}",
            direct.len(),
            relayed.len(),
            &direct[from..direct.len().min(i + 3)],
            &relayed[from..relayed.len().min(i + 3)],
        );
    }
    direct
}

async fn setup(prefix: &str) -> (TestDb, Proxy) {
    let db = TestDb::new(prefix).await;
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE items (id int primary key, name text, price numeric(10,2)); \
             INSERT INTO items SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 20) g",
        )
        .await
        .unwrap();
    (db, Proxy::plain().await)
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

fn codes(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'E')
        .map(|m| m.field(b'C').unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn extended_pipeline_with_errors_in_the_middle() {
    let (db, proxy) = setup("diff_pipe").await;
    let script = [
        batch(&[
            parse(
                "s1",
                "SELECT id, name, price FROM items WHERE id = $1",
                &[23],
            ),
            bind("", "s1", &[Some(b"1")], &[0]),
            describe(b'P', ""),
            execute("", 0),
            parse("s2", "SELECT 10 / $1::int", &[]),
            bind("", "s2", &[Some(b"0")], &[]),
            execute("", 0),
            // Skipped after the error, up to Sync.
            parse("s3", "SELECT 3", &[]),
            bind("", "s3", &[], &[]),
            execute("", 0),
            sync(),
            // The next batch runs normally; binary results this time.
            bind("", "s1", &[Some(b"2")], &[1]),
            execute("", 0),
            bind("", "s2", &[Some(b"5")], &[1]),
            execute("", 0),
            sync(),
            // s3 was never created.
            describe(b'S', "s3"),
            sync(),
            // Wrong parameter count, a missing portal: protocol-level errors.
            bind("", "s1", &[], &[]),
            sync(),
            execute("nope", 0),
            sync(),
            // An error inside an explicit transaction spans batches.
            parse("", "BEGIN", &[]),
            bind("", "", &[], &[]),
            execute("", 0),
            bind("", "s2", &[Some(b"0")], &[]),
            execute("", 0),
            sync(),
            bind("", "s1", &[Some(b"3")], &[]),
            execute("", 0),
            sync(),
        ]),
        Until(b'Z', 7),
        Send(query(b"ROLLBACK")),
        Until(b'Z', 1),
    ];
    let replies = differential(&db, &proxy, &script, false).await;
    assert_eq!(
        codes(&replies),
        vec!["22012", "26000", "08P01", "34000", "22012", "25P02"]
    );
}

#[tokio::test]
async fn unnamed_and_named_statements_and_portals() {
    let (db, proxy) = setup("diff_portals").await;
    let script = [
        batch(&[
            parse("", "SELECT id FROM items WHERE id <= $1 ORDER BY id", &[23]),
            bind("", "", &[Some(b"3")], &[]),
            execute("", 0),
            // The unnamed statement again, another unnamed portal.
            bind("", "", &[Some(b"5")], &[1]),
            execute("", 2),
            execute("", 2),
            execute("", 0),
            // A new unnamed statement replaces the old one.
            parse("", "SELECT name FROM items WHERE id = $1", &[]),
            bind("", "", &[Some(b"7")], &[]),
            execute("", 0),
            sync(),
        ]),
        Until(b'Z', 1),
        Send(query(b"BEGIN")),
        Until(b'Z', 1),
        batch(&[
            parse("q", "SELECT id, name FROM items ORDER BY id", &[]),
            bind("p1", "q", &[], &[]),
            bind("p2", "q", &[], &[1, 0]),
            execute("p1", 3),
            execute("p2", 1),
            execute("p1", 0),
            close(b'P', "p1"),
            execute("p2", 2),
            sync(),
            execute("p1", 0),
            sync(),
        ]),
        Until(b'Z', 2),
        Send(query(b"COMMIT")),
        Until(b'Z', 1),
    ];
    let replies = differential(&db, &proxy, &script, false).await;
    assert!(
        tags(&replies).contains("DDs"),
        "PortalSuspended after 2 rows"
    );
    assert_eq!(codes(&replies), vec!["34000"]);
}

#[tokio::test]
async fn describe_close_and_flush() {
    let (db, proxy) = setup("diff_describe").await;
    let script = [
        batch(&[
            parse(
                "d1",
                "SELECT id, name, $1::numeric * price AS total FROM items WHERE id < $2",
                &[0, 23],
            ),
            describe(b'S', "d1"),
            parse("d2", "INSERT INTO items VALUES ($1, $2, $3)", &[]),
            describe(b'S', "d2"),
            bind("", "d1", &[Some(b"2"), Some(b"4")], &[1]),
            describe(b'P', ""),
            execute("", 0),
            flush(),
        ]),
        // Flush: everything so far arrives without a Sync.
        Until(b'C', 1),
        batch(&[
            sync(),
            // Re-parse a live name: error; close it, then reuse the name.
            parse("d1", "SELECT 1", &[]),
            sync(),
            close(b'S', "d1"),
            close(b'S', "never_existed"),
            close(b'P', "never_existed"),
            parse("d1", "SELECT $1::text || 'x'", &[]),
            bind("", "d1", &[Some(b"a")], &[]),
            describe(b'P', ""),
            execute("", 0),
            sync(),
            describe(b'S', "d2"),
            close(b'S', "d2"),
            describe(b'S', "d2"),
            sync(),
        ]),
        Until(b'Z', 4),
    ];
    let replies = differential(&db, &proxy, &script, false).await;
    assert!(
        tags(&replies).contains("1t"),
        "ParameterDescription after Describe S"
    );
    assert_eq!(codes(&replies), vec!["42P05", "26000"]);
}

#[tokio::test]
async fn simple_queries_with_errors_and_empty_queries() {
    let (db, proxy) = setup("diff_simple").await;
    let script = [
        batch(&[
            query(b"SELECT 1; SELECT 1/0; SELECT 3"),
            query(b"BEGIN; SELECT 1; SELECT 1/0; SELECT 3"),
            query(b"SELECT 4"),
            query(b"ROLLBACK"),
            query(b"SELECT 1; SELEC 2"),
            query(b""),
            query(b";"),
            query(b"-- only a comment"),
            query(b"SET application_name = 'changed'; SHOW application_name"),
            query(b"DO $$ BEGIN RAISE NOTICE 'a notice %', 42; RAISE WARNING 'careful'; END $$"),
            query(b"SELECT id, name, price FROM items ORDER BY id; SELECT count(*) FROM items"),
            parse("", "", &[]),
            bind("", "", &[], &[]),
            execute("", 0),
            sync(),
        ]),
        Until(b'Z', 12),
    ];
    let replies = differential(&db, &proxy, &script, false).await;
    assert_eq!(codes(&replies), vec!["22012", "22012", "25P02", "42601"]);
    assert_eq!(
        replies.iter().filter(|m| m.tag == b'I').count(),
        4,
        "EmptyQueryResponse for each empty query"
    );
    assert!(replies.iter().any(|m| m.tag == b'N'));
}

#[tokio::test]
async fn copy_both_ways() {
    let (db, proxy) = setup("diff_copy").await;
    let big_row = format!("1\t{}\n", "y".repeat(200_000));
    let script = [
        Send(query(b"COPY items TO STDOUT")),
        Until(b'Z', 1),
        // CopyData messages above the relay's streaming threshold.
        Send(query(
            b"COPY (SELECT g, repeat('x', g * 1000) FROM generate_series(1, 100) g) TO STDOUT",
        )),
        Until(b'Z', 1),
        Send(query(b"CREATE TEMP TABLE c (a int, b text)")),
        Until(b'Z', 1),
        // COPY IN with the data pipelined right behind the query, one row large.
        batch(&[
            query(b"COPY c FROM STDIN"),
            copy_data(b"1\tone\n2\ttwo\n"),
            copy_data(big_row.as_bytes()),
            copy_data(b"3\tthree\n"),
            copy_done(),
        ]),
        Until(b'Z', 1),
        // Bad data: the error, the rest of the copy data dropped.
        batch(&[
            query(b"COPY c FROM STDIN"),
            copy_data(b"4\tfour\nfive\t5\n"),
            copy_data(b"6\tsix\n"),
            copy_done(),
        ]),
        Until(b'Z', 1),
        // The client gives up.
        batch(&[
            query(b"COPY c FROM STDIN"),
            copy_data(b"7\tseven\n"),
            copy_fail("client changed its mind"),
        ]),
        Until(b'Z', 1),
        // COPY through the extended protocol, both ways.
        batch(&[
            parse("", "COPY c FROM STDIN", &[]),
            bind("", "", &[], &[]),
            execute("", 0),
            copy_data(b"8\teight\n"),
            copy_done(),
            sync(),
        ]),
        Until(b'Z', 1),
        batch(&[
            parse(
                "",
                "COPY (SELECT a, length(b) FROM c ORDER BY a) TO STDOUT",
                &[],
            ),
            bind("", "", &[], &[]),
            execute("", 0),
            sync(),
        ]),
        Until(b'Z', 1),
        Send(query(b"COPY c TO STDOUT (FORMAT binary)")),
        Until(b'Z', 1),
        // An error after many (some streamed) CopyData messages.
        Send(query(
            b"COPY (SELECT repeat('z', 70000 * (g % 2)) || (1 / (300 - g)) \
              FROM generate_series(1, 400) g) TO STDOUT",
        )),
        Until(b'Z', 1),
        // And after large streamed DataRows.
        Send(query(
            b"SELECT repeat('r', 100000) || (1 / (5 - g)) FROM generate_series(1, 9) g",
        )),
        Until(b'Z', 1),
    ];
    let replies = differential(&db, &proxy, &script, false).await;
    assert_eq!(codes(&replies), vec!["22P02", "57014", "22012", "22012"]);
    let last_copy: Vec<&Msg> = replies.iter().filter(|m| m.tag == b'd').collect();
    assert!(last_copy.iter().any(|m| m.body() == b"8\t5\n"));
    assert!(last_copy.iter().any(|m| m.body() == b"1\t200000\n"));
}

#[tokio::test]
async fn function_call_messages() {
    let (db, proxy) = setup("diff_fcall").await;
    let script = [
        // int4pl (OID 177) with binary int4 arguments.
        Send(function_call(
            177,
            &[&2i32.to_be_bytes(), &40i32.to_be_bytes()],
        )),
        Until(b'Z', 1),
        // Overflow: an error from inside the function.
        Send(function_call(
            177,
            &[&i32::MAX.to_be_bytes(), &1i32.to_be_bytes()],
        )),
        Until(b'Z', 1),
        // No such function.
        Send(function_call(0, &[])),
        Until(b'Z', 1),
        batch(&[
            function_call(177, &[&1i32.to_be_bytes(), &1i32.to_be_bytes()]),
            query(b"SELECT 1"),
        ]),
        Until(b'Z', 2),
    ];
    let replies = differential(&db, &proxy, &script, false).await;
    let v: Vec<&Msg> = replies.iter().filter(|m| m.tag == b'V').collect();
    assert_eq!(v.len(), 2);
    assert_eq!(
        v[0].body(),
        [&4i32.to_be_bytes()[..], &42i32.to_be_bytes()].concat()
    );
    assert_eq!(codes(&replies), vec!["22003", "42883"]);
}

#[tokio::test]
async fn latin1_client_encoding_passes_raw_bytes() {
    let (db, proxy) = setup("diff_latin1").await;
    let script = [
        Send(query(b"SET client_encoding TO 'LATIN1'")),
        Until(b'Z', 1),
        Send(query(
            b"SELECT 'caf\xe9' AS word, length('caf\xe9'), octet_length(convert_to('caf\xe9', 'UTF8'))",
        )),
        Until(b'Z', 1),
        batch(&[
            parse_raw("", b"SELECT $1::text || '\xe9t\xe9'", &[]),
            bind("", "", &[Some(b"\xe9")], &[]),
            execute("", 0),
            sync(),
        ]),
        Until(b'Z', 1),
        // Back to UTF8: the same byte is now an invalid sequence, refused by the server.
        Send(query(b"SET client_encoding TO 'UTF8'")),
        Until(b'Z', 1),
        Send(query(b"SELECT 'caf\xe9'")),
        Until(b'Z', 1),
    ];
    let replies = differential(&db, &proxy, &script, false).await;
    let rows: Vec<&Msg> = replies.iter().filter(|m| m.tag == b'D').collect();
    let body = rows[0].body();
    assert!(
        body.windows(4).any(|w| w == b"caf\xe9"),
        "the LATIN1 byte comes back as is: {:?}",
        rows[0]
    );
    assert!(body.ends_with(b"\x00\x00\x00\x014\x00\x00\x00\x015"));
    assert!(rows[1].body().ends_with(b"\xe9\xe9t\xe9"));
    assert!(
        replies
            .iter()
            .any(|m| m.tag == b'S' && m.body().starts_with(b"client_encoding\0LATIN1\0"))
    );
    assert_eq!(codes(&replies), vec!["22021"]);
}

#[tokio::test]
async fn large_rows_and_notices() {
    let (db, proxy) = setup("diff_large").await;
    let script = [
        batch(&[
            query(b"SELECT repeat('x', 1000000), 1; SELECT 2"),
            query(b"DO $$ BEGIN RAISE NOTICE '%', repeat('n', 100000); END $$"),
            parse("", "SELECT $1::bytea, length($1::bytea)", &[]),
            bind_formats("", "", &[1], &[Some(&vec![7u8; 3_000_000])], &[1]),
            execute("", 0),
            sync(),
        ]),
        Until(b'Z', 3),
    ];
    let replies = differential(&db, &proxy, &script, false).await;
    let rows: Vec<usize> = replies
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| m.bytes.len())
        .collect();
    assert_eq!(rows.len(), 3);
    assert!(rows[0] > 1_000_000 && rows[2] > 3_000_000, "{rows:?}");
}

#[tokio::test]
async fn session_ended_by_the_server() {
    let (db, proxy) = setup("diff_terminate").await;
    let script = [Send(query(
        b"SELECT pg_terminate_backend(pg_backend_pid())",
    ))];
    let replies = differential(&db, &proxy, &script, true).await;
    assert_eq!(codes(&replies), vec!["57P01"]);
}

/// Runs raw bytes (a start-up included) on a fresh connection and returns every reply to EOF.
async fn run_raw(addr: &str, bytes: &[u8], until_ready: usize) -> Vec<Msg> {
    let mut raw = Raw::connect(addr).await;
    raw.send(bytes).await;
    let mut out = if until_ready > 0 {
        raw.read_until(b'Z', until_ready).await
    } else {
        Vec::new()
    };
    if until_ready > 0 {
        raw.send(&terminate()).await;
    }
    out.extend(raw.read_to_end().await);
    mask_keys(&mut out);
    out
}

async fn raw_differential(proxy: &Proxy, bytes: &[u8], until_ready: usize) -> Vec<Msg> {
    let direct = run_raw(&upstream(), bytes, until_ready).await;
    let relayed = run_raw(&proxy.addr.to_string(), bytes, until_ready).await;
    assert_eq!(relayed, direct);
    direct
}

#[tokio::test]
async fn newer_protocol_minor_version_is_negotiated_by_the_server() {
    let (db, proxy) = setup("diff_negotiate").await;
    // Protocol 3.5 with an unknown protocol option: the server answers NegotiateProtocolVersion.
    let mut packet = startup_version(
        (3 << 16) | 5,
        &[
            ("user", "postgres"),
            ("database", &db.name),
            ("_pq_.future_option", "on"),
        ],
    );
    packet.extend_from_slice(&query(b"SELECT 1"));
    let replies = raw_differential(&proxy, &packet, 2).await;
    assert_eq!(replies[0].tag, b'v');
}

#[tokio::test]
async fn queries_pipelined_behind_the_startup_packet() {
    let (db, proxy) = setup("diff_early").await;
    let mut bytes = startup(&[("user", "postgres"), ("database", &db.name)]);
    bytes.extend_from_slice(&query(b"SELECT count(*) FROM items"));
    bytes.extend_from_slice(&parse("", "SELECT $1::int + 1", &[]));
    bytes.extend_from_slice(&bind("", "", &[Some(b"41")], &[]));
    bytes.extend_from_slice(&execute("", 0));
    bytes.extend_from_slice(&sync());
    let replies = raw_differential(&proxy, &bytes, 3).await;
    assert!(
        replies
            .iter()
            .any(|m| m.tag == b'D' && m.body().ends_with(b"42"))
    );
}

#[tokio::test]
async fn refused_startup_reply_is_exactly_the_servers() {
    let proxy = Proxy::plain().await;
    let bytes = startup(&[
        ("user", "postgres"),
        ("database", "optlock_no_such_database"),
    ]);
    let replies = raw_differential(&proxy, &bytes, 0).await;
    assert_eq!(codes(&replies), vec!["3D000"]);
}

/// Logs in, sends `bytes`, closes its sending side and reads every reply to EOF.
async fn half_close_script(addr: &str, db: &str, bytes: &[u8]) -> Vec<Msg> {
    use tokio::io::AsyncWriteExt;
    let (mut raw, _) = Raw::login(addr, "postgres", db).await;
    raw.send(bytes).await;
    raw.stream.shutdown().await.unwrap();
    raw.read_to_end().await
}

#[tokio::test]
async fn replies_after_the_client_half_closes() {
    let (db, proxy) = setup("diff_halfclose").await;
    let bytes = query(b"SELECT pg_sleep(0.2); SELECT count(*) FROM items");
    let direct = half_close_script(&upstream(), &db.name, &bytes).await;
    let relayed = half_close_script(&proxy.addr.to_string(), &db.name, &bytes).await;
    assert_eq!(direct.last().map(|m| m.tag), Some(b'Z'));
    assert_eq!(relayed, direct);
}

#[tokio::test]
async fn messages_trickling_in_one_byte_at_a_time() {
    let (db, proxy) = setup("diff_trickle").await;
    let mut bytes = startup(&[("user", "postgres"), ("database", &db.name)]);
    bytes.extend(query(b"SELECT name FROM items WHERE id < 4 ORDER BY id"));
    bytes.extend(parse("t", "SELECT $1::int * 3", &[]));
    bytes.extend(bind("", "t", &[Some(b"14")], &[]));
    bytes.extend(execute("", 0));
    bytes.extend(sync());
    let mut replies = Vec::new();
    for addr in [upstream(), proxy.addr.to_string()] {
        let mut raw = Raw::connect(&addr).await;
        for b in &bytes {
            raw.send(&[*b]).await;
            tokio::task::yield_now().await;
        }
        let mut msgs = raw.read_until(b'Z', 3).await;
        mask_keys(&mut msgs);
        replies.push(msgs);
    }
    assert_eq!(replies[1], replies[0]);
    assert!(
        replies[0]
            .iter()
            .any(|m| m.tag == b'D' && m.body().ends_with(b"42"))
    );
}

#[tokio::test]
async fn thousands_of_pipelined_messages_in_one_write() {
    let (db, proxy) = setup("diff_bulk").await;
    let mut msgs = vec![parse("b", "SELECT $1::int + 1", &[23])];
    for i in 0..3000 {
        msgs.push(bind("", "b", &[Some(i.to_string().as_bytes())], &[1]));
        msgs.push(execute("", 0));
        if i % 1000 == 999 {
            msgs.push(bind("", "b", &[Some(b"x")], &[]));
            msgs.push(execute("", 0));
            msgs.push(sync());
        }
    }
    msgs.push(sync());
    let script = [batch(&msgs), Until(b'Z', 4)];
    let replies = differential(&db, &proxy, &script, false).await;
    assert_eq!(codes(&replies), vec!["22P02"; 3]);
    assert_eq!(replies.iter().filter(|m| m.tag == b'D').count(), 3000);
}

#[tokio::test]
async fn messages_pipelined_behind_the_startup_packet_are_answered_after_the_login() {
    let (db, _) = setup("diff_pipelined_login").await;
    let guarded = Proxy::with_guards(
        "[[guard]]\ntable = \"items\"\nkey = [\"id\"]\nversion = \"xmin\"\nkind = \"xmin\"\n",
    )
    .await;
    for proxy in [Proxy::plain().await, guarded] {
        let bytes = [
            startup(&[("user", "postgres"), ("database", &db.name)]),
            query(b"SELECT name FROM items WHERE id = 1"),
            query(b"SELECT 1/0"),
            parse("", "UPDATE items SET name = 'x' WHERE id = $1", &[]),
            bind_text("", "", &["2"]),
            execute("", 0),
            sync(),
        ]
        .concat();
        raw_differential(&proxy, &bytes, 4).await;
    }
}
