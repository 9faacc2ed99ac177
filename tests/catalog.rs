//! The catalog against a real PostgreSQL server: guards resolved to the columns a row
//! description shows, `check` finding each problem with its fix, `suggest` writing guards that
//! pass `check`, and tables whose writes act without rows. Every test creates its own database
//! and drops it.

mod common;

use common::{TestDb, connect};
use optlock::catalog::check::{Finding, Severity, all_ok, check, render_human, render_json};
use optlock::config::Config;
use tokio_postgres::Client;

fn config(text: &str) -> Config {
    Config::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[tokio::test]
async fn resolve_matches_row_description() {
    let db = TestDb::new("catalog").await;
    let c = db.direct().await;
    c.batch_execute(
        "CREATE TABLE invoice (id int PRIMARY KEY, note text, version bigint NOT NULL DEFAULT 0);
             CREATE TABLE \"tabSales Invoice\" (name varchar(140) PRIMARY KEY,
                 modified timestamp(6) NOT NULL DEFAULT now());
             CREATE DOMAIN ver AS int8;
             CREATE DOMAIN ver2 AS ver;
             CREATE TABLE dom (a text, b int, version ver2 NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
             CREATE TABLE accounts (aid int PRIMARY KEY, abalance int);
             ALTER TABLE invoice DROP COLUMN note;
             CREATE TABLE nover (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let cfg = config(
        r#"
[[guard]]
table = "invoice"
key = ["id"]
[[guard]]
table = 'public."tabSales Invoice"'
key = ["name"]
version = "modified"
kind = "timestamp"
[[guard]]
table = "nope"
key = ["id"]
[[guard]]
table = "dom"
key = ["b", "a"]
[[guard]]
table = "accounts"
key = ["aid"]
version = "xmin"
[[guard]]
table = "nover"
key = ["id"]
"#,
    );
    let resolved = optlock::catalog::resolve::resolve(&c, &cfg.guards)
        .await
        .unwrap();
    assert_eq!(resolved.len(), 4);
    assert!(resolved.get(2).is_none(), "missing table is absent");
    assert!(
        resolved.get(5).is_none(),
        "missing version column is absent"
    );

    // Every guarded column of a result is recognised by (table OID, attnum), aliases or not.
    for (sql, guard) in [
        ("SELECT i.version AS v, i.id AS k FROM invoice i", 0),
        ("SELECT modified, name FROM \"tabSales Invoice\"", 1),
        ("SELECT d.version, d.a, d.b FROM dom d", 3),
        ("SELECT xmin, aid, abalance FROM accounts", 4),
    ] {
        let stmt = c.prepare(sql).await.unwrap();
        let g = &cfg.guards[guard];
        let mut keys_seen = 0;
        let mut version_seen = false;
        for col in stmt.columns() {
            let oid = col.table_oid().expect("a table column");
            let (i, r) = resolved.by_table_oid(oid).expect("guarded table");
            assert_eq!(i, guard, "{sql}");
            let attnum = col.column_id().unwrap();
            if let Some(pos) = r.key_position(attnum) {
                assert_eq!(r.key_types[pos], col.type_().oid(), "{sql} {}", col.name());
                keys_seen += 1;
            } else if r.is_version(attnum) {
                assert_eq!(r.version_type, col.type_().oid(), "{sql} {}", col.name());
                version_seen = true;
            }
        }
        assert_eq!(keys_seen, g.key.len(), "{sql}");
        assert!(version_seen, "{sql}");
    }
    let accounts = resolved.get(4).unwrap();
    assert_eq!(accounts.version_type, 28);
    assert!(accounts.version_attnum < 0);
    assert_eq!(
        resolved.get(3).unwrap().version_type,
        20,
        "domains resolve to the base type"
    );

    // No guards: still a valid query.
    let none = optlock::catalog::resolve::resolve(&c, &[]).await.unwrap();
    assert!(none.is_empty());
}

async fn findings(c: &Client, toml: &str) -> Vec<Finding> {
    check(&config(toml).guards, c).await
}

fn guard_toml(table: &str, key: &str, version: &str, kind: &str) -> String {
    format!(
        "[[guard]]\ntable = '{table}'\nkey = {key}\nversion = \"{version}\"\nkind = \"{kind}\"\n"
    )
}

/// The one error for a guard, applying its DDL (if any) and checking again.
async fn expect_error(c: &Client, toml: &str, message_part: &str) -> Finding {
    let f = findings(c, toml).await;
    assert_eq!(f.len(), 1, "{f:#?}");
    let f = f.into_iter().next().unwrap();
    assert_eq!(f.severity, Severity::Error, "{f:#?}");
    assert!(f.message.contains(message_part), "{f:#?}");
    if let Some(ddl) = &f.ddl {
        c.batch_execute(ddl)
            .await
            .unwrap_or_else(|e| panic!("{ddl}: {e:?}"));
        let again = findings(c, toml).await;
        assert!(all_ok(&again), "after {ddl}: {again:#?}");
    }
    f
}

#[tokio::test]
async fn check_finds_each_problem_and_its_fix() {
    let db = TestDb::new("catalog").await;
    let url = db.conninfo();
    let c = connect(&url).await;
    c.batch_execute(
        "CREATE TABLE invoice (id int PRIMARY KEY, version bigserial);
             INSERT INTO invoice VALUES (1, 0);
             CREATE TABLE \"tabSales Invoice\" (name varchar(140) PRIMARY KEY,
                 modified timestamp(6) NOT NULL DEFAULT now());
             CREATE SEQUENCE line_seq;
             CREATE TABLE line (a int, b text, qty int,
                 version numeric NOT NULL DEFAULT nextval('line_seq'),
                 UNIQUE (b, a));
             CREATE TABLE accounts (aid int PRIMARY KEY);
             CREATE TABLE k1 (id int PRIMARY KEY, version bigserial);
             CREATE TABLE k2 (id int PRIMARY KEY, code text, version bigserial);
             INSERT INTO k2 VALUES (1, 'a');
             CREATE TABLE k3 (id int PRIMARY KEY);
             INSERT INTO k3 VALUES (1);
             CREATE TABLE k4 (id int PRIMARY KEY, version serial);
             ALTER TABLE k4 ALTER COLUMN version DROP NOT NULL;
             INSERT INTO k4 VALUES (1, NULL);
             CREATE TABLE k5 (id int PRIMARY KEY, version int NOT NULL);
             CREATE TABLE k6 (id int PRIMARY KEY, modified timestamptz NOT NULL DEFAULT now());
             CREATE TABLE k7 (id int PRIMARY KEY, version text NOT NULL DEFAULT '0');
             INSERT INTO k7 VALUES (1, '4');
             CREATE TABLE k8 (id int, version bigserial);
             CREATE UNIQUE INDEX ON k8 (id) WHERE id > 0;
             CREATE VIEW v AS SELECT * FROM invoice;
             CREATE TABLE k9 (id int PRIMARY KEY, modified timestamp);
             CREATE TABLE k10 (id int PRIMARY KEY, modified date NOT NULL DEFAULT now());",
    )
    .await
    .unwrap();

    let good = [
        guard_toml("invoice", r#"["id"]"#, "version", "counter"),
        guard_toml(
            r#"public."tabSales Invoice""#,
            r#"["name"]"#,
            "modified",
            "timestamp",
        ),
        guard_toml("line", r#"["a", "b"]"#, "version", "counter"),
        guard_toml("accounts", r#"["aid"]"#, "xmin", "xmin"),
    ]
    .concat();
    let f = findings(&c, &good).await;
    assert_eq!(f.len(), 4, "{f:#?}");
    assert!(all_ok(&f), "{f:#?}");
    assert!(f[0].message.contains("primary key"), "{f:#?}");
    assert!(f[2].message.contains("unique"), "{f:#?}");
    let human = render_human(&f);
    assert_eq!(human.lines().count(), 4, "{human}");
    assert!(human.starts_with("ok    public.invoice: "), "{human}");
    let json: serde_json::Value = serde_json::from_str(&render_json(&f)).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["findings"][1]["table"], "public.\"tabSales Invoice\"");

    let f = expect_error(
        &c,
        &guard_toml("nope", r#"["id"]"#, "version", "counter"),
        "does not exist",
    )
    .await;
    assert_eq!(f.table, "public.nope");
    let f = expect_error(
        &c,
        &guard_toml("nope.x", r#"["id"]"#, "version", "counter"),
        "schema nope does not exist",
    )
    .await;
    assert!(f.ddl.is_none());

    let f = expect_error(
        &c,
        &guard_toml("k1", r#"["idx"]"#, "version", "counter"),
        "key column idx does not exist",
    )
    .await;
    assert_eq!(f.config.as_deref(), Some(r#"key = ["id"]"#));

    let f = expect_error(
        &c,
        &guard_toml("k2", r#"["code"]"#, "version", "counter"),
        "neither the primary key nor a unique",
    )
    .await;
    assert_eq!(
        f.ddl.as_deref(),
        Some("ALTER TABLE public.k2 ADD UNIQUE (code);")
    );
    assert_eq!(f.config.as_deref(), Some(r#"key = ["id"]"#));

    let f = expect_error(
        &c,
        &guard_toml("k3", r#"["id"]"#, "version", "counter"),
        "version column version does not exist",
    )
    .await;
    assert_eq!(
        f.ddl.as_deref(),
        Some("ALTER TABLE public.k3 ADD COLUMN version bigserial;")
    );

    let f = expect_error(
        &c,
        &guard_toml("k4", r#"["id"]"#, "version", "counter"),
        "nullable",
    )
    .await;
    assert!(
        f.ddl
            .as_deref()
            .unwrap()
            .contains("ALTER TABLE public.k4 ALTER COLUMN version SET NOT NULL;")
    );

    let f = expect_error(
        &c,
        &guard_toml("k5", r#"["id"]"#, "version", "counter"),
        "no default",
    )
    .await;
    assert!(
        f.ddl.as_deref().unwrap().ends_with(
            "ALTER TABLE public.k5 ALTER COLUMN version SET DEFAULT nextval('public.k5_version_seq');"
        ),
        "{f:#?}"
    );

    let f = expect_error(
        &c,
        &guard_toml("k6", r#"["id"]"#, "modified", "counter"),
        "does not fit kind \"counter\"",
    )
    .await;
    assert_eq!(f.config.as_deref(), Some(r#"kind = "timestamp""#));
    assert!(f.ddl.is_none());

    let f = expect_error(
        &c,
        &guard_toml("k7", r#"["id"]"#, "version", "counter"),
        "is text",
    )
    .await;
    assert!(
        f.ddl.as_deref().unwrap().starts_with(
            "ALTER TABLE public.k7 ALTER COLUMN version DROP DEFAULT, \
                 ALTER COLUMN version TYPE bigint USING version::bigint; \
                 CREATE SEQUENCE IF NOT EXISTS public.k7_version_seq"
        ),
        "{f:#?}"
    );

    let f = expect_error(
        &c,
        &guard_toml("k8", r#"["id"]"#, "version", "counter"),
        "neither",
    )
    .await;
    assert!(f.config.is_none());

    expect_error(
        &c,
        &guard_toml("v", r#"["id"]"#, "version", "counter"),
        "is a view",
    )
    .await;
    expect_error(
        &c,
        &guard_toml("k10", r#"["id"]"#, "modified", "timestamp"),
        "is date",
    )
    .await;

    // Two problems of one column: both reported, both fixed.
    let k9 = guard_toml("k9", r#"["id"]"#, "modified", "timestamp");
    let f = findings(&c, &k9).await;
    assert_eq!(f.len(), 2, "{f:#?}");
    for x in &f {
        c.batch_execute(x.ddl.as_deref().unwrap()).await.unwrap();
    }
    assert!(all_ok(&findings(&c, &k9).await));

    // A column of the other kind is checked as that kind too.
    c.batch_execute("CREATE TABLE k11 (id int PRIMARY KEY, updated_at timestamptz)")
        .await
        .unwrap();
    let f = findings(&c, &guard_toml("k11", r#"["id"]"#, "updated_at", "counter")).await;
    assert_eq!(f.len(), 3, "{f:#?}");
    assert_eq!(f[0].config.as_deref(), Some(r#"kind = "timestamp""#));
    assert!(
        f[1].ddl
            .as_deref()
            .unwrap()
            .contains("SET updated_at = now()"),
        "{f:#?}"
    );
    assert_eq!(
        f[2].ddl.as_deref(),
        Some("ALTER TABLE public.k11 ALTER COLUMN updated_at SET DEFAULT now();")
    );

    // The CLI entry point.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optlock.toml");
    std::fs::write(&path, &good).unwrap();
    assert!(
        optlock::catalog::check::run_check(&path, &url, true)
            .await
            .unwrap()
    );
    std::fs::write(&path, guard_toml("nope", r#"["id"]"#, "version", "counter")).unwrap();
    assert!(
        !optlock::catalog::check::run_check(&path, &url, false)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn suggest_writes_guards_that_pass_check() {
    let db = TestDb::new("catalog").await;
    let c = db.direct().await;
    c.batch_execute(
        "CREATE TABLE invoice (id int PRIMARY KEY, version bigserial);
             CREATE TABLE \"tabSales Invoice\" (name varchar(140) PRIMARY KEY,
                 modified timestamp(6) NOT NULL DEFAULT now(), \"Version\" text);
             CREATE TABLE accounts (aid int PRIMARY KEY, abalance int);
             CREATE TABLE posts (id int PRIMARY KEY, updated_at timestamptz);
             CREATE TABLE log (msg text);
             CREATE TABLE \"Line\" (a int, \"B\" text, lock_version int NOT NULL DEFAULT 0,
                 PRIMARY KEY (\"B\", a));
             CREATE SCHEMA shop;
             CREATE TABLE shop.item (id uuid PRIMARY KEY,
                 row_version bigint GENERATED BY DEFAULT AS IDENTITY);",
    )
    .await
    .unwrap();
    let text = optlock::catalog::suggest::suggest(&c, None, &[])
        .await
        .unwrap();
    let cfg = config(&text);
    assert_eq!(cfg.guards.len(), 6, "{text}");
    let f = check(&cfg.guards, &c).await;
    assert!(all_ok(&f), "{text}\n{f:#?}");
    let g = |name: &str| cfg.guards.iter().find(|g| g.table.name == name).unwrap();
    assert_eq!(g("invoice").version, "version");
    assert_eq!(g("tabSales Invoice").version, "modified");
    assert_eq!(
        g("tabSales Invoice").kind,
        optlock::config::VersionKind::Timestamp
    );
    assert_eq!(g("accounts").version, "xmin");
    assert_eq!(g("posts").version, "xmin");
    assert_eq!(g("Line").key, vec!["B".to_string(), "a".to_string()]);
    // A counter whose default repeats is passed over, with the DDL that fixes it.
    assert_eq!(g("Line").version, "xmin");
    assert!(
        text.contains("# column lock_version not used as the version: its default 0 repeats"),
        "{text}"
    );
    assert!(
        text.contains(
            "#   to use it, run: CREATE SEQUENCE IF NOT EXISTS public.\"Line_lock_version_seq\""
        ),
        "{text}"
    );
    assert_eq!(g("item").version, "row_version");
    assert_eq!(g("item").table.schema, "shop");
    assert!(
        text.contains("# public.log: skipped, no primary key"),
        "{text}"
    );
    assert!(
        text.contains("# column updated_at not used as the version: it is nullable"),
        "{text}"
    );
    assert!(
        text.contains("# column \"Version\" not used as the version"),
        "{text}"
    );

    let text = optlock::catalog::suggest::suggest(
        &c,
        Some("public"),
        &[
            "invoice".into(),
            "public.accounts".into(),
            "missing".into(),
            "item".into(),
        ],
    )
    .await
    .unwrap();
    let cfg = config(&text);
    let names: Vec<&str> = cfg.guards.iter().map(|g| g.table.name.as_str()).collect();
    assert_eq!(names, vec!["accounts", "invoice"], "{text}");
    assert!(
        text.contains("# missing: skipped, no such table in schema public"),
        "{text}"
    );
    assert!(text.contains("# item: skipped"), "{text}");
}

#[tokio::test]
async fn resolve_tells_tables_whose_writes_act_without_rows() {
    let db = TestDb::new("catalog").await;
    let c = db.direct().await;
    c.batch_execute(
        "CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
             CREATE TABLE plain (id int PRIMARY KEY, version int);
             CREATE TABLE row_trigger (id int PRIMARY KEY, version int);
             CREATE TRIGGER t AFTER UPDATE ON row_trigger FOR EACH ROW EXECUTE FUNCTION noop();
             CREATE TABLE insert_trigger (id int PRIMARY KEY, version int);
             CREATE TRIGGER t AFTER INSERT ON insert_trigger EXECUTE FUNCTION noop();
             CREATE TABLE update_trigger (id int PRIMARY KEY, version int);
             CREATE TRIGGER t AFTER UPDATE ON update_trigger EXECUTE FUNCTION noop();
             ALTER TABLE update_trigger DISABLE TRIGGER t;
             CREATE TABLE delete_trigger (id int PRIMARY KEY, version int);
             CREATE TRIGGER t BEFORE DELETE ON delete_trigger EXECUTE FUNCTION noop();
             CREATE TABLE ruled (id int PRIMARY KEY, version int);
             CREATE RULE r AS ON UPDATE TO ruled DO ALSO NOTIFY ruled;
             CREATE VIEW a_view AS SELECT * FROM plain;",
    )
    .await
    .unwrap();
    let tables = [
        ("plain", false),
        ("row_trigger", false),
        ("insert_trigger", false),
        ("update_trigger", true),
        ("delete_trigger", true),
        ("ruled", true),
        ("a_view", true),
    ];
    let text: String = tables
        .iter()
        .map(|(t, _)| format!("[[guard]]\ntable = \"{t}\"\nkey = [\"id\"]\n"))
        .collect();
    let cfg = config(&text);
    let resolved = optlock::catalog::resolve::resolve(&c, &cfg.guards)
        .await
        .unwrap();
    for (i, (table, acts)) in tables.iter().enumerate() {
        let r = resolved
            .get(i)
            .unwrap_or_else(|| panic!("{table} resolved"));
        assert_eq!(r.acts_without_rows, *acts, "{table}");
    }
}
