//! The admin side's shared state: the process's metrics, its live sessions and its recent
//! conflicts, as one cloneable value.

use std::sync::Arc;

use super::conflicts::ConflictLog;
use super::metrics::Metrics;
use super::registry::SessionRegistry;

/// The database name that opens the console.
pub const ADMIN_DATABASE: &str = "optlock";

/// Metrics, live sessions and recent conflicts of the process.
#[derive(Clone, Default)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<SessionRegistry>,
    pub conflicts: Arc<ConflictLog>,
}

impl AdminState {
    pub fn new() -> AdminState {
        AdminState::default()
    }
}
