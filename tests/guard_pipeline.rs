//! Extended-protocol pipelines through the proxy, spoken byte by byte: a conflict in the middle
//! of a batch stops the rest of it and nothing of it commits (in autocommit and inside
//! `BEGIN`), a successful batch keeps every command tag exact, and an unnamed statement is
//! reused across batches after a conflict.

mod common;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INVOICE: &str = r#"
[[guard]]
table = "public.invoice"
key = ["id"]
version = "version"
"#;

async fn setup(db: &TestDb) {
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE invoice (id int primary key, total numeric not null, version bigint not null default 0);
             INSERT INTO invoice (id, total) SELECT g, 10 FROM generate_series(1, 9) g;
             CREATE TABLE audit (n int);",
        )
        .await
        .unwrap();
}

/// The version of invoice `id`, read directly.
async fn version_of(db: &TestDb, id: i32) -> i64 {
    db.one("SELECT version FROM invoice WHERE id = $1", &[&id])
        .await
}

/// One backend message, reduced to what the tests compare.
#[derive(Debug, Clone, PartialEq)]
enum Msg {
    ParseComplete,
    BindComplete,
    NoData,
    RowDescription(usize),
    DataRow(Vec<Option<String>>),
    CommandComplete(String),
    /// SQLSTATE and message.
    Error(String, String),
    Ready(char),
    /// `ParameterDescription` with the number of parameters.
    Params(usize),
    Other(char),
}

/// A raw frontend speaking the wire protocol to the proxy.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    parse_typed(name, sql, &[])
}

/// Parse with declared parameter type OIDs.
fn parse_typed(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    frame(b'P', &b)
}

/// Bind with text parameters, text results.
fn bind(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'B', &b)
}

fn describe_portal(portal: &str) -> Vec<u8> {
    let mut b = vec![b'P'];
    cstr(&mut b, portal);
    frame(b'D', &b)
}

fn describe_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name);
    frame(b'D', &b)
}

fn close_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name);
    frame(b'C', &b)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&0i32.to_be_bytes());
    frame(b'E', &b)
}

fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    frame(b'Q', &b)
}

/// Parse, Bind and Execute of one unnamed statement without parameters.
fn pbe(sql: &str) -> Vec<u8> {
    [parse("", sql), bind("", "", &[]), execute("")].concat()
}

fn error_field(body: &[u8], code: u8) -> String {
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let end = i + 1 + body[i + 1..].iter().position(|&b| b == 0).unwrap();
        if body[i] == code {
            return String::from_utf8_lossy(&body[i + 1..end]).into_owned();
        }
        i = end + 1;
    }
    String::new()
}

impl Raw {
    async fn connect(proxy: &Proxy, db: &str) -> Raw {
        Raw::connect_to(&proxy.addr.to_string(), db).await
    }

    async fn connect_to(addr: &str, db: &str) -> Raw {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let mut body = 196608i32.to_be_bytes().to_vec();
        for kv in ["user", "postgres", "database", db] {
            cstr(&mut body, kv);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        raw.s.write_all(&startup).await.unwrap();
        let msgs = raw.until_ready().await;
        assert!(
            !msgs.iter().any(|m| matches!(m, Msg::Error(..))),
            "{msgs:?}"
        );
        raw
    }

    /// Writes the whole batch in one write.
    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    async fn next(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..len + 1].to_vec();
                    self.buf.drain(..len + 1);
                    return (tag, body);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "proxy closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Every message up to and including the next ReadyForQuery (notices and parameter
    /// statuses left out).
    async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let (tag, body) = self.next().await;
            let m = match tag {
                b'1' => Msg::ParseComplete,
                b'2' => Msg::BindComplete,
                b'n' => Msg::NoData,
                b'T' => Msg::RowDescription(i16::from_be_bytes([body[0], body[1]]) as usize),
                b'D' => {
                    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
                    let mut vals = Vec::new();
                    let mut i = 2;
                    for _ in 0..n {
                        let len = i32::from_be_bytes(body[i..i + 4].try_into().unwrap());
                        i += 4;
                        if len < 0 {
                            vals.push(None);
                        } else {
                            let l = len as usize;
                            vals.push(Some(String::from_utf8_lossy(&body[i..i + l]).into_owned()));
                            i += l;
                        }
                    }
                    Msg::DataRow(vals)
                }
                b'C' => Msg::CommandComplete(
                    String::from_utf8_lossy(&body[..body.len() - 1]).into_owned(),
                ),
                b'E' => Msg::Error(error_field(&body, b'C'), error_field(&body, b'M')),
                b'Z' => Msg::Ready(body[0] as char),
                b't' => Msg::Params(i16::from_be_bytes([body[0], body[1]]) as usize),
                b'N' | b'S' | b'K' | b'R' => continue,
                t => Msg::Other(t as char),
            };
            let done = matches!(m, Msg::Ready(_));
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Reads row `id` of invoice the way tokio-postgres does (Parse and Describe of a named
    /// statement in one round trip, Bind and Execute in the next; a named statement, so an
    /// unnamed one survives), so the proxy tracks its version.
    async fn read_row(&mut self, id: i32) -> Vec<Msg> {
        let sql = "SELECT id, total, version FROM invoice WHERE id = $1";
        self.send(&[parse("rd", sql), describe_statement("rd"), sync()].concat())
            .await;
        self.until_ready().await;
        let batch = [
            bind("", "rd", &[&id.to_string()]),
            execute(""),
            close_statement("rd"),
            sync(),
        ]
        .concat();
        self.send(&batch).await;
        let msgs = self.until_ready().await;
        assert!(
            msgs.iter().any(|m| matches!(m, Msg::DataRow(_))),
            "{msgs:?}"
        );
        msgs
    }

    /// Reads row `id` the way libpq's `PQexecParams` does: Parse, Bind, Describe (portal),
    /// Execute and Sync in one write.
    async fn read_row_pipelined(&mut self, id: i32) -> Vec<Msg> {
        let batch = [
            parse("", "SELECT id, total, version FROM invoice WHERE id = $1"),
            bind("", "", &[&id.to_string()]),
            describe_portal(""),
            execute(""),
            sync(),
        ]
        .concat();
        self.send(&batch).await;
        let msgs = self.until_ready().await;
        assert!(
            msgs.iter().any(|m| matches!(m, Msg::DataRow(_))),
            "{msgs:?}"
        );
        msgs
    }
}

async fn bump_directly(db: &TestDb, id: i32) {
    db.direct()
        .await
        .execute(
            "UPDATE invoice SET total = total + 100, version = version + 1 WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
}

async fn audit(db: &TestDb) -> Vec<i32> {
    db.direct()
        .await
        .query("SELECT n FROM audit ORDER BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn cc(tag: &str) -> Msg {
    Msg::CommandComplete(tag.to_string())
}

fn conflict_msg(id: i32) -> Msg {
    Msg::Error(
        "40001".into(),
        format!("optimistic lock conflict on public.invoice (id)=({id})"),
    )
}

#[tokio::test]
async fn conflict_in_an_autocommit_pipeline_stops_the_batch() {
    let db = TestDb::new("pl_auto").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.read_row(1).await;
    bump_directly(&db, 1).await;
    let batch = [
        pbe("INSERT INTO audit VALUES (1)"),
        pbe("UPDATE invoice SET total = 2 WHERE id = 1"),
        pbe("INSERT INTO audit VALUES (2)"),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            cc("INSERT 0 1"),
            Msg::ParseComplete,
            Msg::BindComplete,
            conflict_msg(1),
            Msg::Ready('I'),
        ]
    );
    assert_eq!(
        audit(&db).await,
        Vec::<i32>::new(),
        "nothing of the batch committed"
    );
    let total: String = db
        .direct()
        .await
        .query_one("SELECT total::text FROM invoice WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, "110");
    // The session is usable: a simple query right after.
    raw.send(&query("SELECT 1")).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::RowDescription(1),
            Msg::DataRow(vec![Some("1".into())]),
            cc("SELECT 1"),
            Msg::Ready('I')
        ]
    );
}

#[tokio::test]
async fn conflict_in_a_pipeline_inside_begin_aborts_the_transaction() {
    let db = TestDb::new("pl_tx").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.read_row(2).await;
    bump_directly(&db, 2).await;
    raw.send(&query("BEGIN")).await;
    assert_eq!(raw.until_ready().await, vec![cc("BEGIN"), Msg::Ready('T')]);
    let batch = [
        pbe("INSERT INTO audit VALUES (1)"),
        pbe("UPDATE invoice SET total = 2 WHERE id = 2"),
        pbe("INSERT INTO audit VALUES (2)"),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            cc("INSERT 0 1"),
            Msg::ParseComplete,
            Msg::BindComplete,
            conflict_msg(2),
            Msg::Ready('E'),
        ]
    );
    // Later statements fail until the transaction ends; COMMIT reports ROLLBACK.
    raw.send(&[pbe("SELECT 1"), sync()].concat()).await;
    let msgs = raw.until_ready().await;
    assert!(
        matches!(&msgs[0], Msg::Error(code, _) if code == "25P02"),
        "{msgs:?}"
    );
    assert_eq!(msgs.last(), Some(&Msg::Ready('E')));
    raw.send(&query("COMMIT")).await;
    assert_eq!(
        raw.until_ready().await,
        vec![cc("ROLLBACK"), Msg::Ready('I')]
    );
    assert_eq!(audit(&db).await, Vec::<i32>::new());
}

#[tokio::test]
async fn successful_pipeline_keeps_exact_command_tags() {
    let db = TestDb::new("pl_ok").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.read_row(1).await;
    raw.read_row(5).await;
    let batch = [
        pbe("INSERT INTO audit VALUES (3)"),
        // Checked against the version read above.
        pbe("UPDATE invoice SET total = 2 WHERE id = 1"),
        // The same row again: the session's own write advanced its tracked version.
        pbe("UPDATE invoice SET total = 3 WHERE id = 1 RETURNING total"),
        // At the expected version, but the other condition matches nothing: no conflict.
        pbe("UPDATE invoice SET total = 0 WHERE id = 5 AND total = 999"),
        // Blind and bulk writes.
        pbe("DELETE FROM invoice WHERE id = 2"),
        pbe("UPDATE invoice SET total = 0 WHERE id IN (3, 4)"),
        pbe("INSERT INTO audit VALUES (4)"),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    let p = || [Msg::ParseComplete, Msg::BindComplete];
    let expected: Vec<Msg> = [
        p().to_vec(),
        vec![cc("INSERT 0 1")],
        p().to_vec(),
        vec![cc("UPDATE 1")],
        p().to_vec(),
        vec![Msg::DataRow(vec![Some("3".into())]), cc("UPDATE 1")],
        p().to_vec(),
        vec![cc("UPDATE 0")],
        p().to_vec(),
        vec![cc("DELETE 1")],
        p().to_vec(),
        vec![cc("UPDATE 2")],
        p().to_vec(),
        vec![cc("INSERT 0 1")],
        vec![Msg::Ready('I')],
    ]
    .concat();
    assert_eq!(raw.until_ready().await, expected);
    assert_eq!(audit(&db).await, vec![3, 4]);
    let v: Vec<(i32, i64)> = db
        .direct()
        .await
        .query(
            "SELECT id, version FROM invoice WHERE id <= 5 ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(v, vec![(1, 2), (3, 1), (4, 1), (5, 0)]);
}

#[tokio::test]
async fn unnamed_statement_is_reused_across_batches_after_a_conflict() {
    let db = TestDb::new("pl_unnamed").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.read_row(6).await;
    bump_directly(&db, 6).await;
    let batch = [
        parse("", "UPDATE invoice SET total = total + 1 WHERE id = $1"),
        bind("", "", &["6"]),
        execute(""),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            conflict_msg(6),
            Msg::Ready('I')
        ]
    );
    // Re-read (with a named statement), then bind the unnamed statement again, no Parse.
    raw.read_row(6).await;
    let again = [bind("", "", &["6"]), execute(""), sync()].concat();
    raw.send(&again).await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::BindComplete, cc("UPDATE 1"), Msg::Ready('I')]
    );
    // Own write tracked: once more without a re-read, still clean.
    raw.send(&again).await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::BindComplete, cc("UPDATE 1"), Msg::Ready('I')]
    );
    // Another change: the reused statement conflicts again.
    bump_directly(&db, 6).await;
    raw.send(&again).await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::BindComplete, conflict_msg(6), Msg::Ready('I')]
    );
    // And a different row through the same unnamed statement is its own check.
    raw.send(&[bind("", "", &["7"]), execute(""), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::BindComplete, cc("UPDATE 1"), Msg::Ready('I')]
    );
    assert_eq!(version_of(&db, 6).await, 4);
}

/// libpq's `PQexecParams` (and `pgbench -M extended`) sends Parse, Bind, Describe(portal),
/// Execute and Sync in one write: the rows it reads must be tracked like any other.
#[tokio::test]
async fn reads_in_a_pipelined_describe_execute_are_tracked() {
    let db = TestDb::new("pl_readpipe").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.read_row_pipelined(3).await;
    bump_directly(&db, 3).await;
    raw.send(&[pbe("UPDATE invoice SET total = 2 WHERE id = 3"), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            conflict_msg(3),
            Msg::Ready('I')
        ]
    );
}

/// Bind with one result format per column of the client's `RETURNING` (as pgjdbc sends them):
/// the proxy's own columns must not disturb them, and it still reads the new version.
#[tokio::test]
async fn per_column_result_formats_with_returning() {
    let db = TestDb::new("pl_formats").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.read_row(8).await;
    // RETURNING id (binary int4), total (text).
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(&mut b, "");
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&2i16.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    let batch = [
        parse(
            "",
            "UPDATE invoice SET total = 5 WHERE id = 8 RETURNING id, total",
        ),
        frame(b'B', &b),
        describe_portal(""),
        execute(""),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            Msg::RowDescription(2),
            Msg::DataRow(vec![
                Some(String::from_utf8_lossy(&8i32.to_be_bytes()).into_owned()),
                Some("5".into())
            ]),
            cc("UPDATE 1"),
            Msg::Ready('I')
        ]
    );
    // The session's own write was tracked: a later change by another session conflicts.
    bump_directly(&db, 8).await;
    raw.send(&[pbe("UPDATE invoice SET total = 6 WHERE id = 8"), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            conflict_msg(8),
            Msg::Ready('I')
        ]
    );
}

#[tokio::test]
async fn an_error_before_a_checked_write_does_not_stall_the_batch() {
    let db = TestDb::new("pl_stall").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.read_row(2).await;
    // The Bind fails on the server (not a number), so the checked write's Execute, which the
    // rest of the batch waits for, is skipped by the server.
    let batch = [
        parse("", "UPDATE invoice SET total = $2 WHERE id = $1"),
        bind("", "", &["2", "not a number"]),
        execute(""),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    let replies = tokio::time::timeout(std::time::Duration::from_secs(10), raw.until_ready())
        .await
        .expect("the batch ends instead of waiting forever");
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert_eq!(replies[0], Msg::ParseComplete);
    assert!(
        matches!(&replies[1], Msg::Error(code, _) if code == "22P02"),
        "{replies:?}"
    );
    assert_eq!(replies[2], Msg::Ready('I'));
}

/// An unnamed statement whose first `Bind` names a row the session never read goes without
/// version check (bumped all the same); bound later to a row the session did read, it is
/// checked, and a stale version is a conflict.
#[tokio::test]
async fn unnamed_statement_first_bound_to_an_unread_row_is_checked_for_a_read_one() {
    let db = TestDb::new("pl_lean").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.read_row(6).await;
    let sql = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    raw.send(&[parse("", sql), bind("", "", &["7"]), execute(""), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            cc("UPDATE 1"),
            Msg::Ready('I')
        ]
    );
    // What the server ran: the bump, without version predicate or RETURNING.
    let direct = db.direct().await;
    let ran: String = direct
        .query_one(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        ran.starts_with("UPDATE invoice SET total = total + 1,"),
        "{ran}"
    );
    assert!(
        ran.contains("version") && !ran.contains("RETURNING"),
        "{ran}"
    );
    bump_directly(&db, 6).await;
    raw.send(&[bind("", "", &["6"]), execute(""), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::BindComplete, conflict_msg(6), Msg::Ready('I')]
    );
    let versions: Vec<i64> = direct
        .query(
            "SELECT version FROM invoice WHERE id IN (6, 7) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Row 6: bumped once directly, the stale write did not apply; row 7: bumped by the write.
    assert_eq!(versions, vec![1, 1]);
}

#[tokio::test]
async fn unnamed_write_pipelined_after_a_read_of_its_row_learns_its_new_version() {
    let db = TestDb::new("pl_lean_race").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    // The read and the write go in one batch: when the write is parsed the read's row has not
    // come back yet, so the session does not track the row at that moment.
    let batch = [
        parse("", "SELECT id, total, version FROM invoice WHERE id = $1"),
        bind("", "", &["7"]),
        describe_portal(""),
        execute(""),
        parse("", "UPDATE invoice SET total = total + 1 WHERE id = $1"),
        bind("", "", &["7"]),
        execute(""),
        sync(),
    ]
    .concat();
    raw.send(&batch).await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
    // The session's own write moved the row on: writing it again is no conflict.
    raw.send(
        &[
            pbe("UPDATE invoice SET total = total + 1 WHERE id = 7"),
            sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
    assert_eq!(
        version_of(&db, 7).await,
        2,
        "both writes applied, each bumped the version"
    );
}

#[tokio::test]
async fn simple_write_pipelined_after_a_read_of_its_row_learns_its_new_version() {
    let db = TestDb::new("pl_simple_race").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    // Two simple queries sent back to back: when the write is looked at, the read's row has
    // not come back yet, so the session does not track the row at that moment.
    raw.send(
        &[
            query("SELECT id, total, version FROM invoice WHERE id = 7"),
            query("UPDATE invoice SET total = total + 1 WHERE id = 7"),
        ]
        .concat(),
    )
    .await;
    raw.until_ready().await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
    // The session's own write moved the row on: writing it again is no conflict.
    raw.send(&query("UPDATE invoice SET total = total + 1 WHERE id = 7"))
        .await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
    assert_eq!(
        version_of(&db, 7).await,
        2,
        "both writes applied, each bumped the version"
    );
}

/// A prepared read that cannot show the version is not followed while the session tracks
/// nothing of its table; once the session tracks the row, the same statement's next read
/// (without the version) makes it forget the row, so the write after it is not held to a
/// version the session no longer shows.
#[tokio::test]
async fn prepared_read_without_the_version_is_followed_once_the_table_is_tracked() {
    let db = TestDb::new("pl_read_follow").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    let read = |id: &str| {
        [
            bind("", "total_of", &[id]),
            describe_portal(""),
            execute(""),
            sync(),
        ]
        .concat()
    };
    raw.send(
        &[
            parse("total_of", "SELECT total FROM invoice WHERE id = $1"),
            read("7"),
        ]
        .concat(),
    )
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.contains(&Msg::DataRow(vec![Some("10".into())])),
        "{msgs:?}"
    );
    // The session now tracks row 7 ...
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    // ... another session changes it, and this session reads it again, without the version.
    db.direct()
        .await
        .execute("UPDATE invoice SET version = version + 1 WHERE id = 7", &[])
        .await
        .unwrap();
    raw.send(&read("7")).await;
    raw.until_ready().await;
    // The row is forgotten: the write is blind, and goes through.
    raw.send(&query("UPDATE invoice SET total = 1 WHERE id = 7"))
        .await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
}

#[tokio::test]
async fn write_after_a_read_of_its_row_in_the_same_query_learns_its_new_version() {
    let db = TestDb::new("pl_same_query").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    // One query: when its steps are planned, the read's row has not come back yet.
    raw.send(&query(
        "SELECT id, total, version FROM invoice WHERE id = 7; \
         UPDATE invoice SET total = total + 1 WHERE id = 7",
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
    raw.send(&query("UPDATE invoice SET total = total + 1 WHERE id = 7"))
        .await;
    let msgs = raw.until_ready().await;
    assert!(msgs.contains(&cc("UPDATE 1")), "{msgs:?}");
}

#[tokio::test]
async fn two_writes_of_one_tracked_row_in_one_query_do_not_conflict_with_each_other() {
    let db = TestDb::new("pl_two_writes").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    // The second write expects the version the first one gave the row.
    raw.send(&query(
        "UPDATE invoice SET total = total + 1 WHERE id = 7; \
         UPDATE invoice SET total = total + 1 WHERE id = 7",
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert_eq!(
        msgs.iter().filter(|m| **m == cc("UPDATE 1")).count(),
        2,
        "{msgs:?}"
    );
    // A stale row still conflicts inside such a query.
    db.direct()
        .await
        .execute("UPDATE invoice SET version = version + 1 WHERE id = 7", &[])
        .await
        .unwrap();
    raw.send(&query(
        "UPDATE invoice SET total = 0 WHERE id = 7; UPDATE invoice SET total = 0 WHERE id = 8",
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Error(code, _) if code == "40001")),
        "{msgs:?}"
    );
}

/// A named guarded write is prepared as the client wrote it (plus its bump) and, under a name
/// of the proxy's, in full; a `Bind` that checks a version goes to the full form, even in the
/// batch that prepares both, and closing the statement closes both.
#[tokio::test]
async fn named_write_is_bound_in_full_only_when_it_checks_a_version() {
    let db = TestDb::new("pl_named_lean").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    db.direct()
        .await
        .execute("UPDATE invoice SET version = version + 1 WHERE id = 7", &[])
        .await
        .unwrap();
    let write = |id: &str| [bind("", "add_one", &[id]), describe_portal(""), execute("")].concat();
    // Row 7 is tracked and stale: a conflict, in the batch that prepares the statement.
    raw.send(
        &[
            parse(
                "add_one",
                "UPDATE invoice SET total = total + 1 WHERE id = $1",
            ),
            write("7"),
            sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs[0], Msg::ParseComplete, "one ParseComplete: {msgs:?}");
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Error(code, _) if code == "40001")),
        "{msgs:?}"
    );
    // Row 8 is not tracked: the client's statement, bumped, without RETURNING.
    raw.send(&[write("8"), sync()].concat()).await;
    let msgs = raw.until_ready().await;
    assert_eq!(
        msgs,
        vec![
            Msg::BindComplete,
            Msg::NoData,
            cc("UPDATE 1"),
            Msg::Ready('I')
        ]
    );
    // After a re-read, row 7 is written through the full form and its new version learnt:
    // the second write of it is no conflict.
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    for _ in 0..2 {
        raw.send(&[write("7"), sync()].concat()).await;
        let msgs = raw.until_ready().await;
        assert_eq!(
            msgs,
            vec![
                Msg::BindComplete,
                Msg::NoData,
                cc("UPDATE 1"),
                Msg::Ready('I')
            ]
        );
    }
    let direct = db.direct().await;
    let versions: Vec<i64> = direct
        .query(
            "SELECT version FROM invoice WHERE id IN (7, 8) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![3, 1], "every write bumped its row");
    // Closing the statement closes its full form too.
    raw.send(&[close_statement("add_one"), sync()].concat())
        .await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs, vec![Msg::Other('3'), Msg::Ready('I')]);
    raw.send(&query(
        "SELECT count(*) FROM pg_prepared_statements \
         WHERE name = 'add_one' OR name LIKE 'optlock\\_full\\_%'",
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.contains(&Msg::DataRow(vec![Some("0".into())])),
        "{msgs:?}"
    );
}

/// Inside a transaction block a checked write's `Sync` goes out with it (it ends nothing
/// there), while what the client sent after the `Sync` waits for the row count: a conflict
/// still comes before the batch's `ReadyForQuery`, aborts the transaction, and a `COMMIT`
/// pipelined behind it reports `ROLLBACK`.
#[tokio::test]
async fn checked_write_in_a_transaction_block_is_one_round_trip_and_still_aborts() {
    let db = TestDb::new("pl_tx_sync").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    for sql in [
        "BEGIN",
        "INSERT INTO audit VALUES (1)",
        "SELECT id, version FROM invoice WHERE id IN (3, 4)",
    ] {
        raw.send(&query(sql)).await;
        raw.until_ready().await;
    }
    let write = |id: &str| {
        [
            parse("", "UPDATE invoice SET total = total + 1 WHERE id = $1"),
            bind("", "", &[id]),
            describe_portal(""),
            execute(""),
            sync(),
        ]
        .concat()
    };
    raw.send(&write("4")).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            Msg::NoData,
            cc("UPDATE 1"),
            Msg::Ready('T')
        ]
    );
    // Another session changes row 3 (this one has not locked it).
    db.direct()
        .await
        .execute("UPDATE invoice SET version = version + 1 WHERE id = 3", &[])
        .await
        .unwrap();
    raw.send(&[write("3"), query("COMMIT")].concat()).await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs.len(), 5, "{msgs:?}");
    assert!(
        matches!(&msgs[3], Msg::Error(code, _) if code == "40001"),
        "{msgs:?}"
    );
    assert_eq!(msgs[4], Msg::Ready('E'));
    assert_eq!(
        raw.until_ready().await,
        vec![cc("ROLLBACK"), Msg::Ready('I')]
    );
    let audit = db
        .direct()
        .await
        .query("SELECT * FROM audit", &[])
        .await
        .unwrap();
    assert!(
        audit.is_empty(),
        "nothing of the aborted transaction committed"
    );
}

/// SQL `DEALLOCATE` of a named statement closes its full form too, at the start of the next
/// extended-protocol batch, unseen by the client. A `DEALLOCATE` that fails (in an aborted
/// transaction) leaves the statement, and the proxy keeps guarding it.
#[tokio::test]
async fn sql_deallocate_closes_the_full_form_and_a_failed_one_keeps_the_guard() {
    let db = TestDb::new("pl_dealloc").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    let count = "SELECT count(*) FROM pg_prepared_statements \
                 WHERE name = 'add_one' OR name LIKE 'optlock\\_full\\_%'";
    raw.send(
        &[
            parse(
                "add_one",
                "UPDATE invoice SET total = total + 1 WHERE id = $1",
            ),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::ParseComplete, Msg::Ready('I')]
    );
    raw.send(&query(count)).await;
    assert!(
        raw.until_ready()
            .await
            .contains(&Msg::DataRow(vec![Some("2".into())])),
        "the client's statement and its full form"
    );
    // Row 7 is read, then changed by another session.
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    db.direct()
        .await
        .execute("UPDATE invoice SET version = version + 1 WHERE id = 7", &[])
        .await
        .unwrap();
    // A DEALLOCATE in an aborted transaction fails: the statement is still there, and still
    // checks the version.
    raw.send(&query("BEGIN; SELECT 1/0")).await;
    raw.until_ready().await;
    raw.send(&query("DEALLOCATE add_one")).await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Error(code, _) if code == "25P02")),
        "{msgs:?}"
    );
    raw.send(&query("ROLLBACK")).await;
    raw.until_ready().await;
    raw.send(&[bind("", "add_one", &["7"]), execute(""), sync()].concat())
        .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Error(code, _) if code == "40001")),
        "the stale write still conflicts: {msgs:?}"
    );
    // A DEALLOCATE that succeeds: the next batch closes the full form first, and the client
    // sees only its own replies.
    raw.send(&query("DEALLOCATE add_one")).await;
    raw.until_ready().await;
    raw.send(&[parse("", count), bind("", "", &[]), execute(""), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            Msg::DataRow(vec![Some("0".into())]),
            cc("SELECT 1"),
            Msg::Ready('I')
        ]
    );
}

/// A `Bind` of the unnamed statement that went lean, for a row the session tracks, prepares it
/// again in full. When an earlier error in the batch makes the server skip that `Parse`, the
/// server keeps the lean statement, and so does the session: the next `Bind` of it works.
#[tokio::test]
async fn skipped_reparse_of_a_lean_statement_leaves_the_lean_one_in_use() {
    let db = TestDb::new("pl_reparse_skip").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    // Row 8 is not tracked: the unnamed statement goes lean.
    raw.send(
        &[
            parse("", "UPDATE invoice SET total = total + 1 WHERE id = $1"),
            bind("", "", &["8"]),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            cc("UPDATE 1"),
            Msg::Ready('I')
        ]
    );
    // Row 7 is read in the extended protocol (a simple query would drop the unnamed
    // statement).
    raw.send(
        &[
            parse("read", "SELECT id, version FROM invoice WHERE id = $1"),
            bind("", "read", &["7"]),
            describe_portal(""),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    raw.until_ready().await;
    // An error first; then a Bind of row 7 (tracked), whose full Parse the server skips.
    raw.send(
        &[
            parse("bad", "SELECT 1/0"),
            bind("", "bad", &[]),
            execute(""),
            bind("", "", &["7"]),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Error(code, _) if code == "22012")),
        "{msgs:?}"
    );
    // The lean statement is still the server's: bound as it is, for both rows.
    for id in ["8", "7"] {
        raw.send(&[bind("", "", &[id]), execute(""), sync()].concat())
            .await;
        assert_eq!(
            raw.until_ready().await,
            vec![Msg::BindComplete, cc("UPDATE 1"), Msg::Ready('I')],
            "row {id}"
        );
    }
}

/// What the session knows of a statement name follows what the server did with the `Parse`:
/// a second `Parse` of a name the server already has fails there, and the statement the
/// server keeps stays guarded; a `Parse` that fails leaves no statement, and its `Bind` gets
/// the server's own "does not exist" under the client's name.
#[tokio::test]
async fn a_parse_the_server_refuses_leaves_the_statement_it_has_guarded() {
    let db = TestDb::new("pl_parse_refused").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.send(
        &[
            parse(
                "add_one",
                "UPDATE invoice SET total = total + 1 WHERE id = $1",
            ),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::ParseComplete, Msg::Ready('I')]
    );
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    db.direct()
        .await
        .execute("UPDATE invoice SET version = version + 1 WHERE id = 7", &[])
        .await
        .unwrap();
    // The same name again, for a read: the server says it exists already.
    raw.send(&[parse("add_one", "SELECT 1"), sync()].concat())
        .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Error(code, _) if code == "42P05")),
        "{msgs:?}"
    );
    // The server's statement is still the write, and still checks the version.
    raw.send(&[bind("", "add_one", &["7"]), execute(""), sync()].concat())
        .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Error(code, _) if code == "40001")),
        "the stale write must conflict: {msgs:?}"
    );
    // A guarded write the server cannot prepare: its Bind fails under the client's name.
    raw.send(
        &[
            parse(
                "broken",
                "UPDATE invoice SET no_such_column = 1 WHERE id = $1",
            ),
            sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Error(code, _) if code == "42703")),
        "{msgs:?}"
    );
    raw.send(&query("SELECT id, version FROM invoice WHERE id = 7"))
        .await;
    raw.until_ready().await;
    raw.send(&[bind("", "broken", &["7"]), execute(""), sync()].concat())
        .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter().any(|m| matches!(m, Msg::Error(code, text)
            if code == "26000" && text.contains("\"broken\""))),
        "{msgs:?}"
    );
}

/// The exchanges [`an_unnamed_write_kept_prepared_answers_as_the_server_itself`] compares, each
/// batch's replies in order. The row written is read first (a write that checks a version
/// goes in full), and each text is sent twice, so the proxy keeps it prepared; with `probe`,
/// the script checks that it did.
async fn kept_script(raw: &mut Raw, probe: bool) -> Vec<Vec<Msg>> {
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    let broken = "UPDATE invoice SET total = no_such_column WHERE id = $1";
    let pbe_write = |id: &str| {
        [
            parse("", write),
            bind("", "", &[id]),
            describe_portal(""),
            execute(""),
            sync(),
        ]
        .concat()
    };
    let mut out = Vec::new();
    let mut batch = async |raw: &mut Raw, bytes: Vec<u8>| {
        raw.send(&bytes).await;
        out.push(raw.until_ready().await);
    };
    // The proxy bumps versions, the server alone does not: the reads are not compared.
    let read = async |raw: &mut Raw| {
        raw.send(&query(
            "SELECT id, total, version FROM invoice WHERE id = 6",
        ))
        .await;
        raw.until_ready().await;
    };
    read(raw).await;
    for _ in 0..3 {
        batch(raw, pbe_write("6")).await;
    }
    if probe {
        let kept =
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'optlock\\_full\\_%'";
        raw.send(&query(kept)).await;
        let msgs = raw.until_ready().await;
        assert!(
            msgs.contains(&Msg::DataRow(vec![Some("1".into())])),
            "the write is kept prepared: {msgs:?}"
        );
    }
    // Its description: the client's one parameter, no rows.
    batch(
        raw,
        [parse("", write), describe_statement(""), sync()].concat(),
    )
    .await;
    // The unnamed statement bound again without a new Parse, to another row.
    batch(raw, [bind("", "", &["5"]), execute(""), sync()].concat()).await;
    // In an aborted transaction the Parse itself fails.
    batch(raw, query("BEGIN")).await;
    batch(raw, query("SELECT 1/0")).await;
    batch(raw, pbe_write("6")).await;
    batch(raw, query("ROLLBACK")).await;
    // A simple query drops the unnamed statement: binding it fails.
    batch(raw, pbe_write("6")).await;
    batch(raw, query("SELECT 1")).await;
    batch(raw, [bind("", "", &["6"]), execute(""), sync()].concat()).await;
    batch(raw, pbe_write("6")).await;
    // A text the server cannot prepare: its Parse fails, and leaves no unnamed statement
    // (not even the one before it).
    for _ in 0..3 {
        batch(raw, [pbe("SELECT 42"), sync()].concat()).await;
        batch(raw, [parse("", broken), sync()].concat()).await;
        batch(raw, [bind("", "", &["6"]), execute(""), sync()].concat()).await;
    }
    // DISCARD ALL drops prepared statements; the write goes on.
    batch(raw, pbe_write("6")).await;
    batch(raw, query("DISCARD ALL")).await;
    read(raw).await;
    batch(raw, pbe_write("6")).await;
    batch(raw, pbe_write("6")).await;
    batch(raw, [bind("", "", &["6"]), execute(""), sync()].concat()).await;
    out
}

/// An unnamed guarded write sent again and again (libpq's `PQexecParams`) is kept prepared
/// under a name of the proxy's, and the client cannot tell: every reply, error and command tag
/// is the server's own, in an aborted transaction, after a simple query dropped the unnamed
/// statement, for a text the server refuses, and across `DISCARD ALL`.
#[tokio::test]
async fn an_unnamed_write_kept_prepared_answers_as_the_server_itself() {
    let db = TestDb::new("pl_kept_exact").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut direct = Raw::connect_to(&upstream(), &db.name).await;
    let expected = kept_script(&mut direct, false).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    let got = kept_script(&mut raw, true).await;
    assert_eq!(got, expected);
    assert!(
        got[3].contains(&Msg::Params(1)) && got[3].contains(&Msg::NoData),
        "{:?}",
        got[3]
    );
    // Each run wrote row 6 nine times and row 5 once (bumped by the proxy only).
    assert_eq!(version_of(&db, 6).await, 9);
    assert_eq!(version_of(&db, 5).await, 1);
}

/// The kept statement still checks the version: a row changed by someone else since the
/// session read it is a conflict, and the session's own writes never are.
#[tokio::test]
async fn an_unnamed_write_kept_prepared_still_checks_the_version() {
    let db = TestDb::new("pl_kept_check").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.read_row(6).await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    let batch = [parse("", write), bind("", "", &["6"]), execute(""), sync()].concat();
    for _ in 0..3 {
        raw.send(&batch).await;
        assert_eq!(
            raw.until_ready().await,
            vec![
                Msg::ParseComplete,
                Msg::BindComplete,
                cc("UPDATE 1"),
                Msg::Ready('I')
            ]
        );
    }
    raw.send(&query(
        "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'optlock\\_full\\_%'",
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.contains(&Msg::DataRow(vec![Some("1".into())])),
        "the write is kept prepared: {msgs:?}"
    );
    bump_directly(&db, 6).await;
    raw.send(&batch).await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            conflict_msg(6),
            Msg::Ready('I')
        ]
    );
    assert_eq!(version_of(&db, 6).await, 4);
}

/// A reload that removes every guard, picked up by a session while its unnamed statement
/// stands for a kept one: that statement is prepared again as the client wrote it, so binding
/// and describing it without a new `Parse` still work, and a simple query still drops it.
#[tokio::test]
async fn an_unnamed_statement_kept_prepared_outlives_a_reload_that_removes_every_guard() {
    let db = TestDb::new("pl_kept_unguard").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect(&proxy, &db.name).await;
        // A row the session read: its writes go in full, and are kept.
        raw.read_row(6).await;
        for _ in 0..2 {
            raw.send(&[parse("", write), bind("", "", &["6"]), execute(""), sync()].concat())
                .await;
            assert_eq!(raw.until_ready().await.last(), Some(&Msg::Ready('I')));
        }
        sessions.push(raw);
    }
    let mut config = (*proxy.shared.settings().config).clone();
    config.guards.clear();
    proxy.shared.replace_config(config);
    let rebind = [bind("", "", &["6"]), execute(""), sync()].concat();
    // Bound again.
    sessions[0].send(&rebind).await;
    assert_eq!(
        sessions[0].until_ready().await,
        vec![Msg::BindComplete, cc("UPDATE 1"), Msg::Ready('I')]
    );
    // Described, then bound again.
    sessions[1]
        .send(
            &[
                bind("", "", &["6"]),
                describe_statement(""),
                execute(""),
                sync(),
            ]
            .concat(),
        )
        .await;
    assert_eq!(
        sessions[1].until_ready().await,
        vec![
            Msg::BindComplete,
            Msg::Params(1),
            Msg::NoData,
            cc("UPDATE 1"),
            Msg::Ready('I')
        ]
    );
    // Dropped by a simple query.
    sessions[2].send(&query("SELECT 1")).await;
    sessions[2].until_ready().await;
    sessions[2].send(&rebind).await;
    let msgs = sessions[2].until_ready().await;
    assert!(
        matches!(&msgs[0], Msg::Error(code, _) if code == "26000"),
        "{msgs:?}"
    );
    // Six writes under the guard bumped the version; the two after the reload did not.
    assert_eq!(version_of(&db, 6).await, 6);
}

/// A reload picked up while the unnamed statement stands for a kept write (tokio-postgres's
/// `query_typed`: Parse, Bind, Describe of the statement, Execute, Sync), also by a write
/// that runs before the guards are resolved again: the writes after it never conflict with
/// the session's own.
#[tokio::test]
async fn a_reload_keeps_the_versions_kept_writes_learned() {
    let db = TestDb::new("pl_kept_reload").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.read_row(3).await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    let batch = [
        parse_typed("", write, &[23]),
        bind("", "", &["3"]),
        describe_statement(""),
        execute(""),
        sync(),
    ]
    .concat();
    let expected = vec![
        Msg::ParseComplete,
        Msg::BindComplete,
        Msg::Params(1),
        Msg::NoData,
        cc("UPDATE 1"),
        Msg::Ready('I'),
    ];
    for round in 0..2 {
        for _ in 0..3 {
            raw.send(&batch).await;
            assert_eq!(raw.until_ready().await, expected, "round {round}");
        }
        let config = (*proxy.shared.settings().config).clone();
        proxy.shared.replace_config(config);
        // A batch still unanswered when the session picks the reload up (tokio-postgres
        // closes its statements lazily): the guards are resolved again only after the write
        // behind it.
        raw.send(&[close_statement("gone"), sync(), batch.clone()].concat())
            .await;
        assert_eq!(
            raw.until_ready().await,
            vec![Msg::Other('3'), Msg::Ready('I')]
        );
        assert_eq!(raw.until_ready().await, expected, "round {round}");
    }
    assert_eq!(version_of(&db, 3).await, 8);
}

/// Named writes prepared under a guard (a keyed write of a tracked row, a pinned write, an
/// upsert, a bulk write), then a reload that removes every guard: each still binds and runs
/// with the client's own parameters, and its result shows nothing of the proxy's.
#[tokio::test]
async fn named_writes_outlive_a_reload_that_removes_every_guard() {
    let db = TestDb::new("pl_named_unguard").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.read_row(2).await;
    let statements: [(&str, &str, &[&str], &str); 4] = [
        (
            "keyed",
            "UPDATE invoice SET total = total + 1 WHERE id = $1",
            &["2"],
            "UPDATE 1",
        ),
        (
            "pinned",
            "UPDATE invoice SET total = total + 1 WHERE id = $1 AND version = $2",
            &["3", "0"],
            "UPDATE 1",
        ),
        (
            "upsert",
            "INSERT INTO invoice (id, total) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET total = invoice.total + 1",
            &["4"],
            "INSERT 0 1",
        ),
        (
            "bulk",
            "UPDATE invoice SET total = total + 1 WHERE total > $1",
            &["1000"],
            "UPDATE 0",
        ),
    ];
    for (name, sql, _, _) in &statements {
        raw.send(&[parse(name, sql), sync()].concat()).await;
        assert_eq!(
            raw.until_ready().await,
            vec![Msg::ParseComplete, Msg::Ready('I')]
        );
    }
    for (name, _, params, tag) in &statements {
        raw.send(&[bind("", name, params), execute(""), sync()].concat())
            .await;
        assert_eq!(
            raw.until_ready().await,
            vec![Msg::BindComplete, cc(tag), Msg::Ready('I')],
            "{name} under the guard"
        );
    }
    // An unnamed write sent twice: kept prepared.
    let unnamed = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    for _ in 0..2 {
        raw.send(
            &[
                parse("", unnamed),
                bind("", "", &["2"]),
                execute(""),
                sync(),
            ]
            .concat(),
        )
        .await;
        assert_eq!(raw.until_ready().await.last(), Some(&Msg::Ready('I')));
    }
    let mut config = (*proxy.shared.settings().config).clone();
    config.guards.clear();
    proxy.shared.replace_config(config);
    // A new unnamed statement replaces the one that stood for the kept write.
    raw.send(
        &[
            parse("", "SELECT 42"),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::ParseComplete,
            Msg::BindComplete,
            Msg::DataRow(vec![Some("42".into())]),
            cc("SELECT 1"),
            Msg::Ready('I')
        ]
    );
    for (name, _, params, tag) in &statements {
        let params: Vec<&str> = if *name == "pinned" {
            vec!["3", "1"]
        } else {
            params.to_vec()
        };
        raw.send(
            &[
                bind("", name, &params),
                describe_statement(name),
                execute(""),
                sync(),
            ]
            .concat(),
        )
        .await;
        assert_eq!(
            raw.until_ready().await,
            vec![
                Msg::BindComplete,
                Msg::Params(params.len()),
                Msg::NoData,
                cc(tag),
                Msg::Ready('I')
            ],
            "{name} after the reload"
        );
    }
}

/// A reload that keeps other guards but no longer guards the table of a statement prepared
/// under its guard: the statement is prepared again as the client wrote it, so it checks and
/// bumps no version any more.
#[tokio::test]
async fn a_named_write_of_a_table_no_longer_guarded_goes_as_written() {
    let db = TestDb::new("pl_named_dropped").await;
    setup(&db).await;
    let other = r#"
[[guard]]
table = "public.other"
key = ["id"]
version = "version"
"#;
    let proxy = Proxy::with_guards(&format!("{INVOICE}{other}")).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    let pinned = "UPDATE invoice SET total = total + 1 WHERE id = $1 AND version = $2";
    raw.send(&[parse("pinned", pinned), sync()].concat()).await;
    raw.until_ready().await;
    // Under the guard: a stale pinned version is a conflict.
    raw.send(&[bind("", "pinned", &["5", "7"]), execute(""), sync()].concat())
        .await;
    let msgs = raw.until_ready().await;
    assert!(
        matches!(&msgs[1], Msg::Error(code, _) if code == "40001"),
        "{msgs:?}"
    );
    let mut config = (*proxy.shared.settings().config).clone();
    config.guards.retain(|g| g.table.name == "other");
    assert_eq!(config.guards.len(), 1);
    proxy.shared.replace_config(config);
    // A simple query picks the reload up; the guards are resolved and the statements listed.
    raw.send(&query("SELECT 1")).await;
    raw.until_ready().await;
    raw.send(&[bind("", "pinned", &["5", "7"]), execute(""), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::BindComplete, cc("UPDATE 0"), Msg::Ready('I')]
    );
    raw.send(&[bind("", "pinned", &["5", "0"]), execute(""), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::BindComplete, cc("UPDATE 1"), Msg::Ready('I')]
    );
    assert_eq!(version_of(&db, 5).await, 0, "no longer bumped");
}

/// Waits until the server runs a statement whose text holds `marker`.
async fn wait_until_running(db: &TestDb, marker: &str) {
    let direct = db.direct().await;
    let running = "SELECT count(*) FROM pg_stat_activity \
                   WHERE strpos(query, $1) > 0 AND state = 'active' AND pid <> pg_backend_pid()";
    while direct
        .query_one(running, &[&marker])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Reloads the proxy's config with `public.invoice` guarded too.
fn guard_invoice_too(proxy: &Proxy) {
    let mut config = (*proxy.shared.settings().config).clone();
    config.guards.extend(
        optlock::config::Config::parse(INVOICE, "test.toml")
            .unwrap()
            .guards,
    );
    proxy.shared.replace_config(config);
}

/// A reload that adds a guard reaches a session whose client pipelines: a statement prepared
/// before it and bound in a batch sent while an earlier one is still running is guarded.
#[tokio::test]
async fn a_reload_reaches_a_client_that_never_waits() {
    let db = TestDb::new("pl_reload_busy").await;
    setup(&db).await;
    // Another table guarded: the session follows its replies.
    let proxy = Proxy::with_guards(
        "[[guard]]\ntable = \"public.audit\"\nkey = [\"n\"]\nversion = \"xmin\"\n",
    )
    .await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    raw.send(&[parse("w", write), sync()].concat()).await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::ParseComplete, Msg::Ready('I')]
    );
    // A batch still running when the reload comes, and the write sent behind it.
    raw.send(&query("SELECT pg_sleep(0.5) AS held")).await;
    wait_until_running(&db, "pg_sleep(0.5) AS held").await;
    guard_invoice_too(&proxy);
    raw.send(&[bind("", "w", &["2"]), execute(""), sync()].concat())
        .await;
    assert_eq!(raw.until_ready().await.last(), Some(&Msg::Ready('I')));
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::BindComplete, cc("UPDATE 1"), Msg::Ready('I')]
    );
    assert_eq!(version_of(&db, 2).await, 1, "the write was guarded: bumped");
}

/// The server's unnamed statement outlives a reload: the proxy's catalog queries after it
/// (simple queries, which would drop it) do not run between its `Parse` and its `Bind`.
#[tokio::test]
async fn an_unnamed_statement_outlives_a_reload() {
    let db = TestDb::new("pl_reload_unnamed").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    raw.send(&[parse("", "SELECT 42"), sync()].concat()).await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::ParseComplete, Msg::Ready('I')]
    );
    let mut config = (*proxy.shared.settings().config).clone();
    config.guards.push(config.guards[0].clone());
    config.guards[1].table.name = "audit".into();
    proxy.shared.replace_config(config);
    raw.send(&[bind("", "", &[]), execute(""), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Msg::BindComplete,
            Msg::DataRow(vec![Some("42".into())]),
            cc("SELECT 1"),
            Msg::Ready('I')
        ]
    );
}

/// The proxy's catalog queries after a reload, sent behind a client batch that leaves the
/// transaction failed, fail with it unseen, and are sent again once the client rolls back.
#[tokio::test]
async fn catalog_queries_that_meet_a_failed_transaction_are_sent_again_after_it() {
    let db = TestDb::new("pl_reload_failed").await;
    setup(&db).await;
    let proxy = Proxy::with_guards(
        "[[guard]]\ntable = \"public.audit\"\nkey = [\"n\"]\nversion = \"xmin\"\n",
    )
    .await;
    let mut raw = Raw::connect(&proxy, &db.name).await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    raw.send(&[parse("w", write), sync()].concat()).await;
    raw.until_ready().await;
    raw.send(&query("BEGIN")).await;
    assert_eq!(raw.until_ready().await.last(), Some(&Msg::Ready('T')));
    raw.send(&query("SELECT pg_sleep(0.5) AS doomed; SELECT 1/0"))
        .await;
    wait_until_running(&db, "AS doomed").await;
    guard_invoice_too(&proxy);
    raw.send(&[bind("", "w", &["2"]), execute(""), sync()].concat())
        .await;
    let failed = raw.until_ready().await;
    assert!(
        matches!(&failed[..], [.., Msg::Error(code, _), Msg::Ready('E')] if code == "22012"),
        "{failed:?}"
    );
    let skipped = raw.until_ready().await;
    assert!(
        matches!(&skipped[..], [Msg::Error(code, _), Msg::Ready('E')] if code == "25P02"),
        "the write in the failed transaction, as the server alone answers it: {skipped:?}"
    );
    raw.send(&query("ROLLBACK")).await;
    assert_eq!(
        raw.until_ready().await,
        vec![cc("ROLLBACK"), Msg::Ready('I')]
    );
    raw.send(&[bind("", "w", &["2"]), execute(""), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Msg::BindComplete, cc("UPDATE 1"), Msg::Ready('I')]
    );
    assert_eq!(version_of(&db, 2).await, 1, "the write was guarded: bumped");
}
