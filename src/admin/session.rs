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
use crate::engine::{Ident, Settings};
use crate::protocol::startup::encode_startup;
use crate::protocol::{self, TxStatus, backend as be, frontend as fe};
use crate::relay::handshake::{self, ClientStream};
use crate::relay::{Shared, upstream};

/// The upstream database the console's logins are checked against.
const LOGIN_DATABASE: &str = "postgres";

/// Serves one admin console session.
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
        warn!("admin console refused: user is not in admin_users");
        handshake::send_fatal(
            &mut stream,
            "28000",
            &format!(
                "user \"{}\" may not open the optlock admin console: it is not in admin_users",
                ident.user
            ),
        )
        .await;
        return;
    }
    let login: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| match k.as_str() {
            "database" => (k.clone(), LOGIN_DATABASE.to_string()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let mut upstream = match upstream::connect(config).await {
        Ok(s) => s,
        Err(message) => {
            admin.metrics.upstream_connect_failed();
            handshake::send_fatal(&mut stream, "08006", &message).await;
            return;
        }
    };
    // The login: relayed both ways until the server accepts it (ReadyForQuery) or refuses.
    if upstream
        .write_all(&encode_startup(196608, &login))
        .await
        .is_err()
    {
        handshake::send_fatal(
            &mut stream,
            "08006",
            "the upstream server went away during login",
        )
        .await;
        return;
    }
    let mut from_server = BytesMut::with_capacity(4096);
    // Only authentication messages (`p`) go to the server. Anything else the client sends
    // ahead of the login's end is for the console: it waits here (and the client is not read
    // further) until the login completes.
    let mut from_client = BytesMut::with_capacity(1024);
    let mut held = false;
    let max = config.max_message_size;
    let deadline = tokio::time::Instant::now() + config.client_login_timeout;
    let accepted = 'login: loop {
        tokio::select! {
            r = upstream.read_buf(&mut from_server) => {
                if !matches!(r, Ok(n) if n > 0) { break false; }
                let mut done = None;
                while let Ok(Some(h)) = protocol::peek_header(&from_server, 1 << 20) {
                    if from_server.len() < h.size { break; }
                    let msg = from_server.split_to(h.size);
                    match h.tag {
                        be::READY_FOR_QUERY => { done = Some(true); break; }
                        be::ERROR_RESPONSE => {
                            let _ = stream.write_all(&msg).await;
                            done = Some(false);
                            break;
                        }
                        // Keys of a backend that is about to close would cancel nothing.
                        be::BACKEND_KEY_DATA => {}
                        _ => { let _ = stream.write_all(&msg).await; }
                    }
                }
                if let Some(ok) = done { break ok; }
            }
            r = stream.read_buf(&mut from_client), if !held => {
                if !matches!(r, Ok(n) if n > 0) { return; }
                loop {
                    match protocol::peek_header(&from_client, max) {
                        Ok(Some(h)) if h.tag == fe::PASSWORD => {
                            if from_client.len() < h.size { break; }
                            let msg = from_client.split_to(h.size);
                            if upstream.write_all(&msg).await.is_err() { break 'login false; }
                        }
                        Ok(Some(_)) => { held = true; break; }
                        Ok(None) => break,
                        Err(e) => {
                            handshake::send_fatal(&mut stream, "08P01", &e.to_string()).await;
                            return;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                handshake::send_fatal(&mut stream, "08006", "login not completed within client_login_timeout").await;
                return;
            }
        }
    };
    let _ = upstream.write_all(&[fe::TERMINATE, 0, 0, 0, 4]).await;
    drop(upstream);
    if !accepted {
        let _ = stream.shutdown().await;
        return;
    }
    info!("admin console opened");
    let ctx = {
        let for_config = shared.clone();
        let for_reload = shared.clone();
        AdminContext::new(
            admin.metrics.clone(),
            admin.sessions.clone(),
            admin.conflicts.clone(),
            move || for_config.settings().config.clone(),
            move || for_reload.reload(),
        )
    };
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
                    let sql = fe::query_text(&msg[5..]).unwrap_or_default();
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
