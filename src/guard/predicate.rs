//! The key and version a `WHERE` clause fixes: `column = value` conjuncts of the target's key
//! columns and version column, values being literals or parameters.

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};

use super::lex::param_number;
use super::resolve::TargetName;
use super::{Target, ValueRef};

/// A literal or parameter: numbers as written (a leading `-` kept), strings unquoted, casts
/// looked through.
fn value_ref(e: &Expr) -> Option<ValueRef> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(ValueRef::Literal(n.to_string())),
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                Some(ValueRef::Literal(s.clone()))
            }
            Value::DollarQuotedString(d) => Some(ValueRef::Literal(d.value.clone())),
            Value::Placeholder(p) => param_number(p).map(ValueRef::Param),
            _ => None,
        },
        Expr::UnaryOp {
            op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) if *op == UnaryOperator::Minus => {
                    Some(ValueRef::Literal(format!("-{n}")))
                }
                Value::Number(n, _) => Some(ValueRef::Literal(n.to_string())),
                _ => None,
            },
            _ => None,
        },
        Expr::Cast { expr, .. } => value_ref(expr),
        Expr::Nested(inner) => value_ref(inner),
        Expr::TypedString(t) => match &t.value.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                Some(ValueRef::Literal(s.clone()))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The `AND`ed parts of a condition, parentheses looked through.
fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        _ => out.push(e),
    }
}

/// The key and pinned version a WHERE clause fixes with `column = value` conjuncts.
pub(super) fn key_and_pin(
    selection: Option<&Expr>,
    target: &TargetName,
    key: &[String],
    version: &str,
) -> (Target, Option<ValueRef>) {
    let Some(selection) = selection else {
        return (Target::Bulk, None);
    };
    let mut parts = Vec::new();
    conjuncts(selection, &mut parts);
    // Per column: the value, or `None` once two different values were seen.
    let mut seen: Vec<(String, Option<ValueRef>)> = Vec::new();
    for part in parts {
        let Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = part
        else {
            continue;
        };
        let pair = match (target.column(left), value_ref(right)) {
            (Some(c), Some(v)) => Some((c, v)),
            _ => match (target.column(right), value_ref(left)) {
                (Some(c), Some(v)) => Some((c, v)),
                _ => None,
            },
        };
        let Some((col, value)) = pair else {
            continue;
        };
        match seen.iter_mut().find(|(c, _)| *c == col) {
            Some((_, v)) => {
                if v.as_ref() != Some(&value) {
                    *v = None;
                }
            }
            None => seen.push((col, Some(value))),
        }
    }
    let get = |col: &str| {
        seen.iter()
            .find(|(c, _)| c == col)
            .and_then(|(_, v)| v.clone())
    };
    let values: Option<Vec<ValueRef>> = key.iter().map(|k| get(k)).collect();
    let target = values.map_or(Target::Bulk, Target::Key);
    (target, get(version))
}
