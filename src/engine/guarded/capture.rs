//! Read capture in the session: a `SELECT` of guarded tables is sent with each table
//! instance's key and version columns added to its output (see [`crate::guard::capture`]);
//! they are read from each row to track versions and removed before the client sees
//! anything.
//!
//! - Simple protocol: a `Query` with no guarded write whose statements have captures is sent
//!   rewritten; the reply of each captured statement is stripped ([`super::pinned`] follows
//!   it statement by statement).
//! - Extended protocol: the `Parse` of a captured `SELECT` is sent rewritten; `Describe`
//!   replies are stripped ([`super::describe`]); a `Bind` that gives one result format per
//!   column gets formats for the added columns too; each `DataRow` of an `Execute` is
//!   stripped ([`super::execute`]).
//! - A captured read that pins one row teaches its key and version from its rows: its key is
//!   read from its `Bind` or its text only when it finds no row, to forget the row.
//!
//! Whether a statement is captured is decided once per text by the analysis, and per session
//! from what its database says: the tables resolved there, the names another relation
//! shadows, the names of aggregate functions.

use std::sync::{Arc, OnceLock};

use smallvec::SmallVec;

use super::cursors::declared_last;
use super::cx::Cx;
use super::rows::{Captured, CapturedCursor, ReadCheck, ReadPlan, Reads, layout};
use super::state::GuardState;
use super::statements::{Portal, Prepared, PreparedCapture};
use super::tag::Tag;
use crate::engine::replies::Pending;
use crate::guard::cache::Simple;
use crate::guard::capture::{added_columns, push_columns};
use crate::guard::{Capture, CaptureTable, GuardSet};
use crate::protocol::{Frame, begin_message, finish_message, frontend as fe};

/// The table instances one captured statement adds columns for (see
/// [`GuardState::capture_tables`]).
pub(super) type CaptureTables<'c> = SmallVec<[&'c CaptureTable; 4]>;

impl GuardState {
    /// The table instances of `capture` this session adds columns for: none when a function
    /// the statement calls may be an aggregate or a window function (or the session has not
    /// learned their names), else those whose guard this database resolves, and named
    /// unqualified only when no other relation has that name.
    pub(super) fn capture_tables<'c>(&self, capture: &'c Capture) -> CaptureTables<'c> {
        let calls_plain = capture.calls.is_empty()
            || self
                .aggregates
                .as_ref()
                .is_some_and(|a| !capture.calls.iter().any(|c| a.contains(c)));
        if !calls_plain {
            return CaptureTables::new();
        }
        capture
            .tables
            .iter()
            .filter(|t| {
                self.resolved
                    .get(t.guard)
                    .is_some_and(|rg| !(t.unqualified && rg.shadowed))
            })
            .collect()
    }

    /// A simple `Query` with no guarded write, some of whose statements are captured: sent
    /// with their columns added, its replies followed ([`Tag::Read`]). False when none is.
    pub(super) fn capture_query(
        &mut self,
        cx: &mut Cx<'_>,
        sql: &str,
        analysis: &Simple,
        guards: &GuardSet,
    ) -> bool {
        let kinds = analysis.kinds();
        if kinds.captures.is_empty() || self.resolved.is_empty() {
            return false;
        }
        let mut copied = 0;
        let mut captured: SmallVec<[Captured; 1]> = SmallVec::new();
        let at = begin_message(&mut cx.out.to_server, fe::QUERY);
        for c in &kinds.captures {
            let tables = self.capture_tables(c);
            if tables.is_empty() {
                continue;
            }
            let Some(at_column) = analysis.capture_at(c).filter(|&a| a >= copied) else {
                cx.out.to_server.truncate(at - 1);
                return false;
            };
            let text = &mut cx.out.to_server;
            text.extend_from_slice(&sql.as_bytes()[copied..at_column]);
            push_columns(text, tables.iter().copied(), guards);
            copied = at_column;
            let copy = c.copy.map(|format| (format, self.column_types(&tables)));
            let one = Captured {
                statement: c.statement,
                layout: layout(&tables, guards),
                added: added_columns(tables.iter().copied(), guards),
                copy,
            };
            if let Some(decl) = &c.cursor
                && declared_last(sql, &decl.name)
            {
                self.remember_cursor(CapturedCursor {
                    captured: one.clone(),
                    types: self.column_types(&tables),
                    decl: decl.clone(),
                });
            }
            captured.push(one);
        }
        if captured.is_empty() {
            cx.out.to_server.truncate(at - 1);
            return false;
        }
        cx.out
            .to_server
            .extend_from_slice(&sql.as_bytes()[copied..]);
        cx.out.to_server.extend_from_slice(&[0]);
        finish_message(&mut cx.out.to_server, at);
        // A captured read teaches its row's version itself: its key is needed only to forget
        // the row if the read finds none, and read from the text only then.
        let of_captured = |statement: usize| captured.iter().any(|c| c.statement == statement);
        let mut checks: Vec<ReadCheck> = Vec::new();
        if kinds.reads.iter().any(|r| !of_captured(r.statement)) {
            for read in analysis.reads(sql).iter().flat_map(|r| r.iter()) {
                if !of_captured(read.statement) && self.follows_read(cx, guards, read) {
                    checks.extend(self.read_check(guards, read, None));
                }
            }
        }
        let unfound = kinds.reads.iter().any(|r| of_captured(r.statement));
        let mut reads = Reads::new(checks, false);
        reads.shared.clone_from(&kinds.shared);
        reads.captured = captured;
        let conforming = cx.params.standard_conforming_strings;
        reads.unfound = unfound.then(|| (sql.into(), conforming));
        cx.out
            .replies
            .push(Pending::Simple(Some(Tag::Read(Box::new(reads)))));
        true
    }

    /// The text of a run of passed statements of a script (`bytes` of `sql`, the statements
    /// `statements` of its `analysis`) with the columns of its captured reads added, and what
    /// was added to which (statement indexes counted from the run's first). A cursor's query
    /// is not captured here: its `FETCH`es are followed from a `Query` of their own.
    pub(super) fn captured_chunk(
        &self,
        sql: &str,
        bytes: std::ops::Range<usize>,
        statements: &std::ops::Range<usize>,
        analysis: &crate::guard::Analysis,
        guards: &GuardSet,
    ) -> (String, Vec<Captured>) {
        let mut text = String::with_capacity(bytes.len());
        let mut copied = bytes.start;
        let mut captured = Vec::new();
        let ours = analysis
            .captures
            .iter()
            .filter(|c| statements.contains(&c.statement) && c.cursor.is_none());
        for c in ours {
            let tables = self.capture_tables(c);
            if tables.is_empty() || c.at < copied || c.at > bytes.end {
                continue;
            }
            text.push_str(&sql[copied..c.at]);
            push_columns(&mut text, tables.iter().copied(), guards);
            copied = c.at;
            captured.push(Captured {
                statement: c.statement - statements.start,
                layout: layout(&tables, guards),
                added: added_columns(tables.iter().copied(), guards),
                copy: c.copy.map(|format| (format, self.column_types(&tables))),
            });
        }
        text.push_str(&sql[copied..bytes.end]);
        (text, captured)
    }

    /// The capture of a prepared read: the text to prepare (the client's with the columns
    /// added) and what the session keeps of it. None when the statement is not captured, or
    /// the types of a column it would add are not known.
    pub(super) fn prepared_capture(
        &self,
        sql: &str,
        capture: &Capture,
        guards: &GuardSet,
    ) -> Option<(String, PreparedCapture)> {
        let tables = self.capture_tables(capture);
        // A COPY's rows, and a cursor's FETCHes, are followed from a simple `Query` only.
        if tables.is_empty() || capture.copy.is_some() || capture.cursor.is_some() {
            return None;
        }
        let mut cols = Vec::new();
        for t in &tables {
            let rg = self.resolved.get(t.guard)?;
            cols.extend(rg.key_types.iter().map(|&k| (k, 0)));
            cols.push((rg.version_type, 0));
        }
        let layout = layout(&tables, guards);
        let text_plan = ReadPlan::captured(&layout, &cols)?;
        let binary_plan = text_plan.with_format(1);
        let mut text = String::with_capacity(sql.len() + 64 * tables.len());
        text.push_str(&sql[..capture.at]);
        push_columns(&mut text, tables.iter().copied(), guards);
        text.push_str(&sql[capture.at..]);
        let prepared = PreparedCapture {
            added: cols.len(),
            layout,
            plans: [Arc::new(text_plan), Arc::new(binary_plan)],
            text: sql.to_string(),
            fetch: false,
        };
        Some((text, prepared))
    }

    /// The `Bind` of a captured read: its portal strips and reads the added columns (in the
    /// one format the `Bind` gives every column, else text), and a `Bind` with one result
    /// format per column gets text formats for them. Returns true when the guard sent it.
    /// (No key is looked up here: see [`GuardState::forget_unfound`].)
    pub(super) fn bind_captured(
        &mut self,
        cx: &mut Cx<'_>,
        portal: &[u8],
        msg: Frame<'_>,
        prepared: &Arc<Prepared>,
        capture: &PreparedCapture,
    ) -> bool {
        let Some(b) = fe::bind(msg.body()) else {
            return false;
        };
        let codes = b.result_formats;
        let count = match codes {
            [a, b, ..] => i16::from_be_bytes([*a, *b]),
            _ => 0,
        };
        // One code for every column (ours too), or text for ours.
        let binary = count == 1 && codes.get(2..4) == Some(&[0, 1]);
        // The captured columns teach the row's version; the key a pinned read binds is
        // needed only to forget the row if the read does not find it.
        let pinned_bind = prepared.pinned.is_some().then(|| msg.body().into());
        let info = Arc::new(Portal {
            statement: Some(prepared.clone()),
            pinned_bind,
            capture: Some((capture.added, capture.plans[usize::from(binary)].clone())),
            result_formats: codes.into(),
            fetch_shown: capture.fetch.then(OnceLock::new),
            ..Portal::default()
        });
        self.portals.insert(portal.into(), info.clone());
        if count > 1 {
            fe::write_bind_rewritten(&mut cx.out.to_server, &b, &[], capture.added);
            let fix = super::bind::result_formats_fix(&b, capture.added);
            cx.out.replies.push(Pending::Bind(fix));
        } else if capture.fetch {
            cx.out.to_server.extend_from_slice(msg.bytes());
            cx.out.replies.push(Pending::Bind(None));
        } else {
            return false;
        }
        if capture.fetch {
            GuardState::describe_fetch_portal(cx, portal, info);
        }
        true
    }
}

/// A captured pinned read that found no row; the types of the columns capture adds.
impl GuardState {
    /// Statement `statement` of a simple query's text `sql` (analysed with
    /// `standard_conforming_strings` `conforming`), a captured read, found no row or showed
    /// no version: the row it pins, if any, is forgotten. The text is analysed again (from
    /// the cache) only then.
    pub(super) fn forget_unfound_in_text(
        &mut self,
        cx: &Cx<'_>,
        (sql, conforming): &(Box<str>, bool),
        statement: usize,
    ) {
        let guards = cx.settings.guards.clone();
        let analysis = self.cache.get_or_analyze_simple(sql, &guards, *conforming);
        let Some(reads) = analysis.reads(sql) else {
            return;
        };
        for read in reads.iter().filter(|r| r.statement == statement) {
            if let Some(check) = self.read_check(&guards, read, None) {
                self.tracker.forget(check.table, &check.key);
            }
        }
    }

    /// A captured read that pins one row (bound by `portal`) found none: the row it names is
    /// forgotten, if tracked. Its `Bind` is decoded only now: a read that finds its row
    /// teaches the row's version from the captured columns.
    pub(super) fn forget_unfound(&mut self, cx: &Cx<'_>, portal: &Portal, bind: &[u8]) {
        let Some(prepared) = &portal.statement else {
            return;
        };
        let (Some(read), Some(b)) = (&prepared.pinned, fe::bind(bind)) else {
            return;
        };
        let types = prepared.param_types();
        let guards = cx.settings.guards.clone();
        if let Some(check) = self.read_check(&guards, read, Some((&b, &types))) {
            self.tracker.forget(check.table, &check.key);
        }
    }

    /// The types of the columns capture adds for `tables` (each one's key columns, then its
    /// version), as this database's catalog gives them; empty when one is not resolved.
    pub(super) fn column_types(&self, tables: &[&CaptureTable]) -> Vec<u32> {
        let mut types = Vec::new();
        for t in tables {
            let Some(rg) = self.resolved.get(t.guard) else {
                return Vec::new();
            };
            types.extend(&rg.key_types);
            types.push(rg.version_type);
        }
        types
    }
}
