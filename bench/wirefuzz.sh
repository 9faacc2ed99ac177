#!/usr/bin/env bash
# bench/wirefuzz.sh: the long campaign of the differential wire fuzzer (tests/wire_fuzz.rs).
#
# Generated and mutated client sessions (a login, 1..12 frontend messages, mutations such as
# bad or huge length fields, truncated frames, unknown tags, random bytes, split writes and
# unread pipelines, then an ending) are replayed byte for byte against a throwaway PostgreSQL
# cluster (initdb in /dev/shm, as the postgres OS user, on a random port; never the shared
# server), once directly and once through an in-process optlock guarding the invoice table.
# Reported: hangs (direct, proxy, proxy-only), backends left behind after the client went away,
# reply differences (explained ones by class, unexplained ones with examples), sessions skipped
# because the server itself crashed, the test process's RSS before/peak/after (the proxy runs
# in it), and optlock_client_errors_total by reason against the refusals the sessions provoked.
# The first failing session of each kind is shrunk to a minimal message sequence. The test fails
# on any proxy-only hang, leaked backend, unexplained difference, panic or counter mismatch.
# The CI run is the same test with its small default (cargo test --test wire_fuzz).
#
# Usage:  bench/wirefuzz.sh                          (20000 sessions, the fixed seed)
#         SESSIONS=50000 SEED=7 bench/wirefuzz.sh
#         SEED=7 ONLY=1234,5678 VERBOSE=1 bench/wirefuzz.sh   (replay sessions of a campaign)
#
# Options (environment variables):
#   SESSIONS=20000     sessions to run (OPTLOCK_FUZZ_SESSIONS)
#   SEED=1592336420    the campaign's seed (OPTLOCK_FUZZ_SEED; the test's default is 0x5eed2024)
#   WORKERS=8          sessions run at a time, each worker on a database of its own
#   TIMEOUT_MS=5000    per side: no end within this long is a hang
#   MINIMIZE=10        failing sessions to shrink to a minimal reproduction (one per kind, the
#                      known issues of tests/wire_fuzz.rs included; about a minute each)
#   ONLY=a,b,...       replay just these session numbers
#   VERBOSE=1          print every session's messages and replies
#   LIST=1             print every failing session's number and label (known issues too)
#   CARGO_TARGET_DIR   where cargo builds (default: <repo>/target)
# Needs: cargo, the PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin), root (initdb
# runs as the postgres OS user through runuser). 20000 sessions take about 15 minutes on two
# cores with 8 workers, plus up to a minute per shrunk reproduction.
# Results are printed and saved to bench/results/wirefuzz-<date>.txt (gitignored); the summary
# line starts with "wire_fuzz summary:".

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SESSIONS=${SESSIONS:-20000}
SEED=${SEED:-1592336420}
WORKERS=${WORKERS:-8}
TIMEOUT_MS=${TIMEOUT_MS:-5000}
MINIMIZE=${MINIMIZE:-10}

need cargo
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || die "no PostgreSQL 15 server binaries for a throwaway cluster"
RESULT=$(results_file wirefuzz)

log "wire fuzz: $SESSIONS sessions, seed $SEED, $WORKERS workers, timeout ${TIMEOUT_MS} ms${ONLY:+, only $ONLY}"
{
    echo "# bench/wirefuzz.sh $(date -Iseconds)"
    echo "# commit $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_ROOT" diff --quiet 2>/dev/null || echo ' (work tree modified)')"
    echo "# SESSIONS=$SESSIONS SEED=$SEED WORKERS=$WORKERS TIMEOUT_MS=$TIMEOUT_MS MINIMIZE=$MINIMIZE${ONLY:+ ONLY=$ONLY}"
} >"$RESULT"
status=0
(
    cd "$REPO_ROOT" &&
        env OPTLOCK_FUZZ_SESSIONS=$SESSIONS OPTLOCK_FUZZ_SEED=$SEED OPTLOCK_FUZZ_WORKERS=$WORKERS \
        OPTLOCK_FUZZ_TIMEOUT_MS=$TIMEOUT_MS OPTLOCK_FUZZ_MINIMIZE=$MINIMIZE OPTLOCK_FUZZ_MINIMIZE_KNOWN=1 \
        ${ONLY:+OPTLOCK_FUZZ_ONLY=$ONLY} ${VERBOSE:+OPTLOCK_FUZZ_VERBOSE=$VERBOSE} \
        ${LIST:+OPTLOCK_FUZZ_LIST=$LIST} \
        cargo test --release --test wire_fuzz -- --nocapture 2>&1
) | tee -a "$RESULT" || status=$?
grep -h '^wire_fuzz summary:' "$RESULT" >&2 || log "no summary line (the test did not finish)"
log "results saved to $RESULT"
exit "$status"
