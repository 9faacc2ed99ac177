//! Versions that never repeat for a key, and versions compared whatever the session's settings:
//! a counter drawn from a sequence is bumped from it (a row deleted and inserted again never
//! starts at a version a session read before), a timestamp of lower precision moves by its own
//! step, `check` requires both and prints the DDL; a version read under one `DateStyle` and
//! written under another is the same version; a self-join pairs no key with another row's
//! version.
//!
//! Scenarios run directly and through the proxy (see `common::scenario`); where the proxy's
//! bumps make the versions a read shows differ between the two runs, [`check_shapes`] compares
//! every step's replies but the row values.

mod common;

use common::scenario::{Expect, Scenario, Step, Who::*, conflict, same};
use common::wire::Reply;
use common::{Proxy, TestDb};
use optlock::catalog::check::{Severity, all_ok, check};
use optlock::config::Config;

const GUARD: &str = r#"
[[guard]]
table = "public.item"
key = ["id"]
version = "version"
"#;

const TIMESTAMP_GUARD: &str = r#"
[[guard]]
table = "public.item"
key = ["id"]
version = "version"
kind = "timestamp"
"#;

const STATE: &str = "SELECT id, qty FROM item ORDER BY id";

fn scenario(name: &'static str, setup: &'static str, guards: &'static str) -> Scenario<'static> {
    Scenario {
        name,
        setup,
        guards,
        steps: Vec::new(),
        state: STATE,
        proxy_state: None,
    }
}

/// A reply without the values of its rows.
fn shape(r: &Reply) -> Reply {
    match r {
        Reply::DataRow(v) => Reply::DataRow(vec![None; v.len()]),
        other => other.clone(),
    }
}

/// Runs `s` directly and through the proxy: every step marked `conflict` gets 40001 through
/// the proxy and succeeds directly; every other step gets the same replies but for the values
/// in its rows (the proxy's bumps move the versions a read shows).
async fn check_shapes(s: &Scenario<'_>) {
    let direct = s.run(None).await;
    let proxy = Proxy::with_guards(s.guards).await;
    let through = s.run(Some(&proxy)).await;
    for (i, step) in s.steps.iter().enumerate() {
        let (d, p) = (&direct.replies[i], &through.replies[i]);
        let what = format!("{}: step {i} ({:?}: {})", s.name, step.who, step.sql);
        assert!(
            !d.iter().any(|r| matches!(r, Reply::Error(..))) || step.expect == Expect::Same,
            "{what} fails directly: {d:?}"
        );
        match step.expect {
            Expect::Same => {
                let (d, p): (Vec<Reply>, Vec<Reply>) =
                    (d.iter().map(shape).collect(), p.iter().map(shape).collect());
                assert_eq!(p, d, "{what} differs through the proxy");
            }
            Expect::Conflict => assert!(
                p.iter()
                    .any(|r| matches!(r, Reply::Error(code, _) if code == "40001")),
                "{what} must conflict through the proxy: {p:?}"
            ),
        }
    }
}

fn steps(list: Vec<Step>) -> Vec<Step> {
    list
}

// ---- Family: versions that repeat or stand still -------------------------------------------

const SEQUENCE_ITEM: &str = "CREATE SEQUENCE item_version_seq;
CREATE TABLE item (id int PRIMARY KEY, qty int,
    version bigint NOT NULL DEFAULT nextval('item_version_seq'));
INSERT INTO item (id, qty) VALUES (1, 100), (2, 200);";

/// The counter's default draws from a sequence: the bump draws from it too, so a row deleted
/// and inserted again never starts at the version a session read (with `+ 1` bumps, two
/// updates took row 1 to version 3, the very value the re-insert then drew).
#[tokio::test]
async fn a_reinserted_counter_row_never_repeats_a_version() {
    let mut s = scenario("delete and insert again", SEQUENCE_ITEM, GUARD);
    s.steps = steps(vec![
        same(B, "UPDATE item SET qty = 101 WHERE id = 1"),
        same(B, "UPDATE item SET qty = 102 WHERE id = 1"),
        same(A, "SELECT id, qty, version FROM item WHERE id = 1"),
        same(B, "DELETE FROM item WHERE id = 1"),
        same(B, "INSERT INTO item (id, qty) VALUES (1, 5)"),
        conflict(A, "UPDATE item SET qty = qty - 1 WHERE id = 1"),
    ]);
    check_shapes(&s).await;
    // The same with TRUNCATE and a reload, and in one transaction.
    s.name = "truncate and reload";
    s.steps = steps(vec![
        same(B, "UPDATE item SET qty = 101 WHERE id = 2"),
        same(B, "UPDATE item SET qty = 102 WHERE id = 2"),
        same(A, "SELECT id, qty, version FROM item ORDER BY id"),
        same(
            B,
            "BEGIN; TRUNCATE item; INSERT INTO item (id, qty) VALUES (1, 1), (2, 2); COMMIT",
        ),
        conflict(A, "UPDATE item SET qty = 0 WHERE id = 2"),
    ]);
    check_shapes(&s).await;
}

/// A bumped counter drawn from a sequence keeps every step of the session exact: its own
/// writes advance what it knows, upserts bump too, and the final versions all come from the
/// sequence.
#[tokio::test]
async fn sequence_bumps_keep_sessions_exact() {
    let mut s = scenario("sequence bumps", SEQUENCE_ITEM, GUARD);
    s.steps = steps(vec![
        same(A, "SELECT id, qty, version FROM item ORDER BY id"),
        same(A, "UPDATE item SET qty = 1 WHERE id = 1"),
        same(A, "UPDATE item SET qty = 2 WHERE id = 1 RETURNING qty"),
        same(
            A,
            "INSERT INTO item (id, qty) VALUES (2, 9) ON CONFLICT (id) DO UPDATE SET qty = 9",
        ),
        same(B, "UPDATE item SET qty = 3 WHERE id = 2"),
        conflict(A, "UPDATE item SET qty = 4 WHERE id = 2"),
    ]);
    check_shapes(&s).await;
    let db = TestDb::new("versions").await;
    let c = db.direct().await;
    c.batch_execute(SEQUENCE_ITEM).await.unwrap();
    let proxy = Proxy::with_guards(GUARD).await;
    let p = proxy.client(&db.name).await;
    p.batch_execute("UPDATE item SET qty = 1 WHERE id = 1; UPDATE item SET qty = 1 WHERE id = 2")
        .await
        .unwrap();
    let v: Vec<i64> = c
        .query("SELECT version FROM item ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        v,
        vec![3, 4],
        "each bump draws the next value of the sequence"
    );
}

/// A `timestamp(0)` version moves by a whole second: a bump within the second it already
/// holds (here a version ahead of the clock) still changes it.
#[tokio::test]
async fn a_low_precision_timestamp_moves_by_its_own_step() {
    let mut s = scenario(
        "timestamp(0)",
        "CREATE TABLE item (id int PRIMARY KEY, qty int,
             version timestamp(0) NOT NULL DEFAULT now());
         INSERT INTO item (id, qty, version) VALUES (1, 100, now() + interval '1 hour'),
             (2, 200, now() + interval '1 hour');",
        TIMESTAMP_GUARD,
    );
    s.steps = steps(vec![
        same(A, "SELECT id, qty, version FROM item WHERE id = 1"),
        same(B, "UPDATE item SET qty = 1 WHERE id = 1"),
        conflict(A, "UPDATE item SET qty = 2 WHERE id = 1"),
        same(A, "SELECT id, qty, version FROM item WHERE id = 1"),
        same(A, "UPDATE item SET qty = 3 WHERE id = 1"),
    ]);
    check_shapes(&s).await;
}

/// `xmin` needs nothing: a row inserted again carries the new transaction's id.
#[tokio::test]
async fn a_reinserted_xmin_row_is_a_new_version() {
    let mut s = scenario(
        "xmin reinsert",
        "CREATE TABLE item (id int PRIMARY KEY, qty int);
         INSERT INTO item VALUES (1, 100), (2, 200);",
        "[[guard]]\ntable = \"public.item\"\nkey = [\"id\"]\nversion = \"xmin\"\nkind = \"xmin\"\n",
    );
    s.steps = steps(vec![
        same(A, "SELECT id, qty, xmin FROM item WHERE id = 1"),
        same(B, "DELETE FROM item WHERE id = 1"),
        same(B, "INSERT INTO item VALUES (1, 5)"),
        conflict(A, "UPDATE item SET qty = qty - 1 WHERE id = 1"),
    ]);
    check_shapes(&s).await;
}

fn guard_toml(table: &str, version: &str, kind: &str) -> Config {
    let text = format!(
        "[[guard]]\ntable = '{table}'\nkey = [\"id\"]\nversion = \"{version}\"\nkind = \"{kind}\"\n"
    );
    Config::parse(&text, "test.toml").unwrap()
}

/// `check` refuses a version column whose values may repeat for a key, and its DDL fixes it.
#[tokio::test]
async fn check_requires_versions_that_never_repeat() {
    let db = TestDb::new("versions").await;
    let c = db.direct().await;
    c.batch_execute(
        "CREATE TABLE zero (id int PRIMARY KEY, version int NOT NULL DEFAULT 0);
         INSERT INTO zero VALUES (1, 7), (2, 3);
         CREATE TABLE secs (id int PRIMARY KEY, version timestamp(0) NOT NULL DEFAULT now());
         CREATE TABLE millis (id int PRIMARY KEY,
             version timestamptz(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3));
         CREATE TABLE fixed (id int PRIMARY KEY,
             version timestamp NOT NULL DEFAULT '2000-01-01');
         CREATE TABLE ident (id int PRIMARY KEY,
             version bigint GENERATED BY DEFAULT AS IDENTITY);
         CREATE TABLE serial (id int PRIMARY KEY, version bigserial);
         CREATE TABLE clock (id int PRIMARY KEY, version timestamptz NOT NULL DEFAULT now());",
    )
    .await
    .unwrap();
    for (table, kind, says) in [
        ("zero", "counter", "its default 0 repeats"),
        ("secs", "timestamp", "its precision timestamp(0)"),
        ("millis", "timestamp", "its precision timestamp(3)"),
        ("fixed", "timestamp", "is not the clock"),
    ] {
        let guards = guard_toml(table, "version", kind).guards;
        let f = check(&guards, &c).await;
        assert_eq!(f.len(), 1, "{table}: {f:#?}");
        assert_eq!(f[0].severity, Severity::Error, "{table}: {f:#?}");
        assert!(f[0].message.contains(says), "{table}: {f:#?}");
        let ddl = f[0].ddl.as_deref().expect("a fix");
        c.batch_execute(ddl)
            .await
            .unwrap_or_else(|e| panic!("{ddl}: {e:?}"));
        let again = check(&guards, &c).await;
        assert!(all_ok(&again), "{table} after {ddl}: {again:#?}");
    }
    // The sequence starts past the largest version already there.
    c.batch_execute("INSERT INTO zero (id) VALUES (3)")
        .await
        .unwrap();
    let v: i32 = c
        .query_one("SELECT version FROM zero WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 8);
    for (table, kind) in [
        ("ident", "counter"),
        ("serial", "counter"),
        ("clock", "timestamp"),
    ] {
        let f = check(&guard_toml(table, "version", kind).guards, &c).await;
        assert!(all_ok(&f), "{table}: {f:#?}");
    }
    // A missing counter column is added drawn from a sequence.
    c.batch_execute("CREATE TABLE bare (id int PRIMARY KEY); INSERT INTO bare VALUES (1), (2)")
        .await
        .unwrap();
    let guards = guard_toml("bare", "version", "counter").guards;
    let f = check(&guards, &c).await;
    let ddl = f[0].ddl.as_deref().unwrap();
    assert!(ddl.contains("bigserial"), "{ddl}");
    c.batch_execute(ddl).await.unwrap();
    assert!(all_ok(&check(&guards, &c).await));
}

// ---- Family: settings and pairing ----------------------------------------------------------

/// Row 2's version differs from row 1's: a read that paired row 1's key with row 2's version
/// would make row 1's next write a false conflict.
const PAIRS: &str =
    "CREATE TABLE item (id int PRIMARY KEY, qty int, version int NOT NULL DEFAULT 0);
INSERT INTO item VALUES (1, 100, 0), (2, 200, 5), (3, 300, 9);";

/// A self-join (or the table again in a subquery or CTE) shows key and version columns of the
/// same table OID from different rows: nothing is paired across instances.
#[tokio::test]
async fn two_instances_of_a_table_pair_nothing() {
    for read in [
        "SELECT a.id, b.version FROM item a JOIN item b ON b.id = a.id + 1",
        "SELECT a.id, b.version, b.id AS next FROM item a, item b WHERE b.id = a.id + 1",
        "SELECT s.id, i.version FROM (SELECT id FROM item) s JOIN item i ON i.id = s.id + 1",
        "WITH n AS (SELECT id + 1 AS id, id AS me FROM item) \
         SELECT i.id AS wrong, v.version FROM item i JOIN item v ON v.id = i.id + 1 JOIN n ON n.me = i.id",
        "SELECT id, (SELECT max(version) FROM item) AS version FROM item ORDER BY id",
    ] {
        let mut s = scenario("self-join", PAIRS, GUARD);
        s.steps = steps(vec![
            same(A, read),
            // Only row 1 is written: the versions the reads show (rows 2 and 3) stay.
            same(A, "UPDATE item SET qty = 1 WHERE id = 1"),
            // In one script with the write.
            same(A, format!("{read}; UPDATE item SET qty = 3 WHERE id = 1")),
        ]);
        s.check().await;
    }
    // Each instance teaches its own rows (read capture adds each one's key and version):
    // B's write makes A's stale.
    let mut s = scenario("each instance", PAIRS, GUARD);
    s.steps = steps(vec![
        same(
            A,
            "SELECT a.id, a.version FROM item a JOIN item b ON b.id = a.id + 1",
        ),
        same(B, "UPDATE item SET qty = 7 WHERE id = 1"),
        conflict(A, "UPDATE item SET qty = 8 WHERE id = 1"),
    ]);
    s.proxy_state = Some(common::scenario::rows_of(&[
        &["1", "7"],
        &["2", "200"],
        &["3", "300"],
    ]));
    s.check().await;
    let mut s = scenario("one instance", PAIRS, GUARD);
    s.steps = steps(vec![
        same(A, "SELECT id, version FROM item WHERE id > 0"),
        same(B, "UPDATE item SET qty = 7 WHERE id = 1"),
        conflict(A, "UPDATE item SET qty = 8 WHERE id = 1"),
    ]);
    s.proxy_state = Some(common::scenario::rows_of(&[
        &["1", "7"],
        &["2", "200"],
        &["3", "300"],
    ]));
    s.check().await;
}

/// The same through the extended protocol (a prepared read, described and executed).
#[tokio::test]
async fn two_instances_pair_nothing_when_prepared() {
    let db = TestDb::new("versions").await;
    db.direct().await.batch_execute(PAIRS).await.unwrap();
    let proxy = Proxy::with_guards(GUARD).await;
    let a = proxy.client(&db.name).await;
    let rows = a
        .query(
            "SELECT a.id, b.version FROM item a JOIN item b ON b.id = a.id + 1 WHERE a.id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let n = a
        .execute("UPDATE item SET qty = 1 WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    // Row 1 was read as instance `a`, at its own version (never paired with row 2's).
    assert_eq!(n, 1, "no false conflict");
}

const STAMPED: &str = "CREATE TABLE item (id int PRIMARY KEY, qty int,
    version timestamptz NOT NULL DEFAULT now(), plain timestamp NOT NULL DEFAULT localtimestamp);
INSERT INTO item (id, qty, version) VALUES (1, 100, '2024-02-29 01:30:00.12+00'),
    (2, 200, '2024-03-01 10:00:00+00');";

const PLAIN_GUARD: &str = r#"
[[guard]]
table = "public.item"
key = ["id"]
version = "plain"
kind = "timestamp"
"#;

/// A timestamp version read under one `DateStyle` (or `TimeZone`) and written under another
/// is the same version: no false conflict, and a real one still caught.
#[tokio::test]
async fn versions_compare_whatever_the_date_style() {
    for (style, zone, known) in [
        ("German, DMY", "UTC", true),
        ("SQL, DMY", "Etc/UTC", true),
        ("SQL, MDY", "GMT", true),
        ("Postgres, DMY", "UTC", true),
        ("Postgres, MDY", "UTC", true),
        ("ISO, DMY", "Asia/Kolkata", true),
        // Abbreviations name no offset: nothing is learned, nothing wrongly compared.
        ("German, DMY", "Europe/Berlin", false),
        ("SQL, MDY", "UTC+3", false),
    ] {
        let set = format!("SET DateStyle = '{style}'; SET TimeZone = '{zone}'");
        let name = format!("{style} in {zone}");
        let mut s = scenario("", STAMPED, TIMESTAMP_GUARD);
        s.name = &name;
        s.steps = steps(vec![
            same(A, set.clone()),
            same(A, "SELECT id, qty, version FROM item WHERE id = 1"),
            same(A, "SELECT id, qty, version FROM item WHERE id = 2"),
            same(A, "SET DateStyle = ISO; SET TimeZone = 'America/New_York'"),
            same(A, "UPDATE item SET qty = 1 WHERE id = 1"),
            same(A, set.clone()),
            same(A, "UPDATE item SET qty = 2 WHERE id = 1"),
            same(A, "RESET DateStyle; RESET TimeZone"),
            same(A, "UPDATE item SET qty = 3 WHERE id = 1"),
        ]);
        if known {
            // The offset is known: B's write makes A's read of row 2 stale.
            s.steps
                .insert(4, same(B, "UPDATE item SET qty = 9 WHERE id = 2"));
            s.steps
                .insert(5, conflict(A, "UPDATE item SET qty = 8 WHERE id = 2"));
        }
        check_shapes(&s).await;
    }
}

/// The same for a `timestamp` without time zone, read in every style.
#[tokio::test]
async fn plain_timestamps_compare_whatever_the_date_style() {
    for style in [
        "German",
        "SQL, DMY",
        "SQL, MDY",
        "Postgres, DMY",
        "Postgres, MDY",
    ] {
        let mut s = scenario("timestamp date style", STAMPED, PLAIN_GUARD);
        s.steps = steps(vec![
            same(A, format!("SET DateStyle = '{style}'")),
            same(A, "SELECT id, qty, plain FROM item ORDER BY id"),
            same(A, "SET DateStyle = 'ISO, MDY'"),
            same(A, "UPDATE item SET qty = 1 WHERE id = 1"),
            same(B, "UPDATE item SET qty = 9 WHERE id = 2"),
            conflict(A, "UPDATE item SET qty = 8 WHERE id = 2"),
        ]);
        check_shapes(&s).await;
    }
}
