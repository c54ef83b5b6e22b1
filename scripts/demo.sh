#!/usr/bin/env bash
# The first thing to run: a whole round trip of the queue.
#
# Uses MONGODB_URI when set; otherwise starts a local test server and stops
# it at the end: one already installed, else secantusd-py from its wheel
# (seconds; MONGOQ_TEST_SERVER=rs|py chooses). Enqueues jobs with the shell
# client (mongosh, installed if missing) and with `mongoq enqueue`, shows the
# stats, drains them with `mongoq work --drain`, and shows the stats again.
# Jobs go to the database `mongoq_demo` (MONGOQ_DB to change it), so a demo
# against a real deployment does not touch the real queue.
set -euo pipefail
MONGOQ_TEST_SERVER_SET="${MONGOQ_TEST_SERVER:-}"
source "$(dirname "$0")/lib.sh"
cd "$MONGOQ_ROOT"

ensure_mongosh
if [ -z "${MONGODB_URI:-}" ]; then
  pick_installed_server
  ensure_server
  trap stop_server EXIT INT TERM
  start_server
  export MONGODB_URI="$SERVER_URI"
fi
export MONGOQ_DB="${MONGOQ_DB:-mongoq_demo}"

log "building mongoq"
cargo build --release --quiet
mongoq() { "$MONGOQ_ROOT/target/release/mongoq" --db "$MONGOQ_DB" "$@"; }

mongoq init
log "enqueueing 8 jobs with mongosh (scripts/enqueue.sh) and 2 with mongoq enqueue"
for i in $(seq 1 8); do printf '{"task": "resize", "image": "photo-%d.png"}\n' "$i"; done | scripts/enqueue.sh
mongoq enqueue --priority 10 '{"task": "urgent-report"}'
mongoq enqueue --delay 2s '{"task": "reminder"}'
mongoq stats
log "working until the queue is drained (each job sleeps ${DEMO_SIMULATE:-200ms..1s})"
mongoq work --drain --threads 4 --simulate "${DEMO_SIMULATE:-200ms..1s}"
mongoq stats
