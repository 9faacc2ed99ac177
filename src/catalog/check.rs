//! `optlock check`: every guard against the live catalog, with the fix for what is wrong.
//!
//! For each guard: the table exists and is a table; the key columns exist and are exactly a
//! primary key or a unique constraint or index (valid, not partial, no expressions); the
//! version column exists, has a type that fits the kind, is NOT NULL and has a default (plain
//! INSERTs leave it to the default) that never repeats for a key (a counter's drawn from a
//! sequence; a timestamp's the clock, at full precision: see `versions`); `xmin` always fits
//! (a row inserted again gets a new transaction id). Each problem is one [`Finding`] with
//! the DDL or config change that fixes it; a guard without problems gets one `ok` finding.

use std::path::Path;

use serde::Serialize;
use tokio_postgres::Client;

use super::versions::{repeat_fix, repeat_problem, sequence_default};
use super::{
    Column, UniqueKey, columns, default_expr, find_table, toml_ident_list, type_fits, unique_keys,
};
use crate::config::{Config, Guard, VersionKind, quote_ident};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Error,
}

/// One result of the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The guard's table, as written by `TableName`'s Display (`public."tabSales Invoice"`).
    pub table: String,
    pub severity: Severity,
    pub message: String,
    /// SQL that fixes the problem, when a schema change does.
    pub ddl: Option<String>,
    /// A change to the guard's config stanza that fixes it instead (e.g. `kind = "timestamp"`).
    pub config: Option<String>,
}

impl Finding {
    fn error(guard: &Guard, message: String) -> Finding {
        Finding {
            table: guard.table.to_string(),
            severity: Severity::Error,
            message,
            ddl: None,
            config: None,
        }
    }

    fn ddl(mut self, ddl: String) -> Finding {
        self.ddl = Some(ddl);
        self
    }

    fn config(mut self, config: String) -> Finding {
        self.config = Some(config);
        self
    }
}

/// Checks every guard; findings in guard order.
pub async fn check(guards: &[Guard], client: &Client) -> Vec<Finding> {
    let mut out = Vec::new();
    for guard in guards {
        match check_guard(guard, client).await {
            Ok(findings) => out.extend(findings),
            Err(e) => {
                out.push(Finding::error(
                    guard,
                    format!("cannot read the catalog: {e}"),
                ));
            }
        }
    }
    out
}

/// True when no finding is an error.
pub fn all_ok(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.severity == Severity::Ok)
}

async fn check_guard(
    guard: &Guard,
    client: &Client,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let t = &guard.table;
    let mut out = Vec::new();
    let Some(table) = find_table(client, &t.schema, &t.name).await? else {
        let schema_exists = client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1",
                &[&t.schema],
            )
            .await?
            .is_some();
        let where_ = if schema_exists {
            format!("in schema {}", quote_ident(&t.schema))
        } else {
            format!("(schema {} does not exist either)", quote_ident(&t.schema))
        };
        out.push(Finding::error(
            guard,
            format!(
                "table {t} does not exist {where_}: correct the guard's table (names are case-folded unless double-quoted) or create the table"
            ),
        ));
        return Ok(out);
    };
    if !matches!(table.relkind, 'r' | 'p') {
        let what = match table.relkind {
            'v' => "a view",
            'm' => "a materialized view",
            'f' => "a foreign table",
            _ => "not a table",
        };
        out.push(Finding::error(
            guard,
            format!("{t} is {what}: guard the table its rows live in"),
        ));
        return Ok(out);
    }
    let cols = columns(client, table.oid).await?;
    let uniques = unique_keys(client, table.oid).await?;
    let key_note = check_key(guard, &cols, &uniques, &mut out);
    let version_note = check_version(guard, &cols, &mut out);
    if out.is_empty() {
        out.push(Finding {
            table: t.to_string(),
            severity: Severity::Ok,
            message: format!("{key_note}; {version_note}"),
            ddl: None,
            config: None,
        });
    }
    Ok(out)
}

/// The guard's key: its columns exist and are exactly the primary key or a unique key. Returns
/// what the `ok` finding says of it.
fn check_key(
    guard: &Guard,
    cols: &[Column],
    uniques: &[UniqueKey],
    out: &mut Vec<Finding>,
) -> String {
    let t = &guard.table;
    let mut key_attnums = Vec::new();
    for k in &guard.key {
        match cols.iter().find(|c| c.name == *k) {
            Some(c) => key_attnums.push(c.attnum),
            None => out.push(Finding::error(
                guard,
                format!("key column {} does not exist in {t}", quote_ident(k)),
            )),
        }
    }
    let names = |attnums: &[i16]| -> Vec<String> {
        attnums
            .iter()
            .map(|a| {
                cols.iter()
                    .find(|c| c.attnum == *a)
                    .map(|c| c.name.clone())
                    .unwrap_or_else(|| a.to_string())
            })
            .collect()
    };
    let pk_config = || {
        uniques
            .iter()
            .find(|u| u.primary)
            .map(|pk| format!("key = {}", toml_ident_list(&names(&pk.attnums))))
    };
    if key_attnums.len() != guard.key.len() {
        if let Some(config) = pk_config()
            && let Some(last) = out.last_mut()
        {
            last.config = Some(config);
        }
        return String::new();
    }
    let key_list = guard
        .key
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ");
    key_attnums.sort_unstable();
    let found = uniques.iter().find(|u| {
        let mut s = u.attnums.clone();
        s.sort_unstable();
        s == key_attnums
    });
    match found {
        Some(u) => format!(
            "key ({key_list}) is {}",
            if u.primary {
                "the primary key"
            } else {
                "unique"
            }
        ),
        None => {
            let mut f = Finding::error(
                guard,
                format!(
                    "key ({key_list}) is neither the primary key nor a unique constraint of {t}: one key value could name several rows"
                ),
            )
            .ddl(format!("ALTER TABLE {t} ADD UNIQUE ({key_list});"));
            if let Some(config) = pk_config() {
                f = f.config(config);
            }
            out.push(f);
            String::new()
        }
    }
}

/// The guard's version column (or `xmin`). Returns what the `ok` finding says of it.
fn check_version(guard: &Guard, cols: &[Column], out: &mut Vec<Finding>) -> String {
    let t = &guard.table;
    let v = &guard.version;
    let vq = quote_ident(v);
    if guard.kind == VersionKind::Xmin {
        return "version is the system column xmin".to_string();
    }
    let Some(c) = cols.iter().find(|c| c.name == *v) else {
        // bigserial: a sequence owned by the column, drawn for existing rows too.
        let column = match guard.kind {
            VersionKind::Timestamp => "timestamptz NOT NULL DEFAULT now()",
            _ => "bigserial",
        };
        out.push(
            Finding::error(guard, format!("version column {vq} does not exist in {t}"))
                .ddl(format!("ALTER TABLE {t} ADD COLUMN {vq} {column};"))
                .config("version = \"xmin\"  # or use the system column: no schema change".into()),
        );
        return String::new();
    };
    let before = out.len();
    check_version_column(guard, c, out);
    if out.len() == before {
        format!(
            "version column {vq} ({}) fits kind \"{}\"",
            c.type_name, guard.kind
        )
    } else {
        String::new()
    }
}

/// The version column's type, generation, nullability, default and repeats.
fn check_version_column(guard: &Guard, c: &Column, out: &mut Vec<Finding>) {
    let t = &guard.table;
    let vq = quote_ident(&c.name);
    let mut kind = guard.kind;
    if !type_fits(kind, c.base_type) {
        match type_mismatch(guard, c, out) {
            // The remaining checks apply to the kind the column fits.
            Some(k) => kind = k,
            None => return,
        }
    }
    if !c.generated.is_empty() {
        out.push(
            Finding::error(
                guard,
                format!("version column {vq} is a generated column: its value cannot be set"),
            )
            .config("version = \"xmin\"".into()),
        );
        return;
    }
    if c.identity == "a" {
        out.push(
            Finding::error(
                guard,
                format!(
                    "version column {vq} is GENERATED ALWAYS AS IDENTITY: an UPDATE cannot set it"
                ),
            )
            .ddl(format!(
                "ALTER TABLE {t} ALTER COLUMN {vq} SET GENERATED BY DEFAULT;"
            )),
        );
    }
    if !c.not_null {
        out.push(
            Finding::error(
                guard,
                format!(
                    "version column {vq} is nullable: a NULL version never matches, every write to such a row would conflict"
                ),
            )
            .ddl(format!(
                "UPDATE {t} SET {vq} = {} WHERE {vq} IS NULL; ALTER TABLE {t} ALTER COLUMN {vq} SET NOT NULL;",
                default_expr(kind)
            )),
        );
    }
    if !c.has_default && c.identity.is_empty() {
        let ddl = match kind {
            VersionKind::Timestamp => format!(
                "ALTER TABLE {t} ALTER COLUMN {vq} SET DEFAULT {};",
                default_expr(kind)
            ),
            _ => sequence_default(t, &c.name),
        };
        out.push(
            Finding::error(
                guard,
                format!(
                    "version column {vq} has no default: an INSERT that does not set it leaves it NULL or fails"
                ),
            )
            .ddl(ddl),
        );
    }
    if let Some(problem) = repeat_problem(kind, c) {
        out.push(
            Finding::error(guard, format!("version column {vq}: {problem}"))
                .ddl(repeat_fix(t, kind, c)),
        );
    }
}

/// The version column's type does not fit the guard's kind: a finding with the fix, and the
/// other kind the column fits, if one does.
fn type_mismatch(guard: &Guard, c: &Column, out: &mut Vec<Finding>) -> Option<VersionKind> {
    let t = &guard.table;
    let vq = quote_ident(&c.name);
    let kind = guard.kind;
    let other = [VersionKind::Counter, VersionKind::Timestamp]
        .into_iter()
        .find(|k| *k != kind && type_fits(*k, c.base_type));
    let fits = match kind {
        VersionKind::Timestamp => "timestamp or timestamptz",
        _ => "smallint, integer, bigint or numeric",
    };
    let f = Finding::error(
        guard,
        format!(
            "version column {vq} is {}, which does not fit kind \"{kind}\" (needs {fits})",
            c.type_name
        ),
    );
    let f = match other {
        Some(k) => f.config(format!("kind = \"{k}\"")),
        None => {
            let ty = match kind {
                VersionKind::Timestamp => "timestamptz",
                _ => "bigint",
            };
            let mut ddl = format!(
                "ALTER TABLE {t} ALTER COLUMN {vq} DROP DEFAULT, \
                 ALTER COLUMN {vq} TYPE {ty} USING {vq}::{ty}"
            );
            match kind {
                VersionKind::Timestamp => ddl.push_str(&format!(
                    ", ALTER COLUMN {vq} SET DEFAULT {};",
                    default_expr(kind)
                )),
                _ => {
                    ddl.push_str("; ");
                    ddl.push_str(&sequence_default(t, &c.name));
                }
            }
            f.ddl(ddl)
        }
    };
    out.push(f);
    other
}

/// One line per finding: `ok`/`error`, table, message, then the fix.
pub fn render_human(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let sev = match f.severity {
            Severity::Ok => "ok   ",
            Severity::Error => "error",
        };
        out.push_str(&format!("{sev} {}: {}", f.table, f.message));
        match (&f.ddl, &f.config) {
            (Some(ddl), Some(cfg)) => {
                out.push_str(&format!(" -- fix: {ddl} -- or in the config: {cfg}"))
            }
            (Some(ddl), None) => out.push_str(&format!(" -- fix: {ddl}")),
            (None, Some(cfg)) => out.push_str(&format!(" -- fix in the config: {cfg}")),
            (None, None) => {}
        }
        out.push('\n');
    }
    if findings.is_empty() {
        out.push_str("no guards configured\n");
    }
    out
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    findings: &'a [Finding],
}

/// `{"ok": bool, "findings": [...]}`.
pub fn render_json(findings: &[Finding]) -> String {
    serde_json::to_string_pretty(&Report {
        ok: all_ok(findings),
        findings,
    })
    .expect("findings serialize")
}

/// `optlock check`: loads the config, checks it against `database_url`, prints the findings
/// (human or JSON) to stdout. Returns whether every guard is ok.
pub async fn run_check(config_path: &Path, database_url: &str, json: bool) -> anyhow::Result<bool> {
    let config = Config::load(config_path)?;
    let client = super::connect(database_url).await?;
    let findings = check(&config.guards, &client).await;
    if json {
        println!("{}", render_json(&findings));
    } else {
        print!("{}", render_human(&findings));
    }
    Ok(all_ok(&findings))
}
