"""A Prefect worker whose memory stays flat: it collects its garbage and gives freed heap back.

`stalwart worker --pool stalwart` is `prefect worker start --pool stalwart` (same options, same
worker, in this process) plus a thread that, every `reclaim_every_s` seconds, runs a full garbage
collection and then glibc's `malloc_trim(0)`.

Why: Prefect 3.9's process worker builds two `httpx.AsyncClient`s for every flow run, and each
loads certifi's CA bundle into a fresh `ssl.SSLContext` (OpenSSL memory that tracemalloc does not
see). The clients end up in reference cycles, so they are freed only by a full (generation 2)
collection, which CPython runs only after tens of thousands of objects have survived into the
oldest generation: 25 to 40 dead clients were alive at any time, glibc's in-use heap grew about
0.7 MB per flow run, and what a late collection freed mostly stayed in the heap. A full
collection of the worker's ~130,000 tracked objects takes about 50 ms. In the reliability
suite's soak (`bench/faults/s9_soak.py`) the workers grew by tens of MB per wave. Collecting and
trimming every 10 s kept a worker at 97 MB over 140 flow runs
(`bench/faults/prefect_worker_rss.py`); trimming alone took only 40% off the growth. Off glibc
(macOS, musl) only the collection runs.

Example:
    >>> reclaim_memory() >= 0
    True
    >>> reclaimer = start_memory_reclaimer(every_s=60.0)
    >>> reclaimer.daemon
    True
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import gc
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "reclaim_memory", "run_worker", "start_memory_reclaimer", "trim_heap"]


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None where there is no such function."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Give freed heap memory back to the OS now; False where the C library cannot.

    Example:
        >>> isinstance(trim_heap(), bool)
        True
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def reclaim_memory() -> int:
    """Free unreachable reference cycles now, then trim the heap; the objects collected.

    Example:
        >>> class Node:
        ...     pass
        >>> a, b = Node(), Node()
        >>> a.other, b.other = b, a
        >>> del a, b
        >>> reclaim_memory() >= 2
        True
    """
    collected = gc.collect()
    trim_heap()
    return collected


def start_memory_reclaimer(every_s: float = 60.0) -> threading.Thread | None:
    """Run `reclaim_memory` every `every_s` seconds from a daemon thread (None: off).

    Example:
        >>> start_memory_reclaimer(every_s=0) is None
        True
    """
    if every_s <= 0:
        return None
    stop = threading.Event()

    def reclaim_forever() -> None:
        while not stop.wait(every_s):
            reclaim_memory()

    thread = threading.Thread(target=reclaim_forever, name="stalwart-reclaimer", daemon=True)
    thread.start()
    return thread


def run_worker(prefect_args: Sequence[str], *, reclaim_every_s: float = 60.0) -> None:
    """Run `prefect worker start <prefect_args>` in this process, reclaiming memory meanwhile.

    Exits as `prefect worker start` does (its `SystemExit` passes through).

    Example:
        >>> run_worker(["--pool", "stalwart"], reclaim_every_s=60)  # doctest: +SKIP
    """
    from prefect.cli import app

    start_memory_reclaimer(reclaim_every_s)
    sys.argv = ["prefect", "worker", "start", *prefect_args]
    app()


def main(argv: Sequence[str]) -> None:
    """`stalwart worker [--reclaim-every S] <prefect worker start options>`.

    Reached before the rest of the CLI is imported (`agents.cli.main`): the worker stays as
    lean as `prefect worker start`.

    Example:
        >>> main(["--reclaim-every", "30", "--pool", "stalwart"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(
        prog="stalwart worker",
        add_help=False,
        description="`prefect worker start` (same options) that collects its garbage and gives "
        "freed heap back to the OS, so its memory stays flat.",
    )
    parser.add_argument(
        "--reclaim-every",
        type=float,
        default=60.0,
        metavar="S",
        help="collect garbage and trim the heap every S seconds (0: never; default 60)",
    )
    known, rest = parser.parse_known_args(list(argv))
    if known.reclaim_every < 0:
        parser.error("--reclaim-every must be 0 or more")
    if "--help" in rest or "-h" in rest:
        parser.print_help()
        print("\nEvery other option is `prefect worker start`'s:\n")
    run_worker(rest, reclaim_every_s=known.reclaim_every)
