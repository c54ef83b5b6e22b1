#!/usr/bin/env bash
# Runs `mongoq bench` (a release build). Uses MONGODB_URI when set; otherwise
# starts a local test server on a free port, like the demo, and stops it, and
# passes its process id (--server-pid) so the server's CPU per job is read.
# Arguments go to `mongoq bench` (see `mongoq bench --help`), e.g.
#   scripts/bench.sh --json > bench.json
#   scripts/bench.sh --jobs 5000 --threads 2 --batch-sizes 100
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$MONGOQ_ROOT"

pid_args=()
if [ -z "${MONGODB_URI:-}" ]; then
  ensure_server
  trap stop_server EXIT INT TERM
  start_server
  export MONGODB_URI="$SERVER_URI"
  pid_args=(--server-pid "$SERVER_PID")
fi
cargo build --release --quiet
target/release/mongoq bench "${pid_args[@]}" "$@"
