//! The `optlock` executable in tests: a temporary config file, a process on a free port with
//! its stderr collected line by line, signals, a guard that kills the child even when a test
//! panics, and psql against a port.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::free_port;

/// Generous limit for anything the tests wait on; only there to turn a hang into a failure.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_optlock")
}

/// A config file in its own temporary directory.
pub struct ConfigFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn new(text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optlock.toml");
        std::fs::write(&path, text).unwrap();
        ConfigFile { dir, path }
    }

    /// Replaces the file's contents (written to a sibling, then renamed over it).
    pub fn rewrite(&self, text: &str) {
        let tmp = self.dir.path().join("optlock.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// Runs the binary to completion: (exit status, stdout, stderr).
pub fn run_optlock(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("DATABASE_URL")
        .env_remove("OPTLOCK_CONFIG")
        .output()
        .expect("run optlock");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `optlock` child; killed and reaped when dropped.
pub struct Running {
    child: Option<Child>,
    pub port: u16,
    stderr: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
    /// The config and extra arguments of a process started by [`Running::serve`].
    serve_args: Option<(PathBuf, Vec<String>)>,
    /// The thread copying stderr; it ends once the process has exited and the pipe is drained.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// `optlock serve --config <config> --listen 127.0.0.1:<free port> <extra...>`.
    pub fn serve(config: &Path, extra: &[&str]) -> Running {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        let mut running = Running::spawn(&args, port);
        running.serve_args = Some((
            config.to_path_buf(),
            extra.iter().map(|a| a.to_string()).collect(),
        ));
        running
    }

    pub fn spawn(args: &[&str], port: u16) -> Running {
        let mut child = Command::new(bin())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("OPTLOCK_CONFIG")
            .env_remove("OPTLOCK_LISTEN")
            .env_remove("OPTLOCK_UPSTREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn optlock");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Running {
            child: Some(child),
            port,
            stderr,
            status: None,
            serve_args: None,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `text` (after the first `skip` bytes); panics after
    /// [`PATIENCE`] or when the process exits first.
    pub fn wait_for_log(&mut self, text: &str, skip: usize) {
        let start = Instant::now();
        loop {
            let log = self.stderr();
            if log.get(skip..).is_some_and(|l| l.contains(text)) {
                return;
            }
            if let Some(status) = self.try_status() {
                let log = self.stderr();
                if log.get(skip..).is_some_and(|l| l.contains(text)) {
                    return;
                }
                panic!("optlock exited ({status}) before logging {text:?}:\n{log}");
            }
            if start.elapsed() > PATIENCE {
                panic!("optlock did not log {text:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the proxy is serving. When another process took the free port in the
    /// meantime, starts again on a new one.
    pub fn wait_ready(&mut self) {
        for _ in 0..5 {
            let start = Instant::now();
            loop {
                if self.stderr().contains("optlock is ready") {
                    return;
                }
                if self.try_status().is_some() {
                    break;
                }
                assert!(
                    start.elapsed() < PATIENCE,
                    "optlock is not ready:\n{}",
                    self.stderr()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let port_taken = self
                .stderr()
                .contains(&format!("cannot listen on 127.0.0.1:{}", self.port));
            match &self.serve_args {
                Some((config, extra)) if port_taken => {
                    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                    *self = Running::serve(&config.clone(), &extra);
                }
                _ => break,
            }
        }
        self.wait_for_log("optlock is ready", 0);
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} {}", self.pid());
    }

    /// The exit status once the process has exited; by then all of its stderr is collected.
    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(c) = self.child.as_mut()
        {
            self.status = c.try_wait().expect("try_wait");
        }
        if self.status.is_some()
            && let Some(r) = self.reader.take()
        {
            let _ = r.join();
        }
        self.status
    }

    /// Waits for the process to exit (panics after [`PATIENCE`]).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            if start.elapsed() > PATIENCE {
                panic!("optlock did not exit:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// psql through this proxy: (success, stdout, stderr).
    pub fn psql(&self, db: &str, sql: &str) -> (bool, String, String) {
        psql_at(self.port, "postgres", db, sql)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.status.is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// `psql -X -At -w -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -h 127.0.0.1 -p <port> -U <user>
/// -d <db> -c <sql>`: (success, stdout, stderr). Errors carry their SQLSTATE (`ERROR:  42601: ...`).
pub fn psql_at(port: u16, user: &str, db: &str, sql: &str) -> (bool, String, String) {
    psql_with_password(port, user, db, sql, None)
}

/// As [`psql_at`], with `PGPASSWORD` set when a password is given (never prompting).
pub fn psql_with_password(
    port: u16,
    user: &str,
    db: &str,
    sql: &str,
    password: Option<&str>,
) -> (bool, String, String) {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-At",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "VERBOSITY=verbose",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        user,
        "-d",
        db,
        "-c",
        sql,
    ])
    .env("PGCONNECT_TIMEOUT", "30")
    .env_remove("PGPASSWORD")
    .env_remove("PGSERVICE")
    .env("PGPASSFILE", "/nonexistent")
    .stdin(Stdio::null());
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd.output().expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
