//! The admin console: the commands a client of the virtual database `optlock` may run
//! (`SHOW ...`, `RELOAD`), answered as encoded PostgreSQL backend messages.
//!
//! Login and authentication are the relay's; this module gets one simple-`Query` string and
//! returns the bytes to send back, without the closing `ReadyForQuery`. Several commands in one
//! string (`SHOW GUARDS; SHOW STATS`) run in turn and stop at the first error, as PostgreSQL
//! does. Every result column is `text`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{
    CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse,
};

use super::conflicts::ConflictLog;
use super::format_utc;
use super::metrics::Metrics;
use super::registry::SessionRegistry;
use crate::config::{BulkPolicy, Config, Guard, TrackScope, UnversionedPolicy, quote_ident};

/// Reloads the config; `Ok` carries what changed, `Err` why nothing did.
pub type ReloadFn = Box<dyn Fn() -> Result<String, String> + Send + Sync>;
/// Returns the config in force now.
pub type ConfigFn = Box<dyn Fn() -> Arc<Config> + Send + Sync>;

/// What the console reads and acts on. Build one per process and share it.
pub struct AdminContext {
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<SessionRegistry>,
    pub conflicts: Arc<ConflictLog>,
    /// The config in force; called per command so a `RELOAD` shows at once.
    pub config: ConfigFn,
    /// Runs on the caller's thread (the session's task): it reads and validates the file.
    pub reload: ReloadFn,
}

impl AdminContext {
    pub fn new(
        metrics: Arc<Metrics>,
        sessions: Arc<SessionRegistry>,
        conflicts: Arc<ConflictLog>,
        config: impl Fn() -> Arc<Config> + Send + Sync + 'static,
        reload: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) -> AdminContext {
        AdminContext {
            metrics,
            sessions,
            conflicts,
            config: Box::new(config),
            reload: Box::new(reload),
        }
    }
}

/// The commands, with what each answers, as `SHOW HELP` lists them.
const COMMANDS: &[(&str, &str)] = &[
    (
        "SHOW GUARDS",
        "guarded tables: key, version column, kind, unversioned and bulk policies",
    ),
    (
        "SHOW STATS",
        "sessions, statements, guarded writes per table and outcome, bytes, errors, added latency",
    ),
    (
        "SHOW SESSIONS",
        "live client sessions: user, database, application, address, state, counts",
    ),
    (
        "SHOW CONFLICTS",
        "the most recent optimistic-lock conflicts, newest first",
    ),
    (
        "SHOW CONFIG",
        "every configuration option: value in force and default",
    ),
    ("SHOW VERSION", "the optlock version"),
    ("SHOW HELP", "this list"),
    (
        "RELOAD",
        "re-read the config file (as SIGHUP does); sessions stay connected",
    ),
];

/// SQLSTATE of an unknown command: syntax_error.
const SQLSTATE_SYNTAX_ERROR: &str = "42601";
/// SQLSTATE of a failed reload: config_file_error.
const SQLSTATE_CONFIG_FILE_ERROR: &str = "F0000";

/// Runs the commands of one simple-`Query` string and returns the encoded responses, without
/// `ReadyForQuery`.
pub fn execute(query: &str, ctx: &AdminContext) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut ran = false;
    for part in query.split(';') {
        let words: Vec<String> = part
            .split_whitespace()
            .map(|w| w.to_ascii_uppercase())
            .collect();
        if words.is_empty() {
            continue;
        }
        ran = true;
        if run(&words.join(" "), part.trim(), ctx, &mut out).is_err() {
            break;
        }
    }
    if !ran {
        put(&mut out, &EmptyQueryResponse::new());
    }
    out.to_vec()
}

/// Runs one command; `Err` when it answered with an error (and the rest must not run).
fn run(command: &str, original: &str, ctx: &AdminContext, out: &mut BytesMut) -> Result<(), ()> {
    match command {
        "SHOW GUARDS" => show_guards(&(ctx.config)(), out),
        "SHOW STATS" => rows(
            out,
            &["metric", "value"],
            ctx.metrics
                .stats()
                .into_iter()
                .map(|(k, v)| vec![Some(k), Some(v)]),
        ),
        "SHOW SESSIONS" => show_sessions(&ctx.sessions, out),
        "SHOW CONFLICTS" => show_conflicts(&ctx.conflicts, out),
        "SHOW CONFIG" => rows(
            out,
            &["key", "value", "default"],
            config_rows(&(ctx.config)())
                .into_iter()
                .map(|(k, v, d)| vec![Some(k.to_string()), v, d]),
        ),
        "SHOW VERSION" => rows(
            out,
            &["version"],
            [vec![Some(format!("optlock {}", env!("CARGO_PKG_VERSION")))]],
        ),
        "SHOW HELP" | "HELP" => rows(
            out,
            &["command", "description"],
            COMMANDS
                .iter()
                .map(|(c, d)| vec![Some(c.to_string()), Some(d.to_string())]),
        ),
        "RELOAD" => match (ctx.reload)() {
            Ok(message) => {
                put(
                    out,
                    &NoticeResponse::new(vec![
                        (b'S', "NOTICE".into()),
                        (b'V', "NOTICE".into()),
                        (b'C', "00000".into()),
                        (b'M', message),
                    ]),
                );
                put(out, &CommandComplete::new("RELOAD".into()));
            }
            Err(reason) => {
                error(
                    out,
                    SQLSTATE_CONFIG_FILE_ERROR,
                    format!("reload failed, the previous config stays in force: {reason}"),
                    None,
                );
                return Err(());
            }
        },
        _ => {
            let list: Vec<&str> = COMMANDS.iter().map(|c| c.0).collect();
            error(
                out,
                SQLSTATE_SYNTAX_ERROR,
                format!(
                    "unknown command {original:?}: the optlock admin console answers {}",
                    list.join(", ")
                ),
                Some("SHOW HELP describes each command".into()),
            );
            return Err(());
        }
    }
    Ok(())
}

fn show_guards(config: &Config, out: &mut BytesMut) {
    rows(
        out,
        &[
            "table",
            "key",
            "version",
            "kind",
            "unversioned",
            "bulk",
            "mode",
            "scope",
        ],
        config.guards.iter().map(|g: &Guard| {
            vec![
                Some(g.table.to_string()),
                Some(
                    g.key
                        .iter()
                        .map(|k| quote_ident(k))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                Some(quote_ident(&g.version)),
                Some(g.kind.to_string()),
                Some(unversioned_str(g.unversioned).into()),
                Some(bulk_str(g.bulk).into()),
                Some(g.mode.as_str().into()),
                Some(crate::config::scope::scope_text(&g.scope)),
            ]
        }),
    );
}

fn show_sessions(sessions: &SessionRegistry, out: &mut BytesMut) {
    rows(
        out,
        &[
            "id",
            "user",
            "database",
            "application_name",
            "client_addr",
            "backend_pid",
            "state",
            "connected_at",
            "statements",
            "tracked_versions",
            "client_tls",
            "server_tls",
            "guards",
        ],
        sessions.snapshot().into_iter().map(|s| {
            vec![
                Some(s.id.to_string()),
                Some(s.user),
                Some(s.database),
                Some(s.application_name),
                Some(s.client_addr.to_string()),
                s.backend_pid.map(|p| p.to_string()),
                Some(s.state.as_str().into()),
                Some(format_utc(s.connected_at)),
                Some(s.statements.to_string()),
                Some(s.tracked_versions.to_string()),
                Some(s.client_tls.unwrap_or("off").into()),
                Some(s.server_tls.unwrap_or("off").into()),
                Some(s.guards),
            ]
        }),
    );
}

fn show_conflicts(conflicts: &ConflictLog, out: &mut BytesMut) {
    rows(
        out,
        &[
            "time",
            "table",
            "key",
            "expected",
            "found",
            "client_addr",
            "user",
            "application_name",
            "outcome",
            "reason",
        ],
        conflicts.recent().into_iter().map(|c| {
            vec![
                Some(format_utc(c.at)),
                Some(c.table),
                Some(c.key),
                Some(c.expected),
                c.found,
                Some(c.client_addr.to_string()),
                Some(c.user),
                Some(c.application_name),
                Some(c.outcome.as_str().into()),
                c.reason,
            ]
        }),
    );
}

fn unversioned_str(p: UnversionedPolicy) -> &'static str {
    match p {
        UnversionedPolicy::Allow => "allow",
        UnversionedPolicy::Reject => "reject",
    }
}

fn bulk_str(p: BulkPolicy) -> &'static str {
    match p {
        BulkPolicy::Bump => "bump",
        BulkPolicy::Reject => "reject",
    }
}

/// Every option of a config as (key, value, default) in config-file terms; `None` is unset.
///
/// Destructures [`Config`] whole, so an option added there does not compile until it is
/// listed here.
fn config_rows(config: &Config) -> Vec<(&'static str, Option<String>, Option<String>)> {
    fn values(c: &Config) -> Vec<(&'static str, Option<String>)> {
        let Config {
            listen,
            upstream,
            conflict_sqlstate,
            metrics_listen,
            admin_users,
            track,
            track_limit,
            tls,
            client_tls,
            upstream_tls,
            client_login_timeout,
            upstream_connect_timeout,
            shutdown_timeout,
            max_message_size,
            guards,
        } = c;
        let secs = |d: &Duration| Some(format!("{}", d.as_secs_f64()));
        let mut rows = vec![
            ("listen", Some(listen.clone())),
            ("upstream", Some(upstream.clone())),
            ("conflict_sqlstate", Some(conflict_sqlstate.clone())),
            ("metrics_listen", metrics_listen.clone()),
            ("admin_users", Some(admin_users.join(", "))),
            (
                "track",
                Some(
                    match track {
                        TrackScope::Session => "session",
                        TrackScope::Transaction => "transaction",
                    }
                    .into(),
                ),
            ),
            ("track_limit", Some(track_limit.to_string())),
        ];
        rows.extend(crate::config::tls::rows(tls, *client_tls, upstream_tls));
        rows.extend([
            ("client_login_timeout", secs(client_login_timeout)),
            ("upstream_connect_timeout", secs(upstream_connect_timeout)),
            ("shutdown_timeout", secs(shutdown_timeout)),
            ("max_message_size", Some(max_message_size.to_string())),
            ("guard", Some(format!("{} guarded tables", guards.len()))),
        ]);
        rows
    }
    let defaults = values(&Config::default());
    values(config)
        .into_iter()
        .zip(defaults)
        .map(|((k, v), (_, d))| (k, v, d))
        .collect()
}

/// Writes a RowDescription of text columns, the rows (`None` is NULL) and `SHOW`.
fn rows(out: &mut BytesMut, columns: &[&str], rows: impl IntoIterator<Item = Vec<Option<String>>>) {
    const TEXT_OID: u32 = 25;
    let fields = columns
        .iter()
        .map(|c| FieldDescription::new(c.to_string(), 0, 0, TEXT_OID, -1, -1, 0))
        .collect();
    put(out, &RowDescription::new(fields));
    for row in rows {
        debug_assert_eq!(row.len(), columns.len());
        let mut data = BytesMut::new();
        for value in &row {
            match value {
                Some(v) => {
                    data.put_i32(v.len() as i32);
                    data.put_slice(v.as_bytes());
                }
                None => data.put_i32(-1),
            }
        }
        put(out, &DataRow::new(data, row.len() as i16));
    }
    put(out, &CommandComplete::new("SHOW".into()));
}

fn error(out: &mut BytesMut, sqlstate: &str, message: String, hint: Option<String>) {
    let mut fields = vec![
        (b'S', "ERROR".to_string()),
        (b'V', "ERROR".to_string()),
        (b'C', sqlstate.to_string()),
        (b'M', message),
    ];
    if let Some(h) = hint {
        fields.push((b'H', h));
    }
    put(out, &ErrorResponse::new(fields));
}

/// Appends one encoded message. Encoding fails only past pgwire's size limits, which these
/// messages never reach; such a message would be left out whole rather than half written.
fn put(out: &mut BytesMut, msg: &impl Message) {
    let mut buf = BytesMut::new();
    if msg.encode(&mut buf).is_ok() {
        out.extend_from_slice(&buf);
    } else {
        debug_assert!(false, "an admin console message exceeds pgwire's limits");
    }
}

#[cfg(test)]
mod tests {
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
             max_message_size guard"
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
}
