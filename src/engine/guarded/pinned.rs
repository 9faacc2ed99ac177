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
//! which statement the rows arriving belong to. A statement read capture added columns to
//! (see [`super::capture`]) has its result stripped of them here, and its rows read from them.

use crate::protocol::Frame;
use std::sync::Arc;

use super::copy_out;
use super::cx::Cx;
use super::rows::{Col, ReadCheck, ReadPlan, Reads, strip_description, strip_row};
use super::state::GuardState;
use super::tag::Tag;
use crate::engine::replies::Pending;
use crate::guard::{CopyFormat, GuardSet, PinnedRead};
use crate::protocol::backend::{self as be, Column};
use crate::protocol::frontend::Bind;

impl GuardState {
    /// Follows one message of the reply to a query holding pinned reads or captured reads.
    /// Returns true when the message was changed or swallowed.
    fn follow_reads(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
        reads: &mut Reads,
    ) -> bool {
        if let Some(i) = reads.captured.iter().position(|c| c.statement == reads.at) {
            return self.follow_captured(cx, tag, msg, reads, i);
        }
        let body = msg.body();
        let at = reads.at;
        let check = reads.checks.iter_mut().find(|c| c.statement == at);
        if tag == be::ROW_DESCRIPTION
            && let Some(check) = check
        {
            // One decoding serves the rows' read plan and the read's version column.
            let cols = be::row_description(body).unwrap_or_default();
            self.row_plan = self.plan_of_columns(cx, &cols, &reads.shared).map(Arc::new);
            check.version = self.version_column(check.guard, &cols);
            return false;
        }
        self.track_simple_rows(cx, tag, msg, &reads.shared);
        if let Some(check) = check {
            match tag {
                be::DATA_ROW => {
                    check.observe(&mut self.tracker, body, check.version, cx.params.date_style)
                }
                be::COMMAND_COMPLETE => {
                    check.complete(&mut self.tracker, body, check.version.is_some())
                }
                _ => {}
            }
        }
        if tag == be::COMMAND_COMPLETE {
            reads.at += 1;
        }
        false
    }

    /// One message of the result of a captured statement (`reads.captured[i]`): its
    /// `RowDescription` and rows lose the proxy's columns, which the rows' versions are read
    /// from. A pinned read among them still forgets its row when the read finds none.
    fn follow_captured(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
        reads: &mut Reads,
        i: usize,
    ) -> bool {
        let body = msg.body();
        let c = &reads.captured[i];
        match tag {
            be::ROW_DESCRIPTION => {
                // Columns not the proxy's (never expected) leave the result as it is.
                let out = &mut cx.out.to_client;
                let last = &mut self.last_plan;
                let stripped = strip_description(body, c.added, &c.layout, out, last);
                reads.strip = if stripped.is_some() { c.added } else { 0 };
                self.row_plan = stripped.flatten();
                reads.strip > 0
            }
            be::DATA_ROW if reads.strip > 0 => {
                let style = cx.params.date_style;
                let plan = self.row_plan.as_deref();
                let out = &mut cx.out.to_client;
                strip_row(body, reads.strip, plan, &mut self.tracker, style, out)
            }
            be::COPY_OUT_RESPONSE => {
                let Some((format, types)) = &c.copy else {
                    return false;
                };
                let out = &mut cx.out.to_client;
                if copy_out::strip_response(body, c.added, out).is_none() {
                    return false;
                }
                reads.strip = c.added;
                let f = i16::from(*format == CopyFormat::Binary);
                let cols: Vec<(u32, i16)> = types.iter().map(|&t| (t, f)).collect();
                self.row_plan = ReadPlan::captured(&c.layout, &cols).map(Arc::new);
                true
            }
            be::COPY_DATA if reads.strip > 0 => {
                let Some((format, _)) = &c.copy else {
                    return false;
                };
                let style = cx.params.date_style;
                let plan = self.row_plan.as_deref();
                let out = &mut cx.out.to_client;
                let t = &mut self.tracker;
                copy_out::strip_data(body, *format, reads.strip, plan, t, style, out)
            }
            be::COMMAND_COMPLETE => {
                let at = reads.at;
                if let Some(check) = reads.checks.iter().find(|c| c.statement == at) {
                    check.complete(&mut self.tracker, body, reads.strip > 0);
                }
                if let Some(text) = &reads.unfound
                    && (reads.strip == 0 || be::tag_rows(be::command_tag(body)) == Some(0))
                {
                    self.forget_unfound_in_text(cx, text, at);
                }
                self.row_plan = None;
                reads.strip = 0;
                reads.at += 1;
                false
            }
            be::ERROR_RESPONSE => {
                self.row_plan = None;
                reads.strip = 0;
                false
            }
            _ => false,
        }
    }

    /// A reply to a query holding pinned or captured reads (`reads`, taken out of the front
    /// entry while the session works with it): followed, then put back. Returns true when
    /// the message was changed or swallowed.
    pub(super) fn on_read_reply(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
        mut reads: Box<Reads>,
    ) -> bool {
        if tag == be::ERROR_RESPONSE && reads.step {
            self.fail_script();
        }
        let taken = self.follow_reads(cx, tag, msg, &mut reads);
        if let Some(Pending::Simple(Some(t))) = cx.out.replies.front_mut() {
            *t = Tag::Read(reads);
        }
        taken
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
