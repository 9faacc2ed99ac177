//! The registry of live client sessions, for `SHOW SESSIONS`.
//!
//! A session registers once it knows its user and database and holds the returned
//! [`SessionHandle`] for its lifetime; dropping the handle unregisters it. The registry's map
//! (one mutex) is touched only at register, unregister, snapshot and drain; the per-statement
//! updates (state, statement count, tracked versions) are relaxed atomics on data the handle
//! shares.
//!
//! A graceful shutdown reaches the sessions through it too: [`SessionRegistry::drain_all`]
//! flags every session, and every one registered after it, and wakes each session's task.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::SystemTime;

use futures_util::task::AtomicWaker;

use super::report::{Report, ReportRow, Tally};
use crate::events::{Outcome, SessionStart};
use crate::guard::TableId;
use crate::protocol::TxStatus;

/// What a session is doing, as `pg_stat_activity.state` would say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting for a command outside a transaction.
    Idle = 0,
    /// A command is running.
    Active = 1,
    /// Waiting for a command inside a transaction.
    InTransaction = 2,
    /// Inside a transaction that failed; waiting for `ROLLBACK`.
    FailedTransaction = 3,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Idle => "idle",
            SessionState::Active => "active",
            SessionState::InTransaction => "in transaction",
            SessionState::FailedTransaction => "in failed transaction",
        }
    }

    /// The state a `ReadyForQuery` transaction status byte (`I`, `T`, `E`) announces.
    pub fn from_ready_status(status: TxStatus) -> SessionState {
        match status {
            TxStatus::Idle => SessionState::Idle,
            TxStatus::InTransaction => SessionState::InTransaction,
            TxStatus::Failed => SessionState::FailedTransaction,
        }
    }

    fn from_u8(v: u8) -> SessionState {
        match v {
            1 => SessionState::Active,
            2 => SessionState::InTransaction,
            3 => SessionState::FailedTransaction,
            _ => SessionState::Idle,
        }
    }
}

/// One session as `SHOW SESSIONS` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: u64,
    pub client_addr: SocketAddr,
    pub user: String,
    pub database: String,
    pub application_name: String,
    /// The upstream server's backend process id, once known.
    pub backend_pid: Option<i32>,
    pub connected_at: SystemTime,
    pub state: SessionState,
    pub statements: u64,
    pub tracked_versions: u64,
    /// TLS version of each leg (`TLSv1.3`), `None` where it is plain text.
    pub client_tls: Option<&'static str>,
    pub server_tls: Option<&'static str>,
    /// The guards that apply to the session, each with its mode
    /// (`public.item=enforce, public.acct=observe`).
    pub guards: String,
}

#[derive(Debug)]
struct Live {
    id: u64,
    start: SessionStart,
    /// Changes only when the server reports a new `application_name`: rare, never per statement.
    application_name: Mutex<String>,
    /// Changes only when the session's scope does (at login, after `SET application_name`
    /// or a reload).
    guards: Mutex<String>,
    /// The session's guarded writes since they were last folded into the report.
    tally: Mutex<Tally>,
    connected_at: SystemTime,
    backend_pid: AtomicI32,
    state: AtomicU8,
    statements: AtomicU64,
    tracked_versions: AtomicU64,
    /// Set by [`SessionRegistry::drain_all`]: end once idle.
    drain: AtomicBool,
    /// The session task, woken when `drain` is set.
    waker: AtomicWaker,
}

/// All live sessions of the process. Share it as `Arc<SessionRegistry>`.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    next_id: AtomicU64,
    sessions: Mutex<BTreeMap<u64, Arc<Live>>>,
    /// Set (under the `sessions` lock) by `drain_all`; sessions registered later start drained.
    draining: AtomicBool,
    /// The guarded writes of sessions that ended (or changed `application_name`).
    report: Report,
}

impl SessionRegistry {
    pub fn new() -> SessionRegistry {
        SessionRegistry::default()
    }

    /// Registers a session; it stays listed until the returned handle is dropped.
    pub fn register(self: &Arc<Self>, start: SessionStart) -> SessionHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let live = Arc::new(Live {
            id,
            application_name: Mutex::new(start.application_name.clone()),
            guards: Mutex::new(String::new()),
            tally: Mutex::new(Tally::new(&start.application_name)),
            start,
            connected_at: SystemTime::now(),
            backend_pid: AtomicI32::new(0),
            state: AtomicU8::new(SessionState::Idle as u8),
            statements: AtomicU64::new(0),
            tracked_versions: AtomicU64::new(0),
            drain: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let mut sessions = self.lock();
        if self.draining.load(Ordering::Relaxed) {
            live.drain.store(true, Ordering::Release);
        }
        sessions.insert(id, live.clone());
        drop(sessions);
        SessionHandle {
            registry: self.clone(),
            live,
            registered_waker: None,
        }
    }

    /// Asks every live session, and every session registered from now on, to end as soon as
    /// it is idle (see [`SessionHandle::poll_drain`]).
    pub fn drain_all(&self) {
        let sessions = self.lock();
        self.draining.store(true, Ordering::Relaxed);
        for live in sessions.values() {
            live.drain.store(true, Ordering::Release);
            live.waker.wake();
        }
    }

    /// The live sessions, oldest first.
    pub fn snapshot(&self) -> Vec<SessionInfo> {
        let live: Vec<Arc<Live>> = self.lock().values().cloned().collect();
        live.iter()
            .map(|s| SessionInfo {
                id: s.id,
                client_addr: s.start.client_addr,
                user: s.start.user.clone(),
                database: s.start.database.clone(),
                application_name: s
                    .application_name
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                backend_pid: match s.backend_pid.load(Ordering::Relaxed) {
                    0 => None,
                    pid => Some(pid),
                },
                connected_at: s.connected_at,
                state: SessionState::from_u8(s.state.load(Ordering::Relaxed)),
                statements: s.statements.load(Ordering::Relaxed),
                tracked_versions: s.tracked_versions.load(Ordering::Relaxed),
                client_tls: s.start.client_tls,
                server_tls: s.start.server_tls,
                guards: s.guards.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            })
            .collect()
    }

    /// The roll-out report: ended sessions' counts and the live ones'.
    pub fn report(&self) -> Vec<ReportRow> {
        let live: Vec<Arc<Live>> = self.lock().values().cloned().collect();
        let tallies: Vec<_> = live
            .iter()
            .map(|s| s.tally.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        self.report.rows(tallies.iter().map(|t| &**t))
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Live>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A registered session; dropping it unregisters the session.
#[derive(Debug)]
pub struct SessionHandle {
    registry: Arc<SessionRegistry>,
    live: Arc<Live>,
    /// The waker last given to `live.waker`: a task's waker rarely changes, so registering
    /// again is skipped while it is the same.
    registered_waker: Option<Waker>,
}

impl SessionHandle {
    /// The session's id in the registry (unique within the process, from 1).
    pub fn id(&self) -> u64 {
        self.live.id
    }

    /// True once [`SessionRegistry::drain_all`] was called. Until then the task of `cx` is
    /// woken when it is.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> bool {
        if self.live.drain.load(Ordering::Acquire) {
            return true;
        }
        if !self
            .registered_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.live.waker.register(cx.waker());
            self.registered_waker = Some(cx.waker().clone());
        }
        self.live.drain.load(Ordering::Acquire)
    }

    #[inline]
    pub fn set_state(&self, state: SessionState) {
        self.live.state.store(state as u8, Ordering::Relaxed);
    }

    /// Sets the state from a `ReadyForQuery` transaction status byte; unknown bytes are ignored.
    #[inline]
    pub fn ready_for_query(&self, status: TxStatus) {
        self.set_state(SessionState::from_ready_status(status));
    }

    /// Counts one statement of this session (a simple `Query` or an `Execute`).
    #[inline]
    pub fn statement(&self) {
        self.live.statements.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets how many versions this session tracks now.
    #[inline]
    pub fn set_tracked_versions(&self, n: usize) {
        self.live
            .tracked_versions
            .store(n as u64, Ordering::Relaxed);
    }

    /// Sets the upstream backend process id (from `BackendKeyData`).
    pub fn set_backend_pid(&self, pid: i32) {
        self.live.backend_pid.store(pid, Ordering::Relaxed);
    }

    /// Records the guards that apply to the session now, with their modes.
    pub fn set_guards(&self, guards: &str) {
        *self.live.guards.lock().unwrap_or_else(|e| e.into_inner()) = guards.to_string();
    }

    /// Records a new `application_name` (from the server's `ParameterStatus`): what the
    /// session counted so far is reported under the old one.
    pub fn set_application_name(&self, name: &str) {
        let mut current = self
            .live
            .application_name
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *current != name {
            *current = name.to_string();
            let mut tally = self.tally();
            self.registry.report.fold(&mut tally);
            tally.application_name = name.to_string();
        }
    }

    /// Counts one guarded write's outcome (and a second one, if any) for the report.
    #[inline]
    pub fn count(&self, table: TableId, outcome: Outcome, also: Option<Outcome>) {
        let mut tally = self.tally();
        tally.add(table, outcome);
        if let Some(also) = also {
            tally.add(table, also);
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.live.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        // Folded first: a report taken meanwhile sees the counts once, in one place or the
        // other.
        self.registry.report.fold(&mut self.tally());
        self.registry.lock().remove(&self.live.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(user: &str) -> SessionStart {
        SessionStart {
            client_addr: "10.0.0.7:51234".parse().unwrap(),
            user: user.into(),
            database: "pos".into(),
            application_name: "till-3".into(),
            client_tls: Some("TLSv1.3"),
            server_tls: None,
        }
    }

    #[test]
    fn snapshot_follows_register_updates_and_drop() {
        let reg = Arc::new(SessionRegistry::new());
        assert!(reg.snapshot().is_empty());
        let a = reg.register(start("alice"));
        let b = reg.register(start("bob"));
        assert_ne!(a.id(), b.id());
        assert_eq!(reg.len(), 2);

        b.set_state(SessionState::Active);
        b.statement();
        b.statement();
        b.set_tracked_versions(42);
        b.set_backend_pid(4711);
        b.set_application_name("psql");
        a.ready_for_query(TxStatus::Failed);

        let snap = reg.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].user, "alice");
        assert_eq!(snap[0].state, SessionState::FailedTransaction);
        assert_eq!(snap[0].statements, 0);
        assert_eq!(snap[0].backend_pid, None);
        assert_eq!(snap[0].application_name, "till-3");
        let sb = &snap[1];
        assert_eq!(sb.user, "bob");
        assert_eq!(sb.database, "pos");
        assert_eq!(sb.client_addr.to_string(), "10.0.0.7:51234");
        assert_eq!(sb.state, SessionState::Active);
        assert_eq!(sb.statements, 2);
        assert_eq!(sb.tracked_versions, 42);
        assert_eq!(sb.backend_pid, Some(4711));
        assert_eq!(sb.application_name, "psql");
        assert_eq!((sb.client_tls, sb.server_tls), (Some("TLSv1.3"), None));

        drop(a);
        let snap = reg.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].user, "bob");
        b.ready_for_query(TxStatus::InTransaction);
        assert_eq!(reg.snapshot()[0].state, SessionState::InTransaction);
        drop(b);
        assert!(reg.is_empty());
    }

    /// Counts its wake-ups.
    struct CountingWaker(AtomicU64);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn drain_all_wakes_live_sessions_and_marks_later_ones() {
        let reg = Arc::new(SessionRegistry::new());
        let mut a = reg.register(start("alice"));
        let count = Arc::new(CountingWaker(AtomicU64::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(!a.poll_drain(&mut cx));
        assert!(!a.poll_drain(&mut cx));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);

        reg.drain_all();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the waiting task is woken once"
        );
        assert!(a.poll_drain(&mut cx));
        let mut b = reg.register(start("bob"));
        assert!(
            b.poll_drain(&mut cx),
            "a session registered while draining starts drained"
        );
    }
}
