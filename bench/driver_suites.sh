#!/usr/bin/env bash
# bench/driver_suites.sh: the client drivers' own test suites, run directly against PostgreSQL
# and through optlock, compared test by test.
#
# Goal: no test that passes directly fails through the proxy. Every suite runs twice, once per
# target: "direct" (the real server, PG_HOST:PG_PORT) and "optlock" (the proxy, started here with
# the shipped config/optlock.toml: its guard on public.optlock_demo, which config/quickstart.sql
# creates in every suite database and which no suite touches). Each suite and target gets a
# database of its own (ds_<suite>_<target>, dropped afterwards unless KEEP_DB=1). No TLS on either
# leg (PGSSLMODE=disable): like with like. Tests that ask for TLS themselves (node-postgres'
# ssl-tests) get it on both targets: the server has ssl = on, and the proxy is given a
# self-signed certificate made here (tls_cert, tls_key; the config's client_tls "allow").
# PGCONNECT_TIMEOUT, which lib.sh sets for its own psql calls, is unset for the suites
# (psycopg's tests time their own connection attempts and read back the parameters given).
#
# The drivers' code is not part of this project. Bring checkouts of their repositories and pass
# their paths (any recent commit; the script was written against the default branches of 2026):
#
#   git clone https://github.com/brianc/node-postgres   /tmp/node-postgres
#   git clone https://github.com/psycopg/psycopg        /tmp/psycopg
#   git clone https://github.com/psycopg/psycopg2       /tmp/psycopg2
#   git clone https://github.com/sfackler/rust-postgres /tmp/rust-postgres
#   git clone https://github.com/pgjdbc/pgjdbc          /tmp/pgjdbc   (with its tags)
#
# Usage:
#   bench/driver_suites.sh --node-postgres /tmp/node-postgres --psycopg /tmp/psycopg \
#       --psycopg2 /tmp/psycopg2 --rust-postgres /tmp/rust-postgres --pgjdbc /tmp/pgjdbc
#   SUITES="pg-js pg-cursor" bench/driver_suites.sh --node-postgres /tmp/node-postgres
#
# Suites (SUITES, default: all those whose checkout was given):
#   pg-js           node-postgres: packages/pg/test/integration/**/*-tests.js, pure JavaScript
#   pg-native       the same files with the "native" argument (libpq through pg-native), plus
#                   packages/pg/test/native/*-tests.js
#   pg-binary       the same files in binary mode: every query asks for binary results
#                   (pg.defaults.binary = true, set by a preloaded module: the test helper no
#                   longer reads the "binary" argument the Makefile passes)
#   pg-pool pg-cursor pg-query-stream pg-native-lib
#                   the mocha suites of packages/pg-pool, pg-cursor, pg-query-stream, pg-native
#   psycopg         psycopg 3 (pure Python implementation, PSYCOPG_IMPL=python), tests/ with pytest
#   psycopg2        psycopg2 (built from the checkout), its tests/ run by pytest
#   tokio-postgres  rust-postgres' tokio-postgres integration tests (cargo test --test test)
#   pgjdbc          pgjdbc's JUnit tests (pgjdbc/src/test/java) of the release Debian packages
#                   (libpostgresql-jdbc-java, e.g. REL42.5.5), compiled with javac against that
#                   driver jar and Debian's junit4, junit5, hamcrest and checker-qual, and run by
#                   JUnit's console launcher. pgjdbc's own build needs Gradle and Maven Central,
#                   which this machine cannot reach. Left out: the tests that need libraries
#                   Debian does not package (system-stubs, classloader-leak-test-framework, OSGi,
#                   waffle, JNA: OSUtilTest, DriverTest, PgPassParserTest, PgServiceConfParserTest,
#                   SharedTimerClassLoaderLeakTest, the osgi and sspi packages) and the *TestSuite
#                   classes (they only list the others).
# node-postgres' unit tests, pg-protocol's and pg-connection-string's tests never connect to a
# server and are not run; nor are its Cloudflare Worker tests (need workerd) and SCRAM tests (need
# a password-checking pg_hba.conf line; the server here trusts 127.0.0.1).
#
# What the script installs, once, under DEPS_DIR (default /tmp/optlock-driver-deps):
#   npm packages the node-postgres tests need (from the npm registry), linked into
#   <node-postgres>/node_modules next to the checkout's own packages; pg-protocol and
#   pg-query-stream compiled with tsc (their dist/); Python virtualenvs (PyPI) with the psycopg
#   checkouts installed; a copy of rust-postgres whose tests point at the target's port and
#   database (they are written for a server on port 5433) and its cargo target directory;
#   pgjdbc's test sources of the installed driver's release and their classes (javac).
# The tokio-postgres tests also expect the roles pass_user, md5_user and scram_user and the
# extensions hstore, citext and ltree (rust-postgres' docker/sql_setup.sh); the roles are
# created if missing (and dropped afterwards), the extensions in each suite database. Their
# password-checking tests fail on both legs here (trust authentication).
#
# Environment (besides lib.sh's PG_HOST, PG_PORT, PG_USER, OPTLOCK_BIN, NO_BUILD, KEEP_DB):
#   TARGETS="direct optlock"  SUITES="..."  DEPS_DIR=/tmp/optlock-driver-deps
#   FILE_TIMEOUT=120     seconds per node-postgres test file
#   SUITE_TIMEOUT=1500   seconds per mocha / pytest / cargo run (one suite on one target)
#   RERUN=1              re-run each difference (passes directly, not through optlock) on both
#                        targets once more, to tell repeatable ones from flaky ones (node-postgres
#                        files and psycopg tests; mocha and cargo differences are not re-run)
# Run it alone: two runs side by side disturb each other (some suites terminate other backends,
# and the tests' short timeouts fail on a loaded machine).
#   PYTEST_ARGS          extra arguments for both pytest suites (e.g. "-x" or "-k connection")
#
# Results: bench/results/driver_suites-<date>.txt (the tables and the differences) and, in the
# directory of the same name, every run's log and a <suite>.<target>.tsv per run
# (status TAB test TAB detail; status pass, fail or skip).

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
unset PGCONNECT_TIMEOUT

NODE_PG_SRC="" PSYCOPG_SRC="" PSYCOPG2_SRC="" RUST_PG_SRC="" PGJDBC_SRC=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --node-postgres) NODE_PG_SRC=$(cd "$2" && pwd); shift 2 ;;
        --psycopg) PSYCOPG_SRC=$(cd "$2" && pwd); shift 2 ;;
        --psycopg2) PSYCOPG2_SRC=$(cd "$2" && pwd); shift 2 ;;
        --rust-postgres) RUST_PG_SRC=$(cd "$2" && pwd); shift 2 ;;
        --pgjdbc) PGJDBC_SRC=$(cd "$2" && pwd); shift 2 ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

TARGETS=${TARGETS:-direct optlock}
DEPS_DIR=${DEPS_DIR:-/tmp/optlock-driver-deps}
FILE_TIMEOUT=${FILE_TIMEOUT:-120}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-1500}
RERUN=${RERUN:-1}
PYTEST_ARGS=${PYTEST_ARGS:-}
if [[ -z "${SUITES:-}" ]]; then
    SUITES=""
    [[ -n "$NODE_PG_SRC" ]] && SUITES+=" pg-js pg-native pg-binary pg-pool pg-cursor pg-query-stream pg-native-lib"
    [[ -n "$PSYCOPG_SRC" ]] && SUITES+=" psycopg"
    [[ -n "$RUST_PG_SRC" ]] && SUITES+=" tokio-postgres"
    [[ -n "$PSYCOPG2_SRC" ]] && SUITES+=" psycopg2"
    [[ -n "$PGJDBC_SRC" ]] && SUITES+=" pgjdbc"
fi
[[ -n "${SUITES// /}" ]] || die "no suite to run: pass at least one checkout (see --help)"
mkdir -p "$DEPS_DIR"

RESULT=$(results_file driver_suites)
OUT=${RESULT%.txt}
mkdir -p "$OUT"
SUITE_DBS=()
CREATED_ROLES=()

ds_cleanup() {
    local db r
    if [[ "${KEEP_DB:-0}" != 1 ]]; then
        for db in "${SUITE_DBS[@]}"; do
            pg_direct postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" 2>/dev/null || true
        done
    fi
    for r in "${CREATED_ROLES[@]}"; do
        pg_direct postgres -c "DROP ROLE IF EXISTS $r" 2>/dev/null || true
    done
}
trap 'rc=$?; ds_cleanup; (exit $rc); cleanup' EXIT

# ---------------------------------------------------------------------------------------------
# Targets

declare -A TPORT=()
optlock_port=""
target_port() { echo "${TPORT[$1]}"; }

start_targets() {
    local t
    for t in $TARGETS; do
        case $t in
            direct) TPORT[direct]=$PG_PORT ;;
            optlock)
                build_optlock
                optlock_port=$(free_port)
                start_optlock "$optlock_port" "$(tls_config)"
                TPORT[optlock]=$optlock_port ;;
            *) die "unknown target $t (direct, optlock)" ;;
        esac
    done
}

# config/optlock.toml with a self-signed certificate for the client leg (the server's ssl = on
# offers TLS directly; the proxy then offers it too). Prints the config file's path.
tls_config() {
    need openssl
    local config=$WORK_DIR/optlock-drivers.toml
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$WORK_DIR/optlock.key" -out "$WORK_DIR/optlock.crt" >/dev/null 2>&1 ||
        die "openssl could not make a certificate"
    # Top-level keys first: anything after the config's [[guard]] belongs to that table.
    printf 'tls_cert = "%s"\ntls_key = "%s"\n' "$WORK_DIR/optlock.crt" "$WORK_DIR/optlock.key" >"$config"
    cat "$REPO_ROOT/config/optlock.toml" >>"$config"
    echo "$config"
}

# A fresh database for SUITE on TARGET, with the guarded quick-start table. Prints its name.
suite_db() {
    local db="ds_${1//-/_}_$2"
    pg_direct postgres -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\"" >&2
    pg_direct "$db" -f "$REPO_ROOT/config/quickstart.sql" >/dev/null
    SUITE_DBS+=("$db")
    echo "$db"
}

# Before a run on the proxy: is it still up? (restarted if not, noted in the log)
proxy_alive() {
    [[ $1 == optlock ]] || return 0
    check_optlock "$optlock_port" || echo "NOTE: $OPTLOCK_DIED" >>"$OUT/proxy-restarts.txt"
}

# Environment for libpq-style clients.
pg_env() { # TARGET DB
    echo "PGHOST=$PG_HOST PGPORT=$(target_port "$1") PGUSER=$PG_USER PGDATABASE=$2 PGSSLMODE=disable"
}

one_line() { tr '\n\t' '  ' | sed 's/  */ /g' | cut -c1-"${1:-400}"; }

# ---------------------------------------------------------------------------------------------
# node-postgres

NODE_DEPS='{ "name": "optlock-driver-suite-deps", "private": true, "version": "0.0.0",
  "dependencies": {
    "pg-types": "2.2.0", "pgpass": "1.0.5", "async": "2.6.4", "bluebird": "3.7.2", "co": "4.6.0",
    "pg-copy-streams": "0.3.0", "expect.js": "0.3.1", "lodash": "^4.17.21", "mocha": "^11.7.5",
    "chai": "^4.2.0", "ts-node": "^8.5.4", "typescript": "^5.4.0", "@types/node": "^16",
    "@types/mocha": "^10.0.10", "@types/chai": "^4.2.13", "@types/pg": "^8.0.0",
    "JSONStream": "~1.3.5", "concat-stream": "~1.0.1", "stream-spec": "~0.3.5",
    "libpq": "^1.8.15", "generic-pool": "^2.1.1", "okay": "^0.3.0", "semver": "^7.7.2" } }'

setup_node() {
    [[ -n "$NODE_PG_SRC" ]] || die "the node-postgres suites need --node-postgres DIR"
    [[ -d "$NODE_PG_SRC/packages/pg" ]] || die "$NODE_PG_SRC is not a node-postgres checkout"
    need node npm
    local npmdir=$DEPS_DIR/npm d b p
    mkdir -p "$npmdir"
    if [[ ! -f "$npmdir/.done" ]] || ! cmp -s <(echo "$NODE_DEPS") "$npmdir/.done"; then
        log "installing node-postgres' test dependencies (npm) into $npmdir"
        echo "$NODE_DEPS" >"$npmdir/package.json"
        (cd "$npmdir" && npm install --no-audit --no-fund --loglevel=error >"$OUT/npm-install.log" 2>&1) ||
            die "npm install failed (see $OUT/npm-install.log)"
        echo "$NODE_DEPS" >"$npmdir/.done"
    fi
    # libpq (pg-native's binding) is compiled by its install script; newer npm may skip it.
    if ! (cd "$npmdir" && node -e "require('libpq')" 2>/dev/null); then
        log "building libpq (node-gyp)"
        (cd "$npmdir" && npm rebuild libpq --foreground-scripts >>"$OUT/npm-install.log" 2>&1) || true
    fi
    # <checkout>/node_modules: the registry packages, then the checkout's own packages.
    mkdir -p "$NODE_PG_SRC/node_modules"
    for d in "$npmdir"/node_modules/* "$npmdir"/node_modules/.bin; do
        b=$(basename "$d")
        if [[ $b == @* ]]; then
            mkdir -p "$NODE_PG_SRC/node_modules/$b"
            for p in "$d"/*; do ln -sfn "$p" "$NODE_PG_SRC/node_modules/$b/$(basename "$p")"; done
        else
            ln -sfn "$d" "$NODE_PG_SRC/node_modules/$b"
        fi
    done
    for p in pg pg-pool pg-protocol pg-cursor pg-query-stream pg-native pg-connection-string; do
        rm -rf "${NODE_PG_SRC:?}/node_modules/$p"
        ln -sfn "../packages/$p" "$NODE_PG_SRC/node_modules/$p"
    done
    for p in pg-protocol pg-query-stream; do
        if [[ ! -f "$NODE_PG_SRC/packages/$p/dist/index.js" ]] ||
            [[ -n "$(find "$NODE_PG_SRC/packages/$p/src" -newer "$NODE_PG_SRC/packages/$p/dist/index.js" -print -quit)" ]]; then
            log "compiling $p (tsc)"
            (cd "$NODE_PG_SRC/packages/$p" && "$NODE_PG_SRC/node_modules/.bin/tsc" -p . >"$OUT/tsc-$p.log" 2>&1) ||
                die "tsc failed for $p (see $OUT/tsc-$p.log)"
        fi
    done
    cat >"$DEPS_DIR/pg-binary-preload.js" <<EOF
// Every query of this process asks for results in binary format.
require('$NODE_PG_SRC/packages/pg/lib/defaults').binary = true
EOF
    (cd "$NODE_PG_SRC" && git rev-parse --short HEAD 2>/dev/null) >"$OUT/node-postgres.commit" || true
}

# node-postgres' own runner: one process per file, which stops at the file's first failure.
# Usage: run_pg_files SUITE TARGET
run_pg_files() {
    local suite=$1 target=$2 db pgdir=$NODE_PG_SRC/packages/pg tsv=$OUT/$1.$2.tsv
    local -a files args=() pre=()
    db=$(suite_db "$suite" "$target")
    mapfile -t files < <(cd "$pgdir" && find test/integration -name '*-tests.js' | sort)
    case $suite in
        pg-native) args=(native); mapfile -t -O "${#files[@]}" files < <(cd "$pgdir" && find test/native -name '*-tests.js' | sort) ;;
        pg-binary) pre=(-r "$DEPS_DIR/pg-binary-preload.js") ;;
    esac
    : >"$tsv"
    mkdir -p "$OUT/$suite.$target"
    local f log rc ok skipped detail
    for f in "${files[@]}"; do
        proxy_alive "$target"
        log=$OUT/$suite.$target/$(echo "$f" | tr / _).log
        rc=0
        (cd "$pgdir" && env $(pg_env "$target" "$db") PGTESTNOSSL=true \
            timeout -k 5 "$FILE_TIMEOUT" node "${pre[@]}" "$f" "${args[@]}") >"$log" 2>&1 || rc=$?
        ok=$(grep -c '✔' "$log" || true)
        skipped=$(grep -c 'SKIPPED' "$log" || true)
        if [[ $rc -eq 0 ]]; then
            printf 'pass\t%s\t%s tests passed, %s skipped\n' "$f" "$ok" "$skipped" >>"$tsv"
        else
            if [[ $rc -eq 124 ]]; then
                detail="timed out after ${FILE_TIMEOUT}s; "
            else
                detail="exit $rc; "
            fi
            detail+="$ok passed before: $(grep -m1 -A4 -E 'FAILED!|did not complete|Error|assert' "$log" | one_line 350)"
            printf 'fail\t%s\t%s\n' "$f" "$detail" >>"$tsv"
        fi
    done
}

# mocha JSON report -> TSV. Usage: mocha_tsv JSON TSV RUNLOG
mocha_tsv() {
    node - "$1" "$2" "$3" <<'EOF'
const fs = require('fs')
const [json, tsv, runlog] = process.argv.slice(2)
let out = ''
const clean = (s) => String(s || '').replace(/\s+/g, ' ').slice(0, 400)
try {
  const r = JSON.parse(fs.readFileSync(json, 'utf8'))
  const id = (t) => `${(t.file || '').replace(/.*\/test\//, 'test/')} :: ${t.fullTitle}`
  for (const t of r.passes) out += `pass\t${id(t)}\t\n`
  for (const t of r.pending) out += `skip\t${id(t)}\t\n`
  for (const t of r.failures) out += `fail\t${id(t)}\t${clean(t.err && (t.err.message || t.err.stack))}\n`
} catch (e) {
  let tail = ''
  try { tail = fs.readFileSync(runlog, 'utf8').split('\n').slice(-6).join(' ') } catch (_) {}
  out += `fail\t(suite run)\tno mocha report (${clean(e.message)}); log ends: ${clean(tail)}\n`
}
fs.writeFileSync(tsv, out)
EOF
}

# Usage: run_mocha SUITE TARGET
run_mocha() {
    local suite=$1 target=$2 db pkg dir rc=0 tsv=$OUT/$1.$2.tsv json=$OUT/$1.$2.json log=$OUT/$1.$2.log
    local -a spec extra=()
    case $suite in
        pg-pool) pkg=pg-pool; spec=(test/*.js) ;;
        pg-cursor) pkg=pg-cursor; spec=(test/*.js) ;;
        pg-query-stream) pkg=pg-query-stream; spec=(test/*.ts); extra=(-r ts-node/register) ;;
        pg-native-lib) pkg=pg-native; spec=(test/*.js) ;;
    esac
    dir=$NODE_PG_SRC/packages/$pkg
    db=$(suite_db "$suite" "$target")
    proxy_alive "$target"
    rm -f "$json"
    (cd "$dir" && env $(pg_env "$target" "$db") PGTESTNOSSL=true TS_NODE_TRANSPILE_ONLY=true \
        timeout -k 10 "$SUITE_TIMEOUT" "$NODE_PG_SRC/node_modules/.bin/mocha" "${extra[@]}" \
        --timeout 20000 --exit --reporter json --reporter-option "output=$json" "${spec[@]}") \
        >"$log" 2>&1 || rc=$?
    [[ $rc -eq 124 ]] && echo "(timed out after ${SUITE_TIMEOUT}s)" >>"$log"
    mocha_tsv "$json" "$tsv" "$log"
}

# ---------------------------------------------------------------------------------------------
# Python suites (pytest, JUnit XML -> TSV)

junit_tsv() { # XML[,XML...] TSV PYTHON RUNLOG
    "$3" - "$1" "$2" "$4" <<'EOF'
import sys, re
import xml.etree.ElementTree as ET
xmls, tsv, runlog = sys.argv[1:4]
clean = lambda s: re.sub(r"\s+", " ", s or "")[:400]
out = []
try:
    cases = [tc for x in xmls.split(",") for tc in ET.parse(x).getroot().iter("testcase")]
    for tc in cases:
        tid = f"{tc.get('classname', '')}::{tc.get('name', '')}"
        st, detail = "pass", ""
        for child in tc:
            if child.tag in ("failure", "error"):
                st, detail = "fail", clean(child.get("message") or child.text)
                break
            if child.tag == "skipped":
                st, detail = "skip", clean(child.get("message"))
        out.append(f"{st}\t{tid}\t{detail}")
except Exception as e:
    tail = ""
    try:
        tail = " ".join(open(runlog).read().splitlines()[-6:])
    except Exception:
        pass
    out.append(f"fail\t(suite run)\tno JUnit report ({clean(str(e))}); log ends: {clean(tail)}")
open(tsv, "w").write("\n".join(out) + "\n")
EOF
}

setup_psycopg() {
    [[ -n "$PSYCOPG_SRC" ]] || die "the psycopg suite needs --psycopg DIR"
    need python3
    local venv=$DEPS_DIR/venv-psycopg
    if [[ ! -x "$venv/bin/pytest" ]] || [[ "$(cat "$venv/.src" 2>/dev/null)" != "$PSYCOPG_SRC" ]]; then
        log "installing psycopg 3 from $PSYCOPG_SRC and its test dependencies (pip) into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "$PSYCOPG_SRC/psycopg" "$PSYCOPG_SRC/psycopg_pool" \
            "anyio>=4.0" "pproxy>=2.7" "pytest>=6.2.5" pytest-timeout >"$OUT/pip-psycopg.log" 2>&1 ||
            die "pip install failed (see $OUT/pip-psycopg.log)"
        echo "$PSYCOPG_SRC" >"$venv/.src"
    fi
    (cd "$PSYCOPG_SRC" && git rev-parse --short HEAD 2>/dev/null) >"$OUT/psycopg.commit" || true
}

run_psycopg() { # TARGET
    local target=$1 db rc=0 venv=$DEPS_DIR/venv-psycopg tsv=$OUT/psycopg.$1.tsv
    db=$(suite_db psycopg "$target")
    proxy_alive "$target"
    # -m "not ...": the mypy typing checks, and the pool tests' timing assertions are kept.
    (cd "$PSYCOPG_SRC" && env PSYCOPG_IMPL=python PGSSLMODE=disable \
        timeout -k 10 "$SUITE_TIMEOUT" "$venv/bin/pytest" tests -o "cache_dir=$WORK_DIR/pytest-cache" -q -rN \
        --test-dsn "host=$PG_HOST port=$(target_port "$target") user=$PG_USER dbname=$db sslmode=disable" \
        -m "not mypy" --timeout 120 --junitxml "$OUT/psycopg.$target.xml" $PYTEST_ARGS) \
        >"$OUT/psycopg.$target.log" 2>&1 || rc=$?
    [[ $rc -eq 124 ]] && echo "(timed out after ${SUITE_TIMEOUT}s)" >>"$OUT/psycopg.$target.log"
    junit_tsv "$OUT/psycopg.$target.xml" "$tsv" "$venv/bin/python" "$OUT/psycopg.$target.log"
}

setup_psycopg2() {
    [[ -n "$PSYCOPG2_SRC" ]] || die "the psycopg2 suite needs --psycopg2 DIR"
    need python3 pg_config
    local venv=$DEPS_DIR/venv-psycopg2
    if [[ ! -x "$venv/bin/pytest" ]] || [[ "$(cat "$venv/.src" 2>/dev/null)" != "$PSYCOPG2_SRC" ]]; then
        log "building psycopg2 from $PSYCOPG2_SRC (pip) into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "$PSYCOPG2_SRC" "pytest>=6.2.5" pytest-timeout >"$OUT/pip-psycopg2.log" 2>&1 ||
            die "pip install failed (see $OUT/pip-psycopg2.log)"
        echo "$PSYCOPG2_SRC" >"$venv/.src"
    fi
    (cd "$PSYCOPG2_SRC" && git rev-parse --short HEAD 2>/dev/null) >"$OUT/psycopg2.commit" || true
}

run_psycopg2() { # TARGET
    local target=$1 db rc=0 venv=$DEPS_DIR/venv-psycopg2 tsv=$OUT/psycopg2.$1.tsv
    db=$(suite_db psycopg2 "$target")
    proxy_alive "$target"
    # Run from a scratch directory holding only tests/, so that `import psycopg2` finds the
    # installed (compiled) package and not the checkout's lib/.
    local scratch=$WORK_DIR/psycopg2-tests
    rm -rf "$scratch" && mkdir -p "$scratch" && cp -r "$PSYCOPG2_SRC/tests" "$scratch/"
    (cd "$scratch" && env PGSSLMODE=disable PSYCOPG2_TESTDB="$db" PSYCOPG2_TESTDB_HOST="$PG_HOST" \
        PSYCOPG2_TESTDB_PORT="$(target_port "$target")" PSYCOPG2_TESTDB_USER="$PG_USER" \
        timeout -k 10 "$SUITE_TIMEOUT" "$venv/bin/pytest" tests -o "cache_dir=$WORK_DIR/pytest-cache" -q -rN \
        --timeout 120 --junitxml "$OUT/psycopg2.$target.xml" $PYTEST_ARGS) \
        >"$OUT/psycopg2.$target.log" 2>&1 || rc=$?
    [[ $rc -eq 124 ]] && echo "(timed out after ${SUITE_TIMEOUT}s)" >>"$OUT/psycopg2.$target.log"
    junit_tsv "$OUT/psycopg2.$target.xml" "$tsv" "$venv/bin/python" "$OUT/psycopg2.$target.log"
}

# ---------------------------------------------------------------------------------------------
# tokio-postgres

RUST_ROLES=(pass_user md5_user scram_user)

setup_tokio() {
    [[ -n "$RUST_PG_SRC" ]] || die "the tokio-postgres suite needs --rust-postgres DIR"
    need cargo rsync
    local r
    mkdir -p "$DEPS_DIR/rust-postgres"
    rsync -a --delete --exclude target --exclude .git "$RUST_PG_SRC/" "$DEPS_DIR/rust-postgres/src/"
    for r in "${RUST_ROLES[@]}"; do
        if [[ -z "$(pg_direct postgres -Atc "SELECT 1 FROM pg_roles WHERE rolname = '$r'")" ]]; then
            pg_direct postgres -c "CREATE ROLE $r PASSWORD 'password' LOGIN" >/dev/null
            CREATED_ROLES+=("$r")
        fi
    done
    (cd "$RUST_PG_SRC" && git rev-parse --short HEAD 2>/dev/null) >"$OUT/rust-postgres.commit" || true
}

# The tests connect to port 5433 and to the user's own database; point them at PORT and DB.
patch_tokio_tests() { # PORT DB
    local work=$DEPS_DIR/rust-postgres/work
    rsync -a --delete --exclude target "$DEPS_DIR/rust-postgres/src/" "$work/"
    local t=$work/tokio-postgres/tests/test
    sed -i "s/127\.0\.0\.1:5433/127.0.0.1:$1/g; s/port=5433,5433/port=$1,$1 dbname=$2/g; s/port=5432,5433/port=5432,$1 dbname=$2/g; s/port=5433/port=$1 dbname=$2/g" \
        "$t/main.rs" "$t/runtime.rs" "$t/binary_copy.rs"
    # connect_raw: the database, when the test names none.
    sed -i 's/let config = s.parse::<Config>().unwrap();/let mut config = s.parse::<Config>().unwrap(); if config.get_dbname().is_none() { config.dbname("'"$2"'"); }/' "$t/main.rs"
    grep -q "config.dbname(\"$2\")" "$t/main.rs" || die "could not point tokio-postgres' connect_raw at $2"
}

run_tokio() { # TARGET
    local target=$1 db rc=0 tsv=$OUT/tokio-postgres.$1.tsv log=$OUT/tokio-postgres.$1.log
    db=$(suite_db tokio-postgres "$target")
    pg_direct "$db" -c "CREATE EXTENSION IF NOT EXISTS hstore" -c "CREATE EXTENSION IF NOT EXISTS citext" \
        -c "CREATE EXTENSION IF NOT EXISTS ltree" >/dev/null
    patch_tokio_tests "$(target_port "$target")" "$db"
    log "building tokio-postgres' tests for $target"
    (cd "$DEPS_DIR/rust-postgres/work" && CARGO_TARGET_DIR=$DEPS_DIR/rust-postgres/target \
        timeout -k 10 "$SUITE_TIMEOUT" cargo test -p tokio-postgres --test test --no-run) >"$log.build" 2>&1 ||
        { printf 'fail\t(build)\t%s\n' "$(tail -n 5 "$log.build" | one_line)" >"$tsv"; return; }
    proxy_alive "$target"
    (cd "$DEPS_DIR/rust-postgres/work" && CARGO_TARGET_DIR=$DEPS_DIR/rust-postgres/target \
        timeout -k 10 "$SUITE_TIMEOUT" cargo test -p tokio-postgres --test test -- --test-threads=2) \
        >"$log" 2>&1 || rc=$?
    [[ $rc -eq 124 ]] && echo "(timed out after ${SUITE_TIMEOUT}s)" >>"$log"
    awk '
        /^test .* \.\.\. ok$/       { print "pass\t" $2 "\t"; next }
        /^test .* \.\.\. ignored/   { print "skip\t" $2 "\t"; next }
        /^test .* \.\.\. FAILED$/   { failed[$2] = 1; order[++n] = $2; next }
        /^---- .* stdout ----$/     { cur = $2; next }
        cur != "" && /^$/           { cur = ""; next }
        cur != "" && !/^note:/      { msg[cur] = msg[cur] " " $0 }
        END { for (i = 1; i <= n; i++) print "fail\t" order[i] "\t" substr(msg[order[i]], 1, 400) }
    ' "$log" >"$tsv"
    [[ -s "$tsv" ]] || printf 'fail\t(suite run)\t%s\n' "$(tail -n 6 "$log" | one_line)" >"$tsv"
}

# ---------------------------------------------------------------------------------------------
# pgjdbc

PGJDBC_JARS=(postgresql junit4 hamcrest checker-qual junit-platform-console-standalone)

setup_pgjdbc() {
    [[ -n "$PGJDBC_SRC" ]] || die "the pgjdbc suite needs --pgjdbc DIR"
    need javac java python3
    local j version tag build=$DEPS_DIR/pgjdbc
    for j in "${PGJDBC_JARS[@]}"; do
        [[ -f /usr/share/java/$j.jar ]] ||
            die "no /usr/share/java/$j.jar: apt-get install libpostgresql-jdbc-java junit4 junit5 libhamcrest-java libchecker-framework-java"
    done
    version=$(dpkg-query -W -f '${Version}' libpostgresql-jdbc-java 2>/dev/null) || die "libpostgresql-jdbc-java is not installed"
    tag=REL${version%%-*}
    git -C "$PGJDBC_SRC" rev-parse -q --verify "$tag^{commit}" >/dev/null ||
        die "$PGJDBC_SRC has no tag $tag (the release of the installed driver jar)"
    if [[ "$(cat "$build/.tag" 2>/dev/null)" != "$tag" ]]; then
        log "compiling pgjdbc's tests of $tag (javac) into $build"
        rm -rf "$build" && mkdir -p "$build/src" "$build/classes"
        git -C "$PGJDBC_SRC" archive "$tag" | tar -x -C "$build/src"
        (cd "$build/src/pgjdbc" && find src/test/java -name '*.java' -print0 | xargs -0 grep -L -E \
            '^import (static )?(uk\.org\.webcompere|se\.jiderhamn|org\.osgi|waffle|com\.sun\.jna)|^package org\.postgresql\.test\.(sspi|osgi)' |
            grep -v 'TestSuite\.java$' >"$build/sources.txt")
        (cd "$build/src/pgjdbc" && javac -nowarn -encoding UTF-8 -cp "$(pgjdbc_classpath)" -d "$build/classes" \
            @"$build/sources.txt") >"$OUT/javac-pgjdbc.log" 2>&1 || die "javac failed (see $OUT/javac-pgjdbc.log)"
        echo "$tag" >"$build/.tag"
    fi
    echo "$tag" >"$OUT/pgjdbc.commit"
}

pgjdbc_classpath() {
    local cp="" j
    for j in "${PGJDBC_JARS[@]}"; do cp+="/usr/share/java/$j.jar:"; done
    echo "${cp}src/test/resources"
}

run_pgjdbc() { # TARGET
    local target=$1 db rc=0 build=$DEPS_DIR/pgjdbc log=$OUT/pgjdbc.$1.log reports=$OUT/pgjdbc.$1
    db=$(suite_db pgjdbc "$target")
    proxy_alive "$target"
    rm -rf "$reports"
    # From pgjdbc/, whose ../build.properties holds the tests' defaults; ssl=false: no TLS.
    (cd "$build/src/pgjdbc" && timeout -k 10 "$SUITE_TIMEOUT" java -Dserver="$PG_HOST" \
        -Dport="$(target_port "$target")" -Ddatabase="$db" -Dusername="$PG_USER" -Dpassword= \
        -DprivilegedUser="$PG_USER" -DprivilegedPassword= -Dssl=false \
        -jar /usr/share/java/junit-platform-console-standalone.jar -cp "$build/classes:$(pgjdbc_classpath)" \
        --scan-classpath "$build/classes" --reports-dir "$reports" --details=summary --disable-banner) \
        >"$log" 2>&1 || rc=$?
    [[ $rc -eq 124 ]] && echo "(timed out after ${SUITE_TIMEOUT}s)" >>"$log"
    junit_tsv "$reports/TEST-junit-jupiter.xml,$reports/TEST-junit-vintage.xml" "$OUT/pgjdbc.$target.tsv" python3 "$log"
}

# ---------------------------------------------------------------------------------------------
# One suite on one target; a difference re-run.

run_suite() { # SUITE TARGET
    log "$1 on $2"
    local t0=$SECONDS
    case $1 in
        pg-js|pg-native|pg-binary) run_pg_files "$1" "$2" ;;
        pg-pool|pg-cursor|pg-query-stream|pg-native-lib) run_mocha "$1" "$2" ;;
        psycopg) run_psycopg "$2" ;;
        psycopg2) run_psycopg2 "$2" ;;
        tokio-postgres) run_tokio "$2" ;;
        pgjdbc) run_pgjdbc "$2" ;;
        *) die "unknown suite $1" ;;
    esac
    echo $((SECONDS - t0)) >"$OUT/$1.$2.seconds"
}

# Re-runs one difference on one target and prints its status (pass/fail/-). Only the per-file
# and pytest suites can run one test alone; the others print "-".
rerun_one() { # SUITE TARGET ID
    local suite=$1 target=$2 id=$3 db="ds_${1//-/_}_$2" rc=0 pgdir=$NODE_PG_SRC/packages/pg
    local -a pre=() args=()
    case $suite in
        pg-js|pg-native|pg-binary)
            [[ $suite == pg-native ]] && args=(native)
            [[ $suite == pg-binary ]] && pre=(-r "$DEPS_DIR/pg-binary-preload.js")
            (cd "$pgdir" && env $(pg_env "$target" "$db") PGTESTNOSSL=true \
                timeout -k 5 "$FILE_TIMEOUT" node "${pre[@]}" "$id" "${args[@]}") >/dev/null 2>&1 || rc=$? ;;
        psycopg)
            local nodeid=${id%%::*}; nodeid=${nodeid//.//}.py::${id#*::}
            (cd "$PSYCOPG_SRC" && env PSYCOPG_IMPL=python PGSSLMODE=disable timeout -k 5 300 \
                "$DEPS_DIR/venv-psycopg/bin/pytest" -o "cache_dir=$WORK_DIR/pytest-cache" -q "$nodeid" \
                --test-dsn "host=$PG_HOST port=$(target_port "$target") user=$PG_USER dbname=$db sslmode=disable") \
                >/dev/null 2>&1 || rc=$? ;;
        *) echo "-"; return ;;
    esac
    [[ $rc -eq 0 ]] && echo pass || echo fail
}

# ---------------------------------------------------------------------------------------------

start_targets
for s in $SUITES; do
    case $s in
        pg-*) [[ -n "${NODE_SET_UP:-}" ]] || { setup_node; NODE_SET_UP=1; } ;;
        psycopg) setup_psycopg ;;
        psycopg2) setup_psycopg2 ;;
        tokio-postgres) setup_tokio ;;
        pgjdbc) setup_pgjdbc ;;
    esac
    for t in $TARGETS; do
        run_suite "$s" "$t"
    done
done

counts() { # TSV -> "passed failed skipped"
    awk -F'\t' '{ c[$1]++ } END { printf "%d %d %d\n", c["pass"], c["fail"], c["skip"] }' "$1" 2>/dev/null || echo "0 0 0"
}

{
    echo "# driver test suites, directly and through optlock ($(date '+%Y-%m-%d %H:%M'))"
    echo "# optlock binary ${OPTLOCK_BIN:-(not started)} (repository at $(cd "$REPO_ROOT" && git rev-parse --short HEAD 2>/dev/null)); $(upstream_note); PGSSLMODE=disable on every leg"
    for f in "$OUT"/*.commit; do [[ -s $f ]] && echo "# $(basename "${f%.commit}") checkout at $(cat "$f")"; done
    echo "# node-postgres suites pg-js/pg-native/pg-binary count test files (a file stops at its first failure);"
    echo "# the others count tests. Times in seconds."
    [[ -s "$OUT/proxy-restarts.txt" ]] && cat "$OUT/proxy-restarts.txt"
    echo
    printf '%-16s' suite
    for t in $TARGETS; do printf ' | %-8s %7s %7s %7s %6s' "$t" passed failed skipped time; done
    printf ' | %s\n' "passes directly, fails through optlock"
    for s in $SUITES; do
        printf '%-16s' "$s"
        for t in $TARGETS; do
            read -r p f k < <(counts "$OUT/$s.$t.tsv")
            printf ' | %-8s %7s %7s %7s %6s' "" "$p" "$f" "$k" "$(cat "$OUT/$s.$t.seconds" 2>/dev/null || echo -)"
        done
        if [[ " $TARGETS " == *" direct "* && " $TARGETS " == *" optlock "* ]]; then
            # pass on direct; on optlock failed or absent (the run stopped before it)
            awk -F'\t' 'FNR == NR { if ($1 == "pass") d[$2] = 1; next }
                        { o[$2] = $1; m[$2] = $3 }
                        END { for (k in d) if (o[k] != "pass" && o[k] != "skip") print k "\t" (k in o ? m[k] : "(not run through optlock)") }' \
                "$OUT/$s.direct.tsv" "$OUT/$s.optlock.tsv" 2>/dev/null | sort >"$OUT/$s.diff.tsv" || true
            printf ' | %s\n' "$(wc -l <"$OUT/$s.diff.tsv")"
        else
            printf ' | -\n'
        fi
    done
    echo
    for s in $SUITES; do
        [[ -s "$OUT/$s.diff.tsv" ]] || continue
        echo "## $s: passes directly, fails through optlock"
        while IFS=$'\t' read -r id msg; do
            echo "- $id"
            echo "    optlock: $msg"
            if [[ "$RERUN" == 1 ]]; then
                local_d=$(rerun_one "$s" direct "$id"); local_o=$(rerun_one "$s" optlock "$id")
                [[ $local_d != - ]] && echo "    re-run: direct $local_d, optlock $local_o"
            fi
        done <"$OUT/$s.diff.tsv"
        echo
    done
} | tee "$RESULT"
log "results in $RESULT (logs in $OUT/)"
