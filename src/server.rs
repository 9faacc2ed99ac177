//! The server: listens, accepts sessions, reloads the config on SIGHUP and drains on
//! SIGTERM/SIGINT.
//!
//! Draining stops accepting, lets every session finish its transaction (an idle session is
//! closed at once with `57P01`), and after `shutdown_timeout` closes what is left.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::relay::{self, Settings, Shared};

/// A running proxy: bound, not yet serving.
pub struct Server {
    pub listener: TcpListener,
    pub shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    shutdown_tx: watch::Sender<bool>,
}

impl Server {
    /// Binds the listen address and prepares TLS.
    pub async fn bind(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Server> {
        let tls = match &config.tls {
            Some(t) => Some(relay::handshake::tls_acceptor(&t.cert, &t.key)?),
            None => None,
        };
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(Settings::new(config, 1), shutdown_rx, tls));
        Ok(Server {
            listener,
            shared,
            config_path,
            shutdown_tx,
        })
    }

    /// A handle that starts a graceful shutdown when sent `true`.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown_tx.clone()
    }

    /// Re-reads the config file; on error the running config stays.
    pub fn reload(shared: &Shared, path: Option<&PathBuf>) -> Result<String, String> {
        let Some(path) = path else {
            return Err("no config file to reload (started without --config)".into());
        };
        let mut next = Config::load(path).map_err(|e| e.to_string())?;
        let current = shared.settings();
        // Where to listen and connect is fixed for the life of the process.
        next.listen = current.config.listen.clone();
        next.upstream = current.config.upstream.clone();
        let n = next.guards.len();
        let s = shared.replace_config(next);
        Ok(format!(
            "reloaded {}: {n} guarded table(s), generation {}",
            path.display(),
            s.generation
        ))
    }

    /// Serves until a shutdown signal, then drains.
    pub async fn run(self) -> anyhow::Result<()> {
        let Server {
            listener,
            shared,
            config_path,
            shutdown_tx,
        } = self;
        let mut sessions = JoinSet::new();
        let mut shutdown_rx = shared.shutdown.clone();
        spawn_signal_handlers(shared.clone(), config_path.clone(), shutdown_tx.clone())?;
        info!(
            listen = %listener.local_addr()?,
            upstream = %shared.settings().config.upstream,
            guards = shared.settings().guards.guards.len(),
            "optlock is ready"
        );
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        sessions.spawn(relay::serve_client(tcp, peer, shared.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                _ = shutdown_rx.changed() => break,
            }
        }
        drop(listener);
        let timeout = shared.settings().config.shutdown_timeout;
        info!(
            sessions = sessions.len(),
            timeout_s = timeout.as_secs_f64(),
            "draining: waiting for open transactions to finish"
        );
        let drained = tokio::time::timeout(timeout, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                sessions = sessions.len(),
                "shutdown_timeout reached: closing the remaining sessions"
            );
            sessions.shutdown().await;
        }
        info!("optlock stopped");
        Ok(())
    }
}

fn spawn_signal_handlers(
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    shutdown_tx: watch::Sender<bool>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => match Server::reload(&shared, config_path.as_ref()) {
                    Ok(msg) => info!("{msg}"),
                    Err(e) => error!(error = %e, "reload failed; keeping the running config"),
                },
                _ = term.recv() => { info!("SIGTERM: shutting down"); let _ = shutdown_tx.send(true); }
                _ = int.recv() => { info!("SIGINT: shutting down"); let _ = shutdown_tx.send(true); }
            }
        }
    });
    Ok(())
}
