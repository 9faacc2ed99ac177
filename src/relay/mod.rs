//! The relay: one upstream connection per client connection, relayed at the message level.
//!
//! - [`handshake`]: the client's start-up packets (TLS, GSSENC, cancel, startup).
//! - [`session`]: the relay loop of one session.
//! - [`replies`]: the queue of replies each client message awaits.
//! - [`guarded`]: the guard's hooks in that loop.

pub mod guarded;
pub mod handshake;
pub mod replies;
pub mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::Config;
use crate::guard::GuardSet;
use handshake::{ClientStream, Opening};
use session::Session;

/// What one config generation gives the sessions: the config and its guards.
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

/// State shared by every session of the process.
pub struct Shared {
    settings: RwLock<Arc<Settings>>,
    generation: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    pub tls: Option<TlsAcceptor>,
    pub(crate) stats: Stats,
}

/// Process-wide counters, updated with relaxed atomics on the hot path.
#[derive(Default)]
pub struct Stats {
    pub sessions_total: AtomicU64,
    pub sessions_active: AtomicU64,
    pub statements: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_from_server: AtomicU64,
    pub upstream_connect_failures: AtomicU64,
}

impl Shared {
    pub fn new(
        settings: Settings,
        shutdown: watch::Receiver<bool>,
        tls: Option<TlsAcceptor>,
    ) -> Shared {
        Shared {
            generation: AtomicU64::new(settings.generation),
            settings: RwLock::new(Arc::new(settings)),
            shutdown,
            tls,
            stats: Stats::default(),
        }
    }

    /// The current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        *slot = next.clone();
        self.generation.store(next.generation, Ordering::Release);
        next
    }

    #[inline]
    pub(crate) fn metrics_bytes(&self, from_client: bool, n: usize) {
        let c = if from_client {
            &self.stats.bytes_from_clients
        } else {
            &self.stats.bytes_from_server
        };
        c.fetch_add(n as u64, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn metrics_latency(&self, _started: Instant) {}

    #[inline]
    pub(crate) fn count_statement(&self) {
        self.stats.statements.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves one accepted client connection to its end.
pub async fn serve_client(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let settings = shared.settings();
    let opening = match tokio::time::timeout(
        settings.config.client_login_timeout,
        handshake::accept(tcp, shared.tls.as_ref()),
    )
    .await
    {
        Err(_) => {
            debug!(client = %peer, "no startup packet within client_login_timeout");
            return;
        }
        Ok(Err(e)) => {
            debug!(client = %peer, error = %e.message, "start-up failed");
            if let Some(mut s) = e.stream {
                handshake::send_fatal(&mut s, e.code, &e.message).await;
            }
            return;
        }
        Ok(Ok(o)) => o,
    };
    match opening {
        Opening::Cancel(packet) => forward_cancel(&settings.config.upstream, &packet, peer).await,
        Opening::Startup {
            stream,
            packet,
            params,
        } => {
            let param = |k: &str| {
                params
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
            };
            let user = param("user").to_string();
            let database = match param("database") {
                "" => user.clone(),
                db => db.to_string(),
            };
            let span = info_span!(
                "session",
                client = %peer,
                user = %user,
                database = %database,
                application_name = %param("application_name"),
            );
            run_session(stream, packet, shared, settings)
                .instrument(span)
                .await
        }
    }
}

async fn run_session(
    mut stream: ClientStream,
    packet: Vec<u8>,
    shared: Arc<Shared>,
    settings: Arc<Settings>,
) {
    let started = Instant::now();
    let config = &settings.config;
    let upstream = match connect_upstream(config).await {
        Ok(s) => s,
        Err(message) => {
            shared
                .stats
                .upstream_connect_failures
                .fetch_add(1, Ordering::Relaxed);
            warn!(error = %message, "upstream connection failed");
            handshake::send_fatal(&mut stream, "08006", &message).await;
            return;
        }
    };
    shared.stats.sessions_total.fetch_add(1, Ordering::Relaxed);
    shared.stats.sessions_active.fetch_add(1, Ordering::Relaxed);
    debug!("session started");
    let mut session = Session::new(shared.clone(), settings.clone(), Default::default());
    session.to_server.extend_from_slice(&packet);
    let mut upstream = upstream;
    let (sr, sw) = upstream.split();
    let end = match &mut stream {
        ClientStream::Plain(tcp) => {
            let (cr, cw) = tcp.split();
            session.run(cr, cw, sr, sw).await
        }
        ClientStream::Tls(tls) => {
            let (cr, cw) = tokio::io::split(tls.as_mut());
            session.run(cr, cw, sr, sw).await
        }
    };
    shared.stats.sessions_active.fetch_sub(1, Ordering::Relaxed);
    session::log_end(&end, started);
}

/// Connects to the upstream server, with the configured timeout.
pub async fn connect_upstream(config: &Config) -> Result<TcpStream, String> {
    let addr = &config.upstream;
    match tokio::time::timeout(config.upstream_connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(format!(
            "could not connect to the upstream server at {addr}: no answer within upstream_connect_timeout ({:?})",
            config.upstream_connect_timeout
        )),
        Ok(Err(e)) => Err(format!(
            "could not connect to the upstream server at {addr}: {e}"
        )),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// Forwards a `CancelRequest` to the server; the key in it was issued by that server.
async fn forward_cancel(upstream: &str, packet: &[u8], peer: SocketAddr) {
    match TcpStream::connect(upstream).await {
        Ok(mut s) => {
            let _ = s.write_all(packet).await;
            let _ = s.shutdown().await;
            debug!(client = %peer, "cancel request forwarded");
        }
        Err(e) => {
            warn!(client = %peer, error = %e, "cancel request could not reach the upstream server")
        }
    }
}
