//! The start and end of a pooled session: `max_client_conn`, the user's secret (`auth_file`,
//! then `auth_query`), the proxy's check of the client's login, a server connection from the
//! pool (opened with the proxy's credentials when there is room), and at the end its reset and
//! return to the pool ([`Lease::give_back`]).

use std::sync::Arc;

use tracing::{debug, info, warn};

use super::server::{ConnInfo, Creds, LoginError, ServerConn, startup_packet};
use super::{Got, PoolKey, Pools};
use crate::config::{AuthType, Config};
use crate::engine::Ident;
use crate::events::PoolEvent;
use crate::relay::auth::{self, Refused, secret::Secret};
use crate::relay::handshake::{self, ClientStream};
use crate::relay::shared::Shared;
use crate::relay::upstream::Upstream;

/// A pooled server connection lent to one client; goes back to its pool (or is closed) when
/// given back, and its room in the pool is freed if the session is dropped first.
pub struct Lease {
    pools: Arc<Pools>,
    key: PoolKey,
    /// The connection, without its stream (which the session relays over).
    info: Option<ConnInfo>,
    /// The cancel key the client was given (forgotten when the lease ends).
    client_key: Vec<u8>,
    reset_query: String,
    lifetime: std::time::Duration,
    given_back: bool,
}

/// Counts one pooled client for `max_client_conn` while it lives.
pub struct ClientSlot(Arc<Pools>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.client_out();
    }
}

/// Logs the client in and leases it a server connection. On failure the client was told
/// why (as PostgreSQL would say it, where it has words for it) and `None` comes back.
pub async fn start(
    stream: &mut ClientStream,
    packet: &[u8],
    params: &[(String, String)],
    ident: &Ident,
    shared: &Shared,
    config: &Config,
) -> Option<(Upstream, bytes::BytesMut, Lease, ClientSlot)> {
    let pools = shared.pools.clone();
    let cfg = &config.pool;
    if !pools.client_in(cfg.max_client_conn) {
        pools.event(PoolEvent::TooManyClients);
        warn!(
            max_client_conn = cfg.max_client_conn,
            "client refused: max_client_conn reached"
        );
        handshake::send_fatal(
            stream,
            "53300",
            &format!(
                "sorry, too many clients already (optlock max_client_conn = {})",
                cfg.max_client_conn
            ),
        )
        .await;
        return None;
    }
    let slot = ClientSlot(pools.clone());
    let user = ident.user.as_str();
    let secret = if cfg.auth_type == AuthType::Trust {
        None
    } else {
        match lookup_secret(shared, config, user, &ident.database).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot read the user's secret");
                handshake::send_fatal(stream, "08006", &format!("optlock: {e}")).await;
                return None;
            }
        }
    };
    let verified = match tokio::time::timeout(
        config.client_login_timeout,
        auth::login(stream, cfg.auth_type, user, secret.clone()),
    )
    .await
    {
        Ok(Ok(v)) => v,
        Ok(Err(Refused::Password)) => {
            pools.event(PoolEvent::LoginFailed);
            info!("login refused: password authentication failed");
            return None;
        }
        Ok(Err(Refused::Protocol(e))) => {
            warn!(error = %e, "login refused: protocol");
            return None;
        }
        Ok(Err(Refused::Gone)) | Err(_) => return None,
    };
    let creds = Creds {
        secret,
        client_key: verified.client_key,
    };
    let key = PoolKey::new(user, &ident.database, params);
    let Some(got) = pools.acquire(&key, cfg).await else {
        pools.event(PoolEvent::WaitTimeout);
        warn!(
            query_wait_timeout_s = cfg.query_wait_timeout.as_secs_f64(),
            "client refused: no server connection came free"
        );
        handshake::send_fatal(
            stream,
            "53300",
            &format!(
                "optlock: no server connection free for user \"{user}\" on database \"{}\" \
                 within query_wait_timeout ({} s): all {} of its pool are in use",
                ident.database,
                cfg.query_wait_timeout.as_secs_f64(),
                cfg.pool_size(&ident.database, user)
            ),
        )
        .await;
        return None;
    };
    let mut lease = Lease {
        pools: pools.clone(),
        key,
        info: None,
        client_key: Vec::new(),
        reset_query: cfg.server_reset_query.clone(),
        lifetime: cfg.server_lifetime,
        given_back: false,
    };
    let conn = match got {
        Got::Idle(c) => {
            let pid = c.info.pid;
            match c.here() {
                Ok(c) => {
                    pools.event(PoolEvent::Reused);
                    debug!(backend_pid = pid, "pooled server connection reused");
                    c
                }
                Err(e) => {
                    // The lease, dropped, frees the connection's room in its pool.
                    warn!(backend_pid = pid, error = %e, "pooled server connection lost moving it to the client's thread");
                    let msg = format!("optlock: the pooled server connection was lost: {e}");
                    handshake::send_fatal(stream, "08006", &msg).await;
                    return None;
                }
            }
        }
        Got::Open => match open(shared, config, packet, user, &creds).await {
            Ok(c) => {
                pools.event(PoolEvent::Opened);
                debug!(backend_pid = c.info.pid, "pooled server connection opened");
                c
            }
            Err(LoginError::Server(msg)) => {
                use tokio::io::AsyncWriteExt;
                let _ = stream.write_all(&msg).await;
                let _ = stream.shutdown().await;
                return None;
            }
            Err(LoginError::Proxy(e)) => {
                shared.operator.upstream_connect_failed();
                warn!(error = %e, "pooled server connection failed");
                handshake::send_fatal(stream, "08006", &format!("optlock: {e}")).await;
                return None;
            }
        },
    };
    lease.client_key = pools.client_cancel_key(conn.info.pid, conn.info.cancel_key());
    let replies = conn.info.login_replies(&lease.client_key);
    lease.info = Some(conn.info);
    Some((conn.upstream, replies, lease, slot))
}

impl Lease {
    /// The session ended: the server connection is reset and kept when `reusable` (and young
    /// enough), else closed.
    pub async fn give_back(mut self, upstream: Upstream, reusable: bool) {
        self.given_back = true;
        let info = self.info.take().expect("a leased connection");
        self.pools.forget_cancel_key(info.pid, &self.client_key);
        let conn = ServerConn { upstream, info };
        let young = conn.info.created.elapsed() < self.lifetime;
        if !reusable || !young {
            self.pools.release(&self.key, None);
            self.pools.close(
                conn,
                if young {
                    "its client left mid-transaction or the session failed"
                } else {
                    "server_lifetime reached"
                },
            );
            return;
        }
        let mut conn = conn;
        match conn.reset(&self.reset_query).await {
            Ok(()) => self.pools.release(&self.key, Some(conn)),
            Err(e) => {
                warn!(backend_pid = conn.info.pid, error = %e, "server connection not reused: reset failed");
                self.pools.release(&self.key, None);
                self.pools.close(conn, "reset failed");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.given_back {
            if let Some(info) = &self.info {
                self.pools.forget_cancel_key(info.pid, &self.client_key);
            }
            self.pools.release(&self.key, None);
        }
    }
}

/// Opens a server connection and logs in as the client's user with the proxy's credentials.
async fn open(
    shared: &Shared,
    config: &Config,
    startup: &[u8],
    user: &str,
    creds: &Creds,
) -> Result<ServerConn, LoginError> {
    let upstream = shared
        .connect_upstream(config)
        .await
        .map_err(LoginError::Proxy)?;
    ServerConn::login(upstream, startup, user, creds).await
}

/// The user's secret: its `auth_file` line, else what `auth_query` run as `auth_user` finds.
async fn lookup_secret(
    shared: &Shared,
    config: &Config,
    user: &str,
    database: &str,
) -> Result<Option<Secret>, String> {
    let cfg = &config.pool;
    if let Some(path) = &cfg.auth_file
        && let Some(s) = auth::secret::from_auth_file(path, user)?
    {
        return Ok(Some(s));
    }
    let Some(auth_user) = &cfg.auth_user else {
        return Ok(None);
    };
    // The connection in use is dropped (closed) with the look-up when it takes too long: a
    // late answer must not be read as the next look-up's.
    match tokio::time::timeout(
        cfg.auth_query_timeout,
        query_secret(shared, config, auth_user, user, database),
    )
    .await
    {
        Ok(found) => found,
        Err(_) => Err(format!(
            "auth_query did not answer within auth_query_timeout ({} s) for user \"{user}\"",
            cfg.auth_query_timeout.as_secs_f64()
        )),
    }
}

/// Runs `auth_query` as `auth_user` (on a kept connection, or a new one) for `user`.
async fn query_secret(
    shared: &Shared,
    config: &Config,
    auth_user: &str,
    user: &str,
    database: &str,
) -> Result<Option<Secret>, String> {
    let cfg = &config.pool;
    let db = cfg.auth_dbname.as_deref().unwrap_or(database);
    let mut conn = match shared.pools.take_auth_conn(db) {
        Some(c) => c,
        None => {
            let secret = match &cfg.auth_file {
                Some(path) => auth::secret::from_auth_file(path, auth_user)?,
                None => None,
            };
            let creds = Creds {
                secret,
                client_key: None,
            };
            let packet = startup_packet(auth_user, db);
            match open(shared, config, &packet, auth_user, &creds).await {
                Ok(c) => c,
                Err(LoginError::Server(msg)) => {
                    return Err(format!(
                        "auth_user \"{auth_user}\" cannot log in to database \"{db}\": {}",
                        super::server::error_text(&msg)
                    ));
                }
                Err(LoginError::Proxy(e)) => {
                    return Err(format!("auth_user \"{auth_user}\": {e}"));
                }
            }
        }
    };
    let found = conn.query_secret(&cfg.auth_query, user).await;
    if found.is_ok() {
        shared.pools.put_auth_conn(db, conn);
    }
    Ok(found?.map(|s| Secret::parse(&s)))
}
