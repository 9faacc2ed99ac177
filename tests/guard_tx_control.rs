//! Transaction control in the same simple `Query` as guarded writes (`ROLLBACK`, `SAVEPOINT`,
//! `RELEASE`, `ROLLBACK TO`, `COMMIT AND CHAIN`, `PREPARE TRANSACTION`, `BEGIN`, `COPY FROM
//! STDIN`, ...): the proxy never changes transaction boundaries, so every reply (notices
//! included, byte for byte) and the committed state are PostgreSQL's own, and a stale write
//! among them still conflicts.

mod common;
use common::cluster::Cluster;
use common::scenario::{Scenario, Who, Who::*, conflict, rows_of, same};
use common::wire::{Msg, Raw, copy_data, copy_done, query};
use common::{Proxy, TestDb, upstream};

const ITEM: &str =
    "CREATE TABLE item (id int PRIMARY KEY, qty int, version int NOT NULL DEFAULT 0);
INSERT INTO item (id, qty) VALUES (1, 100), (2, 200);
CREATE TABLE audit (n int);
CREATE TABLE uniq (n int UNIQUE DEFERRABLE INITIALLY DEFERRED);
CREATE FUNCTION noted() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN RAISE NOTICE 'checked %', NEW.n; RETURN NULL; END$$;
CREATE CONSTRAINT TRIGGER noted AFTER INSERT ON uniq DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION noted();";

const GUARD: &str = r#"
[[guard]]
table = "public.item"
key = ["id"]
version = "version"
"#;

const STATE: &str = "SELECT id, qty, (SELECT count(*) FROM audit) FROM item ORDER BY id";

/// A read that teaches the session both rows' versions (the writes after it are checked); run
/// first only, while the versions are the same directly and through the proxy (which bumps
/// them).
const READ: &str = "SELECT id, qty, version FROM item ORDER BY id";

/// The rows as they are now, versions left out.
const LOOK: &str = "SELECT id, qty FROM item ORDER BY id";

fn scenario(name: &'static str, steps: Vec<common::scenario::Step>) -> Scenario<'static> {
    Scenario {
        name,
        setup: ITEM,
        guards: GUARD,
        steps,
        state: STATE,
        proxy_state: None,
    }
}

/// Every message of the reply to one simple `Query` up to its `ReadyForQuery`, whole bytes
/// (notices included); a `COPY ... FROM STDIN` gets one row, `7`.
async fn exchange(raw: &mut Raw, sql: &str) -> Vec<Msg> {
    raw.send(&query(sql)).await;
    let mut out = Vec::new();
    loop {
        let m = raw.read_msg().await.expect("the connection closed");
        if m.tag == b'G' {
            raw.send(&[copy_data(b"7\n"), copy_done()].concat()).await;
        }
        let done = m.tag == b'Z';
        if m.tag != b'S' {
            out.push(without_table_oids(m));
        }
        if done {
            return out;
        }
    }
}

/// A `RowDescription` with its table OIDs zeroed (each run has a database of its own).
fn without_table_oids(mut m: Msg) -> Msg {
    if m.tag == b'T' {
        let n = u16::from_be_bytes([m.bytes[5], m.bytes[6]]);
        let mut i = 7;
        for _ in 0..n {
            i += m.bytes[i..].iter().position(|&b| b == 0).unwrap() + 1;
            m.bytes[i..i + 4].fill(0);
            i += 18;
        }
    }
    m
}

/// What `steps` (session, text) read, every message, and the final state, in `db` (its
/// tables made afresh), reached at `addr` (the server or a proxy).
async fn run(
    db: &TestDb,
    addr: &str,
    steps: &[(Who, &str)],
) -> (Vec<Vec<Msg>>, Vec<Vec<Option<String>>>) {
    let direct = db.direct().await;
    direct
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS item, audit, uniq; DROP FUNCTION IF EXISTS noted(); {ITEM}"
        ))
        .await
        .unwrap();
    let mut a = Raw::open(addr, &db.name).await;
    let mut b = Raw::open(addr, &db.name).await;
    let mut replies = Vec::new();
    for (who, sql) in steps {
        let raw = if *who == B { &mut b } else { &mut a };
        replies.push(exchange(raw, sql).await);
    }
    drop((a, b));
    let rows = direct.simple_query(STATE).await.unwrap();
    (replies, common::rows(&rows))
}

/// Runs each case directly and through one proxy (a database each): every reply byte for
/// byte, and the final state, must be the same.
async fn exact_on(upstream_addr: &str, proxy: &Proxy, cases: &[&[(Who, &str)]]) {
    let direct_db = TestDb::on(upstream_addr, "txctl").await;
    let proxy_db = TestDb::on(upstream_addr, "txctl").await;
    let proxy_addr = proxy.addr.to_string();
    for steps in cases {
        let (direct, d_state) = run(&direct_db, upstream_addr, steps).await;
        let (through, p_state) = run(&proxy_db, &proxy_addr, steps).await;
        for (i, (d, p)) in direct.iter().zip(&through).enumerate() {
            assert_eq!(p, d, "step {i} ({:?}) differs through the proxy", steps[i]);
        }
        assert_eq!(p_state, d_state, "final state of {steps:?}");
    }
}

async fn exact(cases: &[&[(Who, &str)]]) {
    let proxy = Proxy::with_guards(GUARD).await;
    exact_on(&upstream(), &proxy, cases).await;
}

/// Each text after a fresh session, after a read (its writes checked), and inside a
/// transaction block opened before it.
fn variants<'a>(texts: &[&'a str]) -> Vec<Vec<(Who, &'a str)>> {
    let mut out = Vec::new();
    for t in texts {
        out.push(vec![(A, *t), (A, "SELECT 1")]);
        out.push(vec![(A, READ), (A, *t), (A, "ROLLBACK"), (A, LOOK)]);
        out.push(vec![
            (A, "BEGIN"),
            (A, READ),
            (A, *t),
            (A, "COMMIT"),
            (A, LOOK),
        ]);
    }
    out
}

async fn exact_variants(texts: &[&str]) {
    let cases = variants(texts);
    let cases: Vec<&[(Who, &str)]> = cases.iter().map(|c| c.as_slice()).collect();
    exact(&cases).await;
}

#[tokio::test]
async fn ending_an_implicit_block_ends_it_as_postgresql_does() {
    exact_variants(&[
        "UPDATE item SET qty = 5 WHERE id = 1; ROLLBACK",
        "UPDATE item SET qty = 5 WHERE id = 1; COMMIT",
        "UPDATE item SET qty = 5 WHERE id = 1; abort work; UPDATE item SET qty = 6 WHERE id = 2",
        "UPDATE item SET qty = 5 WHERE id = 1; ROLLBACK; UPDATE item SET qty = 6 WHERE id = 1",
        "UPDATE item SET qty = 5 WHERE id = 1; SAVEPOINT x; UPDATE item SET qty = 6 WHERE id = 1",
        "DELETE FROM item WHERE id = 2; ROLLBACK TRANSACTION AND NO CHAIN",
        "UPDATE item SET qty = 5 WHERE id = 1; end; UPDATE item SET qty = 6 WHERE id = 2; ROLLBACK",
        "UPDATE item SET qty = 5 WHERE id = 1; COMMIT; UPDATE item SET qty = 6 WHERE id = 2; SELECT 1/0",
        "BEGIN; UPDATE item SET qty = 6 WHERE id = 1; COMMIT; UPDATE item SET qty = 7 WHERE id = 1; SELECT 1/0",
        "SELECT 1; UPDATE item SET qty = 5 WHERE id = 1; Commit /* now */ Work; SELECT 2",
    ])
    .await;
}

#[tokio::test]
async fn savepoints_and_chains_outside_a_block_fail_as_postgresql_fails_them() {
    exact_variants(&[
        "UPDATE item SET qty = 5 WHERE id = 1; SAVEPOINT x",
        "UPDATE item SET qty = 5 WHERE id = 1; RELEASE SAVEPOINT x",
        "UPDATE item SET qty = 5 WHERE id = 1; release x; SELECT 1",
        "UPDATE item SET qty = 5 WHERE id = 1; ROLLBACK TO x",
        "UPDATE item SET qty = 5 WHERE id = 1; rollback work to savepoint x",
        "UPDATE item SET qty = 5 WHERE id = 1; COMMIT AND CHAIN",
        "UPDATE item SET qty = 5 WHERE id = 1; end -- c\n and chain",
        "UPDATE item SET qty = 5 WHERE id = 1; ROLLBACK AND CHAIN",
        "UPDATE item SET qty = 5 WHERE id = 1; COMMIT; SAVEPOINT x",
        "BEGIN; UPDATE item SET qty = 5 WHERE id = 1; COMMIT; UPDATE item SET qty = 6 WHERE id = 2; SAVEPOINT x",
        "SAVEPOINT x; UPDATE item SET qty = 5 WHERE id = 1",
    ])
    .await;
}

#[tokio::test]
async fn prepare_transaction_in_an_implicit_block_is_postgresql_s() {
    exact_variants(&[
        "UPDATE item SET qty = 5 WHERE id = 1; PREPARE TRANSACTION 'x'",
        "UPDATE item SET qty = 5 WHERE id = 1; PREPARE TRANSACTION 'x'; UPDATE item SET qty = 6 WHERE id = 2",
        "PREPARE TRANSACTION 'x'; UPDATE item SET qty = 5 WHERE id = 1",
    ])
    .await;
}

/// With prepared transactions enabled, the implicit block is really prepared (and committed
/// later), as directly.
#[tokio::test]
async fn prepare_transaction_prepares_the_implicit_block() {
    if !Cluster::available() {
        eprintln!("skipped: no PostgreSQL server binaries");
        return;
    }
    let cluster = Cluster::start_with(
        &["host all all 127.0.0.1/32 trust"],
        &["max_prepared_transactions = 4"],
    );
    let up = format!("127.0.0.1:{}", cluster.port);
    let proxy = Proxy::from_file(GUARD, &up).await;
    exact_on(
        &up,
        &proxy,
        &[
            &[
                (A, READ),
                (A, "UPDATE item SET qty = 5 WHERE id = 1; PREPARE TRANSACTION 'p1'; UPDATE item SET qty = 6 WHERE id = 2"),
                (A, "COMMIT PREPARED 'p1'"),
            ],
            &[
                (A, "UPDATE item SET qty = 5 WHERE id = 1; PREPARE TRANSACTION 'p2'"),
                (A, "ROLLBACK PREPARED 'p2'"),
            ],
            &[
                (A, READ),
                (A, "BEGIN; UPDATE item SET qty = 5 WHERE id = 1; PREPARE TRANSACTION 'p3'; SELECT 1"),
                (A, "COMMIT PREPARED 'p3'"),
            ],
        ],
    )
    .await;
}

#[tokio::test]
async fn begin_turns_the_implicit_block_explicit() {
    exact_variants(&[
        "UPDATE item SET qty = 5 WHERE id = 1; BEGIN; UPDATE item SET qty = 6 WHERE id = 2; ROLLBACK",
        "UPDATE item SET qty = 5 WHERE id = 1; BEGIN; UPDATE item SET qty = 6 WHERE id = 2",
        "UPDATE item SET qty = 5 WHERE id = 1; START TRANSACTION; SELECT 1/0",
        "SET application_name = 'x'; BEGIN ISOLATION LEVEL SERIALIZABLE; UPDATE item SET qty = 5 WHERE id = 1; SHOW transaction_isolation; COMMIT",
        "UPDATE item SET qty = 5 WHERE id = 1; BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1",
        "UPDATE item SET qty = 5 WHERE id = 1; BEGIN READ ONLY; UPDATE item SET qty = 6 WHERE id = 2",
        "BEGIN; UPDATE item SET qty = 5 WHERE id = 1; SAVEPOINT s; UPDATE item SET qty = 6 WHERE id = 2; ROLLBACK TO s; UPDATE item SET qty = 7 WHERE id = 1; RELEASE s; COMMIT",
        "BEGIN; UPDATE item SET qty = 5 WHERE id = 1; SAVEPOINT s; UPDATE item SET qty = 6 WHERE id = 2; ROLLBACK TO s; UPDATE item SET qty = 7 WHERE id = 2; RELEASE s; COMMIT",
        "BEGIN; UPDATE item SET qty = 5 WHERE id = 1; COMMIT AND CHAIN; UPDATE item SET qty = 6 WHERE id = 2; ROLLBACK AND CHAIN; SELECT 1",
    ])
    .await;
}

#[tokio::test]
async fn statements_that_refuse_a_block_still_refuse_it() {
    exact_variants(&[
        "UPDATE item SET qty = 5 WHERE id = 1; COMMIT; VACUUM item",
        "UPDATE item SET qty = 5 WHERE id = 1; ROLLBACK; VACUUM item; SELECT 1",
    ])
    .await;
}

/// What runs when the block commits (deferred triggers and their notices, a deferred
/// constraint failing) comes after the warning, as directly.
#[tokio::test]
async fn deferred_work_at_the_end_of_the_block() {
    exact_variants(&[
        "UPDATE item SET qty = 5 WHERE id = 1; INSERT INTO uniq VALUES (1); COMMIT; SELECT 1",
        "UPDATE item SET qty = 5 WHERE id = 1; INSERT INTO uniq VALUES (1), (1); COMMIT; SELECT 1",
        "UPDATE item SET qty = 5 WHERE id = 1; INSERT INTO uniq VALUES (1), (1); PREPARE TRANSACTION 'x'",
        "UPDATE item SET qty = 5 WHERE id = 1; INSERT INTO uniq VALUES (1), (1)",
        "INSERT INTO uniq VALUES (2); UPDATE item SET qty = 5 WHERE id = 1; ROLLBACK; INSERT INTO uniq VALUES (3)",
    ])
    .await;
}

/// After a failed block: `ROLLBACK` first ends it, the rest runs in a new implicit block.
#[tokio::test]
async fn a_failed_block_ended_in_the_same_query() {
    exact(&[
        &[
            (A, "BEGIN"),
            (A, "SELECT 1/0"),
            (
                A,
                "ROLLBACK; UPDATE item SET qty = 5 WHERE id = 1; SAVEPOINT x",
            ),
            (A, LOOK),
        ],
        &[
            (A, READ),
            (A, "BEGIN"),
            (A, "SELECT 1/0"),
            (A, "COMMIT; UPDATE item SET qty = 5 WHERE id = 1; ROLLBACK"),
            (A, LOOK),
        ],
        &[
            (A, READ),
            (A, "BEGIN"),
            (A, "SELECT 1/0"),
            (A, "UPDATE item SET qty = 5 WHERE id = 1; ROLLBACK"),
            (A, "ROLLBACK"),
        ],
    ])
    .await;
}

/// `COPY ... FROM STDIN` among guarded writes and transaction control.
#[tokio::test]
async fn copy_from_stdin_beside_transaction_control() {
    exact_variants(&[
        "UPDATE item SET qty = 5 WHERE id = 1; COPY audit FROM STDIN; ROLLBACK",
        "COPY audit FROM STDIN; UPDATE item SET qty = 5 WHERE id = 1; COMMIT; COPY audit FROM STDIN; SAVEPOINT x",
        "UPDATE item SET qty = 5 WHERE id = 1; BEGIN; COPY audit FROM STDIN; UPDATE item SET qty = 6 WHERE id = 2; COMMIT",
    ])
    .await;
}

/// A stale write among transaction control still conflicts, and what it would have written
/// (with the rest of its block) is not committed; what committed before it stays. In a block
/// the text opened, the conflict leaves it failed, as any error would.
#[tokio::test]
async fn a_stale_write_among_transaction_control_conflicts() {
    for (text, after) in [
        (
            "UPDATE item SET qty = 90 WHERE id = 1; COMMIT",
            [["1", "1", "0"], ["2", "200", "0"]],
        ),
        (
            "UPDATE item SET qty = 2 WHERE id = 2; COMMIT; UPDATE item SET qty = 90 WHERE id = 1; ROLLBACK",
            [["1", "1", "0"], ["2", "2", "0"]],
        ),
        (
            "UPDATE item SET qty = 2 WHERE id = 2; BEGIN; UPDATE item SET qty = 90 WHERE id = 1; COMMIT",
            [["1", "1", "0"], ["2", "200", "0"]],
        ),
        (
            "UPDATE item SET qty = 90 WHERE id = 1; ROLLBACK",
            [["1", "1", "0"], ["2", "200", "0"]],
        ),
    ] {
        let mut s = scenario(
            "read, other writes, stale write among transaction control",
            vec![
                same(A, READ),
                same(B, "UPDATE item SET qty = 1 WHERE id = 1"),
                conflict(A, text),
                same(A, "ROLLBACK"),
            ],
        );
        let rows: Vec<&[&str]> = after.iter().map(|r| r.as_slice()).collect();
        s.proxy_state = Some(rows_of(&rows));
        s.check().await;
    }
}

/// A stale write that matches no row (the row was deleted) inside an emulated block: the
/// conflict comes after the write, and the block is still rolled back.
#[tokio::test]
async fn a_deleted_row_conflicts_and_rolls_the_block_back() {
    let mut s = scenario(
        "read, other deletes, write of the deleted row, rollback",
        vec![
            same(A, READ),
            same(B, "DELETE FROM item WHERE id = 1"),
            conflict(
                A,
                "UPDATE item SET qty = 2 WHERE id = 2; UPDATE item SET qty = 90 WHERE id = 1; COMMIT",
            ),
            same(A, "SELECT 1"),
        ],
    );
    s.proxy_state = Some(rows_of(&[&["2", "200", "0"]]));
    s.check().await;
}
