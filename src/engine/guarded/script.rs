//! A simple `Query` holding guarded writes, run as a [`Script`] of steps (see
//! [`super::simple`] for how a text becomes one): each step is sent when the one before it is
//! done, a guarded write's reply is checked (its `RETURNING` columns read and hidden, 0 rows
//! raised as a conflict by the server), and the first error stops the rest, ending the proxy's
//! block (see [`super::block`]) with a hidden `ROLLBACK`, as PostgreSQL itself would have
//! stopped the text.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use super::checks::{RaiseCtx, Script, StepSpec, WriteCheck};
use super::cx::Cx;
use super::observe::observed_in_row;
use super::rows::ReadPlan;
use super::state::GuardState;
use super::tag::Tag;
use crate::engine::replies::Pending;
use crate::guard::conflict;
use crate::guard::datestyle::DateStyle;
use crate::guard::track::Tracker;
use crate::protocol::{Frame, TxStatus, backend as be, frontend as fe};

impl GuardState {
    /// Runs `steps` as a script of the query text `sql`. `implicit`: PostgreSQL would run the
    /// text in an implicit transaction block (see [`Script::implicit`]).
    pub(super) fn start_script(
        &mut self,
        cx: &mut Cx<'_>,
        steps: VecDeque<StepSpec>,
        implicit: bool,
        sql: Arc<str>,
    ) {
        self.script = Some(Script {
            steps,
            sql,
            implicit,
            hidden: false,
            // An extended batch with no `Sync` may have opened a transaction.
            status: self.tx_status_now(cx),
            hold_last: false,
            held: BytesMut::new(),
            failed: false,
        });
        cx.out.hold_client = true;
        self.send_next_step(cx);
    }

    fn send_next_step(&mut self, cx: &mut Cx<'_>) {
        let Some(script) = self.script.as_mut() else {
            return;
        };
        let step = match script.steps.pop_front() {
            Some(StepSpec::Write(w)) => {
                let sql = script.sql.clone();
                match self.simple_write_step(cx, &sql, &w) {
                    (Some(check), step) => {
                        if let Some(script) = self.script.as_mut() {
                            script.steps.push_front(step);
                        }
                        Some(check)
                    }
                    (None, step) => Some(step),
                }
            }
            step => step,
        };
        let Some(step) = step else {
            return;
        };
        if let StepSpec::Tx(text, kind) = step {
            self.send_tx_step(cx, text, kind);
            return;
        }
        self.open_block(cx);
        if let Some(s) = self.script.as_mut() {
            s.hold_last = s.hidden && s.steps.is_empty();
        }
        match step {
            StepSpec::Sql(text, check) => {
                if let Some(c) = &check {
                    self.count_write(cx, c.guards.table_ids[c.guard], c.unchecked);
                }
                self.note_step_tx(cx, &text);
                fe::write_query(&mut cx.out.to_server, text.as_bytes());
                cx.out.replies.push(Pending::Simple(Some(Tag::Step(check))));
            }
            StepSpec::Reads(text, reads) => {
                self.note_step_tx(cx, &text);
                fe::write_query(&mut cx.out.to_server, text.as_bytes());
                cx.out.replies.push(Pending::Simple(Some(Tag::Read(reads))));
            }
            StepSpec::Raise(block, ctx) => self.send_simple_raise(cx, &block, *ctx),
            StepSpec::Write(_) => unreachable!("a planned write is SQL or a raise"),
            StepSpec::Tx(..) => unreachable!("sent above"),
        }
    }

    /// A step about to be queued: its savepoints and rollbacks (see [`super::txn`]).
    pub(super) fn note_step_tx(&mut self, cx: &Cx<'_>, text: &str) {
        if cx.settings.guards.prefilter.scan(text.as_bytes()).tx {
            let ready = self.next_ready(cx);
            self.note_tx_text(ready, text.as_bytes());
        }
    }

    /// An error reached the client: the script's later steps do not run.
    pub(super) fn fail_script(&mut self) {
        if let Some(s) = self.script.as_mut() {
            s.failed = true;
        }
    }

    /// A reply within a script step (the step stays at the front of the queue).
    pub(super) fn on_step_reply(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
    ) -> Result<bool, String> {
        let Some(Pending::Simple(Some(t))) = cx.out.replies.front_mut() else {
            return Ok(false);
        };
        let Tag::Step(check) = t else {
            return Ok(false);
        };
        if tag == be::ERROR_RESPONSE
            && let Some(raised) = check.as_deref().and_then(|c| c.raised_conflict(msg.body()))
        {
            self.fail_script();
            self.deliver_conflict(cx, raised);
            return Ok(true);
        }
        let Some(c) = check
            .as_deref_mut()
            .filter(|c| c.added > 0 || tag == be::COMMAND_COMPLETE)
        else {
            if tag == be::ERROR_RESPONSE {
                self.fail_script();
            }
            self.track_simple_rows(cx, tag, msg, &[]);
            return Ok(false);
        };
        match tag {
            be::ROW_DESCRIPTION => {
                step_row_description(c, msg.body(), &mut cx.out.to_client);
                Ok(true)
            }
            be::DATA_ROW => {
                let style = cx.params.date_style;
                let stale = observed_in_row(c, msg.body());
                step_data_row(
                    c,
                    msg.body(),
                    &mut self.tracker,
                    style,
                    &mut cx.out.to_client,
                );
                if let Some((info, found)) = stale {
                    self.log_observed(cx, &info, found);
                }
                Ok(true)
            }
            be::COMMAND_COMPLETE => {
                let rows = be::tag_rows(be::command_tag(msg.body()));
                if rows == Some(0) && c.expected.is_some() {
                    c.held = Some(BytesMut::from(msg.bytes()));
                    return Ok(true);
                }
                c.forget_after(rows, &mut self.tracker);
                Ok(false)
            }
            be::ERROR_RESPONSE => {
                self.fail_script();
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// A step's `ReadyForQuery`: check its write, then go on, or stop.
    pub(super) fn on_step_done(
        &mut self,
        cx: &mut Cx<'_>,
        ready: Frame<'_>,
        check: Option<Box<WriteCheck>>,
    ) -> Result<bool, String> {
        if let Some(mut c) = check
            && let Some(held) = c.held.take()
            && let Some(info) = c.conflict_info()
        {
            let block =
                conflict::raise_block_if_changed(&info, &cx.settings.config.conflict_sqlstate);
            self.send_simple_raise(cx, &block, RaiseCtx::conflict(info, Some(held)));
            return Ok(true);
        }
        self.script_continue(cx, ready)
    }

    /// A raise's reply within a script.
    pub(super) fn on_raise_reply(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
    ) -> Result<bool, String> {
        let Some(Pending::Simple(Some(t))) = cx.out.replies.front_mut() else {
            return Ok(false);
        };
        let Tag::Raise(ctx) = t else {
            return Ok(false);
        };
        match tag {
            be::ERROR_RESPONSE => {
                let table = ctx.table.clone();
                let ctx = std::mem::replace(
                    ctx.as_mut(),
                    RaiseCtx {
                        table,
                        held: None,
                        conflict: None,
                        refusal: None,
                    },
                );
                self.deliver_raised_error(cx, msg, &ctx);
                self.fail_script();
                Ok(true)
            }
            be::COMMAND_COMPLETE => {
                // The block raised nothing: the write's own conditions matched no row.
                if let Some(held) = ctx.held.take()
                    && !self.hold_last_tag(cx, Frame::new(&held))
                {
                    cx.out.to_client.extend_from_slice(&held);
                }
                Ok(true)
            }
            be::NOTICE_RESPONSE => Ok(false),
            _ => Ok(true),
        }
    }

    /// The `ReadyForQuery` of a raise: the script goes on, or (a conflict raised after an
    /// extended-protocol batch's `Sync`) it is the client's.
    pub(super) fn on_raise_done(
        &mut self,
        cx: &mut Cx<'_>,
        ready: Frame<'_>,
        _ctx: Box<RaiseCtx>,
    ) -> Result<(), String> {
        if self.script.is_none() {
            cx.out.to_client.extend_from_slice(ready.bytes());
            cx.out.release_client();
            return Ok(());
        }
        self.script_continue(cx, ready).map(|_| ())
    }

    /// After a step (`ready` is its `ReadyForQuery`): the next one, the hidden
    /// `COMMIT`/`ROLLBACK` ending the proxy's block, or the client's `ReadyForQuery`.
    pub(super) fn script_continue(
        &mut self,
        cx: &mut Cx<'_>,
        ready: Frame<'_>,
    ) -> Result<bool, String> {
        let Some(script) = self.script.as_mut() else {
            return Ok(false);
        };
        script.status = TxStatus::from_ready(ready.body());
        if script.status == TxStatus::Idle {
            // Whatever ended the transaction, no block of the proxy's is open any more.
            script.hidden = false;
        }
        if !script.failed && !script.steps.is_empty() {
            self.send_next_step(cx);
            return Ok(true);
        }
        if script.hidden {
            let end: &[u8] = if script.failed {
                b"ROLLBACK"
            } else {
                b"COMMIT"
            };
            fe::write_query(&mut cx.out.to_server, end);
            cx.out.replies.push(Pending::Simple(Some(Tag::Final)));
        } else {
            self.script = None;
            cx.out.release_client();
            cx.out.to_client.extend_from_slice(ready.bytes());
        }
        Ok(true)
    }
}

/// The `RowDescription` of a checked write's step: the plan that reads the proxy's
/// `RETURNING` columns, and (when the client wrote a `RETURNING` of its own) the client's
/// columns without them.
fn step_row_description(c: &mut WriteCheck, body: &[u8], to_client: &mut BytesMut) {
    let cols = be::row_description(body).unwrap_or_default();
    if cols.len() >= c.added {
        // The observed column, if any, comes before the key and version.
        let types: Vec<u32> = cols[cols.len() - c.added + c.observed.is_some() as usize..]
            .iter()
            .map(|col| col.type_oid)
            .collect();
        if !types.is_empty() {
            c.plan = Some(ReadPlan::returning(c.table(), &types, 0));
        }
        if c.client_returning {
            be::write_truncated(to_client, be::ROW_DESCRIPTION, body, cols.len() - c.added);
        }
    }
}

/// A `DataRow` of a checked write's step: the proxy's `RETURNING` columns are read, and the
/// client gets the rest when it wrote a `RETURNING` of its own.
fn step_data_row(
    c: &WriteCheck,
    body: &[u8],
    tracker: &mut Tracker,
    style: DateStyle,
    to_client: &mut BytesMut,
) {
    if let Some(plan) = &c.plan {
        plan.observe(body, tracker, style);
    }
    if c.client_returning {
        let n = be::data_row(body).map_or(0, |v| v.len());
        be::write_truncated(to_client, be::DATA_ROW, body, n - c.added.min(n));
    }
}
