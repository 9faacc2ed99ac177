//! `Describe` in the extended protocol: of a statement or portal the guard rewrote, the client
//! sees the description of its own statement (without the proxy's version parameter, its
//! `RETURNING` columns and the columns read capture added); of one that reads a guarded
//! table, the description tells where the rows' keys and versions are ([`Described`]).

use bytes::BytesMut;

use super::cx::Cx;
use super::rows::ends_with_added;
use super::state::GuardState;
use super::statements::{Described, Parsed, Portal, Prepared};
use super::tag::{StmtTag, Tag};
use crate::protocol::{backend as be, frontend as fe};

impl GuardState {
    /// A `Describe`: tagged when its reply may need changing or reading. Returns true with
    /// the tag when the guard sent it (to a kept statement).
    pub fn guard_describe(&mut self, cx: &mut Cx<'_>, body: &[u8]) -> (StmtTag, bool) {
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
            return (tag, false);
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
        (Some(Tag::DescribeStatement(prepared)), sent)
    }

    /// The `ParameterDescription` of a statement the guard rewrote: what it tells of the
    /// parameter types is kept, and the client sees it without the proxy's version parameter.
    /// Returns true when it was changed.
    pub(super) fn on_parameter_description(
        to_client: &mut BytesMut,
        body: &[u8],
        prepared: &Prepared,
    ) -> bool {
        if let Some(types) = be::parameter_types(body) {
            let _ = prepared.described_types.set(types);
        }
        let extra = prepared.write.as_ref().and_then(|w| w.extra);
        match extra {
            Some(n) => {
                be::write_parameter_description(to_client, body, usize::from(n) - 1);
                true
            }
            None => false,
        }
    }

    /// `RowDescription`/`NoData` answering a `Describe` of a statement the guard follows.
    pub(super) fn on_describe_statement(
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
        if let Some(c) = &prepared.capture {
            // A `FETCH`'s cursor may since be another one.
            if c.fetch && !ends_with_added(body, c.added) {
                return false;
            }
            return self.hide_added_columns(cx, body, c.added, true);
        }
        let pinned_guard = prepared.pinned.as_ref().map(|r| r.guard);
        let _ = prepared
            .described
            .set(self.describe(cx, body, pinned_guard, &prepared.shared));
        false
    }

    /// `RowDescription`/`NoData` answering a `Describe` of a portal the guard follows.
    pub(super) fn on_describe_portal(
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
        if let Some((added, _)) = &portal.capture {
            if portal
                .fetch_shown
                .as_ref()
                .is_some_and(|s| s.get() != Some(&true))
            {
                return false;
            }
            return self.hide_added_columns(cx, body, *added, true);
        }
        let pinned_guard = portal.pinned.as_ref().map(|r| r.guard);
        let shared = portal.statement.as_ref().map_or(&[][..], |s| &s.shared[..]);
        let described = self.describe(cx, body, pinned_guard, shared);
        // The statement's result has the same columns: remembered for its next portals.
        if let Some(s) = &portal.statement
            && s.described.get().is_none()
        {
            let statement_guard = s.pinned.as_ref().map(|r| r.guard);
            let _ = s.described.set(if statement_guard == pinned_guard {
                described.clone()
            } else {
                self.describe(cx, body, statement_guard, shared)
            });
        }
        let _ = portal.described.set(described);
        false
    }

    /// What a `RowDescription` body tells the guard.
    pub(super) fn describe(
        &self,
        cx: &Cx<'_>,
        body: &[u8],
        pinned_guard: Option<usize>,
        shared: &[usize],
    ) -> Described {
        let Some(guard) = pinned_guard else {
            return Described {
                reads: self.read_plan(cx, body, shared),
                version: None,
            };
        };
        // One decoding serves the rows' read plan and the pinned read's version column.
        let cols = be::row_description(body).unwrap_or_default();
        Described {
            reads: self.plan_of_columns(cx, &cols, shared),
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
            // The count from the header: the fields are walked once, by the copy.
            let n = be::field_count(body);
            let out = &mut cx.out.to_client;
            let keep = n - added.min(n);
            // A description that does not read as one goes to the client as it is.
            return be::write_truncated(out, be::ROW_DESCRIPTION, body, keep).is_some();
        }
        be::write_simple(&mut cx.out.to_client, be::NO_DATA);
        true
    }
}
