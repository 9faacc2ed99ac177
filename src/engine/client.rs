//! What each client message does: forwarded as is (the common case, with the reply it awaits
//! queued), or handed to the guard when it may touch a guarded table.

use crate::protocol::Frame;
use bytes::BytesMut;
use tracing::trace;

use super::Engine;
use super::replies::Pending;
use crate::events::SessionEvents;
use crate::protocol::frontend as fe;

impl Engine {
    /// One complete client message.
    pub(super) fn on_client_message(
        &mut self,
        tag: u8,
        msg: Frame<'_>,
        ev: &dyn SessionEvents,
    ) -> Result<(), String> {
        trace!(tag = %(tag as char), len = msg.bytes().len(), "client message");
        if self.link.type_byte_sent {
            return self.after_type_byte(tag, |e| e.on_client_message_now(tag, msg, ev));
        }
        self.on_client_message_now(tag, msg, ev)
    }

    fn on_client_message_now(
        &mut self,
        tag: u8,
        msg: Frame<'_>,
        ev: &dyn SessionEvents,
    ) -> Result<(), String> {
        if self.handled_before_dispatch(tag, msg, ev) {
            return Ok(());
        }
        self.dispatch(tag, msg, ev)
    }

    /// What a message meets before its kind is looked at: a goodbye, the login, a batch the
    /// server skips, a Query that waits for what runs before it, a reload's catalog queries,
    /// the start of an extended batch. Returns true when the message was taken care of.
    fn handled_before_dispatch(&mut self, tag: u8, msg: Frame<'_>, ev: &dyn SessionEvents) -> bool {
        if tag == fe::TERMINATE {
            // Also during login (a client may send its startup and Terminate in one write):
            // the server closing next is the normal end, and nothing after it is sent.
            self.link.terminated = true;
            self.out.to_server.extend_from_slice(msg.bytes());
            return true;
        }
        if !self.link.logged_in {
            // Authentication messages go straight through.
            self.out.to_server.extend_from_slice(msg.bytes());
            return true;
        }
        if self.link.copy_in && matches!(tag, fe::FLUSH | fe::SYNC) {
            // During COPY FROM STDIN the server ignores Flush and Sync: they go as they are,
            // awaiting no reply.
            self.out.to_server.extend_from_slice(msg.bytes());
            return true;
        }
        if self.link.skipping_until_sync {
            self.out.to_server.extend_from_slice(msg.bytes());
            if tag == fe::SYNC {
                self.link.skipping_until_sync = false;
                self.link.unsynced = false;
                self.out.replies.push(Pending::Sync(None));
            }
            return true;
        }
        // Any other message during COPY FROM STDIN ends the session if the server reads it
        // there ("unexpected message type"), or runs as usual if the COPY failed on its own
        // data first: it is handled as usual (a Query that must wait sends its type byte
        // ahead, see `Engine::wait_for_replies`).
        if matches!(tag, fe::QUERY | fe::FUNCTION_CALL) && self.wait_for_replies(tag, msg) {
            return true;
        }
        if matches!(tag, fe::BIND | fe::DESCRIBE) && self.wait_for_parse(tag, msg) {
            return true;
        }
        // A type byte sent ahead (see `Engine::wait_for_replies`) must be followed by the
        // rest of its message: a reload is picked up at the next one.
        if !self.link.copy_in
            && !self.link.type_byte_sent
            && matches!(tag, fe::QUERY | fe::PARSE | fe::BIND)
            && self.refresh_settings(!self.link.batch_open, ev)
        {
            // The proxy's catalog queries after a reload go first; the message waits for them.
            self.put_back(msg);
            return true;
        }
        if matches!(
            tag,
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE | fe::FLUSH
        ) {
            // (Not behind a type byte sent ahead: its message must be the next to go.)
            if !self.link.batch_open && !self.link.type_byte_sent && self.guard.has_deallocated() {
                let (guard, mut cx) = self.guard_cx(ev);
                guard.close_deallocated(&mut cx);
            }
            self.link.batch_open = true;
            self.link.unsynced = true;
        }
        false
    }

    /// A message by its kind: forwarded as it is, or handed to the guard.
    fn dispatch(&mut self, tag: u8, msg: Frame<'_>, ev: &dyn SessionEvents) -> Result<(), String> {
        match tag {
            fe::QUERY => {
                // A Query ends any implicit transaction of the extended messages before it.
                self.link.unsynced = false;
                ev.statement();
                let (guard, mut cx) = self.guard_cx(ev);
                if !guard.guard_query(&mut cx, msg)? {
                    self.forward(msg, Pending::Simple(None));
                }
            }
            fe::PARSE => {
                let (guard, mut cx) = self.guard_cx(ev);
                if !guard.guard_parse(&mut cx, msg)? {
                    self.forward(msg, Pending::Parse(None));
                }
            }
            fe::BIND => {
                self.guard.tx_bind(msg.body());
                let (guard, mut cx) = self.guard_cx(ev);
                if !guard.guard_bind(&mut cx, msg)? {
                    self.forward(msg, Pending::Bind(None));
                }
            }
            fe::DESCRIBE => {
                let (guard, mut cx) = self.guard_cx(ev);
                let (tagged, sent) = guard.guard_describe(&mut cx, msg.body());
                if !sent {
                    self.out.to_server.extend_from_slice(msg.bytes());
                }
                match fe::target(msg.body()) {
                    Some((b'S', _)) => self.out.replies.push(Pending::DescribeStatement(tagged)),
                    _ => self.out.replies.push(Pending::DescribePortal(tagged)),
                }
            }
            fe::EXECUTE => {
                ev.statement();
                self.on_execute(msg, ev);
            }
            fe::CLOSE => {
                if let Some((kind, name)) = fe::target(msg.body()) {
                    self.guard.tx_close(kind, name);
                }
                let (guard, mut cx) = self.guard_cx(ev);
                guard.guard_close(&mut cx, msg.body());
                self.forward(msg, Pending::Close(None));
            }
            fe::SYNC => {
                self.link.unsynced = false;
                self.forward(msg, Pending::Sync(None));
                if self.guard.on_sync_sent() {
                    // What follows the Sync waits for the checked write's row count.
                    self.out.hold_client = true;
                }
            }
            fe::FUNCTION_CALL => {
                self.link.unsynced = false;
                ev.statement();
                self.forward(msg, Pending::Simple(None));
            }
            fe::COPY_DONE | fe::COPY_FAIL => {
                if !self.link.copy_in {
                    self.note_copy_message();
                }
                if !self.link.copy_in && !self.out.replies.is_empty() {
                    // Sent ahead of the server's CopyInResponse: a COPY that what is awaited
                    // starts is over for the client before it starts.
                    self.link.copy_ended_before = Some(self.out.replies.next_number());
                }
                self.link.copy_in = false;
                self.out.to_server.extend_from_slice(msg.bytes());
            }
            fe::FLUSH => {
                self.link.flushed_to = self.out.replies.next_number();
                self.out.to_server.extend_from_slice(msg.bytes());
            }
            fe::COPY_DATA if !self.link.copy_in => {
                self.note_copy_message();
                self.out.to_server.extend_from_slice(msg.bytes());
            }
            _ => {
                // COPY data from the client, and anything newer than this proxy.
                self.out.to_server.extend_from_slice(msg.bytes());
            }
        }
        Ok(())
    }

    /// True when a simple `Query` (or `FunctionCall`) must wait for the replies to what went
    /// before it, because the server may not take it as the proxy would plan it now:
    /// - behind extended messages with no `Sync` yet, the server runs it only if none of them
    ///   failed (after an error it skips everything up to the `Sync`, the `Query` too);
    /// - a `Query` the guard may rewrite is planned against the session's transaction status,
    ///   known only once the statements before it answered (a script the proxy wraps in a
    ///   transaction of its own must never wrap one the client opened just before).
    ///
    /// It then waits (put back in front of the client's input; a `Flush` asks for the
    /// replies) and goes once they are in, as the server will take it.
    fn wait_for_replies(&mut self, tag: u8, msg: Frame<'_>) -> bool {
        if self.out.replies.is_empty() {
            return false;
        }
        let wait = self.link.unsynced || (tag == fe::QUERY && self.guard_plans(msg));
        if !wait {
            return false;
        }
        if !self.link.type_byte_sent {
            // (Behind a type byte sent ahead, the server reads the rest of that message.)
            fe::write_simple(&mut self.out.to_server, fe::FLUSH);
        }
        if self.link.copy_in && !self.link.type_byte_sent {
            // The server may be in the COPY, waiting for copy data: it must see this
            // message's type byte now, to end the session on it as directly. If the COPY
            // failed first, it waits for the rest, which goes once the replies are in.
            self.out.to_server.extend_from_slice(&[tag]);
            self.link.type_byte_sent = true;
        }
        self.link.query_waits_replies = true;
        self.out.hold_client = true;
        self.put_back(msg);
        true
    }

    /// True when a `Bind` or `Describe` of a statement must wait for the reply to a `Parse` of
    /// its name in an earlier batch (see `GuardState::waits_for_parse`): it is put back in
    /// front of the client's input and goes once that reply is in, planned against the
    /// statement the server has then. That `Parse` has a sync point behind it, so the server
    /// answers it without a `Flush`.
    fn wait_for_parse(&mut self, tag: u8, msg: Frame<'_>) -> bool {
        if self.out.replies.is_empty()
            || self.link.type_byte_sent
            || !self.guard.parses_unanswered()
        {
            return false;
        }
        let name = match tag {
            fe::BIND => fe::bind_names(msg.body()).map(|(_, statement)| statement),
            _ => fe::target(msg.body())
                .filter(|(kind, _)| *kind == b'S')
                .map(|(_, name)| name),
        };
        let Some(name) = name else {
            return false;
        };
        if !self
            .guard
            .waits_for_parse(name, self.out.replies.sync_points())
        {
            return false;
        }
        self.link.parse_waits_reply = true;
        self.out.hold_client = true;
        self.put_back(msg);
        true
    }

    /// Handles a message whose type byte went to the server ahead of it: what the handling
    /// sends for it starts with that byte, sent once. Returns the handling's result.
    pub(super) fn after_type_byte(
        &mut self,
        tag: u8,
        handle: impl FnOnce(&mut Engine) -> Result<(), String>,
    ) -> Result<(), String> {
        let mark = self.out.to_server.len();
        // Set while it is handled: nothing of the proxy's may go between the byte and the
        // rest (no Flush, no catalog query, no Close).
        let result = handle(self);
        if self.out.to_server.len() == mark {
            // Waits again (put back): the byte is still ahead of it.
        } else if self.out.to_server[mark] == tag {
            self.link.type_byte_sent = false;
            let rest = self.out.to_server.split_off(mark + 1);
            self.out.to_server.truncate(mark);
            self.out.to_server.extend_from_slice(&rest);
        } else {
            return Err(format!(
                "the proxy sent a message other than the one whose type byte went ahead ({})",
                tag as char
            ));
        }
        result
    }

    /// True for a `Query` the guard may rewrite, or that changes what the session knows: the
    /// guard plans it against the transaction status the statements before it leave.
    fn guard_plans(&self, msg: Frame<'_>) -> bool {
        !self.settings.guards.is_empty()
            && fe::query_text(msg.body()).is_some_and(|sql| {
                let found = self.settings.guards.prefilter.scan(sql);
                found.name || found.session
            })
    }

    /// A copy message sent before the server said it is in COPY: where it went in the reply
    /// queue (see `Link::copy_message_at`).
    fn note_copy_message(&mut self) {
        if self.link.copy_message_at.is_none() && !self.out.replies.is_empty() {
            self.link.copy_message_at = Some(self.out.replies.next_number());
        }
    }

    /// Puts a message back in front of the client's input, to be handled again later.
    fn put_back(&mut self, msg: Frame<'_>) {
        let mut again = BytesMut::with_capacity(msg.bytes().len() + self.client_in.len());
        again.extend_from_slice(msg.bytes());
        again.extend_from_slice(&self.client_in);
        self.client_in = again;
    }

    /// Sends a client message as it is, awaiting `reply`.
    #[inline]
    fn forward(&mut self, msg: Frame<'_>, reply: Pending<super::guarded::StmtTag>) {
        self.out.to_server.extend_from_slice(msg.bytes());
        self.out.replies.push(reply);
    }

    /// An `Execute`: as it is, unless the guard follows its portal.
    fn on_execute(&mut self, msg: Frame<'_>, ev: &dyn SessionEvents) {
        let (guard, mut cx) = self.guard_cx(ev);
        guard.tx_execute(&cx, msg.body());
        let tagged = guard.guard_execute(&mut cx, msg.body());
        // The client expects no rows (it may ask for at most one, as pgjdbc does), so the
        // proxy's own rows must not suspend the portal before its row count.
        let unlimited = tagged
            .as_ref()
            .filter(|t| t.hides_all_rows())
            .and_then(|_| fe::execute(msg.body()))
            .filter(|&(_, limit)| limit != 0);
        match unlimited {
            Some((portal, _)) => fe::write_execute(&mut self.out.to_server, portal, 0),
            None => self.out.to_server.extend_from_slice(msg.bytes()),
        }
        let hold = tagged.as_ref().is_some_and(|t| t.holds_batch());
        let quiet = tagged.as_ref().is_some_and(|t| t.quiet_without_rows());
        self.out.replies.push(Pending::Execute(tagged));
        if hold {
            let (guard, mut cx) = self.guard_cx(ev);
            if !guard.check_after_sync(&mut cx, quiet) {
                // The row count decides whether the batch goes on: get it now.
                fe::write_simple(&mut self.out.to_server, fe::FLUSH);
                self.out.hold_client = true;
            }
        }
    }
}
