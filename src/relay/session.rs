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
use tracing::{debug, info, warn};

use super::binding::BindingCheck;
use super::shared::Shared;
use crate::engine::{Engine, Fault};
use crate::events::{ClientError as ClientErrorKind, Direction, SessionHooks};
use crate::protocol::{backend as be, frontend as fe};

/// Output is flushed before more input is read once a buffer holds this much.
const HIGH_WATER: usize = 256 * 1024;
/// While the guard holds the client, this much more is read (not handled), so that a client
/// that leaves is seen at once.
const HELD_READ_AHEAD: usize = 64 * 1024;
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
    /// Everything for the server was written; a flush is still owed (TLS).
    server_flush: bool,
    /// Until login completes (dropped then, so no timer stays armed).
    login_timeout: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    ClientClosed,
    /// The client's socket failed.
    ClientError(String),
    /// The client broke the protocol.
    ClientFault(ClientErrorKind, String),
    ServerClosed,
    ServerError(String),
    Shutdown,
    LoginTimeout,
}

/// One session: its engine, and what the IO loop keeps around it.
pub struct Session {
    shared: Arc<Shared>,
    engine: Engine,
    /// This session's events (and the process's call to drain).
    hooks: Box<dyn SessionHooks>,
    draining: bool,
    /// The client closed its side: what it sent still runs and its replies are still
    /// delivered, then the session ends.
    client_eof: bool,
    /// After the client closed: the proxy said goodbye to the server (`Terminate`) and
    /// ends its side of the stream once that is written.
    server_closing: bool,
    /// The server side of the stream was shut down.
    server_shut: bool,
    /// A write to the server failed (it closed, often after a FATAL of its own): nothing more
    /// goes to it, and the session ends when its replies end.
    server_unwritable: bool,
    /// Batches of messages read so far (for sampling `added_latency`).
    batches: u32,
    /// While logging in with TLS on the server's leg: what SCRAM channel binding needs (see
    /// [`BindingCheck`]).
    binding: Option<BindingCheck>,
    /// The server connection is pooled: the client's `Terminate` is not sent on, and an idle
    /// server connection outlives the session (see [`super::pool`]).
    pooled: bool,
}

impl Session {
    pub fn new(shared: Arc<Shared>, engine: Engine, hooks: Box<dyn SessionHooks>) -> Session {
        Session {
            shared,
            engine,
            hooks,
            draining: false,
            client_eof: false,
            server_closing: false,
            server_shut: false,
            server_unwritable: false,
            batches: 0,
            binding: None,
            pooled: false,
        }
    }

    /// Keeps the server connection for the next client (pooled mode).
    pub fn pool_server(&mut self) {
        self.pooled = true;
    }

    /// After the end: true when the pooled server connection may serve another client (the
    /// client left with nothing in flight, outside any transaction).
    pub fn server_reusable(&self, end: &End) -> bool {
        self.pooled
            && matches!(end, End::ClientClosed)
            && !self.server_closing
            && !self.server_unwritable
            && self.engine.is_idle()
    }

    /// Watches SCRAM channel binding during the login, when it is needed.
    pub fn check_binding(&mut self, check: Option<BindingCheck>) {
        self.binding = check;
    }

    /// Relays until either side closes. The startup packet is the first thing the engine
    /// sends.
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
        SW: AsyncWrite + Buffering + Unpin,
    {
        let mut io = Io {
            client_r,
            client_w: &mut client_w,
            server_r,
            server_w: &mut server_w,
            client_flush: false,
            server_flush: false,
            login_timeout: Some(Box::pin(tokio::time::sleep(
                self.engine.settings().config.client_login_timeout,
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
        SW: AsyncWrite + Buffering + Unpin,
    {
        let mut waits = Waits::default();
        loop {
            if self.pooled && self.engine.terminated() && !self.server_closing {
                // The client's goodbye is not the server connection's.
                super::pool::drop_terminate(self.engine.to_server());
                if self.engine.nothing_in_flight() {
                    return Poll::Ready(End::ClientClosed);
                }
            }
            if self.client_eof {
                self.engine.client_closed();
                if self.engine.nothing_in_flight() {
                    return Poll::Ready(End::ClientClosed);
                }
                if !self.server_closing && self.engine.may_close_server() {
                    // What the client sent is on its way: the server answers it, ends any
                    // transaction left open, and closes, as it does when a client leaves.
                    self.engine.close_server();
                    self.server_closing = true;
                }
            }
            if self.draining && self.engine.is_idle() {
                return Poll::Ready(End::Shutdown);
            }
            let mut progress = match self.write_out(cx, io, &mut waits) {
                Poll::Ready(Ok(progress)) => progress,
                Poll::Ready(Err(end)) => return Poll::Ready(end),
                Poll::Pending => false,
            };
            match self.read_in(cx, io, &mut waits) {
                Ok(read) => progress |= read,
                Err(end) => return Poll::Ready(end),
            }
            if progress {
                continue;
            }
            if self.engine.logged_in() {
                io.login_timeout = None;
            } else if let Some(t) = &mut io.login_timeout
                && t.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(End::LoginTimeout);
            }
            if !self.draining && self.hooks.poll_drain(cx) {
                self.draining = true;
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Writes what the engine has for either side (plain `write`, not vectored: one buffer,
    /// and the cheaper system call). Returns whether any byte moved.
    fn write_out<CR, CW, SR, SW>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Io<'_, CR, CW, SR, SW>,
        waits: &mut Waits,
    ) -> Poll<Result<bool, End>>
    where
        CW: AsyncWrite + Unpin,
        SW: AsyncWrite + Buffering + Unpin,
    {
        let mut progress = false;
        let to_server = self.engine.to_server();
        if self.server_unwritable && !to_server.is_empty() {
            // The server stopped reading: what it sent before is still read and relayed, and
            // its end of stream (or reset) ends the session.
            to_server.clear();
        }
        if !to_server.is_empty() && !waits.server_w {
            match Pin::new(&mut *io.server_w).poll_write(cx, to_server) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    to_server.advance(n);
                    io.server_flush = SW::BUFFERS && to_server.is_empty();
                    progress = true;
                }
                Poll::Ready(result) => {
                    let why = result
                        .err()
                        .map_or("it stopped reading".into(), |e| e.to_string());
                    debug!(error = %why, "write to server failed; reading what it sent");
                    to_server.clear();
                    self.server_unwritable = true;
                    progress = true;
                }
                Poll::Pending => waits.server_w = true,
            }
        }
        let to_client = self.engine.to_client();
        if !to_client.is_empty() && !waits.client_w {
            match Pin::new(&mut *io.client_w).poll_write(cx, to_client) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    to_client.advance(n);
                    // A TLS stream may keep encrypted bytes until flushed.
                    io.client_flush = to_client.is_empty();
                    progress = true;
                }
                Poll::Ready(Ok(_)) => {
                    return Poll::Ready(Err(End::ClientError("the client stopped reading".into())));
                }
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(End::ClientError(format!(
                        "write to client failed: {e}"
                    ))));
                }
                Poll::Pending => waits.client_w = true,
            }
        }
        if self.server_closing
            && !self.server_shut
            && !self.server_unwritable
            && to_server_empty(&mut self.engine)
            && !waits.server_w
        {
            match Pin::new(&mut *io.server_w).poll_shutdown(cx) {
                Poll::Ready(_) => {
                    self.server_shut = true;
                    progress = true;
                }
                Poll::Pending => waits.server_w = true,
            }
        }
        if let Err(end) = flush_out(cx, io, waits) {
            return Poll::Ready(Err(end));
        }
        Poll::Ready(Ok(progress))
    }

    /// Reads what either side sent, while the other side's output has room, and hands it to
    /// the engine. Returns whether any byte came in (or the client closed).
    fn read_in<CR, CW, SR, SW>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Io<'_, CR, CW, SR, SW>,
        waits: &mut Waits,
    ) -> Result<bool, End>
    where
        CR: AsyncRead + Unpin,
        SR: AsyncRead + Unpin,
    {
        let mut progress = false;
        if self.engine.to_client().len() < HIGH_WATER && !waits.server_r {
            match poll_read_buf(Pin::new(&mut io.server_r), cx, self.engine.server_input()) {
                // After the client's goodbye (or the proxy's for it), the server's end of
                // stream or reset is the normal end.
                Poll::Ready(Ok(0)) if self.engine.terminated() => return Err(End::ClientClosed),
                Poll::Ready(Err(_)) if self.engine.terminated() => return Err(End::ClientClosed),
                Poll::Ready(Ok(0)) => return Err(End::ServerClosed),
                // A TLS leg the server left without its close_notify (its backend was
                // killed): the same end as a socket closed.
                Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(End::ServerClosed);
                }
                Poll::Ready(Ok(n)) => {
                    self.shared
                        .operator
                        .bytes(Direction::ServerToClient, n as u64);
                    if self.binding.is_some() {
                        self.watch_binding(false)?;
                    }
                    let timer = self.latency_sample();
                    self.engine.process_server(&*self.hooks).map_err(end_of)?;
                    self.latency_done(timer);
                    keep_room(self.engine.server_input());
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    return Err(End::ServerError(format!("read from server failed: {e}")));
                }
                Poll::Pending => waits.server_r = true,
            }
        }
        let room = if self.engine.holds_client() {
            self.engine.client_input().len() < HELD_READ_AHEAD
        } else {
            self.engine.wants_client_input()
        };
        let read_client = !self.client_eof && room && self.engine.to_server().len() < HIGH_WATER;
        if read_client && !waits.client_r {
            match poll_read_buf(Pin::new(&mut io.client_r), cx, self.engine.client_input()) {
                Poll::Ready(Ok(0)) => {
                    self.client_eof = true;
                    progress = true;
                }
                Poll::Ready(Ok(n)) => {
                    self.shared
                        .operator
                        .bytes(Direction::ClientToServer, n as u64);
                    if self.binding.is_some() {
                        self.watch_binding(true)?;
                    }
                    let timer = self.latency_sample();
                    self.engine.process_client(&*self.hooks).map_err(end_of)?;
                    self.latency_done(timer);
                    keep_room(self.engine.client_input());
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    return Err(End::ClientError(format!("read from client failed: {e}")));
                }
                Poll::Pending => waits.client_r = true,
            }
        }
        Ok(progress)
    }

    /// Takes the offer of channel binding out of what the server says, or refuses a client
    /// whose binding cannot pass (see [`BindingCheck`]); stops watching once the message it
    /// waits for passed, or the login is over.
    #[cold]
    fn watch_binding(&mut self, client: bool) -> Result<(), End> {
        let Some(check) = &self.binding else {
            return Ok(());
        };
        let over = if client {
            check
                .client_input(self.engine.client_input())
                .map_err(|refusal| End::ClientFault(ClientErrorKind::Tls, refusal.into()))?
        } else {
            check.server_input(self.engine.server_input())
        };
        if over || self.engine.logged_in() {
            self.binding = None;
        }
        Ok(())
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
            self.shared.operator.added_latency(started.elapsed());
        }
    }

    /// Says goodbye to both sides as fits the way the session ended.
    async fn finish<CW, SW>(&mut self, end: &End, client_w: &mut CW, server_w: &mut SW)
    where
        CW: AsyncWrite + Unpin,
        SW: AsyncWrite + Unpin,
    {
        let fatal = match end {
            // The client sent bytes the server ends the session on: it ended it as directly.
            End::ServerClosed | End::ServerError(_) if self.engine.client_unframed() => {
                self.shared.operator.client_error(ClientErrorKind::Protocol);
                None
            }
            // The server said why itself (a reset right after its FATAL is its way of
            // closing, not a second failure).
            End::ServerClosed | End::ServerError(_) if self.engine.server_fatal() => None,
            End::ServerClosed => Some((
                "08006",
                "the upstream server closed the connection unexpectedly; any open transaction was rolled back".to_string(),
            )),
            End::ServerError(e) => Some(("08006", format!("lost the upstream server: {e}"))),
            End::ClientFault(reason, e) => {
                self.shared.operator.client_error(*reason);
                Some(("08P01", e.clone()))
            }
            End::LoginTimeout => {
                self.shared.operator.client_error(ClientErrorKind::LoginTimeout);
                Some((
                "08006",
                format!(
                    "login not completed within client_login_timeout ({:?})",
                    self.engine.settings().config.client_login_timeout
                ),
            ))
            }
            End::Shutdown => Some((
                "57P01",
                "terminating connection: optlock is shutting down".to_string(),
            )),
            _ => None,
        };
        if !matches!(end, End::ServerClosed | End::ServerError(_)) && !self.server_reusable(end) {
            // The proxy ends the session: what the client sent goes first, then a Terminate,
            // which is cleaner than a dropped socket.
            if !self.engine.client_message_unfinished() {
                let _ = server_w.write_all(self.engine.to_server()).await;
            }
            let _ = server_w.write_all(&[fe::TERMINATE, 0, 0, 0, 4]).await;
            let _ = server_w.shutdown().await;
        }
        if !matches!(end, End::ClientError(_)) {
            // Everything the server said before the end reaches the client (one that sent
            // Terminate, or half-closed, still reads), and before any FATAL of the proxy's.
            let _ = client_w.write_all(self.engine.to_client()).await;
        }
        // A FATAL after a server message sent only in part would corrupt the stream.
        let fatal = fatal.filter(|_| !self.engine.server_message_unfinished());
        if let Some((code, message)) = fatal {
            let mut out = BytesMut::new();
            be::write_error(&mut out, "FATAL", code, &message);
            let _ = client_w.write_all(&out).await;
        }
        // After bytes the client sent behind its Terminate, the end of stream goes behind the
        // replies, and the connection is reset once the client closed (see `relay_to`).
        let _ = client_w.shutdown().await;
    }

    /// True when the client sent bytes after its `Terminate`: PostgreSQL never reads them
    /// and its socket closes with a reset, so the proxy's closes the same way.
    pub fn resets_client(&self) -> bool {
        self.engine.bytes_after_terminate()
    }
}

/// A writer to the server, and whether it keeps bytes until flushed: a TLS stream's does, a
/// socket's never (the code that flushes it is then left out at compile time, so a plain
/// server leg runs exactly the code it ran before TLS).
pub trait Buffering {
    const BUFFERS: bool;
}

impl Buffering for tokio::net::tcp::WriteHalf<'_> {
    const BUFFERS: bool = false;
}

impl Buffering for tokio::net::unix::WriteHalf<'_> {
    const BUFFERS: bool = false;
}

impl<T> Buffering for tokio::io::WriteHalf<T> {
    const BUFFERS: bool = true;
}

/// Flushes what a TLS writer still holds, on either side, once everything for that side was
/// written (a plain server socket holds nothing and is not asked).
fn flush_out<CR, CW, SR, SW>(
    cx: &mut Context<'_>,
    io: &mut Io<'_, CR, CW, SR, SW>,
    waits: &mut Waits,
) -> Result<(), End>
where
    CW: AsyncWrite + Unpin,
    SW: AsyncWrite + Buffering + Unpin,
{
    if SW::BUFFERS && io.server_flush && !waits.server_w {
        match Pin::new(&mut *io.server_w).poll_flush(cx) {
            Poll::Ready(Ok(())) => io.server_flush = false,
            Poll::Ready(Err(e)) => {
                return Err(End::ServerError(format!("write to server failed: {e}")));
            }
            Poll::Pending => waits.server_w = true,
        }
    }
    if io.client_flush && !waits.client_w {
        match Pin::new(&mut *io.client_w).poll_flush(cx) {
            Poll::Ready(Ok(())) => io.client_flush = false,
            Poll::Ready(Err(e)) => {
                return Err(End::ClientError(format!("write to client failed: {e}")));
            }
            Poll::Pending => waits.client_w = true,
        }
    }
    Ok(())
}

/// The session's end when the engine found a protocol violation.
fn end_of(fault: Fault) -> End {
    match fault {
        Fault::Client { reason, message } => End::ClientFault(reason, message),
        Fault::Server(message) => End::ServerError(message),
    }
}

#[inline]
fn to_server_empty(engine: &mut Engine) -> bool {
    engine.to_server().is_empty()
}

/// Which sockets returned `Pending` in this turn (polled again only when woken).
#[derive(Debug, Default)]
struct Waits {
    server_r: bool,
    client_r: bool,
    server_w: bool,
    client_w: bool,
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
        End::ClientFault(reason, e) => warn!(
            duration_s = secs,
            reason = reason.as_str(),
            error = %e,
            "session ended: the client broke the protocol"
        ),
        End::ServerClosed => warn!(duration_s = secs, "session ended: upstream closed"),
        End::ServerError(e) => warn!(duration_s = secs, error = %e, "session ended: upstream"),
    }
}
