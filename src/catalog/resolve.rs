//! Guards resolved against one database: table OIDs, attribute numbers and types.
//!
//! RowDescription names each result column by (table OID, attribute number), whatever alias the
//! query used, so recognising a guarded table's key and version columns in result rows needs
//! those numbers for the session's own database. [`resolve_query`] is one catalog-only
//! `SELECT` (no parameters, valid on PostgreSQL 12 and later) the relay runs in-band with a
//! simple `Query`; [`parse_resolved`] reads its text rows. A guard whose table, key column or
//! version column does not exist in that database is simply absent.
//!
//! The version column's precision and default are resolved too: a version never repeats for a
//! key, so a counter whose default draws from a sequence is bumped from that sequence (a row
//! deleted and inserted again then never starts at a version it had before), and a timestamp
//! of lower precision is bumped by its own smallest step (see [`ResolvedGuard::bump`]).

use std::collections::HashMap;

use crate::config::Guard;
use crate::guard::rewrite::Bump;
use crate::guard::values::{oid, quote_literal};

/// The role of a column in a guard, as [`resolve_query`] reports it.
const ROLE_KEY: &str = "k";
const ROLE_VERSION: &str = "v";

/// One guard in one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedGuard {
    pub table_oid: u32,
    /// Attribute numbers of the key columns, in the guard's key order.
    pub key_attnums: Vec<i16>,
    /// Type OIDs of the key columns (domains replaced by their base type, as RowDescription
    /// reports them).
    pub key_types: Vec<u32>,
    /// Attribute number of the version column (`xmin` is a system column: negative).
    pub version_attnum: i16,
    pub version_type: u32,
    /// An `UPDATE` or `DELETE` of the table may act even when it matches no row: the table
    /// has a statement-level `UPDATE`/`DELETE` trigger (enabled or not) or a rule, or is not
    /// a plain or partitioned table (a view, a foreign table). Unknown reads as true.
    pub acts_without_rows: bool,
    /// The version column's type modifier (a timestamp's precision; -1 when none).
    pub version_typmod: i32,
    /// The sequence the version column's default draws from (`nextval(...)`), by OID.
    pub version_sequence: Option<u32>,
    /// Another relation of the database (in another schema) has the table's name, so an
    /// unqualified name may mean that one: a read names the table unqualified gets no
    /// columns added (see [`crate::guard::capture`]). Unknown reads as true.
    pub shadowed: bool,
}

impl ResolvedGuard {
    /// How a write bumps this table's version: from the default's sequence for a counter
    /// drawn from one (so the bump never meets a version a later insert draws), by the
    /// column's smallest step for a timestamp of lower precision than microseconds.
    pub fn bump(&self) -> Bump {
        match (self.version_type, self.version_sequence) {
            (oid::INT2 | oid::INT4 | oid::INT8 | oid::NUMERIC, Some(seq)) => Bump::Sequence(seq),
            (oid::TIMESTAMP | oid::TIMESTAMPTZ, _) if (0..6).contains(&self.version_typmod) => {
                Bump::Step(10u32.pow(6 - self.version_typmod as u32))
            }
            _ => Bump::Plain,
        }
    }

    /// Position in the key of the column with attribute number `attnum`.
    pub fn key_position(&self, attnum: i16) -> Option<usize> {
        self.key_attnums.iter().position(|&a| a == attnum)
    }

    pub fn is_version(&self, attnum: i16) -> bool {
        self.version_attnum == attnum
    }
}

/// The guards of a config resolved in one database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedGuards {
    /// Indexed like the config's guards; `None` when absent from this database.
    guards: Vec<Option<ResolvedGuard>>,
    by_oid: HashMap<u32, usize>,
}

impl ResolvedGuards {
    /// The guard of the table with OID `oid`: its index in the config and its columns.
    pub fn by_table_oid(&self, oid: u32) -> Option<(usize, &ResolvedGuard)> {
        let i = *self.by_oid.get(&oid)?;
        self.guards[i].as_ref().map(|g| (i, g))
    }

    /// The guard with config index `guard`, if present in this database.
    pub fn get(&self, guard: usize) -> Option<&ResolvedGuard> {
        self.guards.get(guard)?.as_ref()
    }

    /// These guards with the session's aliases after them (see
    /// [`crate::catalog::derived::aliases`]): entry `len + i` is alias `i`, found by its own
    /// table OID (reads through it teach its guard's versions).
    pub fn with_aliases(mut self, aliases: Vec<Option<ResolvedGuard>>) -> ResolvedGuards {
        for rg in aliases {
            if let Some(r) = &rg {
                self.by_oid.entry(r.table_oid).or_insert(self.guards.len());
            }
            self.guards.push(rg);
        }
        self
    }

    /// How many guards are present in this database.
    pub fn len(&self) -> usize {
        self.by_oid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_oid.is_empty()
    }
}

/// Whether another relation than `c` has `c`'s name (text `true`/`false`): one a `FROM` may
/// name (tables, views, materialized views, foreign tables, sequences), in any schema,
/// temporary ones of other sessions included.
pub const SHADOWED: &str = "(SELECT count(*) > 1 FROM pg_catalog.pg_class s \
     WHERE s.relname = c.relname AND s.relkind IN ('r', 'p', 'v', 'm', 'f', 'S'))::text";

/// The rows of a `VALUES` list naming each guard's columns: (guard index, role (`k` or `v`),
/// position in the key, schema, table, column), the catalog queries' starting point.
pub(super) fn guard_columns(guards: &[Guard]) -> Vec<String> {
    let mut values = Vec::new();
    for (i, g) in guards.iter().enumerate() {
        let schema = quote_literal(&g.table.schema);
        let name = quote_literal(&g.table.name);
        let mut push = |role: &str, pos: usize, col: &str| {
            values.push(format!(
                "({i}, '{role}', {pos}, {schema}::name, {name}::name, {}::name)",
                quote_literal(col)
            ));
        };
        for (pos, k) in g.key.iter().enumerate() {
            push(ROLE_KEY, pos, k);
        }
        push(ROLE_VERSION, 0, &g.version);
    }
    values
}

/// One `SELECT` over the catalog that resolves `guards`: one text row per (guard index, role,
/// position, table OID, attnum, type OID, whether a write of the table may act without rows
/// (see [`ResolvedGuard::acts_without_rows`]), type modifier, OID of the sequence the column's
/// default draws from) with role `k` (key column, position in the key) or `v` (version column,
/// position 0), and whether another relation has the table's name (see
/// [`ResolvedGuard::shadowed`]). Columns that do not exist come back with NULL attnum.
pub fn resolve_query(guards: &[Guard]) -> String {
    let values = guard_columns(guards);
    if values.is_empty() {
        return "SELECT NULL::text AS guard, NULL::text AS role, NULL::text AS pos, \
                NULL::text AS table_oid, NULL::text AS attnum, NULL::text AS type_oid, \
                NULL::text AS acts_without_rows, NULL::text AS typmod, NULL::text AS seq, \
                NULL::text AS shadowed LIMIT 0"
            .to_string();
    }
    // In tgtype, 1 marks FOR EACH ROW, 8 DELETE and 16 UPDATE.
    format!(
        "SELECT g.guard::text, g.role, g.pos::text, c.oid::text, a.attnum::text, \
         coalesce(nullif(b.typbasetype, 0), nullif(t.typbasetype, 0), t.oid)::text, \
         (c.relkind NOT IN ('r', 'p') OR c.relhasrules OR EXISTS (SELECT 1 \
         FROM pg_catalog.pg_trigger tg WHERE tg.tgrelid = c.oid \
         AND tg.tgtype::int & 1 = 0 AND tg.tgtype::int & 24 <> 0))::text, \
         (CASE WHEN a.atttypmod >= 0 THEN a.atttypmod ELSE t.typtypmod END)::text, \
         (SELECT min(dep.refobjid)::text FROM pg_catalog.pg_attrdef d \
         JOIN pg_catalog.pg_depend dep ON dep.classid = 'pg_catalog.pg_attrdef'::regclass \
         AND dep.objid = d.oid AND dep.refclassid = 'pg_catalog.pg_class'::regclass \
         JOIN pg_catalog.pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S' \
         WHERE d.adrelid = c.oid AND d.adnum = a.attnum \
         AND pg_catalog.pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%'), \
         {SHADOWED} \
         FROM (VALUES {}) AS g(guard, role, pos, nsp, rel, att) \
         JOIN pg_catalog.pg_namespace n ON n.nspname = g.nsp \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = g.rel \
         AND c.relkind IN ('r', 'p', 'v', 'f', 'm') \
         LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = g.att \
         AND NOT a.attisdropped \
         LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype \
         ORDER BY g.guard, g.role, g.pos",
        values.join(", ")
    )
}

/// Reads the text rows of [`resolve_query`] (ten columns each; the last three may be missing) for the same `guards`.
/// Rows that do not parse, or name a guard out of range, are ignored; a guard missing its
/// table or any of its columns is absent.
pub fn parse_resolved(rows: &[Vec<Option<String>>], guards: &[Guard]) -> ResolvedGuards {
    struct Partial {
        table_oid: u32,
        keys: Vec<Option<(i16, u32)>>,
        version: Option<(i16, u32)>,
        acts_without_rows: bool,
        typmod: i32,
        sequence: Option<u32>,
        shadowed: bool,
    }
    let mut partial: Vec<Option<Partial>> = guards.iter().map(|_| None).collect();
    for row in rows {
        let field = |i: usize| row.get(i).and_then(|v| v.as_deref());
        let (Some(guard), Some(role), Some(pos), Some(table_oid)) = (
            field(0).and_then(|v| v.parse::<usize>().ok()),
            field(1),
            field(2).and_then(|v| v.parse::<usize>().ok()),
            field(3).and_then(|v| v.parse::<u32>().ok()),
        ) else {
            continue;
        };
        let Some(g) = guards.get(guard) else {
            continue;
        };
        let p = partial[guard].get_or_insert_with(|| Partial {
            table_oid,
            keys: vec![None; g.key.len()],
            version: None,
            acts_without_rows: false,
            typmod: -1,
            sequence: None,
            shadowed: false,
        });
        if p.table_oid != table_oid {
            continue;
        }
        p.acts_without_rows |= field(6) != Some("false");
        p.shadowed |= field(9) != Some("false");
        let column = match (
            field(4).and_then(|v| v.parse::<i16>().ok()),
            field(5).and_then(|v| v.parse::<u32>().ok()),
        ) {
            (Some(attnum), Some(ty)) => Some((attnum, ty)),
            _ => None,
        };
        match role {
            ROLE_KEY if pos < p.keys.len() => p.keys[pos] = column,
            ROLE_VERSION => {
                p.version = column;
                p.typmod = field(7).and_then(|v| v.parse().ok()).unwrap_or(-1);
                p.sequence = field(8).and_then(|v| v.parse().ok());
            }
            _ => {}
        }
    }
    let mut out = ResolvedGuards::default();
    for (i, p) in partial.into_iter().enumerate() {
        let resolved = p.and_then(|p| {
            let keys: Option<Vec<(i16, u32)>> = p.keys.into_iter().collect();
            let keys = keys?;
            let (version_attnum, version_type) = p.version?;
            Some(ResolvedGuard {
                table_oid: p.table_oid,
                key_attnums: keys.iter().map(|k| k.0).collect(),
                key_types: keys.iter().map(|k| k.1).collect(),
                version_attnum,
                version_type,
                acts_without_rows: p.acts_without_rows,
                version_typmod: p.typmod,
                version_sequence: p.sequence,
                shadowed: p.shadowed,
            })
        });
        if let Some(r) = &resolved {
            out.by_oid.insert(r.table_oid, i);
        }
        out.guards.push(resolved);
    }
    out
}

/// Runs [`resolve_query`] on `client` and parses it (for tools and tests; the relay runs the
/// query in-band on the session's own connection).
pub async fn resolve(
    client: &tokio_postgres::Client,
    guards: &[Guard],
) -> Result<ResolvedGuards, tokio_postgres::Error> {
    let mut rows = Vec::new();
    for msg in client.simple_query(&resolve_query(guards)).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = msg {
            rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    Ok(parse_resolved(&rows, guards))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn guards() -> Vec<Guard> {
        Config::parse(
            "[[guard]]\ntable = \"a\"\nkey = [\"x\", \"y\"]\n[[guard]]\ntable = \"b\"\nkey = [\"id\"]\nversion = \"xmin\"\n",
            "t.toml",
        )
        .unwrap()
        .guards
    }

    fn row(v: &[&str]) -> Vec<Option<String>> {
        v.iter()
            .map(|s| (!s.is_empty()).then(|| s.to_string()))
            .collect()
    }

    #[test]
    fn parses_rows_and_drops_incomplete_guards() {
        let g = guards();
        let rows = vec![
            row(&["0", "k", "0", "100", "1", "23", "false"]),
            row(&["0", "k", "1", "100", "2", "25", "false"]),
            row(&["0", "v", "0", "100", "3", "20", "false"]),
            row(&["1", "k", "0", "200", "", ""]),
            row(&["1", "v", "0", "200", "-2", "28"]),
        ];
        let r = parse_resolved(&rows, &g);
        assert_eq!(r.len(), 1);
        let (i, a) = r.by_table_oid(100).unwrap();
        assert_eq!(i, 0);
        assert_eq!(a.key_attnums, vec![1, 2]);
        assert_eq!(a.key_types, vec![23, 25]);
        assert_eq!((a.version_attnum, a.version_type), (3, 20));
        assert_eq!(a.key_position(2), Some(1));
        assert!(a.is_version(3));
        assert!(!a.acts_without_rows);
        let mut rows = rows[..3].to_vec();
        rows[1][6] = Some("true".into());
        assert!(parse_resolved(&rows, &g).get(0).unwrap().acts_without_rows);
        rows[1][6] = None;
        assert!(
            parse_resolved(&rows, &g).get(0).unwrap().acts_without_rows,
            "unknown reads as true"
        );
        assert!(r.by_table_oid(200).is_none());
        assert!(r.get(1).is_none());
    }

    #[test]
    fn the_bump_follows_the_version_column() {
        let g = guards();
        let rows = |ty: &str, typmod: &str, seq: &str| {
            vec![
                row(&["0", "k", "0", "100", "1", "23", "false"]),
                row(&["0", "k", "1", "100", "2", "25", "false"]),
                row(&["0", "v", "0", "100", "3", ty, "false", typmod, seq]),
            ]
        };
        let bump = |ty, typmod, seq| {
            parse_resolved(&rows(ty, typmod, seq), &g)
                .get(0)
                .unwrap()
                .bump()
        };
        assert_eq!(bump("20", "-1", "16400"), Bump::Sequence(16400));
        assert_eq!(bump("20", "-1", ""), Bump::Plain);
        assert_eq!(bump("1114", "0", ""), Bump::Step(1_000_000));
        assert_eq!(bump("1184", "3", ""), Bump::Step(1_000));
        assert_eq!(bump("1184", "6", ""), Bump::Plain);
        assert_eq!(bump("1184", "-1", "5"), Bump::Plain);
        // Rows of an older form (seven columns) still resolve.
        let mut old = rows("20", "", "");
        old[2].truncate(7);
        assert_eq!(parse_resolved(&old, &g).get(0).unwrap().bump(), Bump::Plain);
    }

    #[test]
    fn empty_guards_give_a_query_too() {
        assert!(resolve_query(&[]).contains("LIMIT 0"));
        assert!(parse_resolved(&[], &[]).is_empty());
    }
}
