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
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::admin::{AdminState, serve_metrics};
use crate::config::Config;
use crate::engine::Settings;
use crate::relay::{self, Shared};

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
        let listener = listen(&config.listen)
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

    /// Runs the sessions on `n` threads, each with a single-threaded runtime of its own that
    /// accepts clients itself. A session then stays on the thread that accepted it and is woken
    /// only by its own sockets: no work stealing, no hand-over from an accepting thread and no
    /// cross-thread wake-ups from its start to its end (the way PgBouncer runs one event loop,
    /// times `n`).
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
        if session_threads.is_empty() {
            let mut sessions = JoinSet::new();
            accept_loop(&listener, &shared, &mut sessions, shutdown_rx).await;
            drop(listener);
            admin.sessions.drain_all();
            drain(sessions, &shared).await;
        } else {
            let loops = start_thread_loops(listener, &shared, &session_threads)?;
            let mut rx = shutdown_rx;
            let _ = rx.wait_for(|stop| *stop).await;
            admin.sessions.drain_all();
            for l in loops {
                let _ = l.await;
            }
        }
        drop(stop_metrics);
        info!("optlock stopped");
        Ok(())
    }
}

/// Starts an accept loop on every session thread, each over a listening socket of its own
/// (the first is the one bound; the others join it with `SO_REUSEPORT`, and the kernel spreads
/// new connections over them): a client is accepted, served and reaped by one thread, with
/// no hand-over between threads and no thread woken for a client another one takes.
fn start_thread_loops(
    listener: TcpListener,
    shared: &Arc<Shared>,
    session_threads: &[tokio::runtime::Handle],
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let addr = listener.local_addr()?;
    let mut sockets = vec![listener.into_std()?];
    for _ in 1..session_threads.len() {
        sockets.push(
            reuseport_socket(addr)
                .and_then(|s| {
                    s.listen(LISTEN_BACKLOG)?;
                    Ok(s.into())
                })
                .with_context(|| format!("cannot listen on {addr} for a session thread"))?,
        );
    }
    let mut loops = Vec::with_capacity(session_threads.len());
    for (handle, own) in session_threads.iter().zip(sockets) {
        let shared = shared.clone();
        let shutdown_rx = shared.shutdown.clone();
        loops.push(handle.spawn(async move {
            let listener = match TcpListener::from_std(own) {
                Ok(l) => l,
                Err(e) => {
                    error!(error = %e, "cannot register the listening socket");
                    return;
                }
            };
            let mut sessions = JoinSet::new();
            accept_loop(&listener, &shared, &mut sessions, shutdown_rx).await;
            drop(listener);
            drain(sessions, &shared).await;
        }));
    }
    Ok(loops)
}

/// The listen queue of each listening socket (what tokio's `TcpListener::bind` uses).
const LISTEN_BACKLOG: i32 = 1024;

/// Binds `addr` (the first of its addresses that binds) for the session threads to share.
///
/// The socket has `SO_REUSEPORT`, so that each session thread can listen on a socket of its
/// own. A port some other listener holds is refused all the same: a plain socket is bound to
/// it first (which fails on a port in use, whether or not that listener shares it), so a
/// second proxy started on the port fails as it would without `SO_REUSEPORT` instead of
/// taking half of the first one's clients.
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        match bind_shared(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if addr.port() != 0 {
        let probe = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let socket = reuseport_socket(addr)?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A non-blocking socket bound to `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`.
fn reuseport_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
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

/// Accepts clients until a shutdown is asked for, serving each in a task of the runtime it
/// runs on and reaping the sessions that end meanwhile.
async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    sessions: &mut JoinSet<()>,
    mut shutdown_rx: watch::Receiver<bool>,
) {
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
}

/// Drains one accept loop's sessions (the idle ones were told to close): waits up to
/// `shutdown_timeout` for the others to finish their transactions, then closes what is left.
async fn drain(mut sessions: JoinSet<()>, shared: &Shared) {
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
