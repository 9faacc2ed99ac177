//! Configuration: the TOML file, its defaults, and validation.
//!
//! A config is parsed into plain structs, then checked as a whole; every error names the file,
//! the line and the reason, so a bad file is refused at start-up and on reload with something a
//! DBA can act on. Identifiers (tables, key and version columns) follow PostgreSQL's rules:
//! unquoted names fold to lower case, double-quoted names keep their case and spaces.
//!
//! - [`tls`]: the TLS settings of both legs, and their checks.
//! - [`pool`]: session pooling and the proxy's own checking of logins.

pub mod pool;
pub mod scope;
pub mod tls;

use std::fmt::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use pool::{AuthType, PoolConfig, PoolMode};
pub use scope::{GuardMode, ScopeRule};

pub use self::tls::{ClientTlsMode, TlsConfig, UpstreamTls, UpstreamTlsMode};

/// A schema-qualified table name, already case-folded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_ident(f, &self.schema)?;
        f.write_char('.')?;
        write_ident(f, &self.name)
    }
}

/// Quotes an identifier the way PostgreSQL's `quote_ident` does: only when needed.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    let _ = write_ident(&mut out, name);
    out
}

/// Writes an identifier as [`quote_ident`] spells it, without allocating.
pub fn write_ident(out: &mut impl fmt::Write, name: &str) -> fmt::Result {
    let plain = name
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'$');
    if plain {
        return out.write_str(name);
    }
    out.write_char('"')?;
    for (i, part) in name.split('"').enumerate() {
        if i > 0 {
            out.write_str("\"\"")?;
        }
        out.write_str(part)?;
    }
    out.write_char('"')
}

/// How long a session remembers the versions it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackScope {
    /// Until the client connection ends (or `DISCARD ALL` / `RESET ALL`).
    Session,
    /// Until the end of each transaction.
    Transaction,
}

/// How the version column advances on a guarded write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionKind {
    /// An integer column, set to `version + 1`.
    Counter,
    /// A timestamp column, set to `clock_timestamp()` (strictly later than before).
    Timestamp,
    /// PostgreSQL's `xmin` system column: every update changes it, nothing to set.
    Xmin,
}

impl fmt::Display for VersionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VersionKind::Counter => "counter",
            VersionKind::Timestamp => "timestamp",
            VersionKind::Xmin => "xmin",
        })
    }
}

/// What to do with a keyed write whose expected version is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnversionedPolicy {
    /// Let it through; the version still advances.
    Allow,
    /// Refuse it with an error that says how to fix it.
    Reject,
}

/// What to do with a write that is not pinned to one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BulkPolicy {
    /// Let it through; the versions of every row it touches still advance.
    Bump,
    /// Refuse it.
    Reject,
}

/// One guarded table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub table: TableName,
    /// Key columns (folded), in config order.
    pub key: Vec<String>,
    /// Version column (folded); `xmin` for the system column.
    pub version: String,
    pub kind: VersionKind,
    pub unversioned: UnversionedPolicy,
    pub bulk: BulkPolicy,
    /// The mode of sessions no scope rule matches (and, in a session's guard set, the mode
    /// in force for that session).
    pub mode: GuardMode,
    /// Rules that pick another mode by `application_name` and user (first match).
    pub scope: Vec<ScopeRule>,
}

impl Guard {
    /// The mode this guard has for a session of `user` named `application`.
    pub fn mode_for(&self, application: &str, user: &str) -> GuardMode {
        scope::mode_for(self.mode, &self.scope, application, user)
    }

    /// True when writes of this guard are observed, not enforced.
    pub fn observes(&self) -> bool {
        self.mode == GuardMode::Observe
    }
}

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: String,
    pub upstream: String,
    pub conflict_sqlstate: String,
    pub metrics_listen: Option<String>,
    pub admin_users: Vec<String>,
    pub track: TrackScope,
    pub track_limit: usize,
    /// The certificate and key optlock presents to clients.
    pub tls: Option<TlsConfig>,
    pub client_tls: ClientTlsMode,
    pub upstream_tls: UpstreamTls,
    pub client_login_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_message_size: usize,
    /// Session pooling and proxy-side logins.
    pub pool: PoolConfig,
    pub guards: Vec<Guard>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
pub const DEFAULT_UPSTREAM: &str = "127.0.0.1:5432";

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.into(),
            upstream: DEFAULT_UPSTREAM.into(),
            conflict_sqlstate: "40001".into(),
            metrics_listen: None,
            admin_users: vec!["postgres".into()],
            track: TrackScope::Session,
            track_limit: 10_000,
            tls: None,
            client_tls: ClientTlsMode::default(),
            upstream_tls: UpstreamTls::default(),
            client_login_timeout: Duration::from_secs(15),
            upstream_connect_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
            max_message_size: 64 * 1024 * 1024,
            pool: PoolConfig::default(),
            guards: Vec::new(),
        }
    }
}

/// A config that could not be used: which file, where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    upstream: Option<Spanned<String>>,
    conflict_sqlstate: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    admin_users: Option<Vec<String>>,
    track: Option<TrackScope>,
    track_limit: Option<Spanned<i64>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    client_tls: Option<Spanned<ClientTlsMode>>,
    upstream_tls: Option<Spanned<UpstreamTlsMode>>,
    upstream_tls_ca_file: Option<Spanned<String>>,
    upstream_tls_cert: Option<Spanned<String>>,
    upstream_tls_key: Option<Spanned<String>>,
    client_login_timeout: Option<Spanned<f64>>,
    upstream_connect_timeout: Option<Spanned<f64>>,
    shutdown_timeout: Option<Spanned<f64>>,
    max_message_size: Option<Spanned<i64>>,
    pool_mode: Option<PoolMode>,
    default_pool_size: Option<Spanned<i64>>,
    max_client_conn: Option<Spanned<i64>>,
    server_idle_timeout: Option<Spanned<f64>>,
    server_lifetime: Option<Spanned<f64>>,
    query_wait_timeout: Option<Spanned<f64>>,
    server_reset_query: Option<String>,
    auth_type: Option<Spanned<AuthType>>,
    auth_file: Option<String>,
    auth_user: Option<String>,
    auth_query: Option<String>,
    auth_dbname: Option<String>,
    auth_query_timeout: Option<Spanned<f64>>,
    #[serde(default)]
    pool: Vec<Spanned<pool::RawPoolSize>>,
    #[serde(default)]
    guard: Vec<Spanned<RawGuard>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    table: Spanned<String>,
    key: Spanned<Vec<String>>,
    version: Option<Spanned<String>>,
    kind: Option<Spanned<VersionKind>>,
    unversioned: Option<UnversionedPolicy>,
    bulk: Option<BulkPolicy>,
    mode: Option<GuardMode>,
    #[serde(default)]
    scope: Vec<Spanned<scope::RawScopeRule>>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            reason: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let src = Source { text, file };
        let mut raw = src.read()?;
        let mut cfg = Config::default();
        cfg.apply_addresses(&mut raw, &src)?;
        cfg.apply_conflict_sqlstate(&mut raw, &src)?;
        cfg.apply_operator(&mut raw, &src)?;
        cfg.apply_tracking(&mut raw, &src)?;
        cfg.apply_tls(&mut raw, &src)?;
        cfg.apply_limits(&mut raw, &src)?;
        cfg.apply_pool(&mut raw, &src)?;
        cfg.apply_guards(raw.guard, &src)?;
        Ok(cfg)
    }

    /// `listen` and `upstream`: where clients connect and where the server is.
    fn apply_addresses(&mut self, raw: &mut RawConfig, src: &Source) -> Result<(), ConfigError> {
        if let Some(v) = raw.listen.take() {
            check_address(v.get_ref())
                .map_err(|r| src.error(Some(v.span()), format!("listen: {r}")))?;
            self.listen = v.into_inner();
        }
        if let Some(v) = raw.upstream.take() {
            check_upstream(v.get_ref())
                .map_err(|r| src.error(Some(v.span()), format!("upstream: {r}")))?;
            self.upstream = v.into_inner();
        }
        Ok(())
    }

    /// `conflict_sqlstate`: the SQLSTATE a conflict is reported with.
    fn apply_conflict_sqlstate(
        &mut self,
        raw: &mut RawConfig,
        src: &Source,
    ) -> Result<(), ConfigError> {
        if let Some(v) = raw.conflict_sqlstate.take() {
            let ok = v.get_ref().len() == 5
                && v.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
            if !ok {
                return Err(src.error(
                    Some(v.span()),
                    format!(
                        "conflict_sqlstate {:?} is not a SQLSTATE: five characters, digits or upper-case letters (default \"40001\")",
                        v.get_ref()
                    ),
                ));
            }
            self.conflict_sqlstate = v.into_inner();
        }
        Ok(())
    }

    /// `metrics_listen` and `admin_users`: what the operator reaches.
    fn apply_operator(&mut self, raw: &mut RawConfig, src: &Source) -> Result<(), ConfigError> {
        if let Some(v) = raw.metrics_listen.take() {
            check_address(v.get_ref())
                .map_err(|r| src.error(Some(v.span()), format!("metrics_listen: {r}")))?;
            self.metrics_listen = Some(v.into_inner());
        }
        if let Some(v) = raw.admin_users.take() {
            self.admin_users = v;
        }
        Ok(())
    }

    /// `track` and `track_limit`: how long a session remembers the versions it read, and how
    /// many rows.
    fn apply_tracking(&mut self, raw: &mut RawConfig, src: &Source) -> Result<(), ConfigError> {
        if let Some(v) = raw.track.take() {
            self.track = v;
        }
        if let Some(v) = raw.track_limit.take() {
            if *v.get_ref() < 1 {
                return Err(src.error(
                    Some(v.span()),
                    "track_limit must be at least 1 (default 10000)".into(),
                ));
            }
            self.track_limit = *v.get_ref() as usize;
        }
        Ok(())
    }

    /// The TLS settings of both legs (after `upstream`: a socket carries no TLS).
    fn apply_tls(&mut self, raw: &mut RawConfig, src: &Source) -> Result<(), ConfigError> {
        let fields = tls::RawTls {
            tls_cert: raw.tls_cert.take(),
            tls_key: raw.tls_key.take(),
            client_tls: raw.client_tls.take(),
            upstream_tls: raw.upstream_tls.take(),
            upstream_tls_ca_file: raw.upstream_tls_ca_file.take(),
            upstream_tls_cert: raw.upstream_tls_cert.take(),
            upstream_tls_key: raw.upstream_tls_key.take(),
        };
        let t = fields
            .build(&self.upstream)
            .map_err(|(span, reason)| src.error(span, reason))?;
        self.tls = t.client;
        self.client_tls = t.client_mode;
        self.upstream_tls = t.upstream;
        Ok(())
    }

    /// Checks the TLS settings again after `upstream` or a TLS mode was changed outside the
    /// file (command-line flags).
    pub fn check_tls(&self) -> Result<(), String> {
        tls::check_upstream(&self.upstream_tls, &self.upstream)?;
        tls::check_client(&tls::TlsSettings {
            client: self.tls.clone(),
            client_mode: self.client_tls,
            upstream: UpstreamTls::default(),
        })
    }

    /// The timeouts and `max_message_size`.
    fn apply_limits(&mut self, raw: &mut RawConfig, src: &Source) -> Result<(), ConfigError> {
        for (field, value, target) in [
            (
                "client_login_timeout",
                raw.client_login_timeout.take(),
                &mut self.client_login_timeout,
            ),
            (
                "upstream_connect_timeout",
                raw.upstream_connect_timeout.take(),
                &mut self.upstream_connect_timeout,
            ),
            (
                "shutdown_timeout",
                raw.shutdown_timeout.take(),
                &mut self.shutdown_timeout,
            ),
        ] {
            if let Some(v) = value {
                let secs = *v.get_ref();
                if !(secs > 0.0 && secs < 86_400.0 * 365.0) {
                    return Err(src.error(
                        Some(v.span()),
                        format!("{field} must be a positive number of seconds"),
                    ));
                }
                *target = Duration::from_secs_f64(secs);
            }
        }
        if let Some(v) = raw.max_message_size.take() {
            let n = *v.get_ref();
            if !(1024..=0x3fff_ffff).contains(&n) {
                return Err(src.error(
                    Some(v.span()),
                    "max_message_size must be between 1024 and 1073741823 bytes".into(),
                ));
            }
            self.max_message_size = n as usize;
        }
        Ok(())
    }

    /// `pool_mode`, the pool's limits and the proxy's logins (see [`pool`]).
    fn apply_pool(&mut self, raw: &mut RawConfig, src: &Source) -> Result<(), ConfigError> {
        let fields = pool::RawPool {
            pool_mode: raw.pool_mode.take(),
            default_pool_size: raw.default_pool_size.take(),
            max_client_conn: raw.max_client_conn.take(),
            server_idle_timeout: raw.server_idle_timeout.take(),
            server_lifetime: raw.server_lifetime.take(),
            query_wait_timeout: raw.query_wait_timeout.take(),
            server_reset_query: raw.server_reset_query.take(),
            auth_type: raw.auth_type.take(),
            auth_file: raw.auth_file.take(),
            auth_user: raw.auth_user.take(),
            auth_query: raw.auth_query.take(),
            auth_dbname: raw.auth_dbname.take(),
            auth_query_timeout: raw.auth_query_timeout.take(),
            sizes: std::mem::take(&mut raw.pool),
        };
        self.pool = fields.build().map_err(|(span, r)| src.error(span, r))?;
        Ok(())
    }

    /// The `[[guard]]` tables, each at most once.
    fn apply_guards(
        &mut self,
        guards: Vec<Spanned<RawGuard>>,
        src: &Source,
    ) -> Result<(), ConfigError> {
        for g in guards {
            let span = g.span();
            let g = g.into_inner();
            let guard =
                build_guard(g).map_err(|(s, r)| src.error(Some(s.unwrap_or(span.clone())), r))?;
            if let Some(prev) = self.guards.iter().find(|p| p.table == guard.table) {
                return Err(src.error(Some(span), format!("table {} is guarded twice", prev.table)));
            }
            self.guards.push(guard);
        }
        Ok(())
    }

    /// The guard of a table, if it is guarded.
    pub fn guard(&self, table: &TableName) -> Option<&Guard> {
        self.guards.iter().find(|g| &g.table == table)
    }
}

/// Config text being parsed, and the file it came from, for errors.
struct Source<'a> {
    text: &'a str,
    file: &'a str,
}

impl Source<'_> {
    /// An error at `span` (its line, when known), for `reason`.
    fn error(&self, span: Option<Range<usize>>, reason: String) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: span.map(|s| line_of(self.text, s.start)),
            reason,
        }
    }

    /// Reads the TOML into the raw settings; an error names the setting it is in.
    fn read(&self) -> Result<RawConfig, ConfigError> {
        toml::from_str(self.text).map_err(|e| {
            let mut reason = e.message().trim_end().replace('\n', "; ");
            // Name the setting: the message alone may only say what type was wrong.
            if let Some(line) = e.span().map(|s| line_text(self.text, s.start))
                && !line.is_empty()
            {
                reason = format!("{reason} (in `{line}`)");
            }
            self.error(e.span(), reason)
        })
    }
}

type SpanError = (Option<Range<usize>>, String);

fn build_guard(g: RawGuard) -> Result<Guard, SpanError> {
    let table_span = g.table.span();
    let table = parse_table_name(g.table.get_ref())
        .map_err(|r| (Some(table_span.clone()), format!("guard table: {r}")))?;
    let key_span = g.key.span();
    let mut key = Vec::new();
    for k in g.key.get_ref() {
        let col = parse_identifier(k)
            .map_err(|r| (Some(key_span.clone()), format!("guard {table}: key: {r}")))?;
        if key.contains(&col) {
            return Err((
                Some(key_span),
                format!("guard {table}: key column {col:?} is listed twice"),
            ));
        }
        key.push(col);
    }
    if key.is_empty() {
        return Err((
            Some(key_span),
            format!(
                "guard {table}: key must name at least one column (usually the primary key, e.g. key = [\"id\"])"
            ),
        ));
    }
    let (version, version_span) = match &g.version {
        Some(v) => (
            parse_identifier(v.get_ref())
                .map_err(|r| (Some(v.span()), format!("guard {table}: version: {r}")))?,
            Some(v.span()),
        ),
        None => ("version".to_string(), None),
    };
    let kind = match &g.kind {
        Some(k) => *k.get_ref(),
        None if version == "xmin" => VersionKind::Xmin,
        None => VersionKind::Counter,
    };
    let kind_span = g.kind.as_ref().map(|k| k.span()).or(version_span.clone());
    if (kind == VersionKind::Xmin) != (version == "xmin") {
        return Err((
            kind_span,
            format!(
                "guard {table}: kind = \"xmin\" goes with version = \"xmin\" and only with it (version {version:?}, kind \"{kind}\")"
            ),
        ));
    }
    if key.contains(&version) {
        return Err((
            version_span,
            format!("guard {table}: the version column {version:?} cannot also be a key column"),
        ));
    }
    let scope = scope::build_scope(&table.to_string(), g.scope)?;
    Ok(Guard {
        table,
        key,
        version,
        kind,
        unversioned: g.unversioned.unwrap_or(UnversionedPolicy::Allow),
        bulk: g.bulk.unwrap_or(BulkPolicy::Bump),
        mode: g.mode.unwrap_or(GuardMode::Enforce),
        scope,
    })
}

/// Where the upstream server listens: `host:port` over TCP, or a Unix-domain socket given by
/// an absolute path, either the socket file itself (`/var/run/postgresql/.s.PGSQL.5432`) or
/// the directory holding it, as libpq's `host=/var/run/postgresql` (port 5432 then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr<'a> {
    Tcp(&'a str),
    Unix(PathBuf),
}

/// PostgreSQL's socket file name for a port, as in its `unix_socket_directories`.
pub fn socket_file_name(port: u16) -> String {
    format!(".s.PGSQL.{port}")
}

impl<'a> UpstreamAddr<'a> {
    pub fn parse(addr: &'a str) -> UpstreamAddr<'a> {
        if !addr.starts_with('/') {
            return UpstreamAddr::Tcp(addr);
        }
        let path = std::path::Path::new(addr);
        let is_socket_file = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".s.PGSQL."));
        if is_socket_file {
            UpstreamAddr::Unix(path.to_path_buf())
        } else {
            UpstreamAddr::Unix(path.join(socket_file_name(5432)))
        }
    }
}

/// Checks an `upstream` value: `host:port` or an absolute socket path.
pub fn check_upstream(addr: &str) -> Result<(), String> {
    if addr.starts_with('/') {
        return Ok(());
    }
    check_address(addr).map_err(|_| {
        format!(
            "{addr:?} is not an address: write host:port (\"127.0.0.1:5432\") or the path of \
             the server's socket directory (\"/var/run/postgresql\")"
        )
    })
}

fn check_address(addr: &str) -> Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "{addr:?} is not an address: write host:port, e.g. \"127.0.0.1:6432\""
        )),
    }
}

/// The text of the line holding byte `offset`, trimmed.
fn line_text(text: &str, offset: usize) -> &str {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    text[start..end].trim()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Parses one identifier: unquoted folds to lower case, `"Quoted"` keeps its text.
pub fn parse_identifier(text: &str) -> Result<String, String> {
    let (ident, rest) = split_identifier(text.trim())?;
    if !rest.trim().is_empty() {
        return Err(format!("{text:?} is not a single identifier"));
    }
    Ok(ident)
}

/// Parses `schema.table` or `table` (schema `public`), with PostgreSQL's quoting and folding.
pub fn parse_table_name(text: &str) -> Result<TableName, String> {
    let (first, rest) = split_identifier(text.trim())?;
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Ok(TableName {
            schema: "public".into(),
            name: first,
        });
    }
    let Some(rest) = rest.strip_prefix('.') else {
        return Err(format!(
            "{text:?} is not a table name: write schema.table, e.g. \"public.invoice\" or 'public.\"tabSales Invoice\"'"
        ));
    };
    let (second, tail) = split_identifier(rest.trim_start())?;
    if !tail.trim().is_empty() {
        return Err(format!(
            "{text:?} is not a table name: write schema.table (two parts at most)"
        ));
    }
    Ok(TableName {
        schema: first,
        name: second,
    })
}

fn split_identifier(text: &str) -> Result<(String, &str), String> {
    if let Some(body) = text.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if body[i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                } else {
                    if out.is_empty() {
                        return Err("an identifier cannot be empty".into());
                    }
                    return Ok((out, &body[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        return Err(format!("{text:?}: unterminated quoted identifier"));
    }
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(text.len());
    let word = &text[..end];
    if word.is_empty() || word.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
        return Err(format!(
            "{text:?} is not an identifier (names with spaces or capitals need double quotes)"
        ));
    }
    Ok((word.to_lowercase(), &text[end..]))
}

#[cfg(test)]
mod tests;
