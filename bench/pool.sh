#!/usr/bin/env bash
# bench/pool.sh: connect-per-transaction clients, and what session pooling does for them.
#
# Part 1, connect per transaction (pgbench -S -C: a new connection for every transaction, as
# backends that open a connection per request do), side by side in one run:
#   direct     PostgreSQL itself (a backend forked per connection)
#   pooled     optlock with pool_mode = "session" (auth_type = "trust": the shared server trusts)
#   optlock    optlock with pool_mode = "none" (a server connection per client, as before)
#   pgbouncer  PgBouncer in session mode (bench/lib.sh's set-up)
# Part 2, steady state (pgbench -S, connections kept): pooled against optlock, so that pooling
# costs nothing once connected.
# Runs are interleaved (the target order rotates every round) and the report gives the median
# TPS per target and the ratios (also paired: each round's own ratio, whose runs are back to
# back), and the CPU time each proxy process spends per transaction (per connection with -C):
# on a small machine shared by pgbench, PostgreSQL and the proxy, that decides TPS. Compare
# ratios of one run, not TPS across machines.
#
# Usage:  bench/pool.sh
#         DURATION=15 ROUNDS=5 bench/pool.sh
#
# Options (environment variables):
#   CLIENTS=8  THREADS=2  DURATION=8 (s per run)  ROUNDS=3  SCALE=10
#   MODE=simple        pgbench -M for both parts
#   POOL_SIZE=20       the pooled optlock's default_pool_size (PgBouncer's is lib.sh's, 200)
#   PG_HOST/PG_PORT/PG_USER, CARGO_TARGET_DIR, OPTLOCK_BIN, NO_BUILD=1, OPTLOCK_WORKERS: see
#   bench/lib.sh
#
# Needs: cargo, psql, pgbench, pgbouncer (installed with apt-get when missing, as root).
# Results are printed and saved to bench/results/pool-<date>.txt (gitignored).

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-10}
MODE=${MODE:-simple}
POOL_SIZE=${POOL_SIZE:-20}
DB=optlock_bench_pool

need psql pgbench
build_optlock
RESULT=$(results_file pool)

POOL_CFG=$WORK_DIR/pooled.toml
cat >"$POOL_CFG" <<CFG
pool_mode = "session"
auth_type = "trust"
default_pool_size = $POOL_SIZE
max_client_conn = 1000
CFG

declare -A PORT PID
PORT[direct]=$PG_PORT
PORT[pooled]=$(free_port); start_optlock "${PORT[pooled]}" "$POOL_CFG"; PID[pooled]=$OPTLOCK_PID
PORT[optlock]=$(free_port); start_optlock "${PORT[optlock]}"; PID[optlock]=$OPTLOCK_PID
PORT[pgbouncer]=$(free_port); start_pgbouncer "${PORT[pgbouncer]}"; PID[pgbouncer]=$(cat "$PGBOUNCER_PIDFILE")

log "creating database $DB (pgbench -i -s $SCALE, direct)"
create_db "$DB"
pgbench -i -q -s "$SCALE" -h "$PG_HOST" -p "$PG_PORT" "$DB" >"$WORK_DIR/init.log" 2>&1 ||
    { cat "$WORK_DIR/init.log" >&2; die "pgbench -i failed"; }

declare -A TPS=() ERRORS=() ROUND_TPS=() CPU=()
host_of() { [[ $1 == direct ]] && echo "$PG_HOST" || echo 127.0.0.1; }

# run PART TARGET ROUND EXTRA-ARGS...: one pgbench run, its TPS kept under PART:TARGET.
run() {
    local part=$1 t=$2 round=$3 out rc=0 tps before after
    shift 3
    out="$WORK_DIR/run-$part-$round-$t.txt"
    before=$(proc_cpu_ticks "${PID[$t]:-}")
    pgbench -n -S -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M "$MODE" "$@" \
        -h "$(host_of "$t")" -p "${PORT[$t]}" "$DB" >"$out" 2>&1 || rc=$?
    after=$(proc_cpu_ticks "${PID[$t]:-}")
    tps=$(pgb_tps "$out")
    if [[ $rc -ne 0 || -z "$tps" ]]; then
        ERRORS[$part:$t]="${ERRORS[$part:$t]:-}[round $round rc=$rc: $(grep -m1 -iE 'error|fatal|abort' "$out" | cut -c1-150)] "
        tps=""
    fi
    if [[ -n "$tps" ]]; then
        TPS[$part:$t]="${TPS[$part:$t]:-} $(printf "%.1f" "$tps")"
        ROUND_TPS[$round:$part:$t]=$tps
        [[ $t != direct ]] && CPU[$part:$t]="${CPU[$part:$t]:-} $(per_try $((after - before)) "$(pgb_processed "$out")")"
    fi
    log "round $round  $part  $t: ${tps:-FAILED} tps"
}

CONNECT=(direct pooled optlock pgbouncer)
STEADY=(pooled optlock)
for round in $(seq 1 "$ROUNDS"); do
    k=${#CONNECT[@]}
    for i in $(seq 0 $((k - 1))); do
        run connect "${CONNECT[$(( (i + round - 1) % k ))]}" "$round" -C
    done
    k=${#STEADY[@]}
    for i in $(seq 0 $((k - 1))); do
        run steady "${STEADY[$(( (i + round - 1) % k ))]}" "$round"
    done
done

med() {
    # shellcheck disable=SC2086
    median ${TPS[$1]:-}
}
cpu() {
    # shellcheck disable=SC2086
    median ${CPU[$1]:-}
}
# paired PART A B: the median over rounds of each round's own A/B.
paired() {
    local round a b pairs=()
    for round in $(seq 1 "$ROUNDS"); do
        a=${ROUND_TPS[$round:$1:$2]:-}; b=${ROUND_TPS[$round:$1:$3]:-}
        [[ -n $a && -n $b ]] && pairs+=("$(ratio "$a" "$b")")
    done
    median_ratio "${pairs[@]}"
}
{
    echo "# optlock session pooling: pgbench -S -M $MODE -c $CLIENTS -j $THREADS -T $DURATION, $ROUNDS interleaved rounds"
    echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host $(hostname)  $(nproc) cores  $(pgbench --version)"
    echo "# optlock $("$OPTLOCK_BIN" --version 2>/dev/null | awk '{print $2}') ($(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), workers ${OPTLOCK_WORKERS:-default}; pooled: pool_mode = session, auth_type = trust, default_pool_size = $POOL_SIZE; pgbouncer $(pgbouncer --version 2>/dev/null | awk 'NR==1{print $2}') session mode; $(upstream_note)"
    echo "# PGSSLMODE=$PGSSLMODE on every leg; TPS = median over rounds; paired = median of each round's own ratio"
    echo "# cpu us/tx = the proxy process's CPU time (user+kernel) per transaction, median (with -C: per connection)"
    echo
    echo "## connect per transaction (pgbench -C)"
    printf '%12s %12s %12s %12s %16s %8s %16s %22s\n' direct pooled optlock pgbouncer pooled/pgbouncer paired pooled/optlock "cpu pooled/pgbouncer"
    d=$(med connect:direct) p=$(med connect:pooled) o=$(med connect:optlock) b=$(med connect:pgbouncer)
    printf '%12s %12s %12s %12s %16s %8s %16s %22s\n' "$d" "$p" "$o" "$b" "$(ratio "$p" "$b")" "$(paired connect pooled pgbouncer)" "$(ratio "$p" "$o")" "$(cpu connect:pooled) / $(cpu connect:pgbouncer)"
    echo
    echo "## steady state (connections kept)"
    printf '%12s %12s %16s %8s %22s\n' pooled optlock pooled/optlock paired "cpu pooled/optlock"
    p=$(med steady:pooled) o=$(med steady:optlock)
    printf '%12s %12s %16s %8s %22s\n' "$p" "$o" "$(ratio "$p" "$o")" "$(paired steady pooled optlock)" "$(cpu steady:pooled) / $(cpu steady:optlock)"
    echo
    echo "# every run (TPS, in round order)"
    for key in connect:direct connect:pooled connect:optlock connect:pgbouncer steady:pooled steady:optlock; do
        printf '%-18s %s\n' "$key" "${TPS[$key]:- (none)}"
    done
    print_failures
} | tee "$RESULT"
log "saved to $RESULT"
