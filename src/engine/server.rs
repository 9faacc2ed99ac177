//! What each server message does: the login, parameters the session follows, the transaction
//! status, and the reply queue (each reply matched to the message it answers); the guard sees
//! the replies it follows.

use tracing::{debug, trace};

use super::Engine;
use super::guarded;
use super::replies::Pending;
use super::settings::changes_landing;
use crate::events::SessionEvents;
use crate::protocol::{self, Frame, TxStatus, backend as be};

impl Engine {
    /// One complete server message.
    pub(super) fn on_server_message(
        &mut self,
        tag: u8,
        msg: Frame<'_>,
        ev: &dyn SessionEvents,
    ) -> Result<(), String> {
        trace!(tag = %(tag as char), len = msg.bytes().len(), "server message");
        if tag == be::ERROR_RESPONSE
            && matches!(
                be::error_field(msg.body(), b'V').or_else(|| be::error_field(msg.body(), b'S')),
                Some(b"FATAL" | b"PANIC")
            )
        {
            self.link.server_fatal = true;
        }
        match tag {
            be::PARAMETER_STATUS => self.on_parameter_status(msg.body(), ev),
            be::BACKEND_KEY_DATA => {
                if let Some((pid, _)) = protocol::be_i32(msg.body()) {
                    ev.backend_pid(pid);
                }
            }
            be::READY_FOR_QUERY if !self.link.logged_in => {
                self.link.logged_in = true;
                self.link.tx_status = TxStatus::from_ready(msg.body());
                // A client that already said goodbye sends no statement to guard.
                let terminated = self.link.terminated;
                let (guard, mut cx) = self.guard_cx(ev);
                if terminated || !guard.on_login(&mut cx, msg) {
                    self.out.to_client.extend_from_slice(msg.bytes());
                    // Messages sent behind the startup packet go on now.
                    self.out.resume = true;
                }
                return Ok(());
            }
            _ => {}
        }
        if !self.link.logged_in {
            // Authentication, and its failure: the server's own words go on.
            if tag == be::AUTHENTICATION {
                let code = protocol::be_i32(msg.body()).map(|(c, _)| c);
                self.link.auth_asked = code != Some(0);
                // What the client sent meanwhile is its answer.
                self.out.resume |= self.link.auth_asked;
            }
            self.out.to_client.extend_from_slice(msg.bytes());
            return Ok(());
        }
        if tag == be::ERROR_RESPONSE && !self.unflushed.is_empty() {
            // PostgreSQL flushes an error at once, with what it had buffered.
            let held = std::mem::take(&mut self.unflushed);
            self.out.to_client.extend_from_slice(&held);
        }
        if tag == be::ERROR_RESPONSE || !self.answers_unflushed_tail() {
            return self.on_reply(tag, msg, ev);
        }
        // PostgreSQL would never have flushed this reply to a client that left mid-batch,
        // unless an error came after it.
        let mark = self.out.to_client.len();
        self.on_reply(tag, msg, ev)?;
        let added = self.out.to_client.split_off(mark);
        self.unflushed.extend_from_slice(&added);
        Ok(())
    }

    /// True when the server message now arriving answers the tail of a batch the client left
    /// without `Sync` (its end of stream came, all it sent went, no `Flush` of the client's
    /// came after the entry, and no `Sync` or `Query` is awaited any more): only the proxy's
    /// own `Flush` made the server answer it.
    fn answers_unflushed_tail(&self) -> bool {
        self.link.client_gone
            && self.client_in.is_empty()
            && self.out.replies.front_number() >= self.link.flushed_to
            && !self.out.replies.is_empty()
            && self
                .out
                .replies
                .iter()
                .all(|p| !matches!(p, Pending::Sync(_) | Pending::Simple(_)))
    }

    /// A server message once logged in: matched against the reply queue, then seen by the
    /// guard when it follows the entry it answers.
    fn on_reply(&mut self, tag: u8, msg: Frame<'_>, ev: &dyn SessionEvents) -> Result<(), String> {
        if tag == be::ERROR_RESPONSE && self.guard.keeps_statements() {
            self.guard.on_error_with_kept(msg.body());
        }
        match tag {
            be::COMMAND_COMPLETE => {
                let per_tx = self.settings.config.track == crate::config::TrackScope::Transaction;
                self.guard.on_command_complete(msg.body(), per_tx);
                if !self.settings.guards.is_empty()
                    && matches!(msg.body().first(), Some(b'C' | b'A' | b'D'))
                    && changes_landing(be::command_tag(msg.body()))
                {
                    // Told now (for this session's next statement) and again when the
                    // transaction ends (for sessions that resolved before it committed).
                    self.source.catalog_changed();
                    self.link.ddl_in_transaction = true;
                }
            }
            be::ERROR_RESPONSE => self.guard.on_server_error(),
            _ => {}
        }
        let mut release = false;
        let (step, popped) = if tag == be::ERROR_RESPONSE {
            let mut undo = Vec::new();
            let (step, answered, skipping) = self.out.replies.on_error(|p| {
                release |= guarded::held_batch_for(&p);
                undo.extend(guarded::skipped_parse(&p));
            });
            self.link.skipping_until_sync |= skipping;
            for u in undo {
                self.guard.undo_parse(&u, false);
            }
            (step, answered)
        } else {
            self.out.replies.on_message(tag)
        };
        match tag {
            be::COPY_IN_RESPONSE => {
                let front = self.out.replies.front_number();
                self.link.copy_in = !self.link.copy_ended_before.is_some_and(|n| front < n);
                if self.link.copy_in {
                    // A Sync sent right behind the statement, before its CopyInResponse came
                    // (an Execute's own Sync, or a client's pipeline) and before any copy
                    // message, is read by the server in the COPY, which ignores it: it gets
                    // no ReadyForQuery. (One behind copy data may follow a COPY that failed
                    // on that data, and is answered.)
                    let below = self.link.copy_message_at.unwrap_or(u64::MAX);
                    self.out
                        .replies
                        .drop_syncs_behind_front(below, |g| g.is_none());
                }
                self.link.copy_message_at = None;
            }
            be::ERROR_RESPONSE => self.link.copy_in = false,
            _ => {}
        }
        if tag == be::READY_FOR_QUERY {
            self.link.copy_in = false;
            let next = self.out.replies.front_number();
            if self.link.copy_ended_before.is_some_and(|n| next >= n) {
                // Every statement a client's early CopyDone or CopyFail could end was answered.
                self.link.copy_ended_before = None;
            }
            self.link.tx_status = TxStatus::from_ready(msg.body());
            self.link.batch_open = false;
            if self.out.replies.is_empty() {
                self.link.copy_message_at = None;
            }
            if self.link.ddl_in_transaction && self.link.tx_status == TxStatus::Idle {
                self.link.ddl_in_transaction = false;
                self.source.catalog_changed();
            }
            ev.ready_for_query(self.link.tx_status, self.guard.tracked());
        }
        let taken = {
            let (guard, mut cx) = self.guard_cx(ev);
            !guard.guard_ignores(&cx, tag, step, popped.as_ref())
                && guard.guard_server_message(&mut cx, tag, msg, step, popped)?
        };
        if !taken {
            self.out.to_client.extend_from_slice(msg.bytes());
        }
        if release {
            // The statement the batch waited for was skipped after an earlier error: the rest
            // of the batch (up to its Sync) goes on, to be skipped by the server too.
            self.out.release_client();
        }
        if self.link.parse_waits_reply
            && self
                .guard
                .awaited_parse_answered(self.out.replies.is_empty())
        {
            // The Bind or Describe that waited goes, against the statement the server has.
            self.link.parse_waits_reply = false;
            self.out.release_client();
        }
        let ends_in_copy = self.link.copy_in && !self.link.type_byte_sent;
        if self.link.query_waits_replies
            && (self.out.replies.is_empty() || self.link.skipping_until_sync || ends_in_copy)
        {
            // What went before a waiting simple Query answered: it goes as the server will
            // take it (run, skipped up to the Sync after an error, or, during COPY FROM
            // STDIN, the end of the session; once its type byte went ahead, the COPY is
            // over when it goes).
            self.link.query_waits_replies = false;
            self.out.release_client();
        }
        Ok(())
    }

    fn on_parameter_status(&mut self, body: &[u8], ev: &dyn SessionEvents) {
        let Some((name, value)) = be::parameter_status(body) else {
            return;
        };
        let params = &mut self.link.params;
        match name {
            b"client_encoding" => {
                params.client_encoding = String::from_utf8_lossy(value).into_owned()
            }
            b"standard_conforming_strings" => params.standard_conforming_strings = value == b"on",
            b"DateStyle" => params
                .date_style
                .set_date_style(&String::from_utf8_lossy(value)),
            b"TimeZone" => params
                .date_style
                .set_time_zone(&String::from_utf8_lossy(value)),
            b"application_name" => {
                let name = String::from_utf8_lossy(value);
                if self.guard.ident.application_name != name {
                    self.guard.ident.application_name = name.to_string();
                    self.link.scope_changed = true;
                }
                ev.application_name(&name)
            }
            _ => {}
        }
        debug!(
            parameter = %String::from_utf8_lossy(name),
            value = %String::from_utf8_lossy(value),
            "server parameter"
        );
    }
}
