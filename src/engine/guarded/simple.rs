//! Guarded writes in a simple `Query`.
//!
//! A query text holding guarded writes runs as a script: runs of other statements as one step,
//! each guarded write as a step of its own, so the proxy sees a write's row count before
//! anything after it runs. A write is planned (expected version, `RETURNING`) when its turn
//! comes, after the steps before it have told the session what they read and wrote. Each
//! transaction-control statement is a step of its own: the script runs the steps in the
//! transaction blocks PostgreSQL would run the text in ([`super::block`]). A conflict is
//! raised by the server between steps; the steps after it never run; the client sees what it
//! would have seen had PostgreSQL itself raised the error.
//!
//! This file turns a text into the steps of a [`super::checks::Script`] and plans each guarded
//! write when its turn comes; [`super::script`] runs the steps and follows their replies.

use crate::protocol::Frame;
use crate::protocol::TxStatus;
use std::collections::VecDeque;
use std::sync::Arc;

use super::checks::{Plan, StepSpec, WriteCheck};
use super::cx::Cx;
use super::plan::unchecked_class;
use super::rows::{ReadCheck, Reads, canonical};
use super::state::GuardState;
use super::tag::Tag;
use crate::engine::replies::Pending;
use crate::events::Outcome;
use crate::guard::cache::Simple;
use crate::guard::conflict::Refusal;
use crate::guard::prefilter::Found;
use crate::guard::rewrite::Expected;
use crate::guard::txkind::tx_kind;
use crate::guard::{Action, Analysis, GuardSet, GuardedWrite, TableId, Target, ValueRef};
use crate::protocol::frontend as fe;

impl GuardState {
    pub fn guard_query(&mut self, cx: &mut Cx<'_>, msg: Frame<'_>) -> Result<bool, String> {
        // The query drops the server's unnamed statement and portal: what the session knows
        // of them goes too, so a later Bind or Execute of them fails as it does directly.
        if self.keeps_statements() {
            self.take_kept_unnamed();
        }
        if !self.stale.is_empty() {
            self.stale.remove(&b""[..]);
        }
        if !self.statements.is_empty() {
            self.statements.remove(&b""[..]);
        }
        if !self.unanswered_parses.is_empty() {
            // Whatever a Parse of it still unanswered does, the unnamed statement is gone.
            self.supersede_unanswered(cx, b"", true);
            self.unanswered_parses.remove(&b""[..]);
        }
        if !self.portals.is_empty() {
            self.portals.remove(&b""[..]);
        }
        self.tx_close(b'S', b"");
        self.tx_close(b'P', b"");
        if !self.guards_active(cx) {
            return Ok(false);
        }
        let Some(sql) = fe::query_text(msg.body()) else {
            return Ok(false);
        };
        let found = cx.settings.guards.prefilter.scan(sql);
        if !self.cursors.is_empty() {
            if !found.name && self.fetch_query(cx, msg, sql) {
                return Ok(true);
            }
            self.touch_cursors(sql);
        }
        if found.session {
            self.on_session_command(sql, cx.tx_status == TxStatus::Failed);
        }
        // Its savepoints and rollbacks, unless it runs as a script (each step notes its own).
        let ready = found.tx.then(|| self.next_ready(cx));
        let sent = self.simple_query(cx, msg, sql, found)?;
        if let Some(ready) = ready
            && self.script.is_none()
        {
            self.note_tx_text(ready, sql);
        }
        Ok(sent)
    }

    /// A simple `Query` from the client. Returns true when the guard sent it (as a script).
    /// `sql_bytes` is its text, `found` what the prefilter found in it.
    fn simple_query(
        &mut self,
        cx: &mut Cx<'_>,
        msg: Frame<'_>,
        sql_bytes: &[u8],
        found: Found,
    ) -> Result<bool, String> {
        let guards = cx.settings.guards.clone();
        if !found.may_write_guarded() {
            return Ok(found.name && self.pinned_read_query(cx, msg, sql_bytes, &guards));
        }
        let Ok(sql) = std::str::from_utf8(sql_bytes) else {
            if cx.params.client_utf8() {
                // The server refuses it whole, in its own words, before running any of it.
                return Ok(false);
            }
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
            let class = unchecked_class(w, false);
            self.send_as_written(cx, msg, guards.table_ids[w.guard], class);
            return Ok(true);
        }
        let analysis = analysis.of_text(sql, &guards);
        let steps = self.script_steps(cx, sql, &analysis, &guards);
        self.send_steps(cx, msg, sql, steps);
        Ok(true)
    }

    /// The steps of a text holding guarded writes (`analysis` is its analysis): each run of
    /// passed statements one step; each guarded write, each refusal and each
    /// transaction-control statement a step of its own.
    fn script_steps(
        &mut self,
        cx: &mut Cx<'_>,
        sql: &str,
        analysis: &Analysis,
        guards: &GuardSet,
    ) -> VecDeque<StepSpec> {
        let mut steps = VecDeque::new();
        // The run of passed statements not yet made a step: its bytes and statement indexes.
        let mut chunk: Option<(std::ops::Range<usize>, std::ops::Range<usize>)> = None;
        for (i, st) in analysis.statements.iter().enumerate() {
            let tx = match st.action {
                Action::Pass { tx_control: true } => tx_kind(&sql[st.range.clone()]),
                _ => None,
            };
            if let Some(kind) = tx {
                self.push_chunk(&mut steps, chunk.take(), sql, analysis, guards);
                steps.push_back(StepSpec::Tx(sql[st.range.clone()].to_string(), kind));
                continue;
            }
            match &st.action {
                Action::Pass { .. } => {
                    chunk = Some(match chunk.take() {
                        Some((r, n)) => (r.start..st.range.end, n.start..i + 1),
                        None => (st.range.clone(), i..i + 1),
                    });
                }
                Action::Refuse { table, reason, .. } if observed(guards, table) => {
                    // Observe mode: it goes as written, with the statements around it.
                    let refusal = Refusal::Unsupported(reason.clone());
                    let guard = guards.guards.iter().find(|g| g.table == *table);
                    if let Some(g) = guard {
                        self.observe_refusal(cx, g, &refusal);
                    }
                    chunk = Some(match chunk.take() {
                        Some((r, n)) => (r.start..st.range.end, n.start..i + 1),
                        None => (st.range.clone(), i..i + 1),
                    });
                }
                Action::Refuse { table, reason, .. } => {
                    self.push_chunk(&mut steps, chunk.take(), sql, analysis, guards);
                    let (block, ctx) = self.refusal(table, Refusal::Unsupported(reason.clone()));
                    steps.push_back(StepSpec::Raise(block, Box::new(ctx)));
                }
                Action::Write(w) => {
                    self.push_chunk(&mut steps, chunk.take(), sql, analysis, guards);
                    steps.push_back(StepSpec::Write(w.clone()));
                }
            }
        }
        self.push_chunk(&mut steps, chunk, sql, analysis, guards);
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
        steps
    }

    /// Sends the steps of a text holding guarded writes: as the client wrote it when they are
    /// one write that needs nothing changed and nothing checked, else as a script, run in a
    /// transaction block when PostgreSQL would run the text in one.
    fn send_steps(
        &mut self,
        cx: &mut Cx<'_>,
        msg: Frame<'_>,
        sql: &str,
        steps: VecDeque<StepSpec>,
    ) {
        // One write that needs nothing changed and nothing checked (an `xmin` guard, a row the
        // session does not track): it goes as the client wrote it.
        if let [StepSpec::Sql(text, Some(check))] = steps.as_slices().0
            && steps.len() == 1
            && check.expected.is_none()
            && check.added == 0
            && !check.in_cte
            && text.as_bytes() == sql.as_bytes()
        {
            self.send_as_written(
                cx,
                msg,
                check.guards.table_ids[check.guard],
                check.unchecked,
            );
            return;
        }
        // A lone checked write that may act without rows (a statement-level trigger, a call
        // in its WHERE) is wrapped too: if it matches no row, its conflict must undo what it
        // did, as an error raised inside it would.
        let lone_loud_write = matches!(
            steps.as_slices().0,
            [StepSpec::Sql(_, Some(c))] if c.expected.is_some() && !c.quiet_without_rows
        );
        let implicit = steps.len() > 1 || lone_loud_write;
        self.start_script(cx, steps, implicit, sql.into());
    }

    /// Makes a run of passed statements (byte range, statement indexes) one script step,
    /// which follows the pinned reads among them.
    fn push_chunk(
        &self,
        steps: &mut VecDeque<StepSpec>,
        chunk: Option<(std::ops::Range<usize>, std::ops::Range<usize>)>,
        sql: &str,
        analysis: &Analysis,
        guards: &GuardSet,
    ) {
        let Some((bytes, statements)) = chunk else {
            return;
        };
        let (text, captured) = self.captured_chunk(sql, bytes, &statements, analysis, guards);
        let checks: Vec<ReadCheck> = analysis
            .reads
            .iter()
            .filter(|r| statements.contains(&r.statement))
            .filter_map(|r| self.read_check(guards, r, None))
            .map(|c| ReadCheck {
                statement: c.statement - statements.start,
                ..c
            })
            .collect();
        steps.push_back(
            if checks.is_empty() && analysis.shared.is_empty() && captured.is_empty() {
                StepSpec::Sql(text, None)
            } else {
                let mut reads = Reads::new(checks, true);
                reads.shared.clone_from(&analysis.shared);
                reads.captured = captured.into();
                StepSpec::Reads(text, Box::new(reads))
            },
        );
    }

    /// A query holding one guarded write (of `table`) that needs nothing changed and nothing
    /// checked: sent as the client wrote it.
    fn send_as_written(
        &mut self,
        cx: &mut Cx<'_>,
        msg: Frame<'_>,
        table: TableId,
        class: Option<Outcome>,
    ) {
        self.count_write(cx, table, class);
        cx.out.to_server.extend_from_slice(msg.bytes());
        cx.out.replies.push(Pending::Simple(None));
    }

    /// A query with no guarded write that names a guarded table: when it holds `SELECT`s that
    /// pin one guarded row each, it is relayed as it is and their results are followed.
    fn pinned_read_query(
        &mut self,
        cx: &mut Cx<'_>,
        msg: Frame<'_>,
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

    /// Relays a query that needs no guarded write rewritten (`analysis` is its analysis):
    /// with its captured reads' columns added ([`GuardState::capture_query`]), or as it is,
    /// following its pinned reads; false when it has nothing to follow.
    fn follow_pinned_reads(
        &mut self,
        cx: &mut Cx<'_>,
        msg: Frame<'_>,
        sql: &str,
        analysis: &Simple,
        guards: &GuardSet,
    ) -> bool {
        if self.capture_query(cx, sql, analysis, guards) {
            return true;
        }
        let kinds = analysis.kinds();
        // A read of a guarded table in several instances is followed too: its rows must not
        // teach that table's versions (see `ReadPlan::from_columns`).
        let shared = &kinds.shared;
        if shared.is_empty()
            && !kinds
                .reads
                .iter()
                .any(|read| self.follows_read(cx, guards, read))
        {
            return false;
        }
        let checks: Vec<ReadCheck> = match analysis.reads(sql) {
            Some(reads) => reads
                .iter()
                .filter(|read| self.follows_read(cx, guards, read))
                .filter_map(|read| self.read_check(guards, read, None))
                .collect(),
            None => Vec::new(),
        };
        if checks.is_empty() && shared.is_empty() {
            return false;
        }
        let mut reads = Reads::new(checks, false);
        reads.shared.clone_from(shared);
        cx.out.to_server.extend_from_slice(msg.bytes());
        cx.out
            .replies
            .push(Pending::Simple(Some(Tag::Read(Box::new(reads)))));
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
    /// before it when the write's row count cannot tell a conflict
    /// ([`GuardState::cte_lock_check`]).
    pub(super) fn simple_write_step(
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
        match self.plan_write(cx, &guards, w, key, pinned) {
            Plan::Refuse(refusal) => {
                let (block, ctx) = self.refusal(&guards.guards[w.guard].table, refusal);
                (None, StepSpec::Raise(block, Box::new(ctx)))
            }
            Plan::Send { expected, key } => {
                self.send_write_step(cx, sql, w, &guards, expected, key, pinned_here)
            }
        }
    }

    /// The step of a write planned to be sent with `expected` for the row `key` (or, when
    /// its text names no row, checked against the rows the session knows), and the check to
    /// run before it, if any. `pinned_here`: the statement pins its own version.
    #[allow(clippy::too_many_arguments)]
    fn send_write_step(
        &mut self,
        cx: &mut Cx<'_>,
        sql: &str,
        w: &GuardedWrite,
        guards: &Arc<GuardSet>,
        expected: Option<String>,
        key: Option<Vec<String>>,
        pinned_here: bool,
    ) -> (Option<StepSpec>, StepSpec) {
        let check = self
            .cte_lock_check(cx, guards, w, expected.as_deref(), key.as_deref())
            .map(|(block, ctx)| StepSpec::Raise(block, Box::new(ctx)));
        let cond_len = w.splice.condition.as_ref().map_or(0, |c| c.len());
        let mut text = String::with_capacity(w.splice.statement.len() + cond_len + 256);
        // A write whose rows its text does not name is checked row by row against
        // every row of the table the session knows.
        let known = match (&expected, &key, pinned_here) {
            (None, None, false) => self.known_rows(guards, w),
            _ => Vec::new(),
        };
        let render_with = match (&expected, pinned_here) {
            (Some(v), false) => Expected::Literal(v),
            _ if !known.is_empty() => Expected::Rows(&known),
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
        let bump = self.bump_for(w.guard);
        let added = w.render_with(sql, guards, render_with, returning, bump, &mut text);
        let observed = w.observes(guards, render_with);
        let step = StepSpec::Sql(
            text,
            Some(Box::new(WriteCheck {
                guards: Arc::clone(guards),
                guard: w.guard,
                op: w.op,
                added,
                observed: observed.then(|| expected.clone()),
                unchecked: unchecked_class(w, expected.is_some() || !known.is_empty()),
                client_returning: w.client_returning,
                // A write inside WITH checks its version in its predicate, but its row
                // count is not the statement's: the check before it raises a conflict. An
                // observed write raises nothing.
                expected: if w.splice.in_cte || observed {
                    None
                } else {
                    expected
                },
                key,
                known,
                plan: None,
                held: None,
                in_cte: w.splice.in_cte,
                quiet_without_rows: self.quiet_without_rows(w),
            })),
        );
        (check, step)
    }
}

/// True when the guard of `table` (a config guard or an alias) is in observe mode.
pub(super) fn observed(guards: &GuardSet, table: &crate::config::TableName) -> bool {
    guards
        .guards
        .iter()
        .find(|g| g.table == *table)
        .is_some_and(|g| g.observes())
}
