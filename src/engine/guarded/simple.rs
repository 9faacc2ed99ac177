//! Guarded writes in a simple `Query`.
//!
//! A query text holding guarded writes runs as a script: runs of other statements as one step,
//! each guarded write as a step of its own, so the proxy sees a write's row count before
//! anything after it runs. A write is planned (expected version, `RETURNING`) when its turn
//! comes, after the steps before it have told the session what they read and wrote. Several steps outside a transaction are wrapped in a hidden
//! `BEGIN`/`COMMIT`, keeping the text one implicit transaction as PostgreSQL would. A conflict
//! is raised by the server between steps; the steps after it never run; the client sees what it
//! would have seen had PostgreSQL itself raised the error.

use super::GuardState;
use super::cx::Cx;
use std::collections::VecDeque;

use bytes::BytesMut;

use super::Tag;
use super::pinned::{ReadCheck, Reads};
use super::raise::RaiseCtx;
use super::reads::{ReadPlan, canonical};
use crate::config::{BulkPolicy, UnversionedPolicy};
use crate::engine::replies::Pending;
use crate::events::Outcome;
use crate::guard::cache::Simple;
use crate::guard::conflict::{self, ConflictInfo, Refusal};
use crate::guard::prefilter::Found;
use crate::guard::rewrite::Expected;
use crate::guard::track::Tracker;
use crate::guard::{Action, GuardSet, GuardedWrite, TableId, Target, ValueRef, WriteOp};
use crate::protocol::{backend as be, frontend as fe};
use std::sync::Arc;

/// A simple query run step by step.
#[derive(Debug)]
pub struct Script {
    steps: VecDeque<StepSpec>,
    /// The query's text, for the writes planned when their turn comes.
    sql: Arc<str>,
    /// The proxy opened a transaction around the steps.
    wrapped: bool,
    /// An error reached the client: no further step runs.
    failed: bool,
}

#[derive(Debug)]
enum StepSpec {
    Sql(String, Option<Box<WriteCheck>>),
    /// Statements passed as written, whose pinned reads are followed.
    Reads(String, Box<Reads>),
    /// A guarded write, planned when its turn comes: the steps before it may change what the
    /// session knows of its row (a read, or a write of the same row).
    Write(Arc<GuardedWrite>),
    Raise(String, Box<RaiseCtx>),
}

/// What the proxy checks of one guarded write.
#[derive(Debug)]
pub struct WriteCheck {
    /// The guards the write was analysed with (a reload may have replaced them since).
    pub guards: Arc<GuardSet>,
    pub guard: usize,
    pub op: WriteOp,
    /// Columns the proxy appended to the result (its `RETURNING`).
    pub added: usize,
    pub client_returning: bool,
    /// The version the write must find; 0 rows then means a conflict.
    pub expected: Option<String>,
    /// The row's key (canonical text), when the write names one row.
    pub key: Option<Vec<String>>,
    /// Reads the proxy's `RETURNING` columns.
    pub plan: Option<ReadPlan>,
    /// The `CommandComplete` of a write that matched 0 rows, kept back during the check.
    pub held: Option<BytesMut>,
    /// The write is inside a data-modifying `WITH`: its rows are not the statement's.
    pub in_cte: bool,
    /// A run of the write that matches no row changes nothing (see
    /// [`GuardState::quiet_without_rows`]): its conflict may be raised after its implicit
    /// transaction committed.
    pub quiet_without_rows: bool,
}

impl WriteCheck {
    /// The table's id in the tracker.
    pub fn table(&self) -> TableId {
        self.guards.table_ids[self.guard]
    }

    /// What the session no longer knows once the write completed with `rows` rows: a row it
    /// deleted, every row a write inside `WITH` may have changed (its new versions stay in
    /// the statement; the next write of such a row expects nothing until it is read again),
    /// and what a write whose `RETURNING` columns could not be read changed.
    pub fn forget_after(&self, rows: Option<u64>, tracker: &mut Tracker) {
        if self.in_cte || self.added > 0 && self.plan.is_none() && rows != Some(0) {
            match &self.key {
                Some(k) => tracker.forget(self.table(), k),
                None => tracker.forget_table(self.table()),
            }
            return;
        }
        if self.op == WriteOp::Delete
            && rows.is_some_and(|n| n > 0)
            && let Some(k) = &self.key
        {
            tracker.forget(self.table(), k);
        }
    }

    /// The conflict, when the server's error (`body`) is this write's version check failing
    /// on the spot (see [`crate::guard::rewrite::CONFLICT_MARKER`]): what the write expected
    /// of which row, and the version the row was found at.
    pub fn raised_conflict(&self, body: &[u8]) -> Option<(ConflictInfo, conflict::RaisedInWrite)> {
        let found = conflict::found_in_error(body)?;
        Some((self.conflict_info()?, found))
    }

    pub fn conflict_info(&self) -> Option<ConflictInfo> {
        let guard = self.guards.guards.get(self.guard)?;
        Some(ConflictInfo::of(
            guard,
            self.key.clone(),
            self.expected.clone()?,
        ))
    }
}

/// How one guarded write is sent, once the session knows what it expects.
pub(super) enum Plan {
    /// Send it rewritten with this expected version, and check it.
    Send {
        expected: Option<String>,
        key: Option<Vec<String>>,
    },
    /// Refuse it.
    Refuse(Refusal),
}

impl GuardState {
    /// A simple `Query` from the client. Returns true when the guard sent it (as a script).
    /// `sql_bytes` is its text, `found` what the prefilter found in it.
    pub(super) fn simple_query(
        &mut self,
        cx: &mut Cx<'_>,
        msg: &[u8],
        sql_bytes: &[u8],
        found: Found,
    ) -> Result<bool, String> {
        let guards = cx.settings.guards.clone();
        if !found.may_write_guarded() {
            return Ok(found.name && self.pinned_read_query(cx, msg, sql_bytes, &guards));
        }
        let Ok(sql) = std::str::from_utf8(sql_bytes) else {
            let (block, ctx) = self.not_utf8_refusal(cx, sql_bytes);
            self.start_script(
                cx,
                VecDeque::from([StepSpec::Raise(block, Box::new(ctx))]),
                false,
                Arc::from(""),
            );
            return Ok(true);
        };
        let conforming = cx.params.standard_conforming_strings;
        let analysis = self.cache.get_or_analyze_simple(sql, &guards, conforming);
        let kinds = analysis.kinds();
        if kinds.passes_unchanged() {
            // A read that merely spells a write word (`SELECT ... FOR UPDATE`, a column
            // `updated_at`) is followed as any other.
            return Ok(!self.resolved.is_empty()
                && self.follow_pinned_reads(cx, msg, sql, &analysis, &guards));
        }
        // One write that can expect no version and gets no bump (an `xmin` guard, a table the
        // session tracks nothing of): it goes as the client wrote it, decided on the shape's
        // analysis alone.
        if let [st] = kinds.statements.as_slice()
            && let Action::Write(w) = &st.action
            && !w.adds_bump(&guards)
            && self.expects_nothing(cx, &guards, w)
        {
            self.send_as_written(cx, msg, guards.table_ids[w.guard]);
            return Ok(true);
        }
        let analysis = analysis.of_text(sql, &guards);
        let mut steps = VecDeque::new();
        // The run of passed statements not yet made a step: its bytes and statement indexes.
        let mut chunk: Option<(std::ops::Range<usize>, std::ops::Range<usize>)> = None;
        let mut tx_control = false;
        for (i, st) in analysis.statements.iter().enumerate() {
            match &st.action {
                Action::Pass { tx_control: t } => {
                    tx_control |= *t;
                    chunk = Some(match chunk.take() {
                        Some((r, n)) => (r.start..st.range.end, n.start..i + 1),
                        None => (st.range.clone(), i..i + 1),
                    });
                }
                Action::Refuse { table, reason } => {
                    self.push_chunk(&mut steps, chunk.take(), sql, &analysis.reads, &guards);
                    let (block, ctx) = self.refusal(table, Refusal::Unsupported(reason.clone()));
                    steps.push_back(StepSpec::Raise(block, Box::new(ctx)));
                }
                Action::Write(w) => {
                    self.push_chunk(&mut steps, chunk.take(), sql, &analysis.reads, &guards);
                    steps.push_back(StepSpec::Write(w.clone()));
                }
            }
        }
        self.push_chunk(&mut steps, chunk, sql, &analysis.reads, &guards);
        // A write that is the first step is planned now: nothing runs before it. A check it
        // needs first makes the script two steps, so outside a transaction it is wrapped in
        // one, and the check's lock lasts until the write.
        if let Some(StepSpec::Write(w)) = steps.front() {
            let w = w.clone();
            let (check, step) = self.simple_write_step(cx, sql, &w);
            steps[0] = step;
            if let Some(check) = check {
                steps.push_front(check);
            }
        }
        // One write that needs nothing changed and nothing checked (an `xmin` guard, a row the
        // session does not track): it goes as the client wrote it.
        if let [StepSpec::Sql(text, Some(check))] = steps.as_slices().0
            && steps.len() == 1
            && check.expected.is_none()
            && check.added == 0
            && !check.in_cte
            && text.as_bytes() == sql_bytes
        {
            self.send_as_written(cx, msg, check.guards.table_ids[check.guard]);
            return Ok(true);
        }
        // A lone checked write that may act without rows (a statement-level trigger, a call
        // in its WHERE) is wrapped too: if it matches no row, its conflict must undo what it
        // did, as an error raised inside it would.
        let lone_loud_write = matches!(
            steps.as_slices().0,
            [StepSpec::Sql(_, Some(c))] if c.expected.is_some() && !c.quiet_without_rows
        );
        let wrap = (steps.len() > 1 || lone_loud_write) && cx.tx_status == b'I' && !tx_control;
        self.start_script(cx, steps, wrap, sql.into());
        Ok(true)
    }

    /// Makes a run of passed statements (byte range, statement indexes) one script step,
    /// which follows the pinned reads among them.
    fn push_chunk(
        &self,
        steps: &mut VecDeque<StepSpec>,
        chunk: Option<(std::ops::Range<usize>, std::ops::Range<usize>)>,
        sql: &str,
        reads: &[crate::guard::PinnedRead],
        guards: &GuardSet,
    ) {
        let Some((bytes, statements)) = chunk else {
            return;
        };
        let text = sql[bytes].to_string();
        let checks: Vec<ReadCheck> = reads
            .iter()
            .filter(|r| statements.contains(&r.statement))
            .filter_map(|r| self.read_check(guards, r, None))
            .map(|c| ReadCheck {
                statement: c.statement - statements.start,
                ..c
            })
            .collect();
        steps.push_back(if checks.is_empty() {
            StepSpec::Sql(text, None)
        } else {
            StepSpec::Reads(text, Box::new(Reads::new(checks, true)))
        });
    }

    /// A query holding one guarded write (of `table`) that needs nothing changed and nothing
    /// checked: sent as the client wrote it.
    fn send_as_written(&mut self, cx: &mut Cx<'_>, msg: &[u8], table: TableId) {
        cx.events.guarded(table, Outcome::Rewritten);
        cx.out.to_server.extend_from_slice(msg);
        cx.out.replies.push(Pending::Simple(None));
    }

    /// True when a write can expect no version, whatever row it names: no pinned version, a
    /// table the session tracks nothing of (and no reply still to come that may change that),
    /// and policies that let an unversioned write through.
    pub(super) fn expects_nothing(&self, cx: &Cx<'_>, guards: &GuardSet, w: &GuardedWrite) -> bool {
        let guard = &guards.guards[w.guard];
        w.pinned.is_none()
            && guard.unversioned == UnversionedPolicy::Allow
            && (matches!(w.target, Target::Key(_)) || guard.bulk == BulkPolicy::Bump)
            && !self.tracker.tracks_table(guards.table_ids[w.guard])
            && !self.rows_may_come(cx)
    }

    /// Decides what a guarded write expects: pinned, tracked, or the policies.
    pub(super) fn plan_write(
        &mut self,
        guards: &GuardSet,
        w: &GuardedWrite,
        key: Option<Vec<String>>,
        pinned: Option<String>,
    ) -> Plan {
        let guard = &guards.guards[w.guard];
        if w.op == WriteOp::Upsert {
            return Plan::Send {
                expected: None,
                key: None,
            };
        }
        if w.target == Target::Bulk {
            return match guard.bulk {
                BulkPolicy::Bump => Plan::Send {
                    expected: None,
                    key: None,
                },
                BulkPolicy::Reject => Plan::Refuse(Refusal::Bulk),
            };
        }
        let expected = match pinned {
            Some(v) => Some(v),
            None => key.as_ref().and_then(|k| {
                let table = guards.table_ids[w.guard];
                self.tracker.expected(table, k).map(str::to_string)
            }),
        };
        if expected.is_none() && guard.unversioned == UnversionedPolicy::Reject {
            let row = ConflictInfo::of(guard, key.clone(), String::new()).key_text();
            return Plan::Refuse(Refusal::Unversioned(row));
        }
        Plan::Send { expected, key }
    }

    /// A query with no guarded write that names a guarded table: when it holds `SELECT`s that
    /// pin one guarded row each, it is relayed as it is and their results are followed.
    fn pinned_read_query(
        &mut self,
        cx: &mut Cx<'_>,
        msg: &[u8],
        sql: &[u8],
        guards: &Arc<GuardSet>,
    ) -> bool {
        if self.resolved.is_empty() {
            return false;
        }
        let Ok(sql) = std::str::from_utf8(sql) else {
            return false;
        };
        let conforming = cx.params.standard_conforming_strings;
        let analysis = self.cache.get_or_analyze_simple(sql, guards, conforming);
        self.follow_pinned_reads(cx, msg, sql, &analysis, guards)
    }

    /// Relays a query that passes unchanged (`analysis` is its analysis), following its pinned
    /// reads; false when it has none to follow.
    fn follow_pinned_reads(
        &mut self,
        cx: &mut Cx<'_>,
        msg: &[u8],
        sql: &str,
        analysis: &Simple,
        guards: &GuardSet,
    ) -> bool {
        let kinds = analysis.kinds();
        if !kinds
            .reads
            .iter()
            .any(|read| self.follows_read(cx, guards, read))
        {
            return false;
        }
        let Some(reads) = analysis.reads(sql) else {
            return false;
        };
        let checks: Vec<ReadCheck> = reads
            .iter()
            .filter(|read| self.follows_read(cx, guards, read))
            .filter_map(|read| self.read_check(guards, read, None))
            .collect();
        if checks.is_empty() {
            return false;
        }
        cx.out.to_server.extend_from_slice(msg);
        cx.out
            .replies
            .push(Pending::Simple(Some(Box::new(Tag::Read(Box::new(
                Reads::new(checks, false),
            ))))));
        true
    }

    /// Canonical text of the literal key values of a write (None when one is a parameter).
    fn literal_key(&self, w: &GuardedWrite) -> Option<Vec<String>> {
        match &w.target {
            Target::Key(vals) => self.key_text(w.guard, vals, None),
            Target::Bulk => None,
        }
    }

    /// Plans a guarded write: the step that sends it (or refuses it), and a check to run
    /// before it when the write's row count cannot tell a conflict ([`GuardState::cte_lock_check`]).
    fn simple_write_step(
        &mut self,
        cx: &mut Cx<'_>,
        sql: &str,
        w: &GuardedWrite,
    ) -> (Option<StepSpec>, StepSpec) {
        let key = self.literal_key(w);
        let pinned = match &w.pinned {
            Some(ValueRef::Literal(v)) => {
                let t = self.resolved.get(w.guard).map_or(0, |r| r.version_type);
                canonical(t, 0, v.as_bytes()).or_else(|| Some(v.clone()))
            }
            _ => None,
        };
        let pinned_here = pinned.is_some();
        let guards = cx.settings.guards.clone();
        match self.plan_write(&guards, w, key, pinned) {
            Plan::Refuse(refusal) => {
                let (block, ctx) = self.refusal(&guards.guards[w.guard].table, refusal);
                (None, StepSpec::Raise(block, Box::new(ctx)))
            }
            Plan::Send { expected, key } => {
                let check = self
                    .cte_lock_check(cx, &guards, w, expected.as_deref(), key.as_deref())
                    .map(|(block, ctx)| StepSpec::Raise(block, Box::new(ctx)));
                let cond_len = w.splice.condition.as_ref().map_or(0, |c| c.len());
                let mut text = String::with_capacity(w.splice.statement.len() + cond_len + 256);
                let render_with = match (&expected, pinned_here) {
                    (Some(v), false) => Expected::Literal(v),
                    _ => Expected::None,
                };
                // The proxy's RETURNING only advances versions the session tracks: a row it
                // does not track (or, for a bulk write, a table it tracks nothing of) needs
                // none, unless a reply still to come (a read pipelined before this query) may
                // start tracking it before the write's rows arrive.
                let table = guards.table_ids[w.guard];
                let returning = self.rows_may_come(cx)
                    || match &key {
                        Some(k) => self.tracker.expected(table, k).is_some(),
                        None => self.tracker.tracks_table(table),
                    };
                w.render_with(sql, &guards, render_with, returning, &mut text);
                let step = StepSpec::Sql(
                    text,
                    Some(Box::new(WriteCheck {
                        guards: guards.clone(),
                        guard: w.guard,
                        op: w.op,
                        added: if returning {
                            w.added_columns(&guards)
                        } else {
                            0
                        },
                        client_returning: w.client_returning,
                        // A write inside WITH checks its version in its predicate, but its row
                        // count is not the statement's: the check before it raises a conflict.
                        expected: if w.splice.in_cte { None } else { expected },
                        key,
                        plan: None,
                        held: None,
                        in_cte: w.splice.in_cte,
                        quiet_without_rows: self.quiet_without_rows(w),
                    })),
                );
                (check, step)
            }
        }
    }

    /// An error reached the client: the script's later steps do not run.
    pub(super) fn fail_script(&mut self) {
        if let Some(s) = self.script.as_mut() {
            s.failed = true;
        }
    }

    fn start_script(
        &mut self,
        cx: &mut Cx<'_>,
        steps: VecDeque<StepSpec>,
        wrapped: bool,
        sql: Arc<str>,
    ) {
        if wrapped {
            fe::write_query(&mut cx.out.to_server, b"BEGIN");
            cx.out
                .replies
                .push(Pending::Simple(Some(Box::new(Tag::Hidden))));
        }
        self.script = Some(Script {
            steps,
            sql,
            wrapped,
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
        match step {
            Some(StepSpec::Sql(text, check)) => {
                if let Some(c) = &check {
                    cx.events
                        .guarded(c.guards.table_ids[c.guard], Outcome::Rewritten);
                }
                fe::write_query(&mut cx.out.to_server, text.as_bytes());
                cx.out
                    .replies
                    .push(Pending::Simple(Some(Box::new(Tag::Step(check)))));
            }
            Some(StepSpec::Reads(text, reads)) => {
                fe::write_query(&mut cx.out.to_server, text.as_bytes());
                cx.out
                    .replies
                    .push(Pending::Simple(Some(Box::new(Tag::Read(reads)))));
            }
            Some(StepSpec::Raise(block, ctx)) => self.send_simple_raise(cx, &block, *ctx),
            Some(StepSpec::Write(_)) => unreachable!("a planned write is SQL or a raise"),
            None => {}
        }
    }

    /// A reply within a script step (the step stays at the front of the queue).
    pub(super) fn on_step_reply(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: &[u8],
    ) -> Result<bool, String> {
        let Some(Pending::Simple(Some(t))) = cx.out.replies.front_mut() else {
            return Ok(false);
        };
        let Tag::Step(check) = t.as_mut() else {
            return Ok(false);
        };
        if tag == be::ERROR_RESPONSE
            && let Some(raised) = check.as_deref().and_then(|c| c.raised_conflict(&msg[5..]))
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
            self.track_simple_rows(cx, tag, msg);
            return Ok(false);
        };
        match tag {
            be::ROW_DESCRIPTION => {
                let body = &msg[5..];
                let cols = be::row_description(body).unwrap_or_default();
                if cols.len() >= c.added {
                    let types: Vec<u32> = cols[cols.len() - c.added..]
                        .iter()
                        .map(|col| col.type_oid)
                        .collect();
                    c.plan = Some(ReadPlan::returning(c.table(), &types, 0));
                    if c.client_returning {
                        be::write_truncated(
                            &mut cx.out.to_client,
                            be::ROW_DESCRIPTION,
                            body,
                            cols.len() - c.added,
                        );
                    }
                }
                Ok(true)
            }
            be::DATA_ROW => {
                let body = &msg[5..];
                if let Some(plan) = &c.plan {
                    plan.observe(body, &mut self.tracker);
                }
                if c.client_returning {
                    let n = be::data_row(body).map_or(0, |v| v.len());
                    be::write_truncated(
                        &mut cx.out.to_client,
                        be::DATA_ROW,
                        body,
                        n - c.added.min(n),
                    );
                }
                Ok(true)
            }
            be::COMMAND_COMPLETE => {
                let rows = be::tag_rows(be::command_tag(&msg[5..]));
                if rows == Some(0) && c.expected.is_some() {
                    c.held = Some(BytesMut::from(msg));
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
        ready: &[u8],
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
        msg: &[u8],
    ) -> Result<bool, String> {
        let Some(Pending::Simple(Some(t))) = cx.out.replies.front_mut() else {
            return Ok(false);
        };
        let Tag::Raise(ctx) = t.as_mut() else {
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
                if let Some(held) = ctx.held.take() {
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
        ready: &[u8],
        _ctx: Box<RaiseCtx>,
    ) -> Result<(), String> {
        if self.script.is_none() {
            cx.out.to_client.extend_from_slice(ready);
            cx.out.release_client();
            return Ok(());
        }
        self.script_continue(cx, ready).map(|_| ())
    }

    /// After a step: the next one, the hidden `COMMIT`/`ROLLBACK`, or the client's
    /// `ReadyForQuery`.
    fn script_continue(&mut self, cx: &mut Cx<'_>, ready: &[u8]) -> Result<bool, String> {
        let Some(script) = self.script.as_mut() else {
            return Ok(false);
        };
        let end_sql: Option<&[u8]> = if script.failed || script.steps.is_empty() {
            match (script.wrapped, script.failed) {
                (true, true) => Some(b"ROLLBACK"),
                (true, false) => Some(b"COMMIT"),
                (false, _) => None,
            }
        } else {
            self.send_next_step(cx);
            return Ok(true);
        };
        match end_sql {
            Some(sql) => {
                fe::write_query(&mut cx.out.to_server, sql);
                cx.out
                    .replies
                    .push(Pending::Simple(Some(Box::new(Tag::Final))));
            }
            None => {
                self.script = None;
                cx.out.release_client();
                cx.out.to_client.extend_from_slice(ready);
            }
        }
        Ok(true)
    }
}
