//! `Execute` and `Sync` in the extended protocol: the rows of a tagged portal are read (a
//! guarded write's own `RETURNING` columns hidden), and a checked write's row count decides:
//! 0 rows becomes a conflict raised by the server, before the rest of the batch runs or, when
//! its `Sync` went right behind it ([`AfterSync`]), before the batch's `ReadyForQuery`.

use crate::protocol::TxStatus;
use bytes::BytesMut;

use super::checks::RaiseCtx;
use super::cx::Cx;
use super::rows::strip_row;
use super::state::{AfterSync, GuardState};
use super::statements::Portal;
use super::tag::{StmtTag, Tag};
use crate::engine::replies::Pending;
use crate::guard::conflict;
use crate::protocol::{Frame, backend as be, frontend as fe};

impl GuardState {
    /// An `Execute`: tagged when the portal's rows or row count matter to the guard.
    pub fn guard_execute(&mut self, cx: &mut Cx<'_>, body: &[u8]) -> StmtTag {
        if self.portals.is_empty() {
            return None;
        }
        let (portal, _) = fe::execute(body)?;
        let p = self.portals.get(portal)?.clone();
        if let Some(w) = &p.write {
            self.count_write(cx, w.guards.table_ids[w.guard], w.unchecked);
        }
        Some(Tag::Execute(p))
    }

    /// A checked write's `Execute` was sent. With this `Execute` the only statement of its
    /// batch and the batch's `Sync` right behind it, the `Sync` goes out at once and what
    /// follows it waits for the row count: one round trip instead of two. A write that matched
    /// 0 rows is then raised as a conflict before the client sees the batch's `ReadyForQuery`.
    /// That is safe inside a transaction block, where the `Sync` ends nothing and the conflict
    /// aborts the transaction as it would have before the `Sync`; and outside one for a write
    /// that is `quiet` without rows, whose implicit transaction committed nothing. Returns
    /// false when the `Execute` must wait alone (the caller flushes it and holds the batch).
    pub fn check_after_sync(&mut self, cx: &mut Cx<'_>, quiet: bool) -> bool {
        let sync_next = matches!(
            crate::protocol::peek_header(cx.lookahead, 5),
            Ok(Some(crate::protocol::Header {
                tag: fe::SYNC,
                size: 5
            }))
        );
        let alone = cx
            .out
            .replies
            .iter()
            .filter(|p| {
                matches!(
                    p,
                    Pending::Execute(_) | Pending::Simple(_) | Pending::Sync(_)
                )
            })
            .count()
            == 1;
        let ok = (cx.tx_status == TxStatus::InTransaction
            || cx.tx_status == TxStatus::Idle && quiet)
            && sync_next
            && alone;
        if ok {
            self.after_sync = AfterSync::SyncNext;
        }
        ok
    }

    /// A `Sync` went to the server. Returns true when what follows it must wait for a
    /// checked write's row count.
    pub fn on_sync_sent(&mut self) -> bool {
        if matches!(self.after_sync, AfterSync::SyncNext) {
            self.after_sync = AfterSync::Sent;
            return true;
        }
        false
    }

    /// The conflict waiting for a batch's `ReadyForQuery`, if any (any other state stays).
    pub(super) fn take_raise(&mut self) -> Option<(String, Box<RaiseCtx>)> {
        if !matches!(self.after_sync, AfterSync::Raise(..)) {
            return None;
        }
        match std::mem::take(&mut self.after_sync) {
            AfterSync::Raise(block, ctx) => Some((block, ctx)),
            _ => None,
        }
    }

    /// A `DataRow` of a tagged `Execute`: a guarded write's own `RETURNING` columns are read
    /// and hidden; a read's rows tell versions. Returns true when the row was changed or
    /// swallowed.
    pub(super) fn on_execute_row(&mut self, cx: &mut Cx<'_>, body: &[u8], portal: &Portal) -> bool {
        if let Some(w) = &portal.write {
            if w.added == 0 {
                return false;
            }
            if w.observed.is_some() {
                self.observe_row(cx, w, body);
            }
            if let Some(plan) = &w.plan {
                plan.observe(body, &mut self.tracker, cx.params.date_style);
            }
            if w.client_returning {
                let n = be::field_count(body);
                be::write_truncated(
                    &mut cx.out.to_client,
                    be::DATA_ROW,
                    body,
                    n - w.added.min(n),
                );
            }
            return true;
        }
        let style = cx.params.date_style;
        if let Some((added, plan)) = &portal.capture {
            if portal
                .fetch_shown
                .as_ref()
                .is_some_and(|s| s.get() != Some(&true))
            {
                return false;
            }
            let out = &mut cx.out.to_client;
            return strip_row(body, *added, Some(plan), &mut self.tracker, style, out);
        }
        let Some(described) = portal.described() else {
            return false;
        };
        if let Some(plan) = &described.reads {
            plan.observe(body, &mut self.tracker, style);
        }
        if let Some(check) = &portal.pinned {
            check.observe(&mut self.tracker, body, described.version, style);
        }
        false
    }

    /// The end of a tagged `Execute`: check the row count of a guarded write.
    pub(super) fn on_execute_done(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
        portal: &Portal,
    ) -> Result<bool, String> {
        let Some(w) = &portal.write else {
            if let Some(bind) = &portal.pinned_bind
                && tag == be::COMMAND_COMPLETE
                && be::tag_rows(be::command_tag(msg.body())) == Some(0)
            {
                self.forget_unfound(cx, portal, bind);
            }
            if let Some(check) = &portal.pinned
                && tag == be::COMMAND_COMPLETE
            {
                // A captured read showed every row's version.
                let version = portal.described().and_then(|d| d.version);
                let shown = version.is_some() || portal.capture.is_some();
                check.complete(&mut self.tracker, msg.body(), shown);
            }
            return Ok(false);
        };
        let held = w.expected.is_some();
        if tag == be::ERROR_RESPONSE
            && let Some(raised) = w.raised_conflict(msg.body())
        {
            self.deliver_conflict(cx, raised);
            self.after_sync = AfterSync::None;
            cx.out.release_client();
            return Ok(true);
        }
        if tag == be::COMMAND_COMPLETE {
            let rows = be::tag_rows(be::command_tag(msg.body()));
            if rows == Some(0)
                && w.expected.is_some()
                && let Some(info) = w.conflict_info()
            {
                let block =
                    conflict::raise_block_if_changed(&info, &cx.settings.config.conflict_sqlstate);
                let ctx = RaiseCtx::conflict(info, Some(BytesMut::from(msg.bytes())));
                if matches!(self.after_sync, AfterSync::Sent) {
                    self.after_sync = AfterSync::Raise(block, Box::new(ctx));
                } else {
                    self.send_extended_raise(cx, &block, ctx);
                }
                return Ok(true);
            }
            w.forget_after(rows, &mut self.tracker);
        }
        if held {
            self.after_sync = AfterSync::None;
            cx.out.to_client.extend_from_slice(msg.bytes());
            cx.out.release_client();
            return Ok(true);
        }
        Ok(false)
    }
}
