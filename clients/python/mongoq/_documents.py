"""The documents a producer writes: one place, pure, no server.

Every field here is the one ``mongoq enqueue`` writes, with the same BSON
type (``priority`` and ``max_attempts`` as int64, ``attempts`` as int32,
``run_at`` always set), so the claim index orders a Python job exactly as a
job from the command line. DESIGN.md is the contract; the suite's
``python::the_client_and_the_cli_write_the_same_documents`` compares the
two writers field by field, so they cannot drift apart.
"""

import datetime
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from bson import encode
from bson.int64 import Int64
from bson.objectid import ObjectId

from .errors import InvalidJob

#: Most jobs one job may wait for (``after``), and most jobs in one flow.
MAX_AFTER = 10_000
MAX_FLOW_JOBS = 10_000
#: The longest queue name (as ``mongoq`` checks it).
MAX_QUEUE_NAME = 200
_INT64 = (-(2**63), 2**63 - 1)
_STEP_FIELDS = {"name", "data", "after", "if_dep_fails", "queue", "priority", "max_attempts"}


def check_queue_name(name: Any, what: str = "queue") -> str:
    """A queue name as workers take it (``--queue``), or :class:`InvalidJob`."""
    if not isinstance(name, str):
        raise InvalidJob("%s must be a string naming the queue, not %r" % (what, name))
    if not name or len(name) > MAX_QUEUE_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidJob(
            "%s %r is not a queue name: use 1 to %d characters, none of them a control character"
            % (what, name, MAX_QUEUE_NAME)
        )
    return name


def _int64(value: Any, what: str) -> Int64:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob("%s must be an integer, not %r" % (what, value))
    if not _INT64[0] <= value <= _INT64[1]:
        raise InvalidJob("%s %d does not fit in 64 bits" % (what, value))
    return Int64(value)


def _max_attempts(value: Any, what: str = "max_attempts") -> Optional[Int64]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**32 - 1:
        raise InvalidJob("%s must be a whole number of attempts from 1 up, not %r" % (what, value))
    return Int64(value)


def utc(moment: datetime.datetime, what: str = "run_at") -> datetime.datetime:
    """An aware datetime in UTC (a naive one is taken as UTC, as pymongo
    reads and writes them), cut to the millisecond BSON keeps."""
    if not isinstance(moment, datetime.datetime):
        raise InvalidJob("%s must be a datetime, not %r" % (what, moment))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    moment = moment.astimezone(datetime.timezone.utc)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def seconds(value: Any, what: str) -> float:
    """A duration given as seconds or a ``timedelta``; never negative."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise InvalidJob("%s must be a number of seconds (or a timedelta) of 0 or more, not %r" % (what, value))
    return float(value)


def id_value(value: Any) -> Any:
    """A job id as ``mongoq enqueue --after`` reads one: a 24-hex-digit
    string is an ObjectId; anything else is the id as given."""
    if isinstance(value, str) and ObjectId.is_valid(value) and len(value) == 24:
        return ObjectId(value)
    return value


def id_key(value: Any) -> bytes:
    """Equal for ids the server takes as equal: numbers by value (1, 1.0
    and Int64(1) are one job), anything else by its BSON encoding."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return b"number %d" % int(value)
    return encode({"": value})


def distinct(ids: Iterable[Any]) -> int:
    """How many distinct jobs ``ids`` names: a waiting job's ``deps_total``."""
    return len({id_key(i) for i in ids})


class Options:
    """The options of one ``enqueue``, checked once; see ``Queue.enqueue``."""

    def __init__(
        self,
        *,
        queue: Optional[str] = None,
        priority: int = 0,
        run_at: Optional[datetime.datetime] = None,
        max_attempts: Optional[int] = None,
        unique_key: Optional[str] = None,
        after: Optional[Sequence[Any]] = None,
        if_dep_fails: Optional[str] = None,
        expires_at: Optional[datetime.datetime] = None,
    ) -> None:
        self.queue = None if queue is None else check_queue_name(queue)
        self.expires_at = None if expires_at is None else utc(expires_at, "expires_at")
        self.priority = _int64(priority, "priority")
        self.run_at = None if run_at is None else utc(run_at)
        self.max_attempts = _max_attempts(max_attempts)
        if unique_key is not None and not isinstance(unique_key, str):
            raise InvalidJob("unique_key must be a string, not %r" % (unique_key,))
        self.unique_key = unique_key
        if after is not None and (isinstance(after, (str, bytes, Mapping)) or not isinstance(after, Iterable)):
            raise InvalidJob("after must be a list of job ids, e.g. after=[first_id], not %r" % (after,))
        self.after = [id_value(i) for i in after] if after is not None else []
        if len(self.after) > MAX_AFTER:
            raise InvalidJob("after lists %d jobs; at most %d may be waited on" % (len(self.after), MAX_AFTER))
        if if_dep_fails not in (None, "cancel", "run"):
            raise InvalidJob(
                "if_dep_fails %r is not a choice: use 'cancel' (the default: a failed dependency "
                "cancels this job) or 'run' (run it anyway)" % (if_dep_fails,)
            )
        if if_dep_fails is not None and after is None:
            raise InvalidJob("if_dep_fails is for a job that waits for others: give after=[...] too")
        self.if_dep_fails = if_dep_fails
        if self.unique_key is not None and after is not None:
            raise InvalidJob(
                "a job that waits for others (after) cannot have a unique_key: "
                "the key is held only by pending and running jobs"
            )

    @property
    def waits(self) -> bool:
        """Whether the job is inserted ``waiting`` (it has ``after``)."""
        return bool(self.after)

    def document(self, job_id: Any, data: Any, now: datetime.datetime) -> Dict[str, Any]:
        """The job document ``mongoq enqueue`` would write."""
        return self.maker(now)(job_id, data)

    def maker(self, now: datetime.datetime) -> Callable[[Any, Any], Dict[str, Any]]:
        """``make(job_id, data)``: the documents of many jobs with these
        options, cheaply (what varies is two fields; the rest is copied)."""
        status = "waiting" if self.after else "pending"
        priority = self.priority
        run_at = self.run_at or now
        tail: Dict[str, Any] = {}
        if self.max_attempts is not None:
            tail["max_attempts"] = self.max_attempts
        if self.queue is not None:
            tail["queue"] = self.queue
        if self.unique_key is not None:
            tail["unique_key"] = self.unique_key
        if self.expires_at is not None:
            tail["expires_at"] = self.expires_at
        if self.after:
            # One list for every document: the insert only reads it.
            tail["after"] = list(self.after)
            tail["deps_total"] = Int64(distinct(self.after))
            if self.if_dep_fails == "run":
                tail["if_dep_fails"] = "run"

        def make(job_id: Any, data: Any) -> Dict[str, Any]:
            document = {
                "_id": job_id,
                "data": data,
                "status": status,
                "priority": priority,
                "run_at": run_at,
                "attempts": 0,
            }
            if tail:
                document.update(tail)
            return document

        return make


def check_flow(flow: Mapping[str, Any], queue: Optional[str] = None) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """Checks a flow (the ``--flow`` file's shape, as a dict) whole, as
    ``mongoq enqueue --flow`` does; returns its steps and its queue."""
    if not isinstance(flow, Mapping):
        raise InvalidJob('a flow is a dict: {"jobs": [{"name": "a", "data": ..., "after": ["b"]}]}')
    unknown = set(flow) - {"queue", "jobs"}
    if unknown:
        raise InvalidJob("the flow has unknown fields %s; it takes 'queue' and 'jobs'" % sorted(unknown))
    steps = flow.get("jobs")
    if not isinstance(steps, Sequence) or isinstance(steps, (str, bytes)):
        raise InvalidJob('a flow needs "jobs": a list of {"name", "data", "after"} dicts')
    if not 1 <= len(steps) <= MAX_FLOW_JOBS:
        raise InvalidJob("a flow needs 1 to %d jobs, and this one has %d" % (MAX_FLOW_JOBS, len(steps)))
    flow_queue = flow.get("queue") if flow.get("queue") is not None else queue
    index: Dict[str, int] = {}
    for n, step in enumerate(steps):
        if not isinstance(step, Mapping):
            raise InvalidJob("job %d of the flow is not a dict with a name" % (n + 1))
        name = step.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidJob("job %d of the flow has an empty name; every job needs a unique `name`" % (n + 1))
        if name in index:
            raise InvalidJob("two jobs of the flow are named `%s`; names must be unique" % name)
        index[name] = n
        extra = set(step) - _STEP_FIELDS
        if extra:
            raise InvalidJob("job `%s`: unknown fields %s" % (name, sorted(extra)))
        try:
            Options(
                queue=step.get("queue") if step.get("queue") is not None else flow_queue,
                priority=step.get("priority", 0),
                max_attempts=step.get("max_attempts"),
                if_dep_fails=step.get("if_dep_fails"),
                after=step.get("after") or [],
            )
        except InvalidJob as error:
            raise InvalidJob("job `%s`: %s" % (name, error)) from None
    for step in steps:
        for name in step.get("after") or []:
            if name not in index:
                raise InvalidJob("job `%s` waits for `%s`, which is not a job of the flow" % (step["name"], name))
    cycle = _cycle(steps, index)
    if cycle:
        raise InvalidJob("the flow has a cycle, so none of it could run: %s" % " → ".join(cycle))
    return [dict(s) for s in steps], flow_queue


def _cycle(steps: Sequence[Mapping[str, Any]], index: Mapping[str, int]) -> Optional[List[str]]:
    """A cycle among the edges, as names from a step back to itself."""
    edges = [[index[n] for n in (s.get("after") or [])] for s in steps]
    colour = [0] * len(steps)  # 0 unseen, 1 on the path, 2 done
    for start in range(len(steps)):
        if colour[start]:
            continue
        stack = [(start, 0)]
        colour[start] = 1
        while stack:
            node, nxt = stack[-1]
            if nxt < len(edges[node]):
                stack[-1] = (node, nxt + 1)
                to = edges[node][nxt]
                if colour[to] == 0:
                    colour[to] = 1
                    stack.append((to, 0))
                elif colour[to] == 1:
                    path = [n for n, _ in stack]
                    names = [steps[n]["name"] for n in path[path.index(to):]]
                    return names + [steps[to]["name"]]
            else:
                colour[node] = 2
                stack.pop()
    return None


def awaited(steps: Sequence[Mapping[str, Any]]) -> Set[str]:
    """The names some step of a flow waits for."""
    return {name for s in steps for name in (s.get("after") or [])}
