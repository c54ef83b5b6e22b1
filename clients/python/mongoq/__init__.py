"""mongoq for Python: enqueue jobs (the producer client) and handle them
(the ``--pipe`` helper), in one package.

Producer (needs ``pymongo``)::

    from mongoq import Queue

    q = Queue("mongodb://localhost:27017")          # distributed_queue.queue
    job = q.enqueue({"to": "ada@example.com"}, queue="emails")
    print(q.wait(job, timeout=30))                  # its result, or JobFailed

Handler (standard library only), run by ``mongoq work --pipe python3 handler.py``::

    from mongoq import serve

    def handle(job):
        return {"sent": job["data"]["to"]}

    serve(handle)

Importing ``mongoq`` or ``mongoq.handler`` never imports pymongo: the
client's names (``Queue``, ``InsertedFlow``) load it on first use, so a
handler runs where pymongo is not installed.
"""

from typing import Any

from .errors import DuplicateJob, InvalidJob, JobFailed, JobNotFound, MongoqError, WaitTimeout
from .handler import PauseQueue, Permanent, Retry, Snooze, __version__, progress, serve

__all__ = [
    "Queue",
    "InsertedFlow",
    "Debounced",
    "Throttled",
    "MongoqError",
    "InvalidJob",
    "DuplicateJob",
    "JobNotFound",
    "JobFailed",
    "WaitTimeout",
    "serve",
    "progress",
    "Permanent",
    "Snooze",
    "Retry",
    "PauseQueue",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in ("Queue", "InsertedFlow", "Debounced", "Throttled"):
        try:
            from . import client
        except ImportError as missing:
            if missing.name not in ("pymongo", "bson"):
                raise
            raise ImportError(
                "mongoq.%s needs pymongo: `apt install python3-pymongo` (Debian's /usr/bin/python3) "
                "or `pip install pymongo`; the --pipe helper (mongoq.serve) does not" % name,
                name=missing.name,
            ) from None
        return getattr(client, name)
    raise AttributeError("module 'mongoq' has no attribute %r" % name)
