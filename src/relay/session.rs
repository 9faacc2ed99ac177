//! One client session: a single task that relays messages between the client and its own
//! upstream connection.
//!
//! Both directions run in one hand-written poll loop over the four socket halves, with bounded
//! output buffers (a side that is not read stops being read from, so neither peer can make
//! the proxy buffer without limit). Messages are framed, their raw bytes forwarded; only the
//! kinds the session must understand are decoded. Large `DataRow`/`CopyData` messages that
//! need no inspection are streamed through without being buffered whole.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;
use tracing::{debug, info, trace, warn};

use super::guarded::{GuardState, StmtTag};
use super::replies::{Pending, Replies};
use super::{Settings, Shared};
use crate::admin::SessionHandle;
use crate::protocol::{self, backend as be, frontend as fe};

/// Output is flushed before more input is read once a buffer holds this much.
const HIGH_WATER: usize = 256 * 1024;
/// Messages at least this large are streamed when they need no inspection.
const STREAM_THRESHOLD: usize = 64 * 1024;
/// One batch of messages in this many is timed for the `added_latency` histogram.
const LATENCY_SAMPLE: u32 = 16;

/// The session's two sockets (as read and write halves) and the relay's own I/O state.
struct Io<'w, CR, CW, SR, SW> {
    client_r: CR,
    client_w: &'w mut CW,
    server_r: SR,
    server_w: &'w mut SW,
    /// Everything for the client was written; a flush is still owed (TLS).
    client_flush: bool,
    /// Until login completes (dropped then, so no timer stays armed).
    login_timeout: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    ClientClosed,
    ClientError(String),
    ServerClosed,
    ServerError(String),
    Shutdown,
    LoginTimeout,
}

/// The relay state of one session.
pub struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) settings: Arc<Settings>,
    pub(super) client_in: BytesMut,
    pub(super) server_in: BytesMut,
    pub(super) to_server: BytesMut,
    pub(super) to_client: BytesMut,
    /// Bytes of a client message being streamed that are still to come.
    client_stream_left: usize,
    server_stream_left: usize,
    pub(super) replies: Replies<StmtTag>,
    /// Transaction status from the last `ReadyForQuery`.
    pub(super) tx_status: u8,
    pub(super) logged_in: bool,
    /// Client messages stay unread in `client_in` while set (the guard awaits a reply).
    pub(super) hold_client: bool,
    pub(super) guard: GuardState,
    pub(super) params: SessionParams,
    /// This session in the registry the admin console lists.
    pub(super) handle: SessionHandle,
    draining: bool,
    /// The client sent `Terminate`: the server closing next is the normal end.
    terminated: bool,
    /// An extended-protocol error before the client's `Sync`: the server discards every
    /// message until that `Sync`, so they are relayed as they are and await no reply.
    skipping_until_sync: bool,
    /// Extended-protocol messages were sent since the last `ReadyForQuery`: the server holds
    /// an unfinished batch (an implicit transaction), so the session is not idle.
    batch_open: bool,
    /// The client closed its side: what it sent still runs and its replies are still
    /// delivered, then the session ends.
    client_eof: bool,
    /// The server sent a FATAL error of its own; the proxy adds none after it.
    server_fatal: bool,
    /// Batches of messages read so far (for sampling `added_latency`).
    batches: u32,
}

/// Server parameters the session follows (from `ParameterStatus`).
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub client_encoding: String,
    pub standard_conforming_strings: bool,
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        settings: Arc<Settings>,
        guard: GuardState,
        handle: SessionHandle,
    ) -> Session {
        Session {
            shared,
            settings,
            client_in: BytesMut::with_capacity(8192),
            server_in: BytesMut::with_capacity(16384),
            to_server: BytesMut::with_capacity(8192),
            to_client: BytesMut::with_capacity(16384),
            client_stream_left: 0,
            server_stream_left: 0,
            replies: Replies::default(),
            tx_status: b'I',
            logged_in: false,
            hold_client: false,
            guard,
            params: SessionParams {
                client_encoding: "UTF8".into(),
                standard_conforming_strings: true,
            },
            handle,
            draining: false,
            terminated: false,
            skipping_until_sync: false,
            batch_open: false,
            client_eof: false,
            server_fatal: false,
            batches: 0,
        }
    }

    /// Relays until either side closes. The startup packet must already be in `to_server`.
    pub async fn run<CR, CW, SR, SW>(
        &mut self,
        client_r: CR,
        mut client_w: CW,
        server_r: SR,
        mut server_w: SW,
    ) -> End
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        SR: AsyncRead + Unpin,
        SW: AsyncWrite + Unpin,
    {
        let mut io = Io {
            client_r,
            client_w: &mut client_w,
            server_r,
            server_w: &mut server_w,
            client_flush: false,
            login_timeout: Some(Box::pin(tokio::time::sleep(
                self.settings.config.client_login_timeout,
            ))),
        };
        let end = std::future::poll_fn(|cx| self.poll_relay(cx, &mut io)).await;
        self.finish(&end, &mut client_w, &mut server_w).await;
        end
    }

    /// One turn of the relay: moves bytes both ways until nothing more can be done without
    /// waiting. Each socket is polled again only while it makes progress: one that returned
    /// `Pending` has the task's waker and wakes it when it is ready.
    fn poll_relay<CR, CW, SR, SW>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Io<'_, CR, CW, SR, SW>,
    ) -> Poll<End>
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        SR: AsyncRead + Unpin,
        SW: AsyncWrite + Unpin,
    {
        let (mut server_r_waits, mut client_r_waits) = (false, false);
        let (mut server_w_waits, mut client_w_waits) = (false, false);
        loop {
            if self.client_eof {
                // Every complete message was handled (unless the guard holds some back): what
                // is left is the start of one that will never be finished.
                if !self.hold_client {
                    self.client_in.clear();
                    self.client_stream_left = 0;
                }
                if self.nothing_in_flight() {
                    return Poll::Ready(End::ClientClosed);
                }
            }
            if self.draining && self.is_idle() {
                return Poll::Ready(End::Shutdown);
            }
            let mut progress = false;
            // Plain `write` (send), not vectored: one buffer, and the cheaper system call.
            if !self.to_server.is_empty() && !server_w_waits {
                match Pin::new(&mut *io.server_w).poll_write(cx, &self.to_server) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.to_server.advance(n);
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        return Poll::Ready(End::ServerError("the server stopped reading".into()));
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(End::ServerError(format!(
                            "write to server failed: {e}"
                        )));
                    }
                    Poll::Pending => server_w_waits = true,
                }
            }
            if !self.to_client.is_empty() && !client_w_waits {
                match Pin::new(&mut *io.client_w).poll_write(cx, &self.to_client) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.to_client.advance(n);
                        // A TLS stream may keep encrypted bytes until flushed.
                        io.client_flush = self.to_client.is_empty();
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        return Poll::Ready(End::ClientError("the client stopped reading".into()));
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(End::ClientError(format!(
                            "write to client failed: {e}"
                        )));
                    }
                    Poll::Pending => client_w_waits = true,
                }
            }
            if io.client_flush && !client_w_waits {
                match Pin::new(&mut *io.client_w).poll_flush(cx) {
                    Poll::Ready(Ok(())) => io.client_flush = false,
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(End::ClientError(format!(
                            "write to client failed: {e}"
                        )));
                    }
                    Poll::Pending => client_w_waits = true,
                }
            }
            if self.to_client.len() < HIGH_WATER && !server_r_waits {
                match poll_read_buf(Pin::new(&mut io.server_r), cx, &mut self.server_in) {
                    Poll::Ready(Ok(0)) if self.terminated => {
                        return Poll::Ready(End::ClientClosed);
                    }
                    Poll::Ready(Ok(0)) => return Poll::Ready(End::ServerClosed),
                    Poll::Ready(Ok(n)) => {
                        self.shared.metrics_bytes(false, n);
                        let timer = self.latency_sample();
                        if let Err(e) = self.process_server() {
                            return Poll::Ready(End::ServerError(e));
                        }
                        self.latency_done(timer);
                        keep_room(&mut self.server_in);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(End::ServerError(format!(
                            "read from server failed: {e}"
                        )));
                    }
                    Poll::Pending => server_r_waits = true,
                }
            }
            let read_client = !self.client_eof
                && !self.hold_client
                && self.to_server.len() < HIGH_WATER
                && self.client_in.len() < self.settings.config.max_message_size + 5;
            if read_client && !client_r_waits {
                match poll_read_buf(Pin::new(&mut io.client_r), cx, &mut self.client_in) {
                    Poll::Ready(Ok(0)) => {
                        self.client_eof = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.shared.metrics_bytes(true, n);
                        let timer = self.latency_sample();
                        if let Err(e) = self.process_client() {
                            return Poll::Ready(End::ClientError(e));
                        }
                        self.latency_done(timer);
                        keep_room(&mut self.client_in);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(End::ClientError(format!(
                            "read from client failed: {e}"
                        )));
                    }
                    Poll::Pending => client_r_waits = true,
                }
            }
            if progress {
                continue;
            }
            if self.logged_in {
                io.login_timeout = None;
            } else if let Some(t) = &mut io.login_timeout
                && t.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(End::LoginTimeout);
            }
            if !self.draining && self.handle.poll_drain(cx) {
                self.draining = true;
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Starts timing this batch of messages for the `added_latency` histogram, one batch in
    /// [`LATENCY_SAMPLE`] (reading the clock for every batch costs more than the relay work).
    #[inline]
    fn latency_sample(&mut self) -> Option<Instant> {
        self.batches = self.batches.wrapping_add(1);
        self.batches
            .is_multiple_of(LATENCY_SAMPLE)
            .then(Instant::now)
    }

    #[inline]
    fn latency_done(&self, timer: Option<Instant>) {
        if let Some(started) = timer {
            self.shared.metrics_latency(started);
        }
    }

    /// Nothing sent that awaits a reply, nothing left to send either way.
    fn nothing_in_flight(&self) -> bool {
        self.replies.is_empty()
            && self.client_in.is_empty()
            && self.to_server.is_empty()
            && self.to_client.is_empty()
    }

    /// Idle: logged in, outside any transaction and any unfinished batch, nothing in flight.
    fn is_idle(&self) -> bool {
        self.logged_in && self.tx_status == b'I' && !self.batch_open && self.nothing_in_flight()
    }

    /// Says goodbye to both sides as fits the way the session ended.
    async fn finish<CW, SW>(&mut self, end: &End, client_w: &mut CW, server_w: &mut SW)
    where
        CW: AsyncWrite + Unpin,
        SW: AsyncWrite + Unpin,
    {
        let fatal = match end {
            // The server said why itself.
            End::ServerClosed if self.server_fatal => None,
            End::ServerClosed => Some((
                "08006",
                "the upstream server closed the connection unexpectedly; any open transaction was rolled back".to_string(),
            )),
            End::ServerError(e) => Some(("08006", format!("lost the upstream server: {e}"))),
            End::ClientError(e) if e.starts_with("protocol:") => {
                Some(("08P01", e.trim_start_matches("protocol: ").to_string()))
            }
            End::LoginTimeout => Some((
                "08006",
                format!(
                    "login not completed within client_login_timeout ({:?})",
                    self.settings.config.client_login_timeout
                ),
            )),
            End::Shutdown => Some((
                "57P01",
                "terminating connection: optlock is shutting down".to_string(),
            )),
            _ => None,
        };
        if matches!(end, End::ServerClosed | End::ServerError(_)) {
            // Deliver what the server said before it went away.
            let _ = client_w.write_all(&self.to_client).await;
        } else {
            // The proxy ends the session: what the client sent goes first, then a Terminate,
            // which is cleaner than a dropped socket.
            if !self.to_server.is_empty() && self.client_stream_left == 0 {
                let _ = server_w.write_all(&self.to_server).await;
            }
            let _ = server_w.write_all(&[fe::TERMINATE, 0, 0, 0, 4]).await;
            let _ = server_w.shutdown().await;
        }
        if let Some((code, message)) = fatal {
            let mut out = BytesMut::new();
            be::write_error(&mut out, "FATAL", code, &message);
            let _ = client_w.write_all(&out).await;
        }
        let _ = client_w.shutdown().await;
    }

    /// Frames and handles every complete client message in `client_in`.
    pub(super) fn process_client(&mut self) -> Result<(), String> {
        let max = self.settings.config.max_message_size;
        loop {
            if self.client_stream_left > 0 {
                let n = self.client_stream_left.min(self.client_in.len());
                self.to_server.extend_from_slice(&self.client_in[..n]);
                self.client_in.advance(n);
                self.client_stream_left -= n;
                if self.client_stream_left > 0 {
                    return Ok(());
                }
            }
            if self.hold_client {
                return Ok(());
            }
            let header = match protocol::peek_header(&self.client_in, max) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("protocol: {e}")),
            };
            if self.client_in.len() < header.size {
                if header.tag == fe::COPY_DATA && header.size >= STREAM_THRESHOLD {
                    self.client_stream_left = header.size;
                    continue;
                }
                self.client_in.reserve(header.size - self.client_in.len());
                return Ok(());
            }
            let msg = self.client_in.split_to(header.size);
            self.on_client_message(header.tag, &msg)?;
        }
    }

    /// One complete client message.
    fn on_client_message(&mut self, tag: u8, msg: &[u8]) -> Result<(), String> {
        trace!(tag = %(tag as char), len = msg.len(), "client message");
        if !self.logged_in {
            // Authentication messages go straight through.
            self.to_server.extend_from_slice(msg);
            return Ok(());
        }
        if self.skipping_until_sync {
            self.to_server.extend_from_slice(msg);
            if tag == fe::SYNC {
                self.skipping_until_sync = false;
                self.replies.push(Pending::Sync(None));
            }
            return Ok(());
        }
        if matches!(tag, fe::QUERY | fe::PARSE | fe::BIND)
            && self.refresh_settings(!self.batch_open)
        {
            // The proxy's catalog queries after a reload go first; the message waits for them.
            let mut again = BytesMut::with_capacity(msg.len() + self.client_in.len());
            again.extend_from_slice(msg);
            again.extend_from_slice(&self.client_in);
            self.client_in = again;
            return Ok(());
        }
        if matches!(
            tag,
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE | fe::FLUSH
        ) {
            if !self.batch_open && self.guard.has_deallocated() {
                self.close_deallocated();
            }
            self.batch_open = true;
        }
        match tag {
            fe::QUERY => {
                self.count_statement();
                if !self.guard_query(msg)? {
                    self.to_server.extend_from_slice(msg);
                    self.replies.push(Pending::Simple(None));
                }
            }
            fe::PARSE => {
                if !self.guard_parse(msg)? {
                    self.to_server.extend_from_slice(msg);
                    self.replies.push(Pending::Parse(None));
                }
            }
            fe::BIND => {
                if !self.guard_bind(msg)? {
                    self.to_server.extend_from_slice(msg);
                    self.replies.push(Pending::Bind(None));
                }
            }
            fe::DESCRIBE => {
                let (tagged, sent) = self.guard_describe(&msg[5..]);
                if !sent {
                    self.to_server.extend_from_slice(msg);
                }
                match fe::target(&msg[5..]) {
                    Some((b'S', _)) => self.replies.push(Pending::DescribeStatement(tagged)),
                    _ => self.replies.push(Pending::DescribePortal(tagged)),
                }
            }
            fe::EXECUTE => {
                self.count_statement();
                let tagged = self.guard_execute(&msg[5..]);
                // The client expects no rows (it may ask for at most one, as pgjdbc does), so
                // the proxy's own rows must not suspend the portal before its row count.
                let unlimited = tagged
                    .as_ref()
                    .filter(|t| t.hides_all_rows())
                    .and_then(|_| fe::execute(&msg[5..]))
                    .filter(|&(_, limit)| limit != 0);
                match unlimited {
                    Some((portal, _)) => fe::write_execute(&mut self.to_server, portal, 0),
                    None => self.to_server.extend_from_slice(msg),
                }
                let hold = tagged.as_ref().is_some_and(|t| t.holds_batch());
                let quiet = tagged.as_ref().is_some_and(|t| t.quiet_without_rows());
                self.replies.push(Pending::Execute(tagged));
                if hold && !self.check_after_sync(quiet) {
                    // The row count decides whether the batch goes on: get it now.
                    fe::write_simple(&mut self.to_server, fe::FLUSH);
                    self.hold_client = true;
                }
            }
            fe::CLOSE => {
                self.guard_close(&msg[5..]);
                self.to_server.extend_from_slice(msg);
                self.replies.push(Pending::Close(None));
            }
            fe::SYNC => {
                self.to_server.extend_from_slice(msg);
                self.replies.push(Pending::Sync(None));
                if self.on_sync_sent() {
                    // What follows the Sync waits for the checked write's row count.
                    self.hold_client = true;
                }
            }
            fe::FUNCTION_CALL => {
                self.count_statement();
                self.to_server.extend_from_slice(msg);
                self.replies.push(Pending::Simple(None));
            }
            fe::TERMINATE => {
                self.terminated = true;
                self.to_server.extend_from_slice(msg);
            }
            _ => {
                // Flush, COPY data from the client, and anything newer than this proxy.
                self.to_server.extend_from_slice(msg);
            }
        }
        Ok(())
    }

    /// Frames and handles every complete server message in `server_in`.
    fn process_server(&mut self) -> Result<(), String> {
        loop {
            if self.server_stream_left > 0 {
                let n = self.server_stream_left.min(self.server_in.len());
                self.to_client.extend_from_slice(&self.server_in[..n]);
                self.server_in.advance(n);
                self.server_stream_left -= n;
                if self.server_stream_left > 0 {
                    return Ok(());
                }
            }
            let header = match protocol::peek_header(&self.server_in, 0x3fff_ffff) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("malformed message from server: {e}")),
            };
            if self.server_in.len() < header.size {
                let streamable = matches!(header.tag, be::DATA_ROW | be::COPY_DATA)
                    && header.size >= STREAM_THRESHOLD
                    && !self.guard.inspects_rows(self.replies.front());
                if streamable {
                    self.server_stream_left = header.size;
                    continue;
                }
                self.server_in.reserve(header.size - self.server_in.len());
                return Ok(());
            }
            let msg = self.server_in.split_to(header.size);
            self.on_server_message(header.tag, &msg)?;
        }
    }

    /// One complete server message.
    fn on_server_message(&mut self, tag: u8, msg: &[u8]) -> Result<(), String> {
        trace!(tag = %(tag as char), len = msg.len(), "server message");
        if tag == be::ERROR_RESPONSE
            && matches!(
                be::error_field(&msg[5..], b'V').or_else(|| be::error_field(&msg[5..], b'S')),
                Some(b"FATAL" | b"PANIC")
            )
        {
            self.server_fatal = true;
        }
        match tag {
            be::PARAMETER_STATUS => self.on_parameter_status(&msg[5..]),
            be::BACKEND_KEY_DATA => {
                if let Some((pid, _)) = protocol::be_i32(&msg[5..]) {
                    self.handle.set_backend_pid(pid);
                }
            }
            be::ERROR_RESPONSE if !self.logged_in => {
                // Authentication failed: pass the server's own words on.
                self.to_client.extend_from_slice(msg);
                return Ok(());
            }
            be::READY_FOR_QUERY if !self.logged_in => {
                self.logged_in = true;
                self.tx_status = be::ready_status(&msg[5..]);
                if self.on_login(msg) {
                    return Ok(());
                }
                self.to_client.extend_from_slice(msg);
                return Ok(());
            }
            _ => {}
        }
        if !self.logged_in {
            self.to_client.extend_from_slice(msg);
            return Ok(());
        }
        if tag == be::ERROR_RESPONSE && self.guard.keeps_statements() {
            self.guard.on_error_with_kept(&msg[5..]);
        }
        let mut release = false;
        let (step, popped) = if tag == be::ERROR_RESPONSE {
            let mut undo = Vec::new();
            let (step, answered, skipping) = self.replies.on_error(|p| {
                release |= super::guarded::held_batch_for(&p);
                undo.extend(super::guarded::skipped_parse(&p));
            });
            self.skipping_until_sync |= skipping;
            for u in undo {
                self.undo_parse(&u, false);
            }
            (step, answered)
        } else {
            self.replies.on_message(tag)
        };
        if tag == be::READY_FOR_QUERY {
            self.tx_status = be::ready_status(&msg[5..]);
            self.batch_open = false;
            self.handle.ready_for_query(self.tx_status);
            self.handle.set_tracked_versions(self.guard.tracked());
        }
        let taken = !self.guard_ignores(tag, step, popped.as_ref())
            && self.guard_server_message(tag, msg, step, popped)?;
        if !taken {
            self.to_client.extend_from_slice(msg);
        }
        if release {
            // The statement the batch waited for was skipped after an earlier error: the rest
            // of the batch (up to its Sync) goes on, to be skipped by the server too.
            self.hold_client = false;
            self.process_client()?;
        }
        Ok(())
    }

    #[inline]
    fn count_statement(&self) {
        self.shared.admin.metrics.statement();
        self.handle.statement();
    }

    fn on_parameter_status(&mut self, body: &[u8]) {
        if let Some((name, value)) = be::parameter_status(body) {
            match name {
                b"client_encoding" => {
                    self.params.client_encoding = String::from_utf8_lossy(value).into_owned()
                }
                b"standard_conforming_strings" => {
                    self.params.standard_conforming_strings = value == b"on"
                }
                b"application_name" => self
                    .handle
                    .set_application_name(&String::from_utf8_lossy(value)),
                _ => {}
            }
            debug!(
                parameter = %String::from_utf8_lossy(name),
                value = %String::from_utf8_lossy(value),
                "server parameter"
            );
        }
    }
}

/// Keeps room in an input buffer for the next read (reclaiming the space of messages already
/// handled when nothing else holds it).
#[inline]
fn keep_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}

/// Logs how a session ended, at a level that fits.
pub fn log_end(end: &End, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    match end {
        End::ClientClosed => debug!(duration_s = secs, "session closed by client"),
        End::Shutdown => info!(duration_s = secs, "session closed for shutdown"),
        End::LoginTimeout => warn!(duration_s = secs, "login timed out"),
        End::ClientError(e) => warn!(duration_s = secs, error = %e, "session ended: client"),
        End::ServerClosed => warn!(duration_s = secs, "session ended: upstream closed"),
        End::ServerError(e) => warn!(duration_s = secs, error = %e, "session ended: upstream"),
    }
}
