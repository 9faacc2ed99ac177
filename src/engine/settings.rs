//! What one config generation gives the sessions (the config and its compiled guards), and the
//! source a session asks for the current generation.

use std::sync::Arc;

use crate::config::Config;
use crate::guard::GuardSet;

/// One config generation: the config and its guards.
#[derive(Debug)]
pub struct Settings {
    pub config: Arc<Config>,
    pub guards: Arc<GuardSet>,
    pub generation: u64,
}

impl Settings {
    pub fn new(config: Config, generation: u64) -> Settings {
        let guards = GuardSet::new(&config);
        Settings {
            config: Arc::new(config),
            guards,
            generation,
        }
    }
}

impl Settings {
    /// These settings as they apply to a session of `user` named `application` (see
    /// [`GuardSet::scoped`]): the same `Arc` when the guards' scopes change nothing for it.
    pub fn scoped(self: &Arc<Settings>, application: &str, user: &str) -> Arc<Settings> {
        let guards = self.guards.scoped(application, user);
        if Arc::ptr_eq(&guards, &self.guards.config_set()) {
            return self.clone();
        }
        Arc::new(Settings {
            config: self.config.clone(),
            guards,
            generation: self.generation,
        })
    }
}

/// Where a session finds the config in force. A session compares generations before each
/// statement (one atomic load) and takes the new settings only when the number moved.
pub trait SettingsSource: Send + Sync {
    /// The generation of the settings in force.
    fn generation(&self) -> u64;
    /// The settings in force.
    fn settings(&self) -> Arc<Settings>;

    /// A number moved on whenever a session ran DDL that may change which relations' writes
    /// land in a guarded table (a view, a partition, a rule, a trigger) or what read capture
    /// knows of the database (see [`changes_landing`]): every session then resolves its
    /// guards again at its next boundary.
    fn catalog_epoch(&self) -> u64 {
        0
    }

    /// A session ran such DDL.
    fn catalog_changed(&self) {}
}

/// True for the command tags of DDL that may change which relations' writes land in a
/// guarded table, or what read capture must know of the database: which names are aggregate
/// functions, which relations share a guarded table's name.
pub fn changes_landing(tag: &[u8]) -> bool {
    matches!(
        tag,
        b"CREATE VIEW"
            | b"ALTER VIEW"
            | b"DROP VIEW"
            | b"CREATE TABLE"
            | b"ALTER TABLE"
            | b"DROP TABLE"
            | b"CREATE RULE"
            | b"DROP RULE"
            | b"CREATE TRIGGER"
            | b"DROP TRIGGER"
            | b"CREATE AGGREGATE"
            | b"ALTER AGGREGATE"
            | b"DROP AGGREGATE"
            | b"CREATE FOREIGN TABLE"
            | b"ALTER FOREIGN TABLE"
            | b"DROP FOREIGN TABLE"
            | b"ALTER MATERIALIZED VIEW"
            | b"DROP MATERIALIZED VIEW"
            | b"CREATE SEQUENCE"
            | b"ALTER SEQUENCE"
            | b"DROP SEQUENCE"
    )
}

/// Settings that never change: for tools and tests.
#[derive(Debug)]
pub struct FixedSettings(pub Arc<Settings>);

impl SettingsSource for FixedSettings {
    fn generation(&self) -> u64 {
        self.0.generation
    }

    fn settings(&self) -> Arc<Settings> {
        self.0.clone()
    }
}
