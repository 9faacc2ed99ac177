//! Versions read from result rows.
//!
//! A `RowDescription` names each column's table OID and attribute number, whatever aliases the
//! query used; when a result holds every key column and the version column of a guarded table,
//! each `DataRow` tells this session the version of that row. Text and binary formats alike.

use crate::protocol::Frame;
use std::sync::Arc;

use super::cx::Cx;
use super::rows::ReadPlan;
use super::state::GuardState;
use crate::protocol::backend::{self as be, Column};

impl GuardState {
    /// Follows the rows of a passed-through simple query (and of pass-through script steps);
    /// `shared` are the guards it reads in more than one instance (see [`ReadPlan::from_columns`]).
    pub(super) fn track_simple_rows(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
        shared: &[usize],
    ) {
        match tag {
            be::ROW_DESCRIPTION => {
                self.row_plan = self.read_plan(cx, msg.body(), shared).map(Arc::new);
            }
            be::DATA_ROW => {
                if let Some(plan) = &self.row_plan {
                    plan.observe(msg.body(), &mut self.tracker, cx.params.date_style);
                }
            }
            be::COMMAND_COMPLETE | be::ERROR_RESPONSE => self.row_plan = None,
            _ => {}
        }
    }

    /// The read plan of a `RowDescription` body; cheap when no guarded table is in it.
    pub(super) fn read_plan(&self, cx: &Cx<'_>, body: &[u8], shared: &[usize]) -> Option<ReadPlan> {
        let resolved = &self.resolved;
        if resolved.is_empty()
            || !be::any_column_table(body, |oid| resolved.by_table_oid(oid).is_some())
        {
            return None;
        }
        self.plan_of_columns(cx, &be::row_description(body)?, shared)
    }

    /// The read plan of a `RowDescription` already decoded.
    pub(super) fn plan_of_columns(
        &self,
        cx: &Cx<'_>,
        cols: &[Column<'_>],
        shared: &[usize],
    ) -> Option<ReadPlan> {
        let resolved = &self.resolved;
        if resolved.is_empty() {
            return None;
        }
        ReadPlan::from_columns(cols, resolved, &cx.settings.guards, shared)
    }
}
