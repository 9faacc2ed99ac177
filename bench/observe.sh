#!/usr/bin/env bash
# bench/observe.sh: observe mode under contention: is every stale write counted, and only those?
#
# Concurrent pgbench clients run a read-modify-write on a few hot rows through optlock with the
# table guarded in observe mode (writes go through as the client wrote them, plus the bump;
# what enforce mode would have raised is counted as "observed"). Table
#   bench_obs(id int primary key, balance bigint, version bigint, read_version bigint)
# and the script
#   \set id random(1, ROWS)
#   SELECT balance, version FROM bench_obs WHERE id = :id \gset
#   UPDATE bench_obs SET balance = :balance + 1, read_version = :version WHERE id = :id;
# The ground truth comes from the server, not the proxy: each write says which version it was
# computed from (read_version) and a BEFORE UPDATE trigger logs the writes that replace another
# version (stale writes). The proxy's count is its SHOW REPORT "observed" column (which adds up
# to optlock_guarded_writes_total{outcome="observed"}). Reported per -M mode:
#   processed   pgbench's transactions actually processed (each one increment)
#   lost        processed - sum(balance): increments overwritten (observe mode prevents nothing)
#   stale       writes the trigger saw replace a version other than the one read
#   observed    the proxy's count; must equal stale
# and, for reference, the same run through an enforcing guard (lost must be 0 there).
#
# Usage:  bench/observe.sh                  (CLIENTS=8 ROWS=10 DURATION=10 MODES="simple extended prepared")
# Needs: psql, pgbench, cargo (or OPTLOCK_BIN/NO_BUILD=1), the server at PG_HOST:PG_PORT.
# PGSSLMODE=disable on every leg.

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-8}
ROWS=${ROWS:-10}
DURATION=${DURATION:-10}
MODES=${MODES:-simple extended prepared}
export PGSSLMODE=disable

need psql pgbench
build_optlock
RESULT=$(results_file observe)
create_db optlock_bench_observe

pg_direct "$BENCH_DB" <<'SQL'
CREATE TABLE bench_obs (id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0,
                        version bigint NOT NULL DEFAULT 0, read_version bigint);
CREATE TABLE stale_log (id int, read_version bigint, replaced bigint);
CREATE FUNCTION log_stale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.read_version IS DISTINCT FROM OLD.version THEN
    INSERT INTO stale_log VALUES (OLD.id, NEW.read_version, OLD.version);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER log_stale BEFORE UPDATE ON bench_obs FOR EACH ROW EXECUTE FUNCTION log_stale();
SQL
pg_direct "$BENCH_DB" -c "INSERT INTO bench_obs (id) SELECT g FROM generate_series(1, $ROWS) g"

cat >"$WORK_DIR/rmw.sql" <<SQL
\set id random(1, $ROWS)
SELECT balance, version FROM bench_obs WHERE id = :id \gset
UPDATE bench_obs SET balance = :balance + 1, read_version = :version WHERE id = :id;
SQL

guard_config() {
    cat <<TOML
admin_users = ["postgres"]
[[guard]]
table = "public.bench_obs"
key = ["id"]
version = "version"
mode = "$1"
TOML
}
guard_config observe >"$WORK_DIR/observe.toml"
guard_config enforce >"$WORK_DIR/enforce.toml"
OBS_PORT=$(free_port)
start_optlock "$OBS_PORT" "$WORK_DIR/observe.toml"
ENF_PORT=$(free_port)
start_optlock "$ENF_PORT" "$WORK_DIR/enforce.toml"

# The proxy's observed count for the table, from its console.
observed_now() {
    psql -X -At -h 127.0.0.1 -p "$1" -U postgres -d optlock -c "SHOW REPORT" |
        awk -F'|' '$1 == "public.bench_obs" { n += $5 } END { print n + 0 }'
}

{
    echo "# bench/observe.sh $(date -Iseconds), commit $(git -C "$REPO_ROOT" rev-parse --short HEAD)"
    echo "# $CLIENTS clients, $ROWS hot rows, ${DURATION}s per run; $(upstream_note)"
    printf '%-8s %-9s %10s %8s %8s %9s %8s\n' mode guard processed lost stale observed tps
} | tee "$RESULT"

status=0
for mode in $MODES; do
    for guard in observe enforce; do
        port=$OBS_PORT
        [[ $guard == enforce ]] && port=$ENF_PORT
        pg_direct "$BENCH_DB" -c "UPDATE bench_obs SET balance = 0, read_version = NULL" -c "TRUNCATE stale_log"
        before=$(observed_now "$port")
        out="$WORK_DIR/pgbench-$mode-$guard.txt"
        pgbench -n -h 127.0.0.1 -p "$port" -c "$CLIENTS" -j "$CLIENTS" -T "$DURATION" -M "$mode" \
            --max-tries=100 -f "$WORK_DIR/rmw.sql" "$BENCH_DB" >"$out" 2>&1 || {
            log "pgbench failed ($mode, $guard):"; tail -n 5 "$out" >&2; status=1; continue;
        }
        processed=$(pgb_processed "$out")
        sum=$(pg_direct "$BENCH_DB" -At -c "SELECT coalesce(sum(balance), 0) FROM bench_obs")
        stale=$(pg_direct "$BENCH_DB" -At -c "SELECT count(*) FROM stale_log")
        observed=$(( $(observed_now "$port") - before ))
        lost=$(( processed - sum ))
        printf '%-8s %-9s %10s %8s %8s %9s %8s\n' "$mode" "$guard" "$processed" "$lost" \
            "$stale" "$observed" "$(pgb_tps "$out")" | tee -a "$RESULT"
        if [[ $guard == observe && $observed -ne $stale ]]; then
            log "MISMATCH: observed $observed, stale writes $stale ($mode)"; status=1
        fi
        if [[ $guard == enforce && $lost -ne 0 ]]; then
            log "LOST UPDATES through the enforcing guard: $lost ($mode)"; status=1
        fi
    done
done
log "results saved to $RESULT"
exit "$status"
