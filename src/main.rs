//! The `optlock` command line: `serve` runs the proxy; `check` and `suggest` help a DBA
//! configure guarded tables.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use optlock::config::{ClientTlsMode, Config, UpstreamTlsMode};
use optlock::server::Server;

/// mimalloc serves the proxy's many small, short-lived allocations (a session's state at each
/// connection, a query's plan pieces) from per-thread pages: fewer instructions per allocation
/// than the system allocator, and no consolidation pass when a session's large future is freed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// The real PostgreSQL server, overriding `upstream`: host:port, or the path of its
        /// socket directory (e.g. /var/run/postgresql).
        #[arg(long, env = "OPTLOCK_UPSTREAM")]
        upstream: Option<String>,
        #[command(flatten)]
        tls: TlsFlags,
        /// Session threads, each an event loop of its own (default: one per CPU core).
        #[arg(long, env = "OPTLOCK_WORKERS")]
        workers: Option<usize>,
        /// Log filter, e.g. `info`, `debug`, `optlock=debug` (RUST_LOG works too).
        #[arg(long, env = "OPTLOCK_LOG", default_value = "info")]
        log: String,
        /// Database to check the guards against before serving, e.g.
        /// `postgres://postgres@127.0.0.1:5432/shop`; a wrong guard, or a database that cannot
        /// be reached, stops the start. Without it, the check is skipped.
        #[arg(long, env = "OPTLOCK_CHECK_URL")]
        check_url: Option<String>,
        /// Start even when the start-up check finds a wrong guard or cannot reach the database.
        #[arg(long)]
        ignore_check: bool,
    },
    /// Check every guard against a live database: table, key, version column and its type.
    ///
    /// Prints one line per finding, with the DDL that fixes it; exits 1 when a guard is wrong.
    Check {
        /// Config file (TOML).
        #[arg(short, long, env = "OPTLOCK_CONFIG")]
        config: PathBuf,
        /// The database the guarded tables live in, e.g. `postgres://postgres@127.0.0.1/shop`.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print ready [[guard]] stanzas for the tables of a database that have a primary key.
    Suggest {
        /// The database to look at, e.g. `postgres://postgres@127.0.0.1/shop`.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Only tables in this schema.
        #[arg(long)]
        schema: Option<String>,
        /// Only these tables (names as in the catalog, optionally schema-qualified).
        #[arg(long, num_args = 1..)]
        tables: Vec<String>,
    },
}

/// The TLS modes, overriding the config file's.
#[derive(Args)]
struct TlsFlags {
    /// TLS to the upstream server, overriding `upstream_tls`: disable, prefer, require,
    /// verify-ca or verify-full.
    #[arg(long, env = "OPTLOCK_UPSTREAM_TLS")]
    upstream_tls: Option<UpstreamTlsMode>,
    /// TLS for clients, overriding `client_tls`: disable, allow or require.
    #[arg(long, env = "OPTLOCK_CLIENT_TLS")]
    client_tls: Option<ClientTlsMode>,
}

/// Logs to stderr with `filter`, or with `RUST_LOG` when that is set.
fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Checks the guards before serving; a wrong guard stops the start unless ignored.
async fn startup_check(cfg: &Config, url: &str, ignore: bool) -> anyhow::Result<()> {
    let client = match optlock::catalog::connect(url).await {
        Ok(c) => c,
        Err(e) if ignore => {
            tracing::warn!(error = %format!("{e:#}"), "start-up check skipped: cannot connect (--ignore-check)");
            return Ok(());
        }
        Err(e) => {
            return Err(e.context(
                "start-up check: cannot reach the database to check the guards against; \
                 start with --ignore-check to serve without the check",
            ));
        }
    };
    let findings = optlock::catalog::check::check(&cfg.guards, &client).await;
    let report = optlock::catalog::check::render_human(&findings);
    if optlock::catalog::check::all_ok(&findings) {
        tracing::info!(guards = cfg.guards.len(), "start-up check passed");
        return Ok(());
    }
    eprint!("{report}");
    if ignore {
        tracing::warn!("start-up check found wrong guards; starting anyway (--ignore-check)");
        return Ok(());
    }
    anyhow::bail!(
        "start-up check found wrong guards (see above); fix them, or start with --ignore-check"
    )
}

/// The runtime the command runs on; when it cannot start, says so and gives the exit code.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("optlock: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            upstream,
            tls,
            workers,
            log,
            check_url,
            ignore_check,
        } => {
            init_logging(&log);
            let cfg = match serve_config(config.as_deref(), listen, upstream, tls) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            serve(
                cfg,
                config,
                session_threads(workers),
                check_url,
                ignore_check,
            )
        }
        Command::Check {
            config,
            database_url,
            json,
        } => check(&config, &database_url, json),
        Command::Suggest {
            database_url,
            schema,
            tables,
        } => suggest(&database_url, schema.as_deref(), &tables),
    }
}

/// The config `serve` runs with: the file (or the defaults), then `--listen`, `--upstream` and
/// the TLS modes over it; a bad one is reported and gives exit code 2.
fn serve_config(
    path: Option<&Path>,
    listen: Option<String>,
    upstream: Option<String>,
    tls: TlsFlags,
) -> Result<Config, ExitCode> {
    let mut cfg = match path {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("optlock: {e}");
                return Err(ExitCode::from(2));
            }
        },
        None => Config::default(),
    };
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(u) = upstream {
        if let Err(e) = optlock::config::check_upstream(&u) {
            eprintln!("optlock: --upstream: {e}");
            return Err(ExitCode::from(2));
        }
        cfg.upstream = u;
    }
    if let Some(m) = tls.upstream_tls {
        cfg.upstream_tls.mode = m;
    }
    if let Some(m) = tls.client_tls {
        cfg.client_tls = m;
    }
    if let Err(e) = cfg.check_tls() {
        eprintln!("optlock: {e}");
        return Err(ExitCode::from(2));
    }
    Ok(cfg)
}

/// How many session threads to run: `--workers`, or one per CPU core.
fn session_threads(workers: Option<usize>) -> usize {
    // One event loop per core: a single loop is a queue every session waits in whenever the
    // scheduler runs something else on its core (on a machine shared with the database a
    // woken backend often does), and measured on 2 cores the second loop gains more than its
    // extra wake-ups cost (README, Benchmarks).
    workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `optlock serve`: runs the proxy until it is shut down.
fn serve(
    cfg: Config,
    config_path: Option<PathBuf>,
    threads: usize,
    check_url: Option<String>,
    ignore_check: bool,
) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(run_proxy(
        cfg,
        config_path,
        threads,
        check_url,
        ignore_check,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("optlock: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the guards when asked to, then binds and serves until a shutdown signal.
async fn run_proxy(
    cfg: Config,
    config_path: Option<PathBuf>,
    threads: usize,
    check_url: Option<String>,
    ignore_check: bool,
) -> anyhow::Result<()> {
    // A SIGHUP before the server listens must not end the process (its default action): take
    // it over now; the server handles the ones after.
    let _early_hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    if let Some(url) = &check_url {
        startup_check(&cfg, url, ignore_check).await?;
    }
    if let Some(w) = upstream_warning(&cfg) {
        tracing::warn!("{w}");
    }
    let server = Server::bind(cfg, config_path)
        .await?
        .with_session_threads(threads.max(1))?;
    server.run().await
}

/// The warning for an upstream server on another host reached without `verify-full`.
fn upstream_warning(cfg: &Config) -> Option<String> {
    optlock::config::tls::upstream_warning(&cfg.upstream_tls, &cfg.upstream)
}

/// `optlock check`: checks every guard against the database; exit code 1 when one is wrong.
/// It also warns (on stderr, without changing the exit code) when the upstream server is on
/// another host and its certificate is not checked against its name.
fn check(config: &Path, database_url: &str, json: bool) -> ExitCode {
    init_logging("warn");
    if let Some(w) = Config::load(config)
        .ok()
        .as_ref()
        .and_then(upstream_warning)
    {
        eprintln!("{w}");
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(optlock::catalog::check::run_check(
        config,
        database_url,
        json,
    )) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("optlock check: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `optlock suggest`: prints guard stanzas for the tables of the database.
fn suggest(database_url: &str, schema: Option<&str>, tables: &[String]) -> ExitCode {
    init_logging("warn");
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(optlock::catalog::suggest::run_suggest(
        database_url,
        schema,
        tables,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("optlock suggest: {e:#}");
            ExitCode::from(2)
        }
    }
}
