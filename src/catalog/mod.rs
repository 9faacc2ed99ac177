//! The guards against a live database's catalog.
//!
//! - [`resolve`]: per session, the table OID, attribute numbers and types of each guard's key
//!   and version columns, so the relay can recognise them in RowDescription.
//! - [`derived`]: per session, the relations whose writes land in a guarded table (partitions,
//!   parents, views, rules).
//! - [`aggregates`]: per session, the names of the aggregate and window functions, which
//!   keep a read from being captured.
//! - [`check`]: `optlock check`, which tells whether each guard fits its table and prints the
//!   DDL (or config change) that fixes what does not.
//! - [`suggest`]: `optlock suggest`, ready `[[guard]]` stanzas for existing tables.
//! - `versions`: what a version column needs so its versions never repeat for a key.
//!
//! This module also holds the catalog reads `check` and `suggest` share.

pub mod aggregates;
pub mod check;
mod column;
pub mod derived;
pub mod resolve;
pub mod suggest;
mod versions;

pub(crate) use column::Column;

use anyhow::Context as _;
use tokio_postgres::{Client, NoTls};

use crate::config::VersionKind;
use crate::guard::values::oid;

/// Connects to `database_url` (URL or `key=value` form) without TLS and drives the connection
/// in the background.
pub async fn connect(database_url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(database_url, NoTls)
        .await
        .with_context(|| format!("cannot connect to {}", redact(database_url)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "catalog connection ended with an error");
        }
    });
    Ok(client)
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A unique index usable as a row identity (valid, not partial, no expressions).
#[derive(Debug, Clone)]
pub(crate) struct UniqueKey {
    pub attnums: Vec<i16>,
    pub primary: bool,
}

/// A table found in the catalog.
#[derive(Debug, Clone)]
pub(crate) struct TableInfo {
    pub oid: u32,
    pub relkind: char,
}

pub(crate) async fn find_table(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<Option<TableInfo>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT c.oid, c.relkind::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        )
        .await?;
    Ok(row.map(|r| TableInfo {
        oid: r.get(0),
        relkind: r.get::<_, String>(1).chars().next().unwrap_or('?'),
    }))
}

pub(crate) async fn columns(
    client: &Client,
    table_oid: u32,
) -> Result<Vec<Column>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                    coalesce(nullif(b.typbasetype, 0), nullif(t.typbasetype, 0), t.oid), \
                    a.attnotnull, a.atthasdef, a.attgenerated::text, a.attidentity::text, \
                    CASE WHEN a.atttypmod >= 0 THEN a.atttypmod ELSE t.typtypmod END, \
                    pg_catalog.pg_get_expr(d.adbin, d.adrelid), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_depend dep \
                      JOIN pg_catalog.pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S' \
                      WHERE dep.classid = 'pg_catalog.pg_attrdef'::regclass \
                        AND dep.objid = d.oid \
                        AND dep.refclassid = 'pg_catalog.pg_class'::regclass) \
                    AND pg_catalog.pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%' \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype \
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table_oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            attnum: r.get(1),
            type_name: r.get(2),
            base_type: r.get(3),
            not_null: r.get(4),
            has_default: r.get(5),
            generated: r.get(6),
            identity: r.get(7),
            typmod: r.get(8),
            default: r.get(9),
            default_sequence: r.get::<_, Option<bool>>(10).unwrap_or(false),
        })
        .collect())
}

pub(crate) async fn unique_keys(
    client: &Client,
    table_oid: u32,
) -> Result<Vec<UniqueKey>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT (i.indkey::int2[])[0:i.indnkeyatts - 1], i.indisprimary \
             FROM pg_catalog.pg_index i \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid \
               AND i.indpred IS NULL AND i.indexprs IS NULL \
             ORDER BY i.indisprimary DESC, i.indexrelid",
            &[&table_oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| UniqueKey {
            attnums: r.get(0),
            primary: r.get(1),
        })
        .collect())
}

/// Whether a column of base type `type_oid` can hold versions of `kind`.
pub fn type_fits(kind: VersionKind, type_oid: u32) -> bool {
    match kind {
        VersionKind::Counter => {
            matches!(type_oid, oid::INT2 | oid::INT4 | oid::INT8 | oid::NUMERIC)
        }
        VersionKind::Timestamp => matches!(type_oid, oid::TIMESTAMP | oid::TIMESTAMPTZ),
        VersionKind::Xmin => type_oid == oid::XID,
    }
}

/// What is wrong with a column as the version column of `kind`, if anything.
pub(crate) fn version_column_problem(kind: VersionKind, col: &Column) -> Option<String> {
    let problem = if !type_fits(kind, col.base_type) {
        "its type does not fit"
    } else if !col.generated.is_empty() {
        "it is a generated column"
    } else if col.identity == "a" {
        "it is an identity column (GENERATED ALWAYS)"
    } else if !col.not_null {
        "it is nullable"
    } else if !col.has_default && col.identity.is_empty() {
        "it has no default"
    } else {
        return versions::repeat_problem(kind, col);
    };
    Some(problem.to_string())
}

/// The default a new or fixed version column gets.
pub(crate) fn default_expr(kind: VersionKind) -> &'static str {
    match kind {
        VersionKind::Timestamp => "now()",
        _ => "0",
    }
}

/// A TOML basic string (double-quoted, escaped).
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `["a", "\"B\""]`: identifiers quoted for the config, as a TOML array.
pub(crate) fn toml_ident_list(names: &[String]) -> String {
    let items: Vec<String> = names
        .iter()
        .map(|n| toml_string(&crate::config::quote_ident(n)))
        .collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_parse_back() {
        let s = toml_ident_list(&["id".into(), "Line \"No\\".into()]);
        let v: toml::Value = toml::from_str(&format!("k = {s}")).unwrap();
        let items = v["k"].as_array().unwrap();
        assert_eq!(items[0].as_str(), Some("id"));
        assert_eq!(items[1].as_str(), Some("\"Line \"\"No\\\""));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact("host=h password=secret user=u"),
            "host=h password=*** user=u"
        );
    }
}
