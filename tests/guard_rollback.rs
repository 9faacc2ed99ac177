//! What a session learned inside a transaction or savepoint that did not commit is undone to
//! what it knew before: a rolled-back write (or read) of a row must not move the version the
//! session expects. Each case runs twice (see `common::scenario`): with session B changing the
//! row after the rollback (A's stale write must conflict, B's change must survive) and without
//! (A's write must not conflict). Simple and extended protocol, explicit and implicit
//! transactions, savepoints in their spellings, both `track` modes.

mod common;
use common::scenario::{Scenario, Step, Who::*, conflict, rows_of, same, same_batch};
use common::wire::{bind, execute, parse, pbe, sync};

const ITEM: &str =
    "CREATE TABLE item (id int PRIMARY KEY, qty int, version int NOT NULL DEFAULT 0);
INSERT INTO item (id, qty) VALUES (1, 100), (2, 200);";

const GUARD: &str = r#"
[[guard]]
table = "public.item"
key = ["id"]
version = "version"
"#;

const PER_TRANSACTION: &str = r#"
track = "transaction"
[[guard]]
table = "public.item"
key = ["id"]
version = "version"
"#;

const STATE: &str = "SELECT id, qty FROM item ORDER BY id";
const READ: &str = "SELECT id, qty, version FROM item ORDER BY id";
const B_WRITES: &str = "UPDATE item SET qty = 1 WHERE id = 1";
const A_WRITES: &str = "UPDATE item SET qty = 90 WHERE id = 1";
const DECREMENT: &str = "UPDATE item SET qty = qty - 10 WHERE id = 1";

fn scenario(name: String, guards: &'static str, steps: Vec<Step>) -> Scenario<'static> {
    Scenario {
        name: Box::leak(name.into_boxed_str()),
        setup: ITEM,
        guards,
        steps,
        state: STATE,
        proxy_state: None,
    }
}

/// A reads both rows, runs `undo` (which must leave no trace in what A knows of row 1), then
/// writes row 1: after B's write it must conflict, without it it must not.
async fn undone(name: &str, undo: &[Step]) {
    let mut with_b = vec![same(A, READ)];
    with_b.extend_from_slice(undo);
    let mut without_b = with_b.clone();
    with_b.push(same(B, B_WRITES));
    with_b.push(conflict(A, A_WRITES));
    let mut s = scenario(format!("{name} (B writes)"), GUARD, with_b);
    s.proxy_state = Some(rows_of(&[&["1", "1"], &["2", "200"]]));
    s.check().await;
    without_b.push(same(A, A_WRITES));
    scenario(format!("{name} (alone)"), GUARD, without_b)
        .check()
        .await;
}

fn steps(sqls: &[&str]) -> Vec<Step> {
    sqls.iter().map(|sql| same(A, *sql)).collect()
}

#[tokio::test]
async fn rolled_back_transactions_are_undone() {
    let d = DECREMENT;
    let cases: Vec<Vec<String>> = vec![
        vec![format!("BEGIN; {d}; ROLLBACK")],
        vec![format!("begin work; {}; abort", d.to_lowercase())],
        vec![format!("START TRANSACTION; {d}; ROLLBACK TRANSACTION")],
        vec![format!("BEGIN; DELETE FROM item WHERE id = 1; ROLLBACK")],
        vec!["BEGIN".into(), d.into(), "ROLLBACK".into()],
        vec![
            "BEGIN".into(),
            d.into(),
            "SELECT 1/0".into(),
            "COMMIT".into(),
        ],
        vec!["BEGIN".into(), format!("{d}; SELECT 1/0"), "END".into()],
        vec![
            format!("BEGIN; {d}"),
            "ROLLBACK AND CHAIN".into(),
            "COMMIT".into(),
        ],
        vec![format!(
            "BEGIN; {d}; /* ROLLBACK TO x */ ROLLBACK; SELECT 1"
        )],
    ];
    for case in cases {
        let sqls: Vec<&str> = case.iter().map(String::as_str).collect();
        undone(&sqls.join(" / "), &steps(&sqls)).await;
    }
}

#[tokio::test]
async fn rolled_back_savepoints_are_undone() {
    let d = DECREMENT;
    let cases: Vec<Vec<String>> = vec![
        vec![format!(
            "BEGIN; SAVEPOINT s; {d}; ROLLBACK TO SAVEPOINT s; COMMIT"
        )],
        vec![format!(
            "BEGIN; SAVEPOINT \"Sp\"; {d}; rollback work to \"Sp\"; COMMIT"
        )],
        vec![format!(
            "BEGIN; savepoint A; {d}; ROLLBACK TO a; RELEASE a; COMMIT"
        )],
        vec![format!(
            "BEGIN; SAVEPOINT a; SAVEPOINT b; {d}; RELEASE SAVEPOINT b; ROLLBACK TO a; COMMIT"
        )],
        vec![format!(
            "BEGIN; SAVEPOINT U&\"s\\0031\"; {d}; ROLLBACK TRANSACTION TO s1; COMMIT"
        )],
        vec![
            "BEGIN".into(),
            "SAVEPOINT s".into(),
            d.into(),
            "ROLLBACK TO s".into(),
            "COMMIT".into(),
        ],
        vec![
            "BEGIN; SAVEPOINT s".into(),
            format!("{d}; SELECT 1/0"),
            "ROLLBACK TO s".into(),
            "COMMIT".into(),
        ],
    ];
    for case in cases {
        let sqls: Vec<&str> = case.iter().map(String::as_str).collect();
        undone(&sqls.join(" / "), &steps(&sqls)).await;
    }
}

/// What committed stays learned: only the rolled-back part is undone (the innermost of two
/// savepoints of one name; a `COMMIT` earlier in a failed text).
#[tokio::test]
async fn committed_parts_stay_learned() {
    let d = DECREMENT;
    let twice = format!("BEGIN; {d}; SAVEPOINT a; {d}; SAVEPOINT a; {d}; ROLLBACK TO a; COMMIT");
    let undo = steps(&[&twice, "ROLLBACK TO a"]);
    // The last step fails (no transaction) the same way directly and through the proxy.
    undone("two savepoints named a", &undo).await;
    let committed = format!("BEGIN; {d}; COMMIT; UPDATE item SET qty = 7 WHERE id = 2; SELECT 1/0");
    let mut undo = steps(&[&committed]);
    // Row 2's failed write is undone (B does not touch it): A's own write goes on.
    undo.push(same(A, "UPDATE item SET qty = 5 WHERE id = 2"));
    let mut with_b = vec![same(A, READ)];
    with_b.extend(undo.clone());
    with_b.push(same(B, B_WRITES));
    with_b.push(conflict(A, A_WRITES));
    let mut s = scenario("committed, then failed".into(), GUARD, with_b);
    s.proxy_state = Some(rows_of(&[&["1", "1"], &["2", "5"]]));
    s.check().await;
}

/// A failed implicit transaction: an error later in the same `Query`, or before the `Sync` of
/// an extended batch.
#[tokio::test]
async fn failed_implicit_transactions_are_undone() {
    let d = DECREMENT;
    for sql in [
        format!("{d}; SELECT 1/0"),
        format!("SELECT 1; {d}; SELECT 2; SELECT 1/0"),
        format!("{d} RETURNING 1/0"),
    ] {
        undone(&sql, &steps(&[&sql])).await;
    }
    let batch = same_batch(
        A,
        "pipeline: write, error, Sync",
        &[pbe(d), pbe("SELECT 1/0"), sync()],
    );
    undone("pipeline error", &[batch]).await;
}

#[tokio::test]
async fn extended_protocol_transactions_and_savepoints() {
    let d = DECREMENT;
    let rollback = same_batch(
        A,
        "BEGIN, write, ROLLBACK, Sync",
        &[pbe("BEGIN"), pbe(d), pbe("ROLLBACK"), sync()],
    );
    undone("extended rollback", &[rollback]).await;
    let named = [
        parse("sp", "SAVEPOINT x", &[]),
        parse("back", "ROLLBACK TO SAVEPOINT x", &[]),
        sync(),
    ];
    let savepoint = same_batch(
        A,
        "named SAVEPOINT, write, ROLLBACK TO, Sync",
        &[
            bind("p", "sp", &[], &[]),
            execute("p", 0),
            pbe(d),
            bind("", "back", &[], &[]),
            execute("", 0),
            pbe("COMMIT"),
            sync(),
        ],
    );
    let undo = [
        same_batch(A, "prepare SAVEPOINT and ROLLBACK TO", &named),
        same(A, "BEGIN"),
        savepoint,
    ];
    undone("extended savepoint", &undo).await;
}

/// `RESET ALL` forgets what the session tracked; in a transaction that rolls back, that is
/// undone too (as PostgreSQL undoes its settings). `DISCARD ALL` refused in a transaction
/// block forgets nothing.
#[tokio::test]
async fn forgetting_commands_roll_back_too() {
    let d = DECREMENT;
    let reset = format!("BEGIN; {d}; RESET ALL; ROLLBACK");
    undone(&reset, &steps(&[&reset])).await;
    undone(
        "DISCARD ALL in a transaction block",
        &steps(&["BEGIN", "DISCARD ALL", "ROLLBACK"]),
    )
    .await;
    // Committed, `RESET ALL` forgets: A's next write expects nothing (directly the same).
    let steps = vec![
        same(A, READ),
        same(A, "BEGIN; RESET ALL; COMMIT"),
        same(B, B_WRITES),
        same(A, A_WRITES),
    ];
    scenario("RESET ALL committed".into(), GUARD, steps)
        .check()
        .await;
}

/// A savepoint rolled back inside a transaction that goes on, with both `track` modes: A's
/// write after B's must conflict, without B it must not.
#[tokio::test]
async fn savepoints_inside_an_open_transaction_both_track_modes() {
    let d = DECREMENT;
    for guards in [GUARD, PER_TRANSACTION] {
        for undo in [
            format!("SAVEPOINT s; {d}; ROLLBACK TO s"),
            format!("SAVEPOINT s; {d}; SELECT 1/0"),
        ] {
            let mut base = steps(&["BEGIN", "SELECT qty, version FROM item WHERE id = 1"]);
            base.extend(steps(&[&undo]));
            if undo.ends_with("1/0") {
                base.push(same(A, "ROLLBACK TO s"));
            }
            let mut with_b = base.clone();
            with_b.push(same(B, B_WRITES));
            with_b.push(conflict(A, A_WRITES));
            with_b.push(same(A, "ROLLBACK"));
            scenario(format!("{undo} (B writes)"), guards, with_b)
                .check()
                .await;
            let mut alone = base;
            alone.push(same(A, A_WRITES));
            alone.push(same(A, "COMMIT"));
            scenario(format!("{undo} (alone)"), guards, alone)
                .check()
                .await;
        }
    }
}

/// What a read taught inside a transaction that rolled back is undone as well: the session
/// expects the version it knew before.
#[tokio::test]
async fn reads_in_a_rolled_back_transaction_are_undone() {
    let steps = vec![
        same(A, READ),
        same(B, B_WRITES),
        same(A, "BEGIN; SELECT id, qty FROM item WHERE id = 1; ROLLBACK"),
        conflict(A, A_WRITES),
    ];
    let mut s = scenario("read undone".into(), GUARD, steps);
    s.proxy_state = Some(rows_of(&[&["1", "1"], &["2", "200"]]));
    s.check().await;
}
