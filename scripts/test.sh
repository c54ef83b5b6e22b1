#!/usr/bin/env bash
# The one test command: installs the test server, mongosh, faketime (for
# the clock-skew tests), cargo-deb (for the package) and (for the
# dashboard's browser test) chromium if missing, builds the Debian package,
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
command -v systemd-analyze >/dev/null 2>&1 || apt-get install -y -qq systemd >/dev/null
# The package test inspects the .deb this builds (a release build; minutes
# the first time, incremental after).
if [ $# -eq 0 ] || [[ "$*" == *package* ]]; then
  MONGOQ_DEB="$(scripts/package.sh | tail -n 1)"
  export MONGOQ_DEB
fi
trap stop_server EXIT INT TERM
start_server

export MONGOQ_TEST_URI="$SERVER_URI"
export MONGOQ_MONGOSH="$(command -v mongosh)"
cargo test --all-targets -- --test-threads "${MONGOQ_TEST_THREADS:-4}" "$@"
if [ $# -eq 0 ]; then
  cargo test --doc --quiet   # the crate docs' example must keep compiling
fi
