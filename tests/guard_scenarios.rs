//! Two (or three) sessions interleaved, directly and through the proxy (see
//! `common::scenario`): lost updates become conflicts, and nothing else changes, whatever the
//! mix of statements, transactions and spellings.

mod common;
use common::scenario::{Scenario, Who::*, conflict, rows_of, same};

const ITEM: &str =
    "CREATE TABLE item (id int PRIMARY KEY, qty int, version int NOT NULL DEFAULT 0);
INSERT INTO item (id, qty) VALUES (1, 100), (2, 200);";

const GUARD: &str = r#"
[[guard]]
table = "public.item"
key = ["id"]
version = "version"
"#;

const STATE: &str = "SELECT id, qty FROM item ORDER BY id";

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

#[tokio::test]
async fn read_then_stale_write_conflicts() {
    let mut s = scenario(
        "read, other writes, stale write",
        vec![
            same(A, "SELECT qty, version FROM item WHERE id = 1"),
            same(B, "UPDATE item SET qty = 1 WHERE id = 1"),
            conflict(A, "UPDATE item SET qty = 90 WHERE id = 1"),
        ],
    );
    s.proxy_state = Some(rows_of(&[&["1", "1"], &["2", "200"]]));
    s.check().await;
}
