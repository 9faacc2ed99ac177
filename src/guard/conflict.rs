//! The conflict error and the proxy's own refusals, as the client sees them.
//!
//! A conflict must behave like an error raised by PostgreSQL itself (aborted transaction,
//! nothing after it in the batch runs), so the server raises it, one of two ways:
//! - a keyed write's own version check fails the statement when it finds its row at another
//!   version (see [`crate::guard::rewrite::CONFLICT_MARKER`]); [`found_in_error`] reads the
//!   version from that error and [`conflict_fields`] makes the conflict error the client gets;
//! - after a guarded write that carried an expected version reports 0 rows, the relay sends
//!   [`raise_block`] on the same connection. Its `RAISE` reads the row's current version and
//!   fails with the conflict message, the configured SQLSTATE and the schema, table and
//!   constraint (`optlock`) fields. The relay removes the [`HIDDEN_FIELDS`] from the server's
//!   ErrorResponse before the client sees it.
//!
//! Statements the proxy refuses itself (fail closed, `unversioned = "reject"`,
//! `bulk = "reject"`) get an ErrorResponse built here by [`refusal_fields`] (the relay raises them on the server too, so they abort like any error).

use crate::config::{Guard, TableName, quote_ident, write_ident};
use crate::guard::values::quote_literal;
use crate::protocol::backend;

/// The constraint name carried by every error of the proxy.
pub const CONSTRAINT: &str = "optlock";

/// What the conflict error says about the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictInfo {
    pub table: TableName,
    /// Key column names (folded, unquoted), in the guard's key order.
    pub key_columns: Vec<String>,
    /// The key values of the row (canonical text), when the write named one row.
    pub key_values: Option<Vec<String>>,
    /// The version the write expected (canonical text).
    pub expected: String,
    /// The version column (folded, unquoted); `xmin` for the system column.
    pub version_column: String,
}

impl ConflictInfo {
    /// The row of `guard` with these key values (canonical text, when known) and the version
    /// a write expected of it.
    pub fn of(guard: &Guard, key_values: Option<Vec<String>>, expected: String) -> ConflictInfo {
        ConflictInfo {
            table: guard.table.clone(),
            key_columns: guard.key.clone(),
            key_values,
            expected,
            version_column: guard.version.clone(),
        }
    }

    /// `optimistic lock conflict on public.invoice (id)=(42)`.
    pub fn message(&self) -> String {
        format!(
            "optimistic lock conflict on {} {}",
            self.table,
            self.key_text()
        )
    }

    /// The row as `(id)=(42)`; `?` stands for values the proxy does not know.
    pub fn key_text(&self) -> String {
        let mut out = String::with_capacity(32);
        out.push('(');
        for (i, c) in self.key_columns.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write_ident(&mut out, c);
        }
        out.push_str(")=(");
        let values = self.key_values.as_deref();
        for i in 0..values.map_or(self.key_columns.len(), <[String]>::len) {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(values.map_or("?", |v| v[i].as_str()));
        }
        out.push(')');
        out
    }
}

pub const HINT_CONFLICT: &str = "reload the row and apply the change again";
pub const DETAIL_GONE: &str = "the row no longer exists";

/// A `DO` block that raises the conflict error for `info` with SQLSTATE `sqlstate`.
///
/// With key values, it looks the row up and reports its current version (or that it no longer
/// exists); without, it says the row was changed or deleted. Every value is embedded as an
/// escaped `E''` literal and every identifier quoted when needed; the dollar-quote tag is one
/// that does not occur in the body.
pub fn raise_block(info: &ConflictInfo, sqlstate: &str) -> String {
    block(info, sqlstate, false, false)
}

/// Like [`raise_block`], but when the row still exists at the expected version the block
/// raises nothing and completes as `DO`: the write matched 0 rows because of its other
/// conditions, not because of a conflict, and the client should see its plain `UPDATE 0` /
/// `DELETE 0`. Without key values it always raises, like [`raise_block`].
pub fn raise_block_if_changed(info: &ConflictInfo, sqlstate: &str) -> String {
    block(info, sqlstate, true, false)
}

/// The check that goes before a write whose row count the proxy cannot see (a write inside a
/// data-modifying `WITH`): like [`raise_block_if_changed`], and the row, when it is at the
/// expected version, stays locked (`FOR UPDATE`) until the transaction ends, so the write that
/// follows in the same transaction finds it unchanged. `info` must carry key values.
pub fn lock_or_raise_block(info: &ConflictInfo, sqlstate: &str) -> String {
    block(info, sqlstate, true, true)
}

fn block(info: &ConflictInfo, sqlstate: &str, only_if_changed: bool, lock: bool) -> String {
    let table = &info.table;
    let using = |detail: &str| {
        format!(
            "ERRCODE = {}, MESSAGE = {}, DETAIL = {}, HINT = {}, SCHEMA = {}, TABLE = {}, CONSTRAINT = {}",
            quote_literal(sqlstate),
            quote_literal(&info.message()),
            detail,
            quote_literal(HINT_CONFLICT),
            quote_literal(&table.schema),
            quote_literal(&table.name),
            quote_literal(CONSTRAINT),
        )
    };
    let body = match &info.key_values {
        Some(values) if values.len() == info.key_columns.len() && !values.is_empty() => {
            let cond: Vec<String> = info
                .key_columns
                .iter()
                .zip(values)
                .map(|(c, v)| format!("{} = {}", quote_ident(c), quote_literal(v)))
                .collect();
            // One RAISE, its detail chosen by whether the row was found (PL/pgSQL compiles
            // the block on every run: the fewer statements, the cheaper the conflict).
            let detail = format!(
                "CASE WHEN current_version IS NULL THEN {} ELSE {} || current_version END",
                quote_literal(DETAIL_GONE),
                quote_literal(&format!(
                    "the row was changed by another transaction: expected version {}, found ",
                    info.expected
                ))
            );
            let version = quote_ident(&info.version_column);
            let mut raise = format!("RAISE EXCEPTION USING {};", using(&detail));
            let mut unchanged = String::new();
            if only_if_changed {
                unchanged = format!(", {version} = {}", quote_literal(&info.expected));
                raise = format!("IF unchanged IS NOT TRUE THEN\n{raise}\nEND IF;");
            }
            // current_version stays NULL only when no row is found (a NULL version reads
            // 'NULL'), and so does unchanged.
            format!(
                "DECLARE current_version text; unchanged boolean;\nBEGIN\n\
                 SELECT coalesce({version}::text, 'NULL'){unchanged} INTO current_version{} \
                 FROM {table} WHERE {} LIMIT 1{};\n{raise}\nEND",
                if only_if_changed { ", unchanged" } else { "" },
                cond.join(" AND "),
                if lock { " FOR UPDATE" } else { "" },
            )
        }
        _ => format!(
            "BEGIN\nRAISE EXCEPTION USING {};\nEND",
            using(&quote_literal(&format!(
                "the row was changed or deleted by another transaction: expected version {}",
                info.expected
            )))
        ),
    };
    let mut tag = String::from("$optlock$");
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$optlock{n}$");
    }
    format!("DO {tag}\n{body}\n{tag}")
}

/// What the server's error says of a conflict raised in the write itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaisedInWrite {
    /// The version the write found.
    pub found: String,
    /// For a write checked against every row the session knows (see
    /// [`crate::guard::rewrite::Expected::Rows`]): which of those rows it found changed
    /// (0-based, in the order the write listed them).
    pub row: Option<usize>,
    /// The error's severity as the server words it (`ERROR`, or `FEHLER` with German
    /// `lc_messages`), so the conflict error reads as the server's own errors do.
    pub severity: String,
}

/// What the server's error (`body`, an ErrorResponse body) says when it is the one a keyed
/// write's version check raises (see [`crate::guard::rewrite::CONFLICT_MARKER`]).
pub fn found_in_error(body: &[u8]) -> Option<RaisedInWrite> {
    if backend::error_field(body, b'C')? != b"42704" {
        return None;
    }
    let message = std::str::from_utf8(backend::error_field(body, b'M')?).ok()?;
    let marker = crate::guard::rewrite::CONFLICT_MARKER;
    let (_, rest) = message.split_once(marker)?;
    let (found, _) = rest.rsplit_once('#')?;
    // A check of the session's known rows adds the row's 1-based position: `<found>#<n>#`.
    let (found, row) = match found.split_once('#') {
        Some((found, n)) => (
            found,
            n.parse::<usize>().ok().and_then(|n| n.checked_sub(1)),
        ),
        None => (found, None),
    };
    // `concat` writes nothing for a NULL version; no version type prints as empty text.
    let found = if found.is_empty() { "NULL" } else { found };
    let severity = backend::error_field(body, b'S')
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_else(|| "ERROR".into());
    Some(RaisedInWrite {
        found: found.to_string(),
        row,
        severity,
    })
}

/// The conflict error for `info`, raised in the write as `raised` says: the fields a `RAISE`
/// of [`raise_block`] gives the client once its PL/pgSQL context is removed.
pub fn conflict_fields(
    info: &ConflictInfo,
    raised: &RaisedInWrite,
    sqlstate: &str,
) -> Vec<(u8, String)> {
    let found = &raised.found;
    vec![
        (b'S', raised.severity.clone()),
        (b'V', "ERROR".into()),
        (b'C', sqlstate.into()),
        (b'M', info.message()),
        (
            b'D',
            format!(
                "the row was changed by another transaction: expected version {}, found {found}",
                info.expected
            ),
        ),
        (b'H', HINT_CONFLICT.into()),
        (b's', info.table.schema.clone()),
        (b't', info.table.name.clone()),
        (b'n', CONSTRAINT.into()),
    ]
}

/// Fields the client must not see from an error the proxy had the server raise: where (`W`,
/// the PL/pgSQL context), position (`P`), internal position (`p`), internal query (`q`), and
/// the source file, line and routine (`F`, `L`, `R`) of PL/pgSQL's `RAISE`.
pub const HIDDEN_FIELDS: &[u8] = b"WPpqFLR";

/// Why the proxy refuses a statement itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A form the proxy cannot rewrite safely (fail closed); the reason says which.
    Unsupported(String),
    /// `unversioned = "reject"` and no expected version is known; the text names the row,
    /// e.g. `(id)=(42)`.
    Unversioned(String),
    /// `bulk = "reject"` and the write is not pinned to one key.
    Bulk,
}

pub const SQLSTATE_UNSUPPORTED: &str = "0A000";
pub const SQLSTATE_REJECTED: &str = "55000";

/// The fields of the ErrorResponse for a statement the proxy refuses.
pub fn refusal_fields(table: &TableName, refusal: &Refusal) -> Vec<(u8, String)> {
    let (code, message, detail, hint) = match refusal {
        Refusal::Unsupported(reason) => (
            SQLSTATE_UNSUPPORTED,
            format!("optlock refuses this write to guarded table {table}: {reason}"),
            None,
            format!(
                "write the change as a plain UPDATE or DELETE of {table} (optlock guards it and cannot check this form)"
            ),
        ),
        Refusal::Unversioned(row) => (
            SQLSTATE_REJECTED,
            format!("optlock refuses this write to guarded table {table}: no expected version is known for {row}"),
            Some(format!(
                "{table} is guarded with unversioned = \"reject\": a write must carry the version it expects"
            )),
            "read the row on this connection first (SELECT ... FROM t WHERE key = ...), or pin the version in the WHERE clause".to_string(),
        ),
        Refusal::Bulk => (
            SQLSTATE_REJECTED,
            format!("optlock refuses this write to guarded table {table}: it is not pinned to one row"),
            Some(format!(
                "{table} is guarded with bulk = \"reject\": a write must name exactly one key"
            )),
            "write one row at a time, with every key column compared to one value in the WHERE clause".to_string(),
        ),
    };
    let mut fields = vec![
        (b'S', "ERROR".to_string()),
        (b'V', "ERROR".to_string()),
        (b'C', code.to_string()),
        (b'M', message),
    ];
    if let Some(d) = detail {
        fields.push((b'D', d));
    }
    fields.push((b'H', hint));
    fields.push((b's', table.schema.clone()));
    fields.push((b't', table.name.clone()));
    fields.push((b'n', CONSTRAINT.to_string()));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::error_field;
    use bytes::BytesMut;

    fn table() -> TableName {
        TableName {
            schema: "public".into(),
            name: "tabSales Invoice".into(),
        }
    }

    /// A conflict on a row of `table()` at expected version 7.
    fn info(key_columns: &[&str], key_values: &[&str], version_column: &str) -> ConflictInfo {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        ConflictInfo {
            table: table(),
            key_columns: owned(key_columns),
            key_values: Some(owned(key_values)),
            expected: "7".into(),
            version_column: version_column.into(),
        }
    }

    #[test]
    fn a_conflict_raised_in_the_write_keeps_the_servers_wording_of_its_severity() {
        let server_error = |severity: &str, code: &str, message: &str| {
            let mut out = bytes::BytesMut::new();
            crate::protocol::backend::write_error_fields(
                &mut out,
                vec![
                    (b'S', severity.into()),
                    (b'V', "ERROR".into()),
                    (b'C', code.into()),
                    (b'M', message.into()),
                ],
            );
            out[5..].to_vec()
        };
        let marker = crate::guard::rewrite::CONFLICT_MARKER;
        let body = server_error(
            "FEHLER",
            "42704",
            &format!("nicht erkannter Konfigurationsparameter »{marker}8#«"),
        );
        let raised = found_in_error(&body).expect("the version check's error");
        assert_eq!(
            raised,
            RaisedInWrite {
                found: "8".into(),
                row: None,
                severity: "FEHLER".into()
            }
        );
        let known_row = server_error(
            "ERROR",
            "42704",
            &format!("unrecognized configuration parameter \"{marker}8#3#\""),
        );
        let raised_known = found_in_error(&known_row).unwrap();
        assert_eq!(
            (raised_known.found.as_str(), raised_known.row),
            ("8", Some(2))
        );
        let info = info(&["name"], &["a"], "modified");
        let fields = conflict_fields(&info, &raised, "40001");
        assert!(fields.contains(&(b'S', "FEHLER".into())));
        assert!(fields.contains(&(b'V', "ERROR".into())));
        let null_version = server_error(
            "ERROR",
            "42704",
            &format!("unrecognized configuration parameter \"{marker}#\""),
        );
        assert_eq!(found_in_error(&null_version).unwrap().found, "NULL");
        let other = server_error(
            "ERROR",
            "42704",
            "unrecognized configuration parameter \"x\"",
        );
        assert_eq!(found_in_error(&other), None);
    }

    #[test]
    fn message_names_table_and_key() {
        let mut info = info(&["name", "Line"], &["a", "1"], "modified");
        assert_eq!(
            info.message(),
            "optimistic lock conflict on public.\"tabSales Invoice\" (name, \"Line\")=(a, 1)"
        );
        info.key_values = None;
        assert!(info.message().ends_with("(name, \"Line\")=(?, ?)"));
    }

    #[test]
    fn dollar_tag_avoids_the_body() {
        let info = info(&["name"], &["x$optlock$y$optlock1$"], "version");
        let sql = raise_block(&info, "40001");
        assert!(sql.starts_with("DO $optlock2$\n"), "{sql}");
        assert!(sql.ends_with("\n$optlock2$"), "{sql}");
    }

    #[test]
    fn strip_and_read_fields() {
        let body = b"SERROR\0C40001\0Mconflict\0WPL/pgSQL function inline_code_block line 4 at RAISE\0P3\0q select\0Fpl_exec.c\0\0";
        let mut out = BytesMut::new();
        backend::write_without_fields(&mut out, backend::ERROR_RESPONSE, body, HIDDEN_FIELDS);
        let clean = &out[5..];
        assert_eq!(clean, b"SERROR\0C40001\0Mconflict\0\0");
        assert_eq!(error_field(body, b'C'), Some(&b"40001"[..]));
        assert_eq!(error_field(body, b'D'), None);
        assert_eq!(error_field(clean, b'W'), None);
    }

    #[test]
    fn refusal_encodes() {
        let mut buf = BytesMut::new();
        backend::write_error_fields(
            &mut buf,
            refusal_fields(&table(), &Refusal::Unversioned("(name)=(a)".into())),
        );
        assert_eq!(buf[0], b'E');
        let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, buf.len());
        let body = &buf[5..];
        assert_eq!(error_field(body, b'C'), Some(&b"55000"[..]));
        assert_eq!(error_field(body, b'n'), Some(&b"optlock"[..]));
        assert_eq!(error_field(body, b't'), Some(&b"tabSales Invoice"[..]));
        let m = String::from_utf8(error_field(body, b'M').unwrap().to_vec()).unwrap();
        assert!(m.contains("public.\"tabSales Invoice\""), "{m}");
        let e = refusal_fields(&table(), &Refusal::Unsupported("MERGE".into()));
        assert!(e.contains(&(b'C', "0A000".into())));
    }
}
