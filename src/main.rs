//! The `optlock` command line: `serve` runs the proxy; `check` and `suggest` help a DBA
//! configure guarded tables.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use optlock::config::Config;
use optlock::server::Server;

#[derive(Parser)]
#[command(
    name = "optlock",
    version,
    about = "PostgreSQL proxy that enforces optimistic concurrency on guarded tables",
    long_about = "optlock sits between applications and PostgreSQL. On the tables a DBA marks as \
guarded, every UPDATE/DELETE gets a version predicate and a version bump, and a write that \
matches zero rows because someone else changed the row becomes a clear conflict error \
(SQLSTATE 40001) instead of a silent lost update. Everything else passes through untouched."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file (TOML). Without it, the defaults apply and no table is guarded.
        #[arg(short, long, env = "OPTLOCK_CONFIG")]
        config: Option<PathBuf>,
        /// Where clients connect, overriding `listen` (host:port).
        #[arg(long, env = "OPTLOCK_LISTEN")]
        listen: Option<String>,
        /// The real PostgreSQL server, overriding `upstream` (host:port).
        #[arg(long, env = "OPTLOCK_UPSTREAM")]
        upstream: Option<String>,
        /// Worker threads (default: one per CPU core).
        #[arg(long, env = "OPTLOCK_WORKERS")]
        workers: Option<usize>,
        /// Log filter, e.g. `info`, `debug`, `optlock=debug` (RUST_LOG works too).
        #[arg(long, env = "OPTLOCK_LOG", default_value = "info")]
        log: String,
    },
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            upstream,
            workers,
            log,
        } => {
            init_logging(&log);
            let mut cfg = match &config {
                Some(path) => match Config::load(path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("optlock: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::default(),
            };
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(u) = upstream {
                cfg.upstream = u;
            }
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(w) = workers {
                rt.worker_threads(w.max(1));
            }
            let rt = match rt.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("optlock: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(async move {
                let server = Server::bind(cfg, config).await?;
                server.run().await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("optlock: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
