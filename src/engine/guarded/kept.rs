//! Unnamed guarded writes kept prepared on the server.
//!
//! libpq's `PQexecParams` (`pgbench -M extended`, and most drivers until their prepare
//! threshold) sends the same text in a `Parse` of the unnamed statement before every execution,
//! so the server parses, analyses and plans it each time; for a guarded write the version check
//! and `RETURNING` the proxy adds make that work larger. The second `Parse` of such a text (one
//! sent once is not worth a place) prepares its full form under a name of the proxy's instead,
//! the client's `ParseComplete` being that `Parse`'s reply. Each later one sends only a `Parse`
//! of `SELECT` to the unnamed statement, whose reply stands for the client's: it fails exactly
//! when the client's would (in an aborted transaction). Every `Bind` and `Describe` of the
//! unnamed statement then goes to the kept statement, which the server plans as any prepared
//! statement (custom plans first, then a generic one where it costs no more).
//!
//! Kept: writes that go in full (one that checks no version and learns none goes lean, as
//! the client wrote it, see [`super::parse`]) without a `RETURNING` of the client's
//! (`RETURNING *` changes with the table's columns, and a prepared statement's result must
//! not), at most [`KEPT_STATEMENTS`] texts per session. `DISCARD ALL` and `DEALLOCATE ALL`
//! drop them on the server, so the proxy forgets them; a reload closes them, and so does an
//! error saying a prepared statement is missing or changed its result type (the one execution that got the error fails, as it would for a
//! statement the client prepared itself). An unnamed statement bound to a forgotten kept
//! statement is prepared again at its next `Bind` (see [`super::stale`]); a simple `Query`
//! drops the server's unnamed statement, and the proxy forgets it too.

use std::sync::{Arc, OnceLock};

use super::cx::Cx;
use super::state::GuardState;
use super::statements::{FULL_VARIANT_PREFIX, Kept, ParseUndo, Prepared, StaleStatement};
use super::tag::{StmtTag, Tag};
use crate::engine::replies::Pending;
use crate::guard::{GuardSet, GuardedWrite};
use crate::protocol::{backend as be, frontend as fe};

/// How many texts a session keeps prepared.
pub const KEPT_STATEMENTS: usize = 64;

/// How many texts seen once a session remembers (forgotten all at once beyond).
const SEEN_TEXTS: usize = 256;

/// What stands for the client's `Parse` of a kept text: cheap to parse, and refused in an
/// aborted transaction as any statement.
const STAND_IN: &[u8] = b"SELECT";

impl GuardState {
    /// True when the session keeps statements.
    #[inline]
    pub fn keeps_statements(&self) -> bool {
        !self.kept.is_empty()
    }

    /// Forgets every kept statement. With `close`, they are closed at the start of the next
    /// extended-protocol batch (the server still has them); without, the server dropped them.
    /// An unnamed statement that stood for one is prepared again at its next `Bind`.
    pub fn forget_kept(&mut self, close: bool) {
        if self.kept.is_empty() {
            return;
        }
        if let Some(p) = self.take_kept_unnamed() {
            let stale = p
                .write
                .as_ref()
                .map(|w| StaleStatement::new(w.text.clone(), p.declared_types.clone()));
            self.stale.extend(stale.map(|s| (Box::default(), s)));
        }
        for (_, kept) in self.kept.drain() {
            if close && let Some(name) = kept.name() {
                self.deallocated.push(name.into());
            }
        }
    }

    /// Takes what the session knows of the unnamed statement when it stands for a kept one.
    /// Called for every simple `Query`, which drops the server's unnamed statement: a `Bind`
    /// of it must then fail as it would without the proxy.
    pub fn take_kept_unnamed(&mut self) -> Option<Arc<Prepared>> {
        let kept = self
            .statements
            .get(&b""[..])?
            .write
            .as_ref()
            .is_some_and(|w| w.server_name.is_some());
        if !kept {
            return None;
        }
        self.statements.remove(&b""[..])
    }

    /// An `ErrorResponse` while statements are kept: one saying a prepared statement is
    /// missing (26000) or changed its result type (0A000, after DDL on its table) may concern
    /// a kept one, so all are forgotten and closed, to be prepared again as needed.
    pub fn on_error_with_kept(&mut self, body: &[u8]) {
        if matches!(be::error_field(body, b'C'), Some(b"26000" | b"0A000")) {
            self.forget_kept(true);
        }
    }

    /// True the first time an unnamed guarded write's text is seen (since the list of such
    /// texts was last cleared): a text is kept from its second `Parse` on, so one sent once does
    /// not take a place.
    fn first_sight(&mut self, sql: &str) -> bool {
        if self.seen_once.remove(sql.as_bytes()).is_some() {
            return false;
        }
        if self.seen_once.len() >= SEEN_TEXTS {
            self.seen_once.clear();
        }
        self.seen_once.insert(sql.as_bytes().into(), ());
        true
    }

    /// Forgets a kept statement whose `Parse` failed or was skipped.
    pub fn kept_not_prepared(&mut self, kept: &Arc<Kept>) {
        if self
            .kept
            .get(&kept.text)
            .is_some_and(|k| Arc::ptr_eq(k, kept))
        {
            self.kept.remove(&kept.text);
        }
    }
}

impl GuardState {
    /// A `Parse` of the unnamed statement holding guarded write `w`, sent through its kept
    /// statement: the stand-in when the text is kept, or the full form under a new name of the
    /// proxy's. `reply` is taken when a message answering it was sent. Returns false when the
    /// `Parse` must go the usual way (a `RETURNING` of the client's, a statement still being
    /// prepared or prepared with other parameter types or guards, no room left, or a `Parse`
    /// of the proxy's that nothing can tell the outcome of).
    pub(super) fn parse_kept(
        &mut self,
        cx: &mut Cx<'_>,
        sql: &str,
        param_types: &[u32],
        reply: &mut StmtTag,
        prepared: impl FnOnce(Box<[u8]>) -> (Prepared, String),
        guards: &Arc<GuardSet>,
        w: &GuardedWrite,
    ) -> bool {
        if w.client_returning {
            return false;
        }
        let undo = match reply.as_ref() {
            Some(Tag::Parsed(undo)) => Some(undo.clone()),
            _ => None,
        };
        // The client's own `Parse` needs its reply and replaces the server's unnamed
        // statement; the proxy's (a statement prepared again for a `Bind`) needs neither.
        let from_client = undo.as_ref().is_some_and(|u| !u.hidden);
        if let Some(kept) = self.kept.get(sql.as_bytes()) {
            let usable = kept.ready.get().is_some()
                && *kept.types == *param_types
                && kept
                    .prepared
                    .write
                    .as_ref()
                    .is_some_and(|pw| Arc::ptr_eq(&pw.guards, guards));
            if !usable {
                return false;
            }
            let prepared = kept.prepared.clone();
            if from_client {
                fe::write_parse(&mut cx.out.to_server, b"", STAND_IN, &[]);
                cx.out.replies.push(Pending::Parse(reply.take()));
            }
            self.statements.insert(Box::default(), prepared);
            return true;
        }
        let Some(undo) = undo else {
            return false;
        };
        if self.kept.len() >= KEPT_STATEMENTS || self.first_sight(sql) {
            return false;
        }
        self.keep_new(cx, sql, param_types, reply, prepared, &undo);
        true
    }

    /// Keeps a text seen before: its full form is prepared under a new name of the proxy's
    /// (`prepared` makes it from that name), and the unnamed statement stands for it. For the
    /// client's own `Parse` (`undo` not hidden), the server's unnamed statement is closed
    /// first, as that `Parse` would have replaced it.
    fn keep_new(
        &mut self,
        cx: &mut Cx<'_>,
        sql: &str,
        param_types: &[u32],
        reply: &mut StmtTag,
        prepared: impl FnOnce(Box<[u8]>) -> (Prepared, String),
        undo: &ParseUndo,
    ) {
        let from_client = !undo.hidden;
        if from_client {
            // The client's `Parse` drops the unnamed statement whatever its outcome: a `Bind`
            // of it after a failed one must fail as it would without the proxy.
            fe::write_close(&mut cx.out.to_server, b'S', b"");
            cx.out.replies.push(Pending::Close(Some(Tag::Hidden)));
        }
        self.full_variants += 1;
        let name = format!("{FULL_VARIANT_PREFIX}{}", self.full_variants);
        let (p, text) = prepared(name.as_bytes().into());
        fe::write_parse(
            &mut cx.out.to_server,
            name.as_bytes(),
            text.as_bytes(),
            param_types,
        );
        cx.out.replies.push(Pending::Parse(reply.take()));
        let p = Arc::new(p);
        let kept = Arc::new(Kept {
            text: sql.as_bytes().into(),
            types: param_types.into(),
            prepared: p.clone(),
            ready: OnceLock::new(),
        });
        let _ = undo.kept.set(kept.clone());
        self.kept.insert(sql.as_bytes().into(), kept);
        self.statements.insert(Box::default(), p);
    }
}
