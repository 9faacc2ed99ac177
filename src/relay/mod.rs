//! The relay: one upstream connection per client connection, relayed at the message level.
//!
//! - [`handshake`]: the client's start-up packets (TLS, GSSENC, cancel, startup).
//! - [`session`]: the relay loop of one session.
//! - [`replies`]: the queue of replies each client message awaits.
//! - [`guarded`]: the guard's hooks in that loop.

/// Implements `AsyncRead` and `AsyncWrite` for an enum whose variants each hold one stream, by
/// handing every call to the stream at hand.
macro_rules! stream_enum_io {
    ($ty:ident { $($variant:ident),+ $(,)? }) => {
        impl tokio::io::AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => std::pin::Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }

        impl tokio::io::AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => std::pin::Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => std::pin::Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => std::pin::Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

pub mod admin_session;
pub mod guarded;
pub mod handshake;
pub mod replies;
pub mod session;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span, warn};

use crate::admin::{ConflictLog, Direction, Metrics, SessionRegistry, SessionStart};
use crate::config::Config;
use crate::guard::GuardSet;
use guarded::{GuardState, Ident};
use handshake::{ClientStream, Opening};
use session::Session;
use upstream::Upstream;

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
    pub admin: AdminState,
    /// The config file, for reloads.
    pub config_path: Option<PathBuf>,
}

/// Metrics, live sessions and recent conflicts, shared with the admin console.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<SessionRegistry>,
    pub conflicts: Arc<ConflictLog>,
}

impl Shared {
    pub fn new(
        settings: Settings,
        shutdown: watch::Receiver<bool>,
        tls: Option<TlsAcceptor>,
        config_path: Option<PathBuf>,
    ) -> Shared {
        let metrics = Arc::new(Metrics::new());
        metrics.set_tables(settings.guards.tables());
        Shared {
            generation: AtomicU64::new(settings.generation),
            settings: RwLock::new(Arc::new(settings)),
            shutdown,
            tls,
            admin: AdminState {
                metrics,
                sessions: Arc::new(SessionRegistry::new()),
                conflicts: Arc::new(ConflictLog::default()),
            },
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

    /// The generation of the current settings (changes on reload).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Installs a new config for statements from now on.
    pub fn replace_config(&self, config: Config) -> Arc<Settings> {
        let mut slot = self.settings.write().unwrap_or_else(|e| e.into_inner());
        let next = Arc::new(Settings::new(config, slot.generation + 1));
        self.admin.metrics.set_tables(next.guards.tables());
        *slot = next.clone();
        self.generation.store(next.generation, Ordering::Release);
        next
    }

    /// Re-reads the config file; on error the running config stays and the error says why.
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
        if next.tls != c.tls {
            at_restart.push("tls_cert/tls_key");
        }
        if next.metrics_listen != c.metrics_listen {
            at_restart.push("metrics_listen");
        }
        next.listen = c.listen.clone();
        next.upstream = c.upstream.clone();
        next.tls = c.tls.clone();
        next.metrics_listen = c.metrics_listen.clone();
        let n = next.guards.len();
        let s = self.replace_config(next);
        let mut msg = format!(
            "reloaded {}: {n} guarded table(s), generation {}",
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

    #[inline]
    pub(crate) fn metrics_bytes(&self, from_client: bool, n: usize) {
        let d = if from_client {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        self.admin.metrics.bytes(d, n as u64);
    }

    #[inline]
    pub(crate) fn metrics_latency(&self, started: Instant) {
        self.admin.metrics.added_latency(started.elapsed());
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
        Opening::Cancel(packet) => {
            upstream::forward_cancel(&settings.config.upstream, &packet, peer).await
        }
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
            let ident = Ident {
                client: peer,
                user,
                database,
                application_name: param("application_name").to_string(),
            };
            if ident.database == admin_session::ADMIN_DATABASE {
                admin_session::serve(stream, &params, ident, shared, settings)
                    .instrument(span)
                    .await
            } else {
                run_session(stream, packet, ident, shared, settings)
                    .instrument(span)
                    .await
            }
        }
    }
}

async fn run_session(
    mut stream: ClientStream,
    packet: Vec<u8>,
    ident: Ident,
    shared: Arc<Shared>,
    settings: Arc<Settings>,
) {
    let started = Instant::now();
    let config = &settings.config;
    let upstream = match upstream::connect(config).await {
        Ok(s) => s,
        Err(message) => {
            shared.admin.metrics.upstream_connect_failed();
            warn!(error = %message, "upstream connection failed");
            handshake::send_fatal(&mut stream, "08006", &message).await;
            return;
        }
    };
    let _open = shared.admin.metrics.open_session();
    let handle = shared.admin.sessions.register(SessionStart {
        client_addr: ident.client,
        user: ident.user.clone(),
        database: ident.database.clone(),
        application_name: ident.application_name.clone(),
    });
    debug!("session started");
    let guard = GuardState::new(ident, config.track_limit);
    let mut session = Session::new(shared.clone(), settings.clone(), guard, handle);
    session.to_server.extend_from_slice(&packet);
    let end = match upstream {
        Upstream::Tcp(mut s) => {
            let (sr, sw) = s.split();
            relay_to(&mut session, &mut stream, sr, sw).await
        }
        Upstream::Unix(mut s) => {
            let (sr, sw) = s.split();
            relay_to(&mut session, &mut stream, sr, sw).await
        }
    };
    session::log_end(&end, started);
}

/// Runs the session's relay loop between the client and the server halves given.
async fn relay_to<SR, SW>(
    session: &mut Session,
    stream: &mut ClientStream,
    sr: SR,
    sw: SW,
) -> session::End
where
    SR: tokio::io::AsyncRead + Unpin,
    SW: tokio::io::AsyncWrite + Unpin,
{
    match stream {
        ClientStream::Plain(tcp) => {
            let (cr, cw) = tcp.split();
            session.run(cr, cw, sr, sw).await
        }
        ClientStream::Tls(tls) => {
            let (cr, cw) = tokio::io::split(tls.as_mut());
            session.run(cr, cw, sr, sw).await
        }
    }
}
