//! The pooling and proxy-side authentication settings: `pool_mode`, the pool's limits and
//! timeouts (PgBouncer's names and defaults), `server_reset_query`, and where the proxy finds
//! the secrets it checks logins against (`auth_type`, `auth_file`, `auth_user`, `auth_query`,
//! `auth_dbname`).

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Whether server connections outlive the clients that opened them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// One server connection per client, opened with its login and closed when it leaves; the
    /// server checks the login.
    #[default]
    None,
    /// A server connection is reset when its client leaves and kept for the next client of the
    /// same user, database and startup parameters; the proxy checks logins.
    Session,
}

/// How the proxy checks a login in pooled mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum AuthType {
    /// SCRAM-SHA-256 (the secret may be a SCRAM secret or a password).
    #[default]
    #[serde(rename = "scram-sha-256")]
    Scram,
    /// md5 (a SCRAM secret makes it SCRAM-SHA-256, as PostgreSQL does).
    #[serde(rename = "md5")]
    Md5,
    /// Every login is let in without a password (local use only).
    #[serde(rename = "trust")]
    Trust,
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthType::Scram => "scram-sha-256",
            AuthType::Md5 => "md5",
            AuthType::Trust => "trust",
        })
    }
}

/// PgBouncer's default `auth_query`.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1";

/// The pooling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    pub mode: PoolMode,
    /// Server connections per pool (one pool per user, database and startup parameters).
    pub default_pool_size: usize,
    /// Client connections the proxy serves at once in pooled mode.
    pub max_client_conn: usize,
    /// An idle server connection unused this long is closed.
    pub server_idle_timeout: Duration,
    /// A server connection this old is closed when its client leaves (or while idle).
    pub server_lifetime: Duration,
    /// How long a client waits for a server connection of a full pool before it is refused.
    pub query_wait_timeout: Duration,
    /// Run on a server connection when its client leaves (empty: none).
    pub server_reset_query: String,
    pub auth_type: AuthType,
    /// `"user" "password or secret"` lines, as PgBouncer's `auth_file`.
    pub auth_file: Option<PathBuf>,
    /// Runs `auth_query` for users the `auth_file` does not list.
    pub auth_user: Option<String>,
    pub auth_query: String,
    /// The database `auth_query` runs in (default: the client's).
    pub auth_dbname: Option<String>,
    /// How long the look-up of a user's secret with `auth_query` (the `auth_user` login
    /// included) may take before the client is refused.
    pub auth_query_timeout: Duration,
    /// `[[pool]]` entries: pool sizes of given databases (and users) in place of
    /// `default_pool_size`.
    pub sizes: Vec<PoolSize>,
}

/// A `[[pool]]` entry: the size of the pools of `database` (of `user` only, when given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSize {
    pub database: String,
    pub user: Option<String>,
    pub pool_size: usize,
}

impl PoolConfig {
    /// The size of the pool of `user` on `database`: the `[[pool]]` entry naming both, else
    /// the one naming the database alone, else `default_pool_size` (PgBouncer's order).
    pub fn pool_size(&self, database: &str, user: &str) -> usize {
        let entry = |u: Option<&str>| {
            self.sizes
                .iter()
                .find(|s| s.database == database && s.user.as_deref() == u)
        };
        entry(Some(user))
            .or_else(|| entry(None))
            .map_or(self.default_pool_size, |s| s.pool_size)
    }
}

/// A `[[pool]]` entry as read from the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoolSize {
    pub database: String,
    pub user: Option<String>,
    pub pool_size: Spanned<i64>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: PoolMode::None,
            default_pool_size: 20,
            max_client_conn: 100,
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
            query_wait_timeout: Duration::from_secs(120),
            server_reset_query: "DISCARD ALL".into(),
            auth_type: AuthType::Scram,
            auth_file: None,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_dbname: None,
            auth_query_timeout: Duration::from_secs(10),
            sizes: Vec::new(),
        }
    }
}

/// The pooling settings as read from the file.
#[derive(Default)]
pub struct RawPool {
    pub pool_mode: Option<PoolMode>,
    pub default_pool_size: Option<Spanned<i64>>,
    pub max_client_conn: Option<Spanned<i64>>,
    pub server_idle_timeout: Option<Spanned<f64>>,
    pub server_lifetime: Option<Spanned<f64>>,
    pub query_wait_timeout: Option<Spanned<f64>>,
    pub server_reset_query: Option<String>,
    pub auth_type: Option<Spanned<AuthType>>,
    pub auth_file: Option<String>,
    pub auth_user: Option<String>,
    pub auth_query: Option<String>,
    pub auth_dbname: Option<String>,
    pub auth_query_timeout: Option<Spanned<f64>>,
    pub sizes: Vec<Spanned<RawPoolSize>>,
}

type SpanError = (Option<Range<usize>>, String);

impl RawPool {
    /// Checks the settings; an error has the span of the setting at fault.
    pub fn build(self) -> Result<PoolConfig, SpanError> {
        let mut p = PoolConfig::default();
        if let Some(m) = self.pool_mode {
            p.mode = m;
        }
        for (field, value, target) in [
            (
                "default_pool_size",
                self.default_pool_size,
                &mut p.default_pool_size,
            ),
            (
                "max_client_conn",
                self.max_client_conn,
                &mut p.max_client_conn,
            ),
        ] {
            if let Some(v) = value {
                if !(1..=1_000_000).contains(v.get_ref()) {
                    return Err((
                        Some(v.span()),
                        format!("{field} must be at least 1 and at most 1000000"),
                    ));
                }
                *target = *v.get_ref() as usize;
            }
        }
        for (field, value, target) in [
            (
                "server_idle_timeout",
                self.server_idle_timeout,
                &mut p.server_idle_timeout,
            ),
            (
                "server_lifetime",
                self.server_lifetime,
                &mut p.server_lifetime,
            ),
            (
                "query_wait_timeout",
                self.query_wait_timeout,
                &mut p.query_wait_timeout,
            ),
            (
                "auth_query_timeout",
                self.auth_query_timeout,
                &mut p.auth_query_timeout,
            ),
        ] {
            if let Some(v) = value {
                let secs = *v.get_ref();
                if !(secs > 0.0 && secs < 86_400.0 * 365.0) {
                    return Err((
                        Some(v.span()),
                        format!("{field} must be a positive number of seconds"),
                    ));
                }
                *target = Duration::from_secs_f64(secs);
            }
        }
        for entry in self.sizes {
            let span = entry.span();
            let raw = entry.into_inner();
            let n = *raw.pool_size.get_ref();
            if !(1..=1_000_000).contains(&n) {
                return Err((
                    Some(raw.pool_size.span()),
                    "pool_size must be at least 1 and at most 1000000".into(),
                ));
            }
            if p.mode == PoolMode::None {
                return Err((
                    Some(span),
                    "[[pool]] sizes apply to pool_mode = \"session\" only".into(),
                ));
            }
            if p.sizes
                .iter()
                .any(|s| s.database == raw.database && s.user == raw.user)
            {
                return Err((
                    Some(span),
                    format!(
                        "a second [[pool]] entry for database \"{}\"{}",
                        raw.database,
                        raw.user
                            .as_deref()
                            .map(|u| format!(" and user \"{u}\""))
                            .unwrap_or_default()
                    ),
                ));
            }
            p.sizes.push(PoolSize {
                database: raw.database,
                user: raw.user,
                pool_size: n as usize,
            });
        }
        if let Some(q) = self.server_reset_query {
            p.server_reset_query = q;
        }
        if let Some(q) = self.auth_query {
            p.auth_query = q;
        }
        p.auth_file = self.auth_file.map(PathBuf::from);
        p.auth_user = self.auth_user;
        p.auth_dbname = self.auth_dbname;
        if let Some(t) = self.auth_type {
            let span = t.span();
            p.auth_type = t.into_inner();
            if p.mode == PoolMode::None {
                return Err((
                    Some(span),
                    "auth_type applies to pool_mode = \"session\" only: with pool_mode = \
                     \"none\" the server checks every login itself"
                        .into(),
                ));
            }
        }
        if p.mode == PoolMode::Session
            && p.auth_type != AuthType::Trust
            && p.auth_file.is_none()
            && p.auth_user.is_none()
        {
            return Err((
                None,
                format!(
                    "pool_mode = \"session\" with auth_type = \"{}\" needs the users' secrets: \
                     set auth_user (secrets read with auth_query) or auth_file, or \
                     auth_type = \"trust\" for local use",
                    p.auth_type
                ),
            ));
        }
        Ok(p)
    }
}

/// The pooling settings as `SHOW CONFIG` rows (key, value; `None` is unset).
pub fn rows(p: &PoolConfig) -> Vec<(&'static str, Option<String>)> {
    let secs = |d: &Duration| Some(format!("{}", d.as_secs_f64()));
    vec![
        (
            "pool_mode",
            Some(
                match p.mode {
                    PoolMode::None => "none",
                    PoolMode::Session => "session",
                }
                .into(),
            ),
        ),
        ("default_pool_size", Some(p.default_pool_size.to_string())),
        ("max_client_conn", Some(p.max_client_conn.to_string())),
        ("server_idle_timeout", secs(&p.server_idle_timeout)),
        ("server_lifetime", secs(&p.server_lifetime)),
        ("query_wait_timeout", secs(&p.query_wait_timeout)),
        ("server_reset_query", Some(p.server_reset_query.clone())),
        ("auth_type", Some(p.auth_type.to_string())),
        (
            "auth_file",
            p.auth_file.as_ref().map(|f| f.display().to_string()),
        ),
        ("auth_user", p.auth_user.clone()),
        ("auth_query", Some(p.auth_query.clone())),
        ("auth_dbname", p.auth_dbname.clone()),
        ("auth_query_timeout", secs(&p.auth_query_timeout)),
        (
            "pool",
            (!p.sizes.is_empty()).then(|| {
                p.sizes
                    .iter()
                    .map(|s| match &s.user {
                        Some(u) => format!("{}/{u}={}", s.database, s.pool_size),
                        None => format!("{}={}", s.database, s.pool_size),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The shipped example config shows each pooling option with its default.
    #[test]
    fn the_example_config_shows_the_defaults() {
        let text = include_str!("../../config/optlock.toml");
        let cfg = Config::parse(text, "config/optlock.toml").expect("the example config parses");
        assert_eq!(cfg.pool, PoolConfig::default());
    }

    #[test]
    fn pool_sizes_per_database_and_user() {
        let c = Config::parse(
            "pool_mode = \"session\"\nauth_type = \"trust\"\ndefault_pool_size = 5\n\
             [[pool]]\ndatabase = \"erp\"\npool_size = 30\n\
             [[pool]]\ndatabase = \"erp\"\nuser = \"report\"\npool_size = 2\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.pool.pool_size("erp", "app"), 30);
        assert_eq!(c.pool.pool_size("erp", "report"), 2);
        assert_eq!(c.pool.pool_size("shop", "report"), 5);
        let e = Config::parse(
            "pool_mode = \"session\"\nauth_type = \"trust\"\n\
             [[pool]]\ndatabase = \"erp\"\npool_size = 3\n\
             [[pool]]\ndatabase = \"erp\"\npool_size = 4\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(e.reason.contains("a second [[pool]] entry"), "{e}");
        let e =
            Config::parse("[[pool]]\ndatabase = \"erp\"\npool_size = 3\n", "t.toml").unwrap_err();
        assert!(e.reason.contains("pool_mode"), "{e}");
        let e = Config::parse(
            "pool_mode = \"session\"\nauth_type = \"trust\"\n\
             [[pool]]\ndatabase = \"erp\"\npool_size = 0\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(e.reason.contains("pool_size must be at least 1"), "{e}");
    }

    #[test]
    fn pooling_needs_a_source_of_secrets() {
        let e = Config::parse("pool_mode = \"session\"", "t.toml").unwrap_err();
        assert!(e.reason.contains("auth_user"), "{e}");
        let e = Config::parse("auth_type = \"md5\"", "t.toml").unwrap_err();
        assert!(e.reason.contains("pool_mode"), "{e}");
        let c = Config::parse("pool_mode = \"session\"\nauth_type = \"trust\"", "t.toml").unwrap();
        assert_eq!(c.pool.mode, PoolMode::Session);
    }
}
