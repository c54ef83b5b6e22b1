#!/usr/bin/env bash
# Fleet-wide limits under a backlog (issue 24), on a fresh local test server:
#   scripts/limits-fleet.sh rate   # --rate 10/1s, 8 workers x 4 threads, 150 jobs of 10 ms
#   scripts/limits-fleet.sh conc   # --concurrency 8, 3 workers x 8 threads, 400 jobs of 50 ms
# Each job's start and end are written by the job itself (a --pipe Python
# handler, one process per thread) to a ledger; the rate run prints the starts in the first 10 s
# after the first one and the busiest 1 s window, the concurrency run the
# jobs per second (8 slots of 50 ms allow 160/s) and the most at once.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$MONGOQ_ROOT"
mode="${1:?usage: scripts/limits-fleet.sh rate|conc}"
ensure_server
ensure_mongosh
cargo build --release --quiet
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; stop_server' EXIT INT TERM
start_server
export MONGODB_URI="$SERVER_URI"
bin=target/release/mongoq
"$bin" init >/dev/null
ledger="$SERVER_DIR/ledger"; : >"$ledger"
case "$mode" in
  rate) "$bin" limit default --rate 10/1s >/dev/null; jobs=150; procs=8; threads=4; secs=0.01 ;;
  conc) "$bin" limit default --concurrency 8 >/dev/null; jobs=400; procs=3; threads=8; secs=0.05 ;;
  *) echo "unknown mode $mode (rate or conc)" >&2; exit 64 ;;
esac
mongosh --quiet "$MONGODB_URI/distributed_queue" --eval \
  "let d=[]; for (let i=0;i<$jobs;i++) d.push({data:{n:i},status:'pending'}); db.queue.insertMany(d)" >/dev/null
# A long-lived handler per thread (--pipe, /usr/bin/python3) that sleeps
# for the job and writes its real start and end: no process per job.
handler='import json, sys, time
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    start = time.time_ns()
    time.sleep(float(sys.argv[2]))
    with open(sys.argv[1], "a") as ledger:
        ledger.write(f"{start} {time.time_ns()}\n")
    print(json.dumps({"id": job["id"], "ok": True}), flush=True)'
for i in $(seq "$procs"); do
  RUST_LOG=warn "$bin" work --threads "$threads" --drain --pipe /usr/bin/python3 -c "$handler" "$ledger" "$secs" \
    >"$SERVER_DIR/worker-$i.log" 2>&1 &
  pids+=($!)
done
if [ "$mode" = rate ]; then sleep 14; kill -TERM "${pids[@]}"; fi
wait "${pids[@]}" || true
python3 - "$ledger" "$mode" <<'PY'
import sys
rows = [tuple(int(x) / 1e9 for x in line.split()) for line in open(sys.argv[1]) if line.strip()]
if not rows:
    sys.exit("no job ran: see the worker logs")
if sys.argv[2] == "rate":
    starts = sorted(r[0] for r in rows)
    first = sum(1 for s in starts if s < starts[0] + 10)
    busiest = max(sum(1 for s in starts if a <= s < a + 1) for a in starts)
    print(f"rate 10/1s: {first} starts in the first 10 s after the first ({first} % of the rate), busiest 1 s window {busiest}")
else:
    t0, t1 = min(r[0] for r in rows), max(r[1] for r in rows)
    events = sorted([(r[0], 1) for r in rows] + [(r[1], -1) for r in rows])
    now = most = 0
    for _, d in events:
        now += d
        most = max(most, now)
    print(f"concurrency 8: {len(rows)} jobs in {t1 - t0:.2f} s = {len(rows) / (t1 - t0):.1f} jobs/s ({100 * len(rows) / (t1 - t0) / 160:.0f} % of the 160/s 8 slots allow), most at once {most}")
PY
