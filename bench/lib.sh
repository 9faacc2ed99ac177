# shellcheck shell=bash
# bench/lib.sh: helpers shared by the optlock benchmark scripts (sourced, not run).
#
# Provides: building the proxy, picking free ports, starting/stopping optlock and PgBouncer,
# creating/dropping the benchmark database, parsing pgbench output, medians and ratios,
# and one cleanup trap that runs on exit, Ctrl-C and SIGTERM.
#
# Environment understood by every script that sources this file:
#   PG_HOST (127.0.0.1), PG_PORT (5432), PG_USER (postgres)  the real PostgreSQL (trust auth)
#   UPSTREAM_SOCKET    the server's socket directory (e.g. /var/run/postgresql): optlock and
#                      PgBouncer then reach the server through its Unix-domain socket instead
#                      of TCP (pgbench still connects over TCP; "direct" stays TCP)
#   CARGO_TARGET_DIR   where cargo puts the build (default: <repo>/target)
#   OPTLOCK_BIN        use this binary instead of building one
#   BASELINE_BIN       a second optlock binary (e.g. an older commit's build) for the scripts'
#                      "baseline" targets: the same proxy set-up run with this binary, side by
#                      side with OPTLOCK_BIN in the same run
#   OPTLOCK_WORKERS    pass --workers N to the proxy (default: unset = one per core)
#   UPSTREAM_TLS       optlock's upstream_tls when start_optlock starts it (default disable:
#                      every leg in plain text, as PGSSLMODE=disable makes the clients' legs)
#   KEEP_DB=1          keep the benchmark database afterwards
#   NO_BUILD=1         do not run cargo build (use an existing binary)

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
UPSTREAM_SOCKET=${UPSTREAM_SOCKET:-}
if [[ -n "$UPSTREAM_SOCKET" && ! -S "$UPSTREAM_SOCKET/.s.PGSQL.$PG_PORT" ]]; then
    printf 'error: no PostgreSQL socket at %s\n' "$UPSTREAM_SOCKET/.s.PGSQL.$PG_PORT" >&2
    exit 1
fi
export PGUSER=$PG_USER PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}
# No TLS on any leg: with the server's ssl=on, libpq's default (prefer) would encrypt the direct
# runs, and optlock's default (upstream_tls = "prefer") its server leg; PgBouncer's is disabled
# below. bench/tls.sh compares the legs with TLS.
export PGSSLMODE=disable
UPSTREAM_TLS=${UPSTREAM_TLS:-disable}
unset PGPASSWORD PGDATABASE PGOPTIONS PGSSLCERT PGSSLKEY PGSSLROOTCERT 2>/dev/null || true

WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/optlock-bench.XXXXXX")
chmod 755 "$WORK_DIR"
RESULTS_DIR="$BENCH_DIR/results"
mkdir -p "$RESULTS_DIR"

OPTLOCK_PID=""      # the proxy started last
OPTLOCK_PIDS=()     # every proxy started (all stopped on exit)
declare -A OPTLOCK_AT=() OPTLOCK_CFG=() OPTLOCK_BIN_AT=() OPTLOCK_TLS_AT=()   # port -> pid, config file, binary, upstream_tls
OPTLOCK_LOG=$WORK_DIR/optlock.log
RESULT=""           # the script's result file; the proxy log is kept beside it
PGBOUNCER_PIDFILE=""
BENCH_DB=""

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "'$c' not found on PATH"
    done
}

# psql against the real server. Usage: pg_direct DB [psql args...]
pg_direct() {
    local db=$1; shift
    psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -d "$db" "$@"
}

# How the proxies reach the server, for report headers.
upstream_note() {
    if [[ -n "$UPSTREAM_SOCKET" ]]; then
        echo "proxies reach the server through its Unix socket in $UPSTREAM_SOCKET"
    else
        echo "proxies reach the server over TCP at $PG_HOST:$PG_PORT"
    fi
}

# Checks BASELINE_BIN (for the "baseline" targets).
need_baseline() {
    [[ -n "${BASELINE_BIN:-}" ]] || die "the baseline targets need BASELINE_BIN (another optlock binary)"
    [[ -x "$BASELINE_BIN" ]] || die "BASELINE_BIN=$BASELINE_BIN is not executable"
}

# Builds the proxy (release) and sets OPTLOCK_BIN.
build_optlock() {
    if [[ -n "${OPTLOCK_BIN:-}" ]]; then
        [[ -x "$OPTLOCK_BIN" ]] || die "OPTLOCK_BIN=$OPTLOCK_BIN is not executable"
        return
    fi
    local target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
    if [[ "${NO_BUILD:-0}" != 1 ]]; then
        need cargo
        log "building optlock (cargo build --release, target dir $target)"
        (cd "$REPO_ROOT" && cargo build --release --quiet) || die "cargo build failed"
    fi
    OPTLOCK_BIN=$target/release/optlock
    [[ -x "$OPTLOCK_BIN" ]] || die "no binary at $OPTLOCK_BIN"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints a TCP port on 127.0.0.1 that nothing listens on, below the kernel's range of
# ephemeral ports (ip_local_port_range): a port in that range may be taken between this check
# and the bind by the local end of an outgoing connection, which a connect-per-transaction
# run opens by the thousand.
free_port() {
    local p low=32768
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    (( low > 12000 )) || low=32768
    for _ in $(seq 1 200); do
        p=$(( 10000 + (RANDOM * 32768 + RANDOM) % (low - 10000) ))
        if ! port_in_use "$p"; then echo "$p"; return; fi
    done
    die "no free port found"
}

# Waits until a PostgreSQL-speaking server answers on PORT (proxy or pooler included).
wait_ready() {
    local port=$1 what=$2
    for _ in $(seq 1 100); do
        if psql -X -q -h 127.0.0.1 -p "$port" -d postgres -Atc 'select 1' >/dev/null 2>&1; then
            return
        fi
        sleep 0.1
    done
    die "$what on port $port did not become ready"
}

# Starts optlock. Usage: start_optlock PORT [CONFIG_FILE [BINARY [UPSTREAM_TLS]]] (BINARY
# defaults to OPTLOCK_BIN, UPSTREAM_TLS to $UPSTREAM_TLS, passed as OPTLOCK_UPSTREAM_TLS, which
# a binary older than that setting ignores). Sets OPTLOCK_PID; may be called several times
# (several proxies side by side).
start_optlock() {
    local port=$1 config=${2:-} bin=${3:-$OPTLOCK_BIN} tls=${4:-$UPSTREAM_TLS}
    local upstream="$PG_HOST:$PG_PORT"
    [[ -n "$UPSTREAM_SOCKET" ]] && upstream="$UPSTREAM_SOCKET/.s.PGSQL.$PG_PORT"
    local args=(serve --listen "127.0.0.1:$port" --upstream "$upstream" --log warn)
    [[ -n "$config" ]] && args+=(--config "$config")
    [[ -n "${OPTLOCK_WORKERS:-}" ]] && args+=(--workers "$OPTLOCK_WORKERS")
    # OPTLOCK_WORKERS is also read by clap from the environment; pass it explicitly only.
    # setsid: the proxy runs in a session of its own, as a service (or PgBouncer's -d) does.
    # With the kernel's autogroup scheduling (sched_autogroup_enabled=1) a process shares CPU
    # time with the rest of its session: left in this script's session, the proxy would
    # compete with pgbench for one group's share while PgBouncer has a group of its own.
    env -u OPTLOCK_WORKERS -u OPTLOCK_CONFIG -u OPTLOCK_LISTEN -u OPTLOCK_UPSTREAM \
        -u OPTLOCK_CLIENT_TLS OPTLOCK_UPSTREAM_TLS="$tls" \
        setsid "$bin" "${args[@]}" >>"$OPTLOCK_LOG" 2>&1 </dev/null &
    OPTLOCK_PID=$!
    OPTLOCK_PIDS+=("$OPTLOCK_PID")
    OPTLOCK_AT[$port]=$OPTLOCK_PID OPTLOCK_CFG[$port]=$config OPTLOCK_BIN_AT[$port]=$bin
    OPTLOCK_TLS_AT[$port]=$tls
    wait_ready "$port" optlock
    log "optlock pid $OPTLOCK_PID on 127.0.0.1:$port, upstream $upstream (upstream_tls $tls)${config:+ (config $config)}${OPTLOCK_WORKERS:+ workers=$OPTLOCK_WORKERS}${3:+ binary $bin}"
}

# Checks that the proxy started on PORT still runs. If it has exited, logs that with its exit
# status and the end of its log, sets OPTLOCK_DIED to a short note for the report, and starts
# it again so the remaining runs can go on. Returns 1 when it had exited.
OPTLOCK_DIED=""
check_optlock() {
    local port=$1 pid=${OPTLOCK_AT[$1]:-} status=0
    OPTLOCK_DIED=""
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null && return 0
    wait "$pid" 2>/dev/null || status=$?
    OPTLOCK_DIED="optlock (pid $pid) had exited with status $status; restarted"
    log "$OPTLOCK_DIED; its log ends with:"
    tail -n 15 "$OPTLOCK_LOG" >&2 || true
    start_optlock "$port" "${OPTLOCK_CFG[$port]}" "${OPTLOCK_BIN_AT[$port]}" "${OPTLOCK_TLS_AT[$port]}"
    return 1
}

# Stops every proxy this script started (SIGTERM, then SIGKILL after 5 s).
stop_optlock() {
    local pid
    for pid in "${OPTLOCK_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    OPTLOCK_PIDS=()
    OPTLOCK_PID=""
}

# Starts PgBouncer (session pooling) in front of the real server. Usage: start_pgbouncer PORT
start_pgbouncer() {
    local port=$1 dir="$WORK_DIR/pgbouncer"
    if ! command -v pgbouncer >/dev/null 2>&1; then
        [[ $(id -u) -eq 0 ]] || die "pgbouncer missing (apt-get install pgbouncer)"
        log "installing pgbouncer"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null; } ||
            die "cannot install pgbouncer"
    fi
    mkdir -p "$dir"
    printf '"%s" ""\n' "$PG_USER" >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=${UPSTREAM_SOCKET:-$PG_HOST} port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = session
max_client_conn = 1000
default_pool_size = 200
max_db_connections = 0
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits,options
server_tls_sslmode = disable
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
    PGBOUNCER_PIDFILE=$dir/pgbouncer.pid
    if [[ $(id -u) -eq 0 ]]; then
        # PgBouncer refuses to run as root.
        chown -R postgres "$dir"
        runuser -u postgres -- pgbouncer -d -q "$dir/pgbouncer.ini" || die "pgbouncer did not start (see $dir/pgbouncer.log)"
    else
        pgbouncer -d -q "$dir/pgbouncer.ini" || die "pgbouncer did not start (see $dir/pgbouncer.log)"
    fi
    wait_ready "$port" pgbouncer
    log "pgbouncer pid $(cat "$PGBOUNCER_PIDFILE") on 127.0.0.1:$port (pool_mode=session)"
}

stop_pgbouncer() {
    if [[ -n "$PGBOUNCER_PIDFILE" && -s "$PGBOUNCER_PIDFILE" ]]; then
        local pid
        pid=$(cat "$PGBOUNCER_PIDFILE")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    PGBOUNCER_PIDFILE=""
}

# Creates the benchmark database (dropping a leftover one). Sets BENCH_DB.
create_db() {
    BENCH_DB=$1
    pg_direct postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS \"$BENCH_DB\" WITH (FORCE)" -c "CREATE DATABASE \"$BENCH_DB\""
}

drop_db() {
    if [[ -n "$BENCH_DB" ]]; then
        if [[ "${KEEP_DB:-0}" == 1 ]]; then
            log "keeping database $BENCH_DB (KEEP_DB=1)"
        else
            pg_direct postgres -c "DROP DATABASE IF EXISTS \"$BENCH_DB\" WITH (FORCE)" 2>/dev/null || true
        fi
    fi
    BENCH_DB=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_optlock
    stop_pgbouncer
    drop_db
    if [[ $rc -ne 0 && -s "$OPTLOCK_LOG" ]]; then
        log "optlock log (last lines):"; tail -n 20 "$OPTLOCK_LOG" >&2 || true
    fi
    if [[ -n "$RESULT" && -s "$OPTLOCK_LOG" ]]; then
        cp "$OPTLOCK_LOG" "${RESULT%.txt}.optlock.log" 2>/dev/null &&
            log "optlock log saved to ${RESULT%.txt}.optlock.log"
    fi
    rm -rf "$WORK_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Field extraction from a saved pgbench output file.
pgb_tps()       { sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$1" | head -n1; }
pgb_processed() { sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$1" | head -n1; }
pgb_failed()    { local v; v=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$1" | head -n1); echo "${v:-0}"; }
pgb_retried()   { local v; v=$(sed -n 's/^number of transactions retried: \([0-9]*\).*/\1/p' "$1" | head -n1); echo "${v:-0}"; }
pgb_retries()   { local v; v=$(sed -n 's/^total number of retries: \([0-9]*\).*/\1/p' "$1" | head -n1); echo "${v:-0}"; }

# CPU time, in clock ticks: the whole machine's busy time (all cores: user, nice, system, irq,
# softirq; what pgbench, PostgreSQL and the proxy share), and one process's (all its threads;
# 0 without a pid). Read before and after a run: the differences per try show where the CPU
# goes, which on a machine this small decides TPS more than any one latency.
cpu_busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
# The whole machine's idle time (idle and iowait), in clock ticks.
cpu_idle_ticks() { awk '/^cpu /{print $5 + $6}' /proc/stat; }
# idle_pct BUSY IDLE: idle share of the time between two readings, in percent.
idle_pct() { awk -v b="$1" -v i="$2" 'BEGIN { if (b + i > 0) printf "%.0f\n", 100 * i / (b + i); else print "-" }'; }
proc_cpu_ticks() {
    if [[ -n "${1:-}" && -r /proc/$1/stat ]]; then
        # utime and stime are fields 14 and 15; the command name (field 2) has no spaces here.
        awk '{print $14 + $15}' "/proc/$1/stat"
    else
        echo 0
    fi
}
# The user-space CPU time of process $1 (utime only: the proxy's own code, without the
# kernel's socket work), in clock ticks; 0 when unknown.
proc_user_ticks() {
    if [[ -n "${1:-}" && -r /proc/$1/stat ]]; then
        awk '{print $14}' "/proc/$1/stat"
    else
        echo 0
    fi
}
# The CPU time of the PostgreSQL server at PG_HOST:PG_PORT, in clock ticks: its postmaster's
# own and reaped children's time (a backend that has ended is counted there) plus the time of
# its children still running. Read before and after a run (after the run's backends are gone:
# see pg_backends_gone), the difference is what the server spent, wherever a client connected.
# 0 when the server's data directory cannot be read (a server on another machine).
pg_cluster_ticks() {
    local dir pid child total
    dir=$(pg_direct postgres -Atc "SHOW data_directory" 2>/dev/null) || { echo 0; return; }
    pid=$(head -n1 "$dir/postmaster.pid" 2>/dev/null) || { echo 0; return; }
    [[ -r /proc/$pid/stat ]] || { echo 0; return; }
    # utime, stime, cutime, cstime: fields 14 to 17.
    total=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")
    for child in $(pgrep -P "$pid"); do
        total=$((total + $(proc_cpu_ticks "$child")))
    done
    echo "$total"
}
# Wait (up to 5 s) until no client backend is connected to database $1: pgbench's backends
# end a moment after it exits, and a backend's CPU is counted at its end.
pg_backends_gone() {
    local i
    for i in $(seq 1 50); do
        [[ $(pg_direct postgres -Atc "SELECT count(*) FROM pg_stat_activity WHERE datname = '$1' AND pid <> pg_backend_pid()" 2>/dev/null) == 0 ]] && return 0
        sleep 0.1
    done
}
# per_try TICKS TRIES: microseconds per try ("-" when not computable).
per_try() {
    awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n + 0 > 0) printf "%.0f\n", t / hz * 1e6 / n; else print "-" }'
}

# The end of a report: every run's TPS per group (mode or workload, the words of $1) and
# target (TARGET_LIST), from the TPS array keyed "group:target", then the failed runs noted in
# the ERRORS array. $2 and $3: the widths of the group and target columns.
print_runs() {
    local g t
    echo
    echo "# every run (TPS, in round order)"
    for g in $1; do
        for t in "${TARGET_LIST[@]}"; do
            printf "%-${2}s %-${3}s %s\n" "$g" "$t" "${TPS[$g:$t]:- (none)}"
        done
    done
    print_failures
}

# The failed runs noted in the ERRORS array, if any.
print_failures() {
    local key
    if [[ ${#ERRORS[@]} -gt 0 ]]; then
        echo
        echo "# failed runs"
        for key in "${!ERRORS[@]}"; do echo "$key ${ERRORS[$key]}"; done
    fi
}

# Median of the numbers given as arguments ("-" when none).
median() {
    [[ $# -gt 0 ]] || { echo "-"; return; }
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) printf "%.1f\n", a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'
}

# Median of ratios given as arguments, three decimals ("-" when none).
median_ratio() {
    [[ $# -gt 0 ]] || { echo "-"; return; }
    printf '%s\n' "$@" | grep -v '^-$' | sort -g |
        awk '{a[NR]=$1} END {if (NR == 0) print "-"; else if (NR%2) printf "%.3f\n", a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'
}

# ratio A B: A/B with three decimals ("-" when not computable).
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.3f\n", a / b }'
}

results_file() { echo "$RESULTS_DIR/$1-$(date +%Y%m%d-%H%M%S).txt"; }
