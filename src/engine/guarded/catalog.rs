//! The proxy's own queries in a client's session: resolving the guards in its database (at
//! login and after a reload), listing the statements it prepared before a reload, and
//! deallocating those that can no longer be guarded.
//!
//! They go as an extended-protocol batch of the proxy's own, under its own statement and
//! portal name, every reply hidden from the client (errors and the batch's `ReadyForQuery`
//! included). Not as a simple `Query`: that would drop the server's unnamed statement, which
//! a client may still bind in its next batch. A batch may be sent behind client batches
//! still running (a client that pipelines is reached by a reload too); when it fails there
//! (an aborted transaction) it is sent again at the first boundary after the transaction
//! ends, and nothing a failed batch would have changed is assumed.

use crate::protocol::TxStatus;
use std::sync::Arc;

use bytes::BytesMut;
use tracing::{debug, warn};

use super::cx::Cx;
use super::state::{CatalogState, GuardState};
use super::tag::Tag;
use crate::catalog::aggregates::{AGGREGATES_QUERY, Aggregates};
use crate::catalog::{derived, resolve};
use crate::engine::replies::Pending;
use crate::protocol::{Frame, backend as be, frontend as fe};

/// Statement and portal name of the proxy's catalog queries.
const CATALOG_NAME: &[u8] = b"optlock_catalog";

/// Around the query of relations whose writes land in a guarded table: its recursion makes
/// the planner's estimate large enough for JIT compilation, which would cost far more than the
/// query (tens of milliseconds at every login). Turned off for it and given back, both local
/// to the transaction the batch runs in.
const JIT_OFF: &str = "SELECT pg_catalog.set_config('optlock.jit', \
     pg_catalog.current_setting('jit'), true), pg_catalog.set_config('jit', 'off', true)";
const JIT_BACK: &str =
    "SELECT pg_catalog.set_config('jit', pg_catalog.current_setting('optlock.jit'), true)";

/// The catalog query that lists the session's prepared statements (see [`super::stale`]).
const LISTING_QUERY: &str = "SELECT name, statement, from_sql::text, \
     parameter_types::oid[]::text FROM pg_catalog.pg_prepared_statements";

impl GuardState {
    fn catalog_query_done(&mut self, ok: bool) {
        self.catalog.outstanding = self.catalog.outstanding.saturating_sub(1);
        self.catalog.failed |= !ok;
    }

    /// After a reload, at the first batch boundary: the guards are resolved again in this
    /// database and the statements the session prepared before are listed (see
    /// [`super::stale`]). Also behind client batches still running: a client that pipelines
    /// may never wait for its replies. Returns true when those queries were just sent: the
    /// client's message must then wait for their replies.
    pub fn resolve_at_boundary(&mut self, cx: &mut Cx<'_>, at_boundary: bool) -> bool {
        if self.need_resolve && at_boundary && cx.tx_status != TxStatus::Failed {
            self.need_resolve = false;
            self.send_resolve(cx, true, None);
            return true;
        }
        false
    }

    /// The first `ReadyForQuery`: resolve the guards before the client may send anything.
    /// Returns true when the message was kept back.
    pub fn on_login(&mut self, cx: &mut Cx<'_>, ready: Frame<'_>) -> bool {
        if !self.guards_active(cx) {
            return false;
        }
        self.send_resolve(cx, false, Some(BytesMut::from(ready.bytes())));
        true
    }

    /// Sends `queries` (SQL and the tag of its `Execute`: [`Tag::Resolve`], [`Tag::Listing`]
    /// or [`Tag::Catalog`]) as one batch of the proxy's own. `release` means the client's
    /// messages wait for it (the caller sets `hold_client`); `login_ready`, the client's
    /// first `ReadyForQuery`, is handed over when it ends.
    pub(super) fn send_catalog_batch(
        &mut self,
        cx: &mut Cx<'_>,
        queries: Vec<(String, Tag)>,
        release: bool,
        login_ready: Option<BytesMut>,
    ) {
        let part = || Pending::Close(Some(Tag::Catalog));
        for (sql, tag) in queries {
            fe::write_run(&mut cx.out.to_server, CATALOG_NAME, sql.as_bytes());
            cx.out.replies.push(part());
            cx.out.replies.push(part());
            cx.out.replies.push(Pending::Parse(Some(Tag::Catalog)));
            cx.out.replies.push(Pending::Bind(Some(Tag::Catalog)));
            if !matches!(tag, Tag::Catalog) {
                self.catalog.outstanding += 1;
            }
            cx.out.replies.push(Pending::Execute(Some(tag)));
        }
        let out = &mut cx.out.to_server;
        fe::write_close(out, b'P', CATALOG_NAME);
        fe::write_close(out, b'S', CATALOG_NAME);
        fe::write_simple(out, fe::SYNC);
        cx.out.replies.push(part());
        cx.out.replies.push(part());
        cx.out.replies.push(Pending::Sync(Some(Tag::CatalogEnd {
            release,
            login_ready,
        })));
    }

    /// Sends the guard resolution and, after a reload, the listing of prepared statements.
    fn send_resolve(&mut self, cx: &mut Cx<'_>, after_reload: bool, login_ready: Option<BytesMut>) {
        let guards = cx.settings.guards.config_guards();
        let mut queries = vec![
            (
                resolve::resolve_query(guards),
                Tag::Resolve { rows: Vec::new() },
            ),
            (JIT_OFF.to_string(), Tag::Catalog),
            (
                derived::derived_query(guards),
                Tag::Derive { rows: Vec::new() },
            ),
            (JIT_BACK.to_string(), Tag::Catalog),
            (
                AGGREGATES_QUERY.to_string(),
                Tag::Aggregates { rows: Vec::new() },
            ),
        ];
        if after_reload {
            queries.push((LISTING_QUERY.to_string(), Tag::Listing { rows: Vec::new() }));
        }
        self.send_catalog_batch(cx, queries, true, login_ready);
        cx.out.hold_client = true;
    }

    /// A reply to a catalog query that leaves its entry at the front: rows are kept, the
    /// rest hidden.
    pub(super) fn on_catalog_within(tag: u8, msg: Frame<'_>, t: &mut Tag) -> bool {
        if let (
            Tag::Resolve { rows }
            | Tag::Derive { rows }
            | Tag::Aggregates { rows }
            | Tag::Listing { rows },
            be::DATA_ROW,
        ) = (t, tag)
            && let Some(vals) = be::data_row(msg.body())
        {
            rows.push(
                vals.iter()
                    .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                    .collect(),
            );
        }
        true
    }

    /// The reply that completes a catalog query's entry (hidden, whatever it is).
    pub(super) fn on_catalog_complete(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
        t: Tag,
    ) -> Result<bool, String> {
        let error = (tag == be::ERROR_RESPONSE).then(|| {
            String::from_utf8_lossy(be::error_field(msg.body(), b'M').unwrap_or(b"")).into_owned()
        });
        match t {
            Tag::Resolve { rows } => {
                self.catalog_query_done(error.is_none());
                match error {
                    None => {
                        self.resolved = Arc::new(resolve::parse_resolved(
                            &rows,
                            cx.settings.guards.config_guards(),
                        ));
                        debug!(resolved = self.resolved.len(), "guards resolved");
                    }
                    Some(error) => {
                        warn!(%error, "guards could not be resolved in this database; reads will not be tracked until they are")
                    }
                }
            }
            Tag::Derive { rows } => {
                self.catalog_query_done(error.is_none());
                match error {
                    None => self.on_derived(cx, &rows),
                    Some(error) => {
                        warn!(%error, "relations whose writes land in guarded tables could not be listed in this database: writes through views, partitions and parents are not checked")
                    }
                }
            }
            Tag::Aggregates { rows } => {
                self.catalog_query_done(error.is_none());
                match error {
                    None => self.aggregates = Some(Aggregates::parse(&rows)),
                    Some(error) => {
                        warn!(%error, "aggregate functions could not be listed in this database: reads whose select list calls a function are not captured")
                    }
                }
            }
            Tag::Listing { rows } => {
                self.catalog_query_done(error.is_none());
                match error {
                    None => self.on_listing(cx, rows),
                    Some(error) => {
                        warn!(%error, "statements prepared before the reload could not be listed")
                    }
                }
            }
            Tag::CatalogEnd {
                release,
                login_ready,
            } if tag == be::READY_FOR_QUERY => {
                self.on_catalog_end(cx, TxStatus::from_ready(msg.body()));
                if let Some(ready) = login_ready {
                    cx.out.to_client.extend_from_slice(&ready);
                }
                if release {
                    cx.out.release_client();
                }
            }
            _ => {}
        }
        Ok(true)
    }

    /// The relations whose writes land in a guarded table, found in this database: the
    /// session's guard set gets them as aliases (the analyses made without them dropped), and
    /// its resolution their columns.
    fn on_derived(&mut self, cx: &mut Cx<'_>, rows: &[Vec<Option<String>>]) {
        let guards = &cx.settings.guards;
        let found = derived::parse_derived(rows, guards.config_guards());
        let (aliases, columns) = derived::aliases(&found, guards.config_guards(), &self.resolved);
        if aliases.is_empty() && guards.config_len == guards.guards.len() {
            return;
        }
        debug!(
            aliases = aliases.len(),
            "relations whose writes land in guarded tables"
        );
        let base = Arc::unwrap_or_clone(std::mem::take(&mut self.resolved));
        self.resolved = Arc::new(base.with_aliases(columns));
        cx.out.guards = Some(guards.with_aliases(aliases));
        self.cache.clear();
        self.found.clear();
    }

    /// The end of a catalog batch. A batch that failed (or was skipped after an error) inside
    /// a failed transaction is sent again once the transaction ends: until then the client
    /// can run nothing either.
    fn on_catalog_end(&mut self, cx: &mut Cx<'_>, status: TxStatus) {
        let failed = self.catalog.failed || self.catalog.outstanding > 0;
        self.catalog = CatalogState::default();
        if failed && status == TxStatus::Failed && self.guards_active(cx) {
            debug!("catalog queries failed in an aborted transaction: sent again after it");
            self.need_resolve = true;
        }
    }
}
