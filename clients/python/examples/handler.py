"""A mongoq --pipe handler in Python: one process per worker thread, many jobs.

    mongoq work --threads 4 --pipe /usr/bin/python3 /usr/share/doc/mongoq/examples/handler.py

What it returns becomes the job's `result`; `Permanent` fails the job without
a retry; any other exception fails this attempt (retried with back-off).
Standard library only: no pymongo needed on a worker host.
"""

from mongoq import Permanent, progress, serve


def handle(job):
    data = job["data"]
    if not isinstance(data, dict) or "to" not in data:
        raise Permanent("the job has no `to`: enqueue {\"to\": \"ada@example.com\"}")
    progress(0.5, "sending")
    # ... send the mail here ...
    return {"sent_to": data["to"], "attempt": job["attempt"]}


serve(handle)
