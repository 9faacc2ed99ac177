//! `Parse` in the extended protocol: a statement that writes a guarded table is prepared
//! rewritten (its version compared with one more parameter, `$n`, NULL meaning unknown, and the
//! proxy's `RETURNING` added), or replaced by a refusal the server raises. A write that can
//! check nothing and learn nothing goes lean: the unnamed statement with its `Bind` in view is
//! sent as written (with its bump), and a named statement is prepared both as written and,
//! under a name of the proxy's, in full; each `Bind` picks the form it needs (see
//! [`super::bind`]). A `Parse` that changes what the session knows of a name is tagged with a
//! [`ParseUndo`], taken back if the server skips or fails it.

use crate::protocol::TxStatus;
use std::sync::{Arc, OnceLock};

use super::cx::Cx;
use super::state::GuardState;
use super::statements::{
    FULL_VARIANT_PREFIX, FullVariant, ParseUndo, Parsed, Prepared, PreparedWrite,
};
use super::tag::{StmtTag, Tag};
use crate::engine::replies::Pending;
use crate::guard::conflict::Refusal;
use crate::guard::cursors::may_touch_cursors;
use crate::guard::rewrite::{Bump, Expected};
use crate::guard::{Action, GuardSet, GuardedWrite, Target, WriteOp};
use crate::protocol::{Frame, backend as be, frontend as fe};

/// The server parses a text the proxy's parser rejects first: one it rejects gets its own
/// error (and the rest of the batch is skipped, as directly); one it accepts is closed again
/// before anything can run it, and refused by the raise that follows.
fn parse_first(cx: &mut Cx<'_>, name: &[u8], sql: &str, param_types: &[u32]) {
    fe::write_parse(&mut cx.out.to_server, name, sql.as_bytes(), param_types);
    fe::write_close(&mut cx.out.to_server, b'S', name);
    for p in [Pending::Parse, Pending::Close] {
        cx.out.replies.push(p(Some(Tag::Hidden)));
    }
}

impl GuardState {
    /// A `Parse`. Returns true when the guard sent it itself: rewritten, replaced by a
    /// refusal, or as written but tagged, when it changes what the session knows of the name.
    pub fn guard_parse(&mut self, cx: &mut Cx<'_>, msg: Frame<'_>) -> Result<bool, String> {
        // A malformed Parse goes to the server unread: it refuses it before preparing
        // anything, so what the session knows of the name stays.
        let Some(p) = fe::parse(msg.body()) else {
            return Ok(false);
        };
        let name = p.name;
        if name.is_empty() {
            // Run in a later batch, it replaces the unnamed statement whatever an earlier
            // Parse still unanswered does (a named one fails where the name is taken).
            self.supersede_unanswered(cx, name, false);
        }
        if !self.guards_active(cx) {
            // What a reload left of the name (a statement prepared under the guards, or one
            // to prepare again) is replaced by the client's new statement.
            if !self.statements.is_empty() || !self.stale.is_empty() {
                self.forget_statement(cx, name);
            }
            return Ok(false);
        }
        let before = match self.statements.is_empty() {
            true => None,
            false => self.statements.remove(name),
        };
        if !self.stale.is_empty() {
            self.stale.remove(name);
        }
        let guards = cx.settings.guards.clone();
        let (found, read) = self.found_in_parse(p.query, &guards.prefilter);
        self.tx_parse(name, p.query, found.tx);
        if found.session {
            self.on_session_command(p.query, cx.tx_status == TxStatus::Failed);
        }
        let may_write = found.may_write_guarded();
        if !may_write
            && !found.name
            && before.is_none()
            && self.fetched(p.query).is_none()
            && !may_touch_cursors(p.query)
        {
            return Ok(false);
        }
        // This Parse changes what the session knows of the name: undone if the server does
        // not carry it out.
        let undo = Arc::new(ParseUndo {
            name: name.into(),
            before,
            after: OnceLock::new(),
            hidden: false,
            kept: OnceLock::new(),
            superseded: OnceLock::new(),
        });
        let reply = || Some(Tag::Parsed(undo.clone()));
        let parsed = match std::str::from_utf8(p.query) {
            _ if !may_write => Parsed::Passed,
            // Not UTF-8 in a UTF-8 session: the server refuses it in its own words.
            Err(_) if cx.params.client_utf8() => Parsed::Passed,
            Ok(sql) => self.parse_guarded(cx, p.name, sql, &p.param_types, reply(), true),
            Err(_) => {
                let (block, ctx) = self.not_utf8_refusal(cx, p.query);
                self.send_extended_raise(cx, &block, ctx);
                Parsed::Refused
            }
        };
        match parsed {
            Parsed::Passed => {
                // A read, or a text that merely spells a write word (`SELECT ... FOR UPDATE`).
                self.parse_read(cx, msg, &p, found.name.then_some(read), &guards);
                cx.out.replies.push(Pending::Parse(reply()));
                self.noted_after_parse(&undo);
                self.note_unanswered(cx, &undo);
            }
            Parsed::Rewritten => {
                self.noted_after_parse(&undo);
                self.note_unanswered(cx, &undo);
            }
            // The server never sees this Parse: the statement it has stays what the session
            // knows.
            Parsed::Refused => {
                if let Some(before) = &undo.before {
                    self.statements.insert(name.into(), before.clone());
                }
            }
        }
        Ok(true)
    }

    /// Sends the `Parse` of a statement that may write a guarded table: rewritten, or replaced
    /// by a refusal, or (`Passed`) not sent at all. `reply` tags the `ParseComplete` (hidden
    /// when the proxy prepares the statement again on its own). `client_parse`: the client's
    /// own `Parse` (not one the proxy sends again for a statement the server has), which may
    /// go without version check when its first `Bind` is already in view, and which the server
    /// parses first when the proxy's parser rejects it.
    pub(super) fn parse_guarded(
        &mut self,
        cx: &mut Cx<'_>,
        name: &[u8],
        sql: &str,
        param_types: &[u32],
        mut reply: StmtTag,
        client_parse: bool,
    ) -> Parsed {
        let guards = cx.settings.guards.clone();
        let analysis = self.cache.get_or_analyze(sql, &guards);
        let [statement] = analysis.statements.as_slice() else {
            // Several statements: the server refuses them in a prepared statement.
            return Parsed::Passed;
        };
        match &statement.action {
            Action::Pass { .. } => Parsed::Passed,
            Action::Refuse { table, reason, .. } if super::simple::observed(&guards, table) => {
                // Observe mode: prepared as written; recorded once, when prepared.
                let refusal = Refusal::Unsupported(reason.clone());
                if let Some(g) = guards.guards.iter().find(|g| g.table == *table) {
                    self.observe_refusal(cx, g, &refusal);
                }
                Parsed::Passed
            }
            Action::Refuse {
                table,
                reason,
                unparsed,
            } => {
                if *unparsed && client_parse {
                    parse_first(cx, name, sql, param_types);
                }
                let (block, ctx) = self.refusal(table, Refusal::Unsupported(reason.clone()));
                self.send_extended_raise(cx, &block, ctx);
                Parsed::Refused
            }
            Action::Write(w) if version_param(w, &guards, param_types) == Some(0) => {
                // Checks a version but has no parameter number left for it.
                let table = &guards.guards[w.guard].table;
                let (block, ctx) = self.refusal(table, Refusal::Unsupported(no_room(table)));
                self.send_extended_raise(cx, &block, ctx);
                Parsed::Refused
            }
            Action::Write(w) => {
                if client_parse
                    && !name.is_empty()
                    && w.op != WriteOp::Upsert
                    && w.pinned.is_none()
                    && matches!(w.target, Target::Key(_))
                {
                    self.parse_named_lean(cx, name, sql, param_types, reply, &guards, w);
                    return Parsed::Rewritten;
                }
                let bump = self.bump_for(w.guard);
                let full = |server_name: Option<Box<[u8]>>| {
                    full_form(sql, param_types, &guards, w, server_name, bump)
                };
                let lean = client_parse && self.lean_parse(cx, name, w, param_types);
                // A write that goes lean is planned as the client wrote it; one in full may be
                // kept prepared.
                if !lean
                    && name.is_empty()
                    && self.parse_kept(
                        cx,
                        sql,
                        param_types,
                        &mut reply,
                        |n| full(Some(n)),
                        &guards,
                        w,
                    )
                {
                    return Parsed::Rewritten;
                }
                let prepared = if lean {
                    self.parse_as_written(cx, name, sql, param_types, &guards, w);
                    prepared_write(sql, param_types, &guards, w, None, 0, true)
                } else {
                    let (prepared, text) = full(None);
                    fe::write_parse(&mut cx.out.to_server, name, text.as_bytes(), param_types);
                    prepared
                };
                cx.out.replies.push(Pending::Parse(reply));
                self.statements.insert(name.into(), Arc::new(prepared));
                Parsed::Rewritten
            }
        }
    }

    /// A named guarded write: the client's statement as written (with its bump), and its full
    /// form under a name of the proxy's, that `ParseComplete` hidden (see
    /// [`PreparedWrite::full`]).
    fn parse_named_lean(
        &mut self,
        cx: &mut Cx<'_>,
        name: &[u8],
        sql: &str,
        param_types: &[u32],
        reply: StmtTag,
        guards: &Arc<GuardSet>,
        w: &Arc<GuardedWrite>,
    ) {
        self.parse_as_written(cx, name, sql, param_types, guards, w);
        cx.out.replies.push(Pending::Parse(reply));
        self.full_variants += 1;
        let full_name = format!("{FULL_VARIANT_PREFIX}{}", self.full_variants);
        let extra = version_param(w, &guards, param_types).unwrap_or(0);
        let mut text = String::with_capacity(sql.len() + 128);
        let bump = self.bump_for(w.guard);
        let expected = full_expected(w, guards, Some(extra));
        let added = w.render_with(sql, guards, expected, true, bump, &mut text);
        fe::write_parse(
            &mut cx.out.to_server,
            full_name.as_bytes(),
            text.as_bytes(),
            param_types,
        );
        cx.out.replies.push(Pending::Parse(Some(Tag::Hidden)));
        let prepared = Prepared {
            declared_types: param_types.to_vec(),
            write: Some(PreparedWrite {
                guards: guards.clone(),
                write: w.clone(),
                extra: None,
                added: 0,
                text: sql.to_string(),
                lean: false,
                full: Some(FullVariant {
                    name: full_name.into_bytes().into(),
                    extra,
                    added,
                }),
                server_name: None,
            }),
            ..Prepared::default()
        };
        self.statements.insert(name.into(), Arc::new(prepared));
    }

    /// Sends a `Parse` of a guarded write as the client wrote it, with its bump where the
    /// version kind needs one: no version check, no `RETURNING`.
    fn parse_as_written(
        &mut self,
        cx: &mut Cx<'_>,
        name: &[u8],
        sql: &str,
        param_types: &[u32],
        guards: &GuardSet,
        w: &GuardedWrite,
    ) {
        if w.adds_bump(guards) {
            let mut text = String::with_capacity(sql.len() + 64);
            let bump = self.bump_for(w.guard);
            w.render_with(sql, guards, Expected::None, false, bump, &mut text);
            fe::write_parse(&mut cx.out.to_server, name, text.as_bytes(), param_types);
        } else {
            fe::write_parse(&mut cx.out.to_server, name, sql.as_bytes(), param_types);
        }
    }

    /// A `Parse` of the unnamed statement with its `Bind` right behind it (libpq's
    /// `PQexecParams`, `pgbench -M extended`), binding a row the session does not track, with
    /// no read still to answer before it: that execution checks no version, so the statement
    /// goes without predicate and `RETURNING` (with its bump where the version kind needs
    /// one), which spares the server planning them on every execution. A later `Bind` of a row
    /// the session does track (or may, by then) prepares the statement again in full
    /// ([`GuardState::unlean`]).
    pub(super) fn lean_parse(
        &mut self,
        cx: &mut Cx<'_>,
        name: &[u8],
        w: &GuardedWrite,
        param_types: &[u32],
    ) -> bool {
        if !name.is_empty() || w.pinned.is_some() || w.op == WriteOp::Upsert {
            return false;
        }
        let Target::Key(vals) = &w.target else {
            return false;
        };
        if self.rows_may_come(cx) {
            return false;
        }
        let Ok(Some(h)) = crate::protocol::peek_header(cx.lookahead, usize::MAX) else {
            return false;
        };
        if h.tag != fe::BIND || cx.lookahead.len() < h.size {
            return false;
        }
        let body = &cx.lookahead[5..h.size];
        if !fe::bind_names(body).is_some_and(|(_, statement)| statement.is_empty()) {
            return false;
        }
        let table = cx.settings.guards.table_ids[w.guard];
        if !self.tracker.tracks_table(table) {
            return true;
        }
        let Some(b) = fe::bind(body) else {
            return false;
        };
        let key = self.key_text(w.guard, vals, Some((&b, param_types)));
        !self.is_tracked(table, key)
    }

    /// Notes in `undo` what the `Parse` just handled left under its name, and returns it.
    pub(super) fn noted_after_parse(&mut self, undo: &ParseUndo) -> Option<Arc<Prepared>> {
        let after = self.statements.get(&undo.name[..]).cloned()?;
        let _ = undo.after.set(after.clone());
        Some(after)
    }

    /// The client's `Parse` tagged with `undo` went to the server (its reply tagged with it).
    fn note_unanswered(&mut self, cx: &Cx<'_>, undo: &Arc<ParseUndo>) {
        let batch = cx.out.replies.sync_points();
        self.unanswered_parses
            .insert(undo.name.clone(), (undo.clone(), batch));
    }

    /// A message that replaces or drops statement `name` on the server whatever the client's
    /// unanswered `Parse` of it does, when both run (`same_batch`: also when that `Parse` is
    /// in this message's batch, which an error in it skips too).
    pub(super) fn supersede_unanswered(&mut self, cx: &Cx<'_>, name: &[u8], same_batch: bool) {
        if self.unanswered_parses.is_empty() {
            return;
        }
        let now = cx.out.replies.sync_points();
        if let Some((undo, batch)) = self.unanswered_parses.get(name)
            && (same_batch || *batch < now)
        {
            let _ = undo.superseded.set(());
        }
    }

    /// The `Parse` tagged with `undo` was answered (or skipped).
    fn parse_answered(&mut self, undo: &ParseUndo) {
        if self
            .unanswered_parses
            .get(&undo.name[..])
            .is_some_and(|(u, _)| std::ptr::eq(Arc::as_ptr(u), undo))
        {
            self.unanswered_parses.remove(&undo.name[..]);
        }
    }

    /// True when some `Parse` that changed what the session knows of a name is unanswered:
    /// only then may a `Bind` or `Describe` have to wait (checked before decoding its name).
    pub fn parses_unanswered(&self) -> bool {
        !self.unanswered_parses.is_empty()
    }

    /// True when a `Bind` or `Describe` of statement `name`, to be pushed after
    /// `sync_points` sync points, must wait for the reply to the client's last `Parse` of
    /// the name: one that changed what the session knows of it, still unanswered, in an
    /// earlier batch. Whether the server carries that `Parse` out decides which statement the
    /// message reaches (a `Parse` of a name the server has fails, and the statement it had
    /// stays; a failed one of the unnamed statement leaves none), and that is known only from
    /// its reply. (Behind a `Parse` of the same batch the message runs only if the `Parse`
    /// succeeded: what the session knows is already what it leaves.) The name is remembered
    /// for [`GuardState::awaited_parse_answered`].
    pub fn waits_for_parse(&mut self, name: &[u8], sync_points: u64) -> bool {
        if self.unanswered_parses.is_empty() {
            return false;
        }
        let waits = self
            .unanswered_parses
            .get(name)
            .is_some_and(|(_, batch)| *batch < sync_points);
        if waits {
            self.awaited_parse = Some(name.into());
        }
        waits
    }

    /// True once the `Parse` a message waits for (see [`GuardState::waits_for_parse`]) was
    /// answered; `settled` (nothing awaited from the server any more) forgets every
    /// `Parse` still noted as unanswered.
    pub fn awaited_parse_answered(&mut self, settled: bool) -> bool {
        if settled {
            self.unanswered_parses.clear();
        }
        let answered = self
            .awaited_parse
            .as_deref()
            .is_none_or(|name| !self.unanswered_parses.contains_key(name));
        if answered {
            self.awaited_parse = None;
        }
        answered
    }

    /// A `Parse` tagged with `undo` was skipped (`answered` false) or failed: what the session
    /// knows of the name goes back to what the server has, unless a later `Parse` or `Close`
    /// of the name changed it since.
    pub fn undo_parse(&mut self, undo: &ParseUndo, answered: bool) {
        self.parse_answered(undo);
        if let Some(kept) = undo.kept.get() {
            self.kept_not_prepared(kept);
        }
        if undo.superseded.get().is_some() {
            return;
        }
        let current = self.statements.get(&undo.name[..]);
        let unchanged_since = match (current, undo.after.get()) {
            (Some(current), Some(after)) => Arc::ptr_eq(current, after),
            (None, None) => true,
            _ => false,
        };
        if !unchanged_since {
            return;
        }
        match &undo.before {
            Some(before) if !(answered && undo.name.is_empty()) => {
                self.statements.insert(undo.name.clone(), before.clone());
            }
            _ => {
                self.statements.remove(&undo.name[..]);
            }
        }
    }

    /// The reply to a tagged `Parse`: a failed one is undone, a kept statement becomes usable.
    /// Returns true when the reply is the proxy's own (hidden).
    pub(super) fn on_parse_done(&mut self, tag: u8, undo: &ParseUndo) -> bool {
        self.parse_answered(undo);
        if tag == be::ERROR_RESPONSE {
            self.undo_parse(undo, true);
            return false;
        }
        if let Some(kept) = undo.kept.get() {
            kept.prepared_on_server();
        }
        undo.hidden
    }
}

/// The parameter the proxy adds for the expected version (1-based), for a write that may
/// check one: `Some(0)` when the statement already uses the last parameter number PostgreSQL
/// allows (65535), so none is left. A write checked against the known rows
/// ([`checks_rows_by_param`]) adds two: this is the first, and `Some(0)` when 65535 would be
/// passed.
fn version_param(w: &GuardedWrite, guards: &GuardSet, param_types: &[u32]) -> Option<u16> {
    let rows = checks_rows_by_param(w, guards);
    let key = w.op != WriteOp::Upsert && w.pinned.is_none() && matches!(w.target, Target::Key(_));
    (rows || key).then(|| {
        let used = usize::from(w.max_param).max(param_types.len());
        let last = used + if rows { 2 } else { 1 };
        u16::try_from(last).map_or(0, |_| (used + 1) as u16)
    })
}

/// Why a guarded write with every parameter number taken is refused.
fn no_room(table: &crate::config::TableName) -> String {
    format!(
        "this write to guarded table {table} uses parameter $65535, the last PostgreSQL allows, so optlock has none left for its version check; use fewer parameters (an array parameter), or pin the version in the WHERE clause"
    )
}

/// True when the full form of `w` checks every row it touches against the known rows bound as
/// two parameters ([`Expected::RowParams`]): a write whose rows its text does not name (or an
/// upsert) that pins no version, of a table with a one-column key.
pub(super) fn checks_rows_by_param(w: &GuardedWrite, guards: &GuardSet) -> bool {
    (w.op == WriteOp::Upsert || w.target == Target::Bulk)
        && w.pinned.is_none()
        && guards.guards[w.guard].key.len() == 1
}

/// How many parameters the proxy adds to the client's in the statement the server has for
/// `pw`: none, the expected version, or the known rows' keys and versions.
pub(super) fn extra_params(pw: &PreparedWrite) -> usize {
    match pw.extra {
        Some(_) if checks_rows_by_param(&pw.write, &pw.guards) => 2,
        Some(_) => 1,
        None => 0,
    }
}

/// What the full form of `w` checks, given its first added parameter.
fn full_expected(w: &GuardedWrite, guards: &GuardSet, extra: Option<u16>) -> Expected<'static> {
    match extra {
        Some(n) if checks_rows_by_param(w, guards) => Expected::RowParams(n),
        Some(n) => Expected::Param(n),
        None => Expected::None,
    }
}

/// The full form of a guarded write (version check and `RETURNING`): its text, and what the
/// session knows of the statement.
fn full_form(
    sql: &str,
    param_types: &[u32],
    guards: &Arc<GuardSet>,
    w: &Arc<GuardedWrite>,
    server_name: Option<Box<[u8]>>,
    bump: Bump,
) -> (Prepared, String) {
    let extra = version_param(w, guards, param_types);
    let mut text = String::with_capacity(sql.len() + 128);
    let expected = full_expected(w, guards, extra);
    let added = w.render_with(sql, guards, expected, true, bump, &mut text);
    let mut prepared = prepared_write(sql, param_types, guards, w, extra, added, false);
    if let Some(pw) = &mut prepared.write {
        pw.server_name = server_name;
    }
    (prepared, text)
}

/// What the session knows of a guarded write prepared from `sql`.
fn prepared_write(
    sql: &str,
    param_types: &[u32],
    guards: &Arc<GuardSet>,
    w: &Arc<GuardedWrite>,
    extra: Option<u16>,
    added: usize,
    lean: bool,
) -> Prepared {
    Prepared {
        declared_types: param_types.to_vec(),
        write: Some(PreparedWrite {
            guards: guards.clone(),
            write: w.clone(),
            extra,
            added,
            text: sql.to_string(),
            lean,
            full: None,
            server_name: None,
        }),
        ..Prepared::default()
    }
}
