//! Reads that pin one row: `SELECT balance, version FROM account WHERE id = 7`.
//!
//! A result that lists a guarded table's key and version columns tells the session each row's
//! version by itself (see the relay's read tracking). Applications often select the version
//! without the key, or select neither; when the `WHERE` clause pins the key of the one
//! guarded table in `FROM`, the proxy still knows which row the result is about.

use sqlparser::ast::{self, SetExpr, TableFactor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::analyze::{TargetName, fold_ident, key_and_pin, resolve};
use super::{GuardSet, PinnedRead, Target};

/// The row of a guarded table a single-table `SELECT` pins, if any.
pub fn pinned_read(sql: &str, guards: &GuardSet) -> Option<PinnedRead> {
    parse_pinned_read(sql, guards).ok().flatten()
}

/// A text sqlparser cannot parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unparsed;

/// As [`pinned_read`], telling apart a text sqlparser cannot parse.
pub fn parse_pinned_read(sql: &str, guards: &GuardSet) -> Result<Option<PinnedRead>, Unparsed> {
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|_| Unparsed)?;
    Ok(pinned_in(stmts, guards))
}

fn pinned_in(mut stmts: Vec<ast::Statement>, guards: &GuardSet) -> Option<PinnedRead> {
    if stmts.len() != 1 {
        return None;
    }
    let ast::Statement::Query(query) = stmts.pop()? else {
        return None;
    };
    if query.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [from] = select.from.as_slice() else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table { name, alias, .. } = &from.relation else {
        return None;
    };
    let guard = resolve(name, guards)?;
    let g = &guards.guards[guard];
    let target = TargetName {
        alias: alias.as_ref().map(|a| fold_ident(&a.name)),
        name: g.table.name.clone(),
        schema: g.table.schema.clone(),
    };
    match key_and_pin(select.selection.as_ref(), &target, &g.key, &g.version) {
        (Target::Key(key), _) => Some(PinnedRead { guard, key }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::guard::ValueRef;

    fn guards() -> std::sync::Arc<GuardSet> {
        GuardSet::new(
            &Config::parse(
                "[[guard]]\ntable = \"public.account\"\nkey = [\"id\"]\n",
                "t.toml",
            )
            .unwrap(),
        )
    }

    #[test]
    fn single_table_select_pins_its_key() {
        let g = guards();
        let r = pinned_read("SELECT balance, version FROM account WHERE id = 7", &g).unwrap();
        assert_eq!(r.key, vec![ValueRef::Literal("7".into())]);
        let r = pinned_read(
            "select a.balance from public.account a where a.id = $1 and a.x > 0",
            &g,
        )
        .unwrap();
        assert_eq!(r.key, vec![ValueRef::Param(1)]);
    }

    #[test]
    fn other_reads_pin_nothing() {
        let g = guards();
        for sql in [
            "SELECT * FROM account",
            "SELECT * FROM account WHERE id IN (1, 2)",
            "SELECT * FROM account WHERE id = 1 OR id = 2",
            "SELECT * FROM account a JOIN other o ON o.id = a.id WHERE a.id = 1",
            "SELECT * FROM other WHERE id = 1",
            "WITH x AS (SELECT 1) SELECT * FROM account WHERE id = 1",
        ] {
            assert_eq!(pinned_read(sql, &g), None, "{sql}");
        }
    }
}
