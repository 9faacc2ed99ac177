//! The relay: one upstream connection per client connection (opened for it, or lent from a
//! pool), relayed at the message level.
//!
//! - [`handshake`]: the client's start-up packets (TLS, GSSENC, cancel, startup).
//! - [`session`]: the IO loop of one session, around its [`Engine`].
//! - [`upstream`]: the connection to the server (TLS negotiated as libpq does), and cancel
//!   requests.
//! - [`tls`]: the TLS material of both legs, read at start and on reload.
//! - [`binding`]: SCRAM channel binding, which cannot pass a proxy that ends TLS.
//! - [`shared`]: what every session of the process shares (settings, TLS, the operator).
//! - [`pool`]: session pooling: server connections kept for the next client.
//! - [`auth`]: logins the proxy checks itself (pooled mode).
//!
//! The relay is the only code that does IO for a session: the protocol itself (the reply queue,
//! the guard) is [`crate::engine`]'s, which the session loop feeds and drains.

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

pub mod auth;
pub mod binding;
pub mod handshake;
pub mod pool;
pub mod session;
pub mod tls;
pub mod upstream;

pub mod shared;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::PoolMode;
use crate::engine::{Engine, Ident, Settings};
use crate::events::{ClientError, SessionStart};
use binding::BindingCheck;
use handshake::{ClientStream, Opening};
use session::Session;
pub use shared::{Operator, Shared};
use tls::TlsSetup;
use upstream::Upstream;

/// Serves one accepted client connection to its end.
pub async fn serve_client(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let settings = shared.settings();
    let tls = shared.tls();
    let opening = match tokio::time::timeout(
        settings.config.client_login_timeout,
        handshake::accept(tcp, &tls),
    )
    .await
    {
        Err(_) => {
            debug!(client = %peer, "no startup packet within client_login_timeout");
            shared.operator.client_error(ClientError::LoginTimeout);
            return;
        }
        Ok(Err(e)) => {
            debug!(client = %peer, error = %e.message, "start-up failed");
            if let Some(reason) = e.reason {
                shared.operator.client_error(reason);
            }
            if let Some(mut s) = e.stream {
                handshake::send_fatal(&mut s, e.code, &e.message).await;
            }
            return;
        }
        Ok(Ok(o)) => o,
    };
    match opening {
        Opening::Cancel { mut stream, packet } => {
            // Pooled clients hold keys of their own (see `pool::Pools::cancel_packet`).
            let packet = if settings.config.pool.mode == PoolMode::Session {
                match shared.pools.cancel_packet(&packet) {
                    Some(p) => p,
                    None => {
                        debug!(client = %peer, "cancel request with no current pooled client's key: ignored");
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                        return;
                    }
                }
            } else {
                packet
            };
            upstream::forward_cancel(&settings.config, &tls.upstream, &packet, &mut stream, peer)
                .await
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
            if ident.database == shared.operator.console_database() {
                let operator = shared.operator.clone();
                operator
                    .serve_console(stream, params, ident, shared, settings)
                    .instrument(span)
                    .await
            } else {
                run_session(stream, packet, &params, ident, shared, settings, tls)
                    .instrument(span)
                    .await
            }
        }
    }
}

async fn run_session(
    mut stream: ClientStream,
    packet: Vec<u8>,
    params: &[(String, String)],
    ident: Ident,
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    tls: Arc<TlsSetup>,
) {
    let started = std::time::Instant::now();
    let config = &settings.config;
    let mut pooled = None;
    let mut upstream = if config.pool.mode == PoolMode::Session {
        let Some((upstream, login, lease, slot)) =
            pool::start::start(&mut stream, &packet, params, &ident, &shared, config).await
        else {
            return;
        };
        pooled = Some((login, lease, slot));
        upstream
    } else {
        match upstream::connect(config, &tls.upstream).await {
            Ok(s) => s,
            Err(message) => {
                shared.operator.upstream_connect_failed();
                warn!(error = %message, "upstream connection failed");
                handshake::send_fatal(&mut stream, "08006", &message).await;
                return;
            }
        }
    };
    let hooks = shared.operator.open_session(SessionStart {
        client_addr: ident.client,
        user: ident.user.clone(),
        database: ident.database.clone(),
        application_name: ident.application_name.clone(),
        client_tls: stream.tls_version(),
        server_tls: upstream.tls_version(),
    });
    debug!(
        client_tls = stream.tls_version().unwrap_or("off"),
        server_tls = upstream.tls_version().unwrap_or("off"),
        "session started"
    );
    let mut engine = Engine::new(shared.clone(), settings.clone(), ident, &packet);
    if let Some((login, ..)) = &pooled {
        // The proxy checked the login: the client gets the server connection's login replies.
        engine.to_server().clear();
        engine.server_input().extend_from_slice(login);
        let _ = engine.process_server(&*hooks);
    }
    let mut session = Session::new(shared.clone(), engine, hooks);
    if pooled.is_some() {
        session.pool_server();
    } else {
        let client_cert = stream.tls_version().and(tls.client_leaf.as_deref());
        session.check_binding(BindingCheck::needed(
            client_cert,
            upstream.server_certificate(),
        ));
    }
    drop(tls);
    let end = match &mut upstream {
        Upstream::Tcp(s) => {
            let (sr, sw) = s.split();
            relay_to(&mut session, &mut stream, sr, sw).await
        }
        Upstream::Unix(s) => {
            let (sr, sw) = s.split();
            relay_to(&mut session, &mut stream, sr, sw).await
        }
        Upstream::Tls(s) => {
            let (sr, sw) = tokio::io::split(s.as_mut());
            relay_to(&mut session, &mut stream, sr, sw).await
        }
    };
    session::log_end(&end, started);
    if let Some((_, lease, _slot)) = pooled {
        drop(stream);
        lease
            .give_back(upstream, session.server_reusable(&end))
            .await;
    }
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
    SW: tokio::io::AsyncWrite + session::Buffering + Unpin,
{
    match stream {
        ClientStream::Plain(tcp) => {
            let (cr, cw) = tcp.split();
            let end = session.run(cr, cw, sr, sw).await;
            if session.resets_client() {
                drain_client(tcp).await;
                // A zero linger never blocks: the close sends a reset at once.
                let _ = tcp.set_zero_linger();
            }
            end
        }
        ClientStream::Tls(tls) => {
            let (cr, cw) = tokio::io::split(tls.as_mut());
            session.run(cr, cw, sr, sw).await
        }
    }
}

/// How long a client that sent bytes after its `Terminate` may take to close after the end
/// of the replies, before its connection is reset.
const DRAIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops what a client sent after its `Terminate`, until it closes (or for at most
/// [`DRAIN_PATIENCE`]): a socket closed with bytes unread is reset at once, and the reset
/// discards replies still in its send queue, which the client must read first.
async fn drain_client(tcp: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    // On the heap: a buffer held across the reads would be in every session's future.
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(DRAIN_PATIENCE, async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
