"""The process's long-lived heap, kept out of the garbage collector's full passes.

By the time a batch starts, a Stalwart process holds a few hundred thousand objects that live
as long as it does: Prefect, pydantic, SQLAlchemy, instructor and openai modules, their classes
and schemas. Python's collector traverses all of them at every full (generation 2) collection,
which a batch's allocations trigger every few seconds, each stopping the event loop
(docs/measurements.md has the figures). `gc.freeze()` moves what
exists now to a permanent generation the collector skips; it is what CPython documents for a
process whose start-up heap stays. Done once per process, at its first batch.

Example:
    >>> freeze_startup_heap()
    >>> import gc
    >>> gc.get_freeze_count() > 0
    True
"""

from __future__ import annotations

import gc
import os
import threading

__all__ = ["freeze_startup_heap"]

_lock = threading.Lock()
_frozen_in: int | None = None  # the pid that froze (a forked child freezes its own)


def freeze_startup_heap() -> None:
    """Move every object alive now out of the collector's reach, once per process.

    Objects frozen here are never collected, even if they later become garbage: at the first
    batch they are the modules and their state, which live as long as the process anyway. No
    collection first: it would stop the first batch for a full pass to free the few cycles
    imports left behind.
    """
    global _frozen_in
    with _lock:
        if _frozen_in == os.getpid():
            return
        gc.freeze()
        _frozen_in = os.getpid()
