#!/usr/bin/env bash
# What an idle fleet costs the server (issue 24): starts a fresh local test
# server, N idle `mongoq work --threads 2` processes (no jobs), waits for them
# to settle, then reads the server's CPU time from /proc over a window.
#   scripts/idle-fleet.sh                 # 32 workers, 15 s settle, 20 s window
#   scripts/idle-fleet.sh 32 15 20 --no-change-stream
# Prints the server's share of one core, and the workers' together.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$MONGOQ_ROOT"
workers="${1:-32}"; settle="${2:-15}"; window="${3:-20}"; shift $(( $# < 3 ? $# : 3 ))
ensure_server
cargo build --release --quiet
trap 'kill "${pids[@]}" 2>/dev/null || true; stop_server' EXIT INT TERM
start_server
export MONGODB_URI="$SERVER_URI"
target/release/mongoq init >/dev/null
pids=()
for _ in $(seq 1 "$workers"); do
  RUST_LOG=warn target/release/mongoq work --threads 2 --simulate 0ms..0ms "$@" >/dev/null 2>&1 &
  pids+=($!)
done
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
sleep "$settle"
s0=$(ticks "$SERVER_PID"); w0=0; for p in "${pids[@]}"; do w0=$((w0 + $(ticks "$p"))); done
sleep "$window"
s1=$(ticks "$SERVER_PID"); w1=0; for p in "${pids[@]}"; do w1=$((w1 + $(ticks "$p"))); done
hz=$(getconf CLK_TCK)
awk -v s=$((s1 - s0)) -v w=$((w1 - w0)) -v t="$window" -v hz="$hz" -v n="$workers" \
  'BEGIN { printf "%d idle workers: server %.1f%% of one core, workers %.1f%% together (over %d s)\n", n, 100*s/hz/t, 100*w/hz/t, t }'
