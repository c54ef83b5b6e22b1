"""Enqueue jobs from Python and wait for one's result (needs pymongo:
`apt install python3-pymongo` or `pip install pymongo`).

    MONGODB_URI=mongodb://localhost:27017 /usr/bin/python3 producer.py
"""

from mongoq import JobFailed, Queue

q = Queue()  # $MONGODB_URI, database distributed_queue, collection queue

# One job, with options; a second with the same unique_key raises DuplicateJob.
job = q.enqueue({"to": "ada@example.com"}, queue="default", priority=5, unique_key="welcome-ada")

# Many at once (1,000 per round trip), run no sooner than a minute from now.
q.enqueue_many(({"to": "user%d@example.com" % n} for n in range(100)), delay=60)

# A job that waits for another, and a flow inserted whole.
q.enqueue({"report": "daily"}, after=[job])
q.enqueue_flow({"jobs": [
    {"name": "fetch", "data": {"url": "https://example.com"}},
    {"name": "parse", "data": {}, "after": ["fetch"]},
]})

try:
    print("result:", q.wait(job, timeout=60))
except JobFailed as failed:
    print("failed:", failed.error)
print(q.stats()["counts"])
