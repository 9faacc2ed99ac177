//! Statements prepared before a reload.
//!
//! A reload that guards a table also concerns the statements a session prepared before it: the
//! server keeps their text as it was parsed, unguarded. When a session picks up new guards it
//! lists its server-side statements (`pg_prepared_statements`) and analyses each under the new
//! guards. A protocol-level statement that now writes a guarded table is marked stale; its next
//! `Bind` first prepares it again, rewritten, under the same name (the `Close` and `Parse`
//! replies hidden from the client), so the client's own statement handle goes on working and
//! is guarded. A statement made with SQL `PREPARE` cannot be rewritten (`EXECUTE` names no
//! table): it is deallocated, so its next `EXECUTE` fails instead of writing unguarded.
//!
//! The other way round, a statement prepared in a guarded form (version parameter, bump,
//! `RETURNING`) whose table the reload no longer guards is marked stale too, and prepared again
//! as the client wrote it; with no guard left at all, every such statement is.

use std::sync::Arc;

use tracing::{debug, warn};

use super::cx::Cx;
use super::state::GuardState;
use super::statements::{FULL_VARIANT_PREFIX, Parsed, StaleStatement};
use super::tag::Tag;
use crate::config::{TableName, quote_ident};
use crate::engine::replies::Pending;
use crate::guard::{Action, GuardSet};
use crate::protocol::frontend as fe;

impl GuardState {
    /// Statement `name` is prepared again from the client's `text` and `types` at its next
    /// `Bind` or `Describe`; what the session knew of it goes with it, to be closed then.
    fn mark_stale(&mut self, name: &[u8], text: String, types: Vec<u32>) {
        let old = self.statements.remove(name);
        self.stale
            .insert(name.into(), StaleStatement { text, types, old });
    }

    /// A reload removed every guard: each write the session prepared in a guarded form is
    /// prepared again as the client wrote it, at its next `Bind` or `Describe` (its full form,
    /// if any, closed then), and so is each read prepared with columns read capture added.
    /// With no guard the proxy reads no reply, so a statement left as it was would show the
    /// client the proxy's parameter, `RETURNING` and captured columns.
    pub fn unguard_statements(&mut self) {
        for (name, p) in self.statements.drain() {
            let text = match (&p.write, &p.capture) {
                (Some(w), _) => &w.text,
                (None, Some(c)) => &c.text,
                (None, None) => continue,
            };
            let stale = StaleStatement {
                text: text.clone(),
                types: p.declared_types.clone(),
                old: Some(p.clone()),
            };
            self.stale.insert(name, stale);
        }
    }
}

/// `{23,1700}` as type OIDs.
fn oid_array(text: &str) -> Vec<u32> {
    text.trim_matches(['{', '}'])
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect()
}

impl GuardState {
    /// The listing's rows: marks what now writes a guarded table.
    pub(super) fn on_listing(&mut self, cx: &mut Cx<'_>, rows: Vec<Vec<Option<String>>>) {
        let guards = cx.settings.guards.clone();
        let mut deallocate = Vec::new();
        for row in rows {
            let [Some(name), Some(server_text), Some(from_sql), types] = row.as_slice() else {
                continue;
            };
            if name.starts_with(FULL_VARIANT_PREFIX) {
                // The proxy's own: it follows its client statement.
                continue;
            }
            // A statement the proxy rewrote is on the server in its rewritten form: it is
            // judged, and prepared again, from the client's own text and parameter types.
            let known = self
                .statements
                .get(name.as_bytes())
                .and_then(|p| Some((p.write.as_ref()?.text.clone(), p.declared_types.clone())));
            let known_write = known.is_some();
            let (text, types) = match known {
                Some(known) => known,
                None => (
                    server_text.clone(),
                    types.as_deref().map(oid_array).unwrap_or_default(),
                ),
            };
            let Some(table) = self.guarded_table_written(&guards, &text) else {
                if known_write {
                    // Its table is no longer guarded: the client's own text is prepared again.
                    debug!(statement = %name, "no longer guarded: prepared again as written at its next Bind");
                    self.mark_stale(name.as_bytes(), text, types);
                }
                continue;
            };
            let current = self
                .statements
                .get(name.as_bytes())
                .and_then(|p| p.write.as_ref())
                .is_some_and(|w| Arc::ptr_eq(&w.guards, &guards));
            if current {
                continue;
            }
            if from_sql == "true" {
                warn!(
                    statement = %name,
                    table = %table,
                    "a statement made with PREPARE before the reload writes a guarded table: \
                     deallocated, the client must prepare it again"
                );
                deallocate.push((format!("DEALLOCATE {}", quote_ident(name)), Tag::Catalog));
            } else {
                debug!(statement = %name, table = %table, "prepared before the reload: prepared again at its next Bind");
                // Its full form, if any, is closed with it when it is prepared again (inside
                // the client's batch).
                self.mark_stale(name.as_bytes(), text, types);
            }
        }
        if !deallocate.is_empty() {
            self.send_catalog_batch(cx, deallocate, false, None);
        }
    }

    /// The guarded table a listed statement's `text` writes (or would write, refused), under
    /// the current guards.
    fn guarded_table_written(&mut self, guards: &GuardSet, text: &str) -> Option<TableName> {
        if !guards.prefilter.may_write_guarded(text.as_bytes()) {
            return None;
        }
        let analysis = self.cache.get_or_analyze(text, guards);
        match analysis.statements.as_slice() {
            [st] => match &st.action {
                Action::Write(w) => Some(guards.guards[w.guard].table.clone()),
                Action::Refuse { table, .. } => Some(table.clone()),
                Action::Pass { .. } => None,
            },
            _ => None,
        }
    }

    /// Prepares statement `name` again first when it is stale (see [`GuardState::reprepare`]),
    /// ahead of a `Bind` or `Describe` of it. This holds with no guard left too: a reload that
    /// removed the last one leaves an unnamed statement that stood for a kept one stale.
    pub(super) fn prepare_stale(&mut self, cx: &mut Cx<'_>, name: &[u8]) -> Option<Parsed> {
        if self.stale.is_empty() {
            return None;
        }
        let stale = self.stale.remove(name)?;
        Some(self.reprepare(cx, name, &stale))
    }

    /// Prepares a stale statement again under the current guards, ahead of the client's
    /// `Bind`: `Close` then the rewritten `Parse`, their replies hidden. Returns `Refused`
    /// when the statement is refused instead (the refusal then answers the `Bind`).
    fn reprepare(&mut self, cx: &mut Cx<'_>, name: &[u8], stale: &StaleStatement) -> Parsed {
        if let Some(old) = &stale.old {
            self.close_full_variant(cx, old);
        }
        fe::write_close(&mut cx.out.to_server, b'S', name);
        cx.out.replies.push(Pending::Close(Some(Tag::Hidden)));
        let hidden = Some(Tag::Hidden);
        let done = self.parse_guarded(cx, name, &stale.text, &stale.types, hidden, false);
        if done == Parsed::Passed {
            fe::write_parse(
                &mut cx.out.to_server,
                name,
                stale.text.as_bytes(),
                &stale.types,
            );
            cx.out.replies.push(Pending::Parse(Some(Tag::Hidden)));
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::oid_array;

    #[test]
    fn parameter_types_read_as_oids() {
        assert_eq!(oid_array("{23,1700}"), vec![23, 1700]);
        assert_eq!(oid_array("{}"), Vec::<u32>::new());
    }
}
