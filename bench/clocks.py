"""What users get from a Prefect-based batch, besides the batch call's own wall time.

Used by `bench_core.py`'s children (issue #19):

- the **recorded** clock: when every task run of the batch's flow run(s) is in a terminal state in
  the Prefect API (counted through the API, `POST /task_runs/count`, filtered to the batch's flow
  runs; Prefect 3.9.1's client has no `count_task_runs`), polled every 0.5 s in a bounded loop;
- the gap before a following batch: the following flow run's `start_time` (from the API) minus the
  moment the call was made;
- the API server's CPU (a process tree read from /proc) and the "dropping message" warnings in the
  logs the API server writes to, counted between byte offsets the child marks.

API queries run on a fresh event loop in a worker thread (`in_thread`), so they can be made from a
sync caller or from inside a running loop without touching that loop's Prefect client.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

POLL_S = 0.5
"""How often the recorded clock asks the API."""
STALL_S = 30.0
"""Give up once the batch's flow runs are terminal and the count has not moved for this long."""
DROP_MARK = "dropping message"
"""What Prefect's server logs when an in-memory subscription queue is full
(`Subscription queue is full, dropping message for topic='events' queue_size=10000`)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def in_thread(make: Callable[[], Awaitable[T]], timeout_s: float = 120.0) -> T:
    """Run `make()` on a fresh event loop in a worker thread and return its value (bounded)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=target, name="bench-api-query", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"API query did not answer in {timeout_s:.0f} s")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


# -- API queries ------------------------------------------------------------------------------


def _terminal_filter() -> dict[str, Any]:
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    terminal = [StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]
    found = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=terminal)))
    return found.model_dump(mode="json", exclude_unset=True)


def _flow_runs_filter(ids: list[str]) -> dict[str, Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found = FlowRunFilter(id=FlowRunFilterId(any_=ids))
    return found.model_dump(mode="json", exclude_unset=True)


async def _count(client: Any, body: dict[str, Any]) -> int:
    response = await client._client.post("/task_runs/count", json=body)
    response.raise_for_status()
    return int(response.json())


async def task_run_counts(client: Any, flow_run_ids: list[str]) -> tuple[int, int]:
    """(task runs, terminal task runs) recorded for these flow runs."""
    if not flow_run_ids:
        return 0, 0
    runs = _flow_runs_filter(flow_run_ids)
    total = await _count(client, {"flow_runs": runs})
    terminal = await _count(client, {"flow_runs": runs, "task_runs": _terminal_filter()})
    return total, terminal


async def flow_runs_started(
    client: Any, after: datetime, before: datetime | None = None, pages: int = 50
) -> list[Any]:
    """Flow runs whose `start_time` lies in [after, before], oldest first (bounded paging)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    window = FlowRunFilterStartTime(after_=after, before_=before)
    found: list[Any] = []
    for page in range(pages):
        chunk = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=window),
            sort=FlowRunSort.START_TIME_ASC,
            limit=200,
            offset=200 * page,
        )
        found.extend(chunk)
        if len(chunk) < 200:
            break
    return found


def batch_flow_runs(after: datetime, before: datetime) -> list[str]:
    """Ids of the flow runs that started between `after` and `before` (one batch's)."""
    from prefect import get_client

    async def query() -> list[str]:
        async with get_client() as client:
            return [str(r.id) for r in await flow_runs_started(client, after, before)]

    return in_thread(query)


def flow_runs_terminal(ids: list[str]) -> bool:
    from prefect import get_client

    async def query() -> bool:
        async with get_client() as client:
            return await _all_terminal(client, ids)

    return in_thread(query)


async def _all_terminal(client: Any, ids: list[str]) -> bool:
    from uuid import UUID

    for flow_run_id in ids:
        run = await client.read_flow_run(UUID(flow_run_id))
        if run.state is None or not run.state.is_final():
            return False
    return True


# -- the recorded clock -------------------------------------------------------------------------


@dataclass
class Recorded:
    """What the recorded clock saw for one batch."""

    flow_runs: int = 0
    expected_task_runs: int | None = None
    task_runs: int = 0
    terminal_task_runs: int = 0
    converged: bool = False
    recorded_s: float | None = None
    """Seconds from the batch call to the first poll that saw every task run terminal."""
    waited_s: float = 0.0
    polls: int = 0
    gave_up: str | None = None
    api_cpu_s: float | None = None
    """API server CPU from the batch call to convergence (or to giving up)."""
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecordedClock:
    """Polls the API in a background thread until a batch's task runs are all terminal.

    Converged means: every flow run of the batch is terminal, and the number of terminal task
    runs reaches `expected` (or, with `expected=None`, equals the number of task runs and has
    stayed so for two polls). Bounded by `bound_s`, and by `STALL_S` without progress once the
    flow runs are terminal (dropped events never arrive).
    """

    def __init__(
        self,
        flow_run_ids: list[str],
        expected: int | None,
        started_perf: float,
        bound_s: float,
        api_cpu: Callable[[], float | None] | None = None,
        api_cpu_start: float | None = None,
    ) -> None:
        self.ids = flow_run_ids
        self.expected = expected
        self.started_perf = started_perf
        self.bound_s = bound_s
        self.api_cpu = api_cpu
        self.api_cpu_start = api_cpu_start
        self.result = Recorded(flow_runs=len(flow_run_ids), expected_task_runs=expected)
        self._thread = threading.Thread(target=self._run, name="bench-recorded", daemon=True)

    def start(self) -> RecordedClock:
        self._thread.start()
        return self

    def wait(self) -> Recorded:
        """Join the poller (it bounds itself; the join adds a margin for a hung request)."""
        self._thread.join(self.bound_s + 60)
        if self._thread.is_alive():
            self.result.gave_up = self.result.gave_up or "poller did not finish"
        return self.result

    def _run(self) -> None:
        try:
            asyncio.run(self._poll())
        except BaseException as exc:
            self.result.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    async def _poll(self) -> None:
        from prefect import get_client

        r = self.result
        deadline = time.perf_counter() + self.bound_s
        flows_done = False
        last_change = time.perf_counter()
        previous: tuple[int, int] | None = None
        stable_polls = 0
        async with get_client() as client:
            while True:
                now = time.perf_counter()
                r.polls += 1
                try:
                    if not flows_done:
                        flows_done = await _all_terminal(client, self.ids)
                    total, terminal = await task_run_counts(client, self.ids)
                except Exception as exc:  # a busy API may time out: note it, poll again
                    r.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    total, terminal = r.task_runs, r.terminal_task_runs
                r.task_runs, r.terminal_task_runs = total, terminal
                if previous != (total, terminal):
                    last_change, stable_polls = now, 0
                else:
                    stable_polls += 1
                previous = (total, terminal)
                r.waited_s = now - self.started_perf
                if flows_done and self._done(total, terminal, stable_polls):
                    r.converged = True
                    r.recorded_s = now - self.started_perf
                    break
                if now >= deadline:
                    r.gave_up = f"not converged within {self.bound_s:.0f} s"
                    break
                if flows_done and now - last_change >= STALL_S:
                    r.gave_up = f"no progress for {STALL_S:.0f} s"
                    break
                await asyncio.sleep(POLL_S)
        if self.api_cpu is not None and self.api_cpu_start is not None:
            after = self.api_cpu()
            if after is not None:
                r.api_cpu_s = max(0.0, after - self.api_cpu_start)

    def _done(self, total: int, terminal: int, stable_polls: int) -> bool:
        if self.expected is not None:
            return terminal >= self.expected and terminal == total
        if total == 0:  # a mode may record no task runs (Stalwart's cached rerun): wait 3 s
            return stable_polls >= 6
        return terminal == total and stable_polls >= 2


def settle_task_runs(flow_run_ids: list[str], bound_s: float = 60.0) -> tuple[int, int]:
    """Poll until these flow runs' task runs are all terminal and stable; (total, terminal).

    Used on the warm-up batch to learn how many task runs a run records in this mode.
    """
    clock = RecordedClock(flow_run_ids, None, time.perf_counter(), bound_s)
    result = clock.start().wait()
    return result.task_runs, result.terminal_task_runs


# -- the gap before a following batch -----------------------------------------------------------


def first_flow_run_start(called: datetime, exclude: set[str]) -> datetime | None:
    """The start time of the first flow run that started after `called` (not in `exclude`)."""
    from prefect import get_client

    async def query() -> datetime | None:
        async with get_client() as client:
            runs = await flow_runs_started(client, called - timedelta(seconds=1), pages=5)
        for run in runs:
            if str(run.id) not in exclude and run.start_time is not None:
                start: datetime = run.start_time
                return start
        return None

    return in_thread(query)


# -- the API server: CPU and dropped messages ----------------------------------------------------


def tree_cpu_s(root: int, include_root: bool) -> float | None:
    """CPU seconds of a process tree (`root`'s descendants, and `root` itself if asked)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    parents: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, ppid = int(entry.name), int(fields[1])
        parents.setdefault(ppid, []).append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
    total = cpu.get(root, 0.0) if include_root else 0.0
    todo = list(parents.get(root, []))
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(parents.get(pid, []))
    return total


def api_cpu_s() -> float | None:
    """CPU of the API server: the external server named by BENCH_API_PID (and its children), or
    this process's descendants (Prefect's temporary ephemeral API server)."""
    external = os.environ.get("BENCH_API_PID")
    if external:
        return tree_cpu_s(int(external), include_root=True)
    return tree_cpu_s(os.getpid(), include_root=False)


def log_files() -> dict[str, str]:
    """The logs the API server may write warnings to: this child's stderr and stdout (the
    ephemeral server inherits both) and an external server's log (BENCH_SERVER_LOG)."""
    found: dict[str, str] = {}
    for name, fd in (("stderr", 2), ("stdout", 1)):
        try:
            found[name] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    server = os.environ.get("BENCH_SERVER_LOG")
    if server:
        found["server"] = server
    return {k: v for k, v in found.items() if Path(v).is_file()}


def log_offsets() -> dict[str, int]:
    """The current size of each log in `log_files()` (a mark to count warnings between)."""
    sizes: dict[str, int] = {}
    for name, path in log_files().items():
        try:
            sizes[name] = os.path.getsize(path)
        except OSError:
            continue
    return sizes


def count_drops(path: str | Path, start: int = 0, end: int | None = None) -> int:
    """'dropping message' warnings in the byte range [start, end) of a log file."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(0, end - start))
    except OSError:
        return 0
    return data.count(DROP_MARK.encode())
