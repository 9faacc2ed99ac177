//! Name resolution: which guard a table reference names, and which column of the target a
//! qualified column reference is.

use sqlparser::ast::{Expr, Ident, ObjectName, ObjectNamePart};

use super::GuardSet;
use super::keywords::fold_ident;

/// The identifiers of a (qualified) name; `None` when a part is not a plain identifier.
pub(super) fn name_parts(name: &ObjectName) -> Option<Vec<&Ident>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i),
            _ => None,
        })
        .collect()
}

/// The guard of a table reference: schema and name when schema-qualified, else the first guard
/// with that name.
pub(super) fn resolve(name: &ObjectName, guards: &GuardSet) -> Option<usize> {
    let parts: Vec<String> = name_parts(name)?.into_iter().map(fold_ident).collect();
    match parts.as_slice() {
        [] => None,
        [name] => guards.guards.iter().position(|g| &g.table.name == name),
        [.., schema, name] => guards
            .guards
            .iter()
            .position(|g| &g.table.schema == schema && &g.table.name == name),
    }
}

/// The target of a write as the client named it, for matching column qualifiers.
pub(super) struct TargetName {
    /// Folded alias.
    pub(super) alias: Option<String>,
    /// Folded table name (last part) and the guard's schema.
    pub(super) name: String,
    pub(super) schema: String,
}

impl TargetName {
    /// The column a reference names when it is a column of the target.
    pub(super) fn column(&self, e: &Expr) -> Option<String> {
        match e {
            Expr::Identifier(i) => Some(fold_ident(i)),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let (col, qual) = parts.split_last()?;
                let qual: Vec<String> = qual.iter().map(fold_ident).collect();
                let ok = match &self.alias {
                    Some(a) => qual.len() == 1 && &qual[0] == a,
                    None => {
                        qual.len() <= 3
                            && qual.last() == Some(&self.name)
                            && (qual.len() < 2 || qual[qual.len() - 2] == self.schema)
                    }
                };
                ok.then(|| fold_ident(col))
            }
            Expr::Nested(inner) => self.column(inner),
            _ => None,
        }
    }
}
