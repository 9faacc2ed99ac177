//! The guard's per-session state: [`GuardState`] and what its fields hold that belongs to no
//! other file ([`ParseText`], [`AfterSync`], [`CatalogState`]), and the session's [`Ident`].
//!
//! The behaviour is spread over the other files, each an `impl GuardState` block for one
//! message or concern; this one only builds the state and answers the engine's plain
//! questions about it.

use std::net::SocketAddr;
use std::sync::Arc;

use super::checks::{RaiseCtx, Script};
use super::cx::Cx;
use super::names::NameMap;
use super::rows::{CapturedCursor, LastPlan, ReadPlan};
use super::statements::{Kept, ParseUndo, Portal, Prepared, ReadPrep, StaleStatement};
use super::txn::TxnState;
use crate::catalog::aggregates::Aggregates;
use crate::catalog::resolve::ResolvedGuards;
use crate::guard::cache::AnalysisCache;
use crate::guard::prefilter::Found;
use crate::guard::track::Tracker;

/// Who the session is, for conflict logs.
#[derive(Debug, Clone)]
pub struct Ident {
    pub client: SocketAddr,
    pub user: String,
    pub database: String,
    pub application_name: String,
}

/// Per-session guard state.
pub struct GuardState {
    pub ident: Ident,
    pub(super) cache: AnalysisCache,
    /// What the session remembers of each `Parse` text (the extended protocol sends the same
    /// texts again and again; scanning and planning one costs more than looking it up).
    pub(super) found: NameMap<ParseText>,
    pub(super) resolved: Arc<ResolvedGuards>,
    /// The names of the database's aggregate and window functions (read capture), once
    /// listed.
    pub(super) aggregates: Option<Aggregates>,
    pub(super) tracker: Tracker,
    pub(super) statements: NameMap<Arc<Prepared>>,
    /// The client's last `Parse` of each name that changed what the session knows of it and
    /// is not answered yet, with the sync points pushed before it (see
    /// [`GuardState::waits_for_parse`]).
    pub(super) unanswered_parses: NameMap<(Arc<ParseUndo>, u64)>,
    /// The name whose `Parse` a `Bind` or `Describe` waits for.
    pub(super) awaited_parse: Option<Box<[u8]>>,
    /// Statements prepared before a reload that now write a guarded table.
    pub(super) stale: NameMap<StaleStatement>,
    pub(super) portals: NameMap<Arc<Portal>>,
    /// Columns of the result being read in a simple query (set by its `RowDescription`).
    pub(super) row_plan: Option<Arc<ReadPlan>>,
    /// The plan last made for a captured simple-query result, reused for the same columns.
    pub(super) last_plan: LastPlan,
    pub(super) script: Option<Script>,
    /// The guards changed: resolve them again before the next statement.
    pub(super) need_resolve: bool,
    /// The catalog batch under way.
    pub(super) catalog: CatalogState,
    /// How many full variants of named statements the proxy prepared (it names them).
    pub(super) full_variants: u64,
    /// Unnamed guarded writes kept prepared, by the client's text.
    pub(super) kept: NameMap<Arc<Kept>>,
    /// Texts of unnamed guarded writes seen once (not kept yet).
    pub(super) seen_once: NameMap<()>,
    /// Full variants of statements the client deallocated with SQL `DEALLOCATE`: closed at
    /// the start of its next extended-protocol batch.
    pub(super) deallocated: Vec<Box<[u8]>>,
    /// Where a checked write inside a transaction block stands when its `Sync` goes right
    /// behind it (see [`GuardState::check_after_sync`]).
    pub(super) after_sync: AfterSync,
    /// Where the server's transactions stand, for undoing what one that failed taught.
    pub(super) txn: TxnState,
    /// Cursors declared with a captured query, by name.
    pub(super) cursors: NameMap<CapturedCursor>,
}

/// What the session remembers of a `Parse` text.
#[derive(Debug)]
pub(super) struct ParseText {
    /// What the prefilter found in it.
    pub(super) found: Found,
    /// For a read of a guarded table: what its last `Parse` made of it.
    pub(super) read: Option<Arc<ReadPrep>>,
}

/// A checked write whose batch's `Sync` was sent without waiting for its row count.
#[derive(Debug, Default)]
pub(super) enum AfterSync {
    #[default]
    None,
    /// The write's `Sync` is next from the client: hold what comes after it.
    SyncNext,
    /// The `Sync` went out: the write's row count is awaited.
    Sent,
    /// The write matched 0 rows: its conflict is raised when the `Sync`'s `ReadyForQuery`
    /// arrives, instead of forwarding it.
    Raise(String, Box<RaiseCtx>),
}

/// Where a batch of catalog queries stands.
#[derive(Debug, Default)]
pub struct CatalogState {
    /// Queries sent whose outcome has not arrived (an error before them makes the server
    /// skip them: they never complete).
    pub(super) outstanding: usize,
    /// A query of the batch failed.
    pub(super) failed: bool,
}

impl GuardState {
    pub fn new(ident: Ident, track_limit: usize) -> GuardState {
        GuardState {
            ident,
            cache: AnalysisCache::new(),
            found: NameMap::default(),
            resolved: Arc::new(ResolvedGuards::default()),
            aggregates: None,
            tracker: Tracker::new(track_limit),
            statements: NameMap::default(),
            unanswered_parses: NameMap::default(),
            awaited_parse: None,
            stale: NameMap::default(),
            portals: NameMap::default(),
            row_plan: None,
            last_plan: LastPlan::default(),
            script: None,
            need_resolve: false,
            catalog: CatalogState::default(),
            full_variants: 0,
            kept: NameMap::default(),
            seen_once: NameMap::default(),
            deallocated: Vec::new(),
            after_sync: AfterSync::None,
            txn: TxnState::default(),
            cursors: NameMap::default(),
        }
    }

    /// True when full forms of deallocated statements wait to be closed.
    #[inline]
    pub fn has_deallocated(&self) -> bool {
        !self.deallocated.is_empty()
    }

    /// Number of row versions this session tracks.
    pub fn tracked(&self) -> usize {
        self.tracker.len()
    }

    /// True when guards are configured: with none, every hook returns at its first test.
    pub(super) fn guards_active(&self, cx: &Cx<'_>) -> bool {
        !cx.settings.guards.is_empty()
    }
}
