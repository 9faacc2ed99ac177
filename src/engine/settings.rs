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

/// Where a session finds the config in force. A session compares generations before each
/// statement (one atomic load) and takes the new settings only when the number moved.
pub trait SettingsSource: Send + Sync {
    /// The generation of the settings in force.
    fn generation(&self) -> u64;
    /// The settings in force.
    fn settings(&self) -> Arc<Settings>;
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
