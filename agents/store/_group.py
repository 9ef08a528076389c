"""Group commit: the concurrent requests of one event loop share one database round trip.

A batch runs dozens of agent runs at once, and each of their steps makes the same few store
operations (a step result, a ledger claim, a memory write, ...). One transaction per operation
makes the database's commit (and on SQLite its single writer) the bottleneck. Here the requests
of one kind that arrive while a round trip runs wait for the next one, which serves them all in
one transaction: on SQLite on the loop's own thread (in a worker thread when another writer holds
the lock), on PostgreSQL in one of the store's worker threads.

The rules every user relies on:

* each caller waits for its own outcome (`await shared(...)` returns once its request is
  committed) and gets its own value, or its own exception;
* `together(url, items)` returns one outcome per item, in order; an outcome that is an exception
  is raised to that item's caller alone (a compare-and-set conflict, a missing row): the others
  still get theirs;
* if `together` itself raises (a database error, a constraint one request broke), the group is
  retried one request at a time, so a bad request fails alone;
* groups are per event loop (futures belong to one loop) and per database URL (resolved in the
  caller's context, so `temporary_settings` picks the database as it does for a direct call).

Example:
    >>> import asyncio
    >>> def doubled(url: str, items: list[int]) -> list[int]:
    ...     return [2 * i for i in items]
    >>> async def main() -> list[int]:
    ...     return await asyncio.gather(*(shared(doubled, "sqlite://", i) for i in range(3)))
    >>> asyncio.run(main())
    [0, 2, 4]
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar, cast

from agents.store.engine import (
    database_url,
    is_sqlite,
    is_sqlite_busy,
    normalize_url,
    without_lock_waits,
)

__all__ = ["Together", "database_of", "shared"]

Item = TypeVar("Item")
Out = TypeVar("Out")
T = TypeVar("T")

#: Serves a group of requests on one database in one transaction: one outcome per item, in
#: order (an exception instance is raised to its item's caller alone).
Together = Callable[[str, list[Item]], Sequence["Out | BaseException"]]


class _Group(Generic[Item, Out]):
    """The requests of one kind, event loop and database waiting for the next round trip."""

    def __init__(self, together: Together[Item, Out], url: str) -> None:
        self.together = together
        self.url = url
        self.waiting: list[tuple[Item, asyncio.Future[Out]]] = []
        self.drainer: asyncio.Future[None] | None = None

    async def submit(self, item: Item) -> Out:
        done: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, done))
        if self.drainer is None or self.drainer.done():
            self.drainer = asyncio.ensure_future(self._drain())
        return await done

    async def _drain(self) -> None:
        while self.waiting:
            await asyncio.sleep(0)  # the requests made in this turn of the loop join in
            batch, self.waiting = self.waiting, []
            try:
                outs = await _round_trip(self.together, self.url, [i for i, _ in batch])
            except Exception:
                # One bad request must not fail the others: each is made on its own.
                await asyncio.gather(*(self._alone(item, done) for item, done in batch))
                continue
            except BaseException as exc:  # cancelled (loop closing): nobody waits forever
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                raise
            for (_, done), out in zip(batch, outs, strict=True):
                _settle(done, out)

    async def _alone(self, item: Item, done: asyncio.Future[Out]) -> None:
        try:
            (out,) = await _round_trip(self.together, self.url, [item])
        except Exception as exc:
            out = exc
        _settle(done, out)


async def _round_trip(together: Together[Item, Out], url: str, items: list[Item]) -> Any:
    """Serve a group: on SQLite right here, on the loop's thread, unless another writer holds
    the database; otherwise (PostgreSQL, or SQLite locked) in one of the store's threads.

    Why: SQLite's work is the Python around it (the file is in the OS cache, and WAL commits do
    not sync), so a worker thread buys no parallelism, only a hand-over of the interpreter
    lock each way, which costs more than the query when the process is busy."""
    if is_sqlite(url):
        try:
            with without_lock_waits():
                return together(url, items)
        except Exception as exc:
            if not is_sqlite_busy(exc):
                raise
            # Nothing was committed: a locked SQLite statement fails before its COMMIT lands.
    return await _in_thread(together, url, items)


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


async def _in_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """Run a round trip in the store's own threads (context kept): the default executor also
    runs user code (tools, sync steps), which must not hold a group's commit up."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():  # a forked child has none of the threads
            _pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="stalwart-store")
            _pool_pid = os.getpid()
    ctx = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(
        _pool, functools.partial(ctx.run, fn, *args)
    )


def _settle(done: asyncio.Future[Out], out: Out | BaseException) -> None:
    if done.done():  # its caller was cancelled
        return
    if isinstance(out, BaseException):
        done.set_exception(out)
    else:
        done.set_result(out)


#: Each event loop's groups, by kind (`together`) and database URL.
_groups: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[Any, str], _Group[Any, Any]]
] = weakref.WeakKeyDictionary()


async def shared(together: Together[Item, Out], url: str, item: Item) -> Out:
    """Serve `item` with the other requests of this kind and database made meanwhile.

    Args:
        together: a module-level function (it names the group): serves a list of items on
            database `url` in one transaction and returns one outcome per item.
        url: the resolved database URL (`database_of(url)`).
        item: this caller's request.

    Returns:
        This item's outcome once its group is committed.

    Raises:
        Exception: this item's own exception (from its group's outcome, or from serving it
            alone after its group failed).
    """
    groups = _groups.setdefault(asyncio.get_running_loop(), {})
    group = groups.get((together, url))
    if group is None:
        group = groups[(together, url)] = _Group(together, url)
    return cast("Out", await group.submit(item))


def database_of(url: str | None) -> str:
    """The database a store call with this `url` argument uses (None: the settings' one),
    spelled as the engine cache keys it: what names a group.

    Example:
        >>> database_of("sqlite://")
        'sqlite://'
    """
    return database_url() if url is None else normalize_url(url)
