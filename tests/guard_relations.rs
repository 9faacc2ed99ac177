//! Writes that reach a guarded table through another relation: an auto-updatable view (and a
//! view over it), a partition of a guarded partitioned table, the partitioned parent of a
//! guarded partition, the inheritance parent of a guarded child. Each is checked like a write
//! to the guarded table itself, and reads through each teach the versions; relations whose
//! writes cannot be checked (a view without the key or version, rules, `INSTEAD OF`
//! triggers, a parent without the version column) are refused with an error that names the
//! guarded table. Scenarios run directly and through the proxy with `common::scenario`.

mod common;
use common::scenario::{Scenario, Step, Who::*, conflict, rows_of, same};
use common::{Proxy, TestDb};

const SETUP: &str = "
CREATE TABLE item (id int PRIMARY KEY, qty int, version int NOT NULL DEFAULT 0);
INSERT INTO item (id, qty) VALUES (1, 100), (2, 200);
CREATE VIEW item_v AS SELECT * FROM item;
CREATE VIEW \"Item View\" AS SELECT id, version, qty FROM item_v WHERE qty > 0;
CREATE TABLE parted (id int, region int, qty int, version int NOT NULL DEFAULT 0,
    PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES IN (2) PARTITION BY RANGE (id);
CREATE TABLE parted_2a PARTITION OF parted_2 FOR VALUES FROM (0) TO (100);
INSERT INTO parted (id, region, qty) VALUES (1, 1, 10), (5, 2, 50);
CREATE TABLE shelf (id int, zone int, qty int, version int NOT NULL DEFAULT 0,
    PRIMARY KEY (id, zone)) PARTITION BY LIST (zone);
CREATE TABLE shelf_a PARTITION OF shelf FOR VALUES IN (1);
CREATE TABLE shelf_b PARTITION OF shelf FOR VALUES IN (2);
INSERT INTO shelf (id, zone, qty) VALUES (1, 1, 1), (2, 2, 2);
CREATE TABLE doc (id int PRIMARY KEY, body text, version int NOT NULL DEFAULT 0);
CREATE TABLE invoice (total int) INHERITS (doc);
INSERT INTO invoice (id, body, total) VALUES (1, 'a', 10);";

const GUARDS: &str = r#"
[[guard]]
table = "item"
key = ["id"]

[[guard]]
table = "parted"
key = ["id", "region"]

[[guard]]
table = "shelf_b"
key = ["id", "zone"]

[[guard]]
table = "invoice"
key = ["id"]
"#;

const STATE: &str = "SELECT 'item', id || '', qty || '' FROM item
UNION ALL SELECT 'parted', id || '/' || region, qty || '' FROM parted
UNION ALL SELECT 'shelf', id || '/' || zone, qty || '' FROM shelf
UNION ALL SELECT 'doc', id || '', body FROM doc ORDER BY 1, 2";

fn scenario(name: &'static str, steps: Vec<Step>, proxy_state: &[&[&str]]) -> Scenario<'static> {
    Scenario {
        name,
        setup: SETUP,
        guards: GUARDS,
        steps,
        state: STATE,
        proxy_state: Some(rows_of(proxy_state)),
    }
}

/// The state when no write of the scenario landed (`item`'s row 1 written by B only).
fn untouched() -> Vec<&'static [&'static str]> {
    vec![
        &["doc", "1", "a"],
        &["item", "1", "100"],
        &["item", "2", "200"],
        &["parted", "1/1", "10"],
        &["parted", "5/2", "50"],
        &["shelf", "1/1", "1"],
        &["shelf", "2/2", "2"],
    ]
}

/// A read through `read`, another session's write through `other`, then a stale write through
/// `write`: a conflict, and the stale write leaves nothing.
async fn stale(name: &'static str, read: &str, other: &str, write: &str) {
    scenario(
        name,
        vec![
            same(A, read),
            same(B, other),
            conflict(A, write),
            same(A, "SELECT 1"),
        ],
        &untouched(),
    )
    .check()
    .await;
}

#[tokio::test]
async fn writes_through_a_view_are_checked() {
    stale(
        "read the table, write the view",
        "SELECT * FROM item WHERE id = 1",
        "UPDATE item SET qty = qty WHERE id = 1",
        "UPDATE item_v SET qty = 90 WHERE id = 1",
    )
    .await;
    stale(
        "read the view, write the table",
        "SELECT id, version FROM item_v WHERE id = 1",
        "UPDATE item SET qty = qty WHERE id = 1",
        "UPDATE public.item SET qty = 90 WHERE id = 1",
    )
    .await;
    stale(
        "a view over a view, quoted, deleted from",
        "SELECT * FROM \"Item View\" WHERE id = 1",
        "UPDATE item_v SET qty = qty WHERE id = 1",
        "DELETE FROM public.\"Item View\" WHERE id = 1",
    )
    .await;
    stale(
        "a view read without its version, written with a list",
        "SELECT qty, version, id FROM ITEM_V",
        "UPDATE item SET qty = qty WHERE id = 1",
        "UPDATE item_v SET qty = 90 WHERE id IN (1)",
    )
    .await;
}

#[tokio::test]
async fn writes_through_partitions_and_parents_are_checked() {
    stale(
        "read a partition, write the partitioned table",
        "SELECT * FROM parted_2a WHERE id = 5",
        "UPDATE parted SET qty = qty WHERE id = 5 AND region = 2",
        "UPDATE parted SET qty = 1 WHERE id = 5 AND region = 2",
    )
    .await;
    stale(
        "read the partitioned table, write a nested partition",
        "SELECT * FROM parted WHERE id = 5 AND region = 2",
        "UPDATE parted_2 SET qty = qty WHERE id = 5",
        "UPDATE parted_2a SET qty = 1 WHERE id = 5 AND region = 2",
    )
    .await;
    stale(
        "a guarded partition, written through its parent",
        "SELECT * FROM shelf_b",
        "UPDATE shelf SET qty = qty WHERE id = 2 AND zone = 2",
        "UPDATE shelf SET qty = 9 WHERE id = 2 AND zone = 2",
    )
    .await;
    stale(
        "a guarded inheritance child, written through its parent",
        "SELECT * FROM invoice",
        "UPDATE doc SET body = body WHERE id = 1",
        "UPDATE doc SET body = 'x' WHERE id = 1",
    )
    .await;
}

#[tokio::test]
async fn own_writes_through_other_relations_never_conflict() {
    let steps = vec![
        same(A, "SELECT * FROM item_v WHERE id = 1"),
        same(A, "UPDATE item SET qty = 1 WHERE id = 1"),
        same(A, "UPDATE item_v SET qty = 2 WHERE id = 1"),
        same(A, "SELECT * FROM parted WHERE id = 5"),
        same(
            A,
            "UPDATE parted_2a SET qty = 3 WHERE id = 5 AND region = 2",
        ),
        same(A, "UPDATE parted SET qty = 4 WHERE id = 5 AND region = 2"),
        same(A, "UPDATE shelf SET qty = 5 WHERE id = 1 AND zone = 1"),
        // Not updatable: the server's own error, unchanged.
        same(A, "CREATE VIEW item_count AS SELECT count(*) FROM item"),
        same(A, "UPDATE item_count SET count = 1"),
    ];
    Scenario {
        name: "own writes",
        setup: SETUP,
        guards: GUARDS,
        steps,
        state: STATE,
        proxy_state: None,
    }
    .check()
    .await;
}

/// Relations whose writes land in a guarded table but cannot carry its check.
const REFUSED: &str = "
CREATE VIEW item_nov AS SELECT id, qty FROM item;
CREATE TABLE item_alias (id int PRIMARY KEY, qty int);
CREATE RULE item_alias_r AS ON UPDATE TO item_alias
    DO INSTEAD UPDATE item SET qty = new.qty WHERE id = new.id;
CREATE VIEW item_t AS SELECT * FROM item;
CREATE FUNCTION item_t_f() RETURNS trigger LANGUAGE plpgsql AS
    'BEGIN UPDATE item SET qty = new.qty WHERE id = new.id; RETURN new; END';
CREATE TRIGGER item_t_tr INSTEAD OF UPDATE ON item_t FOR EACH ROW EXECUTE FUNCTION item_t_f();
CREATE TABLE note (id int PRIMARY KEY, qty int);
CREATE TABLE note_v (version int NOT NULL DEFAULT 0) INHERITS (note);";

#[tokio::test]
async fn writes_that_cannot_be_checked_are_refused_naming_the_guarded_table() {
    let db = TestDb::new("relations").await;
    let direct = db.direct().await;
    direct.batch_execute(SETUP).await.unwrap();
    direct.batch_execute(REFUSED).await.unwrap();
    let guards = format!("{GUARDS}\n[[guard]]\ntable = \"note_v\"\nkey = [\"id\"]\n");
    let proxy = Proxy::with_guards(&guards).await;
    let c = proxy.client(&db.name).await;
    let cases = [
        (
            "UPDATE item_nov SET qty = 1 WHERE id = 1",
            "public.item",
            "item_nov",
        ),
        (
            "DELETE FROM item_nov WHERE id = 1",
            "public.item",
            "key and version",
        ),
        (
            "UPDATE item_alias SET qty = 1 WHERE id = 1",
            "public.item",
            "rules",
        ),
        (
            "UPDATE item_t SET qty = 1 WHERE id = 1",
            "public.item",
            "INSTEAD OF",
        ),
        (
            "UPDATE note SET qty = 1 WHERE id = 1",
            "public.note_v",
            "public.note ",
        ),
    ];
    for (sql, table, why) in cases {
        let e = c.simple_query(sql).await.expect_err(sql);
        let db_error = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db_error.code().code(), "0A000", "{sql}: {db_error:?}");
        let message = db_error.message();
        assert!(
            message.contains(&format!("guarded table {table}:")) && message.contains(why),
            "{sql}: {message}"
        );
        // The extended protocol refuses it too.
        let e = c.execute(sql, &[]).await.expect_err(sql);
        assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{sql}: {e}");
    }
    // Reads through them pass, and nothing was written.
    c.simple_query("SELECT * FROM item_nov, item_t, note")
        .await
        .unwrap();
    let qty: i32 = db.one("SELECT qty FROM item WHERE id = 1", &[]).await;
    assert_eq!(qty, 100);
    // With a guard of `xmin`, a view (which has no xmin) cannot carry the check.
    let xmin = "[[guard]]\ntable = \"item\"\nkey = [\"id\"]\nversion = \"xmin\"\nkind = \"xmin\"\n";
    let proxy = Proxy::with_guards(xmin).await;
    let c = proxy.client(&db.name).await;
    let e = c
        .simple_query("UPDATE item_v SET qty = 1 WHERE id = 1")
        .await
        .expect_err("xmin through a view");
    assert!(
        e.as_db_error().unwrap().message().contains("no xmin"),
        "{e}"
    );
}

#[tokio::test]
async fn a_prepared_write_through_a_view_conflicts_and_a_reject_policy_holds() {
    let db = TestDb::new("relations").await;
    db.direct().await.batch_execute(SETUP).await.unwrap();
    let guards = GUARDS.replacen(
        "key = [\"id\"]\n",
        "key = [\"id\"]\nunversioned = \"reject\"\n",
        1,
    );
    let proxy = Proxy::with_guards(&guards).await;
    let (a, b) = (proxy.client(&db.name).await, proxy.client(&db.name).await);
    // Nothing read: refused under `unversioned = "reject"`, through the view as directly.
    let e = a
        .execute("UPDATE item_v SET qty = $1 WHERE id = $2", &[&1i32, &1i32])
        .await
        .expect_err("unversioned write through the view");
    let message = e.as_db_error().map(|d| d.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("no expected version")),
        "{e:?}"
    );
    a.query("SELECT * FROM item_v WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    b.query("SELECT * FROM item WHERE id = 1", &[])
        .await
        .unwrap();
    b.execute("UPDATE item SET qty = qty + 1 WHERE id = 1", &[])
        .await
        .unwrap();
    let e = a
        .execute("UPDATE item_v SET qty = $1 WHERE id = $2", &[&1i32, &1i32])
        .await
        .expect_err("stale write through the view");
    assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{e}");
    let qty: i32 = db.one("SELECT qty FROM item WHERE id = 1", &[]).await;
    assert_eq!(qty, 101);
}

#[tokio::test]
async fn a_view_created_through_the_proxy_is_guarded_in_sessions_already_open() {
    let db = TestDb::new("relations").await;
    db.direct().await.batch_execute(SETUP).await.unwrap();
    let proxy = Proxy::with_guards(GUARDS).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    a.simple_query("SELECT * FROM item WHERE id = 1")
        .await
        .unwrap();
    // Created inside a transaction of another session: seen once it commits.
    let c = proxy.client(&db.name).await;
    c.batch_execute("BEGIN; CREATE VIEW late_v AS SELECT * FROM item; COMMIT")
        .await
        .unwrap();
    b.execute("UPDATE item SET qty = qty + 1 WHERE id = 1", &[])
        .await
        .unwrap();
    let e = a
        .simple_query("UPDATE late_v SET qty = 1 WHERE id = 1")
        .await
        .expect_err("stale write through a view created after the login");
    assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{e:?}");
}
