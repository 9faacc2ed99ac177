//! The console's commands, answered without a network: each command's columns and rows.

use super::*;
use crate::admin::registry::SessionState;
use crate::events::Conflict;
use crate::events::Outcome;
use crate::events::SessionStart;
use crate::guard::GuardSet;
use pgwire::messages::{DecodeContext, PgWireBackendMessage, ProtocolVersion};
use std::sync::Mutex;
use std::time::SystemTime;

/// A decoded reply: one entry per message.
#[derive(Debug, PartialEq)]
enum Reply {
    Columns(Vec<String>),
    Row(Vec<Option<String>>),
    Complete(String),
    Error(Vec<(u8, String)>),
    Notice(Vec<(u8, String)>),
    Empty,
}

fn decode(bytes: &[u8]) -> Vec<Reply> {
    let mut buf = BytesMut::from(bytes);
    let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    let mut out = Vec::new();
    while !buf.is_empty() {
        let msg = PgWireBackendMessage::decode(&mut buf, &ctx)
            .expect("valid message")
            .expect("complete message");
        out.push(match msg {
            PgWireBackendMessage::RowDescription(r) => {
                assert!(
                    r.fields
                        .iter()
                        .all(|f| f.type_id == 25 && f.format_code == 0)
                );
                Reply::Columns(r.fields.into_iter().map(|f| f.name).collect())
            }
            PgWireBackendMessage::DataRow(r) => {
                let mut data = r.data;
                let mut values = Vec::new();
                for _ in 0..r.field_count {
                    let len = i32::from_be_bytes(data.split_to(4)[..].try_into().unwrap());
                    values.push(if len < 0 {
                        None
                    } else {
                        Some(String::from_utf8(data.split_to(len as usize).to_vec()).unwrap())
                    });
                }
                assert!(data.is_empty(), "field_count matches the data");
                Reply::Row(values)
            }
            PgWireBackendMessage::CommandComplete(c) => Reply::Complete(c.tag),
            PgWireBackendMessage::ErrorResponse(e) => Reply::Error(e.fields),
            PgWireBackendMessage::NoticeResponse(n) => Reply::Notice(n.fields),
            PgWireBackendMessage::EmptyQueryResponse(_) => Reply::Empty,
            // ReadyForQuery among them: the relay appends it, the console must not.
            other => panic!("unexpected message {other:?}"),
        });
    }
    out
}

fn field(fields: &[(u8, String)], code: u8) -> &str {
    &fields
        .iter()
        .find(|f| f.0 == code)
        .expect("field present")
        .1
}

fn config() -> Arc<Config> {
    Arc::new(
        Config::parse(
            r#"
metrics_listen = "127.0.0.1:9187"
track_limit = 500
client_login_timeout = 2.5
[[guard]]
table = 'public."tabSales Invoice"'
key = ["name"]
version = "modified"
kind = "timestamp"
unversioned = "reject"
[[guard]]
table = "accounts"
key = ["branch", "aid"]
version = "xmin"
bulk = "reject"
"#,
            "t.toml",
        )
        .unwrap(),
    )
}

struct Fixture {
    ctx: AdminContext,
    reloads: Arc<Mutex<Vec<Result<String, String>>>>,
}

fn fixture() -> Fixture {
    let reloads: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let queue = reloads.clone();
    let cfg = config();
    let metrics = Arc::new(Metrics::new());
    metrics.set_tables(GuardSet::new(&cfg).tables());
    let ctx = AdminContext::new(
        metrics,
        Arc::new(SessionRegistry::new()),
        Arc::new(ConflictLog::new(10)),
        move || cfg.clone(),
        move || queue.lock().unwrap().remove(0),
    );
    Fixture { ctx, reloads }
}

fn rows_of(replies: &[Reply]) -> Vec<Vec<Option<String>>> {
    replies
        .iter()
        .filter_map(|r| match r {
            Reply::Row(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[test]
fn show_guards_lists_each_guard() {
    let f = fixture();
    let r = decode(&execute("show guards;", &f.ctx));
    assert_eq!(
        r[0],
        Reply::Columns(
            [
                "table",
                "key",
                "version",
                "kind",
                "unversioned",
                "bulk",
                "mode",
                "scope"
            ]
            .map(String::from)
            .to_vec()
        )
    );
    assert_eq!(
        rows_of(&r),
        vec![
            vec![
                s("public.\"tabSales Invoice\""),
                s("name"),
                s("modified"),
                s("timestamp"),
                s("reject"),
                s("bump"),
                s("enforce"),
                s("")
            ],
            vec![
                s("public.accounts"),
                s("branch, aid"),
                s("xmin"),
                s("xmin"),
                s("allow"),
                s("reject"),
                s("enforce"),
                s("")
            ],
        ]
    );
    assert_eq!(r.last(), Some(&Reply::Complete("SHOW".into())));
    assert_eq!(r.len(), 4);
}

#[test]
fn show_stats_counts_per_table() {
    let f = fixture();
    let accounts = GuardSet::new(&config()).table_ids[1];
    f.ctx.metrics.guarded(accounts, Outcome::Conflict);
    f.ctx.metrics.guarded(accounts, Outcome::Conflict);
    f.ctx.metrics.statement();
    let r = decode(&execute("  Show   Stats ", &f.ctx));
    assert_eq!(r[0], Reply::Columns(vec!["metric".into(), "value".into()]));
    let rows = rows_of(&r);
    assert!(
        rows.contains(&vec![s("statements_total"), s("1")]),
        "{rows:?}"
    );
    assert!(
        rows.contains(&vec![
            s("guarded_writes_total{table=\"public.accounts\",outcome=\"conflict\"}"),
            s("2")
        ]),
        "{rows:?}"
    );
    assert!(rows.contains(&vec![
        s("guarded_writes_total{table=\"public.\\\"tabSales Invoice\\\"\",outcome=\"rewritten\"}"),
        s("0")
    ]));
    assert_eq!(r.last(), Some(&Reply::Complete("SHOW".into())));
}

#[test]
fn show_sessions_and_conflicts() {
    let f = fixture();
    let h = f.ctx.sessions.register(SessionStart {
        client_addr: "192.0.2.1:40000".parse().unwrap(),
        user: "pos".into(),
        database: "shop".into(),
        application_name: "till-1".into(),
        client_tls: None,
        server_tls: Some("TLSv1.3"),
    });
    h.set_state(SessionState::InTransaction);
    h.statement();
    h.set_tracked_versions(3);
    let r = decode(&execute("SHOW SESSIONS", &f.ctx));
    let Reply::Columns(cols) = &r[0] else {
        panic!("{r:?}")
    };
    let rows = rows_of(&r);
    assert_eq!(rows.len(), 1);
    let get = |name: &str| rows[0][cols.iter().position(|c| c == name).unwrap()].clone();
    assert_eq!(get("user"), s("pos"));
    assert_eq!(get("database"), s("shop"));
    assert_eq!(get("application_name"), s("till-1"));
    assert_eq!(get("client_addr"), s("192.0.2.1:40000"));
    assert_eq!(get("state"), s("in transaction"));
    assert_eq!(get("statements"), s("1"));
    assert_eq!(get("tracked_versions"), s("3"));
    assert_eq!(
        (get("client_tls"), get("server_tls")),
        (s("off"), s("TLSv1.3"))
    );
    assert_eq!(get("backend_pid"), None);
    assert!(get("connected_at").unwrap().ends_with("+00"));

    f.ctx.conflicts.record(Conflict {
        at: SystemTime::UNIX_EPOCH,
        table: "public.accounts".into(),
        key: "(branch, aid)=(1, 42)".into(),
        expected: "7".into(),
        found: None,
        client_addr: "192.0.2.1:40000".parse().unwrap(),
        user: "pos".into(),
        application_name: "till-1".into(),
        outcome: Outcome::Conflict,
        reason: None,
    });
    let r = decode(&execute("show conflicts", &f.ctx));
    assert_eq!(
        r[0],
        Reply::Columns(
            [
                "time",
                "table",
                "key",
                "expected",
                "found",
                "client_addr",
                "user",
                "application_name",
                "outcome",
                "reason"
            ]
            .map(String::from)
            .to_vec()
        )
    );
    assert_eq!(
        rows_of(&r),
        vec![vec![
            s("1970-01-01 00:00:00.000+00"),
            s("public.accounts"),
            s("(branch, aid)=(1, 42)"),
            s("7"),
            None,
            s("192.0.2.1:40000"),
            s("pos"),
            s("till-1"),
            s("conflict"),
            None,
        ]]
    );
}

#[test]
fn show_config_has_every_option_with_defaults() {
    let f = fixture();
    let r = decode(&execute("SHOW CONFIG", &f.ctx));
    assert_eq!(
        r[0],
        Reply::Columns(vec!["key".into(), "value".into(), "default".into()])
    );
    let rows = rows_of(&r);
    let keys: Vec<&str> = rows.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(
        keys.join(" "),
        "listen upstream conflict_sqlstate metrics_listen admin_users track track_limit \
         tls_cert tls_key client_tls upstream_tls upstream_tls_ca_file upstream_tls_cert \
         upstream_tls_key client_login_timeout upstream_connect_timeout shutdown_timeout \
         max_message_size pool_mode default_pool_size max_client_conn server_idle_timeout \
         server_lifetime query_wait_timeout server_reset_query auth_type auth_file auth_user \
         auth_query auth_dbname auth_query_timeout pool guard"
    );
    let row = |k: &str| rows.iter().find(|r| r[0].as_deref() == Some(k)).unwrap();
    assert_eq!(
        row("listen")[1..],
        [s("127.0.0.1:6432"), s("127.0.0.1:6432")]
    );
    assert_eq!(row("metrics_listen")[1..], [s("127.0.0.1:9187"), None]);
    assert_eq!(row("track_limit")[1..], [s("500"), s("10000")]);
    assert_eq!(row("client_login_timeout")[1..], [s("2.5"), s("15")]);
    assert_eq!(row("admin_users")[1..], [s("postgres"), s("postgres")]);
    assert_eq!(row("tls_cert")[1..], [None, None]);
    assert_eq!(row("upstream_tls")[1..], [s("prefer"), s("prefer")]);
    assert_eq!(row("pool_mode")[1..], [s("none"), s("none")]);
    assert_eq!(
        row("server_reset_query")[1..],
        [s("DISCARD ALL"), s("DISCARD ALL")]
    );
    assert_eq!(
        row("guard")[1..],
        [s("2 guarded tables"), s("0 guarded tables")]
    );
}

#[test]
fn reload_reports_notice_or_error() {
    let f = fixture();
    f.reloads
        .lock()
        .unwrap()
        .push(Ok("reloaded: 2 guarded tables".into()));
    let r = decode(&execute("reload;", &f.ctx));
    let [Reply::Notice(n), Reply::Complete(tag)] = &r[..] else {
        panic!("{r:?}")
    };
    assert_eq!(field(n, b'M'), "reloaded: 2 guarded tables");
    assert_eq!(field(n, b'S'), "NOTICE");
    assert_eq!(tag, "RELOAD");

    f.reloads.lock().unwrap().push(Err(
        "optlock.toml:3: key must name at least one column".into()
    ));
    let r = decode(&execute("RELOAD; SHOW HELP", &f.ctx));
    let [Reply::Error(e)] = &r[..] else {
        panic!("the error stops the rest: {r:?}")
    };
    assert_eq!(field(e, b'C'), "F0000");
    assert!(field(e, b'M').contains("optlock.toml:3: key must name"));
}

#[test]
fn unknown_commands_list_the_commands_and_stop_the_rest() {
    let f = fixture();
    let r = decode(&execute("SHOW VERSION; select 1; SHOW GUARDS", &f.ctx));
    assert!(matches!(r[0], Reply::Columns(_)));
    assert_eq!(
        rows_of(&r),
        vec![vec![s(&format!("optlock {}", env!("CARGO_PKG_VERSION")))]]
    );
    assert_eq!(r[2], Reply::Complete("SHOW".into()));
    let Reply::Error(e) = &r[3] else {
        panic!("{r:?}")
    };
    assert_eq!(r.len(), 4, "nothing after the error runs");
    assert_eq!(field(e, b'S'), "ERROR");
    assert_eq!(field(e, b'C'), "42601");
    let m = field(e, b'M');
    assert!(m.contains("\"select 1\""), "{m}");
    for (c, _) in COMMANDS {
        assert!(m.contains(c), "{m} lists {c}");
    }
    assert!(field(e, b'H').contains("SHOW HELP"));
}

#[test]
fn multi_statement_and_empty_queries() {
    let f = fixture();
    let r = decode(&execute("SHOW GUARDS; SHOW HELP;", &f.ctx));
    let tags: Vec<&Reply> = r
        .iter()
        .filter(|m| matches!(m, Reply::Complete(_) | Reply::Columns(_)))
        .collect();
    assert_eq!(tags.len(), 4, "two results: {r:?}");
    let help = rows_of(&r).into_iter().skip(2).collect::<Vec<_>>();
    assert_eq!(help.len(), COMMANDS.len());
    assert_eq!(help[0][0], s("SHOW GUARDS"));

    assert_eq!(decode(&execute("", &f.ctx)), vec![Reply::Empty]);
    assert_eq!(decode(&execute(" ; ;", &f.ctx)), vec![Reply::Empty]);
}
