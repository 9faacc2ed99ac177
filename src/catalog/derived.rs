//! Relations whose writes land in a guarded table: its partitions and inheritance children,
//! its partitioned or inheritance parents, the auto-updatable views over any of those (views
//! over views too), and the relations whose rules or `INSTEAD OF` triggers may write one.
//!
//! [`derived_query`] is one catalog-only `SELECT` the session runs with the guard resolution
//! ([`super::resolve`]); [`parse_derived`] reads its text rows into one [`Derived`] per
//! relation. What the guard does with each (check writes through it like writes to the
//! guarded table, or refuse them) is decided from [`Derived::how`] and whether the relation
//! shows the guard's key and version columns under the same names.

use super::resolve::{ResolvedGuard, ResolvedGuards, SHADOWED};
use crate::config::{Guard, TableName, VersionKind};
use crate::guard::Alias;

/// How a relation's writes reach a guarded table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// A partition or inheritance child, or a parent: the same rows under another name.
    Inherit,
    /// An auto-updatable view: the server writes its base relation.
    View,
    /// A view whose `INSTEAD OF` triggers do the writing: what they write is unknown.
    Trigger,
    /// A relation with rules whose actions name the guarded table (or one of the above).
    Rule,
}

/// One relation whose writes land in the table of guard `guard`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// Index of the guard in the config.
    pub guard: usize,
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub how: How,
    /// The guard's key columns in this relation (attnum, type OID), in key order; `None`
    /// where the relation has no column of that name.
    pub keys: Vec<Option<(i16, u32)>>,
    /// The guard's version column in this relation (`xmin` too: a view has none).
    pub version: Option<(i16, u32)>,
    /// Another relation has this one's name (see [`ResolvedGuard::shadowed`]).
    pub shadowed: bool,
}

impl Derived {
    /// The relation has every key column and the version column.
    pub fn has_columns(&self) -> bool {
        self.version.is_some() && self.keys.iter().all(Option::is_some)
    }
}

/// The catalog query that finds the relations whose writes land in the tables of `guards`:
/// one text row per (relation, key or version column) with the columns guard index, relation
/// OID, schema, name, how (`inherit`, `view`, `trigger`, `rule`; `none` for a view no write
/// can go through), role (`k` or `v`), position in the key, attnum and type OID (NULL when
/// the relation has no column of that name), and whether another relation has its name. The
/// guarded tables themselves are not listed.
pub fn derived_query(guards: &[Guard]) -> String {
    let values = super::resolve::guard_columns(guards);
    if values.is_empty() {
        return "SELECT NULL::text LIMIT 0".to_string();
    }
    // `land` follows, from each guarded table and its partitions or children (`down`): the
    // parents of what it holds, and the relations whose rules (a view's `_RETURN` rule, or
    // any other) depend on it. In tgtype, 64 marks INSTEAD OF, 8 DELETE and 16 UPDATE; in
    // pg_relation_is_updatable's result, 4 is UPDATE and 16 DELETE.
    format!(
        "WITH RECURSIVE cols(guard, role, pos, nsp, rel, att) AS (VALUES {values}), \
         g(guard, oid) AS (SELECT DISTINCT cols.guard, c.oid FROM cols \
         JOIN pg_catalog.pg_namespace n ON n.nspname = cols.nsp \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = cols.rel \
         AND c.relkind IN ('r', 'p')), \
         down(guard, oid) AS (SELECT guard, oid FROM g UNION \
         SELECT d.guard, i.inhrelid FROM down d JOIN pg_catalog.pg_inherits i ON i.inhparent = d.oid), \
         land(guard, oid, how) AS (SELECT guard, oid, 'inherit'::text FROM down UNION \
         SELECT l.guard, x.oid, CASE WHEN l.how = 'rule' THEN 'rule' ELSE x.how END \
         FROM land l CROSS JOIN LATERAL (\
         SELECT i.inhparent AS oid, 'inherit'::text AS how FROM pg_catalog.pg_inherits i \
         WHERE i.inhrelid = l.oid UNION ALL \
         SELECT r.ev_class, CASE WHEN r.rulename = '_RETURN' THEN 'view' ELSE 'rule' END \
         FROM pg_catalog.pg_depend dep JOIN pg_catalog.pg_rewrite r ON r.oid = dep.objid \
         WHERE dep.classid = 'pg_catalog.pg_rewrite'::regclass \
         AND dep.refclassid = 'pg_catalog.pg_class'::regclass \
         AND dep.refobjid = l.oid AND r.ev_class <> l.oid) x), \
         rels(guard, oid, how) AS (SELECT guard, oid, CASE WHEN bool_or(how = 'rule') THEN 'rule' \
         WHEN bool_or(how = 'view') THEN 'view' ELSE 'inherit' END FROM land \
         WHERE NOT EXISTS (SELECT 1 FROM g WHERE g.guard = land.guard AND g.oid = land.oid) \
         GROUP BY guard, oid) \
         SELECT r.guard::text, c.oid::text, n.nspname::text, c.relname::text, \
         CASE WHEN r.how <> 'view' THEN r.how \
         WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg WHERE tg.tgrelid = c.oid \
         AND tg.tgtype::int & 64 <> 0 AND tg.tgtype::int & 24 <> 0) THEN 'trigger' \
         WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w WHERE w.ev_class = c.oid \
         AND w.rulename <> '_RETURN') THEN 'rule' \
         WHEN pg_catalog.pg_relation_is_updatable(c.oid::regclass, false) & 20 <> 0 THEN 'view' \
         ELSE 'none' END, \
         cols.role, cols.pos::text, a.attnum::text, \
         coalesce(nullif(b.typbasetype, 0), nullif(t.typbasetype, 0), t.oid)::text, \
         {SHADOWED} \
         FROM rels r JOIN pg_catalog.pg_class c ON c.oid = r.oid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN cols ON cols.guard = r.guard \
         LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = cols.att \
         AND NOT a.attisdropped \
         LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype \
         ORDER BY r.guard, c.oid, cols.role, cols.pos",
        values = values.join(", ")
    )
}

/// Reads the text rows of [`derived_query`] for the same `guards`, one [`Derived`] per
/// relation in query order. Rows that do not parse are ignored, and so are views no write can
/// go through.
pub fn parse_derived(rows: &[Vec<Option<String>>], guards: &[Guard]) -> Vec<Derived> {
    let mut out: Vec<Derived> = Vec::new();
    for row in rows {
        let field = |i: usize| row.get(i).and_then(|v| v.as_deref());
        let (Some(guard), Some(oid), Some(schema), Some(name), Some(how), Some(role), Some(pos)) = (
            field(0).and_then(|v| v.parse::<usize>().ok()),
            field(1).and_then(|v| v.parse::<u32>().ok()),
            field(2),
            field(3),
            field(4).and_then(how),
            field(5),
            field(6).and_then(|v| v.parse::<usize>().ok()),
        ) else {
            continue;
        };
        let Some(g) = guards.get(guard) else {
            continue;
        };
        let column = match (
            field(7).and_then(|v| v.parse::<i16>().ok()),
            field(8).and_then(|v| v.parse::<u32>().ok()),
        ) {
            (Some(attnum), Some(ty)) => Some((attnum, ty)),
            _ => None,
        };
        let d = match out.last_mut() {
            Some(d) if d.guard == guard && d.oid == oid => d,
            _ => {
                out.push(Derived {
                    guard,
                    oid,
                    schema: schema.to_string(),
                    name: name.to_string(),
                    how,
                    keys: vec![None; g.key.len()],
                    version: None,
                    shadowed: field(9) != Some("false"),
                });
                out.last_mut().expect("just pushed")
            }
        };
        match role {
            "k" if pos < d.keys.len() => d.keys[pos] = column,
            "v" => d.version = column,
            _ => {}
        }
    }
    out
}

/// What the session's guard set gets from the relations found: one [`Alias`] per relation
/// (checked like its guard's table, or refused with the reason), and for each alias its
/// resolved columns (`None` for a refused one), in the same order. Relations that are
/// guarded tables themselves are left out. `resolved` is the config guards' resolution.
pub fn aliases(
    derived: &[Derived],
    guards: &[Guard],
    resolved: &ResolvedGuards,
) -> (Vec<Alias>, Vec<Option<ResolvedGuard>>) {
    let mut out: Vec<(Alias, Option<ResolvedGuard>, u32)> = Vec::new();
    for d in derived {
        if resolved.by_table_oid(d.oid).is_some() {
            continue;
        }
        let Some(guard) = guards.get(d.guard) else {
            continue;
        };
        let table = TableName {
            schema: d.schema.clone(),
            name: d.name.clone(),
        };
        if let Some((a, rg, _)) = out.iter_mut().find(|(_, _, oid)| *oid == d.oid) {
            // Writes through it land in more than one guarded table.
            a.refusal = Some(format!(
                "writes to {table} also land in guarded table {}, and optlock checks one guarded table per write",
                guard.table
            ));
            *rg = None;
            continue;
        }
        let (refusal, rg) = match refusal(d, guard, &table) {
            Some(reason) => (Some(reason), None),
            None => (None, alias_columns(d, resolved.get(d.guard))),
        };
        out.push((
            Alias {
                table,
                guard: d.guard,
                refusal,
            },
            rg,
            d.oid,
        ));
    }
    out.into_iter().map(|(a, rg, _)| (a, rg)).unzip()
}

/// Why writes through `d` cannot carry the guard's version check, if they cannot. The
/// refusal names the guarded table first ("... guarded table {g}: {reason}"), so the reason
/// calls it "it".
fn refusal(d: &Derived, guard: &Guard, table: &TableName) -> Option<String> {
    let what = match d.how {
        How::Rule => {
            return Some(format!(
                "writes to {table} may reach it through rules, which optlock cannot check"
            ));
        }
        How::Trigger => {
            return Some(format!(
                "view {table} over it writes through INSTEAD OF triggers, which optlock cannot check"
            ));
        }
        How::View if guard.kind == VersionKind::Xmin => {
            return Some(format!(
                "view {table} over it has no xmin, the guard's version"
            ));
        }
        How::View => "a view of",
        How::Inherit => "a partition, parent or child of",
    };
    if d.has_columns() {
        return None;
    }
    let mut cols = guard.key.clone();
    cols.push(guard.version.clone());
    Some(format!(
        "{table} is {what} it without its key and version columns ({}) under their own names, so writes through it cannot be checked",
        cols.join(", ")
    ))
}

/// The columns of an alias that shows every key and version column of its guard; the
/// version's bump (type modifier, sequence) is the guarded table's own.
fn alias_columns(d: &Derived, root: Option<&ResolvedGuard>) -> Option<ResolvedGuard> {
    let keys: Vec<(i16, u32)> = d.keys.iter().copied().collect::<Option<_>>()?;
    let (version_attnum, version_type) = d.version?;
    Some(ResolvedGuard {
        table_oid: d.oid,
        key_attnums: keys.iter().map(|k| k.0).collect(),
        key_types: keys.iter().map(|k| k.1).collect(),
        version_attnum,
        version_type,
        acts_without_rows: d.how == How::View || root.is_none_or(|r| r.acts_without_rows),
        version_typmod: root.map_or(-1, |r| r.version_typmod),
        version_sequence: root.and_then(|r| r.version_sequence),
        shadowed: d.shadowed,
    })
}

fn how(s: &str) -> Option<How> {
    Some(match s {
        "inherit" => How::Inherit,
        "view" => How::View,
        "trigger" => How::Trigger,
        "rule" => How::Rule,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn guards() -> Vec<Guard> {
        Config::parse("[[guard]]\ntable = \"a\"\nkey = [\"x\", \"y\"]\n", "t.toml")
            .unwrap()
            .guards
    }

    fn row(v: &[&str]) -> Vec<Option<String>> {
        v.iter()
            .map(|s| (!s.is_empty()).then(|| s.to_string()))
            .collect()
    }

    #[test]
    fn groups_rows_by_relation_and_drops_views_nothing_writes() {
        let rows = vec![
            row(&["0", "10", "public", "a_1", "inherit", "k", "0", "1", "23"]),
            row(&["0", "10", "public", "a_1", "inherit", "k", "1", "2", "25"]),
            row(&["0", "10", "public", "a_1", "inherit", "v", "0", "3", "20"]),
            row(&["0", "11", "s", "a_v", "view", "k", "0", "1", "23"]),
            row(&["0", "11", "s", "a_v", "view", "k", "1", "", ""]),
            row(&["0", "11", "s", "a_v", "view", "v", "0", "2", "20"]),
            row(&["0", "12", "s", "a_m", "none", "k", "0", "1", "23"]),
            row(&["7", "13", "s", "x", "view", "k", "0", "1", "23"]),
        ];
        let d = parse_derived(&rows, &guards());
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].oid, d[0].how, d[0].has_columns()),
            (10, How::Inherit, true)
        );
        assert_eq!(d[0].keys, vec![Some((1, 23)), Some((2, 25))]);
        assert_eq!((d[1].schema.as_str(), d[1].name.as_str()), ("s", "a_v"));
        assert!(!d[1].has_columns(), "a key column is missing");
    }

    #[test]
    fn no_guards_give_a_query_too() {
        assert!(derived_query(&[]).contains("LIMIT 0"));
        assert!(derived_query(&guards()).contains("pg_inherits"));
    }
}
