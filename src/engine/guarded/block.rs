//! The implicit transaction block of a script.
//!
//! PostgreSQL runs the statements of a multi-statement `Query` in one implicit transaction
//! block: an error rolls back all of it; `COMMIT`, `ROLLBACK` and `PREPARE TRANSACTION` end
//! it (each with the warning "there is no transaction in progress") and the statements after
//! them start a new one; `BEGIN` turns it into an explicit block; `SAVEPOINT`, `RELEASE`,
//! `ROLLBACK TO` and `... AND CHAIN` fail in it ("... can only be used in transaction
//! blocks"). A script sends the text step by step, so the proxy stands in for that block:
//! before a step that finds no transaction open it sends a `BEGIN` of its own, and it ends
//! that block as PostgreSQL ends the implicit one (a hidden `COMMIT` after the last step, a
//! hidden `ROLLBACK` after an error). The client's transaction control goes as the block it
//! finds requires ([`GuardState::send_tx_step`]), so that every reply, warnings included, and
//! the committed state are PostgreSQL's own:
//!
//! | client's statement | in the proxy's block | with no transaction open |
//! |---|---|---|
//! | `BEGIN` | as written; the server's "already in progress" warning dropped; the block is the client's | as written |
//! | `COMMIT`, `PREPARE TRANSACTION` | as written, replies held until a probe made the server give the implicit block's warning | the proxy's block opened first |
//! | `ROLLBACK` | a hidden `ROLLBACK` first, then as written (the server warns as for the implicit block) | as written |
//! | savepoints, `AND CHAIN` | a hidden `ROLLBACK` first, then as written followed by `;SELECT WHERE false`, so the server runs it in an implicit block and fails it there | the same without the `ROLLBACK` |
//!
//! Inside a block the client opened, every statement goes as written.
//!
//! PostgreSQL commits an implicit block right after its last statement ran, before that
//! statement's `CommandComplete` (a failed commit replaces it; notices of deferred triggers
//! come before it). So while the last step runs in the proxy's block, its latest
//! `CommandComplete` (and the `ParameterStatus` after it) is held until the next message
//! for the client, or until the proxy's `COMMIT` went through ([`GuardState::end_block`]).

use super::cx::Cx;
use super::state::GuardState;
use super::tag::{BlockStep, Tag};
use crate::engine::replies::Pending;
use crate::guard::txkind::TxKind;
use crate::protocol::{Frame, TxStatus, backend as be, frontend as fe};

/// Makes the server give the warning of an implicit block committed or prepared (the same
/// message, code and source location), and changes nothing: its `COMMIT` ends an empty
/// implicit block.
const PROBE: &[u8] = b"COMMIT; SELECT WHERE false";

/// Follows a statement that fails in an implicit block, so that the server runs that
/// statement in one (a `Query` of one statement has none).
const IN_A_BLOCK: &str = "\n;SELECT WHERE false";

impl GuardState {
    /// Opens the proxy's block before a step of a script whose text PostgreSQL runs in an
    /// implicit block, when no transaction is open.
    pub(super) fn open_block(&mut self, cx: &mut Cx<'_>) {
        let Some(s) = self.script.as_mut() else {
            return;
        };
        if s.implicit && !s.hidden && s.status == TxStatus::Idle {
            hidden_query(cx, b"BEGIN");
            s.hidden = true;
            s.status = TxStatus::InTransaction;
        }
    }

    /// Sends a transaction-control statement of the client's (`text`, of `kind`) as the block
    /// it finds requires (see the table above).
    pub(super) fn send_tx_step(&mut self, cx: &mut Cx<'_>, text: String, kind: TxKind) {
        if matches!(kind, TxKind::Commit | TxKind::Prepare) {
            self.open_block(cx);
        }
        let Some(s) = self.script.as_mut() else {
            return;
        };
        s.hold_last = false;
        let fails_in_block = kind == TxKind::BlockOnly && s.implicit;
        if !s.hidden {
            let none_open = s.status == TxStatus::Idle;
            let text = if none_open && fails_in_block {
                text + IN_A_BLOCK
            } else {
                text
            };
            self.note_step_tx(cx, &text);
            step_query(cx, text.as_bytes(), Tag::Step(None));
            return;
        }
        match kind {
            TxKind::Begin => {
                self.note_step_tx(cx, &text);
                step_query(cx, text.as_bytes(), Tag::Block(BlockStep::Begin));
            }
            TxKind::Commit | TxKind::Prepare => {
                s.hidden = false;
                s.held.clear();
                self.note_step_tx(cx, &text);
                step_query(cx, text.as_bytes(), Tag::Block(BlockStep::End));
                step_query(cx, PROBE, Tag::Block(BlockStep::Probe));
            }
            TxKind::Rollback | TxKind::BlockOnly => {
                s.hidden = false;
                s.status = TxStatus::Idle;
                hidden_query(cx, b"ROLLBACK");
                let text = if fails_in_block {
                    text + IN_A_BLOCK
                } else {
                    text
                };
                self.note_step_tx(cx, &text);
                step_query(cx, text.as_bytes(), Tag::Step(None));
            }
        }
    }

    /// A reply within a [`Tag::Block`] step; true when the guard took it.
    pub(super) fn on_block_reply(&mut self, step: BlockStep, tag: u8, msg: Frame<'_>) -> bool {
        let Some(s) = self.script.as_mut() else {
            return false;
        };
        if tag == be::ERROR_RESPONSE && step != BlockStep::Probe {
            s.failed = true;
        }
        match step {
            BlockStep::Begin => false,
            BlockStep::End => {
                s.held.extend_from_slice(msg.bytes());
                true
            }
            BlockStep::Probe => true,
        }
    }

    /// The `ReadyForQuery` of a [`Tag::Block`] step.
    pub(super) fn on_block_done(
        &mut self,
        cx: &mut Cx<'_>,
        step: BlockStep,
        ready: Frame<'_>,
    ) -> Result<bool, String> {
        let Some(s) = self.script.as_mut() else {
            return Ok(false);
        };
        match step {
            BlockStep::Begin => {
                if !s.failed {
                    // The client's BEGIN took over the block: it is the client's to end.
                    s.hidden = false;
                }
                self.script_continue(cx, ready)
            }
            // The probe comes next.
            BlockStep::End => Ok(true),
            BlockStep::Probe => {
                cx.out.to_client.extend_from_slice(&s.held);
                s.held = Default::default();
                self.script_continue(cx, ready)
            }
        }
    }

    /// A notice or `ParameterStatus` while a script runs; true when the guard took it: the
    /// warning of a `BEGIN` inside the proxy's block is dropped, the notices of a step whose
    /// replies are held are held with them, and a `ParameterStatus` after a held last
    /// `CommandComplete` stays behind it.
    pub(super) fn on_script_async(&mut self, cx: &mut Cx<'_>, tag: u8, msg: Frame<'_>) -> bool {
        let Some(Pending::Simple(Some(t))) = cx.out.replies.front() else {
            return false;
        };
        let Some(s) = self.script.as_mut() else {
            return false;
        };
        match t {
            Tag::Block(BlockStep::Begin) => {
                tag == be::NOTICE_RESPONSE
                    && be::error_field(msg.body(), b'C') == Some(&b"25001"[..])
            }
            Tag::Block(BlockStep::End) => {
                s.held.extend_from_slice(msg.bytes());
                true
            }
            Tag::Step(_) | Tag::Read(_) | Tag::Raise(_) if s.hold_last && !s.held.is_empty() => {
                if tag == be::PARAMETER_STATUS {
                    s.held.extend_from_slice(msg.bytes());
                    return true;
                }
                cx.out.to_client.extend_from_slice(&s.held);
                s.held.clear();
                false
            }
            _ => false,
        }
    }

    /// A reply within the last step of a script running in the proxy's block, before the
    /// guard follows it: a held `CommandComplete` was not the last statement's when another
    /// message follows it, so it goes to the client first.
    pub(super) fn release_before(&mut self, cx: &mut Cx<'_>, tag: u8) {
        if tag != be::COMMAND_COMPLETE
            && self.in_last_step(cx)
            && let Some(s) = self.script.as_mut()
        {
            cx.out.to_client.extend_from_slice(&s.held);
            s.held.clear();
        }
    }

    /// A `CommandComplete` of the last step of a script running in the proxy's block that is
    /// on its way to the client (`msg`, or a write's held tag): held until the block commits.
    /// True when it was held.
    pub(super) fn hold_last_tag(&mut self, cx: &mut Cx<'_>, msg: Frame<'_>) -> bool {
        if !self.in_last_step(cx) {
            return false;
        }
        let Some(s) = self.script.as_mut() else {
            return false;
        };
        cx.out.to_client.extend_from_slice(&s.held);
        s.held.clear();
        s.held.extend_from_slice(msg.bytes());
        true
    }

    /// True while the replies of the last step of a script running in the proxy's block
    /// (or of the raise after it) arrive.
    fn in_last_step(&self, cx: &Cx<'_>) -> bool {
        self.script.as_ref().is_some_and(|s| s.hold_last)
            && matches!(
                cx.out.replies.front(),
                Some(Pending::Simple(Some(t)))
                    if matches!(*t, Tag::Step(_) | Tag::Read(_) | Tag::Raise(_))
            )
    }

    /// A reply of the proxy's `COMMIT` or `ROLLBACK` ending its block: an error replaces the
    /// held `CommandComplete`; the `ReadyForQuery` goes to the client after it.
    pub(super) fn end_block(&mut self, cx: &mut Cx<'_>, tag: u8, msg: Frame<'_>) {
        match tag {
            be::ERROR_RESPONSE => {
                if let Some(s) = self.script.as_mut() {
                    s.held.clear();
                }
            }
            be::READY_FOR_QUERY => {
                if let Some(s) = self.script.take() {
                    cx.out.to_client.extend_from_slice(&s.held);
                }
                cx.out.release_client();
                cx.out.to_client.extend_from_slice(msg.bytes());
            }
            _ => {}
        }
    }
}

/// Sends a query of the proxy's own whose replies are all hidden.
fn hidden_query(cx: &mut Cx<'_>, sql: &[u8]) {
    step_query(cx, sql, Tag::Hidden);
}

/// Sends a query of a script, its replies followed as `tag` says.
fn step_query(cx: &mut Cx<'_>, sql: &[u8], tag: Tag) {
    fe::write_query(&mut cx.out.to_server, sql);
    cx.out.replies.push(Pending::Simple(Some(tag)));
}
