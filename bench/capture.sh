#!/usr/bin/env bash
# bench/capture.sh: the cost of read capture on a read-only workload.
#
# pgbench -S (SELECT abalance FROM pgbench_accounts WHERE aid = :aid) through two proxies side
# by side: "plain" (no guards: the relay alone) and "xmin" (pgbench_accounts guarded by xmin,
# key aid: every SELECT is captured, aid and xmin added to its output, read from each row,
# tracked and taken off before the client sees it), plus "direct" for reference. Runs are
# interleaved (round -> mode -> target, order rotated each round) so that a noisy machine hits
# every target alike. Reported per mode: median TPS, xmin/plain and plain/direct, the median
# of each round's own xmin/plain (the two runs of a round are back to back: the machine's
# drift between rounds cancels out), and the CPU time of each proxy process per transaction
# (its utime+stime over the run / transactions processed), the figure that decides TPS on a
# small machine, with its user-space part (the proxy's own code; the rest is the kernel's
# socket work, the same for both), and PostgreSQL's CPU time per transaction for each target
# (its postmaster's own and reaped children's time: capture's added columns cost the server
# too; needs the server's data directory readable, else 0).
#
# Usage:  bench/capture.sh
#         ROUNDS=5 DURATION=15 MODES=prepared bench/capture.sh
#
# Options (environment variables):
#   CLIENTS=8          pgbench -c
#   THREADS=2          pgbench -j
#   DURATION=10        pgbench -T seconds per run
#   ROUNDS=3           interleaved rounds (medians over rounds)
#   MODES="simple extended prepared"
#   TARGETS="direct plain xmin"
#   SCALE=10           pgbench -i scale
#   TRACK_LIMIT=10000  the xmin proxy's track_limit (entries per session)
#   PG_HOST/PG_PORT, UPSTREAM_SOCKET, CARGO_TARGET_DIR, OPTLOCK_BIN, NO_BUILD=1: see bench/lib.sh
# Default run: 3 rounds x 3 modes x 3 targets x 10 s, about 5 minutes.
# Needs: cargo, psql, pgbench. Results are printed and saved to bench/results/capture-<date>.txt.

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-simple extended prepared}
TARGETS=${TARGETS:-direct plain xmin}
SCALE=${SCALE:-10}
TRACK_LIMIT=${TRACK_LIMIT:-10000}
DB=optlock_bench_capture

need psql pgbench
build_optlock
RESULT=$(results_file capture)

XMIN_CONFIG=$WORK_DIR/xmin.toml
cat >"$XMIN_CONFIG" <<EOF
track_limit = $TRACK_LIMIT

[[guard]]
table = "pgbench_accounts"
key = ["aid"]
version = "xmin"
EOF

log "creating database $DB (pgbench -i -s $SCALE, direct)"
create_db "$DB"
pgbench -i -q -s "$SCALE" -h "$PG_HOST" -p "$PG_PORT" "$DB" >"$WORK_DIR/init.log" 2>&1 ||
    { cat "$WORK_DIR/init.log" >&2; die "pgbench -i failed"; }

declare -A PORT=() PID=()
PORT[direct]=$PG_PORT
for t in $TARGETS; do
    case $t in
        direct) ;;
        plain) PORT[plain]=$(free_port); start_optlock "${PORT[plain]}"; PID[plain]=$OPTLOCK_PID ;;
        xmin) PORT[xmin]=$(free_port); start_optlock "${PORT[xmin]}" "$XMIN_CONFIG"; PID[xmin]=$OPTLOCK_PID ;;
        *) die "unknown target $t (direct, plain, xmin)" ;;
    esac
done

read -r -a TARGET_LIST <<<"$TARGETS"
declare -A TPS=() CPU=() USER=() SERVER=() ERRORS=() ROUND_TPS=()
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
            if [[ $t != direct ]]; then
                check_optlock "${PORT[$t]}" || true
                PID[$t]=${OPTLOCK_AT[${PORT[$t]}]}
            fi
            before=$(proc_cpu_ticks "${PID[$t]:-}")
            user_before=$(proc_user_ticks "${PID[$t]:-}")
            server_before=$(pg_cluster_ticks)
            rc=0
            pgbench -n -S -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M "$mode" \
                -h "$(host_of "$t")" -p "${PORT[$t]}" "$DB" >"$out" 2>&1 || rc=$?
            after=$(proc_cpu_ticks "${PID[$t]:-}")
            user_after=$(proc_user_ticks "${PID[$t]:-}")
            pg_backends_gone "$DB"
            server_after=$(pg_cluster_ticks)
            tps=$(pgb_tps "$out")
            done_tx=$(pgb_processed "$out")
            if [[ $rc -ne 0 || -z "$tps" ]]; then
                ERRORS[$mode:$t]="${ERRORS[$mode:$t]:-}[round $round rc=$rc: $(grep -m1 -iE 'error|fatal|abort' "$out" | cut -c1-150)] "
                tps=""
            fi
            if [[ -n "$tps" ]]; then
                TPS[$mode:$t]="${TPS[$mode:$t]:-} $(printf "%.1f" "$tps")"
                ROUND_TPS[$round:$mode:$t]=$tps
                SERVER[$mode:$t]="${SERVER[$mode:$t]:-} $(per_try $((server_after - server_before)) "$done_tx")"
                if [[ $t != direct ]]; then
                    CPU[$mode:$t]="${CPU[$mode:$t]:-} $(per_try $((after - before)) "$done_tx")"
                    USER[$mode:$t]="${USER[$mode:$t]:-} $(per_try $((user_after - user_before)) "$done_tx")"
                fi
            fi
            log "[$n/$total] round $round  -M $mode  $t: ${tps:-FAILED} tps"
        done
    done
done

{
    echo "# optlock read capture benchmark: pgbench -S -c $CLIENTS -j $THREADS -T $DURATION, $ROUNDS interleaved rounds"
    echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host $(hostname)  $(nproc) cores  $(pgbench --version)"
    echo "# optlock $("$OPTLOCK_BIN" --version 2>/dev/null | awk '{print $2}') ($(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')); scale $SCALE; $(upstream_note); PGSSLMODE=$PGSSLMODE"
    echo "# plain = optlock without guards; xmin = optlock with pgbench_accounts guarded by xmin (capture on, track_limit $TRACK_LIMIT)"
    echo "# TPS = median over rounds; cpu us/tx = the proxy process's CPU time per transaction (median)"
    echo "# paired = median over rounds of the round's own xmin/plain; cpu = user+kernel, user = the proxy's own code"
    echo "# server us/tx = PostgreSQL's CPU time per transaction (all its processes), direct / plain / xmin"
    echo
    printf '%-9s %10s %10s %10s %11s %7s %12s %16s %16s %16s\n' mode direct plain xmin xmin/plain paired plain/direct "plain cpu(user)" "xmin cpu(user)" "server d/p/x"
    for mode in $MODES; do
        # shellcheck disable=SC2086
        d=$(median ${TPS[$mode:direct]:-}); p=$(median ${TPS[$mode:plain]:-}); x=$(median ${TPS[$mode:xmin]:-})
        # shellcheck disable=SC2086
        pc=$(median ${CPU[$mode:plain]:-}); xc=$(median ${CPU[$mode:xmin]:-})
        # shellcheck disable=SC2086
        pu=$(median ${USER[$mode:plain]:-}); xu=$(median ${USER[$mode:xmin]:-})
        pairs=()
        for round in $(seq 1 "$ROUNDS"); do
            pr=${ROUND_TPS[$round:$mode:plain]:-}; xr=${ROUND_TPS[$round:$mode:xmin]:-}
            [[ -n $pr && -n $xr ]] && pairs+=("$(ratio "$xr" "$pr")")
        done
        paired=$(median_ratio "${pairs[@]}")
        # shellcheck disable=SC2086
        server="$(median ${SERVER[$mode:direct]:-}) / $(median ${SERVER[$mode:plain]:-}) / $(median ${SERVER[$mode:xmin]:-})"
        printf '%-9s %10s %10s %10s %11s %7s %12s %16s %16s %16s\n' "$mode" "$d" "$p" "$x" "$(ratio "$x" "$p")" "$paired" "$(ratio "$p" "$d")" "$pc ($pu)" "$xc ($xu)" "$server"
    done
    print_runs "$MODES" 9 7
} | tee "$RESULT"
log "saved to $RESULT"
