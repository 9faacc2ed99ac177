//! The server: listens, accepts sessions, reloads the config on SIGHUP and drains on
//! SIGTERM/SIGINT.
//!
//! Draining stops accepting, lets every session finish its transaction (an idle session is
//! closed at once with `57P01`), and after `shutdown_timeout` closes what is left. `/metrics`
//! answers until the drain is over.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_util::task::AbortOnDropHandle;
use tracing::{error, info, warn};

use crate::admin::{AdminState, serve_metrics};
use crate::config::Config;
use crate::engine::Settings;
use crate::relay::{self, Shared};
use crate::tasks::SessionTasks;

/// A running proxy: bound, not yet serving.
pub struct Server {
    pub listener: TcpListener,
    pub metrics_listener: Option<TcpListener>,
    pub shared: Arc<Shared>,
    /// Metrics, sessions and conflicts (the relay reaches them as its `Operator`).
    pub admin: AdminState,
    shutdown_tx: watch::Sender<bool>,
    /// Single-threaded runtimes the sessions are spread over (empty: the caller's runtime).
    session_threads: Vec<tokio::runtime::Handle>,
}

impl Server {
    /// Binds the listen address and prepares TLS.
    ///
    /// An address that asked for port 0 is recorded in the config as the one bound, so that
    /// logs and `SHOW CONFIG` tell where the proxy really listens.
    pub async fn bind(mut config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Server> {
        let tls = relay::tls::TlsSetup::load(&config)?;
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let metrics_listener = match &config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {addr}"))?,
            ),
            None => None,
        };
        if asks_port_zero(&config.listen) {
            config.listen = listener.local_addr()?.to_string();
        }
        if let (Some(addr), Some(l)) = (&mut config.metrics_listen, &metrics_listener)
            && asks_port_zero(addr)
        {
            *addr = l.local_addr()?.to_string();
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let admin = AdminState::new();
        let shared = Arc::new(Shared::new(
            Settings::new(config, 1),
            shutdown_rx,
            tls,
            config_path,
            Arc::new(admin.clone()),
        ));
        Ok(Server {
            listener,
            metrics_listener,
            shared,
            admin,
            shutdown_tx,
            session_threads: Vec::new(),
        })
    }

    /// The address clients connect to (the bound port when `listen` asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address `/metrics` is served on, when `metrics_listen` is set (the bound port when
    /// it asked for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Runs the sessions on `n` threads, each with a single-threaded runtime of its own, in
    /// turn. A session then stays on one thread and is woken only by its own sockets: no work
    /// stealing, no cross-thread wake-ups on the relay path (the way PgBouncer runs one event
    /// loop, times `n`).
    pub fn with_session_threads(mut self, n: usize) -> anyhow::Result<Server> {
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            self.session_threads.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("optlock-sessions-{i}"))
                .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        }
        Ok(self)
    }

    /// A handle that starts a graceful shutdown when sent `true`.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown_tx.clone()
    }

    /// Serves until a shutdown signal, then drains.
    pub async fn run(self) -> anyhow::Result<()> {
        let Server {
            listener,
            metrics_listener,
            shared,
            admin,
            shutdown_tx,
            session_threads,
        } = self;
        let sessions = SessionTasks::new();
        let _abort = sessions.abort_on_drop();
        let shutdown_rx = shared.shutdown.clone();
        spawn_signal_handlers(shared.clone(), shutdown_tx.clone())?;
        // `/metrics` stays up while draining (sessions_active shows the drain) and stops when
        // `stop_metrics` is dropped, as `run` returns.
        let stop_metrics = start_metrics(metrics_listener, &admin)?;
        info!(
            listen = %listener.local_addr()?,
            upstream = %shared.settings().config.upstream,
            guards = shared.settings().guards.guards.len(),
            "optlock is ready"
        );
        match session_threads.first().cloned() {
            // The first session thread accepts: a client it keeps is served where it was
            // accepted, and a connection wakes one thread fewer.
            Some(first) => {
                let listener = listener.into_std()?;
                let (shared, sessions) = (shared.clone(), sessions.clone());
                // A server dropped before its shutdown stops accepting too.
                let accepting = AbortOnDropHandle::new(first.spawn(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            let threads = Threads::Accepting(&session_threads);
                            accept_loop(&l, &shared, threads, &sessions, shutdown_rx).await
                        }
                        Err(e) => error!(error = %e, "cannot listen on the session thread"),
                    }
                }));
                accepting.await?;
            }
            None => {
                let threads = Threads::None;
                accept_loop(&listener, &shared, threads, &sessions, shutdown_rx).await;
                drop(listener);
            }
        }
        drain(&sessions, &admin, &shared).await;
        drop(stop_metrics);
        info!("optlock stopped");
        Ok(())
    }
}

/// Serves `/metrics` on its listener, when there is one, until the returned sender is dropped.
fn start_metrics(
    metrics_listener: Option<TcpListener>,
    admin: &AdminState,
) -> anyhow::Result<oneshot::Sender<()>> {
    let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
    if let Some(l) = metrics_listener {
        info!(listen = %l.local_addr()?, "metrics at /metrics");
        tokio::spawn(serve_metrics(l, admin.metrics.clone(), async move {
            let _ = metrics_stopped.await;
        }));
    }
    Ok(stop_metrics)
}

/// Where sessions run.
#[derive(Clone, Copy)]
enum Threads<'t> {
    /// On the runtime that accepts them.
    None,
    /// On these threads in turn; the accepting loop runs on the first.
    Accepting(&'t [tokio::runtime::Handle]),
}

/// Accepts clients until a shutdown is asked for, handing each to a session.
async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    threads: Threads<'_>,
    sessions: &Arc<SessionTasks>,
    mut shutdown_rx: watch::Receiver<bool>,
) {
    let mut next_thread = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let thread = match threads {
                        Threads::Accepting(all) if !all.is_empty() => {
                            let i = next_thread % all.len();
                            next_thread = next_thread.wrapping_add(1);
                            // The first thread is this one: its client stays here.
                            (i > 0).then(|| &all[i])
                        }
                        _ => None,
                    };
                    spawn_session(sessions, thread, tcp, peer, shared);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown_rx.changed() => break,
        }
    }
}

/// Starts the session of an accepted client on `thread`, or on the accepting runtime when
/// `None`.
fn spawn_session(
    sessions: &Arc<SessionTasks>,
    thread: Option<&tokio::runtime::Handle>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) {
    // A session's future is large (kilobytes: the engine, the login's and the relay's
    // states); boxed where it is made, it is copied once, not again by each wrapper and by
    // the spawn.
    let Some(handle) = thread else {
        sessions.spawn(
            None,
            Box::pin(relay::serve_client(tcp, peer, shared.clone())),
        );
        return;
    };
    // The socket moves to the session thread's own reactor, so its readiness wakes that
    // thread directly.
    match tcp.into_std() {
        Ok(std) => {
            let shared = shared.clone();
            sessions.spawn(Some(handle), async move {
                match tokio::net::TcpStream::from_std(std) {
                    Ok(tcp) => Box::pin(relay::serve_client(tcp, peer, shared)).await,
                    Err(e) => {
                        error!(client = %peer, error = %e, "cannot register the client socket")
                    }
                }
            });
        }
        Err(e) => error!(client = %peer, error = %e, "cannot hand the client socket over"),
    }
}

/// Drains: closes the idle sessions, waits up to `shutdown_timeout` for the others to finish
/// their transactions, then closes what is left.
async fn drain(sessions: &SessionTasks, admin: &AdminState, shared: &Shared) {
    admin.sessions.drain_all();
    let timeout = shared.settings().config.shutdown_timeout;
    info!(
        sessions = sessions.len(),
        timeout_s = timeout.as_secs_f64(),
        "draining: waiting for open transactions to finish"
    );
    let drained = tokio::time::timeout(timeout, sessions.wait_empty()).await;
    if drained.is_err() {
        warn!(
            sessions = sessions.len(),
            "shutdown_timeout reached: closing the remaining sessions"
        );
        sessions.abort_all().await;
    }
}

/// True for `host:0`: any free port.
fn asks_port_zero(addr: &str) -> bool {
    addr.rsplit_once(':').is_some_and(|(_, port)| port == "0")
}

/// Reloads the config on SIGHUP; starts the shutdown on SIGTERM and SIGINT.
fn spawn_signal_handlers(
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => match shared.reload() {
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
