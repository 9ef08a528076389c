"""A Prefect worker that gives its freed heap back to the operating system.

`stalwart worker --pool stalwart` is `prefect worker start --pool stalwart` (same options, same
worker, in this process) plus a thread that calls glibc's `malloc_trim(0)` every `trim_every_s`
seconds. Prefect 3.9's process worker builds and drops a client, an event emitter, a
cancellation observer and a control channel for every flow run; the Python heap stays flat
(tracemalloc: 62 MB after 10 minutes of W1 and after the warm-up), but glibc keeps the freed
memory, and the worker's RSS grew by about a megabyte per flow run in the reliability suite's
soak (`bench/faults/s9_soak.py`), with or without `MALLOC_ARENA_MAX=2`. `malloc_trim(0)` in
that worker gave back 40 of its 158 MB at once. Off glibc (macOS, musl) trimming is a no-op.

Example:
    >>> trim_heap() in (True, False)
    True
    >>> trimmer = start_heap_trimmer(every_s=60.0)
    >>> trimmer is None or trimmer.daemon
    True
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "run_worker", "start_heap_trimmer", "trim_heap"]

logger = logging.getLogger("stalwart.worker")


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


def start_heap_trimmer(every_s: float = 60.0) -> threading.Thread | None:
    """Trim the heap every `every_s` seconds from a daemon thread (None: off or unsupported).

    Example:
        >>> start_heap_trimmer(every_s=0) is None
        True
    """
    if every_s <= 0 or _malloc_trim() is None:
        return None
    stop = threading.Event()

    def trim_forever() -> None:
        while not stop.wait(every_s):
            trim_heap()

    thread = threading.Thread(target=trim_forever, name="stalwart-heap-trimmer", daemon=True)
    thread.start()
    return thread


def run_worker(prefect_args: Sequence[str], *, trim_every_s: float = 60.0) -> None:
    """Run `prefect worker start <prefect_args>` in this process, trimming the heap meanwhile.

    Exits as `prefect worker start` does (its `SystemExit` passes through).

    Example:
        >>> run_worker(["--pool", "stalwart"], trim_every_s=60)  # doctest: +SKIP
    """
    from prefect.cli import app

    if start_heap_trimmer(trim_every_s) is None and trim_every_s > 0:
        logger.warning("malloc_trim is not available here: the worker's heap is not trimmed")
    sys.argv = ["prefect", "worker", "start", *prefect_args]
    app()


def main(argv: Sequence[str]) -> None:
    """`stalwart worker [--trim-every S] <prefect worker start options>`.

    Reached before the rest of the CLI is imported (`agents.cli.main`): the worker stays as
    lean as `prefect worker start`.

    Example:
        >>> main(["--trim-every", "30", "--pool", "stalwart"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(
        prog="stalwart worker",
        add_help=False,
        description="`prefect worker start` (same options) with its freed heap given back to "
        "the OS, so its RSS stays bounded.",
    )
    parser.add_argument(
        "--trim-every",
        type=float,
        default=60.0,
        metavar="S",
        help="give freed heap back to the OS every S seconds (0: never; default 60)",
    )
    known, rest = parser.parse_known_args(list(argv))
    if known.trim_every < 0:
        parser.error("--trim-every must be 0 or more")
    if "--help" in rest or "-h" in rest:
        parser.print_help()
        print("\nEvery other option is `prefect worker start`'s:\n")
    run_worker(rest, trim_every_s=known.trim_every)
