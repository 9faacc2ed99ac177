//! What the relay and the session engine report as they run, and the interfaces through which
//! they report it. The admin module implements these traits (metrics, the session registry,
//! the conflict log); the relay and the engine know only the traits, never the admin module.
//!
//! - [`SessionEvents`]: what one session reports (statements, guarded writes, conflicts, its
//!   transaction state); passed into the engine with each batch of input.
//! - [`SessionHooks`]: a session's events plus the relay's question "should this session drain?".
//! - [`ProcessEvents`]: what the relay reports for the whole process (bytes, latency, refused
//!   clients) and how it opens a session's hooks.

use std::net::SocketAddr;
use std::task::Context;
use std::time::{Duration, SystemTime};

use crate::guard::TableId;
use crate::protocol::TxStatus;

/// What happened to a write on a guarded table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Rewritten with its version predicate and bump, then relayed.
    Rewritten = 0,
    /// Refused by the proxy (fail closed, `unversioned = "reject"`, `bulk = "reject"`).
    Refused = 1,
    /// Matched no row with the expected version: a conflict error was raised.
    Conflict = 2,
    /// Observe mode: would have been a conflict or a refusal; it went through as written.
    Observed = 3,
    /// Of the rewritten writes: a keyed write with no expected version known (bump only).
    Unversioned = 4,
    /// Of the rewritten writes: a write not pinned to one key, with no version known of the
    /// rows it touches (bump only).
    Bulk = 5,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Rewritten,
        Outcome::Refused,
        Outcome::Conflict,
        Outcome::Observed,
        Outcome::Unversioned,
        Outcome::Bulk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Rewritten => "rewritten",
            Outcome::Refused => "refused",
            Outcome::Conflict => "conflict",
            Outcome::Observed => "observed",
            Outcome::Unversioned => "unversioned",
            Outcome::Bulk => "bulk",
        }
    }
}

/// Which way relayed bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    ClientToServer = 0,
    ServerToClient = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::ClientToServer, Direction::ServerToClient];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToServer => "client_to_server",
            Direction::ServerToClient => "server_to_client",
        }
    }
}

/// Why a client connection was ended by the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientError {
    /// A malformed or unexpected frontend message.
    Protocol = 0,
    /// The client did not finish startup and authentication in `client_login_timeout`.
    LoginTimeout = 1,
    /// A frontend message longer than `max_message_size`.
    MessageTooLarge = 2,
    /// The TLS handshake with the client failed.
    Tls = 3,
}

impl ClientError {
    pub const ALL: [ClientError; 4] = [
        ClientError::Protocol,
        ClientError::LoginTimeout,
        ClientError::MessageTooLarge,
        ClientError::Tls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientError::Protocol => "protocol",
            ClientError::LoginTimeout => "login_timeout",
            ClientError::MessageTooLarge => "message_too_large",
            ClientError::Tls => "tls",
        }
    }
}

/// One conflict: a guarded write with an expected version matched no row; or, in observe
/// mode, a write that would have conflicted or been refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub at: SystemTime,
    /// The guarded table, as the config names it (`public.invoice`).
    pub table: String,
    /// The key, as the conflict error prints it: `(id)=(42)`.
    pub key: String,
    /// The version the write expected.
    pub expected: String,
    /// The version found instead; `None` when the row no longer exists.
    pub found: Option<String>,
    pub client_addr: SocketAddr,
    pub user: String,
    pub application_name: String,
    /// [`Outcome::Conflict`] (raised to the client) or [`Outcome::Observed`].
    pub outcome: Outcome,
    /// Why enforce mode would have refused the write (observed refusals only).
    pub reason: Option<String>,
}

/// What a session says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionStart {
    pub client_addr: SocketAddr,
    pub user: String,
    pub database: String,
    pub application_name: String,
    /// The TLS version of the client's connection (`TLSv1.3`), `None` in plain text.
    pub client_tls: Option<&'static str>,
    /// The TLS version of the server connection, `None` in plain text (or a local socket).
    pub server_tls: Option<&'static str>,
}

/// What one session reports while it runs. Every method is called on the hot path at most once
/// per statement and must be cheap (relaxed atomics, or a short lock for rare events).
pub trait SessionEvents: Send + Sync {
    /// One statement was sent (a simple `Query`, `FunctionCall` or an `Execute`).
    fn statement(&self);
    /// A write on a guarded table had this outcome.
    fn guarded(&self, table: TableId, outcome: Outcome);
    /// A guarded write was sent ([`Outcome::Rewritten`]), and, when it checks no version, its
    /// class ([`Outcome::Unversioned`] or [`Outcome::Bulk`]): one call on the hot path.
    fn write_sent(&self, table: TableId, class: Option<Outcome>) {
        self.guarded(table, Outcome::Rewritten);
        if let Some(class) = class {
            self.guarded(table, class);
        }
    }
    /// A conflict was raised to the client (counted by [`SessionEvents::guarded`] too).
    fn conflict(&self, conflict: Conflict);
    /// A `ReadyForQuery` arrived with this transaction status; the session tracks `tracked`
    /// row versions now.
    fn ready_for_query(&self, status: TxStatus, tracked: usize);
    /// The server backend's process id (from `BackendKeyData`).
    fn backend_pid(&self, pid: i32);
    /// The server reported a new `application_name`.
    fn application_name(&self, name: &str);
    /// The guards that apply to the session now, each with its mode
    /// (`public.item=enforce, public.acct=observe`; see [`crate::guard::GuardSet::modes_text`]).
    fn guards_in_force(&self, _guards: &str) {}
}

/// A session's events, plus whether the process asked it to end once idle. Dropping it ends
/// the session's registration.
pub trait SessionHooks: SessionEvents {
    /// True once the process asked every session to drain; until then the task of `cx` is
    /// woken when it does.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> bool;
}

/// What the relay reports for the whole process.
pub trait ProcessEvents: Send + Sync {
    /// A client session starts (it has its upstream connection); the hooks live as long as it.
    fn open_session(&self, start: SessionStart) -> Box<dyn SessionHooks>;
    /// Bytes relayed one way.
    fn bytes(&self, direction: Direction, n: u64);
    /// Time the proxy spent on a sampled batch of messages.
    fn added_latency(&self, d: Duration);
    /// The upstream server could not be reached for a new session.
    fn upstream_connect_failed(&self);
    /// The proxy ended or refused a client for this reason.
    fn client_error(&self, reason: ClientError);
    /// Something happened to a pool of server connections (`pool_mode = "session"`).
    fn pool_event(&self, _event: PoolEvent) {}
}

/// What happens to pooled server connections and the clients that want them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolEvent {
    /// A client got an idle server connection.
    Reused = 0,
    /// A server connection was opened for a client.
    Opened = 1,
    /// A server connection was closed (expired, ended by the server, left dirty, reset failed).
    Closed = 2,
    /// A login the proxy checked failed (wrong password, unknown user).
    LoginFailed = 3,
    /// A client waited `query_wait_timeout` in vain.
    WaitTimeout = 4,
    /// A client was refused at `max_client_conn`.
    TooManyClients = 5,
}

impl PoolEvent {
    pub const ALL: [PoolEvent; 6] = [
        PoolEvent::Reused,
        PoolEvent::Opened,
        PoolEvent::Closed,
        PoolEvent::LoginFailed,
        PoolEvent::WaitTimeout,
        PoolEvent::TooManyClients,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolEvent::Reused => "reused",
            PoolEvent::Opened => "opened",
            PoolEvent::Closed => "closed",
            PoolEvent::LoginFailed => "login_failed",
            PoolEvent::WaitTimeout => "wait_timeout",
            PoolEvent::TooManyClients => "too_many_clients",
        }
    }
}

/// Events that go nowhere: for tools and tests that run a session without an admin side.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl SessionEvents for NoEvents {
    fn statement(&self) {}
    fn guarded(&self, _: TableId, _: Outcome) {}
    fn conflict(&self, _: Conflict) {}
    fn ready_for_query(&self, _: TxStatus, _: usize) {}
    fn backend_pid(&self, _: i32) {}
    fn application_name(&self, _: &str) {}
}
