//! The admin side as the relay sees it: [`AdminState`] implements the relay's [`Operator`]
//! (process events into metrics; the console's virtual database) and opens, for each session,
//! the [`SessionHooks`] that feed the registry, the metrics and the conflict log.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use super::conflicts::ConflictLog;
use super::metrics::{Metrics, OpenSession};
use super::registry::SessionHandle;
use super::state::{ADMIN_DATABASE, AdminState};
use crate::engine::{Ident, Settings};
use crate::events::{
    ClientError, Conflict, Direction, Outcome, PoolEvent, ProcessEvents, SessionEvents,
    SessionHooks, SessionStart,
};
use crate::guard::TableId;
use crate::protocol::TxStatus;
use crate::relay::handshake::ClientStream;
use crate::relay::{Operator, Shared};

impl ProcessEvents for AdminState {
    fn open_session(&self, start: SessionStart) -> Box<dyn SessionHooks> {
        Box::new(SessionAdmin {
            open: self.metrics.open_session(),
            handle: self.sessions.register(start),
            metrics: self.metrics.clone(),
            conflicts: self.conflicts.clone(),
        })
    }

    #[inline]
    fn bytes(&self, direction: Direction, n: u64) {
        self.metrics.bytes(direction, n);
    }

    #[inline]
    fn added_latency(&self, d: Duration) {
        self.metrics.added_latency(d);
    }

    fn upstream_connect_failed(&self) {
        self.metrics.upstream_connect_failed();
    }

    fn client_error(&self, reason: ClientError) {
        self.metrics.client_error(reason);
    }

    fn pool_event(&self, event: PoolEvent) {
        self.metrics.pool_event(event);
    }
}

impl Operator for AdminState {
    fn console_database(&self) -> &str {
        ADMIN_DATABASE
    }

    fn serve_console(
        &self,
        stream: ClientStream,
        params: Vec<(String, String)>,
        ident: Ident,
        shared: Arc<Shared>,
        settings: Arc<Settings>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let admin = self.clone();
        Box::pin(async move {
            super::session::serve(stream, &params, ident, shared, settings, admin).await
        })
    }

    fn set_tables(&self, settings: &Settings) {
        self.metrics.set_tables(settings.guards.tables());
    }
}

/// One session's hooks: its registry entry, and the process's counters.
struct SessionAdmin {
    handle: SessionHandle,
    metrics: Arc<Metrics>,
    conflicts: Arc<ConflictLog>,
    /// Counts the session as open until dropped.
    #[allow(dead_code)]
    open: OpenSession,
}

impl SessionEvents for SessionAdmin {
    #[inline]
    fn statement(&self) {
        self.metrics.statement();
        self.handle.statement();
    }

    fn guarded(&self, table: TableId, outcome: Outcome) {
        self.metrics.guarded(table, outcome);
        self.handle.count(table, outcome, None);
    }

    #[inline]
    fn write_sent(&self, table: TableId, class: Option<Outcome>) {
        self.metrics.guarded(table, Outcome::Rewritten);
        if let Some(class) = class {
            self.metrics.guarded(table, class);
        }
        self.handle.count(table, Outcome::Rewritten, class);
    }

    fn conflict(&self, conflict: Conflict) {
        self.conflicts.record(conflict);
    }

    #[inline]
    fn ready_for_query(&self, status: TxStatus, tracked: usize) {
        self.handle.ready_for_query(status);
        self.handle.set_tracked_versions(tracked);
    }

    fn backend_pid(&self, pid: i32) {
        self.handle.set_backend_pid(pid);
    }

    fn application_name(&self, name: &str) {
        self.handle.set_application_name(name);
    }

    fn guards_in_force(&self, guards: &str) {
        self.handle.set_guards(guards);
    }
}

impl SessionHooks for SessionAdmin {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> bool {
        self.handle.poll_drain(cx)
    }
}
