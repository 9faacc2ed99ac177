//! Server-side cursors whose query read capture changed: `DECLARE name CURSOR FOR SELECT ...`
//! of guarded tables, sent in either protocol, goes to the server with the proxy's columns
//! added, and the session remembers the cursor by name. A `FETCH` from it (either protocol)
//! has its rows stripped of those columns, which teach the rows' versions.
//!
//! A name stops carrying the proxy's columns when any statement declares or closes it
//! (`CLOSE`, `CLOSE ALL`, `DISCARD ALL`, another `DECLARE`), and at the end of the
//! transaction unless the cursor is `WITH HOLD`. Cursors a function opens or closes are not
//! seen, so nothing is taken off on the name alone: in the simple protocol the
//! `RowDescription` shows whether the last columns are the proxy's; in the extended protocol
//! the proxy describes each `FETCH` portal itself right after its `Bind` (the reply hidden),
//! and its rows are stripped only when that description shows them.

use std::sync::Arc;

use super::cx::Cx;
use super::rows::{Captured, CapturedCursor, ReadPlan, Reads, ends_with_added, layout};
use super::state::GuardState;
use super::statements::{Portal, Prepared, PreparedCapture};
use super::tag::Tag;
use crate::engine::replies::Pending;
use crate::guard::capture::{added_columns, push_columns};
use crate::guard::cursors::{CursorTouch, fetched_cursor, may_touch_cursors, touched_cursors};
use crate::guard::{Capture, GuardSet};
use crate::protocol::{Frame, backend as be, frontend as fe};

/// Cursors a session remembers (forgotten all at once beyond).
const MAX_CURSORS: usize = 256;

impl GuardState {
    /// A cursor declared with a captured query: its `FETCH`es carry the same columns.
    pub(super) fn remember_cursor(&mut self, cursor: CapturedCursor) {
        if self.cursors.len() >= MAX_CURSORS {
            self.cursors.clear();
        }
        self.cursors
            .insert(cursor.decl.name.as_bytes().into(), cursor);
    }

    /// The end of a transaction: its cursors are gone, but those `WITH HOLD`.
    pub(super) fn end_cursors(&mut self) {
        if !self.cursors.is_empty() {
            self.cursors.retain(|_, c| c.decl.hold);
        }
    }

    /// A simple `Query` sent while the session remembers cursors: the names its statements
    /// declare or close are forgotten (a captured `DECLARE` among them is remembered again
    /// after, see [`GuardState::capture_query`]).
    pub(super) fn touch_cursors(&mut self, sql: &[u8]) {
        if self.cursors.is_empty() {
            return;
        }
        if let Ok(sql) = std::str::from_utf8(sql) {
            self.forget_touched(&touched_cursors(sql));
        }
    }

    fn forget_touched(&mut self, touches: &[CursorTouch]) {
        for t in touches {
            match t {
                CursorTouch::ClosedAll => self.cursors.clear(),
                CursorTouch::Declared(name) | CursorTouch::Closed(name) => {
                    self.cursors.remove(name.as_bytes());
                }
            }
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

    /// A `Parse` of a statement that names no guarded table: a `FETCH` from a captured cursor
    /// is remembered as a captured read, so that its `Describe` replies and rows lose the
    /// proxy's columns; a `DECLARE` or `CLOSE` is remembered for the names it touches. False
    /// when it is neither.
    pub(super) fn prepare_unguarded(&mut self, p: &fe::Parse<'_>) -> bool {
        if self.prepare_fetch(p) {
            return true;
        }
        let touches = cursor_touches(p.query);
        if touches.is_empty() {
            return false;
        }
        let prepared = Prepared {
            touches,
            declared_types: p.param_types.clone(),
            ..Prepared::default()
        };
        self.statements.insert(p.name.into(), Arc::new(prepared));
        true
    }

    fn prepare_fetch(&mut self, p: &fe::Parse<'_>) -> bool {
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
            fetch: true,
        };
        let prepared = Prepared {
            capture: Some(Arc::new(capture)),
            declared_types: p.param_types.clone(),
            ..Prepared::default()
        };
        self.statements.insert(p.name.into(), Arc::new(prepared));
        true
    }

    /// The `DECLARE` of a cursor whose query is captured, prepared in the extended protocol:
    /// the text to prepare (the query's columns added) and what its `FETCH`es will carry.
    pub(super) fn prepared_cursor(
        &self,
        sql: &str,
        capture: &Capture,
        guards: &GuardSet,
    ) -> Option<(String, CapturedCursor)> {
        let decl = capture.cursor.clone()?;
        let tables = self.capture_tables(capture);
        if tables.is_empty() {
            return None;
        }
        let mut text = String::with_capacity(sql.len() + 64 * tables.len());
        text.push_str(&sql[..capture.at]);
        push_columns(&mut text, tables.iter().copied(), guards);
        text.push_str(&sql[capture.at..]);
        let cursor = CapturedCursor {
            captured: Captured {
                statement: 0,
                layout: layout(&tables, guards),
                added: added_columns(tables.iter().copied(), guards),
                copy: None,
            },
            types: self.column_types(&tables),
            decl,
        };
        Some((text, cursor))
    }

    /// The `Bind` of a statement that declares or closes cursors: the names it touches are
    /// forgotten, and the cursor it declares with a captured query remembered.
    pub(super) fn bind_cursor_statement(&mut self, prepared: &Prepared) {
        self.forget_touched(&prepared.touches);
        if let Some(cursor) = &prepared.cursor {
            self.remember_cursor(cursor.clone());
        }
    }

    /// After the `Bind` of a captured `FETCH`: the proxy's own `Describe` of the portal, whose
    /// reply tells whether its rows carry the proxy's columns (hidden from the client).
    pub(super) fn describe_fetch_portal(cx: &mut Cx<'_>, name: &[u8], portal: Arc<Portal>) {
        fe::write_describe(&mut cx.out.to_server, b'P', name);
        cx.out
            .replies
            .push(Pending::DescribePortal(Some(Tag::FetchShown(portal))));
    }

    /// The reply to the proxy's `Describe` of a `FETCH` portal. Returns true when it is kept
    /// from the client (all but an error).
    pub(super) fn on_fetch_shown(tag: u8, body: &[u8], portal: &Portal) -> bool {
        if let Some((added, _)) = &portal.capture
            && let Some(shown) = &portal.fetch_shown
        {
            let _ = shown.set(tag == be::ROW_DESCRIPTION && ends_with_added(body, *added));
        }
        tag != be::ERROR_RESPONSE
    }

    /// A simple `Query` that is one `FETCH` from a cursor declared with a captured query:
    /// relayed as it is, its rows stripped of the proxy's columns, which teach their versions.
    /// False when it is not one.
    pub(super) fn fetch_query(&mut self, cx: &mut Cx<'_>, msg: Frame<'_>, sql: &[u8]) -> bool {
        let Some(cursor) = self.fetched(sql) else {
            return false;
        };
        let mut reads = Reads::new(Vec::new(), false);
        reads.captured = std::iter::once(cursor.captured.clone()).collect();
        cx.out.to_server.extend_from_slice(msg.bytes());
        cx.out
            .replies
            .push(Pending::Simple(Some(Tag::Read(Box::new(reads)))));
        true
    }
}

/// The cursor names a `Parse` text declares or closes (one look at its start for most texts).
pub(super) fn cursor_touches(sql: &[u8]) -> Vec<CursorTouch> {
    if !may_touch_cursors(sql) {
        return Vec::new();
    }
    std::str::from_utf8(sql).map_or_else(|_| Vec::new(), touched_cursors)
}

/// True when the last of a text's touches of the cursor `name` declares it: the cursor a
/// captured `DECLARE` made is still there when the text has run.
pub(super) fn declared_last(sql: &str, name: &str) -> bool {
    touched_cursors(sql)
        .iter()
        .rev()
        .find(|t| t.touches(name))
        .is_some_and(|t| matches!(t, CursorTouch::Declared(_)))
}
