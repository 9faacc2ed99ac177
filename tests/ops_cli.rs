//! The `optlock` command line as a DBA runs it: `check` (exit codes, fixing DDL, JSON),
//! `suggest` (output that is a valid config passing `check`), `serve --check-url` refusing a
//! wrong guard unless `--ignore-check`, bad config files, and `--help` texts.

mod common;

use common::binary::{ConfigFile, Running, run_optlock};
use common::guards::{INVOICE, invoice_db};
use common::{TestDb, upstream};
use optlock::config::Config;

/// A database of the test's own with an empty invoice table (its versions drawn from a
/// sequence, as `check` requires), customers, invoice lines and a log.
async fn shop() -> TestDb {
    invoice_db(
        "cli",
        0,
        "CREATE TABLE customer (id int primary key, name text, updated_at timestamptz not null default now());
         CREATE TABLE line (invoice_id int, n int, qty int, PRIMARY KEY (invoice_id, n));
         CREATE TABLE log (msg text);
         CREATE SEQUENCE invoice_version_seq OWNED BY invoice.version;
         ALTER TABLE invoice ALTER COLUMN version SET DEFAULT nextval('invoice_version_seq');",
    )
    .await
}

fn url(db: &TestDb) -> String {
    format!("postgres://postgres@{}/{}", upstream(), db.name)
}

/// The invoice guard, right for the shop's invoice table.
const GOOD: &str = INVOICE;

const WRONG: &str = r#"
[[guard]]
table = "public.invoice"
key = ["id"]
version = "lock_version"
"#;

#[tokio::test]
async fn check_exit_codes_ddl_and_json() {
    let db = shop().await;
    let url = url(&db);

    let good = ConfigFile::new(GOOD);
    let (status, out, err) =
        run_optlock(&["check", "--config", good.path_str(), "--database-url", &url]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    assert!(out.starts_with("ok"), "{out}");
    assert!(out.contains("public.invoice"), "{out}");

    let wrong = ConfigFile::new(WRONG);
    let (status, out, err) = run_optlock(&[
        "check",
        "--config",
        wrong.path_str(),
        "--database-url",
        &url,
    ]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(out.starts_with("error public.invoice:"), "{out}");
    assert!(out.contains("lock_version"), "{out}");
    let ddl = "ALTER TABLE public.invoice ADD COLUMN lock_version bigserial;";
    assert!(out.contains(ddl), "prints the fixing DDL: {out}");

    // The printed DDL does fix it.
    db.direct().await.batch_execute(ddl).await.unwrap();
    let (status, out, _) = run_optlock(&[
        "check",
        "--config",
        wrong.path_str(),
        "--database-url",
        &url,
    ]);
    assert_eq!(status.code(), Some(0), "after the DDL: {out}");

    // JSON, for both outcomes.
    let missing_table = ConfigFile::new(&format!(
        "{GOOD}\n[[guard]]\ntable = \"public.nosuch\"\nkey = [\"id\"]\n"
    ));
    let (status, out, err) = run_optlock(&[
        "check",
        "--config",
        missing_table.path_str(),
        "--database-url",
        &url,
        "--json",
    ]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(v["ok"], false);
    let findings = v["findings"].as_array().unwrap();
    let of = |t: &str| {
        findings
            .iter()
            .filter(|f| f["table"] == t)
            .collect::<Vec<_>>()
    };
    assert!(of("public.invoice").iter().all(|f| f["severity"] == "ok"));
    let nosuch = of("public.nosuch");
    assert!(!nosuch.is_empty(), "{out}");
    assert!(nosuch.iter().all(|f| f["severity"] == "error"), "{out}");
    assert!(
        nosuch
            .iter()
            .all(|f| f["message"].as_str().is_some_and(|m| !m.is_empty())),
        "{out}"
    );

    let (status, out, _) = run_optlock(&[
        "check",
        "--config",
        good.path_str(),
        "--database-url",
        &url,
        "--json",
    ]);
    assert_eq!(status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(v["ok"], true);
    assert_eq!(v["findings"][0]["severity"], "ok");
}

#[tokio::test]
async fn check_errors_exit_2() {
    let db = shop().await;
    // A bad config file: file, line and reason.
    let bad = ConfigFile::new(
        "listen = \"127.0.0.1:6432\"\n\n[[guard]]\ntable = \"invoice\"\nkey = []\n",
    );
    let (status, out, err) = run_optlock(&[
        "check",
        "--config",
        bad.path_str(),
        "--database-url",
        &url(&db),
    ]);
    assert_eq!(status.code(), Some(2), "{out}{err}");
    let at = format!("{}:5: ", bad.path.display());
    assert!(err.contains(&at), "{err}");
    assert!(err.contains("key must name at least one column"), "{err}");

    // A database that cannot be reached.
    let good = ConfigFile::new(GOOD);
    let (status, _, err) = run_optlock(&[
        "check",
        "--config",
        good.path_str(),
        "--database-url",
        &format!(
            "postgres://postgres@{}/optlock_no_such_database",
            upstream()
        ),
    ]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("cannot connect"), "{err}");

    // A config file that does not exist.
    let (status, _, err) = run_optlock(&[
        "check",
        "--config",
        "/nonexistent/optlock.toml",
        "--database-url",
        &url(&db),
    ]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/optlock.toml"), "{err}");
}

#[tokio::test]
async fn suggest_prints_a_config_that_passes_check() {
    let db = shop().await;
    let url = url(&db);
    let (status, out, err) = run_optlock(&["suggest", "--database-url", &url]);
    assert_eq!(status.code(), Some(0), "{err}");
    let config = Config::parse(&out, "suggested.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
    let mut tables: Vec<String> = config.guards.iter().map(|g| g.table.to_string()).collect();
    tables.sort();
    assert_eq!(
        tables,
        ["public.customer", "public.invoice", "public.line"],
        "every table with a primary key: {out}"
    );
    assert!(
        out.contains("log"),
        "a table without a primary key is explained: {out}"
    );
    let guard = |t: &str| {
        config
            .guards
            .iter()
            .find(|g| g.table.to_string() == t)
            .unwrap()
            .clone()
    };
    assert_eq!(guard("public.invoice").version, "version");
    assert_eq!(guard("public.customer").version, "updated_at");
    assert_eq!(guard("public.customer").kind.to_string(), "timestamp");
    assert_eq!(guard("public.line").key, ["invoice_id", "n"]);
    assert_eq!(guard("public.line").version, "xmin");

    let file = ConfigFile::new(&out);
    let (status, check_out, err) =
        run_optlock(&["check", "--config", file.path_str(), "--database-url", &url]);
    assert_eq!(status.code(), Some(0), "{check_out}{err}");

    // Restricted to some tables.
    let (status, out, err) = run_optlock(&[
        "suggest",
        "--database-url",
        &url,
        "--tables",
        "invoice",
        "public.line",
    ]);
    assert_eq!(status.code(), Some(0), "{err}");
    let config = Config::parse(&out, "suggested.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
    let mut tables: Vec<String> = config.guards.iter().map(|g| g.table.to_string()).collect();
    tables.sort();
    assert_eq!(tables, ["public.invoice", "public.line"], "{out}");

    // A schema with nothing to guard.
    let (status, out, err) =
        run_optlock(&["suggest", "--database-url", &url, "--schema", "nosuch"]);
    assert_eq!(status.code(), Some(0), "{err}");
    let config = Config::parse(&out, "suggested.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(config.guards.is_empty());
}

#[tokio::test]
async fn serve_check_url_refuses_a_wrong_guard_unless_ignored() {
    let db = shop().await;
    let file = ConfigFile::new(&format!("upstream = \"{}\"\n{WRONG}", upstream()));
    let url = url(&db);

    let mut refused = Running::serve(&file.path, &["--check-url", &url]);
    let status = refused.wait_exit();
    assert!(!status.success(), "{}", refused.stderr());
    let log = refused.stderr();
    assert!(log.contains("lock_version"), "says what is wrong: {log}");
    assert!(
        log.contains("ALTER TABLE public.invoice ADD COLUMN lock_version"),
        "{log}"
    );
    assert!(
        log.contains("--ignore-check"),
        "says how to start anyway: {log}"
    );
    assert!(!log.contains("optlock is ready"), "{log}");

    let mut started = Running::serve(&file.path, &["--check-url", &url, "--ignore-check"]);
    started.wait_ready();
    let (ok, out, err) = started.psql(&db.name, "SELECT count(*) FROM invoice");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "0");
    drop(started);

    // A database that cannot be reached stops the start too, unless ignored.
    let nowhere = format!(
        "postgres://postgres@{}/optlock_no_such_database",
        upstream()
    );
    let mut refused = Running::serve(&file.path, &["--check-url", &nowhere]);
    let status = refused.wait_exit();
    assert!(!status.success(), "{}", refused.stderr());
    let log = refused.stderr();
    assert!(log.contains("cannot reach the database"), "{log}");
    assert!(log.contains("optlock_no_such_database"), "{log}");
    assert!(log.contains("--ignore-check"), "{log}");
    let mut started = Running::serve(&file.path, &["--check-url", &nowhere, "--ignore-check"]);
    started.wait_ready();
    assert!(
        started.stderr().contains("start-up check skipped"),
        "{}",
        started.stderr()
    );
    drop(started);

    // A correct guard passes the start-up check.
    let good = ConfigFile::new(&format!("upstream = \"{}\"\n{GOOD}", upstream()));
    let mut checked = Running::serve(&good.path, &["--check-url", &url]);
    checked.wait_ready();
    assert!(
        checked.stderr().contains("start-up check passed"),
        "{}",
        checked.stderr()
    );
}

#[test]
fn serve_refuses_a_bad_config_with_file_line_and_reason() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "listen = \"127.0.0.1:6432\"\n[[guard]]\ntable = \"invoice\"\nkey = []\n",
            4,
            "key must name at least one column",
        ),
        ("track = \"forever\"\n", 1, "forever"),
        ("\nlisten = 6432\n", 2, "expected a string"),
        (
            "[[guard]]\ntable = \"a\"\nkey = [\"id\"]\nversion = \"xmin\"\nkind = \"counter\"\n",
            5,
            "xmin",
        ),
        ("upstream = \"127.0.0.1:5432\"\nbogus = 1\n", 2, "bogus"),
    ];
    for (text, line, reason) in cases {
        let file = ConfigFile::new(text);
        let mut proc = Running::serve(&file.path, &[]);
        let status = proc.wait_exit();
        let log = proc.stderr();
        assert_eq!(status.code(), Some(2), "{text}\n{log}");
        let at = format!("{}:{line}: ", file.path.display());
        assert!(log.contains(&at), "{text}\nexpected {at}\n{log}");
        assert!(log.contains(reason), "{text}\n{log}");
        assert!(!log.contains("optlock is ready"));
    }
    let (status, _, err) = run_optlock(&["serve", "--config", "/nonexistent/optlock.toml"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/optlock.toml"), "{err}");
}

#[test]
fn help_mentions_every_command_and_option() {
    let (status, out, _) = run_optlock(&["--help"]);
    assert!(status.success());
    for word in ["serve", "check", "suggest", "--help", "--version"] {
        assert!(out.contains(word), "optlock --help mentions {word}:\n{out}");
    }

    let (status, out, _) = run_optlock(&["serve", "--help"]);
    assert!(status.success());
    for word in [
        "--config",
        "--listen",
        "--upstream",
        "--workers",
        "--log",
        "--check-url",
        "--ignore-check",
        "OPTLOCK_CONFIG",
    ] {
        assert!(
            out.contains(word),
            "optlock serve --help mentions {word}:\n{out}"
        );
    }

    let (status, out, _) = run_optlock(&["check", "--help"]);
    assert!(status.success());
    for word in ["--config", "--database-url", "--json", "DATABASE_URL"] {
        assert!(
            out.contains(word),
            "optlock check --help mentions {word}:\n{out}"
        );
    }

    let (status, out, _) = run_optlock(&["suggest", "--help"]);
    assert!(status.success());
    for word in ["--database-url", "--schema", "--tables"] {
        assert!(
            out.contains(word),
            "optlock suggest --help mentions {word}:\n{out}"
        );
    }

    let (status, out, _) = run_optlock(&["--version"]);
    assert!(status.success());
    assert_eq!(out.trim(), format!("optlock {}", env!("CARGO_PKG_VERSION")));

    // A usage error is clap's exit code 2 with a hint.
    let (status, _, err) = run_optlock(&["serve", "--no-such-option"]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("--no-such-option"), "{err}");
}
