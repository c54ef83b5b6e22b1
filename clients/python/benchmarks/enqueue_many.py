"""``Queue.enqueue_many`` against a raw ``insert_many`` of the same documents.

    python enqueue_many.py URI DATABASE JOBS ROUNDS

Each round inserts JOBS jobs both ways into a fresh collection (the two in
turn, which goes first alternating by round): ``insert_many`` of documents
built before its clock starts (the shape ``mongoq enqueue`` writes, ids
included), and ``Queue.enqueue_many`` of the bare data, which builds them
inside its time. Prints one JSON line: the seconds of each round, by way,
and the Python and pymongo versions. ``mongoq bench --only python`` runs it
and prints section 13.
"""

import json
import platform
import sys
import time

import pymongo
from bson.objectid import ObjectId

from mongoq import Queue
from mongoq._documents import Options


def main() -> None:
    uri, database, jobs, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    q = Queue(uri, db=database, collection="python_enqueue")
    data = [{"n": n, "to": "user%d@example.com" % n} for n in range(jobs)]
    seconds = {"insert_many": [], "enqueue_many": []}
    for r in range(rounds):
        ways = ("insert_many", "enqueue_many") if r % 2 == 0 else ("enqueue_many", "insert_many")
        for way in ways:
            q.collection.drop()
            q.collection.insert_one({"_id": "warm"})  # the collection exists before the clock
            if way == "insert_many":
                make = Options().maker(q.now())
                documents = [make(ObjectId(), d) for d in data]
                start = time.perf_counter()
                q.collection.insert_many(documents)
            else:
                q.now()  # the server clock's first reading is not an insert's cost
                start = time.perf_counter()
                q.enqueue_many(data)
            seconds[way].append(time.perf_counter() - start)
            inserted = q.collection.count_documents({}) - 1
            if inserted != jobs:
                raise SystemExit("%s inserted %d of %d jobs" % (way, inserted, jobs))
    q.collection.drop()
    seconds["python"] = "%s %s" % (platform.python_implementation(), platform.python_version())
    seconds["pymongo"] = pymongo.version
    seconds["executable"] = sys.executable
    print(json.dumps(seconds))


if __name__ == "__main__":
    main()
