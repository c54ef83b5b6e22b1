#!/usr/bin/env bash
# Soak test: for DURATION (default 10m), keep three workers draining a
# stream of jobs while killing one with SIGKILL at random moments, then check
# that every job completed and count the repeat runs (allowed only after a
# kill). Bounded and self-stopping; exits non-zero if anything was lost.
#
#   scripts/soak.sh            # 10 minutes on a local test server
#   SOAK_DURATION=2h scripts/soak.sh
#
# Uses MONGODB_URI when set (database mongoq_soak), else starts a test server.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$MONGOQ_ROOT"

duration="${SOAK_DURATION:-10m}"
case "$duration" in
  *h) seconds=$(( ${duration%h} * 3600 )) ;;
  *m) seconds=$(( ${duration%m} * 60 )) ;;
  *s) seconds=${duration%s} ;;
  *) log "SOAK_DURATION must look like 90s, 10m or 2h"; exit 2 ;;
esac

if [ -z "${MONGODB_URI:-}" ]; then
  ensure_server
  trap 'stop_server; kill $(jobs -p) 2>/dev/null || true' EXIT INT TERM
  start_server
  export MONGODB_URI="$SERVER_URI"
else
  trap 'kill $(jobs -p) 2>/dev/null || true' EXIT INT TERM
fi
cargo build --release --quiet
MONGOQ="$MONGOQ_ROOT/target/release/mongoq"
DB="mongoq_soak_$$"
work_dir="$(mktemp -d)"
ledger="$work_dir/ledger"
: > "$ledger"
mq() { "$MONGOQ" --db "$DB" "$@"; }
worker() {
  RUST_LOG=warn "$MONGOQ" --db "$DB" work --threads 4 --batch-size 50 --lease 2s \
    --exec sh -c "printf '%s %s\n' \"\$MONGOQ_JOB_ID\" \"\$PPID\" >> '$ledger'" >/dev/null 2>>"$work_dir/workers.log" &
  echo $!
}

mq init >/dev/null
pids=("$(worker)" "$(worker)" "$(worker)")
end=$(( $(date +%s) + seconds ))
enqueued=0
kills=0
while [ "$(date +%s)" -lt "$end" ]; do
  seq 1 500 | sed 's/.*/{"n": &}/' | mq enqueue --quiet >/dev/null
  enqueued=$(( enqueued + 500 ))
  sleep "0.$(( RANDOM % 9 + 1 ))"
  i=$(( RANDOM % 3 ))
  kill -KILL "${pids[$i]}" 2>/dev/null || true
  echo "${pids[$i]}" >> "$work_dir/killed"
  while kill -0 "${pids[$i]}" 2>/dev/null; do sleep 0.05; done
  kills=$(( kills + 1 ))
  pids[$i]="$(worker)"
  log "enqueued $enqueued, killed $kills workers"
done
for pid in "${pids[@]}"; do
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
done
RUST_LOG=warn "$MONGOQ" --db "$DB" work --drain --threads 4 --lease 2s \
  --exec sh -c "printf '%s %s\n' \"\$MONGOQ_JOB_ID\" \"\$PPID\" >> '$ledger'" 2>>"$work_dir/workers.log"

completed=$(mq stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"]["completed"])')
distinct=$(cut -d' ' -f1 "$ledger" | sort -u | wc -l)
runs=$(wc -l < "$ledger")
log "jobs $enqueued, completed $completed, ran $distinct distinct, $runs runs ($(( runs - distinct )) repeats after $kills kills)"
if [ "$completed" -ne "$enqueued" ] || [ "$distinct" -ne "$enqueued" ]; then
  log "FAIL: jobs were lost"; exit 1
fi
# A job may run again only because a worker that ran it was killed before
# its outcome was written: of each job's runs, all but the last must be by
# killed workers.
touch "$work_dir/killed"
if ! python3 - "$ledger" "$work_dir/killed" <<'PY'
import sys, collections
killed = set(open(sys.argv[2]).read().split())
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    job, pid = line.split()
    runs[job].append(pid)
bad = [(j, p) for j, p in runs.items() if len(p) > 1 and sum(x in killed for x in p) < len(p) - 1]
for job, pids in bad[:10]:
    print(f"job {job} ran {len(pids)} times by {pids}, not explained by kills", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
then
  log "FAIL: a job ran twice without a kill to explain it"; exit 1
fi
log "PASS"
