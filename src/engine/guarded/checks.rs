//! What the guard checks of a guarded write and how it sends it: the [`WriteCheck`] that
//! follows a write's reply, the [`Plan`] decided for it, the [`RaiseCtx`] of a conflict or
//! refusal the server raises, the [`Script`] a simple `Query` holding guarded writes runs
//! as, and the [`BindFix`] that tells a `Bind`'s error in the client's terms.
//!
//! Plain data: deciding and sending is done in [`super::plan`], [`super::simple`],
//! [`super::script`], [`super::bind`] and [`super::raise`].

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use super::rows::{ReadPlan, Reads};
use crate::config::TableName;
use crate::guard::conflict::{self, ConflictInfo, Refusal};
use crate::guard::track::Tracker;
use crate::guard::txkind::TxKind;
use crate::guard::{GuardSet, GuardedWrite, TableId, WriteOp};
use crate::protocol::TxStatus;

/// How the error answering a `Bind` sent to the proxy's statement is told in the client's
/// terms.
#[derive(Debug)]
pub struct BindFix {
    /// What every count in the message is above the client's (the proxy's parameter or
    /// columns).
    pub shift: usize,
    /// The statement the server was asked to bind, and the client's name for it.
    pub names: Option<(Box<[u8]>, Box<[u8]>)>,
}

/// A simple query run step by step.
#[derive(Debug)]
pub struct Script {
    pub(super) steps: VecDeque<StepSpec>,
    /// The query's text, for the writes planned when their turn comes.
    pub(super) sql: Arc<str>,
    /// PostgreSQL would run the text in an implicit transaction block (it holds several
    /// statements, or a write with a check before it): a step that finds no transaction open
    /// runs in one the proxy opens (see [`super::block`]).
    pub(super) implicit: bool,
    /// The proxy's own `BEGIN` is open: it stands for the implicit block.
    pub(super) hidden: bool,
    /// The server's transaction status once the steps sent so far are done.
    pub(super) status: TxStatus,
    /// The step running is the last, in the proxy's block: its latest `CommandComplete` waits
    /// for the block's `COMMIT` (see [`super::block`]).
    pub(super) hold_last: bool,
    /// Replies held back: those of the client's `COMMIT` or `PREPARE TRANSACTION` ending the
    /// proxy's block, until the warning PostgreSQL gives before them has gone to the client;
    /// or the last statement's `CommandComplete`, until the block committed.
    pub(super) held: BytesMut,
    /// An error reached the client: no further step runs.
    pub(super) failed: bool,
}

/// One step of a [`Script`].
#[derive(Debug)]
pub(super) enum StepSpec {
    Sql(String, Option<Box<WriteCheck>>),
    /// Statements passed as written, whose pinned reads are followed.
    Reads(String, Box<Reads>),
    /// A guarded write, planned when its turn comes: the steps before it may change what the
    /// session knows of its row (a read, or a write of the same row).
    Write(Arc<GuardedWrite>),
    Raise(String, Box<RaiseCtx>),
    /// A transaction-control statement of the client's, sent as the block it finds requires.
    Tx(String, TxKind),
}

/// What the proxy checks of one guarded write.
#[derive(Debug)]
pub struct WriteCheck {
    /// The guards the write was analysed with (a reload may have replaced them since).
    pub guards: Arc<GuardSet>,
    pub guard: usize,
    pub op: WriteOp,
    /// Columns the proxy appended to the result (its `RETURNING`).
    pub added: usize,
    /// The write's check observes (observe mode): the first appended column tells what it
    /// found (see [`crate::guard::rewrite::OBSERVED_SETTING`]). Holds the version expected of
    /// the row the write names, if it names one (else the check is of the `known` rows).
    pub observed: Option<Option<String>>,
    /// What the write is counted as besides rewritten when it checks nothing
    /// ([`crate::events::Outcome::Unversioned`] or [`crate::events::Outcome::Bulk`]).
    pub unchecked: Option<crate::events::Outcome>,
    pub client_returning: bool,
    /// The version the write must find; 0 rows then means a conflict.
    pub expected: Option<String>,
    /// The row's key (canonical text), when the write names one row.
    pub key: Option<Vec<String>>,
    /// The rows the write was checked against, row by row in the server (key parts and
    /// expected version; see [`crate::guard::rewrite::Expected::Rows`]): empty unless its
    /// rows could not be named from its text and the session knew some of the table's.
    pub known: Vec<(Vec<String>, String)>,
    /// Reads the proxy's `RETURNING` columns.
    pub plan: Option<ReadPlan>,
    /// The `CommandComplete` of a write that matched 0 rows, kept back during the check.
    pub held: Option<BytesMut>,
    /// The write is inside a data-modifying `WITH`: its rows are not the statement's.
    pub in_cte: bool,
    /// A run of the write that matches no row changes nothing (see
    /// [`super::GuardState::quiet_without_rows`]): its conflict may be raised after its implicit
    /// transaction committed.
    pub quiet_without_rows: bool,
}

impl WriteCheck {
    /// The table's id in the tracker.
    pub fn table(&self) -> TableId {
        self.guards.table_ids[self.guard]
    }

    /// What the session no longer knows once the write completed with `rows` rows: a row it
    /// deleted, every row a write inside `WITH` may have changed (its new versions stay in
    /// the statement; the next write of such a row expects nothing until it is read again),
    /// and what a write whose `RETURNING` columns could not be read changed.
    pub fn forget_after(&self, rows: Option<u64>, tracker: &mut Tracker) {
        if self.in_cte || self.added > 0 && self.plan.is_none() && rows != Some(0) {
            match &self.key {
                Some(k) => tracker.forget(self.table(), k),
                None => tracker.forget_table(self.table()),
            }
            return;
        }
        if self.op == WriteOp::Delete
            && rows.is_some_and(|n| n > 0)
            && let Some(k) = &self.key
        {
            tracker.forget(self.table(), k);
        }
    }

    /// The conflict, when the server's error (`body`) is this write's version check failing
    /// on the spot (see [`crate::guard::rewrite::CONFLICT_MARKER`]): what the write expected
    /// of which row, and the version the row was found at.
    pub fn raised_conflict(&self, body: &[u8]) -> Option<(ConflictInfo, conflict::RaisedInWrite)> {
        let found = conflict::found_in_error(body)?;
        // A check of the known rows says which of them it found changed.
        if let Some((key, expected)) = found.row.and_then(|i| self.known.get(i)) {
            let guard = self.guards.guards.get(self.guard)?;
            let info = ConflictInfo::of(guard, Some(key.clone()), expected.clone());
            return Some((info, found));
        }
        Some((self.conflict_info()?, found))
    }

    pub fn conflict_info(&self) -> Option<ConflictInfo> {
        let guard = self.guards.guards.get(self.guard)?;
        Some(ConflictInfo::of(
            guard,
            self.key.clone(),
            self.expected.clone()?,
        ))
    }
}

/// How one guarded write is sent, once the session knows what it expects.
pub(super) enum Plan {
    /// Send it rewritten with this expected version, and check it.
    Send {
        expected: Option<String>,
        key: Option<Vec<String>>,
    },
    /// Refuse it.
    Refuse(Refusal),
}

/// What a raise is about.
#[derive(Debug)]
pub struct RaiseCtx {
    /// The guarded table the raise is about.
    pub table: TableName,
    /// The client's `CommandComplete` (`UPDATE 0`), delivered when the block raises nothing
    /// (the row is still at the expected version: the write's other conditions did not match).
    pub held: Option<BytesMut>,
    pub conflict: Option<ConflictInfo>,
    pub refusal: Option<Refusal>,
}

impl RaiseCtx {
    /// The context of a conflict on a row; `held` is the write's `CommandComplete`, for the
    /// client should the block raise nothing.
    pub fn conflict(info: ConflictInfo, held: Option<BytesMut>) -> RaiseCtx {
        RaiseCtx {
            table: info.table.clone(),
            held,
            conflict: Some(info),
            refusal: None,
        }
    }

    /// The context of a refused write to `table`.
    pub fn refusal(table: &TableName, refusal: Refusal) -> RaiseCtx {
        RaiseCtx {
            table: table.clone(),
            held: None,
            conflict: None,
            refusal: Some(refusal),
        }
    }
}
