"""The ``--pipe`` handler helper under its first name.

``from mongoq_handler import serve, progress, Permanent`` keeps working;
the code lives in :mod:`mongoq.handler` (``from mongoq import serve`` is
the same function). Standard library only: importing this never imports
pymongo.
"""

from mongoq.handler import PauseQueue, Permanent, Retry, Snooze, __version__, progress, serve

__all__ = ["serve", "progress", "Permanent", "Snooze", "Retry", "PauseQueue", "__version__"]
