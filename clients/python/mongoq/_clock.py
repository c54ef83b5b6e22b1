"""The server's clock, as mongoq's workers read it (DESIGN.md, "Time").

Every time mongoq compares (``run_at`` eligibility, ``--delay``) is the
database server's, so a producer on a host with a wrong clock still
queues a job for the right moment. The reading is ``hello``'s
``localTime``: three round trips, the fastest kept and credited half its
round trip, then counted forward on this process's monotonic clock (a
wall clock that jumps changes nothing). Read again every 30 s, as the
workers do.
"""

import datetime
import time
from typing import Any, Callable, Optional, Tuple

_REREAD = 30.0


class ServerClock:
    def __init__(self, hello: Callable[[], Any]) -> None:
        self._hello = hello
        self._sample: Optional[Tuple[datetime.datetime, float]] = None

    def _read(self) -> Tuple[datetime.datetime, float]:
        best = None
        for _ in range(3):
            sent = time.monotonic()
            reply = self._hello()
            back = time.monotonic()
            local = reply.get("localTime")
            if not isinstance(local, datetime.datetime):
                raise RuntimeError("the server's hello reply has no localTime: %r" % (reply,))
            if local.tzinfo is None:
                local = local.replace(tzinfo=datetime.timezone.utc)
            trip = back - sent
            if best is None or trip < best[0]:
                best = (trip, local + datetime.timedelta(seconds=trip / 2), back)
        assert best is not None
        return best[1], best[2]

    def now(self) -> datetime.datetime:
        """The server's time now, in UTC, to the millisecond."""
        if self._sample is None or time.monotonic() - self._sample[1] > _REREAD:
            self._sample = self._read()
        at, measured = self._sample
        moment = at + datetime.timedelta(seconds=time.monotonic() - measured)
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
