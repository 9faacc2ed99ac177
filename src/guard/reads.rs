//! Reads that pin one row: `SELECT balance, version FROM account WHERE id = 7`.
//!
//! A result that lists a guarded table's key and version columns tells the session each row's
//! version by itself (see the relay's read tracking). Applications often select the version
//! without the key, or select neither; when the `WHERE` clause pins the key of the one
//! guarded table in `FROM`, the proxy still knows which row the result is about.
//!
//! A result names each column by table OID and attribute number only, so two instances of one
//! table (a self-join, the table again in a subquery or CTE) cannot be told apart there: a read
//! that names a guarded table more than once teaches nothing of that table
//! ([`ReadFacts::shared`]), rather than pair one row's key with another row's version.

use sqlparser::ast::{self, SetExpr, TableFactor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::capture::capture;
use super::keywords::fold_ident;
use super::lex::Lexed;
use super::predicate::key_and_pin;
use super::resolve::{TargetName, resolve};
use super::{Capture, GuardSet, PinnedRead, Target};

/// The row of a guarded table a single-table `SELECT` pins, if any (as statement 0).
pub fn pinned_read(sql: &str, guards: &GuardSet) -> Option<PinnedRead> {
    parse_pinned_read(sql, guards).ok().flatten()
}

/// A text sqlparser cannot parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unparsed;

/// As [`pinned_read`], telling apart a text sqlparser cannot parse.
pub fn parse_pinned_read(sql: &str, guards: &GuardSet) -> Result<Option<PinnedRead>, Unparsed> {
    Ok(read_facts(sql, guards)?.pinned)
}

/// What one read's text tells the session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadFacts {
    /// The row it pins, if any.
    pub pinned: Option<PinnedRead>,
    /// The guards (indexes) whose table it reads in more than one instance: its result rows
    /// cannot tell which instance a key or version column belongs to.
    pub shared: Vec<usize>,
    /// The columns the proxy may add to its output (see [`super::capture`]), as statement 0.
    pub capture: Option<Capture>,
}

/// The row a read pins, the guarded tables it reads more than once and its capture (one
/// parse for all three).
pub fn read_facts(sql: &str, guards: &GuardSet) -> Result<ReadFacts, Unparsed> {
    // The tokens as the analysis gives them to the parser: `U&"..."` names decoded.
    let lexed = Lexed::new(sql).map_err(|_| Unparsed)?;
    let stmts = Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(lexed.parser_tokens(&(0..lexed.toks.len())))
        .parse_statements()
        .map_err(|_| Unparsed)?;
    let shared = shared_tables(&stmts, guards);
    let capture = match stmts.as_slice() {
        [stmt] => capture(stmt, &lexed, guards),
        _ => None,
    };
    Ok(ReadFacts {
        pinned: pinned_in(stmts, guards),
        shared,
        capture,
    })
}

/// The guards whose table the statements name as a relation more than once (joins,
/// subqueries, CTEs alike).
fn shared_tables(stmts: &[ast::Statement], guards: &GuardSet) -> Vec<usize> {
    let mut seen: Vec<usize> = Vec::new();
    let mut shared: Vec<usize> = Vec::new();
    for stmt in stmts {
        let _ = ast::visit_relations(stmt, |name| {
            if let Some(g) = resolve(name, guards) {
                if !seen.contains(&g) {
                    seen.push(g);
                } else if !shared.contains(&g) {
                    shared.push(g);
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    shared
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
        (Target::Key(key), _) => Some(PinnedRead {
            statement: 0,
            guard,
            key,
            shows_version: may_show_column(&select.projection, &g.version),
        }),
        _ => None,
    }
}

/// Whether a result with this select list may hold the column `name` (folded). The server
/// reports a result column as a table's column only for a column reference, which may be
/// parenthesised or cast; so an item that does not spell the name anywhere and is not a `*`
/// never shows it. Conservative: the name anywhere in an item's text counts.
fn may_show_column(projection: &[ast::SelectItem], name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let quoted = name.replace('"', "\"\"");
    projection.iter().any(|item| {
        let text = item.to_string().to_ascii_lowercase();
        text.contains('*') || text.contains(&name) || text.contains(&quoted)
    })
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
    fn a_unicode_escaped_name_is_the_table_it_spells() {
        let g = guards();
        let r = pinned_read(
            "SELECT version FROM U&\"!0061ccount\" UESCAPE '!' WHERE id = 7",
            &g,
        )
        .expect("pins a row");
        assert_eq!(r.key, vec![ValueRef::Literal("7".into())]);
    }

    #[test]
    fn a_read_shows_the_version_only_if_its_select_list_may_hold_it() {
        let g = guards();
        let shows = |sql: &str| pinned_read(sql, &g).expect(sql).shows_version;
        for sql in [
            "SELECT balance, version FROM account WHERE id = 7",
            "SELECT * FROM account WHERE id = 7",
            "SELECT a.* FROM account a WHERE a.id = 7",
            "SELECT (VERSION)::int8 AS v FROM account WHERE id = 7",
            "SELECT \"version\" FROM account WHERE id = 7",
            "SELECT account.version FROM account WHERE id = 7",
            // Conservative: a `*` anywhere counts.
            "SELECT count(*) FROM account WHERE id = 7",
        ] {
            assert!(shows(sql), "{sql}");
        }
        for sql in [
            "SELECT balance FROM account WHERE id = 7",
            "SELECT balance + 1, 'v', now() FROM account WHERE id = 7",
            "SELECT id FROM account WHERE id = 7 AND version = 3",
        ] {
            assert!(!shows(sql), "{sql}");
        }
    }

    #[test]
    fn a_table_read_twice_is_shared() {
        let g = guards();
        let shared = |sql: &str| read_facts(sql, &g).unwrap().shared;
        for sql in [
            "SELECT a.id, b.version FROM account a JOIN account b ON b.id = a.id + 1",
            "SELECT a.id, b.version FROM account a, public.account b",
            "SELECT s.id, version FROM (SELECT id FROM account) s JOIN account USING (id)",
            "WITH x AS (SELECT id FROM account) SELECT x.id, a.version FROM x, account a",
            "SELECT id, version FROM account WHERE id IN (SELECT id + 1 FROM \"account\")",
        ] {
            assert_eq!(shared(sql), vec![0], "{sql}");
        }
        for sql in [
            "SELECT a.id, a.version FROM account a JOIN other o ON o.id = a.id",
            "SELECT account.id, account.version FROM account WHERE account.id = 1",
            "SELECT * FROM other a JOIN other b ON true",
        ] {
            assert_eq!(shared(sql), Vec::<usize>::new(), "{sql}");
        }
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
