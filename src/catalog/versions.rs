//! Versions that never repeat for a key: what `check` and `suggest` require of a version
//! column's default and precision, and the DDL that gives a column what it lacks.
//!
//! A counter row deleted and inserted again starts at its column's default: a constant default
//! (`DEFAULT 0`) hands the new row a version the old one had, and a session that read the old
//! row would write the new one unchecked. A default drawn from a sequence (`nextval`, an
//! identity, `bigserial`) never repeats, and the proxy then bumps from the same sequence (see
//! [`crate::catalog::resolve::ResolvedGuard::bump`]). A timestamp version needs a clock default
//! and full precision: `timestamp(0)` holds the same value for a whole second.

use super::column::Column;
use crate::config::{TableName, VersionKind, quote_ident};
use crate::guard::values::oid;

/// Why the column's versions may repeat for a key (its default or its precision), if they
/// may. Only for a column whose type fits `kind`.
pub(crate) fn repeat_problem(kind: VersionKind, col: &Column) -> Option<String> {
    match kind {
        VersionKind::Counter if col.has_default && !draws_from_sequence(col) => Some(format!(
            "its default {} repeats: a row deleted and inserted again starts at a version it \
             had before, so a write read before that is not caught; draw the default from a \
             sequence (the proxy then bumps from it too)",
            col.default.as_deref().unwrap_or("?")
        )),
        VersionKind::Timestamp if (0..6).contains(&col.typmod) => Some(format!(
            "its precision {} holds one value for {}: a row inserted again within it starts at \
             the version it had; use full precision (microseconds)",
            col.type_name,
            step_text(col.typmod)
        )),
        VersionKind::Timestamp if col.has_default && !clock_default(col) => Some(format!(
            "its default {} is not the clock at full precision: a row inserted again may start \
             at a version it had before",
            col.default.as_deref().unwrap_or("?")
        )),
        _ => None,
    }
}

/// The DDL that fixes [`repeat_problem`] for the column `col` of `table`.
pub(crate) fn repeat_fix(table: &TableName, kind: VersionKind, col: &Column) -> String {
    let vq = quote_ident(&col.name);
    match kind {
        VersionKind::Timestamp if (0..6).contains(&col.typmod) => {
            let ty = if col.base_type == oid::TIMESTAMPTZ {
                "timestamp(6) with time zone"
            } else {
                "timestamp(6) without time zone"
            };
            let mut ddl = format!("ALTER TABLE {table} ALTER COLUMN {vq} TYPE {ty}");
            if !clock_default(col) || col.default.as_deref().is_some_and(low_precision) {
                ddl.push_str(&format!(", ALTER COLUMN {vq} SET DEFAULT now()"));
            }
            ddl.push(';');
            ddl
        }
        VersionKind::Timestamp => {
            format!("ALTER TABLE {table} ALTER COLUMN {vq} SET DEFAULT now();")
        }
        _ => sequence_default(table, &col.name),
    }
}

/// A sequence owned by the column, started after the largest version the table holds, and
/// the column's default drawn from it.
pub(crate) fn sequence_default(table: &TableName, column: &str) -> String {
    let vq = quote_ident(column);
    let seq = TableName {
        schema: table.schema.clone(),
        name: format!("{}_{}_seq", table.name, column),
    };
    let seq_literal = seq.to_string().replace('\'', "''");
    format!(
        "CREATE SEQUENCE IF NOT EXISTS {seq} OWNED BY {table}.{vq}; \
         SELECT setval('{seq_literal}', GREATEST(coalesce(max({vq}), 0) + 1, 1)::bigint, false) \
         FROM {table}; \
         ALTER TABLE {table} ALTER COLUMN {vq} SET DEFAULT nextval('{seq_literal}');"
    )
}

/// The default draws from a sequence: an identity column, or a `nextval` default.
fn draws_from_sequence(col: &Column) -> bool {
    !col.identity.is_empty() || col.default_sequence
}

/// The default reads the clock at full precision (`now()`, `CURRENT_TIMESTAMP`,
/// `clock_timestamp()`, ...).
fn clock_default(col: &Column) -> bool {
    let Some(d) = col.default.as_deref() else {
        return false;
    };
    let d = d.to_ascii_lowercase();
    let clock = [
        "now()",
        "clock_timestamp()",
        "statement_timestamp()",
        "transaction_timestamp()",
        "current_timestamp",
        "localtimestamp",
    ]
    .iter()
    .any(|f| d.contains(f));
    clock && !low_precision(&d)
}

/// The expression rounds to less than microseconds: `timestamp(0)`, `CURRENT_TIMESTAMP(3)`.
fn low_precision(expr: &str) -> bool {
    let e = expr.to_ascii_lowercase();
    e.match_indices("timestamp(").any(|(i, m)| {
        e[i + m.len()..]
            .chars()
            .next()
            .is_some_and(|c| matches!(c, '0'..='5'))
    })
}

/// `1 second`, `10 milliseconds`, ...: how long a value of precision `p` (0 to 5) lasts.
fn step_text(p: i32) -> &'static str {
    match p {
        0 => "a second",
        1 => "100 milliseconds",
        2 => "10 milliseconds",
        3 => "a millisecond",
        4 => "100 microseconds",
        _ => "10 microseconds",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(type_name: &str, base_type: u32, typmod: i32, default: Option<&str>) -> Column {
        Column {
            name: "version".into(),
            attnum: 2,
            type_name: type_name.into(),
            base_type,
            typmod,
            not_null: true,
            has_default: default.is_some(),
            default: default.map(str::to_string),
            default_sequence: default.is_some_and(|d| d.starts_with("nextval(")),
            generated: String::new(),
            identity: String::new(),
        }
    }

    #[test]
    fn counters_need_a_default_that_never_repeats() {
        let c = col("integer", oid::INT4, -1, Some("0"));
        assert!(repeat_problem(VersionKind::Counter, &c).is_some());
        let c = col("bigint", oid::INT8, -1, Some("nextval('s'::regclass)"));
        assert!(repeat_problem(VersionKind::Counter, &c).is_none());
        let mut c = col("bigint", oid::INT8, -1, None);
        c.identity = "d".into();
        assert!(repeat_problem(VersionKind::Counter, &c).is_none());
    }

    #[test]
    fn timestamps_need_full_precision_and_the_clock() {
        let ts = |typmod, d| col("timestamp", oid::TIMESTAMP, typmod, Some(d));
        assert!(repeat_problem(VersionKind::Timestamp, &ts(-1, "now()")).is_none());
        assert!(repeat_problem(VersionKind::Timestamp, &ts(6, "CURRENT_TIMESTAMP")).is_none());
        assert!(repeat_problem(VersionKind::Timestamp, &ts(0, "now()")).is_some());
        assert!(repeat_problem(VersionKind::Timestamp, &ts(3, "now()")).is_some());
        assert!(repeat_problem(VersionKind::Timestamp, &ts(-1, "CURRENT_TIMESTAMP(0)")).is_some());
        assert!(
            repeat_problem(VersionKind::Timestamp, &ts(-1, "'2000-01-01'::timestamp")).is_some()
        );
    }

    #[test]
    fn the_sequence_ddl_quotes_its_names() {
        let t = TableName {
            schema: "public".into(),
            name: "Sales Invoice".into(),
        };
        let ddl = sequence_default(&t, "version");
        assert!(
            ddl.starts_with(
                "CREATE SEQUENCE IF NOT EXISTS public.\"Sales Invoice_version_seq\" \
                 OWNED BY public.\"Sales Invoice\".version;"
            ),
            "{ddl}"
        );
        assert!(
            ddl.ends_with("nextval('public.\"Sales Invoice_version_seq\"');"),
            "{ddl}"
        );
    }
}
