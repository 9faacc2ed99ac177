//! Roll-out against a real PostgreSQL: observe mode (writes keep the client's effect plus the
//! bump; would-be conflicts and refusals are recorded, never raised), guards scoped by
//! `application_name` and user (following `SET application_name`), and a reload that switches
//! a guard's mode under open sessions.

mod common;
use common::guards::*;
use common::*;
use tokio_postgres::{Client, SimpleQueryMessage};

/// `public.invoice` guarded in observe mode, refusing what enforce mode refuses by policy.
const OBSERVED: &str = r#"
[[guard]]
table = "public.invoice"
key = ["id"]
version = "version"
unversioned = "reject"
bulk = "reject"
mode = "observe"
"#;

/// Observed for every session but the POS backend's (`pos-*`), enforced for it, and skipped
/// for `pg_dump`.
const SCOPED: &str = r#"
[[guard]]
table = "public.invoice"
key = ["id"]
version = "version"
mode = "observe"
[[guard.scope]]
application_name = ["pos-*"]
mode = "enforce"
[[guard.scope]]
application_name = ["pg_dump"]
mode = "skip"
"#;

/// The rows of `SHOW CONFLICTS` with this outcome, as (key, expected, found, application,
/// reason).
fn recorded(proxy: &Proxy, outcome: &str) -> Vec<[String; 5]> {
    proxy
        .console_rows("SHOW CONFLICTS")
        .into_iter()
        .filter(|r| r.get(8).map(String::as_str) == Some(outcome))
        .map(|r| {
            [
                r[2].clone(),
                r[3].clone(),
                r[4].clone(),
                r[7].clone(),
                r[9].clone(),
            ]
        })
        .collect()
}

async fn total(db: &TestDb, id: i32) -> String {
    db.one::<String>("SELECT total::text FROM invoice WHERE id = $1", &[&id])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_write_goes_through_with_its_bump_and_is_recorded() {
    let db = invoice_db("obs_stale", 3, "").await;
    let proxy = Proxy::with_guards(OBSERVED).await;
    let a = proxy.client_as(&db.name, "till-a").await;
    // Simple protocol: read, someone else writes, write from the stale read.
    a.simple_query("SELECT id, total, version FROM invoice WHERE id = 1")
        .await
        .unwrap();
    bump_directly(&db, 1).await;
    let r = a
        .simple_query("UPDATE invoice SET total = 30 WHERE id = 1 RETURNING total")
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![vec![Some("30".to_string())]], "{r:?}");
    assert_eq!(rows_affected(&r), vec![1]);
    assert_eq!(total(&db, 1).await, "30");
    assert_eq!(
        version_of(&db, 1).await,
        2,
        "the write still bumps the version"
    );
    // Extended protocol, binary rows: the same, on row 2.
    let v: i64 = a
        .query_one("SELECT version FROM invoice WHERE id = $1", &[&2i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 0);
    bump_directly(&db, 2).await;
    let n = a
        .execute("UPDATE invoice SET total = 40 WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    // A write from a fresh read is not stale: nothing recorded for it.
    a.simple_query("SELECT version FROM invoice WHERE id = 3")
        .await
        .unwrap();
    a.simple_query("UPDATE invoice SET total = 50 WHERE id = 3")
        .await
        .unwrap();
    let mut seen = recorded(&proxy, "observed");
    seen.sort();
    assert_eq!(
        seen,
        vec![
            [
                "(id)=(1)".into(),
                "0".into(),
                "1".into(),
                "till-a".into(),
                String::new()
            ],
            [
                "(id)=(2)".into(),
                "0".into(),
                "1".into(),
                "till-a".into(),
                String::new()
            ],
        ]
    );
    assert!(recorded(&proxy, "conflict").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_recorded_and_the_write_goes_as_written() {
    let db = invoice_db("obs_refuse", 3, "").await;
    let proxy = Proxy::with_guards(OBSERVED).await;
    let a = proxy.client(&db.name).await;
    // bulk = "reject": the whole table, bumped.
    let r = a
        .simple_query("UPDATE invoice SET total = total + 1")
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![3]);
    assert_eq!(version_of(&db, 3).await, 1);
    // unversioned = "reject": a row never read, extended protocol.
    let n = a
        .execute("UPDATE invoice SET total = 7 WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(total(&db, 2).await, "7");
    // Fail closed (MERGE cannot carry a check): passed as written.
    let r = a
        .simple_query(
            "MERGE INTO invoice t USING (SELECT 1 AS id) s ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET total = 99",
        )
        .await
        .unwrap();
    assert_eq!(rows_affected(&r), vec![1]);
    assert_eq!(total(&db, 1).await, "99");
    let reasons: Vec<String> = recorded(&proxy, "observed")
        .into_iter()
        .map(|r| r[4].clone())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("bulk")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.starts_with("unversioned")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("MERGE")), "{reasons:?}");
}

/// The same two-session script, directly and through the proxy in observe mode: every
/// reply and every row (but the version column the proxy bumps) the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_changes_no_reply_and_no_row() {
    const SCRIPT: &[(usize, &str)] = &[
        (0, "SELECT id, total FROM invoice ORDER BY id"),
        (1, "SELECT * FROM invoice WHERE id = 2"),
        (
            1,
            "UPDATE invoice SET total = total + 5 WHERE id = 1 RETURNING id, total",
        ),
        (0, "UPDATE invoice SET total = 11 WHERE id = 1"),
        (
            0,
            "UPDATE invoice SET total = 12 WHERE id IN (1, 2) RETURNING total",
        ),
        (1, "UPDATE invoice SET total = 13 WHERE id = 2"),
        (
            0,
            "BEGIN; UPDATE invoice SET total = 14 WHERE id = 2; SELECT 1; COMMIT",
        ),
        (0, "DELETE FROM invoice WHERE id = 3 RETURNING id"),
        (1, "UPDATE invoice SET total = 15 WHERE id = 3"),
        (
            0,
            "UPDATE invoice SET total = 16 WHERE id = 2 AND total > 100",
        ),
        (
            1,
            "WITH x AS (UPDATE invoice SET total = 17 WHERE id = 4 RETURNING id) SELECT count(*) FROM x",
        ),
        (
            0,
            "INSERT INTO invoice (id, total) VALUES (2, 1), (9, 1) ON CONFLICT (id) DO UPDATE SET total = excluded.total RETURNING id, total",
        ),
        (
            0,
            "UPDATE invoice SET total = 18 WHERE id = ANY('{1,2,9}'::int[]) RETURNING id",
        ),
        (0, "SELECT id, total FROM invoice ORDER BY id"),
    ];
    async fn run(a: &Client, b: &Client) -> Vec<String> {
        let mut out = Vec::new();
        for (who, sql) in SCRIPT {
            let c = if *who == 0 { a } else { b };
            match c.simple_query(sql).await {
                Ok(msgs) => {
                    for m in msgs {
                        out.push(match m {
                            SimpleQueryMessage::Row(r) => format!(
                                "row {:?}",
                                (0..r.len()).map(|i| r.get(i)).collect::<Vec<_>>()
                            ),
                            SimpleQueryMessage::CommandComplete(n) => format!("complete {n}"),
                            SimpleQueryMessage::RowDescription(d) => format!(
                                "columns {:?}",
                                d.iter().map(|c| c.name()).collect::<Vec<_>>()
                            ),
                            _ => "other".into(),
                        })
                    }
                }
                Err(e) => out.push(format!("error {}", code(&e))),
            }
        }
        out
    }
    async fn table(db: &TestDb) -> Vec<Vec<Option<String>>> {
        let c = db.direct().await;
        rows(
            &c.simple_query("SELECT id, total FROM invoice ORDER BY id")
                .await
                .unwrap(),
        )
    }
    let direct_db = invoice_db("obs_diff_d", 4, "").await;
    let (a, b) = (direct_db.direct().await, direct_db.direct().await);
    let direct = run(&a, &b).await;
    let proxied_db = invoice_db("obs_diff_p", 4, "").await;
    let proxy = Proxy::with_guards(OBSERVED).await;
    let (a, b) = (
        proxy.client(&proxied_db.name).await,
        proxy.client(&proxied_db.name).await,
    );
    let proxied = run(&a, &b).await;
    assert_eq!(proxied, direct);
    assert_eq!(table(&proxied_db).await, table(&direct_db).await);
    // Session 0 read row 1 at version 0, session 1 wrote it: the first stale write.
    let seen = recorded(&proxy, "observed");
    assert!(
        seen.iter().any(|r| r[0] == "(id)=(1)" && r[1] == "0"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_count_equals_the_stale_writes_under_contention() {
    // Ground truth from the server: each write says which version it was computed from
    // (`read_version`); a trigger logs those that replace another version.
    const TRUTH: &str = "ALTER TABLE invoice ADD COLUMN read_version bigint;
        CREATE TABLE stale_log (id int, read_version bigint, replaced bigint);
        CREATE FUNCTION log_stale() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.read_version IS DISTINCT FROM OLD.version THEN
            INSERT INTO stale_log VALUES (OLD.id, NEW.read_version, OLD.version);
          END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER log_stale BEFORE UPDATE ON invoice FOR EACH ROW EXECUTE FUNCTION log_stale();";
    let db = invoice_db("obs_truth", 3, TRUTH).await;
    let proxy = Proxy::with_guards(OBSERVED).await;
    const WORKERS: usize = 6;
    const ROUNDS: usize = 40;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let c = proxy.client(&db.name).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..ROUNDS {
                let id = ((w + i) % 3 + 1) as i32;
                // Half the workers use the simple protocol, half prepared statements.
                if w % 2 == 0 {
                    let r = c
                        .simple_query(&format!(
                            "SELECT total::int, version FROM invoice WHERE id = {id}"
                        ))
                        .await
                        .unwrap();
                    let row = &rows(&r)[0];
                    let (t, v) = (row[0].clone().unwrap(), row[1].clone().unwrap());
                    c.simple_query(&format!(
                        "UPDATE invoice SET total = {t} + 1, read_version = {v} WHERE id = {id}"
                    ))
                    .await
                    .unwrap();
                } else {
                    let row = c
                        .query_one(
                            "SELECT total::int, version FROM invoice WHERE id = $1",
                            &[&id],
                        )
                        .await
                        .unwrap();
                    let (t, v): (i32, i64) = (row.get(0), row.get(1));
                    c.execute(
                        "UPDATE invoice SET total = $1::int + 1, read_version = $2 WHERE id = $3",
                        &[&t, &v, &id],
                    )
                    .await
                    .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stale: i64 = db.one("SELECT count(*) FROM stale_log", &[]).await;
    let sum: i64 = db.one("SELECT sum(total)::bigint FROM invoice", &[]).await;
    let lost = (3 * 10 + WORKERS * ROUNDS) as i64 - sum;
    let observed = recorded(&proxy, "observed").len() as i64;
    eprintln!("stale writes {stale}, observed {observed}, increments lost {lost}");
    assert!(stale > 0, "the workload must contend");
    assert_eq!(
        observed, stale,
        "every stale write observed, and only those"
    );
    assert!(lost > 0, "observe mode prevents nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_picks_the_mode_by_application_and_follows_set_application_name() {
    let db = invoice_db("obs_scope", 3, "").await;
    let proxy = Proxy::with_guards(SCOPED).await;
    let pos = proxy.client_as(&db.name, "pos-till-1").await;
    let report = proxy.client_as(&db.name, "nightly-report").await;
    // Enforced for the POS backend.
    pos.simple_query("SELECT version FROM invoice WHERE id = 1")
        .await
        .unwrap();
    bump_directly(&db, 1).await;
    let e = pos
        .simple_query("UPDATE invoice SET total = 1 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "40001");
    // Observed for the others.
    report
        .simple_query("SELECT version FROM invoice WHERE id = 2")
        .await
        .unwrap();
    bump_directly(&db, 2).await;
    report
        .simple_query("UPDATE invoice SET total = 2 WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(total(&db, 2).await, "2");
    assert_eq!(recorded(&proxy, "observed").len(), 1);
    // SHOW SESSIONS says which mode each session is in.
    let sessions = proxy.console_rows("SHOW SESSIONS");
    let guards_of = |app: &str| {
        sessions
            .iter()
            .find(|r| r[3] == app)
            .map(|r| r[12].clone())
            .unwrap_or_else(|| panic!("{app} in {sessions:?}"))
    };
    assert_eq!(guards_of("pos-till-1"), "public.invoice=enforce");
    assert_eq!(guards_of("nightly-report"), "public.invoice=observe");
    // The report session becomes a till: enforced from its next statement.
    report
        .simple_query("SET application_name = 'pos-till-2'")
        .await
        .unwrap();
    report
        .simple_query("SELECT version FROM invoice WHERE id = 3")
        .await
        .unwrap();
    bump_directly(&db, 3).await;
    let e = report
        .simple_query("UPDATE invoice SET total = 3 WHERE id = 3")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "40001");
    // pg_dump's sessions are not guarded at all: no bump.
    let dump = proxy.client_as(&db.name, "pg_dump").await;
    let before = version_of(&db, 3).await;
    dump.simple_query("UPDATE invoice SET total = 4 WHERE id = 3")
        .await
        .unwrap();
    assert_eq!(version_of(&db, 3).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_switches_a_guard_between_modes_for_open_sessions() {
    let db = invoice_db("obs_reload", 3, "").await;
    let enforce = INVOICE.to_string();
    let observe = format!("{INVOICE}mode = \"observe\"\n");
    let proxy = Proxy::from_file(&observe, &upstream()).await;
    let a = proxy.client(&db.name).await;
    a.simple_query("SELECT version FROM invoice WHERE id = 1")
        .await
        .unwrap();
    bump_directly(&db, 1).await;
    a.simple_query("UPDATE invoice SET total = 1 WHERE id = 1")
        .await
        .expect("observed, not raised");
    // Enforce from now on, for the same open session.
    proxy.config_file().rewrite(&format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\n{enforce}",
        upstream()
    ));
    let (ok, _, err) = proxy.console("RELOAD");
    assert!(ok, "{err}");
    a.simple_query("SELECT version FROM invoice WHERE id = 2")
        .await
        .unwrap();
    bump_directly(&db, 2).await;
    let e = a
        .simple_query("UPDATE invoice SET total = 2 WHERE id = 2")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "40001");
    // And back to observe.
    proxy.config_file().rewrite(&format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\n{observe}",
        upstream()
    ));
    let (ok, _, err) = proxy.console("RELOAD");
    assert!(ok, "{err}");
    a.simple_query("SELECT version FROM invoice WHERE id = 3")
        .await
        .unwrap();
    bump_directly(&db, 3).await;
    a.simple_query("UPDATE invoice SET total = 3 WHERE id = 3")
        .await
        .expect("observed again");
    assert_eq!(recorded(&proxy, "observed").len(), 2);
    assert_eq!(recorded(&proxy, "conflict").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_per_table_and_application_as_the_metrics_do() {
    let db = invoice_db("obs_report", 4, "").await;
    let proxy = Proxy::with_guards(&format!("metrics_listen = \"127.0.0.1:0\"\n{SCOPED}")).await;
    let pos = proxy.client_as(&db.name, "pos-till-1").await;
    let report = proxy.client_as(&db.name, "nightly-report").await;
    // pos: one checked write, one conflict, one unversioned write.
    pos.simple_query("SELECT version FROM invoice WHERE id = 1")
        .await
        .unwrap();
    pos.simple_query("UPDATE invoice SET total = 1 WHERE id = 1")
        .await
        .unwrap();
    bump_directly(&db, 1).await;
    pos.simple_query("UPDATE invoice SET total = 2 WHERE id = 1")
        .await
        .unwrap_err();
    pos.execute("UPDATE invoice SET total = 3 WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    // report: one bulk write, one observed stale write; then it leaves (its counts stay).
    report
        .simple_query("UPDATE invoice SET total = total + 1 WHERE total > 0")
        .await
        .unwrap();
    report
        .simple_query("SELECT version FROM invoice WHERE id = 3")
        .await
        .unwrap();
    bump_directly(&db, 3).await;
    report
        .simple_query("UPDATE invoice SET total = 4 WHERE id = 3")
        .await
        .unwrap();
    drop(report);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // table|application_name|writes|conflicts|observed|refused|unversioned|bulk
    let lines = proxy.console_rows("SHOW REPORT");
    let line = |app: &str| {
        lines
            .iter()
            .find(|l| l[1] == app)
            .unwrap_or_else(|| panic!("{app} in {lines:?}"))[2..]
            .iter()
            .map(|v| v.parse::<u64>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(line("pos-till-1"), vec![3, 1, 0, 0, 1, 0], "{lines:?}");
    assert_eq!(line("nightly-report"), vec![2, 0, 1, 0, 0, 1], "{lines:?}");
    // The metrics count the same writes.
    let (_, body) = http_get(proxy.metrics.unwrap(), "/metrics").await;
    for (i, outcome) in [
        "rewritten",
        "conflict",
        "observed",
        "refused",
        "unversioned",
        "bulk",
    ]
    .iter()
    .enumerate()
    {
        let series = format!(
            "optlock_guarded_writes_total{{table=\"public.invoice\",outcome=\"{outcome}\"}}"
        );
        let total: u64 = lines.iter().map(|l| l[2 + i].parse::<u64>().unwrap()).sum();
        assert_eq!(sample(&body, &series) as u64, total, "{outcome}");
    }
}
