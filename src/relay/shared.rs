//! What every session of the process shares: the settings in force and the TLS material of
//! both legs (each swapped on reload), the shutdown signal, and the operator side the relay
//! reports to.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::handshake::ClientStream;
use super::pool::Pools;
use super::tls::TlsSetup;
use super::upstream::{self, Upstream};
use crate::config::Config;
use crate::engine::{Ident, Settings, SettingsSource};
use crate::events::ProcessEvents;

/// The operator's side of the process as the relay sees it: where to report events, and who
/// serves the sessions of the admin console's virtual database. The admin module implements it;
/// the relay knows only this trait.
pub trait Operator: ProcessEvents {
    /// The virtual database whose sessions go to [`Operator::serve_console`].
    fn console_database(&self) -> &str;
    /// Serves one session of the console, from its startup packet to its end.
    fn serve_console(
        &self,
        stream: ClientStream,
        params: Vec<(String, String)>,
        ident: Ident,
        shared: Arc<Shared>,
        settings: Arc<Settings>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
    /// The guarded tables of a new config generation (metrics are labelled by them).
    fn set_tables(&self, settings: &Settings);
}

/// State shared by every session of the process.
pub struct Shared {
    settings: RwLock<Arc<Settings>>,
    generation: AtomicU64,
    /// Moved on by DDL that may change which relations' writes land in a guarded table.
    catalog_epoch: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    tls: RwLock<Arc<TlsSetup>>,
    pub operator: Arc<dyn Operator>,
    /// The config file, for reloads.
    pub config_path: Option<PathBuf>,
    /// The server connections kept for reuse (`pool_mode = "session"`).
    pub pools: Arc<Pools>,
}

impl SettingsSource for Shared {
    #[inline]
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn settings(&self) -> Arc<Settings> {
        Shared::settings(self)
    }

    #[inline]
    fn catalog_epoch(&self) -> u64 {
        self.catalog_epoch.load(Ordering::Acquire)
    }

    fn catalog_changed(&self) {
        self.catalog_epoch.fetch_add(1, Ordering::AcqRel);
    }
}

impl Shared {
    pub fn new(
        settings: Settings,
        shutdown: watch::Receiver<bool>,
        tls: TlsSetup,
        config_path: Option<PathBuf>,
        operator: Arc<dyn Operator>,
    ) -> Shared {
        operator.set_tables(&settings);
        Shared {
            generation: AtomicU64::new(settings.generation),
            catalog_epoch: AtomicU64::new(0),
            settings: RwLock::new(Arc::new(settings)),
            shutdown,
            tls: RwLock::new(Arc::new(tls)),
            pools: Arc::new(Pools::new(operator.clone())),
            operator,
            config_path,
        }
    }

    /// The current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The TLS material in force (certificates are read again on reload).
    pub fn tls(&self) -> Arc<TlsSetup> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connects to the upstream server with the TLS material in force; the error is for the
    /// client (`08006`).
    pub async fn connect_upstream(&self, config: &Config) -> Result<Upstream, String> {
        let tls = self.tls();
        upstream::connect(config, &tls.upstream).await
    }

    /// The generation of the current settings (changes on reload).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Installs a new config for statements from now on.
    pub fn replace_config(&self, config: Config) -> Arc<Settings> {
        let mut slot = self.settings.write().unwrap_or_else(|e| e.into_inner());
        let next = Arc::new(Settings::new(config, slot.generation + 1));
        self.operator.set_tables(&next);
        *slot = next.clone();
        self.generation.store(next.generation, Ordering::Release);
        next
    }

    /// Re-reads the config file and the TLS certificates and keys it names; on error the
    /// running config and certificates stay and the error says why. Sessions already open
    /// keep their connections as they are.
    pub fn reload(&self) -> Result<String, String> {
        let Some(path) = &self.config_path else {
            return Err("no config file to reload (started without --config)".into());
        };
        let mut next = Config::load(path).map_err(|e| e.to_string())?;
        let current = self.settings();
        // Where to listen and connect is fixed for the life of the process.
        let mut at_restart = Vec::new();
        let c = &current.config;
        if next.listen != c.listen {
            at_restart.push("listen");
        }
        if next.upstream != c.upstream {
            at_restart.push("upstream");
        }
        if next.metrics_listen != c.metrics_listen {
            at_restart.push("metrics_listen");
        }
        next.listen = c.listen.clone();
        next.upstream = c.upstream.clone();
        next.metrics_listen = c.metrics_listen.clone();
        next.check_tls()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let tls = TlsSetup::load(&next).map_err(|e| format!("{}: {e:#}", path.display()))?;
        let n = next.guards.len();
        let s = self.replace_config(next);
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tls);
        let mut msg = format!(
            "reloaded {}: {n} guarded table(s), TLS certificates read again, generation {}",
            path.display(),
            s.generation
        );
        if !at_restart.is_empty() {
            msg.push_str(&format!(
                "; {} differ from the running values and take effect only at restart",
                at_restart.join(", ")
            ));
        }
        Ok(msg)
    }
}
