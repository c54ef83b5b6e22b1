#!/usr/bin/env bash
# The first thing to run: mongoq doing what it is for, in about two minutes.
#
# Uses MONGODB_URI when set; otherwise starts a local test server and stops
# it at the end: one already installed, else secantusd-py from its wheel
# (seconds; MONGOQ_TEST_SERVER=rs|py chooses). Then, against the database
# `mongoq_demo` (MONGOQ_DB to change it, so a demo against a real deployment
# does not touch the real queue):
#
#   1. enqueues jobs the way a shell script does (mongosh, installed if
#      missing), and with `mongoq enqueue` (a priority, a delay);
#   2. enqueues a small flow: two reports, then a merge that waits for both;
#   3. adds a schedule that ticks every second;
#   4. runs a worker as a service would, with a Python handler (`--pipe`
#      and the helper in clients/python), until every job is done, then
#      stops it with SIGTERM, as systemd does;
#   5. shows the stats, the merge's result and the dependencies it saw.
#
# The build is a debug one (`cargo build`): a release build takes minutes
# longer, and it is what scripts/test.sh builds too, so the tests reuse it.
set -euo pipefail
MONGOQ_TEST_SERVER_SET="${MONGOQ_TEST_SERVER:-}"
source "$(dirname "$0")/lib.sh"
cd "$MONGOQ_ROOT"
started=$SECONDS

# mongosh comes from npm: fetch it while cargo builds.
ensure_mongosh >"${TMPDIR:-/tmp}/mongoq-demo-npm.log" 2>&1 &
npm_pid=$!
log "building mongoq (cargo build: about 2 minutes the first time)"
cargo build --quiet
wait "$npm_pid" || { cat "${TMPDIR:-/tmp}/mongoq-demo-npm.log" >&2; exit 1; }
ensure_mongosh

if [ -z "${MONGODB_URI:-}" ]; then
  pick_installed_server
  ensure_server
  trap stop_server EXIT INT TERM
  start_server
  export MONGODB_URI="$SERVER_URI"
fi
export MONGOQ_DB="${MONGOQ_DB:-mongoq_demo}"
mongoq() { "$MONGOQ_ROOT/target/debug/mongoq" --db "$MONGOQ_DB" "$@"; }
python=/usr/bin/python3
[ -x "$python" ] || python=python3
work="$(mktemp -d "${TMPDIR:-/tmp}/mongoq-demo.XXXXXX")"
cleanup() {
  [ -z "${worker:-}" ] || kill -KILL "$worker" 2>/dev/null || true
  rm -rf "$work"
  stop_server
}
trap cleanup EXIT INT TERM

mongoq init
log "1. 8 jobs from a shell script (mongosh), 2 with mongoq enqueue"
for i in $(seq 1 8); do printf '{"task": "resize", "image": "photo-%d.png"}\n' "$i"; done | scripts/enqueue.sh
mongoq enqueue --priority 10 '{"task": "urgent-report"}' >/dev/null
mongoq enqueue --delay 2s '{"task": "reminder"}' >/dev/null

log "2. a flow: two reports, then a merge that waits for both"
cat >"$work/flow.json" <<'EOF'
{"jobs": [
  {"name": "sales", "data": {"task": "report", "of": "sales"}},
  {"name": "costs", "data": {"task": "report", "of": "costs"}},
  {"name": "merge", "data": {"task": "merge"}, "after": ["sales", "costs"]}
]}
EOF
mongoq enqueue --flow "$work/flow.json" | tee "$work/flow.ids"
merge_id="$(awk '$1 == "merge" {print $2}' "$work/flow.ids")"

log "3. a schedule: a job every second (removed after a few ticks)"
mongoq schedule add heartbeat --every 1s --data '{"task": "heartbeat"}' >/dev/null
mongoq stats

log "4. a worker with a Python handler (--pipe $python, the helper in clients/python)"
cat >"$work/handler.py" <<EOF
import sys, time
sys.path.insert(0, "$MONGOQ_ROOT/clients/python")
from mongoq_handler import serve, progress

def handle(job):
    data = job["data"]
    time.sleep(0.2)  # the work
    if data["task"] == "resize":
        return {"thumbnail": data["image"].replace(".png", "-small.png")}
    if data["task"] == "report":
        progress(0.5, "adding up")
        return {"of": data["of"], "total": {"sales": 1200, "costs": 700}[data["of"]]}
    if data["task"] == "merge":
        totals = {d["result"]["of"]: d["result"]["total"] for d in job["deps"]}
        return {"profit": totals["sales"] - totals["costs"]}
    return {"done": data["task"]}

serve(handle)
EOF
# The binary itself in the background (not the shell function), so that
# $! is its pid and SIGTERM reaches it.
"$MONGOQ_ROOT/target/debug/mongoq" --db "$MONGOQ_DB" work --threads 4 \
  --pipe "$python" "$work/handler.py" 2>"$work/worker.log" &
worker=$!
# The dashboard would show all of this live: `mongoq dashboard` serves it
# (http://127.0.0.1:8080/ by default).
log "   (to watch it in a browser: MONGODB_URI=$MONGODB_URI $MONGOQ_ROOT/target/debug/mongoq --db $MONGOQ_DB dashboard, then open http://127.0.0.1:8080/)"
# Three ticks, then the schedule goes; its jobs stay and are run.
deadline=$((SECONDS + 60))
until [ "$(mongoq schedule list --json | "$python" -c 'import json,sys; print(json.load(sys.stdin)[0]["fired"])')" -ge 3 ]; do
  [ "$SECONDS" -lt "$deadline" ] || { log "the schedule did not tick"; cat "$work/worker.log" >&2; exit 1; }
  sleep 0.5
done
mongoq schedule remove heartbeat >/dev/null
# Done when nothing is pending, waiting or running: the delayed job too.
unfinished() {
  mongoq stats --json | "$python" -c 'import json,sys; c=json.load(sys.stdin)["counts"]; print(sum(c.get(s, 0) for s in ("pending", "waiting", "running")))'
}
until [ "$(unfinished)" -eq 0 ]; do
  [ "$SECONDS" -lt "$deadline" ] || { log "jobs were left unfinished"; mongoq stats >&2; cat "$work/worker.log" >&2; exit 1; }
  sleep 0.5
done
log "   every job is done: stopping the worker with SIGTERM, as systemd does"
kill -TERM "$worker"
wait "$worker"
worker=""

log "5. the stats, and the merge's result (from both reports' results)"
mongoq stats
mongoq show "$merge_id" 2>/dev/null | "$python" -c 'import json,sys; j=json.load(sys.stdin); print("merge:", j["status"], "result", json.dumps(j["result"]))'
failed="$(mongoq stats --json | "$python" -c 'import json,sys; c=json.load(sys.stdin)["counts"]; print(sum(c.get(s, 0) for s in ("failed", "cancelled")))')"
if [ "$failed" -ne 0 ]; then
  log "$failed jobs did not complete"; exit 1
fi
log "demo finished in $((SECONDS - started)) s: every job completed"
