//! optlock and the Debian PgBouncer, in both orders: which orders keep tracking right.
//!
//! - optlock in front of PgBouncer in session mode: each optlock session holds one PgBouncer
//!   session, so a guarded conflict is still raised, with simple and extended queries.
//! - optlock in front of PgBouncer in transaction mode: tracking stays per client (a conflict
//!   is still raised), but the proxy's sessions share PgBouncer's server connections between
//!   transactions: one client's `SET` reaches the next client of its server connection, and a
//!   statement prepared on one server connection is missing (26000) when the client's next
//!   transaction runs on another. Safe for tracking, not for session state.
//! - optlock behind PgBouncer in session mode (with `server_reset_query = DISCARD ALL`): one
//!   optlock session serves PgBouncer's clients one after the other; `DISCARD ALL` between them
//!   makes the proxy forget the last one's versions, and concurrent clients still conflict.
//! - optlock behind PgBouncer in transaction mode: one optlock session serves several clients
//!   at once, so one client's read sets the version another client's write is checked against:
//!   a write of a row it never read fails with a conflict. Not safe for tracking.
//!
//! PgBouncer is started on a random port with a temporary ini (as the `postgres` OS user when
//! the tests run as root, since PgBouncer refuses root). Without a `pgbouncer` binary the tests
//! print why and pass; `.ci/run` installs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::guards::{INVOICE, bump_directly, invoice_db, provoke_conflict, version_of};
use common::*;
use optlock::config::Config;
use tokio_postgres::Client;

/// A PgBouncer of the test's own, stopped when dropped.
struct Bouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// The `pgbouncer` binary, when there is one.
fn pgbouncer_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/local/sbin".into());
    dirs.into_iter()
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
}

/// The binary, or `None` after printing why the test is skipped.
fn need_pgbouncer(test: &str) -> Option<PathBuf> {
    let bin = pgbouncer_bin();
    if bin.is_none() {
        println!(
            "{test}: skipped: no pgbouncer binary on PATH or in /usr/sbin \
             (apt-get install pgbouncer; .ci/run installs it)"
        );
    }
    bin
}

/// The uid and gid of the `postgres` OS user, from /etc/passwd.
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let f: Vec<&str> = line.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Bouncer {
    /// Starts PgBouncer in `pool_mode` in front of `upstream` (`host:port`), with
    /// `default_pool_size = pool_size`, `auth_type = trust` and `server_reset_query = DISCARD ALL`.
    async fn start(bin: &Path, upstream: &str, pool_mode: &str, pool_size: usize) -> Bouncer {
        let (host, up_port) = split_addr(upstream);
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("optlock-pgbouncer-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("pgbouncer dir");
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").expect("userlist");
        let ini = format!(
            "[databases]\n\
             * = host={host} port={up_port}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = {pool_mode}\n\
             default_pool_size = {pool_size}\n\
             max_client_conn = 100\n\
             server_reset_query = DISCARD ALL\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             server_tls_sslmode = disable\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display()
        );
        let ini_path = dir.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).expect("pgbouncer.ini");
        let mut cmd = Command::new(bin);
        cmd.arg(&ini_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if running_as_root() {
            // PgBouncer refuses to run as root.
            use std::os::unix::process::CommandExt;
            let (uid, gid) = postgres_ids().expect("a postgres OS user to run pgbouncer as");
            for entry in [
                dir.clone(),
                dir.join("userlist.txt"),
                dir.join("pgbouncer.ini"),
            ] {
                std::os::unix::fs::chown(&entry, Some(uid), Some(gid)).expect("chown");
            }
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().expect("start pgbouncer");
        let mut bouncer = Bouncer { child, port, dir };
        bouncer.wait_ready().await;
        bouncer
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pgbouncer exited ({status}): {}", self.log());
            }
            let conninfo = self.conninfo("postgres");
            if let Ok((c, conn)) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                if c.simple_query("SELECT 1").await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not answer on port {}: {}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} sslmode=disable",
            self.port
        )
    }

    async fn client(&self, db: &str) -> Client {
        connect(&self.conninfo(db)).await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An unpooled optlock guarding `public.invoice`, in front of `upstream`.
async fn optlock_to(upstream: &str) -> Proxy {
    let toml = format!("upstream = \"{upstream}\"\nupstream_tls = \"disable\"\n{INVOICE}");
    Proxy::start(Config::parse(&toml, "test.toml").expect("test config")).await
}

/// The SQLSTATE of a failed statement, or "ok".
async fn outcome(c: &Client, sql: &str) -> String {
    match c.simple_query(sql).await {
        Ok(_) => "ok".into(),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| format!("{e}")),
    }
}

#[tokio::test]
async fn optlock_in_front_of_pgbouncer_session_mode_still_raises_conflicts() {
    let Some(bin) = need_pgbouncer("optlock_in_front_of_pgbouncer_session_mode") else {
        return;
    };
    let db = invoice_db("bouncer_front_session", 2, "").await;
    let bouncer = Bouncer::start(&bin, &upstream(), "session", 5).await;
    let proxy = optlock_to(&bouncer.addr()).await;

    // Simple queries: A reads, B changes the row, A's write conflicts.
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;
    provoke_conflict(&a, &b).await;

    // Extended protocol (tokio-postgres prepares): the same, on row 2.
    let read = a
        .query_one("SELECT version FROM invoice WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    assert_eq!(read.get::<_, i64>(0), 0);
    b.execute("UPDATE invoice SET total = 21 WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    let err = a
        .execute("UPDATE invoice SET total = 31 WHERE id = $1", &[&2i32])
        .await
        .expect_err("a conflict through PgBouncer");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err}");
    assert_eq!(version_of(&db, 2).await, 1, "only B's write went through");
}

#[tokio::test]
async fn optlock_in_front_of_pgbouncer_transaction_mode() {
    let Some(bin) = need_pgbouncer("optlock_in_front_of_pgbouncer_transaction_mode") else {
        return;
    };
    let db = invoice_db("bouncer_front_tx", 2, "").await;
    // Two server connections, PgBouncer's last given back first: sequential transactions of
    // the proxy's two sessions take turns on one.
    let bouncer = Bouncer::start(&bin, &upstream(), "transaction", 2).await;
    let proxy = optlock_to(&bouncer.addr()).await;
    let a = proxy.client(&db.name).await;
    let b = proxy.client(&db.name).await;

    // Tracking is the proxy's, per client session: A's stale write still conflicts.
    provoke_conflict(&a, &b).await;
    assert_eq!(version_of(&db, 1).await, 1);

    // What a session leaves on the server connection is the next transaction's, whoever runs
    // it: B sees A's session setting.
    a.simple_query("SET application_name = 'set_by_a'")
        .await
        .unwrap();
    let seen = b
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap();
    assert_eq!(
        seen.get::<_, String>(0),
        "set_by_a",
        "in transaction mode a session's state leaks to the other clients of the server \
         connection"
    );

    // A statement prepared on one server connection is not on the other: while B holds the
    // first one in a transaction, A's prepared statement runs on a second and is not found.
    let stmt = a
        .prepare("SELECT version FROM invoice WHERE id = $1")
        .await
        .unwrap();
    b.simple_query("BEGIN").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    let err = a
        .query(&stmt, &[&2i32])
        .await
        .expect_err("the statement was prepared on the other server connection");
    assert_eq!(err.code().map(|c| c.code()), Some("26000"), "{err}");
    b.simple_query("COMMIT").await.unwrap();
}

#[tokio::test]
async fn optlock_behind_pgbouncer_session_mode_forgets_between_clients() {
    let Some(bin) = need_pgbouncer("optlock_behind_pgbouncer_session_mode") else {
        return;
    };
    let db = invoice_db("bouncer_behind_session", 2, "").await;
    let proxy = optlock_to(&upstream()).await;
    let bouncer = Bouncer::start(&bin, &proxy.addr.to_string(), "session", 1).await;

    // A reads row 1 through PgBouncer -> optlock, and leaves; PgBouncer keeps its optlock
    // session and sends DISCARD ALL.
    let a = bouncer.client(&db.name).await;
    let pid_a: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    a.simple_query("SELECT id, version FROM invoice WHERE id = 1")
        .await
        .unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    bump_directly(&db, 1).await;

    // B, on the same optlock session (and backend), never read row 1: its write goes through.
    let b = bouncer.client(&db.name).await;
    let pid_b: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid_a, pid_b, "PgBouncer reused its connection to optlock");
    assert_eq!(
        outcome(&b, "UPDATE invoice SET total = 40 WHERE id = 1").await,
        "ok",
        "after DISCARD ALL the proxy does not check B against A's read"
    );
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(bouncer);

    // Concurrent clients hold sessions of their own: a stale write still conflicts.
    let bouncer = Bouncer::start(&bin, &proxy.addr.to_string(), "session", 2).await;
    let a = bouncer.client(&db.name).await;
    let b = bouncer.client(&db.name).await;
    provoke_conflict(&a, &b).await;
}

#[tokio::test]
async fn optlock_behind_pgbouncer_transaction_mode_mixes_clients_up() {
    let Some(bin) = need_pgbouncer("optlock_behind_pgbouncer_transaction_mode") else {
        return;
    };
    let db = invoice_db("bouncer_behind_tx", 2, "").await;
    let proxy = optlock_to(&upstream()).await;
    // One connection to optlock: every client's transactions run on one optlock session.
    let bouncer = Bouncer::start(&bin, &proxy.addr.to_string(), "transaction", 1).await;

    let a = bouncer.client(&db.name).await;
    let b = bouncer.client(&db.name).await;
    // A reads row 1 (tracked on the one optlock session); the row then moves on.
    a.simple_query("SELECT id, version FROM invoice WHERE id = 1")
        .await
        .unwrap();
    bump_directly(&db, 1).await;
    // B never read row 1, yet its write is checked against A's read: a false conflict.
    assert_eq!(
        outcome(&b, "UPDATE invoice SET total = 50 WHERE id = 1").await,
        "40001",
        "behind PgBouncer's transaction mode one client's read is checked against another's \
         write"
    );
    // And A's stale write is not caught any more once B's read (of the new version) took
    // the place of A's in the shared session.
    b.simple_query("SELECT id, version FROM invoice WHERE id = 2")
        .await
        .unwrap();
    a.simple_query("SELECT id, version FROM invoice WHERE id = 2")
        .await
        .unwrap();
    bump_directly(&db, 2).await;
    b.simple_query("SELECT id, version FROM invoice WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(
        outcome(&a, "UPDATE invoice SET total = 51 WHERE id = 2").await,
        "ok",
        "A's write of a row changed since A read it is let through (a lost update)"
    );
}
