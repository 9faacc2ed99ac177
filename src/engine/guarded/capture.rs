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
//!
//! Whether a statement is captured is decided once per text by the analysis, and per session
//! from what its database says: the tables resolved there, the names another relation
//! shadows, the names of aggregate functions.

use std::sync::Arc;

use super::cx::Cx;
use super::rows::{Captured, CapturedCursor, ReadCheck, ReadPlan, Reads};
use super::state::GuardState;
use super::statements::{Portal, Prepared, PreparedCapture};
use super::tag::Tag;
use crate::engine::replies::Pending;
use crate::guard::cache::Simple;
use crate::guard::capture::{added_columns, closed_cursor, fetched_cursor, push_columns};
use crate::guard::{Capture, CaptureTable, CursorDecl, GuardSet, TableId};
use crate::protocol::{Frame, frontend as fe};

impl GuardState {
    /// The table instances of `capture` this session adds columns for: none when a function
    /// the statement calls may be an aggregate or a window function (or the session has not
    /// learned their names), else those whose guard this database resolves, and named
    /// unqualified only when no other relation has that name.
    pub(super) fn capture_tables<'c>(&self, capture: &'c Capture) -> Vec<&'c CaptureTable> {
        let calls_plain = capture.calls.is_empty()
            || self
                .aggregates
                .as_ref()
                .is_some_and(|a| !capture.calls.iter().any(|c| a.contains(c)));
        if !calls_plain {
            return Vec::new();
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
        let mut text = String::new();
        let mut copied = 0;
        let mut captured = Vec::new();
        for c in &kinds.captures {
            let tables = self.capture_tables(c);
            if tables.is_empty() {
                continue;
            }
            let Some(at) = analysis.capture_at(c).filter(|&at| at >= copied) else {
                return false;
            };
            if text.is_empty() {
                text.reserve(sql.len() + 64 * tables.len());
            }
            text.push_str(&sql[copied..at]);
            push_columns(&mut text, tables.iter().copied(), guards);
            copied = at;
            let copy = c.copy.map(|format| (format, self.column_types(&tables)));
            let one = Captured {
                statement: c.statement,
                layout: layout(&tables, guards),
                added: added_columns(tables.iter().copied(), guards),
                copy,
            };
            if let Some(decl) = &c.cursor {
                let types = self.column_types(&tables);
                self.remember_cursor(decl, &one, types);
            }
            captured.push(one);
        }
        if captured.is_empty() {
            return false;
        }
        text.push_str(&sql[copied..]);
        let checks: Vec<ReadCheck> = match analysis.reads(sql) {
            Some(reads) => reads
                .iter()
                .filter(|read| self.follows_read(cx, guards, read))
                .filter_map(|read| self.read_check(guards, read, None))
                .collect(),
            None => Vec::new(),
        };
        let mut reads = Reads::new(checks, false);
        reads.shared.clone_from(&kinds.shared);
        reads.captured = captured;
        fe::write_query(&mut cx.out.to_server, text.as_bytes());
        cx.out
            .replies
            .push(Pending::Simple(Some(Box::new(Tag::Read(Box::new(reads))))));
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

    /// A cursor declared with a captured query: its `FETCH`es carry the same columns. The
    /// map is bounded; a name it holds that now names another cursor is harmless, as the
    /// proxy's columns are recognised by their name before anything is taken off.
    fn remember_cursor(&mut self, decl: &CursorDecl, captured: &Captured, types: Vec<u32>) {
        const MAX_CURSORS: usize = 256;
        if self.cursors.len() >= MAX_CURSORS {
            self.cursors.clear();
        }
        let cursor = CapturedCursor {
            captured: Captured {
                statement: 0,
                ..captured.clone()
            },
            types,
            decl: decl.clone(),
        };
        self.cursors.insert(decl.name.as_bytes().into(), cursor);
    }

    /// The cursors a transaction ended (all but those `WITH HOLD`), or a `CLOSE` in a simple
    /// `Query` (`CLOSE name`, `CLOSE ALL`) closed.
    pub(super) fn end_cursors(&mut self, sql: Option<&[u8]>) {
        if self.cursors.is_empty() {
            return;
        }
        let Some(sql) = sql else {
            self.cursors.retain(|_, c| c.decl.hold);
            return;
        };
        match std::str::from_utf8(sql).ok().and_then(closed_cursor) {
            Some(None) => self.cursors.clear(),
            Some(Some(name)) => {
                self.cursors.remove(name.as_bytes());
            }
            None => {}
        }
    }

    /// The cursor a `FETCH` text reads from, when it is one declared with a captured query.
    pub(super) fn fetched(&self, sql: &[u8]) -> Option<&CapturedCursor> {
        if self.cursors.is_empty() {
            return None;
        }
        let name = std::str::from_utf8(sql).ok().and_then(fetched_cursor)?;
        self.cursors.get(name.as_bytes())
    }

    /// A `FETCH` prepared in the extended protocol from a cursor declared (in a simple
    /// `Query`) with a captured query: remembered as a captured read, so that its `Describe`
    /// replies and rows lose the proxy's columns. False when it is not one.
    pub(super) fn prepare_fetch(&mut self, p: &fe::Parse<'_>) -> bool {
        let Some(cursor) = self.fetched(p.query) else {
            return false;
        };
        let c = &cursor.captured;
        let cols: Vec<(u32, i16)> = cursor.types.iter().map(|&t| (t, 0)).collect();
        let Some(text_plan) = ReadPlan::captured(&c.layout, &cols) else {
            return false;
        };
        // The rows come in the formats the `Bind` asks for, a `BINARY` cursor's too.
        let binary_plan = text_plan.with_format(1);
        let capture = PreparedCapture {
            added: c.added,
            layout: c.layout.clone(),
            plans: [Arc::new(text_plan), Arc::new(binary_plan)],
            text: String::from_utf8_lossy(p.query).into_owned(),
        };
        let prepared = Prepared {
            capture: Some(capture),
            declared_types: p.param_types.clone(),
            ..Prepared::default()
        };
        self.statements.insert(p.name.into(), Arc::new(prepared));
        true
    }

    /// A simple `Query` that is one `FETCH` from a cursor declared with a captured query:
    /// relayed as it is, its rows stripped of the proxy's columns, which teach their versions.
    /// False when it is not one.
    pub(super) fn fetch_query(&mut self, cx: &mut Cx<'_>, msg: Frame<'_>, sql: &[u8]) -> bool {
        let Some(cursor) = self.fetched(sql) else {
            return false;
        };
        let mut reads = Reads::new(Vec::new(), false);
        reads.captured = vec![cursor.captured.clone()];
        cx.out.to_server.extend_from_slice(msg.bytes());
        cx.out
            .replies
            .push(Pending::Simple(Some(Box::new(Tag::Read(Box::new(reads))))));
        true
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
        };
        Some((text, prepared))
    }

    /// The `Bind` of a captured read: its portal strips and reads the added columns (in the
    /// one format the `Bind` gives every column, else text), and a `Bind` with one result
    /// format per column gets text formats for them. Returns true when the guard sent it.
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
        let guards = cx.settings.guards.clone();
        let pinned = prepared
            .pinned
            .as_ref()
            .filter(|read| self.follows_read(cx, &guards, read))
            .and_then(|read| {
                let types = prepared.param_types();
                self.read_check(&guards, read, Some((&b, &types)))
            });
        let info = Portal {
            statement: Some(prepared.clone()),
            pinned,
            capture: Some((capture.added, capture.plans[usize::from(binary)].clone())),
            result_formats: codes.into(),
            ..Portal::default()
        };
        self.portals.insert(portal.into(), Arc::new(info));
        if count <= 1 {
            return false;
        }
        fe::write_bind_rewritten(&mut cx.out.to_server, &b, &[], capture.added);
        cx.out
            .replies
            .push(Pending::Bind(super::bind::result_formats_fix(
                &b,
                capture.added,
            )));
        true
    }
}

/// Each table instance's table and number of key columns, in column order.
impl GuardState {
    /// The types of the columns capture adds for `tables` (each one's key columns, then its
    /// version), as this database's catalog gives them; empty when one is not resolved.
    fn column_types(&self, tables: &[&CaptureTable]) -> Vec<u32> {
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

fn layout(tables: &[&CaptureTable], guards: &GuardSet) -> Vec<(TableId, usize)> {
    tables
        .iter()
        .map(|t| (guards.table_ids[t.guard], guards.guards[t.guard].key.len()))
        .collect()
}
