//! The names of the database's aggregate and window functions, built-in and user-defined.
//!
//! Read capture adds columns to a `SELECT`'s output only when none of the functions its select
//! list and `ORDER BY` call is an aggregate (adding a column to an aggregate query fails, or
//! groups it otherwise) or a window function. A name cannot tell: users define aggregates of
//! any name. So each session asks its database, with the guard resolution, for every name
//! some aggregate or window function has ([`AGGREGATES_QUERY`]), and judges by name alone: a
//! name that any such function has counts, whatever its schema and arguments.

use std::collections::HashSet;

/// The names of the database's aggregate (`prokind = 'a'`) and window (`'w'`) functions, one
/// text row each.
pub const AGGREGATES_QUERY: &str = "SELECT DISTINCT proname::text \
     FROM pg_catalog.pg_proc WHERE prokind IN ('a', 'w')";

/// The names [`AGGREGATES_QUERY`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aggregates {
    names: HashSet<String>,
}

impl Aggregates {
    /// Reads the text rows of [`AGGREGATES_QUERY`].
    pub fn parse(rows: &[Vec<Option<String>>]) -> Aggregates {
        Aggregates {
            names: rows.iter().filter_map(|r| r.first()?.clone()).collect(),
        }
    }

    /// Some aggregate or window function has the name `name` (as PostgreSQL folds it).
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_the_rows() {
        let rows = vec![
            vec![Some("count".to_string())],
            vec![Some("My Agg".to_string())],
            vec![None],
        ];
        let a = Aggregates::parse(&rows);
        assert_eq!(a.len(), 2);
        assert!(a.contains("count") && a.contains("My Agg"));
        assert!(!a.contains("lower"));
    }
}
