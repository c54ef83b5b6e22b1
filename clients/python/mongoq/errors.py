"""What the client raises. Every message says what is wrong and what to do."""

from typing import Any, Optional


class MongoqError(Exception):
    """The base of every error this package raises on purpose."""


class InvalidJob(MongoqError, ValueError):
    """An option or a flow that cannot be enqueued; nothing was written."""


class DuplicateJob(MongoqError):
    """A pending or running job already holds the ``unique_key``; nothing
    was inserted. ``existing`` is that job's id when it could be read
    (``None`` inside a transaction, whose snapshot cannot see it)."""

    def __init__(self, unique_key: str, existing: Optional[Any]) -> None:
        self.unique_key = unique_key
        self.existing = existing
        held = "job %s" % existing if existing is not None else "another job"
        super().__init__(
            "a job with unique_key %r is already pending or running (%s); nothing was enqueued"
            % (unique_key, held)
        )


class JobNotFound(MongoqError, LookupError):
    """No job has this ``_id`` (never enqueued, purged, or expired by retention)."""

    def __init__(self, job_id: Any) -> None:
        self.job_id = job_id
        super().__init__("no job has _id %r (never enqueued, or purged since)" % (job_id,))


class JobFailed(MongoqError):
    """The job ended ``failed`` or ``cancelled``: it will not complete.
    ``error`` is its ``last_error``; ``status`` says which."""

    def __init__(self, job_id: Any, status: str, error: str) -> None:
        self.job_id = job_id
        self.status = status
        self.error = error
        super().__init__("job %s %s: %s" % (job_id, status, error))


class WaitTimeout(MongoqError, TimeoutError):
    """``Queue.wait`` gave up; the job stays queued and may still finish."""

    def __init__(self, job_id: Any, timeout: float) -> None:
        self.job_id = job_id
        super().__init__("job %s is not finished after %gs; it stays queued" % (job_id, timeout))
