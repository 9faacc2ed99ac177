//! How the guard reads result rows: where a guarded row's key and version columns are
//! ([`ReadPlan`], [`Col`]), the columns read capture added to a result ([`Captured`],
//! [`strip_row`]), the pinned reads in flight ([`ReadCheck`], [`Reads`]), and the canonical
//! text of a value, the form in which versions and keys are compared and tracked.
//!
//! Plain data and pure functions: what the session learns from the rows is decided in
//! [`super::reads`] and [`super::pinned`].

use std::sync::Arc;

use bytes::BytesMut;
use smallvec::SmallVec;

use crate::catalog::resolve::ResolvedGuards;
use crate::guard::canon::{self, Canon};
use crate::guard::capture::COLUMN_NAME;
use crate::guard::datestyle::{self, DateStyle};
use crate::guard::track::Tracker;
use crate::guard::values;
use crate::guard::{CopyFormat, CursorDecl, GuardSet, TableId};
use crate::protocol::backend::{self as be, Column};
use crate::protocol::frontend::Bind;

/// Where a column's value comes from in a row: index, type OID and format (0 text, 1 binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Col {
    pub index: usize,
    pub type_oid: u32,
    pub format: i16,
}

impl Col {
    /// The same column with the result format a `Bind` asked for (raw result-format section).
    pub fn with_format(self, result_formats: &[u8]) -> Col {
        let codes = result_format_codes(result_formats);
        let format = match codes.len() {
            0 => 0,
            1 => codes[0],
            _ => codes.get(self.index).copied().unwrap_or(0),
        };
        Col { format, ..self }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The table's id in the tracker.
    table: TableId,
    keys: Vec<Col>,
    version: Col,
}

/// The guarded rows a result carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadPlan {
    entries: Vec<Entry>,
    /// Indexes count from the end of the row: the row's last `n` columns are the plan's
    /// (the proxy's own: a write's `RETURNING`, or the columns read capture added).
    from_end: Option<usize>,
    /// The plan reads the proxy's own `RETURNING` columns of a write: it advances the
    /// versions the session knows and adds none.
    advance: bool,
}

impl ReadPlan {
    /// The plan for a result with these columns, if it carries some guarded table's key and
    /// version columns. The guards in `shared` (read in more than one instance by the
    /// statement: columns of different rows look alike) are left out.
    pub fn from_columns(
        cols: &[Column<'_>],
        resolved: &ResolvedGuards,
        guards: &GuardSet,
        shared: &[usize],
    ) -> Option<ReadPlan> {
        let mut entries = Vec::new();
        for col in cols {
            let Some((guard, rg)) = resolved.by_table_oid(col.table_oid) else {
                continue;
            };
            if shared.contains(&guard) {
                continue;
            }
            let Some(&table) = guards.table_ids.get(guard) else {
                continue;
            };
            if entries.iter().any(|e: &Entry| e.table == table) {
                continue;
            }
            let find = |attnum: i16| {
                cols.iter()
                    .position(|c| c.table_oid == rg.table_oid && c.attnum == attnum)
                    .map(|i| Col {
                        index: i,
                        type_oid: cols[i].type_oid,
                        format: cols[i].format,
                    })
            };
            let keys: Option<Vec<Col>> = rg.key_attnums.iter().map(|&a| find(a)).collect();
            if let (Some(keys), Some(version)) = (keys, find(rg.version_attnum)) {
                entries.push(Entry {
                    table,
                    keys,
                    version,
                });
            }
        }
        (!entries.is_empty()).then_some(ReadPlan {
            entries,
            from_end: None,
            advance: false,
        })
    }

    /// The plan for the columns read capture added: the last `cols.len()` of each row (type
    /// and format each), table by table in `layout` order (each table's key columns, then
    /// its version). None when they do not add up.
    pub fn captured(layout: &[(TableId, usize)], cols: &[(u32, i16)]) -> Option<ReadPlan> {
        let col = |index: usize| Col {
            index,
            type_oid: cols[index].0,
            format: cols[index].1,
        };
        let mut entries = Vec::with_capacity(layout.len());
        let mut at = 0;
        for &(table, keys) in layout {
            if at + keys >= cols.len() {
                return None;
            }
            entries.push(Entry {
                table,
                keys: (at..at + keys).map(col).collect(),
                version: col(at + keys),
            });
            at += keys + 1;
        }
        (at == cols.len()).then_some(ReadPlan {
            entries,
            from_end: Some(cols.len()),
            advance: false,
        })
    }

    /// The plan for the proxy's own `RETURNING` columns: the last `types.len()` of each row
    /// (key columns in key order, then the version).
    pub fn returning(table: TableId, types: &[u32], format: i16) -> ReadPlan {
        let mut cols: Vec<Col> = types
            .iter()
            .enumerate()
            .map(|(index, &type_oid)| Col {
                index,
                type_oid,
                format,
            })
            .collect();
        let version = cols.pop().expect("at least the version column");
        ReadPlan {
            entries: vec![Entry {
                table,
                keys: cols,
                version,
            }],
            from_end: Some(types.len()),
            advance: true,
        }
    }

    /// The same plan with the result formats a `Bind` asked for (raw result-format section).
    pub fn with_formats(&self, result_formats: &[u8]) -> ReadPlan {
        let codes = result_format_codes(result_formats);
        let fmt = |i: usize| match codes.len() {
            0 => 0,
            1 => codes[0],
            _ => codes.get(i).copied().unwrap_or(0),
        };
        let mut plan = self.clone();
        for e in &mut plan.entries {
            for c in e.keys.iter_mut().chain(std::iter::once(&mut e.version)) {
                c.format = fmt(c.index);
            }
        }
        plan
    }

    /// The same plan, every column in `format` (the proxy's own columns of a portal: all in
    /// the one format its `Bind` asked for, else text).
    pub fn with_format(&self, format: i16) -> ReadPlan {
        let mut plan = self.clone();
        for e in &mut plan.entries {
            for c in e.keys.iter_mut().chain(std::iter::once(&mut e.version)) {
                c.format = format;
            }
        }
        plan
    }

    /// Records the versions in one `DataRow` body, its text values printed under `style`.
    pub fn observe(&self, row_body: &[u8], tracker: &mut Tracker, style: DateStyle) {
        if self.advance && tracker.is_empty() {
            // A write's own versions only advance rows already tracked: none are.
            return;
        }
        let Some(mut vals) = be::data_row(row_body) else {
            return;
        };
        if let Some(n) = self.from_end {
            let Some(first) = vals.len().checked_sub(n) else {
                return;
            };
            vals.drain(..first);
        }
        self.observe_values(&vals, tracker, style);
    }

    /// Records the versions in one row's values: the whole row, or the plan's last columns
    /// for a plan that reads the proxy's own.
    pub fn observe_values(&self, vals: &[Option<&[u8]>], tracker: &mut Tracker, style: DateStyle) {
        'entries: for e in &self.entries {
            let Some(version) = value_canon(vals, e.version, style) else {
                continue;
            };
            let mut keys: SmallVec<[Canon<'_>; 2]> = SmallVec::new();
            for &c in &e.keys {
                match value_canon(vals, c, style) {
                    Some(k) => keys.push(k),
                    None => continue 'entries,
                }
            }
            if self.advance {
                tracker.advance(e.table, &keys, version.as_ref());
            } else {
                tracker.observe(e.table, &keys, version.as_ref());
            }
        }
    }
}

/// The columns read capture added to the output of one statement of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Index of the statement among the statements of its text (0 for a lone statement).
    pub statement: usize,
    /// Each table instance's table and number of key columns, in column order.
    pub layout: Layout,
    /// How many columns were added at the end of each row.
    pub added: usize,
    /// The statement is a `COPY (SELECT ...) TO STDOUT` in this format, and the added columns'
    /// types as the catalog gives them (a COPY says none; empty when unresolved).
    pub copy: Option<(CopyFormat, Vec<u32>)>,
}

/// A cursor declared with a captured query: what its `FETCH`es carry.
#[derive(Debug, Clone)]
pub struct CapturedCursor {
    /// The columns added (as statement 0 of a `FETCH`).
    pub captured: Captured,
    /// The added columns' types (empty when the guards were not resolved).
    pub types: Vec<u32>,
    pub decl: CursorDecl,
}

/// Each captured table instance's table and number of key columns, in column order (inline
/// for up to two instances).
pub type Layout = SmallVec<[(TableId, usize); 2]>;

/// The plan last made for a captured simple-query result: the next result with the same
/// layout and added columns (a query run again with other constants) reuses it, and one whose
/// whole description is the same (the usual case) is also stripped without being decoded.
#[derive(Debug, Default)]
pub struct LastPlan {
    layout: Layout,
    tail: SmallVec<[(u32, i16); 4]>,
    plan: Option<Arc<ReadPlan>>,
    /// The `RowDescription` body the plan was last used for, and where its client's columns
    /// end in it.
    body: Vec<u8>,
    end: usize,
}

/// The largest `RowDescription` body [`LastPlan`] keeps (a wider one is decoded every time).
const MAX_KEPT_DESCRIPTION: usize = 4096;

/// A `RowDescription` of a result whose last `added` columns should be the proxy's. When
/// they are (they bear [`COLUMN_NAME`]), the client gets it without them, and the plan that
/// reads them is returned (`Some(None)` when they do not match `layout`), from `last` when
/// it was made for the same columns; `None` when they are not, and the result is the
/// client's as it is.
pub fn strip_description(
    body: &[u8],
    added: usize,
    layout: &[(TableId, usize)],
    to_client: &mut BytesMut,
    last: &mut LastPlan,
) -> Option<Option<Arc<ReadPlan>>> {
    if last.plan.is_some()
        && last.tail.len() == added
        && last.layout[..] == *layout
        && last.body == body
    {
        // The same description as last time (its added columns and their plan included).
        let keep = be_i16_count(body) - last.tail.len();
        be::write_head(to_client, be::ROW_DESCRIPTION, body, keep, last.end);
        return Some(last.plan.clone());
    }
    let cols = be::row_description(body)?;
    let keep = cols.len().checked_sub(added)?;
    if !ours(&cols[keep..]) {
        return None;
    }
    let end = be::write_truncated(to_client, be::ROW_DESCRIPTION, body, keep)?;
    let tail: SmallVec<[(u32, i16); 4]> = cols[keep..]
        .iter()
        .map(|c| (c.type_oid, c.format))
        .collect();
    let kept = if body.len() <= MAX_KEPT_DESCRIPTION {
        body
    } else {
        &[]
    };
    if last.plan.is_some() && last.layout[..] == *layout && last.tail == tail {
        last.body.clear();
        last.body.extend_from_slice(kept);
        last.end = end;
        return Some(last.plan.clone());
    }
    let plan = ReadPlan::captured(layout, &tail).map(Arc::new);
    if plan.is_some() {
        *last = LastPlan {
            layout: layout.into(),
            tail,
            plan: plan.clone(),
            body: kept.to_vec(),
            end,
        };
    }
    Some(plan)
}

/// True when the last `added` columns of a `RowDescription` body are the proxy's.
pub fn ends_with_added(body: &[u8], added: usize) -> bool {
    be::row_description(body).is_some_and(|cols| {
        cols.len()
            .checked_sub(added)
            .is_some_and(|keep| ours(&cols[keep..]))
    })
}

fn ours(cols: &[be::Column<'_>]) -> bool {
    cols.iter().all(|c| c.name == COLUMN_NAME.as_bytes())
}

/// A `DataRow` of a result whose last `added` columns are the proxy's: `plan` reads them,
/// and the client gets the row without them. One pass over the row, no copy of its values
/// beyond the client's. Returns false, having written nothing, for a row that does not
/// read as one (the caller relays it as it is).
pub fn strip_row(
    body: &[u8],
    added: usize,
    plan: Option<&ReadPlan>,
    tracker: &mut Tracker,
    style: DateStyle,
    to_client: &mut BytesMut,
) -> bool {
    let n = be_i16_count(body);
    let keep = n.saturating_sub(added);
    let Some((end, tail)) = be::split_row(body, keep) else {
        return false;
    };
    if let Some(plan) = plan {
        plan.observe_values(&tail, tracker, style);
    }
    be::write_head(to_client, be::DATA_ROW, body, keep, end);
    true
}

/// The column count of a `RowDescription` or `DataRow` body.
fn be_i16_count(body: &[u8]) -> usize {
    crate::protocol::be_i16(body).map_or(0, |(n, _)| n.max(0) as usize)
}

/// The result format codes in the raw tail of a `Bind` body.
pub fn result_format_codes(raw: &[u8]) -> Vec<i16> {
    let Some((n, mut rest)) = crate::protocol::be_i16(raw) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let Some((c, r)) = crate::protocol::be_i16(rest) else {
            break;
        };
        out.push(c);
        rest = r;
    }
    out
}

/// A column's canonical value, borrowed from the row where it can be.
fn value_canon<'a>(vals: &[Option<&'a [u8]>], col: Col, style: DateStyle) -> Option<Canon<'a>> {
    let raw = (*vals.get(col.index)?)?;
    canon::canonical_result(col.type_oid, col.format, raw, style)
}

/// The canonical text of a result value, its text form printed under `style` (the session's
/// `DateStyle` and `TimeZone`).
pub fn canonical_result(
    type_oid: u32,
    format: i16,
    raw: &[u8],
    style: DateStyle,
) -> Option<String> {
    if format == 1 {
        values::canonical_binary(type_oid, raw)
    } else {
        datestyle::canonical_result(type_oid, raw, style)
    }
}

/// The canonical text of a value in the given format.
pub fn canonical(type_oid: u32, format: i16, raw: &[u8]) -> Option<String> {
    if format == 1 {
        values::canonical_binary(type_oid, raw)
    } else {
        values::canonical_text(type_oid, raw)
    }
}

/// A pinned read in flight.
#[derive(Debug, Clone)]
pub struct ReadCheck {
    /// Index of the read among the statements of its text (0 for a lone statement).
    pub statement: usize,
    /// The table's id in the tracker.
    pub table: TableId,
    /// The guard's index in the session's current guards.
    pub guard: usize,
    pub key: Vec<String>,
    /// The version column in the result, once known (simple protocol; the extended protocol
    /// keeps it in the portal's description).
    pub version: Option<Col>,
}

impl ReadCheck {
    /// Records what one `DataRow` says, given where the version column is and how the server
    /// prints dates (`style`).
    pub fn observe(
        &self,
        tracker: &mut Tracker,
        row_body: &[u8],
        version: Option<Col>,
        style: DateStyle,
    ) {
        let Some(col) = version else { return };
        let Some(vals) = be::data_row(row_body) else {
            return;
        };
        let version = vals
            .get(col.index)
            .copied()
            .flatten()
            .and_then(|raw| canonical_result(col.type_oid, col.format, raw, style));
        match version {
            Some(v) => tracker.observe(self.table, &self.key, &v),
            None => tracker.forget(self.table, &self.key),
        }
    }

    /// The read is over: a row that was not found, or read without its version, is forgotten.
    pub fn complete(&self, tracker: &mut Tracker, complete_body: &[u8], version_known: bool) {
        let rows = be::tag_rows(be::command_tag(complete_body));
        if !version_known || rows == Some(0) {
            tracker.forget(self.table, &self.key);
        }
    }
}

/// The pinned reads of one simple `Query` (or of one script step) in flight.
#[derive(Debug)]
pub struct Reads {
    pub(super) checks: Vec<ReadCheck>,
    /// The statement whose reply arrives now: `CommandComplete`s counted so far.
    pub(super) at: usize,
    /// The query is a step of a script (an error stops the script; the end starts the next
    /// step).
    pub step: bool,
    /// Guards the query reads in more than one instance: its rows teach nothing of them.
    pub shared: Vec<usize>,
    /// The statements whose output read capture added columns to (inline for one: the
    /// usual query).
    pub captured: SmallVec<[Captured; 1]>,
    /// Columns to take off the end of each row of the result arriving (the proxy's, found
    /// in its `RowDescription`).
    pub(super) strip: usize,
    /// The query's text and its `standard_conforming_strings`, when captured statements pin
    /// rows: their rows teach key and version themselves, so the key of such a read is read
    /// from the text only when the read finds no row (see
    /// [`super::GuardState::forget_unfound_in_text`]).
    pub(super) unfound: Option<(Box<str>, bool)>,
}

impl Reads {
    pub fn new(checks: Vec<ReadCheck>, step: bool) -> Reads {
        Reads {
            checks,
            at: 0,
            step,
            shared: Vec::new(),
            captured: SmallVec::new(),
            strip: 0,
            unfound: None,
        }
    }
}

/// Canonical text of bound parameter `n` (1-based): decoded as its own type (declared or
/// described; else the column's), then made canonical for the column it is compared with.
pub fn param_text(b: &Bind<'_>, types: &[u32], n: u16, column_type: u32) -> Option<String> {
    let idx = usize::from(n).checked_sub(1)?;
    let raw = (*b.params.get(idx)?)?;
    let t = match types.get(idx).copied() {
        Some(t) if t != 0 => t,
        _ => column_type,
    };
    let text = canonical(t, b.param_format(idx), raw)?;
    if t == column_type || column_type == 0 {
        Some(text)
    } else {
        canonical(column_type, 0, text.as_bytes())
    }
}

/// [`param_text`] without allocating where the value is already canonical (an integer or a
/// text bound as the column's own type, a binary integer).
pub fn param_canon<'b>(b: &Bind<'b>, types: &[u32], n: u16, column_type: u32) -> Option<Canon<'b>> {
    let idx = usize::from(n).checked_sub(1)?;
    let raw = (*b.params.get(idx)?)?;
    let t = match types.get(idx).copied() {
        Some(t) if t != 0 => t,
        _ => column_type,
    };
    if (t == column_type || column_type == 0)
        && let Some(c) = canon::canonical_plain(t, b.param_format(idx), raw)
    {
        return Some(c);
    }
    param_text(b, types, n, column_type).map(Canon::Owned)
}

/// Each table instance's table and number of key columns, in column order.
pub fn layout(tables: &[&crate::guard::CaptureTable], guards: &GuardSet) -> Layout {
    tables
        .iter()
        .map(|t| (guards.table_ids[t.guard], guards.guards[t.guard].key.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `RowDescription` body: (name, type OID) per column, text format.
    fn description(cols: &[(&str, u32)]) -> Vec<u8> {
        let mut b = (cols.len() as i16).to_be_bytes().to_vec();
        for (name, type_oid) in cols {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&0u32.to_be_bytes()); // table OID
            b.extend_from_slice(&0i16.to_be_bytes()); // attnum
            b.extend_from_slice(&type_oid.to_be_bytes());
            b.extend_from_slice(&4i16.to_be_bytes()); // typlen
            b.extend_from_slice(&(-1i32).to_be_bytes()); // typmod
            b.extend_from_slice(&0i16.to_be_bytes()); // format
        }
        b
    }

    fn strip(body: &[u8], layout: &Layout, last: &mut LastPlan) -> (BytesMut, Arc<ReadPlan>) {
        let mut out = BytesMut::new();
        let plan = strip_description(body, 2, layout, &mut out, last)
            .expect("the proxy's columns")
            .expect("a plan for them");
        (out, plan)
    }

    #[test]
    fn a_description_seen_again_is_stripped_alike_and_its_plan_reused() {
        let layout: Layout = [(TableId(0), 1)].into_iter().collect();
        let ours = [(COLUMN_NAME, 23), (COLUMN_NAME, 28)];
        let first = description(&[&[("abalance", 23)][..], &ours].concat());
        let other = description(&[&[("bid", 23), ("filler", 25)][..], &ours].concat());
        let mut last = LastPlan::default();
        let (a, plan_a) = strip(&first, &layout, &mut last);
        assert_eq!(a[..], framed(&description(&[("abalance", 23)])));
        // Again: the same bytes, the same plan.
        let (again, plan_again) = strip(&first, &layout, &mut last);
        assert_eq!(a, again);
        assert!(Arc::ptr_eq(&plan_a, &plan_again));
        // Other client columns before the same added ones: its own bytes, the same plan.
        let (b, plan_b) = strip(&other, &layout, &mut last);
        assert_eq!(b[..], framed(&description(&[("bid", 23), ("filler", 25)])));
        assert!(Arc::ptr_eq(&plan_a, &plan_b));
        let (b2, _) = strip(&other, &layout, &mut last);
        assert_eq!(b, b2, "the other description again");
        let (a2, _) = strip(&first, &layout, &mut last);
        assert_eq!(a, a2, "the first description after another");
        // Added columns of other types: a plan of their own.
        let int8 = description(&[("abalance", 23), (COLUMN_NAME, 20), (COLUMN_NAME, 28)]);
        let (_, plan_c) = strip(&int8, &layout, &mut last);
        assert!(!Arc::ptr_eq(&plan_a, &plan_c));
        assert_eq!(plan_c.entries[0].keys[0].type_oid, 20);
    }

    /// A body framed as a `RowDescription` message.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut m = vec![be::ROW_DESCRIPTION];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }
}
