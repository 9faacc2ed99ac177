//! Where the server's transactions end, for the tracked versions: what a session learned inside
//! a transaction or savepoint that did not commit is undone to what it knew before.
//!
//! The tracker journals every change ([`crate::guard::track`]); this file tells it where the
//! transaction each change was made in ended, from what the server itself says (the proxy's
//! hidden statements included, so this follows the server's transaction, not the client's
//! view of it):
//!
//! - a `ReadyForQuery` with status `I` ends the transaction: committed, unless an error came
//!   since the last one (a failed implicit transaction: a simple `Query` or an extended batch
//!   up to `Sync`, or a failed `COMMIT`);
//! - command tags: `COMMIT` (also `AND CHAIN`) commits, `ROLLBACK` undoes everything (or back
//!   to a savepoint, for `ROLLBACK TO`), `SAVEPOINT` marks, `RELEASE` merges, `PREPARE
//!   TRANSACTION` forgets what the prepared transaction changed (whether it commits is unknown).
//!
//! A tag does not tell `ROLLBACK TO` from `ROLLBACK`, nor name a savepoint: the statements'
//! texts do ([`crate::guard::txcontrol`]). The texts that hold such a word (the prefilter finds
//! it) are split into [`TxOp`]s when sent, each numbered with the `ReadyForQuery` that ends its
//! batch; a tag takes the next op of the batch being answered, and a batch's ops not taken when
//! its `ReadyForQuery` arrives (skipped after an error) are dropped. An op that cannot be
//! paired, or a savepoint never seen set, makes the tracker forget what the transaction changed
//! ("nothing known" is true whatever happened).

use std::collections::VecDeque;

use super::names::NameMap;
use crate::guard::txcontrol::{TxOp, may_hold_tx, tx_ops};
use crate::protocol::TxStatus;
use crate::protocol::frontend as fe;

/// What the session follows of the server's transactions.
#[derive(Debug, Default)]
pub(super) struct TxnState {
    /// Transaction-control statements sent, each with the number of the `ReadyForQuery` that
    /// ends its batch.
    ops: VecDeque<(u64, TxOp)>,
    /// `ReadyForQuery` messages seen since the login.
    ready_seen: u64,
    /// The server reported an error since the last `ReadyForQuery`.
    failed: bool,
    /// Where the command tags since the last `ReadyForQuery` left the transaction (`BEGIN`
    /// opens one, `COMMIT`, `ROLLBACK` and `PREPARE TRANSACTION` end it); `None`: no tag
    /// changed it. An extended batch with no `Sync` yet answers without a `ReadyForQuery`.
    since_ready: Option<TxStatus>,
    /// Prepared statements that are one `SAVEPOINT`, `RELEASE` or `ROLLBACK [TO]`, by name.
    statements: NameMap<TxOp>,
    /// Portals of those statements, by name.
    portals: NameMap<TxOp>,
}

/// The transaction-control command tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TxTag {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    Prepare,
}

fn tx_tag(tag: &[u8]) -> Option<TxTag> {
    Some(match tag {
        b"BEGIN" | b"START TRANSACTION" => TxTag::Begin,
        b"COMMIT" => TxTag::Commit,
        b"ROLLBACK" => TxTag::Rollback,
        b"SAVEPOINT" => TxTag::Savepoint,
        b"RELEASE" => TxTag::Release,
        b"PREPARE TRANSACTION" => TxTag::Prepare,
        _ => return None,
    })
}

/// True when `op` is a statement the server answers with `tag`.
fn answers(op: &TxOp, tag: TxTag) -> bool {
    match (op, tag) {
        (TxOp::Unknown, _) => true,
        (TxOp::Begin, TxTag::Begin) => true,
        (TxOp::Commit, TxTag::Commit | TxTag::Rollback) => true,
        (TxOp::Prepare, TxTag::Prepare | TxTag::Rollback) => true,
        (TxOp::Rollback | TxOp::RollbackTo(_), TxTag::Rollback) => true,
        (TxOp::Savepoint(_), TxTag::Savepoint) => true,
        (TxOp::Release(_), TxTag::Release) => true,
        _ => false,
    }
}

impl TxnState {
    /// The number of the `ReadyForQuery` that will end a batch sent now, with `queued`
    /// batches (simple queries and `Sync`s) already awaiting theirs.
    pub(super) fn next_ready(&self, queued: usize) -> u64 {
        self.ready_seen + queued as u64 + 1
    }

    /// A text going to the server as one simple `Query`, ended by `ReadyForQuery` number
    /// `ready`: its transaction-control statements await their tags.
    pub(super) fn note_text(&mut self, ready: u64, sql: &[u8]) {
        if !may_hold_tx(sql) {
            return;
        }
        let sql = String::from_utf8_lossy(sql);
        self.ops
            .extend(tx_ops(&sql).into_iter().map(|op| (ready, op)));
    }

    /// A `Parse` of statement `name` (`tx`: the prefilter found a transaction-control word).
    pub(super) fn parse(&mut self, name: &[u8], sql: &[u8], tx: bool) {
        if tx
            && may_hold_tx(sql)
            && let [op] = tx_ops(&String::from_utf8_lossy(sql)).as_slice()
        {
            self.statements.insert(name.into(), op.clone());
        } else if !self.statements.is_empty() {
            self.statements.remove(name);
        }
    }

    /// A `Bind`: a portal of a transaction-control statement remembers it.
    #[inline]
    pub(super) fn bind(&mut self, body: &[u8]) {
        if self.statements.is_empty() && self.portals.is_empty() {
            return;
        }
        let Some((portal, statement)) = fe::bind_names(body) else {
            return;
        };
        match self.statements.get(statement) {
            Some(op) => {
                let op = op.clone();
                self.portals.insert(portal.into(), op);
            }
            None => {
                self.portals.remove(portal);
            }
        }
    }

    /// True when no portal of a transaction-control statement is open (an `Execute` then
    /// needs no look).
    #[inline]
    pub(super) fn no_portals(&self) -> bool {
        self.portals.is_empty()
    }

    /// An `Execute` of a portal, in the batch ended by `ReadyForQuery` number `ready`: a
    /// transaction-control statement's op awaits its tag.
    pub(super) fn execute(&mut self, ready: u64, body: &[u8]) {
        if let Some((portal, _)) = fe::execute(body)
            && let Some(op) = self.portals.get(portal).cloned()
        {
            self.ops.push_back((ready, op));
        }
    }

    /// A `Close` of a statement (`kind` `S`) or portal.
    pub(super) fn close(&mut self, kind: u8, name: &[u8]) {
        let map = match kind {
            b'S' => &mut self.statements,
            _ => &mut self.portals,
        };
        if !map.is_empty() {
            map.remove(name);
        }
    }

    /// An `ErrorResponse` from the server: the transaction it came in failed.
    #[inline]
    pub(super) fn error(&mut self) {
        self.failed = true;
    }

    /// A `CommandComplete` (`body` without the header): for a transaction-control tag, the
    /// tag and the op it answers (`None` when none could be paired with it).
    pub(super) fn command_complete(&mut self, body: &[u8]) -> Option<(TxTag, Option<TxOp>)> {
        let tag = tx_tag(crate::protocol::backend::command_tag(body))?;
        let current = self.ready_seen + 1;
        while self.ops.front().is_some_and(|(n, _)| *n < current) {
            self.ops.pop_front();
        }
        let op = match self.ops.front() {
            Some((n, op)) if *n == current && answers(op, tag) => {
                self.ops.pop_front().map(|(_, op)| op)
            }
            _ => None,
        };
        match (tag, &op) {
            (TxTag::Begin, _) => self.since_ready = Some(TxStatus::InTransaction),
            (TxTag::Rollback, Some(TxOp::RollbackTo(_))) => {}
            (TxTag::Commit | TxTag::Rollback | TxTag::Prepare, _) => {
                self.since_ready = Some(TxStatus::Idle)
            }
            _ => {}
        }
        Some((tag, op))
    }

    /// The server's transaction status as the replies so far tell it: `last_ready` (the last
    /// `ReadyForQuery`'s), or where a transaction-control tag since then left it.
    pub(super) fn status_now(&self, last_ready: TxStatus) -> TxStatus {
        self.since_ready.unwrap_or(last_ready)
    }

    /// A `ReadyForQuery` with transaction status `status`. Outside a transaction block
    /// (`Idle`) the transaction ended: `Some(failed)`, true when an error came since the
    /// last one; `None` inside a block.
    pub(super) fn ready(&mut self, status: TxStatus) -> Option<bool> {
        self.ready_seen += 1;
        self.since_ready = None;
        let seen = self.ready_seen;
        while self.ops.front().is_some_and(|(n, _)| *n <= seen) {
            self.ops.pop_front();
        }
        let failed = std::mem::take(&mut self.failed);
        if status != TxStatus::Idle {
            return None;
        }
        if !self.portals.is_empty() {
            self.portals.clear();
        }
        Some(failed)
    }
}
