//! The `Parse` of a statement that writes no guarded table: sent as it is, or, for a read of a
//! guarded table, remembered so its rows can be followed, and with its key and version
//! columns added when it is captured (see [`super::capture`]).
//!
//! A read's text is planned once: the plan (the text to send, the read plans, the pinned
//! read) is kept with the text's prefilter result, and a `Parse` of the same text (libpq's
//! `PQexecParams` prepares the unnamed statement for every execution) reuses it while the
//! guards and what the database resolved are the ones it was made with.

use std::sync::Arc;

use super::cursors::cursor_touches;
use super::cx::Cx;
use super::state::{GuardState, ParseText};
use super::statements::{Prepared, ReadPrep};
use crate::guard::GuardSet;
use crate::guard::cache::MAX_CACHED_TEXT;
use crate::guard::prefilter::{Found, Prefilter};
use crate::protocol::{Frame, frontend as fe};

/// `Parse` texts whose prefilter result a session remembers (forgotten all at once beyond;
/// texts longer than [`MAX_CACHED_TEXT`] are not kept).
const FOUND_TEXTS: usize = 1024;

impl GuardState {
    /// Sends the `Parse` (`msg`) of a statement that writes no guarded table: as it is, or,
    /// for a read that names one (`names_guarded`, with what an earlier `Parse` of the text
    /// made of it) and is captured, with its key and version columns added.
    pub(super) fn parse_read(
        &mut self,
        cx: &mut Cx<'_>,
        msg: Frame<'_>,
        p: &fe::Parse<'_>,
        names_guarded: Option<Option<Arc<ReadPrep>>>,
        guards: &Arc<GuardSet>,
    ) {
        let captured = match names_guarded {
            Some(before) => self.prepare_read(p, before, guards),
            None => {
                self.prepare_unguarded(p);
                None
            }
        };
        match captured {
            Some(text) => {
                let out = &mut cx.out.to_server;
                fe::write_parse(out, p.name, text.as_bytes(), &p.param_types);
            }
            None => cx.out.to_server.extend_from_slice(msg.bytes()),
        }
    }

    /// Remembers a prepared statement that reads a guarded table (`p` names one), so its rows
    /// can be followed; `before` is what an earlier `Parse` of the same text made of it,
    /// reused when it still fits. Returns the text to prepare instead of the client's when
    /// the read is captured (its key and version columns added).
    fn prepare_read(
        &mut self,
        p: &fe::Parse<'_>,
        before: Option<Arc<ReadPrep>>,
        guards: &Arc<GuardSet>,
    ) -> Option<Arc<str>> {
        if self.resolved.is_empty() {
            return None;
        }
        let aggregates = self.aggregates.is_some();
        let prep = match before.filter(|r| r.fits(guards, &self.resolved, aggregates)) {
            Some(prep) => prep,
            None => match self.plan_read(p, guards) {
                PlannedRead::Read(prep) => prep,
                PlannedRead::Cursor(text) => return text,
            },
        };
        let prepared = prep.prepared(p.param_types.clone());
        self.statements.insert(p.name.into(), Arc::new(prepared));
        prep.sent.clone()
    }

    /// Plans a read's text afresh. A plain read's plan is remembered with the text; a
    /// cursor's declaration (its cursor named by the text) is remembered as a statement of
    /// its own here.
    fn plan_read(&mut self, p: &fe::Parse<'_>, guards: &Arc<GuardSet>) -> PlannedRead {
        let sql = std::str::from_utf8(p.query).ok();
        let analysis = sql.map(|sql| self.cache.get_or_analyze(sql, guards));
        let lone = match (sql, analysis.as_deref()) {
            (Some(sql), Some(a)) => match (a.statements.as_slice(), a.captures.as_slice()) {
                ([_], [capture]) => Some((sql, capture)),
                _ => None,
            },
            _ => None,
        };
        let pinned = analysis.as_ref().and_then(|a| a.lone_read().cloned());
        let shared = analysis
            .as_ref()
            .map(|a| a.shared.clone())
            .unwrap_or_default();
        if let Some((sql, c)) = lone
            && c.cursor.is_some()
        {
            let (text, cursor) = self.prepared_cursor(sql, c, guards).unzip();
            let prepared = Prepared {
                pinned: pinned.map(Arc::new),
                shared,
                declared_types: p.param_types.clone(),
                cursor,
                touches: cursor_touches(p.query),
                ..Prepared::default()
            };
            self.statements.insert(p.name.into(), Arc::new(prepared));
            return PlannedRead::Cursor(text.map(Arc::from));
        }
        let (sent, capture) = match lone {
            Some((sql, c)) => self.prepared_capture(sql, c, guards).unzip(),
            None => (None, None),
        };
        let prep = Arc::new(ReadPrep {
            guards: guards.clone(),
            resolved: self.resolved.clone(),
            aggregates: self.aggregates.is_some(),
            sent: sent.map(Arc::from),
            pinned: pinned.map(Arc::new),
            shared,
            capture: capture.map(Arc::new),
            touches: cursor_touches(p.query),
        });
        if let Some(t) = self.found.get_mut(p.query) {
            t.read = Some(prep.clone());
        }
        PlannedRead::Read(prep)
    }

    /// What the prefilter finds in `text`, and what a read's last `Parse` of it made of it,
    /// remembered for the texts of `Parse` messages.
    pub(super) fn found_in_parse(
        &mut self,
        text: &[u8],
        prefilter: &Prefilter,
    ) -> (Found, Option<Arc<ReadPrep>>) {
        if let Some(t) = self.found.get(text) {
            return (t.found, t.read.clone());
        }
        let found = prefilter.scan(text);
        // A long text (a bulk statement) is scanned every time instead of being kept.
        if text.len() > MAX_CACHED_TEXT {
            return (found, None);
        }
        if self.found.len() >= FOUND_TEXTS {
            self.found.clear();
        }
        self.found
            .insert(text.into(), ParseText { found, read: None });
        (found, None)
    }
}

/// What [`GuardState::plan_read`] made of a read's text.
enum PlannedRead {
    /// A plain read: prepared from this plan, now and when the text comes again.
    Read(Arc<ReadPrep>),
    /// A cursor's declaration, already remembered: the text to send instead of the
    /// client's, when its query is captured.
    Cursor(Option<Arc<str>>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::guarded::state::Ident;

    #[test]
    fn a_parse_text_is_kept_unless_it_is_long() {
        let config = Config::parse(
            "[[guard]]\ntable = \"public.invoice\"\nkey = [\"id\"]\n",
            "test.toml",
        )
        .unwrap();
        let prefilter = Prefilter::new(&config.guards);
        let ident = Ident {
            client: "127.0.0.1:1".parse().unwrap(),
            user: "u".into(),
            database: "d".into(),
            application_name: String::new(),
        };
        let mut state = GuardState::new(ident, 10);
        let short = b"SELECT * FROM invoice WHERE id = $1";
        let (found, _) = state.found_in_parse(short, &prefilter);
        assert!(found.name);
        assert!(state.found.contains_key(&short[..]), "a short text is kept");
        let long = format!(
            "SELECT * FROM invoice WHERE id IN ({})",
            "1,".repeat(MAX_CACHED_TEXT)
        );
        let (found, _) = state.found_in_parse(long.as_bytes(), &prefilter);
        assert!(found.name, "a long text is scanned all the same");
        assert_eq!(state.found.len(), 1, "a long text is not kept");
    }
}
