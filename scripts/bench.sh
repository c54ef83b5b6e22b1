#!/usr/bin/env bash
# Runs `mongoq bench` (a release build). Uses MONGODB_URI when set; otherwise
# starts a local test server on a free port, like the demo, and stops it.
# Arguments go to `mongoq bench` (see `mongoq bench --help`), e.g.
#   scripts/bench.sh --json > bench.json
#   scripts/bench.sh --jobs 5000 --threads 2 --batch-sizes 100
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$MONGOQ_ROOT"

if [ -z "${MONGODB_URI:-}" ]; then
  ensure_server
  trap stop_server EXIT INT TERM
  start_server
  export MONGODB_URI="$SERVER_URI"
fi
cargo build --release --quiet
target/release/mongoq bench "$@"
