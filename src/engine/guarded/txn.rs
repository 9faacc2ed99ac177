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

use super::cx::Cx;
use super::state::{GuardState, NameMap};
use crate::engine::replies::Pending;
use crate::guard::txcontrol::{TxOp, may_hold_tx, tx_ops};
use crate::protocol::TxStatus;
use crate::protocol::frontend as fe;

/// What the session follows of the server's transactions.
#[derive(Debug, Default)]
pub struct TxnState {
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
enum TxTag {
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

impl GuardState {
    /// The number of the `ReadyForQuery` that will end a batch sent now.
    pub(super) fn next_ready(&self, cx: &Cx<'_>) -> u64 {
        let queued = cx
            .out
            .replies
            .iter()
            .filter(|p| matches!(p, Pending::Simple(_) | Pending::Sync(_)))
            .count();
        self.txn.ready_seen + queued as u64 + 1
    }

    /// A text going to the server as one simple `Query` (the client's, or a step of a
    /// script) in which the prefilter found a transaction-control word; `ready` is the
    /// number of its `ReadyForQuery` ([`GuardState::next_ready`], taken before it was queued).
    pub(super) fn note_tx_text(&mut self, ready: u64, sql: &[u8]) {
        if !may_hold_tx(sql) {
            return;
        }
        let sql = String::from_utf8_lossy(sql);
        self.txn
            .ops
            .extend(tx_ops(&sql).into_iter().map(|op| (ready, op)));
    }

    /// A `Parse` of statement `name` (`tx`: the prefilter found a transaction-control word).
    pub(super) fn tx_parse(&mut self, name: &[u8], sql: &[u8], tx: bool) {
        if tx
            && may_hold_tx(sql)
            && let [op] = tx_ops(&String::from_utf8_lossy(sql)).as_slice()
        {
            self.txn.statements.insert(name.into(), op.clone());
        } else if !self.txn.statements.is_empty() {
            self.txn.statements.remove(name);
        }
    }

    /// A `Bind`: a portal of a transaction-control statement remembers it.
    #[inline]
    pub fn tx_bind(&mut self, body: &[u8]) {
        if self.txn.statements.is_empty() && self.txn.portals.is_empty() {
            return;
        }
        let Some((portal, statement)) = fe::bind_names(body) else {
            return;
        };
        match self.txn.statements.get(statement) {
            Some(op) => {
                let op = op.clone();
                self.txn.portals.insert(portal.into(), op);
            }
            None => {
                self.txn.portals.remove(portal);
            }
        }
    }

    /// An `Execute`: a transaction-control statement's op awaits its tag.
    #[inline]
    pub fn tx_execute(&mut self, cx: &Cx<'_>, body: &[u8]) {
        if self.txn.portals.is_empty() {
            return;
        }
        if let Some((portal, _)) = fe::execute(body)
            && let Some(op) = self.txn.portals.get(portal).cloned()
        {
            let ready = self.next_ready(cx);
            self.txn.ops.push_back((ready, op));
        }
    }

    /// A `Close` of a statement or portal, or a simple `Query` (which drops the unnamed ones).
    pub fn tx_close(&mut self, kind: u8, name: &[u8]) {
        let map = match kind {
            b'S' => &mut self.txn.statements,
            _ => &mut self.txn.portals,
        };
        if !map.is_empty() {
            map.remove(name);
        }
    }

    /// An `ErrorResponse` from the server: the transaction it came in failed.
    #[inline]
    pub fn on_server_error(&mut self) {
        self.txn.failed = true;
    }

    /// A `CommandComplete` from the server (`body` without the header). `per_transaction`:
    /// tracked versions are forgotten at the end of each transaction.
    #[inline]
    pub fn on_command_complete(&mut self, body: &[u8], per_transaction: bool) {
        let Some(tag) = tx_tag(crate::protocol::backend::command_tag(body)) else {
            return;
        };
        let current = self.txn.ready_seen + 1;
        while self.txn.ops.front().is_some_and(|(n, _)| *n < current) {
            self.txn.ops.pop_front();
        }
        let op = match self.txn.ops.front() {
            Some((n, op)) if *n == current && answers(op, tag) => {
                self.txn.ops.pop_front().map(|(_, op)| op)
            }
            _ => None,
        };
        match (tag, &op) {
            (TxTag::Begin, _) => self.txn.since_ready = Some(TxStatus::InTransaction),
            (TxTag::Rollback, Some(TxOp::RollbackTo(_))) => {}
            (TxTag::Commit | TxTag::Rollback | TxTag::Prepare, _) => {
                self.txn.since_ready = Some(TxStatus::Idle)
            }
            _ => {}
        }
        self.end_of(tag, op, per_transaction);
    }

    /// The server's transaction status as the replies so far tell it: the last
    /// `ReadyForQuery`'s, or where a transaction-control tag since then left it.
    pub(super) fn tx_status_now(&self, cx: &Cx<'_>) -> TxStatus {
        self.txn.since_ready.unwrap_or(cx.tx_status)
    }

    /// What a transaction-control statement did to what the session learned.
    fn end_of(&mut self, tag: TxTag, op: Option<TxOp>, per_transaction: bool) {
        let t = &mut self.tracker;
        let ended = match (tag, op) {
            (TxTag::Begin, _) => false,
            (TxTag::Savepoint, op) => {
                match op {
                    Some(TxOp::Savepoint(name)) => t.savepoint(name.as_deref()),
                    _ => t.savepoint(None),
                }
                false
            }
            (TxTag::Release, op) => {
                if let Some(TxOp::Release(Some(name))) = op {
                    t.release(&name);
                }
                false
            }
            (TxTag::Rollback, Some(TxOp::RollbackTo(Some(name)))) => {
                if !t.rollback_to(&name) {
                    t.forget_touched();
                }
                false
            }
            (TxTag::Rollback, Some(TxOp::RollbackTo(None) | TxOp::Unknown)) => {
                t.forget_touched();
                false
            }
            (TxTag::Rollback, _) => {
                t.rollback();
                true
            }
            (TxTag::Commit, _) => {
                t.commit();
                true
            }
            (TxTag::Prepare, _) => {
                t.forget_touched();
                t.commit();
                true
            }
        };
        // `COMMIT AND CHAIN` ends a transaction without a `ReadyForQuery` status `I`.
        if per_transaction && ended {
            t.forget_all();
        }
    }

    /// A `ReadyForQuery` with transaction status `status`: outside a transaction block (`Idle`), the
    /// transaction ended, committed unless an error came since the last one.
    pub(super) fn tx_ready(&mut self, status: TxStatus) {
        self.txn.ready_seen += 1;
        self.txn.since_ready = None;
        let seen = self.txn.ready_seen;
        while self.txn.ops.front().is_some_and(|(n, _)| *n <= seen) {
            self.txn.ops.pop_front();
        }
        if status == TxStatus::Idle {
            if std::mem::take(&mut self.txn.failed) {
                self.tracker.rollback();
            } else {
                self.tracker.commit();
            }
            if !self.txn.portals.is_empty() {
                self.txn.portals.clear();
            }
        }
        self.txn.failed = false;
    }
}
