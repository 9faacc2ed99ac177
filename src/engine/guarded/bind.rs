//! `Bind` in the extended protocol: the portal of a guarded write gets the expected version
//! in the proxy's extra parameter (or is replaced by a refusal), is bound to the statement's
//! full form when it needs one, and remembers what its reply is checked against (a
//! [`WriteCheck`]); the portal of a read remembers what its rows tell. A statement that went
//! lean is prepared again in full first when this `Bind` names a row the session tracks.

use crate::protocol::Frame;
use std::sync::{Arc, OnceLock};

use super::checks::{BindFix, Plan, WriteCheck};
use super::cx::Cx;
use super::parse::{checks_rows_by_param, extra_params};
use super::plan::unchecked_class;
use super::rows::{ReadPlan, canonical, param_text, result_format_codes};
use super::state::GuardState;
use super::statements::{ParseUndo, Parsed, Portal, Prepared, PreparedWrite};
use super::tag::{StmtTag, Tag};
use crate::engine::replies::Pending;
use crate::guard::conflict::Refusal;
use crate::guard::rewrite::{Expected, array_text};
use crate::guard::{GuardSet, GuardedWrite, Target, ValueRef};
use crate::protocol::frontend as fe;

impl GuardState {
    /// A `Bind`. Returns true when the guard sent it (with the expected version, or replaced
    /// by a refusal).
    pub fn guard_bind(&mut self, cx: &mut Cx<'_>, msg: Frame<'_>) -> Result<bool, String> {
        if !self.guards_active(cx) && self.stale.is_empty() {
            return Ok(false);
        }
        let body = msg.body();
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
        if !prepared.touches.is_empty() || prepared.cursor.is_some() {
            // `DECLARE` and `CLOSE` write nothing; their portals return no rows.
            self.bind_cursor_statement(&prepared);
            return Ok(false);
        }
        if let Some(capture) = &prepared.capture {
            return Ok(self.bind_captured(cx, portal, msg, &prepared, capture));
        }
        if let Some(pw) = &prepared.write
            && self.expects_nothing(cx, &pw.guards, &pw.write)
        {
            return Ok(self.bind_unchecked(cx, portal, msg, &prepared, pw));
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
        if let Some(pw) = &prepared.write
            && self.bind_counts_wrong(cx, msg, &b, &prepared, pw)
        {
            return Ok(true);
        }
        let prepared = self.unlean(cx, statement, prepared, &b);
        match &prepared.write {
            Some(pw) => Ok(self.bind_write(cx, portal, &prepared, pw, b)),
            None => {
                self.bind_read(cx, portal, &prepared, &b);
                Ok(false)
            }
        }
    }

    /// The `Bind` of a statement that reads a guarded table: its portal remembers the
    /// statement (for its rows) and the pinned read with its key bound, if followed.
    fn bind_read(
        &mut self,
        cx: &mut Cx<'_>,
        portal: &[u8],
        prepared: &Arc<Prepared>,
        b: &fe::Bind<'_>,
    ) {
        let guards = cx.settings.guards.clone();
        let pinned = prepared
            .pinned
            .as_ref()
            .filter(|read| self.follows_read(cx, &guards, read))
            .and_then(|read| {
                let types = prepared.param_types();
                self.read_check(&guards, read, Some((b, &types)))
            });
        let portal_info = Portal {
            statement: Some(prepared.clone()),
            pinned,
            result_formats: b.result_formats.into(),
            ..Portal::default()
        };
        self.portals.insert(portal.into(), Arc::new(portal_info));
    }

    /// The `Bind` of a guarded write that may check a version: planned from the row it binds,
    /// sent with the expected version (or replaced by a refusal), and its portal remembers
    /// what its reply is checked against. Returns true when the guard sent it.
    fn bind_write(
        &mut self,
        cx: &mut Cx<'_>,
        portal: &[u8],
        prepared: &Prepared,
        pw: &PreparedWrite,
        b: fe::Bind<'_>,
    ) -> bool {
        let w = &pw.write;
        let (key, pinned) = self.bound_row(prepared, pw, &b);
        let guards = pw.guards.clone();
        if key.is_none()
            && pinned.is_none()
            && !guards.guards[w.guard].observes()
            && self.key_unreadable(cx, &guards, w, &b, &prepared.param_types())
        {
            self.refuse_unreadable_key(cx, &guards.guards[w.guard].table);
            return true;
        }
        let (expected, key) = match self.plan_write(cx, &guards, w, key, pinned) {
            Plan::Refuse(refusal) => {
                let (block, ctx) = self.refusal(&guards.guards[w.guard].table, refusal);
                self.send_extended_raise(cx, &block, ctx);
                return true;
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
        // A write whose rows its Bind does not name is checked against the known rows.
        let by_rows = checks_rows_by_param(w, &guards);
        let known = match by_rows && expected.is_none() && key.is_none() {
            true => self.known_rows(&guards, w),
            false => Vec::new(),
        };
        let checks_nothing = expected.is_none() && known.is_empty();
        let Some((b, extra, added)) = self.bound_form(cx, pw, b, checks_nothing) else {
            return false;
        };
        let b = own_result_formats(b, w.client_returning, added);
        let arrays = (!known.is_empty()).then(|| {
            let keys = known.iter().filter_map(|(k, _)| k.first());
            let versions = known.iter().map(|(_, v)| v.as_str());
            (array_text(keys.map(String::as_str)), array_text(versions))
        });
        let values: [Option<&[u8]>; 2] = match (&arrays, by_rows) {
            (Some((k, v)), _) => [Some(k.as_bytes()), Some(v.as_bytes())],
            (None, true) => [None, None],
            (None, false) => [expected.as_deref().map(str::as_bytes), None],
        };
        let extra = &values[..extra.map_or(0, |_| if by_rows { 2 } else { 1 })];
        fe::write_bind_rewritten(&mut cx.out.to_server, &b, extra, added);
        cx.out
            .replies
            .push(Pending::Bind(result_formats_fix(&b, added)));
        let observed = !extra.is_empty() && {
            let form = if by_rows {
                Expected::RowParams(0)
            } else {
                Expected::Param(0)
            };
            w.observes(&guards, form)
        };
        let bound = WriteCheck {
            guards: guards.clone(),
            guard: w.guard,
            op: w.op,
            added,
            observed: observed.then(|| expected.clone()),
            unchecked: unchecked_class(w, expected.is_some() || !known.is_empty()),
            client_returning: w.client_returning,
            // A write inside WITH checks its version in its predicate, but its row count is
            // not the statement's: the check sent before it raises a conflict. An observed
            // write raises nothing.
            expected: if w.splice.in_cte || observed {
                None
            } else {
                expected
            },
            key,
            known,
            plan: self.returning_plan(pw, added, b.result_formats),
            held: None,
            in_cte: w.splice.in_cte,
            quiet_without_rows: self.quiet_without_rows(w),
        };
        self.write_portal(portal, bound, b.result_formats);
        true
    }

    /// The row a guarded write's `Bind` names: its key (canonical text, when every key value
    /// is known) and the version the statement pins, if any.
    fn bound_row(
        &self,
        prepared: &Prepared,
        pw: &PreparedWrite,
        b: &fe::Bind<'_>,
    ) -> (Option<Vec<String>>, Option<String>) {
        let w = &pw.write;
        let types = prepared.param_types();
        let bound = Some((b, types.as_slice()));
        let key: Option<Vec<String>> = match &w.target {
            Target::Key(vals) => self.key_text(w.guard, vals, bound),
            Target::Bulk => None,
        };
        let version_type = self.resolved.get(w.guard).map_or(0, |r| r.version_type);
        let pinned = match &w.pinned {
            Some(ValueRef::Literal(v)) => {
                canonical(version_type, 0, v.as_bytes()).or_else(|| Some(v.clone()))
            }
            Some(ValueRef::Param(n)) => param_text(b, &types, *n, version_type),
            None => None,
        };
        (key, pinned)
    }

    /// Refuses a write whose row may be one the session read but whose key it cannot read:
    /// fail closed rather than unchecked.
    fn refuse_unreadable_key(&mut self, cx: &mut Cx<'_>, table: &crate::config::TableName) {
        let reason = format!(
            "optlock cannot read this write's key from its parameters (bound as a type it does not decode), so it cannot check the row against the version this session read; bind the key as {table}'s key column type"
        );
        let (block, ctx) = self.refusal(table, Refusal::Unsupported(reason));
        self.send_extended_raise(cx, &block, ctx);
    }

    /// True when a keyed write's key could not be read from its `Bind` although the server
    /// will take it, and the session knows rows of the table (or may by the time it runs).
    /// The server takes every key parameter that is bound (a NULL key names no row) and
    /// not text of the column's own type that the proxy could not read (the server rejects
    /// that too: `22P02`, nothing written).
    fn key_unreadable(
        &self,
        cx: &Cx<'_>,
        guards: &GuardSet,
        w: &GuardedWrite,
        b: &fe::Bind<'_>,
        types: &[u32],
    ) -> bool {
        let Target::Key(vals) = &w.target else {
            return false;
        };
        let rg = self.resolved.get(w.guard);
        let server_takes = vals.iter().enumerate().all(|(k, v)| {
            let ValueRef::Param(n) = v else { return true };
            let Some(i) = usize::from(*n).checked_sub(1) else {
                return false;
            };
            if !b.params.get(i).is_some_and(Option::is_some) {
                return false;
            }
            let column = rg.and_then(|r| r.key_types.get(k).copied()).unwrap_or(0);
            let declared = types.get(i).copied().unwrap_or(0);
            let own_text = b.param_format(i) == 0 && (declared == 0 || declared == column);
            !own_text || param_text(b, types, *n, column).is_some()
        });
        server_takes
            && (self.tracker.tracks_table(guards.table_ids[w.guard]) || self.rows_may_come(cx))
    }

    /// The statement a guarded write's `Bind` goes to, with the proxy's version parameter (if
    /// any) and its `RETURNING` column count. None when it goes as it is: a named statement
    /// that went lean, bound by a `Bind` that checks no version (`checks_nothing`), with no
    /// reply still to come that may make the session track the row, and not inside `WITH`
    /// (whose portal forgets what it may have changed).
    fn bound_form<'a, 'm: 'a>(
        &self,
        cx: &mut Cx<'_>,
        pw: &'a PreparedWrite,
        b: fe::Bind<'m>,
        checks_nothing: bool,
    ) -> Option<(fe::Bind<'a>, Option<u16>, usize)> {
        let w = &pw.write;
        match &pw.full {
            Some(_) if checks_nothing && !self.rows_may_come(cx) && !w.splice.in_cte => {
                self.count_write(cx, pw.guards.table_ids[w.guard], unchecked_class(w, false));
                None
            }
            Some(full) => Some((b.renamed(&full.name), Some(full.extra), full.added)),
            None => Some((
                b.renamed(pw.server_name.as_deref().unwrap_or(b.statement)),
                pw.extra,
                pw.added,
            )),
        }
    }

    /// The plan that reads the proxy's `RETURNING` columns of a bound write (`added` of them),
    /// in the format the `Bind` asked for when it asked one for all columns. The columns are
    /// read with the types the catalog gave: none before the guard is resolved (right after a
    /// reload), and the write then forgets its row.
    fn returning_plan(
        &self,
        pw: &PreparedWrite,
        added: usize,
        result_formats: &[u8],
    ) -> Option<ReadPlan> {
        let codes = result_format_codes(result_formats);
        let our_format = if codes.len() == 1 { codes[0] } else { 0 };
        let guard = pw.write.guard;
        self.resolved.get(guard).filter(|_| added > 0).map(|rg| {
            let mut types = rg.key_types.clone();
            types.push(rg.version_type);
            ReadPlan::returning(pw.guards.table_ids[guard], &types, our_format)
        })
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
        msg: Frame<'_>,
        prepared: &Prepared,
        pw: &PreparedWrite,
    ) -> bool {
        let w = &pw.write;
        if pw.extra.is_none() && pw.added == 0 && pw.server_name.is_none() {
            self.count_write(cx, pw.guards.table_ids[w.guard], unchecked_class(w, false));
            return false;
        }
        let Some(b) = fe::bind(msg.body()) else {
            return false;
        };
        if self.bind_counts_wrong(cx, msg, &b, prepared, pw) {
            return true;
        }
        let b = fe::Bind {
            statement: pw.server_name.as_deref().unwrap_or(b.statement),
            ..own_result_formats(b, w.client_returning, pw.added)
        };
        let extra = extra_params(pw);
        fe::write_bind_rewritten(&mut cx.out.to_server, &b, &[None, None][..extra], pw.added);
        cx.out
            .replies
            .push(Pending::Bind(result_formats_fix(&b, pw.added)));
        let check = WriteCheck {
            guards: pw.guards.clone(),
            guard: w.guard,
            op: w.op,
            added: pw.added,
            observed: None,
            unchecked: unchecked_class(w, false),
            client_returning: w.client_returning,
            expected: None,
            key: None,
            known: Vec::new(),
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

    /// A `Bind` of a statement that went lean, for a row the session tracks: the statement is
    /// prepared again with its version check (the `ParseComplete` hidden). Returns the new
    /// statement.
    pub(super) fn unlean(
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
            superseded: OnceLock::new(),
        });
        let reply = Some(Tag::Parsed(undo.clone()));
        self.parse_guarded(cx, statement, &text, &types, reply, false);
        self.noted_after_parse(&undo).unwrap_or(prepared)
    }
}

/// A write without `RETURNING` of its own has no result columns for the client: its result
/// formats are never looked at directly, so the proxy's columns come as text whatever the
/// client asked (a count or a code the server would reject for them included).
fn own_result_formats(b: fe::Bind<'_>, client_returning: bool, added: usize) -> fe::Bind<'_> {
    match client_returning || added == 0 {
        true => b,
        false => fe::Bind {
            result_formats: &[0, 0],
            ..b
        },
    }
}

/// The tag of a `Bind` with one result format per column and the proxy's columns after the
/// client's: a count the server rejects is told in the client's terms (see
/// [`super::counts`]).
pub(super) fn result_formats_fix(b: &fe::Bind<'_>, added: usize) -> StmtTag {
    let per_column = b.result_formats.len() >= 2
        && i16::from_be_bytes([b.result_formats[0], b.result_formats[1]]) > 1;
    (per_column && added > 0).then(|| {
        let fix = BindFix {
            shift: added,
            names: None,
        };
        Tag::BindFix(Box::new(fix))
    })
}
