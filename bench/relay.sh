#!/usr/bin/env bash
# bench/relay.sh: the cost of the relay path alone.
#
# Measures pgbench's read-only select-only workload (pgbench -S, SELECT by primary key)
# connected three ways: directly to PostgreSQL, through optlock (no config = no guards, so
# this is pure relay overhead), and through PgBouncer in session pool mode (a familiar
# reference for "a proxy in the path"), for each protocol mode -M simple, extended, prepared.
# Runs are interleaved (round -> mode -> target, target order rotated every round) so that a
# noisy shared machine affects all targets alike; the report gives the median TPS per target
# and the ratios optlock/direct, pgbouncer/direct and optlock/pgbouncer. Compare ratios from
# one run, not absolute TPS across runs or machines.
# "baseline" runs the same unguarded proxy with another optlock binary (BASELINE_BIN, e.g. a
# build of an older commit) side by side with the current one (ratio optlock/baseline).
#
# Usage:  bench/relay.sh                       (from anywhere; builds optlock in release mode)
#         DURATION=30 ROUNDS=5 bench/relay.sh  (a longer, steadier run)
#         BASELINE_BIN=/tmp/old/release/optlock TARGETS="direct optlock baseline pgbouncer" bench/relay.sh
#
# Options (environment variables):
#   CLIENTS=8          pgbench -c
#   THREADS=2          pgbench -j
#   DURATION=8         pgbench -T seconds per run
#   ROUNDS=3           interleaved rounds (median is taken over rounds)
#   MODES="simple extended prepared"   protocol modes to run
#   TARGETS="direct optlock pgbouncer" targets to run; add "baseline" for optlock run with the
#                      binary BASELINE_BIN instead
#   BASELINE_BIN=path  the other optlock binary, for the baseline target
#   SCALE=10           pgbench -i scale factor for the benchmark database
#   OPTLOCK_WORKERS=N  start optlock with --workers N (default: unset = one per core)
#   KEEP_DB=1          keep the database optlock_bench afterwards
#   PG_HOST/PG_PORT/PG_USER  the PostgreSQL server (127.0.0.1 / 5432 / postgres, trust auth)
#   CARGO_TARGET_DIR, OPTLOCK_BIN, NO_BUILD=1  see bench/lib.sh
# Default run: 3 rounds x 3 modes x 3 targets x 8 s, about 4 minutes with set-up.
#
# Needs: cargo, psql, pgbench (PostgreSQL 15+ client), pgbouncer (installed with apt-get when
# missing and running as root; it is started as user postgres because it refuses root).
# Results are printed and saved to bench/results/relay-<date>.txt (gitignored).
# Everything started is stopped and the database dropped on exit, including Ctrl-C.

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-simple extended prepared}
TARGETS=${TARGETS:-direct optlock pgbouncer}
SCALE=${SCALE:-10}
DB=optlock_bench

need psql pgbench
build_optlock
RESULT=$(results_file relay)

declare -A PORT
PORT[direct]=$PG_PORT
for t in $TARGETS; do
    case $t in
        direct) ;;
        optlock) PORT[optlock]=$(free_port); start_optlock "${PORT[optlock]}" ;;
        baseline) need_baseline; PORT[baseline]=$(free_port); start_optlock "${PORT[baseline]}" "" "$BASELINE_BIN" ;;
        pgbouncer) PORT[pgbouncer]=$(free_port); start_pgbouncer "${PORT[pgbouncer]}" ;;
        *) die "unknown target $t" ;;
    esac
done

log "creating database $DB (pgbench -i -s $SCALE, direct)"
create_db "$DB"
pgbench -i -q -s "$SCALE" -h "$PG_HOST" -p "$PG_PORT" "$DB" >"$WORK_DIR/init.log" 2>&1 ||
    { cat "$WORK_DIR/init.log" >&2; die "pgbench -i failed"; }

read -r -a TARGET_LIST <<<"$TARGETS"
declare -A TPS=() ERRORS=()
host_of() { [[ $1 == direct ]] && echo "$PG_HOST" || echo 127.0.0.1; }

total=$(( ROUNDS * $(wc -w <<<"$MODES") * ${#TARGET_LIST[@]} ))
n=0
for round in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
        k=${#TARGET_LIST[@]}
        for i in $(seq 0 $((k - 1))); do
            t=${TARGET_LIST[$(( (i + round - 1) % k ))]}
            n=$((n + 1))
            out="$WORK_DIR/run-$round-$mode-$t.txt"
            [[ $t != direct && $t != pgbouncer ]] && { check_optlock "${PORT[$t]}" || true; }
            rc=0
            pgbench -n -S -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M "$mode" \
                -h "$(host_of "$t")" -p "${PORT[$t]}" "$DB" >"$out" 2>&1 || rc=$?
            tps=$(pgb_tps "$out")
            died=0
            if [[ $t != direct && $t != pgbouncer ]] && ! check_optlock "${PORT[$t]}"; then
                ERRORS[$mode:$t]="${ERRORS[$mode:$t]:-}[round $round: $OPTLOCK_DIED] "
                died=1
            fi
            # A run with aborted clients or a proxy that exited gives no TPS figure.
            if [[ $rc -ne 0 || -z "$tps" ]]; then
                ERRORS[$mode:$t]="${ERRORS[$mode:$t]:-}[round $round rc=$rc: $(grep -m1 -iE 'error|fatal|abort' "$out" | cut -c1-150)] "
            fi
            [[ $rc -ne 0 || $died -eq 1 ]] && tps=""
            [[ -n "$tps" ]] && TPS[$mode:$t]="${TPS[$mode:$t]:-} $(printf "%.1f" "$tps")"
            log "[$n/$total] round $round  -M $mode  $t: ${tps:-FAILED} tps"
        done
    done
done

{
    echo "# optlock relay benchmark: pgbench -S -c $CLIENTS -j $THREADS -T $DURATION, $ROUNDS interleaved rounds"
    echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host $(hostname)  $(nproc) cores  $(pgbench --version)"
    echo "# optlock $( "$OPTLOCK_BIN" --version 2>/dev/null | awk '{print $2}') ($(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), binary $OPTLOCK_BIN), workers ${OPTLOCK_WORKERS:-default}; pgbouncer $(pgbouncer --version 2>/dev/null | awk 'NR==1{print $2}') session mode; scale $SCALE; $(upstream_note)"
    if [[ " $TARGETS " == *" baseline "* ]]; then
        echo "# baseline = the same proxy run with $BASELINE_BIN (optlock $("$BASELINE_BIN" --version 2>/dev/null | awk '{print $2}'))"
    fi
    echo "# PGSSLMODE=$PGSSLMODE on every leg"
    echo "# TPS = median over rounds (without initial connection time)"
    echo
    # Columns: the TPS of each target run, then the ratios below when both targets ran.
    declare -A RAN=()
    for t in "${TARGET_LIST[@]}"; do RAN[$t]=1; done
    SHOWN=() PAIRS=()
    for t in direct optlock baseline pgbouncer; do
        [[ -n "${RAN[$t]:-}" ]] && SHOWN+=("$t")
    done
    for p in optlock/direct baseline/direct pgbouncer/direct optlock/baseline optlock/pgbouncer baseline/pgbouncer; do
        [[ -n "${RAN[${p%/*}]:-}" && -n "${RAN[${p#*/}]:-}" ]] && PAIRS+=("$p")
    done
    HEADS=("${SHOWN[@]}" "${PAIRS[@]}")
    # row MODE FIELD...: each field right-aligned to its header's width (at least 12).
    row() {
        local i f w
        printf '%-9s' "$1"; shift
        i=0
        for f in "$@"; do
            w=${#HEADS[$i]}; (( w < 12 )) && w=12
            printf ' %*s' "$w" "$f"
            i=$((i + 1))
        done
        printf '\n'
    }
    row mode "${HEADS[@]}"
    for mode in $MODES; do
        declare -A MED=()
        for t in "${SHOWN[@]}"; do
            # shellcheck disable=SC2086
            MED[$t]=$(median ${TPS[$mode:$t]:-})
        done
        vals=()
        for t in "${SHOWN[@]}"; do vals+=("${MED[$t]}"); done
        for p in "${PAIRS[@]}"; do vals+=("$(ratio "${MED[${p%/*}]}" "${MED[${p#*/}]}")"); done
        row "$mode" "${vals[@]}"
    done
    print_runs "$MODES" 9 10
} | tee "$RESULT"
log "saved to $RESULT"
