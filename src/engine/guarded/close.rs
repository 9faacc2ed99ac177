//! `Close` in the extended protocol, and the full forms of statements the client no longer
//! has: a statement forgotten takes the proxy's full form of it along (closed on the server,
//! its `CloseComplete` hidden).

use super::cx::Cx;
use super::state::GuardState;
use super::statements::Prepared;
use super::tag::Tag;
use crate::engine::replies::Pending;
use crate::protocol::frontend as fe;

impl GuardState {
    /// A `Close`: forget the statement or portal.
    pub fn guard_close(&mut self, cx: &mut Cx<'_>, body: &[u8]) {
        if let Some((kind, name)) = fe::target(body) {
            if kind == b'S' {
                self.supersede_unanswered(cx, name, false);
                self.forget_statement(cx, name);
            } else {
                self.portals.remove(name);
            }
        }
    }

    /// Forgets statement `name` (closing the proxy's full form of it, if any).
    pub(super) fn forget_statement(&mut self, cx: &mut Cx<'_>, name: &[u8]) {
        if let Some(p) = self.statements.remove(name) {
            self.close_full_variant(cx, &p);
        }
        self.stale.remove(name);
    }

    /// Closes the full form of a named statement the client no longer has (its
    /// `CloseComplete` hidden).
    pub(super) fn close_full_variant(&mut self, cx: &mut Cx<'_>, p: &Prepared) {
        if let Some(full) = p.write.as_ref().and_then(|w| w.full.as_ref()) {
            fe::write_close(&mut cx.out.to_server, b'S', &full.name);
            cx.out.replies.push(Pending::Close(Some(Tag::Hidden)));
        }
    }

    /// Closes the full forms of the statements the client deallocated with SQL since its last
    /// extended-protocol batch; called as the next one starts, so nothing before it in the
    /// batch can make the server skip them.
    pub fn close_deallocated(&mut self, cx: &mut Cx<'_>) {
        for name in std::mem::take(&mut self.deallocated) {
            fe::write_close(&mut cx.out.to_server, b'S', &name);
            cx.out.replies.push(Pending::Close(Some(Tag::Hidden)));
        }
    }
}
