//! Edges of the guard that must fail closed or pass exactly as PostgreSQL would: `EXPLAIN`
//! with any spelling of `ANALYZE`, `U&` names of a guarded table, statement texts that are not
//! UTF-8, a write that uses the last parameter number, `Bind` messages whose counts are wrong,
//! a `Parse` of a malformed guarded write, and `RETURNING` with binary results.
//!
//! Most tests are differential: the same messages go to PostgreSQL directly and through the
//! proxy, in one database whose rows are reset in between (so table OIDs agree), and the
//! replies are compared whole (errors by their severity, code, message, detail, hint and
//! position).

mod common;
use common::scenario::{Scenario, Step, Who::*, conflict, rows_of, same};
use common::wire::*;
use common::{Proxy, TestDb};

const ITEM: &str =
    "CREATE TABLE item (id int PRIMARY KEY, qty int, version int NOT NULL DEFAULT 0);";
const ROWS: &str = "TRUNCATE item; INSERT INTO item (id, qty) VALUES (1, 100), (2, 200);";
const GUARD: &str = r#"
[[guard]]
table = "public.item"
key = ["id"]
version = "version"
"#;
/// Another session moves row 1 on.
const BUMP: &str = "UPDATE item SET qty = qty + 1, version = version + 1 WHERE id = 1";
const STATE: &str = "SELECT id, qty, version FROM item ORDER BY id";

/// The item table in a database of the test's own, and a proxy guarding it.
async fn setup() -> (TestDb, Proxy) {
    let db = TestDb::new("edges").await;
    db.direct().await.batch_execute(ITEM).await.unwrap();
    (db, Proxy::with_guards(GUARD).await)
}

/// A message as compared: whole bytes, but an error only by the fields the client acts on
/// (the server's source file, line and routine differ for an error the proxy raises).
fn norm(m: &Msg) -> (u8, Vec<u8>) {
    if m.tag != b'E' {
        return (m.tag, m.bytes.clone());
    }
    let mut out = Vec::new();
    for f in [b'S', b'V', b'C', b'M', b'D', b'H', b'P'] {
        if let Some(v) = m.field(f) {
            out.push(f);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
    }
    (m.tag, out)
}

type Replies = Vec<Vec<(u8, Vec<u8>)>>;

/// Resets the rows, then sends each batch (ending in `Sync` or a `Query`) in one session at
/// `addr` and reads its replies up to `ReadyForQuery`. Returns the replies and the final rows.
async fn run(addr: &str, db: &TestDb, batches: &[Vec<u8>]) -> (Replies, Vec<Vec<Option<String>>>) {
    db.direct().await.batch_execute(ROWS).await.unwrap();
    let mut raw = Raw::open(addr, &db.name).await;
    let mut out = Vec::new();
    for b in batches {
        raw.send(b).await;
        let msgs = raw.read_until(b'Z', 1).await;
        out.push(
            msgs.iter()
                .filter(|m| !matches!(m.tag, b'N' | b'S'))
                .map(norm)
                .collect(),
        );
    }
    drop(raw);
    let rows = db.direct().await.simple_query(STATE).await.unwrap();
    (out, common::rows(&rows))
}

/// The batches directly and through the proxy: (direct, proxy).
async fn both(
    db: &TestDb,
    proxy: &Proxy,
    batches: &[Vec<u8>],
) -> (
    (Replies, Vec<Vec<Option<String>>>),
    (Replies, Vec<Vec<Option<String>>>),
) {
    let direct = run(&common::upstream(), db, batches).await;
    let through = run(&proxy.addr.to_string(), db, batches).await;
    (direct, through)
}

/// The batches must get exactly the replies, and leave exactly the rows (versions aside), they
/// get directly.
async fn same_as_directly(db: &TestDb, proxy: &Proxy, what: &str, batches: &[Vec<u8>]) {
    let (direct, through) = both(db, proxy, batches).await;
    assert_eq!(
        through.0,
        direct.0,
        "{what}: replies through the proxy\n{}",
        show(&through.0)
    );
    // Versions aside: the proxy bumps them by design.
    let rows = |r: &[Vec<Option<String>>]| -> Vec<Vec<Option<String>>> {
        r.iter().map(|row| row[..2].to_vec()).collect()
    };
    assert_eq!(
        rows(&through.1),
        rows(&direct.1),
        "{what}: rows through the proxy"
    );
}

fn show(r: &Replies) -> String {
    r.iter()
        .map(|b| {
            b.iter()
                .map(|(t, v)| format!("{}:{}", *t as char, String::from_utf8_lossy(v)))
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The error of one batch's replies: (SQLSTATE, message).
fn error_of(batch: &[(u8, Vec<u8>)]) -> Option<(String, String)> {
    let (_, body) = batch.iter().find(|(t, _)| *t == b'E')?;
    let field = |c: u8| {
        body.split(|&b| b == 0)
            .find(|f| f.first() == Some(&c))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
            .unwrap_or_default()
    };
    Some((field(b'C'), field(b'M')))
}

/// The rows as they were set up: nothing ran.
fn untouched() -> Vec<Vec<Option<String>>> {
    rows_of(&[&["1", "100", "0"], &["2", "200", "0"]])
}

/// A simple query, and the same statement as an unnamed Parse/Bind/Execute.
fn both_protocols(sql: &str) -> [Vec<u8>; 2] {
    [query(sql), [pbe(sql), sync()].concat()]
}

const EXPLAIN_ANALYZE: &[&str] = &[
    "EXPLAIN (ANALYSE) UPDATE item SET qty = 1 WHERE id = 1",
    "EXPLAIN ANALYSE UPDATE item SET qty = 1 WHERE id = 1",
    "explain analyze verbose update item set qty = 1 where id = 1",
    "EXPLAIN (ANALYZE true) UPDATE item SET qty = 1 WHERE id = 1",
    "EXPLAIN (ANALYZE on) DELETE FROM item WHERE id = 1",
    "EXPLAIN (ANALYZE 1) UPDATE item SET qty = 1",
    "EXPLAIN (ANALYZE 'on') UPDATE item SET qty = 1 WHERE id = 1",
    "EXPLAIN (FORMAT JSON, ANALYSE) UPDATE item SET qty = 1 WHERE id = 1",
    "EXPLAIN (COSTS off, \"analyze\", TIMING off) UPDATE item SET qty = 1 WHERE id = 1",
    "EXPLAIN /* c */ ( -- x\n analyse /* y */ ) UPDATE item SET qty = 1 WHERE id = 1",
    "EXPLAIN (ANALYZE off, ANALYZE) UPDATE item SET qty = 1 WHERE id = 1",
    "EXPLAIN (ANALYZE) UPDATE U&\"\\0069tem\" SET qty = 1 WHERE id = 1",
    "EXPLAIN ANALYZE WITH u AS (UPDATE item SET qty = 1 WHERE id = 1 RETURNING id) SELECT * FROM u",
];

#[tokio::test]
async fn explain_that_runs_a_guarded_write_is_refused_in_every_spelling() {
    let (db, proxy) = setup().await;
    for sql in EXPLAIN_ANALYZE {
        for batch in both_protocols(sql) {
            let (direct, through) = both(&db, &proxy, &[batch, query("SELECT 1")]).await;
            assert!(error_of(&direct.0[0]).is_none(), "{sql} runs directly");
            let (code, message) = error_of(&through.0[0])
                .unwrap_or_else(|| panic!("{sql}: not refused: {}", show(&through.0)));
            assert_eq!(code, "0A000", "{sql}: {message}");
            assert!(
                message.contains("public.item") && message.contains("EXPLAIN ANALYZE"),
                "{sql}: {message}"
            );
            assert_eq!(through.1, untouched(), "{sql} ran through the proxy");
            assert_eq!(through.0[1], direct.0[1], "{sql}: the session goes on");
        }
    }
}

#[tokio::test]
async fn explain_that_only_plans_or_that_the_server_rejects_passes_as_directly() {
    let (db, proxy) = setup().await;
    for sql in [
        "EXPLAIN UPDATE item SET qty = 1 WHERE id = 1",
        "EXPLAIN VERBOSE DELETE FROM item WHERE id = 1",
        "EXPLAIN (ANALYZE false) UPDATE item SET qty = 1 WHERE id = 1",
        "EXPLAIN (ANALYZE off, FORMAT JSON) UPDATE item SET qty = 1 WHERE id = 1",
        "EXPLAIN (ANALYZE 0) UPDATE item SET qty = 1 WHERE id = 1",
        "EXPLAIN (ANALYZE 'OFF') UPDATE item SET qty = 1 WHERE id = 1",
        "EXPLAIN (ANALYZE \"false\") UPDATE item SET qty = 1 WHERE id = 1",
        "EXPLAIN (ANALYZE, ANALYZE off) UPDATE item SET qty = 1 WHERE id = 1",
        "EXPLAIN (ANALYZE 'yes') UPDATE item SET qty = 1 WHERE id = 1",
        "EXPLAIN (ANALYZE 2) UPDATE item SET qty = 1 WHERE id = 1",
    ] {
        for batch in both_protocols(sql) {
            same_as_directly(&db, &proxy, sql, &[batch, query("SELECT 1")]).await;
        }
    }
}

fn scenario(name: &'static str, steps: Vec<Step>) -> Scenario<'static> {
    Scenario {
        name,
        setup: "CREATE TABLE item (id int PRIMARY KEY, qty int, version int NOT NULL DEFAULT 0);
                INSERT INTO item (id, qty) VALUES (1, 100), (2, 200);",
        guards: GUARD,
        steps,
        state: "SELECT id, qty FROM item ORDER BY id",
        proxy_state: None,
    }
}

#[tokio::test]
async fn a_unicode_escaped_name_of_a_guarded_table_is_that_table() {
    for write in [
        r#"UPDATE U&"\0069tem" SET qty = 90 WHERE id = 1"#,
        r#"UPDATE u&"it\+000065m" SET qty = 90 WHERE id = 1"#,
        r#"UPDATE public.U&"!0069tem" UESCAPE '!' SET qty = 90 WHERE id = 1"#,
        r##"UPDATE U&"#0069t#0065m" /* c */ UESCAPE '#' AS i SET qty = 90 WHERE i.id = 1"##,
        r#"UPDATE U&"public".U&"it\\em" SET qty = 90 WHERE id = 1"#,
        r#"DELETE FROM U&"\0069\0074\0065\006D" WHERE id = 1"#,
    ] {
        // `it\\em` is not `item`: the table does not exist, as directly.
        if write.contains(r"it\\em") {
            scenario("not the table", vec![same(A, write)])
                .check()
                .await;
            continue;
        }
        let mut s = scenario(
            "U& name",
            vec![
                same(A, r#"SELECT qty, version FROM U&"\0069tem" WHERE id = 1"#),
                same(B, "UPDATE item SET qty = 1 WHERE id = 1"),
                conflict(A, write),
                same(A, write.replace("id = 1", "id = 2")),
            ],
        );
        let second = if write.starts_with("DELETE") {
            vec![&["1", "1"][..]]
        } else {
            vec![&["1", "1"][..], &["2", "90"][..]]
        };
        s.proxy_state = Some(rows_of(&second));
        s.check().await;
    }
}

#[tokio::test]
async fn a_text_that_is_not_utf8_gets_the_servers_own_error() {
    let (db, proxy) = setup().await;
    let texts: [&[u8]; 5] = [
        b"UPDATE item SET qty = 1 WHERE id = 1 AND 'a\xff' = 'a\xff'",
        b"UPDATE item SET qty = 1 WHERE id = 1 -- \xc3\x28\n",
        b"DELETE FROM \"it\xe9m\" WHERE id = 1",
        b"SELECT 1; UPDATE item SET qty = 1 WHERE id = 2 /* \xed\xa0\x80 */",
        b"update item set qty = 7 where id = 1 and qty <> 0x\xf8\x88\x80\x80\x80",
    ];
    for text in texts {
        let what = String::from_utf8_lossy(text).into_owned();
        let batches = [
            query(text),
            [
                parse_raw("", text, &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ]
            .concat(),
            [parse_raw("named", text, &[]), sync()].concat(),
            query("BEGIN"),
            query(text),
            query("SELECT 1"),
            query("ROLLBACK"),
        ];
        same_as_directly(&db, &proxy, &what, &batches).await;
        let (direct, _) = both(&db, &proxy, &batches[..1]).await;
        assert_eq!(error_of(&direct.0[0]).unwrap().0, "22021", "{what}");
    }
}

/// `Parse` of `sql` with `n` parameters declared int4, `Bind` with `$1` = 5, the last one =
/// `id`, the others NULL, `Execute` and `Sync`.
fn with_params(sql: &str, n: usize, id: &str) -> Vec<u8> {
    let types = vec![23u32; n];
    let mut params: Vec<Option<&[u8]>> = vec![None; n];
    params[0] = Some(b"5");
    params[n - 1] = Some(id.as_bytes());
    [
        parse("", sql, &types),
        bind("", "", &params, &[]),
        execute("", 0),
        sync(),
    ]
    .concat()
}

#[tokio::test]
async fn a_write_that_uses_the_last_parameter_number_fails_closed_or_is_checked() {
    let (db, proxy) = setup().await;
    let read = query("SELECT id, version FROM item WHERE id = 1");
    for (sql, n) in [
        ("UPDATE item SET qty = $1 WHERE id = $65535", 65535),
        ("UPDATE item SET qty = $1 WHERE id = $2", 65535),
        ("DELETE FROM item WHERE qty <> $1 AND id = $65535", 65535),
    ] {
        let batches = [read.clone(), with_params(sql, n, "1"), query("SELECT 1")];
        let (direct, through) = both(&db, &proxy, &batches).await;
        assert!(error_of(&direct.0[1]).is_none(), "{sql} runs directly");
        let (code, message) = error_of(&through.0[1])
            .unwrap_or_else(|| panic!("{sql}: ran through the proxy: {}", show(&through.0)));
        assert_eq!(code, "0A000", "{message}");
        assert!(
            message.contains("public.item") && message.contains("$65535"),
            "{message}"
        );
        assert!(!message.contains("$0"), "{message}");
        assert_eq!(through.1, untouched(), "{sql}");
        assert_eq!(through.0[2], direct.0[2], "the session goes on");
    }
    // One number fewer leaves room for the proxy's: the write is checked as any other.
    let sql = "UPDATE item SET qty = $1 WHERE id = $65534";
    let batches = [read.clone(), with_params(sql, 65534, "1")];
    same_as_directly(&db, &proxy, sql, &batches).await;
    db.direct().await.batch_execute(ROWS).await.unwrap();
    let mut a = proxy.raw(&db.name).await;
    a.send(&read).await;
    a.until_ready().await;
    db.direct().await.batch_execute(BUMP).await.unwrap();
    a.send(&with_params(sql, 65534, "1")).await;
    let replies = a.until_ready().await;
    assert!(
        replies
            .iter()
            .any(|r| matches!(r, Reply::Error(c, _) if c == "40001")),
        "a stale write with 65534 parameters conflicts: {replies:?}"
    );
}

/// Reads row 1 through the session, so the proxy tracks it and checks writes of it.
fn read_row() -> Vec<u8> {
    query("SELECT id, version FROM item WHERE id = 1")
}

#[tokio::test]
async fn a_bind_with_wrong_counts_gets_the_servers_error_for_the_clients_counts() {
    let (db, proxy) = setup().await;
    let sql = "UPDATE item SET qty = $2 WHERE id = $1";
    let p = |name: &str| parse(name, sql, &[]);
    let good = |name: &str| [bind_text("", name, &["1", "7"]), execute("", 0), sync()].concat();
    let binds: Vec<(&str, Vec<u8>)> = vec![
        ("too few", bind_text("", "NAME", &["1"])),
        ("too many", bind_text("", "NAME", &["1", "7", "0"])),
        ("none", bind_text("", "NAME", &[])),
        (
            "formats for three",
            bind_formats("", "NAME", &[0, 0, 0], &[Some(b"1"), Some(b"7")], &[]),
        ),
        (
            "formats for two, one value",
            bind_formats("", "NAME", &[0, 0], &[Some(b"1")], &[]),
        ),
    ];
    for name in ["", "s"] {
        for tracked in [false, true] {
            for (what, wrong) in &binds {
                let wrong = String::from_utf8_lossy(wrong).replace("NAME", name);
                let wrong = rebuild_bind(wrong.as_bytes());
                let mut batches = Vec::new();
                if tracked {
                    batches.push(read_row());
                }
                // Unnamed: sent a few times first, so the proxy keeps it prepared.
                for _ in 0..3 {
                    batches.push([p(name), good(name)].concat());
                    if !name.is_empty() {
                        batches.push([close(b'S', name), sync()].concat());
                    }
                }
                batches.push([p(name), wrong.clone(), execute("", 0), sync()].concat());
                batches.push([wrong, execute("", 0), sync()].concat());
                batches.push(good(name));
                let what = format!("{what}, statement {name:?}, tracked {tracked}");
                same_as_directly(&db, &proxy, &what, &batches).await;
            }
        }
    }
}

/// A `Bind` built by [`bind_formats`] whose statement name was replaced in its bytes: its
/// length fixed.
fn rebuild_bind(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

#[tokio::test]
async fn returning_with_binary_results_looks_as_directly() {
    let (db, proxy) = setup().await;
    // The statements set the version themselves, so every column compares byte for byte.
    let all = "UPDATE item SET qty = $1, version = version + 1 WHERE id = $2 RETURNING *";
    let some = "UPDATE item SET qty = $1 WHERE id = $2 RETURNING qty";
    let two = "UPDATE item SET qty = $1 WHERE id = $2 RETURNING qty, id AS \"key\"";
    let none = "UPDATE item SET qty = $1 WHERE id = $2";
    let params: [Option<&[u8]>; 2] = [Some(b"5"), Some(b"1")];
    for (sql, formats) in [
        (all, &[1][..]),
        (all, &[1, 0, 1][..]),
        (all, &[0, 1][..]),
        (some, &[1][..]),
        (some, &[1, 1][..]),
        (two, &[0, 1][..]),
        (two, &[1][..]),
        (none, &[1, 1, 1][..]),
        (none, &[7][..]),
    ] {
        for name in ["", "r"] {
            let batches = [
                read_row(),
                [
                    parse(name, sql, &[]),
                    describe(b'S', name),
                    bind("p", name, &params, formats),
                    describe(b'P', "p"),
                    execute("p", 0),
                    sync(),
                ]
                .concat(),
                [bind("", name, &params, formats), execute("", 0), sync()].concat(),
            ];
            let what = format!("{sql} with result formats {formats:?}, statement {name:?}");
            same_as_directly(&db, &proxy, &what, &batches).await;
        }
    }
}

#[tokio::test]
async fn a_parse_of_a_malformed_guarded_write_gets_the_servers_own_error() {
    let (db, proxy) = setup().await;
    let malformed = [
        "UPDATE item SET qty = WHERE id = 1",
        "UPDATE item SET qty = 1 WHERE id = = 1",
        "DELETE FROM item WHERE id = 1 RETURNING",
        "update \"item\" set qty = 1 where",
    ];
    for sql in malformed {
        for name in ["", "s"] {
            let bind_run = [bind_text("", name, &[]), execute("", 0), sync()].concat();
            let batches = vec![
                [parse(name, sql, &[]), bind_run.clone()].concat(),
                // The statement does not exist: 26000, as directly.
                bind_run,
                read_row(),
            ];
            same_as_directly(&db, &proxy, &format!("{sql} as {name:?}"), &batches).await;
        }
    }
    // A text PostgreSQL accepts but the proxy's parser does not: refused, never run.
    let sql = "UPDATE item SET qty = x.q FROM ROWS FROM (generate_series(5, 5)) x(q) WHERE id = 1";
    let batches = vec![
        [
            parse("s", sql, &[]),
            bind_text("", "s", &[]),
            execute("", 0),
            sync(),
        ]
        .concat(),
        [bind_text("", "s", &[]), execute("", 0), sync()].concat(),
    ];
    let (_, (replies, rows)) = both(&db, &proxy, &batches).await;
    let error = |i: usize| error_of(&replies[i]).map(|(code, _)| code);
    assert_eq!(error(0).as_deref(), Some("0A000"), "{}", show(&replies));
    assert_eq!(error(1).as_deref(), Some("26000"), "{}", show(&replies));
    assert_eq!(rows, untouched());
}
