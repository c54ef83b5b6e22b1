"""ObjectIds for many jobs at once, three times cheaper than ``ObjectId()``.

``ObjectId()`` costs about 1.5 µs in pymongo, which was the largest part
of ``enqueue_many``'s own time (15 ms of 10,000 jobs). This makes the same
12 bytes the ObjectId specification describes (4 bytes of seconds since
the epoch, 5 random bytes per process, a 3-byte counter from a random
start) and hands them to ``ObjectId(bytes)``. Its random part is its own,
drawn again after a fork, so its ids never meet pymongo's or a parent's.
"""

import itertools
import os
import struct
import threading
import time
from typing import Iterator, List, Optional

from bson.objectid import ObjectId


class _Source:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid: Optional[int] = None
        self.random = b""
        self.counter: Iterator[int] = itertools.count()

    def renew_after_fork(self) -> None:
        with self.lock:
            if self.pid != os.getpid():
                self.random = os.urandom(5)
                self.counter = itertools.count(int.from_bytes(os.urandom(3), "big"))
                self.pid = os.getpid()


_source = _Source()


def new_ids(n: int) -> List[ObjectId]:
    """``n`` new ObjectIds, in increasing order within a second."""
    if _source.pid != os.getpid():
        _source.renew_after_fork()
    head = struct.pack(">I", int(time.time()) & 0xFFFFFFFF) + _source.random
    counter = _source.counter
    # next() of itertools.count is atomic under the GIL: two threads never
    # take the same value.
    return [ObjectId(head + (next(counter) & 0xFFFFFF).to_bytes(3, "big")) for _ in range(n)]
