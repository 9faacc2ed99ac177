//! The guard's hooks in the relay: rewriting guarded statements on their way to the server and
//! reading their replies on the way back (tracked versions, conflicts, hidden columns).

use super::replies::{Pending, Step};
use super::session::Session;

/// What the guard attaches to a pending statement.
pub type StmtTag = Option<Box<GuardedStmt>>;

/// A guarded statement in flight.
#[derive(Debug)]
pub struct GuardedStmt {}

impl GuardedStmt {
    /// True when later messages of the batch must wait for this statement's row count.
    pub fn holds_batch(&self) -> bool {
        false
    }
}

/// Per-session guard state.
#[derive(Debug, Default)]
pub struct GuardState {}

impl GuardState {
    pub fn on_session_command(&mut self, _sql: &[u8]) {}
    pub fn on_dropped(&mut self, _p: Pending<StmtTag>) {}
    pub fn inspects_rows(&self, _front: Option<&Pending<StmtTag>>) -> bool {
        false
    }
}

impl Session {
    pub(super) fn guard_query(&mut self, _msg: &[u8]) -> Result<bool, String> {
        Ok(false)
    }
    pub(super) fn guard_parse(&mut self, _msg: &[u8]) -> Result<bool, String> {
        Ok(false)
    }
    pub(super) fn guard_bind(&mut self, _msg: &[u8]) -> Result<bool, String> {
        Ok(false)
    }
    pub(super) fn guard_describe(&mut self, _body: &[u8]) -> StmtTag {
        None
    }
    pub(super) fn guard_execute(&mut self, _body: &[u8]) -> StmtTag {
        None
    }
    pub(super) fn guard_close(&mut self, _body: &[u8]) {}
    pub(super) fn on_login(&mut self, _ready: &[u8]) -> bool {
        false
    }
    pub(super) fn guard_server_message(
        &mut self,
        _tag: u8,
        _msg: &[u8],
        _step: Step,
        _popped: Option<Pending<StmtTag>>,
    ) -> Result<bool, String> {
        Ok(false)
    }
}
