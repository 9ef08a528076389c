"""Whether the Prefect server recorded every step Stalwart executed: task runs on the server
against step rows in the state database, and the events the server dropped.

    python bench/faults/prefect_completeness.py [--runs 400] [--messaging redis|memory|both]

Runs W1 (no fault) on a fresh `Stack` and prints, per messaging set-up, the steps Stalwart
executed (`step_run` rows with a task run id), how many of those task runs the server has and
shows finished, the task runs it has for the batches' flow runs (steps and tool calls), and its
"Subscription queue is full, dropping message" warnings. `tests/faults/test_w1.py` makes the
same check on the short W1.

With Prefect's in-memory messaging (the default) every event goes through one in-process
subscription queue per consumer, 10,000 slots each; under W1 the consumers fall behind, the
queue fills, and each event that does not fit is dropped with that warning: the task-run
recorder never sees it, so the UI misses task runs or shows them in a stale state. Redis streams
(`prefect-redis`) keep every event until a consumer acknowledges it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.faults.harness import REDIS, Batch, Stack, batches_for, run_w1

__all__ = ["Completeness", "completeness", "main"]

#: Task-run ids per API query (a filter's list travels in the request body).
_CHUNK = 500


@dataclass
class Completeness:
    """What the server recorded next to what Stalwart executed."""

    steps: int
    """Steps Stalwart executed as task runs (`step_run` rows with a `task_run_id`)."""
    steps_recorded: int
    """Of those task runs, how many the Prefect server has."""
    steps_final: int
    """Of those, how many the server shows in a final state (Completed, Failed, ...): a dropped
    event leaves a task run Running or Pending in the UI for ever."""
    task_runs: int | None
    """Task runs the server has for the given flow runs: the steps' and their tool calls' (a
    tool call is a task run of its own, not a step). None: no flow runs given."""
    dropped_events: int
    """"dropping message" warnings in the server's log since it started."""

    @property
    def complete(self) -> bool:
        """Every step is on the server in its final state, and no event was dropped."""
        return (
            self.steps_recorded == self.steps_final == self.steps
            and (self.task_runs is None or self.task_runs >= self.steps)
            and self.dropped_events == 0
        )


def _step_task_runs(stack: Stack, tenants: list[str] | None) -> list[str]:
    import psycopg

    query = "SELECT DISTINCT task_run_id FROM step_run WHERE task_run_id IS NOT NULL"
    params: tuple[Any, ...] = ()
    if tenants is not None:
        query += " AND tenant = ANY(%s)"
        params = (tenants,)
    with psycopg.connect(stack.state_dsn, connect_timeout=5) as conn:
        return [str(row[0]) for row in conn.execute(query, params).fetchall()]


def _count(stack: Stack, body: dict[str, Any]) -> int:
    import httpx

    response = httpx.post(f"{stack.server.api_url}/task_runs/count", json=body, timeout=60)
    response.raise_for_status()
    return int(response.json())


#: Task-run state types in which Prefect's record of a task run is final.
_FINAL = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]


def _recorded(stack: Stack, task_run_ids: list[str], *, final: bool = False) -> int:
    found = 0
    for start in range(0, len(task_run_ids), _CHUNK):
        query: dict[str, Any] = {"id": {"any_": task_run_ids[start : start + _CHUNK]}}
        if final:
            query["state"] = {"type": {"any_": _FINAL}}
        found += _count(stack, {"task_runs": query})
    return found


def _flow_run_task_runs(stack: Stack, flow_run_ids: list[str]) -> int:
    found = 0
    for start in range(0, len(flow_run_ids), _CHUNK):
        chunk = flow_run_ids[start : start + _CHUNK]
        found += _count(stack, {"flow_runs": {"id": {"any_": chunk}}})
    return found


def completeness(
    stack: Stack,
    *,
    batches: list[Batch] | None = None,
    settle_s: float = 180.0,
) -> Completeness:
    """Compare the server's task runs with the steps Stalwart executed, once recording settles.

    `batches`: only their tenants' steps, and the task runs of their flow runs are counted too;
    None: every step of the stack's state database (after a killed worker the server also has
    task runs whose step never finished: only steps are compared). The server records
    task runs from events a moment after they happen: this polls until every step is there or
    the count has not moved for `settle_s` seconds.

    Example:
        >>> completeness(stack, batches=batches).complete  # doctest: +SKIP
        True
    """
    tenants = sorted({b.tenant for b in batches}) if batches is not None else None
    flow_runs = [r for b in batches for r in b.flow_runs] if batches is not None else None
    steps = _step_task_runs(stack, tenants)
    recorded = final = 0
    last_change, seen = time.monotonic(), (-1, -1)
    while True:
        # Final first: a task run recorded between the two queries is then counted in both.
        final = _recorded(stack, steps, final=True)
        recorded = _recorded(stack, steps)
        if (recorded, final) != seen:
            seen, last_change = (recorded, final), time.monotonic()
        if final >= len(steps) or time.monotonic() - last_change > settle_s:
            break
        time.sleep(1.0)
    return Completeness(
        steps=len(steps),
        steps_recorded=recorded,
        steps_final=final,
        task_runs=_flow_run_task_runs(stack, flow_runs) if flow_runs is not None else None,
        dropped_events=stack.server.dropped_events(),
    )


def measure(runs: int, redis: str | None) -> dict[str, Any]:
    """One W1 pass of `runs` tickets on a fresh stack; its figures."""
    with Stack(redis=redis) as stack:
        batches = batches_for(False, runs)
        started = time.monotonic()
        outcome = run_w1(stack, batches=batches)
        wall_s = time.monotonic() - started
        found = completeness(stack, batches=batches)
    return {
        "messaging": "redis" if redis else "memory",
        "runs": runs,
        "completed": outcome.completed,
        "wall_s": round(wall_s, 1),
        **asdict(found),
        "complete": found.complete,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=400, help="W1 tickets (default 400)")
    parser.add_argument("--messaging", choices=["redis", "memory", "both"], default="both")
    args = parser.parse_args(argv)
    kinds = ["memory", "redis"] if args.messaging == "both" else [args.messaging]
    for kind in kinds:
        print(json.dumps(measure(args.runs, REDIS if kind == "redis" else None)), flush=True)


if __name__ == "__main__":
    main()
