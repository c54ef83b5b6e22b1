#!/usr/bin/env bash
# A producer script as users write them: insert jobs with mongosh.
#
#   scripts/enqueue.sh '{"to": "ada@example.com"}' '{"to": "bob@example.com"}'
#   generate-jobs | scripts/enqueue.sh              # one JSON document per line
#   scripts/enqueue.sh --priority 10 --delay 60 '{"report": "daily"}'
#   scripts/enqueue.sh --queue emails --unique-key welcome-42 '{"to": 42}'
#   scripts/enqueue.sh --group acme '{"invoice": 7}'   # the customer's group
#
# Environment: MONGODB_URI (default mongodb://localhost:27017), MONGOQ_DB
# (default distributed_queue), MONGOQ_COLLECTION (default queue), MONGOSH
# (default: mongosh on PATH).
#
# A job needs only {data, status: "pending"}; priority, run_at,
# max_attempts, queue, group and unique_key are optional. A job whose unique_key a
# pending or running job already has is skipped (MongoDB's unique index
# refuses it), and the script says so and still exits 0. The JSON is passed to mongosh in an environment
# variable and parsed there with EJSON.parse, never spliced into code.
set -euo pipefail

priority=0
delay=0
max_attempts=""
queue=""
group=""
unique_key=""
while [ $# -gt 0 ]; do
  case "$1" in
    --priority) priority="$2"; shift 2 ;;
    --delay) delay="$2"; shift 2 ;;          # seconds
    --max-attempts) max_attempts="$2"; shift 2 ;;
    --queue) queue="$2"; shift 2 ;;
    --group) group="$2"; shift 2 ;;
    --unique-key) unique_key="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    --) shift; break ;;
    -*) echo "enqueue.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
for n in "$priority" "$delay" ${max_attempts:+"$max_attempts"}; do
  [[ "$n" =~ ^-?[0-9]+$ ]] || { echo "enqueue.sh: '$n' is not an integer" >&2; exit 2; }
done

if [ $# -gt 0 ]; then
  JOBS="$(printf '%s\n' "$@")"
else
  JOBS="$(cat)"
fi
export JOBS PRIORITY="$priority" DELAY="$delay" MAX_ATTEMPTS="$max_attempts" QUEUE="$queue" GROUP="$group" UNIQUE_KEY="$unique_key"
export MONGOQ_DB="${MONGOQ_DB:-distributed_queue}" MONGOQ_COLLECTION="${MONGOQ_COLLECTION:-queue}"

"${MONGOSH:-mongosh}" --quiet "${MONGODB_URI:-mongodb://localhost:27017}" --eval '
  const coll = db.getSiblingDB(process.env.MONGOQ_DB).getCollection(process.env.MONGOQ_COLLECTION);
  const runAt = new Date(Date.now() + 1000 * Number(process.env.DELAY));
  const docs = process.env.JOBS.split("\n").filter(l => l.trim() !== "").map((line, i) => {
    let data;
    try { data = EJSON.parse(line); } catch (e) { throw new Error(`line ${i + 1} is not valid JSON: ${e.message}`); }
    const job = { data, status: "pending", priority: Number(process.env.PRIORITY), run_at: runAt };
    if (process.env.MAX_ATTEMPTS !== "") job.max_attempts = Number(process.env.MAX_ATTEMPTS);
    if (process.env.QUEUE !== "") job.queue = process.env.QUEUE;
    if (process.env.GROUP !== "") job.group = process.env.GROUP;
    if (process.env.UNIQUE_KEY !== "") job.unique_key = process.env.UNIQUE_KEY;
    return job;
  });
  if (process.env.UNIQUE_KEY !== "" && docs.length > 1) {
    throw new Error("--unique-key applies to one job; give one JSON document");
  }
  let inserted = docs.length, duplicates = 0;
  if (docs.length > 0) {
    try {
      coll.insertMany(docs, { ordered: false });
    } catch (e) {
      const errors = e.writeErrors || (e.code === 11000 ? [e] : null);
      if (!errors || errors.some(w => (w.code ?? w.err?.code) !== 11000)) throw e;
      duplicates = errors.length;
      inserted -= duplicates;
    }
  }
  print(`enqueued ${inserted} jobs`);
  if (duplicates > 0) print(`skipped ${duplicates}: a pending or running job already has unique_key ${process.env.UNIQUE_KEY}`);
'
