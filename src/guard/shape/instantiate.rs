//! Mapping the analysis of a shape back onto a text of that shape: offsets shifted, each
//! placeholder's value read back as the literal it replaced.

use std::ops::Range;
use std::sync::Arc;

use super::{LitKind, Shape};
use crate::guard::{Action, Analysis, GuardedWrite, PinnedRead, Target, ValueRef};

impl Shape {
    /// The offset in the original text of `p`, an offset in the shape (None inside a
    /// placeholder).
    fn map(&self, p: usize) -> Option<usize> {
        let mut delta: isize = 0;
        for l in &self.literals {
            if p <= l.shape.start {
                break;
            }
            if p < l.shape.end {
                return None;
            }
            delta += l.text.len() as isize - l.shape.len() as isize;
        }
        p.checked_add_signed(delta)
    }

    fn map_range(&self, r: &Range<usize>) -> Option<Range<usize>> {
        Some(self.map(r.start)?..self.map(r.end)?)
    }

    /// The literal a placeholder stands for, as the analysis of the text would give it.
    fn value(&self, sql: &str, v: &ValueRef) -> Option<ValueRef> {
        let ValueRef::Param(n) = v else {
            return Some(v.clone());
        };
        let lit = self.literals.get(usize::from(*n).checked_sub(1)?)?;
        let text = &sql[lit.text.clone()];
        Some(ValueRef::Literal(match lit.kind {
            LitKind::Quoted => text[1..text.len() - 1].replace("''", "'"),
            LitKind::Number { negative } => {
                let digits = text.trim_start_matches(['+', '-']).trim_start();
                if negative {
                    format!("-{digits}")
                } else {
                    digits.to_string()
                }
            }
        }))
    }

    /// True when [`Shape::instantiate`] maps `shaped` onto a text of this shape. Checked
    /// without building anything: a caller may decide from the shape's analysis alone, and
    /// instantiate only what it needs.
    pub fn trusts(&self, shaped: &Analysis) -> bool {
        let value = |v: &ValueRef| match v {
            ValueRef::Param(n) => usize::from(*n)
                .checked_sub(1)
                .is_some_and(|i| i < self.literals.len()),
            ValueRef::Literal(_) => true,
        };
        let write = |w: &GuardedWrite| {
            let s = &w.splice;
            let key = match &w.target {
                Target::Key(vals) => vals.iter().all(value),
                Target::Bulk => true,
            };
            key && w.pinned.as_ref().is_none_or(value)
                && self.map_range(&s.statement).is_some()
                && s.set_end.is_none_or(|e| self.map(e).is_some())
                && s.condition
                    .as_ref()
                    .is_none_or(|c| self.map_range(c).is_some())
                && self.map(s.where_at).is_some()
                && self.map(s.returning_at).is_some()
        };
        !shaped.read_unparsed
            && shaped.statements.iter().all(|st| {
                self.map_range(&st.range).is_some()
                    && match &st.action {
                        Action::Pass { .. } => true,
                        Action::Refuse { .. } => false,
                        Action::Write(w) => write(w),
                    }
            })
            && shaped.reads.iter().all(|r| r.key.iter().all(value))
            && shaped.captures.iter().all(|c| self.map(c.at).is_some())
    }

    /// The offset in the original text of `p`, an offset in the shape that is not inside a
    /// placeholder (a capture's insertion point).
    pub fn map_offset(&self, p: usize) -> Option<usize> {
        self.map(p)
    }

    /// The pinned read of the original text, from the pinned read of its shape.
    pub fn instantiate_read(&self, read: &PinnedRead, sql: &str) -> Option<PinnedRead> {
        Some(PinnedRead {
            key: read
                .key
                .iter()
                .map(|v| self.value(sql, v))
                .collect::<Option<_>>()?,
            ..read.clone()
        })
    }

    /// The analysis of the original text, from the analysis of its shape. None when the
    /// shape's analysis refuses a statement (the text itself decides that) or cannot be
    /// mapped back.
    pub fn instantiate(&self, shaped: &Analysis, sql: &str) -> Option<Analysis> {
        if shaped.read_unparsed {
            return None;
        }
        let mut out = shaped.clone();
        for st in &mut out.statements {
            st.range = self.map_range(&st.range)?;
            match &mut st.action {
                Action::Pass { .. } => {}
                Action::Refuse { .. } => return None,
                Action::Write(w) => {
                    let w = Arc::make_mut(w);
                    if let Target::Key(vals) = &mut w.target {
                        for v in vals.iter_mut() {
                            *v = self.value(sql, v)?;
                        }
                    }
                    if let Some(p) = &mut w.pinned {
                        *p = self.value(sql, p)?;
                    }
                    w.max_param = 0;
                    let s = &mut w.splice;
                    s.statement = self.map_range(&s.statement)?;
                    if let Some(e) = &mut s.set_end {
                        *e = self.map(*e)?;
                    }
                    if let Some(c) = &mut s.condition {
                        *c = self.map_range(c)?;
                    }
                    s.where_at = self.map(s.where_at)?;
                    s.returning_at = self.map(s.returning_at)?;
                }
            }
        }
        for read in &mut out.reads {
            *read = self.instantiate_read(read, sql)?;
        }
        for capture in &mut out.captures {
            capture.at = self.map(capture.at)?;
        }
        Some(out)
    }
}
