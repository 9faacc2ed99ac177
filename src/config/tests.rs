//! Config parsing: defaults, every option, and the errors a bad file gets (file, line, reason).

use super::*;

#[test]
fn upstream_is_host_port_or_a_socket_path() {
    assert_eq!(
        UpstreamAddr::parse("db.local:5433"),
        UpstreamAddr::Tcp("db.local:5433")
    );
    assert_eq!(
        UpstreamAddr::parse("/var/run/postgresql"),
        UpstreamAddr::Unix("/var/run/postgresql/.s.PGSQL.5432".into())
    );
    assert_eq!(
        UpstreamAddr::parse("/tmp/.s.PGSQL.5433"),
        UpstreamAddr::Unix("/tmp/.s.PGSQL.5433".into())
    );
    let cfg = Config::parse("upstream = \"/var/run/postgresql\"", "x.toml").unwrap();
    assert_eq!(cfg.upstream, "/var/run/postgresql");
    let e = Config::parse("\nupstream = \"postgres\"", "x.toml").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("x.toml:2"), "{text}");
    assert!(text.contains("socket directory"), "{text}");
}

#[test]
fn defaults_apply() {
    let cfg = Config::parse("", "x.toml").unwrap();
    assert_eq!(cfg, Config::default());
}

#[test]
fn full_guard_parses_with_folding_and_quotes() {
    let cfg = Config::parse(
        r#"
listen = "0.0.0.0:7000"
[[guard]]
table = 'public."tabSales Invoice"'
key = ["Name"]
version = "modified"
kind = "timestamp"
unversioned = "reject"
bulk = "reject"

[[guard]]
table = "Accounts"
key = ["aid"]
version = "xmin"
"#,
        "x.toml",
    )
    .unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:7000");
    let g = &cfg.guards[0];
    assert_eq!(g.table.name, "tabSales Invoice");
    assert_eq!(g.table.to_string(), "public.\"tabSales Invoice\"");
    assert_eq!(g.key, vec!["name"]);
    assert_eq!(g.kind, VersionKind::Timestamp);
    assert_eq!(g.unversioned, UnversionedPolicy::Reject);
    let g = &cfg.guards[1];
    assert_eq!(
        g.table,
        TableName {
            schema: "public".into(),
            name: "accounts".into()
        }
    );
    assert_eq!(g.kind, VersionKind::Xmin);
    assert_eq!(g.bulk, BulkPolicy::Bump);
}

#[test]
fn errors_name_file_and_line() {
    let e = Config::parse(
        "listen = \"127.0.0.1:1\"\n\n[[guard]]\ntable = \"t\"\nkey = []\n",
        "bad.toml",
    )
    .unwrap_err();
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.to_string().starts_with("bad.toml:5: "), "{e}");
    assert!(e.reason.contains("at least one column"), "{e}");

    let e = Config::parse("track = \"forever\"\n", "bad.toml").unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");

    let e = Config::parse("listen = 6432\n", "bad.toml").unwrap_err();
    assert!(e.reason.contains("(in `listen = 6432`)"), "{e}");

    let e = Config::parse("lisen = \"x\"\n", "bad.toml").unwrap_err();
    assert!(e.reason.contains("lisen"), "{e}");

    let e = Config::parse(
        "[[guard]]\ntable = \"t\"\nkey = [\"id\"]\nversion = \"v\"\nkind = \"xmin\"\n",
        "bad.toml",
    )
    .unwrap_err();
    assert_eq!(e.line, Some(5), "{e}");

    let e = Config::parse("conflict_sqlstate = \"4001\"\n", "bad.toml").unwrap_err();
    assert!(e.reason.contains("SQLSTATE"), "{e}");
}

#[test]
fn identifiers_follow_postgres_rules() {
    assert_eq!(parse_identifier("ID").unwrap(), "id");
    assert_eq!(parse_identifier("\"ID\"").unwrap(), "ID");
    assert_eq!(parse_identifier("\"a\"\"b\"").unwrap(), "a\"b");
    assert!(parse_identifier("two words").is_err());
    assert!(parse_table_name("a.b.c").is_err());
    assert_eq!(quote_ident("tabSales Invoice"), "\"tabSales Invoice\"");
    assert_eq!(quote_ident("invoice"), "invoice");
}

#[test]
fn mode_and_scope_parse_and_bad_rules_name_their_line() {
    let cfg = Config::parse(
        r#"
[[guard]]
table = "public.item"
key = ["id"]
mode = "observe"
[[guard.scope]]
application_name = ["pos-*"]
mode = "enforce"
[[guard.scope]]
user = ["etl", "dump?"]
mode = "skip"
"#,
        "x.toml",
    )
    .unwrap();
    let g = &cfg.guards[0];
    assert_eq!(g.mode, GuardMode::Observe);
    assert_eq!(g.mode_for("pos-3", "anyone"), GuardMode::Enforce);
    assert_eq!(g.mode_for("psql", "dump1"), GuardMode::Skip);
    assert_eq!(g.mode_for("psql", "postgres"), GuardMode::Observe);
    assert_eq!(
        Config::parse("[[guard]]\ntable = \"t\"\nkey = [\"id\"]", "x")
            .unwrap()
            .guards[0]
            .mode,
        GuardMode::Enforce
    );
    for (bad, says) in [
        ("mode = \"watch\"", "unknown variant"),
        (
            "[[guard.scope]]\nmode = \"skip\"",
            "needs application_name or user",
        ),
        (
            "[[guard.scope]]\nuser = []\nmode = \"skip\"",
            "matches no session",
        ),
        ("[[guard.scope]]\nuser = [\"a\"]", "missing field `mode`"),
    ] {
        let text = format!("[[guard]]\ntable = \"t\"\nkey = [\"id\"]\n{bad}\n");
        let e = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
        assert!(e.contains("x.toml:"), "{bad}: {e}");
    }
}
