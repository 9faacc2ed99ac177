//! A throwaway PostgreSQL cluster: initdb into a temporary directory (as the `postgres` OS
//! user), listening on 127.0.0.1 at a free port with the given pg_hba lines; stopped and
//! removed on Drop. The local socket always trusts, so roles can be created whatever the
//! host lines demand.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::free_port;

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Cluster {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
}

fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{BIN}/{program}")])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

impl Cluster {
    /// Whether the PostgreSQL server binaries a cluster needs are installed.
    pub fn available() -> bool {
        Path::new(BIN).join("initdb").exists()
    }

    /// A cluster whose pg_hba.conf holds `local all all trust` followed by `hba_lines`.
    pub fn start(hba_lines: &[&str]) -> Cluster {
        Self::start_with(hba_lines, &[])
    }

    /// Like [`Cluster::start`], with extra postgresql.conf lines (e.g. `max_connections = 250`,
    /// `password_encryption = md5`).
    pub fn start_with(hba_lines: &[&str], conf_lines: &[&str]) -> Cluster {
        // Memory-backed when available: initdb and checkpoints on a slow disk dominate otherwise.
        let shm = Path::new("/dev/shm");
        let mut builder = tempfile::Builder::new();
        builder.prefix("optlock-cluster-");
        let dir = if shm.is_dir() {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
        .expect("temp dir");
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(st.success(), "chown the cluster dir to postgres");
        let data = dir.path().join("data");
        let out = as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut hba = String::from("local all all trust\n");
        for l in hba_lines {
            hba.push_str(l);
            hba.push('\n');
        }
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(&format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             shared_buffers = 16MB\nmax_wal_senders = 0\nwal_level = minimal\n\
             dynamic_shared_memory_type = mmap\n",
            dir.path().display()
        ));
        for l in conf_lines {
            conf.push_str(l);
            conf.push('\n');
        }
        std::fs::write(data.join("postgresql.conf"), conf).expect("write postgresql.conf");
        let mut c = Cluster {
            port,
            dir,
            running: false,
        };
        c.start_again();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the stopped cluster again: same data directory, same port.
    pub fn start_again(&mut self) {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let out = as_postgres(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    /// Stops the cluster (fast shutdown: sessions are terminated).
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let data = self.data();
        let out = as_postgres(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", mode, "-w", "stop"],
        );
        assert!(
            out.status.success() || mode == "immediate",
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    /// Runs SQL as the superuser over the local socket (trusted); panics on error.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_ctl_stop("immediate");
    }
}
