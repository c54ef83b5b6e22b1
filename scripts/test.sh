#!/usr/bin/env bash
# The one test command: installs the test server, mongosh, faketime (for
# the clock-skew tests) and (for the dashboard's browser test) chromium if
# missing,
# starts the server on a free port with its own data directory, runs the
# whole suite against it, and stops it on every exit path.
#
#   scripts/test.sh              # everything
#   scripts/test.sh worker::     # only tests whose name matches
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$MONGOQ_ROOT"

ensure_server
ensure_mongosh
ensure_faketime
ensure_chromium
trap stop_server EXIT INT TERM
start_server

export MONGOQ_TEST_URI="$SERVER_URI"
export MONGOQ_MONGOSH="$(command -v mongosh)"
cargo test --all-targets -- --test-threads "${MONGOQ_TEST_THREADS:-4}" "$@"
if [ $# -eq 0 ]; then
  cargo test --doc --quiet   # the crate docs' example must keep compiling
fi
