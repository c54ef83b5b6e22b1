"""Write a mongoq ``--pipe`` handler in Python: one process, many jobs.

    from mongoq import serve, progress, Permanent   # or: from mongoq_handler import ...

    def handle(job):
        if "url" not in job["data"]:
            raise Permanent("no url in the job")   # failed now, no retry
        progress(0.5, "fetching")
        return {"length": len(job["data"]["url"])}  # the job's result

    serve(handle)

Run it with ``mongoq work --pipe /usr/bin/python3 handler.py``. ``serve``
says ``{"ready": true}`` once the module is imported (so a handler that
cannot start never costs a job an attempt), then calls ``handle(job)`` for
each job line on stdin and writes one answer per job on stdout:

- what ``handle`` returns becomes the job's ``result`` (it must be JSON);
- ``Permanent(...)`` fails the job without a retry;
- ``Snooze(seconds)`` says "not now": the job runs again that many seconds
  from now (on the server's clock), its attempt not charged;
- ``Retry(message, after=seconds)`` fails this attempt and waits that long
  for the next one instead of the back-off (an HTTP ``Retry-After``);
- ``PauseQueue(seconds, reason)`` says "back off": no worker starts a job of
  this job's queue for that long, and this job runs again when it ends;
- any other exception fails this attempt (retried with back-off), with the
  exception as ``last_error`` and its traceback on stderr;
- ``progress(fraction, note)`` reports how far the job got (0.0 to 1.0);
  mongoq stores the latest on the job about once a second.

stdout carries only the protocol: ``serve`` moves ``sys.stdout`` and file
descriptor 1 to stderr before anything runs, so a stray ``print()`` (or a
subprocess, or a C library writing to fd 1) ends up in mongoq's log, tagged
with the job, instead of corrupting an answer. Standard library only,
Python 3.8 or newer.
"""

import json
import os
import sys
import traceback
from typing import IO, Any, Callable, Dict, Optional

__all__ = ["serve", "progress", "Permanent", "Snooze", "Retry", "PauseQueue"]
__version__ = "0.2.0"


class Permanent(Exception):
    """Raise it from ``handle`` to fail the job now, without a retry."""


def _seconds(value: float, what: str) -> float:
    seconds = float(value)
    if not 0 <= seconds <= 365 * 86400:
        raise ValueError("%s must be 0 to a year of seconds, not %r" % (what, value))
    return seconds


class Snooze(Exception):
    """Raise ``Snooze(seconds)`` from ``handle`` for "not now": the job runs
    again that many seconds from now, its attempt not charged (a worker
    fails a job snoozed more than its ``--max-snoozes``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = _seconds(seconds, "Snooze(seconds)")
        super().__init__("snoozed for %gs" % self.seconds)


class PauseQueue(Exception):
    """Raise ``PauseQueue(seconds, reason)`` from ``handle`` when a remote
    API says "back off" (an HTTP 429): no worker starts another job of this
    job's queue for ``seconds`` (fleet-wide), and this job runs again when
    the pause ends, its attempt not charged. ``mongoq stats``, the dashboard
    and ``/metrics`` show the pause, its end and ``reason``."""

    def __init__(self, seconds: float, reason: str = "paused by its handler") -> None:
        self.seconds = _seconds(seconds, "PauseQueue(seconds)")
        self.reason = str(reason)
        super().__init__(self.reason)


class Retry(Exception):
    """Raise ``Retry(message, after=seconds)`` from ``handle`` to fail this
    attempt and wait ``after`` seconds for the next (say, an HTTP
    ``Retry-After``) instead of the exponential back-off."""

    def __init__(self, message: str, after: Optional[float] = None) -> None:
        self.after = None if after is None else _seconds(after, "Retry(after=)")
        super().__init__(message)


_protocol: Optional[int] = None  # the real stdout's descriptor, once serve() has taken it
_current_id: Any = None  # the id of the job being handled


def _send(message: Dict[str, Any]) -> None:
    if _protocol is None:
        raise RuntimeError("the protocol is not open: call serve(handle) first")
    data = (json.dumps(message, allow_nan=False, separators=(",", ":")) + "\n").encode()
    # One write per message, straight to the descriptor (no buffer to
    # flush); a blocking pipe takes it whole, the loop covers a signal.
    while data:
        written = os.write(_protocol, data)
        data = data[written:]


def progress(fraction: float, note: Optional[str] = None) -> None:
    """Report how far the current job got: ``fraction`` from 0.0 to 1.0."""
    if _protocol is None or _current_id is None:
        raise RuntimeError("progress() is for use inside a handler run by serve()")
    fraction = min(1.0, max(0.0, float(fraction)))
    if fraction != fraction:  # NaN is not JSON
        return
    message = {"id": _current_id, "progress": fraction}
    if note is not None:
        message["note"] = str(note)
    _send(message)


def _answer(job_id: Any, handle: Callable[[Dict[str, Any]], Any], job: Dict[str, Any]) -> Dict[str, Any]:
    try:
        result = handle(job)
    except Permanent as error:
        return {"id": job_id, "ok": False, "error": str(error) or "Permanent", "retry": False}
    except Snooze as snooze:
        return {"id": job_id, "snooze": snooze.seconds}
    except PauseQueue as pause:
        return {"id": job_id, "pause": pause.seconds, "reason": pause.reason}
    except Retry as error:
        answer = {"id": job_id, "ok": False, "error": str(error) or "Retry", "retry": True}
        if error.after is not None:
            answer["retry_after"] = error.after
        return answer
    except Exception as error:  # noqa: BLE001 - every failure is reported
        traceback.print_exc(file=sys.stderr)
        return {
            "id": job_id,
            "ok": False,
            "error": "%s: %s" % (type(error).__name__, error),
            "retry": True,
        }
    return {"id": job_id, "ok": True, "result": result}


def _send_answer(answer: Dict[str, Any]) -> None:
    try:
        _send(answer)
    except (TypeError, ValueError) as error:
        # What handle() returned is not JSON (or holds NaN): the job fails
        # for good, since running it again returns the same.
        _send({
            "id": answer["id"],
            "ok": False,
            "error": ("the handler's result is not JSON (%s): %r" % (error, answer.get("result")))[:500],
            "retry": False,
        })


def serve(handle: Callable[[Dict[str, Any]], Any], stdin: Optional[IO[bytes]] = None) -> None:
    """Run ``handle(job)`` for each job mongoq sends, until stdin closes."""
    global _protocol, _current_id
    # The protocol keeps the real stdout on a descriptor of its own; fd 1
    # and sys.stdout become stderr, so nothing else can write answers.
    sys.stdout.flush()
    _protocol = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    source = stdin if stdin is not None else sys.stdin.buffer
    _send({"ready": True})
    for line in iter(source.readline, b""):
        line = line.strip()
        if not line:
            continue
        job = json.loads(line)
        _current_id = job.get("id")
        try:
            _send_answer(_answer(_current_id, handle, job))
        finally:
            _current_id = None
