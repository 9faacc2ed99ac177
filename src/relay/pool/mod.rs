//! Session pooling (`pool_mode = "session"`): server connections that outlive their clients.
//!
//! A pool is kept per user, database and startup parameters ([`PoolKey`]). A client whose
//! login the proxy verified ([`crate::relay::auth`]) takes an idle server connection of its
//! pool, or opens one while the pool has fewer than its size (`default_pool_size`, or its
//! `[[pool]]` entry's `pool_size`), or waits up to
//! `query_wait_timeout` for one to come back. When the client leaves outside a transaction
//! with nothing in flight, its connection is reset (`server_reset_query`) and goes back idle;
//! otherwise it is closed. The guard's state is the session's [`crate::engine::Engine`], new
//! for every client: nothing of one client's tracking reaches the next.
//!
//! - this file: the pools, their limits and counts (`SHOW POOLS`), idle and lifetime expiry.
//! - [`server`]: one server connection: login, replayed login replies, reset, liveness.
//! - [`start`]: the start and end of a pooled session (login, lease, give back).

pub mod server;
pub mod start;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::debug;

use crate::config::PoolConfig;
use crate::events::{PoolEvent, ProcessEvents};
use server::ServerConn;

/// Which clients may share a server connection: same user, database and startup parameters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub user: String,
    pub database: String,
    /// The other startup parameters, sorted.
    pub params: Vec<(String, String)>,
}

impl PoolKey {
    pub fn new(user: &str, database: &str, startup: &[(String, String)]) -> PoolKey {
        let mut params: Vec<_> = startup
            .iter()
            .filter(|(k, _)| k != "user" && k != "database")
            .cloned()
            .collect();
        params.sort();
        PoolKey {
            user: user.into(),
            database: database.into(),
            params,
        }
    }
}

/// A pooled client's cancel key: the backend's process id and the key the client was given.
type CancelKey = (i32, Vec<u8>);

/// One pool's connections and clients.
#[derive(Default)]
struct Pool {
    idle: Vec<ServerConn>,
    /// Server connections handed to clients (or being opened for one).
    active: usize,
    /// Clients waiting for a connection, by ticket: when each began to wait.
    waiting: BTreeMap<u64, Instant>,
    notify: Arc<Notify>,
}

/// One row of `SHOW POOLS`.
#[derive(Clone, Debug)]
pub struct PoolRow {
    pub database: String,
    pub user: String,
    pub cl_active: usize,
    pub cl_waiting: usize,
    pub sv_active: usize,
    pub sv_idle: usize,
    pub maxwait: Duration,
    pub pool_size: usize,
}

/// Every pool of the process.
#[derive(Default)]
pub struct Pools {
    /// Hashed with foldhash (seeded per process): every connection looks its pool up, and
    /// SipHash over the user, database and startup parameters cost more than the lookup.
    pools: Mutex<HashMap<PoolKey, Pool, foldhash::fast::RandomState>>,
    /// Pooled-mode clients connected now (for `max_client_conn`).
    clients: AtomicUsize,
    tickets: AtomicUsize,
    /// The last pool settings a session used (the expiry task reads them).
    config: Mutex<PoolConfig>,
    expiry_started: AtomicBool,
    /// Idle connections of `auth_user`, per database.
    auth_conns: Mutex<HashMap<String, Vec<ServerConn>>>,
    /// The cancel keys given to pooled clients: (backend pid, client's key) -> server's key
    /// (random keys of the proxy's own: foldhash, as for `pools`).
    cancel_keys: Mutex<HashMap<CancelKey, Vec<u8>, foldhash::fast::RandomState>>,
    /// Where pool events are counted (the process's metrics).
    events: Option<Arc<dyn ProcessEvents>>,
}

/// What a client got from its pool.
pub enum Got {
    Idle(ServerConn),
    /// Room to open a new connection (counted as active already).
    Open,
}

impl Pools {
    /// Pools that count their events in `events`.
    pub fn new(events: Arc<dyn ProcessEvents>) -> Pools {
        Pools {
            events: Some(events),
            ..Pools::default()
        }
    }

    /// Counts a pool event.
    pub fn event(&self, event: PoolEvent) {
        if let Some(e) = &self.events {
            e.pool_event(event);
        }
    }
    /// A client connects: false when `max_client_conn` are connected already.
    pub fn client_in(&self, max: usize) -> bool {
        let n = self.clients.fetch_add(1, Ordering::AcqRel);
        if n >= max {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn client_out(&self) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
    }

    /// A server connection for a client of `key`: an idle one (alive, young enough), room to
    /// open one, or `None` after `query_wait_timeout`.
    pub async fn acquire(self: &Arc<Self>, key: &PoolKey, cfg: &PoolConfig) -> Option<Got> {
        self.start_expiry(cfg);
        let deadline = tokio::time::Instant::now() + cfg.query_wait_timeout;
        let size = cfg.pool_size(&key.database, &key.user);
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed) as u64;
        loop {
            let mut stale = Vec::new();
            let notified = {
                let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
                let pool = pools.entry(key.clone()).or_default();
                pool.waiting.remove(&ticket);
                // A connection of this thread's reactor first (the last given back first).
                let here = std::thread::current().id();
                if let Some(i) = pool.idle.iter().rposition(|c| c.info.home == here) {
                    let last = pool.idle.len() - 1;
                    pool.idle.swap(i, last);
                }
                while let Some(mut conn) = pool.idle.pop() {
                    if expired(&conn, cfg, Instant::now()) || !conn.alive() {
                        stale.push(conn);
                        continue;
                    }
                    pool.active += 1;
                    pass_on(pool, size);
                    drop(pools);
                    self.close_all(stale);
                    return Some(Got::Idle(conn));
                }
                if pool.active < size {
                    pool.active += 1;
                    pass_on(pool, size);
                    drop(pools);
                    self.close_all(stale);
                    return Some(Got::Open);
                }
                pool.waiting.insert(ticket, Instant::now());
                pool.notify.clone().notified_owned()
            };
            self.close_all(stale);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(pool) = pools.get_mut(key) {
                    pool.waiting.remove(&ticket);
                }
                return None;
            }
        }
    }

    /// A client of `key` is done with its server connection: kept idle when given back, else
    /// the room it took is freed.
    pub fn release(&self, key: &PoolKey, conn: Option<ServerConn>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pools.entry(key.clone()).or_default();
        pool.active = pool.active.saturating_sub(1);
        if let Some(mut conn) = conn {
            conn.info.idle_since = Instant::now();
            pool.idle.push(conn);
        }
        pool.notify.notify_one();
    }

    /// A cancel key of the client's own for a server connection it was lent: a client that
    /// kept it after leaving cannot cancel the next client's statements.
    pub fn client_cancel_key(&self, pid: i32, server_key: &[u8]) -> Vec<u8> {
        let mut key = vec![0u8; server_key.len()];
        crate::relay::auth::secret::fill_random(&mut key);
        let mut keys = self.cancel_keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.insert((pid, key.clone()), server_key.to_vec());
        key
    }

    /// The client's cancel key no longer cancels anything.
    pub fn forget_cancel_key(&self, pid: i32, key: &[u8]) {
        let mut keys = self.cancel_keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.remove(&(pid, key.to_vec()));
    }

    /// A pooled client's `CancelRequest` with the server's key in place of the client's;
    /// `None` when the key is no current client's.
    pub fn cancel_packet(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let pid = i32::from_be_bytes(packet.get(8..12)?.try_into().ok()?);
        let key = packet.get(12..)?;
        let keys = self.cancel_keys.lock().unwrap_or_else(|e| e.into_inner());
        let server_key = keys.get(&(pid, key.to_vec()))?;
        let mut out = Vec::with_capacity(12 + server_key.len());
        out.extend_from_slice(&((12 + server_key.len()) as i32).to_be_bytes());
        out.extend_from_slice(&packet[4..12]);
        out.extend_from_slice(server_key);
        Some(out)
    }

    /// Takes an idle `auth_user` connection for `database`.
    pub fn take_auth_conn(&self, database: &str) -> Option<ServerConn> {
        let mut conns = self.auth_conns.lock().unwrap_or_else(|e| e.into_inner());
        let list = conns.get_mut(database)?;
        while let Some(mut c) = list.pop() {
            if c.alive() {
                return Some(c);
            }
        }
        None
    }

    pub fn put_auth_conn(&self, database: &str, conn: ServerConn) {
        let mut conns = self.auth_conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.entry(database.into()).or_default().push(conn);
    }

    /// The pools as `SHOW POOLS` lists them, sorted by database and user.
    pub fn rows(&self) -> Vec<PoolRow> {
        let cfg = self
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut rows: Vec<PoolRow> = Vec::new();
        for (key, pool) in pools.iter() {
            let wait = pool
                .waiting
                .values()
                .map(|t| now.duration_since(*t))
                .max()
                .unwrap_or_default();
            // Pools that differ only in startup parameters are summed per database and user.
            match rows
                .iter_mut()
                .find(|r| r.database == key.database && r.user == key.user)
            {
                Some(r) => {
                    r.cl_active += pool.active;
                    r.cl_waiting += pool.waiting.len();
                    r.sv_active += pool.active;
                    r.sv_idle += pool.idle.len();
                    r.maxwait = r.maxwait.max(wait);
                }
                None => rows.push(PoolRow {
                    database: key.database.clone(),
                    user: key.user.clone(),
                    cl_active: pool.active,
                    cl_waiting: pool.waiting.len(),
                    sv_active: pool.active,
                    sv_idle: pool.idle.len(),
                    maxwait: wait,
                    pool_size: cfg.pool_size(&key.database, &key.user),
                }),
            }
        }
        rows.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        rows
    }

    /// Pooled-mode clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    fn close_all(&self, conns: Vec<ServerConn>) {
        for c in conns {
            self.close(c, "expired or closed by the server while idle");
        }
    }

    /// Closes a server connection in the background.
    pub fn close(&self, conn: ServerConn, why: &str) {
        self.event(PoolEvent::Closed);
        debug!(
            backend_pid = conn.info.pid,
            reason = why,
            "closing a pooled server connection"
        );
        tokio::spawn(conn.close());
    }

    /// Starts, once, the task that closes idle connections past `server_idle_timeout` or
    /// `server_lifetime`; keeps the settings it uses up to date.
    fn start_expiry(self: &Arc<Self>, cfg: &PoolConfig) {
        {
            let mut current = self.config.lock().unwrap_or_else(|e| e.into_inner());
            if *current != *cfg {
                *current = cfg.clone();
            }
        }
        if self.expiry_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let pools: Weak<Pools> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(p) = pools.upgrade() else { return };
                p.expire();
            }
        });
    }

    fn expire(&self) {
        let cfg = self
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now = Instant::now();
        let mut gone = Vec::new();
        {
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            for pool in pools.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) = std::mem::take(&mut pool.idle)
                    .into_iter()
                    .partition(|c| !expired(c, &cfg, now));
                pool.idle = keep;
                gone.extend(old);
            }
            pools.retain(|_, p| p.active > 0 || !p.idle.is_empty() || !p.waiting.is_empty());
        }
        self.close_all(gone);
    }
}

/// Wakes one more waiting client when there is still something for it: `Notify` keeps one
/// permit at most, so two connections given back before any waiter ran wake one waiter only.
fn pass_on(pool: &Pool, size: usize) {
    if !pool.waiting.is_empty() && (!pool.idle.is_empty() || pool.active < size) {
        pool.notify.notify_one();
    }
}

/// True when an idle connection is past `server_idle_timeout` or `server_lifetime`.
fn expired(c: &ServerConn, cfg: &PoolConfig, now: Instant) -> bool {
    now.duration_since(c.info.idle_since) >= cfg.server_idle_timeout
        || now.duration_since(c.info.created) >= cfg.server_lifetime
}

/// Takes the client's `Terminate` off the end of what goes to the server (a pooled server
/// connection stays open).
pub fn drop_terminate(to_server: &mut bytes::BytesMut) {
    const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];
    if to_server.ends_with(&TERMINATE) {
        to_server.truncate(to_server.len() - TERMINATE.len());
    }
}
