//! Where each server reply goes: the engine hands the guard every server message whose entry
//! in the reply queue carries a [`Tag`] (or is a simple `Query`, whose rows may be tracked),
//! and every `ReadyForQuery`; this file routes it, by the entry's tag, to the file that
//! follows that kind of reply.

use super::cx::Cx;
use super::state::GuardState;
use super::tag::{StmtTag, Tag};
use crate::engine::replies::{Pending, Step};
use crate::protocol::Frame;
use crate::protocol::TxStatus;
use crate::protocol::backend as be;

impl GuardState {
    /// True when the rows of the front reply must be read whole (not streamed).
    pub fn inspects_rows(&self, front: Option<&Pending<StmtTag>>) -> bool {
        match front {
            Some(Pending::Simple(t)) => t.is_some() || self.row_plan.is_some(),
            Some(Pending::Execute(t)) => t.is_some(),
            _ => false,
        }
    }

    /// True when [`GuardState::guard_server_message`] has nothing to do with a server message:
    /// it is not a `ReadyForQuery`, and the entry it answers carries no tag and is not a simple
    /// `Query` (whose rows may be tracked). Checked first because it is the common case.
    #[inline]
    pub fn guard_ignores(
        &self,
        cx: &Cx<'_>,
        tag: u8,
        step: Step,
        popped: Option<&Pending<StmtTag>>,
    ) -> bool {
        let plain = |p: &Pending<StmtTag>| {
            !matches!(p, Pending::Simple(_)) && p.guard().is_none_or(|g| g.is_none())
        };
        tag != be::READY_FOR_QUERY
            && match step {
                Step::Completes => popped.is_none_or(plain),
                Step::Within => cx.out.replies.front().is_none_or(plain),
                // A script may hold or drop the notices of its steps, and keep a
                // `ParameterStatus` behind a held `CommandComplete`.
                Step::Unrelated => {
                    !matches!(tag, be::NOTICE_RESPONSE | be::PARAMETER_STATUS)
                        || self.script.is_none()
                }
            }
    }

    /// A server message, given the entry it answers. Returns true when the guard took care of
    /// it (forwarded a changed form, or kept it from the client).
    pub fn guard_server_message(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
        step: Step,
        popped: Option<Pending<StmtTag>>,
    ) -> Result<bool, String> {
        if tag == be::READY_FOR_QUERY {
            self.on_ready(cx, msg.body());
            if let Some((block, ctx)) = self.take_raise() {
                // The batch's `ReadyForQuery` (inside the transaction block) gives way to the
                // conflict's own.
                self.send_simple_raise(cx, &block, *ctx);
                return Ok(true);
            }
        }
        match (step, popped) {
            (Step::Completes, Some(p)) => self.on_reply_completing(cx, tag, msg, p),
            (Step::Within, _) => {
                self.release_before(cx, tag);
                let taken = self.on_reply_within(cx, tag, msg)?;
                Ok(taken || tag == be::COMMAND_COMPLETE && self.hold_last_tag(cx, msg))
            }
            (Step::Unrelated, _) => Ok(self.on_script_async(cx, tag, msg)),
            _ => Ok(false),
        }
    }

    /// A reply that leaves its entry at the front of the queue.
    fn on_reply_within(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
    ) -> Result<bool, String> {
        let Some(front) = cx.out.replies.front_mut() else {
            return Ok(false);
        };
        match front {
            Pending::Execute(Some(t)) | Pending::Sync(Some(t)) if t.is_catalog() => {
                Ok(GuardState::on_catalog_within(tag, msg, t))
            }
            Pending::Simple(Some(t)) => match t {
                Tag::Hidden => Ok(true),
                Tag::Step(_) => self.on_step_reply(cx, tag, msg),
                Tag::Raise(_) => self.on_raise_reply(cx, tag, msg),
                Tag::Final => {
                    self.end_block(cx, tag, msg);
                    Ok(tag != be::ERROR_RESPONSE)
                }
                Tag::Block(step) => {
                    let step = *step;
                    Ok(self.on_block_reply(step, tag, msg))
                }
                Tag::Read(_) => {
                    // Taken out of the queue while the session works with it, then put back.
                    let Tag::Read(reads) = std::mem::replace(t, Tag::Hidden) else {
                        unreachable!("matched Tag::Read");
                    };
                    Ok(self.on_read_reply(cx, tag, msg, reads))
                }
                Tag::DescribeStatement(_)
                | Tag::DescribePortal(_)
                | Tag::FetchShown(_)
                | Tag::Execute(_)
                | Tag::Parsed(_)
                | Tag::BindFix(_)
                | Tag::Resolve { .. }
                | Tag::Derive { .. }
                | Tag::Aggregates { .. }
                | Tag::Listing { .. }
                | Tag::Catalog
                | Tag::CatalogEnd { .. } => Ok(false),
            },
            Pending::Simple(None) => {
                // A query reading a guarded table twice is tagged (see `follow_pinned_reads`).
                self.track_simple_rows(cx, tag, msg, &[]);
                Ok(false)
            }
            Pending::Execute(Some(_)) | Pending::DescribeStatement(Some(_)) => {
                self.on_extended_within(cx, tag, msg)
            }
            _ => Ok(false),
        }
    }

    /// A reply that completes its entry (already popped).
    fn on_reply_completing(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
        p: Pending<StmtTag>,
    ) -> Result<bool, String> {
        match p {
            Pending::Parse(Some(t))
            | Pending::Bind(Some(t))
            | Pending::Close(Some(t))
            | Pending::Execute(Some(t))
            | Pending::Sync(Some(t))
                if t.is_catalog() =>
            {
                self.on_catalog_complete(cx, tag, msg, t)
            }
            Pending::Simple(Some(t)) => match t {
                Tag::Hidden => Ok(true),
                Tag::Step(check) => self.on_step_done(cx, msg, check),
                Tag::Raise(ctx) => {
                    self.on_raise_done(cx, msg, ctx)?;
                    Ok(true)
                }
                Tag::Final => {
                    self.end_block(cx, tag, msg);
                    Ok(true)
                }
                Tag::Block(step) => self.on_block_done(cx, step, msg),
                Tag::Read(reads) if reads.step => self.on_step_done(cx, msg, None),
                Tag::Read(_)
                | Tag::DescribeStatement(_)
                | Tag::DescribePortal(_)
                | Tag::FetchShown(_)
                | Tag::Execute(_)
                | Tag::Parsed(_)
                | Tag::BindFix(_)
                | Tag::Resolve { .. }
                | Tag::Derive { .. }
                | Tag::Aggregates { .. }
                | Tag::Listing { .. }
                | Tag::Catalog
                | Tag::CatalogEnd { .. } => Ok(false),
            },
            Pending::Simple(None) => {
                self.row_plan = None;
                Ok(false)
            }
            other => self.on_extended_complete(cx, tag, msg, other),
        }
    }

    /// Every `ReadyForQuery`: transaction ends forget portals (and, with
    /// `track = "transaction"`, tracked versions).
    fn on_ready(&mut self, cx: &mut Cx<'_>, body: &[u8]) {
        let status = TxStatus::from_ready(body);
        self.tx_ready(status);
        if status == TxStatus::Idle {
            if !self.portals.is_empty() {
                self.portals.clear();
            }
            self.end_cursors();
            if cx.settings.config.track == crate::config::TrackScope::Transaction {
                self.tracker.forget_all();
            }
        }
    }

    /// A reply within a tagged extended entry (`ParameterDescription`, `DataRow`).
    fn on_extended_within(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
    ) -> Result<bool, String> {
        let body = msg.body();
        match (cx.out.replies.front(), tag) {
            (Some(Pending::DescribeStatement(Some(t))), be::PARAMETER_DESCRIPTION) => {
                let Tag::DescribeStatement(prepared) = t else {
                    return Ok(false);
                };
                Ok(GuardState::on_parameter_description(
                    &mut cx.out.to_client,
                    body,
                    prepared,
                ))
            }
            (Some(Pending::Execute(Some(t))), be::DATA_ROW) => {
                let Tag::Execute(portal) = t else {
                    return Ok(false);
                };
                let portal = portal.clone();
                Ok(self.on_execute_row(cx, body, &portal))
            }
            _ => Ok(false),
        }
    }

    /// A reply that completes a tagged extended entry (already popped).
    fn on_extended_complete(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
        p: Pending<StmtTag>,
    ) -> Result<bool, String> {
        let body = msg.body();
        let t = match p {
            Pending::Parse(Some(t)) | Pending::Bind(Some(t)) | Pending::Close(Some(t)) => t,
            Pending::DescribeStatement(Some(t)) | Pending::DescribePortal(Some(t)) => t,
            Pending::Execute(Some(t)) => t,
            _ => return Ok(false),
        };
        match t {
            Tag::Hidden => Ok(tag != be::ERROR_RESPONSE),
            Tag::Parsed(undo) => Ok(self.on_parse_done(tag, &undo)),
            Tag::BindFix(fix) => Ok(GuardState::on_bind_fix(cx, tag, body, &fix)),
            Tag::DescribeStatement(prepared) => {
                Ok(self.on_describe_statement(cx, tag, body, &prepared))
            }
            Tag::DescribePortal(portal) => Ok(self.on_describe_portal(cx, tag, body, &portal)),
            Tag::FetchShown(portal) => Ok(GuardState::on_fetch_shown(tag, body, &portal)),
            Tag::Execute(portal) => self.on_execute_done(cx, tag, msg, &portal),
            Tag::Raise(ctx) => {
                self.on_extended_raise_done(cx, tag, msg, &ctx);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
