//! Guarded writes in the extended protocol.
//!
//! `Parse` of a guarded write sends the rewritten text; when the session may know the row's
//! version, the text compares the version with one more parameter (`$n`, NULL meaning
//! unknown), which every `Bind` fills from the tracked versions and `ParameterDescription`
//! hides from the client. The proxy's `RETURNING` columns are read and removed from the rows
//! and from `RowDescription`. An `Execute` that carries an expected version holds the rest of
//! the client's batch until its row count is known: 0 rows becomes a conflict raised by the
//! server, and the server then skips the rest of the batch up to `Sync`, as for any error.
//!
//! A write that can check nothing and learn nothing goes lean: the unnamed statement with its
//! `Bind` in view is sent as written (with its bump), and a named statement is prepared both as
//! written and, under a name of the proxy's, in full; each `Bind` picks the form it needs.

use super::GuardState;
use super::cx::Cx;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;

use super::kept::Kept;
use super::pinned::{ReadCheck, param_text};
use super::raise::RaiseCtx;
use super::reads::{Col, ReadPlan, canonical, result_format_codes};
use super::simple::{Plan, WriteCheck};
use super::{AfterSync, Tag};
use crate::engine::replies::Pending;
use crate::events::Outcome;
use crate::guard::conflict::{self, Refusal};
use crate::guard::rewrite::Expected;
use crate::guard::{
    Action, GuardSet, GuardedWrite, PinnedRead, TableId, Target, ValueRef, WriteOp,
};
use crate::protocol::{backend as be, frontend as fe};

/// What [`GuardState::parse_guarded`] did with a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not a guarded write: nothing sent.
    Passed,
    /// Sent rewritten.
    Rewritten,
    /// Replaced by a refusal raised on the server.
    Refused,
}

/// What a `Describe` told of a result: the guarded rows it carries, and where a pinned read's
/// version column is.
#[derive(Debug, Clone, Default)]
pub struct Described {
    pub reads: Option<ReadPlan>,
    pub version: Option<Col>,
}

/// What the guard knows of a prepared statement that writes or reads a guarded table.
#[derive(Debug, Default)]
pub struct Prepared {
    pub write: Option<PreparedWrite>,
    /// A `SELECT` that pins one guarded row.
    pub pinned: Option<PinnedRead>,
    /// Set by the reply to a `Describe` of the statement, or of its first described portal
    /// (each portal applies its own result formats).
    pub described: OnceLock<Described>,
    /// Parameter types: as the client declared them, completed by a `ParameterDescription`.
    pub declared_types: Vec<u32>,
    pub described_types: OnceLock<Vec<u32>>,
}

impl Prepared {
    /// The type of each parameter, as far as known (0 = unknown).
    fn param_types(&self) -> Vec<u32> {
        let described = self.described_types.get().map_or(&[][..], Vec::as_slice);
        let n = self.declared_types.len().max(described.len());
        (0..n)
            .map(|i| match self.declared_types.get(i) {
                Some(&t) if t != 0 => t,
                _ => described.get(i).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// A rewritten guarded write.
#[derive(Debug)]
pub struct PreparedWrite {
    /// The guards the statement was analysed with.
    pub guards: Arc<GuardSet>,
    pub write: Arc<GuardedWrite>,
    /// The parameter the proxy added for the expected version (1-based).
    pub extra: Option<u16>,
    pub added: usize,
    /// The client's own text: what the statement is prepared from again (after a reload,
    /// or in full after going lean).
    pub text: String,
    /// The statement went to the server without version check or `RETURNING` (see
    /// [`GuardState::lean_parse`]): a `Bind` of a row the session tracks prepares it again in full
    /// first.
    pub lean: bool,
    /// A named statement goes to the server as the client wrote it (bumped where the version
    /// kind needs it), and its full form with version check and `RETURNING` under a name of
    /// the proxy's: a `Bind` that checks a version, or must learn the row's new one, is bound
    /// to the full form; any other goes to the client's statement untouched.
    pub full: Option<FullVariant>,
    /// The name the server has the statement under when it is not the client's: an unnamed
    /// statement kept prepared (see [`super::kept`]).
    pub server_name: Option<Box<[u8]>>,
}

/// A `Parse` that changed what the session knows of a statement name, and how to take the
/// change back if the server does not carry it out: skipped after an earlier error in its
/// batch, or failed itself (a named statement the server has stays; a failed `Parse` of the
/// unnamed statement leaves none). A `Bind` then finds the statement the server really has.
#[derive(Debug)]
pub struct ParseUndo {
    name: Box<[u8]>,
    before: Option<Arc<Prepared>>,
    /// What the `Parse` left under the name (unset: nothing).
    after: OnceLock<Arc<Prepared>>,
    /// The proxy's own `Parse` (a statement prepared again in full): its reply is swallowed.
    pub hidden: bool,
    /// The kept statement this `Parse` prepares, usable once the server answered it.
    pub kept: OnceLock<Arc<Kept>>,
}

/// The full form of a named statement that went lean.
#[derive(Debug)]
pub struct FullVariant {
    pub name: Box<[u8]>,
    /// The parameter the proxy added for the expected version (1-based).
    pub extra: u16,
    pub added: usize,
}

/// The names the proxy gives the full forms of named statements.
pub const FULL_VARIANT_PREFIX: &str = "optlock_full_";

/// What the guard knows of a portal.
#[derive(Debug, Default)]
pub struct Portal {
    pub write: Option<WriteCheck>,
    /// The statement bound, for reads.
    pub statement: Option<Arc<Prepared>>,
    /// A pinned read with its key bound.
    pub pinned: Option<ReadCheck>,
    /// The raw result-format section of the `Bind`.
    pub result_formats: Box<[u8]>,
    /// Set by the reply to a `Describe` of the portal (formats as bound).
    pub described: OnceLock<Described>,
    /// The statement's description with this portal's formats, made on first use.
    bound: OnceLock<Described>,
}

impl Portal {
    /// The result's description, from a `Describe` of the portal or of its statement. The
    /// `Describe` reply may come after the `Execute` was sent (pipelining): this is read when
    /// the rows arrive.
    pub fn described(&self) -> Option<&Described> {
        if let Some(d) = self.described.get() {
            return Some(d);
        }
        let s = self.statement.as_ref()?.described.get()?;
        Some(self.bound.get_or_init(|| {
            Described {
                reads: s
                    .reads
                    .as_ref()
                    .map(|p| p.with_formats(&self.result_formats)),
                version: s.version.map(|c| c.with_format(&self.result_formats)),
            }
        }))
    }
}

/// The parameter the proxy adds for the expected version (1-based), for a write that may
/// check one.
fn version_param(w: &GuardedWrite, param_types: &[u32]) -> Option<u16> {
    (w.op != WriteOp::Upsert && w.pinned.is_none() && matches!(w.target, Target::Key(_)))
        .then(|| w.max_param.max(param_types.len() as u16) + 1)
}

/// The full form of a guarded write (version check and `RETURNING`): its text, and what the
/// session knows of the statement.
fn full_form(
    sql: &str,
    param_types: &[u32],
    guards: &Arc<GuardSet>,
    w: &Arc<GuardedWrite>,
    server_name: Option<Box<[u8]>>,
) -> (Prepared, String) {
    let extra = version_param(w, param_types);
    let mut text = String::with_capacity(sql.len() + 128);
    let expected = extra.map_or(Expected::None, Expected::Param);
    w.render_with(sql, guards, expected, true, &mut text);
    let added = w.added_columns(guards);
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

impl Tag {
    /// True for a guarded write whose rows are all the proxy's own (the client wrote no
    /// `RETURNING`): the client sees none of them.
    pub fn hides_all_rows(&self) -> bool {
        matches!(self, Tag::Execute(p) if p.write.as_ref().is_some_and(|w| w.added > 0 && !w.client_returning))
    }

    /// True when later messages of the batch must wait for this statement's row count.
    pub fn holds_batch(&self) -> bool {
        matches!(self, Tag::Execute(p) if p.write.as_ref().is_some_and(|w| w.expected.is_some()))
    }

    /// True for a guarded write that changes nothing when it matches no row (see
    /// [`GuardState::quiet_without_rows`]).
    pub fn quiet_without_rows(&self) -> bool {
        matches!(self, Tag::Execute(p) if p.write.as_ref().is_some_and(|w| w.quiet_without_rows))
    }
}

impl GuardState {
    /// A `Parse`. Returns true when the guard sent it itself: rewritten, replaced by a
    /// refusal, or as written but tagged, when it changes what the session knows of the name.
    pub fn guard_parse(&mut self, cx: &mut Cx<'_>, msg: &[u8]) -> Result<bool, String> {
        let body = &msg[5..];
        if !self.guards_active(cx) {
            // What a reload left of the name (a statement prepared under the guards, or one
            // to prepare again) is replaced by the client's new statement.
            let left = !self.statements.is_empty() || !self.stale.is_empty();
            if left && let Some(name) = fe::parse_name(body) {
                self.forget_statement(cx, name);
            }
            return Ok(false);
        }
        let Some(name) = fe::parse_name(body) else {
            return Ok(false);
        };
        let before = match self.statements.is_empty() {
            true => None,
            false => self.statements.remove(name),
        };
        if !self.stale.is_empty() {
            self.stale.remove(name);
        }
        let guards = cx.settings.guards.clone();
        let Some(p) = fe::parse(body) else {
            return Ok(false);
        };
        let found = self.found_in_parse(p.query, &guards.prefilter);
        if found.session {
            self.on_session_command(p.query, cx.tx_status == b'E');
        }
        let may_write = found.may_write_guarded();
        if !may_write && !found.name && before.is_none() {
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
        });
        let reply = || Some(Box::new(Tag::Parsed(undo.clone())));
        let parsed = match std::str::from_utf8(p.query) {
            _ if !may_write => Parsed::Passed,
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
                if found.name {
                    self.prepare_read(&p, &guards);
                }
                cx.out.to_server.extend_from_slice(msg);
                cx.out.replies.push(Pending::Parse(reply()));
                self.noted_after_parse(&undo);
            }
            Parsed::Rewritten => {
                self.noted_after_parse(&undo);
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
    /// when the proxy prepares the statement again on its own). With `may_lean`, a statement
    /// whose first `Bind` is already in view may go without version check.
    pub(super) fn parse_guarded(
        &mut self,
        cx: &mut Cx<'_>,
        name: &[u8],
        sql: &str,
        param_types: &[u32],
        mut reply: super::StmtTag,
        may_lean: bool,
    ) -> Parsed {
        let guards = cx.settings.guards.clone();
        let analysis = self.cache.get_or_analyze(sql, &guards);
        let [statement] = analysis.statements.as_slice() else {
            // Several statements: the server refuses them in a prepared statement.
            return Parsed::Passed;
        };
        match &statement.action {
            Action::Pass { .. } => Parsed::Passed,
            Action::Refuse { table, reason } => {
                let (block, ctx) = self.refusal(table, Refusal::Unsupported(reason.clone()));
                self.send_extended_raise(cx, &block, ctx);
                Parsed::Refused
            }
            Action::Write(w) => {
                if may_lean
                    && !name.is_empty()
                    && w.op != WriteOp::Upsert
                    && w.pinned.is_none()
                    && matches!(w.target, Target::Key(_))
                {
                    self.parse_named_lean(cx, name, sql, param_types, reply, &guards, w);
                    return Parsed::Rewritten;
                }
                let full = |server_name: Option<Box<[u8]>>| {
                    full_form(sql, param_types, &guards, w, server_name)
                };
                let lean = may_lean && self.lean_parse(cx, name, w, param_types);
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
        reply: super::StmtTag,
        guards: &Arc<GuardSet>,
        w: &Arc<GuardedWrite>,
    ) {
        self.parse_as_written(cx, name, sql, param_types, guards, w);
        cx.out.replies.push(Pending::Parse(reply));
        self.full_variants += 1;
        let full_name = format!("{FULL_VARIANT_PREFIX}{}", self.full_variants);
        let extra = w.max_param.max(param_types.len() as u16) + 1;
        let mut text = String::with_capacity(sql.len() + 128);
        w.render_with(sql, guards, Expected::Param(extra), true, &mut text);
        fe::write_parse(
            &mut cx.out.to_server,
            full_name.as_bytes(),
            text.as_bytes(),
            param_types,
        );
        cx.out
            .replies
            .push(Pending::Parse(Some(Box::new(Tag::Hidden))));
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
                    added: w.added_columns(guards),
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
            w.render_with(sql, guards, Expected::None, false, &mut text);
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
    fn lean_parse(
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
        let Ok(Some(h)) = crate::protocol::peek_header(&cx.lookahead, usize::MAX) else {
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

    /// True while a reply still to come may start tracking rows (a read earlier in the
    /// pipeline): a row untracked now may be tracked by the time a write of it runs, and only
    /// a write with its `RETURNING` then tells the session the row's new version.
    pub(super) fn rows_may_come(&self, cx: &Cx<'_>) -> bool {
        cx.out.replies.iter().any(|p| match p {
            Pending::Simple(_) => true,
            Pending::Execute(tag) => tag.is_some(),
            _ => false,
        })
    }

    /// True when the session tracks a version of the row with this key.
    fn is_tracked(&mut self, table: TableId, key: Option<Vec<String>>) -> bool {
        let Some(key) = key else {
            return false;
        };
        self.tracker.expected(table, &key).is_some()
    }

    /// A `Bind` of a statement that went lean, for a row the session tracks: the statement is
    /// prepared again with its version check (the `ParseComplete` hidden). Returns the new
    /// statement.
    fn unlean(
        &mut self,
        cx: &mut Cx<'_>,
        statement: &[u8],
        prepared: Arc<Prepared>,
        b: &fe::Bind<'_>,
    ) -> Arc<Prepared> {
        let Some(pw) = &prepared.write else {
            return prepared;
        };
        let (true, Target::Key(vals)) = (pw.lean, &pw.write.target) else {
            return prepared;
        };
        let table = pw.guards.table_ids[pw.write.guard];
        let key = self.key_text(pw.write.guard, vals, Some((b, &prepared.param_types())));
        if !self.rows_may_come(cx) && !self.is_tracked(table, key) {
            return prepared;
        }
        let text = pw.text.clone();
        let types = prepared.declared_types.clone();
        let undo = Arc::new(ParseUndo {
            name: statement.into(),
            before: Some(prepared.clone()),
            after: OnceLock::new(),
            hidden: true,
            kept: OnceLock::new(),
        });
        let reply = Some(Box::new(Tag::Parsed(undo.clone())));
        self.parse_guarded(cx, statement, &text, &types, reply, false);
        self.noted_after_parse(&undo).unwrap_or(prepared)
    }

    /// Notes in `undo` what the `Parse` just handled left under its name, and returns it.
    fn noted_after_parse(&mut self, undo: &ParseUndo) -> Option<Arc<Prepared>> {
        let after = self.statements.get(&undo.name[..]).cloned()?;
        let _ = undo.after.set(after.clone());
        Some(after)
    }

    /// A `Parse` tagged with `undo` was skipped (`answered` false) or failed: what the session
    /// knows of the name goes back to what the server has, unless a later `Parse` or `Close`
    /// of the name changed it since.
    pub fn undo_parse(&mut self, undo: &ParseUndo, answered: bool) {
        if let Some(kept) = undo.kept.get() {
            self.kept_not_prepared(kept);
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

    /// A `Bind`. Returns true when the guard sent it (with the expected version, or replaced
    /// by a refusal).
    pub fn guard_bind(&mut self, cx: &mut Cx<'_>, msg: &[u8]) -> Result<bool, String> {
        if !self.guards_active(cx) && self.stale.is_empty() {
            return Ok(false);
        }
        let body = &msg[5..];
        let Some((portal, statement)) = fe::bind_names(body) else {
            return Ok(false);
        };
        if !self.portals.is_empty() {
            self.portals.remove(portal);
        }
        if self.prepare_stale(cx, statement) == Some(Parsed::Refused) {
            return Ok(true);
        }
        if !self.guards_active(cx) {
            return Ok(false);
        }
        let Some(prepared) = self.statements.get(statement).cloned() else {
            return Ok(false);
        };
        if let Some(pw) = &prepared.write
            && self.expects_nothing(cx, &pw.guards, &pw.write)
        {
            return Ok(self.bind_unchecked(cx, portal, body, pw));
        }
        // A read not followed whose result is known to carry no guarded key and version: its
        // portal needs nothing.
        if prepared.write.is_none()
            && prepared.described.get().is_some_and(|d| d.reads.is_none())
            && prepared
                .pinned
                .as_ref()
                .is_none_or(|read| !self.follows_read(cx, &cx.settings.guards, read))
        {
            return Ok(false);
        }
        let Some(b) = fe::bind(body) else {
            return Ok(false);
        };
        let prepared = self.unlean(cx, statement, prepared, &b);
        let Some(pw) = &prepared.write else {
            let guards = cx.settings.guards.clone();
            let pinned = prepared
                .pinned
                .as_ref()
                .filter(|read| self.follows_read(cx, &guards, read))
                .and_then(|read| {
                    let types = prepared.param_types();
                    self.read_check(&guards, read, Some((&b, &types)))
                });
            let portal_info = Portal {
                statement: Some(prepared.clone()),
                pinned,
                result_formats: b.result_formats.into(),
                ..Portal::default()
            };
            self.portals.insert(portal.into(), Arc::new(portal_info));
            return Ok(false);
        };
        let w = &pw.write;
        let rg = self.resolved.get(w.guard);
        let types = prepared.param_types();
        let bound = Some((&b, types.as_slice()));
        let key: Option<Vec<String>> = match &w.target {
            Target::Key(vals) => self.key_text(w.guard, vals, bound),
            Target::Bulk => None,
        };
        let version_type = rg.map_or(0, |r| r.version_type);
        let pinned = match &w.pinned {
            Some(ValueRef::Literal(v)) => {
                canonical(version_type, 0, v.as_bytes()).or_else(|| Some(v.clone()))
            }
            Some(ValueRef::Param(n)) => param_text(&b, &types, *n, version_type),
            None => None,
        };
        let guards = pw.guards.clone();
        let (expected, key) = match self.plan_write(&guards, w, key, pinned) {
            Plan::Refuse(refusal) => {
                let (block, ctx) = self.refusal(&guards.guards[w.guard].table, refusal);
                self.send_extended_raise(cx, &block, ctx);
                return Ok(true);
            }
            Plan::Send { expected, key } => (expected, key),
        };
        // A write inside WITH: its row is checked and locked first, in the batch's
        // transaction (implicit up to the Sync, or the client's own).
        if let Some((block, ctx)) =
            self.cte_lock_check(cx, &guards, w, expected.as_deref(), key.as_deref())
        {
            self.send_extended_raise(cx, &block, ctx);
        }
        let (b, extra, added) = match &pw.full {
            // A named statement that went lean: bound as it is unless this `Bind` checks a
            // version, a reply still to come may make the session track the row, or the write
            // is inside `WITH` (its portal forgets what it may have changed).
            Some(_) if expected.is_none() && !self.rows_may_come(cx) && !w.splice.in_cte => {
                cx.events
                    .guarded(guards.table_ids[w.guard], Outcome::Rewritten);
                return Ok(false);
            }
            Some(full) => (
                fe::Bind {
                    statement: &full.name,
                    ..b
                },
                Some(full.extra),
                full.added,
            ),
            None => (
                fe::Bind {
                    statement: pw.server_name.as_deref().unwrap_or(b.statement),
                    ..b
                },
                pw.extra,
                pw.added,
            ),
        };
        let extra = extra.map(|_| expected.as_deref().map(str::as_bytes));
        fe::write_bind_rewritten(&mut cx.out.to_server, &b, extra, added);
        cx.out.replies.push(Pending::Bind(None));
        let codes = result_format_codes(b.result_formats);
        let our_format = if codes.len() == 1 { codes[0] } else { 0 };
        // The proxy's columns are read with the types the catalog gave: none before the
        // guard is resolved (right after a reload), and the write then forgets its row.
        let plan = self.resolved.get(w.guard).filter(|_| added > 0).map(|rg| {
            let mut types = rg.key_types.clone();
            types.push(version_type);
            ReadPlan::returning(guards.table_ids[w.guard], &types, our_format)
        });
        let bound = WriteCheck {
            guards: guards.clone(),
            guard: w.guard,
            op: w.op,
            added,
            client_returning: w.client_returning,
            // A write inside WITH checks its version in its predicate, but its row count is
            // not the statement's: the check sent before it raises a conflict.
            expected: if w.splice.in_cte { None } else { expected },
            key,
            plan,
            held: None,
            in_cte: w.splice.in_cte,
            quiet_without_rows: self.quiet_without_rows(w),
        };
        self.write_portal(portal, bound, b.result_formats);
        Ok(true)
    }

    /// The `Bind` of a write that expects no version, whatever row it binds
    /// ([`GuardState::expects_nothing`]), so no key is decoded. It is sent with a NULL for the
    /// proxy's version parameter, if the statement has one, and its portal hides the proxy's
    /// `RETURNING` columns; a statement with neither (a lean one) needs no portal, and its
    /// `Bind` goes as it is. Returns true when the guard sent it.
    fn bind_unchecked(
        &mut self,
        cx: &mut Cx<'_>,
        portal: &[u8],
        body: &[u8],
        pw: &PreparedWrite,
    ) -> bool {
        let w = &pw.write;
        if pw.extra.is_none() && pw.added == 0 && pw.server_name.is_none() {
            cx.events
                .guarded(pw.guards.table_ids[w.guard], Outcome::Rewritten);
            return false;
        }
        let Some(b) = fe::bind(body) else {
            return false;
        };
        let b = fe::Bind {
            statement: pw.server_name.as_deref().unwrap_or(b.statement),
            ..b
        };
        fe::write_bind_rewritten(&mut cx.out.to_server, &b, pw.extra.map(|_| None), pw.added);
        cx.out.replies.push(Pending::Bind(None));
        let check = WriteCheck {
            guards: pw.guards.clone(),
            guard: w.guard,
            op: w.op,
            added: pw.added,
            client_returning: w.client_returning,
            expected: None,
            key: None,
            plan: None,
            held: None,
            in_cte: w.splice.in_cte,
            quiet_without_rows: self.quiet_without_rows(w),
        };
        self.write_portal(portal, check, b.result_formats);
        true
    }

    /// Remembers the portal of a guarded write.
    fn write_portal(&mut self, portal: &[u8], check: WriteCheck, result_formats: &[u8]) {
        self.portals.insert(
            portal.into(),
            Arc::new(Portal {
                write: Some(check),
                result_formats: result_formats.into(),
                ..Portal::default()
            }),
        );
    }

    /// A `Describe`: tagged when its reply may need changing or reading. Returns true with
    /// the tag when the guard sent it (to a kept statement).
    pub fn guard_describe(&mut self, cx: &mut Cx<'_>, body: &[u8]) -> (super::StmtTag, bool) {
        if !self.guards_active(cx) && self.stale.is_empty() {
            return (None, false);
        }
        let Some((kind, name)) = fe::target(body) else {
            return (None, false);
        };
        // A refused statement's error answers first; the server then skips the `Describe`.
        if (kind == b'S' && self.prepare_stale(cx, name) == Some(Parsed::Refused))
            || !self.guards_active(cx)
        {
            return (None, false);
        }
        if kind == b'P' {
            let tag = self.portals.get(name).cloned().map(Tag::DescribePortal);
            return (tag.map(Box::new), false);
        }
        let Some(prepared) = self.statements.get(name).cloned() else {
            return (None, false);
        };
        let server_name = prepared
            .write
            .as_ref()
            .and_then(|w| w.server_name.as_deref());
        if let Some(server_name) = server_name {
            fe::write_describe(&mut cx.out.to_server, b'S', server_name);
        }
        let sent = server_name.is_some();
        (Some(Box::new(Tag::DescribeStatement(prepared))), sent)
    }

    /// An `Execute`: tagged when the portal's rows or row count matter to the guard.
    pub fn guard_execute(&mut self, cx: &mut Cx<'_>, body: &[u8]) -> super::StmtTag {
        if self.portals.is_empty() {
            return None;
        }
        let (portal, _) = fe::execute(body)?;
        let p = self.portals.get(portal)?.clone();
        if let Some(w) = &p.write {
            cx.events
                .guarded(w.guards.table_ids[w.guard], Outcome::Rewritten);
        }
        Some(Box::new(Tag::Execute(p)))
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
        let sync_next = cx.lookahead.len() >= 5
            && cx.lookahead[0] == fe::SYNC
            && cx.lookahead[1..5] == 4u32.to_be_bytes();
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
        let ok = (cx.tx_status == b'T' || cx.tx_status == b'I' && quiet) && sync_next && alone;
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

    /// Closes the full form of a named statement the client no longer has (its
    /// `CloseComplete` hidden).
    pub(super) fn close_full_variant(&mut self, cx: &mut Cx<'_>, p: &Prepared) {
        if let Some(full) = p.write.as_ref().and_then(|w| w.full.as_ref()) {
            fe::write_close(&mut cx.out.to_server, b'S', &full.name);
            cx.out
                .replies
                .push(Pending::Close(Some(Box::new(Tag::Hidden))));
        }
    }

    /// Closes the full forms of the statements the client deallocated with SQL since its last
    /// extended-protocol batch; called as the next one starts, so nothing before it in the
    /// batch can make the server skip them.
    pub fn close_deallocated(&mut self, cx: &mut Cx<'_>) {
        for name in std::mem::take(&mut self.deallocated) {
            fe::write_close(&mut cx.out.to_server, b'S', &name);
            cx.out
                .replies
                .push(Pending::Close(Some(Box::new(Tag::Hidden))));
        }
    }

    /// A `Close`: forget the statement or portal.
    pub fn guard_close(&mut self, cx: &mut Cx<'_>, body: &[u8]) {
        if let Some((kind, name)) = fe::target(body) {
            if kind == b'S' {
                self.forget_statement(cx, name);
            } else {
                self.portals.remove(name);
            }
        }
    }

    /// Forgets statement `name` (closing the proxy's full form of it, if any).
    fn forget_statement(&mut self, cx: &mut Cx<'_>, name: &[u8]) {
        if let Some(p) = self.statements.remove(name) {
            self.close_full_variant(cx, &p);
        }
        self.stale.remove(name);
    }

    /// A reply within a tagged extended entry (`ParameterDescription`, `DataRow`).
    pub(super) fn on_extended_within(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: &[u8],
    ) -> Result<bool, String> {
        let body = &msg[5..];
        match (cx.out.replies.front(), tag) {
            (Some(Pending::DescribeStatement(Some(t))), be::PARAMETER_DESCRIPTION) => {
                let Tag::DescribeStatement(prepared) = t.as_ref() else {
                    return Ok(false);
                };
                if let Some(types) = be::parameter_types(body) {
                    let _ = prepared.described_types.set(types);
                }
                let extra = prepared.write.as_ref().and_then(|w| w.extra);
                match extra {
                    Some(n) => {
                        be::write_parameter_description(
                            &mut cx.out.to_client,
                            body,
                            usize::from(n) - 1,
                        );
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            (Some(Pending::Execute(Some(t))), be::DATA_ROW) => {
                let Tag::Execute(portal) = t.as_ref() else {
                    return Ok(false);
                };
                let portal = portal.clone();
                if let Some(w) = &portal.write {
                    if w.added == 0 {
                        return Ok(false);
                    }
                    if let Some(plan) = &w.plan {
                        plan.observe(body, &mut self.tracker);
                    }
                    if w.client_returning {
                        let n = be::data_row(body).map_or(0, |v| v.len());
                        be::write_truncated(
                            &mut cx.out.to_client,
                            be::DATA_ROW,
                            body,
                            n - w.added.min(n),
                        );
                    }
                    return Ok(true);
                }
                let Some(described) = portal.described() else {
                    return Ok(false);
                };
                if let Some(plan) = &described.reads {
                    plan.observe(body, &mut self.tracker);
                }
                if let Some(check) = &portal.pinned {
                    check.observe(self, body, described.version);
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// A reply that completes a tagged extended entry (already popped).
    pub(super) fn on_extended_complete(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: &[u8],
        p: Pending<super::StmtTag>,
    ) -> Result<bool, String> {
        let body = &msg[5..];
        let t = match p {
            Pending::Parse(Some(t)) | Pending::Bind(Some(t)) | Pending::Close(Some(t)) => t,
            Pending::DescribeStatement(Some(t)) | Pending::DescribePortal(Some(t)) => t,
            Pending::Execute(Some(t)) => t,
            _ => return Ok(false),
        };
        match *t {
            Tag::Hidden => Ok(tag != be::ERROR_RESPONSE),
            Tag::Parsed(undo) => {
                if tag == be::ERROR_RESPONSE {
                    self.undo_parse(&undo, true);
                    return Ok(false);
                }
                if let Some(kept) = undo.kept.get() {
                    kept.prepared_on_server();
                }
                Ok(undo.hidden)
            }
            Tag::DescribeStatement(prepared) => {
                Ok(self.on_describe_statement(cx, tag, body, &prepared))
            }
            Tag::DescribePortal(portal) => Ok(self.on_describe_portal(cx, tag, body, &portal)),
            Tag::Execute(portal) => self.on_execute_done(cx, tag, msg, &portal),
            Tag::Raise(ctx) => {
                if tag == be::ERROR_RESPONSE {
                    self.deliver_raised_error(cx, msg, &ctx);
                } else if let Some(held) = &ctx.held {
                    // The block raised nothing: the write's own conditions matched no row.
                    cx.out.to_client.extend_from_slice(held);
                }
                cx.out.release_client();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `RowDescription`/`NoData` answering a `Describe` of a statement the guard follows.
    fn on_describe_statement(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        body: &[u8],
        prepared: &Prepared,
    ) -> bool {
        if tag != be::ROW_DESCRIPTION {
            return false;
        }
        if let Some(w) = &prepared.write {
            return self.hide_added_columns(cx, body, w.added, w.write.client_returning);
        }
        let pinned_guard = prepared.pinned.as_ref().map(|r| r.guard);
        let _ = prepared
            .described
            .set(self.describe(cx, body, pinned_guard));
        false
    }

    /// `RowDescription`/`NoData` answering a `Describe` of a portal the guard follows.
    fn on_describe_portal(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        body: &[u8],
        portal: &Portal,
    ) -> bool {
        if tag != be::ROW_DESCRIPTION {
            return false;
        }
        if let Some(w) = &portal.write {
            return self.hide_added_columns(cx, body, w.added, w.client_returning);
        }
        let pinned_guard = portal.pinned.as_ref().map(|r| r.guard);
        let described = self.describe(cx, body, pinned_guard);
        // The statement's result has the same columns: remembered for its next portals.
        if let Some(s) = &portal.statement
            && s.described.get().is_none()
        {
            let statement_guard = s.pinned.as_ref().map(|r| r.guard);
            let _ = s.described.set(if statement_guard == pinned_guard {
                described.clone()
            } else {
                self.describe(cx, body, statement_guard)
            });
        }
        let _ = portal.described.set(described);
        false
    }

    /// What a `RowDescription` body tells the guard.
    fn describe(&self, cx: &Cx<'_>, body: &[u8], pinned_guard: Option<usize>) -> Described {
        let Some(guard) = pinned_guard else {
            return Described {
                reads: self.read_plan(cx, body),
                version: None,
            };
        };
        // One decoding serves the rows' read plan and the pinned read's version column.
        let cols = be::row_description(body).unwrap_or_default();
        Described {
            reads: self.plan_of_columns(cx, &cols),
            version: self.version_column(guard, &cols),
        }
    }

    /// The client sees the row description of its own statement: without the proxy's
    /// `RETURNING` columns, or `NoData` when it had none. Returns true when it was changed.
    fn hide_added_columns(
        &mut self,
        cx: &mut Cx<'_>,
        body: &[u8],
        added: usize,
        client_returning: bool,
    ) -> bool {
        if added == 0 {
            return false;
        }
        if client_returning {
            let n = be::row_description(body).map_or(0, |c| c.len());
            be::write_truncated(
                &mut cx.out.to_client,
                be::ROW_DESCRIPTION,
                body,
                n - added.min(n),
            );
        } else {
            be::write_simple(&mut cx.out.to_client, be::NO_DATA);
        }
        true
    }

    /// Remembers a prepared statement that reads a guarded table (`p` names one), so its rows
    /// can be followed.
    fn prepare_read(&mut self, p: &fe::Parse<'_>, guards: &Arc<GuardSet>) {
        if self.resolved.is_empty() {
            return;
        }
        let pinned = std::str::from_utf8(p.query)
            .ok()
            .and_then(|sql| self.cache.get_or_analyze(sql, guards).lone_read().cloned());
        let prepared = Prepared {
            pinned,
            declared_types: p.param_types.clone(),
            ..Prepared::default()
        };
        self.statements.insert(p.name.into(), Arc::new(prepared));
    }

    /// The end of a tagged `Execute`: check the row count of a guarded write.
    fn on_execute_done(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: &[u8],
        portal: &Portal,
    ) -> Result<bool, String> {
        let Some(w) = &portal.write else {
            if let Some(check) = &portal.pinned
                && tag == be::COMMAND_COMPLETE
            {
                let version = portal.described().and_then(|d| d.version);
                check.complete(self, &msg[5..], version.is_some());
            }
            return Ok(false);
        };
        let held = w.expected.is_some();
        if tag == be::ERROR_RESPONSE
            && let Some(raised) = w.raised_conflict(&msg[5..])
        {
            self.deliver_conflict(cx, raised);
            self.after_sync = AfterSync::None;
            cx.out.release_client();
            return Ok(true);
        }
        if tag == be::COMMAND_COMPLETE {
            let rows = be::tag_rows(be::command_tag(&msg[5..]));
            if rows == Some(0)
                && w.expected.is_some()
                && let Some(info) = w.conflict_info()
            {
                let block =
                    conflict::raise_block_if_changed(&info, &cx.settings.config.conflict_sqlstate);
                let ctx = RaiseCtx::conflict(info, Some(BytesMut::from(msg)));
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
            cx.out.to_client.extend_from_slice(msg);
            cx.out.release_client();
            return Ok(true);
        }
        Ok(false)
    }
}
