//! Reloads of the guards reaching sessions mid-pipeline, spoken byte by byte: statements
//! prepared under a guard (unnamed and kept, named) outlive a reload that removes it, kept
//! writes keep the versions they learned, a reload reaches a client that never waits, the
//! server's unnamed statement outlives the proxy's catalog queries, and catalog queries that
//! meet a failed transaction are sent again after it.

mod common;
use common::guards::*;
use common::wire::*;
use common::*;

/// A reload that removes every guard, picked up by a session while its unnamed statement
/// stands for a kept one: that statement is prepared again as the client wrote it, so binding
/// and describing it without a new `Parse` still work, and a simple query still drops it.
#[tokio::test]
async fn an_unnamed_statement_kept_prepared_outlives_a_reload_that_removes_every_guard() {
    let db = invoice_db("pl_kept_unguard", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut raw = proxy.raw(&db.name).await;
        // A row the session read: its writes go in full, and are kept.
        read_row(&mut raw, 6).await;
        for _ in 0..2 {
            raw.send(
                &[
                    parse("", write, &[]),
                    bind_text("", "", &["6"]),
                    execute("", 0),
                    sync(),
                ]
                .concat(),
            )
            .await;
            assert_eq!(raw.until_ready().await.last(), Some(&Reply::Ready('I')));
        }
        sessions.push(raw);
    }
    let mut config = (*proxy.shared.settings().config).clone();
    config.guards.clear();
    proxy.shared.replace_config(config);
    let rebind = [bind_text("", "", &["6"]), execute("", 0), sync()].concat();
    // Bound again.
    sessions[0].send(&rebind).await;
    assert_eq!(
        sessions[0].until_ready().await,
        vec![Reply::BindComplete, cc("UPDATE 1"), Reply::Ready('I')]
    );
    // Described, then bound again.
    sessions[1]
        .send(
            &[
                bind_text("", "", &["6"]),
                describe(b'S', ""),
                execute("", 0),
                sync(),
            ]
            .concat(),
        )
        .await;
    assert_eq!(
        sessions[1].until_ready().await,
        vec![
            Reply::BindComplete,
            Reply::Params(1),
            Reply::NoData,
            cc("UPDATE 1"),
            Reply::Ready('I')
        ]
    );
    // Dropped by a simple query.
    sessions[2].send(&query("SELECT 1")).await;
    sessions[2].until_ready().await;
    sessions[2].send(&rebind).await;
    let msgs = sessions[2].until_ready().await;
    assert!(
        matches!(&msgs[0], Reply::Error(code, _) if code == "26000"),
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
    let db = invoice_db("pl_kept_reload", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    read_row(&mut raw, 3).await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    let batch = [
        parse("", write, &[23]),
        bind_text("", "", &["3"]),
        describe(b'S', ""),
        execute("", 0),
        sync(),
    ]
    .concat();
    let expected = vec![
        Reply::ParseComplete,
        Reply::BindComplete,
        Reply::Params(1),
        Reply::NoData,
        cc("UPDATE 1"),
        Reply::Ready('I'),
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
        raw.send(&[close(b'S', "gone"), sync(), batch.clone()].concat())
            .await;
        assert_eq!(
            raw.until_ready().await,
            vec![Reply::Other('3'), Reply::Ready('I')]
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
    let db = invoice_db("pl_named_unguard", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    read_row(&mut raw, 2).await;
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
        raw.send(&[parse(name, sql, &[]), sync()].concat()).await;
        assert_eq!(
            raw.until_ready().await,
            vec![Reply::ParseComplete, Reply::Ready('I')]
        );
    }
    for (name, _, params, tag) in &statements {
        raw.send(&[bind_text("", name, params), execute("", 0), sync()].concat())
            .await;
        assert_eq!(
            raw.until_ready().await,
            vec![Reply::BindComplete, cc(tag), Reply::Ready('I')],
            "{name} under the guard"
        );
    }
    // An unnamed write sent twice: kept prepared.
    let unnamed = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    for _ in 0..2 {
        raw.send(
            &[
                parse("", unnamed, &[]),
                bind_text("", "", &["2"]),
                execute("", 0),
                sync(),
            ]
            .concat(),
        )
        .await;
        assert_eq!(raw.until_ready().await.last(), Some(&Reply::Ready('I')));
    }
    let mut config = (*proxy.shared.settings().config).clone();
    config.guards.clear();
    proxy.shared.replace_config(config);
    // A new unnamed statement replaces the one that stood for the kept write.
    raw.send(
        &[
            parse("", "SELECT 42", &[]),
            bind_text("", "", &[]),
            execute("", 0),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Reply::ParseComplete,
            Reply::BindComplete,
            Reply::DataRow(vec![Some("42".into())]),
            cc("SELECT 1"),
            Reply::Ready('I')
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
                bind_text("", name, &params),
                describe(b'S', name),
                execute("", 0),
                sync(),
            ]
            .concat(),
        )
        .await;
        assert_eq!(
            raw.until_ready().await,
            vec![
                Reply::BindComplete,
                Reply::Params(params.len()),
                Reply::NoData,
                cc(tag),
                Reply::Ready('I')
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
    let db = invoice_db("pl_named_dropped", 9, AUDIT).await;
    let other = r#"
[[guard]]
table = "public.other"
key = ["id"]
version = "version"
"#;
    let proxy = Proxy::with_guards(&format!("{INVOICE}{other}")).await;
    let mut raw = proxy.raw(&db.name).await;
    let pinned = "UPDATE invoice SET total = total + 1 WHERE id = $1 AND version = $2";
    raw.send(&[parse("pinned", pinned, &[]), sync()].concat())
        .await;
    raw.until_ready().await;
    // Under the guard: a stale pinned version is a conflict.
    raw.send(&[bind_text("", "pinned", &["5", "7"]), execute("", 0), sync()].concat())
        .await;
    let msgs = raw.until_ready().await;
    assert!(
        matches!(&msgs[1], Reply::Error(code, _) if code == "40001"),
        "{msgs:?}"
    );
    let mut config = (*proxy.shared.settings().config).clone();
    config.guards.retain(|g| g.table.name == "other");
    assert_eq!(config.guards.len(), 1);
    proxy.shared.replace_config(config);
    // A simple query picks the reload up; the guards are resolved and the statements listed.
    raw.send(&query("SELECT 1")).await;
    raw.until_ready().await;
    raw.send(&[bind_text("", "pinned", &["5", "7"]), execute("", 0), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::BindComplete, cc("UPDATE 0"), Reply::Ready('I')]
    );
    raw.send(&[bind_text("", "pinned", &["5", "0"]), execute("", 0), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::BindComplete, cc("UPDATE 1"), Reply::Ready('I')]
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
    let db = invoice_db("pl_reload_busy", 9, AUDIT).await;
    // Another table guarded: the session follows its replies.
    let proxy = Proxy::with_guards(
        "[[guard]]\ntable = \"public.audit\"\nkey = [\"n\"]\nversion = \"xmin\"\n",
    )
    .await;
    let mut raw = proxy.raw(&db.name).await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    raw.send(&[parse("w", write, &[]), sync()].concat()).await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::ParseComplete, Reply::Ready('I')]
    );
    // A batch still running when the reload comes, and the write sent behind it.
    raw.send(&query("SELECT pg_sleep(0.5) AS held")).await;
    wait_until_running(&db, "pg_sleep(0.5) AS held").await;
    guard_invoice_too(&proxy);
    raw.send(&[bind_text("", "w", &["2"]), execute("", 0), sync()].concat())
        .await;
    assert_eq!(raw.until_ready().await.last(), Some(&Reply::Ready('I')));
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::BindComplete, cc("UPDATE 1"), Reply::Ready('I')]
    );
    assert_eq!(version_of(&db, 2).await, 1, "the write was guarded: bumped");
}

/// The server's unnamed statement outlives a reload: the proxy's catalog queries after it
/// (simple queries, which would drop it) do not run between its `Parse` and its `Bind`.
#[tokio::test]
async fn an_unnamed_statement_outlives_a_reload() {
    let db = invoice_db("pl_reload_unnamed", 9, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let mut raw = proxy.raw(&db.name).await;
    raw.send(&[parse("", "SELECT 42", &[]), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::ParseComplete, Reply::Ready('I')]
    );
    let mut config = (*proxy.shared.settings().config).clone();
    config.guards.push(config.guards[0].clone());
    config.guards[1].table.name = "audit".into();
    proxy.shared.replace_config(config);
    raw.send(&[bind_text("", "", &[]), execute("", 0), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![
            Reply::BindComplete,
            Reply::DataRow(vec![Some("42".into())]),
            cc("SELECT 1"),
            Reply::Ready('I')
        ]
    );
}

/// The proxy's catalog queries after a reload, sent behind a client batch that leaves the
/// transaction failed, fail with it unseen, and are sent again once the client rolls back.
#[tokio::test]
async fn catalog_queries_that_meet_a_failed_transaction_are_sent_again_after_it() {
    let db = invoice_db("pl_reload_failed", 9, AUDIT).await;
    let proxy = Proxy::with_guards(
        "[[guard]]\ntable = \"public.audit\"\nkey = [\"n\"]\nversion = \"xmin\"\n",
    )
    .await;
    let mut raw = proxy.raw(&db.name).await;
    let write = "UPDATE invoice SET total = total + 1 WHERE id = $1";
    raw.send(&[parse("w", write, &[]), sync()].concat()).await;
    raw.until_ready().await;
    raw.send(&query("BEGIN")).await;
    assert_eq!(raw.until_ready().await.last(), Some(&Reply::Ready('T')));
    raw.send(&query("SELECT pg_sleep(0.5) AS doomed; SELECT 1/0"))
        .await;
    wait_until_running(&db, "AS doomed").await;
    guard_invoice_too(&proxy);
    raw.send(&[bind_text("", "w", &["2"]), execute("", 0), sync()].concat())
        .await;
    let failed = raw.until_ready().await;
    assert!(
        matches!(&failed[..], [.., Reply::Error(code, _), Reply::Ready('E')] if code == "22012"),
        "{failed:?}"
    );
    let skipped = raw.until_ready().await;
    assert!(
        matches!(&skipped[..], [Reply::Error(code, _), Reply::Ready('E')] if code == "25P02"),
        "the write in the failed transaction, as the server alone answers it: {skipped:?}"
    );
    raw.send(&query("ROLLBACK")).await;
    assert_eq!(
        raw.until_ready().await,
        vec![cc("ROLLBACK"), Reply::Ready('I')]
    );
    raw.send(&[bind_text("", "w", &["2"]), execute("", 0), sync()].concat())
        .await;
    assert_eq!(
        raw.until_ready().await,
        vec![Reply::BindComplete, cc("UPDATE 1"), Reply::Ready('I')]
    );
    assert_eq!(version_of(&db, 2).await, 1, "the write was guarded: bumped");
}
