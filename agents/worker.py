"""A Prefect worker that stays up and stays flat: it outlives a failed submission, and it collects
its garbage and gives freed heap back; and the pull step that puts a flow run in the project.

`stalwart worker --pool stalwart` is `prefect worker start --pool stalwart` (same options, in this
process) with two changes:

- For process pools it runs `ResilientProcessWorker`: a flow run whose submission fails before
  it starts (the server answered 500 to the worker's `read_deployment`) is logged and left
  Scheduled for the next poll. Prefect 3.9's process worker lets that one error end the worker,
  and with it every flow-run process it had started.
- A thread, every `reclaim_every_s` seconds, runs a full garbage collection and then glibc's
  `malloc_trim(0)`.
- It stops on the first SIGTERM even when started with `&` from a script (`answer_interrupts`).
- It warns at start, naming the variable, when `STALWART_PROJECT_DIR` names no directory:
  every deployment of prefect.yaml loads its code from there (`enter_project_dir`, the pull
  step), so each of their runs it took would stop. A warning, not a refusal: a pool may also
  hold deployments of other projects.

`enter_project_dir` is prefect.yaml's pull step. Prefect's own `set_working_directory` given an
unset `{{ $STALWART_PROJECT_DIR }}` left the flow run in the worker's temporary directory, where
loading `flows/...py` failed with a bare `FileNotFoundError`; this one stops the run before any
code loads, with an error (in the flow run's logs) naming the variable.

Why: Prefect 3.9's process worker builds two `httpx.AsyncClient`s for every flow run, and each
loads certifi's CA bundle into a fresh `ssl.SSLContext` (OpenSSL memory that tracemalloc does not
see). The clients end up in reference cycles, so only a full (generation 2) collection frees
them, and CPython runs one only after tens of thousands of objects have survived into the oldest
generation; meanwhile dead clients pile up, and what a late collection frees mostly stays in
glibc's heap. A regular full collection frees the clients while they are few, and
`malloc_trim(0)` right after it gives the freed heap back; the collection costs little next to
the default 60 s interval, and trimming without collecting first leaves the clients alive. Off
glibc (macOS, musl) only the collection runs. The measurements behind this are in
`docs/measurements.md` (worker memory); `bench/faults/prefect_worker_rss.py` repeats them.

Example:
    >>> resilient_process_worker().type
    'process'
    >>> reclaim_memory() >= 0
    True
    >>> reclaimer = start_memory_reclaimer(every_s=60.0)
    >>> reclaimer.daemon
    True
    >>> project_dir_problem({}) is not None
    True
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import gc
import os
import signal
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.workers.process import ProcessWorker

__all__ = [
    "PROJECT_DIR_VARIABLE",
    "ProjectDirError",
    "answer_interrupts",
    "enter_project_dir",
    "main",
    "project_dir_problem",
    "reclaim_memory",
    "resilient_process_worker",
    "run_worker",
    "start_memory_reclaimer",
    "trim_heap",
]


#: The variable naming the project checkout on a worker's machine (prefect.yaml's pull step).
PROJECT_DIR_VARIABLE = "STALWART_PROJECT_DIR"


class ProjectDirError(RuntimeError):
    """`STALWART_PROJECT_DIR` is unset or names no directory: a flow run cannot load its code."""


def project_dir_problem(environ: Mapping[str, str], directory: str | None = None) -> str | None:
    """What is wrong with the project directory a flow run would load its code from; None if
    nothing. `directory` (the pull step's, templated from the variable) wins over `environ`.

    Example:
        >>> project_dir_problem({"STALWART_PROJECT_DIR": "/"}) is None
        True
        >>> print(project_dir_problem({}))  # doctest: +ELLIPSIS
        STALWART_PROJECT_DIR is not set: ...
    """
    configured = directory or environ.get(PROJECT_DIR_VARIABLE, "")
    if not configured:
        return (
            f"{PROJECT_DIR_VARIABLE} is not set: start the worker with it naming the Stalwart "
            f"checkout its deployments were made from (`{PROJECT_DIR_VARIABLE}=$PWD stalwart "
            "worker --pool stalwart` from that checkout); flow runs load their code from there"
        )
    if not Path(configured).expanduser().is_dir():
        return (
            f"{PROJECT_DIR_VARIABLE}={configured!r} is not a directory on this machine: point it "
            "at the Stalwart checkout its deployments were made from"
        )
    return None


def enter_project_dir(directory: str | None = None) -> dict[str, str]:
    """prefect.yaml's pull step: change into the project checkout (`STALWART_PROJECT_DIR`).

    Returns `{"directory": <absolute path>}` as Prefect's `set_working_directory` does; raises
    `ProjectDirError` naming the variable when it is unset or no directory, before any flow code
    is loaded (Prefect logs the message to the flow run and the run crashes).

    Example:
        >>> enter_project_dir("/")  # doctest: +SKIP
        {'directory': '/'}
    """
    problem = project_dir_problem(os.environ, directory)
    if problem is not None:
        raise ProjectDirError(problem)
    path = Path(directory or os.environ[PROJECT_DIR_VARIABLE]).expanduser().resolve()
    os.chdir(path)
    return {"directory": str(path)}


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


@functools.cache
def resilient_process_worker() -> type[ProcessWorker]:
    """Prefect's process worker, made the `process` worker type here, outliving failed submissions.

    Defined on first call, not at import: defining it replaces Prefect's `process` type in this
    process, which only `stalwart worker` wants.

    Example:
        >>> resilient_process_worker().__name__
        'ResilientProcessWorker'
    """
    from prefect.workers.process import ProcessWorker

    with warnings.catch_warnings():
        # Prefect's type registry warns that the `process` type is overridden: that is the point.
        warnings.filterwarnings("ignore", message=".*will be overridden", category=UserWarning)

        class ResilientProcessWorker(ProcessWorker):
            """A process worker for which a failed submission fails that submission only.

            Prefect 3.9.1's `_submit_run` catches a missing deployment but lets any other error
            of `read_deployment` (a 500 from a server short of database connections) escape into
            the worker's task group, which ends the worker and cancels its running flow runs.
            Here the error is logged and the submission undone (slot released, run no longer
            in flight), so the run, still Scheduled, is picked up by the next poll.
            """

            type = "process"

            async def _submit_run(self, flow_run: FlowRun) -> None:
                try:
                    await super()._submit_run(flow_run)
                except Exception:  # not cancellation: that must still stop the worker
                    self._logger.exception(
                        "Submitting flow run %s failed before it started; it stays Scheduled "
                        "for the next poll",
                        flow_run.id,
                    )
                    self._submitting_flow_run_ids.discard(flow_run.id)
                    if self._cancelling_observer is not None:
                        self._cancelling_observer.remove_in_flight_flow_run_id(flow_run.id)
                    self._release_limit_slot(flow_run.id)

    return ResilientProcessWorker


def answer_interrupts() -> bool:
    """Make SIGINT interrupt this process again if it was started ignoring it; whether it was.

    A command started with `&` from a script (not an interactive shell) inherits SIGINT
    ignored. Prefect's worker handles SIGTERM by sending itself SIGINT after restoring the
    handler it found, so such a worker ignored the first SIGTERM (`kill $WORKER_PID`) and kept
    taking flow runs; a second SIGTERM SIGKILLed it.

    Example:
        >>> answer_interrupts() in (True, False)
        True
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return False
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return True


def run_worker(prefect_args: Sequence[str], *, reclaim_every_s: float = 60.0) -> None:
    """Run `prefect worker start <prefect_args>` in this process, reclaiming memory meanwhile.

    Exits as `prefect worker start` does (its `SystemExit` passes through).

    Example:
        >>> run_worker(["--pool", "stalwart"], reclaim_every_s=60)  # doctest: +SKIP
    """
    from prefect.cli import app

    answer_interrupts()
    resilient_process_worker()
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
    else:
        problem = project_dir_problem(os.environ)
        if problem is not None:  # a warning: a pool may hold deployments of other projects
            print(f"stalwart worker: warning: {problem}", file=sys.stderr, flush=True)
    run_worker(rest, reclaim_every_s=known.reclaim_every)
