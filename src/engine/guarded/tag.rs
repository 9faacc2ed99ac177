//! What the guard attaches to a reply it follows: the [`Tag`] on a pending entry of the reply
//! queue, what each kind tells the engine core ([`held_batch_for`], [`skipped_parse`]) and the
//! client side ([`Tag::hides_all_rows`], [`Tag::holds_batch`]).

use std::sync::Arc;

use bytes::BytesMut;

use super::checks::{BindFix, RaiseCtx, WriteCheck};
use super::rows::Reads;
use super::statements::{ParseUndo, Portal, Prepared};
use crate::engine::replies::Pending;

/// What the guard attaches to a pending reply.
pub type StmtTag = Option<Tag>;

/// Why the guard follows a reply.
#[derive(Debug)]
pub enum Tag {
    /// The `Execute` of the guard resolution run after login and after a reload (see
    /// [`super::catalog`]).
    Resolve { rows: Vec<Vec<Option<String>>> },
    /// The `Execute` of the query run right after it that finds the relations whose writes
    /// land in a guarded table (see [`crate::catalog::derived`]).
    Derive { rows: Vec<Vec<Option<String>>> },
    /// The `Execute` of the query run with them that lists the names of the database's
    /// aggregate and window functions (see [`crate::catalog::aggregates`]).
    Aggregates { rows: Vec<Vec<Option<String>>> },
    /// The `Execute` of the listing of the session's prepared statements after a reload.
    Listing { rows: Vec<Vec<Option<String>>> },
    /// Any other message of a catalog batch: every reply hidden, errors included.
    Catalog,
    /// The `Sync` ending a catalog batch: its `ReadyForQuery` is hidden, the client's
    /// messages go on when `release`, and the client gets `login_ready` (its first
    /// `ReadyForQuery`, held for the resolution at login) when there is one.
    CatalogEnd {
        release: bool,
        login_ready: Option<BytesMut>,
    },
    /// A message of the proxy's own: every reply is swallowed (in the extended protocol an
    /// error still reaches the client).
    Hidden,
    /// One step of a simple-Query script; a guarded write when `check` is set.
    Step(Option<Box<WriteCheck>>),
    /// A `DO` block raising a conflict or a refusal.
    Raise(Box<RaiseCtx>),
    /// The hidden `COMMIT`/`ROLLBACK` ending the proxy's block around a script: its error and
    /// `ReadyForQuery` go to the client (after the last statement's held tag).
    Final,
    /// A step of a script that ends or hands over the proxy's transaction block.
    Block(BlockStep),
    /// `Describe` of a statement the guard rewrote or reads from.
    DescribeStatement(Arc<Prepared>),
    /// `Describe` of a portal the guard rewrote or reads from.
    DescribePortal(Arc<Portal>),
    /// The proxy's own `Describe` of a captured `FETCH`'s portal (see [`super::cursors`]).
    FetchShown(Arc<Portal>),
    /// `Execute` of a portal whose rows or row count the guard needs.
    Execute(Arc<Portal>),
    /// A simple `Query` (or script step) holding `SELECT`s that pin one guarded row each.
    Read(Box<Reads>),
    /// A `Bind` sent to the proxy's statement whose error must be told in the client's terms.
    BindFix(Box<BindFix>),
    /// A `Parse` that changed what the session knows of a statement name (the client's, or
    /// the proxy's own, hidden), undone if the server skips it or fails it.
    Parsed(Arc<ParseUndo>),
}

/// A script step that ends or hands over the transaction block the proxy opened for a
/// multi-statement `Query` (see [`super::block`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStep {
    /// The client's `BEGIN`: once it succeeds, the block is the client's. The server's
    /// warning that a transaction is already in progress is dropped (PostgreSQL gives none
    /// in an implicit block).
    Begin,
    /// The client's `COMMIT` or `PREPARE TRANSACTION`: every reply is held until the probe's
    /// warning went before them.
    End,
    /// The proxy's query that makes the server give the warning PostgreSQL gives when an
    /// implicit block is committed or prepared: its notices go to the client, the rest is
    /// hidden; then the held replies follow.
    Probe,
}

impl Tag {
    /// A reply to one of the proxy's catalog queries.
    pub fn is_catalog(&self) -> bool {
        matches!(
            self,
            Tag::Resolve { .. }
                | Tag::Derive { .. }
                | Tag::Aggregates { .. }
                | Tag::Listing { .. }
                | Tag::Catalog
                | Tag::CatalogEnd { .. }
        )
    }

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
    /// [`super::GuardState::quiet_without_rows`]).
    pub fn quiet_without_rows(&self) -> bool {
        matches!(self, Tag::Execute(p) if p.write.as_ref().is_some_and(|w| w.quiet_without_rows))
    }
}

/// True for an entry the client's batch waits for (a checked write's `Execute`, or the
/// proxy's raise): when the server skips it after an error, the batch must go on.
pub fn held_batch_for(p: &Pending<StmtTag>) -> bool {
    matches!(p, Pending::Execute(Some(t)) if t.holds_batch() || matches!(t, Tag::Raise(_)))
}

/// What an entry the server skipped after an error leaves to undo (see [`Tag::Parsed`]).
pub fn skipped_parse(p: &Pending<StmtTag>) -> Option<Arc<ParseUndo>> {
    match p {
        Pending::Parse(Some(t)) => match t {
            Tag::Parsed(undo) => Some(undo.clone()),
            _ => None,
        },
        _ => None,
    }
}
