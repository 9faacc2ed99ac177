#!/usr/bin/env bash
# bench/lost_updates.sh: the read-modify-write benchmark (lost updates, retries, TPS).
#
# Measures how many updates are silently lost when concurrent clients do a naive
# read-modify-write on a few hot rows, and what preventing that costs. Table
#   bench_rmw(id int primary key, balance bigint not null default 0, version bigint not null default 0,
#             modified timestamptz not null default clock_timestamp())
# with ROWS hot rows (ids 1..ROWS) among COLD_ROWS that nobody touches, as hot rows sit in a
# real table: the reads and writes go through the primary key's index, so SERIALIZABLE takes
# its predicate locks per row. (In a table of only a few rows the planner picks a sequential
# scan whenever the table fits in one page, SERIALIZABLE then locks the whole relation and
# fails most transactions; which plan a run got depended on the bloat the run before it left,
# and SERIALIZABLE's TPS swung by a factor of three between runs.)
# Each pgbench "transaction" is one run of a custom script:
#   \set id random(1, ROWS)
#   SELECT balance, version FROM bench_rmw WHERE id = :id \gset
#   UPDATE bench_rmw SET balance = :balance + 1 WHERE id = :id;
# i.e. the application's naive write: no version in it; optlock is expected to add the check.
# Scripts: "autocommit" (as above: the read and the write are separate transactions) and
# "transaction" (wrapped in BEGIN; ... COMMIT;, or BEGIN ISOLATION LEVEL SERIALIZABLE for
# the serializable target); "naive-autocommit" and "naive-transaction" are the same with a
# read that lists no version column at all, as an unchanged application reads:
#   SELECT balance FROM bench_rmw WHERE id = :id \gset
# (optlock's read capture adds the key and version to the read and removes them from its rows).
# Targets:
#   direct   READ COMMITTED   plain PostgreSQL
#   direct   SERIALIZABLE     PGOPTIONS='-c default_transaction_isolation=serializable'
#                             (so each autocommit statement is serializable too)
#   optlock  READ COMMITTED   through optlock with public.bench_rmw guarded
#                             (key id; KINDS picks the guard: "counter" is version "version",
#                             "timestamp" version "modified", "xmin" the system column; one
#                             proxy and one target per kind, named optlock-<kind> when
#                             KINDS holds more than one)
# and, when asked for in TARGETS, SERIALIZABLE through a proxy without guards, which shows what
# a proxy's added latency alone does to this hot-row workload (a longer window between the
# read and the write, and a row lock held over two more hops before COMMIT):
#   pgbouncer-serializable    through PgBouncer (session mode; transaction script only)
#   plain-serializable        through optlock without guards
# each for -M simple, extended and prepared. Balances are reset to 0 before every run, so
#   lost = processed - sum(balance)
# where processed = pgbench's "number of transactions actually processed" (successful script
# runs; failed ones are counted separately and changed nothing). A negative "lost" would mean
# more increments than successful runs (a bug in the measurement or the proxy).
# The script reports what happens, whatever it is: a lost update through optlock would show.
# CPU per try (a try is one run of the script, retries included): "cpu/try" is the busy time of
# the whole machine (pgbench, PostgreSQL and the proxy), "proxy/try" the proxy's own, both in
# microseconds, read from /proc around each run. They tell whether a proxy's cost is its own
# CPU or the work it makes the server do (a longer statement to parse and plan, RETURNING
# columns), which TPS alone cannot on a machine where all three share the cores.
#
# How pgbench (>= 15) retries, read from pgbench.c (CSTATE_ERROR / doRetry) and checked here:
# pgbench treats one run of the script as one transaction. On SQLSTATE 40001 (serialization
# failure; optlock's conflict error uses it too) or 40P01 (deadlock), it sends ROLLBACK if
# the connection is inside a transaction block, restores the script's variables and random
# state, and runs the whole script again from its first command, up to --max-tries times;
# the run then counts as "retried" (or as "failed" after the last try). This is the same for
# scripts without BEGIN: after a failing autocommit UPDATE the connection is idle, so there is
# nothing to roll back, and the retry re-runs the SELECT too, i.e. it re-reads the row, which
# is exactly what an application must do after a conflict. Any other error aborts the client
# (reported in the "note" column). An earlier autocommit statement that already committed is
# not undone; here that is only the SELECT, so no effect is lost or doubled.
# Autocommit under SERIALIZABLE still loses updates: the read and the write are separate
# transactions; only a write that races a concurrent commit of the same row gets 40001.
#
# Usage:  bench/lost_updates.sh
#         DURATION=30 MODES=prepared bench/lost_updates.sh
# Options (environment variables):
#   CLIENTS=8  THREADS=2  DURATION=10 (pgbench -T)  MAX_TRIES=100 (pgbench --max-tries)
#   ROWS=10                       hot rows (fewer rows = more contention)
#   COLD_ROWS=10000               rows after them that no script touches
#   MODES="simple extended prepared"
#   SCRIPTS="autocommit transaction naive-autocommit naive-transaction"
#   TARGETS="direct-rc direct-serializable optlock"   add plain-serializable, pgbouncer-serializable
#   KINDS="counter"               the optlock target's guard kinds: counter timestamp xmin
#   OPTLOCK_WORKERS=N, KEEP_DB=1, PG_HOST/PG_PORT/PG_USER, CARGO_TARGET_DIR, OPTLOCK_BIN,
#   NO_BUILD=1                    see bench/lib.sh
# Default run: 3 targets x 4 scripts x 3 modes x 10 s, about 7 minutes.
# Results are printed and saved to bench/results/lost_updates-<date>.txt (gitignored).

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10}
MAX_TRIES=${MAX_TRIES:-100}
ROWS=${ROWS:-10}
COLD_ROWS=${COLD_ROWS:-10000}
MODES=${MODES:-simple extended prepared}
SCRIPTS=${SCRIPTS:-autocommit transaction naive-autocommit naive-transaction}
TARGETS=${TARGETS:-direct-rc direct-serializable optlock}
KINDS=${KINDS:-counter}
DB=optlock_bench_rmw

need psql pgbench
build_optlock
RESULT=$(results_file lost_updates)

log "creating database $DB"
create_db "$DB"
pg_direct "$DB" <<SQL
CREATE TABLE bench_rmw (
    id      int PRIMARY KEY,
    balance bigint NOT NULL DEFAULT 0,
    version bigint NOT NULL DEFAULT 0,
    modified timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO bench_rmw (id) SELECT g FROM generate_series(1, $ROWS + $COLD_ROWS) g;
ANALYZE bench_rmw;
SQL

# pgbench scripts.
body="\\set id random(1, $ROWS)
SELECT balance, version FROM bench_rmw WHERE id = :id \\gset
UPDATE bench_rmw SET balance = :balance + 1 WHERE id = :id;"
naive="\\set id random(1, $ROWS)
SELECT balance FROM bench_rmw WHERE id = :id \\gset
UPDATE bench_rmw SET balance = :balance + 1 WHERE id = :id;"
for prefix in "" naive-; do
    [[ -n $prefix ]] && b=$naive || b=$body
    printf '%s\n' "$b" >"$WORK_DIR/${prefix}autocommit.sql"
    printf 'BEGIN;\n%s\nCOMMIT;\n' "$b" >"$WORK_DIR/${prefix}transaction.sql"
    printf 'BEGIN ISOLATION LEVEL SERIALIZABLE;\n%s\nCOMMIT;\n' "$b" >"$WORK_DIR/${prefix}transaction-serializable.sql"
done

# One optlock per guard kind: the target optlock (one kind), or optlock-<kind> for each.
declare -A KIND_PORT
if [[ " $TARGETS " == *" optlock "* ]]; then
    expanded=""
    for target in $TARGETS; do
        if [[ $target != optlock ]]; then
            expanded+=" $target"
            continue
        fi
        for kind in $KINDS; do
            [[ $KINDS == *" "* ]] && expanded+=" optlock-$kind" || expanded+=" optlock"
            port=$(free_port)
            KIND_PORT[$kind]=$port
            case $kind in
                counter) guard=$'version = "version"\nkind = "counter"' ;;
                timestamp) guard=$'version = "modified"\nkind = "timestamp"' ;;
                xmin) guard='version = "xmin"' ;;
                *) die "unknown guard kind $kind" ;;
            esac
            printf '%s\n' "listen = \"127.0.0.1:$port\"" "upstream = \"$PG_HOST:$PG_PORT\"" \
                'conflict_sqlstate = "40001"' '' '[[guard]]' 'table = "public.bench_rmw"' \
                'key = ["id"]' "$guard" >"$WORK_DIR/optlock-$kind.toml"
            start_optlock "$port" "$WORK_DIR/optlock-$kind.toml"
        done
    done
    TARGETS=$expanded
fi
PLAIN_PORT=""
if [[ " $TARGETS " == *" plain-serializable "* ]]; then
    PLAIN_PORT=$(free_port)
    start_optlock "$PLAIN_PORT"    # a second proxy, without config
fi
PGBOUNCER_PORT=""
if [[ " $TARGETS " == *" pgbouncer-serializable "* ]]; then
    PGBOUNCER_PORT=$(free_port)
    start_pgbouncer "$PGBOUNCER_PORT"
fi

FMT='%-17s %-12s %-17s %-9s %10s %8s %7s %8s %7s %9s %8s %10s  %s\n'
{
    echo "# optlock lost-update benchmark: pgbench -c $CLIENTS -j $THREADS -T $DURATION --max-tries=$MAX_TRIES, $ROWS hot rows of $((ROWS + COLD_ROWS))"
    echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host $(hostname)  $(nproc) cores  $(pgbench --version)"
    echo "# optlock $("$OPTLOCK_BIN" --version 2>/dev/null | awk '{print $2}') ($(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), workers ${OPTLOCK_WORKERS:-default}; $(upstream_note)"
    echo "# lost = processed - sum(balance); retried = transactions that needed more than one try"
    echo
    # shellcheck disable=SC2059
    printf "$FMT" target isolation script mode processed retried failed lost "lost %" TPS cpu/try proxy/try note
} | tee "$RESULT"

for mode in $MODES; do
    for script in $SCRIPTS; do
        for target in $TARGETS; do
            # PgBouncer drops the startup `options` that make each autocommit statement
            # serializable (ignore_startup_parameters): only the transaction script applies.
            [[ $target == pgbouncer-serializable && $script == *autocommit ]] && continue
            case $target in
                direct-rc) port=$PG_PORT host=$PG_HOST iso="read-commit" pgopts="" file=$script.sql name=direct ;;
                direct-serializable)
                    port=$PG_PORT host=$PG_HOST iso="serializable" name=direct
                    pgopts="-c default_transaction_isolation=serializable"
                    file=$script.sql; [[ $script == *transaction ]] && file=$script-serializable.sql ;;
                optlock | optlock-*)
                    kind=${target#optlock-}; [[ $target == optlock ]] && kind=${KINDS%% *}
                    port=${KIND_PORT[$kind]} host=127.0.0.1 iso="read-commit" pgopts="" file=$script.sql name=$target ;;
                plain-serializable | pgbouncer-serializable)
                    host=127.0.0.1 iso="serializable" name=${target%-serializable}
                    [[ $name == plain ]] && port=$PLAIN_PORT || port=$PGBOUNCER_PORT
                    pgopts="-c default_transaction_isolation=serializable"
                    file=$script.sql; [[ $script == *transaction ]] && file=$script-serializable.sql ;;
                *) die "unknown target $target" ;;
            esac
            pg_direct "$DB" -c "UPDATE bench_rmw SET balance = 0 WHERE balance <> 0" -c "VACUUM ANALYZE bench_rmw"
            out="$WORK_DIR/run-$mode-$script-$target.txt"
            [[ $name == optlock* || $name == plain ]] && { check_optlock "$port" || true; }
            case $name in
                optlock* | plain) proxy_pid=${OPTLOCK_AT[$port]:-} ;;
                pgbouncer) proxy_pid=$(cat "$PGBOUNCER_PIDFILE" 2>/dev/null) ;;
                *) proxy_pid="" ;;
            esac
            busy0=$(cpu_busy_ticks) proxy0=$(proc_cpu_ticks "$proxy_pid")
            rc=0
            PGOPTIONS=$pgopts pgbench -n -f "$WORK_DIR/$file" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" \
                -M "$mode" --max-tries="$MAX_TRIES" -h "$host" -p "$port" "$DB" >"$out" 2>&1 || rc=$?
            busy1=$(cpu_busy_ticks) proxy1=$(proc_cpu_ticks "$proxy_pid")
            processed=$(pgb_processed "$out")
            retried=$(pgb_retried "$out")
            failed=$(pgb_failed "$out")
            tps=$(pgb_tps "$out")
            sum=$(pg_direct "$DB" -Atc "SELECT coalesce(sum(balance), 0) FROM bench_rmw")
            note=""
            if [[ $rc -ne 0 ]]; then
                note="pgbench rc=$rc: $(grep -m1 -iE 'aborted|error|fatal' "$out" | cut -c1-120)"
            fi
            if [[ $name == optlock* || $name == plain ]] && ! check_optlock "$port"; then
                note="$note [$OPTLOCK_DIED]"
            fi
            cpu="-" proxy_cpu="-"
            if [[ -n "$processed" ]]; then
                tries=$((processed + $(pgb_retries "$out") + failed))
                cpu=$(per_try $((busy1 - busy0)) "$tries")
                [[ -n "$proxy_pid" ]] && proxy_cpu=$(per_try $((proxy1 - proxy0)) "$tries")
                lost=$((processed - sum))
                pct=$(awk -v l="$lost" -v p="$processed" 'BEGIN { if (p > 0) printf "%.1f", 100 * l / p; else print "-" }')
            else
                processed="-" lost="-" pct="-"
            fi
            [[ -n "$tps" ]] && tps=$(printf '%.1f' "$tps") || tps="-"
            # shellcheck disable=SC2059
            printf "$FMT" "$name" "$iso" "$script" "$mode" "$processed" "$retried" "$failed" "$lost" "$pct" "$tps" "$cpu" "$proxy_cpu" "$note" | tee -a "$RESULT"
        done
    done
done
log "saved to $RESULT"
