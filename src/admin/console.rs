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
use crate::relay::pool::Pools;

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
    /// The server connection pools (`SHOW POOLS`), when the console runs in a proxy.
    pub pools: Option<Arc<Pools>>,
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
            pools: None,
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
        "SHOW REPORT",
        "per table and application: guarded writes, conflicts, observed, refused, unversioned, bulk",
    ),
    (
        "SHOW CONFIG",
        "every configuration option: value in force and default",
    ),
    (
        "SHOW POOLS",
        "server connection pools (pool_mode = \"session\"): clients active and waiting, server connections active and idle, longest wait",
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
        "SHOW REPORT" => {
            let (columns, lines) = super::report::table(ctx.sessions.report());
            rows(out, &columns, lines)
        }
        "SHOW CONFIG" => rows(
            out,
            &["key", "value", "default"],
            config_rows(&(ctx.config)())
                .into_iter()
                .map(|(k, v, d)| vec![Some(k.to_string()), v, d]),
        ),
        "SHOW POOLS" => show_pools(ctx.pools.as_deref(), out),
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

/// One row per database and user with pooled server connections (none without pooling).
fn show_pools(pools: Option<&Pools>, out: &mut BytesMut) {
    let list = pools.map(Pools::rows).unwrap_or_default();
    rows(
        out,
        &[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "sv_active",
            "sv_idle",
            "maxwait",
            "pool_size",
        ],
        list.into_iter().map(|r| {
            vec![
                Some(r.database),
                Some(r.user),
                Some(r.cl_active.to_string()),
                Some(r.cl_waiting.to_string()),
                Some(r.sv_active.to_string()),
                Some(r.sv_idle.to_string()),
                Some(format!("{:.3}", r.maxwait.as_secs_f64())),
                Some(r.pool_size.to_string()),
            ]
        }),
    );
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
            pool,
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
        ]);
        rows.extend(crate::config::pool::rows(pool));
        rows.extend([("guard", Some(format!("{} guarded tables", guards.len())))]);
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
mod tests;
