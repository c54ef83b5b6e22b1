"""The producer's side: enqueue jobs from Python, wait for their results.

    from mongoq import Queue

    q = Queue("mongodb://localhost:27017")
    job = q.enqueue({"to": "ada@example.com"}, queue="emails", priority=5)
    print(q.wait(job, timeout=30))      # the handler's result, or JobFailed

A ``Queue`` writes the documents DESIGN.md describes, field for field what
``mongoq enqueue`` writes (the suite compares them), through pymongo's
``MongoClient``. Every write takes ``session=``, so a job can be enqueued
inside the caller's transaction (the outbox pattern): it exists, and wakes
the workers, only if the transaction commits.

Two things a producer cannot do alone are left to the workers, as for any
producer that writes plain documents (``mongosh``, a shell script):

- a job enqueued with ``after=`` inside a transaction is linked to its
  dependencies by a worker's flow sweep after the commit (within seconds);
- ``cancel`` of a job that other jobs wait on cancels those dependents at
  the next flow sweep of a running worker (within 10 s), where
  ``mongoq cancel`` settles them at once.
"""

import datetime
import itertools
import os
import time
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence

from bson.errors import InvalidDocument
from bson.objectid import ObjectId
from pymongo import MongoClient
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from . import _documents
from ._clock import ServerClock
from ._ids import new_ids
from ._documents import Options, awaited, check_flow, id_key, id_value
from .errors import DuplicateJob, InvalidJob, JobFailed, JobNotFound, MongoqError, WaitTimeout

__all__ = ["Queue", "InsertedFlow", "Debounced", "Throttled"]

#: Rounds an enqueue of a key goes when racing other enqueues of it.
_ROUNDS = 20


class Debounced(NamedTuple):
    """What :meth:`Queue.debounce` did: the job holding the data, and
    whether it replaced a pending job's data (else it inserted one)."""

    id: Any
    replaced: bool


class Throttled(NamedTuple):
    """What :meth:`Queue.throttle` did: the job kept, and whether this
    enqueue was it (else it was dropped)."""

    id: Any
    kept: bool

DEFAULT_URI = "mongodb://localhost:27017"
#: Jobs per ``insert_many`` call of ``enqueue_many`` (pymongo splits a call
#: into messages of at most 48 MB itself): 10,000 in one call took 0.78x the
#: time of ten calls of 1,000 on the test server, and memory stays at one
#: batch of an iterator however long it is.
BATCH = 10_000
#: Jobs per insert of a flow (at most 10,000 jobs in all).
FLOW_BATCH = 1_000
#: Ids per ``$in`` while linking (well under the 16 MB command limit).
_CHUNK = 5_000
_FINISHED = ["completed", "failed", "cancelled"]


class InsertedFlow:
    """What :meth:`Queue.enqueue_flow` inserted: the flow's id (``flow.id``
    on each of its jobs) and each step's job id by name, in the flow's order."""

    def __init__(self, flow: ObjectId, jobs: Dict[str, ObjectId]) -> None:
        self.flow = flow
        self.jobs = jobs

    def __getitem__(self, name: str) -> ObjectId:
        return self.jobs[name]

    def __repr__(self) -> str:
        return "InsertedFlow(flow=%r, jobs=%r)" % (self.flow, self.jobs)


class Queue:
    """One mongoq queue collection (default ``distributed_queue.queue``).

    ``uri`` defaults to ``$MONGODB_URI``, then ``mongodb://localhost:27017``,
    as for ``mongoq``. Pass ``client=`` to share a ``MongoClient`` you
    already have (a transaction's session must come from the same client);
    other keyword arguments go to ``MongoClient``.
    """

    def __init__(
        self,
        uri: Optional[str] = None,
        db: str = "distributed_queue",
        collection: str = "queue",
        *,
        client: "Optional[MongoClient[Dict[str, Any]]]" = None,
        **client_options: Any,
    ) -> None:
        if client is None:
            client = MongoClient(uri or os.environ.get("MONGODB_URI") or DEFAULT_URI, **client_options)
        self.client = client
        self.collection = client[db][collection]
        self._controls = client[db][collection + "_queues"]
        self._clock = ServerClock(self._hello)

    def _hello(self) -> Any:
        try:
            return self.client.admin.command("hello")
        except OperationFailure:  # a server older than MongoDB 4.4.2
            return self.client.admin.command("isMaster")

    def now(self) -> datetime.datetime:
        """The server's clock now (UTC), which every ``run_at`` is compared with."""
        return self._clock.now()

    def _options(
        self, delay: Any, run_at: Any, expires_in: Any = None, expires_at: Any = None, **options: Any
    ) -> Options:
        if delay is not None and run_at is not None:
            raise InvalidJob("give delay or run_at, not both")
        if expires_in is not None and expires_at is not None:
            raise InvalidJob("give expires_in or expires_at, not both")
        if delay is not None:
            run_at = self.now() + datetime.timedelta(seconds=_documents.seconds(delay, "delay"))
        if expires_in is not None:
            expires_at = self.now() + datetime.timedelta(seconds=_documents.seconds(expires_in, "expires_in"))
        return Options(run_at=run_at, expires_at=expires_at, **options)

    # ------------------------------------------------------------------
    # Enqueueing

    def enqueue(
        self,
        data: Any,
        *,
        queue: Optional[str] = None,
        priority: int = 0,
        delay: Any = None,
        run_at: Optional[datetime.datetime] = None,
        max_attempts: Optional[int] = None,
        unique_key: Optional[str] = None,
        after: Optional[Sequence[Any]] = None,
        if_dep_fails: Optional[str] = None,
        expires_in: Any = None,
        expires_at: Optional[datetime.datetime] = None,
        session: Any = None,
    ) -> ObjectId:
        """Inserts one job and returns its ``_id``.

        - ``data``: the payload, anything BSON holds (dicts, lists, numbers,
          strings, datetimes, ObjectIds...).
        - ``queue``: the named queue (default: the ``default`` queue).
        - ``priority``: higher runs first (default 0).
        - ``delay`` (seconds or a ``timedelta``, counted on the server's
          clock) or ``run_at`` (a ``datetime``; naive means UTC): not before.
        - ``max_attempts``: attempts before ``failed`` (default: the worker's).
        - ``unique_key``: at most one pending or running job holds it; a
          second raises :class:`DuplicateJob` naming the first.
        - ``after``: ids of jobs this one waits for (inserted ``waiting``,
          released when all completed); ``if_dep_fails="run"`` runs it even
          if one fails or is cancelled (default ``"cancel"``). A dependency
          that does not exist raises :class:`InvalidJob` and nothing stays.
        - ``expires_in`` (seconds or a ``timedelta``, on the server's clock)
          or ``expires_at`` (a ``datetime``): not started by then, it never
          starts; it ends ``cancelled`` with ``expired: True`` and the reason.
        - ``session``: a ``ClientSession`` of this client; inside a
          transaction the job exists only if it commits.
        """
        options = self._options(
            delay, run_at, expires_in, expires_at, queue=queue, priority=priority,
            max_attempts=max_attempts, unique_key=unique_key, after=after, if_dep_fails=if_dep_fails,
        )
        job_id = ObjectId()
        document = options.document(job_id, data, self.now())
        if options.waits:
            self._insert_waiting([document], session)
            return job_id
        try:
            self.collection.insert_one(document, session=session)
        except DuplicateKeyError:
            if unique_key is None:
                raise
            existing = None if session is not None else self._holder(unique_key)
            raise DuplicateJob(unique_key, existing) from None
        except InvalidDocument as error:
            raise InvalidJob("the job's data cannot be stored as BSON: %s; nothing was enqueued" % error) from None
        return job_id

    def _holder(self, unique_key: str) -> Any:
        """The ``_id`` of the pending or running job holding ``unique_key``."""
        held = self.collection.find_one(
            {"unique_key": unique_key, "status": {"$in": ["pending", "running"]}}, {"_id": 1}
        )
        return None if held is None else held["_id"]

    def debounce(self, data: Any, unique_key: str, seconds: Any, **options: Any) -> Debounced:
        """Debounce (``mongoq enqueue --unique-key K --debounce D``): the
        last of a burst of enqueues of ``unique_key`` runs, once, ``seconds``
        after the burst. Replaces the data of the pending job holding the
        key and pushes its start to the server's now + ``seconds``, or
        inserts one; a job of the key already running gives the key up and
        the new data runs after it. ``options``: those of :meth:`enqueue`
        but ``delay``, ``run_at`` and ``after``.
        """
        window = _documents.seconds(seconds, "seconds")
        for name in ("delay", "run_at", "after", "session"):
            if options.get(name) is not None:
                # A transaction's duplicate key aborts it: debounce decides
                # its races by the unique index, outside one.
                raise InvalidJob("debounce sets the start itself and takes no %s" % name)
        for _ in range(_ROUNDS):
            run_at = self.now() + datetime.timedelta(seconds=window)
            held = self.collection.find_one_and_update(
                {"unique_key": unique_key, "status": "pending"},
                {"$set": {"data": data, "run_at": run_at}},
                projection={"_id": 1},
            )
            if held is not None:
                return Debounced(held["_id"], True)
            try:
                return Debounced(self.enqueue(data, unique_key=unique_key, run_at=run_at, **options), False)
            except DuplicateJob:
                self.collection.update_one(
                    {"unique_key": unique_key, "status": "running"},
                    {"$unset": {"unique_key": ""}, "$set": {"gave_key": unique_key}},
                )
        raise MongoqError("enqueues of unique_key %r kept overtaking this one; nothing was enqueued by it" % unique_key)

    def throttle(self, data: Any, unique_key: str, seconds: Any, **options: Any) -> Throttled:
        """Throttle (``mongoq enqueue --unique-key K --throttle D``): the first
        enqueue of ``unique_key`` is kept and runs; the rest are dropped for
        ``seconds`` after it (also once it completed). ``options``: those of
        :meth:`enqueue` but ``after``.
        """
        window = _documents.seconds(seconds, "seconds")
        if options.get("after") is not None or options.get("session") is not None:
            raise InvalidJob("throttle takes no after or session")
        opts = self._options(
            options.pop("delay", None), options.pop("run_at", None),
            options.pop("expires_in", None), options.pop("expires_at", None),
            unique_key=unique_key, **options,
        )
        for _ in range(_ROUNDS):
            now = self.now()
            kept = self.collection.find_one(
                {"unique_key": unique_key, "throttle_until": {"$gt": now}}, {"_id": 1}
            )
            if kept is not None:
                return Throttled(kept["_id"], False)
            job_id = ObjectId()
            document = opts.document(job_id, data, now)
            document["throttle_until"] = now + datetime.timedelta(seconds=window)
            try:
                self.collection.insert_one(document)
                return Throttled(job_id, True)
            except DuplicateKeyError:
                holder = self._holder(unique_key)
                if holder is not None:
                    return Throttled(holder, False)
        raise MongoqError("enqueues of unique_key %r kept overtaking this one; nothing was enqueued by it" % unique_key)

    def enqueue_many(
        self,
        data: Iterable[Any],
        *,
        queue: Optional[str] = None,
        priority: int = 0,
        delay: Any = None,
        run_at: Optional[datetime.datetime] = None,
        max_attempts: Optional[int] = None,
        after: Optional[Sequence[Any]] = None,
        if_dep_fails: Optional[str] = None,
        expires_in: Any = None,
        expires_at: Optional[datetime.datetime] = None,
        session: Any = None,
    ) -> List[ObjectId]:
        """Inserts one job per item of ``data``, all with the same options
        (those of :meth:`enqueue` but ``unique_key``, which is for one job),
        10,000 per ``insert_many``; returns their ids in order.

        Jobs are inserted in order: if an insert fails, the jobs before the
        one that failed are in (their ids are on the exception as
        ``enqueued``) and nothing after it was sent.
        """
        options = self._options(
            delay, run_at, expires_in, expires_at, queue=queue, priority=priority,
            max_attempts=max_attempts, after=after, if_dep_fails=if_dep_fails,
        )
        make = options.maker(self.now())
        ids: List[ObjectId] = []
        batch: List[Dict[str, Any]] = []

        def flush() -> None:
            try:
                if options.waits:
                    self._insert_waiting(batch, session)
                else:
                    self.collection.insert_many(batch, session=session)
            except InvalidDocument as error:
                failed = InvalidJob("a job's data cannot be stored as BSON: %s" % error)
                failed.enqueued = ids[: len(ids) - len(batch)]  # type: ignore[attr-defined]
                raise failed from None
            except PyMongoError as error:
                # An ordered insert stops at the failing job: those before
                # it in this batch went in too.
                went_in = 0
                if isinstance(error, BulkWriteError):
                    went_in = int(error.details.get("nInserted", 0))
                error.enqueued = ids[: len(ids) - len(batch) + went_in]  # type: ignore[attr-defined]
                raise
            batch.clear()

        items = iter(data)
        while True:
            chunk = list(itertools.islice(items, BATCH))
            if not chunk:
                return ids
            chunk_ids = new_ids(len(chunk))
            ids.extend(chunk_ids)
            batch.extend(map(make, chunk_ids, chunk))
            flush()

    def _insert_waiting(self, documents: List[Dict[str, Any]], session: Any) -> None:
        """Inserts jobs with ``after`` and links them as ``mongoq enqueue``
        does (DESIGN.md, Flows, 16): the jobs first, then ``has_dependents``
        on every dependency not finished, then the dependencies are read
        and the finished ones settled now, then ``linked``. A dependency
        that finishes after its flag went on is settled by its worker; one
        that finished before is seen here. Inside a transaction only the
        insert is done: a worker's flow sweep links the jobs after the
        commit (what it does for any producer's plain waiting document).
        """
        if session is not None:
            self.collection.insert_many(documents, session=session)
            return
        ids = [d["_id"] for d in documents]
        self.collection.insert_many(documents)
        try:
            ended = self._flag(documents)
        except BaseException:
            self.collection.delete_many({"_id": {"$in": ids}})
            raise
        missing = [dep for dep, how in ended.items() if how is None]
        if missing:
            self.collection.delete_many({"_id": {"$in": ids}})
            first = next(dep for d in documents for dep in d["after"] if id_key(dep) in missing)
            raise InvalidJob(
                "dependency %s does not exist (enqueue dependencies before the jobs that wait "
                "for them); nothing was enqueued" % _id_text(first)
            )
        if ended:
            for document in documents:
                self._settle_new(document, ended)
        self.collection.update_many({"_id": {"$in": ids}, "status": "waiting"}, {"$set": {"linked": True}})

    def _flag(self, documents: List[Dict[str, Any]]) -> Dict[bytes, Optional[Dict[str, Any]]]:
        """Flags the dependencies of ``documents`` that have not finished,
        then reads them all; returns the finished ones (status and
        last_error) and the missing ones (``None``), by id key."""
        seen: Dict[bytes, Any] = {}
        for document in documents:
            for dep in document["after"]:
                seen.setdefault(id_key(dep), dep)
        deps = list(seen.values())
        ended: Dict[bytes, Optional[Dict[str, Any]]] = {}
        for start in range(0, len(deps), _CHUNK):
            chunk = deps[start : start + _CHUNK]
            self.collection.update_many(
                {"_id": {"$in": chunk}, "status": {"$nin": _FINISHED}}, {"$set": {"has_dependents": True}}
            )
            found = {
                id_key(d["_id"]): d
                for d in self.collection.find({"_id": {"$in": chunk}}, {"status": 1, "last_error": 1})
            }
            for dep in chunk:
                job = found.get(id_key(dep))
                if job is None:
                    ended[id_key(dep)] = None
                elif job.get("status") in _FINISHED:
                    ended[id_key(dep)] = job
        return ended

    def _settle_new(self, document: Dict[str, Any], ended: Dict[bytes, Optional[Dict[str, Any]]]) -> None:
        """Settles one just-inserted dependent against the dependencies that
        had finished when it was linked (none is missing here): the first
        failed or cancelled one in ``after`` cancels it, unless it runs
        anyway; the completed ones (and, if it runs anyway, the failed ones)
        go into ``deps_done``, and it is released once they cover ``after``.
        Every write is conditional on ``waiting``, as the workers' are."""
        runs_anyway = document.get("if_dep_fails") == "run"
        counted = []
        for dep in document["after"]:
            job = ended.get(id_key(dep))
            if job is None:
                continue
            if job["status"] != "completed" and not runs_anyway:
                self.collection.update_one(
                    {"_id": document["_id"], "status": "waiting"},
                    {
                        "$set": {"status": "cancelled", "last_error": _reason(dep, job)},
                        "$currentDate": {"cancelled_at": True},
                    },
                )
                return
            counted.append(dep)
        if not counted:
            return
        self.collection.update_one(
            {"_id": document["_id"], "status": "waiting"}, {"$addToSet": {"deps_done": {"$each": counted}}}
        )
        # Released where deps_done covers after: tested on the document as
        # it is now, so a worker's mark that landed meanwhile counts too.
        self.collection.update_one(
            {
                "_id": document["_id"],
                "status": "waiting",
                "unique_key": {"$exists": False},
                "deps_total": {"$type": "number"},
                "$expr": {"$gte": [{"$size": {"$ifNull": ["$deps_done", []]}}, "$deps_total"]},
            },
            {"$set": {"status": "pending"}, "$max": {"run_at": self.now()}, "$currentDate": {"released_at": True}},
        )

    def enqueue_flow(
        self, flow: Mapping[str, Any], *, queue: Optional[str] = None, session: Any = None
    ) -> InsertedFlow:
        """Inserts a flow, a small graph of jobs, so that none of it runs
        before all of it is in (``mongoq enqueue --flow``'s file as a dict):

            q.enqueue_flow({"queue": "reports", "jobs": [
                {"name": "a", "data": {"url": "..."}},
                {"name": "b", "data": {"url": "..."}},
                {"name": "merge", "data": {}, "after": ["a", "b"], "if_dep_fails": "run"},
            ]})

        A step takes ``name``, ``data``, ``after`` (names), ``if_dep_fails``,
        ``queue``, ``priority``, ``max_attempts``. The flow is checked whole
        first (names unique, every ``after`` a step, no cycle). Every job is
        inserted ``waiting`` and linked, then the roots become ``pending``
        with one write. An insert that fails deletes what went in. With
        ``session``, every write is in the caller's transaction.
        """
        steps, flow_queue = check_flow(flow, queue)
        flow_id = ObjectId()
        ids = {s["name"]: ObjectId() for s in steps}
        waited_on = awaited(steps)
        now = self.now()
        documents = []
        for step in steps:
            step_queue = step.get("queue") if step.get("queue") is not None else flow_queue
            options = Options(
                queue=step_queue,
                priority=step.get("priority", 0),
                max_attempts=step.get("max_attempts"),
                after=[ids[n] for n in step.get("after") or []],
                if_dep_fails=step.get("if_dep_fails"),
            )
            document = options.document(ids[step["name"]], step.get("data"), now)
            document["status"] = "waiting"
            document["linked"] = True
            document["flow"] = {"id": flow_id, "step": step["name"]}
            if step["name"] in waited_on:
                document["has_dependents"] = True
            documents.append(document)
        inserted = 0
        for start in range(0, len(documents), FLOW_BATCH):
            chunk = documents[start : start + FLOW_BATCH]
            try:
                self.collection.insert_many(chunk, session=session)
            except InvalidDocument as error:
                self._take_back(documents[: inserted + len(chunk)], session)
                raise InvalidJob("a job's data cannot be stored as BSON: %s; nothing was enqueued" % error) from None
            except BaseException:
                self._take_back(documents[: inserted + len(chunk)], session)
                raise
            inserted += len(chunk)
        roots = [ids[s["name"]] for s in steps if not s.get("after")]
        self.collection.update_many(
            {"_id": {"$in": roots}, "status": "waiting"},
            {"$set": {"status": "pending", "released_at": now}},
            session=session,
        )
        return InsertedFlow(flow_id, ids)

    def _take_back(self, documents: List[Dict[str, Any]], session: Any = None) -> None:
        if session is not None:
            return  # the caller's transaction aborts, and takes it all back
        try:
            self.collection.delete_many({"_id": {"$in": [d["_id"] for d in documents]}})
        except PyMongoError:
            pass  # best effort; the roots are still waiting, so none of it runs

    # ------------------------------------------------------------------
    # Reading and acting on one job

    def get(self, job_id: Any) -> Optional[Dict[str, Any]]:
        """The job's document as it is now, or ``None``."""
        return self.collection.find_one({"_id": {"$eq": id_value(job_id)}})

    def wait(self, job_id: Any, timeout: Optional[float] = None) -> Any:
        """Waits until the job ends; returns its ``result`` (``None`` if its
        handler returned none). Raises :class:`JobFailed` if it ended
        ``failed`` or ``cancelled``, :class:`WaitTimeout` once ``timeout``
        seconds passed (the job stays queued), :class:`JobNotFound` if
        there is no such job.

        Follows the job's own updates on a change stream where the
        deployment has one (it returns the moment the job ends), else
        polls, backing off from 50 ms to 1 s.
        """
        job_id = id_value(job_id)
        deadline = None if timeout is None else time.monotonic() + _documents.seconds(timeout, "timeout")
        stream = None
        try:
            stream = self.collection.watch([{"$match": {"documentKey._id": job_id}}], max_await_time_ms=500)
        except PyMongoError:
            stream = None  # a standalone server: poll
        poll = 0.05
        try:
            while True:
                job = self.collection.find_one(
                    {"_id": {"$eq": job_id}}, {"status": 1, "result": 1, "last_error": 1}
                )
                if job is None:
                    raise JobNotFound(job_id)
                status = job.get("status")
                if status == "completed":
                    return job.get("result")
                if status in ("failed", "cancelled"):
                    raise JobFailed(job_id, status, job.get("last_error") or "")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(job_id, float(timeout or 0))
                if stream is not None:
                    try:
                        stream.try_next()
                        continue
                    except PyMongoError:
                        stream.close()
                        stream = None
                time.sleep(poll if left is None else min(poll, left))
                poll = min(poll * 2, 1.0)
        finally:
            if stream is not None:
                stream.close()

    def cancel(self, job_id: Any, *, session: Any = None) -> str:
        """Cancels a job, as ``mongoq cancel`` does; returns what it did:

        - ``"cancelled"``: it was pending or waiting, and will not run;
        - ``"requested"``: it is running; its worker stops its handler and
          marks it ``cancelled`` at its next lease extension (within a third
          of the lease);
        - ``"finished"``: it had already ended (completed, failed or
          cancelled; :meth:`get` says which), and nothing changed.

        Raises :class:`JobNotFound` if there is no such job. Jobs that wait
        on it are cancelled by the next flow sweep of a running worker.
        """
        job_id = id_value(job_id)
        for _ in range(2):  # it may start running between the two writes
            done = self.collection.update_one(
                {"_id": {"$eq": job_id}, "status": {"$in": ["pending", "waiting"]}},
                {
                    "$set": {"status": "cancelled", "last_error": "cancelled by an operator before it ran"},
                    "$currentDate": {"cancelled_at": True},
                    "$unset": {"lease_owner": "", "lease_token": "", "lease_until": "", "cancel_requested": ""},
                },
                session=session,
            )
            if done.modified_count:
                return "cancelled"
            running = self.collection.update_one(
                {"_id": {"$eq": job_id}, "status": "running"}, {"$set": {"cancel_requested": True}},
                session=session,
            )
            if running.matched_count:
                return "requested"
            job = self.collection.find_one({"_id": {"$eq": job_id}}, {"status": 1}, session=session)
            if job is None:
                raise JobNotFound(job_id)
            if job.get("status") not in ("pending", "waiting", "running"):
                return "finished"
        raise MongoqStatusChanging(job_id)

    # ------------------------------------------------------------------
    # Counting

    def stats(self) -> Dict[str, Any]:
        """What ``mongoq stats --json`` reports first: ``counts`` by status
        (always with waiting, pending, running, completed, failed),
        ``eligible`` (pending, due, in a queue not paused), ``paused``
        (pending and due, in a paused queue), ``scheduled`` (pending, not
        yet due), ``oldest_eligible_age_seconds`` and ``expired`` (cancelled
        because they expired before they started). Counted by the server.
        """
        counts = {s: 0 for s in ("waiting", "pending", "running", "completed", "failed")}
        expired = 0
        pipeline = [{"$group": {
            "_id": "$status",
            "n": {"$sum": 1},
            "expired": {"$sum": {"$cond": [{"$eq": ["$expired", True]}, 1, 0]}},
        }}]
        for group in self.collection.aggregate(pipeline):
            status = group["_id"]
            name = status if isinstance(status, str) else "(no status)" if status is None else "(status %r)" % status
            counts[name] = counts.get(name, 0) + int(group["n"])
            expired += int(group["expired"])
        now = self.now()
        eligible_now: Dict[str, Any] = {"status": "pending", "run_at": {"$not": {"$gt": now}}}
        # Paused by an operator, or by a handler until a time not yet come.
        paused_queues = [
            c["_id"]
            for c in self._controls.find(
                {"$or": [{"paused": True}, {"paused_until": {"$gt": now}}]}, {"_id": 1}
            )
        ]
        paused = 0
        if paused_queues:
            held = {"$in": paused_queues + ([None] if "default" in paused_queues else [])}
            paused = self.collection.count_documents(dict(eligible_now, queue=held))
            eligible_now["queue"] = {"$not": held}
        eligible = self.collection.count_documents(eligible_now)
        oldest = self.collection.find_one(eligible_now, {"run_at": 1}, sort=[("run_at", 1), ("_id", 1)])
        age = None
        if oldest is not None:
            since = oldest.get("run_at")
            if not isinstance(since, datetime.datetime):
                since = oldest["_id"].generation_time if isinstance(oldest["_id"], ObjectId) else now
            if since.tzinfo is None:
                since = since.replace(tzinfo=datetime.timezone.utc)
            age = max(0.0, (now - since).total_seconds())
        return {
            "counts": counts,
            "eligible": eligible,
            "paused": paused,
            "scheduled": max(0, counts["pending"] - eligible - paused),
            "oldest_eligible_age_seconds": age,
            "expired": expired,
        }


class MongoqStatusChanging(MongoqError):
    """The job kept changing status while being cancelled; call again."""

    def __init__(self, job_id: Any) -> None:
        super().__init__("job %s kept changing status while being cancelled; cancel it again" % (job_id,))


def _id_text(job_id: Any) -> str:
    return str(job_id)


def _reason(dep: Any, job: Mapping[str, Any]) -> str:
    """Why a dependent of ``dep`` that does not run anyway is cancelled (the
    text the workers write)."""
    error = str(job.get("last_error") or "")
    if len(error) > 300:
        error = error[:300] + "…"
    if job.get("status") == "failed":
        return "dependency %s failed: %s" % (_id_text(dep), error)
    return "dependency %s was cancelled: %s" % (_id_text(dep), error)
