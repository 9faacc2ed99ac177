//! Versions read without their key: `SELECT balance, version FROM account WHERE id = 7`.
//!
//! When a `SELECT` pins one row of a guarded table (see [`crate::guard::reads`]), the version
//! column in its result is that row's version even if the key columns are not selected; and a
//! read of the row that shows no version, or finds no row, leaves the session knowing nothing
//! about it (it is forgotten), so an application that re-reads before retrying is never held
//! to a version it has not seen.
//!
//! A simple `Query` may hold several statements (`BEGIN; SELECT ... WHERE id = 7`): its reply
//! holds one result per statement, in order, each ended by its `CommandComplete`, which tells
//! which statement the rows arriving belong to.

use super::GuardState;
use super::cx::Cx;
use std::sync::Arc;

use super::reads::{Col, canonical};
use crate::guard::{GuardSet, PinnedRead, TableId, ValueRef};
use crate::protocol::backend::{self as be, Column};
use crate::protocol::frontend::Bind;

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
    /// Records what one `DataRow` says, given where the version column is.
    pub fn observe(&self, guard: &mut GuardState, row_body: &[u8], version: Option<Col>) {
        let Some(col) = version else { return };
        let Some(vals) = be::data_row(row_body) else {
            return;
        };
        let version = vals
            .get(col.index)
            .copied()
            .flatten()
            .and_then(|raw| canonical(col.type_oid, col.format, raw));
        match version {
            Some(v) => guard.tracker.observe(self.table, &self.key, &v),
            None => guard.tracker.forget(self.table, &self.key),
        }
    }

    /// The read is over: a row that was not found, or read without its version, is forgotten.
    pub fn complete(&self, guard: &mut GuardState, complete_body: &[u8], version_known: bool) {
        let rows = be::tag_rows(be::command_tag(complete_body));
        if !version_known || rows == Some(0) {
            guard.tracker.forget(self.table, &self.key);
        }
    }
}

/// The pinned reads of one simple `Query` (or of one script step) in flight.
#[derive(Debug)]
pub struct Reads {
    checks: Vec<ReadCheck>,
    /// The statement whose reply arrives now: `CommandComplete`s counted so far.
    at: usize,
    /// The query is a step of a script (an error stops the script; the end starts the next
    /// step).
    pub step: bool,
}

impl Reads {
    pub fn new(checks: Vec<ReadCheck>, step: bool) -> Reads {
        Reads {
            checks,
            at: 0,
            step,
        }
    }
}

impl GuardState {
    /// Follows one message of the reply to a query holding pinned reads.
    pub(super) fn follow_reads(&mut self, cx: &mut Cx<'_>, tag: u8, msg: &[u8], reads: &mut Reads) {
        let body = &msg[5..];
        let at = reads.at;
        let check = reads.checks.iter_mut().find(|c| c.statement == at);
        if tag == be::ROW_DESCRIPTION
            && let Some(check) = check
        {
            // One decoding serves the rows' read plan and the read's version column.
            let cols = be::row_description(body).unwrap_or_default();
            self.row_plan = self.plan_of_columns(cx, &cols).map(Arc::new);
            check.version = self.version_column(check.guard, &cols);
            return;
        }
        self.track_simple_rows(cx, tag, msg);
        if let Some(check) = check {
            match tag {
                be::DATA_ROW => check.observe(self, body, check.version),
                be::COMMAND_COMPLETE => check.complete(self, body, check.version.is_some()),
                _ => {}
            }
        }
        if tag == be::COMMAND_COMPLETE {
            reads.at += 1;
        }
    }

    /// Canonical key text from literals and bound parameters (`None` when one is unknown).
    pub(super) fn key_text(
        &self,
        guard: usize,
        vals: &[ValueRef],
        bind: Option<(&Bind<'_>, &[u32])>,
    ) -> Option<Vec<String>> {
        let rg = self.resolved.get(guard);
        vals.iter()
            .enumerate()
            .map(|(i, v)| {
                let column_type = rg.and_then(|r| r.key_types.get(i).copied()).unwrap_or(0);
                match v {
                    ValueRef::Literal(s) => canonical(column_type, 0, s.as_bytes()),
                    ValueRef::Param(n) => {
                        let (b, declared) = bind?;
                        param_text(b, declared, *n, column_type)
                    }
                }
            })
            .collect()
    }

    /// True when a pinned read must be followed: its result may show the version, or the
    /// session tracks rows of its table (a read without the version forgets its row), or a
    /// reply still to come may start tracking some.
    pub(super) fn follows_read(&self, cx: &Cx<'_>, guards: &GuardSet, read: &PinnedRead) -> bool {
        read.shows_version
            || guards
                .table_ids
                .get(read.guard)
                .is_none_or(|&t| self.tracker.tracks_table(t))
            || self.rows_may_come(cx)
    }

    /// A pinned read, ready to follow (`None` when its key is not known).
    pub(super) fn read_check(
        &self,
        guards: &GuardSet,
        read: &PinnedRead,
        bind: Option<(&Bind<'_>, &[u32])>,
    ) -> Option<ReadCheck> {
        Some(ReadCheck {
            statement: read.statement,
            table: *guards.table_ids.get(read.guard)?,
            guard: read.guard,
            key: self.key_text(read.guard, &read.key, bind)?,
            version: None,
        })
    }

    /// The version column of guard `guard` in a result with these columns.
    pub(super) fn version_column(&self, guard: usize, cols: &[Column<'_>]) -> Option<Col> {
        let rg = self.resolved.get(guard)?;
        let index = cols
            .iter()
            .position(|c| c.table_oid == rg.table_oid && c.attnum == rg.version_attnum)?;
        Some(Col {
            index,
            type_oid: cols[index].type_oid,
            format: cols[index].format,
        })
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
