//! `optlock suggest`: ready `[[guard]]` stanzas for the tables of a database.
//!
//! Each table with a primary key gets a stanza keyed on it. The version column is an existing
//! one with a conventional name (`version`, `lock_version`, `modified`, `updated_at`, ...)
//! when it would pass `optlock check` (type fits a kind, NOT NULL, has a default that never
//! repeats, with the DDL that gives it one in a comment when it lacks it); otherwise
//! `xmin`, which needs no schema change. Tables without a primary key, and candidate columns
//! that were passed over, are explained in comments.

use tokio_postgres::Client;

use super::versions::{repeat_fix, repeat_problem};
use super::{
    Column, columns, toml_ident_list, toml_string, type_fits, unique_keys, version_column_problem,
};
use crate::config::{TableName, VersionKind, parse_identifier, parse_table_name, quote_ident};

/// Version column names tried, best first (compared case-insensitively).
pub const VERSION_CANDIDATES: &[&str] = &[
    "version",
    "lock_version",
    "row_version",
    "rowversion",
    "record_version",
    "optlock",
    "modified",
    "updated",
    "updated_at",
    "last_modified",
    "last_modified_at",
    "modified_at",
    "last_updated",
    "last_update",
    "updated_on",
    "modified_on",
    "date_modified",
];

/// Stanzas for the tables of `schema` (every user schema when `None`), restricted to `tables`
/// when it is not empty (`name` matches in any schema, `schema.name` exactly).
pub async fn suggest(
    client: &Client,
    schema: Option<&str>,
    tables: &[String],
) -> Result<String, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.oid \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
               AND ($1::text IS NULL OR n.nspname = $1::text) \
             ORDER BY 1, 2",
            &[&schema],
        )
        .await?;
    let wanted: Vec<(String, Option<TableName>)> = tables
        .iter()
        .map(|t| match parse_identifier(t) {
            Ok(name) => (
                t.clone(),
                Some(TableName {
                    schema: String::new(),
                    name,
                }),
            ),
            Err(_) => (t.clone(), parse_table_name(t).ok()),
        })
        .collect();
    let matches = |tn: &TableName| -> bool {
        wanted.is_empty()
            || wanted.iter().any(|(_, w)| {
                w.as_ref().is_some_and(|w| {
                    w.name == tn.name && (w.schema.is_empty() || w.schema == tn.schema)
                })
            })
    };

    let mut out = String::from(
        "# [[guard]] stanzas suggested by optlock suggest: review them, then add them to the config.\n",
    );
    let mut seen: Vec<TableName> = Vec::new();
    for row in &rows {
        let table = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        if !matches(&table) {
            continue;
        }
        let oid: u32 = row.get(2);
        out.push('\n');
        out.push_str(&stanza(client, &table, oid).await?);
        seen.push(table);
    }
    for (text, w) in &wanted {
        let found = w.as_ref().is_some_and(|w| {
            seen.iter()
                .any(|t| w.name == t.name && (w.schema.is_empty() || w.schema == t.schema))
        });
        if !found {
            out.push_str(&format!(
                "\n# {}: skipped, no such table{}\n",
                text.replace('\n', " "),
                schema
                    .map(|s| format!(" in schema {}", quote_ident(s)))
                    .unwrap_or_default()
            ));
        }
    }
    if seen.is_empty() && wanted.is_empty() {
        out.push_str("\n# no tables found\n");
    }
    Ok(out)
}

async fn stanza(
    client: &Client,
    table: &TableName,
    oid: u32,
) -> Result<String, tokio_postgres::Error> {
    let Some(pk) = unique_keys(client, oid)
        .await?
        .into_iter()
        .find(|u| u.primary)
    else {
        return Ok(format!(
            "# {table}: skipped, no primary key (add one, or write a guard by hand on a unique key)\n"
        ));
    };
    let cols = columns(client, oid).await?;
    let key: Vec<String> = pk
        .attnums
        .iter()
        .filter_map(|a| cols.iter().find(|c| c.attnum == *a).map(|c| c.name.clone()))
        .collect();
    let (chosen, notes) = choose_version(table, &cols, &pk.attnums);
    let mut s = String::new();
    let (version, kind, about) = match chosen {
        Some((col, kind)) => (
            col.name.as_str(),
            kind,
            format!(
                "{kind} column {} ({})",
                quote_ident(&col.name),
                col.type_name
            ),
        ),
        None => (
            "xmin",
            VersionKind::Xmin,
            "no version column found: xmin (the system column, no schema change)".to_string(),
        ),
    };
    s.push_str(&format!("# {table}: {about}\n"));
    for n in notes {
        s.push_str(&n);
    }
    s.push_str("[[guard]]\n");
    s.push_str(&format!("table = {}\n", toml_string(&table.to_string())));
    s.push_str(&format!("key = {}\n", toml_ident_list(&key)));
    s.push_str(&format!(
        "version = {}\n",
        toml_string(&quote_ident(version))
    ));
    s.push_str(&format!("kind = \"{kind}\"\n"));
    Ok(s)
}

/// The first of [`VERSION_CANDIDATES`] (not a key column) that fits a version kind with no
/// problem, and a note for each candidate passed over (with the fix when one makes it fit).
fn choose_version<'c>(
    table: &TableName,
    cols: &'c [Column],
    key_attnums: &[i16],
) -> (Option<(&'c Column, VersionKind)>, Vec<String>) {
    let mut notes = Vec::new();
    let mut chosen: Option<(&Column, VersionKind)> = None;
    for cand in VERSION_CANDIDATES {
        let Some(col) = cols
            .iter()
            .find(|c| c.name.to_lowercase() == *cand && !key_attnums.contains(&c.attnum))
        else {
            continue;
        };
        let kind = [VersionKind::Counter, VersionKind::Timestamp]
            .into_iter()
            .find(|k| type_fits(*k, col.base_type));
        let problem = match kind {
            None => Some(format!("its type {} fits no version kind", col.type_name)),
            Some(k) => version_column_problem(k, col),
        };
        match (problem, kind) {
            (None, Some(k)) => {
                chosen = Some((col, k));
                break;
            }
            (Some(p), _) => {
                notes.push(format!(
                    "# column {} not used as the version: {p}\n",
                    quote_ident(&col.name)
                ));
                if let Some(k) = kind
                    && repeat_problem(k, col).is_some()
                {
                    notes.push(format!(
                        "#   to use it, run: {}\n",
                        repeat_fix(table, k, col)
                    ));
                }
            }
            (None, None) => {}
        }
    }
    (chosen, notes)
}

/// `optlock suggest`: prints the stanzas for `database_url` to stdout.
pub async fn run_suggest(
    database_url: &str,
    schema: Option<&str>,
    tables: &[String],
) -> anyhow::Result<()> {
    let client = super::connect(database_url).await?;
    print!("{}", suggest(&client, schema, tables).await?);
    Ok(())
}
