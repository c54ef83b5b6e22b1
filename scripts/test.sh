#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing
# (the test servers, mongosh, faketime for the clock-skew tests, cargo-deb,
# chromium for the dashboard's browser test, pymongo for the Python client's
# tests), builds the Debian package, then runs the whole suite against each
# test server in turn, secantusd-rs and then secantusd-py, each started on a
# free port with its own data directory and stopped on every exit path. Checks a server cannot take are
# listed at the end of its run, with the reason; none is skipped silently.
#
#   scripts/test.sh                        # everything, on both servers
#   MONGOQ_TEST_SERVER=py scripts/test.sh  # one server only
#   scripts/test.sh fleet::                # only tests whose name matches
#   MONGOQ_SUITE_LIMIT=3600 scripts/test.sh # allow a slow machine more than
#                                          # 20 min per server (40 on py)
#                                          # before the watchdog fails it
set -euo pipefail
MONGOQ_TEST_SERVER_SET="${MONGOQ_TEST_SERVER:-}"
source "$(dirname "$0")/lib.sh"
cd "$MONGOQ_ROOT"

ensure_mongosh
ensure_faketime
ensure_chromium
ensure_python_client
ensure_debian_pymongo
command -v systemd-analyze >/dev/null 2>&1 || apt-get install -y -qq systemd >/dev/null
# The package test inspects the .deb this builds (a release build; minutes
# the first time, incremental after).
if [ $# -eq 0 ] || [[ "$*" == *package* ]]; then
  MONGOQ_DEB="$(scripts/package.sh | tail -n 1)"
  export MONGOQ_DEB
fi
export MONGOQ_MONGOSH="$(command -v mongosh)"

# A suite that hangs must fail within CI's budget and say where: past
# MONGOQ_SUITE_LIMIT seconds on one server (default 20 min, 40 on
# secantusd-py, which runs one test at a time; a run on secantusd-rs, its
# build included, takes 2-8 minutes),
# it prints the server's threads (py-spy, for secantusd-py) and the mongoq
# processes still running, then stops with an error.
run_suite() {
  "$@" &
  local suite=$! waited=0
  while kill -0 "$suite" 2>/dev/null; do
    sleep 2
    waited=$((waited + 2))
    if [ "$waited" -ge "$SUITE_LIMIT" ]; then
      log "the suite ran past ${SUITE_LIMIT}s on $SERVER_BIN: stopping it (set MONGOQ_SUITE_LIMIT to allow more)"
      log "mongoq processes still running:"
      pgrep -af 'target/(debug|release)/mongoq' >&2 || true
      if [ -x "$MONGOQ_TOOLS/secantus-py/bin/py-spy" ] && [ "$SERVER_BIN" = secantusd-py ]; then
        log "the server's threads:"
        "$MONGOQ_TOOLS/secantus-py/bin/py-spy" dump --pid "$SERVER_PID" >&2 || true
      fi
      # cargo's child is the test binary; a killed test binary leaves the
      # workers it started (this checkout's binary, on a test database).
      pkill -KILL -P "$suite" 2>/dev/null || true
      kill -KILL "$suite" 2>/dev/null || true
      pkill -KILL -f "$MONGOQ_ROOT/target/debug/mongoq --db t_" 2>/dev/null || true
      wait "$suite" 2>/dev/null || true
      return 1
    fi
  done
  wait "$suite"
}

servers="rs py"
[ -n "$MONGOQ_TEST_SERVER_SET" ] && servers="$MONGOQ_TEST_SERVER_SET"
trap stop_server EXIT INT TERM
first=yes
for kind in $servers; do
  MONGOQ_TEST_SERVER="$kind"
  ensure_server
  start_server
  export MONGOQ_TEST_URI="$SERVER_URI"
  export MONGOQ_SKIP_LOG="$SERVER_DIR/not-checked.txt"
  : >"$MONGOQ_SKIP_LOG"
  export MONGOQ_TEST_TIMES="$SERVER_DIR/times.txt"
  : >"$MONGOQ_TEST_TIMES"
  # The Python server is slower under load (one core, and tests timed out
  # beside each other there in CI, two at a time): one test at a time.
  threads="${MONGOQ_TEST_THREADS:-$([ "$kind" = py ] && echo 1 || echo 4)}"
  SUITE_LIMIT="${MONGOQ_SUITE_LIMIT:-$([ "$kind" = py ] && echo 2400 || echo 1200)}"
  log "the suite on $SERVER_BIN ($threads tests at a time)"
  if [ "$first" = yes ]; then
    run_suite cargo test --all-targets -- --test-threads "$threads" "$@"
  else
    # Unit tests touch no server: the first run covered them.
    run_suite cargo test --test suite -- --test-threads "$threads" "$@"
  fi
  if [ -s "$MONGOQ_SKIP_LOG" ]; then
    log "not checked on $SERVER_BIN (each with its reason):"
    sort -u "$MONGOQ_SKIP_LOG" >&2
  else
    log "every check ran on $SERVER_BIN"
  fi
  if [ -s "$MONGOQ_TEST_TIMES" ]; then
    log "the slowest tests on $SERVER_BIN (seconds from taking a database to dropping it):"
    sort -rn "$MONGOQ_TEST_TIMES" | head -n 12 >&2
  fi
  stop_server
  first=no
done
if [ $# -eq 0 ]; then
  cargo test --doc --quiet   # the crate docs' example must keep compiling
fi
