#!/usr/bin/env bash
# Regenerates the dashboard screenshots in docs/ (used by README.md): starts
# a local test server, fills a queue with an hour of varied history, serves
# the dashboard and shoots it with headless Chromium.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$MONGOQ_ROOT"

ensure_server
ensure_mongosh
ensure_chromium
[ -n "${MONGOQ_CHROMIUM:-}" ] || { log "no chromium: $MONGOQ_SKIP_BROWSER"; exit 1; }
# The worker and the dashboard are started as the binary itself (not
# through the shell function below), so their pids are theirs to stop.
cleanup() {
  local pids="${DASH_PID:-} ${WORK_PID:-}"
  if [ -n "${pids// /}" ]; then
    kill $pids 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 $pids 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL $pids 2>/dev/null || true
    wait $pids 2>/dev/null || true
  fi
  stop_server
}
trap cleanup EXIT INT TERM
start_server
cargo build --release --quiet
export MONGODB_URI="$SERVER_URI" MONGOQ_DB=screens
MONGOQ_BIN="$MONGOQ_ROOT/target/release/mongoq"
mongoq() { "$MONGOQ_BIN" --db screens "$@"; }
mongoq init >/dev/null

# An hour of history: completions and a few failures per minute.
mongosh --quiet "$SERVER_URI/screens" --eval '
  const now = Date.now(), docs = [];
  for (let m = 0; m < 60; m++) {
    const n = 20 + Math.round(15 * Math.sin(m / 6) + 10 * Math.random());
    for (let i = 0; i < n; i++) {
      const at = new Date(now - m * 60000 - Math.random() * 60000);
      docs.push({data: {task: "resize", image: `photo-${m}-${i}.png`}, status: "completed",
                 queue: "images", attempts: 1, completed_at: at, started_at: at});
    }
    if (m % 7 === 3) docs.push({data: {to: `user${m}@example.com`}, status: "failed", queue: "emails",
      attempts: 5, failed_at: new Date(now - m * 60000),
      last_error: "`send-mail` exited with code 75: 451 4.3.0 mail server temporarily unavailable",
      errors: [{attempt: 5, at: new Date(now - m * 60000), error: "451 4.3.0 mail server temporarily unavailable", worker: "mail-1:4242"}]});
  }
  db.queue.insertMany(docs);
  // A week of history as the workers keep it (<collection>_metrics),
  // which the charts of the overview and of the History page read.
  const minute = Math.floor(now / 60000) * 60000, metrics = [];
  for (let m = 0; m < 7 * 1440; m++) {
    const at = new Date(minute - m * 60000), day = Math.sin((m / 1440) * 2 * Math.PI);
    const n = Math.max(0, Math.round(25 + 15 * day + 8 * Math.random()));
    const busy = day > 0.5 ? 2 : 0;
    const wait = {}, run = {};
    wait["b" + (4 + busy)] = Math.round(n * 0.6); wait["b" + (5 + busy)] = Math.round(n * 0.3);
    wait["b" + (7 + busy)] = n - Math.round(n * 0.6) - Math.round(n * 0.3); wait.ms = n * 30 * (1 + busy);
    run.b8 = Math.round(n * 0.7); run.b9 = n - Math.round(n * 0.7); run.ms = n * 450;
    metrics.push({_id: {q: "images", m: at}, q: "images", at: at, completed: n,
                  retried: m % 11 === 0 ? 2 : 0, wait: wait, run: run});
    if (m % 7 === 3) metrics.push({_id: {q: "emails", m: at}, q: "emails", at: at, failed: 1, retried: 4,
                                   wait: {b6: 5, ms: 400}, run: {b11: 5, ms: 20000}});
  }
  db.queue_metrics.insertMany(metrics);'
# New thumbnails for three customers (groups), and some with no group.
for i in $(seq 1 25); do printf '{"task": "thumbnail", "image": "acme-%d.png"}\n' "$i"; done | scripts/enqueue.sh --queue images --group acme >/dev/null
for i in $(seq 1 9); do printf '{"task": "thumbnail", "image": "globex-%d.png"}\n' "$i"; done | scripts/enqueue.sh --queue images --group globex >/dev/null
for i in $(seq 1 3); do printf '{"task": "thumbnail", "image": "initech-%d.png"}\n' "$i"; done | scripts/enqueue.sh --queue images --group initech >/dev/null
for i in $(seq 1 3); do printf '{"task": "thumbnail", "image": "new-%d.png"}\n' "$i"; done | scripts/enqueue.sh --queue images >/dev/null
mongoq enqueue --delay 1h '{"report": "nightly"}' >/dev/null
mongoq schedule add nightly-report --cron "0 2 * * *" --tz Europe/Berlin --queue reports --data '{"report": "nightly"}' >/dev/null
mongoq schedule add thumbnails --every 10s --queue images --no-overlap --data '{"task": "sweep"}' >/dev/null
mongoq schedule add weekly-digest --cron "@weekly" --queue emails >/dev/null
mongoq schedule pause weekly-digest >/dev/null
mongoq pause emails --reason "mail server maintenance" >/dev/null
mongoq limit images --concurrency 8 >/dev/null
mongoq limit images --group-concurrency 2 >/dev/null
mongoq limit images --group acme --concurrency 4 >/dev/null
# A flow: an album waiting for its resizes (no worker serves `albums`).
flow="$(mktemp "${TMPDIR:-/tmp}/mongoq-screens-XXXXXX.json")"
cat >"$flow" <<'JSON'
{"queue": "albums", "jobs": [
  {"name": "resize-1", "data": {"task": "resize", "image": "trip-1.jpg"}},
  {"name": "resize-2", "data": {"task": "resize", "image": "trip-2.jpg"}},
  {"name": "resize-3", "data": {"task": "resize", "image": "trip-3.jpg"}},
  {"name": "album", "data": {"task": "album", "title": "Trip"}, "after": ["resize-1", "resize-2", "resize-3"]}
]}
JSON
album="$(mongoq enqueue --flow "$flow" | awk '$1 == "album" {print $2}')"
rm -f "$flow"
# Long-lived Python handlers (--pipe) that report progress as they go.
handler="$(mktemp "${TMPDIR:-/tmp}/mongoq-screens-XXXXXX.py")"
cat >"$handler" <<'PY'
import time
from mongoq_handler import serve, progress

def handle(job):
    for step in range(1, 61):
        progress(step / 60, "resizing %s: tile %d of 60" % (job["data"].get("image", "?"), step))
        time.sleep(1)

serve(handle)
PY
PYTHONPATH="$MONGOQ_ROOT/clients/python" RUST_LOG=warn "$MONGOQ_BIN" --db screens work --queue images --threads 4 \
  --worker-id render-1:812 --shutdown-grace 1s --pipe /usr/bin/python3 "$handler" >/dev/null 2>&1 &
WORK_PID=$!
sleep 6
port="$(free_port)"
"$MONGOQ_BIN" --db screens dashboard --listen "127.0.0.1:$port" >/dev/null 2>&1 &
DASH_PID=$!
sleep 1
failed="$(mongosh --quiet "$SERVER_URI/screens" --eval 'EJSON.stringify(db.queue.findOne({status: "failed"})._id)')"
shoot() {
  "$MONGOQ_CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,"$3" \
    --screenshot="docs/$1" "http://127.0.0.1:$port$2" 2>/dev/null
  log "docs/$1"
}
mkdir -p docs
shoot dashboard-overview.png / 620
shoot dashboard-failed.png "/jobs?status=failed" 520
shoot dashboard-job.png "/job?id=$(python3 -c 'import sys,urllib.parse;print(urllib.parse.quote(sys.argv[1]))' "$failed")" 760
shoot dashboard-workers.png /workers 300
shoot dashboard-running.png "/jobs?status=running" 360
shoot dashboard-queues.png /queues 360
shoot dashboard-groups.png "/groups?queue=images" 330
shoot dashboard-history.png "/history?range=24h" 900
shoot dashboard-schedules.png /schedules 330
shoot dashboard-flow.png "/job?id=%7B%22%24oid%22%3A%22$album%22%7D" 620
rm -f "$handler"
