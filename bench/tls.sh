#!/usr/bin/env bash
# bench/tls.sh: what TLS on both legs costs through optlock, against TLS straight to the server.
#
# pgbench -M prepared (select-only and TPC-B-like by default) connected four ways:
#   direct-tls     pgbench -> PostgreSQL, sslmode=require
#   optlock-tls    pgbench -> optlock over TLS (a self-signed certificate made here),
#                  optlock -> PostgreSQL over TLS (upstream_tls = "require")
#   direct-plain   pgbench -> PostgreSQL, sslmode=disable
#   optlock-plain  both legs in plain text (upstream_tls = "disable")
# Runs are interleaved (round -> workload -> target, order rotated every round); the report
# gives the median TPS per target and the ratios optlock-tls/direct-tls (the figure that
# matters: the relay's cost when every leg is encrypted), optlock-plain/direct-plain (the same
# without TLS) and each side's TLS/plain. optlock runs with no guards: this is the relay.
# pgbench connects once per client, so handshakes do not count; record encryption does.
#
# Usage:  bench/tls.sh                          (from anywhere; builds optlock in release mode)
#         ROUNDS=5 DURATION=20 bench/tls.sh     (a longer, steadier run)
#
# Options (environment variables):
#   CLIENTS=8        pgbench -c
#   THREADS=2        pgbench -j
#   DURATION=8       pgbench -T seconds per run
#   ROUNDS=3         interleaved rounds (median over rounds)
#   WORKLOADS="select-only tpcb-like"   pgbench built-in scripts (-b)
#   MODE=prepared    pgbench -M
#   TARGETS="direct-tls optlock-tls direct-plain optlock-plain"
#   SCALE=10         pgbench -i scale factor
#   plus those of bench/lib.sh (PG_HOST, PG_PORT, OPTLOCK_BIN, NO_BUILD, KEEP_DB, ...)
# Default run: 3 rounds x 2 workloads x 4 targets x 8 s, about 4 minutes with set-up.
#
# Needs: cargo, psql, pgbench, openssl, and a server with ssl = on (Debian's packaged cluster
# has it, with the snakeoil certificate). Results are printed and saved to
# bench/results/tls-<date>.txt (gitignored).

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
WORKLOADS=${WORKLOADS:-select-only tpcb-like}
MODE=${MODE:-prepared}
TARGETS=${TARGETS:-direct-tls optlock-tls direct-plain optlock-plain}
SCALE=${SCALE:-10}
DB=optlock_bench_tls

need psql pgbench openssl
[[ -z "$UPSTREAM_SOCKET" ]] || die "UPSTREAM_SOCKET: a Unix-domain socket carries no TLS"
[[ $(PGSSLMODE=require pg_direct postgres -Atc "SHOW ssl" 2>/dev/null) == on ]] ||
    die "the server at $PG_HOST:$PG_PORT does not offer TLS (ssl = off)"
build_optlock
RESULT=$(results_file tls)

# The certificate optlock shows pgbench.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$WORK_DIR/optlock.key" -out "$WORK_DIR/optlock.crt" 2>/dev/null ||
    die "openssl could not make a certificate"
CONFIG=$WORK_DIR/optlock-tls.toml
printf 'tls_cert = "%s"\ntls_key = "%s"\n' "$WORK_DIR/optlock.crt" "$WORK_DIR/optlock.key" >"$CONFIG"

declare -A PORT SSLMODE
for t in $TARGETS; do
    case $t in
        direct-tls) PORT[$t]=$PG_PORT SSLMODE[$t]=require ;;
        direct-plain) PORT[$t]=$PG_PORT SSLMODE[$t]=disable ;;
        optlock-tls) PORT[$t]=$(free_port) SSLMODE[$t]=require
            start_optlock "${PORT[$t]}" "$CONFIG" "" require ;;
        optlock-plain) PORT[$t]=$(free_port) SSLMODE[$t]=disable
            start_optlock "${PORT[$t]}" "" "" disable ;;
        *) die "unknown target $t" ;;
    esac
done

log "creating database $DB (pgbench -i -s $SCALE, direct)"
create_db "$DB"
pgbench -i -q -s "$SCALE" -h "$PG_HOST" -p "$PG_PORT" "$DB" >"$WORK_DIR/init.log" 2>&1 ||
    { cat "$WORK_DIR/init.log" >&2; die "pgbench -i failed"; }

# Checks that a target's legs are what its name says: pg_stat_ssl of its own backend.
for t in $TARGETS; do
    host=127.0.0.1; [[ $t == direct-* ]] && host=$PG_HOST
    got=$(PGSSLMODE=${SSLMODE[$t]} psql -X -Atq -h "$host" -p "${PORT[$t]}" -d "$DB" \
        -c "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    want=t; [[ $t == *-plain ]] && want=f
    [[ $got == "$want" ]] || die "$t: the server's leg is not what the target says (ssl=$got)"
done

read -r -a TARGET_LIST <<<"$TARGETS"
declare -A TPS=() ERRORS=()
total=$(( ROUNDS * $(wc -w <<<"$WORKLOADS") * ${#TARGET_LIST[@]} ))
n=0
for round in $(seq 1 "$ROUNDS"); do
    for w in $WORKLOADS; do
        k=${#TARGET_LIST[@]}
        for i in $(seq 0 $((k - 1))); do
            t=${TARGET_LIST[$(( (i + round - 1) % k ))]}
            n=$((n + 1))
            out="$WORK_DIR/run-$round-$w-$t.txt"
            host=127.0.0.1; [[ $t == direct-* ]] && host=$PG_HOST
            [[ $t == optlock-* ]] && { check_optlock "${PORT[$t]}" || true; }
            rc=0
            PGSSLMODE=${SSLMODE[$t]} pgbench -n -b "$w" -M "$MODE" -c "$CLIENTS" -j "$THREADS" \
                -T "$DURATION" -h "$host" -p "${PORT[$t]}" "$DB" >"$out" 2>&1 || rc=$?
            tps=$(pgb_tps "$out")
            if [[ $rc -ne 0 || -z "$tps" ]]; then
                ERRORS[$w:$t]="${ERRORS[$w:$t]:-}[round $round rc=$rc: $(grep -m1 -iE 'error|fatal|abort' "$out" | cut -c1-150)] "
                tps=""
            fi
            [[ -n "$tps" ]] && TPS[$w:$t]="${TPS[$w:$t]:-} $(printf "%.1f" "$tps")"
            log "[$n/$total] round $round  $w  $t: ${tps:-FAILED} tps"
        done
    done
done

{
    echo "# optlock TLS benchmark: pgbench -M $MODE -c $CLIENTS -j $THREADS -T $DURATION, $ROUNDS interleaved rounds"
    echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host $(hostname)  $(nproc) cores  $(pgbench --version)"
    echo "# optlock $("$OPTLOCK_BIN" --version 2>/dev/null | awk '{print $2}') ($(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), no guards, workers ${OPTLOCK_WORKERS:-default}; scale $SCALE; server $PG_HOST:$PG_PORT"
    echo "# -tls: sslmode=require to the first hop, upstream_tls = \"require\" beyond; -plain: no TLS anywhere"
    echo "# TPS = median over rounds"
    echo
    printf '%-13s' workload
    for t in "${TARGET_LIST[@]}"; do printf ' %13s' "$t"; done
    printf ' %21s %21s %17s %17s\n' "optlock/direct(tls)" "optlock/direct(plain)" \
        "direct tls/plain" "optlock tls/plain"
    for w in $WORKLOADS; do
        declare -A MED=()
        for t in direct-tls optlock-tls direct-plain optlock-plain; do
            # shellcheck disable=SC2086
            MED[$t]=$(median ${TPS[$w:$t]:-})
        done
        printf '%-13s' "$w"
        for t in "${TARGET_LIST[@]}"; do printf ' %13s' "${MED[$t]}"; done
        printf ' %21s %21s %17s %17s\n' \
            "$(ratio "${MED[optlock-tls]}" "${MED[direct-tls]}")" \
            "$(ratio "${MED[optlock-plain]}" "${MED[direct-plain]}")" \
            "$(ratio "${MED[direct-tls]}" "${MED[direct-plain]}")" \
            "$(ratio "${MED[optlock-tls]}" "${MED[optlock-plain]}")"
    done
    print_runs "$WORKLOADS" 13 14
} | tee "$RESULT"
log "saved to $RESULT"
