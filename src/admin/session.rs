//! Sessions on the virtual database `optlock`: the admin console.
//!
//! Only `admin_users` may open it, and a user name alone is not enough: the login is relayed
//! to the upstream server (against its `postgres` database) exactly as for any session, and the
//! console answers only once the server has accepted the password. Then the upstream
//! connection is closed and the console serves simple queries itself.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::console::{AdminContext, execute};
use super::state::AdminState;
use crate::config::Config;
use crate::engine::{Ident, Settings};
use crate::protocol::startup::encode_startup;
use crate::protocol::{self, FrameError, TxStatus, backend as be, frontend as fe};
use crate::relay::Shared;
use crate::relay::binding;
use crate::relay::handshake::{self, ClientStream};
use crate::relay::upstream::Upstream;

/// The upstream database the console's logins are checked against.
const LOGIN_DATABASE: &str = "postgres";

/// Serves one admin console session: refuses a user not in `admin_users`, relays the login to
/// the upstream server, then answers the console's commands.
pub async fn serve(
    mut stream: ClientStream,
    params: &[(String, String)],
    ident: Ident,
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    admin: AdminState,
) {
    let config = &settings.config;
    if !config.admin_users.iter().any(|u| u == &ident.user) {
        refuse_non_admin(&mut stream, &ident.user).await;
        return;
    }
    let Some(from_client) = relay_login(&mut stream, params, &shared, config, &admin).await else {
        return;
    };
    info!("admin console opened");
    let ctx = console_context(&shared, &admin);
    let mut out = BytesMut::new();
    be::write_ready(&mut out, TxStatus::Idle);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    serve_commands(
        stream,
        &ctx,
        config.max_message_size,
        shared.shutdown.clone(),
        from_client,
    )
    .await;
}

/// Tells a user not in `admin_users` that the console is not theirs.
async fn refuse_non_admin(stream: &mut ClientStream, user: &str) {
    warn!("admin console refused: user is not in admin_users");
    handshake::send_fatal(
        stream,
        "28000",
        &format!(
            "user \"{user}\" may not open the optlock admin console: it is not in admin_users"
        ),
    )
    .await;
}

/// Relays the login to the upstream server (against [`LOGIN_DATABASE`]), then closes that
/// connection. Returns what the client sent ahead for the console once the server accepted the
/// login; `None` when the session is over (refused, failed, or the client left).
async fn relay_login(
    stream: &mut ClientStream,
    params: &[(String, String)],
    shared: &Shared,
    config: &Config,
    admin: &AdminState,
) -> Option<BytesMut> {
    let login: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| match k.as_str() {
            "database" => (k.clone(), LOGIN_DATABASE.to_string()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let mut upstream = match shared.connect_upstream(config).await {
        Ok(s) => s,
        Err(message) => {
            admin.metrics.upstream_connect_failed();
            handshake::send_fatal(stream, "08006", &message).await;
            return None;
        }
    };
    // A TLS stream keeps what it is given until flushed.
    let startup = encode_startup(196608, &login);
    if upstream.write_all(&startup).await.is_err() || upstream.flush().await.is_err() {
        handshake::send_fatal(
            stream,
            "08006",
            "the upstream server went away during login",
        )
        .await;
        return None;
    }
    let mut from_client = BytesMut::with_capacity(1024);
    let accepted = exchange_login(stream, &mut upstream, &mut from_client, config).await?;
    let _ = upstream.write_all(&[fe::TERMINATE, 0, 0, 0, 4]).await;
    let _ = upstream.shutdown().await;
    drop(upstream);
    if !accepted {
        let _ = stream.shutdown().await;
        return None;
    }
    Some(from_client)
}

/// The login, relayed both ways until the server accepts it (ReadyForQuery: `Some(true)`) or
/// refuses it or goes away (`Some(false)`). `None` when the session is over: the client left,
/// sent something malformed, or did not finish within `client_login_timeout`.
async fn exchange_login(
    stream: &mut ClientStream,
    upstream: &mut Upstream,
    from_client: &mut BytesMut,
    config: &Config,
) -> Option<bool> {
    let mut from_server = BytesMut::with_capacity(4096);
    // Only authentication messages (`p`) go to the server. Anything else the client sends
    // ahead of the login's end is for the console: it waits here (and the client is not read
    // further) until the login completes.
    let mut held = false;
    let max = config.max_message_size;
    let deadline = tokio::time::Instant::now() + config.client_login_timeout;
    loop {
        tokio::select! {
            r = upstream.read_buf(&mut from_server) => {
                if !matches!(r, Ok(n) if n > 0) { return Some(false); }
                if let Some(ok) = relay_server_login(&mut from_server, stream).await {
                    return Some(ok);
                }
            }
            r = stream.read_buf(from_client), if !held => {
                if !matches!(r, Ok(n) if n > 0) { return None; }
                match forward_passwords(from_client, upstream, max).await {
                    Ok(waiting) => held = waiting,
                    Err(ClientLoginStop::UpstreamGone) => return Some(false),
                    Err(ClientLoginStop::Malformed(e)) => {
                        handshake::send_fatal(stream, "08P01", &e.to_string()).await;
                        return None;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                handshake::send_fatal(stream, "08006", "login not completed within client_login_timeout").await;
                return None;
            }
        }
    }
}

/// Passes the server's complete login messages on to the client: `Some(true)` at its
/// ReadyForQuery (not passed on), `Some(false)` after its ErrorResponse, `None` while the login
/// goes on.
async fn relay_server_login(from_server: &mut BytesMut, stream: &mut ClientStream) -> Option<bool> {
    while let Ok(Some(h)) = protocol::peek_header(from_server, 1 << 20) {
        if from_server.len() < h.size {
            break;
        }
        let msg = from_server.split_to(h.size);
        match h.tag {
            be::READY_FOR_QUERY => return Some(true),
            // A client in plain text must not be offered channel binding by a server the
            // proxy reaches over TLS (see `relay::binding`).
            be::AUTHENTICATION if stream.tls_version().is_none() => {
                let hidden = binding::without_plus(&msg);
                let _ = stream.write_all(hidden.as_deref().unwrap_or(&msg)).await;
            }
            be::ERROR_RESPONSE => {
                let _ = stream.write_all(&msg).await;
                return Some(false);
            }
            // Keys of a backend that is about to close would cancel nothing.
            be::BACKEND_KEY_DATA => {}
            _ => {
                let _ = stream.write_all(&msg).await;
            }
        }
    }
    None
}

/// Why the client's side of the login cannot go on.
enum ClientLoginStop {
    /// Writing to the upstream server failed.
    UpstreamGone,
    /// The client sent a message that cannot be framed.
    Malformed(FrameError),
}

/// Sends the client's complete password messages on to the server. `Ok(true)` when a message
/// for the console has arrived (it is held, and the client read no further), `Ok(false)` when
/// more is to be read.
async fn forward_passwords(
    from_client: &mut BytesMut,
    upstream: &mut Upstream,
    max: usize,
) -> Result<bool, ClientLoginStop> {
    loop {
        match protocol::peek_header(from_client, max) {
            Ok(Some(h)) if h.tag == fe::PASSWORD => {
                if from_client.len() < h.size {
                    return Ok(false);
                }
                let msg = from_client.split_to(h.size);
                if upstream.write_all(&msg).await.is_err() || upstream.flush().await.is_err() {
                    return Err(ClientLoginStop::UpstreamGone);
                }
            }
            Ok(Some(_)) => return Ok(true),
            Ok(None) => return Ok(false),
            Err(e) => return Err(ClientLoginStop::Malformed(e)),
        }
    }
}

/// The console's handle on the proxy: its metrics, sessions and conflicts, the running config,
/// and a reload.
fn console_context(shared: &Arc<Shared>, admin: &AdminState) -> AdminContext {
    let for_config = shared.clone();
    let for_reload = shared.clone();
    let mut ctx = AdminContext::new(
        admin.metrics.clone(),
        admin.sessions.clone(),
        admin.conflicts.clone(),
        move || for_config.settings().config.clone(),
        move || for_reload.reload(),
    );
    ctx.pools = Some(shared.pools.clone());
    ctx
}

/// Answers simple queries until the client leaves or the proxy shuts down (a console holds no
/// transaction, so it is closed at once, like an idle session); the extended protocol is
/// refused politely. `buf` holds what the client sent ahead, during the login.
async fn serve_commands(
    mut stream: ClientStream,
    ctx: &AdminContext,
    max: usize,
    mut shutdown: watch::Receiver<bool>,
    mut buf: BytesMut,
) {
    let mut out = BytesMut::with_capacity(4096);
    let mut failed_batch = false;
    loop {
        loop {
            let h = match protocol::peek_header(&buf, max) {
                Ok(Some(h)) if buf.len() >= h.size => h,
                Ok(_) => break,
                Err(e) => {
                    handshake::send_fatal(&mut stream, "08P01", &e.to_string()).await;
                    return;
                }
            };
            let msg = buf.split_to(h.size);
            match h.tag {
                fe::QUERY => {
                    let sql = fe::query_text(h.body(&msg)).unwrap_or_default();
                    let reply = execute(&String::from_utf8_lossy(sql), ctx);
                    out.extend_from_slice(&reply);
                    be::write_ready(&mut out, TxStatus::Idle);
                }
                fe::TERMINATE => return,
                fe::SYNC => {
                    failed_batch = false;
                    be::write_ready(&mut out, TxStatus::Idle);
                }
                fe::FLUSH => {}
                _ if failed_batch => {}
                _ => {
                    failed_batch = true;
                    be::write_error(
                        &mut out,
                        "ERROR",
                        "0A000",
                        "the optlock admin console answers the simple query protocol only (e.g. psql, or psql -c \"SHOW HELP\")",
                    );
                }
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(n) if n > 0 => {}
                _ => return,
            },
            _ = shutdown.changed() => {
                info!("admin console closed for shutdown");
                handshake::send_fatal(
                    &mut stream,
                    "57P01",
                    "terminating connection: optlock is shutting down",
                )
                .await;
                return;
            }
        }
    }
}
