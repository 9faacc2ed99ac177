//! The session engine: the protocol of one client session as a state machine that does no IO.
//!
//! The relay's session loop reads bytes from the sockets into the engine's input buffers, calls
//! [`Engine::process_client`] or [`Engine::process_server`], and writes out what the engine put
//! in its output buffers ([`Engine::to_server`], [`Engine::to_client`]). Between calls the
//! engine may hold the client ([`Engine::wants_client_input`] turns false) while the guard
//! awaits a reply. It knows nothing of sockets, tokio or the admin side: events go to the
//! [`SessionEvents`] the caller passes in, settings come from a [`SettingsSource`].
//!
//! - this file: the engine's state, its public API and the framing of both directions.
//! - [`client`]: what each client message does (forwarded as is, or handed to the guard).
//! - [`server`]: what each server message does (the reply queue, login, transaction status).
//! - [`replies`]: the queue of replies each message sent to the server awaits.
//! - [`guarded`]: the guard: rewrites guarded writes, reads their replies, raises conflicts.
//! - [`settings`]: one config generation, and where the current one is found.

mod client;
pub mod guarded;
pub mod replies;
mod server;
pub mod settings;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::events::{ClientError, SessionEvents};
use crate::protocol::{self, Frame, TxStatus, backend as be, frontend as fe};
pub use guarded::Ident;
use guarded::{Cx, GuardState, Outbox, SessionParams};
pub use settings::{FixedSettings, Settings, SettingsSource};

/// Messages at least this large are streamed when they need no inspection.
const STREAM_THRESHOLD: usize = 64 * 1024;
/// The longest message a server may send (PostgreSQL's own limit for a frame).
const MAX_SERVER_MESSAGE: usize = 0x3fff_ffff;

/// Why the engine cannot go on: which side broke the protocol, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The client sent a frame the proxy refuses; the session ends with FATAL 08P01.
    Client {
        reason: ClientError,
        message: String,
    },
    /// The server sent a malformed frame.
    Server(String),
}

impl Fault {
    fn client(e: protocol::FrameError) -> Fault {
        let reason = match e {
            protocol::FrameError::TooLarge { .. } => ClientError::MessageTooLarge,
            protocol::FrameError::BadLength { .. } => ClientError::Protocol,
        };
        Fault::Client {
            reason,
            message: e.to_string(),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Client { message, .. } => write!(f, "client: {message}"),
            Fault::Server(message) => write!(f, "server: {message}"),
        }
    }
}

/// Moves the rest of a message being streamed from `input` to `output`. Returns true when
/// no part of one is still to come (the next message can be framed).
#[inline]
fn pass_streamed(left: &mut usize, input: &mut BytesMut, output: &mut BytesMut) -> bool {
    if *left > 0 {
        let n = (*left).min(input.len());
        output.extend_from_slice(&input[..n]);
        input.advance(n);
        *left -= n;
    }
    *left == 0
}

/// How many bytes at the front of `buf` are whole messages (up to the first that is cut
/// short, or whose header is malformed: that one is for the server to judge, so it stays).
fn complete_frames(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(header) = buf.get(at..at + 5) {
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if len < 4 {
            return buf.len();
        }
        let end = at + 1 + len as usize;
        if end > buf.len() {
            break;
        }
        at = end;
    }
    at
}

/// Where the session stands with the server: what the last replies said.
#[derive(Debug)]
struct Link {
    /// Transaction status from the last `ReadyForQuery`.
    tx_status: TxStatus,
    logged_in: bool,
    params: SessionParams,
    /// The client sent `Terminate`: the server closing next is the normal end.
    terminated: bool,
    /// An extended-protocol error before the client's `Sync`: the server discards every
    /// message until that `Sync`, so they are relayed as they are and await no reply.
    skipping_until_sync: bool,
    /// Extended-protocol messages were sent since the last `ReadyForQuery`: the server holds
    /// an unfinished batch (an implicit transaction), so the session is not idle.
    batch_open: bool,
    /// The server sent a FATAL error of its own; the proxy adds none after it.
    server_fatal: bool,
    /// Extended-protocol messages went to the server with no `Sync` after them yet.
    unsynced: bool,
    /// A simple `Query` waits for the replies to what went before it (see
    /// `Engine::wait_for_replies`).
    query_waits_replies: bool,
    /// A `Bind` or `Describe` waits for the reply to a `Parse` of its statement's name (see
    /// `Engine::wait_for_parse`).
    parse_waits_reply: bool,
    /// The type byte of the client's next message went to the server ahead of the rest (a
    /// Query sent during COPY FROM STDIN that waits for replies: see
    /// `Engine::wait_for_replies`).
    type_byte_sent: bool,
    /// The server is in COPY IN: the client's copy messages pass even while it is held.
    copy_in: bool,
    /// The client ended a COPY (CopyDone or CopyFail) outside COPY FROM STDIN, when the
    /// reply-queue entries numbered below this one were still awaited: a COPY one of them
    /// starts (its CopyInResponse still to come) is over for the client before it starts.
    /// Outside COPY the server ignores CopyDone and CopyFail, so a later COPY is not.
    copy_ended_before: Option<u64>,
    /// The number the next reply-queue entry had when the client first sent a copy message
    /// the server was not known to await (its CopyInResponse still to come): a `Sync` sent
    /// behind it may follow a COPY that failed on that data.
    copy_message_at: Option<u64>,
    /// The client left mid-batch and a `Flush` went for the replies still awaited.
    eof_flushed: bool,
    /// Bytes the client sent after its `Terminate` (dropped, as the server would never read
    /// them).
    after_terminate: usize,
    /// The client's end of stream came.
    client_gone: bool,
    /// The number of the first reply-queue entry after the client's last `Flush`: the server
    /// flushed what came before it.
    flushed_to: u64,
    /// The server asked for an authentication answer and has not accepted the login yet:
    /// what the client sends now is that answer. Before the server asks, and after it
    /// accepts, other messages wait for the login to end (as PostgreSQL reads them only
    /// after its `ReadyForQuery`).
    auth_asked: bool,
    /// The client sent bytes PostgreSQL ends the session on when it reads them (a type byte
    /// it does not take, a length out of its bounds): they and everything after go to the
    /// server unread, which ends the session as directly.
    unframed: bool,
    /// The [`SettingsSource::catalog_epoch`] the guards were last resolved at.
    catalog_epoch: u64,
    /// The server reported an `application_name` other than the one the session's guards
    /// were scoped for: scoped again at the next boundary.
    scope_changed: bool,
    /// The scoped guard set last reported to the session's events (its address).
    scope_reported: usize,
    /// DDL that may change which relations' writes land in a guarded table ran in the
    /// current transaction.
    ddl_in_transaction: bool,
}

/// One client session's protocol state.
pub struct Engine {
    source: Arc<dyn SettingsSource>,
    settings: Arc<Settings>,
    client_in: BytesMut,
    server_in: BytesMut,
    /// Replies to the tail of a batch the client left without `Sync`, held back as
    /// PostgreSQL's output buffer would hold them (see `Engine::answers_unflushed_tail`).
    unflushed: BytesMut,
    /// Bytes of a message being streamed that are still to come, per direction.
    client_stream_left: usize,
    server_stream_left: usize,
    out: Outbox,
    link: Link,
    guard: GuardState,
}

impl Engine {
    /// A session about to log in: `startup` (the client's startup packet) is the first thing
    /// it sends to the server.
    pub fn new(
        source: Arc<dyn SettingsSource>,
        settings: Arc<Settings>,
        ident: Ident,
        startup: &[u8],
    ) -> Engine {
        let mut out = Outbox {
            to_server: BytesMut::with_capacity(8192),
            to_client: BytesMut::with_capacity(16384),
            ..Outbox::default()
        };
        out.to_server.extend_from_slice(startup);
        let track_limit = settings.config.track_limit;
        let catalog_epoch = source.catalog_epoch();
        let settings = settings.scoped(&ident.application_name, &ident.user);
        Engine {
            source,
            settings,
            client_in: BytesMut::with_capacity(8192),
            server_in: BytesMut::with_capacity(16384),
            unflushed: BytesMut::new(),
            client_stream_left: 0,
            server_stream_left: 0,
            out,
            link: Link {
                tx_status: TxStatus::Idle,
                logged_in: false,
                params: SessionParams::default(),
                terminated: false,
                skipping_until_sync: false,
                batch_open: false,
                server_fatal: false,
                unsynced: false,
                query_waits_replies: false,
                parse_waits_reply: false,
                copy_in: false,
                type_byte_sent: false,
                copy_ended_before: None,
                copy_message_at: None,
                eof_flushed: false,
                after_terminate: 0,
                unframed: false,
                auth_asked: false,
                client_gone: false,
                flushed_to: 0,
                catalog_epoch,
                ddl_in_transaction: false,
                scope_changed: false,
                scope_reported: 0,
            },
            guard: GuardState::new(ident, track_limit),
        }
    }

    /// The settings this session follows now.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// Where bytes read from the client go; then call [`Engine::process_client`].
    pub fn client_input(&mut self) -> &mut BytesMut {
        &mut self.client_in
    }

    /// Where bytes read from the server go; then call [`Engine::process_server`].
    pub fn server_input(&mut self) -> &mut BytesMut {
        &mut self.server_in
    }

    /// Bytes for the server, in order: write them and `advance` past what was written.
    pub fn to_server(&mut self) -> &mut BytesMut {
        &mut self.out.to_server
    }

    /// Bytes for the client, in order: write them and `advance` past what was written.
    pub fn to_client(&mut self) -> &mut BytesMut {
        &mut self.out.to_client
    }

    /// False while the guard holds the client (it awaits a reply before the client's next
    /// message may go), or when an unfinished client message already fills the input.
    pub fn wants_client_input(&self) -> bool {
        !self.out.hold_client && self.client_in.len() < self.settings.config.max_message_size + 5
    }

    /// True while the guard holds the client's messages back (they are read, not handled).
    pub fn holds_client(&self) -> bool {
        self.out.hold_client
    }

    /// Says goodbye to the server the way the client did, which closed its side without a
    /// `Terminate`: the relay ends the server's stream too, and PostgreSQL reads that end as
    /// directly (during COPY FROM STDIN: "unexpected EOF on client connection with an open
    /// transaction"). Nothing the client sends after it goes.
    pub fn close_server(&mut self) {
        self.link.terminated = true;
    }

    /// True once the server accepted the login.
    pub fn logged_in(&self) -> bool {
        self.link.logged_in
    }

    /// True when the client sent `Terminate`.
    pub fn terminated(&self) -> bool {
        self.link.terminated
    }

    /// True when the client sent bytes after its `Terminate` (PostgreSQL closes such a
    /// connection with a reset: it never read them).
    pub fn bytes_after_terminate(&self) -> bool {
        self.link.after_terminate > 0
    }

    /// After the client closed its side: true once nothing the client sent is still to go to
    /// the server and the guard awaits nothing of its own, so the server connection can be
    /// closed the way a client closes it (`Terminate`, then end of stream). The server then
    /// answers what it was sent, and ends any transaction the client left open.
    pub fn may_close_server(&self) -> bool {
        self.link.logged_in
            && !self.link.unframed
            && !self.out.hold_client
            && self.client_in.is_empty()
            && self.out.to_server.is_empty()
            && self.client_stream_left == 0
            && self
                .out
                .replies
                .iter()
                .all(|p| p.guard().is_none_or(|g| g.is_none()))
    }

    /// True when the server sent a FATAL error of its own.
    pub fn server_fatal(&self) -> bool {
        self.link.server_fatal
    }

    /// True once the client sent bytes the server ends the session on (see [`Link::unframed`]):
    /// how the session ends is the server's to say, and the proxy adds nothing.
    pub fn client_unframed(&self) -> bool {
        self.link.unframed
    }

    /// True while the client's next message waits for the login to end: messages sent behind
    /// the startup packet go to the server once the login (and the guard's own catalog
    /// queries) ended, so their replies follow the login's, as directly. An answer to an
    /// authentication request, and a `Terminate`, go at once.
    fn waits_for_login(&self) -> bool {
        !self.link.logged_in
            && !self.link.auth_asked
            && !matches!(
                self.client_in.first(),
                None | Some(&fe::PASSWORD | &fe::TERMINATE)
            )
    }

    /// True when the client's next bytes are ones PostgreSQL ends the session on as soon as
    /// it reads them: a type byte it takes from no logged-in client (during COPY FROM STDIN
    /// too, with an error before its FATAL), decided on that byte alone, or a length below 4
    /// or above the type's limit ([`fe::length_limit`]).
    fn ends_the_server_session(&self) -> bool {
        let Some(&tag) = self.client_in.first() else {
            return false;
        };
        if !self.link.logged_in {
            return false;
        }
        // An authentication answer is no message of a session that logged in.
        let Some(limit) = fe::length_limit(tag).filter(|_| tag != fe::PASSWORD) else {
            return true;
        };
        if self.link.copy_in && !fe::is_copy_message(tag) && !matches!(tag, fe::FLUSH | fe::SYNC) {
            // Ends the session there too, but only once the server reads it in COPY: the
            // COPY may fail on its own data first (see `Engine::handled_before_dispatch`).
            return false;
        }
        let Some(len) = self.client_in.get(1..5) else {
            return false;
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        len < 4 || len as usize > limit
    }

    /// True while a large server message is streamed and only part of it went to the client.
    pub fn server_message_unfinished(&self) -> bool {
        self.server_stream_left > 0
    }

    /// True while a large client message is streamed and only part of it went to the server.
    pub fn client_message_unfinished(&self) -> bool {
        self.client_stream_left > 0
    }

    /// The client closed its side: the start of a message that will never be finished is
    /// dropped; complete messages still waiting (held by the guard, or for the login) go on
    /// in their turn.
    ///
    /// The server answers an extended batch only at its `Sync` or a `Flush`: a client that
    /// leaves mid-batch sent neither, so one `Flush` asks for the replies the guard may still
    /// await before the server connection can close ([`Engine::may_close_server`]).
    pub fn client_closed(&mut self) {
        self.link.client_gone = true;
        if self.client_stream_left > 0 {
            // A streamed message cut short: what went of it cannot be taken back.
            self.client_in.clear();
        } else {
            self.settle_cut_short();
        }
        if !self.link.eof_flushed
            && self.link.logged_in
            && !self.link.terminated
            && !self.link.type_byte_sent
            && self.link.unsynced
            && !self.out.replies.is_empty()
        {
            self.link.eof_flushed = true;
            fe::write_simple(&mut self.out.to_server, fe::FLUSH);
        }
    }

    /// After the client's end, a message it never finished that is next to be handled (not
    /// held, the login over): PostgreSQL judges some by their type byte alone (one it takes
    /// from no client, or, during COPY FROM STDIN, one COPY does not take), or by their
    /// length, and ends the session in its own words; those bytes go to it unread. Any other
    /// is dropped, as the server drops what ends at the client's end of stream.
    fn settle_cut_short(&mut self) {
        let waiting = (self.out.hold_client && !self.link.copy_in)
            || self.waits_for_login()
            || self.link.terminated
            || self.link.unframed;
        if !self.link.client_gone
            || waiting
            || self.client_in.is_empty()
            || complete_frames(&self.client_in) > 0
        {
            return;
        }
        let tag = self.client_in[0];
        let judged_by_copy =
            self.link.copy_in && !fe::is_copy_message(tag) && !matches!(tag, fe::FLUSH | fe::SYNC);
        if self.link.logged_in && (judged_by_copy || self.ends_the_server_session()) {
            self.link.unframed = true;
            self.out.to_server.extend_from_slice(&self.client_in);
        }
        self.client_in.clear();
    }

    /// Nothing sent that awaits a reply, nothing left to send either way. A login under way
    /// awaits the server's answer (what a client sent behind its startup packet is answered
    /// after it), unless the server asked the client for a password it can no longer send.
    pub fn nothing_in_flight(&self) -> bool {
        (self.link.logged_in || self.link.auth_asked || self.link.terminated)
            // After bytes the server ends the session on, the server's end is awaited.
            && !self.link.unframed
            && self.out.replies.is_empty()
            && self.client_in.is_empty()
            && self.out.to_server.is_empty()
            && self.out.to_client.is_empty()
    }

    /// Idle: logged in, outside any transaction and any unfinished batch, nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.link.logged_in
            && self.link.tx_status == TxStatus::Idle
            && !self.link.batch_open
            && self.nothing_in_flight()
    }

    /// Number of row versions this session tracks.
    pub fn tracked(&self) -> usize {
        self.guard.tracked()
    }

    /// Frames and handles every complete client message received. An `Err` is a protocol
    /// violation: the session must end.
    pub fn process_client(&mut self, ev: &dyn SessionEvents) -> Result<(), Fault> {
        let max = self.settings.config.max_message_size;
        loop {
            if !pass_streamed(
                &mut self.client_stream_left,
                &mut self.client_in,
                &mut self.out.to_server,
            ) {
                return Ok(());
            }
            if self.link.terminated {
                // PostgreSQL reads nothing after a Terminate.
                self.link.after_terminate += self.client_in.len();
                self.client_in.clear();
                return Ok(());
            }
            // Held messages wait unread (even a malformed one: what comes before it runs
            // first, as on the server), except the client's copy data while the server
            // awaits it.
            if self.out.hold_client && !self.link.copy_in {
                return Ok(());
            }
            if self.waits_for_login() {
                return Ok(());
            }
            if self.link.unframed || self.ends_the_server_session() {
                self.link.unframed = true;
                self.out.to_server.extend_from_slice(&self.client_in);
                self.client_in.clear();
                return Ok(());
            }
            let header = match protocol::peek_header(&self.client_in, max) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    self.type_byte_ahead_in_copy();
                    self.settle_cut_short();
                    return Ok(());
                }
                Err(e) => return Err(Fault::client(e)),
            };
            // During COPY FROM STDIN the client's copy messages pass even while it is held:
            // what the guard awaits comes after the COPY, which waits for them.
            if self.out.hold_client && !fe::is_copy_message(header.tag) {
                return Ok(());
            }
            if self.client_in.len() < header.size {
                if self.link.client_gone {
                    self.settle_cut_short();
                    return Ok(());
                }
                if header.tag == fe::COPY_DATA && header.size >= STREAM_THRESHOLD {
                    self.client_stream_left = header.size;
                    continue;
                }
                self.type_byte_ahead_in_copy();
                self.client_in.reserve(header.size - self.client_in.len());
                return Ok(());
            }
            let msg = self.client_in.split_to(header.size);
            // After the client's end, a message sent on may need its own Flush.
            self.link.eof_flushed = false;
            self.on_client_message(header.tag, Frame::new(&msg), ev)
                .map_err(|message| Fault::Client {
                    reason: ClientError::Protocol,
                    message,
                })?;
        }
    }

    /// During COPY FROM STDIN, the start of a message COPY refuses whose rest has not come:
    /// PostgreSQL judges it on its type byte alone (and ends the session, unless the COPY
    /// failed on its data first), without waiting for the rest. That byte goes ahead now; the
    /// message follows once whole (see `Engine::after_type_byte`).
    fn type_byte_ahead_in_copy(&mut self) {
        let Some(&tag) = self.client_in.first() else {
            return;
        };
        if self.link.copy_in
            && !self.link.type_byte_sent
            && !self.link.terminated
            && !fe::is_copy_message(tag)
            && !matches!(tag, fe::FLUSH | fe::SYNC)
            && complete_frames(&self.client_in) == 0
        {
            self.out.to_server.extend_from_slice(&[tag]);
            self.link.type_byte_sent = true;
        }
    }

    /// Frames and handles every complete server message received. An `Err` is a protocol
    /// violation (by the server, or by the client whose held messages went on).
    pub fn process_server(&mut self, ev: &dyn SessionEvents) -> Result<(), Fault> {
        loop {
            if !pass_streamed(
                &mut self.server_stream_left,
                &mut self.server_in,
                &mut self.out.to_client,
            ) {
                return Ok(());
            }
            let header = match protocol::peek_header(&self.server_in, MAX_SERVER_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Fault::Server(format!("malformed message: {e}"))),
            };
            if self.server_in.len() < header.size {
                let streamable = matches!(header.tag, be::DATA_ROW | be::COPY_DATA)
                    && header.size >= STREAM_THRESHOLD
                    && !self.guard.inspects_rows(self.out.replies.front());
                if streamable {
                    self.server_stream_left = header.size;
                    continue;
                }
                self.server_in.reserve(header.size - self.server_in.len());
                return Ok(());
            }
            let msg = self.server_in.split_to(header.size);
            // A COPY FROM STDIN starting: what the client sent meanwhile is looked at again.
            let copy_before = self.link.copy_in;
            self.on_server_message(header.tag, Frame::new(&msg), ev)
                .map_err(Fault::Server)?;
            if let Some(guards) = self.out.guards.take() {
                self.settings = Arc::new(Settings {
                    config: self.settings.config.clone(),
                    guards,
                    generation: self.settings.generation,
                });
            }
            let copy_started = !copy_before && self.link.copy_in;
            if (std::mem::take(&mut self.out.resume) || copy_started) && !self.out.hold_client {
                // The guard released the client: what it sent meanwhile goes on now.
                self.process_client(ev)?;
            }
        }
    }

    /// The guard and its view of the session, for one call into the guard.
    fn guard_cx<'a>(&'a mut self, ev: &'a dyn SessionEvents) -> (&'a mut GuardState, Cx<'a>) {
        (
            &mut self.guard,
            Cx {
                out: &mut self.out,
                settings: &self.settings,
                tx_status: self.link.tx_status,
                params: &self.link.params,
                lookahead: &self.client_in,
                events: ev,
            },
        )
    }

    /// Picks up a reloaded config before a client's `Query`, `Parse` or `Bind` (one atomic
    /// load when nothing changed). Returns true when the guard just sent catalog queries that
    /// the client's message must wait for.
    fn refresh_settings(&mut self, at_boundary: bool, ev: &dyn SessionEvents) -> bool {
        if self.source.generation() != self.settings.generation {
            self.settings = self.scoped(self.source.settings());
            self.link.catalog_epoch = self.source.catalog_epoch();
            self.link.scope_changed = false;
            let (guard, mut cx) = self.guard_cx(ev);
            guard.on_new_settings(&mut cx);
        } else if std::mem::take(&mut self.link.scope_changed)
            && self.settings.guards.config_set_id()
                != self.scoped(self.settings.clone()).guards.config_set_id()
        {
            // `SET application_name` moved the session into another scope: its guards are
            // resolved again as after a reload.
            self.settings = self.scoped(self.source.settings());
            let (guard, mut cx) = self.guard_cx(ev);
            guard.on_new_settings(&mut cx);
        } else if !self.settings.guards.is_empty()
            && self.source.catalog_epoch() != self.link.catalog_epoch
        {
            // DDL (here or in another session) may have made writes of a new relation land
            // in a guarded table: resolved again as after a reload.
            self.link.catalog_epoch = self.source.catalog_epoch();
            let (guard, mut cx) = self.guard_cx(ev);
            guard.on_new_settings(&mut cx);
        }
        let set = self.settings.guards.config_set_id();
        if self.link.scope_reported != set {
            self.link.scope_reported = set;
            ev.guards_in_force(&self.settings.guards.modes_text());
        }
        let (guard, mut cx) = self.guard_cx(ev);
        guard.resolve_at_boundary(&mut cx, at_boundary)
    }

    /// `settings` as they apply to this session's user and `application_name`.
    fn scoped(&self, settings: Arc<Settings>) -> Arc<Settings> {
        let ident = &self.guard.ident;
        settings.scoped(&ident.application_name, &ident.user)
    }
}
