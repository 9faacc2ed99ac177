#!/usr/bin/env bash
# bench/tpcb_guarded.sh: the cost of guarding on a write-heavy workload.
#
# Measures pgbench's built-in TPC-B-like transaction (three UPDATEs by key, a SELECT and an
# INSERT in BEGIN ... END) run directly against PostgreSQL and through optlock with
# pgbench's own tables guarded by PostgreSQL's xmin system column (no schema change):
#   public.pgbench_accounts key aid, public.pgbench_tellers key tid,
#   public.pgbench_branches key bid, all version = "xmin"
# so every UPDATE goes through the proxy's analysis and rewrite. Optionally also through an
# unguarded optlock ("plain": relay only), which separates the relay cost from the guard cost,
# and through PgBouncer in session mode ("pgbouncer"), the cost of a mature proxy's relay alone.
# "baseline" and "baseline-plain" run the same two set-ups with another optlock binary
# (BASELINE_BIN, e.g. a build of an older commit), side by side with the current one, so that a
# change to the proxy is measured against its predecessor in one run (ratio optlock/baseline).
# Runs are interleaved (round -> mode -> target, target order rotated every round); the report
# gives the median TPS per target, the ratios, and retried/failed transaction counts
# (--max-tries=10: conflicts and serialization failures are SQLSTATE 40001 and are retried).
# Compare ratios from one run, not absolute TPS across runs or machines.
# Each run also records how idle the machine was ("idle %", all cores): near 0 the cores are
# saturated and the proxy's own CPU comes out of PostgreSQL's, so the ratio then measures CPU
# sharing; with idle cores it measures the latency a relay adds. CLIENTS takes a list
# (CLIENTS="1 8") to see both in one run.
#
# Usage:  bench/tpcb_guarded.sh
#         TARGETS="direct optlock plain" DURATION=30 ROUNDS=5 bench/tpcb_guarded.sh
#         BASELINE_BIN=/tmp/old/release/optlock TARGETS="direct optlock baseline" bench/tpcb_guarded.sh
# Options (environment variables):
#   CLIENTS=8 (a list runs each)  THREADS=2 (at most CLIENTS)  DURATION=8 (pgbench -T)
#   ROUNDS=3  MAX_TRIES=10
#   MODES="simple extended prepared"
#   TARGETS="direct optlock"       add "plain" for optlock without guards, "pgbouncer" for
#                                  PgBouncer (installed with apt-get when missing and run as root),
#                                  "baseline" / "baseline-plain" for optlock / plain run with the
#                                  binary BASELINE_BIN instead
#   BASELINE_BIN=path              the other optlock binary, for the baseline targets
#   SCALE=10                       pgbench -i scale factor (branches = SCALE: the hot rows)
#   OPTLOCK_WORKERS=N, KEEP_DB=1, PG_HOST/PG_PORT/PG_USER, CARGO_TARGET_DIR, OPTLOCK_BIN,
#   NO_BUILD=1                     see bench/lib.sh
# Default run: 3 rounds x 3 modes x 2 targets x 8 s, about 3 minutes with set-up (each client
# count in CLIENTS as much again).
# Results are printed and saved to bench/results/tpcb_guarded-<date>.txt (gitignored).

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
MAX_TRIES=${MAX_TRIES:-10}
MODES=${MODES:-simple extended prepared}
TARGETS=${TARGETS:-direct optlock}
SCALE=${SCALE:-10}
DB=optlock_bench_tpcb

need psql pgbench
build_optlock
RESULT=$(results_file tpcb_guarded)

log "creating database $DB (pgbench -i -s $SCALE, direct)"
create_db "$DB"
pgbench -i -q -s "$SCALE" -h "$PG_HOST" -p "$PG_PORT" "$DB" >"$WORK_DIR/init.log" 2>&1 ||
    { cat "$WORK_DIR/init.log" >&2; die "pgbench -i failed"; }

# The guarded configuration. Usage: guarded_config FILE PORT
guarded_config() {
    cat >"$1" <<EOF
listen = "127.0.0.1:$2"
upstream = "$PG_HOST:$PG_PORT"

[[guard]]
table = "public.pgbench_accounts"
key = ["aid"]
version = "xmin"

[[guard]]
table = "public.pgbench_tellers"
key = ["tid"]
version = "xmin"

[[guard]]
table = "public.pgbench_branches"
key = ["bid"]
version = "xmin"
EOF
}

declare -A PORT=() HOST=()
PORT[direct]=$PG_PORT HOST[direct]=$PG_HOST
for t in $TARGETS; do
    case $t in
        direct) ;;
        optlock | baseline)
            bin=$OPTLOCK_BIN
            [[ $t == baseline ]] && { need_baseline; bin=$BASELINE_BIN; }
            PORT[$t]=$(free_port) HOST[$t]=127.0.0.1
            guarded_config "$WORK_DIR/$t.toml" "${PORT[$t]}"
            start_optlock "${PORT[$t]}" "$WORK_DIR/$t.toml" "$bin"
            ;;
        plain | baseline-plain)
            bin=$OPTLOCK_BIN
            [[ $t == baseline-plain ]] && { need_baseline; bin=$BASELINE_BIN; }
            PORT[$t]=$(free_port) HOST[$t]=127.0.0.1
            start_optlock "${PORT[$t]}" "" "$bin"    # another proxy, without config
            ;;
        pgbouncer)
            PORT[pgbouncer]=$(free_port) HOST[pgbouncer]=127.0.0.1
            start_pgbouncer "${PORT[pgbouncer]}"
            ;;
        *) die "unknown target $t" ;;
    esac
done

read -r -a TARGET_LIST <<<"$TARGETS"
# A run's key: clients/mode (e.g. 8/simple), then :target.
RUNS=()
for c in $CLIENTS; do
    for mode in $MODES; do RUNS+=("$c/$mode"); done
done
declare -A TPS=() IDLE=() RETRIED=() FAILED=() ERRORS=()
total=$(( ROUNDS * ${#RUNS[@]} * ${#TARGET_LIST[@]} ))
n=0
for round in $(seq 1 "$ROUNDS"); do
    for run in "${RUNS[@]}"; do
        c=${run%/*} mode=${run#*/}
        k=${#TARGET_LIST[@]}
        for i in $(seq 0 $((k - 1))); do
            t=${TARGET_LIST[$(( (i + round - 1) % k ))]}
            key=$run:$t
            n=$((n + 1))
            out="$WORK_DIR/run-$round-$c-$mode-$t.txt"
            [[ $t != direct && $t != pgbouncer ]] && { check_optlock "${PORT[$t]}" || true; }
            rc=0
            busy0=$(cpu_busy_ticks) idle0=$(cpu_idle_ticks)
            pgbench -n -c "$c" -j "$(( THREADS < c ? THREADS : c ))" -T "$DURATION" -M "$mode" \
                --max-tries="$MAX_TRIES" -h "${HOST[$t]}" -p "${PORT[$t]}" "$DB" >"$out" 2>&1 || rc=$?
            idle=$(idle_pct $(( $(cpu_busy_ticks) - busy0 )) $(( $(cpu_idle_ticks) - idle0 )))
            tps=$(pgb_tps "$out")
            RETRIED[$key]=$(( ${RETRIED[$key]:-0} + $(pgb_retried "$out") ))
            FAILED[$key]=$(( ${FAILED[$key]:-0} + $(pgb_failed "$out") ))
            died=0
            if [[ $t != direct && $t != pgbouncer ]] && ! check_optlock "${PORT[$t]}"; then
                ERRORS[$key]="${ERRORS[$key]:-}[round $round: $OPTLOCK_DIED] "
                died=1
            fi
            # A run with aborted clients or a proxy that exited gives no TPS figure.
            if [[ $rc -ne 0 || -z "$tps" ]]; then
                ERRORS[$key]="${ERRORS[$key]:-}[round $round rc=$rc: $(grep -m1 -iE 'aborted|error|fatal' "$out" | cut -c1-150)] "
            fi
            [[ $rc -ne 0 || $died -eq 1 ]] && tps=""
            [[ -n "$tps" ]] && TPS[$key]="${TPS[$key]:-} $(printf '%.1f' "$tps")"
            IDLE[$key]="${IDLE[$key]:-} $idle"
            log "[$n/$total] round $round  -c $c -M $mode  $t: ${tps:-FAILED} tps, ${idle}% idle"
        done
    done
done

{
    echo "# optlock guarded TPC-B benchmark: pgbench (tpcb-like) -c ${CLIENTS// /,} -j $THREADS -T $DURATION --max-tries=$MAX_TRIES, scale $SCALE, $ROUNDS interleaved rounds"
    echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host $(hostname)  $(nproc) cores  $(pgbench --version)"
    echo "# optlock $("$OPTLOCK_BIN" --version 2>/dev/null | awk '{print $2}') ($(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), binary $OPTLOCK_BIN), workers ${OPTLOCK_WORKERS:-default}; $(upstream_note)"
    if [[ " $TARGETS " == *" baseline"* ]]; then
        echo "# baseline = the same proxies run with $BASELINE_BIN (optlock $("$BASELINE_BIN" --version 2>/dev/null | awk '{print $2}'))"
    fi
    echo "# optlock, baseline = guarded by xmin (pgbench_accounts/aid, pgbench_tellers/tid, pgbench_branches/bid);"
    echo "# plain, baseline-plain = no guards; pgbouncer = session mode; PGSSLMODE=$PGSSLMODE"
    echo "# TPS = median over rounds; retried/failed = summed over rounds; idle % = median share of"
    echo "# all cores left idle during the direct / optlock runs (near 0: saturated)"
    echo
    # Columns: the TPS of each target run, its ratio to direct, and the pairs below when both ran.
    declare -A RAN=()
    for t in "${TARGET_LIST[@]}"; do RAN[$t]=1; done
    SHOWN=()
    for t in direct optlock baseline plain baseline-plain pgbouncer; do
        [[ -n "${RAN[$t]:-}" ]] && SHOWN+=("$t")
    done
    PAIRS=()
    for t in "${SHOWN[@]}"; do
        [[ $t != direct && -n "${RAN[direct]:-}" ]] && PAIRS+=("$t/direct")
    done
    for p in optlock/baseline plain/baseline-plain optlock/pgbouncer plain/pgbouncer; do
        [[ -n "${RAN[${p%/*}]:-}" && -n "${RAN[${p#*/}]:-}" ]] && PAIRS+=("$p")
    done
    HEADS=("${SHOWN[@]}" "${PAIRS[@]}" "idle %" "optlock retried" "optlock failed")
    # row CLIENTS MODE FIELD...: each field right-aligned to its header's width (at least 9).
    row() {
        local i f w
        printf '%-8s %-9s' "$1" "$2"; shift 2
        i=0
        for f in "$@"; do
            w=${#HEADS[$i]}; (( w < 9 )) && w=9
            printf ' %*s' "$w" "$f"
            i=$((i + 1))
        done
        printf '\n'
    }
    row clients mode "${HEADS[@]}"
    for run in "${RUNS[@]}"; do
        declare -A MED=()
        for t in "${SHOWN[@]}"; do
            # shellcheck disable=SC2086
            MED[$t]=$(median ${TPS[$run:$t]:-})
        done
        # shellcheck disable=SC2086
        idle="$(median ${IDLE[$run:direct]:-} | cut -d. -f1) / $(median ${IDLE[$run:optlock]:-} | cut -d. -f1)"
        vals=()
        for t in "${SHOWN[@]}"; do vals+=("${MED[$t]}"); done
        for p in "${PAIRS[@]}"; do vals+=("$(ratio "${MED[${p%/*}]}" "${MED[${p#*/}]}")"); done
        row "${run%/*}" "${run#*/}" "${vals[@]}" "$idle" "${RETRIED[$run:optlock]:--}" "${FAILED[$run:optlock]:--}"
    done
    echo
    echo "# every run (TPS and idle % in round order; retried/failed summed)"
    for run in "${RUNS[@]}"; do
        for t in "${TARGET_LIST[@]}"; do
            printf '%-8s %-9s %-14s retried %-6s failed %-6s tps %s  idle %%%s\n' "${run%/*}" "${run#*/}" "$t" \
                "${RETRIED[$run:$t]}" "${FAILED[$run:$t]}" "${TPS[$run:$t]:- (none)}" "${IDLE[$run:$t]:-}"
        done
    done
    print_failures
} | tee "$RESULT"
log "saved to $RESULT"
