//! What the server's transaction boundaries do to the tracked versions: the [`GuardState`]
//! side of [`super::txn`], which follows the transactions; here each ending is applied to the
//! tracker (commit keeps, rollback undoes, a savepoint marks).

use super::cx::Cx;
use super::state::GuardState;
use super::txn::TxTag;
use crate::engine::replies::Pending;
use crate::guard::txcontrol::TxOp;
use crate::protocol::TxStatus;

impl GuardState {
    /// The number of the `ReadyForQuery` that will end a batch sent now.
    pub(super) fn next_ready(&self, cx: &Cx<'_>) -> u64 {
        let queued = cx
            .out
            .replies
            .iter()
            .filter(|p| matches!(p, Pending::Simple(_) | Pending::Sync(_)))
            .count();
        self.txn.next_ready(queued)
    }

    /// A text going to the server as one simple `Query` (the client's, or a step of a
    /// script) in which the prefilter found a transaction-control word; `ready` is the
    /// number of its `ReadyForQuery` ([`GuardState::next_ready`], taken before it was queued).
    pub(super) fn note_tx_text(&mut self, ready: u64, sql: &[u8]) {
        self.txn.note_text(ready, sql);
    }

    /// A `Parse` of statement `name` (`tx`: the prefilter found a transaction-control word).
    pub(super) fn tx_parse(&mut self, name: &[u8], sql: &[u8], tx: bool) {
        self.txn.parse(name, sql, tx);
    }

    /// A `Bind`: a portal of a transaction-control statement remembers it.
    #[inline]
    pub fn tx_bind(&mut self, body: &[u8]) {
        self.txn.bind(body);
    }

    /// An `Execute`: a transaction-control statement's op awaits its tag.
    #[inline]
    pub fn tx_execute(&mut self, cx: &Cx<'_>, body: &[u8]) {
        if self.txn.no_portals() {
            return;
        }
        let ready = self.next_ready(cx);
        self.txn.execute(ready, body);
    }

    /// A `Close` of a statement or portal, or a simple `Query` (which drops the unnamed ones).
    pub fn tx_close(&mut self, kind: u8, name: &[u8]) {
        self.txn.close(kind, name);
    }

    /// An `ErrorResponse` from the server: the transaction it came in failed.
    #[inline]
    pub fn on_server_error(&mut self) {
        self.txn.error();
    }

    /// A `CommandComplete` from the server (`body` without the header). `per_transaction`:
    /// tracked versions are forgotten at the end of each transaction.
    #[inline]
    pub fn on_command_complete(&mut self, body: &[u8], per_transaction: bool) {
        if let Some((tag, op)) = self.txn.command_complete(body) {
            self.end_of(tag, op, per_transaction);
        }
    }

    /// The server's transaction status as the replies so far tell it: the last
    /// `ReadyForQuery`'s, or where a transaction-control tag since then left it.
    pub(super) fn tx_status_now(&self, cx: &Cx<'_>) -> TxStatus {
        self.txn.status_now(cx.tx_status)
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
        match self.txn.ready(status) {
            Some(true) => self.tracker.rollback(),
            Some(false) => self.tracker.commit(),
            None => {}
        }
    }
}
